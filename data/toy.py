"""
The toy world: short instruction tasks with a ground-truth grader, so the whole
method runs on a laptop CPU in minutes and can be measured honestly.

Tasks (a "task" dict holds the kind and its arguments; words are made-up
syllable words in capitals like "TAMILO", so nothing can be memorised, only
learned; capitals, so the toy tokenizer can give each letter a piece of its own
and the model sees the letters it must move, as English text never merges them):
    reverse   "Write 'TAMILO' backwards."                       -> OLIMAT
    sort      "Sort the letters of 'TAMILO' alphabetically."     -> AILMOT
    replace   "Replace each 'A' in 'BANANA' with 'O'."            -> BONONO
    count     "How many times does 'A' appear in 'BANANA'?"       -> 3
    length    "How many letters are in 'TAMILO'?"                 -> 6
    arith     "What is 17 + 25?"  (+, -, x)                       -> 42
    invent    "Invent a word of 5 letters that starts with 'B' and ends with 'O'."
                                                               -> BAKIO, BUTTO, ...
Each kind has several phrasings; the ideal response is the bare answer. A
count's answer (0 to 3), its letter's kind (vowel or consonant) and its
word's length (6 or 7) are drawn apart, so that only counting tells it.
The last kind is drawn only when asked for (build's toy_kinds; selfreward.py
--toy_kinds): it has many right answers, and checking one (read its first
and last letters, count its letters) is easier than writing one (plan the
last letter while counting), so a judge can tell right from wrong better
than the policy answers right (issue 16). The others have one answer each.

grade(record, response) -> 0..5 follows the paper's additive rubric:
    0  off-topic: nothing about the task in it
    1  related but wrong: a wrong number, a wrong made-up word (bare or with
       chatter; or several, in capitals), the input word echoed, or the
       answer's letters scrambled
    2  partly right: close to the answer (a word at most half wrong by edit
       distance; a number off by at most max(1, |answer| // 20))
    3  the answer is there but it is not a clean answer: it also offers another
       candidate (a number task: any other number; a word task: a word near
       the answer or made of its letters; an invent task: any other word not
       in the grader's English list, ENGLISH), repeats the answer, runs over
       15 words, or has the case wrong
    4  right but not clean: the answer plus a little chatter ("Sure! It is 42.")
    5  exactly the answer, nothing else (a trailing period allowed)
Numbers are read as digits; English words are never taken for answers
(but an invent task's: any word that meets its asks is right), not even in
capitals, where make_word can write one (TAKE, OF): such an
answer grades 0 where it should grade 1 or 2 (13 of 53,248 test answers the
studies stored, all wrong; reading capitals as made-up words would change
one EFT eval group of the default seed, and so every measured figure).
The right answer in the wrong case is read as such, an English word too
("take" for TAKE: 3).
An operand the response repeats is working, not another candidate ("8 x 5
= 40"), and where the answer equals an operand and the response repeats
the question, each operand as often as the question has it ("10 - 5 = 5",
"1 x 1 = 1"), one of its copies is that operand ("It is 1." says 1).
The grader makes seed data and evaluates; with the paper's settings the
self-rewarding loop never sees it (report.grader_inside lists the controls
that let it in). It reads the task from record["task"], or parses it from the prompt text
when the record has none (this works for every prompt this file writes; a
prompt the model invents itself has no ground truth and is not graded).

The toy world also writes M0's pretraining documents (pretraining_docs) and
the few-shot request the loop asks new prompts with (fewshot_text).

Files written by write_toy(out_dir) (formats in data/__init__.py):
    ift.jsonl              {"prompt", "response", "task"}            IFT seed (3,200); right
                           answers, bare or (a share ift_chatty, 60%) with a friendly phrase;
                           a share ift_declines (0 by default) declines instead
    eft_train.jsonl        {"prompt": judge prompt, "response": why + "Score: N", "score"}
                           EFT targets, one per judged response (4,890; the paper
                           had 1,630, a 1.3M-parameter judge needs 3x); "why" states
                           the right answer, then judges the response; with
                           judge_working it first works the task out (working())
    eft_train_groups.jsonl {"prompt", "responses", "ranks", "scores", "task"}
                           the same responses as groups (no judgments), for
                           eft_own_answers, the meta-judge demonstrations, the
                           prompts M1 was trained on, and a validation set
                           apart from them
    eft_eval.jsonl         the same group shape; 1,623 responses in all (the paper's 541, 3x)
    test.jsonl             {"prompt", "task"}                        held out (1,024; the paper: 256)
EFT sizes count judged responses: the paper's 541 eval examples match in number
the ranked first-turn replies of the oasst1 validation split (541, 186 prompts).
Groups have 2 to 4 responses (about 2.85 on average), all of different grades;
rank 0 = best, as in Open Assistant. No task appears in two of the IFT,
EFT-train, EFT-eval and test sets (eft_train and eft_train_groups are one set;
17 + 25 and 25 + 17 are two tasks there, and may be in two sets).
build()'s defaults are the self-rewarding loop's (selfreward.py), so

    python -m data.toy --out=data/toy --seed=1337

writes the same files as the loop's out/toy/seed/.
"""
import argparse
import inspect
import json
import os
import random
import re
from collections import Counter

from data import read_jsonl, unwritable, write_jsonl
from judge import JUDGE_PROMPT, judge_prompt, meta_judge_prompt

# -----------------------------------------------------------------------------
# Tasks and their phrasings

CONSONANTS, VOWELS = "BDFGKLMNPRSTVZ", "AEIOU"
LETTERS = CONSONANTS + VOWELS  # the letters of made-up words

TEMPLATES = {
    "reverse": [
        "Reverse the word '{word}'.",
        "Write '{word}' backwards.",
        "What is '{word}' spelled backwards?",
        "Spell the word '{word}' in reverse order.",
        "Can you reverse the letters of '{word}'?",
        "Write the letters of '{word}' from last to first.",
    ],
    "sort": [
        "Sort the letters of '{word}' alphabetically.",
        "Put the letters of '{word}' in alphabetical order.",
        "Arrange the letters in '{word}' from a to z.",
        "Rearrange '{word}' so its letters are in alphabetical order.",
        "What do you get if you sort the letters of '{word}'?",
    ],
    "replace": [
        "Replace each '{old}' in '{word}' with '{new}'.",
        "Copy the word '{word}', but change every '{old}' into '{new}'.",
        "Write '{word}' with every letter '{old}' replaced by '{new}'.",
        "Swap every '{old}' in '{word}' for a '{new}'.",
        "Rewrite '{word}', using '{new}' wherever it has '{old}'.",
    ],
    "count": [
        "How many times does '{letter}' appear in '{word}'?",
        "Count the letter '{letter}' in the word '{word}'.",
        "In the word '{word}', how often does '{letter}' occur?",
        "How many '{letter}' letters are in '{word}'?",
        "Count how many times '{letter}' occurs in '{word}'.",
    ],
    "length": [
        "How many letters are in '{word}'?",
        "How long is the word '{word}'?",
        "Count the letters of '{word}'.",
        "What is the length of the word '{word}'?",
        "How many letters does '{word}' have?",
    ],
    "arith+": [
        "What is {a} + {b}?",
        "Compute {a} plus {b}.",
        "Add {a} and {b}.",
        "What is the sum of {a} and {b}?",
        "Calculate {a} + {b}.",
    ],
    "arith-": [
        "What is {a} - {b}?",
        "Subtract {b} from {a}.",
        "What is {a} minus {b}?",
        "Compute {a} - {b}.",
        "Take {b} away from {a}. What is left?",
    ],
    "arithx": [
        "What is {a} times {b}?",
        "Multiply {a} by {b}.",
        "What is {a} x {b}?",
        "Compute the product of {a} and {b}.",
        "Calculate {a} * {b}.",
    ],
    "invent": [
        "Invent a word of {n} letters that starts with '{first}' and ends with '{last}'.",
        "Write a new word with {n} letters, starting with '{first}' and ending with '{last}'.",
        "Think of a word with {n} letters that starts with '{first}' and ends with '{last}'.",
        "Create a word that has {n} letters, starts with '{first}' and ends with '{last}'.",
        "Spell out any word of {n} letters from '{first}' to '{last}'.",
    ],
}
KINDS = ["reverse", "sort", "replace", "count", "length", "arith"]  # the default world's
ALL_KINDS = KINDS + ["invent"]  # what a world may ask for (build's toy_kinds)
RIGHT = 4  # the lowest grade of a right answer (4 with chatter, 5 bare); below it the answer is wrong


