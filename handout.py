"""
The course handout: a student copy of this project with the exercises left
for the student to write, and EXERCISES.md saying what each one is and which
tests grade it. The instructor's copy is the project itself.

    python handout.py --out=../selfreward-handout   # write the student copy
    python handout.py --grade=True                  # in a copy: which exercises pass their tests

An exercise is a function marked by one comment, on the line right above its
`def` (or above its decorators):

    # Exercise (easy): RMSNorm, as the class docstring says. Graded by: tests/test_model.py -k rmsnorm
    def forward(self, x):

In the student copy such a function keeps its signature and docstring (what
to compute, the equation or the paper's section) and the rest of its body
becomes `raise NotImplementedError(...)`; every other byte of every file is
the project's, and every file is there but the developers' notebooks
(NOTEBOOKS: their measurement scripts write some exercises out). An
exercise's grading tests (the pytest command in its marker) call that
function and no other exercise, so the exercises can be solved in any order;
once all are solved the copy is this project again, and `python
selfreward.py` runs the whole toy loop. tests/test_handout.py checks all of
that on a handout written from the current code.
"""
import ast
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tokenize
from dataclasses import dataclass

from configurator import configure, fail, settings
from data import unwritable, unwritable_file, write_folder_atomically, write_text

# -----------------------------------------------------------------------------
# Command-line settings (python handout.py --help lists them)
out = ""  # write the student copy to this folder, outside the project (a handout already there is replaced,
          # unless it was worked on since it was written)
grade = False  # instead: run every exercise's grading tests in this copy and print which pass
grade_json = ""  # with grade: also write each test's outcome to this JSON file
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}

ROOT = os.path.dirname(os.path.abspath(__file__))
# Exercises are numbered in the order of the README's layout table (the order
# the data flows); files it does not number come after, by name. (A copy of
# that table's order: change the two together.)
READING_ORDER = ("data/toy.py", "data/prepare_oasst.py", "tokenizer.py", "model.py", "checkpoint.py",
                 "distributed.py", "train_sft.py", "training.py", "sample.py", "judge.py", "train_dpo.py",
                 "selfreward.py", "run_folder.py", "report.py", "evaluation.py")
MARKER = re.compile(r"[ \t]*# Exercise \((?P<level>easy|medium|hard)\): (?P<title>.+?)\.? "
                    r"Graded by: (?P<test>tests/[\w/]+\.py)(?: -k (?P<k>\w+))?[ \t]*\r?\n?")
ANY_MARKER = re.compile(r"[ \t]*#\s*Exercise\b")  # what a marker starts with, so a misspelt one is an error
STUB = 'raise NotImplementedError("exercise {number}: write {qualname} in {file} (see EXERCISES.md)")'
GUIDE = "EXERCISES.md"
# the developers' notebooks, left out of the handout: their one-off measurement scripts hold
# code that solves exercises (the decode attention written out, a DPO loss with one term more)
NOTEBOOKS = ("SPEED.md", "STUDIES.md")
# a handout's record of itself as written: every file's sha256 (one that was worked on is kept) and the
# exercises (what --grade grades there: a student may delete a marker, or leave a file that does not parse)
MANIFEST = ".handout.json"


class HandoutError(ValueError):
    pass


@dataclass
class Exercise:
    number: int
    file: str        # relative to the project, e.g. "model.py"
    qualname: str    # "rope_rotation", "RMSNorm.forward"
    level: str       # easy | medium | hard
    title: str
    test: str        # the grading test file, e.g. "tests/test_model.py"
    k: str           # its -k expression ("" = the whole file)
    line: int        # the def's line in the project's file
    solution: str    # the body the handout leaves out, exactly as in the project

    @property
    def command(self):
        return f"python -m pytest -q {self.test}" + (f" -k {self.k}" if self.k else "")


# -----------------------------------------------------------------------------
# Finding the marked functions and their bodies

def split_lines(source):
    """The lines of source with their line endings: ''.join of them is source."""
    return re.split(r"(?<=\n)", source)


def function_nodes(tree):
    """(qualname, node) of every module-level function and every method of a
    (nested) class, in source order."""
    found = []

    def walk(nodes, prefix):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((prefix + node.name, node))
            elif isinstance(node, ast.ClassDef):
                walk(node.body, prefix + node.name + ".")
    walk(tree.body, "")
    return found


