"""report.py's statistics and the loop's diagnostics, against values worked
out by hand on small inputs."""
import os
import types

import numpy as np
import pytest

import report
from data import write_jsonl


def run_folder(tmp_path):
    return types.SimpleNamespace(path=lambda *parts: os.path.join(tmp_path, *parts))


def test_bootstrap_interval_by_hand():
    # two prompts, values 0 and 1: a draw of two has mean 0 (1/4), 0.5 (1/2) or
    # 1 (1/4), so the 2.5th and 97.5th percentiles are 0 and 1
    assert report.bootstrap_interval([0, 1]) == (0.0, 1.0)
    assert report.bootstrap_interval([3, 3, 3]) == (3.0, 3.0)  # no spread, no width
    # weighted: 3 right of 3 pairs, 0 right of 1: draws give 6/6, 0/2 or 3/4
    assert report.bootstrap_interval([3, 0], [3, 1]) == (0.0, 1.0)
    assert report.bootstrap_interval([]) is None


def test_bootstrap_interval_matches_the_normal_approximation():
    """400 coin flips, half heads: the mean's 95% interval is 0.5 +- 1.96 * sqrt(0.25 / 400) = [0.451, 0.549]."""
    low, high = report.bootstrap_interval(np.tile([0.0, 1.0], 200), resamples=4000)
    assert low == pytest.approx(0.451, abs=0.006) and high == pytest.approx(0.549, abs=0.006)


def test_judge_pairs_per_prompt_by_hand():
    groups = [{"responses": ["a", "b", "c"], "ranks": [0, 1, 2]}, {"responses": ["d", "e"], "ranks": [1, 0]}]
    judged = [{"score": 5.0}, {"score": 3.0}, {"score": 4.0},   # (a,b) right, (a,c) right, (b,c) wrong
              {"score": None}, {"score": 2.0}]                 # unscored: wrong
    assert report.judge_pairs_per_prompt(judged, groups) == ([2, 0], [3, 1])


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
    assert report.pair_verdicts(r, 1) == {"better": 1, "equal": 1, "worse": 1, "ungradable": 1}


def test_judge_agreement_between_models_by_hand(tmp_path):
    r = run_folder(tmp_path)
    write_jsonl(tmp_path / "eval" / "M1_judgments.jsonl", [{"score": s} for s in (1.0, 2.0, 3.0, None)])
    write_jsonl(tmp_path / "eval" / "M2_judgments.jsonl", [{"score": s} for s in (1.0, 3.0, 2.0, 4.0)])
    # 3 responses scored by both: pairs (1,2) concordant, (1,3) concordant, (2,3) discordant: (2 - 1) / 3
    assert report.judge_agreement(r, "M1", "M2") == pytest.approx(1 / 3)
    assert report.judge_agreement(r, "M1", "M3") is None
