"""data/toy.py: the grader on hand-written responses, the seed sets, determinism."""
import filecmp
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter

import hashlib

import pytest

from conftest import ROOT
from data import read_jsonl, write_jsonl
from data.toy import (ALL_KINDS, DECLINE, DOC_HEAD, DRILL_LAYOUTS, ENGLISH, JUSTIFICATION, LETTERS, TEMPLATES,
                      all_tasks, answer, asks_met, attempts, bare_word, build, check_kinds, checked_word, comparison,
                      corpus, drill_item, drill_word, eft_target, fewshot_text, grade, ift_response, make_response,
                      marked_quiz, meta_judge_examples, n_tasks, pretraining_docs, question_key, quote, render,
                      sample_task, similarity, stated_answer, task_from_prompt, task_key, tasks_needed, the_rest,
                      true_grade, validation_set, working, write_toy, written_comparisons, wrong_judgment,
                      _group_sizes, _near, _wrong)
from judge import JUDGE_PROMPT, META_JUDGE_PROMPT, meta_rubric_lines, parse_score, parse_winner, rubric_lines
from run_folder import sub_seed
from tokenizer import chat_tokens, train_tokenizer

REVERSE, ADD = "Write 'TAMILO' backwards.", "What is 17 + 25?"
COUNT, REPLACE = "How many times does 'A' appear in 'BANANA'?", "Replace each 'A' in 'BANANA' with 'O'."
INVENT = "Invent a word of 5 letters that starts with 'B' and ends with 'O'."  # many right answers


@pytest.mark.parametrize("prompt, response, score", [
    (REVERSE, "OLIMAT", 5), (REVERSE, " OLIMAT. ", 5),
    (REVERSE, "Sure! The answer is OLIMAT.", 4), (REVERSE, "'OLIMAT'", 4),
    (REVERSE, "OLIMAT, or maybe OLIMTA.", 3), (REVERSE, "OLIMAT OLIMAT", 3), (REVERSE, "olimat_", 3),
    (REVERSE, "Well, I thought about this for a long time and I am now quite sure the answer is OLIMAT.", 3),
    (REVERSE, "OLIMTA", 2), (REVERSE, "LIMAT", 2), (REVERSE, "I think it is OLMIAT.", 2),
    (REVERSE, "The answer is TAMILO.", 1), (REVERSE, "KOBEDA", 1), (REVERSE, "TMOILA", 1),
    (REVERSE, "Of course. It is KOBEDA.", 1),  # a wrong attempt with chatter is still an attempt
    (REVERSE, "I like cats.", 0), (REVERSE, "Sure.", 0), (REVERSE, "I am not sure.", 0),
    (ADD, "42", 5), (ADD, "17 + 25 = 42", 4), (ADD, "The answer is 42!", 4), (ADD, "42 or 43", 3),
    (ADD, "42, or maybe 90.", 3), (ADD, "43", 2), (ADD, "41", 2), (ADD, "60", 1), (ADD, "17 + 25", 1),
    (ADD, "forty-two", 0),  # numbers are read as digits only
    (ADD, "-42", 1), (ADD, "Sure! The answer is -42.", 1), (ADD, "-43", 1),  # a minus sign makes another number
    (COUNT, "-3", 1), ("What is 50 - 8?", "50-8=42", 4),  # (but not a minus between two numbers)
    (COUNT, "3", 5), (COUNT, "The letter A appears 3 times in BANANA.", 4), (COUNT, "2", 2),
    (COUNT, "0", 1), (COUNT, "BANANA", 1), (COUNT, "Tea is better than coffee.", 0),
    (REPLACE, "BONONO", 5), (REPLACE, "Here: BONONO", 4), (REPLACE, "BONONA", 2), (REPLACE, "BANANA", 1),
    (INVENT, "BAKIO", 5), (INVENT, "BZZZO.", 5), (INVENT, "Sure! The answer is BUTTO.", 4), (INVENT, "'BAKIO'", 4),
    (INVENT, "bakio", 3), (INVENT, "BAKIO, or maybe BUTTO.", 3), (INVENT, "BAKIO BAKIO", 3),
    (INVENT, "BAKO", 2), (INVENT, "TAKIO", 2), (INVENT, "BAKIA", 2),  # one of the three asks missed
    (INVENT, "BAKIOS", 1), (INVENT, "Of course. It is KOBEDA.", 1), (INVENT, "O", 1),
    (INVENT, "Tea is better than coffee.", 0), (INVENT, "5", 0),
    (REVERSE, "KOBATU DIRENA", 1), (REVERSE, "O L I M A T", 1),  # wrong made-up words, however many, are attempts
    ("What is 10 - 5?", "10 - 5 = 5", 4), ("What is 0 + 7?", "0 + 7 = 7", 4),  # an operand repeated, not the answer
    ("What is 10 - 5?", "10 - 5", 1), ("What is 16 - 8?", "It is 16 - 8.", 1),  # the question alone: no answer
    ("What is 10 - 5?", "5", 5), ("What is 10 - 5?", "10 - 5 = 5, or maybe 6.", 3),
    ("What is 10 - 5?", "5 5", 3), ("What is 10 - 5?", "5. Yes, 5.", 3),  # no question repeated: said twice
    (REVERSE, "Paris is the capital of France.", 0), (REVERSE, "Hmm, lemme think.", 0),  # words, but no attempt
    ("What is 10 - 50?", "-42", 2), ("What is 10 - 50?", "-38", 2), ("What is 10 - 50?", "-45", 1),  # |-40| // 20
    (REVERSE, "OF", 0),  # left as it is: an English word in capitals (make_word can write one) is not read
    # at the rules' edges: a number off by more than |-40| // 20 = 2 is wrong; a word 3 edits from a 6-letter
    # answer (similarity 0.5) is near; 15 words are still "a few", 16 are not
    ("What is 10 - 50?", "-43", 1), (REVERSE, "OLIBUR", 2),
    (REVERSE, "I had to think about this one for a while, but the answer is OLIMAT.", 4),
    (INVENT, "I had to think about this one for a while, but the answer is BAKIO.", 4),
    (INVENT, "I had to think about this one for quite a while, but the answer is BAKIO.", 3),
    (INVENT, " BAKIO. ", 5),  # spaces around the word, as around any answer
    ("What is 10 - 5?", "10 - 5 = 5 5", 3),  # the question repeated, then the answer twice
    ("What is 1 x 1?", "1 x 1 = 1", 4),  # both operands are the answer: the question repeated, then said once
    ("What is 1 x 1?", "It is 1.", 4), ("What is 1 x 1?", "1 x 1", 1),  # the question repeated needs both 1s
    ("Write 'EKAT' backwards.", "take", 3), ("Write 'EKAT' backwards.", "Take.", 3),  # an English word's letters
    ("Write 'EKAT' backwards.", "TAKE", 5),  # in the wrong case are the answer in the wrong case, as any word's
    (COUNT, "banana", 1),  # the input word in any case is an attempt
    (REVERSE, "Ok.", 0),  # an English word ("ok"), no attempt
    ("What is 10 + 5?", "17", 1), (COUNT, "1", 1),  # 2 off where max(1, |answer| // 20) is 1: wrong, not near
    (REVERSE, "tmoila lmoita", 1),  # lower-case scrambles of the answer: attempts, wrong ones
    (REVERSE, "OLIMAT, or tmoila", 3), (REVERSE, "OLIMAT, olimat", 3),  # another attempt beside it: a hedge
    (REVERSE, "OLIMAT!", 4), (ADD, "42!", 4), (INVENT, "BAKIO...", 4),  # only a full stop keeps it bare
])
def test_grader_on_hand_written_responses(prompt, response, score):
    assert grade({"prompt": prompt}, response) == score  # task parsed from the prompt text
    assert grade({"prompt": "", "task": task_from_prompt(prompt)}, response) == score
    assert true_grade(prompt, response) == score


def test_similarity_by_hand():
    # 1 - edit distance / the longer length
    assert similarity("AB", "ABCD") == 0.5 and similarity("ABCD", "AB") == 0.5
    assert similarity("OLIMAT", "OLIBUR") == 0.5 and similarity("", "") == 1.0 and similarity("A", "") == 0.0


