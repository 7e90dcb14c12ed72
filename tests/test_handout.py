"""
handout.py: the student copy leaves out exactly the marked exercises; each
exercise is graded by tests that use that function and no other exercise;
and the copy with every solution put back is the project byte for byte, so
the full suite, which passes here, passes there.
"""
import ast
import json
import os
import queue
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import data
import handout
from conftest import ROOT, SHARED_DATA

# the copy's tests look for the shared data beside the copy: point them at ours
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
       "SELFREWARD_SHARED_DATA": os.path.realpath(SHARED_DATA)}


def grade(folder, json_path):
    """{exercise number: {test id: {"outcome", "message"}}}, from `python handout.py --grade=True` run in folder."""
    r = subprocess.run([sys.executable, "handout.py", "--grade=True", f"--grade_json={json_path}"], cwd=folder,
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert os.path.exists(json_path), r.stdout[-3000:] + r.stderr[-3000:]
    with open(json_path) as f:
        return {e["number"]: e["tests"] for e in json.load(f)["exercises"]}


def write(path, text):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def functions(path):
    return dict(handout.function_nodes(ast.parse(handout.read(path))))


def test_each_exercise_is_graded_alone_and_all_solutions_give_the_project_back(tmp_path):
    folder = tmp_path / "handout"
    exercises = handout.write_handout(ROOT, str(folder))
    assert len(exercises) >= 10 and {e.level for e in exercises} == {"easy", "medium", "hard"}
    guide = (folder / "EXERCISES.md").read_text()
    for e in exercises:
        assert f"`{e.qualname}` | `{e.command}` |" in guide
        # the signature and docstring stay; of the body, only the stub
        mine, original = functions(folder / e.file)[e.qualname], functions(os.path.join(ROOT, e.file))[e.qualname]
        assert ast.get_docstring(mine) == ast.get_docstring(original)
        assert ast.unparse(mine.args) == ast.unparse(original.args)
        assert len(mine.body) == 1 + (ast.get_docstring(mine) is not None) and isinstance(mine.body[-1], ast.Raise)

    # nothing solved: every grading test fails, on its own exercise's NotImplementedError
    blank = grade(folder, tmp_path / "blank.json")
    assert sorted(blank) == [e.number for e in exercises]
    for e in exercises:
        assert blank[e.number], f"{e.command} selects no tests"
        for test, t in blank[e.number].items():
            assert t["outcome"] == "failed" and f"write {e.qualname} in {e.file}" in t["message"], (test, t)

    # one solution put back: exactly that exercise's tests pass, every other exercise's still fail
    # (graded in two copies side by side, so a 2-core machine is busy on both cores)
    copies = queue.Queue()
    for i in range(min(2, os.cpu_count() or 1)):
        copies.put(shutil.copytree(folder, tmp_path / f"copy{i}"))

    def solve_one(e):
        copy = copies.get()
        path = copy / e.file
        blanked = handout.read(path)
        write(path, handout.restore(blanked, e.qualname, e.solution))
        try:
            return e, grade(copy, tmp_path / f"{e.number}.json")
        finally:
            write(path, blanked)
            copies.put(copy)

    with ThreadPoolExecutor(copies.qsize()) as pool:
        for e, results in pool.map(solve_one, exercises):
            for other in exercises:
                assert results[other.number].keys() == blank[other.number].keys()
                expected = "passed" if other is e else "failed"
                wrong = {t: r["outcome"] for t, r in results[other.number].items() if r["outcome"] != expected}
                assert not wrong, f"with only {e.qualname} solved, {other.qualname}'s tests: {wrong}"

    # every solution back: the project's files, byte for byte, and EXERCISES.md
    for e in exercises:
        write(folder / e.file, handout.restore(handout.read(folder / e.file), e.qualname, e.solution))
    files = handout.copied_files(ROOT)
    assert handout.project_files(str(folder)) == sorted(files + ["EXERCISES.md", ".handout.json"])
    for f in files:
        with open(folder / f, "rb") as mine, open(os.path.join(ROOT, f), "rb") as original:
            assert mine.read() == original.read(), f



def test_no_file_of_the_handout_gives_a_solution_away(tmp_path):
    """No line of an exercise's solution (a statement of 30 characters or
    more, spaces aside) appears in any other file of the student copy: the
    notebooks whose scripts wrote some out are left out, and nothing else may
    hold one."""
    folder = tmp_path / "handout"
    exercises = handout.write_handout(ROOT, str(folder))
    squeeze = lambda line: "".join(line.split())

    def leaks():
        copy = {}
        for f in handout.project_files(str(folder)):
            try:
                copy[f] = {squeeze(line) for line in (folder / f).read_text(encoding="utf-8").splitlines()}
            except UnicodeDecodeError:
                continue
        found = {}
        for e in exercises:
            lines = {squeeze(line) for line in e.solution.splitlines()}
            lines = {x for x in lines if len(x) >= 30 and not x.startswith("#")}
            found.update({(e.qualname, f): sorted(lines & there)[:2] for f, there in copy.items() if lines & there})
        return found
    assert leaks() == {}
    # the check finds one: a note whose script writes out one line of the DPO loss, spaced otherwise
    line = next(x for x in next(e for e in exercises if e.qualname == "dpo_losses").solution.splitlines()
                if len(squeeze(x)) >= 30)
    (folder / "NOTES.md").write_text("```python\n" + line.replace(" ", "") + "\n```\n")
    assert list(leaks()) == [("dpo_losses", "NOTES.md")]


def test_the_readme_says_what_each_exercise_teaches():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        section = f.read().split("## For instructors", 1)[1].split("\n## ", 1)[0]
    exercises = handout.find_exercises(ROOT, handout.project_files(ROOT))
    for e in exercises:
        assert f"| {e.number} | `{e.file}` `{e.qualname}` | {e.level} |" in section, e
    assert f"| {len(exercises) + 1} |" not in section


SOURCE = '''\
import functools


class A:
    # Exercise (hard): a method. Graded by: tests/test_m.py -k method
    @functools.lru_cache(None)
    def f(self, x: dict[str, int] = {"a": 1},
          y=lambda: 0) -> int:  # a comment after the header
        # a comment that starts the body
        return x


# Exercise (easy): a function. Graded by: tests/test_m.py
def g():
    """What g does."""
    y = 1

    return y  # the end


def h():
    return 0
'''


def test_markers_bodies_and_mistakes_on_a_small_project(tmp_path):
    project, out = tmp_path / "project", tmp_path / "out"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_m.py").write_text("")
    (project / "m.py").write_text(SOURCE)
    exercises = handout.write_handout(str(project), str(out))  # not a git checkout: every file is copied
    assert handout.project_files(str(project), untracked=True) == []  # (and none left out as untracked)
    assert [(e.number, e.qualname, e.level, e.title, e.command, e.line) for e in exercises] == [
        (1, "A.f", "hard", "a method", "python -m pytest -q tests/test_m.py -k method", 7),
        (2, "g", "easy", "a function", "python -m pytest -q tests/test_m.py", 14)]
    assert sorted(os.listdir(out)) == [".handout.json", "EXERCISES.md", "m.py", "tests"]
    blanked = (out / "m.py").read_text()
    compile(blanked, "m.py", "exec")
    assert "return x" not in blanked and "starts the body" not in blanked and "return y" not in blanked
    assert '    """What g does."""\n    raise NotImplementedError("exercise 2: write g in m.py' in blanked
    assert "def h():\n    return 0\n" in blanked  # not marked: untouched
    for e in exercises:
        blanked = handout.restore(blanked, e.qualname, e.solution)
    assert blanked == SOURCE

    handout.write_handout(str(project), str(out))  # an earlier handout is replaced
    files = json.loads((out / ".handout.json").read_text())["files"]
    (out / ".handout.json").write_text(json.dumps(files))  # an older handout's manifest: the digests alone
    handout.write_handout(str(project), str(out))
    # ... unless it was worked on: a student's edits and files are not thrown away (caches, run folders and
    # a virtual environment made in it do not count)
    (out / "__pycache__").mkdir()
    (out / "__pycache__" / "m.cpython.pyc").write_bytes(b"\0")
    (out / "m.pyc").write_bytes(b"\0")  # (compileall -b writes them beside the sources)
    for made in ("env/pyvenv.cfg", "out/run/report.md"):
        (out / made).parent.mkdir(parents=True)
        (out / made).write_text("")
    handout.write_handout(str(project), str(out))
    (out / "tests" / "test_m.py").unlink()  # a file of the handout deleted is work on it too
    assert handout.worked_on(str(out)) == ["tests/test_m.py"]
    (out / "tests" / "test_m.py").write_text("")
    assert handout.worked_on(str(out)) == []
    (out / "m.py").write_text((out / "m.py").read_text() + "# my work\n")
    (out / "notes.txt").write_text("mine")
    (out / "notes2.txt").write_text("mine")
    with pytest.raises(handout.HandoutError, match=r"the handout there was worked on since it was written "
                                                   r"\(m\.py, notes\.txt, notes2\.txt\); not replacing it"):
        handout.write_handout(str(project), str(out))
    (out / "notes3.txt").write_text("mine")  # more than three: the first three and "..."
    with pytest.raises(handout.HandoutError, match=r"\(m\.py, notes\.txt, notes2\.txt, \.\.\.\); not replacing it"):
        handout.write_handout(str(project), str(out))
    assert (out / "notes.txt").read_text() == "mine"
    # ... and one whose manifest is gone (copied with `cp -r handout/*`, or deleted as clutter), or unreadable,
    # can no longer tell a student's work from the handout: not replaced either
    for lost in ("gone", "{not json"):
        if lost == "gone":
            (out / ".handout.json").unlink()
        else:
            (out / ".handout.json").write_text(lost)
        with pytest.raises(handout.HandoutError, match=r"no readable \.handout\.json .*; not replacing it"):
            handout.write_handout(str(project), str(out))
        assert (out / "m.py").read_text().endswith("# my work\n")
    for bad, message in [
        (SOURCE.replace("def g", "\ndef g"), r"m\.py:13: an exercise marker must be the line right above a def"),
        (SOURCE.replace("(easy)", "(easier)"), r"m\.py:13: an exercise marker reads"),
        (SOURCE.replace("tests/test_m.py\n", "tests/test_n.py\n"), r"tests/test_n\.py does not exist"),
        (SOURCE.replace('"""What g does."""\n    y = 1\n\n    return y  # the end', '"""What g does."""'),
         "only a docstring"),
    ]:
        (project / "m.py").write_text(bad)
        with pytest.raises(handout.HandoutError, match=message):
            handout.write_handout(str(project), str(tmp_path / "out2"))
    assert not (tmp_path / "out2").exists()


def test_the_handout_goes_outside_the_project_and_over_nothing_else(tmp_path):
    inside = os.path.join(ROOT, "handout_copy")
    r = subprocess.run([sys.executable, "handout.py", f"--out={inside}"], cwd=ROOT, env=ENV, capture_output=True,
                       text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: --out=") and r.stderr.count("\n") == 1
    assert "inside the project" in r.stderr and not os.path.exists(inside)
    with pytest.raises(handout.HandoutError, match="inside the project"):
        handout.write_handout(ROOT, ROOT)
    with pytest.raises(handout.HandoutError, match="holds the project"):
        handout.write_handout(ROOT, os.path.dirname(ROOT))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    with pytest.raises(handout.HandoutError, match="not an earlier handout"):
        handout.write_handout(ROOT, str(notes))
    assert os.listdir(notes) == ["todo.txt"]
    with pytest.raises(handout.HandoutError, match=f"--out={notes}/todo.txt/copy: {notes}/todo.txt is a file"):
        handout.write_handout(ROOT, str(notes / "todo.txt" / "copy"))


def test_a_grade_json_that_cannot_be_written_is_refused_before_grading(tmp_path, monkeypatch, capsys):
    def grading(*args):
        raise AssertionError("grading started")
    monkeypatch.setattr(handout, "grade_all", grading)
    (tmp_path / "file").write_text("")
    for path, problem in [(tmp_path / "file" / "x.json", f"{tmp_path / 'file'} is a file, not a folder"),
                          (tmp_path / "file" / "more" / "x.json", f"{tmp_path / 'file'} is a file, not a folder"),
                          (tmp_path, "is a folder: give the file to write")]:
        with pytest.raises(SystemExit) as e:
            handout.main(["--grade=True", f"--grade_json={path}"])
        assert e.value.code == 2 and capsys.readouterr().err == f"error: grade_json = {str(path)!r}: {problem}\n"
    assert data.unwritable_file(str(tmp_path / "new" / "folders" / "x.json")) is None  # write_text makes them
    assert data.unwritable_file(str(tmp_path / "file")) is None  # a file there is written over
    # settings of the other job: grade_json without grade (nothing grades), out beside grade (nothing is written)
    for argv, said in [([f"--grade_json={tmp_path / 'g.json'}", f"--out={tmp_path / 'h'}"],
                        "is written by grade=True only"),
                       (["--grade=True", f"--out={tmp_path / 'h'}"], "grades this copy and writes no handout")]:
        with pytest.raises(SystemExit) as e:
            handout.main(argv)
        assert e.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "h").exists()


def test_exercises_md_points_at_the_def_in_the_copy_and_counts_the_levels(tmp_path):
    """EXERCISES.md's "where" is the def's line in the student copy (here one
    line above the project's: the method's two-line body became one stub
    line), and its opening counts the exercises of each level."""
    project, out = tmp_path / "project", tmp_path / "out"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_m.py").write_text("")
    (project / "m.py").write_text(SOURCE)
    handout.write_handout(str(project), str(out))
    guide = (out / "EXERCISES.md").read_text()
    assert "2 of them (1 easy, 0 medium, 1 hard)" in guide
    assert "| 1 | a method | hard | `m.py:7` `A.f` | `python -m pytest -q tests/test_m.py -k method` |" in guide
    assert "| 2 | a function | easy | `m.py:13` `g` | `python -m pytest -q tests/test_m.py` |" in guide
    assert (out / "m.py").read_text().splitlines()[12] == "def g():"


def test_markers_in_nested_classes_strings_and_tests_and_more_mistakes(tmp_path):
    """A nested class's method is named by both classes; marker text inside a
    string and a marked function in tests/ are not exercises; a header whose
    annotation holds a dict's colon ends at the def's own colon; a misspelt
    marker, a body on the def's line, a marked name defined twice, a project
    with no marker and one with its own EXERCISES.md are refused."""
    project, out = tmp_path / "project", tmp_path / "out"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_m.py").write_text("# Exercise (easy): not one. Graded by: tests/test_m.py\n"
                                                 "def helper():\n    return 1\n")
    source = ('"""Markers read:\n# Exercise (easy): <title>. Graded by: tests/<file>.py"""\n\n\n'
              "class A:\n    class B:\n"
              "        # Exercise (medium): a nested method. Graded by: tests/test_m.py -k nested\n"
              '        def f(self) -> {"a":\n'
              "                        int}:\n"
              "            return 1\n")
    (project / "m.py").write_text(source)
    exercises = handout.write_handout(str(project), str(out))
    assert [(e.file, e.qualname, e.line) for e in exercises] == [("m.py", "A.B.f", 8)]
    blanked = (out / "m.py").read_text()
    assert blanked == source.replace("return 1", 'raise NotImplementedError("exercise 1: write A.B.f in m.py '
                                                 '(see EXERCISES.md)")')
    assert (out / "tests" / "test_m.py").read_text() == (project / "tests" / "test_m.py").read_text()
    for bad, message in [
        (SOURCE.replace("# Exercise (easy)", "#Exercise(easy)"), r"m\.py:13: an exercise marker reads"),
        (SOURCE.replace('def g():\n    """What g does."""', "def g(): return 0\n\ndef g2():\n    pass"),
         "the body of g must start on a line of its own"),
        (SOURCE.replace("def h", "def g"), "g is defined twice; an exercise needs a name of its own"),
        ("def h():\n    return 0\n", "no exercise markers in"),
    ]:
        (project / "m.py").write_text(bad)
        with pytest.raises(handout.HandoutError, match=message):
            handout.write_handout(str(project), str(tmp_path / "out2"))
    (project / "m.py").write_text(SOURCE)
    (project / "EXERCISES.md").write_text("the project's own notes")
    with pytest.raises(handout.HandoutError, match="the project has its own EXERCISES.md"):
        handout.write_handout(str(project), str(tmp_path / "out2"))
    assert not (tmp_path / "out2").exists()


