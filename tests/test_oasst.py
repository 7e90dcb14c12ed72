"""data/prepare_oasst.py on the real oasst1 validation split and on bad input."""
import json
import random
import subprocess
import sys

import pytest

from conftest import ROOT, shared_file
from data import read_jsonl, write_jsonl
from data.prepare_oasst import empty_set_warnings, prepare, report


@pytest.fixture(scope="module")
def validation():
    path = shared_file("oasst1", "en-validation.jsonl")
    return path, {m["message_id"]: m for m in read_jsonl(path)}


def test_validation_as_the_eft_eval_set(validation):
    path, _ = validation
    sets, kept, dropped = prepare([path], eval_files=[path])
    # the paper's EFT eval size: 541 ranked replies (186 prompts)
    assert (len(sets["ift"]), len(sets["eft_train"]), len(sets["eft_eval"])) == (0, 0, 186)
    assert sum(len(g["responses"]) for g in sets["eft_eval"]) == 541
    assert sum(kept.values()) + sum(dropped.values()) == 2022  # every message accounted for
    assert dropped == {
        "later-turn message (only first turns are used)": 1263,
        "message whose parent is absent (e.g. in another language)": 3,
        "first-turn reply: deleted": 10,
        "first-turn reply: review not passed": 15,
        "first-turn reply: unranked": 1,
        "first-turn reply: its prompt is dropped": 1,
        "prompt: eval prompt with fewer than 2 usable ranked replies": 2,
    }


def test_default_split_of_the_validation_file(validation):
    path, messages = validation
    sets, kept, dropped = prepare([path])
    assert (len(sets["ift"]), len(sets["eft_train"]), len(sets["eft_eval"])) == (109, 55, 22)
    assert [sum(len(g["responses"]) for g in sets[k]) for k in ("eft_train", "eft_eval")] == [165, 64]
    assert sum(kept.values()) + sum(dropped.values()) == 2022
    for r in sets["ift"]:  # every IFT reply is a usable rank-0 English reply to a root prompt
        prompt, reply = messages[r["prompt_id"]], messages[r["response_id"]]
        assert prompt["parent_id"] is None and prompt["role"] == "prompter" and prompt["lang"] == "en"
        assert reply["parent_id"] == prompt["message_id"] and reply["role"] == "assistant"
        assert reply["rank"] == 0 and reply["lang"] == "en" and not reply["deleted"] and reply["review_result"]
        assert (r["prompt"], r["response"]) == (prompt["text"].strip(), reply["text"].strip())
    for g in sets["eft_train"] + sets["eft_eval"]:
        human = [messages[i]["rank"] for i in g["response_ids"]]
        assert human == sorted(human) and g["ranks"] == list(range(len(human))) and len(human) >= 2
        assert all(messages[i]["parent_id"] == g["prompt_id"] for i in g["response_ids"])
    ids = [r["prompt_id"] for k in sets for r in sets[k]]
    assert len(ids) == len(set(ids)) == 186  # IFT and EFT prompts are disjoint


def test_the_command_lines_defaults_are_prepares(validation, tmp_path):
    """With no split settings the command splits as prepare() does by default (its seed and shares)."""
    path, _ = validation
    r = subprocess.run([sys.executable, "-m", "data.prepare_oasst", path, f"--out={tmp_path}"], cwd=ROOT,
                       capture_output=True, text=True, check=True)
    assert r.stdout.splitlines()[:-3] == report(*prepare([path]))
    assert "kept 22 eft_eval groups with 64 ranked replies" in r.stdout


def test_the_split_does_not_depend_on_the_order_of_the_lines(validation, tmp_path):
    """The validation file lists each prompt's replies in rank order; an export in
    any other order (by id, by date) must give the same sets: replies are sorted
    by rank, not taken in file order (without the sort 69 IFT examples of 186)."""
    path, messages = validation
    rows = list(messages.values())
    random.Random(0).shuffle(rows)
    shuffled = _write(tmp_path / "shuffled.jsonl", rows)
    for eval_files in ([], [path]):
        expected = prepare([path], eval_files=eval_files)
        got = prepare([shuffled], eval_files=[shuffled] if eval_files else [])
        assert got[0] == expected[0] and got[2] == expected[2]


def _msg(mid, parent, role="assistant", text=None, lang="en", rank=None, deleted=False, review=True):
    return {"message_id": mid, "parent_id": parent, "text": text or f"text of {mid}", "role": role,
            "lang": lang, "rank": rank, "deleted": deleted, "review_result": review}


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


