"""The whole loop on a micro config: artifacts, resume after kills, 2 ranks, bad input;
settings passed explicitly; the toy seed CLI and example configs agree with the loop."""
import dis
import fcntl
import filecmp
import inspect
import json
import math
import os
import random
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
import types
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

import checkpoint
import configurator
import distributed as D
import judge as judge_module
import selfreward as S
import train_dpo
import train_sft
import training
import validate
from checkpoint import load_model, save_model
from conftest import ROOT, held_by_another_job, ranks_said, response_logp, script_the_prompt_writer
from data import read_jsonl, toy, write_jsonl
from evaluation import alpaca_eval_path
from judge import parse_score
from model import Transformer, preset
from run_folder import Run, changes, fit_micro, generate_sharded, metric_records, save_jsonl, stage_parts, sub_seed
from sample import generate
from tokenizer import Tokenizer, chat_prompt_ids

# config/micro.py's settings (the README's 15-second look at a whole run), without its run name: small
# enough to run the whole method in seconds on a 2-core CPU, and trained long enough (many epochs of
# tiny data) that M1 writes judgments in the "... Score: N" format, so the loop produces real pairs.
MICRO = {k: v for k, v in runpy.run_path(os.path.join(ROOT, "config", "micro.py")).items()
         if not k.startswith("_") and k != "run_name"} | {"progress": False}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def command(out_root, run="micro", **extra):
    args = {**MICRO, "out_root": str(out_root), "run_name": run, **extra}
    return [sys.executable, "selfreward.py", *(f"--{k}={v}" for k, v in args.items())]


def run_loop(out_root, **extra):
    r = subprocess.run(command(out_root, **extra), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """One uninterrupted run, shared by the tests below."""
    out = tmp_path_factory.mktemp("selfreward")
    t0 = time.time()
    run_loop(out)
    print(f"micro loop: {time.time() - t0:.0f}s")  # shown with -s; speed is bench.py's business, not a test's
    return out / "micro", time.time() - t0


def test_every_artifact_exists_and_is_consistent(micro_run):
    run, _ = micro_run
    for path in ["seed/ift.jsonl", "tokenizer.model", "M0/config.json", "SFT/model.safetensors", "M1/config.json",
                 "M2/model.safetensors", "M3/tokenizer.model", "report.md", "metrics.jsonl", "settings.json"]:
        assert os.path.exists(run / path), path
    for name in ("M0", "SFT", "M1", "M2", "M3"):  # trained and saved: the resumable state is gone
        dpo = ["ref_logps.jsonl"] if name in ("M2", "M3") else []
        # (.lock: the trainer held its out_dir, distributed.sole_writer; the file stays, the lock does not;
        # done.json: what its model was made from and what the trainer returned)
        assert sorted(os.listdir(run / "train" / name)) == [".lock", "done.json", "metrics.jsonl", *dpo], name
    # the SFT baseline learns from every IFT record, M1 from every IFT and EFT record: nothing held out
    # (the loop evaluates the models itself), so its last step is all the records' epochs in batches
    for name, files in (("SFT", ["ift.jsonl"]), ("M1", ["ift.jsonl", "eft_train.jsonl"])):
        n = sum(len(read_jsonl(run / "seed" / f)) for f in files)
        logged = read_jsonl(run / "train" / name / "metrics.jsonl")
        assert not any("eval_loss" in x for x in logged), name
        assert logged[-1]["step"] == math.ceil(MICRO["sft_epochs"] * n / 16), name  # sft_batch_size 16
    tok = Tokenizer(str(run / "tokenizer.model"))  # letter_pieces: a made-up word is seen letter by letter
    assert [tok.sp.id_to_piece(i) for i in tok.encode("TAMILO")] == ["\u2581"] + list("TAMILO")
    for t in (1, 2):
        it = run / f"iter{t}"
        prompts, cands = read_jsonl(it / "prompts.jsonl"), read_jsonl(it / "candidates.jsonl")
        judged, pairs = read_jsonl(it / "judgments.jsonl"), read_jsonl(it / "pairs.jsonl")
        done = {k: json.load(open(run / "done" / f"iter{t}_{k}")) for k in ("prompts", "candidates", "pairs")}
        assert not [f for f in os.listdir(it) if ".part-" in f]  # shards merged and removed
        # counts add up
        assert done["prompts"]["kept"] == len(prompts) and done["prompts"]["requested"] == MICRO["n_prompts"]
        assert len(prompts) + sum(done["prompts"]["dropped"].values()) == MICRO["n_prompts"]
        every = read_jsonl(it / "prompts_generated.jsonl")  # each request, with why it was dropped
        assert len(every) == MICRO["n_prompts"]
        assert [{"prompt": x["prompt"]} for x in every if x["dropped"] is None] == prompts
        assert [c["prompt"] for c in cands] == [p["prompt"] for p in prompts] == [j["prompt"] for j in judged]
        assert all(len(c["candidates"]) == 4 for c in cands)
        assert len(pairs) == done["pairs"]["pairs"] > 0
        assert not any("kind" in p for p in pairs) and not os.path.exists(it / "meta_judgments.jsonl")  # meta_judge off
        assert len(pairs) + sum(done["pairs"]["dropped"].values()) == len(judged)
        # judge averages match the raw judgments: 3 per candidate, parsed again here
        for j in judged:
            for texts, scores, avg in zip(j["judgments"], j["scores"], j["score"]):
                assert len(texts) == 3 and [parse_score(x) for x in texts] == scores
                valid = [s for s in scores if s is not None]
                assert avg == (sum(valid) / len(valid) if valid else None)
        # pairs: best against worst of the scored candidates that ended their turn, never a tie or an
        # unscored or cut-off one (cut off: max_response_tokens new tokens, none of them the end of turn)
        by_prompt = {j["prompt"]: j for j in judged}
        assert [j["finished"] for j in judged] == [x["finished"] for x in cands]
        assert done["candidates"]["cut_off"] == sum(not f for j in judged for f in j["finished"])
        for p in pairs:
            j = by_prompt[p["prompt"]]
            scored = [s for s, done in zip(j["score"], j["finished"]) if s is not None and done]
            assert p["chosen_score"] > p["rejected_score"]
            assert p["chosen_score"] == max(scored) and p["rejected_score"] == min(scored)
            c, r = p["chosen_index"], p["rejected_index"]
            assert (j["candidates"][c], j["score"][c]) == (p["chosen"], p["chosen_score"])
            assert (j["candidates"][r], j["score"][r]) == (p["rejected"], p["rejected_score"])
    report = (run / "report.md").read_text()
    for name in ("SFT", "M1", "M2", "M3"):
        assert f"| {name} |" in report
    cut_off = json.load(open(run / "done" / "iter1_candidates"))["cut_off"]
    assert (f"; {cut_off} candidates cut off at max_response_tokens" in report) == (cut_off > 0)  # (12 tokens: 5 here)


def test_each_iteration_trains_from_the_model_before_it(micro_run):
    """M_{t+1} is DPO from M_t with M_t as the reference (the paper's chain,
    not every iteration from M1): iteration t's reference log-probs are M_t's
    log-probs of its pairs' chosen and rejected texts, computed here by hand."""
    run, _ = micro_run
    tok = Tokenizer(str(run / "tokenizer.model"))
    for t in (1, 2):
        start = load_model(str(run / f"M{t}")).eval()
        pairs = read_jsonl(run / f"iter{t}" / "pairs.jsonl")
        for row in read_jsonl(run / "train" / f"M{t + 1}" / "ref_logps.jsonl")[1:4]:
            for side in ("chosen", "rejected"):
                by_hand, _ = response_logp(start, tok, pairs[row["index"]]["prompt"], pairs[row["index"]][side])
                assert row[side] == pytest.approx(by_hand, rel=1e-4, abs=1e-4), (t, side)


def test_the_sft_baseline_and_m1_both_start_from_m0(micro_run):
    """M1 is M0 fine-tuned on IFT + EFT, not the SFT baseline fine-tuned
    further: each model's first logged loss (dropout 0 here) is M0's
    cross-entropy per response token on step 0's examples of its own data,
    computed by hand."""
    run, _ = micro_run
    m0, tok = load_model(str(run / "M0")).eval(), Tokenizer(str(run / "tokenizer.model"))
    for name, data in (("SFT", run / "seed" / "ift.jsonl"), ("M1", run / "train" / "ift_eft.jsonl")):
        records = read_jsonl(data)
        step0 = training.batch_indices(0, 16, len(records), sub_seed(1337, "sft", name) % 2**31)  # sft_batch_size
        sums = [response_logp(m0, tok, records[i]["prompt"], records[i]["response"]) for i in step0]
        first = read_jsonl(run / "train" / name / "metrics.jsonl")[0]
        assert first["step"] == 1 and first["loss"] == pytest.approx(-sum(lp for lp, _ in sums) / sum(n for _, n in sums),
                                                                     rel=1e-4), name


def test_new_prompts_are_not_seed_or_held_out_prompts(micro_run):
    run, _ = micro_run
    seed = {x["prompt"].lower() for x in read_jsonl(run / "seed" / "ift.jsonl")}
    held_out = {x["prompt"].lower() for f in ("test", "eft_eval") for x in read_jsonl(run / "seed" / f"{f}.jsonl")}
    new = [x["prompt"].lower() for t in (1, 2) for x in read_jsonl(run / f"iter{t}" / "prompts.jsonl")]
    assert len(new) == len(set(new)) and not seed & set(new) and not held_out & set(new)


def test_a_written_prompt_that_is_a_held_out_prompt_is_dropped(tmp_path, monkeypatch):
    """The writer (stubbed) writes a test prompt with a doubled space, an EFT
    eval prompt in other capitals, and a new one: only the new one is kept,
    and the two are counted (the same prompt: judge.prompt_key). (Before this check, seed 2 of the five-seed study trained on a
    test prompt, and seed 3 on three EFT eval prompts.) A toy task in
    other words is the same question: the test's 57 - 30 asked as "Subtract
    30 from 57.", its 11 x 2 as "Calculate 2 * 11." (in other runs 3-6 such
    prompts an iteration reached DPO pairs); 30 - 57 is another question."""
    ift = [{"prompt": f"Reverse the word 'AB{x}'.", "response": "x"} for x in "CDEFGHIJ"]  # 8 shots' worth
    write_jsonl(tmp_path / "seed" / "ift.jsonl", ift)
    arith = lambda op, a, b: {"kind": "arith", "op": op, "a": a, "b": b}
    write_jsonl(tmp_path / "seed" / "test.jsonl", [{"prompt": "What is 57 minus 30?", "task": arith("-", 57, 30)},
                                                   {"prompt": "What is 11 x 2?", "task": arith("x", 11, 2)}])
    write_jsonl(tmp_path / "seed" / "eft_eval.jsonl", [{"prompt": "How long is the word 'RASO'?"}])
    written = ["What is 57  minus 30?", "how long is the word 'RASO'?", "Sort the letters of 'ZINO' alphabetically.",
               "Subtract 30 from 57.", "Calculate 2 * 11.", "Subtract 57 from 30."]
    script_the_prompt_writer(monkeypatch, S, written)
    r = types.SimpleNamespace(path=lambda *p: str(tmp_path.joinpath(*p)), fingerprints={}, current=None,
                          env=D.Env())
    c = types.SimpleNamespace(**{**S.DEFAULTS, "n_prompts": 6, "progress": False, "rouge_threshold": 1.01})
    info = S.stage_prompts(c, r, 1, "writer")
    assert info["dropped"] == {"a held-out evaluation prompt": 4} and info["kept"] == 2
    assert read_jsonl(tmp_path / "iter1" / "prompts.jsonl") == [{"prompt": written[2]}, {"prompt": written[5]}]


def test_bf16_greedy_sampling_agrees_with_fp32_on_most_tokens(micro_run):
    """The trained M1 of the micro run, greedy on its 56 seed and test prompts,
    with weights and cache in bf16 (as sample.py and the loop sample on a
    bf16 CPU or GPU) against fp32. bf16 rounds each weight to 8 significant
    bits, which moves logits by ~1e-2; where the two best tokens are closer
    than that the argmax flips, and the rest of that row follows another
    context. Counted up to each row's first difference, 2,042 of 2,240 tokens
    (91%) agree on this barely trained 0.2M model (measured 2026-12-04, one
    thread); 80% is asked."""
    run, _ = micro_run
    tok = Tokenizer(str(run / "M1" / "tokenizer.model"))
    prompts = [chat_prompt_ids(tok, x["prompt"]) for x in read_jsonl(run / "seed" / "ift.jsonl")
               + read_jsonl(run / "seed" / "test.jsonl")]
    outs = [generate(load_model(str(run / "M1"), dtype=dt).eval(), prompts, 40, temperature=0, progress=False)
            for dt in (torch.float32, torch.bfloat16)]
    same = total = 0
    for a, b in zip(*outs):
        first_difference = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        same, total = same + first_difference, total + max(len(a), len(b))
    print(f"bf16 vs fp32 greedy: {same} of {total} tokens agree")  # shown with -s
    assert same / total > 0.8, f"{same} of {total} tokens agree"


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


def kill_when(cmd, cwd, appears, timeout=300, sig=signal.SIGKILL, log=os.devnull, out=os.devnull):
    """Start cmd, send it sig (SIGKILL: no chance to say anything) as soon as
    a path matching appears() exists; its stderr goes to the file `log`, its
    stdout to the file `out`. Returns whether it was killed so, and its exit status."""
    with open(log, "w") as err, open(out, "w") as stdout:
        p = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=stdout, stderr=err)
        t0 = time.time()
        while p.poll() is None and time.time() - t0 < timeout:
            if appears():
                p.send_signal(sig)
                return True, p.wait()
            time.sleep(0.02)
        return False, p.wait()


def test_resume_after_kills_equals_uninterrupted(micro_run, tmp_path):
    ref, _ = micro_run
    run = tmp_path / "micro"
    cmd = command(tmp_path)
    # 1: inside training (M1's SFT has saved a resumable state)
    assert kill_when(cmd, ROOT, lambda: os.path.exists(run / "train" / "M1" / "state"))[0]
    assert not os.path.exists(run / "done" / "M1")
    # 2: inside generation (the first of 4 shards of iteration 1's prompt requests is written); on the
    # way it resumed M1's training from that state (started again, it would end with the same weights)
    second = tmp_path / "second.out"
    assert kill_when(cmd, ROOT, lambda: os.path.isdir(run / "iter1") and any(
        f.startswith("prompts_generated.part-") for f in os.listdir(run / "iter1")), out=second)[0]
    assert not os.path.exists(run / "done" / "iter1_prompts")
    assert re.search(r"resumed from \S+/train/M1/state at step [1-9]\d* of \d+", second.read_text())
    # 3: a SIGTERM (a scheduler's preemption), taken as Ctrl-C: it says where it stopped, exit status 130,
    # and that line is the last on the screen (progress bars shown: a bar left open redrew itself after it)
    log = tmp_path / "sigterm.log"
    judging = lambda: any(f.startswith("judgments.part-") for f in os.listdir(run / "iter1"))  # (iter1/ is there)
    assert kill_when(cmd + ["--progress=True"], ROOT, judging, sig=signal.SIGTERM, log=log) == (True, 130), \
        log.read_text()[-2000:]
    shown = [line for line in re.split(r"[\r\n]", log.read_text()) if line.strip()]
    assert shown[-1] == "interrupted in stage iter1_judgments; the same command resumes the run", shown[-3:]
    # 4: inside DPO's reference log-prob pass or training of M2
    assert kill_when(cmd, ROOT, lambda: os.path.exists(run / "train" / "M2"))[0]
    assert not os.path.exists(run / "done" / "M2")
    # resumed, not redone: what was finished before the last kill is not run again
    ran = stages_run(run_loop(tmp_path).stdout)
    assert ran[0] == "M2" and not {"M0", "SFT", "M1", "iter1_prompts", "iter1_pairs"} & set(ran), ran
    for t in (1, 2):
        for f in ("prompts", "candidates", "judgments", "pairs"):
            assert read_jsonl(run / f"iter{t}" / f"{f}.jsonl") == read_jsonl(ref / f"iter{t}" / f"{f}.jsonl"), (t, f)
    for name in ("M1", "M3"):
        a, b = weights(ref / name), weights(run / name)
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5, name
    table = lambda p: [line for line in p.read_text().splitlines() if line.startswith("| M")]
    assert table(run / "report.md") == table(ref / "report.md")


def test_two_ranks_run_the_loop_as_one_process(micro_run, tmp_path):
    """Generation tensor parallel over 2 ranks (tp=2: every generation stage
    loads its model split by heads and FFN width) and training sharded with
    FSDP2 (gloo), the whole loop: the models trained on the same data as one
    process's match it to float rounding, and sampling from them gives one
    process's texts wherever the models are that close."""
    ref, _ = micro_run
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    # (with the checkpoint choice on: DPO saves its checkpoints under FSDP, and each is loaded tensor
    # parallel to answer the validation prompts; it changes nothing before iteration 1's DPO)
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", *command(tmp_path, tp=2, dpo_pick_every=1, n_valid=8)[1:]]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, ranks_said(r)
    two = tmp_path / "micro"
    # M1 learns from the same data in both runs (M0 is compared by the prompts it writes, below): its step
    # from M0 differs by float rounding only (measured: 0.005% of the step, 2026-12-04; asked: 0.1%)
    a, b, base = weights(ref / "M1"), weights(two / "M1"), weights(ref / "M0")
    step = torch.cat([(a[k] - base[k]).flatten() for k in a]).norm()
    off = torch.cat([(a[k] - b[k]).flatten() for k in a]).norm()
    print(f"M1: 2 ranks against 1, {100 * off / step:.4f}% of the step")  # shown with -s
    assert off < 1e-3 * step, (off / step).item()
    # Sampling (per-completion seeds) flips a token wherever the seeded uniform falls within that
    # rounding of a boundary of the cumulative probabilities: on this barely trained model, often
    # enough that texts are compared only where the models are nearest, M0 (the prompt writer) and
    # M1 (iteration 1's candidates). Measured: all 32 prompt requests' texts the same and 23 of 24
    # candidates; a sampler that put its shards together wrongly would compute other logits from the
    # first token on (test_sample checks tensor-parallel sampling token for token on the same
    # weights). One changed candidate changes a pair, so M2 and M3 learn from other pairs here:
    # sharded DPO against one process on the same pairs is test_train's.
    read = lambda run, t, f: read_jsonl(run / f"iter{t}" / f"{f}.jsonl")
    assert [read(ref, t, "prompts_generated") for t in (1, 2)] == [read(two, t, "prompts_generated") for t in (1, 2)]
    candidates = [x == y for a, b in zip(read(ref, 1, "candidates"), read(two, 1, "candidates"))
                  for x, y in zip(a["candidates"], b["candidates"])]
    print(f"iteration 1: {sum(candidates)} of {len(candidates)} candidates the same")  # shown with -s
    assert sum(candidates) >= 0.75 * len(candidates)
    assert all(read(two, t, "pairs") for t in (1, 2)) and os.path.exists(two / "M3" / "model.safetensors")
    for t in (1, 2):  # every DPO step's checkpoint answered the validation prompts; the chosen one is M_{t+1}
        with open(two / "done" / f"M{t + 1}") as f:
            done = json.load(f)
        assert [x["step"] for x in done["pick"]["checkpoints"]] == list(range(1, done["steps"] + 1))
        assert not os.path.exists(two / "train" / f"M{t + 1}" / "checkpoints")  # (removed once the stage is done)


def test_a_lagging_rank_takes_rank_0s_branch(tmp_path):
    """The run folder's questions about files rank 0 writes (a new run? this
    shard done? this part?) are answered by rank 0 for all: with rank 1
    lagging after every collective, asking for itself it saw rank 0's new
    settings.json, shard or part and went one collective out of step, a hang
    (seen with each of the three asked per rank: the command timed out).
    First, a folder another job holds is refused on both ranks (rank 0 holds
    the lock, so only it can see another's), its message printed once."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", os.path.join(ROOT, "tests", "dist_lagging_rank.py"),
           str(tmp_path / "runs"), str(tmp_path / "held")]
    with held_by_another_job(tmp_path / "held"):
        r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, ranks_said(r)
    for rank in (0, 1):
        assert f"rank {rank} refused (exit 2)" in r.stdout and f"rank {rank} wrote" not in r.stdout, ranks_said(r)
        assert f"rank {rank} ok: 6 records, 3 parts, all_sum 11" in r.stdout
    assert r.stderr.count("is being written by another job (process 1 on elsewhere)") == 1, ranks_said(r)


# --- bad input: a clear message naming the stage and the reason ----------------------

def run_fails(cmd, cwd=ROOT):
    r = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    return r.stderr


def files_of(run, names):
    """(bytes, modification time) of every file of the named model folders."""
    return {os.path.join(n, f): ((run / n / f).read_bytes(), os.stat(run / n / f).st_mtime_ns)
            for n in names for f in sorted(os.listdir(run / n))}


def stages_run(stdout):
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("=== ")]


def copy_run(micro_run, tmp_path):
    """A copy of the finished micro run (modification times kept), to change settings on."""
    run, _ = micro_run
    shutil.copytree(run, tmp_path / "micro")
    return tmp_path / "micro"


def test_bad_settings_refused_before_any_work_then_the_fix_continues(micro_run, tmp_path):
    """Bad settings and a bad evaluation file are refused together, naming each,
    with nothing written; the fixed command then continues the same run folder,
    redoing only the evaluation (eval_prompts is an evaluation-only setting):
    the trained models' files keep their bytes and modification times."""
    run = copy_run(micro_run, tmp_path)
    models = files_of(run, ["SFT", "M1", "M2", "M3"])
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}  # every file
    prompts = tmp_path / "alpaca.jsonl"
    prompts.write_text('{"instruction": "Reverse the word TAMILO."}\n{"question": "no instruction"}\n')
    bad = dict(top_p=0.0, temperature=-0.5, eval_prompts=prompts, mt_bench=tmp_path / "absent.jsonl")
    err = run_fails(command(tmp_path, **bad))
    assert "error: the run cannot start; 4 problem(s), nothing was run or written" in err
    for problem in ["top_p = 0.0: must be in (0, 1]", "temperature = -0.5: must be >= 0",
                    f"eval_prompts: {prompts}:2: missing or non-string field(s): instruction",
                    f"mt_bench: data file not found: {tmp_path / 'absent.jsonl'}"]:
        assert problem in err, (problem, err)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()} == before
    prompts.write_text('{"instruction": "Reverse the word TAMILO."}\n{"instruction": "Sort BAKURO."}\n')
    r = run_loop(tmp_path, eval_prompts=prompts)
    assert stages_run(r.stdout) == ["eval_SFT", "eval_M1", "eval_M2", "eval_M3", "report"]
    assert files_of(run, ["SFT", "M1", "M2", "M3"]) == models
    answers = json.loads(open(alpaca_eval_path(run / "eval", "micro-M3")).read())
    assert [a["instruction"] for a in answers] == ["Reverse the word TAMILO.", "Sort BAKURO."]
    assert json.loads((run / "settings.json").read_text())["eval_prompts"] == str(prompts)
    r = run_loop(tmp_path, eval_prompts=prompts)  # a rerun of a finished run: nothing to do, the table again
    assert stages_run(r.stdout) == [] and "| M3 |" in r.stdout
    assert "reused, done before from the same settings and inputs: seed_data, tokenizer, M0, SFT, M1," in r.stdout


