"""bench.py's helpers, which the timings rest on: timed() warms up, takes
turns and keeps each function's best time; the dtypes a section compares;
random prompts in their ranges; the agreement of two sets of completions;
the communication formulas against the figures the README reports; and the
settings' checks at their edges."""
import types

import pytest
import torch

import bench
from configurator import settings
from model import PRESETS, preset


def test_timed_warms_up_then_takes_turns_and_keeps_the_best_time(monkeypatch):
    """One untimed warm-up call each, then `repeats` rounds in which the
    functions take turns; each gets its best time and its last result."""
    now, calls = [0.0], []
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def fn(name, durations):
        durations = iter(durations)

        def run():
            calls.append(name)
            now[0] += next(durations)
            return name, len(calls)
        return run
    a, b = fn("a", [9.0, 3.0, 1.0, 2.0]), fn("b", [9.0, 5.0, 4.0, 6.0])  # the first call: the warm-up
    assert bench.timed([a, b], 3) == [(1.0, ("a", 7)), (4.0, ("b", 8))]
    assert calls == ["a", "b"] * 4


def test_bf16_is_timed_where_it_is_native_or_asked_for(monkeypatch, capsys):
    for native, bf16, device, timed in [
            (False, "auto", "cpu", ["float32"]), (True, "auto", "cpu", ["float32", "bfloat16"]),
            (False, "auto", "cuda", ["float32", "bfloat16"]), (False, "always", "cpu", ["float32", "bfloat16"]),
            (True, "never", "cpu", ["float32"]), (True, "never", "cuda", ["float32"]),
            (False, "only", "cpu", ["bfloat16"]), (True, "only", "cuda", ["bfloat16"])]:
        monkeypatch.setattr(bench.D, "cpu_has_bf16", lambda: native)
        assert bench.bench_dtypes(types.SimpleNamespace(bf16=bf16), device) == timed, (native, bf16, device)
        said = capsys.readouterr().out
        assert ("bf16 skipped" in said) == (bf16 == "auto" and timed == ["float32"])


def test_random_prompts_lengths_and_tokens_in_their_ranges():
    """Lengths in [lo, hi], both ends included; token ids from 3 (unk, bos and
    eos left out) to vocab - 1; all drawn from the generator given."""
    prompts = bench.random_prompts(torch.Generator().manual_seed(0), 200, 2, 4, 10)
    assert {len(p) for p in prompts} == {2, 3, 4}
    assert {t for p in prompts for t in p} == set(range(3, 10))
    assert bench.random_prompts(torch.Generator().manual_seed(0), 200, 2, 4, 10) == prompts
    assert [len(p) for p in bench.random_prompts(torch.Generator(), 3, 5, 5, 10)] == [5, 5, 5]


def test_agreement_counts_each_row_up_to_its_first_difference():
    assert bench.agreement([[1, 2, 3, 4]], [[1, 2, 3, 4]]) == 1.0
    assert bench.agreement([[1, 9, 3, 4]], [[1, 2, 3, 4]]) == 0.25  # the rest follow other contexts
    assert bench.agreement([[5, 2]], [[1, 2]]) == 0.0
    assert bench.agreement([[1, 2, 3]], [[1, 2]]) == pytest.approx(2 / 3)  # a row cut short: its end differs
    assert bench.agreement([[1, 2], [7, 8, 9, 10]], [[1, 2, 3], [7, 8, 0, 10]]) == pytest.approx(4 / 7)
    assert bench.agreement([], []) == 0.0
    # printed: "all" only where nothing differs; 4 tokens of 8,192 apart is not 100.0%
    assert (bench.agreement_text(1.0), bench.agreement_text(1 - 4 / 8192), bench.agreement_text(0.25)) == \
        ("all", "99.9%", "25.0%")