def test_sample_task_draws_again_where_an_answer_would_give_nothing_away():
    """sample_task returns None (the caller draws again) where a wrong echo
    would look right: a subtraction whose answer is its second operand
    (a = 2b), a word that reverses or sorts to itself. A count's answer is
    0, 1, 2 or 3, each about a quarter of the time, and neither the letter's
    kind (vowel or consonant) nor the word's length tells it: the best guess
    from those two is right about a quarter of the time too (a letter drawn
    from the word made "1" right on 68% of count tasks; the answer drawn
    first and the word to fit it, a vowel in a long word meant 3, and the
    best guess was right on 44%)."""
    rng = random.Random(0)
    tasks = [t for t in (sample_task(rng) for _ in range(20000)) if t]
    assert not [t for t in tasks if t["kind"] == "arith" and t["op"] == "-" and t["a"] == 2 * t["b"]]
    assert not [t for t in tasks if t["kind"] in ("reverse", "sort") and answer(t) == t["word"]]
    replaces = [t for t in tasks if t["kind"] == "replace"]  # the letter replaced is in the word: a change
    assert replaces and all(t["old"] in t["word"] and answer(t) != t["word"] for t in replaces)
    counts = [t for t in tasks if t["kind"] == "count"]
    shares = Counter(answer(t) for t in counts)
    assert set(shares) == {"0", "1", "2", "3"} and all(0.22 < n / len(counts) < 0.28 for n in shares.values())
    by_sign = {}  # (vowel?, length) -> Counter of answers
    for t in counts:
        by_sign.setdefault((t["letter"] in "AEIOU", len(t["word"])), Counter())[answer(t)] += 1
    assert sum(max(c.values()) for c in by_sign.values()) / len(counts) < 0.30


def test_invent_tasks_read_back_and_are_checked_not_answered():
    """An invent task: every phrasing reads back as the task; answer() is
    one right word (the same each time); the grader takes any word that
    fits; the judgment checks the response's word against the asks, with no
    "correct answer" to state; no English word of the phrasings looks like
    a made-up word (it would never be taken for an answer)."""
    task = task_from_prompt(INVENT)
    assert task == {"kind": "invent", "first": "B", "last": "O", "n": 5}
    assert answer(task) == answer(dict(task)) and grade({"task": task}, answer(task)) == 5
    for template in TEMPLATES["invent"]:
        assert task_from_prompt(template.format(**task)) == task
    made_up = re.compile("([BDFGKLMNPRSTVZ][AEIOU]){2,3}[BDFGKLMNPRSTVZ]?")
    invent_words = {w.lower() for t in TEMPLATES["invent"] for w in re.findall("[a-z]{2,}", t.lower())}
    assert invent_words <= ENGLISH and not [w for w in invent_words if made_up.fullmatch(w.upper())]
    target = eft_target(INVENT, task, "Sure! The answer is BUTTO.")
    assert target["score"] == 4 and target["response"] == (
        "BUTTO starts with B, ends with O and has 5 letters; asked: B, O, 5. "
        "The response is right, but adds text that was not asked for.\nScore: 4")
    assert eft_target(INVENT, task, "BAKIOS")["response"].startswith(
        "BAKIOS starts with B, ends with S and has 6 letters; asked: B, O, 5. The response is related")
    assert eft_target(INVENT, task, "I like tea.")["response"].startswith("The response gives no word; asked: B, O, 5.")
    assert eft_target(INVENT, task, "Sure! The answer is BUTTO.", compares=True)["response"] == (
        "BUTTO starts with B, ends with O and has 5 letters; asked: B, O, 5. Right. "
        "The response is right, but adds text that was not asked for.\nScore: 4")
    assert eft_target(INVENT, task, "BAKIOS", compares=True)["response"].startswith(
        "BAKIOS starts with B, ends with S and has 6 letters; asked: B, O, 5. Not right. The response is related")
    assert eft_target(INVENT, task, "I like tea.", compares=True)["response"].startswith(
        "The response gives no word; asked: B, O, 5. Not right. The response is off-topic")
    assert stated_answer(target["response"]) is None
    # check_each_ask: each property right beside its ask, with whether the two are the same
    assert eft_target(INVENT, task, "Sure! The answer is BUTTO.", each_ask=True)["response"] == (
        "BUTTO: starts with B, asked B: yes; ends with O, asked O: yes; has 5 letters, asked 5: yes. "
        "The response is right, but adds text that was not asked for.\nScore: 4")
    assert eft_target(INVENT, task, "BAKIOS", compares=True, each_ask=True)["response"].startswith(
        "BAKIOS: starts with B, asked B: yes; ends with S, asked O: no; has 6 letters, asked 5: no. Not right. "
        "The response is related")
    assert eft_target(INVENT, task, "Sure, bakio.", compares=True, each_ask=True)["response"].startswith(
        "bakio: starts with b, asked B: no; ends with o, asked O: no; has 5 letters, asked 5: yes. Not right. "
        "The response contains the answer")  # a right word in lower case: graded 3
    assert eft_target(INVENT, task, "I like tea.", compares=True, each_ask=True)["response"].startswith(
        "The response gives no word; asked: B, O, 5. Not right. The response is off-topic")
    # an English word that meets the asks is a right answer too (graded as any other word, and judged so)
    like = {"kind": "invent", "first": "L", "last": "E", "n": 4}
    assert [grade({"task": like}, r) for r in ("LIKE", "Sure! LIKE", "like", "LIKO", "SURE")] == [5, 4, 3, 2, 0]
    # the chatter's own words are no answer, though "Sure" starts with S, ends with E and has 4 letters
    sure = {"kind": "invent", "first": "S", "last": "E", "n": 4}
    assert [grade({"task": sure}, r) for r in ("Sure! The answer is SAKE.", "Sure! The answer is SAKO.", "SURE")] \
        == [4, 2, 5]
    assert eft_target(render(like, random.Random(0)), like, "LIKE")["response"].startswith(
        "LIKE starts with L, ends with E and has 4 letters; asked: L, E, 4.")


def test_a_world_with_fewer_tasks_than_the_sets_need_is_an_error_not_a_hang():
    """invent alone has 19 x 19 x 5 = 1,805 tasks; the loop's default sizes need
    about 6,500 different ones: the draw stopped only when killed."""
    with pytest.raises(ValueError, match=r"toy_kinds = 'invent': holds only 1805 different tasks, and the sets need "
                                         r"25\d\d \(n_ift 2500 \+ \d+ EFT train"):
        build(n_ift=2500, n_eft_train=20, n_eft_eval=20, n_test=10, toy_kinds="invent")


def test_a_bounded_world_gives_every_task_it_holds(tmp_path, monkeypatch):
    """Where random draws stop finding new tasks (an invent or arith world
    nearly used up; here after 50 misses, so that the end is reached), the
    sets and the validation set take the tasks not yet drawn: a world gives
    all it holds (before, random draws found about 97%), and one more is an
    error that says how many there are."""
    monkeypatch.setattr("data.toy.MAX_REPEATED_DRAWS", 50)
    groups = tasks_needed(1337, 0, 20, 20, 0)
    sizes = dict(n_ift=1805 - groups - 10 - 30, n_eft_train=20, n_eft_eval=20, n_test=10, toy_kinds="invent")
    sets = build(**sizes)
    write_toy(tmp_path, **sizes)
    used = {task_key(r["task"]) for name in ("ift", "eft_train_groups", "eft_eval", "test") for r in sets[name]}
    assert len(used) == 1805 - 30  # all different
    valid = validation_set(tmp_path, 30, 1337, ["invent"])
    assert {task_key(x["task"]) for x in valid} == {task_key(t) for t in all_tasks(["invent"])} - used
    assert all(task_from_prompt(x["prompt"]) == x["task"] for x in valid)
    with pytest.raises(ValueError, match="n_valid = 31: toy_kinds invent hold only 30 tasks outside the seed data"):
        validation_set(tmp_path, 31, 1337, ["invent"])
    every = build(n_ift=1805 - groups - 10, n_eft_train=20, n_eft_eval=20, n_test=10, toy_kinds="invent")
    assert len({task_key(r["task"]) for name in ("ift", "eft_train_groups", "eft_eval", "test")
                for r in every[name]}) == 1805
    with pytest.raises(ValueError, match="toy_kinds = 'invent': holds only 1805 different tasks, and the sets "
                                         "need 1806"):
        build(n_ift=1805 - groups - 10 + 1, n_eft_train=20, n_eft_eval=20, n_test=10, toy_kinds="invent")
    assert the_rest(["invent", "count"], set(), 5, random.Random(0)) == []  # (no end to that world's tasks)
    assert len(the_rest(["invent"], used, 31, random.Random(0))) == 30  # all that are left: the caller refuses
    first = the_rest(["invent"], set(), 3, random.Random(0))  # in an order rng shuffles, not all_tasks' own
    assert first != all_tasks(["invent"])[:3] and first != the_rest(["invent"], set(), 3, random.Random(1))


