"""
LLM-as-a-Judge (Yuan et al. 2024, Section 2 and Figure 2): the model scores a
response with the additive 5-point prompt, writes a short justification and
ends with "Score: N". This file holds

    judge_prompt(...)       the Figure 2 prompt, filled in
    parse_score(text)       the score a judgment ends with, 0..5 or None
    judge(...)              sample each judgment n times, average the scores
    judge_groups(...)       the same for groups of responses to one prompt each
    reward_metrics(...)     agreement with human rankings (Section 3, Table 4)
    judge_eft_groups(...)   the SFT baseline's judgments of the EFT groups, attempt by attempt
    make_eft_targets(...)   judge_eft_groups' records, in the form eft_targets reads
    read_judge_file(path)   judgments another (stronger) judge wrote, in that same form
    eft_targets(...)        the rule: per human-ranked group, the first attempt whose scores
                            rank it as the humans did; per unranked group, every scored
                            judgment; the top score down-sampled; as SFT records

and the Meta-Rewarding variant's meta-judge (Wu et al. 2024:
the model compares two of its own judgments of one response):

    meta_judge_prompt(...)  two judgments of one response, which applies the rubric better?
    parse_winner(text)      the verdict a meta-judgment ends with, "A", "B" or None
    judgment_battles(...)   the ordered pairs of judgments to compare, both orders
    compare_judgments(...)  sample one meta-judgment per battle with the model itself

`python judge.py` is not a script: selfreward.py and the tests call in here
(`python judge.py --help` prints this).
"""
import math
import random
import re
from collections import Counter

import numpy as np

from data import read_jsonl
from sample import fits, generate
from tokenizer import chat_prompt_ids

# -----------------------------------------------------------------------------
# The judge prompt, word for word from Figure 2 of the paper (typographic quotes
# and apostrophes kept; the PDF's line wraps joined into paragraphs). The chat
# template (tokenizer.chat_prompt_ids) wraps it like any other instruction.

JUDGE_PROMPT = """\
Review the user’s question and the corresponding response using the additive 5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:
- Add 1 point if the response is relevant and provides some information related to the user’s inquiry, even if it is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user’s question, but does not completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user’s question in a useful way, regardless of whether it seems to have been written by an AI Assistant or if it has elements typically found in blogs or search results.
- Grant a fourth point if the response is clearly written from an AI Assistant’s perspective, addressing the user’s question directly and comprehensively, and is well-organized and helpful, even if there is slight room for improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user’s question by an AI Assistant, without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and insightful answer.
User: <INSTRUCTION_HERE>
<response><RESPONSE_HERE></response>
After examining the user’s instruction and the response:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: “Score: <total points>”
Remember to assess from the AI Assistant perspective, utilizing web search knowledge as necessary. To evaluate the response in alignment with this additive scoring model, we’ll systematically attribute points based on the outlined criteria."""


PLACEHOLDERS = "<INSTRUCTION_HERE>|<RESPONSE_HERE>"  # where judge_prompt() fills in


def judge_prompt(instruction, response):
    """The judge prompt as plain text, ready for chat_prompt_ids or an SFT record."""
    fill = {"<INSTRUCTION_HERE>": instruction.strip(), "<RESPONSE_HERE>": response.strip()}
    # one pass, so a placeholder written inside the instruction is left alone
    return re.sub(PLACEHOLDERS, lambda m: fill[m.group(0)], JUDGE_PROMPT)


def rubric_lines():
    """The judge prompt's fixed lines (the text around the two placeholders,
    line by line): a small tokenizer can learn each as a single piece."""
    fixed = re.split(PLACEHOLDERS, JUDGE_PROMPT)
    return [line for part in fixed for line in part.split("\n") if line]


def judge_prompt_ids(tokenizer, instruction, response):
    """Token ids of the judge prompt in the chat template, ready to sample from."""
    return chat_prompt_ids(tokenizer, judge_prompt(instruction, response))