def test_a_seed_study_rerun_says_each_finished_seed_in_one_line(micro_run, tmp_path):
    """seeds.py over a seed whose run is finished: the run reuses every stage
    and says so in one line, without its table again (shown when it ran), and
    the study's summary follows, read from that run's report."""
    shutil.copytree(micro_run[0], tmp_path / "study-seed1337")  # (micro's seed: the default's)
    args = [f"--{k}={v}" for k, v in MICRO.items()] + [f"--out_root={tmp_path}", "--run_name=study", "--seeds=1337"]
    r = subprocess.run([sys.executable, "seeds.py", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert stages_run(r.stdout) == [] and "done in" not in r.stdout and "reused, done before" not in r.stdout
    assert f"every stage was done before, from the same settings and inputs: {tmp_path}/study-seed1337/report.md" \
        in r.stdout
    assert "# `study` over seeds" in r.stdout and (tmp_path / "study-seeds.md").exists()


def test_a_run_needs_a_folder_of_its_own(tmp_path):
    """An empty run name would write the run's files among the other runs' folders."""
    for name in ("", "..", "../elsewhere", "a/../.."):
        err = run_fails(command(tmp_path, run=name))
        assert f"run_name = '{name}': must name a folder inside out_root" in err
    assert os.listdir(tmp_path) == [] and not os.path.exists(tmp_path.parent / "elsewhere")
    (tmp_path / "afile").write_text("")
    err = run_fails(command(tmp_path, run="afile"))
    assert f"run_name = 'afile': {tmp_path / 'afile'} is a file, not a folder" in err
    # an out_root below a file could not be made: said before any work, not a traceback at the first write
    err = run_fails(command(tmp_path / "afile" / "runs"))
    assert f"out_root = '{tmp_path / 'afile' / 'runs'}': {tmp_path / 'afile'} is a file, not a folder" in err


def test_what_would_lose_files_or_a_run_is_refused_before_any_work(tmp_path, llama_tokenizer_path):
    """Refused up front, each by name: seed data inside the run folder (the
    seed stage empties its seed/ first: the files were deleted, then called
    absent), a folder of other files taken as a run folder (its seed/ and M0/
    replaced), an empty out_root (the current folder), temperature 0 with
    iterations (identical candidates: no pairs, found after M1 trained), and a
    judgments file that cannot give M1 any EFT data (found after SFT trained)."""
    save_model(Transformer(preset("toy-tiny", vocab_size=32000)), str(tmp_path / "ckpt"),
               tokenizer_path=llama_tokenizer_path)
    seed = tmp_path / "out" / "toy" / "seed"  # a finished toy run's seed data, reused as real data
    seed.mkdir(parents=True)
    (tmp_path / "out" / "toy" / "settings.json").write_text("{}")
    (seed / "ift.jsonl").write_text('{"prompt": "a", "response": "b"}\n' * 8)
    (seed / "eft_train.jsonl").write_text('{"prompt": "t", "responses": ["x", "y"], "ranks": [0, 1]}\n')
    (seed / "eft_eval.jsonl").write_text('{"prompt": "e", "responses": ["x", "y"], "ranks": [0, 1]}\n')

    def problems(**settings):
        c = configurator.settings(S.DEFAULTS, {"seed_data": str(seed), "init_from": str(tmp_path / "ckpt"),
                                               "out_root": str(tmp_path / "out"), "max_judge_tokens": 32, **settings})
        return validate.check_loop(c, 1).found
    assert problems() == [f"seed_data: {seed} is inside the run folder {tmp_path / 'out' / 'toy'}, which this run "
                          f"writes: copy it out, or give another run_name"]
    assert problems(run_name="real") == []
    # the run folder itself is inside it; a folder whose name only begins with the run's is not
    assert f"seed_data: {tmp_path / 'out' / 'real'} is inside the run folder {tmp_path / 'out' / 'real'}, which " \
        f"this run writes: copy it out, or give another run_name" in problems(run_name="real",
                                                                              seed_data=str(tmp_path / "out" / "real"))
    assert problems(run_name="to") == []  # (seed data in out/toy/, the run in out/to/)
    (tmp_path / "out" / "mine").mkdir()
    (tmp_path / "out" / "mine" / "train.log").write_text("a log tee'd here before the run starts is fine")
    assert problems(run_name="mine") == []
    (tmp_path / "out" / "mine" / "M0").mkdir()
    (tmp_path / "out" / "mine" / "M0" / "notes.txt").write_text("mine")
    assert problems(run_name="mine")[0].startswith(f"run_name: {tmp_path / 'out' / 'mine'} is not a run folder "
                                                   f"(no settings.json) and holds M0, which the loop would replace")
    assert problems(run_name="real", out_root="")[0] == "out_root = '': give a folder ('.' for this one)"
    assert problems(run_name="real", temperature=0.0)[0].startswith("temperature = 0.0: must be > 0 with iterations")
    assert problems(run_name="real", temperature=0.0, iterations=0) == []
    assert problems(run_name="real", prompt_writer="m0") == [
        "prompt_writer = 'm0': no such checkpoint folder; did you mean 'M0'?"]
    found = problems(run_name="real", quote_first=True)  # a toy-world setting: no advice to set judge_quotes too
    assert len(found) == 1 and found[0].startswith("quote_first = True: is read only with seed_data='toy'"), found
    judged = tmp_path / "judged.jsonl"
    for lines, ok in (([{"prompt": "t", "judgments": ["Rating: 4/5", "bad"]}], False),  # no 'Score: N'
                      ([{"prompt": "e", "judgments": ["Score: 4", "Score: 2"]}], False),  # the eval set's prompt
                      ([{"prompt": "A", "judgments": ["Score: 4", "Score: 2"]}], False),  # an IFT prompt
                      ([{"prompt": "t", "judgments": ["Score: 2", "Score: 4"]}], False),  # against the human ranks
                      ([{"prompt": "t", "judgments": ["Score: 4", "Score: 2"]}], True)):
        judged.write_text("".join(json.dumps({**x, "responses": ["x", "y"]}) + "\n" for x in lines))
        found = problems(run_name="real", eft_judgments=str(judged))
        assert found == [] if ok else found[0].startswith(f"eft_judgments: {judged}: no judgment of a prompt"), found
    # seed data reached through a link is where the link leads: inside the run folder all the same
    os.symlink(seed, tmp_path / "linked_seed")
    assert problems(seed_data=str(tmp_path / "linked_seed")) == [
        f"seed_data: {tmp_path / 'linked_seed'} is inside the run folder {tmp_path / 'out' / 'toy'}, which this run "
        f"writes: copy it out, or give another run_name"]
    # every input the run reads, not only the seed data: an evaluation file kept in the run folder
    prompts = tmp_path / "out" / "real" / "prompts.jsonl"
    prompts.parent.mkdir()
    prompts.write_text('{"instruction": "Reverse the word TAMILO."}\n')
    assert problems(run_name="real", eval_prompts=str(prompts)) == [
        f"eval_prompts: {prompts} is inside the run folder {tmp_path / 'out' / 'real'}, which this run writes: copy "
        f"it out, or give another run_name"]


def test_a_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    """A read-only mount or a folder without write permission (os.access says
    which; as root only a read-only mount does, so it is simulated here)."""
    c = configurator.settings(S.DEFAULTS, {"out_root": str(tmp_path / "ro" / "runs")})
    (tmp_path / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and p != str(tmp_path / "ro"))
    assert (f"out_root = '{tmp_path / 'ro' / 'runs'}': cannot write in {tmp_path / 'ro'}: no permission, or a "
            f"read-only file system") in validate.check_loop(c, 1).found
    # where access says yes and the file system no (root, /proc): a file is made and removed to find out
    if os.access("/proc", os.W_OK):  # (as root, as CI runs)
        c = configurator.settings(S.DEFAULTS, {"out_root": "/proc/runs"})
        assert [x for x in validate.check_loop(c, 1).found if x.startswith("out_root")] == [
            "out_root = '/proc/runs': cannot make a file in /proc (No such file or directory)"]
    # a writable folder: its probe file made and removed, nothing left behind (access said no above, so no
    # probe was made there)
    (tmp_path / "w").mkdir()
    import data
    assert data.unwritable(str(tmp_path / "w")) is None and os.listdir(tmp_path / "w") == []


def test_bad_inputs_of_a_new_run_are_refused_before_the_folder_exists(tmp_path):
    """A mistyped init_from, an EFT eval group without ranks, a seed too small
    for the few-shot prompts: all named at once, and no run folder is made,
    so the run name stays free for the fixed command."""
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "ift.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    (seed / "eft_train.jsonl").write_text('{"prompt": "a", "responses": ["x", "y"], "ranks": [0, 1]}\n')
    (seed / "eft_eval.jsonl").write_text('{"prompt": "a", "responses": ["x", "y"], "ranks": [0, 1]}\n'
                                         '{"prompt": "a", "responses": ["x", "y"]}\n')
    err = run_fails(command(tmp_path, seed_data=seed, init_from=tmp_path / "Llama-2-70b-hff"))
    assert f"init_from: checkpoint folder not found: {tmp_path / 'Llama-2-70b-hff'}" in err
    assert "eft_eval.jsonl:2: 'ranks' must be a list of integers >= 0, one per response" in err
    assert "n_shots = 8: needs 8 seed prompts (the first requests have no generated ones yet), the seed has 1" in err
    assert not os.path.exists(tmp_path / "micro")


def test_a_run_folder_another_job_writes_is_refused(tmp_path):
    """The same command started twice (or again while a killed torchrun's
    ranks still run) would have both write the same stage records and states:
    the second is refused before any work while the first holds the folder."""
    folder = tmp_path / "micro"
    with held_by_another_job(folder):
        err = run_fails(command(tmp_path))
    assert f"error: {folder} is being written by another job (process 1 on elsewhere); nothing was run." in err
    assert os.listdir(folder) == [".lock"]


def test_a_context_too_short_for_the_judge_prompt_is_refused(tmp_path, llama_tokenizer_path):
    """Llama 2's tokens for the judge prompt's fixed text (about 390) leave no
    room in a 480-token context once a 96-token judgment is added: every
    judgment would be skipped as too long, after the SFT baseline trained."""
    torch.manual_seed(0)
    save_model(Transformer(preset("toy-tiny", vocab_size=32000, max_seq_len=480)), str(tmp_path / "ckpt"),
               tokenizer_path=llama_tokenizer_path)
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "ift.jsonl").write_text('{"prompt": "a", "response": "b"}\n' * 8)
    for f in ("eft_train", "eft_eval"):
        (seed / f"{f}.jsonl").write_text(json.dumps({"prompt": f, "responses": ["x", "y"], "ranks": [0, 1]}) + "\n")

    def problems(**settings):
        c = configurator.settings(S.DEFAULTS, {"seed_data": str(seed), "init_from": str(tmp_path / "ckpt"),
                                               **settings})
        return validate.check_loop(c, 1).found
    found = problems(max_judge_tokens=96)
    assert len(found) == 1 and re.fullmatch(r"max_judge_tokens = 96: with the judge prompt's own 3\d\d tokens, "
                                            r"leaves no room .* \(max_seq_len 480\)", found[0]), found
    assert problems(max_judge_tokens=32) == []
    # at the edge: the judge prompt's own tokens and max_judge_tokens filling the whole context leave no room
    # for the question and the response (every judgment skipped); one token less leaves room
    own = int(re.search(r"own (\d+) tokens", found[0]).group(1))
    edge = problems(max_judge_tokens=480 - own)
    assert len(edge) == 1 and edge[0].startswith(f"max_judge_tokens = {480 - own}: with the judge prompt's"), edge
    assert problems(max_judge_tokens=480 - own - 1) == []
    # and a prompt of max_prompt_tokens must fit the context with a token to generate
    assert problems(max_judge_tokens=32, max_prompt_tokens=480) == [
        "max_prompt_tokens = 480: must be below the context of init_from's model (max_seq_len 480)"]
    assert problems(max_judge_tokens=32, max_prompt_tokens=479) == []
    found = problems(max_judge_tokens=32, chat_template="llama3")  # (it raised from inside the check)
    assert len(found) == 1 and found[0].startswith("chat_template = 'llama3': "), found
    assert problems(max_judge_tokens=32, out_root=str(tmp_path / "out"), run_name="..foo") == []  # a name, not ..
    (tmp_path / "judged.jsonl").write_text('{"prompt": "c", "responses": ["x", "y"], "judgments": ["Score: 5", "Score: 1"]}\n')
    assert problems(eft_judgments=str(tmp_path / "judged.jsonl"), iterations=0) == []  # it never judges to learn
    # ... but its SFT still writes chats: a template Llama 2's vocabulary cannot write is refused all the same
    found = problems(eft_judgments=str(tmp_path / "judged.jsonl"), iterations=0, chat_template="llama3")
    assert len(found) == 1 and found[0].startswith("chat_template = 'llama3': "), found
    assert problems(max_judge_tokens=32, dpo_lr=float("inf")) == ["dpo_lr = inf: must be a finite number"]  # --dpo_lr=1e999
    found = problems(max_judge_tokens=32, meta_judge=True, max_meta_tokens=110)
    assert len(found) == 1 and found[0].startswith("max_meta_tokens = 110: with the meta-judge prompt's own"), found
    # the toy world's settings change nothing with real seed data and a checkpoint as M0: said, not ignored
    assert problems(max_judge_tokens=32, judge_working=True, n_ift=20, pretrain_lr=1e-3, vocab_size=999,
                    rubric_pieces=False) == [
        "n_ift = 20: is read only with seed_data='toy', which this run does not have: it would "
        "change nothing; leave it at 3200",
        "judge_working = True: is read only with seed_data='toy', which this run does not have: it "
        "would change nothing; leave it at False",
        "vocab_size = 999: is read only with init_from='scratch', which this run does not have: "
        "it would change nothing; leave it at 2048",
        "rubric_pieces = False: is read only with init_from='scratch', which this run does not "
        "have: it would change nothing; leave it at True",
        "pretrain_lr = 0.001: is read only with init_from='scratch', which this run does not have: "
        "it would change nothing; leave it at 0.002"]
    assert problems(max_judge_tokens=32, n_ift=3200, vocab_size=2048) == []  # at their defaults, named or not
    # `model` is the shape of init_from='scratch': beside a checkpoint of another shape it changes nothing
    assert problems(max_judge_tokens=32, model="toy-large") == [
        "model = 'toy-large': is read only with init_from='scratch' (and by --plan_only before init_from is "
        "there), and init_from's checkpoint is another shape (dim 64, 2 layers): it would change nothing; leave it "
        "at 'toy-small', or name the checkpoint's preset"]
    assert problems(max_judge_tokens=32, model="toy-small") == []  # its default
    p = validate.Problems(configurator.settings(S.DEFAULTS, {"model": "toy-large"}))
    validate.model_beside_checkpoint(p, p.c, preset("toy-large"), "toy-small")  # the checkpoint's own preset
    validate.model_beside_checkpoint(p, p.c, preset("toy-large", vocab_size=2048), "toy-small")  # its own vocabulary
    assert p.found == []
    # the same in train_sft.py, whose default is 'toy'
    (tmp_path / "sft.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    c = configurator.settings(train_sft.DEFAULTS, {"init_from": str(tmp_path / "ckpt"), "model": "llama2-7b",
                                                   "data": str(tmp_path / "sft.jsonl"), "out_dir": str(tmp_path / "o")})
    with pytest.raises(validate.BadInput, match=r"model = 'llama2-7b': is read only .* leave it at 'toy'"):
        validate.check_training(c, 1, ["prompt", "response"], "train_sft.py")
    c.model, c.chat_template = "toy", "llama3"  # a template the checkpoint's vocabulary cannot write: before work
    with pytest.raises(validate.BadInput, match=r"chat_template = 'llama3': "):
        validate.check_training(c, 1, ["prompt", "response"], "train_sft.py")
    c.template = "text"  # plain-text training writes no chats
    validate.check_training(c, 1, ["prompt", "response"], "train_sft.py")
    # from scratch, the tokenizer given must write the template too (it stopped train_sft.py after setup)
    c.template, c.init_from, c.tokenizer, c.model = "chat", "scratch", llama_tokenizer_path, "toy-tiny"
    with pytest.raises(validate.BadInput, match=r"chat_template = 'llama3': .*needs special tokens this vocabulary lacks"):
        validate.check_training(c, 1, ["prompt", "response"], "train_sft.py")
    c.chat_template = ""
    validate.check_training(c, 1, ["prompt", "response"], "train_sft.py")
    # an EFT eval prompt among the EFT training groups: M1's judge would be evaluated on what it learned
    (seed / "eft_train.jsonl").write_text('{"prompt": "Eft_eval", "responses": ["x", "y"], "ranks": [0, 1]}\n')
    assert problems(max_judge_tokens=32) == [
        f"seed_data = {str(seed)!r}: 1 prompt(s) of eft_train.jsonl are EFT eval prompts (eft_eval.jsonl), e.g. "
        f"'eft_eval': M1's judge would be evaluated on prompts it learned to judge; split the groups by prompt"]
    # EFT targets ready (judge prompts with judgments): a judge file for groups would go unread
    (seed / "eft_train.jsonl").write_text('{"prompt": "Judge this.", "response": "Fine.\\nScore: 4"}\n')
    assert problems(max_judge_tokens=32) == []
    # ... whose question (a target's instruction, as judge.eft_targets writes it) is an EFT eval prompt: leaked too
    (seed / "eft_train.jsonl").write_text('{"prompt": "Judge this.", "response": "Fine.\\nScore: 4", '
                                          '"instruction": "EFT_eval"}\n')
    assert problems(max_judge_tokens=32)[0].startswith(
        f"seed_data = {str(seed)!r}: 1 prompt(s) of eft_train.jsonl are EFT eval prompts (eft_eval.jsonl)")
    (seed / "eft_train.jsonl").write_text('{"prompt": "Judge this.", "response": "Fine.\\nScore: 4"}\n')
    assert problems(max_judge_tokens=32, eft_judgments=str(tmp_path / "judged.jsonl"), iterations=0) == [
        f"eft_judgments = {str(tmp_path / 'judged.jsonl')!r}: supplies judgments for EFT groups of ranked responses, "
        f"and seed_data = {str(seed)!r}'s eft_train.jsonl holds targets already (judge prompts with judgments): "
        f"leave it out, or give the groups"]


def test_eft_training_files_of_one_kind_with_scores_and_ranks_that_count(tmp_path):
    """The loop reads eft_train.jsonl as the kind of its first record: a file
    mixing groups and judgments failed after the SFT baseline trained, as did
    a judgment without a score; ranks of True/False or -1 passed as integers."""
    check = validate.eft_train_records()
    group = {"prompt": "a", "responses": ["x", "y"], "ranks": [0, 1]}
    assert check(group) is None and check({**group, "prompt": "b"}) is None
    assert check({"prompt": "a", "response": "Score: 4"}).startswith("a file of EFT groups (its first record) "
                                                                    "cannot hold judgments too")
    check = validate.eft_train_records()
    assert check({"prompt": "a", "response": "Fine.\nScore: 4"}) is None
    assert check({"prompt": "a", "response": "Fine.\nScore: 9"}) == \
        "a judgment to learn ends with its score, 'Score: N' with N in 0..5"
    assert "cannot hold groups too" in check(group)
    for ranks in ([True, False], [0, -1], [0]):
        assert validate.eft_group({**group, "ranks": ranks}).startswith("'ranks' must be a list of integers >= 0")
    # an SFT conversation learns its assistant turns, wherever they are (validate.sft_record)
    chat = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]
    assert validate.sft_record({"messages": chat}) is None
    assert validate.sft_record({"messages": chat[:1]}) == \
        "a conversation without an assistant message has nothing to learn"
    # a group needs its prompt, and a record with ranks but no responses is a group without them
    assert validate.eft_group({"question": "Q", "responses": ["a", "b"], "ranks": [0, 1]}) == \
        "missing or non-string field: prompt"
    assert validate.eft_train_records()({"prompt": "Q", "ranks": [0, 1]}) == \
        "'responses' must be a list of 2 or more strings"
    # a group of one response ranks nothing
    assert validate.eft_group({**group, "responses": ["x"], "ranks": [0]}) == \
        "'responses' must be a list of 2 or more strings"