HINTED = '''\
class A:
    # Exercise (easy): f. Graded by: tests/test_m.py
    def f(self):
        return 1
        # hint: the answer is 1

    # Exercise (medium): g. Graded by: tests/test_m.py -k g
    async def g(self):
        0
        return 2
    # a note on A, not g's


# Exercise (easy): h. Graded by: tests/test_m.py
def h():
    """What h does."""
    return 3

    # hint: three
def k():
    return 4
'''


def test_what_an_exercise_body_is_async_defs_and_trailing_hints(tmp_path):
    """An async def is an exercise too; a body whose first statement is an
    expression but not a string has no docstring (the expression is left
    out); comments after the last statement indented as the body are left
    out with it (a hint kept there gave the answer away), a less indented one
    (the next marker, a note on the class) stays; the handout's manifest
    keeps an exercise without -k as "" (the whole file)."""
    project, out = tmp_path / "project", tmp_path / "out"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_m.py").write_text("")
    (project / "m.py").write_text(HINTED)
    exercises = handout.write_handout(str(project), str(out))
    assert [(e.qualname, e.solution) for e in exercises] == [
        ("A.f", "        return 1\n        # hint: the answer is 1\n"),
        ("A.g", "        0\n        return 2\n"),
        ("h", "    return 3\n\n    # hint: three\n")]
    blanked = (out / "m.py").read_text()
    assert "hint" not in blanked and "    # a note on A, not g's\n" in blanked and "    async def g(self):" in blanked
    assert blanked.count("# Exercise (") == 3
    for e in exercises:
        blanked = handout.restore(blanked, e.qualname, e.solution)
    assert blanked == HINTED
    assert [x["k"] for x in json.loads((out / ".handout.json").read_text())["exercises"]] == ["", "g", ""]