# -----------------------------------------------------------------------------
# Reading the score. Rules (a parser that guesses poisons the preference pairs):
# - a score is the word "score", a colon and a number on the same line, with
#   any markdown around: "Score: 4", "score:4", "**Score: 4**", "**Score**: 4",
#   "Score: **4**", "Score: 4.", "Score: 4 points"; or "Score 4:"
# - prose is not a score: "a score of 4", "scores 5 points" never match
# - several score marks with a number: the last one is the conclusion and the
#   only one read (a mark with no number after it, a heading "Score:" with prose
#   below, or "Score: N/A", is no mark)
# - points added up ("Score: 1+1+1 = 3") are the total after "=", if it is their
#   sum; a sum without its total, or a total that is not the sum: None
# - "Score: 4/5" and "Score: 4 out of 5" are 4; any other scale ("8/10", "4/10")
#   is None: rescaling would be inventing; the scale is on the mark's line
# - a fraction of a point ("3.5", or "3,5" with a decimal comma) is None: the
#   rubric adds whole points and rounding would invent a score; "4.0" is 4
# - a range or a choice ("3-4", "4 or 5", "3/5 or 4/5"), a negative or anything above 5: None

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_SCORE = re.compile(
    r"\bscore\b(?:"
    rf"[ \t*_]*:[ \t*_]*(?P<a>{_NUMBER})"   # Score: 4   **Score**: 4   Score: **4**
    rf"|[ \t*_]+(?P<b>{_NUMBER})[ \t*_]*:"  # Score 4:
    r")", re.IGNORECASE)  # on one line: "score = 0" (code) and "score:\n1 point" are not scores
_SCALE = re.compile(r"[ \t]*(?:/|out[ \t]+of)[ \t]*(\d+)", re.IGNORECASE)  # "/5", " out of 5"
# (the rest of the mark is on its line: a list of points on the next lines, "+ 1 point ...", is not a sum)
# after the number (or its scale): "3-4", "4 or 5", "1+1", "4 = 3", or "3,5" (a decimal comma: a fraction of a point)
_RANGE = re.compile(r"[ \t]*(?:[-–—+=]|,(?=\d)|to\b|or\b)[ \t]*\d", re.IGNORECASE)
_SUM = re.compile(rf"((?:[ \t]*\+[ \t]*\d+)+)[ \t]*=[ \t]*({_NUMBER})")  # "+1+1 = 3" after a first "1"


# Exercise (medium): the score parser, by the rules above. Graded by: tests/test_judge.py -k parse_score
def find_score(text):
    """(score or None, start, end) of the concluding score mark, or None if
    there is none. start: where its word "score" begins; end: where the mark
    ends, after its number, its scale ("/5") or its sum's total ("= 3"), or
    its colon ("Score 4:"). The score is an int 0..5 by the rules above, or
    None where the mark's number is not one (never a made-up value); the
    patterns _SCORE, _SCALE, _RANGE and _SUM above find each part."""
    matches = list(_SCORE.finditer(text))
    if not matches:
        return None
    m = matches[-1]  # the last mark is the conclusion
    group = "a" if m.group("a") is not None else "b"
    number, end = m.group(group), m.end(group)
    readable = True
    added = _SUM.match(text, end)
    if added:  # the rubric's points added up: the total counts, if it is their sum
        points = [float(number)] + [float(x) for x in re.findall(r"\d+", added.group(1))]
        readable = float(added.group(2)) == sum(points)
        number, end = added.group(2), added.end()
    value = float(number)
    scale = _SCALE.match(text, end)
    if scale:
        readable = readable and int(scale.group(1)) == 5  # another scale: rescaling would be inventing
        end = scale.end()
    readable = readable and not _RANGE.match(text, end)  # a range or a choice
    readable = readable and value == int(value) and 0 <= value <= 5  # not a fraction of a point, nor out of range
    return int(value) if readable else None, m.start(), max(end, m.end())  # ("Score 4:" ends at its colon)


def parse_score(text):
    """The concluding score of a judgment as an int 0..5, or None (never a made-up value)."""
    found = find_score(text)
    return None if found is None else found[0]


# -----------------------------------------------------------------------------
# Judging (Section 2.2, step 3, with Section 3.1's training details): each
# candidate is judged 3 times and its parsed scores averaged.