def make_word(rng):
    """A pronounceable made-up word of 4 to 7 letters: 2-3 syllables, maybe a final consonant."""
    word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.choice((2, 3))))
    return word + rng.choice(CONSONANTS) if rng.random() < 0.4 else word


def invented(task, rng):
    """A right answer to an invent task, drawn at random: the first letter,
    n - 2 letters of any kind, the last letter."""
    middle = "".join(rng.choice(LETTERS) for _ in range(task["n"] - 2))
    return task["first"] + middle + task["last"]


def asks_met(task, word):
    """How many of an invent task's three asks a word meets: its first
    letter, its last letter, its length."""
    return (word[:1] == task["first"]) + (word[-1:] == task["last"]) + (len(word) == task["n"])


def answer(task):
    """The one right answer, as a string (an invent task has many: this is
    one of them, the same every time for the same task)."""
    kind, w = task["kind"], task.get("word")
    if kind == "invent":
        return invented(task, random.Random(f"{task['first']} {task['last']} {task['n']}"))
    if kind == "reverse":
        return w[::-1]
    if kind == "sort":
        return "".join(sorted(w))
    if kind == "replace":
        return w.replace(task["old"], task["new"])
    if kind == "count":
        return str(w.count(task["letter"]))
    if kind == "length":
        return str(len(w))
    a, b = task["a"], task["b"]
    return str({"+": a + b, "-": a - b, "x": a * b}[task["op"]])


def sample_task(rng, kinds=KINDS):
    """A random task of one of kinds; None if the draw is degenerate (the caller draws again)."""
    kind, word = rng.choice(kinds), make_word(rng)
    if kind == "invent":
        return {"kind": "invent", "first": rng.choice(LETTERS), "last": rng.choice(LETTERS), "n": rng.randint(4, 8)}
    if kind == "arith":
        op = rng.choices("+-x", weights=(2, 2, 1))[0]
        if op == "x":
            a, b = rng.randint(2, 30), rng.randint(2, 9)
        elif op == "+":
            a, b = rng.randint(2, 99), rng.randint(2, 99)
        else:
            a = rng.randint(10, 99)
            b = rng.randint(2, a - 1)
            if a == 2 * b:
                return None  # the answer would equal an operand: a wrong echo would look right
        return {"kind": "arith", "op": op, "a": a, "b": b}
    task = {"kind": kind, "word": word}
    if kind == "replace":
        task["old"] = rng.choice(word)  # a letter by position: repeated letters come up more
        task["new"] = rng.choice([c for c in LETTERS if c not in word])
    if kind == "count":  # the answer, the letter's kind and the word's length drawn apart, so that none
        # tells another: then a word of that length with a letter of that kind that many times (a letter
        # drawn from the word made "1" right on most count prompts, and drawing the answer alone made a
        # vowel and a long word signs of a 3). Words of three syllables, 6 or 7 letters, as make_word's are.
        n, kind_letters, length = rng.randint(0, 3), rng.choice((VOWELS, CONSONANTS)), rng.choice((6, 6, 6, 7, 7))
        while not (len(word) == length and (letters := [c for c in kind_letters if word.count(c) == n])):
            word = make_word(rng)
        task.update(word=word, letter=rng.choice(letters))
    if kind in ("reverse", "sort") and answer(task) == word:
        return None
    return task


def _template_kind(task):
    return "arith" + task["op"] if task["kind"] == "arith" else task["kind"]


def render(task, rng):
    """The task as a natural instruction, in one of its phrasings."""
    return rng.choice(TEMPLATES[_template_kind(task)]).format(**task)


def _template_regex(template):
    pattern = re.escape(template)
    for name, group in (("word", "[A-Z]+"), ("old", "[A-Z]"), ("new", "[A-Z]"), ("letter", "[A-Z]"),
                        ("a", "[0-9]+"), ("b", "[0-9]+"), ("first", "[A-Z]"), ("last", "[A-Z]"), ("n", "[0-9]+")):
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{group})")
    return re.compile(pattern + "$")


_PARSERS = [(key, _template_regex(t)) for key, ts in TEMPLATES.items() for t in ts]


def task_from_prompt(prompt):
    """The task a prompt written by render() asks for, or None for any other text."""
    for key, regex in _PARSERS:
        m = regex.match(prompt.strip())
        if m:
            args = m.groupdict()
            if key.startswith("arith"):
                return {"kind": "arith", "op": key[-1], "a": int(args["a"]), "b": int(args["b"])}
            if key == "invent":
                return {"kind": "invent", "first": args["first"], "last": args["last"], "n": int(args["n"])}
            return {"kind": key, **args}
    return None


def task_key(task):
    """A task as a set's key: its fields in a fixed order (one task, one key)."""
    return json.dumps(task, sort_keys=True)


def question_key(task):
    """A task as the question it asks, whatever words ask it: 25 + 17 asks
    what 17 + 25 does (a sum's or product's operands in order). The loop's
    held-out check (selfreward.held_out_check) compares these."""
    if task["kind"] == "arith" and task["op"] in "+x":
        task = {**task, "a": min(task["a"], task["b"]), "b": max(task["a"], task["b"])}
    return task_key(task)


# -----------------------------------------------------------------------------
# The ground-truth grader

# What responses look like besides the answer (the EFT bad answers use them too)
CHATTER = ["Sure! The answer is {x}.", "{x}. Hope this helps!", "Here you go: {x}", "Of course. It is {x}.",
           "The result is {x}. Let me know if you need more help.", "'{x}'", "Easy: {x}!"]
HEDGES = ["{x}, or maybe {y}.", "It is either {y} or {x}.", "I think {y}, no wait, {x}.", "{x} {x}",
          "Well, I had to think about this one for quite a while before I was sure, but the answer is {x}, "
          "and I hope that is what you were looking for today."]
