"""report.py's statistics and the loop's diagnostics, against values worked
out by hand on small inputs."""
import json
import os
import shutil
import subprocess
import types
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import configurator
import judge as J
import report
from data import write_jsonl


def run_folder(tmp_path, settings=None):
    return types.SimpleNamespace(path=lambda *parts: os.path.join(tmp_path, *parts), settings=settings or {})


def test_the_report_names_the_outputs_it_cannot_find(tmp_path):
    """A finished stage's output that is gone (a run folder copied without
    eval/) is named with what it feeds, not quietly left out."""
    r = types.SimpleNamespace(path=lambda *parts: os.path.join(tmp_path, *parts), settings={"seed_data": "toy"})
    stages = {"eval_SFT": {"judge": {}}, "eval_M1": {"judge": {"pairwise_accuracy": 0.5}}, "iter1_judgments": {},
              "iter1_pairs": {}}
    for f in ("seed/eft_eval.jsonl", "eval/SFT_test.jsonl", "eval/M1_test.jsonl", "iter1/pairs.jsonl"):
        write_jsonl(tmp_path / f, [])
    assert report.left_out(r, ["SFT", "M1", "M2"], stages, 2) == [
        ("eval/M1_judgments.jsonl", "M1's judge intervals (and report.svg's dot), its row of the checking-against-doing "
                                    "table, and judge agreement between models"),
        ("iter1/judgments.jsonl", "iteration 1: the diagnostics of its judgments")]
    os.remove(tmp_path / "eval" / "M1_test.jsonl")
    assert report.left_out(r, ["SFT", "M1"], stages, 1)[0] == (
        "eval/M1_test.jsonl", "M1's grades (without them the report reads the run as one on real data)")


def test_bootstrap_interval_by_hand():
    # two prompts, values 0 and 1: a draw of two has mean 0 (1/4), 0.5 (1/2) or
    # 1 (1/4), so the 2.5th and 97.5th percentiles are 0 and 1
    assert report.bootstrap_interval([0, 1]) == (0.0, 1.0)
    assert report.bootstrap_interval([3, 3, 3]) == (3.0, 3.0)  # no spread, no width
    # weighted: 3 right of 3 pairs, 0 right of 1: draws give 6/6, 0/2 or 3/4
    assert report.bootstrap_interval([3, 0], [3, 1]) == (0.0, 1.0)
    # a draw of only the weightless prompt has no figure and is left out, not counted as 0
    assert report.bootstrap_interval([1, 0], [1, 0]) == (1.0, 1.0)
    assert report.bootstrap_interval([0, 0], [0, 0]) is None
    assert report.bootstrap_interval([]) is None


def test_bootstrap_interval_matches_the_normal_approximation():
    """400 coin flips, half heads: the mean's 95% interval is 0.5 +- 1.96 * sqrt(0.25 / 400) = [0.451, 0.549]."""
    low, high = report.bootstrap_interval(np.tile([0.0, 1.0], 200), resamples=4000)
    assert low == pytest.approx(0.451, abs=0.006) and high == pytest.approx(0.549, abs=0.006)


def test_judge_prompt_metrics_by_hand():
    groups = [{"responses": ["a", "b", "c"], "ranks": [0, 1, 2]}, {"responses": ["d", "e"], "ranks": [1, 0]},
              {"responses": ["f", "g"], "ranks": [0, 0]}]                   # no ordering: left out
    judged = [{"score": 5.0}, {"score": 3.0}, {"score": 4.0},   # (a,b) right, (a,c) right, (b,c) wrong
              {"score": None}, {"score": 2.0},                 # unscored: wrong
              {"score": 1.0}, {"score": 2.0}]
    first, second = report.judge_prompt_metrics(judged, groups)
    assert (first["right_pairs"], first["pairs"], first["exact"]) == (2, 3, False)
    assert (first["n_five"], first["n_five_best"]) == (1, 1)  # a scored 5 and is the best
    # scores 5, 3, 4 against the goodness 0, -1, -2: ranks (3, 1, 2) and (3, 2, 1): rho = 1 - 6 * 2 / (3 * 8)
    assert first["spearman"] == pytest.approx(0.5)
    assert first["kendall_tau"] == pytest.approx(1 / 3)  # 2 of 3 pairs concordant, 1 discordant
    assert (second["right_pairs"], second["pairs"], second["spearman"], second["scored"]) == (0, 1, None, 1)


def test_interval_table_has_every_figure_by_hand(tmp_path):
    """Every mean and head-to-head figure of the toy table gets a row with its
    interval; a model without a figure (the SFT baseline has no previous model) shows '-'."""
    from data import toy
    r = run_folder(tmp_path)
    write_jsonl(tmp_path / "seed" / "eft_eval.jsonl", [{"responses": ["a", "b"], "ranks": [0, 1]},
                                                       {"responses": ["c", "d"], "ranks": [1, 0]}])
    judged = lambda *scores: [{"score": s, "scores": [s]} for s in scores]  # one judgment a response
    write_jsonl(tmp_path / "eval" / "M1_judgments.jsonl", judged(5.0, 1.0,    # right
                                                                 5.0, 1.0))   # wrong
    write_jsonl(tmp_path / "eval" / "SFT_judgments.jsonl", judged(None, None, None, None))  # never scores
    answer = lambda grade, text="x": {"grade": grade, "response": text}
    tests = {"SFT": [answer(4), answer(0, toy.DECLINE), answer(2), answer(5)],
             "M1": [answer(5, "xyz"), answer(5, "xyz"), answer(2, "xyz"), answer(5, "xyz")]}
    rows, intervals = report.interval_rows(r, ["SFT", "M1"], tests)
    m1 = intervals["M1"]
    assert m1["mean_grade"][0] == pytest.approx(17 / 4) and m1["bare_right"][0] == pytest.approx(3 / 4)
    assert intervals["SFT"]["declined"][0] == pytest.approx(1 / 4) and m1["declined"][0] == 0
    assert m1["vs_previous"][0] == pytest.approx((1 + 5 + 0 + 0) / 4)
    assert m1["net_wins"][0] == pytest.approx(2 / 4) == m1["net_wins_vs_sft"][0]  # won 2, tied 2
    assert m1["right_vs_previous"][0] == pytest.approx(1 / 4)  # right per prompt: SFT 1 0 0 1, M1 1 1 0 1
    assert m1["judge_vs_previous"][0] == pytest.approx(1 / 2)  # pairs right per prompt: SFT 0 0, M1 1 0, of 1 1
    assert "judge_vs_previous" not in intervals["SFT"] and "right_vs_previous" not in intervals["SFT"]
    assert m1["judge_accuracy"][0] == pytest.approx(1 / 2) and m1["exact_match"][0] == pytest.approx(1 / 2)
    assert m1["five_best"][0] == pytest.approx(1 / 2)  # two 5s, one on the best response
    assert m1["spearman"][0] == pytest.approx(0.0) and m1["kendall_tau"][0] == pytest.approx(0.0)  # +1 and -1
    assert m1["avg_length"] == (3.0, (3.0, 3.0)) and m1["coverage"] == (1.0, (1.0, 1.0))
    assert rows[0] == "| figure [95% interval] | SFT | M1 |"
    labels = [row.split(" | ")[0][2:] for row in rows[2:]]
    assert labels == ["mean grade (0-5)", "right answers (grade >= 4) %", "bare right answers (grade 5) %",
                      "declined %", "grade - previous model", "right answers - previous model (points)",
                      "net wins vs previous (win - loss) %", "net wins vs SFT baseline (win - loss) %",
                      "judge pairwise acc %", "judge pairwise acc - previous model (points)", "judge 5-best %",
                      "judge exact match %", "judge Spearman", "judge Kendall tau",
                      "judge coverage % (judgments with a score)", "avg response length (chars)"]
    assert rows[2 + labels.index("grade - previous model")].startswith("| grade - previous model | - | 1.50 [")
    assert rows[2 + labels.index("judge pairwise acc %")] == "| judge pairwise acc % | 0.0 [0.0, 0.0] | 50.0 [0.0, 100.0] |"
    assert rows[2 + labels.index("judge Spearman")].startswith("| judge Spearman | - | 0.000 [")  # undefined: not 0
    # undefined on one prompt only (b unscored): it counts 0 beside the other's +1; one 5 in all is a 5-best figure
    write_jsonl(tmp_path / "eval" / "M2_judgments.jsonl", judged(5.0, None,   # rho undefined, a's 5 the best
                                                                 1.0, 2.0))   # rho +1
    rows, intervals = report.interval_rows(r, ["M2"], {})
    assert intervals["M2"]["spearman"][0] == pytest.approx((0 + 1) / 2) and intervals["M2"]["five_best"][0] == 1.0
    assert any(row.startswith("| judge Spearman | 0.500 [") for row in rows)
    assert any(row.startswith("| judge 5-best % | 100.0 [") for row in rows)
    # the model before has no judgments (a run without the judge's evaluation there): no step is shown, not one
    # against the model before it under the previous model's name
    (tmp_path / "eval" / "M1_judgments.jsonl").unlink()
    rows, intervals = report.interval_rows(r, ["SFT", "M1", "M2"], {})
    assert "judge_vs_previous" not in intervals["M2"]