def judge(model, tokenizer, prompts, responses, n_samples=3, temperature=0.7, top_p=0.9,
          max_new_tokens=256, seed=None, batch_size=32, generate_fn=None, progress=True):
    """
    Judge response i to prompt i, n_samples times each, with the model itself.
    Returns records, records[i] = {"prompt", "response", "judgments": [text]*n,
    "scores": [int|None]*n, "score": mean|None, "too_long": bool}:
      "score"     the mean of the parsed scores of response i (its reward); a sample
                  without a score is left out of the mean; None if no sample had a
                  score (such a response must never be chosen nor rejected)
      the rest    the raw judgments and their parsed scores, to keep beside the pairs.
                  A judge prompt with no room in the model's context (real data: a
                  long response) is not judged: too_long, no judgments, and n scores
                  of None, so coverage counts it as n judgments without a score.
                  (One with a little room is judged: a judgment the context cuts
                  short before its score is a sample without a score.)
    generate_fn defaults to sample.generate; tests pass a stub with the same contract.
    """
    assert len(prompts) == len(responses), "one response per prompt"
    if not prompts:
        return []
    generate_fn = generate_fn or generate
    ids = [judge_prompt_ids(tokenizer, p, r) for p, r in zip(prompts, responses)]
    room = [i for i, x in enumerate(ids) if fits(model, x)]
    outs = generate_fn(model, [ids[i] for i in room], max_new_tokens, temperature=temperature, top_p=top_p,
                       n=n_samples, eos_id=tokenizer.stop_ids, seed=seed, batch_size=batch_size,
                       progress=progress) if room else []
    assert len(outs) == len(room) * n_samples, "generate must return n completions per prompt"
    judged = {i: outs[k * n_samples:(k + 1) * n_samples] for k, i in enumerate(room)}
    records = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        texts = [tokenizer.decode(c) for c in judged.get(i, [])]
        parsed = [parse_score(t) for t in texts] or [None] * n_samples
        valid = [s for s in parsed if s is not None]
        score = sum(valid) / len(valid) if valid else None
        records.append({"prompt": p, "response": r, "judgments": texts, "scores": parsed, "score": score,
                        "too_long": i not in judged})
    return records


def judge_groups(model, tokenizer, prompts, response_lists, **judge_kwargs):
    """Judge groups of responses: response_lists[g] answers prompts[g]. All
    responses are judged in one judge(...) call (judge_kwargs go to it), so
    the result is the same as judging the flat list; returns, per group, the
    list of judge's records of its responses, in order."""
    flat = [(p, r) for p, responses in zip(prompts, response_lists) for r in responses]
    records = judge(model, tokenizer, [p for p, _ in flat], [r for _, r in flat], **judge_kwargs)
    return regroup(records, [len(responses) for responses in response_lists])


def by_field(records, fields):
    """A group's judge() records (one a response) as one list per field, in
    response order: what the loop's and the EFT targets' files keep a group as."""
    return {f: [x[f] for x in records] for f in fields}


def judgment_counts(score_lists):
    """{"judgments", "judgments_with_score"} over responses' lists of judgment
    scores (judge()'s records' "scores"): how many judgments, how many parsed."""
    scores = [s for ss in score_lists for s in ss]
    return {"judgments": len(scores), "judgments_with_score": sum(s is not None for s in scores)}


def finished_flags(rec):
    """A candidates or judgments record's "finished" flags (did each candidate
    end its turn?); records written before the flags existed count every
    candidate finished, as the loop then did."""
    return rec.get("finished", [True] * len(rec["candidates"]))


def regroup(flat, sizes):
    """A flat list cut back into its consecutive groups of `sizes` items."""
    groups, at = [], 0
    for n in sizes:
        groups.append(flat[at:at + n])
        at += n
    return groups


# -----------------------------------------------------------------------------
# Reward-modeling metrics (Section 3, Table 4): how well the judge's scores
# agree with human rankings. Inputs per prompt: the judge's scores (None = no
# score) and the human ranks (0 = best). Choices, for the cases the paper leaves open:
# - pairwise accuracy and 5-best are pooled over all pairs / all responses;
#   exact match and the correlations are per prompt, averaged over prompts
# - a pair with a tie in scores, or a None on either side, counts as wrong
# - "scored 5" means an (averaged) score of 5, the top; 5-best is None when
#   no response scored 5
# - pairs the humans ranked equal are not judged (pairwise accuracy, exact
#   match): exact match = every pair the humans ordered is ordered the same
# - correlations use only the scored responses; where one is undefined (fewer
#   than 2 scored, or all scores equal) the prompt counts 0: the judge told
#   the responses apart no better than chance
# - prompts with fewer than 2 distinct human ranks carry no ordering: skipped