OFF_TOPIC = ["I like walking by the river in the morning.", "The weather is lovely today, isn't it?",
             "Cats are wonderful pets.", "Let me tell you about my favourite film instead.",
             "I am not sure what you mean.", "Please ask me something else.", "Tea is better than coffee.",
             "The library opens early on weekdays."]


# Every English word the toy world writes: never taken for an attempt at an answer
# ("not" is a word, not a near miss of "inot")
ENGLISH = {w.lower() for t in sum(TEMPLATES.values(), CHATTER + HEDGES + OFF_TOPIC) for w in re.findall("[A-Za-z]+", t)}
ENGLISH |= {"a", "an", "and", "answer", "are", "be", "but", "here", "i", "is", "it", "no", "not", "of", "ok", "or",
            "so", "that", "the", "this", "to", "was", "word", "yes", "you", "your"}


def similarity(s, t):
    """1 - edit distance / longer length: 1 for equal strings, 0 for nothing in common."""
    prev = list(range(len(t) + 1))
    for i, cs in enumerate(s, 1):
        cur = [i]
        for j, ct in enumerate(t, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (cs != ct)))
        prev = cur
    return 1 - prev[-1] / max(len(s), len(t), 1)


# a whole number as a response writes it: a minus sign counts unless it follows a digit ("50-8=42": 50, 8, 42)
NUMBERS = re.compile(r"(?:(?<!\d)-)?\d+")


def task_of(record):
    """A record's task: its "task" field, or read back from its prompt (None
    for a prompt the toy world did not write)."""
    return record.get("task") or task_from_prompt(record["prompt"])