def test_empty_or_malformed_seed_data(tmp_path):
    seed = tmp_path / "seed"
    seed.mkdir()
    for f in ("ift", "eft_train", "eft_eval"):
        (seed / f"{f}.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    (seed / "ift.jsonl").write_text("")
    err = run_fails(command(tmp_path, seed_data=str(seed), init_from=str(tmp_path)))
    assert "ift.jsonl: no records (the file is empty)" in err
    assert "eft_eval.jsonl:1: 'responses' must be a list of 2 or more strings" in err
    (seed / "ift.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": oops}\n')
    err = run_fails(command(tmp_path, run="m2", seed_data=str(seed), init_from=str(tmp_path)))
    assert "ift.jsonl:2: malformed JSON" in err
    # a conversation trains train_sft.py, but the loop's seed prompts are the prompt writer's examples
    (seed / "ift.jsonl").write_text('{"messages": [{"role": "user", "content": "a"}, '
                                    '{"role": "assistant", "content": "b"}]}\n')
    err = run_fails(command(tmp_path, run="m3", seed_data=str(seed), init_from=str(tmp_path)))
    assert "ift.jsonl:1: needs string fields prompt and response (this record has messages (list); the loop's seed " \
           "prompts" in err


def test_more_iterations_extend_a_finished_run(micro_run, tmp_path):
    """iterations=2 -> 3: only iteration 3, M4 and M4's evaluation run; M1-M3 are untouched."""
    run = copy_run(micro_run, tmp_path)
    models = files_of(run, ["SFT", "M1", "M2", "M3"])
    r = run_loop(tmp_path, iterations=3)
    assert stages_run(r.stdout) == ["iter3_prompts", "iter3_candidates", "iter3_judgments", "iter3_pairs", "M4",
                                    "eval_M4", "report"]
    assert files_of(run, ["SFT", "M1", "M2", "M3"]) == models
    assert "| M4 |" in (run / "report.md").read_text() and not os.path.exists(run / "train" / "M4" / "state")
    assert "it/s" not in r.stdout + r.stderr  # progress=False reached generation, judging and DPO: no bars
    # the note of stages made again names the report alone (its input, M4's evaluation, is new): not the new stages
    assert "this command makes them again, replacing their files: report (the first because: eval_M4 added;" \
        in r.stdout


def test_a_changed_training_setting_redoes_that_model_and_what_follows(micro_run, tmp_path):
    """dpo_beta is read by DPO only: the seed, M1 and iteration 1's data stay; M2 is retrained and
    evaluated again (iterations=1 keeps the test short: M3 would follow), and the log says why, the
    changed settings at the start, before any model is replaced."""
    run = copy_run(micro_run, tmp_path)
    models = files_of(run, ["SFT", "M1"])
    r = run_loop(tmp_path, dpo_beta=0.2, iterations=1)
    assert stages_run(r.stdout) == ["M2", "eval_M2", "report"]
    assert "=== M2 (again: dpo_beta 0.1 -> 0.2)" in r.stdout
    note = (f"note: {run} holds stages made from other settings or inputs; this command makes them again, replacing "
            f"their files: M2, eval_M2, report (the first because: dpo_beta 0.1 -> 0.2;")
    assert r.stdout.index(note) < r.stdout.index("=== M2")
    r = run_loop(tmp_path, dpo_beta=0.2, iterations=1)
    assert stages_run(r.stdout) == [] and "note:" not in r.stdout  # the same command again: nothing to say
    assert files_of(run, ["SFT", "M1"]) == models


def test_ctrl_c_names_the_stage_and_says_the_same_command_resumes(tmp_path, monkeypatch, capsys):
    def interrupted(c, r):
        raise KeyboardInterrupt
    monkeypatch.setattr(S, "stage_seed_data", interrupted)
    with pytest.raises(SystemExit) as e:
        S.main(command(tmp_path)[2:])
    err = capsys.readouterr().err
    assert e.value.code == 130 and err.strip() == "interrupted in stage seed_data; the same command resumes the run"


def test_stages_declare_every_setting_they_read():
    """STAGE_SETTINGS is what makes a changed setting redo a stage: a stage
    reading a setting it does not declare would be skipped with stale output.
    Every c.<setting> a stage function reads (through the helpers it calls)
    must be in its list, and every setting that is not runtime-only in one."""
    def reads(code, seen):
        names = set()
        for i in dis.get_instructions(code):
            if i.opname in ("LOAD_ATTR", "LOAD_METHOD"):
                names.add(i.argval)
            f = getattr(S, str(i.argval), None) if i.opname == "LOAD_GLOBAL" else None
            if inspect.isfunction(f) and f.__module__ == "selfreward" and f not in seen:
                seen.add(f)
                names |= reads(f.__code__, seen)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                names |= reads(const, seen)
        return names & set(S.DEFAULTS) - S.RUNTIME_SETTINGS

    ST = S.STAGE_SETTINGS  # a "+meta" list counts only with Meta-Rewarding on, "+coin" with pair_by='coin',
    #                        "+pick" with dpo_pick_every, "+judge" without eft_judgments, "+benchmarks" with
    #                        eval_prompts or mt_bench (run_stages adds them)
    kinds = {S.stage_seed_data: ["seed_data", *ST["toy seed"]],
             S.stage_tokenizer: "tokenizer",
             S.stage_pretrain: "M0", S.stage_sft_baseline: "SFT",
             S.stage_m1: [*ST["SFT"], *ST["M1"], *ST["M1+meta"]], S.stage_eft_own_answers: "eft_own",
             S.stage_eft_targets: [*ST["eft_targets"], *ST["eft_targets+judge"]], S.stage_prompts: "prompts",
             S.stage_candidates: "candidates",
             S.stage_judgments: "judgments", S.stage_meta_judgments: "meta_judgments",
             S.stage_pairs: [*ST["pairs"], *ST["pairs+coin"]],
             S.stage_pairs_meta: [*ST["pairs"], *ST["pairs+meta"], *ST["pairs+coin"]],
             S.stage_dpo: [*ST["DPO"], *ST["DPO+pick"]],
             S.stage_eval: [*ST["eval"], *ST["eval+benchmarks"]]}
    for f, kind in kinds.items():
        declared = set(kind if isinstance(kind, list) else S.STAGE_SETTINGS[kind])
        assert reads(f.__code__, set()) <= declared, f.__name__
    # a setting that switches a "+meta" or "+coin" list on is read whether it is on or off, so the
    # stage lists it either way: else turning it off would reuse what was made with it on
    switches = {"meta_judge", "pair_by", "dpo_pick_every", "eft_judgments", "eval_prompts", "mt_bench"}
    always = {S.stage_tokenizer: ST["tokenizer"], S.stage_m1: [*ST["SFT"], *ST["M1"]], S.stage_pairs: ST["pairs"],
              S.stage_eval: ST["eval"],
              S.stage_eft_targets: ST["eft_targets"],
              S.stage_pairs_meta: ST["pairs"], S.stage_dpo: ST["DPO"]}
    for f, names in always.items():
        assert reads(f.__code__, set()) & switches <= set(names), f.__name__
    declared = {s for names in S.STAGE_SETTINGS.values() for s in names}
    assert declared <= set(S.DEFAULTS)
    assert set(S.DEFAULTS) - declared - S.RUNTIME_SETTINGS == {"seed_data", "init_from", "iterations"}  # main's own


def test_seed_data_redone_leaves_no_file_of_the_earlier_seed(tmp_path):
    """Seed data redone in the same run folder with the other kind (the toy world, then a folder of
    real data): the toy world's files go. Later stages tell toy from real by them (a toy test set
    would grade the real model) and M1 would read the earlier EFT targets instead of the new seed's."""
    r = types.SimpleNamespace(path=lambda *p: str(tmp_path.joinpath("run", *p)))
    sizes = {k: MICRO[k] for k in ("n_ift", "n_eft_train", "n_eft_eval", "n_test")}
    S.stage_seed_data(configurator.settings(S.DEFAULTS, {**sizes, "progress": False}), r)
    write_jsonl(r.path("seed", "eft_train_targets.jsonl"), [{"prompt": "judge this", "response": "Score: 5"}])
    assert {"test.jsonl", "eft_train_groups.jsonl"} <= set(os.listdir(r.path("seed")))
    real = tmp_path / "real"
    real.mkdir()
    write_jsonl(real / "ift.jsonl", [{"prompt": "Name a fruit.", "response": "Apple."}])
    write_jsonl(real / "eft_train.jsonl", [{"prompt": "Say hi.", "response": "Review ... Score: 4"}])
    write_jsonl(real / "eft_eval.jsonl", [{"prompt": "Say no.", "responses": ["No.", "Yes."], "ranks": [0, 1]}])
    real_settings = configurator.settings(S.DEFAULTS, {"seed_data": str(real), "progress": False})
    S.stage_seed_data(real_settings, r)
    assert sorted(os.listdir(r.path("seed"))) == ["eft_eval.jsonl", "eft_train.jsonl", "ift.jsonl"]
    assert S.eft_train_file(r) == r.path("seed", "eft_train.jsonl")
    # made again from the same files (one of them deleted): what later stages wrote beside them stays
    # (real data's EFT targets are hours of judging at 70B), and the deleted one is back
    write_jsonl(r.path("seed", "eft_train_targets.jsonl"), [{"prompt": "judge this", "response": "Score: 4"}])
    os.remove(r.path("seed", "ift.jsonl"))
    S.stage_seed_data(real_settings, r)
    assert sorted(os.listdir(r.path("seed"))) == ["eft_eval.jsonl", "eft_train.jsonl", "eft_train_targets.jsonl",
                                                  "ift.jsonl"]
    assert read_jsonl(r.path("seed", "ift.jsonl")) == [{"prompt": "Name a fruit.", "response": "Apple."}]
    assert not os.path.exists(r.path("seed.new"))
    # from files whose contents changed, the folder starts afresh
    write_jsonl(real / "ift.jsonl", [{"prompt": "Name a colour.", "response": "Red."}])
    S.stage_seed_data(real_settings, r)
    assert sorted(os.listdir(r.path("seed"))) == ["eft_eval.jsonl", "eft_train.jsonl", "ift.jsonl"]


def test_grader_pairs_set_the_truly_best_against_the_truly_worst(tmp_path):
    """pair_by='grader' or 'right' (the perfect-judge controls): the grader's grades
    replace the judge's scores, whatever the judge said; a prompt it cannot read gives no pair."""
    os.makedirs(tmp_path / "iter1")

    class R:  # a run folder
        path = staticmethod(lambda *p: str(tmp_path.joinpath(*p)))
    # grades by hand (data/toy.py: grade): "MUNIZ" 5, "The answer is MUNIZ." 4, "MUNZI" 2 (one letter off), "7" 0
    judged = [{"prompt": "What is 'ZINUM' spelled backwards?", "candidates": ["MUNZI", "The answer is MUNIZ.", "7",
                                                                            "MUNIZ"],
               "score": [5.0, 1.0, 3.0, 2.0]},  # the judge's scores: the near miss best, the chatty right one worst
              {"prompt": "Write a poem about spring.", "candidates": ["a", "b", "c", "d"],
               "score": [5.0, 1.0, 2.0, 2.0]}]
    write_jsonl(tmp_path / "iter1" / "judgments.jsonl", judged)
    assert [x["score"] for x in S.grader_scored(judged)] == [[2, 4, 0, 5], [None] * 4]
    by_judge = S.stage_pairs(types.SimpleNamespace(pair_by="judge"), R, 1)
    assert by_judge["pairs"] == 2
    assert read_jsonl(tmp_path / "iter1" / "pairs.jsonl")[0]["chosen"] == "MUNZI"
    by_grader = S.stage_pairs(types.SimpleNamespace(pair_by="grader"), R, 1)
    assert by_grader == {"pairs": 1, "by": "grader", "dropped": {"fewer than 2 scored candidates": 1,
                                                                "all scores tie": 0, "same text": 0}}
    [pair] = read_jsonl(tmp_path / "iter1" / "pairs.jsonl")
    assert (pair["chosen"], pair["rejected"], pair["chosen_score"], pair["rejected_score"]) == ("MUNIZ", "7", 5, 0)
    # 'right': blind to form, so the first right answer (the chatty one) against the first wrong one
    assert [x["score"] for x in S.grader_scored(judged, only_right=True)] == [[0, 1, 0, 1], [None] * 4]
    S.stage_pairs(types.SimpleNamespace(pair_by="right"), R, 1)
    [pair] = read_jsonl(tmp_path / "iter1" / "pairs.jsonl")
    assert (pair["chosen"], pair["rejected"]) == ("The answer is MUNIZ.", "MUNZI")


def test_a_candidate_cut_off_takes_no_part_in_a_pair(tmp_path):
    """A candidate that ran out of max_response_tokens before its end of turn
    ("finished" false) is neither chosen nor rejected, whoever scores it: a
    pair closes each response with the end-of-turn token, so a cut-off chosen
    one would teach DPO to stop mid-answer. Records without the flags (older
    code) count every candidate."""
    os.makedirs(tmp_path / "iter1")

    class R:  # a run folder
        path = staticmethod(lambda *p: str(tmp_path.joinpath(*p)))
    judged = [{"prompt": "p", "candidates": ["a long answer, cut", "ok", "bad"], "score": [5.0, 4.0, 1.0],
               "finished": [False, True, True]},
              {"prompt": "q", "candidates": ["a", "b"], "score": [5.0, 1.0], "finished": [True, False]},
              {"prompt": "r", "candidates": ["a", "b"], "score": [5.0, 1.0]}]
    write_jsonl(tmp_path / "iter1" / "judgments.jsonl", judged)
    info = S.stage_pairs(types.SimpleNamespace(pair_by="judge"), R, 1)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in read_jsonl(tmp_path / "iter1" / "pairs.jsonl")] == \
        [("p", "ok", "bad"), ("r", "a", "b")]
    assert info["dropped"]["fewer than 2 scored candidates"] == 1  # q: one candidate left
    # the grader's controls too: its grades replace the judge's scores, not the flags
    judged = [{"prompt": "What is 'ZINUM' spelled backwards?", "candidates": ["MUNIZ", "The answer is MUNIZ.", "7"],
               "score": [1.0, 1.0, 1.0], "finished": [False, True, True]}]
    write_jsonl(tmp_path / "iter1" / "judgments.jsonl", judged)
    S.stage_pairs(types.SimpleNamespace(pair_by="grader"), R, 1)
    assert [(p["chosen"], p["rejected"]) for p in read_jsonl(tmp_path / "iter1" / "pairs.jsonl")] == \
        [("The answer is MUNIZ.", "7")]


def test_dpo_pick_every_makes_the_checkpoint_the_grader_rates_best_the_next_model(micro_run, tmp_path):
    """dpo_pick_every (the paper's choice among DPO checkpoints, the grader in
    its judge's place): DPO keeps the model every k steps, and M2 is the one whose
    greedy answers to the validation prompts have the highest mean grade. The
    figures in its record are computed again here from sample.py's answers."""
    run = copy_run(micro_run, tmp_path)
    r = run_loop(tmp_path, dpo_pick_every=1, dpo_batch_size=1, n_valid=24, iterations=1, keep_train_state=True)
    assert stages_run(r.stdout) == ["M2", "eval_M2", "report"]
    with open(run / "done" / "M2") as f:
        pick = json.load(f)["pick"]
    steps = [x["step"] for x in pick["checkpoints"]]
    assert len(steps) >= 2 and steps == list(range(1, len(steps) + 1))  # one a step, the last step's last
    assert pick["valid_prompts"] == 24
    valid = toy.validation_set(run / "seed", 24, MICRO.get("seed", 1337))
    prompts = tmp_path / "valid.jsonl"
    write_jsonl(prompts, [{"prompt": x["prompt"]} for x in valid])
    mean_grade, right = {}, {}
    for step in steps:  # M2 is a copy of the chosen one; all stay (keep_train_state)
        folder = run / "train" / "M2" / ("model" if step == steps[-1] else f"checkpoints/step-{step}")
        out = tmp_path / f"answers{step}.jsonl"
        subprocess.run([sys.executable, "sample.py", f"--ckpt={folder}", f"--prompts_file={prompts}",
                        f"--out={out}", "--temperature=0", f"--max_new_tokens={MICRO['max_response_tokens']}",
                        "--progress=False", "--threads=1", "--dtype=float32"],
                       cwd=ROOT, env=ENV, check=True, capture_output=True)
        grades = [toy.grade(x, a["response"]) for x, a in zip(valid, read_jsonl(out))]
        mean_grade[step] = sum(grades) / len(grades)
        right[step] = sum(g >= toy.RIGHT for g in grades) / len(grades)
    assert {x["step"]: x["mean_grade"] for x in pick["checkpoints"]} == pytest.approx(mean_grade)
    assert {x["step"]: x["right"] for x in pick["checkpoints"]} == pytest.approx(right)
    assert len(set(mean_grade.values())) > 1, mean_grade  # (a choice to make: the checkpoints differ)
    assert pick["picked"] == max(steps, key=lambda s: (mean_grade[s], -s))
    report = (run / "report.md").read_text()
    assert (f"DPO checkpoints' mean grade on 24 validation prompts: step 1 {mean_grade[1]:.3f} "
            f"({100 * right[1]:.1f}% right), step 2 ") in report
    assert (f"iteration 1: DPO checkpoints' mean grade on 24 validation prompts: step 1 {mean_grade[1]:.3f} "
            f"({100 * right[1]:.1f}% right), step 2 ") in r.stdout  # the log says the same
    assert "grader (used inside the loop by dpo_pick_every=1 (it chose each DPO checkpoint" in report
    picked = run / "train" / "M2" / ("model" if pick["picked"] == steps[-1] else f"checkpoints/step-{pick['picked']}")
    a, b = weights(run / "M2"), weights(picked)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # another validation set: the stage chooses again among the checkpoints DPO kept, without training again
    r = run_loop(tmp_path, dpo_pick_every=1, dpo_batch_size=1, n_valid=12, iterations=1, keep_train_state=True)
    assert stages_run(r.stdout) == ["M2", "eval_M2", "report"] and "nothing to do" in r.stdout
    with open(run / "done" / "M2") as f:
        assert json.load(f)["pick"]["valid_prompts"] == 12


def test_pick_checkpoint_by_hand(tmp_path, monkeypatch):
    """The checkpoint with the highest mean grade on the validation prompts (the
    grades stubbed), the earliest of equals; the validation prompts the loop
    wrote in iterations 1 .. t are counted."""
    for t, prompt in ((1, "p1"), (2, "p2"), (3, "p3")):  # iteration 3's prompts come after M3: not counted
        write_jsonl(tmp_path / f"iter{t}" / "prompts.jsonl", [{"prompt": prompt}])
    valid = [{"prompt": p, "task": None} for p in ("p1", "P2 ", "p3", "p4")]  # (J.prompt_key: case, spaces aside)
    monkeypatch.setattr(S.toy, "validation_set", lambda *a: valid)
    monkeypatch.setattr(S, "load_for_sampling", lambda r, folder: (folder, None))
    grades = {"a": [5, 1, 1, 1], "b": [4, 4, 0, 0], "c": [5, 5, 0, 0], "d": [4, 4, 1, 1]}  # means 2, 2, 2.5, 2.5
    monkeypatch.setattr(S, "answer_and_grade", lambda c, net, tok, tasks: [{"grade": g} for g in grades[net]])
    r = types.SimpleNamespace(path=lambda *p: str(tmp_path.joinpath(*p)))
    c = types.SimpleNamespace(n_valid=4, seed=0, toy_kinds="reverse")
    folder, info = S.pick_checkpoint(c, r, 2, [[1, "a"], [2, "b"], [3, "c"], [4, "d"]])
    assert (folder, info["picked"]) == ("c", 3)  # c and d tie at 2.5: the earlier step
    assert info["checkpoints"][0] == {"step": 1, "mean_grade": 2.0, "right": 0.25}  # right: grade >= 4
    assert info["checkpoints"][3] == {"step": 4, "mean_grade": 2.5, "right": 0.5}
    assert (info["valid_prompts"], info["written_by_the_loop"]) == (4, 2)  # p1 and p2, written before M3
    assert S.pick_checkpoint(c, r, 2, [[1, "a"], [2, "b"]])[1]["picked"] == 1  # a tie at 2.0


def test_coin_turns_the_judges_pairs_round_at_random(tmp_path):
    """pair_by='coin' (the no-preference control): the judge's own pairs, the
    same responses and count, each swapped or not on a seeded fair coin."""
    os.makedirs(tmp_path / "iter1")

    class R:  # a run folder
        path = staticmethod(lambda *p: str(tmp_path.joinpath(*p)))
    judged = [{"prompt": f"p{i}", "candidates": [f"a{i}", f"b{i}", f"c{i}"], "score": [4.0, 1.0, 2.5]}
              for i in range(200)]
    write_jsonl(tmp_path / "iter1" / "judgments.jsonl", judged)
    c = types.SimpleNamespace(pair_by="coin", seed=7)
    assert S.stage_pairs(c, R, 1) == {"pairs": 200, "by": "coin", "dropped": {
        "fewer than 2 scored candidates": 0, "all scores tie": 0, "same text": 0}}
    pairs = read_jsonl(tmp_path / "iter1" / "pairs.jsonl")
    turned = [p["chosen"] == f"b{i}" for i, p in enumerate(pairs)]
    for i, (p, t) in enumerate(zip(pairs, turned)):  # a pair the judge made, whole, in one of its two directions
        best, worst = (f"a{i}", 4.0, 0), (f"b{i}", 1.0, 1)
        chosen, rejected = (worst, best) if t else (best, worst)
        assert (p["chosen"], p["chosen_score"], p["chosen_index"]) == chosen
        assert (p["rejected"], p["rejected_score"], p["rejected_index"]) == rejected
    assert 70 < sum(turned) < 130  # a fair coin: 100 +- 3.5 sd
    S.stage_pairs(c, R, 1)  # the same seed turns the same pairs
    assert [p["chosen"] == f"b{i}" for i, p in enumerate(read_jsonl(tmp_path / "iter1" / "pairs.jsonl"))] == turned
    S.stage_pairs(types.SimpleNamespace(pair_by="coin", seed=8), R, 1)
    assert [p["chosen"] == f"b{i}" for i, p in enumerate(read_jsonl(tmp_path / "iter1" / "pairs.jsonl"))] != turned
    # fair to within 4 sd over 2000 pairs (1000 +- 22): a coin biased to 0.55 would turn about 1100
    many = S.coin_turned([{**p, "chosen": "a", "rejected": "b"} for p in pairs * 10], seed=0)
    assert 910 < sum(p["chosen"] == "b" for p in many) < 1090


def test_zero_prompts_and_zero_pairs_say_which_stage(tmp_path, monkeypatch, capsys):
    os.makedirs(tmp_path / "iter1")

    class R:  # a run folder
        path = staticmethod(lambda *p: str(tmp_path.joinpath(*p)))
    write_jsonl(tmp_path / "iter1" / "judgments.jsonl", [
        {"prompt": "p", "candidates": ["a", "b", "c", "d"], "score": [3.0, 3.0, None, 3.0]},
        {"prompt": "q", "candidates": ["a", "b", "c", "d"], "score": [None, None, 2.0, None]}])
    with pytest.raises(SystemExit):
        S.stage_pairs(types.SimpleNamespace(pair_by="judge"), R, 1)
    assert re.search(r"iteration 1: no preference pairs \(dropped: \{'fewer than 2 scored candidates': 1, "
                     r"'all scores tie': 1, 'same text': 0\}\): no prompt had two candidates of different texts "
                     r"that the judge scored differently", capsys.readouterr().err)
    # the only pair there was is lost to a candidate cut off at max_response_tokens: the error says so
    write_jsonl(tmp_path / "iter1" / "judgments.jsonl", [
        {"prompt": "p", "candidates": ["a", "b"], "score": [5.0, 1.0], "finished": [True, False]}])
    with pytest.raises(SystemExit):
        S.stage_pairs(types.SimpleNamespace(pair_by="judge"), R, 1)
    assert ("scored differently, among those that ended their turn (1 ran out of max_response_tokens: raise it). "
            "DPO cannot run.") in capsys.readouterr().err
    bounds = S.DEFAULTS["min_prompt_words"], S.DEFAULTS["max_prompt_words"]  # 3, 60
    assert S.malformed("Reverse the word 'abc'.", False, *bounds).startswith("unfinished")
    assert S.malformed("Task: Reverse it now", True, *bounds) == "contains markup"
    assert S.malformed("Hi", True, *bounds) == "length out of bounds"
    assert S.malformed("Reverse the word 'abc'.", True, *bounds) is None
    assert S.malformed("Reverse the word 'abc'.", True, 5, 60) == "length out of bounds"  # the bounds given count
    # the bounds are inclusive: 4 words pass min 4 and max 4, 3 and 5 do not
    assert S.malformed("Reverse the word 'abc'.", True, 4, 4) is None
    assert S.malformed("Reverse the 'abc'.", True, 4, 60) == S.malformed("Reverse the word 'abc' now.", True, 3, 4) \
        == "length out of bounds"
    assert S.malformed("   ", True, 0, 60) == "empty"  # (said as such, not as a length)
    for markup in ("Task:", "[INST]", "[/INST]", "Score:", "<response>"):  # the judge's and templates' markup
        assert S.malformed(f"Reverse the word {markup} abc.", True, *bounds) == "contains markup", markup
    # Self-Instruct's filters: its keywords as whole words, any case; "Write a program"; an odd first character
    keyword = "not a task for text (Self-Instruct's keywords)"
    assert S.malformed("Draw a cat for my son.", True, *bounds) == keyword
    assert S.malformed("Summarize the attached files please.", True, *bounds) == keyword
    assert S.malformed("Tell me how to go to Rome by train.", True, *bounds) == keyword
    assert S.malformed("Write a program that adds two numbers.", True, *bounds) == keyword
    assert S.malformed("Name a maple or a mapping of the profile.", True, *bounds) is None  # not whole words
    odd = "starts with punctuation or a non-ASCII character"
    assert S.malformed("- List three fruits.", True, *bounds) == odd
    assert S.malformed("\u00bfQu\u00e9 hora es ahora?", True, *bounds) == odd
    assert S.malformed("Why is the sky blue?", True, *bounds) is None


def test_meta_judgments_and_graded_answers_with_the_model_stubbed(tmp_path, monkeypatch):
    """The meta-judge stage judges only responses whose judgments disagree in
    score (one of three here) and counts its battles with a verdict; the toy
    evaluation's records keep each prompt's task beside its grade."""
    write_jsonl(tmp_path / "iter1" / "judgments.jsonl", [
        {"prompt": "p", "candidates": ["x", "y"], "judgments": [["j5", "j1"], ["k3", "k3"]],
         "scores": [[5, 1], [3, 3]]},
        {"prompt": "q", "candidates": ["z"], "judgments": [["m2", "m?"]], "scores": [[2, None]]}])
    r = types.SimpleNamespace(path=lambda *p: str(tmp_path.joinpath(*p)))
    monkeypatch.setattr(S, "load_for_sampling", lambda r, path: (None, None))
    monkeypatch.setattr(S, "generate_sharded", lambda r, name, items, size, work: work(items, 0))
    monkeypatch.setattr(S.J, "compare_judgments", lambda net, tok, chunk, **kw: [
        [{"a": 0, "b": 1, "winner": "A", "too_long": False}, {"a": 1, "b": 0, "winner": "B", "too_long": False},
         {"a": 0, "b": 1, "winner": None, "too_long": True}] for _ in chunk])
    c = configurator.settings(S.DEFAULTS, {"progress": False, "meta_judge": True})
    assert S.stage_meta_judgments(c, r, 1, "M1") == {
        "candidates": 3, "meta_judged": 1, "meta_judgments": 3, "with_verdict": 2, "too_long": 1}

    prompt = "What is 'ZINUM' spelled backwards?"
    monkeypatch.setattr(S, "generate", lambda net, prompts, *a, **kw: [[1] for _ in prompts])
    monkeypatch.setattr(S, "chat_prompt_ids", lambda tok, p: [0])
    tok = types.SimpleNamespace(stop_ids=[2], decode=lambda ids: " MUNIZ ")
    [graded] = S.answer_and_grade(c, None, tok, [{"prompt": prompt, "task": toy.task_from_prompt(prompt)}])
    assert graded == {"prompt": prompt, "response": "MUNIZ", "task": toy.task_from_prompt(prompt), "grade": 5}


