"""nanoGPT-style --key=value overrides and config files."""
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from configurator import ConfigError, _comments, _file_settings, apply, help_text, parse_value, set_in_file, settings


def defaults():
    return {"batch_size": 16, "lr": 5.5e-6, "model": "toy", "compile": False, "init_from": None,
            "__file__": "x.py", "_private": 1, "os": sys}


def test_overrides_keep_types():
    ns = defaults()
    out = apply(ns, ["--batch_size=32", "--lr=1", "--model=llama2-7b", "--compile=True", "--init_from='out/M1'"])
    assert ns["batch_size"] == 32 and ns["lr"] == 1.0 and type(ns["lr"]) is float
    assert ns["model"] == "llama2-7b" and ns["compile"] is True and ns["init_from"] == "out/M1"
    assert out == {"batch_size": 32, "lr": 1.0, "model": "llama2-7b", "compile": True, "init_from": "out/M1"}
    # a text setting takes the text as it is, where Python would read a number or a tuple
    apply(ns, ["--model=2024"])
    assert ns["model"] == "2024"
    apply(ns, ["--model=1,2"])
    assert ns["model"] == "1,2"
    with pytest.raises(ConfigError, match="batch_size must be int"):  # other settings keep their types
        apply(ns, ["--batch_size=1,2"])


def test_none_is_taken_for_any_setting():
    """--key=None passes for any setting, a text one too (not the text 'None'):
    the scripts' checks name it (validate.Problems.no_none)."""
    ns = defaults()
    apply(ns, ["--lr=None", "--model=None", "--batch_size=None"])
    assert ns["lr"] is None and ns["model"] is None and ns["batch_size"] is None


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("1e-5") == 1e-5 and parse_value("None") is None
    assert parse_value("toy") == "toy" and parse_value("'3'") == "3" and parse_value("False") is False
    assert parse_value("16#x") == "16#x" and parse_value("'a#b'") == "a#b"  # not 16: the rest is no comment


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown setting 'batchsize'. Did you mean batch_size\? Valid settings: "
                                          r"batch_size, compile, init_from, lr, model"):
        apply(defaults(), ["--batchsize=3"])
    with pytest.raises(ConfigError, match=r"unknown setting 'xyz'. Valid settings"):  # nothing near: no guess
        apply(defaults(), ["--xyz=3"])


def test_wrong_type():
    with pytest.raises(ConfigError, match="batch_size must be int like its default 16, got str 'big'"):
        apply(defaults(), ["--batch_size=big"])
    with pytest.raises(ConfigError, match="compile must be bool"):
        apply(defaults(), ["--compile=1"])
    with pytest.raises(ConfigError, match="expected --key=value"):
        apply(defaults(), ["--compile"])
    with pytest.raises(ConfigError, match=r"^--lr 1e-5: write --lr=1e-5$"):  # (not "config file not found: 1e-5")
        apply(defaults(), ["--lr", "1e-5"])
    with pytest.raises(ConfigError, match=r"^--lr -1e-5: write --lr=-1e-5$"):  # a value may start with a minus
        apply(defaults(), ["--lr", "-1e-5"])
    readme = os.path.join(ROOT, "README.md")  # a file that exists is a value too, unless it is Python
    with pytest.raises(ConfigError) as e:
        apply(defaults(), ["--init_from", readme])
    assert str(e.value) == f"--init_from {readme}: write --init_from={readme}"
    with pytest.raises(ConfigError, match="batch_size must be int like its default 16, got str '16#x'"):
        apply(defaults(), ["--batch_size=16#x"])
    # several at once: all named in one message (the first alone was said, then the next after a fix)
    with pytest.raises(ConfigError) as e:
        apply(defaults(), ["--batch_size=big", "--compile", "--lr=fast"])
    assert str(e.value).splitlines() == [
        "3 problems with the settings:", "  - --batch_size=big: batch_size must be int like its default 16, got str 'big'",
        "  - --compile: expected --key=value (write --compile=True)",
        "  - --lr=fast: lr must be float like its default 5.5e-06, got str 'fast'"]