def test_n_tasks_counts_what_sample_task_draws():
    """n_tasks (the loop's check before any work that a world holds the tasks
    its sets need) against the different tasks that many draws find: every
    invent and arith task is drawn at least once in 600,000 draws (the
    rarest, a sum, 12.5 times on average); tasks_needed against the sets
    build makes."""
    rng = random.Random(0)
    drawn = {task_key(t) for t in (sample_task(rng, ["invent", "arith"]) for _ in range(600_000)) if t}
    kinds = Counter(json.loads(task)["kind"] for task in drawn)
    assert n_tasks(["invent"]) == kinds["invent"] == 1805 and n_tasks(["arith"]) == kinds["arith"] == 14516
    assert {task_key(t) for t in all_tasks(["arith", "invent"])} == drawn  # the same tasks, each once
    assert len(all_tasks(["invent", "arith"])) == len(drawn) and all_tasks(["invent", "sort"]) is None
    assert n_tasks(["invent", "arith"]) == 1805 + 14516 and n_tasks(["arith", "count"]) is None
    for seed in (1337, 5):
        sets = build(seed=seed, n_ift=50, n_eft_train=40, n_eft_eval=30, n_test=20)
        groups = len(sets["eft_train_groups"]) + len(sets["eft_eval"])
        assert tasks_needed(seed, 50, 40, 30, 20) == 50 + groups + 20
        assert tasks_needed(seed, 50, 40, 30, 20, n_valid=7) == 50 + groups + 20 + 7
    sets = build(seed=0, n_ift=0, n_eft_train=40, n_eft_eval=541, n_test=0)  # train's sizes drawn first, as build
    assert tasks_needed(0, 0, 40, 541, 0) == len(sets["eft_train_groups"]) + len(sets["eft_eval"]) == 199


def test_an_invent_world():
    """toy_kinds: the invent kind is drawn only when asked for; its seed
    answers and EFT responses are graded as made, with many different right
    words; settings that write one right answer are refused with it."""
    s = build(n_ift=700, n_eft_train=300, n_eft_eval=100, n_test=100, toy_kinds=",".join(ALL_KINDS))
    ift = [r for r in s["ift"] if r["task"]["kind"] == "invent"]
    assert 60 < len(ift) < 150 and all(grade(r, r["response"]) >= 4 for r in ift)
    assert {r["task"]["kind"] for r in s["test"]} == set(ALL_KINDS)
    groups = [g for g in s["eft_train_groups"] if g["task"]["kind"] == "invent"]
    assert groups and all([grade(g, r) for r in g["responses"]] == g["scores"] for g in groups)
    bare = [(r, g["task"]) for g in groups for r, sc in zip(g["responses"], g["scores"]) if sc == 5]
    assert bare and not [r for r, task in bare if r == answer(task)]  # right words other than answer()'s
    assert not [r for r in build(n_ift=300, n_eft_train=0, n_eft_eval=0, n_test=0)["ift"]
                if r["task"]["kind"] == "invent"]  # the default world: six kinds, as before
    with pytest.raises(ValueError, match="toy_kinds = 'reverse,dance': must be some of"):
        build(toy_kinds="reverse,dance")
    with pytest.raises(ValueError, match="toy_kinds = 'sort,reverse,sort': must be some of .*, each once"):
        build(toy_kinds="sort,reverse,sort")  # (a kind twice would be drawn twice as often)
    with pytest.raises(ValueError, match="does not go with judge_quotes"):
        build(toy_kinds="invent,sort", judge_quotes=True)
    with pytest.raises(ValueError, match="has no invent task for check_each_ask to check"):
        build(toy_kinds="reverse,sort", check_each_ask=True)
    # judge_compares: an invent judgment says whether the word meets the asks, as a marked quiz does
    compared = build(n_ift=0, n_eft_train=300, n_eft_eval=0, n_test=0, toy_kinds="invent,sort", judge_compares=True)
    words = [x for x in compared["eft_train"] if " letters; asked: " in x["response"]]
    assert words and all(re.search(r"\. (Right|Not right)\. The response", x["response"]) for x in words)
    assert all((". Right. " in x["response"]) == (x["score"] >= 4) for x in words if x["score"] in (1, 2, 4, 5))
    # check_each_ask: the same targets, each check's three comparisons written out; the other kinds' unchanged
    each = build(n_ift=0, n_eft_train=300, n_eft_eval=0, n_test=0, toy_kinds="invent,sort", judge_compares=True,
                 check_each_ask=True)
    assert [x["score"] for x in each["eft_train"]] == [x["score"] for x in compared["eft_train"]]
    assert [x for x in each["eft_train"] if "asked" not in x["response"]] == [
        x for x in compared["eft_train"] if "asked" not in x["response"]]
    checks = [(task_from_prompt(x["prompt"].split("\nUser: ")[1].split("\n<response>")[0]), x)
              for x in each["eft_train"] if ": starts with " in x["response"]]
    assert len(checks) > 50
    for task, x in checks:
        m = re.match(r"(\S+): starts with (\S), asked (\S): (yes|no); ends with (\S), asked (\S): (yes|no); "
                     r"has (\d+) letters, asked (\d+): (yes|no)\. (Right|Not right)\. ", x["response"])
        w, f, af, fy, l, al, ly, n, an, ny, verdict = m.groups()
        assert (f, l, int(n)) == (w[0], w[-1], len(w)) and (af, al, int(an)) == (task["first"], task["last"], task["n"])
        assert [fy, ly, ny] == ["yes" if a == b else "no" for a, b in ((f, af), (l, al), (n, an))]
        assert (verdict == "Right") == ([fy, ly, ny] == ["yes"] * 3) == (asks_met(task, w) == 3)


def test_tasks_answers_and_prompt_parsing():
    assert answer(task_from_prompt(REVERSE)) == "OLIMAT"
    assert answer(task_from_prompt("Sort the letters of 'TAMILO' alphabetically.")) == "AILMOT"
    assert answer(task_from_prompt(REPLACE)) == "BONONO"
    assert answer(task_from_prompt(COUNT)) == "3"
    assert answer(task_from_prompt("How long is the word 'TAMILO'?")) == "6"
    assert answer(task_from_prompt(ADD)) == "42"
    assert answer(task_from_prompt("Subtract 8 from 30.")) == "22"
    assert answer(task_from_prompt("Multiply 12 by 7.")) == "84"
    assert task_from_prompt("Write a poem about the sea.") is None
    assert task_from_prompt(f" {ADD}\n") == task_from_prompt(ADD)  # spaces around a prompt are not the task
    assert true_grade(f" {ADD}", "42") == 5
    with pytest.raises(ValueError, match="cannot grade"):
        grade({"prompt": "Write a poem about the sea."}, "The sea...")
    assert true_grade("Write a poem about the sea.", "The sea...") is None  # not a toy task: no grade, no error
    longer = f"{REVERSE} Then sort the letters."  # a task's phrasing with more after it asks something else
    assert task_from_prompt(longer) is None and true_grade(longer, "OLIMAT") is None
    assert task_from_prompt("Write '' backwards.") is None  # no word
    # an invent task's one written answer is drawn with the whole task: not one word cut to each length
    words = [answer({"kind": "invent", "first": "B", "last": "O", "n": n}) for n in range(4, 9)]
    assert [len(w) for w in words] == [4, 5, 6, 7, 8] and all(w[0] == "B" and w[-1] == "O" for w in words)
    assert len({w[1:3] for w in words}) > 1
    # every phrasing of every kind reads back as the task it was written from
    rng = random.Random(0)
    tasks = [t for t in (sample_task(rng) for _ in range(3000)) if t]
    assert {t["kind"] for t in tasks} == {"reverse", "sort", "replace", "count", "length", "arith"}
    for t in tasks:
        for template in TEMPLATES["arith" + t["op"] if t["kind"] == "arith" else t["kind"]]:
            assert task_from_prompt(template.format(**t)) == t
            # the same key as drawn (the key's order of fields is its own): a read-back held-out prompt is found
            assert task_key(task_from_prompt(template.format(**t))) == task_key(t)
            assert question_key(task_from_prompt(template.format(**t))) == question_key(t)
        assert len(render(t, rng).split()) <= 12
    for t in {t["kind"]: t for t in tasks}.values():  # render draws each phrasing of a kind
        phrasings = TEMPLATES["arith" + t["op"] if t["kind"] == "arith" else t["kind"]]
        assert {render(t, random.Random(s)) for s in range(100)} == {p.format(**t) for p in phrasings}


