"""
The evaluation report of a self-rewarding run: out/<run>/report.md, one row
per model (SFT baseline, M1, M2, ...):

    on the toy world's held-out test prompts   mean grade, exact solves, head-to-head
                                               against the previous model and the SFT baseline
    as a judge, on the EFT eval set            the reward-model metrics (judge.reward_metrics)

then the counts of each iteration, the stage time and the run's settings.
selfreward.py's evaluation stage writes what this file reads (eval/<model>_test.jsonl,
the judge metrics); this file only tabulates them.
"""
import json
import os

import distributed as D
from data import read_jsonl, write_text


def head_to_head(a, b):
    """Win / tie / loss of model a against model b, prompt by prompt, by grade."""
    w = t = l = 0
    for x, y in zip(a, b):
        w, t, l = w + (x["grade"] > y["grade"]), t + (x["grade"] == y["grade"]), l + (x["grade"] < y["grade"])
    n = max(1, len(a))
    return {"win": w / n, "tie": t / n, "loss": l / n}


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def write_report(r, names, infos, run_name, iterations):
    """Tabulate every model's evaluation into out/<run>/report.md (and metrics.jsonl).
    names: the models in order; infos: each model's evaluation stage info (its "judge" metrics)."""
    rows, metrics = [], []
    tests = {n: read_jsonl(r.path("eval", f"{n}_test.jsonl")) for n in names
             if os.path.exists(r.path("eval", f"{n}_test.jsonl"))}
    header = ("| model | mean grade (0-5) | exact solve % | vs previous: win / tie / loss % | "
              "vs SFT baseline: win / tie / loss % | judge pairwise acc % | 5-best % | exact match % | "
              "Spearman | Kendall tau | judge coverage % | avg response length (chars) |")
    rows += [header, "|" + "---|" * (header.count("|") - 1)]
    for i, n in enumerate(names):
        m = {"model": n}
        if n in tests:
            g = [x["grade"] for x in tests[n]]
            m.update(mean_grade=sum(g) / len(g), exact_solve=sum(x == 5 for x in g) / len(g),
                     avg_length=sum(len(x["response"]) for x in tests[n]) / len(g))
            if i > 0:
                m["vs_previous"] = head_to_head(tests[n], tests[names[i - 1]])
            if n != "SFT" and "SFT" in tests:
                m["vs_sft"] = head_to_head(tests[n], tests["SFT"])
        j = infos.get(n, {}).get("judge") or {}
        m["judge"] = j
        metrics.append(m)
        wtl = lambda d: "-" if not d else f"{100 * d['win']:.1f} / {100 * d['tie']:.1f} / {100 * d['loss']:.1f}"
        corr = lambda v: "-" if v is None else f"{v:.3f}"
        rows.append(f"| {n} | {m.get('mean_grade', float('nan')):.2f} | {pct(m.get('exact_solve'))} | "
                    f"{wtl(m.get('vs_previous'))} | {wtl(m.get('vs_sft'))} | {pct(j.get('pairwise_accuracy'))} | "
                    f"{pct(j.get('five_best'))} | {pct(j.get('exact_match'))} | {corr(j.get('spearman'))} | "
                    f"{corr(j.get('kendall_tau'))} | {pct(j.get('coverage'))} | {m.get('avg_length', 0):.1f} |")
    stages = {}
    for f in sorted(os.listdir(r.path("done"))):
        with open(r.path("done", f)) as fh:
            stages[f] = json.load(fh)
    total = sum(s.get("seconds", 0) for s in stages.values())
    counts = [f"- iteration {t}: {stages.get(f'iter{t}_prompts', {}).get('kept', '?')} new prompts kept of "
              f"{stages.get(f'iter{t}_prompts', {}).get('requested', '?')} requested, "
              f"{stages.get(f'iter{t}_pairs', {}).get('pairs', '?')} preference pairs"
              for t in range(1, iterations + 1)]
    text = "\n".join([
        f"# Self-rewarding run `{run_name}`", "",
        "Test prompts answered greedily and graded by the toy world's ground-truth grader (never used "
        "inside the loop); the judge columns are each model's reward-model metrics on the EFT eval set "
        "against the ground-truth ranking (3 judgments per response, averaged).", "",
        *rows, "", *counts, f"- stage time in all: {total / 60:.1f} min", "",
        "Settings:", "", "```", *(f"{k} = {v!r}" for k, v in r.settings.items()), "```", ""])
    if D.is_rank0():
        write_text(r.path("report.md"), text)
        for m in metrics:
            r.metric({"eval": m})
    D.barrier()
    D.log("\n" + "\n".join(rows))
    return {}