def test_a_real_writer_gets_self_instructs_template_and_the_toy_m0_its_own_listing():
    """Self-Instruct's template for tasks that are not classification, by hand:
    numbered shots, each on one line (line breaks and runs of spaces made one
    space, a trailing colon dropped), the next number left open."""
    shots = ["Write a haiku.", "Explain this:\n\ncode   here:", "  What is 2+2? "]
    assert S.fewshot_request(shots, toy_world=False) == (
        "Come up with a series of tasks:\n1. Write a haiku.\n2. Explain this: code here\n3. What is 2+2?\n4.")
    assert S.fewshot_request(shots[:1], toy_world=True) == toy.fewshot_text(shots[:1])


def test_first_line_is_the_stripped_text_before_the_first_line_break():
    tok = types.SimpleNamespace(decode=lambda ids: "  Name a fruit. \nName a colour.")  # (ids stand for this text)
    assert S.first_line(tok, [1, 2, 3], room=8) == ("Name a fruit.", True)
    tok = types.SimpleNamespace(decode=lambda ids: " Name a fruit ")  # no line break, all the room used: unfinished
    assert S.first_line(tok, [1, 2, 3], room=3) == ("Name a fruit", False)
    tok = types.SimpleNamespace(decode=lambda ids: "Name a fruit?\nName")  # a break inside the room's last token
    assert S.first_line(tok, [1, 2, 3], room=3) == ("Name a fruit?", True)


def test_rouge_l_by_hand():
    a, b = S.words("Reverse the word 'TAMILO'."), S.words("Reverse the word 'BAKURO'.")
    # 7 tokens each (reverse, the, word, ', x, ', .), 6 in common in order
    assert S.rouge_l(a, b) == pytest.approx(2 * 6 / 14)
    assert S.rouge_l(a, a) == 1.0 and S.rouge_l(a, []) == 0.0
    assert S.too_similar(a, [(a, Counter(a))], 0.9)
    assert not S.too_similar(a, [(b, Counter(b))], 0.9)



def test_benchmark_questions_a_model_was_trained_on_by_hand(tmp_path):
    seed = tmp_path / "seed"
    write_jsonl(seed / "ift.jsonl", [{"prompt": "Name a fruit.", "response": "Apple."},
                                     {"prompt": "Write a poem about the sea.", "response": "Waves."}])
    write_jsonl(seed / "eft_train.jsonl", [{"prompt": "What is 2 + 2?", "responses": ["4", "5"], "ranks": [0, 1]}])
    for t, prompt in ((1, "Explain gravity to a child."), (2, "Tell me a joke.")):  # each iteration's DPO pairs
        write_jsonl(tmp_path / f"iter{t}" / "pairs.jsonl", [{"prompt": prompt, "chosen": "a", "rejected": "b"},
                                                            {"prompt": "Name a fruit.", "chosen": "a", "rejected": "b"}])
    # a Meta-Rewarding judge pair: its prompt is a judge prompt, its question the "instruction"
    with open(tmp_path / "iter2" / "pairs.jsonl", "a") as f:
        f.write(json.dumps({"prompt": "Review the user's question ...", "instruction": "Why is the sky blue?",
                            "chosen": "x", "rejected": "y", "kind": "judge"}) + "\n")
    questions = ["name a  FRUIT.", "Write a poem about the ocean.", "What is 2 + 2?", "Explain gravity to a child.",
                 "Tell me a joke.", "Why is the sky blue?"]
    # "write a poem about the ocean ." against "... sea .": 6 of 7 words in order, ROUGE-L 12/14 = 0.857
    assert S.rouge_l(S.words(questions[1]), S.words("Write a poem about the sea.")) == pytest.approx(12 / 14)

    def seen(name, threshold=0.7):
        o = S.benchmark_overlap(questions, S.trained_prompts(str(seed), name, lambda t: tmp_path / f"iter{t}" /
                                                             "pairs.jsonl"), threshold)
        return o["seen"], list(o["by_source"].values()), o["examples"]

    # the SFT baseline: the seed IFT prompts only (the fruit, the poem as a near duplicate)
    assert seen("SFT") == (2, [2], questions[:2])
    assert seen("M1") == (3, [2, 1, 0], questions[:3])  # and the EFT training groups' questions
    # M_t: and the prompts of the DPO pairs before iteration t; a question counts once, under its first source
    assert seen("M2") == (4, [2, 1, 1], questions[:3])
    assert seen("M3") == (6, [2, 1, 3], questions[:3])
    assert seen("M3", threshold=0.9) == (5, [1, 1, 3], [questions[0], questions[2], questions[3]])
    # a prompt paired in two iterations is listed once
    assert S.trained_prompts(str(seed), "M3", lambda t: tmp_path / f"iter{t}" / "pairs.jsonl")[
        "written by the loop"] == ["Explain gravity to a child.", "Name a fruit.", "Tell me a joke.",
                                   "Why is the sky blue?"]


def test_the_near_duplicate_search_finds_what_rouge_l_finds():
    # too_similar skips most pairs by bounds; it must decide exactly as ROUGE-L against every prompt would,
    # at the bounds' edges too (lengths 9 and 11 at 0.9: 2 * 9 / 20 is exactly 0.9)
    rng = random.Random(0)
    vocab = "a b c d e f".split()
    draw = lambda n: [rng.choice(vocab) for _ in range(n)]
    for threshold in (0.5, 0.7, 0.9, 0.95):
        existing = [draw(rng.choice([1, 9, 10, 11, 19, 20, 21])) for _ in range(40)]
        pool = [(w, Counter(w)) for w in existing]
        for _ in range(300):
            new = draw(rng.choice([1, 2, 9, 10, 11, 19, 20, 21]))
            if rng.random() < 0.5:  # or a prompt of the pool with a few words cut: near duplicates at the edges
                new = list(rng.choice(existing))
                for _ in range(rng.randint(0, min(3, len(new) - 1))):
                    new.pop(rng.randrange(len(new)))
            assert S.too_similar(new, pool, threshold) == any(S.rouge_l(new, old) >= threshold for old in existing)


def test_rouge_l_equals_a_brute_force_lcs():
    rng = random.Random(0)

    def is_subsequence(s, t):
        rest = iter(t)
        return all(x in rest for x in s)  # `in` consumes the iterator up to the match

    for _ in range(300):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 7))]
        subsequences = ([a[i] for i in range(len(a)) if mask >> i & 1] for mask in range(2 ** len(a)))
        lcs = max(len(s) for s in subsequences if is_subsequence(s, b))
        assert S.rouge_l(a, b) == pytest.approx(2 * lcs / (len(a) + len(b)) if a and b else 0.0)


def test_make_pairs_by_hand():
    judged = [  # each candidate's average judge score (None: no judgment had a score)
        {"prompt": "p0", "candidates": ["a", "b", "c", "d"], "score": [3.0, 4.5, None, 1.0]},
        {"prompt": "p1", "candidates": ["a", "b", "c"], "score": [2.0, 5.0, 5.0]},  # tied best: the first
        {"prompt": "p2", "candidates": ["a", "b"], "score": [4.0, 4.0]},  # all tie: no pair
        {"prompt": "p3", "candidates": ["a", "b", "c"], "score": [None, 3.0, None]},  # one scored: no pair
        {"prompt": "p4", "candidates": ["a", "b", "c"], "score": [1.0, 1.0, 2.0]},  # tied worst: the first
    ]
    pairs, dropped = S.make_pairs(judged)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [("p0", "b", "d"), ("p1", "b", "a"),
                                                                          ("p4", "c", "a")]
    assert pairs[0] == {"prompt": "p0", "chosen": "b", "rejected": "d", "chosen_score": 4.5, "rejected_score": 1.0,
                        "chosen_index": 1, "rejected_index": 3}
    assert dropped == {"fewer than 2 scored candidates": 1, "all scores tie": 1, "same text": 0}
    pairs, dropped = S.make_pairs([{"prompt": "p", "candidates": ["a", "b", "c"], "score": [2.0, 4.5, 2.0]}])
    assert pairs == [{"prompt": "p", "chosen": "b", "rejected": "a", "chosen_score": 4.5, "rejected_score": 2.0,
                      "chosen_index": 1, "rejected_index": 0}]
    # the same answer (up to spaces) as best and worst states no preference: dropped and counted ...
    pairs, dropped = S.make_pairs([{"prompt": "p", "candidates": ["42", "42 ", "x"], "score": [4.0, 2.0, None]}])
    assert pairs == [] and dropped["same text"] == 1
    # ... unless another candidate of the lowest score has a different text: it is rejected instead
    # (these were in another test, which the exercise's grading command did not select)
    pairs, _ = S.make_pairs([{"prompt": "p", "candidates": ["42", "42", "7"], "score": [4.0, 2.0, 2.0]}])
    assert [(p["chosen"], p["rejected"], p["rejected_index"]) for p in pairs] == [("42", "7", 2)], \
        "a worst candidate with the best's text: reject the next of the same score with another text"
    # ... and of several worst candidates of other texts, the first is rejected
    pairs, _ = S.make_pairs([{"prompt": "p", "candidates": ["42", "7", "42", "9"], "score": [4.0, 2.0, 2.0, 2.0]}])
    assert (pairs[0]["chosen"], pairs[0]["rejected"], pairs[0]["rejected_index"]) == ("42", "7", 1)
    # an empty answer counts as unscored: never chosen (DPO would teach silence), nor rejected (the coin
    # control turns pairs around)
    pairs, _ = S.make_pairs([{"prompt": "p", "candidates": [" ", "42", "7"], "score": [5.0, 4.0, 2.0]}])
    assert [(p["chosen"], p["rejected"], p["chosen_index"]) for p in pairs] == [("42", "7", 1)]
    pairs, dropped = S.make_pairs([{"prompt": "p", "candidates": ["42", ""], "score": [4.0, 1.0]},
                                   {"prompt": "q", "candidates": ["", "a", "b"], "score": [5.0, 3.0, 3.0]}])
    assert pairs == [] and dropped == {"fewer than 2 scored candidates": 1, "all scores tie": 1, "same text": 0}


def test_make_judge_pairs_by_hand():
    def battles(*verdicts):  # (a, b, winner) -> the records judge.compare_judgments writes
        return [{"a": a, "b": b, "winner": w} for a, b, w in verdicts]
    meta_judged = [
        # net wins (wins - losses): judgment 0 3 - 1, 1 0 - 4, 2 3 - 1: the first of the best against the worst
        {"prompt": "p0", "response": "r0", "judgments": ["j0", "j1", "j2"], "scores": [5, 2, 5],
         "battles": battles((0, 1, "A"), (1, 0, "B"), (0, 2, "A"), (2, 0, "A"), (1, 2, "B"), (2, 1, "A"))},
        # a meta-judge that always says A: one win and one loss each, a draw
        {"prompt": "p1", "response": "r1", "judgments": ["k0", "k1"], "scores": [4, 1],
         "battles": battles((0, 1, "A"), (1, 0, "A"))},
        # no verdict at all
        {"prompt": "p2", "response": "r2", "judgments": ["m0", "m1"], "scores": [4, 1],
         "battles": battles((0, 1, None), (1, 0, None))},
        # best and worst are the same text (0 and 1 never met: judge.judgment_battles skips equal texts)
        {"prompt": "p3", "response": "r3", "judgments": ["x", "x", "y"], "scores": [4, 2, 3],
         "battles": battles((0, 2, "A"), (2, 0, "B"), (1, 2, "B"), (2, 1, "A"))},
        # a judgment without a score never takes part, not even as the one with fewest wins
        {"prompt": "p4", "response": "r4", "judgments": ["u", "v", "w"], "scores": [None, 3, 1],
         "battles": battles((1, 2, "A"), (2, 1, "B"))},
        # one verdict missing: the other still counts
        {"prompt": "p5", "response": "r5", "judgments": ["s", "t"], "scores": [0, 5],
         "battles": battles((0, 1, None), (1, 0, "A"))},
    ]
    pairs, dropped = S.make_judge_pairs(meta_judged)
    assert [(p["instruction"], p["chosen"], p["rejected"], p["chosen_net_wins"], p["rejected_net_wins"])
            for p in pairs] == [("p0", "j0", "j1", 2, -4), ("p4", "v", "w", 2, -2), ("p5", "t", "s", 1, -1)]
    assert dropped == {"no verdict": 1, "wins tie": 1, "same text": 1, "over the cap": 0}
    assert pairs[0] == {"prompt": S.J.judge_prompt("p0", "r0"), "chosen": "j0", "rejected": "j1", "kind": "judge",
                        "instruction": "p0", "response": "r0", "chosen_score": 5, "rejected_score": 2,
                        "chosen_net_wins": 2, "rejected_net_wins": -4}
    # the cap: a seeded random subset, in order (seed 5 draws pairs 2 and 1, in that order)
    capped, dropped = S.make_judge_pairs(meta_judged, cap=2, seed=5)
    assert len(capped) == 2 and dropped["over the cap"] == 1 and capped == S.make_judge_pairs(meta_judged, 2, 5)[0]
    at = [pairs.index(p) for p in capped]  # each one of the uncapped pairs, in their order
    assert at == sorted(at)
    assert S.make_judge_pairs(meta_judged, cap=3)[0] == pairs
    # a random subset, not the first `cap`: over seeds, each pair is sometimes the one kept
    kept = {S.make_judge_pairs(meta_judged, cap=1, seed=s)[0][0]["instruction"] for s in range(20)}
    assert kept == {"p0", "p4", "p5"}, \
        f"cap=1 over seeds 0..19 kept only {sorted(kept)}: draw the subset with random.Random(seed)"
    assert S.make_judge_pairs([]) == ([], {"no verdict": 0, "wins tie": 0, "same text": 0, "over the cap": 0})
    # fewest net wins tied (judgments 1 and 2 both -2): the first of them is rejected
    tied_worst = {"prompt": "p", "response": "r", "judgments": ["a", "b", "c"], "scores": [4, 2, 1],
                  "battles": battles((0, 1, "A"), (1, 0, "B"), (0, 2, "A"), (2, 0, "B"), (1, 2, None), (2, 1, None))}
    [pair], _ = S.make_judge_pairs([tied_worst])
    assert (pair["chosen"], pair["rejected"], pair["chosen_net_wins"], pair["rejected_net_wins"]) == ("a", "b", 4, -2)
    # a meta-judge that always says A, where two judgments share a text: "b" meets both copies of "a" (4 battles,
    # 2 wins), each "a" only "b" (2 battles, 1 win); counting wins would choose "b" for its position alone
    always_a = {"prompt": "p", "response": "r", "judgments": ["a", "a", "b"], "scores": [4, 4, 2],
                "battles": battles(*[(i, j, "A") for i, j in S.J.judgment_battles(["a", "a", "b"], [4, 4, 2])])}
    assert S.make_judge_pairs([always_a]) == ([], {"no verdict": 0, "wins tie": 1, "same text": 0, "over the cap": 0})
    # best and worst the same text but for surrounding spaces: no preference, dropped
    spaced = {"prompt": "p", "response": "r", "judgments": ["x", "x ", "y"], "scores": [4, 2, 3],
              "battles": battles((0, 2, "A"), (2, 0, "B"), (1, 2, "B"), (2, 1, "A"))}
    assert S.make_judge_pairs([spaced])[1]["same text"] == 1


def test_grader_battles_pick_the_judgment_nearest_the_true_grade(tmp_path):
    """meta_pair_by='grader' (the perfect-meta-judge control): the grader's
    verdicts replace the meta-judge's, whatever it said; equally near
    judgments draw; a prompt it cannot read gets no verdict, hence no pair."""
    os.makedirs(tmp_path / "iter1")

    class R:  # a run folder
        path = staticmethod(lambda *p: str(tmp_path.joinpath(*p)))
    every = lambda n, w: [{"a": a, "b": b, "winner": w} for a in range(n) for b in range(n) if a != b]
    # the meta-judge's verdicts: judgment 0 wins each of its battles, the others have none
    favours_0 = [{**b, "winner": "A" if b["a"] == 0 else "B" if b["b"] == 0 else None} for b in every(4, None)]
    # "MUNZI" is one letter off: grade 2 (data/toy.py: grade); the judgments score it 5, 1, 3 and 2
    meta_judged = [{"prompt": "What is 'ZINUM' spelled backwards?", "response": "MUNZI",
                    "judgments": ["j5", "j1", "j3", "j2"], "scores": [5, 1, 3, 2], "battles": favours_0},
                   # off by 1 both: 3 and 1 around a true 2 draw, so no pair
                   {"prompt": "What is 'ZINUM' spelled backwards?", "response": "MUNZI",
                    "judgments": ["k3", "k1"], "scores": [3, 1], "battles": every(2, "B")},
                   {"prompt": "Write a poem about spring.", "response": "a poem",
                    "judgments": ["m4", "m1"], "scores": [4, 1], "battles": every(2, "A")}]
    judged = S.grader_battles(meta_judged)
    # distances to 2: 3, 1, 1, 0; battle (a, b) goes to the nearer one: (0, 1) B, (0, 2) B, (0, 3) B, (1, 0) A,
    # (1, 2) a draw, ...
    assert [b["winner"] for b in judged[0]["battles"]] == \
        ["B", "B", "B", "A", None, "B", "A", None, "B", "A", "A", "A"]
    assert [b["winner"] for b in judged[1]["battles"] + judged[2]["battles"]] == [None] * 4
    assert [x["battles"][0]["winner"] for x in meta_judged] == ["A", "B", "A"]  # the input is left as it was
    # a judgment without a score (never in a battle: judge.judgment_battles) is no distance, not an error
    unscored = {"prompt": "What is 'ZINUM' spelled backwards?", "response": "MUNZI", "judgments": ["a", "b", "c"],
                "scores": [5, None, 2], "battles": [{"a": 0, "b": 2, "winner": None}, {"a": 2, "b": 0, "winner": None}]}
    assert [b["winner"] for b in S.grader_battles([unscored])[0]["battles"]] == ["B", "A"]
    pairs, dropped = S.make_judge_pairs(judged)
    assert [(p["chosen"], p["rejected"], p["chosen_net_wins"], p["rejected_net_wins"]) for p in pairs] == \
        [("j2", "j5", 6, -6)]
    assert dropped == {"no verdict": 2, "wins tie": 0, "same text": 0, "over the cap": 0}
    # the stage: the actor's pairs by the judge, the judge's by the grader, one file
    write_jsonl(tmp_path / "iter1" / "judgments.jsonl", [{"prompt": "p", "candidates": ["x", "y"],
                                                          "score": [4.0, 1.0]}])
    write_jsonl(tmp_path / "iter1" / "meta_judgments.jsonl", meta_judged)
    c = types.SimpleNamespace(pair_by="judge", meta_pair_by="grader", seed=0)
    info = S.stage_pairs_meta(c, R, 1)
    assert (info["pairs"], info["judge_pairs"], info["judge_by"]) == (1, 1, "grader")
    assert [(p["kind"], p["chosen"]) for p in read_jsonl(tmp_path / "iter1" / "pairs.jsonl")] == \
        [("actor", "x"), ("judge", "j2")]
    # by the meta-judge's own verdicts: the farthest judgment chosen; a constant verdict is a draw
    info = S.stage_pairs_meta(types.SimpleNamespace(pair_by="judge", meta_pair_by="meta", seed=0), R, 1)
    assert info["judge_dropped"] == {"no verdict": 0, "wins tie": 2, "same text": 0, "over the cap": 0}
    assert [p["chosen"] for p in read_jsonl(tmp_path / "iter1" / "pairs.jsonl")] == ["x", "j5"]


# --- Meta-Rewarding as a setting: a micro run with meta_judge=True ---------------------

def test_meta_judge_micro_run(tmp_path):
    """One iteration with meta_judge on: M1 learns meta-judging from the toy
    seed's demonstrations, M1 meta-judges the judgments that disagree in
    score, pairs.jsonl holds the actor's pairs and the judge's (at most as
    many), DPO trains on both, and the report says so. More EFT and meta
    examples and prompts than the plain micro run (about 35 s): with 40
    demonstrations the micro M1 wrote no verdict at all."""
    run_loop(tmp_path, meta_judge=True, n_eft_train=200, n_meta_seed=200, n_prompts=40, iterations=1)
    run = tmp_path / "micro"
    done = lambda stage: json.load(open(run / "done" / stage))
    assert done("M1")["meta_examples"] == 200 and done("M1")["examples"] == 48 + 200 + 200
    judged, meta = read_jsonl(run / "iter1" / "judgments.jsonl"), read_jsonl(run / "iter1" / "meta_judgments.jsonl")
    disagree = [(x["prompt"], x["candidates"][k]) for x in judged for k in range(len(x["candidates"]))
                if len({s for s in x["scores"][k] if s is not None}) >= 2]
    assert [(x["prompt"], x["response"]) for x in meta] == disagree and meta
    every = [b for x in meta for b in x["battles"]]
    assert done("iter1_meta_judgments")["meta_judgments"] == len(every) > 0
    pairs = read_jsonl(run / "iter1" / "pairs.jsonl")
    kinds = Counter(p["kind"] for p in pairs)
    info = done("iter1_pairs")
    assert kinds["actor"] == info["pairs"] > 0 and kinds["judge"] == info["judge_pairs"] > 0
    assert kinds["judge"] <= kinds["actor"]  # the cap
    assert kinds["judge"] + sum(info["judge_dropped"].values()) == len(meta)
    for p in pairs:
        if p["kind"] == "judge":
            assert p["prompt"] == S.J.judge_prompt(p["instruction"], p["response"])
            assert p["chosen_net_wins"] > p["rejected_net_wins"] and p["chosen"].strip() != p["rejected"].strip()
    assert os.path.exists(run / "M2" / "model.safetensors") and done("M2")  # DPO ran on both kinds
    report = (run / "report.md").read_text()
    assert "meta-judging (Meta-Rewarding)" in report and f"{kinds['judge']} judge pairs" in report


# --- the toy world's step-by-step working as settings ----------------------------------