def test_comm_formulas_give_the_figures_the_readme_reports():
    """The README's table, measured under CommDebugMode (toy, batch 8, fp32
    and bf16), and its Llama 2 70B figures (bf16, batch 64; FSDP2's the same
    at batch 1)."""
    toy = {a: bench.comm_formulas(preset("toy"), 8, a) for a in (4, 2)}
    assert (toy[4]["tp"]["collectives"], toy[4]["fsdp"]["collectives"]) == (14, 6)
    assert [round(toy[a]["tp"]["bytes"] / 1e3) for a in (4, 2)] == [139, 70]
    assert [round(toy[a]["fsdp"]["bytes"] / 1e6, 1) for a in (4, 2)] == [17.7, 8.9]
    big = bench.comm_formulas(preset("llama2-70b"), 64, 2)
    assert (big["tp"]["collectives"], round(big["tp"]["bytes"] / 1e6)) == (162, 173)
    assert (big["fsdp"]["collectives"], round(big["fsdp"]["bytes"] / 1e9)) == (80, 137)
    assert bench.comm_formulas(preset("llama2-70b"), 1, 2)["fsdp"] == big["fsdp"]


def test_bench_settings_at_their_edges():
    """Every model setting names a preset, bf16 one of its four values, every
    count is at least 1; a row that exactly fills the context fits (and the
    judge's counts its new tokens); an unknown first model is a problem, not
    a crash."""
    check = lambda **kw: bench.problems(settings(bench.DEFAULTS, kw))
    presets = ", ".join(PRESETS)
    assert check(comm_model="toyx", bf16="sometimes") == [
        f"comm_model: no preset 'toyx' (presets: {presets})", "bf16 = 'sometimes': must be 'auto', 'always', 'never' or 'only'"]
    assert check(sample_models="toyx") == [f"sample_models: no preset 'toyx' (presets: {presets})"]
    # comm_model names one preset, not a list: a list of presets is no preset (bench_comm would fail after setup)
    assert check(comm_model="toy,toy-tiny") == [f"comm_model: no preset 'toy,toy-tiny' (presets: {presets})"]
    counts = ("judge_prompts", "judge_rubric", "judge_new_tokens", "train_seq_len", "train_steps", "train_rounds",
              "comm_batch")
    assert check(**{k: 0 for k in counts}) == [f"{k} = 0: must be >= 1" for k in counts]
    assert check(sample_new_tokens=960) == []  # 64 + 960 = toy's 1024
    assert check(sample_models="toy-tiny", judge_rubric=420) == []  # 420 + 60 + 32 = toy-tiny's 512
    assert check(sample_models="toy-tiny", judge_rubric=420, judge_new_tokens=33) == [
        "judge_rubric = 420: with 60 prompt tokens and judge_new_tokens it must fit toy-tiny's context of 512"]


def fake_training_steps(monkeypatch, durations):
    """bench_training on a fake clock: each (impl, dtype)'s step takes the
    seconds listed (after an untimed warm-up); the models are real toy-tiny
    ones, their steps not run; each dtype's matmul peak is fixed."""
    now = [0.0]
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def step_fn(model, hf, tokens, dtype):
        seconds = iter([0.0] + durations[("hf" if hf else "ours", str(dtype).removeprefix("torch."))])

        def step():
            now[0] += next(seconds)
        return step
    monkeypatch.setattr(bench, "_step_fn", step_fn)
    monkeypatch.setattr(bench, "matmul_flops", lambda device, dtype: {torch.float32: 1e9, torch.bfloat16: 4e9}[dtype])