BAD_ROWS = [
    _msg("p1", None, "prompter", "  Why is the sky blue?\n"),                  # (spaces around it: stripped)
    _msg("p1a", "p1", rank=0), _msg("p1b", "p1", rank=1.0), _msg("p1c", "p1", rank=2, deleted=True),
    _msg("p1d", "p1"), _msg("p1e", "p1", lang="de", rank=3),
    _msg("p1a-q", "p1a", "prompter"),                          # a later turn
    _msg("p2", None, "prompter", lang="de"), _msg("p2a", "p2", rank=0, lang="de"),
    _msg("orphan", "nowhere", rank=0),
    _msg("p3", None, "prompter", deleted=True),
    _msg("p4", None, "prompter", review=False), _msg("p4a", "p4", rank=0),
    _msg("p5", None, "prompter", "  why is the sky  blue? "),  # the same prompt again
    _msg("p6", None, "prompter"), _msg("p6a", "p6", rank=0, review=None),
    _msg("p6b", "p6", rank=1), _msg("p6c", "p6", rank=2),
    _msg("p1f", "p1", rank=float("nan")),                      # pandas' null: unranked
    _msg("p7", None, "assistant"),                              # a root that is no prompter's
    _msg("p8", None, "prompter", review="false"),               # a review that is not true is not passed
]


def test_bad_rows_are_skipped_and_counted(tmp_path):
    path = _write(tmp_path / "bad.jsonl", BAD_ROWS[:8] + [""] + BAD_ROWS[8:])  # a blank line is fine
    sets, kept, dropped = prepare([path], eft_eval_frac=0.0, ift_frac=1.0)
    assert sets["ift"] == [{"prompt": "Why is the sky blue?", "response": "text of p1a",
                            "prompt_id": "p1", "response_id": "p1a"}]
    # p6's rank-0 reply failed review: not IFT, and its two other replies form an EFT group
    assert sets["eft_train"] == [{"prompt": "text of p6", "responses": ["text of p6b", "text of p6c"],
                                  "ranks": [0, 1], "prompt_id": "p6", "response_ids": ["p6b", "p6c"]}]
    assert sets["eft_eval"] == []
    assert dict(kept) == {"ift prompt": 1, "ift reply": 1, "eft_train prompt": 1, "eft_train reply": 2}
    assert dropped == {
        "first-turn reply: deleted": 1, "first-turn reply: unranked": 2, "first-turn reply: not English": 1,
        "first-turn reply: not the rank-0 reply of an IFT prompt": 1, "first-turn reply: review not passed": 1,
        "first-turn reply: its prompt is dropped": 2,   # p2a, p4a
        "later-turn message (only first turns are used)": 1,
        "message whose parent is absent (e.g. in another language)": 1,
        "prompt: not English": 1, "prompt: deleted": 1, "prompt: review not passed": 2,
        "prompt: same text as another prompt": 1, "prompt: role 'assistant', not 'prompter'": 1,
    }
    assert sum(kept.values()) + sum(dropped.values()) == len(BAD_ROWS)
    lines = report(sets, kept, dropped)
    assert "kept 1 IFT examples" in lines
    reasons = [line[len("dropped     1  "):] for line in lines if line.startswith("dropped")]
    assert reasons == sorted(dropped) and reasons[0] == "first-turn reply: deleted"  # by reason, in order


def test_a_prompt_that_fits_only_ift_goes_there_whatever_the_share(tmp_path):
    """--ift_frac draws between IFT and EFT train only for a prompt that fits both;
    one with a usable rank-0 reply and no second ranked one is IFT even at 0.
    Messages written by a model, or in a tree oasst_all marks unfinished, are dropped."""
    rows = [_msg("q1", None, "prompter"), _msg("q1a", "q1", rank=0), _msg("q1b", "q1"),  # q1b unranked
            _msg("q2", None, "prompter"), _msg("q2a", "q2", rank=0), _msg("q2b", "q2", rank=1),
            {**_msg("q3", None, "prompter"), "tree_state": "aborted_low_grade"}, _msg("q3a", "q3", rank=0),
            _msg("q4", None, "prompter"), _msg("q4a", "q4", rank=0),
            {**_msg("q4b", "q4", rank=1), "synthetic": True}, {**_msg("q4c", "q4", rank=2), "tree_state": "growing"}]
    sets, kept, dropped = prepare([_write(tmp_path / "m.jsonl", rows)], eft_eval_frac=0.0, ift_frac=0.0)
    assert [x["prompt_id"] for x in sets["ift"]] == ["q1", "q4"]
    assert [g["prompt_id"] for g in sets["eft_train"]] == ["q2"]
    assert dropped["prompt: tree 'aborted_low_grade', not ready for export"] == 1
    assert dropped["first-turn reply: synthetic (written by a model)"] == 1
    assert dropped["first-turn reply: tree 'growing', not ready for export"] == 1
    # q1 and q4 are IFT prompts with one usable reply each: no other reply dropped, and no reason counted 0
    assert 0 not in dropped.values() and not any(" 0  " in line for line in report(sets, kept, dropped))