def test_errors_say_how_to_write_it(tmp_path):
    """A bool written as other tools write it gets the spelling; several unknown
    settings list the valid ones once; a config file mostly of unknown settings
    is asked about (another script's config given to this one)."""
    for text in ("true", "1", "yes"):
        with pytest.raises(ConfigError, match=r"compile must be bool like its default False, got \w+ .* \(write True "
                                              r"or False\)$"):
            apply(defaults(), [f"--compile={text}"])
    with pytest.raises(ConfigError) as e:
        apply(defaults(), ["--xyz=3", "--abc=4"])
    assert str(e.value).splitlines() == [
        "2 problems with the settings:", "  - --xyz=3: unknown setting 'xyz'.", "  - --abc=4: unknown setting 'abc'.",
        "Valid settings: batch_size, compile, init_from, lr, model"]
    other = tmp_path / "other.py"
    other.write_text("lr = 0.1\nn_prompts = 8\nmeta_judge = True\npair_by = 'judge'\n")
    with pytest.raises(ConfigError) as e:
        apply(defaults(), [str(other)])
    assert f"{other}: 3 of its 4 settings are not this script's: is it another script's config?" in str(e.value)
    assert str(e.value).count("Valid settings") == 1
    other.write_text("lr = 0.1\nn_prompts = 8\nmeta_judge = True\n")  # 2 of 3: a few typos, not asked about
    with pytest.raises(ConfigError) as e:
        apply(defaults(), [str(other)])
    assert "another script's config" not in str(e.value) and str(e.value).startswith("2 problems")
    other.write_text("lr = 0.1\nbatch_size = 8\nmodel = 'toy'\nn_prompts = 8\nmeta_judge = True\npair_by = 'judge'\n")
    with pytest.raises(ConfigError) as e:  # 3 of 6: half, not most, is not asked about either
        apply(defaults(), [str(other)])
    assert "another script's config" not in str(e.value) and str(e.value).startswith("3 problems")
    # a bare --flag before a config file: the file is not taken as the flag's value
    f = tmp_path / "c.py"
    f.write_text("lr = 0.5\n")
    with pytest.raises(ConfigError, match=r"^--compile: expected --key=value \(write --compile=True\)$"):
        apply(defaults(), ["--compile", str(f)])
    # a value with spaces given apart (the shell split it off): the whole value after the '=' in the hint
    with pytest.raises(ConfigError, match=r"write --model=a small one$"):
        apply(defaults(), ["--model", "a small one"])
    # a word after a setting is a config file's name, not the setting's value
    with pytest.raises(ConfigError, match=r"config file not found: extra"):
        apply(defaults(), ["--batch_size=8", "extra"])