def test_iteration_diagnostics_by_hand(tmp_path):
    r = run_folder(tmp_path)
    write_jsonl(tmp_path / "iter1" / "judgments.jsonl", [
        {"prompt": "p", "scores": [[4.0, None, 4.5], [1.0, 2.0, None]]},
        {"prompt": "q", "scores": [[None, None, None], [5.0, 0.0, 3.0]]}])
    d = report.judgment_diagnostics(r, 1)
    assert d == {"judgments": 12, "no_score": 5,
                 "histogram": {0: 1, 1: 1, 2: 1, 3: 1, 4: 2, 5: 1}}  # 4.5 rounds to 4 (to even)
    write_jsonl(tmp_path / "iter1" / "pairs.jsonl", [
        {"prompt": "Reverse the word 'ABC'.", "chosen": "CBA", "rejected": "Sure! The answer is CBA."},  # 5 vs 4
        {"prompt": "Reverse the word 'ABC'.", "chosen": "ABC", "rejected": "CBA"},                       # worse
        {"prompt": "Reverse the word 'ABC'.", "chosen": "CBA", "rejected": "CBA."},                      # equal: 5, 5
        {"prompt": "Tell me a story.", "chosen": "x", "rejected": "y"}])                                 # not a task
    # by correctness: CBA vs chatty CBA both right (form only); ABC (1) chosen over CBA (5): the wrong one
    # by form: the bare CBA chosen over the chatty one (the other pairs are one word on both sides)
    assert report.pair_verdicts(r, 1) == {"better": 1, "equal": 1, "worse": 1, "ungradable": 1, "right_chosen": 0,
                                          "wrong_chosen": 1, "both_right": 2, "both_wrong": 0,
                                          "kinds": {"reverse": {"pairs": 3, "right_chosen": 0, "wrong_chosen": 1}},
                                          "form": {"bare_chosen": 1, "bare_chosen_wrong": 0, "bare_rejected": 0}}
    write_jsonl(tmp_path / "iter1" / "pairs.jsonl", [
        {"prompt": "Reverse the word 'ABC'.", "chosen": "CBA", "rejected": "BCA"},   # 5 vs 1: right chosen
        {"prompt": "Reverse the word 'ABC'.", "chosen": "CBB", "rejected": "ABC"},   # 2 vs 1: both wrong, better
        {"prompt": "What is 2 + 3?", "chosen": "It is 5, or maybe 6.", "rejected": "6"},  # 3 vs 2: both wrong
        {"prompt": "Reverse the word 'ABC'.", "chosen": "Sure! The answer is CBA.",  # 4 (right, just) vs 0
         "rejected": "I am not sure what you mean."},
        {"prompt": "Reverse the word 'ABC'.", "chosen": "BCA", "rejected": "Sure! The answer is CBA."},  # 1 vs 4
        {"prompt": "Reverse the word 'ABC'.", "chosen": "Sure! The answer is CBA.", "rejected": "BCA"}])  # 4 vs 1
    v = report.pair_verdicts(r, 1)
    assert (v["better"], v["right_chosen"], v["wrong_chosen"], v["both_right"], v["both_wrong"]) == (5, 3, 1, 0, 2)
    assert v["kinds"] == {"reverse": {"pairs": 5, "right_chosen": 3, "wrong_chosen": 1},  # (ALL_KINDS' order)
                          "arith": {"pairs": 1, "right_chosen": 0, "wrong_chosen": 0}}
    # by form: "6" rejected for words around a wrong 5; the bare, wrong BCA chosen over the chatty right answer
    # (a wrong single word chosen), and rejected for it (a wrong single word rejected: not counted as chosen)
    assert v["form"] == {"bare_chosen": 1, "bare_chosen_wrong": 1, "bare_rejected": 2}
    # invent pairs, counted by kind too: the kind the judge checks rather than states an answer for
    inv = "Invent a word of 4 letters that starts with 'B' and ends with 'A'."
    write_jsonl(tmp_path / "iter1" / "pairs.jsonl", [
        {"prompt": inv, "chosen": "BOKA", "rejected": "BOK"},      # 5 vs 2: right chosen
        {"prompt": inv, "chosen": "BOA", "rejected": "BOKA"},      # 2 vs 5: wrong chosen
        {"prompt": inv, "chosen": "BOA", "rejected": "ZZZZ"},      # both wrong
        {"prompt": "Reverse the word 'ABC'.", "chosen": "CBA", "rejected": "BCA"}])  # not invent
    v = report.pair_verdicts(r, 1)
    assert (v["right_chosen"], v["wrong_chosen"], v["both_wrong"]) == (2, 1, 1)
    assert v["kinds"] == {"reverse": {"pairs": 1, "right_chosen": 1, "wrong_chosen": 0},
                          "invent": {"pairs": 3, "right_chosen": 1, "wrong_chosen": 1}}
    os.remove(tmp_path / "iter1" / "judgments.jsonl")  # (the pairs' line alone)
    lines = report.diagnostic_lines(r, [], 1, True)
    assert v["form"] == {"bare_chosen": 0, "bare_chosen_wrong": 0, "bare_rejected": 0}  # one word on both sides
    assert any(line.endswith("; by task kind, pairs and, right against wrong, the right one chosen / the wrong one: "
                             "reverse 1, 1 / 0, invent 3, 1 / 1; by form, where one response is a single word (a "
                             "bare answer, right or wrong) and the other is not: the single word chosen 0 (0 of "
                             "them wrong), rejected 0") for line in lines)


def test_prompt_kinds_by_hand(tmp_path):
    """Which task kinds the loop's new prompts ask, written and kept: a kind
    whose prompts the filters all drop never reaches a pair."""
    r = run_folder(tmp_path)
    assert report.prompt_kinds(r, 1) is None  # no prompts yet
    write_jsonl(tmp_path / "iter1" / "prompts_generated.jsonl", [
        {"prompt": "How many times does 'A' appear in 'BANANA'?", "dropped": "near duplicate (ROUGE-L >= 0.9)"},
        {"prompt": "Reverse the word 'ABC'.", "dropped": None},
        {"prompt": "How many times does 'N' appear in 'BANANA'?", "dropped": "near duplicate (ROUGE-L >= 0.9)"},
        {"prompt": "Reverse the word 'ABD'.", "dropped": "exact duplicate"},
        {"prompt": "Tell me a story.", "dropped": None},
        {"prompt": "", "dropped": "request longer than the context"}])
    assert report.prompt_kinds(r, 1) == {"reverse": (2, 1), "count": (2, 0), "other": (2, 1)}  # (the kinds' order)
    assert "  - its new prompts by task kind (evaluation only), written / kept after the filters: reverse 2 / 1, " \
        "count 2 / 0, other 2 / 1" in report.diagnostic_lines(r, [], 1, toy_world=True)
    assert not any("task kind" in line for line in report.diagnostic_lines(r, [], 1, toy_world=False))


def test_table_cells_by_hand(tmp_path):
    """Small pieces of the report's tables by hand: a measured correlation of
    0 shows as 0.000, one that no prompt defines as '-'; a right answer with
    chatter (grade 4) is no bare one (grade 5); the SFT baseline has no
    head-to-head with itself; lengths keep a decimal; each table's rule row
    has as many cells as its header (else Markdown shows no table); "grade -
    previous model" is against the model before, not the baseline; judge
    coverage pools the judgments of groups of unequal size; with the EFT eval
    set gone the judge rows are left out (no division by its 0 groups)."""
    cells = lambda row: [c.strip() for c in row.strip().strip("|").split("|")]
    j = {"pairwise_accuracy": 0.5, "spearman": 0.0, "kendall_tau": 0.0, "n_prompts": 2, "n_undefined_correlation": 0}
    assert report.judge_cells(j) == "50.0 | - | - | 0.000 | 0.000"
    assert report.judge_cells({**j, "pairwise_accuracy": 0.0, "n_undefined_correlation": 2}) == "0.0 | - | - | - | -"
    answers = lambda *graded: [{"prompt": str(i), "grade": g, "response": text} for i, (g, text) in enumerate(graded)]
    tests = {"SFT": answers((2, "ab"), (0, "abc")), "M1": answers((4, "ab"), (5, "abc")),
             "M2": answers((3, "ab"), (3, "abc"))}
    header, rule, sft, m1, m2 = report.toy_rows(["SFT", "M1", "M2"], tests, {})[0]
    column = dict(zip(cells(header), range(99)))
    assert len(cells(rule)) == len(cells(header))
    assert cells(m1)[column["bare right (grade 5) %"]] == "50.0"
    assert cells(sft)[column["vs SFT baseline: win / tie / loss %"]] == "-"
    assert cells(m1)[column["avg response length (chars)"]] == "2.5"
    r = run_folder(tmp_path)
    table, values = report.interval_rows(r, ["SFT", "M1", "M2"], tests)
    assert len(cells(table[1])) == len(cells(table[0])) == 4
    assert values["M2"]["vs_previous"][0] == -1.5  # 3, 3 against M1's 4, 5 (against SFT's 2, 0: +2)
    rows = {cells(row)[0]: cells(row)[1:] for row in table[2:]}
    assert rows["net wins vs SFT baseline (win - loss) %"][0] == "-"
    assert rows["avg response length (chars)"][0] == "2.5 [2.0, 3.0]"
    write_jsonl(r.path("seed", "eft_eval.jsonl"), [{"responses": ["a", "b"], "ranks": [0, 1]},
                                                   {"responses": ["c", "d", "e", "f"], "ranks": [0, 1, 2, 3]}])
    write_jsonl(r.path("eval", "M1_judgments.jsonl"), [{"score": 5.0, "scores": [5]}, {"score": 1.0, "scores": [1]}]
                + [{"score": None, "scores": [None]}] * 4)
    assert report.interval_rows(r, ["M1"], {})[1]["M1"]["coverage"][0] == pytest.approx(2 / 6)
    os.remove(r.path("seed", "eft_eval.jsonl"))
    assert report.interval_rows(r, ["M1"], {})[0] == ["| figure [95% interval] | M1 |", "|---|---|"]


def test_diagnostic_and_iteration_lines_by_hand(tmp_path):
    """The report's lines of text by hand: judgments without a score, the
    meta-judging and judge-pair lines, the form of pairs (an empty response
    is no one-word answer), each iteration's line with its controls, cut-off
    candidates only when there are some, the DPO checkpoint pick (in the
    record of the model it made), and the external judges' part with
    MT-Bench alone."""
    r = run_folder(tmp_path, {"meta_judge": True})
    write_jsonl(r.path("iter1", "judgments.jsonl"), [{"prompt": "p", "scores": [[4, None, 5], [1, 2, 3]]}])
    write_jsonl(r.path("iter1", "meta_judgments.jsonl"), [{"battles": [{"winner": "A"}, {"winner": None}]},
                                                          {"battles": [{"winner": "B"}, {"winner": "B"}]}])
    q = "Reverse the word 'ABC'."
    judge_pair = lambda response, chosen, rejected: {
        "prompt": "jp", "chosen": "c", "rejected": "r", "kind": "judge", "instruction": q, "response": response,
        "chosen_score": chosen, "rejected_score": rejected}
    write_jsonl(r.path("iter1", "pairs.jsonl"), [judge_pair("CBA", 5, 3), judge_pair("ABC", 4, 1), judge_pair("ABC", 5, 2),
                                                 {"prompt": q, "chosen": "", "rejected": "It is CBA."}])
    lines = report.diagnostic_lines(r, [], 1, False)
    assert "- iteration 1: 6 judgments, 1 without a score; scores given {0: 0, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1}" in lines
    assert any(line.startswith("  - meta-judging (Meta-Rewarding): 4 meta-judgments (battles of two judgments) of 2 "
                               "responses whose judgments disagree in score, 3 with a verdict") for line in lines)
    os.remove(r.path("iter1", "judgments.jsonl"))  # (the toy world's lines read more of it than this test wrote)
    lines = report.diagnostic_lines(r, [], 1, True)
    assert any(line.endswith("score is closer to the true grade 1, as close 0, farther 2; on prompts it cannot "
                             "grade 0") for line in lines)
    assert report.pair_verdicts(r, 1)["form"] == {"bare_chosen": 0, "bare_chosen_wrong": 0, "bare_rejected": 0}
    assert report.form_pairs_text({"bare_chosen": 3, "bare_chosen_wrong": 1, "bare_rejected": 7}).endswith(
        "the single word chosen 3 (1 of them wrong), rejected 7")
    assert report.pairs_by("right") == (" (best and worst by the grader, pair_by='right': a perfect-judge control, "
                                        "not self-rewarding)")
    start, r = "- iteration 1: ? new prompts kept of ? requested, ", run_folder(tmp_path / "no_files")
    assert report.iteration_lines(r, {"iter1_candidates": {"too_long": 0, "cut_off": 0}}, 1) == [
        start + "? preference pairs"]
    assert report.iteration_lines(r, {"iter1_pairs": {"pairs": 3, "judge_pairs": 2, "judge_dropped": {}}}, 1) == [
        start + "3 preference pairs; 2 judge pairs (dropped: {})"]
    pick = {"valid_prompts": 10, "checkpoints": [{"step": 5, "mean_grade": 2.5}], "picked": 5}
    assert report.iteration_lines(r, {"M2": {"pick": pick}}, 1) == [
        start + "? preference pairs; DPO checkpoints' mean grade on 10 validation prompts: step 5 2.500 (M2: step 5)"]
    mt = {"path": "out/x/eval/mt_bench/model_answer/x-M1.jsonl", "too_long": 0}
    lines = report.external_judges({"M1": {"mt_bench": mt}})
    assert lines[0] == "Answers for external judges:" and "- MT-Bench: `" + mt["path"] + "`" in lines
    seen = {"questions": 80, "seen": 2, "by_source": {"written by the loop": 2}}
    assert "how many of the benchmark's questions" in report.external_judges(
        {"M1": {"mt_bench": {**mt, "trained_on": seen}}})[0]
    assert report.trained_on({"trained_on": {"questions": 805, "seen": 0, "by_source": {"seed IFT": 0}}}) == (
        "; trained on 0 of its 805 questions")
    # the interval the report says it draws with seed 0, pinned
    values = [0, 1, 2, 5, 3, 4, 4, 1, 2, 5, 0, 3, 3, 1, 4, 2, 5, 5, 0, 1, 2, 3, 4, 5, 1, 1, 0, 2, 3, 4]
    assert report.bootstrap_interval(values) == pytest.approx((1.9333333333333333, 3.1))