def header_end(lines, node):
    """0-based index of the line with the colon that ends the def's header."""
    depth = 0
    for tok in tokenize.generate_tokens(iter(lines[node.lineno - 1:]).__next__):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif tok.type == tokenize.OP and tok.string == ":" and depth == 0:
            return node.lineno - 1 + tok.start[0] - 1
    raise HandoutError(f"line {node.lineno}: no end to the header of {node.name}")


def body_span(lines, node, where):
    """(start, end, indent): lines[start:end] is the part of the function's body
    an exercise leaves out (everything after the docstring, comments included);
    indent is its indentation."""
    body = node.body
    has_doc = (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
               and isinstance(body[0].value.value, str))
    start = body[0].end_lineno if has_doc else header_end(lines, node) + 1
    if has_doc and len(body) == 1:
        raise HandoutError(f"{where}: {node.name} has only a docstring, nothing to leave out")
    first = body[1] if has_doc else body[0]
    if first.lineno - 1 < start:
        raise HandoutError(f"{where}: the body of {node.name} must start on a line of its own")
    indent = lines[first.lineno - 1][:first.col_offset]
    # comments after the last statement, indented as the body, are the body's too (a hint left there
    # would give the answer away); a comment less indented (the next def's marker) is not
    end = body[-1].end_lineno
    for i in range(end, len(lines)):
        comment = lines[i].startswith(indent) and lines[i].lstrip().startswith("#")
        if lines[i].strip() and not comment:
            break
        if comment:
            end = i + 1
    return start, end, indent


def marker_line(node):
    """The line (1-based) an exercise marker of function `node` sits on: right above the def, or above its
    decorators."""
    return min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1


def marked_functions(path, source):
    """[(qualname, node, marker match)] of one file's exercises. A marker that
    is not right above a def, or not in the marker's form, is an error."""
    lines = split_lines(source)
    comments = {t.start[0] - 1 for t in tokenize.generate_tokens(iter(lines).__next__)  # not text in strings
                if t.type == tokenize.COMMENT and ANY_MARKER.match(lines[t.start[0] - 1])}
    used, found, functions = set(), [], function_nodes(ast.parse(source, filename=path))
    for qualname, node in functions:
        above = marker_line(node) - 1  # 0-based
        if above in comments:
            m = MARKER.fullmatch(lines[above])
            if not m:
                raise HandoutError(f"{path}:{above + 1}: an exercise marker reads '# Exercise (easy|medium|hard): "
                                   "<title>. Graded by: tests/<file>.py -k <word>'")
            used.add(above)
            found.append((qualname, node, m))
    stray = sorted(comments - used)
    if stray:
        raise HandoutError(f"{path}:{stray[0] + 1}: an exercise marker must be the line right above a def "
                           "(or above its decorators)")
    names = [q for q, _ in functions]
    for qualname, _, _ in found:
        if names.count(qualname) > 1:
            raise HandoutError(f"{path}: {qualname} is defined twice; an exercise needs a name of its own")
    return found


def find_exercises(root, files):
    """Every marked function of the project's Python files (tests aside), numbered in reading order."""
    order = {f: i for i, f in enumerate(READING_ORDER)}
    sources = [f for f in files if f.endswith(".py") and not f.startswith("tests/")]
    found = []
    for f in sorted(sources, key=lambda f: (order.get(f, len(order)), f)):
        source = read(os.path.join(root, f))
        lines = split_lines(source)
        for qualname, node, m in marked_functions(f, source):
            start, end, _ = body_span(lines, node, f"{f}:{node.lineno}")
            if not os.path.exists(os.path.join(root, m["test"])):
                raise HandoutError(f"{f}:{marker_line(node)}: the grading test file {m['test']} does not exist")
            found.append(Exercise(len(found) + 1, f, qualname, m["level"], m["title"], m["test"], m["k"] or "",
                                  node.lineno, "".join(lines[start:end])))
    return found


# -----------------------------------------------------------------------------
# Leaving bodies out, putting them back

