"""
Command-line configuration, nanoGPT-style.

A script declares its settings as plain module-level globals, each with a
trailing comment, collects them, and passes them on explicitly as one object:

    batch_size = 16  # examples per optimizer step
    lr = 5.5e-6      # peak learning rate
    DEFAULTS = {k: v for k, v in globals().items() if ...}   # the settings above
    c = settings(DEFAULTS, configure(dict(DEFAULTS, __file__=__file__)))
    train(c)         # functions read c.lr, c.batch_size; never the globals

and is run as

    python train_sft.py config/sft_toy.py --batch_size=32 --lr=1e-5

An argument without `--` is a Python config file whose assignments override
the defaults (its imports, functions, classes and _private names are its own
helpers; a file that does not run is an error naming its line); `--key=value`
overrides one setting, and the config files too, wherever it stands among
them (files apply first, in their order; the value is read with
ast.literal_eval, and a bare
word is taken as a string; a setting whose default is a string takes the
text as it is, but for None and quotes around it). A key that does not
exist is an error that lists the valid settings, a value of another type
than the default (a list too) one that names the default's type; None
passes here for any setting, and validate.Problems.no_none refuses it where
a script cannot take it. `--help`
prints every setting with its default and comment.
"""
import ast
import difflib
import os
import re
import sys
import traceback
from types import ModuleType, SimpleNamespace

SIMPLE_TYPES = (bool, int, float, str, type(None))
SET_IN_FILE = {}  # {key: ("FILE:LINE", value)}: what the last apply() read from config files (for errors)


class ConfigError(ValueError):
    pass


def _settings(namespace):
    """The configurable globals: public names bound to simple values."""
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and isinstance(v, SIMPLE_TYPES)}


def _file_settings(path):
    """{key: (value, "FILE:LINE")} of a config file, run as Python. Its imports,
    functions and classes and its _private names are helpers; every other name
    it binds is meant as a setting, whatever its value (a list too: it must
    then be rejected, not dropped, or the run starts with the default).
    A file that cannot be read or run is a ConfigError naming its line."""
    if not os.path.exists(path):
        key = path.lstrip("-").partition("=")[0]
        if "=" in path and key.isidentifier():  # n_prompts=5, -n_prompts=5: a setting, mistyped
            raise ConfigError(f"config file not found: {path} (a setting is given as --{key}=...)")
        raise ConfigError(f"config file not found: {path}")
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a folder, not a config file")
    try:
        with open(path, "rb") as f:
            data = f.read()
        tree = ast.parse(data.decode("utf-8-sig"), path)  # (-sig: a byte-order mark is fine)
        code = compile(tree, path, "exec")  # (some mistakes only compile finds: `return` outside a function)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror})")
    except UnicodeDecodeError as e:  # (e.object: the bytes decoded, less a byte-order mark)
        line = e.object[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {e.object[e.start]:#04x})")
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: {e.msg}")
    for node in tree.body:  # lines that look like settings in another format but set nothing in Python
        if isinstance(node, ast.AnnAssign) and node.value is None and isinstance(node.target, ast.Name):
            name = node.target.id  # `n_prompts: 10` (YAML): an annotation
            raise ConfigError(f"{path}:{node.lineno}: '{name}: ...' sets nothing (config files are Python): "
                              f"write {name} = ...")
        if isinstance(node, ast.Expr) and isinstance(node.value, (ast.Dict, ast.List, ast.Set, ast.Tuple, ast.Name,
                                                                  ast.Attribute, ast.UnaryOp, ast.BinOp)):
            raise ConfigError(f"{path}:{node.lineno}: a value on its own sets nothing (config files are Python, "
                              f"key = value lines, not JSON)")
    namespace = {}
    try:
        exec(code, namespace)
    except Exception as e:
        lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__) if frame.filename == path]
        raise ConfigError(f"{path}{f':{lines[-1]}' if lines else ''}: {type(e).__name__}: {e}")
    imported = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):  # `from os import environ`: a helper, not a setting
            imported |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    lines = _setting_lines(tree)
    return {k: (v, f"{path}:{' or '.join(map(str, lines[k]))}" if k in lines else path) for k, v in namespace.items()
            if not k.startswith("_") and k not in imported and not isinstance(v, ModuleType) and not callable(v)}