def test_config_file(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("batch_size = 64\nlr = 2e-5  # a comment\nimport math\n")
    ns = defaults()
    apply(ns, [str(f), "--batch_size=8"])  # --key=value wins over a config file
    assert ns["batch_size"] == 8 and ns["lr"] == 2e-5
    ns = defaults()
    apply(ns, ["--batch_size=8", str(f)])  # wherever it stands (a file after it applied last, silently)
    assert ns["batch_size"] == 8 and ns["lr"] == 2e-5
    g = tmp_path / "g.py"
    g.write_text("lr = 3e-5\n")
    apply(ns, [str(g), str(f)])  # files apply in their order
    assert ns["lr"] == 2e-5 and ns["batch_size"] == 64
    f.write_text("warmup = 10\n")
    with pytest.raises(ConfigError, match=r"c\.py:1: unknown setting 'warmup'"):
        apply(defaults(), [str(f)])
    with pytest.raises(ConfigError, match="config file not found"):
        apply(defaults(), [str(tmp_path / "missing.py")])


def test_set_in_file_names_the_line_only_while_its_value_holds(tmp_path):
    """The errors' "(set at FILE:LINE)": only the last apply() counts, and only
    for the very value the file set (True is not the 1 a file wrote)."""
    f = tmp_path / "c.py"
    f.write_text("lr = 2e-5\ninit_from = 1\n")
    apply(defaults(), [str(f)])
    assert set_in_file("lr", 2e-5) == f"{f}:1" and set_in_file("lr", 3e-5) is None
    assert set_in_file("init_from", 1) == f"{f}:2" and set_in_file("init_from", True) is None
    apply(defaults(), ["--lr=2e-5"])  # a later command line without the file: nothing was set by it
    assert set_in_file("lr", 2e-5) is None


def test_a_file_that_changes_a_setting_again_is_named_at_that_line_and_helpers_classes_are_not(tmp_path):
    """`lr *= 2` sets lr again (its line is the one named); a class's body
    (a helper in the file) sets no setting, whatever it names."""
    f = tmp_path / "c.py"
    f.write_text("lr = 0.1\nlr *= 2\n")
    assert apply(defaults(), [str(f)])["lr"] == 0.2 and set_in_file("lr", 0.2) == f"{f}:2"
    f.write_text("lr = 0.1\nclass _Helper:\n    lr = 5\n")
    assert apply(defaults(), [str(f)])["lr"] == 0.1 and set_in_file("lr", 0.1) == f"{f}:1"


def test_comments_are_read_whole_and_trimmed(tmp_path):
    """A setting's comment: all after its first '#' (a '#' inside it kept),
    trailing blanks trimmed; a comment after a blank line belongs to no setting."""
    script = tmp_path / "s.py"
    script.write_text("lr = 1e-5  # the peak learning rate   \nn_shots = 8  # as in the paper's Figure #2\n"
                      "\ndef f():\n    # helper: not about n_shots\n    pass\n")
    assert _comments(str(script)) == {"lr": "the peak learning rate", "n_shots": "as in the paper's Figure #2"}


def test_an_unknown_setting_suggests_what_it_may_mean():
    """The short names settings use: --num_prompts means n_prompts (num_ is
    n_), not every setting with 'prompts' in it; --lr lists up to four."""
    from configurator import _meant
    import selfreward
    assert _meant("num_prompts", selfreward.DEFAULTS) == ["n_prompts"]
    assert _meant("lr", selfreward.DEFAULTS) == ["pretrain_lr", "sft_lr", "sft_min_lr", "dpo_lr"]  # (of 5)


def test_settings_refuses_unknown_keys():
    assert settings({"lr": 1.0}, {"lr": 2.0}).lr == 2.0
    with pytest.raises(ConfigError, match="^unknown settings: batch, lrr$"):
        settings({"lr": 1.0}, {"lrr": 2.0, "batch": 1})


def test_a_config_files_lists_and_dicts_are_errors_and_its_helpers_are_not(tmp_path):
    """A setting in a file is a plain value: a list (where the setting is a
    comma-separated text) is refused, not dropped for the default, and so is a
    misspelt key with one; imports, functions, classes and _private names are
    the file's helpers."""
    f = tmp_path / "c.py"
    f.write_text('import math\nfrom os.path import join\nfrom os import environ, sep as separator\n_sizes = [1, 2]\n'
                 'def double(x):\n    return 2 * x\nclass Helper:\n    pass\n'
                 'batch_size = double(max(_sizes))\nmodel = join("a", "b")\n')
    ns = defaults()
    apply(ns, [str(f)])
    assert ns["batch_size"] == 4 and ns["model"] == "a/b"
    for text, message in [('lr = 1e-3\nmodel = ["toy", "toy-large"]\n',
                           r"c\.py:2: model must be str like its default 'toy', got list \['toy', 'toy-large'\]"),
                          ("init_from = (1, 2)\n", r"c\.py:1: init_from must be bool, int, float, str or None, got tuple"),
                          ('batch_size = {"a": 1}\n', r"c\.py:1: batch_size must be int like its default 16, got dict"),
                          ('modle = ["toy"]\n', r"c\.py:1: unknown setting 'modle'. Did you mean model\?")]:
        f.write_text(text)
        with pytest.raises(ConfigError, match=message):
            apply(defaults(), [str(f)])
    with pytest.raises(ConfigError, match=r"--batch_size=\[1\]: batch_size must be int"):
        apply(defaults(), ["--batch_size=[1]"])


def test_a_config_file_that_cannot_be_read_or_run_is_one_error_naming_its_line(tmp_path):
    f = tmp_path / "c.py"
    for text, message in [(b"lr = 1e-3\nbatch_size = 8 +\n", r"c\.py:2: invalid syntax"),
                          (b"lr = 1e-3\n\nbatch_size = eight\n", r"c\.py:3: NameError: name 'eight' is not defined"),
                          (b"def f():\n    return 1 / 0\n\nlr = f()\n", r"c\.py:2: ZeroDivisionError"),
                          (b"lr = 1e-3\nmodel = 'caf\xe9'\n", r"c\.py:2: not UTF-8 text \(byte 0xe9\)"),
                          (b"lr = 1e-3  # caf\xe9\n", r"c\.py:1: not UTF-8 text"),
                          # after a byte-order mark: the same line and byte (the codec drops the mark first)
                          (b"\xef\xbb\xbflr = 1e-3\nmodel = 'caf\xe9'\n", r"c\.py:2: not UTF-8 text \(byte 0xe9\)"),
                          (b"lr = 1e-3\nreturn\n", r"c\.py:2: 'return' outside function")]:  # found by compile
        f.write_bytes(text)
        with pytest.raises(ConfigError, match=message):
            apply(defaults(), [str(f)])
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        apply(defaults(), [str(tmp_path)])
    f.write_bytes(b"\xef\xbb\xbfbatch_size = 2\n")  # a byte-order mark is fine
    assert apply(defaults(), [str(f)])["batch_size"] == 2


def test_a_config_file_in_another_format_or_a_setting_without_dashes_is_an_error(tmp_path):
    """YAML's `key: value` is valid Python (an annotation) and JSON's object a
    valid expression: both set nothing, and the run started with the defaults.
    A setting typed without -- was 'config file not found'; one in capitals
    got no suggestion."""
    for name, text, message in [("c.yaml", "lr: 1e-5\n", r"c\.yaml:1: 'lr: \.\.\.' sets nothing \(config files are "
                                                         r"Python\): write lr = \.\.\."),
                                ("c.json", '{\n "lr": 1e-5\n}\n', r"c\.json:1: a value on its own sets nothing"),
                                ("c.yml", "- lr\n", r"c\.yml:1: a value on its own sets nothing"),
                                ("c.py", '"""A docstring."""\nlr = 2e-5\nprint("and calls")\n(batch_size := 4)\n',
                                 None)]:
        (tmp_path / name).write_text(text)
        if message:
            with pytest.raises(ConfigError, match=message):
                apply(defaults(), [str(tmp_path / name)])
        else:
            assert apply(defaults(), [str(tmp_path / name)])["lr"] == 2e-5
    for arg in ("lr=0.1", "-lr=0.1"):
        with pytest.raises(ConfigError, match=rf"config file not found: {arg} \(a setting is given as --lr=\.\.\.\)"):
            apply(defaults(), [arg])
    with pytest.raises(ConfigError, match=r"unknown setting 'BATCH_SIZE'. Did you mean batch_size\?"):
        apply(defaults(), ["--BATCH_SIZE=3"])
    # a path with "=" in it whose start is no setting's name is only a file not found
    with pytest.raises(ConfigError, match=r"^config file not found: runs/lr=0\.1\.py$"):
        apply(defaults(), ["runs/lr=0.1.py"])
    # the settings' short names: learning_rate is lr, num_ is n_; a part of a name finds the names
    loop = {"sft_lr": 1e-5, "dpo_lr": 1e-6, "n_candidates": 4, "seed": 1, "tp": 0, "temperature": 0.7}
    for arg, meant in (("--sft_learning_rate=1e-3", "sft_lr"), ("--num_candidates=8", "n_candidates"),
                       ("--lr=1", "sft_lr or dpo_lr"), ("--spo_lr=1", "dpo_lr or sft_lr"),  # two close spellings
                       ("--temp=1", "temperature"), ("--sft-learning-rate=1", "sft_lr")):  # (temp was: tp)
        with pytest.raises(ConfigError, match=rf"unknown setting '{arg[2:arg.index('=')]}'. Did you mean {meant}\?"):
            apply(loop, [arg])


def test_script_help_and_exit_codes(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        '"""A demo script."""\nimport sys\nsys.path.insert(0, %r)\n'
        'steps = 10  # how many steps\nname = "x"  # run name\n'
        'from configurator import configure\nconfigure(globals())\nprint(steps, name)\n' % ROOT)
    run = lambda *a: subprocess.run([sys.executable, str(script), *a], capture_output=True, text=True)
    r = run("--help")
    assert r.returncode == 0 and "A demo script." in r.stdout
    assert run("-h").stdout == r.stdout  # -h as other tools take it (not "config file not found: -h")
    assert "--steps = 10  # how many steps" in r.stdout and "--name  = 'x'  # run name" in r.stdout
    r = run("--steps=3", "--name=y")
    assert r.returncode == 0 and r.stdout.strip() == "3 y"
    r = run("--stepz=3")
    assert r.returncode == 2 and "unknown setting 'stepz'" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.py"
    bad.write_text("steps = 2\nname = 'y' +\n")
    r = run(str(bad))
    assert r.returncode == 2 and r.stderr == f"error: {bad}:2: invalid syntax\n"


def test_help_shows_comments_continued_on_the_next_lines(tmp_path):
    """A comment that goes on over the next lines, indented (in its column or
    left of it, when a long value pushed it right), is shown whole; a section
    comment at the key's indentation is not part of it, in a script or in a
    settings dict; a later line that reuses a setting's name does not
    replace it."""
    script = tmp_path / "script.py"
    script.write_text('steps = 10  # how many steps,\n'
                      '            # counted over all ranks\n'
                      '# a section comment, not part of it\n'
                      'name = "x"  # run name\n'
                      'kinds = "a,b,c,d,e,f,g,h"  # the kinds drawn; one of them\n'
                      '            # is rare\n'
                      'SETTINGS = dict(\n'
                      '    lr=1e-3,  # peak rate,\n'
                      '              # after warm-up\n'
                      '    # the schedule\n'
                      '    warmup=10,  # steps\n'
                      ')\n'
                      'def f():\n    steps = 3  # a local, not the setting\n')
    assert _comments(str(script)) == {"steps": "how many steps, counted over all ranks", "name": "run name",
                                      "kinds": "the kinds drawn; one of them is rare",
                                      "lr": "peak rate, after warm-up", "warmup": "steps"}


def test_help_takes_the_scripts_own_comment_over_another_files(tmp_path):
    """comment_files explain settings a script takes from them; a comment in
    the script itself wins, and a comment given by name wins over both."""
    script, other = tmp_path / "script.py", tmp_path / "other.py"
    script.write_text("steps = 10  # the script's own\n")
    other.write_text("steps = 5  # the other file's\nname = 'x'  # from the other file\n")
    text = help_text({"steps": 10, "name": "x", "__file__": str(script)}, comment_files=[str(other)])
    assert "--steps = 10  # the script's own" in text and "--name  = 'x'  # from the other file" in text
    text = help_text({"steps": 10, "__file__": str(script)}, [str(other)], comments={"steps": "given"})
    assert "--steps = 10  # given" in text


def test_every_script_answers_help(capsys, monkeypatch):
    """Each script as the user runs it (runpy: as __main__, in this process)."""
    import runpy
    for script, args, code, out in [("selfreward.py", ["--help"], 0, "--n_candidates"),
                                    ("train_sft.py", ["--help"], 0, "--keep_state"),
                                    ("train_dpo.py", ["--help"], 0, "--beta"),
                                    ("sample.py", ["--help"], 0, "--save_every"),
                                    ("judge.py", ["--help"], 0, "LLM-as-a-Judge"),
                                    ("bench.py", ["--help"], 0, "--sample_new_tokens"),
                                    ("seeds.py", ["--help"], 0, "usage: python seeds.py"),
                                    ("seeds.py", ["--seed_data=data/oasst"], 2,  # before any run
                                     "seeds.py compares the toy world's grades"),
                                    ("report.py", ["--help"], 0, "report.md"),
                                    ("judge.py", [], 2, "error: judge.py is a library"),
                                    ("report.py", ["out/toy"], 2, "delete out/<run>/done/report"),
                                    ("validate.py", [], 2, "error: validate.py is a library"),
                                    *[(f"{m}.py", ["--help"], 0, first) for m, first in [
                                        ("model", "The Llama network"), ("checkpoint", "Checkpoints: every file"),
                                        ("tokenizer", "Tokenizers and chat templates"), ("training", "What "
                                        "train_sft.py and train_dpo.py share"), ("run_folder", "The run folder"),
                                        ("distributed", "Running one script from a laptop"),
                                        ("configurator", "Command-line configuration")]],
                                    ("model.py", [], 2, "error: model.py is a library"),
                                    ("tokenizer.py", ["-h"], 0, "Tokenizers and chat templates"),
                                    ("evaluation.py", [], 2, "error: evaluation.py is a library"),
                                    ("bench.py", ["smaple"], 2, "no section 'smaple'"),
                                    ("bench.py", ["train", "--train_models=toy,toyx"], 2,  # before any timing
                                     "train_models: no preset 'toyx'"),
                                    ("bench.py", ["train", "--threads=-1"], 2, "threads = -1: must be >= 0")]:
        monkeypatch.setattr(sys, "argv", [script, *args])
        try:
            runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
            status = 0
        except SystemExit as e:
            status = e.code or 0
        said = capsys.readouterr()
        assert status == code and out in (said.out if code == 0 else said.err), script


def test_bench_checks_its_numbers_before_any_timing():
    """bench.py's settings are checked before minutes of timing: a count that
    would divide by zero, time nothing or fail after the timing ran, and rows
    longer than the model's context (tok/s would count tokens never made)."""
    import bench
    from configurator import settings
    check = lambda **kw: bench.problems(settings(bench.DEFAULTS, kw))
    assert check() == []
    assert check(repeats=0, sample_new_tokens=0, judge_n=0, train_batch_size=0, threads=-1) == [
        "threads = -1: must be >= 0", "repeats = 0: must be >= 1", "sample_new_tokens = 0: must be >= 1",
        "judge_n = 0: must be >= 1", "train_batch_size = 0: must be >= 1"]
    assert check(sample_new_tokens=961) == [
        "sample_new_tokens = 961: 64 prompt tokens and these must fit toy's context of 1024"]
    assert check(sample_models="toy,toy-tiny", sample_new_tokens=449, judge_rubric=421) == [
        "sample_new_tokens = 449: 64 prompt tokens and these must fit toy-tiny's context of 512"]  # the smallest
    assert check(sample_models="toy-tiny,toy", judge_rubric=421) == [
        "judge_rubric = 421: with 60 prompt tokens and judge_new_tokens it must fit toy-tiny's context of 512"]
    assert check(repeats=None, comm_dtype="fp8") == ["repeats = None: give a value like its default"]
    assert check(comm_dtype="fp8") == ["comm_dtype = 'fp8': must be 'float32' or 'bfloat16'"]


def test_a_setting_a_file_sets_twice_is_named_at_the_line_that_holds(tmp_path):
    """A config file that sets a key twice runs as Python: the last line
    wins, so that is the line an error must name ("(set at FILE:LINE)"),
    not the first one, which the user would then fix in vain. A value the
    configurator converts (lr = 1 for a float setting is 1.0) is still the
    one the file set."""
    f = tmp_path / "c.py"
    f.write_text("lr = 2e-5\nbatch_size = 8\nlr = 3e-5\n")
    apply(defaults(), [str(f)])
    assert set_in_file("lr", 3e-5) == f"{f}:3" and set_in_file("batch_size", 8) == f"{f}:2"
    f.write_text("batch_size = 8\nbatch_size = 'big'\n")  # the type error is the second line's
    with pytest.raises(ConfigError, match=rf"^{f}:2: batch_size must be int"):
        apply(defaults(), [str(f)])
    f.write_text("model = 'x'\nlr = 1\n")  # an int for a float setting: kept as 1.0, still set at line 2
    ns = defaults()
    apply(ns, [str(f)])
    assert ns["lr"] == 1.0 and type(ns["lr"]) is float and set_in_file("lr", 1.0) == f"{f}:2"
    # set again inside a block, which may or may not have run: both lines are named (not the first alone,
    # whose value is not the one that failed); a top-level line after the block ran last
    f.write_text("import os\nlr = 1e-5\nif not os.environ.get('BIG'):\n    lr = -1e-5\n"
                 "for _ in range(1):\n    batch_size = 8\nbatch_size = 4\n"
                 "model = 'toy'\ndef helper():\n    model = 'x'\n    return model\n")
    apply(defaults(), [str(f)])
    assert set_in_file("lr", -1e-5) == f"{f}:2 or 4" and set_in_file("batch_size", 4) == f"{f}:7"
    # a function's own `model = ...` (line 10) sets nothing of the file's: the top-level line 8 did
    assert _file_settings(str(f))["lr"] == (-1e-5, f"{f}:2 or 4") and _file_settings(str(f))["model"] == ("toy", f"{f}:8")


def test_an_annotated_setting_with_a_value_is_a_setting(tmp_path):
    """`lr: float = 2e-5` sets lr, as Python runs it (only a bare annotation,
    `lr: 2e-5` as YAML writes it, sets nothing and is refused)."""
    f = tmp_path / "c.py"
    f.write_text("lr: float = 2e-5\n")
    assert apply(defaults(), [str(f)])["lr"] == 2e-5 and set_in_file("lr", 2e-5) == f"{f}:1"
    f.write_text("lr: 2e-5\n")
    with pytest.raises(ConfigError, match=rf"^{f}:1: 'lr: ...' sets nothing"):
        apply(defaults(), [str(f)])


def test_a_bool_is_not_taken_for_a_number(tmp_path):
    """bool is a subclass of int in Python: taken for one (isinstance),
    --batch_size=True or a config file's `batch_size = True` would run with
    a batch of 1. A number setting takes a number, not a flag (a float one
    too: False is not the 0 it would pass for)."""
    for args in (["--batch_size=True"], ["--lr=False"]):
        with pytest.raises(ConfigError, match=r"must be (int|float) like its default .*, got bool"):
            apply(defaults(), args)
    f = tmp_path / "c.py"
    f.write_text("batch_size = True\n")
    with pytest.raises(ConfigError, match=r"c\.py:1: batch_size must be int like its default 16, got bool True"):
        apply(defaults(), [str(f)])