def test_a_prompt_in_both_splits_is_kept_for_the_evaluation(tmp_path):
    """The same prompt text in the train and the eval file: the eval copy is
    kept and the train copy dropped, whichever message id sorts first, so an
    evaluation question (AlpacaEval's, for the validation split) never
    reaches training."""
    def tree(mid, text):
        return [_msg(mid, None, "prompter", text), _msg(mid + "a", mid, rank=0), _msg(mid + "b", mid, rank=1)]
    train = _write(tmp_path / "train.jsonl", tree("a1", "How do I  bake bread?") + tree("a2", "Name a fruit."))
    valid = _write(tmp_path / "valid.jsonl", tree("z1", "how do I bake bread?"))
    sets, kept, dropped = prepare([train, valid], eval_files=[valid], ift_frac=1.0)
    assert [g["prompt_id"] for g in sets["eft_eval"]] == ["z1"]
    assert [x["prompt_id"] for x in sets["ift"]] == ["a2"] and sets["eft_train"] == []
    assert dropped["prompt: same text as another prompt"] == 1
    # a training prompt that lands in no set (no usable reply) does not shut out a later copy that has one;
    # an eval prompt dropped for too few replies still keeps its text from training
    train = _write(tmp_path / "train.jsonl", [_msg("b1", None, "prompter", "Name a colour."), _msg("b1a", "b1")]
                   + tree("b2", "name a colour.") + tree("b3", "Name a tree."))
    valid = _write(tmp_path / "valid.jsonl", [_msg("y1", None, "prompter", "Name a tree."), _msg("y1a", "y1", rank=0)])
    sets, kept, dropped = prepare([train, valid], eval_files=[valid], ift_frac=1.0)
    assert [x["prompt_id"] for x in sets["ift"]] == ["b2"] and sets["eft_eval"] == []
    assert dropped["prompt: same text as another prompt"] == 1  # b3, Name a tree.


def test_malformed_lines_name_the_file_and_line(tmp_path):
    path = _write(tmp_path / "broken.jsonl", [BAD_ROWS[0], '{"message_id": "x", "text": '])
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: malformed JSON"):
        prepare([path])
    path = _write(tmp_path / "other.jsonl", [BAD_ROWS[0], {"id": 1, "text": "hi"}])
    with pytest.raises(ValueError, match=r"other\.jsonl:2: not an oasst message, missing message_id, parent_id, role"):
        prepare([path])
    # fields of the wrong type: named with the line, not a traceback later on
    typed = {**BAD_ROWS[0], "text": None, "parent_id": 7, "rank": "first"}
    path = _write(tmp_path / "typed.jsonl", [BAD_ROWS[0], typed, {**BAD_ROWS[0], "message_id": "n", "rank": 1.5}])
    with pytest.raises(ValueError, match=r"typed\.jsonl:2: not an oasst message, wrong type of text, parent_id, rank"):
        prepare([path])
    for rank in (True, 1.5, float("inf"), "first"):  # a rank is null, NaN or a whole number
        path = _write(tmp_path / "rank.jsonl", [BAD_ROWS[0], {**BAD_ROWS[0], "message_id": "r", "rank": rank}])
        with pytest.raises(ValueError, match=r"rank\.jsonl:2: not an oasst message, wrong type of rank$"):
            prepare([path])
    path = _write(tmp_path / "role.jsonl", [BAD_ROWS[0], {**BAD_ROWS[0], "message_id": "r", "role": 5}])
    with pytest.raises(ValueError, match=r"role\.jsonl:2: not an oasst message, wrong type of role$"):
        prepare([path])
    path = _write(tmp_path / "ranks.jsonl", [{**BAD_ROWS[0], "message_id": m, "rank": r}
                                             for m, r in (("a", 1.0), ("b", float("nan")), ("c", 2))])
    prepare([path])  # pandas' 1.0 and NaN are ranks