def test_working_settings_are_named_by_the_stages_they_change(micro_run, tmp_path):
    """judge_working, judge_quotes, quote_first, judge_compares, pretrain_working and
    pretrain_checking change the seed data and M0's text, and those stages' records name them (M1 reads the
    seed data, so it follows). A record made before they existed is still
    reused while they are at their defaults: run_folder's rule, tested in
    (test_a_setting_added_later_at_its_default_redoes_nothing)."""
    plain, _ = micro_run
    made_from = lambda run, stage: json.load(open(run / "done" / stage))["made_from"]["settings"]
    names = {"judge_working", "judge_quotes", "quote_first", "judge_compares", "pretrain_working",
             "pretrain_checking"}
    assert {k: v for s in ("seed_data", "M0") for k, v in made_from(plain, s).items() if k in names} == {
        "judge_working": False, "judge_quotes": False, "quote_first": False, "judge_compares": False,
        "pretrain_working": 0.0, "pretrain_checking": 0.0}
    run_loop(tmp_path, judge_working=True, judge_quotes=True, judge_compares=True, pretrain_working=0.5,
             pretrain_checking=0.5, eft_own_answers=1, iterations=0, eval_judge=False)
    run = tmp_path / "micro"
    assert made_from(run, "seed_data")["judge_working"] is True and made_from(run, "M0")["pretrain_working"] == 0.5
    for x in read_jsonl(run / "seed" / "eft_train.jsonl"):
        task = toy.task_from_prompt(x["prompt"].split("\nUser: ")[1].split("\n<response>")[0])
        assert x["response"].startswith(f"{toy.working(task)} The correct answer is {toy.answer(task)}. The response ")
        assert re.search(f" against {toy.answer(task)}: (the same|not the same)\\. The response ", x["response"])
    pretraining = [d["text"] for d in read_jsonl(run / "train" / "pretrain.jsonl")]
    assert any(" So " in d for d in pretraining) and any("\nStudent: " in d for d in pretraining)
    assert made_from(run, "M0")["pretrain_checking"] == 0.5
    # eft_own_answers: the SFT baseline's answer to each EFT training prompt, judged by the grader in the same form
    groups, own = read_jsonl(run / "seed" / "eft_train_groups.jsonl"), read_jsonl(run / "seed" / "eft_train_own.jsonl")
    assert len(own) == len(groups) and made_from(run, "eft_own")["eft_own_answers"] == 1
    answers = [x["prompt"].split("<response>")[-1].split("</response>")[0] for x in own]
    for g, x, response in zip(groups, own, answers):
        assert x == toy.eft_target(g["prompt"], g["task"], response, show_working=True, quotes=True,
                                    quote_first=False, compares=True)
    # ... and the answers are the SFT baseline's own samples: its first shard drawn again here, with the
    # loop's sampling settings and the shard's seed, at the run's one thread
    settings = json.load(open(run / "settings.json"))
    sft, tok = load_model(str(run / "SFT")).eval(), Tokenizer(str(run / "SFT"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = groups[:settings["shard_size"]]
        outs = generate(sft, [chat_prompt_ids(tok, g["prompt"]) for g in first], settings["max_response_tokens"],
                        eos_id=tok.stop_ids, temperature=settings["temperature"], top_p=settings["top_p"],
                        seed=sub_seed(settings["seed"], "eft own answers", 0), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert [tok.decode(o).strip() for o in outs] == answers[:len(first)]
    done = json.load(open(run / "done" / "M1"))
    assert done["own_answers"] == len(own) and made_from(run, "M1")["eft_own_answers"] == 1
    assert done["examples"] == 48 + 40 + len(own)  # IFT + the grader's EFT + the baseline's answers


def test_an_invent_world_micro_run(tmp_path):
    """toy_kinds with invent: the seed data, M0's pages and the report carry
    the kind; its EFT targets check the response's word against the asks
    (check_each_ask: each ask beside the word's property), and so do M0's
    marked quizzes and the SFT baseline's judged answers; the seed and M0
    stages name the settings (a changed world redoes them)."""
    kinds = ",".join(toy.ALL_KINDS)
    run_loop(tmp_path, toy_kinds=kinds, n_test=24, iterations=0, check_each_ask=True, pretrain_checking=0.5,
             eft_own_answers=1)
    run = tmp_path / "micro"
    made_from = lambda stage: json.load(open(run / "done" / stage))["made_from"]["settings"]
    assert made_from("seed_data")["toy_kinds"] == kinds and made_from("M0")["toy_kinds"] == kinds
    assert made_from("seed_data")["check_each_ask"] and made_from("M0")["check_each_ask"]
    assert made_from("eft_own")["check_each_ask"]
    checks = [x for x in read_jsonl(run / "seed" / "eft_train.jsonl") if ": starts with " in x["response"]]
    assert checks and all(parse_score(x["response"]) == x["score"] for x in checks)
    assert not [x for x in read_jsonl(run / "seed" / "eft_train.jsonl") if " letters; asked: " in x["response"]]
    pretraining = "".join(d["text"] for d in read_jsonl(run / "train" / "pretrain.jsonl"))
    assert re.search(r"\nStudent: (\S+)\nA: \1: starts with ", pretraining)
    assert "letters; asked: " not in pretraining
    groups, own = read_jsonl(run / "seed" / "eft_train_groups.jsonl"), read_jsonl(run / "seed" / "eft_train_own.jsonl")
    assert len(own) == len(groups) and any(g["task"]["kind"] == "invent" for g in groups)
    for g, x in zip(groups, own):
        response = x["prompt"].split("<response>")[-1].split("</response>")[0]
        assert x == toy.eft_target(g["prompt"], g["task"], response, each_ask=True)
    assert any("Task: Invent a word" in d["text"] or "Task: Think of a word" in d["text"]
               for d in read_jsonl(run / "train" / "pretrain.jsonl"))
    report = open(run / "report.md").read()
    assert "invent: judge / answers %" in report and "invent task has many right answers" in report


# --- one config idiom: settings passed explicitly -------------------------------------

def globals_read(code):
    """Every global name a function (and the functions and lambdas inside it) reads."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= globals_read(const)
    return names


def test_no_function_reads_a_setting_from_module_globals():
    """Stages get the settings as `c`: a function reading a module global such
    as `temperature` would silently use the default, not the configured value."""
    functions = [f for f in vars(S).values() if inspect.isfunction(f) and f.__module__ == "selfreward"]
    assert len(functions) > 15 and S.main in functions and S.stage_prompts in functions
    readers = {f.__name__: sorted(globals_read(f.__code__) & set(S.DEFAULTS)) for f in functions}
    assert {k: v for k, v in readers.items() if v} == {}
    assert "DOC_HEAD" not in S.DEFAULTS and {"seed", "temperature", "progress"} <= set(S.DEFAULTS)


def test_main_takes_argv(capsys):
    with pytest.raises(SystemExit) as e:
        S.main(["--help"])
    assert e.value.code == 0 and "--n_candidates" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        S.main(["--no_such_setting=1"])
    assert e.value.code == 2 and "unknown setting 'no_such_setting'" in capsys.readouterr().err


def test_the_gpu_checks_loop_commands_pass_the_settings_checks(tmp_path, capsys):
    """tests/gpu_check.sh runs once, on a lent GPU's scarce minutes: its two
    loop commands' settings must pass the checks before any work (here, as a
    dry run on the CPU), its benchmarks' settings bench.py's, and its parts'
    time limits must fit one command."""
    script = open(os.path.join(ROOT, "tests", "gpu_check.sh")).read().replace("\\\n", " ")
    commands = [line.split("selfreward.py", 1)[1].split()
                for line in script.splitlines() if line.startswith("run ") and "selfreward.py" in line]
    assert len(commands) == 2
    assert commands[0][0] == "config/micro.py"  # the tests' micro config itself, not a copy that falls behind
    for argv in commands:
        args = [a for a in argv if not a.startswith(("--out_root", "--run_name"))]
        S.main([os.path.join(ROOT, a) if a.endswith(".py") else a for a in args] +
               [f"--out_root={tmp_path}", "--run_name=gpu", "--dry_run=True"])
        assert "is a new run: every stage would run" in capsys.readouterr().out
    # ... and so must its benchmarks' (bench.problems), and its parts' time limits fit one command of the
    # device tool (600 s) with room for the start: a part killed by the tool loses every part after it
    import bench
    runs = [line.split() for line in script.splitlines() if line.startswith("run ")]
    benches = [[a for a in argv[argv.index("bench.py") + 2:] if a.startswith("--")]
               for argv in runs if "bench.py" in argv]
    assert len(benches) == 2 and [argv[argv.index("bench.py") + 1] for argv in runs if "bench.py" in argv] == [
        "train", "gpu7b"]
    for flags in benches:
        given = configurator.configure(dict(bench.DEFAULTS), flags)  # as bench.py reads its command line
        assert bench.problems(configurator.settings(bench.DEFAULTS, given)) == [], flags
    assert sum(int(argv[2]) + 15 for argv in runs) <= 590  # each limit, and timeout -k 15's kill after it


def test_plan_only_says_what_it_planned_for(tmp_path, capsys):
    """--plan_only before the checkpoint is here plans for the preset, and says
    so; a model that is neither a folder nor a preset is one error line."""
    S.main(["--plan_only=True", f"--init_from={tmp_path / 'Llama-2-70b-hf'}", "--model=llama2-70b"])
    out = capsys.readouterr().out
    assert out.startswith(f"planned for the preset 'llama2-70b' (init_from {tmp_path / 'Llama-2-70b-hf'} is not "
                          "a folder here)\n")
    assert "memory plan: 68.98B parameters" in out and "generation memory plan: 68.98B parameters" in out
    with pytest.raises(SystemExit) as e:
        S.main(["--plan_only=True", "--model=toyx"])
    assert e.value.code == 2 and "model = 'toyx': no such preset" in capsys.readouterr().err
    # its own settings are checked too (a negative world size printed negative GiB as a plan that fits)
    with pytest.raises(SystemExit) as e:
        S.main(["--plan_only=True", "--model=llama2-70b", "--world_size=-1", "--gpu_memory_gb=-5", "--tp=3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "world_size = -1: must be >= 0" in err and "gpu_memory_gb = -5: must be > 0" in err
    with pytest.raises(SystemExit) as e:
        S.main(["--plan_only=True", "--model=llama2-70b", "--world_size=4", "--tp=3"])
    assert e.value.code == 2 and "tp = 3: must divide the number of GPUs planned for, 4" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a dry run beside it would go unsaid: one or the other
        S.main(["--plan_only=True", "--model=llama2-70b", "--dry_run=True"])
    assert e.value.code == 2 and "dry_run = True: beside plan_only=True: give one" in capsys.readouterr().err
    with pytest.raises(validate.BadInput, match="world_size = -2: must be >= 0"):
        train_sft.train({"plan_only": True, "model": "llama2-70b", "world_size": -2})
    # the planned model's heads: tp must divide them (a real run refuses it; the plan did not)
    with pytest.raises(SystemExit) as e:
        S.main(["--plan_only=True", "--model=llama2-70b", "--world_size=16", "--tp=16"])
    assert e.value.code == 2 and ("tp = 16: must divide the planned model's n_kv_heads 8 and FFN width 28672"
                                  in capsys.readouterr().err)
    # ... and its FFN width, each rank an equal slice: llama2-13b's 40 KV heads split 5 ways, its 13824 do not
    with pytest.raises(SystemExit) as e:
        S.main(["--plan_only=True", "--model=llama2-13b", "--world_size=5", "--tp=5"])
    assert e.value.code == 2 and ("tp = 5: must divide the planned model's n_kv_heads 40 and FFN width 13824"
                                  in capsys.readouterr().err)
    # a folder without a config: one error line, from the loop and the trainers alike (it was a traceback)
    (tmp_path / "no_config").mkdir()
    with pytest.raises(SystemExit) as e:
        S.main(["--plan_only=True", f"--init_from={tmp_path / 'no_config'}"])
    assert e.value.code == 2 and f"init_from: {tmp_path / 'no_config'}: no config.json" in capsys.readouterr().err
    with pytest.raises(validate.BadInput, match="init_from: .*no_config: no config.json"):
        train_sft.train({"plan_only": True, "init_from": str(tmp_path / "no_config")})



def test_the_generation_plan_and_batch_by_hand(monkeypatch):
    """The generation plan is for the longest generation the run makes (a
    judgment's tokens count, a meta-judgment's only with meta_judge); on a
    CPU gen_batch_size 0 is the default batch and a given one is kept; on a
    GPU (its plan stubbed) 0 takes the plan's largest batch, a given batch up
    to it passes unsaid, one above it is warned of, and where not one row of
    full context fits, the given batch is kept (1 if none)."""
    def new_tokens(**settings):
        c = configurator.settings(S.DEFAULTS, {"model": "llama2-7b", "init_from": "/nonexistent", **settings})
        return int(re.search(r"\+ (\d+) new\)", S.memory_plans(c, 1, 80)[1]["text"]).group(1))
    assert new_tokens() == 96 == S.DEFAULTS["max_judge_tokens"]
    assert new_tokens(max_judge_tokens=300) == 300
    assert new_tokens(max_meta_tokens=500) == 96 and new_tokens(max_meta_tokens=500, meta_judge=True) == 500

    def batch(given, device="cpu", max_batch=8):
        logs = []
        monkeypatch.setattr(S, "memory_plans", lambda c, world, gb: (None, {
            "weights_fit": True, "max_batch": max_batch, "text": "plan\n  at most N rows"}))
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(total_memory=80e9))
        monkeypatch.setattr(D, "log", logs.append)
        c = configurator.settings(S.DEFAULTS, {"gen_batch_size": given})
        S.check_generation_batch(c, types.SimpleNamespace(device=device, world=1))
        return c.gen_batch_size, [line.split(":")[0] for line in logs]
    assert batch(0) == (S.DEFAULTS["gen_batch_size"], []) and batch(5) == (5, [])
    assert batch(0, "cuda:0") == (8, ["gen_batch_size"]) and batch(8, "cuda:0") == (8, [])
    assert batch(9, "cuda:0") == (9, ["warning"])
    assert batch(8, "cuda:0", max_batch=0) == (8, ["warning"]) and batch(0, "cuda:0", max_batch=0) == (1, ["warning"])


def test_input_errors_say_what_to_give_instead(tmp_path, micro_run):
    """A newcomer's mistakes get the thing to give: seed data as a file, as the
    raw oasst1 folder, or missing (prepare_oasst named each time); a run folder
    or a run's model not made yet given as a checkpoint; {"text"} records to
    chat SFT."""
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "en-validation.jsonl").write_text("{}\n")
    for given, said in [(tmp_path / "raw" / "en-validation.jsonl", "is a file"),
                        (tmp_path / "raw", "holds none of the seed files"), (tmp_path / "none", "is not a folder here")]:
        c = configurator.settings(S.DEFAULTS, {"seed_data": str(given)})
        found = [x for x in validate.check_loop(c, 1).found if x.startswith("seed_data")]
        assert found == [f"seed_data: {given} {said} ('toy', or a folder with ift.jsonl, eft_train.jsonl, "
                         "eft_eval.jsonl; python -m data.prepare_oasst writes one from oasst1's messages)"]
    # a typo in 'toy' is the one problem said, with the word meant: not also init_from='scratch' refused for
    # real seed data, nor the toy world's settings the config changes (micro's n_ift, ...) as unread
    c = configurator.settings(S.DEFAULTS, {**MICRO, "seed_data": "tyo"})
    assert validate.check_loop(c, 1).found == ["seed_data: tyo is not a folder here; did you mean 'toy'? ('toy', or "
                                               "a folder with ift.jsonl, eft_train.jsonl, eft_eval.jsonl; python -m "
                                               "data.prepare_oasst writes one from oasst1's messages)"]
    run, _ = micro_run
    with pytest.raises(FileNotFoundError) as e:
        checkpoint.read_config(run)
    assert str(e.value).endswith("; checkpoints in it: M0, M1, M2, M3, SFT")
    with pytest.raises(FileNotFoundError, match=r"M12 \(python selfreward.py writes a run's models"):
        checkpoint.read_config(run / "M12")
    with pytest.raises(FileNotFoundError, match=r"^checkpoint folder not found: M1$"):  # (a bare keyword, no run)
        checkpoint.read_config("M1")
    with pytest.raises(FileNotFoundError, match="nope: neither a .gguf file nor an installed package with one"):
        checkpoint.gguf_file("nope")  # (python checkpoint.py --from_gguf=nope; conftest's smollm2 converts the real one)
    with pytest.raises(FileNotFoundError, match="random: neither"):
        checkpoint.gguf_file("random")  # a module, not a package
    with pytest.raises(FileNotFoundError, match="no such file: x.gguf"):
        checkpoint.gguf_file("x.gguf")
    # a prompt writer of its own is held only to the prompts' length (it writes nothing else)
    writer = tmp_path / "writer"
    shutil.copytree(run / "M0", writer)
    config = json.loads((writer / "config.json").read_text())
    (writer / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 80}))
    c = configurator.settings(S.DEFAULTS, {"prompt_writer": str(writer)})  # max_judge_tokens 96 > 80: not its
    assert validate.check_loop(c, 1).found == []
    c = configurator.settings(S.DEFAULTS, {"prompt_writer": str(writer), "max_prompt_tokens": 90})
    assert validate.check_loop(c, 1).found == ["max_prompt_tokens = 90: must be below the context of prompt_writer's "
                                               "model (max_seq_len 80)"]
    assert validate.sft_record({"text": "A document."}) == "needs string fields prompt and response, or a messages " \
        "list (this record has text; a plain document, {\"text\"}, is template='text')"
    # the fields the record has, so that a renamed one is seen at once (Alpaca's instruction/output)
    assert validate.sft_record({"instruction": "Hi.", "output": "Hello.", "id": 3}) == "needs string fields prompt " \
        "and response, or a messages list (this record has instruction, output, id (int))"
    assert validate.sft_record({}).endswith("(this record has no fields)")


# --- the toy seed data: python -m data.toy writes what the loop writes ---------------

TOY_SIZES = ("n_ift", "n_eft_train", "n_eft_eval", "n_test", "ift_chatty", "ift_declines", "judge_working",
             "judge_quotes", "quote_first", "judge_compares", "check_each_ask", "toy_kinds")  # build()'s settings


def test_toy_defaults_are_the_loops():
    defaults = {k: p.default for k, p in inspect.signature(toy.build).parameters.items()}
    assert set(defaults) == {"seed", *TOY_SIZES}
    assert defaults == {k: S.DEFAULTS[k] for k in defaults}


def toy_cli(out, *args):
    r = subprocess.run([sys.executable, "-m", "data.toy", f"--out={out}", *args], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def same_files(a, b):
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b)) and len(names) == 5
    for name in names:
        assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False), name


def test_toy_cli_writes_the_loops_default_seed(tmp_path):
    toy_cli(tmp_path / "cli")
    toy.write_toy(tmp_path / "loop", seed=S.DEFAULTS["seed"],
                  **{k: S.DEFAULTS[k] for k in TOY_SIZES})  # what stage_seed_data writes by default
    same_files(tmp_path / "cli", tmp_path / "loop")


def test_toy_cli_writes_the_loops_seed_folder(micro_run, tmp_path):
    run, _ = micro_run
    toy_cli(tmp_path, *(f"--{k}={MICRO[k]}" for k in TOY_SIZES if k in MICRO))
    same_files(tmp_path, run / "seed")


# --- the example configs: their keys exist, their paths are what the loop writes -----

@pytest.mark.parametrize("config, defaults", [("config/sft_toy.py", train_sft.DEFAULTS),
                                              ("config/dpo_toy.py", train_dpo.DEFAULTS),
                                              ("config/llama2_70b_oasst.py", S.DEFAULTS)])
def test_configs_apply_and_point_at_the_loops_files(micro_run, config, defaults):
    run, _ = micro_run
    path = os.path.join(ROOT, config)
    configurator.apply(dict(defaults), [path])  # every key is a setting of the script, of its type
    mentioned = set(re.findall(r"out/toy/[\w./-]+", open(path).read()))
    assert bool(mentioned) == (defaults is not S.DEFAULTS)
    for p in mentioned:  # out/toy/... in the default run is out/micro/... in the micro run
        assert os.path.exists(run / p[len("out/toy/"):].rstrip("/.")), p


def test_a_stage_made_again_from_the_same_inputs_makes_its_parts_again(tmp_path):
    """stage_parts' files are reused by the same stage only while it runs (a
    kill, then the same command); once it is done its marker goes, so a stage
    run again later (its record deleted by hand, as after a change of code)
    makes its files again instead of reading the earlier run's."""
    r = Run(str(tmp_path), types.SimpleNamespace(), D.Env())
    out, made = str(tmp_path / "eval" / "a.jsonl"), []

    def fn(kill=False):
        part = stage_parts(r, os.path.join("eval", "m"), [out])
        part(out, lambda: made.append(1) or [{"run": len(made)}], write_jsonl, read_jsonl)
        if kill:
            raise KeyboardInterrupt
        return {}
    with pytest.raises(KeyboardInterrupt):
        r.stage("eval_m", lambda: fn(kill=True))
    assert made == [1] and (tmp_path / "eval" / "m.parts").exists()
    r.stage("eval_m", fn)  # the same command: the part it finished is reused
    assert made == [1] and not (tmp_path / "eval" / "m.parts").exists()
    os.remove(tmp_path / "done" / "eval_m")  # made again from the same inputs
    r.stage("eval_m", fn)
    assert made == [1, 1] and read_jsonl(out) == [{"run": 2}]


def test_an_interrupted_stage_keeps_its_parts_when_an_input_path_is_written_another_way(tmp_path, monkeypatch):
    """A stage's fingerprint names an input by its file, not by how its path
    is written (Run.identity): killed after one part, then run with
    ./in/x.jsonl for in/x.jsonl, it reuses the part; its done record's
    fingerprint is the one either spelling gives. New contents make the parts
    stale (removed, made again)."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("in")
    write_jsonl("in/x.jsonl", [{"q": 1}])
    c = types.SimpleNamespace(seed_data="in/x.jsonl", lr=1)
    r = Run("run", c, D.Env(), inputs={"seed_data": ("toy",)})
    outs, made = [os.path.join("run", "eval", f"{p}.jsonl") for p in "ab"], []

    def fn(kill=False):
        part = stage_parts(r, os.path.join("eval", "m"), outs)
        for i, out in enumerate(outs):
            part(out, lambda: made.append(out) or [{"part": out}], write_jsonl, read_jsonl)
            if kill and i == 0:
                raise KeyboardInterrupt  # killed after the first part
        return {}
    stage = lambda f: r.stage("eval_m", f, uses=("seed_data", "lr"), files=(c.seed_data,))
    with pytest.raises(KeyboardInterrupt):
        stage(lambda: fn(kill=True))
    first = r.fingerprints["eval_m"]
    c.seed_data = "./in/x.jsonl"  # the same file, its path written another way
    stage(fn)
    assert made == outs[:1] + outs[1:] and r.fingerprints["eval_m"] == first
    c.seed_data = os.path.abspath("in/x.jsonl")
    assert stage(lambda: pytest.fail("made again")) == {"seconds": pytest.approx(0, abs=60)}
    assert r.fingerprints["eval_m"] == first
    os.remove(os.path.join("run", "done", "eval_m"))
    write_jsonl("in/x.jsonl", [{"q": 2}])  # new contents: a new stage, the earlier parts stale
    with pytest.raises(KeyboardInterrupt):
        stage(lambda: fn(kill=True))
    assert made == outs + outs[:1] and r.fingerprints["eval_m"] != first
    c.lr = 2  # a changed setting, killed again after one part: the parts of lr=1 are not reused
    with pytest.raises(KeyboardInterrupt):
        stage(lambda: fn(kill=True))
    assert made == outs + outs[:1] * 2


def test_why_a_stage_runs_again_counts_as_same_inputs_does():
    """run_folder.changes, the "(again: ...)" words: a setting the record
    lacks is a change only when it is not at its default (same_inputs
    counts it unchanged), and a file given by a path written another way is
    compared with the recorded one of its name."""
    same = lambda k, a, b: a == b
    old = {"settings": {"lr": 1}, "files": {"data/x.jsonl": "f1"}, "after": {}}
    new = {"settings": {"lr": 2, "added": 0}, "files": {"./data/x.jsonl": "f2"}, "after": {}}
    assert changes(old, new, same, lambda k: k == "added") == "lr 1 -> 2, ./data/x.jsonl changed"
    assert changes(old, new, same, lambda k: False) == "lr 1 -> 2, added '?' -> 0, ./data/x.jsonl changed"
    assert changes(old, {**old, "files": {"./data/x.jsonl": "f1"}}, same, lambda k: True) == "made from other inputs"
    # a file the record does not list is no changed file (it was not read then): other inputs
    assert changes(old, {**old, "files": {"data/x.jsonl": "f1", "data/y.jsonl": "f2"}}, same,
                   lambda k: True) == "made from other inputs"


def test_generation_shards_of_other_settings_are_not_reused(tmp_path):
    """Parts written for one fingerprint of a stage are reused by it, and
    removed (not merged in) when the stage runs with other settings."""
    r = Run(str(tmp_path), types.SimpleNamespace(), D.Env())
    calls = []

    def work(chunk, shard):
        calls.append(shard)
        if shard == 2:
            raise KeyboardInterrupt  # killed in the third shard
        return [{"x": x, "by": r.fingerprints[r.current]} for x in chunk]
    r.current, r.fingerprints["gen"] = "gen", "A"
    with pytest.raises(KeyboardInterrupt):
        generate_sharded(r, "out", list(range(5)), 2, work)
    assert calls == [0, 1, 2] and os.path.exists(tmp_path / "out.part-00001.jsonl")
    calls.clear()
    r.fingerprints["gen"] = "B"  # the stage's settings changed: both parts are stale
    with pytest.raises(KeyboardInterrupt):
        generate_sharded(r, "out", list(range(5)), 2, work)
    assert calls == [0, 1, 2]
    calls.clear()
    work_b = lambda chunk, shard: calls.append(shard) or [{"x": x, "by": "B"} for x in chunk]
    seen = []  # replay: the records of the parts reused, in order (the state later shards depend on)
    out = generate_sharded(r, "out", list(range(5)), 2, work_b, replay=seen.extend)  # B again: its two parts reused
    assert calls == [2] and out == [{"x": x, "by": "B"} for x in range(5)]
    assert seen == out[:4]
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl", "settings.json"]


def test_a_seed_study_refuses_what_it_cannot_compare_and_tables_every_model(tmp_path, capsys, monkeypatch):
    """seeds.py, the loop over seeds (its table by hand: tests/test_report.py):
    a seed of 2**32, real seed data (no grader to compare by) and no name are refused
    before any run; each seed's run (stubbed here) gives a column per model,
    SFT to M_{iterations+1}, the seeds named in order; a figure only the SFT
    baseline has is still a row; a missing share is no figure, not an error."""
    import seeds
    for argv, said in ((["--seeds=4294967296"], "--seeds: 4294967296: each seed once, in [0, 2**32)"),
                       ([f"--seed_data={tmp_path}"], "seeds.py compares the toy world's grades across seeds"),
                       (["--run_name="], "run_name = '': name the study")):  # (each seed's "-seed1" would pass)
        with pytest.raises(SystemExit) as e:
            seeds.main(argv + [f"--out_root={tmp_path}"])
        assert e.value.code == 2 and said in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
    models, pair_lines = ["SFT", "M1", "M2", "M3"], seeds.pair_lines
    monkeypatch.setattr(seeds.selfreward, "main", lambda argv, table_again: None)  # each seed's run, done
    monkeypatch.setattr(seeds, "run_figures", lambda folder: {m: {n: 1.0 for n, _ in seeds.FIGURES} for m in models})
    monkeypatch.setattr(seeds, "gain_interval", lambda folder, a, b: (0.1, 0.2))
    monkeypatch.setattr(seeds, "pair_lines", lambda folders, iterations: [])
    seeds.main(["--seeds=3,1", "--iterations=2", f"--out_root={tmp_path}"])
    table = (tmp_path / "toy-seeds.md").read_text()
    assert "Over 2 seeds (1, 3): mean +- sample standard deviation (n - 1)." in table
    assert "| figure | SFT | M1 | M2 | M3 |" in table
    assert "lies above 0 in 2/2 seeds: seed 1 [0.100, 0.200], seed 3 [0.100, 0.200]" in table
    only_sft = {m: {n: (2.0 if m == "SFT" and n == "mean grade" else None) for n, _ in seeds.FIGURES}
                for m in ("SFT", "M1")}
    assert "| mean grade | 2.00 | - |" in seeds.summarize({1: only_sft}, ["SFT", "M1"], {})
    assert seeds.kind_share({"checking": {"kinds": {"invent": [None, 0.5]}}}, "invent", 0) is None
    assert seeds.kind_share({"checking": {"kinds": {"invent": [None, 0.5]}}}, "invent", 1) == 50.0
    # a seed's iteration with pairs but no self-checking record (nothing to say of its judge): no line
    monkeypatch.setattr(seeds.report, "pair_verdicts", lambda r, t: {"right_chosen": 3, "wrong_chosen": 1})
    monkeypatch.setattr(seeds.report, "self_checking", lambda r, t: None)
    monkeypatch.setattr(seeds.report, "right_candidates", lambda r, t: None)
    assert pair_lines({1: str(tmp_path)}, 1) == []


def test_sub_seeds_differ_by_the_runs_seed_and_by_name():
    """Each piece of work draws from its own seed: another run seed gives
    other sub-seeds, and a thousand names a thousand different ones."""
    assert sub_seed(1, "sft", "M1") != sub_seed(2, "sft", "M1")
    assert sub_seed(1, "sft", "M1") == sub_seed(1, "sft", "M1")  # the same piece of work: the same seed
    assert len({sub_seed(1337, "sft", f"M{i}") for i in range(1000)}) == 1000


def test_an_input_file_edited_in_place_redoes_its_stage_and_those_after(tmp_path, capsys):
    """A stage is made from its input files' contents, not their names: the
    same path with other contents redoes it and the stages after it, and says
    which file changed. Two files whose contents swap are two changes (the
    same contents in all, but not under the same names)."""
    seed, other, ran = tmp_path / "seed.jsonl", tmp_path / "other.jsonl", []
    seed.write_text('{"prompt": "a"}\n')
    other.write_text('{"prompt": "z"}\n')

    def run():
        r = Run(str(tmp_path / "run"), types.SimpleNamespace(), D.Env())
        r.stage("first", lambda: ran.append("first"), files=[str(seed), str(other)])
        r.stage("second", lambda: ran.append("second"), after=["first"])
    run()
    run()
    assert ran == ["first", "second"]
    seed.write_text('{"prompt": "b"}\n')
    capsys.readouterr()
    run()
    assert ran == ["first", "second", "first", "second"]
    assert f"=== first (again: {seed} changed)" in capsys.readouterr().out
    seed.write_text('{"prompt": "z"}\n')
    other.write_text('{"prompt": "b"}\n')
    run()
    assert ran == ["first", "second"] * 3
    assert f"=== first (again: {seed} changed, {other} changed)" in capsys.readouterr().out


def test_a_setting_added_later_at_its_default_redoes_nothing(tmp_path):
    """A stage done before a setting joined its list is reused while that
    setting is at its default (the code computes what it did before), and so
    are the stages after it; off its default, both are redone. A setting the
    list drops no longer counts."""
    ran = []

    def run(uses, **settings):
        c = types.SimpleNamespace(**{"a": 1, "b": 2, **settings})
        r = Run(str(tmp_path), c, D.Env(), defaults={"a": 1, "b": 2})
        r.stage("first", lambda: ran.append("first"), uses=uses)
        r.stage("second", lambda: ran.append("second"), uses=["a"], after=["first"])
    run(["a"])
    assert ran == ["first", "second"]
    run(["a", "b"])  # the code now names b: at its default, nothing is redone
    run(["a", "b"])
    assert ran == ["first", "second"]
    run(["a", "b"], b=3)  # off its default: the stage and the one after it
    assert ran == ["first", "second"] * 2
    run(["a", "b"], b=2)  # now b is in the record: back to 2 is a change like any other
    assert ran == ["first", "second"] * 3
    run(["a", "b", "c"], c=0)  # a setting without a known default counts as changed
    assert ran == ["first", "second"] * 4
    run(["a", "c"], c=0)  # the code no longer lists b (the stage does not read it): nothing redone
    assert ran == ["first", "second"] * 4
    run(["a", "c", "d"], c=0, d=None)  # nor is None a known default: counted as changed
    assert ran == ["first", "second"] * 5


def test_a_given_checkpoint_is_known_by_its_files_not_its_path(tmp_path):
    """Run.given (init_from as M0): its weights replaced in place redo the
    stages after it; the same files moved to another path redo nothing."""
    ran, ckpt = [], tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_text("old weights")

    def run(folder):
        r = Run(str(tmp_path / "run"), types.SimpleNamespace(), D.Env())
        r.given("M0", str(folder))
        r.stage("SFT", lambda: ran.append("SFT"), after=["M0"])
    run(ckpt)
    run(ckpt)
    assert ran == ["SFT"]
    (ckpt / "model.safetensors").write_text("new weights!")
    run(ckpt)
    assert ran == ["SFT", "SFT"]
    ckpt.rename(tmp_path / "moved")
    run(tmp_path / "moved")
    assert ran == ["SFT", "SFT"]


def test_runtime_settings_are_left_out_of_settings_json(tmp_path):
    """Settings that change how a run shows itself, not what it makes
    (progress bars), are not the run's settings: not in settings.json."""
    r = Run(str(tmp_path), types.SimpleNamespace(lr=1, progress=True), D.Env(), runtime_only={"progress"})
    assert json.loads((tmp_path / "settings.json").read_text()) == {"lr": 1} and "progress" not in r.settings


def test_a_stage_records_the_dtype_it_computed_in(tmp_path):
    """dtype='auto' is bf16 on one machine and fp32 on another (or under
    another rule): a stage records what it resolved to, so a folder moved to
    where 'auto' means another dtype redoes the stages that compute, and an
    explicit --dtype equal to what 'auto' gave reuses them. A record of 'auto'
    itself (made before this) matches a run under 'auto' whatever it
    resolves to, as that code did."""
    ran = []

    def run(setting, resolved):
        c = types.SimpleNamespace(dtype=setting, a=1)
        r = Run(str(tmp_path), c, D.Env(dtype=resolved), defaults={"dtype": "auto", "a": 1})
        r.stage("train", lambda: ran.append("train"), uses=["dtype", "a"])
        r.stage("report", lambda: ran.append("report"), uses=["a"], after=["train"])
        return r
    r = run("auto", torch.bfloat16)
    assert ran == ["train", "report"] and r.record("train")["made_from"]["settings"]["dtype"] == "bfloat16"
    run("bfloat16", torch.bfloat16)  # said explicitly: the same computation
    assert ran == ["train", "report"]
    run("auto", torch.float32)  # the same folder where 'auto' means fp32: redone, and what reads it
    assert ran == ["train", "report"] * 2
    # a record from before says dtype 'auto' (whatever it resolved to), with its own fingerprint, which
    # the stage after it recorded: under dtype='auto' it is reused, as that code did
    done = tmp_path / "done"
    record, after = json.loads((done / "train").read_text()), json.loads((done / "report").read_text())
    record["made_from"]["settings"]["dtype"] = "auto"
    record["made_from"]["fingerprint"] = after["made_from"]["after"]["train"] = "made by older code"
    after["made_from"]["fingerprint"] = "made after it"
    (done / "train").write_text(json.dumps(record))
    (done / "report").write_text(json.dumps(after))
    run("auto", torch.bfloat16)
    assert ran == ["train", "report"] * 2
    run("float32", torch.float32)  # a dtype asked for by name is a change, as it was then ('auto' -> 'float32')
    assert ran == ["train", "report"] * 3
    # a stage recorded before dtype joined its list is reused while the setting is at its default 'auto',
    # compared as given (its resolved 'bfloat16' is not the default 'auto')
    def run_listing(uses):
        c = types.SimpleNamespace(dtype="auto", a=1)
        r = Run(str(tmp_path / "later"), c, D.Env(dtype=torch.bfloat16), defaults={"dtype": "auto", "a": 1})
        r.stage("sample", lambda: ran.append("sample"), uses=uses)
    run_listing(["a"])
    run_listing(["dtype", "a"])
    assert ran[-1:] == ["sample"] and ran.count("sample") == 1
    # and the trainers are told the resolved dtype, so a saved state resumes only in its own
    r = run("auto", torch.bfloat16)
    c = types.SimpleNamespace(**S.DEFAULTS)  # dtype="auto"
    told = S.trainer_settings(c, r, "M1", 16, 16, ("sft", "M1"))
    assert told["dtype"] == "bfloat16"
    # ... and each model is stored as trained, fp32, whatever the trainers' own default on this device
    assert told["save_dtype"] == "float32"


def test_check_loop_in_this_process(tmp_path):
    """--key=None passes the configurator for any setting: named, not a TypeError
    later; ranges and the ranks a batch is split over are checked per setting."""
    real = tmp_path / "seed"  # a folder of real seed data (the toy world's settings are refused with it)
    real.mkdir()
    (real / "ift.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    real = str(real)
    c = configurator.settings(S.DEFAULTS, {"top_p": None})
    assert validate.check_loop(c, 1).found == ["top_p = None: give a value like its default"]
    # a folder that is no run's but holds a model folder the loop writes (M10: any M<N>) is not taken over
    (tmp_path / "runs" / "r" / "M10").mkdir(parents=True)
    c = configurator.settings(S.DEFAULTS, {"out_root": str(tmp_path / "runs"), "run_name": "r"})
    assert validate.check_loop(c, 1).found == [f"run_name: {tmp_path / 'runs' / 'r'} is not a run folder (no "
                                               "settings.json) and holds M10, which the loop would replace; give "
                                               "another run_name or out_root"]
    # the run folder is a folder inside out_root: not out_root itself, nor a path of its own
    for name in (".", str(tmp_path / "runs" / "r1")):
        c = configurator.settings(S.DEFAULTS, {"out_root": str(tmp_path / "runs"), "run_name": name})
        assert validate.check_loop(c, 1).found == [f"run_name = {name!r}: must name a folder inside out_root (the "
                                                   "run's files would mix with other runs')"]
    # judgments for EFT groups are real seed data's: the toy world has none to judge
    (tmp_path / "judged.jsonl").write_text('{"prompt": "a", "response": "Score: 4"}\n')
    c = configurator.settings(S.DEFAULTS, {"eft_judgments": str(tmp_path / "judged.jsonl")})
    assert any(x.startswith(f"eft_judgments = {str(tmp_path / 'judged.jsonl')!r}: supplies judgments for EFT groups "
                            "(real seed data)") for x in validate.check_loop(c, 1).found)
    # 'TOY' is a typo of 'toy' too; a plan of a preset that is none says so in the preset's own name
    c = configurator.settings(S.DEFAULTS, {"seed_data": "TOY"})
    assert "seed_data: TOY is not a folder here; did you mean 'toy'?" in validate.check_loop(c, 1).found[0]
    c = configurator.settings(S.DEFAULTS, {"plan_only": True, "model": "llama9-1b"})
    assert validate.check_plan(c, 1).found[0].startswith("model = 'llama9-1b': no such preset (toy-tiny, ")
    c = configurator.settings(S.DEFAULTS, {"top_p": 1.5, "dropout": 1.0, "dpo_batch_size": 6, "model": "toy-huge"})
    found = validate.check_loop(c, 4).found
    assert found[:3] == ["top_p = 1.5: must be in (0, 1]", "dropout = 1.0: must be in [0, 1)",
                         "dpo_batch_size = 6: must divide by the number of ranks, 4"]
    assert len(found) == 4 and found[3].startswith("model = 'toy-huge': no such preset; presets: toy-tiny")
    assert validate.check_loop(configurator.settings(S.DEFAULTS), 1).found == []
    # the low ends: top_p 0 keeps no token, one candidate makes no pair (open and closed bounds)
    c = configurator.settings(S.DEFAULTS, {"top_p": 0.0, "n_candidates": 1})
    assert validate.check_loop(c, 1).found == ["top_p = 0.0: must be in (0, 1]", "n_candidates = 1: must be >= 2"]
    c = configurator.settings(S.DEFAULTS, {"seed": 2**32})  # seeds are 32-bit: the largest is 2**32 - 1
    assert validate.check_loop(c, 1).found == ["seed = 4294967296: must be in [0, 2**32)"]
    assert validate.check_loop(configurator.settings(S.DEFAULTS, {"seed": 2**32 - 1}), 1).found == []
    c = configurator.settings(S.DEFAULTS, {"min_prompt_words": 5, "max_prompt_words": 5})  # one length: allowed
    assert validate.check_loop(c, 1).found == []
    c = configurator.settings(S.DEFAULTS, {"quote_first": True})  # the toy world's, without the quotes it orders
    assert validate.check_loop(c, 1).found == ["quote_first = True: orders judge_quotes' quotes: set "
                                               "judge_quotes=True too, or leave quote_first off"]
    # Meta-Rewarding's settings
    c = configurator.settings(S.DEFAULTS, {"meta_judge": True, "n_judge": 1, "max_meta_tokens": 0, "n_meta_seed": -1})
    assert validate.check_loop(c, 1).found == [
        "max_meta_tokens = 0: must be >= 1", "n_meta_seed = -1: must be >= 0",
        "n_judge = 1: must be >= 2 when meta_judge is on (the meta-judge compares two judgments of one response)"]
    c = configurator.settings(S.DEFAULTS, {"meta_judge": True, "max_meta_tokens": 1024})
    assert validate.check_loop(c, 1).found == ["max_meta_tokens = 1024: must be below the context of init_from's "
                                               "model (max_seq_len 1024)"]
    assert validate.check_loop(configurator.settings(S.DEFAULTS, {"meta_judge": True}), 1).found == []
    # the toy world's working: a share of quiz pages
    c = configurator.settings(S.DEFAULTS, {"pretrain_working": 1.5})
    assert validate.check_loop(c, 1).found == ["pretrain_working = 1.5: must be in [0, 1]"]
    c = configurator.settings(S.DEFAULTS, {"pretrain_checking": -0.2})  # and of marked ones
    assert validate.check_loop(c, 1).found == ["pretrain_checking = -0.2: must be in [0, 1]"]
    c = configurator.settings(S.DEFAULTS, {"ift_declines": 1.0})  # a seed set with no answer left to learn
    assert validate.check_loop(c, 1).found == ["ift_declines = 1.0: must be in [0, 1)"]
    c = configurator.settings(S.DEFAULTS, {"toy_kinds": "reverse,dance"})
    assert validate.check_loop(c, 1).found == ["toy_kinds = 'reverse,dance': must be some of reverse,sort,replace,"
                                               "count,length,arith,invent, each once, separated by commas"]
    c = configurator.settings(S.DEFAULTS, {"toy_kinds": "sort,invent", "meta_judge": True, "pretrain_working": 0.5,
                                           "pretrain_checking": 0.5})  # (marked quizzes check an invent word)
    assert validate.check_loop(c, 1).found == ["toy_kinds = 'sort,invent': with invent does not go with meta_judge, "
                                               "pretrain_working: an invent task has many right answers, and these "
                                               "write one"]
    c = configurator.settings(S.DEFAULTS, {"check_each_ask": True})  # a setting with nothing to change
    assert validate.check_loop(c, 1).found == ["toy_kinds = 'reverse,sort,replace,count,length,arith': has no invent "
                                               "task for check_each_ask to check"]
    c = configurator.settings(S.DEFAULTS, {"pretrain_check_drill": 100})
    assert validate.check_loop(c, 1).found == ["toy_kinds = 'reverse,sort,replace,count,length,arith': has no invent "
                                               "task for pretrain_check_drill to check"]
    c = configurator.settings(S.DEFAULTS, {"pretrain_check_drill": -1, "toy_kinds": "sort,invent"})
    assert validate.check_loop(c, 1).found == ["pretrain_check_drill = -1: must be >= 0"]
    c = configurator.settings(S.DEFAULTS, {"pretrain_drill_layouts": "quiz,essay", "pretrain_check_drill": 10,
                                           "toy_kinds": "sort,invent"})
    assert validate.check_loop(c, 1).found == ["pretrain_drill_layouts = 'quiz,essay': must be some of "
                                               "quiz,line,review, each once, separated by commas"]
    c = configurator.settings(S.DEFAULTS, {"pretrain_drill_layouts": "line,review", "toy_kinds": "sort,invent"})
    assert validate.check_loop(c, 1).found == ["pretrain_drill_layouts = 'line,review': lays out the drill's "
                                               "items, and pretrain_check_drill = 0 draws none"]
    c = configurator.settings(S.DEFAULTS, {"eft_own_answers": -1})
    assert validate.check_loop(c, 1).found == ["eft_own_answers = -1: must be >= 0"]
    c = configurator.settings(S.DEFAULTS, {"eft_own_answers": 1, "seed_data": real, "init_from": "M0"})
    assert ("eft_own_answers = 1: is for the toy world, whose grader judges the answers; real seed data has no "
            "grader") in validate.check_loop(c, 1).found
    # the perfect-judge control
    c = configurator.settings(S.DEFAULTS, {"pair_by": "oracle"})
    assert validate.check_loop(c, 1).found == ["pair_by = 'oracle': must be 'judge' (the paper), 'grader' or "
                                               "'right' (toy: controls with a perfect judge) or 'coin' (a control "
                                               "with no preference)"]
    c = configurator.settings(S.DEFAULTS, {"pair_by": "right", "seed_data": real, "init_from": "M0"})
    assert ("pair_by = 'right': is for the toy world; real seed data has no grader"
            in validate.check_loop(c, 1).found)
    c = configurator.settings(S.DEFAULTS, {"pair_by": "coin", "seed_data": real, "init_from": "M0"})
    assert not any(x.startswith("pair_by") for x in validate.check_loop(c, 1).found)  # needs no grader
    # the perfect-meta-judge control
    c = configurator.settings(S.DEFAULTS, {"meta_pair_by": "oracle"})
    assert validate.check_loop(c, 1).found == ["meta_pair_by = 'oracle': must be 'meta' (Wu et al.) or 'grader' "
                                               "(toy: a control with a perfect meta-judge)"]
    c = configurator.settings(S.DEFAULTS, {"meta_pair_by": "grader"})  # without meta_judge
    assert validate.check_loop(c, 1).found == ["meta_pair_by = 'grader': 'grader' is for the toy world with "
                                               "meta_judge=True; real seed data has no grader"]
    c = configurator.settings(S.DEFAULTS, {"meta_pair_by": "grader", "meta_judge": True})
    assert validate.check_loop(c, 1).found == []
    # a keyword of one setting is a path to the other (they were once one list, and both passed to crash later)
    c = configurator.settings(S.DEFAULTS, {"init_from": "M1", "prompt_writer": "scratch"})
    assert validate.check_loop(c, 1).found == ["init_from: checkpoint folder not found: M1",
                                               "prompt_writer: checkpoint folder not found: scratch"]
    # the paper's choice of DPO checkpoint, the grader in its judge's place
    c = configurator.settings(S.DEFAULTS, {"dpo_pick_every": -1, "n_valid": 0})  # (the one mistake: no knock-on)
    assert validate.check_loop(c, 1).found == ["dpo_pick_every = -1: must be >= 0"]
    # settings read only where another is on: changed while it is off, a mistake said
    c = configurator.settings(S.DEFAULTS, {"n_valid": 100, "max_meta_tokens": 32, "n_meta_seed": 100})
    assert validate.check_loop(c, 1).found == [
        "n_valid = 100: is read only with dpo_pick_every > 0, which this run does not have: it would change "
        "nothing; leave it at 256",
        "max_meta_tokens = 32: is read only with meta_judge=True, which this run does not have: it would change "
        "nothing; leave it at 64",
        "n_meta_seed = 100: is read only with meta_judge=True, which this run does not have: it would change "
        "nothing; leave it at 500"]
    c = configurator.settings(S.DEFAULTS, {"n_valid": 100, "dpo_pick_every": 7, "max_meta_tokens": 32,
                                           "n_meta_seed": 100, "meta_judge": True})
    assert validate.check_loop(c, 1).found == []
    # a chat template the toy tokenizer of init_from='scratch' cannot write: before the seed and tokenizer stages
    # (it stopped the run at M0's stage); Llama 2's, the toy's own, passes
    c = configurator.settings(S.DEFAULTS, {"chat_template": "llama3"})
    assert validate.check_loop(c, 1).found == [
        "chat_template = 'llama3': the toy tokenizer that init_from='scratch' trains writes Llama 2's chat format "
        "only (the others need special tokens it lacks); leave it ''"]
    assert validate.check_loop(configurator.settings(S.DEFAULTS, {"chat_template": "llama2"}), 1).found == []
    c = configurator.settings(S.DEFAULTS, {"dpo_pick_every": 10, "n_valid": 0})
    assert validate.check_loop(c, 1).found == ["n_valid = 0: must be >= 1"]
    # a world of fewer tasks than its sets need, before the seed stage draws them (it stopped there after
    # 10,000 draws, or at the DPO stage for a validation set): invent's 1,805 hold neither the default sizes'
    # 6,521 (3,200 + 1,024 + 1,722 and 575 EFT groups: a default run's seed/eft_train_groups.jsonl and eft_eval.jsonl)
    # nor 747 smaller ones (68 and 69 groups at seed 1337) with a validation set of 1,059 beside them, which is
    # drawn only with iterations; with 1,058 they take every task the world holds (toy.the_rest)
    c = configurator.settings(S.DEFAULTS, {"toy_kinds": "invent"})
    assert validate.check_loop(c, 1).found == [
        "toy_kinds = 'invent': holds 1,805 different tasks, and the seed sets need 6,521 (n_ift, the EFT train and "
        "eval groups, n_test): give smaller sizes or more kinds"]
    small = {"toy_kinds": "invent", "n_ift": 500, "n_eft_train": 200, "n_eft_eval": 200, "n_test": 110}
    assert validate.check_loop(configurator.settings(S.DEFAULTS, small), 1).found == []
    c = configurator.settings(S.DEFAULTS, {**small, "dpo_pick_every": 7, "n_valid": 1059})
    assert validate.check_loop(c, 1).found == [
        "toy_kinds = 'invent': holds 1,805 different tasks, and the seed sets need 1,806 (n_ift, the EFT train and "
        "eval groups, n_test, n_valid): give smaller sizes or more kinds"]
    for fits in ({"n_valid": 1058}, {"n_valid": 1100, "iterations": 0}):
        c = configurator.settings(S.DEFAULTS, {**small, "dpo_pick_every": 7, **fits})
        assert validate.check_loop(c, 1).found == []
    c = configurator.settings(S.DEFAULTS, {"dpo_pick_every": 10, "seed_data": real, "init_from": "M0"})
    assert ("dpo_pick_every = 10: is for the toy world, whose grader stands in for the paper's external judge in "
            "choosing a checkpoint; with real seed data each iteration keeps its last step") in validate.check_loop(c, 1).found


def test_every_range_the_loop_needs_is_checked_setting_by_setting():
    """Each setting's range, one setting at a time, so that one dropped from
    check_loop's lists is missed here and not hours into a run (shard_size 0
    was a range() error at the first generation, after M0 and SFT trained;
    an sft_batch_size the ranks cannot split stopped the SFT stage, after
    M0's pretraining)."""
    bad = {**{s: 1 for s in ("n_eft_train", "n_eft_eval", "n_candidates", "n_shots")},
           **{s: 0 for s in ("n_ift", "n_test", "sft_batch_size", "micro_batch_size", "n_prompts", "max_prompt_tokens",
                             "max_response_tokens", "n_judge", "max_judge_tokens", "max_meta_tokens", "dpo_batch_size",
                             "shard_size", "save_interval", "pretrain_epochs", "tp")},
           **{s: -1 for s in ("gen_batch_size", "pretrain_docs", "pretrain_qa_docs", "pretrain_check_drill",
                              "n_meta_seed", "eft_own_answers", "iterations", "min_prompt_words", "sft_min_lr",
                              "dpo_min_lr", "rpo_alpha", "temperature", "prompt_temperature", "dpo_pick_every",
                              "threads")},
           **{s: 0 for s in ("pretrain_lr", "sft_lr", "dpo_lr", "sft_epochs", "dpo_epochs", "dpo_beta", "top_p",
                             "prompt_top_p", "rouge_threshold")},
           **{s: 1.5 for s in ("ift_chatty", "pretrain_working", "pretrain_checking")},
           "ift_declines": 1.0, "dropout": 1.0, "vocab_size": 299}
    for s, value in bad.items():
        value = type(S.DEFAULTS[s])(value)
        found = validate.check_loop(configurator.settings(S.DEFAULTS, {s: value}), 1).found
        assert any(x.startswith(f"{s} = {value!r}: must be") for x in found), (s, found)
    # the batches are split over the ranks: each its own check
    for s in ("sft_batch_size", "dpo_batch_size"):
        found = validate.check_loop(configurator.settings(S.DEFAULTS, {s: 6}), 4).found
        assert f"{s} = 6: must divide by the number of ranks, 4" in found, (s, found)


def test_a_stage_redone_loses_its_old_record_before_it_starts(tmp_path):
    """Redone for a changed setting and stopped halfway (its outputs partly
    rewritten), then run with the old setting again: it is done again, not
    taken as done by the old record."""
    c = types.SimpleNamespace(a=1)
    r = Run(str(tmp_path), c, D.Env(), defaults={"a": 1})
    made = []
    r.stage("s", lambda: made.append(c.a) or {}, uses=["a"])
    c.a = 2

    def stopped():
        raise KeyboardInterrupt  # Ctrl-C in the middle of the redo
    with pytest.raises(KeyboardInterrupt):
        r.stage("s", stopped, uses=["a"])
    c.a = 1
    r.stage("s", lambda: made.append(c.a) or {}, uses=["a"])
    assert made == [1, 1]


def test_a_stage_line_a_kill_lost_from_metrics_jsonl_is_written_by_the_next_command(tmp_path):
    """A kill between a stage's record and its line in the run's
    metrics.jsonl: the next command finds the stage done and writes the line
    it lacks, once."""
    c = types.SimpleNamespace(a=1)
    r = Run(str(tmp_path), c, D.Env(), defaults={"a": 1})
    r.stage("s", lambda: {"n": 3}, uses=["a"])
    r.stage("t", lambda: {"n": 4}, uses=["a"], after=["s"])
    lines = read_jsonl(tmp_path / "metrics.jsonl")
    assert [x["stage"] for x in lines] == ["s", "t"]
    write_jsonl(tmp_path / "metrics.jsonl", lines[:1])  # t's line lost
    for _ in range(2):
        r = Run(str(tmp_path), c, D.Env(), defaults={"a": 1})
        r.stage("s", lambda: pytest.fail("done"), uses=["a"])
        r.stage("t", lambda: pytest.fail("done"), uses=["a"], after=["s"])
        assert read_jsonl(tmp_path / "metrics.jsonl") == lines  # (the same line: its info from the record)
    # t's line lost in the middle of its writing: the next line starts on a line of its own
    text = (tmp_path / "metrics.jsonl").read_text()
    (tmp_path / "metrics.jsonl").write_text(text[:text.rindex("\n", 0, -1) + 8])  # t's line cut short
    r = Run(str(tmp_path), c, D.Env(), defaults={"a": 1})
    r.stage("s", lambda: pytest.fail("done"), uses=["a"])
    r.stage("t", lambda: pytest.fail("done"), uses=["a"], after=["s"])
    kept = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(kept) == 3 and json.loads(kept[0]) == lines[0] and json.loads(kept[2]) == lines[1]
    for _ in range(2):  # later commands read past the cut line: t's record is there, nothing written again
        r = Run(str(tmp_path), c, D.Env(), defaults={"a": 1})
        r.stage("s", lambda: pytest.fail("done"), uses=["a"])
        r.stage("t", lambda: pytest.fail("done"), uses=["a"], after=["s"])
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == kept
    assert [x["stage"] for x in metric_records(str(tmp_path))] == ["s", "t"]


def test_an_input_path_written_another_way_redoes_nothing(tmp_path):
    """Seed data named with a trailing slash, by another relative path, or
    moved: its files hold the same bytes, so nothing is redone (a changed
    spelling redid SFT, M1 and all after them). New contents, or the toy
    world instead, are a change."""
    ran = []
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "ift.jsonl").write_text("a\n")

    def run(seed_data):
        c = types.SimpleNamespace(seed_data=seed_data, n_ift=3)
        r = Run(str(tmp_path / "run"), c, D.Env(), inputs=S.INPUT_SETTINGS)
        files = [] if seed_data == "toy" else [os.path.join(seed_data, "ift.jsonl")]
        r.stage("seed_data", lambda: ran.append("seed_data"), uses=["seed_data"], files=files)
        r.stage("SFT", lambda: ran.append("SFT"), uses=["n_ift"], after=["seed_data"])
    run(str(tmp_path / "seed"))
    run(str(tmp_path / "seed") + "/")
    run(os.path.relpath(tmp_path / "seed"))
    shutil.move(tmp_path / "seed", tmp_path / "moved")
    run(str(tmp_path / "moved"))
    assert ran == ["seed_data", "SFT"]
    (tmp_path / "moved" / "ift.jsonl").write_text("b\n")
    run(str(tmp_path / "moved"))
    run("toy")
    assert ran == ["seed_data", "SFT"] * 3


def test_an_input_changed_from_one_keyword_to_another_or_to_a_path_redoes_its_stage(tmp_path):
    """Two paths of an input setting count as the same (their files' contents
    decide), but its keywords are not paths: prompt_writer M0 -> current (or
    a checkpoint folder) is another writer, and the prompts it wrote are stale."""
    ran = []

    def run(writer):
        r = Run(str(tmp_path / "run"), types.SimpleNamespace(prompt_writer=writer), D.Env(), inputs=S.INPUT_SETTINGS)
        r.stage("prompts", lambda: ran.append(writer), uses=["prompt_writer"])
    run("M0")
    run("M0")
    assert ran == ["M0"]
    run("current")
    run("M1")
    run(str(tmp_path / "writer"))  # a folder of its own (its files, were the stage to list them, decide)
    run(str(tmp_path / "elsewhere"))  # another path: the same input as far as the setting goes
    run("M1")
    assert ran == ["M0", "current", "M1", str(tmp_path / "writer"), "M1"]


def test_two_inputs_of_one_name_that_trade_settings_redo_their_stage(tmp_path, monkeypatch):
    """Input files are known by name (a path written another way is the same
    file), so two of one name, a/q.jsonl and b/q.jsonl, must stay bound to
    the settings that name them: swapped, the evaluation's inputs changed."""
    monkeypatch.chdir(tmp_path)
    for folder, text in (("a", '{"prompt": "one"}\n'), ("b", '{"prompt": "two"}\n')):
        os.makedirs(folder)
        open(os.path.join(folder, "q.jsonl"), "w").write(text)
    ran = []

    def run(eval_prompts, mt_bench):
        r = Run("run", types.SimpleNamespace(eval_prompts=eval_prompts, mt_bench=mt_bench), D.Env(),
                inputs=S.INPUT_SETTINGS)
        r.stage("eval_M1", lambda: ran.append((eval_prompts, mt_bench)), uses=["eval_prompts", "mt_bench"],
                files=[eval_prompts, mt_bench])
    run("a/q.jsonl", "b/q.jsonl")
    run("./a/q.jsonl", "b/q.jsonl")  # the same files, written otherwise: reused
    assert ran == [("a/q.jsonl", "b/q.jsonl")]
    run("b/q.jsonl", "a/q.jsonl")  # swapped: made again
    assert ran == [("a/q.jsonl", "b/q.jsonl"), ("b/q.jsonl", "a/q.jsonl")]


def test_a_big_file_replaced_by_one_of_the_same_size_redoes_its_stage(tmp_path, monkeypatch):
    """Files over data.HASHED_BYTES (model weights) are fingerprinted by size
    and modification time, not hashed: a checkpoint retrained in place has
    the same size, so its new time must count, or every stage after it is
    reused from the old weights."""
    import data
    monkeypatch.setattr(data, "HASHED_BYTES", 8)  # (the real one is 64 MiB)
    weights, ran = tmp_path / "model.safetensors", []
    weights.write_bytes(b"0123456789abcdef")
    os.utime(weights, ns=(10**18, 10**18))

    def run():
        r = Run(str(tmp_path / "run"), types.SimpleNamespace(), D.Env())
        r.stage("M1", lambda: ran.append("M1"), files=[str(weights)])
    run()
    run()
    assert ran == ["M1"]
    weights.write_bytes(b"fedcba9876543210")  # retrained: the same size, a later time
    os.utime(weights, ns=(10**18 + 10**9, 10**18 + 10**9))
    run()
    assert ran == ["M1", "M1"]


def test_fingerprints_by_hand(tmp_path, monkeypatch):
    """A fingerprint does not depend on the order a dict was built in; a file
    of exactly HASHED_BYTES is still hashed whole; a folder's names its files
    (the same bytes under another name is another folder) and leaves out dot
    files (a run's .lock changes nothing)."""
    import data
    assert data.fingerprint({"a": 1, "b": 2}) == data.fingerprint({"b": 2, "a": 1}) != data.fingerprint({"a": 1})
    monkeypatch.setattr(data, "HASHED_BYTES", 8)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"01234567")
    b.write_bytes(b"76543210")
    for f in (a, b):
        os.utime(f, ns=(10**18, 10**18))
    assert data.file_fingerprint(a) != data.file_fingerprint(b)
    one, other = tmp_path / "one", tmp_path / "other"
    one.mkdir()
    other.mkdir()
    (one / "model.safetensors").write_text("w")
    (other / "notes.txt").write_text("w")
    before = data.file_fingerprint(one)
    assert before != data.file_fingerprint(other)
    (one / ".lock").write_text("process 1 on elsewhere\n")
    assert data.file_fingerprint(one) == before


