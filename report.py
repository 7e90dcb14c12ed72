"""
The evaluation report of a self-rewarding run: out/<run>/report.md, one row
per model (SFT baseline, M1, M2, ...). On the toy world:

    on the toy world's held-out test prompts   mean grade, bare right answers, declined answers,
                                               head-to-head against the previous model and the
                                               SFT baseline
    as a judge, on the EFT eval set            the reward-model metrics (judge.reward_metrics)

On real data there is no ground-truth grader, so no grade columns: each
model's judge against the human rankings (and its coverage: the share of its
judgments that carry a score), the lengths of its answers for the external
judges, and where those answer files are (AlpacaEval, MT-Bench) with the
commands that judge them. Both then list what each iteration kept and dropped
(EFT targets, prompts, candidates, judgments, pairs, with reasons and response
lengths), the stage time and the run's settings.
selfreward.py's evaluation stage writes what this file reads (eval/<model>_test.jsonl,
the stage infos in done/); this file only tabulates them.
"""
import json
import math
import os
import shlex
from collections import Counter

import numpy as np

import distributed as D
import judge as J
from data import read_jsonl, toy, write_text


def same_prompts(a, b):
    """Two models' test answers, paired prompt by prompt: an error unless both
    answered the same prompts in the same order (a paired figure would
    otherwise compare unlike answers, or drop some, without a word)."""
    if [x.get("prompt") for x in a] != [y.get("prompt") for y in b]:
        raise ValueError(f"two models' test answers are not of the same prompts ({len(a)} and {len(b)} answers): "
                         f"evaluate both on one test set")
    return zip(a, b)


def head_to_head(a, b):
    """Win / tie / loss of model a against model b, prompt by prompt, by grade."""
    w = t = l = 0
    for x, y in same_prompts(a, b):
        w, t, l = w + (x["grade"] > y["grade"]), t + (x["grade"] == y["grade"]), l + (x["grade"] < y["grade"])
    n = max(1, len(a))
    return {"win": w / n, "tie": t / n, "loss": l / n}


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def share(flags):
    """The share of True in a list of booleans, or None for an empty list."""
    return sum(flags) / len(flags) if flags else None


def num(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x)


def shown_correlations(j):
    """A judge's Spearman and Kendall means as the tables show them: undefined
    prompts count 0 (judge.reward_metrics), but where every prompt's is
    undefined (a judge that never scores, or scores all alike) there is no
    correlation to show: None, printed '-'."""
    if j.get("n_prompts") and j.get("n_undefined_correlation") == j["n_prompts"]:
        return None, None
    return j.get("spearman"), j.get("kendall_tau")


def judge_cells(j):
    """The judge's columns both tables share: pairwise accuracy, 5-best, exact
    match, Spearman and Kendall tau, '-' where not measured."""
    rho, tau = shown_correlations(j)
    return (f"{pct(j.get('pairwise_accuracy'))} | {pct(j.get('five_best'))} | {pct(j.get('exact_match'))} | "
            f"{num(rho, '{:.3f}')} | {num(tau, '{:.3f}')}")


def answer_columns(tests):
    """Each test answer's figures, one value per prompt: their means are the
    toy table's, their resamples the interval table's."""
    return {"grade": [x["grade"] for x in tests],
            "bare_right": [float(x["grade"] == 5) for x in tests],
            # answers that decline ("I am not sure what you mean."), as a seed set with ift_declines teaches
            "declined": [float(x["response"].strip() == toy.DECLINE) for x in tests],
            "length": [float(len(x["response"])) for x in tests]}


def toy_rows(names, tests, infos):
    """The toy table: graded test answers and the judge, per model; and metrics.jsonl's records."""
    rows, metrics = [], []
    header = ("| model | mean grade (0-5) | bare right (grade 5) % | declined % | vs previous: win / tie / loss % | "
              "vs SFT baseline: win / tie / loss % | judge pairwise acc % | 5-best % | exact match % | "
              "Spearman | Kendall tau | judge coverage % | avg response length (chars) |")
    rows += [header, "|" + "---|" * (header.count("|") - 1)]
    for i, n in enumerate(names):
        col = answer_columns(tests[n])
        mean = lambda key: sum(col[key]) / len(col[key])
        # "exact_solve" is grade 5, a bare right answer: the key's first name, kept since the runs' files carry it
        m = {"model": n, "mean_grade": mean("grade"), "exact_solve": mean("bare_right"),
             "declined": mean("declined"), "avg_length": mean("length")}
        if i > 0:
            m["vs_previous"] = head_to_head(tests[n], tests[names[i - 1]])
        if n != "SFT" and "SFT" in tests:
            m["vs_sft"] = head_to_head(tests[n], tests["SFT"])
        j = infos.get(n, {}).get("judge") or {}
        m["judge"] = j
        metrics.append(m)
        wtl = lambda d: "-" if not d else f"{100 * d['win']:.1f} / {100 * d['tie']:.1f} / {100 * d['loss']:.1f}"
        rows.append(f"| {n} | {m['mean_grade']:.2f} | {pct(m['exact_solve'])} | {pct(m['declined'])} | "
                    f"{wtl(m.get('vs_previous'))} | {wtl(m.get('vs_sft'))} | {judge_cells(j)} | "
                    f"{pct(judge_coverage(j))} | {m['avg_length']:.1f} |")
    return rows, metrics


def judge_coverage(j):
    """The share of judgments that carry a score (per judgment), or None where none was asked for."""
    return j["judgments_with_score"] / j["judgments"] if j.get("judgments") else None


def real_rows(names, infos):
    """The real-data table: no grader, so the judge against human ranks and the answers' lengths."""
    rows, metrics = [], []
    header = ("| model | judge coverage % (judgments with a score) | judge pairwise acc % | 5-best % | "
              "exact match % | Spearman | Kendall tau | too long to judge | AlpacaEval answers (too long) | "
              "AlpacaEval avg length (chars, of the answers given) | MT-Bench answers (too long) | "
              "MT-Bench avg length (chars, of the answers given) |")
    rows += [header, "|" + "---|" * (header.count("|") - 1)]
    for n in names:
        info = infos.get(n, {})
        j, a, b = info.get("judge") or {}, info.get("alpaca_eval") or {}, info.get("mt_bench") or {}
        metrics.append({"model": n, "judge": j, "alpaca_eval": a, "mt_bench": b})
        answers = lambda d: "-" if not d else f"{d['answered']} ({d['too_long']})"
        rows.append(f"| {n} | {pct(judge_coverage(j) if j else None)} | {judge_cells(j)} | "
                    f"{j.get('too_long', '-')} | {answers(a)} | "
                    f"{num(a.get('avg_length'))} | {answers(b)} | {num(b.get('avg_length'))} |")
    return rows, metrics


# -----------------------------------------------------------------------------
# How sure a figure is: intervals over the prompts it was measured on

RESAMPLES = 2000  # bootstrap draws for every interval in the report