def blank(source, exercises):
    """source with the bodies of these exercises (all in this file) replaced by a stub."""
    lines = split_lines(source)
    nodes = dict(function_nodes(ast.parse(source)))
    for e in sorted(exercises, key=lambda e: -nodes[e.qualname].lineno):  # from the bottom: spans stay valid
        start, end, indent = body_span(lines, nodes[e.qualname], e.file)
        lines[start:end] = [indent + STUB.format(number=e.number, qualname=e.qualname, file=e.file) + "\n"]
    return "".join(lines)


def restore(source, qualname, solution):
    """source (a handout's file) with the body of `qualname` replaced by `solution`."""
    lines = split_lines(source)
    start, end, _ = body_span(lines, dict(function_nodes(ast.parse(source)))[qualname], qualname)
    lines[start:end] = [solution]
    return "".join(lines)


def read(path):
    with open(path, encoding="utf-8", newline="") as f:  # newline="": line endings kept as they are
        return f.read()


# -----------------------------------------------------------------------------
# Writing the handout

def project_files(root, untracked=False):
    """The project's files, relative to root: what git tracks (untracked=True:
    the files git would track but does not yet, instead), or, outside a git
    checkout, every file but caches, run folders and virtual environments.
    Not git's untracked files: an instructor's notes or a model folder made
    in the project are no part of it."""
    which = ["--others", "--exclude-standard"] if untracked else ["--cached"]
    try:
        listed = subprocess.run(["git", "ls-files", "-z", *which], cwd=root,
                                capture_output=True, check=True).stdout.decode().split("\0")
        return sorted(f for f in listed if f and os.path.isfile(os.path.join(root, f)))
    except (OSError, subprocess.CalledProcessError):
        return [] if untracked else walk_files(root)


def walk_files(root):
    """Every file below root, relative to it, but what running the code makes:
    caches, run folders, virtual environments."""
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", "out"}
    files = []
    for folder, dirs, names in os.walk(root):  # (a virtual environment of any name holds pyvenv.cfg)
        dirs[:] = sorted(d for d in dirs if d not in skip
                         and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg")))
        files += [os.path.relpath(os.path.join(folder, n), root) for n in names if not n.endswith(".pyc")]
    return sorted(f.replace(os.sep, "/") for f in files)


def check_destination(root, out):
    """The handout goes outside the project, and replaces only an earlier handout."""
    root, out = os.path.realpath(root), os.path.realpath(out)
    if out == root or out.startswith(root + os.sep):
        raise HandoutError(f"--out={out} is inside the project ({root}); write the handout outside it")
    if root.startswith(out + os.sep):
        raise HandoutError(f"--out={out} holds the project ({root}); write the handout to a folder of its own")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and \
            not os.path.isfile(os.path.join(out, GUIDE)):
        raise HandoutError(f"--out={out} exists and is not an earlier handout (no {GUIDE}); not replacing it")
    changed = worked_on(out)
    if changed is None:  # (its manifest lost: `cp -r handout/*` leaves dotfiles behind)
        raise HandoutError(f"--out={out}: the handout there has no readable {MANIFEST} (the record of its files "
                           f"as written), so a student's work in it cannot be told from the handout; not replacing "
                           f"it: give another --out, or move it away first")
    if changed:
        raise HandoutError(f"--out={out}: the handout there was worked on since it was written "
                           f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}); not replacing it: "
                           f"give another --out, or move it away first")
    problem = unwritable(os.path.dirname(out))  # the handout is written beside out, then renamed into place
    if problem:
        raise HandoutError(f"--out={out}: {problem}")


def copied_files(root):
    """The project's files a handout copies: all but the notebooks; and where
    root is itself a handout (its test suite writes one), all but its guide
    and manifest too, which the handout writes anew."""
    files = [f for f in project_files(root) if f not in NOTEBOOKS]
    if GUIDE in files and MANIFEST in files:
        files = [f for f in files if f not in (GUIDE, MANIFEST)]
    return files