def test_checking_figures_of_invented_words_by_hand(tmp_path):
    """Invent tasks (many right answers): a right and a wrong candidate make
    no "mixed" prompt (there is no one answer to state); the check that
    copies the response reads its first word; a check that says "no" to two
    differing letters is right on both; bare answers counted right, then
    wrong, and the coin-toss spread from both counts; a Meta-Rewarding
    iteration's meta-judgments named when gone."""
    inv = "Invent a word of 4 letters that starts with 'B' and ends with 'A'."
    assert report.mixes_right_and_wrong(inv, ["BOKA", "BOK"]) is False
    r = run_folder(tmp_path)
    checked = lambda: report.checking_versus_doing(r, ["M1"], {"M1": [{"prompt": inv, "grade": 5}]})
    write_jsonl(r.path("eval", "M1_judgments.jsonl"), [{"prompt": inv, "response": "BOKA or BIKE", "judgments": [
        "BOKA starts with B, ends with A and has 4 letters; asked: B, A, 4.\nScore: 5"]}])
    assert checked()["M1"]["invent_copies"] == 1.0
    write_jsonl(r.path("eval", "M1_judgments.jsonl"), [{"prompt": inv, "response": "BOKEE", "judgments": [
        "BOKE: starts with B, asked B: yes; ends with E, asked A: no; has 5 letters, asked 4: no.\nScore: 1"]}])
    assert checked()["M1"]["invent_yes_no"] == 1.0
    write_jsonl(r.path("eval", "M1_judgments.jsonl"), [{"prompt": inv, "response": w, "judgments": ["Score: 3"]}
                                                       for w in ("BOKA", "BIKA", "BOK", "BIK", "ZZZZ", "BOKO", "BIKO")])
    found = checked()
    assert found["M1"]["invent_bare_n"] == [2, 5]
    [line] = [line for line in report.checking_lines(found) if line.startswith("Invent, checking")]
    assert "(2 right, 5 wrong" in line
    found["M1"]["invent_bare_n"] = [1, 9]
    [line] = [line for line in report.checking_lines(found) if line.startswith("Invent, checking")]
    assert "about +-53 points" in line  # (100 * sqrt(1/4 / 1 + 1/4 / 9): both counts)
    assert report.left_out(run_folder(tmp_path, {"seed_data": "toy"}), [], {"iter1_meta_judgments": {}}, 1) == [
        ("iter1/meta_judgments.jsonl", "iteration 1: the diagnostics of its meta-judgments")]


def test_what_the_report_writes_beside_its_tables(tmp_path):
    """write_report's metrics record carries MT-Bench's figures and the
    checking-against-doing figures seeds.py reads; a real-data run without
    judge figures has no interval paragraph; where only M1 was judged the
    text says the judge is drawn (as report.svg draws it); the second panel
    of report.svg starts right of the first; the tables a finished run prints
    leave out a title holding a '|'."""
    assert report.real_rows(["M1"], {"M1": {"mt_bench": {"path": "x.jsonl", "answered": 80, "too_long": 0,
                                                         "avg_length": 456.0}}})[1][0]["mt_bench"]["answered"] == 80
    q = "Reverse the word 'ABC'."
    got, r = [], run_folder(tmp_path / "toy", {"seed_data": "toy", "n_judge": 1})
    r.metric = got.append
    os.makedirs(r.path("done"))
    write_jsonl(r.path("seed", "eft_eval.jsonl"), [{"responses": ["a", "b"], "ranks": [0, 1]}])
    for name in ("SFT", "M1"):
        write_jsonl(r.path("eval", f"{name}_test.jsonl"), [{"prompt": q, "grade": 5, "response": "CBA"}])
    write_jsonl(r.path("eval", "M1_judgments.jsonl"), [
        {"prompt": q, "response": "CBA", "score": 5.0, "scores": [5],
         "judgments": ["The correct answer is CBA.\nScore: 5"]},
        {"prompt": q, "response": "ABC", "score": 1.0, "scores": [1], "judgments": ["Score: 1"]}])
    report.write_report(r, ["SFT", "M1"], {}, "x", 0)
    # (the judge states the right answer in one of its two judgments)
    assert [m["eval"]["checking"]["judge"] for m in got if "eval" in m and m["eval"].get("checking")] == [0.5]
    assert ". Mean grade and judge pairwise accuracy drawn in report.svg" in open(r.path("report.md")).read()
    r = run_folder(tmp_path / "real", {"seed_data": "oasst", "n_judge": 3})
    r.metric = lambda m: None
    os.makedirs(r.path("done"))
    report.write_report(r, ["SFT", "M1"], {}, "x", 0)
    assert "95% percentile-bootstrap intervals" not in open(r.path("report.md")).read()
    figure = ET.fromstring(report.interval_figure(["M1"], {"M1": {"mean_grade": (5.0, (4.5, 5.0)),
                                                                 "judge_accuracy": (0.5, (0.25, 0.75))}}))
    titles = [float(t.get("x")) for t in figure.iter("{http://www.w3.org/2000/svg}text") if t.get("font-weight")]
    assert len(titles) == 2 and titles[1] > 320  # (the first panel ends at 50 + 270)
    (tmp_path / "report.md").write_text("# Self-rewarding run `a|b`\n\nwords\n\n| a |\n|---|\n")
    assert report.table(str(tmp_path / "report.md")) == "| a |\n|---|"


def test_right_candidates_by_hand(tmp_path):
    """How often sampling is right, and on how many prompts best-of-n with a
    perfect judge would be: the grader over iteration 1's candidates."""
    r = run_folder(tmp_path)
    assert report.right_candidates(r, 1) is None  # no candidates yet
    inv = "Invent a word of 4 letters that starts with 'B' and ends with 'A'."
    write_jsonl(tmp_path / "iter1" / "candidates.jsonl", [
        {"prompt": "Reverse the word 'ABC'.", "candidates": ["CBA", "BCA", "Sure! The answer is CBA.", "ABC"]},  # 2 of 4
        {"prompt": "What is 2 + 3?", "candidates": ["6", "7", "4", "It is 6."]},          # none right
        {"prompt": inv, "candidates": ["BOKA", "BIKA", "BOKA", "BOKA"]},                  # all right
        {"prompt": "Tell me a story.", "candidates": ["x", "y", "z", "w"]}])              # not gradable: left out
    c = report.right_candidates(r, 1)
    assert c == {"prompts": 3, "candidates": pytest.approx(6 / 12), "any_right": pytest.approx(2 / 3),
                 "mixed": pytest.approx(1 / 3), "all_right": pytest.approx(1 / 3)}
    assert any(line == "  - the grader on its candidates (evaluation only; 3 prompts it can grade): 50.0% of the "
               "candidates are right; 66.7% of the prompts have a right one (best of the candidates by a perfect "
               "judge), 33.3% a right and a wrong one (the prompts where a pair can teach correctness), 33.3% only "
               "right ones" for line in report.diagnostic_lines(r, [], 1, toy_world=True))
    assert not any("its candidates" in line for line in report.diagnostic_lines(r, [], 1, toy_world=False))
    write_jsonl(tmp_path / "iter1" / "candidates.jsonl", [{"prompt": "Tell me a story.", "candidates": ["x"]}])
    assert report.right_candidates(r, 1) is None  # nothing the grader can read
    # a candidate cut off at max_response_tokens takes no part in a pair: the prompts' figures leave it out
    # (the first prompt's one right answer was cut off; the second's every candidate)
    write_jsonl(tmp_path / "iter1" / "candidates.jsonl", [
        {"prompt": "Reverse the word 'ABC'.", "candidates": ["CBA", "BCA", "ACB"], "finished": [False, True, True]},
        {"prompt": inv, "candidates": ["BOKA", "BIKA"], "finished": [False, False]}])
    assert report.right_candidates(r, 1) == {"prompts": 2, "candidates": pytest.approx(3 / 5), "any_right": 0.0,
                                             "mixed": 0.0, "all_right": 0.0}