def bootstrap_interval(values, weights=None, resamples=RESAMPLES, seed=0):
    """95% percentile-bootstrap interval (Efron & Tibshirani 1993, ch. 13) of
    sum(values) / sum(weights) over prompts: the prompts are drawn again with
    replacement `resamples` times and the figure recomputed on each draw.
    weights None: a plain mean (a mean grade, a share); else, e.g., right pairs
    over pairs per prompt, so a prompt with more pairs counts more, as it does
    in the figure itself. Paired figures (a grade difference between two
    models) pass the per-prompt differences, so both models keep the same prompts."""
    v = np.asarray(values, float)
    w = np.ones_like(v) if weights is None else np.asarray(weights, float)
    if len(v) == 0:
        return None
    draws = np.random.default_rng(seed).integers(0, len(v), (resamples, len(v)))
    drawn = w[draws].sum(1)
    stats = v[draws].sum(1)[drawn > 0] / drawn[drawn > 0]  # a draw with no weight has no figure: left out
    if len(stats) == 0:
        return None
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(low), float(high)


def judged_by_prompt(judged, groups):
    """The judged records (one per response, in the groups' order) of each EFT eval prompt."""
    return J.regroup(judged, [len(g["responses"]) for g in groups])


def eft_eval_groups(r):
    """The run's EFT eval groups (the judge's test set), or none where the seed has no such file."""
    path = r.path("seed", "eft_eval.jsonl")
    return read_jsonl(path) if os.path.exists(path) else []


def judge_prompt_metrics(judged, groups):
    """judge.prompt_metrics of every EFT eval prompt that has an ordering:
    the judge's average scores against the ranks."""
    per_prompt = (J.prompt_metrics([x["score"] for x in mine], g["ranks"])
                  for mine, g in zip(judged_by_prompt(judged, groups), groups))
    return [m for m in per_prompt if m is not None]


# The interval table's rows: (key in the intervals, label, scale, decimals): the
# toy table's figures, right answers (grade >= 4) added and head-to-head as net
# wins (win - loss), each with its interval.
INTERVAL_FIGURES = [
    ("mean_grade", "mean grade (0-5)", 1, 2),
    ("right", "right answers (grade >= 4) %", 100, 1),
    ("bare_right", "bare right answers (grade 5) %", 100, 1),
    ("declined", "declined %", 100, 1),
    ("vs_previous", "grade - previous model", 1, 2),
    ("right_vs_previous", "right answers - previous model (points)", 100, 1),
    ("net_wins", "net wins vs previous (win - loss) %", 100, 1),
    ("net_wins_vs_sft", "net wins vs SFT baseline (win - loss) %", 100, 1),
    ("judge_accuracy", "judge pairwise acc %", 100, 1),
    ("judge_vs_previous", "judge pairwise acc - previous model (points)", 100, 1),
    ("five_best", "judge 5-best %", 100, 1),
    ("exact_match", "judge exact match %", 100, 1),
    ("spearman", "judge Spearman", 1, 3),
    ("kendall_tau", "judge Kendall tau", 1, 3),
    ("coverage", "judge coverage % (judgments with a score)", 100, 1),
    ("avg_length", "avg response length (chars)", 1, 1),
]


def interval_rows(r, names, tests):
    """The table's figures with their 95% bootstrap intervals over prompts:
    test prompts for the answers (the toy world's graded ones, `tests`; none
    on real data), EFT eval prompts for the judge. One row per figure, one
    column per model."""
    groups = eft_eval_groups(r)
    with_interval = lambda values, weights=None: (  # (the figure, its interval); weights: a ratio's denominators
        float(np.mean(values)) if weights is None else sum(values) / sum(weights), bootstrap_interval(values, weights))
    grades = {n: np.array([x["grade"] for x in tests[n]], float) for n in names if n in tests}
    right = {n: (g >= toy.RIGHT).astype(float) for n, g in grades.items()}  # per prompt: 1 where right
    intervals, previous = {}, []  # previous: the model before's judge figures per EFT eval prompt
    for i, n in enumerate(names):
        m = {}
        if n in grades:
            g, col = grades[n], answer_columns(tests[n])
            m = {"mean_grade": with_interval(g), "right": with_interval(right[n]),
                 "bare_right": with_interval(col["bare_right"]), "declined": with_interval(col["declined"]),
                 "avg_length": with_interval(col["length"])}
            if i > 0:  # paired: the per-prompt differences, so both models keep the same prompts
                same_prompts(tests[n], tests[names[i - 1]])
                m["vs_previous"] = with_interval(g - grades[names[i - 1]])
                m["right_vs_previous"] = with_interval(right[n] - right[names[i - 1]])
                m["net_wins"] = with_interval(np.sign(g - grades[names[i - 1]]))
            if n != "SFT" and "SFT" in grades:
                same_prompts(tests[n], tests["SFT"])
                m["net_wins_vs_sft"] = with_interval(np.sign(g - grades["SFT"]))
        path = r.path("eval", f"{n}_judgments.jsonl")
        judged = read_jsonl(path) if groups and os.path.exists(path) else []
        per_prompt = judge_prompt_metrics(judged, groups) if judged else []
        if judged:  # per judgment, over every EFT eval prompt, as the toy table counts it (judge_coverage)
            counts = [J.judgment_counts(x["scores"] for x in mine) for mine in judged_by_prompt(judged, groups)]
            m["coverage"] = with_interval([float(c["judgments_with_score"]) for c in counts],
                                          [float(c["judgments"]) for c in counts])
        if per_prompt:
            column = lambda key: [float(p[key]) for p in per_prompt]
            if sum(column("pairs")):
                m["judge_accuracy"] = with_interval(column("right_pairs"), column("pairs"))
                if [p["pairs"] for p in previous] == column("pairs"):  # paired: the same prompts, the same pairs
                    m["judge_vs_previous"] = with_interval(
                        [p["right_pairs"] - q["right_pairs"] for p, q in zip(per_prompt, previous)], column("pairs"))
            if sum(column("n_five")):
                m["five_best"] = with_interval(column("n_five_best"), column("n_five"))
            m["exact_match"] = with_interval(column("exact"))
            for key in ("spearman", "kendall_tau"):  # as shown_correlations: undefined counts 0,
                if any(p[key] is not None for p in per_prompt):  # unless it is undefined everywhere: '-'
                    m[key] = with_interval([p[key] or 0.0 for p in per_prompt])
        intervals[n] = m
        previous = per_prompt
    header = "| figure [95% interval] | " + " | ".join(names) + " |"
    rows = [header, "|" + "---|" * (len(names) + 1)]
    for key, label, scale, d in INTERVAL_FIGURES:
        cells = []
        for n in names:
            value, ci = intervals[n].get(key, (None, None))
            cells.append("-" if value is None or ci is None else
                         f"{scale * value:.{d}f} [{scale * ci[0]:.{d}f}, {scale * ci[1]:.{d}f}]")
        if any(c != "-" for c in cells):
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows, intervals


