"""judge.py: the prompt, the score parser on real judge outputs, averaging, the metrics."""
import json
import math
import random
import re
import statistics
from collections import Counter

import pytest

import judge as J
from conftest import shared_file
from data import write_jsonl
from judge import (JUDGE_PROMPT, eft_targets, judge, judge_eft_groups, judge_groups, judge_prompt, judge_prompt_ids,
                   judgment_as_target, kendall_tau, make_eft_targets, parse_score, read_judge_file, reward_metrics,
                   spearman)


def test_prompt_is_the_papers_text():
    with open(shared_file("..", "paper", "judge_prompt_figure2.txt"), encoding="utf-8") as f:
        paper = f.read()
    assert " ".join(JUDGE_PROMPT.split()) == " ".join(paper.split())  # PDF line wraps aside


def test_prompt_fills_its_two_slots():
    assert "user’s" in JUDGE_PROMPT and "“Score: <total points>”" in JUDGE_PROMPT  # typographic marks kept
    filled = judge_prompt("What is 2 + 2?", " 4 ")
    assert "User: What is 2 + 2?\n<response>4</response>\n" in filled
    # the instruction is stripped too (a seed file's trailing newline would open a blank line in the prompt)
    assert "User: What?\n<response>x</response>\n" in judge_prompt("  What?  \n", "x")
    # a placeholder inside the instruction is text, not a slot
    assert "User: say <RESPONSE_HERE>\n<response>x</response>" in judge_prompt("say <RESPONSE_HERE>", "x")


@pytest.mark.parametrize("text, score", [
    ("Score: 4", 4), ("score: 4", 4), ("SCORE:4", 4), ("**Score: 4**", 4), ("**Score**: 4", 4),
    ("Score: **4**", 4), ("Score 4:\nThe response is fine.", 4), ("Score: 4/5", 4), ("Score: 4 / 5", 4),
    ("Score: 4 out of 5", 4), ("Score: 4.", 4), ("Score: 4.0", 4), ("Score: 0", 0), ("Score: 5", 5),
    ("The response is relevant... Score: 3 points. It could be shorter.", 3),
    ("Total score: 2", 2), ("final Score: 1\n", 1),
    # the concluding score wins; prose never counts
    ("Score: 2\nOn reflection, Score: 4", 4), ("Score: 3\nIt would thus earn a score of 4.", 3),
    ("It deserves a score of 4 out of 5.", None), ("The response scores 5 points.", None),
    # never invent: other scales, fractions, ranges, out of range, code, nothing
    ("Score: 8/10", None), ("Score: 4/10", None), ("Score: 4 out of 10", None), ("Score: 3.5", None),
    ("Score: 0.50", None), ("Score: 3-4", None), ("Score: 4 or 5", None), ("Score: 6", None),
    ("Score: 25", None), ("Score: -1", None), ("score = 0", None), ("Score: <total points>", None),
    ("Score:\n1 point for relevance", None), ("Score: four", None), ("", None), ("No score here.", None),
    ("Score: 4\nScore: 9", None),  # the concluding one is unreadable: no guessing from the earlier
    ("Score: 2\n\nScore: N/A for style", 2),  # a mark with no number is no mark
    ("Scores: 4", None), ("The response is fine.\nScores: 3", None),  # the word "score", not "scores"
    ("Score: __4__", 4),  # markdown underscores around the number, as asterisks
    ("Score+3:", None), ("Score: 4\nScore-1: n/a", 4),  # "Score 4:" needs the space: "Score-1:" is no mark
    ("Score: 4 OR 5", None), ("Score: 3 To 4", None),  # a choice or a range in capitals too
    ("Score: 1+1 = 3/5", None), ("Score: 1+1+1 = 4 out of 5", None),  # a wrong sum stays wrong on a scale of 5
    # points added up: the total, if it is their sum
    ("Score: 1+1+1+0 = 3", 3), ("Score: 1 + 1 + 1 = 3/5", 3), ("**Score: 1+1 = 2**", 2),
    ("Score: 1+1+1", None), ("Score: 1+1 = 3", None),
    ("Score: 4\n\n+ 1 point for relevance\n+ 1 point for clarity", 4), ("Score: 4\n- 1 point: relevance", 4),
    ("Score: 1+1+1+1\n\n= 4", None),  # the mark is one line: a list below it is not a sum, nor a range
    ("Score: 4\n\nOut of 10 reviewers, most would agree.", 4), ("Score: 3\n/10", 3),  # ... nor a scale
    ("Score: 3,5", None), ("Score: 4, which is fair", 4),  # a decimal comma is a fraction; a comma alone is not
    # a sign is part of the number (the concluding -1 is unreadable, not a way back to the 4); "subscore" is
    # not the word; ranges with "to" and dashes, and ranges or choices of scaled scores, are not scores
    ("Score: 4\nScore: -1", None), ("Score: +3", 3), ("Relevance subscore: 1", None), ("Score: 3 to 4", None),
    ("Score: 3\u20134", None), ("Score: 3\u20144", None), ("Score: 3/5 or 4/5", None), ("Score: 3/5 - 4/5", None),
    ("Score: 3 out of 5 to 4 out of 5", None), ("Score: 4/5 - a fair answer", 4),
])
def test_parse_score_table(text, score):
    assert parse_score(text) == score