def test_self_checking_by_hand(tmp_path):
    """Does the judge state the right answer whatever the response says? Its
    judgments of its own candidates (iteration 1) against M1's of the EFT eval
    responses, each split by whether the response is right."""
    r = run_folder(tmp_path)
    q = "Reverse the word 'ABC'."
    says = lambda x: f"The correct answer is {x}. The response is fine.\nScore: 4"
    assert report.self_checking(r, 1) is None  # no judgments yet
    write_jsonl(tmp_path / "iter1" / "judgments.jsonl", [
        {"prompt": q, "candidates": ["CBA", "BCA"], "scores": [[4, 4, 5], [4, 4, 4]],
         "judgments": [[says("CBA"), says("CBA"), "Score: 5"],   # right candidate: 2 of 3 state CBA
                       [says("BCA"), says("BCA"), says("CBA")]]},  # wrong one: its own answer twice, CBA once
        {"prompt": "Tell me a story.", "candidates": ["x"], "scores": [[4]],
         "judgments": [[says("x")]]},  # no truth: skipped
        {"prompt": "Reverse the word 'XY'.", "candidates": ["XY", "Sure! The answer is XY."], "scores": [[1], [1]],
         "judgments": [[says("YX")], [says("YX")]]}])  # both wrong: counted in "own", not a mixed prompt
    c = report.self_checking(r, 1)
    assert c["own"] == {"right": pytest.approx(2 / 3), "wrong": pytest.approx(3 / 5)}
    assert c["mixed_prompts"] == 1 and c["own_mixed"] == {"right": pytest.approx(2 / 3), "wrong": pytest.approx(1 / 3)}
    assert c["eft_eval"] == {"right": None, "wrong": None}  # M1 not evaluated yet
    # an invent task has many right answers: its judgments state none, and are not counted
    inv = "Invent a word of 4 letters that starts with 'B' and ends with 'A'."
    assert report.states_right_answer([(inv, "BOKA", [says("BOKA")]), (inv, "BOK", [says("BOKA")])]) == \
        {"right": None, "wrong": None}
    write_jsonl(tmp_path / "eval" / "M1_judgments.jsonl", [
        {"prompt": q, "response": "ABC", "judgments": [says("CBA"), says("CBA")]},   # wrong, both state CBA
        {"prompt": q, "response": "Sure! The answer is CBA.", "judgments": [says("ACB")]}])  # right (4), not stated
    assert report.self_checking(r, 1)["eft_eval"] == {"right": 0.0, "wrong": 1.0}
    lines = report.diagnostic_lines(r, ["SFT", "M1"], 1, toy_world=True)
    assert any("own candidates, in 66.7% of its judgments of right ones and 60.0% of wrong ones; on the 1 prompts "
               "whose candidates are right and wrong (the same questions: the gap is the pull of the answer it "
               "reads), 66.7% and 33.3%; on the EFT eval responses (M1), 0.0% and 100.0%" in line for line in lines)


def test_judge_agreement_between_models_by_hand(tmp_path):
    r = run_folder(tmp_path)
    write_jsonl(tmp_path / "eval" / "M1_judgments.jsonl", [{"score": s} for s in (1.0, 2.0, 3.0, None)])
    write_jsonl(tmp_path / "eval" / "M2_judgments.jsonl", [{"score": s} for s in (1.0, 3.0, 2.0, 4.0)])
    # 3 responses scored by both: pairs (1,2) concordant, (1,3) concordant, (2,3) discordant: (2 - 1) / 3
    assert report.judge_agreement(r, "M1", "M2") == pytest.approx(1 / 3)
    assert report.judge_agreement(r, "M2", "M1") == pytest.approx(1 / 3)  # a None on either side leaves it out
    assert report.judge_agreement(r, "M1", "M3") is None
    # the report's line: consecutive models from M1 on, no SFT -> M1 though SFT's scores are there
    write_jsonl(tmp_path / "eval" / "SFT_judgments.jsonl", [{"score": s} for s in (3.0, 2.0, 1.0, 1.0)])
    assert "- the judge from model to model (Kendall tau of their scores of the same EFT eval responses, pooled " \
        "over all responses, not per prompt as the tables' Kendall; from M1, the first model trained to judge): " \
        "M1 -> M2 0.333" in report.diagnostic_lines(r, ["SFT", "M1", "M2"], 0, toy_world=True)


def test_head_to_head_by_hand():
    """Prompt by prompt: a wins where its grade is higher, loses where lower."""
    a = [{"grade": g} for g in (3, 2, 5, 1)]
    b = [{"grade": g} for g in (2, 2, 4, 3)]
    assert report.head_to_head(a, b) == {"win": 0.5, "tie": 0.25, "loss": 0.25}
    assert report.head_to_head(b, a) == {"win": 0.25, "tie": 0.25, "loss": 0.5}
    with pytest.raises(ValueError, match="not of the same prompts"):  # (zip would drop the fourth)
        report.head_to_head(a, b[:3])
    with pytest.raises(ValueError, match="not of the same prompts"):
        report.head_to_head([{**x, "prompt": str(i)} for i, x in enumerate(a)], [{**x, "prompt": "?"} for x in b])


def test_seed_study_gain_is_the_later_model_minus_the_first_prompt_by_prompt(tmp_path):
    """gain_interval pairs the two test files line by line: M3 better by one
    grade on three prompts of four and equal on one gives an interval above 0
    that ends at 1 (every prompt drawn a gain)."""
    import seeds
    write_jsonl(tmp_path / "eval" / "M1_test.jsonl", [{"grade": g} for g in (1, 2, 3, 4)])
    write_jsonl(tmp_path / "eval" / "M3_test.jsonl", [{"grade": g} for g in (2, 3, 4, 4)])
    lo, hi = seeds.gain_interval(str(tmp_path), "M1", "M3")
    assert 0 < lo < 0.75 and hi == 1.0


def test_seed_study_table_by_hand(tmp_path):
    import seeds
    read_kind = lambda m: (dict(seeds.FIGURES)["count: judge states the right answer %"](m),
                           dict(seeds.FIGURES)["count: answers right %"](m))

    def figures(grade, right, bare, judge, states=0.0, follows=None, compares=None, declined=None, answered=None,
                invent=(None, None), invent_bare=(None, None), invent_yes_no=None, kinds=None):
        return {**dict.fromkeys(name for name, _ in seeds.FIGURES),  # (a kind's rows: None but those in kinds,
                **{f"{k}: {what}": x for k, pair in (kinds or {}).items()  # {kind: (judge, answers)})
                   for what, x in zip(("judge states the right answer %", "answers right %"), pair)},
                "mean grade": grade, "right answers (grade >= 4) %": right, "bare right answers (grade 5) %": bare,
                "declined answers %": declined, "right among the answers given %": answered,
                "judge pairwise acc %": judge, "judge states the right answer %": states,
                "its verdict follows a right answer %": follows, "its comparison is right %": compares,
                "invent: answers right %": invent[1], "invent: judge balanced accuracy %": invent[0],
                "invent: the same, bare words only %": invent_bare[0],
                "invent: its check reads the response's word %": invent_bare[1],
                "invent: its written yes/no, balanced accuracy %": invent_yes_no}
    per_seed = {1: {"SFT": figures(2.0, 30, 10, 0),
                    "M1": figures(2.2, 40, 10, 60, follows=50.0, kinds={"count": (50, 30)}),
                    "M2": figures(2.4, 45, 20, 65, follows=60.0, kinds={"count": (40, 35)})},
                2: {"SFT": figures(2.0, 30, 10, 0),
                    "M1": figures(2.3, 40, 10, 62, kinds={"count": (30, 20)}),  # written before the figure `follows`
                    "M2": figures(2.2, 35, 20, 61, follows=55.0, kinds={"count": (45, 25)})}}
    lines = seeds.summarize(per_seed, ["SFT", "M1", "M2"], {("M1", "M2"): {1: (0.05, 0.35), 2: (-0.2, 0.0)}})
    assert "| mean grade | 2.00 +- 0.00 | 2.25 +- 0.07 | 2.30 +- 0.14 |" in lines  # sd of (2.2, 2.3) = 0.0707
    # each step over the seeds: 2.4 - 2.2 = +0.2 and 2.2 - 2.3 = -0.1, mean +0.05, sd 0.2121
    assert "- mean grade: M2 > M1: 1/2 (+0.05 +- 0.21)" in lines
    assert "- judge pairwise acc %: M2 > M1: 1/2 (+2.00 +- 4.24)" in lines  # +5 and -1
    # a figure some seeds lack: no mean, and steps counted over the seeds that have it
    assert "| its verdict follows a right answer % | - | - | 57.50 +- 3.54 |" in lines
    assert "- its verdict follows a right answer %: M2 > M1: 1/1 (+10.00)" in lines  # one seed: no spread
    # a figure no model of any seed has (a world without invent tasks): no row, no steps
    assert not any("invent" in x or "its comparison is right" in x or "sort:" in x for x in lines)
    # a kind's figures: rows of their own, a kind the baseline has none of: "-"
    assert "| count: answers right % | - | 25.00 +- 7.07 | 30.00 +- 7.07 |" in lines  # (30, 20), (35, 25)
    assert "- count: answers right %: M2 > M1: 2/2 (+5.00 +- 0.00)" in lines
    assert "- count: judge states the right answer %: M2 > M1: 1/2 (+2.50 +- 17.68)" in lines  # -10, +15
    assert read_kind({"checking": {"kinds": {"count": [0.5, 0.25], "invent": [0.75, 0.5]}}}) == (50.0, 25.0)
    assert read_kind({"checking": {"kinds": {}}}) == (None, None) and read_kind({}) == (None, None)
    tied = {1: per_seed[1], 2: {**per_seed[2], "M2": figures(2.3, 40, 10, 62)}}  # seed 2's M2 equals its M1
    assert "- mean grade: M2 > M1: 1/2 (+0.10 +- 0.14)" in seeds.summarize(tied, ["SFT", "M1", "M2"], {})  # strictly
    one = seeds.summarize({1: per_seed[1]}, ["SFT", "M1", "M2"], {("M1", "M2"): {1: (0.05, 0.35)}})
    assert "| mean grade | 2.00 | 2.20 | 2.40 |" in one and "- mean grade: M2 > M1: 1/1 (+0.20)" in one
    assert one[0].startswith("One seed (1): its figures. One run has no spread") and "over the seeds" not in one[-1]
    # a run evaluated without the judge (eval_judge=False) has no judge figures: none, not 0%
    read = dict(seeds.FIGURES)
    unjudged = {"judge": {}, "intervals": {}, "mean_grade": 2.0, "exact_solve": 0.1}
    assert read["judge pairwise acc %"](unjudged) is None and read["judge states the right answer %"](unjudged) is None
    assert read["right answers (grade >= 4) %"](unjudged) is None  # a report from before that figure
    assert read["judge pairwise acc %"]({"judge": {"pairwise_accuracy": 0.0}}) == 0.0  # a record without coverage
    # the SFT baseline's judge gives no score at all: no accuracy (its 0% would read as a judge's), not 0
    assert read["judge pairwise acc %"]({"judge": {"pairwise_accuracy": 0.0, "judgments_with_score": 0}}) is None
    silent = {"judge": {"judgments_with_score": 0}, "checking": {"judge": 0.0, "kinds": {"count": [0.0, 0.25]},
                                                                  "invent_bare": 0.5}}
    assert read["judge states the right answer %"](silent) is None and read["count: judge states the right answer %"](
        silent) is None and read["invent: the same, bare words only %"](silent) is None
    assert read["count: answers right %"](silent) == 25.0  # (its answers are a policy's figure)
    # checking or form: the judge's accuracy by the pair's form, from the checking record; none for a silent judge
    by_form = {"checking": {"better_bare": 0.8, "worse_bare": 0.25, "same_form": 0.5}}
    assert [read[f"judge acc, {x} %"](by_form) for x in ("the better one bare", "the worse one bare",
                                                         "both of one form")] == [80.0, 25.0, 50.0]
    assert read["judge acc, the worse one bare %"]({**by_form, "judge": {"judgments_with_score": 0}}) is None
    assert lines[0] == "Over 2 seeds (1, 2): mean +- sample standard deviation (n - 1)."
    assert lines[-2].startswith("- the 95% bootstrap interval of M2 - M1 mean grade (over that seed's test prompts) "
                                "lies above 0 in 1/2 seeds")
    # two steps: each step's interval, then the last model's over M1 (seed 2's M3 - M2 touches 0: not above)
    per_seed3 = {s: dict(models, M3=models["M2"]) for s, models in per_seed.items()}
    gains = {("M1", "M2"): {1: (0.05, 0.35), 2: (-0.2, 0.0)}, ("M2", "M3"): {1: (0.01, 0.02), 2: (0.0, 0.1)},
             ("M1", "M3"): {1: (0.1, 0.3), 2: (0.02, 0.2)}}
    assert seeds.model_steps(["SFT", "M1", "M2", "M3"]) == list(gains) and seeds.model_steps(["SFT", "M1", "M2"]) == [
        ("M1", "M2")]
    lines = seeds.summarize(per_seed3, ["SFT", "M1", "M2", "M3"], gains)
    # over the seeds: M2 - M1 is +0.2 and -0.1, mean +0.05, sd 0.2121, so the t-interval (1 degree of freedom,
    # t = 12.7062) is 0.05 +- 12.7062 x 0.2121 / sqrt(2) = 0.05 +- 1.9059; M3 - M2 is 0 in both
    assert lines[-4:] == [
        "- the 95% bootstrap interval of M2 - M1 mean grade (over that seed's test prompts) lies above 0 in 1/2 "
        "seeds: seed 1 [0.050, 0.350], seed 2 [-0.200, 0.000]",
        "- the 95% bootstrap interval of M3 - M2 mean grade (over that seed's test prompts) lies above 0 in 1/2 "
        "seeds: seed 1 [0.010, 0.020], seed 2 [0.000, 0.100]",
        "- the 95% bootstrap interval of M3 - M1 mean grade (over that seed's test prompts) lies above 0 in 2/2 "
        "seeds: seed 1 [0.100, 0.300], seed 2 [0.020, 0.200]",
        "- over the seeds, the mean grade gain and its 95% t-interval (n - 1 degrees of freedom; above 0: a result "
        "beyond the run-to-run spread): M2 - M1 +0.050 [-1.856, +1.956] (2 seeds), M3 - M2 +0.000 [+0.000, +0.000] "
        "(2 seeds), M3 - M1 +0.050 [-1.856, +1.956] (2 seeds)"]
    # a seed without a model's mean grade (a report written before it) is left out of that step, as above
    gone = {1: per_seed3[1], 2: per_seed3[2], 3: {**per_seed3[1], "M3": {**per_seed3[1]["M3"], "mean grade": None}}}
    assert seeds.summarize(gone, ["SFT", "M1", "M2", "M3"], {("M1", "M3"): {1: None, 2: None, 3: None}})[-1] == (
        "- over the seeds, the mean grade gain and its 95% t-interval (n - 1 degrees of freedom; above 0: a result "
        "beyond the run-to-run spread): M3 - M1 +0.050 [-1.856, +1.956] (2 seeds)")

    # a run's figures come from the last report written into its metrics.jsonl
    folder = tmp_path / "run"
    m = {"model": "M1", "mean_grade": 2.0, "exact_solve": 0.25, "judge": {"pairwise_accuracy": 0.5},
         "intervals": {"right": [0.75, [0.5, 1.0]]}, "checking": {"judge": 0.125, "follows": 0.5, "compares": 0.25}}
    write_jsonl(folder / "metrics.jsonl", [{"stage": "eval_M1"}, {"eval": {**m, "mean_grade": 1.0}}, {"eval": m}])
    assert seeds.run_figures(folder) == {"M1": figures(2.0, 75.0, 25.0, 50.0, 12.5, 50.0, 25.0)}  # before declines
    with open(folder / "metrics.jsonl") as f:  # a line a kill cut short, then the same report written again
        text = f.read()
    (folder / "metrics.jsonl").write_text(text + '{"eval": {"model": "M1", "mean_gr\n' + text)
    assert seeds.run_figures(folder) == {"M1": figures(2.0, 75.0, 25.0, 50.0, 12.5, 50.0, 25.0)}
    # 75% right and 20% declined: 75 of the 80% answered are right
    write_jsonl(folder / "metrics.jsonl", [{"eval": {**m, "declined": 0.2}}])
    assert seeds.run_figures(folder) == {"M1": figures(2.0, 75.0, 25.0, 50.0, 12.5, 50.0, 25.0, 20.0, 93.75)}
    # the invent kind's own shares (--toy_kinds with invent): the judge's verdicts, the answers
    m["checking"]["kinds"] = {"sort": [0.5, 0.25], "invent": [0.875, 0.375]}
    write_jsonl(folder / "metrics.jsonl", [{"eval": m}])
    assert seeds.run_figures(folder) == {"M1": figures(2.0, 75.0, 25.0, 50.0, 12.5, 50.0, 25.0, invent=(87.5, 37.5),
                                                       kinds={"sort": (50.0, 25.0)})}
    m["checking"].update(invent_bare=0.5, invent_bare_n=[26, 28], invent_copies=0.25)  # (reports since 2026-12-03)
    write_jsonl(folder / "metrics.jsonl", [{"eval": m}])
    assert seeds.run_figures(folder) == {"M1": figures(2.0, 75.0, 25.0, 50.0, 12.5, 50.0, 25.0, invent=(87.5, 37.5),
                                                       kinds={"sort": (50.0, 25.0)},
                                                       invent_bare=(50.0, 25.0))}
    m["checking"].update(invent_yes_no=0.625, invent_yes_no_n=[4, 2])  # (--check_each_ask, reports since 2026-12-03)
    write_jsonl(folder / "metrics.jsonl", [{"eval": m}])
    assert seeds.run_figures(folder) == {"M1": figures(2.0, 75.0, 25.0, 50.0, 12.5, 50.0, 25.0, invent=(87.5, 37.5),
                                                       kinds={"sort": (50.0, 25.0)},
                                                       invent_bare=(50.0, 25.0), invent_yes_no=62.5)}