def test_exercises_are_numbered_in_reading_order_then_by_name(tmp_path):
    """Files in READING_ORDER come first, in its order; the others after them, by name."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_m.py").write_text("")
    names = ("zzz.py", "model.py", "aaa.py", "data/toy.py")
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("# Exercise (easy): one. Graded by: tests/test_m.py\ndef one():\n    return 1\n")
    assert [e.file for e in handout.find_exercises(str(tmp_path), list(names))] == [
        "data/toy.py", "model.py", "aaa.py", "zzz.py"]
    # a marker is the whole line: more after its -k expression is no part of it, and refused
    (tmp_path / "aaa.py").write_text("# Exercise (easy): one. Graded by: tests/test_m.py -k one two\n"
                                     "def one():\n    return 1\n")
    with pytest.raises(handout.HandoutError, match=r"aaa\.py:1: an exercise marker reads"):
        handout.find_exercises(str(tmp_path), list(names))


def test_a_handout_of_a_handout_and_crlf_files_byte_for_byte(tmp_path):
    """Line endings are kept as they are (a CRLF file's blanked copy, with its
    solutions put back, is the file byte for byte); and a handout written from
    a handout (its own test suite does that) writes its guide and manifest
    anew rather than refusing or copying them."""
    project, out = tmp_path / "project", tmp_path / "out"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_m.py").write_text("")
    crlf = SOURCE.replace("\n", "\r\n").encode()
    (project / "m.py").write_bytes(crlf)
    exercises = handout.write_handout(str(project), str(out))
    blanked = (out / "m.py").read_bytes()
    assert b"def g():\r\n" in blanked and b"NotImplementedError" in blanked
    source = blanked.decode()
    for e in exercises:
        source = handout.restore(source, e.qualname, e.solution)
    assert source.encode() == crlf
    again = tmp_path / "again"
    assert [e.qualname for e in handout.write_handout(str(out), str(again))] == ["A.f", "g"]
    assert sorted(os.listdir(again)) == sorted(os.listdir(out))
    assert (again / "m.py").read_bytes() == blanked
    assert json.loads((again / ".handout.json").read_text())["files"] == handout.digests(str(again))


def test_where_a_handout_may_go(tmp_path):
    """Beside the project under a name that starts with the project's is
    outside it; an empty folder is taken; an existing file is not (an error
    that says so, not a crash); without --out the command says how to use it."""
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_m.py").write_text("")
    (project / "m.py").write_text(SOURCE)
    handout.write_handout(str(project), str(tmp_path / "project-handout"))
    assert (tmp_path / "project-handout" / "EXERCISES.md").exists()
    (tmp_path / "empty").mkdir()
    handout.write_handout(str(project), str(tmp_path / "empty"))
    assert (tmp_path / "empty" / "EXERCISES.md").exists()
    (tmp_path / "file").write_text("mine")
    with pytest.raises(handout.HandoutError, match="exists and is not an earlier handout"):
        handout.write_handout(str(project), str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "mine"
    with pytest.raises(SystemExit, match=r"usage: python handout\.py --out=FOLDER"):
        handout.main([])


GRADED = '''\
import pytest


def test_passes():
    pass


def test_skipped():
    pytest.skip("no data")


def test_mixed_pass():
    pass


def test_mixed_skip():
    pytest.skip("no data")


@pytest.fixture
def broken():
    raise RuntimeError("in setup")


def test_fails_in_setup(broken):
    pass


@pytest.fixture
def untidy():
    yield
    raise RuntimeError("in teardown")


def test_fails_then_teardown(untidy):
    assert False


def test_clean_pass_dirty_exit(untidy):
    pass
'''


def test_grading_says_solved_only_where_tests_pass(tmp_path, monkeypatch, capsys):
    """--grade: an exercise is solved when its tests pass, some may be
    skipped, not when all are; a command that selects no tests is an error,
    and so is a test file that cannot be collected (with its error);
    a setup failure is an error, a failing test that also fails in teardown
    is 'failed' (its first trouble); the status is 1 unless all are solved."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_graded.py").write_text(GRADED)
    (tmp_path / "tests" / "test_broken.py").write_text("import no_such_module\n")
    (tmp_path / "m.py").write_text("".join(
        f"# Exercise (easy): {k}. Graded by: tests/test_graded.py -k {k}\ndef f_{k}():\n    return 0\n\n\n"
        for k in ("passes", "skipped", "mixed", "nothing", "setup", "teardown", "dirty")) +
        "# Exercise (easy): broken. Graded by: tests/test_broken.py\ndef f_broken():\n    return 0\n")
    monkeypatch.chdir(tmp_path)  # (grade_all works in the copy's folder)
    assert handout.grade_all(str(tmp_path), str(tmp_path / "grades.json")) == 1
    with open(tmp_path / "grades.json") as f:
        grades = {e["qualname"]: e for e in json.load(f)["exercises"]}
    assert {q: e["solved"] for q, e in grades.items()} == {
        "f_passes": True, "f_skipped": False, "f_mixed": True, "f_nothing": False, "f_setup": False,
        "f_teardown": False, "f_dirty": False, "f_broken": False}
    outcomes = {q: sorted(t["outcome"] for t in e["tests"].values()) for q, e in grades.items()}
    assert outcomes == {"f_passes": ["passed"], "f_skipped": ["skipped"], "f_mixed": ["passed", "skipped"],
                        "f_nothing": ["error"], "f_setup": ["error"], "f_teardown": ["failed"],
                        "f_dirty": ["error"], "f_broken": ["error"]}
    [broken] = grades["f_broken"]["tests"].values()  # a file that cannot be collected: its own error is shown
    assert "No module named 'no_such_module'" in broken["message"]
    assert grades["f_nothing"]["tests"] == {"python -m pytest -q tests/test_graded.py -k nothing": {
        "outcome": "error", "message": "the command selects no tests"}}
    assert "  3. solved  m.py: f_mixed (1 of 2 tests pass, 1 skipped)" in capsys.readouterr().out
    assert not (tmp_path / ".pytest_cache").exists()  # grading writes nothing into the copy but its JSON
    outcomes = handout._Outcomes()  # a long failure keeps its end, where the error is
    outcomes._record("t", "failed", "HEAD" + "x" * 4000 + "TAIL")
    assert outcomes.tests["t"]["message"] == ("x" * 4000 + "TAIL")[-3000:]
    (tmp_path / "m.py").write_text("# Exercise (easy): passes. Graded by: tests/test_graded.py -k passes\n"
                                   "def f():\n    return 0\n")
    assert handout.grade_all(str(tmp_path)) == 0
    (tmp_path / "m.py").write_text("def f():\n    return 0\n")  # no exercises: none solved, not "all"
    assert handout.grade_all(str(tmp_path)) == 1