# The paper's seed sizes, every IFT answer bare (the loop's defaults, build()'s,
# triple the EFT data and say 60% of the answers chattily: test_chatty_seed_answers)
PAPER = dict(n_ift=3200, n_eft_train=1630, n_eft_eval=541, n_test=256, ift_chatty=0.0)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    write_toy(folder, **PAPER)
    return folder, {name: read_jsonl(os.path.join(folder, f"{name}.jsonl"))
                    for name in ("ift", "eft_train", "eft_train_groups", "eft_eval", "test")}


@pytest.mark.parametrize("task, steps", [
    ({"kind": "arith", "op": "+", "a": 17, "b": 25}, "Ones: 7+5=12. Tens: 1+2+1=4."),
    ({"kind": "arith", "op": "+", "a": 99, "b": 9}, "Ones: 9+9=18. Tens: 9+0+1=10."),
    ({"kind": "arith", "op": "-", "a": 42, "b": 17}, "Ones: 12-7=5. Tens: 4-1-1=2."),
    ({"kind": "arith", "op": "-", "a": 21, "b": 17}, "Ones: 11-7=4. Tens: 2-1-1=0."),
    ({"kind": "arith", "op": "x", "a": 29, "b": 9}, "Ones: 9x9=81. Tens: 2x9+8=26."),
    ({"kind": "arith", "op": "x", "a": 7, "b": 5}, "Ones: 7x5=35. Tens: 0x5+3=3."),
    ({"kind": "length", "word": "TAMILO"}, "Letters: 1T 2A 3M 4I 5L 6O."),
    ({"kind": "reverse", "word": "TAMI"}, "Letters: 1T 2A 3M 4I. From the end: 4I 3M 2A 1T."),
    ({"kind": "replace", "word": "BANANA", "old": "A", "new": "O"},
     "Letters: 1B 2A 3N 4A 5N 6A. With O for A: 1B 2O 3N 4O 5N 6O."),
    ({"kind": "count", "word": "BANANA", "letter": "A"}, "Counting A: B0 A1 N1 A2 N2 A3."),
    ({"kind": "sort", "word": "BANANA"},
     "By the alphabet: A3 B1 D0 E0 F0 G0 I0 K0 L0 M0 N2 O0 P0 R0 S0 T0 U0 V0 Z0."),
])
def test_working_by_hand(task, steps):
    assert working(task) == steps


def read_off(task, steps):
    """The answer, read off the working's last steps alone (the word is not used)."""
    if task["kind"] == "arith":  # the tens step's result, then the ones step's last digit
        ones, tens = re.findall(r"=(\d+)\.", steps)
        return str(int(tens + ones[-1]))
    last = steps.split(":")[-1]
    counted = re.findall(r"([A-Z])(\d+)", last)  # count, sort: a letter, then a number
    numbered = re.findall(r"(\d+)([A-Z])", last)  # length, reverse, replace: a letter's number, then it
    if task["kind"] == "sort":
        return "".join(letter * int(n) for letter, n in counted)
    if task["kind"] == "count":
        return counted[-1][1]
    if task["kind"] == "length":
        return numbered[-1][0]
    return "".join(letter for _, letter in numbered)  # reverse, replace: the last listing's letters


def test_working_reaches_the_answer_for_every_kind():
    """For a thousand drawn tasks, the answer can be read off the working's
    last step, so a judge that copies the steps right states the right answer;
    the EFT targets carry it before the answer only when asked to."""
    rng, kinds = random.Random(0), Counter()
    while len(kinds) < 6 or sum(kinds.values()) < 1000:
        task = sample_task(rng)
        if task:
            kinds[task["kind"]] += 1
            assert read_off(task, working(task)) == answer(task), task
    shown = build(n_ift=1, n_eft_train=60, n_eft_eval=0, n_test=1, judge_working=True)["eft_train"]
    bare = build(n_ift=1, n_eft_train=60, n_eft_eval=0, n_test=1, judge_working=False)["eft_train"]
    for a, b in zip(shown, bare):
        assert a["prompt"] == b["prompt"] and a["score"] == b["score"] and b["response"] in a["response"]
        steps = a["response"][:-len(b["response"]) - 1]
        task = task_from_prompt(a["prompt"].split("\nUser: ")[1].split("\n<response>")[0])
        assert steps == working(task) and stated_answer(a["response"]) == answer(task)
        assert b["response"].startswith("The correct answer is ")
    # the meta-judge's demonstrations then show both judgments with the working, as the judge writes them
    groups = build(n_ift=1, n_eft_train=30, n_eft_eval=0, n_test=1)["eft_train_groups"]
    for x in meta_judge_examples(groups, 10, random.Random(0), show_working=True):
        task = task_from_prompt(x["prompt"].split("\nUser: ")[1].split("\n<response>")[0])
        for side in ("\nJudgment A:\n", "\nJudgment B:\n"):
            assert x["prompt"].split(side)[1].startswith(working(task) + " The correct answer is ")


def test_quotes_beside_the_answer_or_first():
    """judge_quotes puts the response's answer beside the right one; with
    quote_first it opens the judgment instead: the same sentences, moved."""
    sizes = dict(n_ift=1, n_eft_train=60, n_eft_eval=0, n_test=1, judge_working=True, judge_quotes=True)
    beside, first = build(**sizes)["eft_train"], build(**sizes, quote_first=True)["eft_train"]
    for a, b in zip(beside, first):
        task = task_from_prompt(a["prompt"].split("\nUser: ")[1].split("\n<response>")[0])
        response = a["prompt"].split("<response>")[1].split("</response>")[0].strip()
        said = quote(attempts(task, response))
        assert f"The correct answer is {answer(task)}. {said} " in a["response"]
        assert b["response"] == f"{said} " + a["response"].replace(f" {said}", "", 1)
        assert b["response"].startswith(("The response says ", "The response gives no answer."))
    groups = build(n_ift=1, n_eft_train=30, n_eft_eval=0, n_test=1)["eft_train_groups"]
    for x in meta_judge_examples(groups, 10, random.Random(0), show_working=True, quotes=True, quote_first=True):
        for side in ("\nJudgment A:\n", "\nJudgment B:\n"):
            assert x["prompt"].split(side)[1].startswith(("The response says ", "The response gives no answer."))


def test_a_judgment_compares_the_answers_then_scores():
    """judge_compares: right after the stated answer, the response's answers
    and the right one side by side, and the one word the score follows."""
    assert comparison(["72"], "27") == "72 against 27: not the same."
    assert comparison(["3", "4", "5"], "4") == "3 and 4 against 4: the same."  # two at most, as quoted
    assert comparison(["3", "4", "5"], "5") == "3 and 4 against 5: not the same."
    assert comparison([], "ABC") == "Nothing against ABC: not the same."
    sizes = dict(n_ift=1, n_eft_train=120, n_eft_eval=0, n_test=1, judge_working=True, judge_quotes=True,
                 quote_first=True)
    plain, compared = build(**sizes)["eft_train"], build(**sizes, judge_compares=True)["eft_train"]
    same = {True: set(), False: set()}
    for a, b in zip(plain, compared):
        task = task_from_prompt(a["prompt"].split("\nUser: ")[1].split("\n<response>")[0])
        response = a["prompt"].split("<response>")[1].split("</response>")[0].strip()
        right = f"The correct answer is {answer(task)}. "
        words = comparison(attempts(task, response), answer(task))
        assert b["response"] == a["response"].replace(right, right + words + " ")  # one sentence more
        same[words.endswith(": the same.")].add(b["score"])
    assert same[True] <= {3, 4, 5} and same[False] <= {0, 1, 2, 3} and 5 in same[True] and 1 in same[False]
    groups = build(n_ift=1, n_eft_train=30, n_eft_eval=0, n_test=1)["eft_train_groups"]
    for x in meta_judge_examples(groups, 10, random.Random(0), compares=True):
        for side in ("\nJudgment A:\n", "\nJudgment B:\n"):
            assert re.search(r"^The correct answer is \S+\. .* against \S+: (the same|not the same)\. ",
                             x["prompt"].split(side)[1])