def _pair_signs(x):
    """sign(x_i - x_j) for every pair i < j."""
    i, j = np.triu_indices(len(x), k=1)
    return np.sign(x[i] - x[j])


# Exercise (medium): Kendall's tau-b. Graded by: tests/test_judge.py -k correlations
def kendall_tau(x, y):
    """Kendall's tau-b (ties allowed on both sides) of two equal-length
    sequences of numbers (lists or tuples), or None where undefined (either
    side constant). tau_b = (n_c - n_d) / sqrt((n0 - n1)(n0 - n2)) over the
    pairs i < j: concordant minus discordant pairs, over the pairs not tied in
    x times those not tied in y."""
    # each pair's sign of x_i - x_j and of y_i - y_j (0: a tie): sum(s * t) = n_c - n_d,
    # count_nonzero(s) = n0 - n1 (the pairs not tied in x)
    s, t = _pair_signs(np.asarray(x, float)), _pair_signs(np.asarray(y, float))
    denom = math.sqrt(np.count_nonzero(s) * np.count_nonzero(t))
    return float((s * t).sum() / denom) if denom else None


def _average_ranks(x):
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    x = np.asarray(x, float)
    below = (x[None, :] < x[:, None]).sum(1)
    equal = (x[None, :] == x[:, None]).sum(1)
    return below + (equal + 1) / 2


def spearman(x, y):
    """Spearman's rho: the Pearson correlation of the average ranks, or None where undefined."""
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / denom) if denom else None


# Exercise (easy): pairwise accuracy, pair by pair. Graded by: tests/test_judge.py -k pairs_correct
def pairs_correct(scores, ranks):
    """For each pair of responses i < j with different human ranks (rank 0 is
    best): does the judge order it the same way? A list of bools, one per
    such pair; a tie in scores or a None on either side is False (the
    choices above)."""
    out = []
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            if ranks[i] == ranks[j]:
                continue
            si, sj = scores[i], scores[j]
            # rank 0 is best, so the human prefers i when ranks[i] < ranks[j]
            out.append(si is not None and sj is not None and si != sj and (si > sj) == (ranks[i] < ranks[j]))
    return out


def prompt_metrics(s, r):
    """
    One prompt's share of the reward-model metrics: s the judge's score (float
    or None) of each response, r their human ranks (0 = best). None for a
    prompt with fewer than 2 distinct ranks (no ordering to agree with).
    Kept per prompt so that the report can draw prompts again (bootstrap).
    """
    assert len(s) == len(r), "one score per ranked response"
    if len(set(r)) < 2:
        return None
    correct = pairs_correct(s, r)
    fives = [ri for si, ri in zip(s, r) if si is not None and si >= 5]
    scored = [(si, -ri) for si, ri in zip(s, r) if si is not None]  # -rank: higher is better
    return {"right_pairs": sum(correct), "pairs": len(correct), "exact": all(correct),
            "n_five": len(fives), "n_five_best": sum(ri == min(r) for ri in fives),
            "spearman": spearman(*zip(*scored)) if len(scored) >= 2 else None,
            "kendall_tau": kendall_tau(*zip(*scored)) if len(scored) >= 2 else None,
            "responses": len(s), "scored": len(scored)}


def reward_metrics(scores, ranks):
    """
    scores: per prompt, the judge's score (float or None) of each response
    ranks:  per prompt, the human rank of each response (0 = best)
    Returns a dict of fractions (0..1) and correlations (-1..1), with the counts behind them.
    """
    assert len(scores) == len(ranks)
    per_prompt = [prompt_metrics(s, r) for s, r in zip(scores, ranks)]
    kept = [m for m in per_prompt if m is not None]
    total = lambda key: sum(m[key] for m in kept)
    ratio = lambda a, b: total(a) / total(b) if total(b) else None
    mean = lambda v: sum(v) / len(v) if v else None
    return {
        "pairwise_accuracy": ratio("right_pairs", "pairs"),
        "five_best": ratio("n_five_best", "n_five"),
        "exact_match": mean([m["exact"] for m in kept]),
        "spearman": mean([m["spearman"] or 0.0 for m in kept]),  # undefined counts 0
        "kendall_tau": mean([m["kendall_tau"] or 0.0 for m in kept]),
        "n_prompts": len(kept), "n_pairs": total("pairs"), "n_scored_5": total("n_five"),
        # the share of responses with a score (the report's "judge coverage" counts judgments instead)
        "response_coverage": ratio("scored", "responses"),
        "n_undefined_correlation": sum(m["spearman"] is None for m in kept),
        "n_skipped_prompts": len(per_prompt) - len(kept),
    }