def interval_figure(names, intervals):
    """report.svg: each model's mean grade and judge pairwise accuracy, with
    their 95% intervals, as two panels of dots and whiskers. Plain SVG text:
    any browser shows it, and it needs no plotting library. A panel no model
    has a figure for (the judge's, with eval_judge=False) is left out."""
    panels = [("mean grade (0-5)", "mean_grade", 0.0, 5.0, 1), ("judge pairwise accuracy %", "judge_accuracy",
                                                                 0.0, 1.0, 100)]
    panels = [p for p in panels if any(p[1] in intervals.get(n, {}) for n in names)]
    height, left, top, plot_h, panel_w = 260, 50, 30, 180, 270
    # each panel and the gap after it; at least room for the caption along the bottom
    width = max(420, left + len(panels) * (panel_w + left // 2))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>']
    for p, (title, key, low, high, scale) in enumerate(panels):
        x0 = left + p * (panel_w + left / 2)
        y = lambda v: top + plot_h * (1 - (v - low) / (high - low))  # value -> pixel row
        out.append(f'<text x="{x0}" y="{top - 12}" font-weight="bold">{title}</text>')
        out.append(f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{top + plot_h}" stroke="black"/>')
        for tick in np.linspace(low, high, 6):
            out.append(f'<text x="{x0 - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{scale * tick:g}</text>')
            out.append(f'<line x1="{x0}" y1="{y(tick):.1f}" x2="{x0 + panel_w}" y2="{y(tick):.1f}" stroke="#ddd"/>')
        step = panel_w / (len(names) + 1)
        for i, n in enumerate(names):
            x = x0 + step * (i + 1)
            out.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{n}</text>')
            value, ci = intervals.get(n, {}).get(key, (None, None))
            if value is None:
                continue
            if ci:
                out.append(f'<line x1="{x:.1f}" y1="{y(ci[0]):.1f}" x2="{x:.1f}" y2="{y(ci[1]):.1f}" '
                           f'stroke="#2060c0" stroke-width="2"/>')
            out.append(f'<circle cx="{x:.1f}" cy="{y(value):.1f}" r="4" fill="#2060c0"/>')
    out.append(f'<text x="{left}" y="{height - 8}" fill="#555">dots: the figure; bars: its 95% bootstrap '
               f'interval over prompts</text>')
    return "\n".join(out + ["</svg>", ""])


# -----------------------------------------------------------------------------
# Inside the loop: what each iteration's judge did

def judgment_diagnostics(r, t):
    """Iteration t's judgments: how often the judge gave no score, the
    histogram of the scores it gave (one per judgment, 0..5)."""
    path = r.path(f"iter{t}", "judgments.jsonl")
    if not os.path.exists(path):
        return None
    scores = [s for x in read_jsonl(path) for ss in x["scores"] for s in ss]
    given = [s for s in scores if s is not None]
    histogram = {k: sum(round(s) == k for s in given) for k in range(6)}
    return {"judgments": len(scores), "no_score": len(scores) - len(given), "histogram": histogram}


def pair_verdicts(r, t):
    """Evaluation only (the loop never sees it): the toy grader's verdict on
    iteration t's pairs, chosen better / equal / worse than rejected, and how
    many pairs are on prompts the grader cannot read. Then the same pairs by
    correctness alone (right = grade >= 4): where exactly one of the two is
    right, is it the chosen one (right_chosen) or the rejected
    (wrong_chosen); both_right pairs differ at most in form (grade 5
    against 4), both_wrong ones teach no right answer. Only right_chosen
    against wrong_chosen can teach the policy to answer right. "kinds" holds
    the same per task kind, in toy.ALL_KINDS' order: how many pairs, and
    right_chosen and wrong_chosen among them ({kind: {"pairs",
    "right_chosen", "wrong_chosen"}}): whether the judge picks the right
    answer on the kinds it checks (invent, count) and not on the others.
    "form" counts the pairs in which one response is a single word (a bare
    answer, right or wrong) and the other is not: the single word chosen
    (bare_chosen; bare_chosen_wrong of them wrong) or rejected: a judge that
    prefers the bare form whether or not the answer is right teaches it on
    wrong answers too."""
    path = r.path(f"iter{t}", "pairs.jsonl")
    if not os.path.exists(path):
        return None
    verdict = dict.fromkeys(("better", "equal", "worse", "ungradable",
                             "right_chosen", "wrong_chosen", "both_right", "both_wrong"), 0)
    kinds, form = {}, dict.fromkeys(("bare_chosen", "bare_chosen_wrong", "bare_rejected"), 0)
    for p in read_jsonl(path):
        if p.get("kind", "actor") != "actor":  # Meta-Rewarding's judge pairs: judge_pair_verdicts
            continue
        task = toy.task_from_prompt(p["prompt"])
        if task is None:
            verdict["ungradable"] += 1
            continue
        a, b = toy.grade(p, p["chosen"]), toy.grade(p, p["rejected"])
        verdict["better" if a > b else "equal" if a == b else "worse"] += 1
        which = {(True, False): "right_chosen", (False, True): "wrong_chosen",
                 (True, True): "both_right", (False, False): "both_wrong"}[a >= toy.RIGHT, b >= toy.RIGHT]
        verdict[which] += 1
        kind = kinds.setdefault(task["kind"], dict.fromkeys(("pairs", "right_chosen", "wrong_chosen"), 0))
        kind["pairs"] += 1
        if which in kind:  # (right against wrong only)
            kind[which] += 1
        chosen_bare, rejected_bare = one_word(p["chosen"]), one_word(p["rejected"])
        if chosen_bare != rejected_bare:  # a bare answer against one with words around it
            form["bare_chosen" if chosen_bare else "bare_rejected"] += 1
            form["bare_chosen_wrong"] += int(chosen_bare and a < toy.RIGHT)
    verdict["kinds"] = {k: kinds[k] for k in toy.ALL_KINDS if k in kinds}
    verdict["form"] = form
    return verdict


def prompt_kinds(r, t):
    """Evaluation only: iteration t's new prompts by the toy task each asks,
    {kind: (written, kept)} in toy.ALL_KINDS' order, then "other" for a line
    the grader cannot read (made-up tasks, empty lines): which kinds the loop
    trains on at all, once the filters have dropped theirs (a kind whose
    prompts are all dropped is never a pair's). None without the file."""
    path = r.path(f"iter{t}", "prompts_generated.jsonl")
    if not os.path.exists(path):
        return None
    counts = {}
    for x in read_jsonl(path):
        task = toy.task_from_prompt(x["prompt"]) if x["prompt"] else None
        kind = task["kind"] if task else "other"
        written, kept = counts.get(kind, (0, 0))
        counts[kind] = (written + 1, kept + (x["dropped"] is None))
    return {k: counts[k] for k in (*toy.ALL_KINDS, "other") if k in counts}


def right_candidates(r, t):
    """Evaluation only: how often iteration t's sampled candidates are right
    (grade >= 4), on the prompts the grader can read. "candidates": the
    share of all candidates (what sampling gets right); "any_right": the
    share of prompts with at least one right candidate, what best-of-n would
    answer with a perfect judge (the most that iteration's best-against-worst
    pairs could set a right answer first on); "mixed": the share with a right
    and a wrong candidate, the only prompts whose pair can teach correctness
    (a prompt whose candidates are all right, "all_right", gives a pair that
    differs in form at most). The prompts' figures count the candidates that
    ended their turn: one cut off at max_response_tokens takes no part in a
    pair (selfreward.response_pairs). None without the candidates, or with
    no prompt the grader can read."""
    path = r.path(f"iter{t}", "candidates.jsonl")
    if not os.path.exists(path):
        return None
    right, paired = [], []  # per gradable prompt, each candidate right or not; each that can be paired
    for x in read_jsonl(path):
        grades = [toy.true_grade(x["prompt"], c) for c in x["candidates"]]  # (None: not a toy prompt)
        if None not in grades:
            right.append([g >= toy.RIGHT for g in grades])
            paired.append([g >= toy.RIGHT for g, done in zip(grades, J.finished_flags(x)) if done])
    if not right:
        return None
    return {"prompts": len(right), "candidates": share([c for cs in right for c in cs]),
            "any_right": share([any(cs) for cs in paired]),
            "mixed": share([any(cs) and not all(cs) for cs in paired]),
            "all_right": share([bool(cs) and all(cs) for cs in paired])}


def kind_pairs_text(kinds):
    return ("; by task kind, pairs and, right against wrong, the right one chosen / the wrong one: "
            + ", ".join(f"{k} {v['pairs']}, {v['right_chosen']} / {v['wrong_chosen']}" for k, v in kinds.items()))


def form_pairs_text(form):
    return (f"; by form, where one response is a single word (a bare answer, right or wrong) and the other is not: "
            f"the single word chosen {form['bare_chosen']} ({form['bare_chosen_wrong']} of them wrong), "
            f"rejected {form['bare_rejected']}")


def states_right_answer(judged):
    """Of the judgments of right responses and of wrong ones (grade >= 4 or
    not), the share that state the right answer (toy.stated_answer), from
    judged = [(prompt, response, its judgments)] on toy prompts (others are
    skipped). {"right": share, "wrong": share}, None where there are none.
    A judge that works the task out states it whatever the response says; one
    that takes its answer from the response states it for right responses
    only."""
    said = {True: [], False: []}
    for prompt, response, judgments in judged:
        task = toy.task_from_prompt(prompt)
        if task is None or task["kind"] == "invent":  # (an invent task has no one answer to state)
            continue
        right = toy.grade({"prompt": prompt, "task": task}, response) >= toy.RIGHT
        said[right] += [toy.stated_answer(j) == toy.answer(task) for j in judgments]
    return {"right": share(said[True]), "wrong": share(said[False])}


def self_checking(r, t):
    """Evaluation only: states_right_answer over iteration t's judgments of
    its own candidates, and over the same judge's (M<t>'s) judgments of the
    EFT eval responses, written by the grader. Where the judge states the
    right answer far less often for its own wrong candidates than for the
    EFT eval's wrong responses, it takes the answer it reads for the right
    one, and its pairs cannot tell a right answer from a wrong one (STUDIES.md:
    "Where the judge's answer comes from"). "own_mixed" is the same over the
    "mixed_prompts" prompts whose candidates are right and wrong
    (mixes_right_and_wrong), where the questions are the same on both sides.
    None without iteration t's judgments."""
    path = r.path(f"iter{t}", "judgments.jsonl")
    if not os.path.exists(path):
        return None
    rows = read_jsonl(path)
    own = [(x["prompt"], c, js) for x in rows for c, js in zip(x["candidates"], x["judgments"])]
    mixed = [x for x in rows if mixes_right_and_wrong(x["prompt"], x["candidates"])]
    eft = r.path("eval", f"M{t}_judgments.jsonl")
    eft = [(x["prompt"], x["response"], x["judgments"]) for x in read_jsonl(eft)] if os.path.exists(eft) else []
    return {"own": states_right_answer(own), "eft_eval": states_right_answer(eft),
            "mixed_prompts": len(mixed),
            "own_mixed": states_right_answer([(x["prompt"], c, js) for x in mixed
                                              for c, js in zip(x["candidates"], x["judgments"])])}


def mixes_right_and_wrong(prompt, candidates):
    """Whether a toy prompt's candidates include a right answer and a wrong
    one (grade >= 4 or not; invent prompts and prompts without a task do not
    count). On such prompts the judge's right and wrong candidates share one
    question, so a gap between how often it states the right answer for
    each is the pull of the answer it reads, not the prompts' difficulty
    (on all prompts the right candidates are the easy questions')."""
    task = toy.task_from_prompt(prompt)
    if task is None or task["kind"] == "invent":
        return False
    return {toy.grade({"prompt": prompt, "task": task}, c) >= toy.RIGHT for c in candidates} == {True, False}


def meta_judge_diagnostics(r, t):
    """Meta-Rewarding only (else None): iteration t's meta-judgments, how
    many carry a verdict, and how many judge pairs the pairs stage kept.
    A run with meta_judge off has none, whatever an earlier run with it on
    left in the folder."""
    path = r.path(f"iter{t}", "meta_judgments.jsonl")
    if not r.settings.get("meta_judge") or not os.path.exists(path):
        return None
    recs = read_jsonl(path)
    battles = [b for x in recs for b in x["battles"]]
    pairs = read_jsonl(r.path(f"iter{t}", "pairs.jsonl")) if os.path.exists(r.path(f"iter{t}", "pairs.jsonl")) else []
    return {"responses": len(recs), "meta_judgments": len(battles),
            "with_verdict": sum(b["winner"] is not None for b in battles),
            "judge_pairs": sum(p.get("kind") == "judge" for p in pairs)}


def judge_pair_verdicts(r, t):
    """Evaluation only: the toy grader's verdict on iteration t's judge pairs
    (Meta-Rewarding). Is the chosen judgment's score closer to the response's
    true grade than the rejected one's: closer / equal / farther; and how
    many are on prompts the grader cannot read. None without judge pairs."""
    path = r.path(f"iter{t}", "pairs.jsonl")
    pairs = [p for p in read_jsonl(path) if p.get("kind") == "judge"] if os.path.exists(path) else []
    if not pairs:
        return None
    verdict = {"closer": 0, "equal": 0, "farther": 0, "ungradable": 0}
    for p in pairs:
        truth = toy.true_grade(p["instruction"], p["response"])
        if truth is None:
            verdict["ungradable"] += 1
            continue
        a, b = abs(p["chosen_score"] - truth), abs(p["rejected_score"] - truth)
        verdict["closer" if a < b else "equal" if a == b else "farther"] += 1
    return verdict


def judge_agreement(r, a, b):
    """Kendall tau between two models' average scores of the same EFT eval
    responses (those both scored): how much the judge changed between them."""
    pa, pb = r.path("eval", f"{a}_judgments.jsonl"), r.path("eval", f"{b}_judgments.jsonl")
    if not (os.path.exists(pa) and os.path.exists(pb)):
        return None
    both = [(x["score"], y["score"]) for x, y in zip(read_jsonl(pa), read_jsonl(pb))
            if x["score"] is not None and y["score"] is not None]
    return J.kendall_tau(*zip(*both)) if len(both) >= 2 else None


def checking_versus_doing(r, names, tests):
    """Toy world, evaluation only: does the judge know the right answer more
    often than the policy gives it? A judge can teach correctness only where it
    checks better than the policy does. Per model and task kind: the
    share of its EFT eval judgments that state the right answer
    (toy.stated_answer), against the share of test prompts it answers right
    (grade >= 4); and whether the judge's verdict follows from a right answer:
    of the judgments that state it, the share whose score is on the
    response's side of 4 (4-5 for a right response, 0-3 for a wrong one);
    for judgments that compare (toy.comparison), of those that state the
    right answer, the share whose "the same" / "not the same" is true.
    An invent task has many right answers and its judgments state none
    (toy.invent_check): for it the judge's share is its balanced accuracy,
    the mean of the share of right responses it scores 4-5 and the share
    of wrong ones it scores 0-3 (50%: a coin toss, or one verdict for all;
    the EFT eval has twice as many wrong responses as right ones), and it
    counts in no other column. Two more invent figures say whether that
    accuracy is checking or form: the same balanced accuracy on responses
    that are a bare word in capitals ("invent_bare", with the counts of right
    and wrong ones: there the rubric's form cannot tell them apart), and the
    share of judgments of responses that name a word whose check reads the
    response's own word ("invent_copies", toy.checked_word); and where the
    checks write each comparison out (check_each_ask), the balanced accuracy
    of their yes/no against the two values written beside it
    ("invent_yes_no", toy.written_comparisons, with the counts of equal and
    differing pairs: 50% is "yes" to all), the comparison step alone.
    And checking or form (judge_by_form): the judge's pairwise accuracy on
    the EFT eval pairs whose better response is bare and the worse not
    ("better_bare"), whose worse one is bare and the better not
    ("worse_bare"), and whose two are of one form ("same_form").
    Returns {model: {"judge", "answer", "follows", "compares", "kinds": {kind: (judge, answer)},
    "better_bare", "worse_bare", "same_form", "by_form_pairs": {those three: pairs},
    and with invent "invent_bare", "invent_bare_n": [right, wrong], "invent_copies",
    "invent_yes_no", "invent_yes_no_n": [equal, differing]}},
    kinds those with test prompts, in toy.ALL_KINDS' order."""
    found = {}
    groups = eft_eval_groups(r)
    for n in names:
        path = r.path("eval", f"{n}_judgments.jsonl")
        if n not in tests or not os.path.exists(path):
            continue
        judged, answered, follows, compares = {k: [] for k in toy.ALL_KINDS}, {k: [] for k in toy.ALL_KINDS}, [], []
        invent = {True: [], False: []}  # per right / wrong response: is the verdict on its side of 4
        bare, bare_n, copies = {True: [], False: []}, {True: 0, False: 0}, []  # the same on bare words; copying
        yes_no = {True: [], False: []}  # per equal / differing written pair: is its yes/no true
        records = read_jsonl(path)  # one record per EFT eval response, its judgments as sampled
        for rec in records:
            task = toy.task_from_prompt(rec["prompt"])
            right = toy.grade({"prompt": rec["prompt"], "task": task}, rec["response"]) >= toy.RIGHT
            if task["kind"] == "invent":  # the verdict's side, scored as right or not
                sides = [(score >= toy.RIGHT) == right for score in map(J.parse_score, rec["judgments"])
                         if score is not None]
                invent[right] += sides
                if toy.bare_word(rec["response"]):
                    bare[right] += sides
                    bare_n[right] += 1
                word = toy.attempts(task, rec["response"])[:1]
                copies += [[toy.checked_word(j)] == word for j in rec["judgments"]] if word else []
                for has, asked, said_yes in (x for j in rec["judgments"] for x in toy.written_comparisons(j)):
                    yes_no[has == asked].append(said_yes == (has == asked))
                continue
            # the word the EFT target's comparison would say for this response (one definition: toy.comparison)
            same = toy.says_same(toy.comparison(toy.attempts(task, rec["response"]), toy.answer(task)))
            for j in rec["judgments"]:
                states_it, score = toy.stated_answer(j) == toy.answer(task), J.parse_score(j)
                judged[task["kind"]].append(states_it)
                if states_it and score is not None:
                    follows.append((score >= toy.RIGHT) == right)  # scored as right, or not
                said_same = toy.says_same(j) if states_it else None
                if said_same is not None:
                    compares.append(said_same == same)
        for x in tests[n]:
            answered[toy.task_of(x)["kind"]].append(x["grade"] >= toy.RIGHT)
        judged["invent"] = balanced_accuracy(invent)
        found[n] = {"judge": share(sum((v for k, v in judged.items() if k != "invent"), [])),
                    "answer": share(sum(answered.values(), [])), "follows": share(follows), "compares": share(compares),
                    "kinds": {k: (judged[k] if k == "invent" else share(judged[k]), share(answered[k]))
                              for k in toy.ALL_KINDS if answered[k]}}
        by_form = judge_by_form(records, groups) if groups else {}
        found[n].update({k: share(v) for k, v in by_form.items()},
                        by_form_pairs={k: len(v) for k, v in by_form.items()})
        if "invent" in found[n]["kinds"]:
            found[n].update(invent_bare=balanced_accuracy(bare), invent_bare_n=[bare_n[True], bare_n[False]],
                            invent_copies=share(copies), invent_yes_no=balanced_accuracy(yes_no),
                            invent_yes_no_n=[len(yes_no[True]), len(yes_no[False])])
    return found


def one_word(text):
    """A bare answer, right or wrong: the response is a single word (or
    number), with nothing around it."""
    return len(text.split()) == 1


def judge_by_form(judged, groups):
    """Checking or form: each EFT eval pair of responses with different
    ranks, by form, and whether the judge orders it as the ranks do
    (judge.pairs_correct, the pairwise accuracy's own rule): "better_bare"
    where the better response is one word and the worse is not, "worse_bare"
    where the worse one is and the better is not, "same_form" where both or
    neither are. A perfect judge orders every pair; one swayed by the bare
    form orders the first far better than the second (one that reads the
    answers alone, blind to form, the second better: a bare right answer
    against a chatty right one is a better_bare pair it ties).
    {kind: [True/False per pair]}."""
    found = {"better_bare": [], "worse_bare": [], "same_form": []}
    for mine, g in zip(judged_by_prompt(judged, groups), groups):
        for i in range(len(g["ranks"])):
            for j in range(i + 1, len(g["ranks"])):
                if g["ranks"][i] == g["ranks"][j]:
                    continue
                better, worse = (i, j) if g["ranks"][i] < g["ranks"][j] else (j, i)
                bare_better, bare_worse = one_word(g["responses"][better]), one_word(g["responses"][worse])
                kind = ("same_form" if bare_better == bare_worse else "better_bare" if bare_better else "worse_bare")
                found[kind] += J.pairs_correct([mine[i]["score"], mine[j]["score"]], [g["ranks"][i], g["ranks"][j]])
    return found


def balanced_accuracy(sides):
    """The mean of the shares of right and of wrong responses judged on their
    side of 4 (sides: {True: [...], False: [...]} per right / wrong response's
    judgments), or None where either has none."""
    shares = [share(sides[True]), share(sides[False])]
    return None if None in shares else sum(shares) / 2


def checking_lines(found):
    """checking_versus_doing as a table: judge % / answers %, in all and per task kind."""
    if not found:
        return []
    kinds = list(next(iter(found.values()))["kinds"])  # (the same test prompts for every model)
    header = ("| model | judge states the right answer % | answers right % | its verdict follows a right answer % | "
              "its comparison is right % | " + " | ".join(f"{k}: judge / answers %" for k in kinds) + " |")
    lines = ["Checking against doing (evaluation only): the share of each model's EFT eval judgments that state the "
             "right answer (\"The correct answer is X.\"), against the share of test prompts it answers right "
             "(grade >= 4). The judge can teach correctness only where the first is higher, and only if its "
             "score then follows: of the judgments that state the right answer, the share that score the response "
             "4-5 when it is right and 0-3 when it is wrong (a plain share, not a balanced one: one verdict for "
             "all, 0-3, would score the share of wrong responses among them, not 50%); and, for judgments that set the "
             "response's answer against it (--judge_compares), the share of those whose \"the same\" or \"not the "
             "same\" is true." + (" An invent task has many right answers and its judgments state none: its "
                                   "judge column is the judge's balanced accuracy, the mean of the share of right "
                                   "responses it scores 4-5 and the share of wrong ones it scores 0-3 (50% is a coin "
                                   "toss, or one verdict for all), and it counts in no other judge column."
                                   if "invent" in kinds else ""), "",
             header, "|" + "---|" * (header.count("|") - 1)]
    for n, f in found.items():
        lines.append(f"| {n} | {pct(f['judge'])} | {pct(f['answer'])} | {pct(f['follows'])} | "
                     f"{pct(f['compares'])} | "
                     + " | ".join(f"{pct(j)} / {pct(a)}" for j, a in f["kinds"].values()) + " |")
    counts = next(iter(found.values())).get("by_form_pairs")
    if counts:  # (the same EFT eval pairs for every model)
        lines += ["", f"Checking or form (evaluation only): the judge's pairwise accuracy on the EFT eval pairs whose "
                  f"better response is a single word (a bare answer) and the worse is not ({counts['better_bare']} "
                  f"pairs), whose worse one is a single word and the better is not ({counts['worse_bare']}), and "
                  f"whose two are of one form ({counts['same_form']}), %: a perfect judge orders them all, one swayed "
                  f"by the bare form the first far better than the second: "
                  + "; ".join(f"{n} {pct(f['better_bare'])} / {pct(f['worse_bare'])} / {pct(f['same_form'])}"
                              for n, f in found.items()) + "."]
    if "invent" in kinds:
        right, wrong = next(iter(found.values()))["invent_bare_n"]
        lines += ["", f"Invent, checking or form: the judge's balanced accuracy on the invent responses that are a "
                  f"bare word in capitals ({right} right, {wrong} wrong; there the form cannot tell them apart, and a "
                  f"coin toss's spread, two standard deviations counted over responses, is about "
                  f"+-{100 * math.sqrt(0.25 / max(right, 1) + 0.25 / max(wrong, 1)):.0f} points), and the share "
                  f"of judgments of responses that name a word whose check reads that word "
                  f"(%): " + "; ".join(f"{n} {pct(f['invent_bare'])} and {pct(f['invent_copies'])}"
                                       for n, f in found.items()) + "."]
        if any(f.get("invent_yes_no") is not None for f in found.values()):  # checks that write each comparison
            lines += ["", "Invent, the comparison alone: where the check writes each property beside its ask "
                      "(--check_each_ask), the balanced accuracy of its yes/no against the two values written "
                      "beside it, however they were read (50% is \"yes\" to all), with the pairs it wrote equal "
                      "and differing: " + "; ".join(
                          f"{n} {pct(f['invent_yes_no'])} ({f['invent_yes_no_n'][0]} equal, "
                          f"{f['invent_yes_no_n'][1]} differing)" for n, f in found.items()
                          if sum(f["invent_yes_no_n"])) + "."]  # (a model that wrote none: left out)
    return lines + [""]


def one_answer_lines(tests):
    """Toy world: what one answer given to every test prompt of a kind scores
    (the kind's most common right answer among them), per kind: a model near
    that share of a kind may be giving that answer, not doing the task ('4'
    or '6' is right on about a third of length prompts; before the count tasks drew
    their answer first, '1' was right on 68% of count tasks)."""
    answers = {}  # kind -> Counter of right answers
    for task in map(toy.task_of, tests):
        if task and task["kind"] != "invent":  # (an invent task has many right answers)
            answers.setdefault(task["kind"], Counter())[toy.answer(task)] += 1
    if not answers:
        return []
    common = {k: max(c, key=lambda a: (c[a], a)) for k, c in answers.items()}  # (ties: the last answer in order)
    return ["For scale, one answer to every test prompt of a kind, its most common right answer there, is right "
            "on (%): " + "; ".join(f"{k} {pct(answers[k][common[k]] / answers[k].total())} ('{common[k]}')"
                                   for k in toy.ALL_KINDS if k in answers)
            + ". A model near that share of a kind may be giving that one answer, not doing the task.", ""]


def diagnostic_lines(r, names, iterations, toy_world):
    lines = ["Inside the loop, per iteration (the judge's own judgments of the candidates):", ""]
    for t in range(1, iterations + 1):
        d = judgment_diagnostics(r, t)
        if d:
            hist = ", ".join(f"{k}: {v}" for k, v in d["histogram"].items())
            lines.append(f"- iteration {t}: {d['judgments']} judgments, {d['no_score']} without a score; "
                         f"scores given {{{hist}}}")
        kinds = prompt_kinds(r, t) if toy_world else None
        if kinds:
            lines.append("  - its new prompts by task kind (evaluation only), written / kept after the filters: "
                         + ", ".join(f"{k} {w} / {kept}" for k, (w, kept) in kinds.items()))
        ceiling = right_candidates(r, t) if toy_world else None
        if ceiling:
            lines.append(f"  - the grader on its candidates (evaluation only; {ceiling['prompts']} prompts it can "
                         f"grade): {pct(ceiling['candidates'])}% of the candidates are right; "
                         f"{pct(ceiling['any_right'])}% of the prompts have a right one (best of the candidates by a "
                         f"perfect judge), {pct(ceiling['mixed'])}% a right and a wrong one (the prompts where a pair "
                         f"can teach correctness), {pct(ceiling['all_right'])}% only right ones")
        v = pair_verdicts(r, t) if toy_world else None
        if v:
            lines.append(f"  - the grader on its pairs (evaluation only): chosen better {v['better']}, equal "
                         f"{v['equal']}, worse {v['worse']}; on prompts it cannot grade {v['ungradable']}; by "
                         f"correctness: right against wrong, the right one chosen {v['right_chosen']}, the wrong "
                         f"one {v['wrong_chosen']}; both right (form only) {v['both_right']}, both wrong "
                         f"{v['both_wrong']}" + (kind_pairs_text(v["kinds"]) if v["kinds"] else "")
                         + form_pairs_text(v["form"]))
        c = self_checking(r, t) if toy_world else None
        if c:
            own, eft = c["own"], c["eft_eval"]
            mixed = c["own_mixed"]
            lines.append(f"  - the judge states the right answer (evaluation only): on its own candidates, in "
                         f"{pct(own['right'])}% of its judgments of right ones and {pct(own['wrong'])}% of wrong "
                         f"ones; on the {c['mixed_prompts']} prompts whose candidates are right and wrong (the same "
                         f"questions: the gap is the pull of the answer it reads), {pct(mixed['right'])}% and "
                         f"{pct(mixed['wrong'])}%; on the EFT eval responses (M{t}), {pct(eft['right'])}% and "
                         f"{pct(eft['wrong'])}%")
        m = meta_judge_diagnostics(r, t)
        if m:
            lines.append(f"  - meta-judging (Meta-Rewarding): {m['meta_judgments']} meta-judgments (battles of two "
                         f"judgments) of {m['responses']} responses whose judgments disagree in score, "
                         f"{m['with_verdict']} with a verdict; {m['judge_pairs']} judge pairs")
        v = judge_pair_verdicts(r, t) if toy_world else None
        if v:
            lines.append(f"  - the grader on the judge pairs (evaluation only): the chosen judgment's score is closer "
                         f"to the true grade {v['closer']}, as close {v['equal']}, farther {v['farther']}; on "
                         f"prompts it cannot grade {v['ungradable']}")
    taus = [(a, b, judge_agreement(r, a, b)) for a, b in zip(names[1:], names[2:])]
    if any(tau is not None for _, _, tau in taus):
        lines.append("- the judge from model to model (Kendall tau of their scores of the same EFT eval responses, "
                     "pooled over all responses, not per prompt as the tables' Kendall; from M1, the first "
                     "model trained to judge): "
                     + ", ".join(f"{a} -> {b} {tau:.3f}" for a, b, tau in taus if tau is not None))
    return lines + [""]


def pairs_by(pair_by):
    """How a run's pairs were picked, for its log and report: nothing for the
    paper's method (the model's own judge), a note for a control."""
    if pair_by in ("grader", "right"):
        return f" (best and worst by the grader, pair_by={pair_by!r}: a perfect-judge control, not self-rewarding)"
    if pair_by == "coin":
        return (" (the judge's pairs turned round or not on a fair coin, pair_by='coin': a control with no "
                "preference in it, not self-rewarding)")
    return ""


def iteration_lines(r, stages, iterations):
    """What each stage of each iteration kept and dropped, and the lengths of the pairs' responses."""
    lines = []
    eft = stages.get("eft_targets")
    if eft:
        source = f"from {eft['file']}" if "file" in eft else "written by the SFT baseline"
        lines.append(f"- EFT targets {source}: {eft.get('targets')} kept; "
                     f"{eft.get('judgments_with_score')} of {eft.get('judgments')} judgments had a score"
                     + (f"; {eft['too_long']} responses too long to judge" if eft.get("too_long") else "")
                     + (f"; dropped {eft['dropped']}" if eft.get("dropped") else ""))
    for t in range(1, iterations + 1):
        p, cand, jd, pr = (stages.get(f"iter{t}_{k}", {}) for k in ("prompts", "candidates", "judgments", "pairs"))
        line = (f"- iteration {t}: {p.get('kept', '?')} new prompts kept of {p.get('requested', '?')} requested, "
                f"{pr.get('pairs', '?')} preference pairs")
        line += pairs_by(pr.get("by", "judge"))
        if p.get("dropped"):
            line += f"; prompts dropped: {p['dropped']}"
        if cand.get("too_long"):
            line += f"; {cand['too_long']} prompts too long to answer"
        if cand.get("cut_off"):
            line += f"; {cand['cut_off']} candidates cut off at max_response_tokens (never chosen nor rejected)"
        if jd.get("judgments"):
            line += f"; {jd['judgments_with_score']} of {jd['judgments']} judgments with a score"
        if jd.get("too_long"):
            line += f", {jd['too_long']} candidates too long to judge"
        if pr.get("dropped"):
            line += f"; pairs dropped: {pr['dropped']}"
        if "judge_pairs" in pr:  # Meta-Rewarding
            line += f"; {pr['judge_pairs']} judge pairs (dropped: {pr['judge_dropped']})"
            if pr.get("judge_by", "meta") != "meta":
                line += " (best and worst judgment by the grader, meta_pair_by='grader': a perfect-meta-judge control)"
        pairs_file = r.path(f"iter{t}", "pairs.jsonl")
        if os.path.exists(pairs_file):
            pairs = [p for p in read_jsonl(pairs_file) if p.get("kind", "actor") == "actor"]
            mean = lambda k: sum(len(x[k]) for x in pairs) / max(1, len(pairs))
            line += f"; chosen {mean('chosen'):.0f} vs rejected {mean('rejected'):.0f} chars on average"
        pick = stages.get(f"M{t + 1}", {}).get("pick")
        if pick:  # dpo_pick_every: the checkpoint the grader chose on the validation prompts
            line += (f"; DPO checkpoints' mean grade on {pick['valid_prompts']} validation prompts: "
                     + ", ".join(f"step {x['step']} {x['mean_grade']:.3f}"
                                 + (f" ({100 * x['right']:.1f}% right)" if "right" in x else "")
                                 for x in pick["checkpoints"])
                     + f" (M{t + 1}: step {pick['picked']})"
                     + (f", {pick['written_by_the_loop']} of them written by the loop in iterations 1-{t}"
                        if pick.get("written_by_the_loop") else ""))
        lines.append(line)
    return lines


def by_source(overlap):
    """selfreward.benchmark_overlap's count by source, the sources with any: "EFT training 1, ..."."""
    return ", ".join(f"{k} {v}" for k, v in overlap["by_source"].items() if v)


def trained_on(info):
    """How many of a benchmark's questions the model was trained on
    (selfreward.benchmark_overlap), as a clause; '' when it was not counted."""
    o = info.get("trained_on")
    if not o:
        return ""
    where = by_source(o)
    return f"; trained on {o['seen']} of its {o['questions']} questions" + (f" ({where})" if where else "")


def external_judges(infos):
    """Where the answers for external judges are, how to judge them, and how
    many of each benchmark's questions the model had seen in training."""
    alpaca = [i["alpaca_eval"] for i in infos.values() if i.get("alpaca_eval")]
    mt = [i["mt_bench"] for i in infos.values() if i.get("mt_bench")]
    if not alpaca and not mt:
        return []
    counted = any(x.get("trained_on") for x in alpaca + mt)
    lines = ["Answers for external judges" + (" (and how many of the benchmark's questions each model was trained "
             "on, the same text or a near duplicate by the prompt filter's ROUGE-L: scores on those questions "
             "are not held out)" if counted else "") + ":", ""]
    lines += [f"- AlpacaEval: `{a['path']}` (`alpaca_eval --model_outputs={shlex.quote(a['path'])}`){trained_on(a)}" + (
        f"; {a['too_long']} prompts too long for the context, answered \"ERROR\" (scored as answers)"
        if a.get("too_long") else "") for a in alpaca]
    if mt:
        folder = os.path.dirname(mt[0]["path"])
        lines += [f"- MT-Bench: `{m['path']}`{trained_on(m)}" + (
            f"; {m['too_long']} questions with a turn too long for the context, answered \"ERROR\" there (as "
            f"FastChat marks a turn it could not answer; its judge scores them)" if m.get("too_long") else "")
            for m in mt]
        lines.append(f"  (FastChat: copy `{folder}/*.jsonl` into `fastchat/llm_judge/data/mt_bench/model_answer/` "
                     f"(`mkdir -p` it: a fresh clone has none), then in `fastchat/llm_judge`: "
                     f"`python gen_judgment.py --model-list "
                     f"{' '.join(shlex.quote(os.path.basename(m['path'])[:-len('.jsonl')]) for m in mt)}`)")
    return lines + [""]


def left_out(r, names, stages, iterations):
    """The files that finished stages wrote and this report reads, where they
    are gone (deleted after the run, or a run folder copied without them),
    each with what of the report it feeds: the report names them instead of
    quietly leaving those parts out. The report does not redo a stage for a
    file it reads: Run.stage makes a gone output again only for a stage that
    needs it to run (before the report, the evaluation's files), so a deleted
    70B checkpoint is not retrained for a report; deleting a stage's done/
    record redoes it."""
    toy_world = r.settings.get("seed_data") == "toy"
    expected = []
    if any(stages.get(f"eval_{n}", {}).get("judge") for n in names):
        expected.append((("seed", "eft_eval.jsonl"), "every judge figure's interval, and the judge in report.svg"))
    for n in names:
        if f"eval_{n}" in stages:
            if toy_world:
                expected.append((("eval", f"{n}_test.jsonl"), f"{n}'s grades (without them the report reads the "
                                                              "run as one on real data)"))
            if stages[f"eval_{n}"].get("judge"):
                expected.append((("eval", f"{n}_judgments.jsonl"), f"{n}'s judge intervals (and report.svg's "
                                                                   "dot), its row of the checking-against-doing "
                                                                   "table, and judge agreement between models"))
    for t in range(1, iterations + 1):
        for stage, what in (("judgments", "the diagnostics of its judgments"),
                            ("pairs", "the grader's verdicts on its pairs"),
                            ("meta_judgments", "the diagnostics of its meta-judgments")):
            if f"iter{t}_{stage}" in stages:
                expected.append(((f"iter{t}", f"{stage}.jsonl"), f"iteration {t}: {what}"))
    return [("/".join(path), what) for path, what in expected if not os.path.exists(r.path(*path))]


def grader_inside(settings):
    """Whether the toy grader was used inside the loop, for the report's first
    line: never with the paper's settings; the settings that let it in say so."""
    get = settings.get
    inside = [f"pair_by={get('pair_by')!r} (it picked the pairs)" if get("pair_by") in ("grader", "right") else "",
              "meta_pair_by='grader' (it picked the judge pairs)" if get("meta_judge") and
              get("meta_pair_by") == "grader" else "",
              f"eft_own_answers={get('eft_own_answers')} (it judged the SFT baseline's answers for M1's data)"
              if get("eft_own_answers") else "",
              f"n_meta_seed={get('n_meta_seed')} (it wrote meta-judge demonstrations for M1's data)"
              if get("meta_judge") and get("n_meta_seed") else "",
              f"dpo_pick_every={get('dpo_pick_every')} (it chose each DPO checkpoint, on validation prompts of "
              f"its own)" if get("dpo_pick_every") else ""]
    inside = [x for x in inside if x]
    return "used inside the loop by " + "; ".join(inside) if inside else "never used inside the loop"


def write_report(r, names, infos, run_name, iterations, stages_of_run=None):
    """Tabulate every model's evaluation into out/<run>/report.md (and metrics.jsonl).
    names: the models in order; infos: each model's evaluation stage info;
    stages_of_run: the names of the stages this run has (the loop's), whose
    records in done/ the report reads (None: every record there)."""
    tests = {n: read_jsonl(r.path("eval", f"{n}_test.jsonl")) for n in names
             if os.path.exists(r.path("eval", f"{n}_test.jsonl"))}
    graded = len(tests) == len(names)  # the toy world's grader graded every model
    rows, metrics = toy_rows(names, tests, infos) if graded else real_rows(names, infos)
    interval_table, intervals = interval_rows(r, names, tests if graded else {})
    checking = checking_versus_doing(r, names, tests) if graded else {}
    for m in metrics:
        if m["model"] in intervals:
            m["intervals"] = intervals[m["model"]]
        if m["model"] in checking:
            m["checking"] = checking[m["model"]]
    stages = {}  # the records in done/ of this run's stages (stages_of_run; None: all), not of stages an
    for f in sorted(os.listdir(r.path("done"))):  # earlier command had and this one has not (Meta-Rewarding's)
        if stages_of_run is None or f in stages_of_run:
            with open(r.path("done", f)) as fh:
                stages[f] = json.load(fh)
    total = sum(s.get("seconds", 0) for s in stages.values())
    missing = left_out(r, names, stages, iterations)
    for path, what in missing:
        D.log(f"warning: {r.path(path)} not found: the report leaves out {what}")
    missing_lines = [] if not missing else [
        "**Left out**: files that finished stages wrote are not found, so this report lacks what they feed: "
        + "; ".join(f"`{path}` ({what})" for path, what in missing)
        + ". To have them back, delete the stage's record in `done/` and run the same command again.", ""]
    used = grader_inside(r.settings)
    judged = [m for m in metrics if m.get("judge")]
    no_judge = "no model has judge figures (eval_judge=False, or their files are left out): its columns show '-'"
    intro = (f"Test prompts answered greedily and graded by the toy world's ground-truth grader ({used}); "
             + ("the judge columns are each model's reward-model metrics on the EFT eval set against the "
                f"ground-truth ranking ({r.settings['n_judge']} judgments per response, averaged)." if judged else
                no_judge + ".")
             if graded else
             "Real data: no ground-truth grader. "
             + ("The judge columns are each model's reward-model metrics on the EFT eval set against the human "
                "rankings (judgments averaged per response; coverage counts single judgments)" if judged else
                no_judge[0].upper() + no_judge[1:])
             + "; answers for AlpacaEval are greedy and MT-Bench's are sampled at each category's FastChat "
               "temperature, to be judged by external judges.")
    ties = "" if not judged else (
        " A prompt has no Spearman or Kendall correlation where fewer than two of its responses got a score, or "
        "the scored ones' scores or their ranks are all alike; it counts as 0 in their means, and a model with "
        "no prompt that has one shows '-' (prompts without one: " + ", ".join(
            f"{m['model']} {m['judge'].get('n_undefined_correlation', 0)}" for m in judged) + "). Pairwise "
        "accuracy and exact match count a pair or response without a score, and a pair scored equal, as wrong: "
        "a judge that scores "
        "almost nothing (the toy world's SFT baseline) shows about 0, and the next model's step from it is "
        "mostly its learning to score. 5-best: of the responses whose averaged score is 5 (every judgment with "
        "a score 5), the share ranked best of their group.")
    over = (f"the {len(tests[names[0]])} test prompts (answers) and the EFT eval prompts (judge; " if graded else
            "the EFT eval prompts (")
    drawn_judge = " and judge pairwise accuracy" if any("judge_accuracy" in v for v in intervals.values()) else ""
    intervals_intro = [] if len(interval_table) < 3 else [  # (header and rule only: no figure has one)
        f"The same figures with 95% percentile-bootstrap intervals over {over}{RESAMPLES:,} resamples, seed 0; "
        f"differences between models paired prompt by prompt). They cover the drawing of these prompts for this "
        f"run's models, not the run-to-run spread (another seed trains other models: `python seeds.py` measures "
        f"it): a difference whose interval holds 0 is not a result of this run, and one that excludes 0 is this "
        f"run's, not yet the method's; at a share of 0% or 100% the interval has no width" + (
            f". Mean grade{drawn_judge} drawn in report.svg:" if graded else ":"), "",
        *interval_table, ""]
    text = "\n".join([
        f"# Self-rewarding run `{run_name}`", "", *missing_lines, intro + ties, "",
        *rows, "", *intervals_intro, *iteration_lines(r, stages, iterations),
        f"- stage time in all: {total / 60:.1f} min", "", *diagnostic_lines(r, names, iterations, graded),
        *checking_lines(checking), *(one_answer_lines(tests[names[0]]) if checking else []),
        *external_judges({n: infos.get(n, {}) for n in names}),
        "Settings:", "", "```", *(f"{k} = {v!r}" for k, v in r.settings.items()), "```", ""])
    if D.is_rank0():
        write_text(r.path("report.md"), text)
        if graded:
            write_text(r.path("report.svg"), interval_figure(names, intervals))
        elif os.path.exists(r.path("report.svg")):  # a figure of grades this report no longer has
            os.remove(r.path("report.svg"))
        for m in metrics:
            r.metric({"eval": m})
    D.barrier()
    return {}


def table(path):
    """The tables of a report.md, a blank line between two (what a finished
    run prints, again on every rerun)."""
    tables = [[]]
    with open(path) as f:
        for line in f:
            if line.startswith("|"):
                tables[-1].append(line.rstrip("\n"))
            elif tables[-1]:  # the end of a table
                tables.append([])
    return "\n\n".join("\n".join(t) for t in tables if t)


if __name__ == "__main__":
    import configurator
    configurator.library(__doc__, "report.py", "python selfreward.py writes out/<run>/report.md; to write it "
                         "again, delete out/<run>/done/report and run the same command")