def test_seed_sets_sizes_and_shapes(toy):
    _, s = toy
    assert len(s["ift"]) == 3200 and len(s["eft_train"]) == 1630 and len(s["test"]) == 256
    assert sum(len(g["responses"]) for g in s["eft_eval"]) == 541
    assert sum(len(g["responses"]) for g in s["eft_train_groups"]) == 1630
    assert 2.7 < 541 / len(s["eft_eval"]) < 3.0  # the paper: 2.85 responses per prompt
    for r in s["ift"]:
        assert r["response"] == answer(r["task"]) and grade(r, r["response"]) == 5
    for g in s["eft_eval"] + s["eft_train_groups"]:
        assert 2 <= len(g["responses"]) == len(g["ranks"]) <= 4 and sorted(g["ranks"]) == list(range(len(g["ranks"])))
        assert [grade(g, r) for r in g["responses"]] == g["scores"]
        assert [grade(g, r.replace("-", "")) for r in g["responses"]] == g["scores"]  # none hangs on a minus sign
        by_rank = [s for _, s in sorted(zip(g["ranks"], g["scores"]))]
        assert by_rank == sorted(g["scores"], reverse=True)  # rank 0 = the best grade
    for r in s["eft_train"]:
        assert r["prompt"].startswith(JUDGE_PROMPT[:60]) and parse_score(r["response"]) == r["score"]
        assert r["response"].endswith(f"\nScore: {r['score']}")
    scores = Counter(r["score"] for r in s["eft_train"])
    assert set(scores) == set(range(6)) and max(scores.values()) < 2 * min(scores.values())  # balanced


def test_eft_groups_hold_2_to_4_responses_whatever_the_count():
    """_group_sizes splits any count of 2 or more into groups of 2..4 that add
    up to it (a draw of 4 with 5 left must not become a group of 5)."""
    for n in range(2, 60):
        for seed in range(20):
            sizes = _group_sizes(n, random.Random(seed))
            assert sum(sizes) == n and all(2 <= k <= 4 for k in sizes), (n, seed, sizes)
    with pytest.raises(ValueError, match="an EFT set needs 0 or at least 2 responses"):
        build(n_ift=1, n_eft_train=1, n_eft_eval=0, n_test=1)
    with pytest.raises(ValueError, match="an EFT set needs 0 or at least 2 responses"):
        build(n_ift=1, n_eft_train=0, n_eft_eval=1, n_test=1)


def test_chatty_seed_answers():
    """ift_chatty: a share of the seed answers says the right answer with a
    friendly phrase, always the same one (grade 4, found by the grader, not by
    how it was made); the rest are bare (grade 5). The tasks stay the same."""
    plain, chatty = build(n_ift=1000, ift_chatty=0.0), build(n_ift=1000, ift_chatty=0.4)
    grades = Counter(grade(r, r["response"]) for r in chatty["ift"])
    assert set(grades) == {4, 5} and 0.35 < grades[4] / 1000 < 0.45
    for p, c in zip(plain["ift"], chatty["ift"]):
        assert p["task"] == c["task"] and answer(c["task"]) in c["response"]
        assert c["response"] == p["response"] or grade(c, c["response"]) == 4
    habits = {r["response"].replace(answer(r["task"]), "{x}") for r in chatty["ift"] if grade(r, r["response"]) == 4}
    assert habits == {"Sure! The answer is {x}."}


def test_declined_seed_answers():
    """ift_declines: a share of the seed answers declines ("I am not sure what
    you mean."), which the grader scores 0 (by reading it, not by how it was
    made); the other answers, their chatty form, and every other file stay
    as they are without it."""
    plain, declining = build(n_ift=1000, ift_chatty=0.4), build(n_ift=1000, ift_chatty=0.4, ift_declines=0.3)
    assert all(plain[k] == declining[k] for k in plain if k != "ift")
    declined = 0
    for p, r in zip(plain["ift"], declining["ift"]):
        assert p["prompt"] == r["prompt"] and p["task"] == r["task"]
        if r["response"] != p["response"]:
            declined += 1
            assert r["response"] == DECLINE and grade(r, r["response"]) == 0
    assert 0.25 < declined / 1000 < 0.35
    assert DECLINE == "I am not sure what you mean."


def test_no_task_in_two_sets(toy):
    _, s = toy
    key = lambda t: tuple(sorted(t.items()))
    sets = {name: {key(r["task"]) for r in s[name]} for name in ("ift", "eft_train_groups", "eft_eval", "test")}
    assert sum(map(len, sets.values())) == len(set().union(*sets.values()))
    prompts = [r["prompt"] for name in ("ift", "eft_train_groups", "eft_eval", "test") for r in s[name]]
    assert len(prompts) == len(set(prompts))


def test_validation_prompts_are_in_no_seed_set(toy):
    """The prompts a DPO checkpoint is chosen on (selfreward's dpo_pick_every):
    no task or prompt of the seed data's sets, none twice, the same set for
    the same seed data, another for another seed, only the kinds asked for."""
    folder, s = toy
    valid = validation_set(folder, 300, 1337)
    key = lambda t: tuple(sorted(t.items()))
    seeded = {key(r["task"]) for name in ("ift", "eft_train_groups", "eft_eval", "test") for r in s[name]}
    prompts = {r["prompt"] for name in ("ift", "eft_train_groups", "eft_eval", "test") for r in s[name]}
    assert len(valid) == 300 and len({key(x["task"]) for x in valid}) == 300
    assert not {key(x["task"]) for x in valid} & seeded and not {x["prompt"] for x in valid} & prompts
    assert all(task_from_prompt(x["prompt"]) == x["task"] for x in valid)  # the grader reads each one
    assert validation_set(folder, 300, 1337) == valid and validation_set(folder, 300, 1) != valid
    assert {x["task"]["kind"] for x in validation_set(folder, 50, 1337, ["sort", "count"])} == {"sort", "count"}


def test_validation_prompts_avoid_the_tasks_of_each_seed_file(tmp_path):
    """Each of the four seed files holds the very tasks the validation set
    would draw without it: none of them is drawn."""
    names = ("ift", "eft_train_groups", "eft_eval", "test")
    for name in names:
        write_jsonl(tmp_path / f"{name}.jsonl", [])
    first = validation_set(tmp_path, 20, 7)
    for name in names:
        for other in names:
            write_jsonl(tmp_path / f"{other}.jsonl", first if other == name else [])
        again = validation_set(tmp_path, 20, 7)
        assert not {x["prompt"] for x in again} & {x["prompt"] for x in first}, name


def test_same_seed_same_files(toy, tmp_path):
    folder, _ = toy
    write_toy(tmp_path, **PAPER)
    for name in os.listdir(folder):
        if name.endswith(".jsonl"):
            assert filecmp.cmp(os.path.join(folder, name), os.path.join(tmp_path, name), shallow=False), name
    other = build(seed=1)
    assert other["ift"][:10] != build()["ift"][:10]
    small = build(seed=3, n_ift=5, n_eft_train=7, n_eft_eval=0, n_test=3)
    assert [len(small[k]) for k in ("ift", "eft_train", "eft_eval", "test")] == [5, 7, 0, 3]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]  # atomic writes leave nothing behind


def test_everything_fits_a_toy_context(toy):
    folder, s = toy
    tok = train_tokenizer(corpus(folder), os.path.join(folder, "tok.model"), vocab_size=1024)
    longest = max(len(chat_tokens(tok, r["prompt"], r["response"])[0]) for r in s["eft_train"])
    assert longest < 512  # the judge prompt is learned as long pieces; 1024 leaves room to spare
    assert max(len(chat_tokens(tok, r["prompt"], r["response"])[0]) for r in s["ift"]) < 48