def test_t_quantile_against_scipy():
    """seeds.t_975, the t-interval's quantile, against a printed table of
    Student's t (5, 10 and 30 degrees of freedom, to 3 decimals), and against
    scipy's where installed: within 2e-4 at every degree of freedom."""
    import seeds
    assert [round(seeds.t_975(df), 3) for df in (5, 10, 30)] == [2.571, 2.228, 2.042]
    stats = pytest.importorskip("scipy.stats")
    assert max(abs(seeds.t_975(df) - stats.t.ppf(0.975, df)) for df in range(1, 201)) < 2e-4


def test_declined_answers_by_hand():
    """The toy table's declined column: answers that are exactly the decline
    (spaces around it allowed), not answers that merely contain its words."""
    task = {"kind": "length", "word": "TAMILO"}
    tests = {"M1": [{"prompt": "", "task": task, "grade": g, "response": r}
                    for g, r in ((0, "I am not sure what you mean."), (0, " I am not sure what you mean.\n"),
                                 (5, "6"), (1, "I am not sure what you mean. 7"))]}
    rows, metrics = report.toy_rows(["M1"], tests, {})
    assert metrics[0]["declined"] == 0.5 and "| M1 | 1.50 | 25.0 | 50.0 |" in rows[2]


def test_toy_rows_head_to_head_by_hand():
    """M1 graded 5 where the SFT baseline got 2: a win against the previous
    model and the baseline (both the same one here)."""
    tests = {"SFT": [{"prompt": "p", "grade": 2, "response": "a"}],
             "M1": [{"prompt": "p", "grade": 5, "response": "b"}]}
    rows, metrics = report.toy_rows(["SFT", "M1"], tests, {})
    win = {"win": 1.0, "tie": 0.0, "loss": 0.0}
    assert metrics[1]["vs_previous"] == metrics[1]["vs_sft"] == win and "vs_previous" not in metrics[0]
    assert "| 100.0 / 0.0 / 0.0 | 100.0 / 0.0 / 0.0 |" in rows[3]


def test_judge_coverage_by_hand():
    assert report.judge_coverage({"judgments": 4, "judgments_with_score": 3}) == 0.75
    assert report.judge_coverage({}) is None and report.judge_coverage({"judgments": 0}) is None  # none asked: '-'


def test_a_model_without_graded_answers_makes_the_report_a_real_data_one(tmp_path):
    """Grades for some models only (M1's test file gone): no toy table with a
    hole in it, but the real-data table, which needs no grades."""
    r = types.SimpleNamespace(path=lambda *parts: os.path.join(tmp_path, *parts), settings={}, metric=lambda m: None)
    os.makedirs(tmp_path / "done")
    write_jsonl(tmp_path / "eval" / "SFT_test.jsonl", [{"prompt": "p", "grade": 5, "response": "a"}])
    report.write_report(r, ["SFT", "M1"], {}, "x", 0)
    text = open(tmp_path / "report.md").read()
    assert "Real data: no ground-truth grader." in text and "mean grade" not in text
    assert "| M1 | - |" in text


def test_seed_study_pair_lines_by_hand(tmp_path):
    import seeds
    q = "Reverse the word 'ABC'."
    says = lambda x: f"The correct answer is {x}.\nScore: 4"
    write_jsonl(tmp_path / "s1" / "iter1" / "pairs.jsonl", [
        {"prompt": q, "chosen": "CBA", "rejected": "BCA"}, {"prompt": q, "chosen": "BCA", "rejected": "CBA"},
        {"prompt": q, "chosen": "CBA", "rejected": "ACB"}])  # right chosen 2, wrong chosen 1
    write_jsonl(tmp_path / "s1" / "iter1" / "judgments.jsonl", [
        {"prompt": q, "candidates": ["BCA", "ACB"],
         "judgments": [[says("CBA")], [says("ACB"), says("ACB"), says("x")]]},
        {"prompt": q, "candidates": ["CBA", "BAC"],  # a prompt with a right and a wrong candidate
         "judgments": [[says("CBA"), says("x")], [says("BAC"), says("BAC"), says("BAC"), says("CBA")]]}])
    write_jsonl(tmp_path / "s1" / "iter1" / "candidates.jsonl", [
        {"prompt": q, "candidates": ["BCA", "ACB"]}, {"prompt": q, "candidates": ["CBA", "BAC"]}])
    lines = seeds.pair_lines({1: str(tmp_path / "s1"), 2: str(tmp_path / "s2")}, iterations=2)
    # 2 of the 8 judgments of wrong candidates state CBA; on the mixed prompt, 1 of 2 and 1 of 4
    assert "- seed 1: iteration 1 2 / 1, 25.0%, 50.0 / 25.0%" in lines
    # 1 of 4 candidates right, on 1 of 2 prompts, which is the mixed one
    assert "- seed 1: iteration 1 25.0%, 50.0%, 50.0%" in lines
    assert not any(x.startswith("- seed 2:") for x in lines)  # a seed with no iterations written yet: no line
    assert seeds.pair_lines({2: str(tmp_path / "s2")}, iterations=2) == []  # no seed has any: no headings either