def write_handout(root, out):
    """Write the student copy of the project at `root` to `out`; returns the
    exercises, each with the body the copy leaves out (its solution)."""
    check_destination(root, out)
    files = copied_files(root)
    exercises = find_exercises(root, files)
    if not exercises:
        raise HandoutError(f"no exercise markers in {root}")
    if GUIDE in files:
        raise HandoutError(f"the project has its own {GUIDE}; the handout writes that file")
    by_file = {}
    for e in exercises:
        by_file.setdefault(e.file, []).append(e)

    def write_into(folder):
        for f in files:
            dest = os.path.join(folder, f)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if f in by_file:
                with open(dest, "w", encoding="utf-8", newline="") as fh:
                    fh.write(blank(read(os.path.join(root, f)), by_file[f]))
            else:
                shutil.copy2(os.path.join(root, f), dest)
        write_text(os.path.join(folder, GUIDE), exercises_md(exercises, folder))
        write_text(os.path.join(folder, MANIFEST), json.dumps({"files": digests(folder), "exercises": [
            {k: v for k, v in vars(e).items() if k != "solution"} for e in exercises]}, indent=1))

    write_folder_atomically(out, write_into)
    return exercises


def digests(folder):
    """{file: sha256} of a handout's files, leaving out what running it makes
    (caches, run folders, a virtual environment the student made in it) and
    the manifest itself."""
    found = {}
    for rel in walk_files(folder):
        if rel != MANIFEST:
            with open(os.path.join(folder, rel), "rb") as fh:
                found[rel] = hashlib.sha256(fh.read()).hexdigest()
    return found


def worked_on(out):
    """The files of an earlier handout at `out` changed, added or removed since
    it was written ([] if none, or if there is no handout at `out`; None if
    its manifest is gone or unreadable: nothing to tell a student's work by)."""
    if not os.path.isfile(os.path.join(out, GUIDE)):
        return []
    try:
        with open(os.path.join(out, MANIFEST), encoding="utf-8") as f:
            written = json.load(f)
        written = dict(written.get("files", written))  # (an older handout's: the digests alone)
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    now = digests(out)
    return sorted(f for f in set(now) | set(written) if now.get(f) != written.get(f))


def exercises_md(exercises, folder):
    """EXERCISES.md: what to write, where, and the command that grades it."""
    rows = []
    for e in exercises:
        nodes = dict(function_nodes(ast.parse(read(os.path.join(folder, e.file)))))
        rows.append(f"| {e.number} | {e.title} | {e.level} | `{e.file}:{nodes[e.qualname].lineno}` "
                    f"`{e.qualname}` | `{e.command}` |")
    levels = ", ".join(f"{sum(e.level == lv for e in exercises)} {lv}" for lv in ("easy", "medium", "hard"))
    return f"""# Exercises

This is a copy of selfreward, a from-scratch implementation of Self-Rewarding
Language Models (Yuan et al., 2024), with functions left for you to write:
{len(exercises)} of them ({levels}). Each keeps its signature and docstring,
which say what to compute (and the equation or the paper's section), and its
body raises `NotImplementedError` until you write it. The comment above each
one repeats its row of the table below.

Each exercise is graded by the command beside it. Those tests call that
function and no other exercise, so you can solve them in any order, and the
code around your function is there to read. To see where you stand on all of
them at once:

    python handout.py --grade=True

Tests that read real data (judge outputs) look for it in `../shared/data`,
or in the folder named by `SELFREWARD_SHARED_DATA`, and are skipped without it.

A title's "above" means above the function, in its file (the rules of the
score parser are a comment over it). The grading tests check what the
docstring promises; the full suite also checks how the rest of the code
uses your function, so run it once everything passes. The developers'
notebooks the README links to, {", ".join(f"`{n}`" for n in NOTEBOOKS)}, are not in this copy:
their measurement scripts would give some exercises away.

When every exercise passes, this copy is the whole project: `python -m pytest
-q tests` runs the full suite, and `python selfreward.py` runs the
self-rewarding loop on the toy world end to end with your functions (the
README's quick start says how long that takes on a laptop CPU).

| # | exercise | level | where | graded by |
|---|---|---|---|---|
""" + "\n".join(rows) + "\n"


# -----------------------------------------------------------------------------
# Grading a copy

class _Outcomes:
    """A pytest plugin that keeps each test's outcome and failure text."""

    def __init__(self):
        self.tests = {}

    def _record(self, nodeid, outcome, text):
        if self.tests.get(nodeid, {}).get("outcome", "passed") == "passed":  # a test's first trouble is its outcome
            self.tests[nodeid] = {"outcome": outcome, "message": text[-3000:]}

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or not report.passed:
            outcome = "error" if report.failed and report.when != "call" else report.outcome
            self._record(report.nodeid, outcome, report.longreprtext if not report.passed else "")

    def pytest_collectreport(self, report):
        if report.failed:
            self._record(report.nodeid, "error", report.longreprtext)


