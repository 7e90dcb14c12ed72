"""
The loop over several seeds: is a step from one model to the next a result,
or the run-to-run spread? One run's step between models (a few hundredths of
a grade point on the toy world) is often as large as the difference between
two runs of the same commit, so a claim needs several seeds.

    python seeds.py                          # seeds 1, 2, 3 of the default toy run
    python seeds.py --seeds=1,2,3,4,5 --iterations=3 --run_name=study

--seeds=1,2,3 (the default) names the seeds; it is this script's own setting
(each run's --seed is set from it; seed, plan_only, world_size and
gpu_memory_gb are not settings here: they are each run's, python
selfreward.py takes them). --dry_run=True
says, for each seed's run, which stages would run and why, and runs none.

Every other setting is selfreward.py's (python selfreward.py --help). Each
seed is a whole run in out/<run_name>-seed<s>/ with its own seed data,
initialisation and sampling (everything random derives from `seed`); an
interrupted study resumes as a run does. Then out/<run_name>-seeds.md lists
each figure's mean and spread (standard deviation) over seeds, and in how
many seeds each step holds (M2 > M1, M3 > M2, ...), in how many seeds the
95% bootstrap interval of each step's mean grade gain (and of the last model's
gain over M1) lies above 0 (each covers that seed's test prompts only), and,
over the seeds, each step's mean gain with its 95% t-interval: the run-to-run
spread, which a seed's own interval does not hold. The file opens with the
study's command, its settings that are not at their defaults and the code's
commit; a study removes its older file as it starts (the same command writes
it again from the runs' files).
"""
import math
import os
import shlex
import statistics
import subprocess
import sys
import types

import configurator
import distributed as D
import report
import selfreward
import validate
from data import read_jsonl, toy, write_text
from run_folder import metric_records

seeds = "1,2,3"  # the seeds, with commas between them: one whole run each (each run's --seed)
# selfreward.py's settings that are each run's own, not a study's: why, when one is given
NOT_FOR_A_STUDY = {
    "seed": "seeds.py gives each run its seed; name them with --seeds=...",
    "plan_only": "seeds.py runs the loop; plan with python selfreward.py --plan_only=True",
    "world_size": "only --plan_only reads it; plan with python selfreward.py --plan_only=True",
    "gpu_memory_gb": "only --plan_only reads it; plan with python selfreward.py --plan_only=True",
}
# --help: what these settings mean in a study, in place of selfreward.py's comments
STUDY_COMMENTS = {"run_name": "the study's name: each seed's run is out_root/<run_name>-seed<s>, the summary "
                              "<run_name>-seeds.md"}