def test_grading_imports_no_file_a_student_edits():
    """A half-written exercise is graded 'to do', whatever its file: handout.py
    (run in the copy to grade it) imports no module that holds an exercise.
    (It imported model.py through checkpoint.py, and a syntax error left in
    model.py made --grade a traceback instead of its grades.)"""
    marked = set()
    for folder, _, files in os.walk(ROOT):
        for f in files:
            path = os.path.join(folder, f)
            if f.endswith(".py") and f != "handout.py" and ".venv" not in path and "/out/" not in path:
                with open(path, encoding="utf-8") as fh:
                    if any(line.lstrip().startswith("# Exercise (") for line in fh):
                        marked.add(os.path.relpath(path, ROOT)[:-3].replace(os.sep, "."))
    assert {"model", "sample", "judge"} <= marked
    r = subprocess.run([sys.executable, "-c", "import sys, handout; print(' '.join(sys.modules))"], cwd=ROOT,
                       env=ENV, capture_output=True, text=True, timeout=120, check=True)
    assert not marked & set(r.stdout.split())


def test_a_git_checkout_hands_out_only_what_git_tracks(tmp_path, monkeypatch, capsys):
    """In a git checkout the handout copies the tracked files: an untracked one
    that git would track (an instructor's notes, a model folder made in the
    project) went into the student copy; it is listed as left out instead."""
    project = tmp_path / "project"
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    (project / ".gitignore").write_text("/out/\n")
    (project / "m.py").write_text("# Exercise (easy): one. Graded by: tests/test_m.py\ndef one():\n    return 1\n")
    (project / "tests").mkdir()
    (project / "tests" / "test_m.py").write_text("from m import one\n\n\ndef test_one():\n    assert one() == 1\n")
    (project / "out").mkdir()
    (project / "out" / "run.txt").write_text("ignored\n")
    (project / "old.txt").write_text("tracked, then deleted from the work tree\n")
    subprocess.run(["git", "-C", str(project), "add", ".gitignore", "m.py", "tests/test_m.py", "old.txt"], check=True)
    (project / "old.txt").unlink()
    (project / "answers.md").write_text("the solutions\n")
    assert handout.project_files(str(project)) == [".gitignore", "m.py", "tests/test_m.py"]
    assert handout.project_files(str(project), untracked=True) == ["answers.md"]
    monkeypatch.setattr(handout, "ROOT", str(project))
    handout.main([f"--out={tmp_path / 'student'}"])
    assert "left out, as git does not track them (commit what students need): answers.md" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "student")) == sorted([".gitignore", "m.py", "tests", handout.GUIDE,
                                                               handout.MANIFEST])  # (no answers.md, no out/)
    for n in "bcde":  # five untracked are all named; past five, "and N more"
        (project / f"{n}.txt").write_text("")
    handout.main([f"--out={tmp_path / 'student2'}"])
    assert capsys.readouterr().out.endswith("(commit what students need): answers.md, b.txt, c.txt, d.txt, e.txt\n")
    (project / "f.txt").write_text("")
    handout.main([f"--out={tmp_path / 'student3'}"])
    assert capsys.readouterr().out.endswith(": answers.md, b.txt, c.txt, d.txt, e.txt and 1 more\n")


