"""
The evaluation report of a self-rewarding run: out/<run>/report.md, one row
per model (SFT baseline, M1, M2, ...). On the toy world:

    on the toy world's held-out test prompts   mean grade, exact solves, head-to-head
                                               against the previous model and the SFT baseline
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


def num(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x)


def toy_rows(names, tests, infos):
    """The toy table: graded test answers and the judge, per model; and metrics.jsonl's records."""
    rows, metrics = [], []
    header = ("| model | mean grade (0-5) | exact solve % | vs previous: win / tie / loss % | "
              "vs SFT baseline: win / tie / loss % | judge pairwise acc % | 5-best % | exact match % | "
              "Spearman | Kendall tau | judge coverage % | avg response length (chars) |")
    rows += [header, "|" + "---|" * (header.count("|") - 1)]
    for i, n in enumerate(names):
        g = [x["grade"] for x in tests[n]]
        m = {"model": n, "mean_grade": sum(g) / len(g), "exact_solve": sum(x == 5 for x in g) / len(g),
             "avg_length": sum(len(x["response"]) for x in tests[n]) / len(g)}
        if i > 0:
            m["vs_previous"] = head_to_head(tests[n], tests[names[i - 1]])
        if n != "SFT" and "SFT" in tests:
            m["vs_sft"] = head_to_head(tests[n], tests["SFT"])
        j = infos.get(n, {}).get("judge") or {}
        m["judge"] = j
        metrics.append(m)
        wtl = lambda d: "-" if not d else f"{100 * d['win']:.1f} / {100 * d['tie']:.1f} / {100 * d['loss']:.1f}"
        rows.append(f"| {n} | {m['mean_grade']:.2f} | {pct(m['exact_solve'])} | "
                    f"{wtl(m.get('vs_previous'))} | {wtl(m.get('vs_sft'))} | {pct(j.get('pairwise_accuracy'))} | "
                    f"{pct(j.get('five_best'))} | {pct(j.get('exact_match'))} | {num(j.get('spearman'), '{:.3f}')} | "
                    f"{num(j.get('kendall_tau'), '{:.3f}')} | {pct(judge_coverage(j))} | {m['avg_length']:.1f} |")
    return rows, metrics


def judge_coverage(j):
    """The share of judgments that carry a score (per judgment; older runs: per response)."""
    if j.get("judgments"):
        return j["judgments_with_score"] / j["judgments"]
    return j.get("coverage")


def real_rows(names, infos):
    """The real-data table: no grader, so the judge against human ranks and the answers' lengths."""
    rows, metrics = [], []
    header = ("| model | judge coverage % (judgments with a score) | judge pairwise acc % | 5-best % | "
              "exact match % | Spearman | Kendall tau | too long to judge | AlpacaEval answers (too long) | "
              "AlpacaEval avg length (chars) | MT-Bench answers (too long) | MT-Bench avg length (chars) |")
    rows += [header, "|" + "---|" * (header.count("|") - 1)]
    for n in names:
        info = infos.get(n, {})
        j, a, b = info.get("judge") or {}, info.get("alpaca_eval") or {}, info.get("mt_bench") or {}
        metrics.append({"model": n, "judge": j, "alpaca_eval": a, "mt_bench": b})
        answers = lambda d: "-" if not d else f"{d['answered']} ({d['too_long']})"
        rows.append(f"| {n} | {pct(judge_coverage(j) if j else None)} | {pct(j.get('pairwise_accuracy'))} | "
                    f"{pct(j.get('five_best'))} | {pct(j.get('exact_match'))} | {num(j.get('spearman'), '{:.3f}')} | "
                    f"{num(j.get('kendall_tau'), '{:.3f}')} | {j.get('too_long', '-')} | {answers(a)} | "
                    f"{num(a.get('avg_length'))} | {answers(b)} | {num(b.get('avg_length'))} |")
    return rows, metrics


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
        if p.get("dropped"):
            line += f"; prompts dropped: {p['dropped']}"
        if cand.get("too_long"):
            line += f"; {cand['too_long']} prompts too long to answer"
        if jd.get("judgments"):
            line += f"; {jd['judgments_with_score']} of {jd['judgments']} judgments with a score"
        if jd.get("too_long"):
            line += f", {jd['too_long']} candidates too long to judge"
        if pr.get("dropped"):
            line += f"; pairs dropped: {pr['dropped']}"
        pairs_file = r.path(f"iter{t}", "pairs.jsonl")
        if os.path.exists(pairs_file):
            pairs = read_jsonl(pairs_file)
            mean = lambda k: sum(len(x[k]) for x in pairs) / max(1, len(pairs))
            line += f"; chosen {mean('chosen'):.0f} vs rejected {mean('rejected'):.0f} chars on average"
        lines.append(line)
    return lines


def external_judges(infos):
    """Where the answers for external judges are, and how to judge them."""
    alpaca = [i["alpaca_eval"]["path"] for i in infos.values() if i.get("alpaca_eval")]
    mt = [i["mt_bench"]["path"] for i in infos.values() if i.get("mt_bench")]
    if not alpaca and not mt:
        return []
    lines = ["Answers for external judges:", ""]
    lines += [f"- AlpacaEval: `{p}` (`alpaca_eval --model_outputs={p}`)" for p in alpaca]
    if mt:
        folder = os.path.dirname(mt[0])
        lines += [f"- MT-Bench: `{p}`" for p in mt]
        lines.append(f"  (FastChat: copy `{folder}/*.jsonl` into `fastchat/llm_judge/data/mt_bench/model_answer/`, "
                     f"then `python gen_judgment.py --model-list "
                     f"{' '.join(os.path.basename(p)[:-len('.jsonl')] for p in mt)}`)")
    return lines + [""]


def write_report(r, names, infos, run_name, iterations):
    """Tabulate every model's evaluation into out/<run>/report.md (and metrics.jsonl).
    names: the models in order; infos: each model's evaluation stage info."""
    tests = {n: read_jsonl(r.path("eval", f"{n}_test.jsonl")) for n in names
             if os.path.exists(r.path("eval", f"{n}_test.jsonl"))}
    toy = len(tests) == len(names)  # the toy world's grader graded every model
    rows, metrics = toy_rows(names, tests, infos) if toy else real_rows(names, infos)
    stages = {}
    for f in sorted(os.listdir(r.path("done"))):
        with open(r.path("done", f)) as fh:
            stages[f] = json.load(fh)
    total = sum(s.get("seconds", 0) for s in stages.values())
    intro = ("Test prompts answered greedily and graded by the toy world's ground-truth grader (never used "
             "inside the loop); the judge columns are each model's reward-model metrics on the EFT eval set "
             "against the ground-truth ranking (3 judgments per response, averaged)." if toy else
             "Real data: no ground-truth grader. The judge columns are each model's reward-model metrics on the "
             "EFT eval set against the human rankings (judgments averaged per response; coverage counts single "
             "judgments); answers for AlpacaEval and MT-Bench are greedy, to be judged by external judges.")
    text = "\n".join([
        f"# Self-rewarding run `{run_name}`", "", intro, "",
        *rows, "", *iteration_lines(r, stages, iterations), f"- stage time in all: {total / 60:.1f} min", "",
        *external_judges({n: infos.get(n, {}) for n in names}),
        "Settings:", "", "```", *(f"{k} = {v!r}" for k, v in r.settings.items()), "```", ""])
    if D.is_rank0():
        write_text(r.path("report.md"), text)
        for m in metrics:
            r.metric({"eval": m})
    D.barrier()
    D.log("\n" + "\n".join(rows))
    return {}