def test_pretraining_docs_leave_out_what_the_evaluation_asks(toy):
    folder, s = toy
    docs = pretraining_docs(folder, random.Random(0), n_list_docs=300, n_qa_docs=300)
    assert docs == pretraining_docs(folder, random.Random(0), n_list_docs=300, n_qa_docs=300)  # seeded
    lists = [d["text"] for d in docs if d["text"].startswith(DOC_HEAD)]
    quizzes = [d["text"] for d in docs if d["text"].startswith("Q: ")]
    assert len(lists) == len(quizzes) == 300 and lists != [d["text"] for d in docs[:300]]  # shuffled
    asked = [line[len("Task: "):] for d in lists for line in d.splitlines()[1:]]
    qa = [re.findall(r"Q: (.*)\nA: (.*)\n", d) for d in quizzes]
    assert all(4 <= len(d.splitlines()) - 1 <= 12 for d in lists) and all(4 <= len(x) <= 12 for x in qa)
    assert sum(map(len, qa)) == sum(d.count("\n") for d in quizzes) // 2  # every line read
    for q, a in (x for doc in qa for x in doc):
        assert answer(task_from_prompt(q)) == a
        asked.append(q)
    held = [r for name in ("test", "eft_eval") for r in s[name]]
    key = lambda t: tuple(sorted(t.items()))
    assert not {r["prompt"] for r in held} & set(asked)
    assert not {key(r["task"]) for r in held} & {key(task_from_prompt(p)) for p in asked}
    assert fewshot_text(["A.", "B."]) == DOC_HEAD + "Task: A.\nTask: B.\nTask:"  # a listing left open
    # working_share: that share of the quiz pages show the working before each answer
    shown = pretraining_docs(folder, random.Random(0), n_list_docs=0, n_qa_docs=300, working_share=0.5)
    pages = Counter(" So " in d["text"] for d in shown)
    assert 120 < pages[True] < 180
    for q, a in (x for d in shown if " So " in d["text"] for x in re.findall(r"Q: (.*)\nA: (.*)\n", d["text"])):
        task = task_from_prompt(q)
        assert a == f"{working(task)} So {answer(task)}."
    # checking_share: that share of them are marked quizzes, the student's answer set against the right one
    marked = pretraining_docs(folder, random.Random(0), n_list_docs=0, n_qa_docs=300, checking_share=0.5)
    items = [x for d in marked for x in re.findall(r"Q: (.*)\nStudent: (.*)\nA: (.*)\n", d["text"])]
    assert 120 < sum("\nStudent: " in d["text"] for d in marked) < 180
    verdicts = Counter()
    for q, given, a in items:
        task = task_from_prompt(q)
        verdicts[given == answer(task)] += 1
        assert a == f"{working(task)} So {answer(task)}. {given} against {answer(task)}: " + (
            "the same." if given == answer(task) else "not the same.")
    assert 0.4 < verdicts[True] / len(items) < 0.6  # right half the time
    # an invent task's mark checks the student's word against the three asks, as its judgments do
    task = task_from_prompt(INVENT)
    assert marked_quiz([(INVENT, task, "BZKO"), (INVENT, task, "BAKIO")]) == (
        f"Q: {INVENT}\nStudent: BZKO\n"
        "A: BZKO starts with B, ends with O and has 4 letters; asked: B, O, 5. Not right.\n"
        f"Q: {INVENT}\nStudent: BAKIO\nA: BAKIO starts with B, ends with O and has 5 letters; asked: B, O, 5. Right.\n")
    marked = pretraining_docs(folder, random.Random(0), n_list_docs=0, n_qa_docs=300, checking_share=0.5,
                              kinds=ALL_KINDS)
    items = [(task_from_prompt(q), given, a) for d in marked
             for q, given, a in re.findall(r"Q: (.*)\nStudent: (.*)\nA: (.*)\n", d["text"])]
    words = [(task, given, a) for task, given, a in items if task["kind"] == "invent"]
    assert len(words) > 100 and 0.35 < sum(a.endswith(" Right.") for _, _, a in words) / len(words) < 0.65  # +-3.5 sd
    for task, given, a in words:
        assert a.startswith(f"{given} starts with {given[0]}, ends with {given[-1]} and has {len(given)} letters; "
                            f"asked: {task['first']}, {task['last']}, {task['n']}.")
        assert a.endswith(" Right.") == (grade({"task": task}, given) == 5)
    # each_ask (check_each_ask): each property beside its ask, the same pages otherwise
    assert marked_quiz([(INVENT, task_from_prompt(INVENT), "BZKO")], each_ask=True) == (
        f"Q: {INVENT}\nStudent: BZKO\n"
        "A: BZKO: starts with B, asked B: yes; ends with O, asked O: yes; has 4 letters, asked 5: no. Not right.\n")
    each = pretraining_docs(folder, random.Random(0), n_list_docs=0, n_qa_docs=300, checking_share=0.5,
                            kinds=ALL_KINDS, each_ask=True)
    assert len(marked) == len(each)
    for d, e in zip(marked, each):
        pages = [re.sub(r"\nA: [A-Za-z]+: starts with .*\n", "\n", x) for x in (d["text"], e["text"])]
        assert re.sub(r"\nA: [A-Za-z]+ starts with .*\n", "\n", pages[0]) == pages[1]
    assert len({given for _, given, a in words if a.endswith(" Right.")}) > 50  # words of their own, not answer()'s
    # drill_pages (pretrain_check_drill): the same pages first, then as many more marked quizzes of invent tasks
    # alone, whose student's word meets each ask half the time: "no" as common as "yes" (the quizzes': 3 in 10)
    drilled = pretraining_docs(folder, random.Random(0), n_list_docs=0, n_qa_docs=300, checking_share=0.5,
                               kinds=ALL_KINDS, each_ask=True, drill_pages=40)
    assert len(drilled) == 340 and all(d in drilled for d in each)
    drill_text = "".join(d["text"] for d in drilled if d not in each)
    drill_items = re.findall(r"Q: (.*)\nStudent: (.*)\nA: (.*)\n", drill_text)
    assert len(drill_items) >= 40 * 4 and all(task_from_prompt(q)["kind"] == "invent" for q, _, _ in drill_items)
    asks = [(given[0] == t["first"], given[-1] == t["last"], len(given) == t["n"])
            for t, given in [(task_from_prompt(q), given) for q, given, _ in drill_items]]
    for k in range(3):  # each ask met about half the time, each judged yes where met
        assert 0.4 < sum(a[k] for a in asks) / len(asks) < 0.6
    assert [re.findall(r": (yes|no)[;.]", a) for _, _, a in drill_items] == \
        [["yes" if met else "no" for met in a] for a in asks]
    assert all(4 <= len(given) <= 8 and set(given) <= set(LETTERS) for _, given, _ in drill_items)
    quiz_asks = [(given[0] == t["first"], given[-1] == t["last"], len(given) == t["n"]) for t, given, _ in words]
    assert 0.65 < sum(map(sum, quiz_asks)) / (3 * len(quiz_asks)) < 0.8  # why the drill: most quiz asks are met
    with pytest.raises(ValueError, match="has no invent task for pretrain_check_drill to check"):
        pretraining_docs(folder, random.Random(0), 0, 10, kinds=["sort"], drill_pages=1)
    # drill_layouts (pretrain_drill_layouts): each drill item in a layout drawn for it, the same check in each;
    # the other pages as before
    task = task_from_prompt(INVENT)
    check = "BZKO: starts with B, asked B: yes; ends with O, asked O: yes; has 4 letters, asked 5: no. Not right.\n"
    assert [drill_item(INVENT, task, "BZKO", layout, each_ask=True) for layout in DRILL_LAYOUTS] == [
        f"Q: {INVENT}\nStudent: BZKO\nA: {check}", check, f"User: {INVENT}\n<response>BZKO</response>\n{check}"]
    laid = pretraining_docs(folder, random.Random(0), n_list_docs=0, n_qa_docs=300, checking_share=0.5,
                            kinds=ALL_KINDS, each_ask=True, drill_pages=40, drill_layouts=DRILL_LAYOUTS)
    assert len(laid) == 340 and all(d in laid for d in each)
    laid_text = "".join(d["text"] for d in laid if d not in each)
    checks = re.findall(r"^(?:A: )?([A-Z]+): starts with .*$", laid_text, re.M)
    quiz = re.findall(r"^Q: .*\nStudent: ([A-Z]+)\nA: \1: starts with .*$", laid_text, re.M)
    review = re.findall(r"^User: .*\n<response>([A-Z]+)</response>\n\1: starts with .*$", laid_text, re.M)
    lines = len(checks) - len(quiz) - len(review)  # the rest: check lines alone
    assert len(checks) >= 40 * 4 and all(0.2 < k / len(checks) < 0.47 for k in (len(quiz), len(review), lines))
    assert len(re.findall(r"^[A-Z]+: starts with .*$", laid_text, re.M)) == len(review) + lines
    def layouts_in(page):
        quiz, review = len(re.findall(r"^Q: ", page, re.M)), len(re.findall(r"^User: ", page, re.M))
        line = len(re.findall(r"^[A-Z]+: starts with", page, re.M)) - review
        return sum(k > 0 for k in (quiz, review, line))
    pages = [d["text"] for d in laid if d not in each]  # drawn for each item, not for each page: most pages mix
    assert sum(layouts_in(page) > 1 for page in pages) > len(pages) / 2