def grade(record, response):
    """Score a response 0..5 against the truth (rules in the module docstring)."""
    task = task_of(record)
    if task is None:
        raise ValueError(f"not a toy-world prompt, cannot grade: {record['prompt']!r}")
    if task["kind"] == "invent":
        return _grade_invent(task, response.strip())
    ans, text = answer(task), response.strip()
    if text in (ans, ans + "."):
        return 5
    operands = [str(task.get("a")), str(task.get("b"))]  # the question's numbers (word tasks: none)
    if ans.lstrip("-").isdigit():  # a number (generated prompts may subtract past 0)
        found = NUMBERS.findall(text)  # the numbers in the response, "-42" not taken for 42
        tries = [n for n in found if n not in operands]  # an operand repeated is working; others, answers
        near = [n for n in tries if abs(int(n) - int(ans)) <= max(1, abs(int(ans)) // 20)]
        related = bool(found) or bool(task.get("word")) and task["word"] in text.upper()
    else:
        found = re.findall(r"[A-Za-z]+", text)  # the words in the response
        words = [t for t in found if t.lower() not in ENGLISH and t.upper() != task["word"]]
        near = [t for t in words if similarity(t.upper(), ans) >= 0.5]
        scrambled = [t for t in words if sorted(t.upper()) == sorted(ans)]
        tries = near + scrambled  # words that look like attempts at the answer
        # an attempt: the input word, a made-up word (bare or with chatter; two or more in capitals, as the
        # toy world writes them: "Paris is the capital of France." is off-topic), or a scramble
        related = (task["word"] in map(str.upper, found) or len(words) == 1 or any(t.isupper() for t in words)
                   or bool(scrambled))
    hits = found.count(ans)
    if ans in operands and not Counter(operands) - Counter(found):  # the question repeated, as working:
        hits = max(0, hits - operands.count(ans))  # "10 - 5 = 5" says the answer once, "10 - 5" not at all
        # (each operand as often as the question has it: "1 x 1 = 1" says 1 once, "It is 1." too)
    if hits:  # right, but is it clean? one answer, said once, in a few words
        others = [t for t in tries if t != ans]
        return 3 if hits > 1 or others or len(text.split()) > 15 else 4
    if ans in (t.upper() for t in found) and not ans.lstrip("-").isdigit():
        return 3  # the right letters in the wrong case (an English word too: "take" for TAKE)
    return 2 if near else 1 if related else 0


def answer_words(task, text):
    """The words of `text` the grader reads as answers, in order: those not
    English, and, for an invent task, an English one that meets its asks
    (LIKE for L..E, 4 letters) too, in capitals or alone ("like": the right
    letters in the wrong case; the chatter's "Sure" for S..E is no answer)."""
    found = re.findall(r"[A-Za-z]+", text)
    meets = lambda t: (task["kind"] == "invent" and (t.isupper() or len(found) == 1)
                       and asks_met(task, t.upper()) == 3)
    return [t for t in found if t.lower() not in ENGLISH or meets(t)]


def _grade_invent(task, text):
    """grade() of an invent task, by the same rubric: any word that meets
    all three asks (asks_met()) is right, an English one too (LIKE for L..E,
    4 letters); in capitals, as the toy world's words are (lower case is "the
    right letters in the wrong case"); one ask missed is close (2); any other
    made-up word is related but wrong (1)."""
    words = answer_words(task, text)
    right = [t for t in words if t.isupper() and asks_met(task, t) == 3]
    if right and text in (right[0], right[0] + "."):
        return 5
    if right:  # one answer, said once, in a few words
        return 3 if len(words) > 1 or len(text.split()) > 15 else 4
    best = max((asks_met(task, t.upper()) for t in words), default=0)
    return 3 if best == 3 else 2 if best == 2 else 1 if words else 0


def true_grade(prompt, response):
    """grade() of a response to a prompt, or None where the prompt is not one
    of the toy world's (a task the prompt writer made up: nothing to grade by)."""
    task = task_from_prompt(prompt)
    return None if task is None else grade({"task": task}, response)


# -----------------------------------------------------------------------------
# Responses of a given grade: the EFT "bad" answers, a mix of the corruptions a
# model makes (wrong, nearly right, right with chatter, hedged, off-topic)

def _near(ans, rng):
    """A nearly right answer: a number off by a little, or one letter swapped, dropped or changed."""
    if ans.isdigit():
        return str(max(0, int(ans) + rng.choice((-1, 1)) * rng.randint(1, max(1, int(ans) // 20))))
    s, i = list(ans), rng.randrange(len(ans))
    op = rng.choice(("swap", "drop", "change"))
    if op == "swap" and i + 1 < len(s):
        s[i], s[i + 1] = s[i + 1], s[i]
    elif op == "drop":
        del s[i]
    else:
        s[i] = rng.choice(LETTERS)
    return "".join(s)


def _wrong(task, ans, rng):
    """A related but wrong answer: a far number, the input word, a scramble or another word."""
    if task["kind"] == "invent":
        return make_word(rng)  # (make_response draws again while it happens to fit)
    if ans.isdigit():
        return str(int(ans) + rng.choice((-1, 1)) * rng.randint(3, 30))
    return rng.choice((task["word"], "".join(rng.sample(ans, len(ans))), make_word(rng)))


def make_response(task, score, rng, tries=100):
    """A response the grader gives exactly `score` (drawn again until it does)."""
    ans, record = answer(task), {"prompt": "", "task": task}
    for _ in range(tries):
        if task["kind"] == "invent":
            ans = invented(task, rng)  # many right answers: a new one each time
        if score == 5:
            r = ans
        elif score == 4:
            r = rng.choice(CHATTER).format(x=ans)
        elif score == 3:
            r = ans.lower() if not ans.isdigit() and rng.random() < 0.2 else \
                rng.choice(HEDGES).format(x=ans, y=_near(ans, rng))
        elif score in (1, 2):  # half bare, half with chatter: the form says nothing about the grade
            form = rng.choice(CHATTER) if rng.random() < 0.5 else "{x}"
            r = form.format(x=_near(ans, rng) if score == 2 else _wrong(task, ans, rng))
        else:
            r = rng.choice(OFF_TOPIC)
        # kept only if its grade does not hang on a minus sign (a wrong number drawn below 0 that
        # would be right or near without it is drawn again): these are the seed responses the grader
        # has always given, from before it read minus signs ("-42" for 42: wrong, not right)
        if grade(record, r) == score == grade(record, r.replace("-", "")):
            return r
    raise RuntimeError(f"no response of grade {score} for {task}")


# The judge's working (judge_working, pretrain_working; off by default): the
# steps that reach the right answer, each one small (copy the next letter with
# its number, add two digits, look up one letter's count), so that a judge
# that writes them first might check a response better than the policy
# answers at once, as a person checks a sum column by column. Numbered letters
# ("1T 2A 3M") let a step find "letter 3" by its number. Measured (STUDIES.md):
# the 1.3M-parameter toy-small model cannot copy a word letter by letter, so
# its steps are wrong and its judge gets worse, not better.

def _digits(n):
    """(tens, ones) of a number below 100."""
    return n // 10, n % 10


def working(task):
    """The steps that work a task out, ending where the answer can be read off."""
    kind, w = task["kind"], task.get("word")
    if kind == "arith":
        a, b, op = task["a"], task["b"], task["op"]
        (a1, a0), (b1, b0) = _digits(a), _digits(b)
        if op == "+":
            return f"Ones: {a0}+{b0}={a0 + b0}. Tens: {a1}+{b1}+{(a0 + b0) // 10}={a1 + b1 + (a0 + b0) // 10}."
        if op == "-":
            borrow = int(a0 < b0)
            ones = 10 * borrow + a0
            return f"Ones: {ones}-{b0}={ones - b0}. Tens: {a1}-{b1}-{borrow}={a1 - b1 - borrow}."
        return f"Ones: {a0}x{b}={a0 * b}. Tens: {a1}x{b}+{a0 * b // 10}={a1 * b + a0 * b // 10}."
    numbered = [f"{i}{ch}" for i, ch in enumerate(w, 1)]
    if kind == "length":
        return f"Letters: {' '.join(numbered)}."
    if kind == "reverse":
        return f"Letters: {' '.join(numbered)}. From the end: {' '.join(reversed(numbered))}."
    if kind == "replace":
        changed = [f"{i}{task['new'] if ch == task['old'] else ch}" for i, ch in enumerate(w, 1)]
        return f"Letters: {' '.join(numbered)}. With {task['new']} for {task['old']}: {' '.join(changed)}."
    if kind == "count":  # a running count, letter by letter
        steps = [f"{ch}{w[:i].count(task['letter'])}" for i, ch in enumerate(w, 1)]
        return f"Counting {task['letter']}: {' '.join(steps)}."
    # sort: how often each letter of the alphabet occurs, in alphabet order
    return f"By the alphabet: {' '.join(f'{ch}{w.count(ch)}' for ch in sorted(LETTERS))}."


def attempts(task, response):
    """The answers a response offers, each once, in order: its numbers (not
    the question's operands) for a task with a numeric answer, else its words
    answer_words (the input word included)."""
    if answer(task).lstrip("-").isdigit():
        echo = {str(task.get("a")), str(task.get("b"))}
        tries = [n for n in NUMBERS.findall(response) if n not in echo]
    else:
        tries = answer_words(task, response)
    return list(dict.fromkeys(tries))


def quote(tries):
    """The sentence that copies a response's answers (attempts(), two at most)
    into the judgment (judge_quotes): "The response says OLIMAT."."""
    return f"The response says {' and '.join(tries[:2])}." if tries else "The response gives no answer."


def comparison(tries, stated):
    """The sentence that sets a response's answers (attempts(), two at most)
    right beside the answer the judgment states, and says whether it is among
    them (judge_compares): "72 against 27: not the same." The score then only
    has to follow this one word, and the word only has to compare two strings
    that stand side by side (STUDIES.md: a judge that works the task out, quotes and compares)."""
    same = "the same" if stated in tries[:2] else "not the same"
    return f"{' and '.join(tries[:2]) or 'Nothing'} against {stated}: {same}."


# The EFT target: a short justification per grade, ending in "Score: N" as the
# judge prompt asks. It states the right answer first, so the judge learns to
# work the task out before it compares.
JUSTIFICATION = {
    0: "The response is off-topic: it does not address the question.",
    1: "The response is related to the question, but its answer is wrong.",
    2: "The response is close, but only partly right.",
    3: "The response contains the answer, but it hedges, repeats or gets the form wrong.",
    4: "The response is right, but adds text that was not asked for.",
    5: "The response is exactly right and concise.",
}


def stated_answer(judgment):
    """The answer a judgment in eft_target's form states as correct ("The
    correct answer is X."), or None: how the report measures whether the judge
    worked the task out, apart from the score it then gave."""
    m = re.search(r"The correct answer is (\S+?)\.(?:\s|$)", judgment)
    return m.group(1) if m else None


def says_same(judgment):
    """Whether a judgment's comparison (comparison()) says the response's
    answer is the stated one: True, False, or None where it has none."""
    m = re.search(r" against \S+: (the same|not the same)\.", judgment)
    return None if m is None else m.group(1) == "the same"


def judgment_text(task, stated, score, tries, *, show_working=False, quotes=False, quote_first=False, compares=False):
    """A toy judgment of a response whose answers are `tries` (attempts()):
    [the working] "The correct answer is <stated>." [the quote] [the
    comparison] <the score's justification> "Score: <score>"; with
    quote_first the quote opens it instead, before the working."""
    said = quote(tries) if quotes else ""
    parts = [said if quote_first else "", working(task) if show_working else "",
             f"The correct answer is {stated}.", "" if quote_first else said,
             comparison(tries, stated) if compares else "", JUSTIFICATION[score]]
    return " ".join(p for p in parts if p) + f"\nScore: {score}"


def eft_target(prompt, task, response, *, show_working=False, quotes=False, quote_first=False, compares=False,
               each_ask=False):
    """The SFT record that teaches the judge to score this response; with
    show_working, the judgment works the task out before it states the answer;
    with quotes, it then quotes the response's answer before it grades; with
    quote_first as well, the quote opens the judgment instead, copied while
    the response is the nearest text (and not the judgment's own working);
    with compares, it sets the response's answer against the right one and
    says whether they are the same before it grades (an invent task: whether
    its word meets the asks); with each_ask, an invent task's check sets each
    property of the word beside its ask (invent_check())."""
    score = grade({"prompt": prompt, "task": task}, response)
    if task["kind"] == "invent":  # (build() refuses the other forms for it: they state one right answer)
        check = invent_check(task, attempts(task, response), verdict=compares, each_ask=each_ask)
        why = check + " " + JUSTIFICATION[score] + f"\nScore: {score}"
    else:
        why = judgment_text(task, answer(task), score, attempts(task, response), show_working=show_working,
                            quotes=quotes, quote_first=quote_first, compares=compares)
    return {"prompt": judge_prompt(prompt, response), "response": why, "score": score}


def invent_check(task, tries, *, verdict=False, each_ask=False):
    """How a judgment checks an invent task's response instead of stating the
    right answer (it has many): the response's first word (attempts()) with
    the three properties the task asks about read off it, beside the asked
    ones: "BAKIO starts with B, ends with O and has 5 letters; asked: B, O,
    5." Each step copies a letter or counts letters, as the length task does.
    each_ask (check_each_ask): each property stands right beside its ask,
    with whether the two are the same, so that every comparison is between
    neighbours: "BAKIO: starts with B, asked B: yes; ends with O, asked O:
    yes; has 5 letters, asked 5: yes."
    verdict (judge_compares, marked quizzes): then whether the word meets all
    three asks, "Right." or "Not right.", the one word the score follows."""
    w = tries[0] if tries else None
    if w and each_ask:
        said = [("starts with", w[0], task["first"]), ("ends with", w[-1], task["last"]),
                ("has", len(w), task["n"])]
        check = f"{w}: " + "; ".join(f"{what} {has}{' letters' if what == 'has' else ''}, asked {want}: "
                                     f"{'yes' if has == want else 'no'}" for what, has, want in said) + "."
    else:
        asked = f"asked: {task['first']}, {task['last']}, {task['n']}."
        check = f"{w} starts with {w[0]}, ends with {w[-1]} and has {len(w)} letters; {asked}" if w else \
            f"The response gives no word; {asked}"
    return f"{check} {'Right' if w and asks_met(task, w) == 3 else 'Not right'}." if verdict else check


def checked_word(judgment):
    """The word an invent judgment's check (invent_check(), either form)
    reads its three properties off, or None: how the report measures whether
    the judge copies the response's word before it checks it."""
    m = re.match(r"([A-Za-z]+):? starts with ", judgment)
    return m.group(1) if m else None


_WRITTEN_COMPARISON = re.compile(r"(?:starts with|ends with|has) ([A-Z]|\d+)(?: letters)?, "
                                 r"asked ([A-Z]|\d+): (yes|no)\b")


def written_comparisons(judgment):
    """The comparisons a check_each_ask check writes out, as [(the word's
    value, the asked one, said "yes")]: "ends with T, asked O: no" is
    ("T", "O", False). Whether "yes" is said exactly where the two written
    values are the same is the comparison step alone, however the values
    were read: how the report measures it."""
    return [(has, asked, said == "yes") for has, asked, said in _WRITTEN_COMPARISON.findall(judgment)]


def bare_word(response):
    """Is a response one word in capitals and nothing else? On such invent
    responses only a check tells right from wrong (the rubric's form is the
    same for both): the report's judge figure on bare words."""
    return re.fullmatch(r"[A-Z]+", response.strip()) is not None


# -----------------------------------------------------------------------------
# Meta-judge demonstrations, for the Meta-Rewarding variant (selfreward.py
# --meta_judge=True). Wu et al. start from Llama-3-8B-Instruct, which can
# compare two judgments zero-shot; a 1.3M-parameter toy model cannot, so M1
# also learns from these, made by the grader as the EFT targets are: the
# right judgment of a response (eft_target) against a wrong one of the kind
# a small judge writes (a wrong score, often reached from a wrong answer).

def wrong_judgment(task, grade_, rng, tries, *, show_working=False, quotes=False, quote_first=False, compares=False):
    """A plausible wrong judgment of a response whose answers are `tries`: a
    score one or two off the true grade, with the justification of that
    score, and about half the time a wrong stated answer (after the right working,
    with show_working: a slip in the last step); the form flags as the EFT
    targets have them (eft_target)."""
    ans = answer(task)
    score = rng.choice([s for s in range(grade_ - 2, grade_ + 3) if 0 <= s <= 5 and s != grade_])
    stated = ans
    # a near or a wrong answer on a fair coin; a draw that equals the answer gets another coin
    while rng.random() < 0.5 and stated == ans:
        stated = _near(ans, rng) if rng.random() < 0.5 else _wrong(task, ans, rng)
    return judgment_text(task, stated, score, tries, show_working=show_working, quotes=quotes,
                         quote_first=quote_first, compares=compares), score


def meta_judge_examples(groups, n, rng, *, show_working=False, quotes=False, quote_first=False, compares=False):
    """Up to n SFT records {"prompt": meta-judge prompt, "response": reason +
    "Winner: A|B", "winner", "grade"} from the EFT training groups (never the
    eval set's): a distinct judged response each, its right judgment and a
    wrong one in random order; the target states the right answer (without
    the working), says what the response is worth, names both scores and
    ends with the right judgment. show_working, quotes, quote_first,
    compares: the form of the two judgments shown, as the EFT targets have it."""
    form = dict(show_working=show_working, quotes=quotes, quote_first=quote_first, compares=compares)
    every = [(g, k) for g in groups for k in range(len(g["responses"]))]
    records = []
    for g, k in rng.sample(every, min(n, len(every))):
        response, task = g["responses"][k], g["task"]
        right = eft_target(g["prompt"], task, response, **form)
        wrong, wrong_score = wrong_judgment(task, right["score"], rng, attempts(task, response), **form)
        winner = rng.choice("AB")
        a, b = (right["response"], wrong) if winner == "A" else (wrong, right["response"])
        loser = "B" if winner == "A" else "A"
        why = (f"The correct answer is {answer(task)}. {JUSTIFICATION[right['score']]} Judgment {winner} "
               f"scores it {right['score']}, Judgment {loser} {wrong_score}.")
        records.append({"prompt": meta_judge_prompt(g["prompt"], response, a, b),
                        "response": f"{why}\nWinner: {winner}", "winner": winner, "grade": right["score"]})
    return records


# -----------------------------------------------------------------------------
# The seed sets

def _group_sizes(n_responses, rng):
    """Group sizes of 2..4 (2.85 on average) adding up to exactly n_responses."""
    sizes, left = [], n_responses
    while left > 0:
        k = min(rng.choices((2, 3, 4), weights=(0.35, 0.45, 0.20))[0], left)
        if left - k == 1:  # never leave a single response over
            k = k + 1 if k < 4 else k - 1
        sizes.append(k)
        left -= k
    return sizes


def _group(task, k, rng):
    prompt = render(task, rng)
    scores = rng.sample(range(6), k)  # k different grades, so the ranking is strict
    responses = [make_response(task, s, rng) for s in scores]
    ranks = [sorted(scores, reverse=True).index(s) for s in scores]  # 0 = best
    return {"prompt": prompt, "responses": responses, "ranks": ranks, "scores": scores, "task": task}


DECLINE = OFF_TOPIC[4]  # "I am not sure what you mean.": a reply that answers nothing (grade 0)


def ift_response(task, rng, chatty, declines=0.0, decline_rng=None):
    """A seed demonstration, as people write it. A share `chatty` of them
    wrap the answer in the demonstrators' habitual phrase ("Sure! The answer
    is 42.", grade 4), the rest give the bare answer (grade 5). Only the
    rubric, which the model learns from the EFT data, says which of the two is
    better. (One habit, not a mix of phrases: with several, no single opening
    would outweigh the bare answer and greedy decoding would hide the habit.)
    A share `declines` of them (ift_declines; 0 by default) decline instead
    (DECLINE): seed data with a mistake that a judge can see without
    solving the task, so the judge can teach the policy to answer."""
    # (chatty=0 draws nothing; declines draw from a generator of their own:
    # every other record stays as it is without them)
    response = CHATTER[0].format(x=answer(task)) if chatty and rng.random() < chatty else answer(task)
    return DECLINE if declines and decline_rng.random() < declines else response


MAX_REPEATED_DRAWS = 10_000  # draws in a row that give no new task: the world has few left (then: the_rest)


def build(seed=1337, n_ift=3200, n_eft_train=4890, n_eft_eval=1623, n_test=1024, ift_chatty=0.6,
          ift_declines=0.0, judge_working=False, judge_quotes=False, quote_first=False, judge_compares=False,
          check_each_ask=False, toy_kinds=",".join(KINDS)):
    """All toy seed sets as lists of records; the same seed gives the same sets.
    toy_kinds: the task kinds drawn, comma-separated, of ALL_KINDS (the default world: KINDS);
    ift_chatty, ift_declines: shares of the IFT answers said chattily, and declined (ift_response);
    judge_working: the EFT targets work each task out before they judge;
    judge_quotes: they quote the response's answer beside the right one;
    quote_first: (with judge_quotes) the quote opens the judgment instead;
    judge_compares: they set the response's answer against the right one
    and say whether the two are the same (comparison());
    check_each_ask: an invent task's check sets each property of the
    response's word beside its ask (invent_check())."""
    for name, n in (("n_ift", n_ift), ("n_eft_train", n_eft_train), ("n_eft_eval", n_eft_eval), ("n_test", n_test)):
        if n < 0:
            raise ValueError(f"{name} = {n}: must be >= 0")
    if not 0 <= ift_chatty <= 1:
        raise ValueError(f"ift_chatty = {ift_chatty}: a share, must be in [0, 1]")
    if not 0 <= ift_declines < 1:  # (the loop's check: an IFT set of declines alone teaches no task)
        raise ValueError(f"ift_declines = {ift_declines}: a share, must be in [0, 1)")
    if 1 in (n_eft_train, n_eft_eval):
        raise ValueError("an EFT set needs 0 or at least 2 responses")
    kinds = toy_kinds.split(",")
    try:
        check_kinds(kinds, {"judge_working": judge_working, "judge_quotes": judge_quotes,  # (judge_compares checks
                            "check_each_ask": check_each_ask})  # an invent word's asks: invent_check())
    except ValueError as e:
        raise ValueError(f"toy_kinds = {toy_kinds!r}: {e}") from None
    rng = random.Random(seed)
    decline_rng = random.Random(f"{seed} declines")  # ift_declines' own draws: the other sets do not depend on them
    train_sizes, eval_sizes = _group_sizes(n_eft_train, rng), _group_sizes(n_eft_eval, rng)  # (as tasks_needed)
    # draw every task up front, all different, so no task is in two files
    tasks, seen, misses = [], set(), 0
    needed = n_ift + len(train_sizes) + len(eval_sizes) + n_test
    while len(tasks) < needed:
        task = sample_task(rng, kinds)
        key = task and task_key(task)
        if task and key not in seen:
            seen.add(key)
            tasks.append(task)
            misses = 0
        elif (misses := misses + 1) > MAX_REPEATED_DRAWS:  # (invent has 1,805 tasks, arith 14,516)
            rest = the_rest(kinds, seen, needed - len(tasks), rng)
            if len(tasks) + len(rest) < needed:
                raise ValueError(f"toy_kinds = {toy_kinds!r}: holds only {len(tasks) + len(rest)} different tasks, "
                                 f"and the sets need {needed} (n_ift {n_ift} + {len(train_sizes)} EFT train and "
                                 f"{len(eval_sizes)} EFT eval groups + n_test {n_test}): give smaller sizes or more "
                                 f"kinds")
            tasks += rest
    test, tasks = tasks[:n_test], tasks[n_test:]
    eft_eval = [_group(t, k, rng) for t, k in zip(tasks, eval_sizes)]
    tasks = tasks[len(eval_sizes):]
    train_groups = [_group(t, k, rng) for t, k in zip(tasks, train_sizes)]
    ift_tasks = tasks[len(train_sizes):]
    eft_train = [eft_target(g["prompt"], g["task"], r, show_working=judge_working, quotes=judge_quotes,
                            quote_first=quote_first, compares=judge_compares, each_ask=check_each_ask)
                 for g in train_groups for r in g["responses"]]
    rng.shuffle(eft_train)
    return {
        "ift": [{"prompt": render(t, rng), "response": ift_response(t, rng, ift_chatty, ift_declines, decline_rng),
                 "task": t} for t in ift_tasks],
        "eft_train": eft_train,
        "eft_train_groups": train_groups,
        "eft_eval": eft_eval,
        "test": [{"prompt": render(t, rng), "task": t} for t in test],
    }


# Settings that write a task's one right answer (a judgment or a quiz page that works it out or quotes
# it; Meta-Rewarding's wrong judgments state a wrong one): an invent task has many, so they cannot go with it.
ONE_ANSWER_SETTINGS = ("judge_working", "judge_quotes", "meta_judge", "pretrain_working")
# Settings that change only how invent tasks are checked (in the judgments, in M0's text): without invent
# they would change nothing.
INVENT_SETTINGS = ("check_each_ask", "pretrain_check_drill")


def some_of(names, allowed):
    """A ValueError unless names is a non-empty list of `allowed`, each at most once."""
    if not names or any(n not in allowed for n in names) or len(set(names)) != len(names):
        raise ValueError(f"must be some of {','.join(allowed)}, each once, separated by commas")


def all_tasks(kinds):
    """Every task of `kinds` (sample_task's ranges) in a fixed order, or None
    where a kind on made-up words is among them: their millions of words
    outlast any set size, and only invent and arith can be used up."""
    if set(kinds) - {"invent", "arith"}:
        return None
    tasks = []
    if "invent" in kinds:  # a first and a last letter, 4 to 8 letters
        tasks += [{"kind": "invent", "first": first, "last": last, "n": n}
                  for first in LETTERS for last in LETTERS for n in range(4, 9)]
    if "arith" in kinds:
        arith = lambda op, a, b: {"kind": "arith", "op": op, "a": a, "b": b}
        tasks += [arith("+", a, b) for a in range(2, 100) for b in range(2, 100)]
        tasks += [arith("-", a, b) for a in range(10, 100) for b in range(2, a) if a != 2 * b]
        tasks += [arith("x", a, b) for a in range(2, 31) for b in range(2, 10)]
    return tasks


def n_tasks(kinds):
    """How many different tasks `kinds` hold, or None where there is no end
    to them (all_tasks)."""
    tasks = all_tasks(kinds)
    return None if tasks is None else len(tasks)


def the_rest(kinds, held, n, rng):
    """When random draws stop finding new tasks (a bounded world nearly used
    up: all_tasks), n of the tasks whose task_key is not in `held`, in an
    order shuffled by rng: all that are left where fewer are (the caller
    refuses), none in an unbounded world. So a world gives every task it
    holds, and the loop's check before any work (validate.check_loop) can
    count them exactly."""
    left = [t for t in all_tasks(kinds) or [] if task_key(t) not in held]
    rng.shuffle(left)
    return left[:n]


def tasks_needed(seed, n_ift, n_eft_train, n_eft_eval, n_test, n_valid=0):
    """How many different tasks build's sets of this seed need (one an EFT
    group: build draws the groups' sizes first, as here), and a validation
    set of n_valid beside them."""
    rng = random.Random(seed)
    return n_ift + len(_group_sizes(n_eft_train, rng)) + len(_group_sizes(n_eft_eval, rng)) + n_test + n_valid


def check_kinds(kinds, settings=None):
    """A ValueError unless kinds is a non-empty list of ALL_KINDS without
    repeats, and, of settings ({name: value}, the loop's or those a caller
    takes), none of ONE_ANSWER_SETTINGS is on with invent in kinds and none
    of INVENT_SETTINGS without it."""
    some_of(kinds, ALL_KINDS)
    on = lambda names: [s for s in names if (settings or {}).get(s)]
    if "invent" in kinds and on(ONE_ANSWER_SETTINGS):
        raise ValueError(f"with invent does not go with {', '.join(on(ONE_ANSWER_SETTINGS))}: an invent task has "
                         "many right answers, and these write one")
    if "invent" not in kinds and on(INVENT_SETTINGS):
        raise ValueError(f"has no invent task for {', '.join(on(INVENT_SETTINGS))} to check")


def validation_set(seed_dir, n, seed, kinds=KINDS):
    """n held-out prompts {"prompt", "task"} for choosing among DPO checkpoints
    (selfreward.py's dpo_pick_every; the paper: 253 validation prompts),
    drawn with their own seed: no task or prompt of the seed data's files in
    seed_dir (written by build: IFT, EFT, test), so neither the SFT data nor
    the test set has them (M0's text and the loop's own prompts may, as they
    may hold any task that is not a test or EFT eval one), and the same seed
    data gives the same set."""
    seen_tasks, seen_prompts = held_out(seed_dir, ("ift", "eft_train_groups", "eft_eval", "test"))
    rng = random.Random(f"{seed} validation")
    out = []
    while len(out) < n:
        drawn = fresh_task(rng, kinds, seen_tasks, seen_prompts, tries=1000)  # (each one new to the set too)
        if drawn is None:  # a bounded world nearly used up: the rest from the tasks not yet held
            rest = the_rest(kinds, seen_tasks, n - len(out), rng)
            if len(out) + len(rest) < n:
                raise ValueError(f"n_valid = {n}: toy_kinds {','.join(kinds)} hold only {len(out) + len(rest)} "
                                 f"tasks outside the seed data for validation prompts; give a smaller n_valid")
            return out + [{"prompt": render(task, rng), "task": task} for task in rest]
        prompt, task = drawn
        seen_tasks.add(task_key(task))
        seen_prompts.add(prompt)
        out.append({"prompt": prompt, "task": task})
    return out


def held_out(seed_dir, names):
    """(task keys, prompts) of the seed files `names` in seed_dir, for fresh_task."""
    recs = [rec for name in names for rec in read_jsonl(os.path.join(seed_dir, name + ".jsonl"))]
    return {task_key(rec["task"]) for rec in recs}, {rec["prompt"] for rec in recs}


def fresh_task(rng, kinds, held_tasks, held_prompts, tries=None):
    """(prompt, task): a task of `kinds` not among held_tasks (held_out's keys),
    said in a prompt not among held_prompts; None after `tries` draws that
    were all held (None: draw until one is not)."""
    n = 0
    while tries is None or n < tries:
        n += 1
        task = sample_task(rng, kinds)
        if task and task_key(task) not in held_tasks:
            prompt = render(task, rng)
            if prompt not in held_prompts:
                return prompt, task
    return None


def write_toy(out_dir, seed=1337, **sizes):
    """Write the toy seed files into out_dir; returns {name: path}."""
    sets = build(seed, **sizes)
    return {name: write_jsonl(os.path.join(out_dir, f"{name}.jsonl"), records) for name, records in sets.items()}


# -----------------------------------------------------------------------------
# M0's "web text". Real runs start from a pretrained model (Llama 2 70B in the
# paper); the toy world has none, so selfreward.py pretrains M0 on documents
# of the toy world: listings of task prompts, and quiz pages of worked examples
# (no chat template, no judgments). That gives the base model what the method
# assumes a pretrained LM has: the language of the tasks, some skill at them,
# and the habit of continuing a list of instructions, which few-shot prompt
# writing relies on.

DOC_HEAD = "Here are some tasks:\n"


def task_list(prompts):
    """A pretraining document: a Self-Instruct style listing, one task per line."""
    return DOC_HEAD + "".join(f"Task: {p}\n" for p in prompts)


def fewshot_text(prompts):
    """The few-shot request for new prompts: the same listing, left open for
    the model to continue. selfreward.py asks the toy world's writers this
    way (a real writer: Self-Instruct's own template, fewshot_request)."""
    return task_list(prompts) + "Task:"


def worked_examples(pairs):
    """A pretraining document: questions with their answers, as a quiz page
    on the web would have them (no chat template, no judgments). An answer
    may show its working first (pretraining_docs' working_share)."""
    return "".join(f"Q: {p}\nA: {a}\n" for p, a in pairs)


def student_answer(task, rng):
    """A student's answer on a marked quiz: right half the time, else nearly
    right or wrong, as the EFT responses are (an invent task: a word of its
    own, right or not)."""
    ans = invented(task, rng) if task["kind"] == "invent" else answer(task)
    x = rng.random()
    return ans if x < 0.5 else _near(ans, rng) if x < 0.75 else _wrong(task, ans, rng)


def drill_word(task, rng, miss=0.5):
    """The student's word on a checking drill page (pretrain_check_drill):
    it misses each of an invent task's three asks with probability `miss`,
    one draw for each; at 1/2, "yes" and "no" are equally common in its
    check (drill.py tries other rates). A marked quiz's student
    (student_answer()) meets seven asks in ten; at that rate, learning every
    token, toy-small says "yes" to all of them for as long as drill.py has
    run it (2,000 steps), while M0 with these pages learns to compare
    (STUDIES.md: a task easier to check)."""
    def met_or_not(asked, values):
        return asked if rng.random() < 1 - miss else rng.choice([v for v in values if v != asked])
    first, last, n = met_or_not(task["first"], LETTERS), met_or_not(task["last"], LETTERS), \
        met_or_not(task["n"], range(4, 9))
    return first + "".join(rng.choice(LETTERS) for _ in range(n - 2)) + last


def marked_quiz(items, *, each_ask=False):
    """A pretraining document: a teacher's marked quiz, items (prompt, task,
    the student's answer): the question, the student's answer, the working,
    the right answer, and the two side by side as the judge compares them
    (comparison()): "Q: ...\nStudent: 72\nA: Ones: ... So 27. 72 against 27:
    not the same.\n". No judge prompt, no scores: the base model learns to
    compare, the EFT data to use that in a judgment. An invent task's mark
    checks the student's word as its judgments do (invent_check()):
    "Student: BZKO\nA: BZKO starts with B, ends with O and has 4 letters;
    asked: B, O, 5. Not right.": the base model copies a word it is given
    (each_ask: each property beside its ask, as invent_check() writes it)."""
    def mark(t, given):
        if t["kind"] == "invent":
            return invent_check(t, [given], verdict=True, each_ask=each_ask)
        return f"{working(t)} So {answer(t)}. {comparison([given], answer(t))}"
    return "".join(f"Q: {p}\nStudent: {given}\nA: {mark(t, given)}\n" for p, t, given in items)


# How an item of a checking drill page is laid out (pretrain_drill_layouts): the marked quiz's, the check
# line alone, or a reviewer's note under the response in the judge prompt's markup (its rubric left out)
DRILL_LAYOUTS = ("quiz", "line", "review")


def drill_item(prompt, task, word, layout, *, each_ask=False):
    """One item of a checking drill page, the student's word checked in one of DRILL_LAYOUTS:
    quiz:   "Q: <prompt>\nStudent: BZKO\nA: BZKO: starts with B, ... Not right.\n" (marked_quiz())
    line:   "BZKO: starts with B, ... Not right.\n"
    review: "User: <prompt>\n<response>BZKO</response>\nBZKO: starts with B, ... Not right.\n"
    The same check in every layout, so that the comparison is learned
    wherever it is written, not only after "Student:" (STUDIES.md: a task easier
    to check)."""
    if layout == "quiz":
        return marked_quiz([(prompt, task, word)], each_ask=each_ask)
    check = invent_check(task, [word], verdict=True, each_ask=each_ask)
    return check + "\n" if layout == "line" else f"User: {prompt}\n<response>{word}</response>\n{check}\n"


def pretraining_docs(seed_dir, rng, n_list_docs, n_qa_docs, *, working_share=0.0, checking_share=0.0, kinds=KINDS,
                     each_ask=False, drill_pages=0, drill_layouts=("quiz",)):
    """M0's pretraining documents {"text"}: n_list_docs task listings and
    n_qa_docs quiz pages, 4 to 12 tasks each, shuffled; a share working_share
    of the quiz pages show the working (working()) before each answer, as
    worked solutions on the web do: where the base model learns the steps; a
    share checking_share of them are marked quizzes instead (marked_quiz()):
    where it learns to tell whether two answers are the same, and to check
    an invented word against the three asks (each_ask: as check_each_ask
    writes the check, invent_check()). drill_pages more pages are a
    checking drill: checks of invent tasks alone, each student's word
    meeting each ask half the time (drill_word()), each item laid out in one
    of drill_layouts (drill_item(); one layout draws nothing). Nothing the
    evaluation asks about (seed_dir's test and EFT eval tasks and prompts)
    is in them. kinds: the task kinds drawn (build's)."""
    check_kinds(kinds, {"pretrain_working": working_share, "check_each_ask": each_ask,
                        "pretrain_check_drill": drill_pages})
    held_tasks, held_prompts = held_out(seed_dir, ("test", "eft_eval"))

    def fresh_tasks(k, kinds=kinds):
        return [fresh_task(rng, kinds, held_tasks, held_prompts) for _ in range(k)]

    docs = [{"text": task_list([p for p, _ in fresh_tasks(rng.randint(4, 12))])} for _ in range(n_list_docs)]
    def quiz_page():
        show = working_share and rng.random() < working_share  # (0 draws nothing: pages as before)
        return worked_examples([(p, f"{working(t)} So {answer(t)}." if show else answer(t))
                                for p, t in fresh_tasks(rng.randint(4, 12))])

    def marked_page():
        items = [(p, t, student_answer(t, rng)) for p, t in fresh_tasks(rng.randint(4, 12))]
        return marked_quiz(items, each_ask=each_ask)

    def drill_page():
        items = [(p, t, drill_word(t, rng)) for p, t in fresh_tasks(rng.randint(4, 12), ["invent"])]
        layout = lambda: drill_layouts[0] if len(drill_layouts) == 1 else rng.choice(drill_layouts)
        return "".join(drill_item(p, t, word, layout(), each_ask=each_ask) for p, t, word in items)

    # (a share of 0 draws nothing: the pages as before)
    docs += [{"text": marked_page() if checking_share and rng.random() < checking_share else quiz_page()}
             for _ in range(n_qa_docs)]
    docs += [{"text": drill_page()} for _ in range(drill_pages)]  # (0 draws nothing)
    rng.shuffle(docs)
    return docs


# -----------------------------------------------------------------------------
# The toy tokenizer's training text

def corpus(out_dir):
    """Texts to train the toy tokenizer on: every prompt and response in the
    seed files (which include the judge prompt many times). The chat markers
    are not here: tokenizer.train_tokenizer adds them as whole pieces."""
    yield JUDGE_PROMPT
    for name in ("ift", "eft_train", "eft_eval", "test"):
        for r in read_jsonl(os.path.join(out_dir, f"{name}.jsonl")):
            yield r["prompt"]
            yield from [r["response"]] if "response" in r else r.get("responses", [])


if __name__ == "__main__":
    # the defaults are build()'s, which are the self-rewarding loop's: the same files as its seed/
    defaults = {k: v.default for k, v in inspect.signature(build).parameters.items()}
    notes = {"seed": "every set derives from it", "n_ift": "IFT examples", "n_test": "held-out test prompts",
             "n_eft_train": "judged responses", "n_eft_eval": "judged responses",
             "ift_chatty": "share of IFT answers with a friendly phrase",
             "ift_declines": "share of IFT answers that decline ('I am not sure what you mean.')",
             "judge_working": "EFT targets work the task out step by step",
             "judge_quotes": "EFT targets quote the response's answer beside the right one",
             "quote_first": "with judge_quotes: the quote opens the judgment",
             "judge_compares": "EFT targets set the response's answer against the right one: the same or not",
             "check_each_ask": "an invent check sets each property of the word beside its ask"}
    p = argparse.ArgumentParser(description="Write the toy world's seed files.", allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.error = lambda message: p.exit(2, f"error: {message}\n")  # one line, not the usage block first (--help has it)
    p.add_argument("--out", default="data/toy", help="output folder")
    notes["toy_kinds"] = f"comma-separated task kinds, of {','.join(ALL_KINDS)}"

    def yes_or_no(text):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise argparse.ArgumentTypeError(f"{text!r} is not True or False")
        return text.lower() in ("true", "1", "yes")

    for k, v in defaults.items():
        p.add_argument(f"--{k}", type=yes_or_no if isinstance(v, bool) else type(v), default=v, help=notes.get(k, ""))
    args = vars(p.parse_args())
    if problem := unwritable(args["out"]):  # (a file in the way was a traceback after the sets were drawn)
        p.exit(2, f"error: --out = {args['out']}: {problem}\n")
    try:
        paths = write_toy(args.pop("out"), **args)
    except ValueError as e:  # a size, share or kind that cannot be: one line, before any file is written
        p.exit(2, f"error: {e}\n")
    for name, path in paths.items():
        print(f"{sum(1 for _ in open(path)):6d} records  {path}")