# -----------------------------------------------------------------------------
# EFT targets, as the paper made them (Sections 2.1 and 3.1): the SFT baseline judges the
# ranked responses of each EFT prompt; a group is kept only if the ranking its
# scores give agrees with the human ranking (every pair in the same order, no
# ties); the most frequent score is then down-sampled (the paper does not say
# by how much: here to the count of the next most frequent). A small model may
# write no usable judgment at all (SmolLM2-135M-Instruct: a score in 0 of 70
# with this prompt), so the judgments may instead come from a stronger judge's
# file (read_judge_file), kept by the same rule where human ranks exist.

def judgment_as_target(judgment):
    """A judgment as an SFT target: the justification, then "Score: N" as the last line.
    None if the judgment has no valid concluding score."""
    found = find_score(judgment)
    if found is None or found[0] is None:
        return None
    score, start, end = found
    # the paper's format puts the score last; a judge that opens with the score
    # ("Score: 4/5 points.\n\nThe response ...", or after a bare label such as
    # "Output:" or a stray chat token) has its justification after the mark,
    # less the word "points" and the punctuation that close the mark
    before = judgment[:start].strip(" \n*#")
    after = re.sub(r"^[ \t*_]*(?:points?\b)?", "", judgment[end:], flags=re.IGNORECASE)
    after = after.lstrip(" \t*_.:,;").strip(" \n*#")
    label = re.fullmatch(r"<\|[^|]*\|>|[^\n]{0,30}:", before)
    why = after if not before or label else before
    return f"{why}\nScore: {score}" if why else f"Score: {score}"


def downsample_top_score(records, seed=0):
    """Down-sample the most frequent score to the count of the next most frequent."""
    counts = Counter(r["score"] for r in records)
    if len(counts) < 2:
        return list(records)
    (top, _), (_, second) = counts.most_common(2)
    rng = random.Random(seed)
    keep = set(rng.sample([i for i, r in enumerate(records) if r["score"] == top], second))
    return [r for i, r in enumerate(records) if r["score"] != top or i in keep]


def judge_file_targets(groups, judged, seed_groups, eft_eval, ift, seed=0):
    """EFT targets from another judge's judgments (read_judge_file's groups and
    judged), with the seed's records: a prompt of the EFT eval set is dropped (it
    would leak into the evaluation of M1's judge), and so is one of the IFT set
    (the paper's EFT data does not overlap its IFT data), each counted; where
    the human ranks of seed_groups (EFT train) cover every response of a prompt,
    the ranks are attached and eft_targets keeps only judgments that agree with
    them. Returns (targets, kept [(group, its judgments)], dropped Counter).
    The loop's EFT targets stage and its check before any work both call this."""
    held_out = {"prompt of the EFT eval set": {prompt_key(x["prompt"]) for x in eft_eval},
                "prompt of the IFT set": {prompt_key(x["prompt"]) for x in ift}}
    human = {prompt_key(g["prompt"]): g for g in seed_groups}
    kept, dropped = [], Counter()
    for g, mine in zip(groups, judged):
        why = next((why for why, keys in held_out.items() if prompt_key(g["prompt"]) in keys), None)
        if why:
            dropped[why] += 1
            continue
        h = human.get(prompt_key(g["prompt"]))
        if g["ranks"] is None and h is not None:
            rank_of = {prompt_key(x): rank for x, rank in zip(h["responses"], h["ranks"])}
            ranks = [rank_of.get(prompt_key(x)) for x in g["responses"]]
            g = {**g, "ranks": None if None in ranks else ranks}
        kept.append((g, mine))
    return eft_targets([g for g, _ in kept], [m for _, m in kept], seed=seed), kept, dropped