def test_a_kill_while_a_record_or_a_shared_output_is_written_leaves_no_half_file(tmp_path, monkeypatch):
    """A stage's record and the shared outputs go to a temporary file that is
    renamed into place once whole (data.write_bytes): killed before the
    rename, the next command finds no record (the stage runs again) or the
    old file, never half a JSON record that stops every later command with a
    traceback, or half the pairs taken as all of them."""
    import data
    real = data.sync_to_disk

    def killed(path):  # the bytes are in the temporary file; the kill comes before the rename
        if os.path.basename(path).startswith(".tmp-"):
            raise KeyboardInterrupt
        real(path)
    c, ran = types.SimpleNamespace(a=1), []
    r = Run(str(tmp_path / "run"), c, D.Env(), defaults={"a": 1})
    monkeypatch.setattr(data, "sync_to_disk", killed)
    with pytest.raises(KeyboardInterrupt):
        r.stage("s", lambda: ran.append("s"), uses=["a"])
    monkeypatch.setattr(data, "sync_to_disk", real)
    assert os.listdir(tmp_path / "run" / "done") == []  # (no record, and no temporary file left either)
    r = Run(str(tmp_path / "run"), c, D.Env(), defaults={"a": 1})
    r.stage("s", lambda: ran.append("s"), uses=["a"])
    assert ran == ["s", "s"] and r.record("s")["made_from"]["settings"] == {"a": 1}
    pairs = tmp_path / "run" / "pairs.jsonl"
    save_jsonl(str(pairs), [{"n": 1}, {"n": 2}])
    monkeypatch.setattr(data, "sync_to_disk", killed)
    with pytest.raises(KeyboardInterrupt):
        save_jsonl(str(pairs), [{"n": 3}] * 1000)
    assert read_jsonl(pairs) == [{"n": 1}, {"n": 2}]