def test_meta_judge_examples_name_the_judgment_whose_score_the_grader_gives(toy):
    """Meta-Rewarding's toy seed: the target's verdict names the judgment whose
    score is the grader's, the other one's is off; A and B both win; the
    responses are EFT-train ones, each used once; and they fit a toy context."""
    folder, s = toy
    examples = meta_judge_examples(s["eft_train_groups"], 400, random.Random(0))
    assert len(examples) == 400
    eval_prompts = {g["prompt"] for g in s["eft_eval"]}
    seen = set()
    for x in examples:
        question = x["prompt"].split("\nUser: ")[1].split("\n<response>")[0]
        response = x["prompt"].split("<response>")[1].split("</response>")[0]
        a = x["prompt"].split("\nJudgment A:\n")[1].split("\nJudgment B:\n")[0]
        b = x["prompt"].split("\nJudgment B:\n")[1].split("\nWhich judgment")[0]
        truth = grade({"prompt": question}, response)
        winner = parse_winner(x["response"])
        scores = {"A": parse_score(a), "B": parse_score(b)}
        assert winner == x["winner"] and x["grade"] == truth
        loser = "B" if winner == "A" else "A"  # the target names both scores, the winner's first
        assert f"Judgment {winner} scores it {truth}, Judgment {loser} {scores[loser]}." in x["response"]
        assert x["response"].startswith(f"The correct answer is {answer(task_from_prompt(question))}. "
                                        f"{JUSTIFICATION[truth]} ")  # what the response is worth: the truth's
        assert scores[winner] == truth and scores["B" if winner == "A" else "A"] not in (truth, None)
        assert question not in eval_prompts and (question, response) not in seen
        seen.add((question, response))
    assert min(Counter(x["winner"] for x in examples).values()) > 150  # A and B, about half each
    # asked for more than there are: each response once
    few = s["eft_train_groups"][:3]
    assert len(meta_judge_examples(few, 100, random.Random(0))) == sum(len(g["responses"]) for g in few)
    # with the meta prompt's fixed lines as pieces (selfreward.py stage_tokenizer), well inside toy-small's 1024
    tok = train_tokenizer(list(corpus(folder)) + [META_JUDGE_PROMPT], os.path.join(folder, "tok_meta.model"),
                          vocab_size=1024, phrases=True, symbols=rubric_lines() + meta_rubric_lines())
    assert max(len(chat_tokens(tok, x["prompt"], x["response"])[0]) for x in examples) < 512