def test_parse_score_finds_the_whole_mark():
    """find_score's (score, start, end): from the word "score" to the end of
    its number, scale, sum or colon; None where there is no mark."""
    for text, mark in [("Fine. Score: 4", "Score: 4"), ("Fine. **Score: 4/5** ok", "Score: 4/5"),
                       ("x Score 4:\nok", "Score 4:"), ("Score: 1+1 = 2 points", "Score: 1+1 = 2"),
                       ("Score: 4 out of 5.", "Score: 4 out of 5"), ("Score: 8/10", "Score: 8/10")]:
        score, start, end = J.find_score(text)
        assert text[start:end] == mark and score == parse_score(mark), text
    assert J.find_score("no mark here") is None and J.find_score("Score: N/A") is None


def _judge_outputs(name):
    with open(shared_file("judge_outputs", name), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return {(r["prompt_id"][:8], k): c for r in rows for k, c in r["completion"].items()}


def test_parse_score_on_a_large_models_judgments():
    outputs = _judge_outputs("scores_gemini200.jsonl")
    assert len(outputs) == 800
    stored = {k: c["score"] for k, c in outputs.items() if c["score"] != -1}
    assert len(stored) == 798
    assert {k: parse_score(outputs[k]["reasoning"]) for k in stored} == stored
    # the two the other project's regex missed are readable
    assert parse_score(outputs[("ddc75ad9", "1")]["reasoning"]) == 4  # "**Score**: 4"
    assert parse_score(outputs[("bbfc5ff2", "3")]["reasoning"]) == 4  # "Score 4:"


def test_parse_score_on_a_small_models_messy_judgments():
    outputs = _judge_outputs("scores_M2.jsonl")
    parsed = {k: parse_score(c["reasoning"]) for k, c in outputs.items()}  # never raises
    assert sum(s is None for s in parsed.values()) == 636
    assert parsed[("ff8295a6", "3")] is None   # python code: "score = 0"
    assert parsed[("d2d803b3", "0")] is None   # "Score: 25"
    assert parsed[("26b3ef11", "1")] is None   # "score: 2.5" (stored as 2: made up)
    assert parsed[("c708e6d5", "2")] is None   # "score: 0.50"
    assert parsed[("8a745a7f", "2")] == 2      # "score:2", missed by the stored parse
    assert parsed[("ffbf5e6f", "0")] == 4      # "score: 5 ... score: 4": the concluding one
    assert parsed[("4d0d8975", "1")] == 3      # "score: 3 ... the total score:\n\n1 point" is not 1
    assert parsed[("6851a928", "1")] == 3      # "Score: 1+1+1+0 = 3": the total, not the first point
    assert parsed[("ff8295a6", "0")] == 3
    # the judge prompt echoed in the text ("score: <total points>") is never read as a score
    prompt_only = outputs[("ff8295a6", "1")]["reasoning"].split("<|im_end|>")[0]
    assert parse_score(prompt_only) is None


class StubModel:
    """Just enough of a model for judge() with a stub sampler: its context length."""
    def __init__(self, max_seq_len=100_000):
        self.args = type("Args", (), {"max_seq_len": max_seq_len})()


MODEL = StubModel()


class CharTokenizer:
    """Just enough of a tokenizer for judge(): one id per character, Llama 2's template."""
    bos_id, eos_id, end_of_turn, stop_ids, template, default_system, template_problem = 1, 2, 2, [2], "llama2", None, None

    def encode(self, text, bos=False, eos=False):
        return [1] * bos + [ord(c) for c in text] + [2] * eos

    def decode(self, ids):
        return "".join(map(chr, ids))


def stub_generate(texts):
    """A sampler that returns fixed texts in order and records how it was called."""
    calls = []

    def generate(model, prompts, max_new_tokens, temperature=1.0, top_p=1.0, n=1, eos_id=None, seed=None,
                 batch_size=32, progress=True):
        calls.append(dict(prompts=prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_p=top_p, n=n, eos_id=eos_id, seed=seed))
        assert len(texts) == len(prompts) * n
        return [[ord(c) for c in t] for t in texts]
    return generate, calls


def test_judge_averages_and_keeps_the_raw_judgments():
    texts = ["Good. Score: 4", "Score: 5", "Fine.\nScore: 3",        # response 0: mean 4
             "Score: 2", "no idea", "Score: 9",                       # response 1: only the 2 counts
             "hmm", "Score: 3.5", "",                                  # response 2: no score at all
             "**Score**: 1", "Score 0:", "Score: 1/5"]                # response 3: mean 2/3
    gen, calls = stub_generate(texts)
    records = judge(MODEL, CharTokenizer(), ["p0", "p1", "p2", "p3"], ["r0", "r1", "r2", "r3"],
                    seed=7, max_new_tokens=64, generate_fn=gen)  # the defaults: the paper's 3 at T 0.7, top-p 0.9
    scores = [x["score"] for x in records]
    assert scores[:3] == [4.0, 2.0, None] and scores[3] == pytest.approx(2 / 3)
    assert records[1] == {"prompt": "p1", "response": "r1", "judgments": ["Score: 2", "no idea", "Score: 9"],
                          "scores": [2, None, None], "score": 2.0, "too_long": False}
    assert records[2]["scores"] == [None, None, None] and records[2]["score"] is None
    (call,) = calls  # one call for everything: the sampler shares the judge prefix
    assert (call["n"], call["temperature"], call["top_p"], call["eos_id"], call["seed"], call["max_new_tokens"]) \
        == (3, 0.7, 0.9, [2], 7, 64)
    assert CharTokenizer().decode(call["prompts"][1][1:]) == "[INST] " + judge_prompt("p1", "r1") + " [/INST]"
    assert judge(MODEL, CharTokenizer(), [], [], generate_fn=gen) == []
    gen, calls = stub_generate(["Score: 1"])  # settings given reach the sampler
    judge(MODEL, CharTokenizer(), ["p"], ["r"], n_samples=1, temperature=0.2, top_p=0.5, generate_fn=gen)
    assert (calls[0]["n"], calls[0]["temperature"], calls[0]["top_p"]) == (1, 0.2, 0.5)



def test_judge_groups_is_judge_on_the_flat_list_regrouped():
    texts = ["Score: 4", "Score: 1", "x", "Score: 2", "Score: 5", "Score: 3", "Score: 0", "Score: 4"]  # n=2 each
    prompts, groups = ["p0", "p1", "p2"], [["a", "b"], [], ["c", "d"]]
    gen, calls = stub_generate(texts)
    grouped = judge_groups(MODEL, CharTokenizer(), prompts, groups, n_samples=2, seed=3, generate_fn=gen)
    gen2, calls2 = stub_generate(texts)
    flat = judge(MODEL, CharTokenizer(), ["p0", "p0", "p2", "p2"], ["a", "b", "c", "d"], n_samples=2, seed=3,
                 generate_fn=gen2)
    assert grouped == [flat[:2], [], flat[2:]] and calls == calls2 and len(calls) == 1  # one sampler call
    assert [[j["score"] for j in g] for g in grouped] == [[2.5, 2.0], [], [4.0, 2.0]]
    assert [j["response"] for j in grouped[2]] == ["c", "d"] and grouped[2][0]["prompt"] == "p2"
    gen, _ = stub_generate(["Score: 1"] * 3)  # groups of unequal sizes keep their own responses
    uneven = judge_groups(MODEL, CharTokenizer(), ["p0", "p1"], [["a"], ["b", "c"]], n_samples=1, generate_fn=gen)
    assert [[j["response"] for j in g] for g in uneven] == [["a"], ["b", "c"]]
    # judgments and those with a score (a 0 is a score)
    assert J.judgment_counts([[0, None, 3], [None]]) == {"judgments": 4, "judgments_with_score": 2}

def test_reward_metrics_by_hand():
    # prompt A: ranks 0,1,2 scored 5,3,3 -> pairs (0,1) ok (0,2) ok (1,2) tie: wrong
    # prompt B: ranks 0,1 scored 2,5   -> pair wrong
    # prompt C: ranks 1,0,2 scored 4,5,None -> (0,1) ok, pairs with None wrong
    m = reward_metrics([[5, 3, 3], [2, 5], [4, 5, None]], [[0, 1, 2], [0, 1], [1, 0, 2]])
    assert m["pairwise_accuracy"] == pytest.approx(3 / 7)
    assert m["exact_match"] == 0.0
    assert m["five_best"] == pytest.approx(2 / 3)  # 5s: A's best, B's worst, C's best
    # A: rho = sqrt(3)/2, tau-b = 2/sqrt(6); B: -1, -1; C (scored pair only): 1, 1
    assert m["spearman"] == pytest.approx((math.sqrt(3) / 2 - 1 + 1) / 3)
    assert m["kendall_tau"] == pytest.approx((2 / math.sqrt(6) - 1 + 1) / 3)
    assert (m["n_prompts"], m["n_pairs"], m["n_scored_5"], m["response_coverage"]) == (3, 7, 3, 7 / 8)

    perfect = reward_metrics([[5, 4, 1]], [[0, 1, 2]])
    assert perfect["pairwise_accuracy"] == perfect["exact_match"] == perfect["five_best"] == 1.0
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["kendall_tau"] == pytest.approx(1.0)

    # constant scores, all None: correlation undefined -> counts 0; one human rank only: skipped
    m = reward_metrics([[3, 3, 3], [None, None], [4, 1]], [[0, 1, 2], [0, 1], [0, 0]])
    assert m["spearman"] == m["kendall_tau"] == 0.0 and m["n_undefined_correlation"] == 2
    assert m["pairwise_accuracy"] == 0.0 and m["five_best"] is None and m["n_skipped_prompts"] == 1
    assert m["response_coverage"] == 0.6

    # a prompt of two scored responses has its correlations (not undefined); a 5 on the best-ranked
    # response counts as 5-best whatever that rank's number (here 1)
    m = reward_metrics([[2, 5]], [[0, 1]])
    assert m["spearman"] == m["kendall_tau"] == -1.0 and m["n_undefined_correlation"] == 0
    assert reward_metrics([[5, 1]], [[1, 2]])["five_best"] == 1.0

    # a tie is wrong whichever response the humans prefer (here the second)
    assert reward_metrics([[3, 3]], [[1, 0]])["pairwise_accuracy"] == 0.0
    # 5-best counts scores of 5 only: an averaged 4.5 is not one
    m = reward_metrics([[4.5, 3]], [[0, 1]])
    assert m["n_scored_5"] == 0 and m["five_best"] is None



def test_pairs_correct_by_hand():
    # one entry per pair of responses the humans ranked differently (0 = best), in any order
    ordered = lambda scores, ranks: sorted(J.pairs_correct(scores, ranks))
    assert ordered([5, 3, 3], [0, 1, 2]) == [False, True, True]  # 3 = 3: a tie is wrong
    assert ordered([1, 4], [0, 1]) == [False] and ordered([4, 1], [0, 1]) == [True]
    assert ordered([3.5, 3.0], [1, 0]) == [False]  # averaged scores
    assert ordered([3, 3], [1, 0]) == [False]  # a tie is wrong also where the humans prefer the second
    # equal human ranks make no pair; a response without a score is wrong in all its pairs
    assert ordered([4, 5, None, 2], [1, 0, 1, 2]) == [False, False, True, True, True]
    assert ordered([2, 2, 2], [0, 0, 0]) == [] and ordered([None, None], [1, 0]) == [False]


# Kendall tau-b of score lists with many ties, like judge scores (random ones): worked out by counting
# concordant, discordant and tied pairs, and checked against scipy.stats.kendalltau (tau-b) to 1e-12 when
# written (2026-12-06). Values, not the counting code: the handout's students get this file, and the
# counting code would be a finished answer to its kendall_tau exercise.
KENDALL_TAU_B = [
    ([3, 5, 3, 0, 2, 3.5, 3, 3], [2, 3, 2, 1, 1, 2, 1, 0], 0.590909),
    ([5, 2, 3.5, 4, 5, 3.5], [1, 2, 0, 0, 2, 3], -0.076923),
    ([0, 2, 3, 2, 3.5, 4], [1, 3, 3, 2, 0, 0], -0.296500),
    ([4, 5], [3, 0], -1.0),
    ([3, 5, 5, 2, 1, 4], [2, 0, 1, 1, 1, 1], -0.356348),
    ([3.5, 3, 0, 0, 2, 3.5, 3, 0], [2, 2, 0, 2, 1, 2, 3, 0], 0.546019),
    ([5, 3, 2, 3.5, 1, 2], [1, 1, 1, 0, 2, 3], -0.540062),
    ([5, 0], [3, 2], 1.0),
    ([5, 1, 5, 1, 4, 3.5], [3, 2, 3, 3, 2, 0], 0.334497),
    ([3.5, 0, 3, 3.5], [2, 1, 1, 0], 0.0),
    ([2, 0, 4, 1, 2, 5, 1], [2, 3, 0, 0, 1, 1, 0], -0.111283),
    ([3.5, 4, 3.5, 3.5, 4, 0, 0, 0], [1, 0, 3, 0, 2, 0, 0, 0], 0.411476),
]


def ranks_by_sorting(v):
    """Average ranks: sort, then give each run of equal values the mean of its positions."""
    order = sorted(range(len(v)), key=lambda i: v[i])
    ranks, i = [0.0] * len(v), 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def test_correlations_against_an_independent_computation():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(2, 8)
        x = [rng.choice([0, 1, 2, 3, 3.5, 4, 5]) for _ in range(n)]  # many ties, like judge scores
        y = [rng.randint(0, 3) for _ in range(n)]
        if len(set(x)) < 2 or len(set(y)) < 2:
            assert spearman(x, y) is None and kendall_tau(x, y) is None
            continue
        assert spearman(x, y) == pytest.approx(statistics.correlation(ranks_by_sorting(x), ranks_by_sorting(y)))
    for x, y, tau in KENDALL_TAU_B:
        assert kendall_tau(x, y) == pytest.approx(tau, abs=1e-6), (x, y)


def test_eft_targets_keep_agreeing_groups_and_downsample():
    groups = [{"prompt": "g0", "responses": ["a", "b"], "ranks": [0, 1]},       # 4 > 2: agrees
              {"prompt": "g1", "responses": ["c", "d"], "ranks": [0, 1]},       # 3 < 4: disagrees
              {"prompt": "g2", "responses": ["e", "f", "g"], "ranks": [1, 0, 2]},  # 4 < 5 > 1: agrees
              {"prompt": "g3", "responses": ["h", "i"], "ranks": [0, 1]},       # tie: disagrees
              {"prompt": "g4", "responses": ["j", "k"], "ranks": [0, 1]}]       # no score: disagrees
    texts = ["Clear and right.\nScore: 4", "Partly.\nScore: 2", "Score: 3", "Score: 4",
             "Fine. Score: 4", "**Score: 5**", "Score: 1\nOff-topic answer.", "Score: 2", "Score: 2",
             "Score: 9", "Score: 0"]
    gen, _ = stub_generate(texts)
    records = make_eft_targets(judge_eft_groups(MODEL, CharTokenizer(), groups, n_attempts=1, generate_fn=gen), seed=0)
    # kept: g0 (4, 2) and g2 (4, 5, 1); the most frequent score, 4, is cut to the next count (1)
    assert sorted(r["score"] for r in records) == [1, 2, 4, 5]
    assert {"prompt": judge_prompt("g0", "b"), "response": "Partly.\nScore: 2", "score": 2, "instruction": "g0"} \
        in records  # each target names its question (the report counts benchmark questions trained on)
    assert {"prompt": judge_prompt("g2", "g"), "response": "Off-topic answer.\nScore: 1", "score": 1,
            "instruction": "g2"} in records
    assert {"prompt": judge_prompt("g2", "f"), "response": "Score: 5", "score": 5, "instruction": "g2"} in records
    # which records of the top score survive is the seed's draw (make_eft_targets passes it on)
    unranked = [{"prompt": "u", "responses": [f"r{i}" for i in range(12)], "ranks": None}]
    gen, calls = stub_generate(["Score: 4"] * 10 + ["Score: 2"] * 2)
    judged = judge_eft_groups(MODEL, CharTokenizer(), unranked, n_attempts=1, generate_fn=gen)
    assert calls[0]["seed"] is not None  # the judging itself is seeded by default: the same targets again
    kept = {tuple(sorted(r["prompt"] for r in make_eft_targets(judged, seed=s))) for s in range(5)}
    assert len(kept) > 1 and all(len(k) == 4 for k in kept)


def test_eft_targets_keep_the_first_attempt_that_agrees_and_only_it():
    """Three attempts (the loop's n_judge): attempt 0 ranks b above a, against
    the humans; attempts 1 and 2 agree: attempt 1's two judgments are the
    targets, with their own texts, and attempt 2's are not."""
    groups = [{"prompt": "g", "responses": ["a", "b"], "ranks": [0, 1]}]
    gen, _ = stub_generate(["Score: 2", "Good.\nScore: 5", "Score: 4", "Score: 3", "Poor.\nScore: 1", "Score: 1"])
    records = make_eft_targets(judge_eft_groups(MODEL, CharTokenizer(), groups, n_attempts=3, generate_fn=gen))
    assert [(r["response"], r["score"]) for r in records] == [("Good.\nScore: 5", 5), ("Poor.\nScore: 1", 1)]


def test_eft_targets_keep_nothing_without_an_order_or_beyond_the_common_attempts():
    # equal human ranks: no pair to agree with, so no attempt agrees (not "all of none")
    groups = [{"prompt": "g", "responses": ["a", "b"], "ranks": [0, 0]}]
    judged = [[{"response": "a", "judgments": ["Score: 4"], "scores": [4]},
               {"response": "b", "judgments": ["Score: 2"], "scores": [2]}]]
    assert eft_targets(groups, judged) == []
    # a has two attempts, b one: only attempt 0 is every response's, and it ranks b (3) above a (2)
    groups = [{"prompt": "g", "responses": ["a", "b"], "ranks": [0, 1]}]
    judged = [[{"response": "a", "judgments": ["Score: 2", "Score: 4"], "scores": [2, 4]},
               {"response": "b", "judgments": ["Score: 3"], "scores": [3]}]]
    assert eft_targets(groups, judged) == []


def test_judge_skips_and_marks_prompts_longer_than_the_context():
    tok = CharTokenizer()
    room = len(judge_prompt_ids(tok, "p", "short")) + 1  # "short" fits with one token to spare
    gen, calls = stub_generate(["Score: 4", "Score: 3", "Score: 1", "Score: 2"])
    records = judge(StubModel(room), tok, ["p", "p", "p"], ["short", "a much longer response", "short"],
                    n_samples=2, generate_fn=gen)
    scores = [x["score"] for x in records]
    (call,) = calls
    assert len(call["prompts"]) == 2 and all(len(x) < room for x in call["prompts"])  # only those that fit
    assert scores == [3.5, None, 1.5]
    assert records[1] == {"prompt": "p", "response": "a much longer response", "judgments": [],
                          "scores": [None, None], "score": None, "too_long": True}
    assert [r["too_long"] for r in records] == [False, True, False]
    gen, calls = stub_generate([])
    assert judge(StubModel(room), tok, ["p"], ["a much longer response"], generate_fn=gen)[0]["score"] is None
    assert calls == []  # nothing fits: the sampler is not called at all


def test_make_eft_targets_keeps_the_raw_judgments(tmp_path):
    groups = [{"prompt": "g0", "responses": ["a", "b"], "ranks": [0, 1]},
              {"prompt": "g1", "responses": ["c", "d"], "ranks": [0, 1]}]
    gen, _ = stub_generate(["Score: 4", "Score: 2", "no score", "Score: 4"])
    raw = tmp_path / "raw.jsonl"
    judged = judge_eft_groups(MODEL, CharTokenizer(), groups, n_attempts=1, generate_fn=gen)
    write_jsonl(raw, judged)
    records = make_eft_targets(judged)
    assert sorted(r["score"] for r in records) == [2, 4]  # g0 agrees; g1 has no score for "c"
    assert judged == [
        {"prompt": "g0", "responses": ["a", "b"], "ranks": [0, 1], "judgments": [["Score: 4"], ["Score: 2"]],
         "scores": [[4], [2]], "too_long": [False, False]},
        {"prompt": "g1", "responses": ["c", "d"], "ranks": [0, 1], "judgments": [["no score"], ["Score: 4"]],
         "scores": [[None], [4]], "too_long": [False, False]}]
    # the raw file reads back as another judge's file, with the same result
    assert eft_targets(*read_judge_file(raw)) == records


def test_eft_targets_without_ranks_keep_every_scored_judgment():
    groups = [{"prompt": "p", "responses": ["a", "b", "c"], "ranks": None}]
    judged = [[{"response": "a", "judgments": ["Good.\nScore: 5"], "scores": [5]},
               {"response": "b", "judgments": ["hmm"], "scores": [None]},
               {"response": "c", "judgments": ["Score: 2\nWeak."], "scores": [2]}]]
    assert eft_targets(groups, judged) == [
        {"prompt": judge_prompt("p", "a"), "response": "Good.\nScore: 5", "score": 5, "instruction": "p"},
        {"prompt": judge_prompt("p", "c"), "response": "Weak.\nScore: 2", "score": 2, "instruction": "p"}]
    ranked = [{**groups[0], "ranks": [2, 1, 0]}]  # the humans disagree (c best): nothing is kept
    assert eft_targets(ranked, judged) == []


def test_eft_targets_without_ranks_keep_each_responses_own_judgments():
    """Responses with different numbers of judgments (a judge file's lists, a
    too-long response with none): each keeps all of its own."""
    groups = [{"prompt": "p", "responses": ["a", "b"], "ranks": None}]
    judged = [[{"response": "a", "judgments": ["Score: 4", "Score: 3"], "scores": [4, 3]},
               {"response": "b", "judgments": [], "scores": [None, None]}]]  # too long: judge() keeps n scores
    assert [r["score"] for r in eft_targets(groups, judged)] == [4, 3]


def test_a_judgment_that_opens_with_its_score_keeps_the_text_after_the_whole_mark():
    for text in ["Score: 4/5\n\nThe response is clear.", "**Score: 4 points.** The response is clear.",
                 "Score: 1+1+1+1 = 4 out of 5\nThe response is clear.", "Score 4:\nThe response is clear."]:
        assert judgment_as_target(text) == "The response is clear.\nScore: 4", text
    assert judgment_as_target("The response is clear. Score: 4/5") == "The response is clear.\nScore: 4"
    assert judgment_as_target("Score: 4/5") == "Score: 4"
    # a bare label before the mark (two of the Gemini file's judgments): the justification is after it
    assert judgment_as_target("Output:\nScore: 4\nThe response is clear.") == "The response is clear.\nScore: 4"
    assert judgment_as_target("<|im_start|>score: 4\nThe response is clear.") == "The response is clear.\nScore: 4"
    # otherwise the text before it, however long what follows
    assert judgment_as_target("Clear. Score: 4\nOK") == "Clear.\nScore: 4"
    assert judgment_as_target("Relevant and complete.\nScore: 4\n\nNote: it could also mention the date.") == (
        "Relevant and complete.\nScore: 4")
    # a mark whose number is no score makes no target
    assert judgment_as_target("Good answer. Score: 9") is None and judgment_as_target("Score: 3-4") is None
    # the punctuation that closes the mark goes with it
    assert judgment_as_target("Score: 4; the response answers the question.") == \
        "the response answers the question.\nScore: 4"
    assert judgment_as_target("Score: 4/5: clear and correct.") == "clear and correct.\nScore: 4"
    # a label of up to 30 characters before the mark is a label, not the justification
    assert judgment_as_target("Final evaluation: Score: 4\nThe response answers the question well.") == \
        "The response answers the question well.\nScore: 4"


def test_judgment_targets_from_a_large_models_real_judgments_start_with_its_words():
    """798 of its 800 judgments open with their score ("Score: 4/5 ..."): no
    target may start with what is left of the mark ("/5", "points", ".")."""
    groups, judged = read_judge_file(shared_file("judge_outputs", "scores_gemini200.jsonl"))
    targets = [r["response"] for r in eft_targets(groups, judged)]
    assert len(targets) > 200
    assert not [t for t in targets if re.match(r"\s*(?:[/.,:;<]|points?\b|out of\b|Output:)", t)]
    assert sum(t.startswith("The response") for t in targets) > 100


def test_read_judge_file_on_the_shared_real_judge_outputs():
    path = shared_file("judge_outputs", "scores_gemini200.jsonl")
    groups, judged = read_judge_file(path)
    assert len(groups) == 200 and all(len(g["responses"]) == 4 and g["ranks"] is None for g in groups)
    raw = {x["prompt_id"]: x for x in map(json.loads, open(path))}
    first = next(iter(raw.values()))
    assert groups[0]["prompt"] == first["prompt"]
    assert [j["judgments"][0] for j in judged[0]] == [first["completion"][k]["reasoning"] for k in "0123"]
    scores = [s for g in judged for j in g for s in j["scores"]]
    # every one parses (the stored regex parse missed 2); no human ranks: every scored judgment is material
    assert len(scores) == 800 and None not in scores
    targets = eft_targets(groups, judged, seed=0)
    assert len(targets) < 800 and max(Counter(t["score"] for t in targets).values()) == sorted(
        Counter(scores).values())[-2]  # the most frequent score down-sampled to the next one's count
    assert targets and all(parse_score(t["response"]) == t["score"] for t in targets)
    assert all(t["response"].endswith(f"Score: {t['score']}") for t in targets)


def test_read_judge_file_orders_completions_by_number(tmp_path):
    # eleven responses: "10" comes after "9", not after "1" as text would sort it
    path = tmp_path / "judge.jsonl"
    write_jsonl(path, [{"prompt": "p", "completion": {str(k): {"content": f"r{k}", "reasoning": f"Score: {k % 6}"}
                                                      for k in reversed(range(11))}}])
    groups, judged = read_judge_file(path)
    assert groups[0]["responses"] == [f"r{k}" for k in range(11)]
    assert [j["response"] for j in judged[0]] == groups[0]["responses"]


def test_read_judge_file_names_a_bad_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "responses": ["a"], "judgments": [["Score: 1"]]}\n\n{"prompt": "q"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3: a judgment record has 'completion'"):  # blank lines count
        read_judge_file(bad)
    write_jsonl(bad, [{"prompt": "p", "responses": ["a", "b"], "judgments": [["Score: 1"]]}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: every response needs its text and its judgments"):
        read_judge_file(bad)
    # each was a traceback, a message without the line, or a failure after the SFT baseline trained
    ours = {"prompt": "p", "responses": ["a", "b"], "judgments": ["Score: 1", "Score: 2"]}
    for rec, why in [({"prompt": "p", "completion": {"0": "text"}}, "'completion' maps response numbers"),
                     ({"prompt": "p", "completion": {"x": {"content": "a", "reasoning": "r"}}}, "'completion' maps"),
                     ({"prompt": "p", "completion": {}}, "'completion' maps"),
                     ({**ours, "ranks": [0]}, "'ranks', where given, must be a list of integers >= 0"),
                     ({**ours, "ranks": "best"}, "'ranks', where given"),
                     ({**ours, "ranks": [True, False]}, "'ranks', where given"),
                     ({**ours, "ranks": []}, "'ranks', where given")]:  # (empty: given, and not one a response)
        write_jsonl(bad, [ours, rec])
        with pytest.raises(ValueError, match=r"bad.jsonl:2: " + re.escape(why)):
            read_judge_file(bad)
    write_jsonl(bad, [])
    with pytest.raises(ValueError, match=r"bad.jsonl: no records"):
        read_judge_file(bad)


# --- Meta-Rewarding's meta-judge (Wu et al. 2024) ----------------------------------------

@pytest.mark.parametrize("text, winner", [
    ("Judgment A gets the answer right.\nWinner: A", "A"), ("Winner: B", "B"), ("winner:B.", "B"),
    ("**Winner:** A", "A"), ("**Winner**: B", "B"), ("Winner: **A**", "A"), ("Winner: [Judgement A]", "A"),
    ("Winner: Judgment B", "B"), ("Winner: A\nOn reflection...\nWinner: B", "B"),  # the last verdict concludes
    ("A reads the response right, B does not.\n\nWinner: A\n", "A"),
    # not verdicts: prose, a choice, a tie, lower case (the article "a"), other words, the prompt's own format line
    ("The winner is A.", None), ("A wins.", None), ("Winner: A or B", None), ("Winner: A/B", None),
    ("Winner: tie", None), ("Winner: both", None), ("Winner: a tie", None), ("Winner: Alice", None),
    ("Winner: A (B misreads the question)", None), ("Winner: Judgment A and B", None),
    ("Winner: B\nWinner: neither", None), ("Winner:\nA", None), ("", None),
    ("Conclude with the better judgment using the format: “Winner: <A or B>”", None),
    ("Winner: A or neither", None), ("Winner: A / tie", None), ("Nonwinner: B", None),  # a letter, then more
    ("Winner A", None), ("**Winner** B", None),  # no colon: no verdict
    ("Winner: A | tie", None), ("Winner: A & both are fine", None), ("Winner: A and both are close", None),
    ("Winner: A OR the other one", None), ("Winner: A AND the other", None),  # a choice in capitals too
])
def test_parse_winner_table(text, winner):
    assert J.parse_winner(text) == winner


def test_meta_judge_prompt_fill():
    text = J.meta_judge_prompt(" Reverse 'AB'. ", "BA", "The correct answer is BA.\nScore: 5", "Wrong.\nScore: 1")
    assert "User: Reverse 'AB'.\n<response>BA</response>\n" in text
    assert "Judgment A:\nThe correct answer is BA.\nScore: 5\nJudgment B:\nWrong.\nScore: 1\n" in text
    assert J.RUBRIC in text and text.endswith("“Winner: <A or B>”")
    assert J.parse_winner(text) is None and "<" + "INSTRUCTION_HERE>" not in text
    # one pass: a placeholder inside a judgment, or the question, is left alone
    assert "<RESPONSE_HERE>" in J.meta_judge_prompt("q", "r", "<RESPONSE_HERE>", "b")
    assert "User: Repeat the text <RESPONSE_HERE> literally\n" in J.meta_judge_prompt(
        "Repeat the text <RESPONSE_HERE> literally", "resp", "ja", "jb")
    assert "Judgment A:\nI compare with <JUDGMENT_B_HERE>\n" in J.meta_judge_prompt(
        "q", "r", "I compare with <JUDGMENT_B_HERE>", "jb")
    # its fixed lines that the judge prompt lacks, each once
    lines = J.meta_rubric_lines()
    assert "Judgment A:" in lines and "Judgment B:" in lines and not set(lines) & set(J.rubric_lines())
    assert all(line in J.META_JUDGE_PROMPT.split("\n") for line in lines)


def test_judgment_battles_both_orders_scored_and_different_only():
    texts, scores = ["x", "y", "x ", "z"], [3, 5, None, 3]
    # 2 has no score; 0 and 2 would be the same text anyway
    assert J.judgment_battles(texts, scores) == [(0, 1), (1, 0), (0, 3), (3, 0), (1, 3), (3, 1)]
    assert J.judgment_battles(["x", "x "], [1, 4]) == []  # the same text: nothing to compare


def test_compare_judgments_calls_the_sampler_once_and_reads_the_verdicts():
    records = [{"prompt": "p0", "response": "r0", "judgments": ["j0", "j1"], "scores": [1, 4]},
               {"prompt": "p1", "response": "r1", "judgments": ["k0", "k1", "k2"], "scores": [2, None, 5]}]
    gen, calls = stub_generate(["Winner: B", "Winner: A", "Winner: tie", "no verdict"])
    out = J.compare_judgments(MODEL, CharTokenizer(), records, seed=5, max_new_tokens=32, generate_fn=gen)
    assert out == [[{"a": 0, "b": 1, "meta_judgment": "Winner: B", "winner": "B", "too_long": False},
                    {"a": 1, "b": 0, "meta_judgment": "Winner: A", "winner": "A", "too_long": False}],
                   [{"a": 0, "b": 2, "meta_judgment": "Winner: tie", "winner": None, "too_long": False},
                    {"a": 2, "b": 0, "meta_judgment": "no verdict", "winner": None, "too_long": False}]]
    (call,) = calls
    assert (call["n"], call["seed"], call["max_new_tokens"], call["temperature"]) == (1, 5, 32, 0.7)
    assert CharTokenizer().decode(call["prompts"][1][1:]) == \
        "[INST] " + J.meta_judge_prompt("p0", "r0", "j1", "j0") + " [/INST]"  # (1, 0): judgment 1 shown as A


def test_compare_judgments_skips_and_marks_prompts_longer_than_the_context():
    tok = CharTokenizer()
    short = {"prompt": "p", "response": "r", "judgments": ["a", "b"], "scores": [1, 2]}
    long = {"prompt": "p", "response": "r", "judgments": ["a" * 50, "b"], "scores": [1, 2]}
    room = len(J.chat_prompt_ids(tok, J.meta_judge_prompt("p", "r", "a", "b"))) + 1
    gen, calls = stub_generate(["Winner: A", "Winner: B"])
    out = J.compare_judgments(StubModel(room), tok, [long, short], generate_fn=gen)
    assert [b["too_long"] for b in out[0]] == [True, True] and [b["winner"] for b in out[0]] == [None, None]
    assert [b["winner"] for b in out[1]] == ["A", "B"] and len(calls[0]["prompts"]) == 2
    gen, calls = stub_generate([])
    assert J.compare_judgments(StubModel(room), tok, [long], generate_fn=gen)[0][0]["too_long"] and calls == []
    gen, calls = stub_generate(["Winner: A", "Winner: B"])  # a verdict needs few tokens: 64 by default
    J.compare_judgments(MODEL, tok, [short], generate_fn=gen)
    assert calls[0]["max_new_tokens"] == 64


def test_downsample_with_two_scores():
    """Scores 4, 4, 4, 2: the top score (4) is cut to the next one's count (1)."""
    kept = J.downsample_top_score([{"score": 4}, {"score": 4}, {"score": 4}, {"score": 2}])
    assert sorted(r["score"] for r in kept) == [2, 4]
    # which of the top score's records are kept is the seed's draw: other seeds, others
    records = [{"score": 4, "id": i} for i in range(10)] + [{"score": 2, "id": 10}, {"score": 2, "id": 11}]
    kept_by_seed = {tuple(sorted(r["id"] for r in J.downsample_top_score(records, seed=s))) for s in range(5)}
    assert len(kept_by_seed) > 1 and all(len(k) == 4 and k[-2:] == (10, 11) for k in kept_by_seed)


def test_judge_file_group_only_partly_ranked_by_humans_counts_as_unranked():
    """The seed ranks a and b; the file judged a and z: no ranks attached, every scored judgment kept."""
    groups = [{"prompt": "Q", "responses": ["a", "z"], "ranks": None}]
    judged = [[{"response": "a", "judgments": ["Score: 5"], "scores": [5]},
               {"response": "z", "judgments": ["Score: 1"], "scores": [1]}]]
    seed = [{"prompt": "Q", "responses": ["a", "b"], "ranks": [0, 1]}]
    targets, kept, _ = J.judge_file_targets(groups, judged, seed, [], [])
    assert kept[0][0]["ranks"] is None and sorted(t["score"] for t in targets) == [1, 5]


def test_meta_judge_prompt_strips_both_judgments():
    text = J.meta_judge_prompt("q", "r", "\n first \n", "\n second \n")
    assert "Judgment A:\nfirst\nJudgment B:\nsecond\nWhich judgment" in text