def test_fit_micro_by_hand(capsys):
    """The loop's trainers get a micro-batch that splits each rank's share of
    a batch evenly (check_training refuses one that does not, at the stage,
    after the stages before it trained); a batch the ranks cannot share is
    one error line."""
    assert fit_micro(16, 16, 1) == 16 and fit_micro(16, 3, 1) == 2 and fit_micro(16, 6, 1) == 4
    assert fit_micro(12, 5, 2) == 3 and fit_micro(12, 8, 2) == 6 and fit_micro(4, 8, 1) == 4
    assert fit_micro(16, 0, 4) == 1  # (at least one example a pass)
    with pytest.raises(SystemExit):
        fit_micro(6, 2, 4)
    assert capsys.readouterr().err == "error: a batch of 6 cannot be split over 4 ranks\n"


def test_a_done_stage_whose_output_is_gone_is_made_again_when_a_stage_reads_it(tmp_path, capsys):
    """A model folder deleted to free a disk: while every stage after it is
    done, nothing is made again (at 70B, hours and 140 GB); once one that
    reads it has to run (the next stage failed to load it, after dropping
    its own record), it is made first, from the same inputs, and says why."""
    ran, out = [], tmp_path / "run" / "M1"

    def run(beta=0.1):
        r = Run(str(tmp_path / "run"), types.SimpleNamespace(beta=beta), D.Env())
        r.stage("M1", lambda: ran.append("M1") or out.mkdir(exist_ok=True), outputs=[str(out)])
        r.stage("M2", lambda: ran.append("M2"), uses=["beta"], after=["M1"])
        return r
    run()
    shutil.rmtree(out)
    assert run().reused == ["M1", "M2"] and ran == ["M1", "M2"] and not out.exists()
    assert run(beta=0.2).reused == [] and ran == ["M1", "M2", "M1", "M2"] and out.exists()
    assert f"=== M1 (again: {out} gone, and M2 reads it)" in capsys.readouterr().out
    run(beta=0.2)
    assert ran == ["M1", "M2", "M1", "M2"]
    # made again from inside a stage that runs on after it (the evaluation: its EFT targets and pairs):
    # a Ctrl-C after that still names the outer stage
    shutil.rmtree(out)
    r = Run(str(tmp_path / "run"), types.SimpleNamespace(beta=0.2), D.Env())
    r.stage("M1", lambda: ran.append("M1") or out.mkdir(exist_ok=True), outputs=[str(out)])
    current = []
    r.stage("eval", lambda: r.remake_if_gone("M1", "eval") or current.append(r.current), uses=["beta"])
    assert current == ["eval"] and ran[-1] == "M1" and out.exists() and r.current is None
    # a dry pass (every command's quiet look before it starts) with two stages reading the gone folder:
    # it would be made once, before the first of them
    shutil.rmtree(out)
    r = Run(str(tmp_path / "run"), types.SimpleNamespace(beta=0.3), D.Env(), dry=True, quiet=True)
    r.stage("M1", lambda: pytest.fail("a dry pass runs nothing"), outputs=[str(out)])
    r.stage("M2", lambda: None, uses=["beta"], after=["M1"])
    r.stage("M3", lambda: None, uses=["beta"], after=["M1", "M2"])
    assert [name for name, _ in r.would_run] == ["M1", "M2", "M3"]



def stubbed_stages(monkeypatch):
    """run_stages on a real run folder with every stage's work stubbed: a
    stage writes its outputs and notes that it ran, and, where it reads a
    model folder or earlier prompts, whether they were there. Returns
    command(folder, **settings) -> that command's notes, in order."""
    notes = []

    def writes(*paths):
        for p in paths:
            if p.endswith((".jsonl", ".md", ".model")):
                write_jsonl(p, [{}])
            else:
                os.makedirs(p, exist_ok=True)
        return {}

    def seed(c, r):
        notes.append("seed_data")
        return writes(*(r.path("seed", f) for f in S.SEED_FILES + ["test.jsonl", "eft_train_groups.jsonl"]))

    def prompts(c, r, t, writer):
        earlier = all(os.path.exists(r.path(f"iter{s}", "prompts.jsonl")) for s in range(1, t))
        notes.append((f"iter{t}_prompts", "writer there" if os.path.isdir(writer) else "no writer",
                      "earlier prompts there" if earlier else "earlier prompts gone"))
        return writes(r.path(f"iter{t}", "prompts.jsonl"))

    def dpo(c, r, t, mt):
        notes.append((f"M{t + 1}", f"from M{t} there" if os.path.isdir(mt) else f"M{t} gone"))
        return writes(r.path(f"M{t + 1}"))

    def makes(name, output):  # a stage that makes one file or folder of the run
        return lambda c, r, *inputs: notes.append(name) or writes(r.path(output))

    def iteration_file(kind):  # an iteration's candidates, judgments or pairs
        return lambda c, r, t, *model: notes.append(f"iter{t}_{kind}") or writes(r.path(f"iter{t}", f"{kind}.jsonl"))

    def evaluation(c, r, name, path):
        notes.append(f"eval_{name}")
        return writes(*S.eval_outputs(c, r, name))
    for stage, fake in {"stage_seed_data": seed, "stage_tokenizer": makes("tokenizer", "tokenizer.model"),
                        "stage_pretrain": makes("M0", "M0"), "stage_sft_baseline": makes("SFT", "SFT"),
                        "stage_eft_targets": makes("eft_targets", "seed/eft_train_targets.jsonl"),
                        "stage_m1": makes("M1", "M1"), "stage_prompts": prompts,
                        "stage_candidates": iteration_file("candidates"),
                        "stage_judgments": iteration_file("judgments"),
                        "stage_pairs": iteration_file("pairs"), "stage_dpo": dpo, "stage_eval": evaluation}.items():
        monkeypatch.setattr(S, stage, fake)
    monkeypatch.setattr(S.report, "write_report", lambda r, *a: notes.append("report") or writes(r.path("report.md")))

    def command(folder, **settings):
        c = configurator.settings(S.DEFAULTS, {"progress": False, **settings})
        notes.clear()
        S.run_stages(c, Run(str(folder), c, D.Env(), S.RUNTIME_SETTINGS, S.DEFAULTS, S.INPUT_SETTINGS))
        return list(notes)
    return command


def test_which_stages_a_command_runs_and_what_they_find(tmp_path, monkeypatch, capsys):
    """The stage graph itself (run_stages), with the work stubbed: a model
    folder deleted to free a disk is made again before the stage that trains
    from it; an iteration's prompts, deleted, before the next iteration's
    (which keeps its prompts from them); a setting of the near-duplicate filter
    redoes the iterations and only the models trained since (no benchmark
    files: it means nothing to the evaluation of the SFT baseline or M1); and
    with dpo_pick_every off, a DPO stage removes checkpoints an earlier
    command kept (else they stayed, looking like this model's)."""
    command = stubbed_stages(monkeypatch)
    run = tmp_path / "run"
    first = command(run, iterations=1)
    assert first == ["seed_data", "tokenizer", "M0", "SFT", "M1",
                     ("iter1_prompts", "writer there", "earlier prompts there"), "iter1_candidates",
                     "iter1_judgments", "iter1_pairs", ("M2", "from M1 there"),
                     "eval_SFT", "eval_M1", "eval_M2", "report"]
    assert command(run, iterations=1) == []
    shutil.rmtree(run / "M1")
    assert command(run, iterations=1, dpo_lr=2e-6) == ["M1", ("M2", "from M1 there"), "eval_M2", "report"]
    (run / "iter1" / "prompts.jsonl").unlink()
    assert command(run, iterations=2, dpo_lr=2e-6)[:2] == [
        ("iter1_prompts", "writer there", "earlier prompts there"),
        ("iter2_prompts", "writer there", "earlier prompts there")]
    assert command(run, iterations=2, dpo_lr=2e-6, rouge_threshold=0.8) == [
        ("iter1_prompts", "writer there", "earlier prompts there"), "iter1_candidates", "iter1_judgments",
        "iter1_pairs", ("M2", "from M1 there"), ("iter2_prompts", "writer there", "earlier prompts there"),
        "iter2_candidates", "iter2_judgments", "iter2_pairs", ("M3", "from M2 there"), "eval_M2", "eval_M3", "report"]
    kept = run / "train" / "M2" / train_dpo.CHECKPOINTS / "step-1"
    kept.mkdir(parents=True)  # a command with dpo_pick_every and keep_train_state kept them
    command(run, iterations=2, dpo_lr=3e-6, rouge_threshold=0.8)
    assert not kept.parent.exists()
    kept.mkdir(parents=True)
    command(run, iterations=2, dpo_lr=4e-6, rouge_threshold=0.8, keep_train_state=True)
    assert kept.exists()  # (kept on asking)