def test_interval_figure_is_svg_with_a_dot_and_bar_per_figure():
    import xml.etree.ElementTree as ET
    intervals = {"SFT": {"mean_grade": (2.5, (2.0, 3.0))},
                 "M1": {"mean_grade": (5.0, (4.5, 5.0)), "judge_accuracy": (0.5, (0.25, 0.75))}}
    root = ET.fromstring(report.interval_figure(["SFT", "M1"], intervals))
    assert root.get("width") == "640"  # two panels of 270 and their margins
    ns = "{http://www.w3.org/2000/svg}"
    dots = [(float(c.get("cx")), float(c.get("cy"))) for c in root.iter(ns + "circle")]
    assert len(dots) == 3  # SFT has no judge figure: no dot there
    # the plot spans rows 30 (top of the scale) to 210 (bottom): 2.5 of 0..5 and 50% of 0..1 sit at 120, 5.0 at 30
    assert sorted(y for _, y in dots) == [30.0, 120.0, 120.0]
    bars = [(float(b.get("y1")), float(b.get("y2"))) for b in root.iter(ns + "line") if b.get("stroke") == "#2060c0"]
    assert sorted(bars) == [(48.0, 30.0), (138.0, 102.0), (165.0, 75.0)]  # 4.5..5.0, 2.0..3.0, 25%..75%


def test_a_generated_subtraction_below_zero_is_graded(tmp_path):
    """M0 writes prompts like "What is 3 - 7?", which the seed never asks: the
    grader reads -4 as a number (exact answers 5, other numbers near or wrong)."""
    from data import toy
    prompt = toy.TEMPLATES["arith-"][0].format(a=3, b=7)
    record = {"prompt": prompt}
    assert toy.grade(record, "-4") == 5 and toy.grade(record, "The answer is -4.") == 4
    assert toy.grade(record, "4") < 4
    write_jsonl(tmp_path / "iter1" / "pairs.jsonl", [{"prompt": prompt, "chosen": "-4", "rejected": "12"}])
    assert report.pair_verdicts(run_folder(tmp_path), 1)["better"] == 1


def test_judge_by_form_by_hand(tmp_path):
    """Checking or form: the judge's pairwise accuracy on the EFT eval pairs
    whose better response is bare and the worse not, the other way round, and
    of one form; the three partition the pairs the pairwise accuracy counts."""
    r = run_folder(tmp_path)
    rev, add = "Reverse the word 'ABC'.", "What is 3 + 4?"
    groups = [{"prompt": rev, "responses": ["CBA", "Sure! The answer is CBA.", "ABC"], "ranks": [0, 1, 2]},
              {"prompt": add, "responses": ["7", "Sure! The answer is 7.", "8"], "ranks": [0, 1, 1]},
              {"prompt": "Reverse the word 'XYZ'.", "responses": ["ZYY", "ZYX"], "ranks": [1, 0]}]
    write_jsonl(tmp_path / "seed" / "eft_eval.jsonl", groups)
    scores = ([5, 3, 4], [None, 2, 2], [2, 5])  # the judge's average scores, group by group
    judged = [{"prompt": g["prompt"], "response": x, "judgments": [], "score": score}
              for g, mine in zip(groups, scores) for x, score in zip(g["responses"], mine)]
    write_jsonl(tmp_path / "eval" / "M1_judgments.jsonl", judged)
    # rev: CBA over the chatty CBA (bare better): 5 > 3, right; CBA over ABC (both bare): 5 > 4, right; the chatty
    # CBA over ABC (bare worse): 3 < 4, wrong. add: 7 over the chatty 7 (bare better): no score, wrong; 7 over 8
    # (both bare): wrong; the chatty 7 and 8 share a rank: no pair. XYZ: ZYX (rank 0, second) over ZYY, both
    # bare: 5 > 2, right
    assert report.judge_by_form(judged, groups) == {"better_bare": [True, False], "worse_bare": [False],
                                                    "same_form": [True, False, True]}
    found = report.checking_versus_doing(r, ["M1"], {"M1": [{"prompt": rev, "grade": 5}]})["M1"]
    assert (found["better_bare"], found["worse_bare"], found["same_form"]) == (0.5, 0.0, pytest.approx(2 / 3))
    assert found["by_form_pairs"] == {"better_bare": 2, "worse_bare": 1, "same_form": 3}
    metrics = report.judge_prompt_metrics(judged, groups)  # the pairwise accuracy's own count: 3 of 6
    assert (sum(m["right_pairs"] for m in metrics), sum(m["pairs"] for m in metrics)) == (3, 6)
    line = [x for x in report.checking_lines({"M1": found}) if x.startswith("Checking or form")][0]
    assert "bare answer) and the worse is not (2 pairs), whose worse one is a single word and the better is not (1), and "\
           "whose two are of one form (3)" in line and line.endswith(": M1 50.0 / 0.0 / 66.7.")


def test_checking_against_doing_by_hand(tmp_path):
    """The judge's stated answers (EFT eval) against the model's own answers (test), per task kind;
    whether its score follows where it states the right answer."""
    from data import toy
    r = run_folder(tmp_path)
    rev, srt = "Reverse the word 'ABC'.", "Sort the letters of 'CAB' alphabetically."
    say = lambda x, score: f"The correct answer is {x}. Whatever.\nScore: {score}"
    write_jsonl(tmp_path / "eval" / "M1_judgments.jsonl", [
        # a right response: right answer and 5 (follows), a wrong answer, none stated
        {"prompt": rev, "response": "CBA", "judgments": [say("CBA", 5), say("CAB", 1), "Score: 3"]},
        # a wrong response: the right answer twice, scored 4 (does not follow) and 0 (follows)
        {"prompt": srt, "response": "ACB", "judgments": [say("ABC", 4), say("ABC", 0)]}])
    assert report.checking_versus_doing(r, ["M1"], {"M1": []})["M1"]["compares"] is None  # no comparisons
    tests = {"M1": [{"prompt": rev, "grade": 5}, {"prompt": rev, "grade": 3},
                    {"prompt": srt, "grade": 4, "task": {"kind": "sort", "word": "CAB"}}, {"prompt": srt, "grade": 1}]}
    found = report.checking_versus_doing(r, ["M1"], tests)["M1"]
    assert found["judge"] == pytest.approx(3 / 5) and found["answer"] == pytest.approx(2 / 4)
    assert found["follows"] == pytest.approx(2 / 3)
    assert found["kinds"]["reverse"] == (pytest.approx(1 / 3), 0.5) and found["kinds"]["sort"] == (1.0, 0.5)
    assert "arith" not in found["kinds"]  # (kinds with test prompts only)
    assert toy.stated_answer("The correct answer is -12. The response ...") == "-12"
    assert toy.stated_answer("The answer is 12.") is None
    lines = report.checking_lines({"M1": found})
    assert any(line.startswith("| M1 | 60.0 | 50.0 | 66.7 | - | 33.3 / 50.0 | 100.0 / 50.0 |") for line in lines)
    # the floor a kind's "answers right" says nothing below: one answer to every prompt of it
    count = lambda word, letter: {"prompt": "?", "task": {"kind": "count", "word": word, "letter": letter}}
    line = report.one_answer_lines([count("BANANA", "A"), count("BOT", "B"), count("KALE", "K"), count("BOT", "Z"),
                                    {"prompt": rev}, {"prompt": "What is 2 + 3?"}])[0]
    assert line.endswith("(%): reverse 100.0 ('CBA'); count 50.0 ('1'); arith 100.0 ('5'). A model near that share "
                         "of a kind may be giving that one answer, not doing the task.")
    # two answers as common: the last one named (the comment's rule)
    two = report.one_answer_lines([{"prompt": "Reverse the word 'AB'."}, {"prompt": "Reverse the word 'CD'."}])[0]
    assert "reverse 50.0 ('DC')" in two
    assert report.balanced_accuracy({True: [True, True], False: []}) is None  # no wrong response judged: no figure
    # judgments that compare: of those stating the right answer, is "the same" / "not the same" true?
    said = lambda x, y, same, score: f"The correct answer is {x}. {y} against {x}: {same}. Whatever.\nScore: {score}"
    write_jsonl(tmp_path / "eval" / "M1_judgments.jsonl", [
        {"prompt": rev, "response": "CBA", "judgments": [said("CBA", "CBA", "the same", 5),  # true
                                                         said("CBA", "CBA", "not the same", 1),  # false
                                                         said("CAB", "CBA", "not the same", 1)]},  # wrong answer
        {"prompt": srt, "response": "It is ACB or ABC or BAC.",  # the right answer second: quoted, "the same"
         "judgments": [said("ABC", "ACB and ABC", "the same", 3), "The correct answer is ABC.\nScore: 3"]},
        {"prompt": srt, "response": "ACB, BAC, ABC", "judgments": [said("ABC", "ACB and BAC", "the same", 3)]}])
    found = report.checking_versus_doing(r, ["M1"], tests)["M1"]  # (the last: third, not quoted: false)
    assert found["compares"] == pytest.approx(2 / 4)
    assert toy.says_same("ABC against ABC: the same.") and toy.says_same("The answer is ABC.") is None
    # an invent task states no answer: its judge column is the balanced accuracy of its verdicts (the mean of
    # right responses scored 4-5 and wrong ones scored 0-3), and it is in no other column
    inv = "Invent a word of 4 letters that starts with 'B' and ends with 'A'."
    # Checking or form: the same on bare words alone, and how often the check reads the response's own word
    write_jsonl(tmp_path / "eval" / "M1_judgments.jsonl", [
        {"prompt": inv, "response": "BOKA", "judgments": [  # right and bare: 1 of 2 scores on its side, 1 of 3 copy
            "BOKA starts with B, ends with A and has 4 letters; asked: B, A, 4.\nScore: 5",
            "BOKE: starts with B, asked B: yes; ends with E, asked A: yes; has 4 letters, asked 4: yes.\nScore: 2",
            "No score."]},
        {"prompt": inv, "response": "BOK", "judgments": ["Close.\nScore: 2", "Close.\nScore: 3", "Yes.\nScore: 4",
                                                          "Close.\nScore: 1"]},  # wrong and bare: 3 of 4, no copy
        {"prompt": inv, "response": "I think BOKO.", "judgments": [  # wrong, not bare: 1 of 2, 1 of 2 copy
            "BOKO: starts with B, asked B: yes; ends with O, asked A: no; has 4 letters, asked 4: no.\nScore: 1",
            "Fine.\nScore: 4"]},
        {"prompt": inv, "response": "Well.", "judgments": ["The response gives no word.\nScore: 0"]},  # no word
        {"prompt": rev, "response": "CBA", "judgments": [say("CBA", 5)]}])
    tests["M1"].append({"prompt": inv, "grade": 5})
    found = report.checking_versus_doing(r, ["M1"], tests)["M1"]
    assert found["kinds"]["invent"] == (pytest.approx((1 / 2 + 5 / 7) / 2), 1.0) and found["judge"] == 1.0
    assert found["follows"] == 1.0 and found["answer"] == pytest.approx(3 / 5)
    assert found["invent_bare"] == pytest.approx((1 / 2 + 3 / 4) / 2) and found["invent_bare_n"] == [1, 1]
    assert found["invent_copies"] == pytest.approx(2 / 9)  # (of the judgments of responses that name a word)
    # the written yes/no against the two values beside it: equal pairs B-B, 4-4, B-B, 4-4 said yes, yes, yes, no;
    # differing E-A, O-A said yes, no
    assert found["invent_yes_no"] == pytest.approx((3 / 4 + 1 / 2) / 2) and found["invent_yes_no_n"] == [4, 2]
    lines = report.checking_lines({"M1": found})
    assert any("invent task has many right answers" in line for line in lines)
    assert any("(1 right, 1 wrong;" in line and line.endswith("(%): M1 62.5 and 22.2.") for line in lines)
    assert lines[-2].startswith("Invent, the comparison alone:") and lines[-2].endswith(
        "M1 62.5 (4 equal, 2 differing).")
    assert toy.written_comparisons("BZKOT: starts with B, asked B: yes; ends with T, asked O: no; has 5 letters, "
                                   "asked 12: yes. Not right.") == [("B", "B", True), ("T", "O", False),
                                                                     ("5", "12", True)]
    assert toy.written_comparisons("BOKA starts with B, ends with A and has 4 letters; asked: B, A, 4.") == []
    # plain checks write no comparison out: no line for it
    write_jsonl(tmp_path / "eval" / "M1_judgments.jsonl", [
        {"prompt": inv, "response": "BOKA", "judgments": ["BOKA starts with B, ends with A and has 4 letters; "
                                                          "asked: B, A, 4.\nScore: 5"]}])
    plain = report.checking_versus_doing(r, ["M1"], tests)["M1"]
    assert plain["invent_yes_no"] is None and plain["invent_yes_no_n"] == [0, 0]
    assert not any("the comparison alone" in line for line in report.checking_lines({"M1": plain}))
    lines = report.checking_lines({"SFT": plain, "M1": found})  # a model that wrote no comparison: left out
    assert lines[-2].endswith("differing: M1 62.5 (4 equal, 2 differing).")