# the figures compared across seeds: (name in the table, how to read it from a model's eval record;
# None where the record has none: an SFT baseline that never states the right answer, or a run
# whose report was written before the figure existed)
FIGURES = [
    ("mean grade", lambda m: m["mean_grade"]),
    ("right answers (grade >= 4) %", lambda m: None if "right" not in m.get("intervals", {}) else
     100 * m["intervals"]["right"][0]),
    ("bare right answers (grade 5) %", lambda m: 100 * m["exact_solve"]),
    ("declined answers %", lambda m: None if "declined" not in m else 100 * m["declined"]),
    ("right among the answers given %",  # (not declined): skill apart from the will to answer
     lambda m: None if "declined" not in m or m["declined"] == 1 or "right" not in m.get("intervals", {}) else
     100 * m["intervals"]["right"][0] / (1 - m["declined"])),
    ("judge pairwise acc %",  # (none with eval_judge=False, nor from a judge that gave no score)
     lambda m: None if m["judge"].get("pairwise_accuracy") is None or silent_judge(m) else
     100 * m["judge"]["pairwise_accuracy"]),
    ("judge states the right answer %", lambda m: checking_share(m, "judge")),
    ("its verdict follows a right answer %", lambda m: checking_share(m, "follows")),
    ("its comparison is right %", lambda m: checking_share(m, "compares")),  # (--judge_compares)
    # checking or form (report.judge_by_form): the judge's pairwise accuracy on the EFT eval pairs whose
    # better response is bare (a single word) and the worse not, the other way round, and of one form
    ("judge acc, the better one bare %", lambda m: checking_share(m, "better_bare")),
    ("judge acc, the worse one bare %", lambda m: checking_share(m, "worse_bare")),
    ("judge acc, both of one form %", lambda m: checking_share(m, "same_form")),
    # per task kind of the world (the report's checking against doing): the share of that kind's test prompts
    # the model answers right, and of its judgments of that kind's EFT eval responses that state the right
    # answer; a judge can teach a kind only where the second is above the first (invent: its own rows)
    *[(f"{kind}: {what}", lambda m, kind=kind, which=which: kind_share(m, kind, which))
      for kind in toy.ALL_KINDS if kind != "invent"
      for what, which in (("answers right %", 1), ("judge states the right answer %", 0))],
    # a world with the invent kind (--toy_kinds): the policy's right answers, and the judge's
    # balanced accuracy at telling right from wrong (report.checking_versus_doing), on that kind alone
    ("invent: answers right %", lambda m: kind_share(m, "invent", 1)),
    ("invent: judge balanced accuracy %", lambda m: kind_share(m, "invent", 0)),
    # checking or form: the same on bare words, where the rubric's form cannot tell right from wrong,
    # and how often the judge's check reads the response's own word
    ("invent: the same, bare words only %", lambda m: checking_share(m, "invent_bare")),
    ("invent: its check reads the response's word %", lambda m: checking_share(m, "invent_copies")),
    # the comparison step alone, where the checks write each comparison out (--check_each_ask)
    ("invent: its written yes/no, balanced accuracy %", lambda m: checking_share(m, "invent_yes_no")),
]


def code_version():
    """The code this study runs: its git commit, and whether its .py files
    differ from it (the study then ran code no commit holds); or why it
    cannot be told."""
    git = lambda *args: subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), *args],
                                       capture_output=True, text=True, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "*.py")  # (README edits: not code)
    except OSError:
        return "not known (no git on this machine)"
    except subprocess.CalledProcessError as e:  # (a copied folder, no checkout: git says why)
        return f"not known (git: {e.stderr.strip().splitlines()[0] if e.stderr.strip() else 'failed'})"
    return f"commit {commit}" + (", with uncommitted changes to its .py files" if changed else "")


def settings_line(argv, c):
    """The study's command and its settings that are not selfreward.py's
    defaults (from the command or its config files): two studies of other
    settings read apart."""
    changed = [f"{k}={getattr(c, k)!r}" for k, v in selfreward.DEFAULTS.items()
               if k not in ("run_name", *NOT_FOR_A_STUDY) and getattr(c, k) != v]
    return (f"Command: `python seeds.py {shlex.join(argv)}`. Settings not at their defaults: "
            f"{', '.join(changed) if changed else 'none'}.")


def silent_judge(m):
    """Whether a model's judge gave no score at all (the SFT baseline, never
    taught the judge's format): its judge figures are none, not 0%, which
    would read as a judge's."""
    return m.get("judge", {}).get("judgments_with_score") == 0


def checking_share(m, key):
    """A model's share (%) from its checking record (judge figures), or None where it has none."""
    x = m.get("checking", {}).get(key)
    return None if x is None or silent_judge(m) else 100 * x


def kind_share(m, kind, which):
    """A model's share (%) for one task kind from its checking record: which=0 the judge's, 1 its answers'."""
    pair = m.get("checking", {}).get("kinds", {}).get(kind)
    return None if pair is None or pair[which] is None or which == 0 and silent_judge(m) else 100 * pair[which]