def test_which_stages_a_command_runs_on_real_seed_data(tmp_path, monkeypatch, capsys):
    """Real seed data, a given M0 (init_from): the prompt writer M0 is that
    checkpoint; a writer named by its folder is an input by its files (its
    weights replaced, the prompts are written again); EFT targets made from a
    stronger judge's file do not depend on the loop's own judge's sampling
    settings; a seed whose EFT training set is targets already has no
    eft_targets stage."""
    command = stubbed_stages(monkeypatch)
    seed, ckpt, writer = tmp_path / "seed", tmp_path / "ckpt", tmp_path / "writer"
    write_jsonl(seed / "ift.jsonl", [{"prompt": "Name a fruit.", "response": "Apple."}])
    for name in ("eft_train.jsonl", "eft_eval.jsonl"):
        write_jsonl(seed / name, [{"prompt": "Say hi.", "responses": ["Hi.", "No."], "ranks": [0, 1]}])
    for folder in (ckpt, writer):
        folder.mkdir()
        (folder / "model.safetensors").write_text("weights 1")
    given = dict(seed_data=str(seed), init_from=str(ckpt), eft_judgments=str(seed / "ift.jsonl"))
    ran = command(tmp_path / "a", iterations=1, **given)
    assert ran[:4] == ["seed_data", "SFT", "eft_targets", "M1"]
    assert ran[4] == ("iter1_prompts", "writer there", "earlier prompts there")  # (M0 is init_from: no M0 folder)
    assert command(tmp_path / "a", iterations=1, n_judge=5, **given) == [  # (not eft_targets, nor M1)
        "iter1_judgments", "iter1_pairs", ("M2", "from M1 there"), "eval_SFT", "eval_M1", "eval_M2", "report"]
    command(tmp_path / "b", iterations=1, prompt_writer=str(writer), **given)
    (writer / "model.safetensors").write_text("weights 2")
    assert command(tmp_path / "b", iterations=1, prompt_writer=str(writer), **given)[0][0] == "iter1_prompts"
    write_jsonl(seed / "eft_train.jsonl", [{"prompt": "Review ...", "response": "Fine.\nScore: 4"}])
    assert "eft_targets" not in command(tmp_path / "c", iterations=0, **given)


def test_outputs_a_stage_made_again_removes_are_made_again_too(tmp_path):
    """Gone outputs are looked for when a reader runs, not only when the
    stages are listed: a stage made again (the seed data, which starts from
    an empty folder) may remove a file of a stage after it (EFT targets kept
    in the same folder), which is then made again before its reader. A
    temporary path a kill left after the record (a trainer's state, whole or
    half removed) goes when the stage is next found done by a command that
    does not keep it (one with keep_train_state passes no temporary paths)."""
    ran, seed, state = [], tmp_path / "run" / "seed", tmp_path / "run" / "train" / "M1" / "state"

    def make_seed():
        ran.append("seed")
        shutil.rmtree(seed, ignore_errors=True)
        seed.mkdir(parents=True)
        (seed / "ift.jsonl").write_text("x")

    def run(beta=0.1, keep=False):
        r = Run(str(tmp_path / "run"), types.SimpleNamespace(beta=beta), D.Env())
        r.stage("seed", make_seed, outputs=[str(seed / "ift.jsonl")])
        r.stage("targets", lambda: ran.append("targets") or (seed / "targets.jsonl").write_text("t") and None,
                after=["seed"], outputs=[str(seed / "targets.jsonl")])
        r.stage("M1", lambda: ran.append("M1") or state.mkdir(parents=True, exist_ok=True),
                after=["seed", "targets"], temporary=[] if keep else [str(state)])
        r.stage("M2", lambda: ran.append("M2"), uses=["beta"], after=["M1", "seed", "targets"])
        return r
    run()
    assert ran == ["seed", "targets", "M1", "M2"] and not state.exists()
    (seed / "ift.jsonl").unlink()
    state.mkdir(parents=True)  # a kill during the removal (state.json goes first), after M1's record
    run()
    assert ran == ["seed", "targets", "M1", "M2"] and not state.exists()  # nothing that reads them ran
    state.mkdir(parents=True)
    (state / "state.json").write_text("{}")  # a whole state: a kill after the record, before the removal
    run(keep=True)
    assert (state / "state.json").exists()  # a command that keeps states leaves it
    run()
    assert not state.exists()  # one that does not removes it
    run(beta=0.2)  # M2 reads the seed data, made again, which removes the targets, which M2 reads too
    assert ran == ["seed", "targets", "M1", "M2", "seed", "targets", "M2"] and (seed / "targets.jsonl").exists()


def test_a_finished_runs_deleted_files_are_made_again_by_the_same_command(micro_run, tmp_path):
    """A finished run whose report.md, a model's test answers, pairs and seed
    folder were deleted: the same command writes the seed data, the answers
    and the report again (report.md gone printed a traceback on every
    rank), byte for byte but the report, whose tables are the same and
    which names the pairs it cannot find; a changed DPO setting makes the
    pairs again before DPO reads them (they had no output listed: DPO
    failed after dropping its record), byte for byte. A deleted M2 is made again as it was when iteration 2
    reads it."""
    run = copy_run(micro_run, tmp_path)
    pairs, seed = (run / "iter1" / "pairs.jsonl").read_bytes(), {p.name: p.read_bytes() for p in (run / "seed").iterdir()}
    shutil.rmtree(run / "seed")
    test_answers = (run / "eval" / "M1_test.jsonl").read_bytes()
    # the report's tables: every model's figures (its diagnostics lack the deleted pairs, which it says)
    report = lambda: [x for x in (run / "report.md").read_text().splitlines() if x.startswith("|")]
    reported = report()
    for gone in ("iter1/pairs.jsonl", "report.md", "eval/M1_test.jsonl"):
        (run / gone).unlink()
    r = run_loop(tmp_path)
    assert stages_run(r.stdout) == ["seed_data", "eval_M1", "report"]  # (the seed data: eval_M1 reads it)
    assert "report.md gone, and the run's last line reads it" in r.stdout
    assert "M1_test.jsonl gone, and report reads it" in r.stdout and "| M3 |" in r.stdout
    assert (run / "eval" / "M1_test.jsonl").read_bytes() == test_answers and report() == reported
    assert "**Left out**: files that finished stages wrote are not found, so this report lacks what they feed: " \
        "`iter1/pairs.jsonl` (iteration 1: the grader's verdicts on its pairs)" in (run / "report.md").read_text()
    r = run_loop(tmp_path, dpo_beta=0.2, dry_run=True)
    said = [line for line in r.stdout.splitlines() if line.startswith("would run ")]
    assert said[:2] == [f"would run iter1_pairs (again: {run / 'iter1' / 'pairs.jsonl'} gone, and M2 reads it)",
                        "would run M2 (again: dpo_beta 0.1 -> 0.2)"], said
    r = run_loop(tmp_path, dpo_beta=0.2)
    assert stages_run(r.stdout) == [line.split()[2] for line in said]
    assert (run / "iter1" / "pairs.jsonl").read_bytes() == pairs
    assert {p.name: p.read_bytes() for p in (run / "seed").iterdir()} == seed
    # a model of iteration 1, made again for a stage of iteration 2, is iteration 1's (a stage function
    # bound the loop's variable late: M2 was remade as M3, from iteration 2's pairs)
    m2 = (run / "M2" / "model.safetensors").read_bytes()
    shutil.rmtree(run / "M2")
    (run / "done" / "iter2_candidates").unlink()
    r = run_loop(tmp_path, dpo_beta=0.2)
    assert stages_run(r.stdout) == ["M2", "iter2_candidates"] and "M2 gone, and iter2_candidates reads it" in r.stdout
    assert (run / "M2" / "model.safetensors").read_bytes() == m2


def test_ctrl_c_before_the_stages_is_one_line(tmp_path):
    """Ctrl-C while the settings and inputs are checked (a big checkpoint's
    headers take a while): one line and status 130, not a traceback."""
    code = ("import runpy, validate\n"
            "def interrupted(*a):\n    raise KeyboardInterrupt\n"
            "validate.check_loop = interrupted\n"
            "runpy.run_path('selfreward.py', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code, f"--out_root={tmp_path}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 130 and r.stderr.strip() == "interrupted before any work; nothing was written", r.stderr


def test_a_dry_run_says_what_a_changed_command_would_redo_and_touches_nothing(micro_run, tmp_path):
    """--dry_run: the stages a changed setting would redo, with why, before
    any record is dropped (Ctrl-C after "=== M2 (again ...)" had already cost
    M2's); nothing in the run folder changes; the real command then redoes
    just those stages."""
    run = copy_run(micro_run, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    r = run_loop(tmp_path, dpo_beta=0.2, dry_run=True)
    said = [line for line in r.stdout.splitlines() if line.startswith("would run ")]
    assert said[0] == "would run M2 (again: dpo_beta 0.1 -> 0.2)" and stages_run(r.stdout) == []
    assert "nothing was run or written" in r.stdout and not any("eval_M1" in line for line in said)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    # the near-duplicate filter's threshold: the new prompts and what follows them, not the evaluation of the
    # models made before them (it counts only a benchmark's prompts near the loop's, and the toy world has none)
    refiltered = [line for line in run_loop(tmp_path, rouge_threshold=0.98, dry_run=True).stdout.splitlines()
                  if line.startswith("would run ")]
    assert refiltered[0] == "would run iter1_prompts (again: rouge_threshold 0.99 -> 0.98)", refiltered
    assert not {"eval_SFT", "eval_M1"} & {line.split()[2] for line in refiltered}, refiltered
    with open(run / ".lock", "a+") as held:  # while another job writes the folder, the dry run says so
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)
        held.write("process 7 on box\n")
        held.flush()
        r = run_loop(tmp_path, dpo_beta=0.2, dry_run=True)
    assert f"note: another job (process 7 on box) is writing {run} now" in r.stdout
    r = run_loop(tmp_path, dpo_beta=0.2)
    assert stages_run(r.stdout) == [line.split()[2] for line in said]
    assert "is a new run: every stage would run" in run_loop(tmp_path, run="fresh", dry_run=True).stdout
    assert not (tmp_path / "fresh").exists()


def test_stage_prompts_near_duplicates_and_generated_shots(tmp_path, monkeypatch):
    """Shard 1 keeps two new prompts; shard 2's requests show both of them (6 seed
    shots + 2 generated), and its near duplicate of a kept prompt (ROUGE-L 16/17) is dropped."""
    write_jsonl(tmp_path / "seed" / "ift.jsonl", [{"prompt": f"Say hi to {x}.", "response": "hi"} for x in "ABCDEFGH"])
    written = ["Describe the water cycle in simple terms.", "Name three famous painters of Italy.",
               "Describe the water cycle in very simple terms.", "Explain how a rainbow forms."]
    asked = []
    script_the_prompt_writer(monkeypatch, S, written, asked)
    r = types.SimpleNamespace(path=lambda *p: str(tmp_path.joinpath(*p)), fingerprints={}, current=None, env=D.Env())
    c = types.SimpleNamespace(**{**S.DEFAULTS, "n_prompts": 4, "shard_size": 2, "progress": False})
    info = S.stage_prompts(c, r, 1, "writer")
    assert info["dropped"] == {"near duplicate (ROUGE-L >= 0.9)": 1} and info["kept"] == 3
    assert all(written[0] in a and written[1] in a for a in asked[2:])
    assert all(sum(f"Say hi to {x}." in a for x in "ABCDEFGH") == 6 for a in asked[2:])  # n_shots 8, 2 of them new
    # the generated two are shuffled in among the seed shots, not always listed last
    last_seed = lambda a: max(a.find(f"Say hi to {x}.") for x in "ABCDEFGH")
    assert any(a.find(written[0]) < last_seed(a) or a.find(written[1]) < last_seed(a) for a in asked[2:])


def test_stage_prompts_drops_earlier_iterations_prompts_and_keeps_requests_in_order(tmp_path, monkeypatch):
    """Iteration 2: a prompt iteration 1 kept, written again, is an exact
    duplicate, and so is a new prompt written twice in one iteration (not a
    near one); a request too long for the writer's context is recorded in its
    own place among the others."""
    write_jsonl(tmp_path / "seed" / "ift.jsonl", [{"prompt": f"Say hi to {x}.", "response": "hi"} for x in "ABCDEFGH"])
    write_jsonl(tmp_path / "iter1" / "prompts.jsonl", [{"prompt": "Explain how a rainbow forms."}])
    written = ["Explain how a rainbow forms.", "Name three famous painters of Italy.",
               "Name three famous painters of Italy.", "Describe the water cycle in simple terms."]
    script_the_prompt_writer(monkeypatch, S, written)
    r = types.SimpleNamespace(path=lambda *p: str(tmp_path.joinpath(*p)), fingerprints={}, current=None, env=D.Env())
    c = types.SimpleNamespace(**{**S.DEFAULTS, "n_prompts": 3, "progress": False})
    info = S.stage_prompts(c, r, 2, "writer")
    assert info["dropped"] == {"exact duplicate": 2} and info["kept"] == 1
    asked = []
    monkeypatch.setattr(S, "fits", lambda net, ids: asked.append(ids) or len(asked) > 1)  # the first: too long
    c.n_prompts = 2
    S.stage_prompts(c, r, 3, "writer")
    assert read_jsonl(tmp_path / "iter3" / "prompts_generated.jsonl") == [
        {"prompt": "", "dropped": "request longer than the context"},
        {"prompt": "Describe the water cycle in simple terms.", "dropped": None}]


def test_each_stage_iteration_and_shard_samples_with_its_own_seed(tmp_path, monkeypatch, toy_tokenizer_path):
    tok = Tokenizer(toy_tokenizer_path)
    net = Transformer(preset("toy-tiny", vocab_size=tok.vocab_size, max_seq_len=1024)).eval()
    monkeypatch.setattr(S, "load_for_sampling", lambda r, path: (net, tok))
    calls = []

    def stub(net, prompts, *a, n=1, seed=None, **kw):
        calls.append((n, seed))
        return [[5] for _ in range(len(prompts) * n)]
    monkeypatch.setattr(S, "generate", stub)
    monkeypatch.setattr(judge_module, "generate", stub)
    monkeypatch.setattr(judge_module, "fits", lambda net, ids: True)  # (the judge prompt outgrows the tiny context)
    c = configurator.settings(S.DEFAULTS, {"progress": False, "n_candidates": 3, "n_judge": 2, "shard_size": 1,
                                           "max_response_tokens": 4, "max_judge_tokens": 4})
    r = Run(str(tmp_path / "run"), c, D.Env())
    for t in (1, 2):
        write_jsonl(r.path(f"iter{t}", "prompts.jsonl"), [{"prompt": "Say hi."}, {"prompt": "Say bye."}])
        S.stage_candidates(c, r, t, "M")
        S.stage_judgments(c, r, t, "M")
    assert [n for n, _ in calls] == [3, 3, 2, 2] * 2  # n_candidates, then n_judge
    assert len({s for _, s in calls}) == 8  # 2 stages x 2 iterations x 2 shards
    assert all(len(x["candidates"]) == 3 for x in read_jsonl(r.path("iter2", "candidates.jsonl")))


@pytest.mark.parametrize("fine", [{"top_p": 1.0}, {"rouge_threshold": 1.0}, {"sft_min_lr": 0.001},
                                  {"n_ift": 8}, {"n_shots": 2}])
def test_the_closed_ends_of_the_loops_ranges_are_allowed(fine):
    assert validate.check_loop(configurator.settings(S.DEFAULTS, fine), 1).found == []


def test_a_prompt_length_window_that_keeps_no_prompt_is_refused():
    """A prompt of no words is always dropped: max_prompt_words 0 (min 0 too)
    would train M0, the SFT baseline and M1, then stop at the first iteration."""
    c = configurator.settings(S.DEFAULTS, {"min_prompt_words": 0, "max_prompt_words": 0})
    assert validate.check_loop(c, 1).found == [
        "max_prompt_words = 0: must be >= 1 (a prompt of no words is always dropped: the writer would keep nothing)"]
    c = configurator.settings(S.DEFAULTS, {"min_prompt_words": 0, "max_prompt_words": 1})
    assert validate.check_loop(c, 1).found == []


def test_plan_only_settings_in_a_run_that_trains_are_refused():
    """world_size and gpu_memory_gb are read by --plan_only alone: in a run
    (the loop's, a trainer's) a changed one would change nothing."""
    c = configurator.settings(S.DEFAULTS, {"world_size": -1, "gpu_memory_gb": 141})
    assert validate.check_loop(c, 1).found == [
        "world_size = -1: is read only with plan_only=True, which this run does not have: it would change nothing; "
        "leave it at 0",
        "gpu_memory_gb = 141: is read only with plan_only=True, which this run does not have: it would change "
        "nothing; leave it at 80"]
    c = configurator.settings(train_sft.DEFAULTS, {"init_from": "scratch", "world_size": 4, "data": "x.jsonl"})
    with pytest.raises(validate.BadInput, match=r"world_size = 4: is read only with plan_only=True"):
        validate.check_training(c, 1, [], "train_sft.py", defaults=train_sft.DEFAULTS)


def test_eval_outputs_are_the_files_stage_eval_writes(tmp_path):
    """eval_judge=False writes no judgments file, so none is listed (a listed
    file that never exists counts as gone: every evaluation would be made
    again whenever the report runs); the toy world's test answers are; a
    benchmark's answer file is, where one is given."""
    r = types.SimpleNamespace(path=lambda *p: str(tmp_path.joinpath(*p)))
    c = configurator.settings(S.DEFAULTS, {"eval_judge": False, "run_name": "x"})
    assert S.eval_outputs(c, r, "M1") == [str(tmp_path / "eval" / "M1_test.jsonl")]
    c = configurator.settings(S.DEFAULTS, {"run_name": "x"})
    assert S.eval_outputs(c, r, "M2") == [str(tmp_path / "eval" / "M2_test.jsonl"),
                                           str(tmp_path / "eval" / "M2_judgments.jsonl")]


def test_eft_own_answers_are_each_prompts_own_samples(tmp_path, monkeypatch):
    """eft_own_answers=2: prompt k's EFT records judge completions 2k and 2k+1
    of generate's flat list (prompt-major), and no other prompt's."""
    groups = [{"prompt": f"q{k}", "task": {"kind": "length", "word": "AB"}} for k in range(3)]
    write_jsonl(tmp_path / "seed" / "eft_train_groups.jsonl", groups)
    r = types.SimpleNamespace(path=lambda *p: str(tmp_path.joinpath(*p)))
    tok = types.SimpleNamespace(stop_ids=[2], decode=lambda ids: " ".join(ids))
    monkeypatch.setattr(S, "load_for_sampling", lambda r, path: (None, tok))
    monkeypatch.setattr(S, "chat_prompt_ids", lambda tok, prompt: prompt)
    monkeypatch.setattr(S, "generate", lambda net, prompts, *a, n=1, **kw: [
        [f"{p}a{j}"] for p in prompts for j in range(n)])
    made = []
    monkeypatch.setattr(S, "generate_sharded", lambda r, name, items, size, work: made.extend(work(items, 0)) or made)
    monkeypatch.setattr(S.toy, "eft_target", lambda prompt, task, response, **kw: {
        "prompt": prompt, "response": response, "score": 5 if response.endswith("a1") else 0})
    c = configurator.settings(S.DEFAULTS, {"eft_own_answers": 2, "progress": False})
    assert S.stage_eft_own_answers(c, r) == {"answers": 6, "grades": {0: 3, 1: 0, 2: 0, 3: 0, 4: 0, 5: 3}}
    assert [(x["prompt"], x["response"]) for x in made] == [(f"q{k}", f"q{k}a{j}") for k in range(3) for j in range(2)]


def test_what_the_training_stages_tell_the_trainers_and_record(tmp_path, monkeypatch):
    """With the trainers stubbed: a trainer's micro-batch is the largest that
    divides its batch (16 with micro 12: 8); DPO's micro-batch is half SFT's
    (two sequences a pair); the dropout setting reaches SFT; a DPO stage's
    record leaves out the list of checkpoint folders; M1's data on real seed
    data is the IFT and EFT records mixed, and Meta-Rewarding adds no meta
    examples there (they are the toy world's); the seed stage counts each
    file's records."""
    r = types.SimpleNamespace(path=lambda *p: str(tmp_path.joinpath(*p)), env=D.Env(), setting=lambda k: "float32")
    told = {}
    monkeypatch.setattr(S.train_sft, "train", lambda config: told.update(sft=config) or {"model": "m"})
    monkeypatch.setattr(S.train_dpo, "train", lambda config: told.update(dpo=config) or {
        "model": "m", "loss": 0.5, "checkpoints": [[1, str(tmp_path / "ck1")], [2, "m"]]})
    monkeypatch.setattr(S, "move_model", lambda r, src, name: None)
    c = configurator.settings(S.DEFAULTS, {"dropout": 0.1, "progress": False})
    assert S.trainer_settings(c, r, "SFT", 16, 12, ("sft", "SFT"))["micro_batch_size"] == 8
    S.run_sft(c, r, "SFT", "M0", "ift.jsonl")
    assert told["sft"]["dropout"] == 0.1 and told["sft"]["micro_batch_size"] == c.micro_batch_size == 8
    assert S.stage_dpo(c, r, 1, "M1") == {"loss": 0.5} and told["dpo"]["micro_batch_size"] == 4
    (tmp_path / "ck1").mkdir()
    monkeypatch.setattr(S, "pick_checkpoint", lambda c, r, t, checkpoints: (checkpoints[0][1], {"picked": 1}))
    monkeypatch.setattr(S.D, "is_rank0", lambda: False)  # (the copy into M2 is rank 0's: not this test's)
    c.dpo_pick_every = 1
    assert S.stage_dpo(c, r, 1, "M1") == {"loss": 0.5, "pick": {"picked": 1}}

    seed = tmp_path / "real"
    write_jsonl(seed / "ift.jsonl", [{"prompt": f"Name fruit {i}.", "response": "Apple."} for i in range(5)])
    write_jsonl(seed / "eft_train.jsonl", [{"prompt": f"Review {i}", "response": "Fine.\nScore: 4"} for i in range(5)])
    write_jsonl(seed / "eft_eval.jsonl", [{"prompt": "Say no.", "responses": ["No.", "Yes."], "ranks": [0, 1]}])
    monkeypatch.setattr(S.D, "is_rank0", lambda: True)
    assert S.stage_seed_data(configurator.settings(S.DEFAULTS, {"seed_data": str(seed)}), r) == {
        "ift": 5, "eft_train": 5, "eft_eval": 1}
    monkeypatch.setattr(S, "run_sft", lambda c, r, name, init, data: None)
    c = configurator.settings(S.DEFAULTS, {"seed_data": str(seed), "meta_judge": True})
    assert S.stage_m1(c, r, "M0") == {"examples": 10}
    prompts = [x["prompt"] for x in read_jsonl(tmp_path / "train" / "ift_eft.jsonl")]
    assert sorted(prompts) == sorted([f"Name fruit {i}." for i in range(5)] + [f"Review {i}" for i in range(5)])
    assert {p[:4] for p in prompts[:5]} == {"Name", "Revi"}  # mixed, not IFT then EFT


def test_m0_pretrains_on_pretrain_docs_listings_and_pretrain_qa_docs_quiz_pages(tmp_path, monkeypatch):
    """stage_pretrain writes M0's text as its settings say: pretrain_docs task
    listings ("Here are some tasks:") and pretrain_qa_docs quiz pages ("Q: ..."),
    and trains on that file (the trainer stubbed)."""
    toy.write_toy(tmp_path / "seed", n_ift=20, n_eft_train=10, n_eft_eval=10, n_test=10)
    trained = {}
    monkeypatch.setattr(S.train_sft, "train", lambda config: trained.update(config) or {"model": "m", "loss": 1.0})
    monkeypatch.setattr(S, "move_model", lambda r, src, name: None)
    r = types.SimpleNamespace(path=lambda *p: str(tmp_path.joinpath(*p)), env=D.Env(), setting=lambda k: "float32")
    c = configurator.settings(S.DEFAULTS, {"pretrain_docs": 3, "pretrain_qa_docs": 5, "progress": False})
    assert S.stage_pretrain(c, r)["docs"] == 8
    docs = read_jsonl(tmp_path / "train" / "pretrain.jsonl")
    assert Counter("list" if d["text"].startswith(toy.DOC_HEAD) else "quiz" if d["text"].startswith("Q: ") else "?"
                   for d in docs) == {"list": 3, "quiz": 5}
    assert trained["data"] == str(tmp_path / "train" / "pretrain.jsonl") and trained["template"] == "text"