def test_a_handout_is_graded_by_the_exercises_it_was_written_with(tmp_path, monkeypatch, capsys):
    """In a student's copy --grade grades the exercises the handout recorded:
    a file that does not parse (a half-written line) left the grader with a
    traceback and no grades, and a deleted marker dropped its exercise from
    the list, unsolved, with the status 0 of all solved."""
    project, out = tmp_path / "project", tmp_path / "out"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_m.py").write_text("from m import A, g\n\n\ndef test_g():\n    assert g() == 1\n\n\n"
                                                 "def test_method():\n    assert A().f() == {'a': 1}\n")
    (project / "m.py").write_text(SOURCE)
    handout.write_handout(str(project), str(out))
    monkeypatch.chdir(out)
    monkeypatch.syspath_prepend(str(out))  # (the graded tests import m: pytest runs in this process)
    source = (out / "m.py").read_text()
    (out / "m.py").write_text(source.replace("# Exercise (easy): a function. Graded by: tests/test_m.py\n", "")
                              .replace("def h():", "def h(:"))
    assert handout.grade_all(str(out)) == 1
    said = capsys.readouterr().out
    assert "  1. to do   m.py: A.f (0 of 1 tests pass)" in said and "  2. to do   m.py: g (0 of 1 tests pass)" in said
    (out / "m.py").write_text(handout.restore(handout.restore(source, "g", "    return 1\n"), "A.f", "        return x\n"))
    assert handout.grade_all(str(out)) == 0


def test_a_relative_grade_json_is_taken_from_where_the_command_runs(tmp_path, monkeypatch):
    """grade_all works in the project's folder: a relative --grade_json is made
    absolute from the caller's folder first."""
    paths = []
    monkeypatch.setattr(handout, "grade_all", lambda root, json_path="": paths.append(json_path) or 0)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        handout.main(["--grade=True", "--grade_json=grades.json"])
    assert e.value.code == 0 and paths == [str(tmp_path / "grades.json")]