def eft_targets(groups, judged, seed=0):
    """
    The EFT training records (Sections 2.1 and 3.1) from judged groups.
    groups[g]: {"prompt", "ranks"?}; judged[g][k]: the judge's record of response k,
    {"response": text, "judgments": [text]*n, "scores": [int|None]*n} (judge()'s
    records have these fields; make_eft_targets builds them). Attempt a of a group is
    the a-th judgment of every response. Where the group has human ranks, the first
    attempt whose scores rank it as the humans did (every pair in the same order, no
    ties) is kept, and nothing else; without ranks (another judge's file on prompts no
    human ranked) every judgment with a score is kept. The most frequent score is then
    down-sampled. Returns SFT records
    {"prompt": judge prompt text, "response": justification + "Score: N", "score": N,
     "instruction": the question judged}.
    """
    records = []
    for g, mine in zip(groups, judged):
        if g.get("ranks") is None:  # each response's judgments, as many as it has (a too-long one: none)
            records += [{"prompt": judge_prompt(g["prompt"], j["response"]), "response": judgment_as_target(text),
                         "score": score, "instruction": g["prompt"]}
                        for j in mine for text, score in zip(j["judgments"], j["scores"]) if score is not None]
            continue
        for a in range(min((len(j["judgments"]) for j in mine), default=0)):  # attempts every response has
            correct = pairs_correct([j["scores"][a] for j in mine], g["ranks"])
            if correct and all(correct):
                records += [{"prompt": judge_prompt(g["prompt"], j["response"]),
                             "response": judgment_as_target(j["judgments"][a]), "score": j["scores"][a],
                             "instruction": g["prompt"]} for j in mine]
                break
    return downsample_top_score(records, seed)


def judge_eft_groups(model, tokenizer, groups, n_attempts=1, temperature=0.7, top_p=0.9,
                     max_new_tokens=256, seed=1337, batch_size=32, generate_fn=None, progress=True):
    """
    The paper's recipe for EFT targets, its first half: the model (the SFT
    baseline) judges each response of the EFT groups {"prompt", "responses",
    "ranks"} n_attempts times. One record a group, {"prompt", "responses",
    "ranks", "judgments", "scores", "too_long"}: what make_eft_targets keeps
    targets from, kept beside the seed data to look at when few or none agree
    (read_judge_file reads it back as another judge's file).
    """
    judged = judge_groups(model, tokenizer, [g["prompt"] for g in groups], [g["responses"] for g in groups],
                          n_samples=n_attempts, temperature=temperature, top_p=top_p,
                          max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, generate_fn=generate_fn,
                          progress=progress)
    return [{"prompt": g["prompt"], "responses": g["responses"], "ranks": g["ranks"],
             **by_field(mine, ["judgments", "scores", "too_long"])} for g, mine in zip(groups, judged)]


def make_eft_targets(judged_groups, seed=0):
    """The recipe's second half: from judge_eft_groups' records, eft_targets
    keeps, per group, the first attempt that agrees with the human ranking.
    Returns the SFT records."""
    judged = [[{"response": x, "judgments": texts, "scores": scores}
               for x, texts, scores in zip(g["responses"], g["judgments"], g["scores"])] for g in judged_groups]
    return eft_targets(judged_groups, judged, seed)


def judge_record(rec):
    """(responses, each one's judgment texts, None) from one line of a judge
    file (read_judge_file's layouts), or (None, None, what is wrong with it)."""
    if isinstance(rec.get("completion"), dict):
        completion = rec["completion"]
        if not completion or not all(k.isdecimal() for k in completion) \
                or not all(isinstance(x, dict) for x in completion.values()):
            return None, None, "'completion' maps response numbers (\"0\", \"1\" ...) to {content, reasoning}"
        items = [completion[k] for k in sorted(completion, key=int)]
        responses = [x.get("content") for x in items]
        texts = [[x.get("reasoning")] for x in items]
    elif isinstance(rec.get("responses"), list) and isinstance(rec.get("judgments"), list):
        responses = rec["responses"]
        texts = [t if isinstance(t, list) else [t] for t in rec["judgments"]]
    else:
        return None, None, "a judgment record has 'completion' {id: {content, reasoning}} or 'responses' and 'judgments'"
    if len(texts) != len(responses) or not all(isinstance(x, str) for x in responses) \
            or not all(isinstance(t, str) for ts in texts for t in ts):
        return None, None, "every response needs its text and its judgments as strings"
    if rec.get("ranks") is not None and not human_ranks(rec["ranks"], len(responses)):
        return None, None, "'ranks', where given, must be a list of integers >= 0, one per response (0 = best)"
    return responses, texts, None