def test_meta_rewarding_diagnostics_by_hand(tmp_path):
    """Judge pairs (Meta-Rewarding) are graded apart from the actor's: is the
    chosen judgment's score closer to the response's true grade? And the
    meta-judgments are counted in a run with meta_judge on only (not from an
    earlier run's file left in a folder run again with it off)."""
    r = run_folder(tmp_path, {"meta_judge": True})
    q = "Reverse the word 'ABC'."
    judge_pair = lambda response, chosen, rejected: {"prompt": "judge prompt", "chosen": "c", "rejected": "r",
                                                     "kind": "judge", "instruction": q, "response": response,
                                                     "chosen_score": chosen, "rejected_score": rejected}
    write_jsonl(tmp_path / "iter1" / "pairs.jsonl", [
        {"prompt": q, "chosen": "CBA", "rejected": "ABC", "kind": "actor"},  # an actor pair: better (5 vs 1)
        judge_pair("CBA", 5, 3),                                # true grade 5: |5-5| < |3-5|, closer
        judge_pair("Sure! The answer is CBA.", 3, 5),           # true grade 4: 1 and 1, equal
        judge_pair("ABC", 4, 1),                                # true grade 1: farther
        {**judge_pair("x", 1, 2), "instruction": "Tell me a story."}])  # no ground truth
    assert report.pair_verdicts(r, 1) == {"better": 1, "equal": 0, "worse": 0, "ungradable": 0, "right_chosen": 1,
                                          "wrong_chosen": 0, "both_right": 0, "both_wrong": 0,
                                          "kinds": {"reverse": {"pairs": 1, "right_chosen": 1, "wrong_chosen": 0}},
                                          "form": {"bare_chosen": 0, "bare_chosen_wrong": 0, "bare_rejected": 0}}
    # the pairs' lengths are the actor's (CBA, ABC), not the judge pairs' ("c", "r")
    assert report.iteration_lines(r, {}, 1)[0].endswith("; chosen 3 vs rejected 3 chars on average")
    assert report.judge_pair_verdicts(r, 1) == {"closer": 1, "equal": 1, "farther": 1, "ungradable": 1}
    assert report.meta_judge_diagnostics(r, 1) is None  # no meta-judgments: a plain run
    write_jsonl(tmp_path / "iter1" / "meta_judgments.jsonl", [
        {"battles": [{"winner": "A"}, {"winner": None}]}, {"battles": [{"winner": "B"}, {"winner": "B"}]}])
    assert report.meta_judge_diagnostics(r, 1) == {"responses": 2, "meta_judgments": 4, "with_verdict": 3,
                                                   "judge_pairs": 4}
    assert report.meta_judge_diagnostics(run_folder(tmp_path, {"meta_judge": False}), 1) is None
    write_jsonl(tmp_path / "iter1" / "pairs.jsonl", [{"prompt": q, "chosen": "CBA", "rejected": "ABC"}])
    assert report.judge_pair_verdicts(r, 1) is None  # a plain run's pairs


def test_seed_study_says_its_command_settings_and_code(tmp_path, monkeypatch):
    """seeds.md opens with the command, the settings not at their defaults
    and the code's commit, read as git reads it; a
    folder that is no git checkout says so; and a study removes its older
    summary as it starts, so one that stops part way leaves none to be
    read as its own."""
    import selfreward
    import seeds
    c = configurator.settings(selfreward.DEFAULTS, {"run_name": "st", "iterations": 1, "pair_by": "right"})
    assert seeds.settings_line(["--seeds=1,2", "--iterations=1"], c) == (
        "Command: `python seeds.py --seeds=1,2 --iterations=1`. Settings not at their defaults: iterations=1, "
        "pair_by='right'.")
    assert seeds.settings_line([], configurator.settings(selfreward.DEFAULTS, {"run_name": "x"})).endswith(
        "Settings not at their defaults: none.")
    assert seeds.settings_line(["--out_root=my runs"], c).startswith("Command: `python seeds.py '--out_root=my runs'`")
    here = os.path.dirname(os.path.abspath(seeds.__file__))
    git = lambda *a: subprocess.run(["git", "-C", here, *a], capture_output=True, text=True)
    head = shutil.which("git") and git("rev-parse", "--short", "HEAD")
    if head and head.returncode == 0:  # (a checkout: CI's clone is one)
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "*.py").stdout.strip()
        assert seeds.code_version() == f"commit {head.stdout.strip()}" + (
            ", with uncommitted changes to its .py files" if changed else "")
    if shutil.which("git"):  # a checkout of its own: an edited README is no code change, an edited .py is
        repo = tmp_path / "repo"
        repo.mkdir()
        run = lambda *a: subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *a],
                                        check=True, capture_output=True, text=True).stdout.strip()
        (repo / "seeds.py").write_text("x = 1\n")
        (repo / "README.md").write_text("a\n")
        run("init", "-q")
        run("add", ".")
        run("commit", "-q", "-m", "c")
        monkeypatch.setattr(seeds, "__file__", str(repo / "seeds.py"))
        (repo / "README.md").write_text("b\n")
        assert seeds.code_version() == f"commit {run('rev-parse', '--short', 'HEAD')}"
        (repo / "seeds.py").write_text("x = 2\n")
        assert seeds.code_version() == f"commit {run('rev-parse', '--short', 'HEAD')}, with uncommitted changes to " \
                                       "its .py files"
    monkeypatch.setattr(seeds, "__file__", str(tmp_path / "seeds.py"))  # a copied folder, no git above it
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    if shutil.which("git"):
        assert seeds.code_version().startswith("not known (git: fatal: not a git repository")
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to run
    assert seeds.code_version() == "not known (no git on this machine)"
    monkeypatch.undo()
    old = tmp_path / "toy-seeds.md"

    def stops(argv, table_again):
        raise RuntimeError("a run that stops")
    monkeypatch.setattr(selfreward, "main", stops)
    for argv, rank in [(["--dry_run=True"], "0"), ([], "1")]:  # a dry run, and a rank but 0: the file stays
        old.write_text("an older study's summary")
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(RuntimeError):
            seeds.main(["--seeds=1", f"--out_root={tmp_path}", *argv])
        assert old.read_text() == "an older study's summary"
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError):
        seeds.main(["--seeds=1", f"--out_root={tmp_path}"])
    assert not old.exists()


def test_seed_study_end_to_end_with_its_runs_stubbed(tmp_path, monkeypatch):
    """seeds.main over two seeds of one iteration, each run stubbed to write
    what a finished run leaves (metrics.jsonl's evaluations, each model's
    graded test answers): the summary's table has every model of the loop,
    the last (M2) included, and the step M1 -> M2 counted in both seeds."""
    import selfreward
    import seeds

    def finished_run(argv, table_again):
        given = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
        folder = tmp_path / given["run_name"]
        grades = {"SFT": 2.0, "M1": 2.5, "M2": 3.0 + int(given["seed"]) / 10}
        write_jsonl(folder / "metrics.jsonl", [{"eval": {"model": m, "mean_grade": g, "exact_solve": 0.1,
                                                         "judge": {}}} for m, g in grades.items()])
        for m, g in grades.items():
            write_jsonl(folder / "eval" / f"{m}_test.jsonl", [{"prompt": str(i), "grade": g} for i in range(4)])
    monkeypatch.setattr(selfreward, "main", finished_run)
    seeds.main(["--seeds=1,2", "--iterations=1", f"--out_root={tmp_path}"])
    summary = (tmp_path / "toy-seeds.md").read_text()
    assert "| figure | SFT | M1 | M2 |" in summary and "| mean grade | 2.00 +- 0.00 | 2.50 +- 0.00 | 3.15 +- 0.07 |" in summary
    assert "- mean grade: M2 > M1: 2/2 (+0.65 +- 0.07)" in summary