def test_command_line(tmp_path):
    train = _write(tmp_path / "train.jsonl", BAD_ROWS)
    evalf = _write(tmp_path / "val.jsonl", [_msg("v1", None, "prompter", "Hello?"),
                                            _msg("v1a", "v1", rank=0), _msg("v1b", "v1", rank=1)])
    out = subprocess.run([sys.executable, "-m", "data.prepare_oasst", train, evalf, f"--eval_files={evalf}",
                          "--ift_frac=1.0", "--eft_eval_frac=0", f"--out={tmp_path / 'out'}"],  # (shares' edges)
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "kept 1 IFT examples" in out and "kept 1 eft_eval groups with 2 ranked replies" in out
    assert "dropped     1  prompt: same text as another prompt" in out
    assert read_jsonl(tmp_path / "out" / "eft_eval.jsonl")[0]["response_ids"] == ["v1a", "v1b"]
    assert [len(read_jsonl(tmp_path / "out" / f"{k}.jsonl")) for k in ("ift", "eft_train")] == [1, 1]
    # warnings of an empty set go to stderr, beside the summary on stdout
    r = subprocess.run([sys.executable, "-m", "data.prepare_oasst", evalf, f"--eval_files={evalf}",
                        f"--out={tmp_path / 'out2'}"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "warning" not in r.stdout and [line[:35] for line in r.stderr.splitlines()] == [
        "warning: ift.jsonl will be empty (n", "warning: eft_train.jsonl will be em"]


def test_command_line_refuses_bad_input_in_one_line(tmp_path):
    """A missing or malformed file and a share outside [0, 1]: one error line
    naming it (exit status 2), and no seed folder written."""
    broken = _write(tmp_path / "broken.jsonl", [BAD_ROWS[0], '{"message_id": "x", "text": '])
    bot = _write(tmp_path / "bot.jsonl", [BAD_ROWS[0], _msg("b1", "p1", role="bot")])
    empty = _write(tmp_path / "empty.jsonl", [])
    afile = _write(tmp_path / "afile", [])
    for args, said in [([str(tmp_path / "absent.jsonl")], "absent.jsonl"),
                       ([broken], "broken.jsonl:2: malformed JSON"),
                       ([broken, "--ift_frac=1.5"], "--ift_frac = 1.5: a share, must be in [0, 1]"),
                       ([bot], "bot.jsonl:2: not an oasst message, role 'bot'"),
                       ([empty], f"no messages in {empty}: the files are empty"),
                       ([bot, f"--out={afile}"], f"--out = {afile}: a file, not a folder"),
                       ([bot, "--out="], "--out: give a folder ('.' for this one)"),  # (it wrote into the cwd)
                       ([bot, "--ift_frac=half"], "argument --ift_frac: invalid float value: 'half'")]:
        r = subprocess.run([sys.executable, "-m", "data.prepare_oasst", f"--out={tmp_path / 'out'}", *args],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2 and said in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
        assert r.stderr.startswith("error: "), r.stderr
    assert not (tmp_path / "out").exists()


def test_a_message_also_in_a_training_file_is_an_eval_message(tmp_path):
    """The eval copy decides, whatever the order of the files (oasst1's all-splits
    export holds the validation messages too)."""
    rows = [_msg("v1", None, "prompter", "Hello?"), _msg("v1a", "v1", rank=0), _msg("v1b", "v1", rank=1)]
    every, valid = _write(tmp_path / "all.jsonl", rows), _write(tmp_path / "valid.jsonl", rows)
    for files in ([every, valid], [valid, every]):
        sets, _, _ = prepare(files, eval_files=[valid], ift_frac=1.0)
        assert [g["prompt_id"] for g in sets["eft_eval"]] == ["v1"] and sets["ift"] == [], files


def test_an_unusable_eval_prompt_still_keeps_its_text_from_training(tmp_path):
    train = _write(tmp_path / "train.jsonl", [_msg("a1", None, "prompter", "Name a tree."), _msg("a1a", "a1", rank=0)])
    for bad in ({"review": False}, {"deleted": True}):
        valid = _write(tmp_path / "valid.jsonl", [_msg("z1", None, "prompter", "Name a tree.", **bad)])
        sets, _, _ = prepare([train, valid], eval_files=[valid], ift_frac=1.0)
        assert sets["ift"] == [], bad
    # and a dropped eval prompt does not shut out a usable eval copy of it
    valid = _write(tmp_path / "valid.jsonl", [_msg("z1", None, "prompter", "Name a tree."), _msg("z1a", "z1", rank=0),
                                              _msg("z2", None, "prompter", "name a tree."), _msg("z2a", "z2", rank=0),
                                              _msg("z2b", "z2", rank=1)])
    sets, _, _ = prepare([valid], eval_files=[valid])
    assert [g["prompt_id"] for g in sets["eft_eval"]] == ["z2"]


def test_a_stray_byte_after_a_byte_order_mark_is_named(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": "x\xffy"}\n')
    with pytest.raises(ValueError, match=r"bom\.jsonl:1: not UTF-8 text \(byte 0xff at column 9"):
        read_jsonl(path)


def test_command_line_refuses_an_out_folder_under_a_file(tmp_path):
    afile = _write(tmp_path / "afile", [])
    train = _write(tmp_path / "train.jsonl", BAD_ROWS)
    r = subprocess.run([sys.executable, "-m", "data.prepare_oasst", train, f"--out={afile}/sub"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr and "Traceback" not in r.stderr, r.stderr


def _tree(mid, text):
    msg = lambda i, parent, role, rank, t: {"message_id": i, "parent_id": parent, "text": t, "role": role,
                                             "lang": "en", "rank": rank, "deleted": False, "review_result": True}
    return [msg(mid, None, "prompter", None, text), msg(mid + "a", mid, "assistant", 0, "yes"),
            msg(mid + "b", mid, "assistant", 1, "no")]


def test_with_eval_files_only_their_prompts_are_eft_eval_whatever_the_share(tmp_path):
    """Mutant: with --eval_files, a training prompt is also drawn for eval by
    eft_eval_frac. At eft_eval_frac=1.0 it would take every one."""
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    write_jsonl(train, [m for i in range(3) for m in _tree(f"t{i}", f"Train question {i}?")])
    write_jsonl(valid, _tree("v0", "Eval question?"))
    sets, _, _ = prepare([str(train), str(valid)], eval_files=[str(valid)], eft_eval_frac=1.0, ift_frac=1.0)
    assert [g["prompt_id"] for g in sets["eft_eval"]] == ["v0"]
    assert sorted(x["prompt_id"] for x in sets["ift"]) == ["t0", "t1", "t2"]
    # an eval file is read whether or not it is also given among the files
    assert prepare([str(train)], eval_files=[str(valid)], eft_eval_frac=1.0, ift_frac=1.0)[0] == sets


def test_the_summary_counts_every_message_read(tmp_path):
    """Mutant: report's first line counts the dropped messages only. 2 trees of a prompt
    and 2 ranked replies (6 messages) and one later-turn reply: 7 read."""
    rows = _tree("p1", "One?") + _tree("p2", "Two?")
    rows.append({**rows[1], "message_id": "p1aq", "parent_id": "p1a", "role": "prompter"})
    write_jsonl(tmp_path / "m.jsonl", rows)
    sets, kept, dropped = prepare([str(tmp_path / "m.jsonl")], eft_eval_frac=0.0, ift_frac=1.0)
    assert report(sets, kept, dropped)[:2] == ["read 7 messages", "kept 2 IFT examples"]


def test_an_empty_set_with_training_files_given_too_is_not_blamed_on_eval_files():
    """Mutant: the 'every input file is an --eval_files file' hint whenever eval_files is
    given. Here a training file was given too: the general hint applies."""
    sets = {"ift": [], "eft_train": [{"responses": ["a", "b"]}], "eft_eval": [{"responses": ["a", "b"]}]}
    (line,) = empty_set_warnings(sets, ["train.jsonl", "valid.jsonl"], ["valid.jsonl"])
    general = "check the input files and the split settings (--eft_eval_frac, --ift_frac)"
    assert line == f"warning: ift.jsonl will be empty (no IFT prompt): {general}"
    # every file an eval file: the training sets are empty because of that; an empty eval set is not
    lines = empty_set_warnings({"ift": [], "eft_train": [], "eft_eval": []}, ["valid.jsonl"], ["valid.jsonl"])
    assert [line.endswith(general) for line in lines] == [False, False, True]
    assert "every input file is an --eval_files file" in lines[0]