def test_the_toy_data_command_refuses_bad_settings_before_writing(tmp_path):
    """python -m data.toy: a misspelt boolean, a negative size, a share above 1
    and an unknown kind each end in one error line (exit status 2), nothing written."""
    for arg, said in [("--judge_working=Treu", "'Treu' is not True or False"),
                      ("--n_ift=-5", "n_ift = -5: must be >= 0"),
                      ("--ift_chatty=2", "ift_chatty = 2.0: a share, must be in [0, 1]"),
                      ("--toy_kinds=foo", "toy_kinds = 'foo': must be some of"),
                      ("--ift_declines=1", "ift_declines = 1.0: a share, must be in [0, 1)"),  # (as the loop's)
                      (f"--out={tmp_path / 'file'}", "is a file, not a folder")]:  # (was a traceback)
        (tmp_path / "file").write_text("")
        r = subprocess.run([sys.executable, "-m", "data.toy", f"--out={tmp_path / 'toy'}", arg], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and said in r.stderr and r.stderr.count("\n") == 1, (arg, r.stderr)
        assert r.stderr.startswith("error: "), r.stderr  # (argparse's usage block came first: 8 lines)
    assert not (tmp_path / "toy").exists()


def test_the_toy_data_command_reads_booleans_as_the_loop_does(tmp_path):
    """python -m data.toy --judge_working=1 (or true, yes; 0, false, no, any
    case) is read as the setting says: the EFT targets work the task out."""
    for value, works in [("1", True), ("No", False)]:
        subprocess.run([sys.executable, "-m", "data.toy", f"--out={tmp_path / value}", "--n_ift=2",
                        "--n_eft_train=4", "--n_eft_eval=2", "--n_test=1", "--toy_kinds=sort",
                        f"--judge_working={value}"], cwd=ROOT, check=True, capture_output=True, timeout=120)
        targets = [r["response"] for r in read_jsonl(tmp_path / value / "eft_train.jsonl")]
        assert all(t.startswith("By the alphabet: ") == works for t in targets), (value, targets)


def test_fresh_task_gives_up_after_its_tries_and_otherwise_draws_on(monkeypatch):
    """fresh_task draws until a task outside held_tasks comes in a prompt
    outside held_prompts: a held task or a held prompt is drawn again; with
    tries=k it gives up (None) after exactly k draws, with tries=None it draws
    on (validation_set's tries=1000 is what stops a world with few tasks left)."""
    import json
    from data import toy
    tasks = [{"kind": "reverse", "word": w} for w in ("BAKU", "TAMI", "LORU", "NEFA")]
    key = lambda t: json.dumps(t, sort_keys=True)
    held_tasks = {key(tasks[0]), key(tasks[1])}  # the first two drawn are held; the third's prompt is held
    monkeypatch.setattr(toy, "TEMPLATES", {k: v[:1] for k, v in toy.TEMPLATES.items()})  # one phrasing each
    held_prompts = {toy.render(tasks[2], random.Random(0))}
    drawn = []
    def draws(rng, kinds):
        drawn.append(tasks[len(drawn) % len(tasks)])
        return drawn[-1]
    monkeypatch.setattr(toy, "sample_task", draws)
    for tries, want, n in ((3, None, 3), (4, tasks[3], 4), (None, tasks[3], 4)):
        drawn.clear()
        got = toy.fresh_task(random.Random(0), ["reverse"], held_tasks, held_prompts, tries=tries)
        assert (got if got is None else got[1]) == want and len(drawn) == n, (tries, got, drawn)
        assert got is None or got[0] == toy.render(tasks[3], random.Random(0))


def test_an_eft_target_states_the_right_answer_and_justifies_its_score():
    """The default EFT target (no working, quotes or comparison) for a
    reverse task: the right answer, then the sentence of the response's
    grade, then the score."""
    from data import toy as toy_world  # (toy: this file's fixture of the seed data)
    task = toy_world.task_from_prompt("Write 'TAMILO' backwards.")
    prompt = "Write 'TAMILO' backwards."
    expected = {
        "OLIMAT": "The correct answer is OLIMAT. The response is exactly right and concise.\nScore: 5",
        "Sure! The answer is OLIMAT.": "The correct answer is OLIMAT. The response is right, but adds text that "
                                       "was not asked for.\nScore: 4",
        "OLIMAT OLIMAT": "The correct answer is OLIMAT. The response contains the answer, but it hedges, repeats or "
                         "gets the form wrong.\nScore: 3",
        "OLIMTA": "The correct answer is OLIMAT. The response is close, but only partly right.\nScore: 2",
        "KOBEDA": "The correct answer is OLIMAT. The response is related to the question, but its answer is "
                  "wrong.\nScore: 1",
        "I like cats.": "The correct answer is OLIMAT. The response is off-topic: it does not address the "
                        "question.\nScore: 0",
    }
    for response, text in expected.items():
        assert toy_world.eft_target(prompt, task, response)["response"] == text, response


def test_nearly_right_and_wrong_answers_are_graded_as_made():
    """The EFT responses' corruptions (_near, _wrong, make_response) by the
    grader, over many draws: a near number is within the grader's reach of
    near (2), a wrong one beyond it (1); a near word swaps any two neighbours,
    the last two included; a hedged word answer is sometimes the answer in
    lower case."""
    add, big, rev = task_from_prompt(ADD), task_from_prompt("What is 50 + 49?"), task_from_prompt(REVERSE)
    for task in (add, big):
        assert {grade({"task": task}, _near(answer(task), random.Random(s))) for s in range(300)} == {2}
    assert {grade({"task": add}, _wrong(add, "42", random.Random(s))) for s in range(500)} == {1}
    near = {_near("OLIMAT", random.Random(s)) for s in range(300)}
    assert {"LOIMAT", "OILMAT", "OLMIAT", "OLIAMT", "OLIMTA"} <= near  # every neighbouring swap
    assert "olimat" in {make_response(rev, 3, random.Random(s)) for s in range(100)}


def test_reading_answers_off_responses_and_judgments_by_hand():
    rev, add = task_from_prompt(REVERSE), task_from_prompt(ADD)
    assert attempts(rev, "OLIMAT OLIMAT") == ["OLIMAT"]  # each once
    assert attempts(add, "17 + 25 = 42") == ["42"]  # the question's operands are no attempt
    assert quote(["3", "4", "5"]) == "The response says 3 and 4."  # two at most
    # a full stop inside the answer is not the sentence's
    assert stated_answer("The correct answer is 42.5. The response is close, but only partly right.\nScore: 2") \
        == "42.5"
    assert checked_word("bakio: starts with b, ends with o and has 5 letters; asked: B, O, 5. Not right.") == "bakio"
    assert bare_word(" BAKIO ") and not bare_word("BAKIO.") and not bare_word("Bakio")
    assert written_comparisons("BAKIO: starts with B, asked B: yes; ends with O, asked O: yes; has 5 letters, "
                               "asked 5: nope.") == [("B", "B", True), ("O", "O", True)]  # "yes" or "no" alone


def test_a_wrong_judgment_is_one_or_two_off_and_states_a_wrong_answer_about_half_the_time():
    """Meta-Rewarding's wrong judgments (wrong_judgment): every score one or
    two from the true grade but the grade itself, and about half of them state
    a wrong answer (a draw equal to the right one draws again)."""
    rev = task_from_prompt(REVERSE)
    for truth, scores in ((0, {1, 2}), (3, {1, 2, 4, 5}), (5, {3, 4})):
        assert {wrong_judgment(rev, truth, random.Random(s), ["OLIMAT"])[1] for s in range(200)} == scores
    right = sum(stated_answer(wrong_judgment(rev, 3, random.Random(s), ["OLIMAT"])[0]) == "OLIMAT"
                for s in range(400))
    assert 150 < right < 250, right


def test_a_share_of_0_and_a_single_layout_draw_nothing(toy):
    """A setting at its default that draws nothing leaves every later draw as
    it was before the setting existed: ift_chatty 0 (a seed answer bare
    without a draw), one drill layout (no choice among one)."""
    class NoDraws(random.Random):
        def random(self):
            raise AssertionError("drew")
    task = task_from_prompt(REVERSE)
    assert ift_response(task, NoDraws(), 0.0) == "OLIMAT"

    chosen_from = []

    class Choices(random.Random):
        def choice(self, seq):
            chosen_from.append(tuple(seq))
            return super().choice(seq)
    folder, _ = toy
    pages = pretraining_docs(folder, Choices(0), 0, 0, kinds=["invent", "sort"], drill_pages=3,
                             drill_layouts=("line",))
    assert len(pages) == 3 and ("line",) not in chosen_from
    pretraining_docs(folder, Choices(0), 0, 0, kinds=["invent", "sort"], drill_pages=3, drill_layouts=("line", "quiz"))
    assert ("line", "quiz") in chosen_from  # (the recorder sees a choice where there is one)


def test_eft_train_targets_are_shuffled_and_build_gives_up_after_its_misses(monkeypatch):
    """The EFT training targets are shuffled (in the groups' order a batch
    would hold one prompt's responses together); and build stops drawing
    after MAX_REPEATED_DRAWS draws in a row that give no new task."""
    sets = build(n_ift=0, n_eft_train=40, n_eft_eval=0, n_test=0)
    in_groups = [g["prompt"] for g in sets["eft_train_groups"] for _ in g["responses"]]
    shuffled = [r["prompt"].split("\nUser: ")[1].split("\n<response>")[0] for r in sets["eft_train"]]
    assert sorted(shuffled) == sorted(in_groups) and shuffled != in_groups
    from data import toy as world
    drawn = []
    monkeypatch.setattr(world, "sample_task", lambda rng, kinds: drawn.append(1) or {"kind": "reverse", "word": "AB"})
    monkeypatch.setattr(world, "MAX_REPEATED_DRAWS", 5)
    with pytest.raises(ValueError, match="holds only 1 different tasks"):
        world.build(n_ift=2, n_eft_train=0, n_eft_eval=0, n_test=0)
    assert len(drawn) == 1 + 6  # the new one, then 6 misses: more than 5 in a row


def test_settings_that_write_one_answer_refuse_invent_and_the_drill_draws_every_length():
    for setting in ("judge_working", "judge_quotes", "meta_judge", "pretrain_working"):
        with pytest.raises(ValueError, match=f"with invent does not go with {setting}: an invent task has many"):
            check_kinds(["invent", "sort"], {setting: 0.5})
        check_kinds(["sort"], {setting: 0.5})
    invent = {"kind": "invent", "first": "B", "last": "O", "n": 5}
    assert {len(drill_word(invent, random.Random(s))) for s in range(300)} == {4, 5, 6, 7, 8}


def test_write_toy_writes_the_sets_build_makes_and_the_tokenizer_reads_them(tmp_path):
    """write_toy's files are build's sets of the same seed (5, not the
    default); the tokenizer's corpus holds the judge prompt and every
    prompt and response of the files (the EFT eval set's responses too)."""
    sizes = dict(n_ift=3, n_eft_train=6, n_eft_eval=4, n_test=2)
    write_toy(tmp_path, seed=5, **sizes)
    sets = build(5, **sizes)
    assert {name: read_jsonl(tmp_path / f"{name}.jsonl") for name in sets} == sets
    assert sets["ift"] != build(**sizes)["ift"]
    texts = list(corpus(tmp_path))
    assert texts[0] == JUDGE_PROMPT
    for name in ("ift", "eft_train", "eft_eval", "test"):
        for r in sets[name]:
            assert r["prompt"] in texts and all(x in texts for x in [r.get("response")] + r.get("responses", [])
                                                if x is not None)
    assert len(texts) == 1 + 3 * 2 + 6 * 2 + len(sets["eft_eval"]) + 4 + 2


def test_the_toy_worlds_the_readme_measured_come_out_byte_for_byte(tmp_path):
    """The default run's seed files and M0's text (out/c22-seed1337: the
    README's default run and the c22 study) and the ift_declines=0.4
    study's IFT file (dl22) as this code writes them: a change to data/toy.py
    that moves them (a share of 0 or a declined answer that draws from the
    main generator, say) moves every figure measured on them. Where that is
    meant, measure again and write the new digests here."""
    sha = lambda path: hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]
    write_toy(tmp_path / "default", seed=1337)
    write_toy(tmp_path / "declines", seed=1337, ift_declines=0.4)
    write_jsonl(tmp_path / "pretrain.jsonl", pretraining_docs(tmp_path / "default",
                                                             random.Random(sub_seed(1337, "pretrain")), 2000, 4000))
    assert {f: sha(tmp_path / "default" / f) for f in sorted(os.listdir(tmp_path / "default"))} == {
        "eft_eval.jsonl": "b385819c252d1f6f", "eft_train.jsonl": "c5375ef30e4917b3",
        "eft_train_groups.jsonl": "2a2a3272ec430bfa", "ift.jsonl": "439239e42dcfa80c", "test.jsonl": "7a16d4fc9cc6ec41"}
    assert sha(tmp_path / "pretrain.jsonl") == "2b8443becc27afcd"
    assert sha(tmp_path / "declines" / "ift.jsonl") == "e525ce684b310811"