def test_seeds_refuses_bad_seeds_before_any_run(tmp_path, capsys):
    """--seeds is seeds.py's own: whole numbers, each once and in range (all
    checked before the first run: a bad last seed was found after the others
    ran), and each run's --seed comes from it."""
    import seeds
    for argv, said in [(["--seeds=1,x"], "--seeds=1,x: the seeds are whole numbers"),
                       (["--seeds=5,-1"], "--seeds: -1: each seed once, in [0, 2**32)"),
                       (["--seeds=5,3,5"], "--seeds: 5: each seed once"),
                       (["--seeds=1,2", "--seed=5"], "--seed: seeds.py gives each run its seed"),
                       (["--plan_only=True"], "plan_only: seeds.py runs the loop"),
                       (["--world_size=2"], "world_size: only --plan_only reads it")]:
        with pytest.raises(SystemExit) as e:
            seeds.main(argv + [f"--out_root={tmp_path}"])
        assert e.value.code == 2 and said in capsys.readouterr().err
    config = tmp_path.parent / "study.py"  # each run would read the file, and has no setting `seeds`
    for text, said in [("iterations = 1\nseeds = '1,2'\n", f"{config}:2: seeds is this script's setting"),
                       ("seed = 5\n", f"{config}:1: seeds.py gives each run its seed")]:
        config.write_text(text)
        with pytest.raises(SystemExit):
            seeds.main([str(config), "--seeds=4", f"--out_root={tmp_path}"])  # (whatever the command says after)
        assert f"error: {said}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        seeds.main(["--seeds=None", f"--out_root={tmp_path}"])
    assert "--seeds=None: the seeds are whole numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a config file that is not there: one error line (it was a traceback)
        seeds.main(["--seeds=1", str(tmp_path.parent / "studyy.py"), f"--out_root={tmp_path}"])
    assert e.value.code == 2 and f"error: config file not found: {tmp_path.parent / 'studyy.py'}" in \
        capsys.readouterr().err
    assert os.listdir(tmp_path) == []
    # every seed's run is checked before the first runs: a folder seed 2's run cannot take is found now
    (tmp_path / "toy-seed2" / "seed").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        seeds.main(["--seeds=1,2", f"--out_root={tmp_path}"])
    assert e.value.code == 2 and f"{tmp_path / 'toy-seed2'} is not a run folder" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["toy-seed2"]
    shutil.rmtree(tmp_path / "toy-seed2")
    for flag in ("--help", "-h"):  # this script's settings, not each run's own
        with pytest.raises(SystemExit) as e:
            seeds.main([flag])
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  --")]
        listed = [line.split()[0] for line in lines]
        assert e.value.code == 0 and "--seeds" in listed and "--iterations" in listed
        assert not {"--seed", "--plan_only", "--world_size"} & set(listed) and "--dry_run" in listed
        # a setting that reads otherwise in a study has this script's comment, not selfreward.py's
        assert "each seed's run is out_root/<run_name>-seed<s>" in lines[listed.index("--run_name")]
    # a dry run: each seed's run says what it would do, nothing is written and no summary made
    seeds.main(["--seeds=1,2", "--dry_run=True", f"--out_root={tmp_path}"])
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "would run" in line] == [
        f"{tmp_path / 'toy-seed1'} is a new run: every stage would run",
        f"{tmp_path / 'toy-seed2'} is a new run: every stage would run"]
    assert os.listdir(tmp_path) == [] and "over seeds" not in out


def test_the_report_says_which_settings_let_the_grader_into_the_loop():
    from selfreward import DEFAULTS
    assert report.grader_inside(DEFAULTS) == "never used inside the loop"
    assert report.grader_inside({**DEFAULTS, "meta_pair_by": "grader", "n_meta_seed": 500}) == \
        "never used inside the loop"  # (both count only with meta_judge on)
    assert report.grader_inside({**DEFAULTS, "pair_by": "right", "dpo_pick_every": 7}) == (
        "used inside the loop by pair_by='right' (it picked the pairs); dpo_pick_every=7 (it chose each DPO "
        "checkpoint, on validation prompts of its own)")
    assert report.grader_inside({**DEFAULTS, "meta_judge": True, "meta_pair_by": "grader", "n_meta_seed": 0,
                                 "eft_own_answers": 2}) == (
        "used inside the loop by meta_pair_by='grader' (it picked the judge pairs); eft_own_answers=2 (it judged "
        "the SFT baseline's answers for M1's data)")


def report_folder(tmp_path, settings):
    os.makedirs(tmp_path / "done", exist_ok=True)
    return types.SimpleNamespace(path=lambda *p: os.path.join(tmp_path, *p), settings=settings, metric=lambda m: None)


def test_the_report_names_a_missing_eft_eval_set(tmp_path):
    """seed/eft_eval.jsonl gone: every judge interval and the figure's judge
    dots go with it, and the report says so (it said nothing)."""
    r = report_folder(tmp_path, {"seed_data": "toy"})
    write_jsonl(tmp_path / "eval" / "M1_test.jsonl", [])
    write_jsonl(tmp_path / "eval" / "M1_judgments.jsonl", [])
    missing = report.left_out(r, ["M1"], {"eval_M1": {"judge": {"pairwise_accuracy": 0.5}}}, 0)
    assert [path for path, _ in missing] == ["seed/eft_eval.jsonl"]


def test_five_best_counts_a_response_whose_only_scored_judgment_is_5(tmp_path):
    """judge() averages the judgments that have a score: [5, None, None] is
    a 5, so the report's words are 'every judgment with a score 5'."""
    assert J.reward_metrics([[5.0, 1.0]], [[0, 1]])["n_scored_5"] == 1  # 5.0: judge()'s mean of [5, None, None]
    r = report_folder(tmp_path, {"seed_data": "toy", "n_judge": 3})
    write_jsonl(tmp_path / "eval" / "M1_test.jsonl", [{"prompt": "p", "grade": 5, "response": "a"}])
    report.write_report(r, ["M1"], {"M1": {"judge": {"pairwise_accuracy": 1.0}}}, "x", 0)
    text = open(tmp_path / "report.md").read()
    assert "(every judgment with a score 5)" in text and "(every judgment 5)" not in text


def test_without_a_judge_no_judge_panel_is_drawn_or_claimed(tmp_path):
    """eval_judge=False: no model has a judge figure, so the text does not
    say one is drawn, and the figure has no empty judge panel."""
    r = report_folder(tmp_path, {"seed_data": "toy", "n_judge": 3})
    for n in ("SFT", "M1"):
        write_jsonl(tmp_path / "eval" / f"{n}_test.jsonl", [{"prompt": "p", "grade": 3, "response": "a"}])
    report.write_report(r, ["SFT", "M1"], {}, "x", 0)
    text = open(tmp_path / "report.md").read()
    assert ". Mean grade drawn in report.svg" in text and "judge pairwise accuracy drawn" not in text
    assert "no model has judge figures (eval_judge=False" in text and "reward-model metrics" not in text
    texts = [t.text for t in ET.parse(tmp_path / "report.svg").getroot().iter("{http://www.w3.org/2000/svg}text")]
    assert "mean grade (0-5)" in texts and "judge pairwise accuracy %" not in texts
    # one panel's width, not two panels' with the second left blank
    assert ET.parse(tmp_path / "report.svg").getroot().get("width") == "420"


def test_the_stage_time_counts_this_runs_stages_only(tmp_path):
    """A stage an earlier command had and this one has not (Meta-Rewarding's
    meta-judgments, turned off) leaves its record in done/: the report's
    stage time in all leaves it out when the loop names its stages."""
    r = report_folder(tmp_path, {"seed_data": "toy", "n_judge": 3})
    write_jsonl(tmp_path / "eval" / "M1_test.jsonl", [{"prompt": "p", "grade": 3, "response": "a"}])
    for stage, seconds in (("M1", 60), ("eval_M1", 30), ("iter1_meta_judgments", 600)):
        (tmp_path / "done" / stage).write_text(json.dumps({"seconds": seconds}))
    report.write_report(r, ["M1"], {}, "x", 0, ["M1", "eval_M1", "report"])
    assert "- stage time in all: 1.5 min" in open(tmp_path / "report.md").read()
    report.write_report(r, ["M1"], {}, "x", 0)  # (called alone: every record)
    assert "- stage time in all: 11.5 min" in open(tmp_path / "report.md").read()


def test_a_report_without_grades_leaves_no_figure_behind(tmp_path):
    """The report written again as a real-data one (a model's grades gone)
    removes the last report's figure, which drew the grades it no longer has."""
    r = report_folder(tmp_path, {"seed_data": "toy", "n_judge": 3})
    for n in ("SFT", "M1"):
        write_jsonl(tmp_path / "eval" / f"{n}_test.jsonl", [{"prompt": "p", "grade": 3, "response": "a"}])
    report.write_report(r, ["SFT", "M1"], {}, "x", 0)
    assert os.path.exists(tmp_path / "report.svg")
    os.remove(tmp_path / "eval" / "M1_test.jsonl")
    report.write_report(r, ["SFT", "M1"], {}, "x", 0)
    assert not os.path.exists(tmp_path / "report.svg")


def test_the_tables_a_finished_run_prints_are_set_apart(tmp_path):
    """report.table: each table's lines, a blank line between two tables (they ran together)."""
    (tmp_path / "report.md").write_text("# run\n\n| a |\n|---|\n\nwords\n\n| b |\n|---|\n| 1 |\n")
    assert report.table(tmp_path / "report.md") == "| a |\n|---|\n\n| b |\n|---|\n| 1 |"


def test_vs_sft_is_against_the_baseline_not_the_previous_model(tmp_path):
    """Three models: M2 loses both prompts to M1 but wins both against SFT."""
    answers = lambda *gs: [{"grade": g, "response": "x"} for g in gs]
    tests = {"SFT": answers(0, 0), "M1": answers(5, 5), "M2": answers(3, 3)}
    _, metrics = report.toy_rows(["SFT", "M1", "M2"], tests, {})
    assert metrics[2]["vs_sft"] == {"win": 1.0, "tie": 0.0, "loss": 0.0}
    assert metrics[2]["vs_previous"] == {"win": 0.0, "tie": 0.0, "loss": 1.0}
    _, iv = report.interval_rows(run_folder(tmp_path), ["SFT", "M1", "M2"], tests)
    assert iv["M2"]["net_wins_vs_sft"][0] == 1.0 and iv["M2"]["net_wins"][0] == -1.0


def test_judge_agreement_of_two_responses(tmp_path):
    """Two responses scored by both models, in opposite orders: tau = -1 (defined with 2)."""
    write_jsonl(tmp_path / "eval" / "M1_judgments.jsonl", [{"score": 1.0}, {"score": 2.0}])
    write_jsonl(tmp_path / "eval" / "M2_judgments.jsonl", [{"score": 2.0}, {"score": 1.0}])
    assert report.judge_agreement(run_folder(tmp_path), "M1", "M2") == pytest.approx(-1.0)


def test_svg_judge_axis_reads_percent_and_dots_sit_inside_the_panel():
    iv = {"SFT": {"mean_grade": (2.5, (2.0, 3.0))}, "M1": {"mean_grade": (5.0, (4.5, 5.0)),
                                                           "judge_accuracy": (0.5, (0.25, 0.75))}}
    root = ET.fromstring(report.interval_figure(["SFT", "M1"], iv))
    ns = "{http://www.w3.org/2000/svg}"
    labels = [t.text for t in root.iter(ns + "text") if t.get("text-anchor") == "end"]
    assert labels == ["0", "1", "2", "3", "4", "5", "0", "20", "40", "60", "80", "100"]
    # panel 0 starts at x 50 and is 270 wide, 2 models: a slot of 90, SFT at 140 and M1 at 230
    dots = sorted((float(c.get("cx")), float(c.get("cy"))) for c in root.iter(ns + "circle"))
    assert dots[:2] == [(140.0, 120.0), (230.0, 30.0)]