def _setting_lines(tree):
    """{key: the lines that may have set its value}, for the errors: the last
    top-level `key = ...` (it ran after every line above it), and those inside
    a block (`if`, `for`) after it, which may have run instead. Functions and
    classes bind names of their own."""
    found = {}

    def visit(node, top):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if isinstance(child, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for target in child.targets if isinstance(child, ast.Assign) else [child.target]:
                    if isinstance(target, ast.Name):
                        found.setdefault(target.id, []).append((child.lineno, top))
            visit(child, False)
    visit(tree, True)
    lines = {}
    for key, assignments in found.items():
        tops = [line for line, top in assignments if top]
        last = tops[-1] if tops else 0
        lines[key] = ([last] if tops else []) + sorted(line for line, top in assignments if not top and line > last)
    return lines


def _comments(path):
    """{key: trailing comment} for `key = value  # comment` lines of a script
    (indented `key=value,  # comment` lines of a settings dict count too). A
    comment continued on the next lines, each a bare comment indented further
    than the key (in any column: a long value pushes the first comment right),
    is taken whole; a comment at the key's own indentation is a section
    heading. The first assignment of a key counts (the settings come first,
    before any function reuses the name)."""
    if not path or not os.path.exists(path):
        return {}
    setting = re.compile(r"^\s*([A-Za-z_]\w*)\s*=.*?(#\s*)(.*)$")
    comments, last = {}, None  # last: (key, its column) while continuation lines may follow
    with open(path) as f:
        for line in f:
            m = setting.match(line)
            if m and m.group(1) not in comments:
                comments[m.group(1)] = m.group(3).rstrip()
                last = (m.group(1), m.start(1))
            elif last and line.lstrip().startswith("#") and line.index("#") > last[1]:
                comments[last[0]] += " " + line.strip()[1:].strip()
            else:
                last = None
    return comments


class UnknownSetting(ConfigError):
    """A key that is none of the script's settings (apply lists the valid ones once)."""


def _meant(key, settings):
    """The settings a key that is none of them may mean, after the short
    names settings use (lr for learning_rate, n_ for num_, _ for -:
    --sft-learning-rate is sft_lr): the settings it begins or is a word of
    (--lr: sft_lr, dpo_lr, ...; --temp: temperature, not tp), else close
    spellings (--numprompts: n_prompts)."""
    short = key.lower().replace("-", "_").replace("learning_rate", "lr").replace("num_", "n_")
    return [s for s in settings if short in s.split("_") or s.startswith(short)][:4] or \
        difflib.get_close_matches(short, settings, n=3)


def _check(key, value, settings, source):
    if key not in settings:
        near = _meant(key, settings)
        hint = f" Did you mean {' or '.join(near)}?" if near else ""
        raise UnknownSetting(f"{source}: unknown setting {key!r}.{hint}")
    default = settings[key]
    if isinstance(value, SIMPLE_TYPES):  # not a list or dict from a config file
        if default is None or value is None or type(value) is type(default):
            return value
        if type(default) is float and type(value) is int:
            return float(value)  # --lr=1 means 1.0
    want = "bool, int, float, str or None" if default is None else \
        f"{type(default).__name__} like its default {default!r}"
    spell = " (write True or False)" if type(default) is bool else ""  # not true, 1 or yes
    raise ConfigError(f"{source}: {key} must be {want}, got {type(value).__name__} {value!r}{spell}")


def split_arguments(argv):
    """A command line's config files (in order), its --key=value arguments,
    and its `--key value` pairs (`--lr 1e-5`, `--init_from out/M1`: a bare
    --key, then an argument that is not a Python file), each as one string."""
    files, keys, spaced, i = [], [], [], 0
    while i < len(argv):
        arg, nxt = argv[i], argv[i + 1] if i + 1 < len(argv) else ""
        if arg.startswith("--") and "=" not in arg and nxt and not nxt.startswith("--") and not nxt.endswith(".py"):
            spaced.append(f"{arg} {nxt}")
            i += 2
            continue
        (keys if arg.startswith("--") else files).append(arg)
        i += 1
    return files, keys, spaced


def set_by_files(argv):
    """{key: "FILE:LINE"} of every setting the config files among argv set
    (whatever an argument does with it)."""
    return {k: where for arg in split_arguments(argv)[0] for k, (_, where) in _file_settings(arg).items()}


def set_in_file(key, value):
    """"FILE:LINE" of the config file line that set `key` to `value`, or None
    (None too where a later --key=value, or a later apply(), set another value)."""
    where, set_to = SET_IN_FILE.get(key, (None, None))
    return where if where and set_to == value and type(set_to) is type(value) else None


def parse_value(text):
    """'3' -> 3, '1e-5' -> 1e-05, 'True' -> True, 'None' -> None, 'toy' -> 'toy'
    ('16#x' stays text: literal_eval would drop the rest as a comment)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return text if "#" in text and not isinstance(value, str) else value


def help_text(namespace, comment_files=(), comments=None):
    settings, given = _settings(namespace), comments or {}
    comments = {}
    for path in [*comment_files, namespace.get("__file__")]:  # the script's own comments win
        comments.update(_comments(path))
    comments.update(given)  # and those it gives by name
    name = os.path.basename(namespace.get("__file__", "script.py"))
    doc = (namespace.get("__doc__") or "").strip()
    lines = [doc, "", f"usage: python {name} [config_file.py ...] [--key=value ...]", "", "settings:"]
    width = max(map(len, settings), default=0)
    for k, v in settings.items():
        note = f"  # {comments[k]}" if k in comments else ""
        lines.append(f"  --{k.ljust(width)} = {v!r}{note}")
    return "\n".join(lines)


def apply(namespace, argv):
    """Apply config files and --key=value overrides to namespace (a dict);
    returns the dict of settings after the overrides. Every bad one is named
    in one ConfigError (a file that cannot be read stops there)."""
    settings, problems, unknown = _settings(namespace), [], False
    SET_IN_FILE.clear()

    def put(key, value, where):
        try:
            namespace[key] = _check(key, value, settings, where)
        except UnknownSetting as e:
            nonlocal unknown
            problems.append(str(e))
            unknown = True
        except ConfigError as e:
            problems.append(str(e))
    files, keys, spaced = split_arguments(argv)
    problems += [f"{s}: write {s.replace(' ', '=', 1)}" for s in spaced]
    for arg in files + keys:  # the config files first, in their order: a --key=value has the last word
        if not arg.startswith("--"):
            in_file = _file_settings(arg)
            for key, (value, where) in in_file.items():
                put(key, value, where)
                SET_IN_FILE[key] = where, namespace.get(key)
            others = [k for k in in_file if k not in settings]
            if len(others) >= 3 and 2 * len(others) > len(in_file):  # (a config of selfreward.py given to a trainer)
                problems.append(f"{arg}: {len(others)} of its {len(in_file)} settings are not this script's: "
                                f"is it another script's config?")
        else:
            key, eq, text = arg[2:].partition("=")
            if not eq:
                flag = isinstance(settings.get(key), bool)  # a bare --dry_run, as other tools' flags are written
                problems.append(f"{arg}: expected --key=value" + (f" (write {arg}=True)" if flag else ""))
                continue
            value = parse_value(text)
            if isinstance(settings.get(key), str) and value is not None and not isinstance(value, str):
                value = text  # a text setting takes the text: --run_name=2024, --seeds=1,2 (not a number, a tuple)
            put(key, value, arg)
    valid = [f"Valid settings: {', '.join(sorted(settings))}"] if unknown else []  # once, however many were unknown
    if len(problems) > 1:
        raise ConfigError("\n".join([f"{len(problems)} problems with the settings:",
                                     *(f"  - {p}" for p in problems), *valid]))
    if problems:
        raise ConfigError(" ".join(problems + valid))
    return _settings({k: namespace[k] for k in settings})


def configure(namespace, argv=None, comment_files=(), comments=None):
    """For scripts: apply sys.argv to the script's settings (a dict of its
    defaults, with __file__ and __doc__ for --help) and return them; print
    --help and errors (exit status 2) the way command-line users expect.
    comment_files: other files whose `key = value  # comment` lines explain
    settings the script takes from them; comments: {key: text} that --help
    shows instead (a setting that reads otherwise in this script)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        from distributed import is_rank0  # (once under torchrun)
        if is_rank0():
            print(help_text(namespace, comment_files, comments))
        sys.exit(0)
    try:
        return apply(namespace, argv)
    except ConfigError as e:
        fail(e)


def fail(message):
    """End a script for bad input: one line "error: ...", exit status 2
    (printed once under torchrun: distributed.stop)."""
    from distributed import stop  # here: the configurator itself needs no torch
    stop(f"error: {message}", 2)


def library(doc, script, runs_it):
    """The command line of a module that is a library, not a script: --help
    prints its docstring (what it holds); anything else says what runs it."""
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(doc.strip())
    else:
        fail(f"{script} is a library, not a script (python {script} --help says what it holds); {runs_it}")


def settings(defaults, overrides=None):
    """The settings a script runs with: its defaults with `overrides` (a dict)
    on top, as an object (c.lr, c.batch_size). Unknown keys are an error."""
    unknown = set(overrides or {}) - set(defaults)
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    return SimpleNamespace(**{**defaults, **(overrides or {})})


if __name__ == "__main__":
    library(__doc__, "configurator.py", "every script reads its settings through it")