def human_ranks(ranks, n):
    """Are `ranks` one human rank per response of n, an integer >= 0 (0 = best)?
    (JSON's true and false are Python ints: they are not ranks.)"""
    return isinstance(ranks, list) and len(ranks) == n and all(type(r) is int and r >= 0 for r in ranks)


def prompt_key(text):
    """A prompt as prompts are matched everywhere (a judge file's to the seed
    data's, a written prompt to earlier and held-out ones): spaces and case aside."""
    return " ".join(text.split()).lower()


def read_judge_file(path):
    """
    Judgments written by another judge, as (groups, judged) for eft_targets. One
    prompt a line, in either layout:
      {"prompt", "completion": {"0": {"content", "reasoning"}, ...}}   the shared
          real judge outputs' layout: "reasoning" is the judge's raw text
      {"prompt", "responses": [str], "judgments": [[str]] or [str], "ranks"?}   ours
          (judge_eft_groups' records)
    Scores are read from the raw text with parse_score (a stored "score" field is
    another parser's guess and is ignored). A group carries "ranks" only if the
    line does; selfreward.py adds the human ranks of the seed data's groups.
    """
    groups, judged = [], []
    for rec in read_jsonl(path, fields=("prompt",), allow_empty=False,
                          check=lambda rec: judge_record(rec)[2]):  # errors: file:line
        responses, texts, _ = judge_record(rec)
        groups.append({"prompt": rec["prompt"], "responses": responses, "ranks": rec.get("ranks")})
        judged.append([{"response": r, "judgments": ts, "scores": [parse_score(t) for t in ts]}
                       for r, ts in zip(responses, texts)])
    return groups, judged


# -----------------------------------------------------------------------------
# Meta-Rewarding (Wu et al. 2024, arXiv 2407.19594): the model is
# also a meta-judge. It reads two of its own judgments of one response and
# says which applies the rubric better; the judgment with the most net wins in these
# battles is set against the one with the fewest net wins (the paper rates them by Elo
# from the battles; we count net wins, wins - losses), and DPO trains the judge on
# such pairs (selfreward.make_judge_pairs), as it trains the actor on the
# response pairs. The prompt below follows the paper's structure (the rubric,
# the question, the response, Judgment A and B, a verdict line) in our own words.

RUBRIC = "\n".join(line for line in JUDGE_PROMPT.split("\n")
                   if line.startswith(("- Add", "- Award", "- Grant", "- Bestow")))  # Figure 2's five criteria
assert RUBRIC.count("\n") == 4, "the five criteria of the judge prompt"

META_JUDGE_PROMPT = f"""\
Below are a user’s question, a response to it, and two judgments of that response. Each judgment was asked to score the response with this additive 5-point rubric:
{RUBRIC}
User: <INSTRUCTION_HERE>
<response><RESPONSE_HERE></response>
Judgment A:
<JUDGMENT_A_HERE>
Judgment B:
<JUDGMENT_B_HERE>
Which judgment applies the rubric to this response more accurately?
- Briefly explain: does each judgment read the question and the response correctly, and award the points the rubric gives?
- Conclude with the better judgment using the format: “Winner: <A or B>”"""

META_PLACEHOLDERS = "<INSTRUCTION_HERE>|<RESPONSE_HERE>|<JUDGMENT_A_HERE>|<JUDGMENT_B_HERE>"


def meta_judge_prompt(instruction, response, judgment_a, judgment_b):
    """The meta-judge prompt as plain text: which of two judgments of one response is better?"""
    fill = {"<INSTRUCTION_HERE>": instruction.strip(), "<RESPONSE_HERE>": response.strip(),
            "<JUDGMENT_A_HERE>": judgment_a.strip(), "<JUDGMENT_B_HERE>": judgment_b.strip()}
    return re.sub(META_PLACEHOLDERS, lambda m: fill[m.group(0)], META_JUDGE_PROMPT)  # one pass, as judge_prompt


def meta_rubric_lines():
    """The meta-judge prompt's fixed lines that the judge prompt does not
    already have (rubric_lines): a small tokenizer can learn each as one piece."""
    judge_lines = set(rubric_lines())
    fixed = re.split(META_PLACEHOLDERS, META_JUDGE_PROMPT)
    lines = [line for part in fixed for line in part.split("\n") if line and line not in judge_lines]
    return list(dict.fromkeys(lines))  # each once, in order