def test_bench_training_arithmetic_by_hand(monkeypatch):
    """Tokens/s from each side's median step (of 4: the mean of the middle
    two), every ratio the median of step-by-step ratios (not a ratio of
    medians), reference over other, and MFU against its own dtype's peak:
    batch 2 x 8 tokens, 2 steps x 2 rounds, times chosen so that each
    of those mistakes gives another figure."""
    pytest.importorskip("transformers")
    fake_training_steps(monkeypatch, {("ours", "float32"): [1, 2, 4, 3], ("hf", "float32"): [3, 2, 12, 6],
                                      ("ours", "bfloat16"): [1, 1, 1, 2], ("hf", "bfloat16"): [2, 4, 3, 3]})
    r = bench.bench_training("toy-tiny", 2, 8, 2, 2, "cpu", ["float32", "bfloat16"])
    # medians 2.5, 4.5, 1, 3 s for 16 tokens a step
    assert r["runs"] == pytest.approx({("ours", "float32"): 6.4, ("hf", "float32"): 16 / 4.5,
                                       ("ours", "bfloat16"): 16.0, ("hf", "bfloat16"): 16 / 3})
    assert r["ratios"] == pytest.approx({
        "ours/HF float32": 2.5,   # hf / ours step by step: 3, 1, 3, 2 (the medians' ratio: 1.8)
        "ours/HF bfloat16": 2.5,  # 2, 4, 3, 1.5
        "ours bf16/fp32": 1.75,   # ours fp32 / ours bf16: 1, 2, 4, 1.5
        "HF bf16/fp32": 1.75})    # 1.5, 0.5, 4, 2
    args = preset("toy-tiny", max_seq_len=max(9, preset("toy-tiny").max_seq_len))
    assert r["mfu"] == pytest.approx({k: bench.estimate_mfu(args, r["params"], tps, 8, {"float32": 1e9,
                                                                                     "bfloat16": 4e9}[k[1]])
                                      for k, tps in r["runs"].items()})
    # bf16 alone (--bf16=only): its own rows, and no ratio against an fp32 that was not run
    fake_training_steps(monkeypatch, {("ours", "bfloat16"): [1, 1, 1, 2], ("hf", "bfloat16"): [2, 4, 3, 3]})
    r = bench.bench_training("toy-tiny", 2, 8, 2, 2, "cpu", ["bfloat16"])
    assert r["ratios"] == pytest.approx({"ours/HF bfloat16": 2.5}) and set(r["runs"]) == {("ours", "bfloat16"),
                                                                                          ("hf", "bfloat16")}


def test_matmul_flops_counts_2_n_cubed_over_the_best_time(monkeypatch):
    now = [0.0]

    def clock():  # every reading half a second after the one before: each product "takes" 0.5 s
        now[0] += 0.5
        return now[0]
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=clock))
    assert bench.matmul_flops("cpu", torch.float32, n=4, repeats=2) == 2 * 4 ** 3 / 0.5


def test_bench_sample_prints_transformers_time_over_ours(monkeypatch, capsys):
    """The [generate] table's ours/HF column: transformers' time over ours
    (ours twice as fast: 2.00x), tokens/s from each side's own time."""
    monkeypatch.setattr(bench, "hf_model", lambda model, dtype=None: None)
    monkeypatch.setattr(bench, "hf_generate", lambda hf, prompts, new: [[5] * new for _ in prompts])
    monkeypatch.setattr(bench, "generate", lambda model, prompts, new, n=1, **kw: [[5] * new for _ in prompts
                                                                                   for _ in range(n)])
    # timed() gives transformers (first in each pair) 2 s and ours 1 s
    monkeypatch.setattr(bench, "timed", lambda fns, repeats: [(2.0 if i % 2 == 0 else 1.0, fn())
                                                              for i, fn in enumerate(fns)])
    c = settings(bench.DEFAULTS, dict(sample_models="toy-tiny", sample_new_tokens=2, bf16="never", judge_prompts=1,
                                      judge_rubric=1, judge_n=1, judge_new_tokens=1, repeats=1))
    bench.bench_sample(c)
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  toy-tiny")]
    # model, batch, dtype, transformers tok/s, ours tok/s, ours/HF, same tokens
    assert [row[:7] for row in rows] == [["toy-tiny", "8", "float32", "8", "16", "2.00x", "all"],
                                         ["toy-tiny", "64", "float32", "64", "128", "2.00x", "all"]]