def graded_exercises(root):
    """The exercises --grade grades: in a handout, those its manifest recorded
    when it was written (markers and files the student may since have changed:
    a deleted marker, a file that does not parse, are still its exercises, to
    do); in the project itself, its markers."""
    try:
        with open(os.path.join(root, MANIFEST), encoding="utf-8") as f:
            recorded = json.load(f).get("exercises")
        if recorded is not None:  # (none: the project, or a handout written before they were recorded)
            return [Exercise(**x, solution="") for x in recorded]
    except FileNotFoundError:
        pass
    except (ValueError, AttributeError, TypeError) as e:
        raise HandoutError(f"{MANIFEST}: the handout's record of its exercises is unreadable ({e}); "
                           f"write the handout again") from None
    return find_exercises(root, project_files(root))


def grade_all(root, json_path=""):
    """Run each exercise's grading command (in this process, one pytest session
    each) and print which exercises pass; returns the exit status: 0 if all do."""
    import pytest  # a test-time dependency: only grading needs it
    os.chdir(root)
    results = []
    for e in graded_exercises(root):
        outcomes = _Outcomes()
        # no cache written into the copy; no unraisable-exception plugin, whose two full garbage
        # collections per session (with torch loaded) cost more than the tests
        args = [e.test, *(["-k", e.k] if e.k else []), "-p", "no:cacheprovider", "-p", "no:unraisableexception",
                "--tb=line", "-q"]
        with contextlib.redirect_stdout(io.StringIO()):  # the summary below is the output
            pytest.main(args, plugins=[outcomes])
        tests = outcomes.tests or {e.command: {"outcome": "error", "message": "the command selects no tests"}}
        counts = {o: sum(t["outcome"] == o for t in tests.values()) for o in ("passed", "failed", "error", "skipped")}
        solved = counts["passed"] > 0 and counts["passed"] + counts["skipped"] == len(tests)
        print(f"{e.number:3d}. {'solved' if solved else 'to do':7s} {e.file}: {e.qualname} "
              f"({counts['passed']} of {len(tests)} tests pass" + (f", {counts['skipped']} skipped" if counts["skipped"]
                                                                    else "") + ")", flush=True)
        results.append({"number": e.number, "file": e.file, "qualname": e.qualname, "command": e.command,
                        "solved": solved, "tests": tests})
    if json_path:
        write_text(json_path, json.dumps({"exercises": results}, indent=1))
    return 0 if results and all(r["solved"] for r in results) else 1


def main(argv=None):
    c = settings(DEFAULTS, configure(dict(DEFAULTS, __file__=__file__, __doc__=__doc__), argv))
    if c.grade and c.out:  # two jobs: grading this copy writes no handout, so --out would go unused
        fail(f"out = {c.out!r}: grade=True grades this copy and writes no handout: give one of the two")
    if c.grade_json and not c.grade:
        fail(f"grade_json = {c.grade_json!r}: is written by grade=True only: add --grade=True, or leave it out")
    problem = c.grade and c.grade_json and unwritable_file(c.grade_json)
    if problem:
        fail(f"grade_json = {c.grade_json!r}: {problem}")
    try:
        if c.grade:  # (grade_all works in ROOT: a relative grade_json is taken from here first)
            sys.exit(grade_all(ROOT, c.grade_json and os.path.abspath(c.grade_json)))
        if not c.out:
            sys.exit("usage: python handout.py --out=FOLDER (outside the project) | --grade=True")
        exercises = write_handout(ROOT, c.out)
    except HandoutError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote the handout to {os.path.abspath(c.out)}: {len(exercises)} exercises, listed in "
          f"{os.path.join(os.path.abspath(c.out), GUIDE)}")
    untracked = project_files(ROOT, untracked=True)
    if untracked:
        print(f"left out, as git does not track them (commit what students need): {', '.join(untracked[:5])}"
              + (f" and {len(untracked) - 5} more" if len(untracked) > 5 else ""))


if __name__ == "__main__":
    main()