# Reading the verdict, as strictly as the score (a guessed verdict poisons the judge's pairs):
# - a verdict is the word "winner", a colon and the letter A or B (a capital) on the
#   same line, with any markdown or brackets around and "Judgment"/"Judgement" allowed
#   before the letter: "Winner: A", "**Winner:** B", "Winner: [Judgement A]"
# - prose is not a verdict: "the winner is A", "A wins" never match
# - several verdicts: the last one is the conclusion and the only one read
# - a choice or a tie is None: "Winner: A or B", "Winner: A/B", "Winner: tie",
#   "Winner: both"
# - the other letter anywhere after it on the verdict line voids it, a reason
#   too ("Winner: A (B misreads the question)"): the line is the verdict alone
_WINNER_MARK = re.compile(r"\bwinner\b[ \t*_]*:(?P<rest>[^\n]*)", re.IGNORECASE)
_WINNER_LETTER = re.compile(r"[ \t*_\[(\"“]*(?:[Jj]udge?ment[ \t]+)?(?P<w>[AB])\b")
_CHOICE = re.compile(r"[ \t*_\])\"”]*(?:/|\||&|\bor\b|\band\b)", re.IGNORECASE)


def parse_winner(text):
    """The verdict a meta-judgment concludes with: "A", "B", or None (never a guess)."""
    marks = list(_WINNER_MARK.finditer(text))
    if not marks:
        return None
    rest = marks[-1].group("rest")
    m = _WINNER_LETTER.match(rest)
    if not m:
        return None
    after, other = rest[m.end():], "B" if m.group("w") == "A" else "A"
    if _CHOICE.match(after) or re.search(rf"\b{other}\b", after):
        return None
    return m.group("w")


def judgment_battles(judgments, scores):
    """The battles to meta-judge among one response's judgments: every pair of
    judgments that both have a score and differ in text, in both orders, (a, b)
    then (b, a), a shown as Judgment A. Both orders, as Wu et al. do: a
    meta-judge that favours a position then gives each side one win, which
    cancels, instead of a made-up preference. Two identical texts are never
    compared: no verdict between them can mean anything."""
    ok = [k for k, s in enumerate(scores) if s is not None]
    out = []
    for i, a in enumerate(ok):
        for b in ok[i + 1:]:
            if judgments[a].strip() != judgments[b].strip():
                out += [(a, b), (b, a)]
    return out


def compare_judgments(model, tokenizer, records, temperature=0.7, top_p=0.9, max_new_tokens=64, seed=None,
                      batch_size=32, generate_fn=None, progress=True):
    """
    Meta-judge the judgments of each response with the model itself, one
    sample per battle (judgment_battles). records[i]: {"prompt", "response",
    "judgments": [text], "scores": [int|None]}. Returns, per record, its
    battles [{"a", "b", "meta_judgment": text, "winner": "A"|"B"|None,
    "too_long": bool}]: judgment a was shown as A, b as B. A meta-judge
    prompt with no room in the model's context is not sampled (too_long, no
    text, no winner). Conventions as judge(): one generate call, a seed,
    generate_fn a stub in tests.
    """
    generate_fn = generate_fn or generate
    battles = [(i, a, b) for i, x in enumerate(records) for a, b in judgment_battles(x["judgments"], x["scores"])]
    ids = [chat_prompt_ids(tokenizer, meta_judge_prompt(records[i]["prompt"], records[i]["response"],
                                                        records[i]["judgments"][a], records[i]["judgments"][b]))
           for i, a, b in battles]
    room = [k for k, x in enumerate(ids) if fits(model, x)]
    outs = generate_fn(model, [ids[k] for k in room], max_new_tokens, temperature=temperature, top_p=top_p, n=1,
                       eos_id=tokenizer.stop_ids, seed=seed, batch_size=batch_size, progress=progress) if room else []
    assert len(outs) == len(room), "generate must return one completion per prompt"
    texts = dict(zip(room, (tokenizer.decode(o) for o in outs)))
    per_record = [[] for _ in records]
    for k, (i, a, b) in enumerate(battles):
        text = texts.get(k)
        per_record[i].append({"a": a, "b": b, "meta_judgment": text, "winner": None if text is None else
                              parse_winner(text), "too_long": text is None})
    return per_record

if __name__ == "__main__":
    import configurator
    configurator.library(__doc__, "judge.py", "python selfreward.py runs the judge")