def run_figures(folder):
    """{model: {figure: value}} from a finished run's metrics.jsonl (report.py's eval records)."""
    evals = [rec["eval"] for rec in metric_records(folder) if "eval" in rec]  # the last report's win
    return {m["model"]: {name: read(m) for name, read in FIGURES} for m in evals}


def gain_interval(folder, first, last):
    """The 95% bootstrap interval of last's mean grade minus first's, prompt by prompt."""
    answers = lambda n: read_jsonl(os.path.join(folder, "eval", f"{n}_test.jsonl"))
    return report.bootstrap_interval([y["grade"] - x["grade"]
                                      for x, y in report.same_prompts(answers(first), answers(last))])


def t_975(df):
    """Student's t quantile at 0.975 (a two-sided 95% interval) with df degrees
    of freedom: a table's values to df 5, then the Cornish-Fisher expansion
    around the normal's 1.95996 (within 2e-4 of the exact value from df 6)."""
    if df <= 5:
        return (12.7062, 4.3027, 3.1824, 2.7764, 2.5706)[df - 1]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4))


def t_interval(xs):
    """(mean, low, high): the 95% t-interval of the mean of xs (2 or more),
    from their sample standard deviation (n - 1)."""
    mean, half = statistics.mean(xs), t_975(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return mean, mean - half, mean + half


def model_steps(names):
    """The steps a study compares: each model over the one before it (from M1
    on), then the last over M1 where that is not already one step."""
    steps = list(zip(names[1:], names[2:]))
    return steps + ([(names[1], names[-1])] if len(steps) > 1 else [])


def summarize(per_seed, names, gains):
    """The study's table. per_seed: {seed: {model: {figure: value}}}; names: the
    models in order; gains: {(a, b): {seed: (low, high)}}, the 95% interval of
    b's mean grade gain over a (each step, and the last model over M1). A
    figure no model of any seed has (the invent rows of a world without that
    kind) is left out."""
    seeds = sorted(per_seed)
    shown = [name for name, _ in FIGURES if any(per_seed[s][n][name] is not None for s in seeds for n in names)]
    # mean +- sample standard deviation over seeds (the mean alone for one seed: no spread to give)
    mean_sd = lambda xs, fmt="{:.2f}": fmt.format(statistics.mean(xs)) + (
        f" +- {statistics.stdev(xs):.2f}" if len(xs) > 1 else "")
    lines = [f"Over {len(seeds)} seeds ({', '.join(map(str, seeds))}): mean +- sample standard deviation (n - 1)."
             if len(seeds) > 1 else f"One seed ({seeds[0]}): its figures. One run has no spread over seeds to "
             "measure a step against: no step below is a result.", ""]
    lines += ["| figure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name in shown:
        cells = []
        for n in names:
            xs = [per_seed[s][n][name] for s in seeds]
            cells.append("-" if None in xs else mean_sd(xs))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    # a seed moves all its models together, so a step is judged by its own differences, seed by seed,
    # not by the models' spreads above
    lines += ["", "In how many seeds each step holds (strictly higher), and the step's difference over the "
              "seeds (mean +- standard deviation of each seed's difference):", ""]
    for name in shown:
        held = []
        for a, b in model_steps(names):  # over the seeds that have the figure for both models
            both = [(per_seed[s][a][name], per_seed[s][b][name]) for s in seeds]
            both = [(x, y) for x, y in both if x is not None and y is not None]
            held.append(f"{b} > {a}: {sum(y > x for x, y in both)}/{len(both)}"
                        + (f" ({mean_sd([y - x for x, y in both], '{:+.2f}')})" if both else ""))
        lines.append(f"- {name}: " + ", ".join(held))
    for (a, b), intervals in gains.items():  # (3 decimals: "above 0" is read from the unrounded low end)
        above = sum(intervals[s] is not None and intervals[s][0] > 0 for s in seeds)
        each = ", ".join(f"seed {s} [{intervals[s][0]:.3f}, {intervals[s][1]:.3f}]" for s in seeds if intervals[s])
        lines.append(f"- the 95% bootstrap interval of {b} - {a} mean grade (over that seed's test prompts) lies "
                     f"above 0 in {above}/{len(seeds)} seeds: {each}")
    steps = []  # the step against the run-to-run spread: each seed's gain is one draw of it
    for a, b in gains:  # (over the seeds that have both models' mean grade, as the steps above)
        grades = [(per_seed[s][a]["mean grade"], per_seed[s][b]["mean grade"]) for s in seeds]
        gained = [y - x for x, y in grades if x is not None and y is not None]
        if len(gained) > 1:
            mean, low, high = t_interval(gained)
            steps.append(f"{b} - {a} {mean:+.3f} [{low:+.3f}, {high:+.3f}] ({len(gained)} seeds)")
    if steps:
        lines.append("- over the seeds, the mean grade gain and its 95% t-interval (n - 1 degrees of freedom; above "
                     "0: a result beyond the run-to-run spread): " + ", ".join(steps))
    return lines


def pair_lines(folders, iterations):
    """Toy world, evaluation only: per seed and iteration, the pairs that set
    a right answer against a wrong one, which of the two the judge chose
    (report.pair_verdicts), and how often it states the right answer for its
    own wrong candidates (report.self_checking), and of its right and wrong
    ones on the prompts whose candidates are both: the loop can teach
    correctness only through the first, and only where the second is high
    and the third shows no pull of the answer the judge reads. Then how
    often the candidates are right, against best of n with a perfect judge
    (report.right_candidates): how much the pairs could teach at most."""
    verdicts_heading = ["", "Pairs that set a right answer against a wrong one (evaluation only): the right one chosen / the "
             "wrong one chosen; the share of the judge's judgments of its own wrong candidates that state the "
             "right answer; and the same share for its right / wrong candidates on the prompts whose candidates "
             "are right and wrong:", ""]
    ceilings_heading = ["", "The candidates by the grader (evaluation only): the share that is right; the share of prompts "
                "with a right one (best of the candidates by a perfect judge); with a right and a wrong one (where "
                "a pair can teach correctness):", ""]
    verdicts, ceilings = [], []  # a line per seed that has figures; a part without any is left out
    for s, folder in sorted(folders.items()):
        r = types.SimpleNamespace(path=lambda *parts, folder=folder: os.path.join(folder, *parts))
        cells, ceiling_cells = [], []
        for t in range(1, iterations + 1):
            v, c, ceiling = report.pair_verdicts(r, t), report.self_checking(r, t), report.right_candidates(r, t)
            if v and c:
                mixed = c["own_mixed"]
                cells.append(f"iteration {t} {v['right_chosen']} / {v['wrong_chosen']}, "
                             f"{report.pct(c['own']['wrong'])}%, {report.pct(mixed['right'])} / "
                             f"{report.pct(mixed['wrong'])}%")
            if ceiling:
                ceiling_cells.append(f"iteration {t} {report.pct(ceiling['candidates'])}%, "
                                     f"{report.pct(ceiling['any_right'])}%, {report.pct(ceiling['mixed'])}%")
        verdicts += [f"- seed {s}: " + "; ".join(cells)] if cells else []
        ceilings += [f"- seed {s}: " + "; ".join(ceiling_cells)] if ceiling_cells else []
    return (verdicts_heading + verdicts if verdicts else []) + (ceilings_heading + ceilings if ceilings else [])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # (--help: configure() below prints this script's)
        in_files = {} if {"-h", "--help"} & set(argv) else configurator.set_by_files(argv)
    except configurator.ConfigError as e:  # (a config file that cannot be read: said as configure() says it)
        configurator.fail(e)
    for key, why in NOT_FOR_A_STUDY.items():
        if any(a.startswith(f"--{key}=") for a in argv) or key in in_files:
            configurator.fail(f"{in_files.get(key, '--' + key)}: {why}")
    if "seeds" in in_files:  # (each run reads the config files too, and has no such setting)
        configurator.fail(f"{in_files['seeds']}: seeds is this script's setting: give it as --seeds=... instead")
    # selfreward.py's settings (less each run's own) and --seeds; --help lists them with their comments
    defaults = {k: v for k, v in selfreward.DEFAULTS.items() if k not in NOT_FOR_A_STUDY}
    given = configurator.configure(dict(defaults, seeds=seeds, __file__=__file__, __doc__=__doc__), argv,
                                   comment_files=[selfreward.__file__], comments=STUDY_COMMENTS)
    text = given.pop("seeds")
    try:
        seed_list = [int(s) for s in str(text).split(",")]
    except ValueError:
        configurator.fail(f"--seeds={text}: the seeds are whole numbers with commas between them, "
                          f"e.g. --seeds=1,2,3")
    bad = [s for s in seed_list if not 0 <= s < 2**32] + [s for s in set(seed_list) if seed_list.count(s) > 1]
    if bad:  # (before the first seed's run, not when this seed's turn comes)
        configurator.fail(f"--seeds: {bad[0]}: each seed once, in [0, 2**32) (a seed is a run of its own)")
    c = configurator.settings(selfreward.DEFAULTS, given)
    if not str(c.run_name).strip():  # (each seed's own name, "-seed1", would pass the run's check)
        configurator.fail(f"run_name = {c.run_name!r}: name the study (its runs are out_root/<run_name>-seed<s>, "
                          f"its summary <run_name>-seeds.md)")
    # before any run: what this script compares exists only for a finished toy run
    if c.seed_data != "toy":
        configurator.fail(f"seed_data = {c.seed_data!r}: seeds.py compares the toy world's grades across seeds, "
                          f"and real seed data has no grader; run selfreward.py once per --seed instead")
    for s in seed_list:  # every seed's run checked before the first starts, not when its turn comes
        run = configurator.settings(selfreward.DEFAULTS, {**given, "seed": s, "run_name": f"{c.run_name}-seed{s}"})
        validate.check_loop(run, D.launched_world()).stop()
    header = [f"# `{c.run_name}` over seeds", "", settings_line(argv, c) + f" Code: {code_version()} (read as the "
              "study started; a stage a run reused was made by the code of its own day: its log says when).", ""]
    out = os.path.join(c.out_root, f"{c.run_name}-seeds.md")
    if not c.dry_run and D.is_rank0() and os.path.exists(out):  # an older summary of these runs, which this
        os.remove(out)  # study may change: a study that stops part way must not leave it to be read as its own
    argv = [a for a in argv if not a.startswith("--seeds=")]  # the rest goes to each run
    folders = {}
    for s in seed_list:
        name = f"{c.run_name}-seed{s}"
        D.log(f"\n##### seed {s}: {os.path.join(c.out_root, name)}")
        selfreward.main(argv + [f"--seed={s}", f"--run_name={name}"], table_again=False)  # (done before: one line)
        folders[s] = os.path.join(c.out_root, name)
    if c.dry_run:  # (each run has said what it would do: nothing to compare)
        return
    names = ["SFT"] + [f"M{t}" for t in range(1, c.iterations + 2)]
    per_seed = {s: run_figures(f) for s, f in folders.items()}
    gains = {(a, b): {s: gain_interval(f, a, b) for s, f in folders.items()} for a, b in model_steps(names)}
    lines = [*header, *summarize(per_seed, names, gains), *pair_lines(folders, c.iterations), ""]
    if D.is_rank0():  # (under torchrun: one file, one copy on the screen)
        write_text(out, "\n".join(lines))
    D.log("\n".join(lines) + f"\nwritten to {out}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # between runs (a run's own Ctrl-C says which stage it was in)
        print("\ninterrupted; the same command resumes the study (each seed's run resumes where it stopped)",
              file=sys.stderr)
        sys.exit(130)
