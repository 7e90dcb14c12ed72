"""
Speed, measured side by side against a reference in one run.

    python bench.py sample   # generate() against transformers in fp32 and bf16, our
                             # bf16 against our fp32 (toy and a 4x larger preset);
                             # cache against recompute; the judge workload
                             # with/without prefix sharing
    python bench.py train    # forward+backward+AdamW: ours bf16 against fp32, ours
                             # against transformers in each dtype, and MFU against
                             # a large matmul of that dtype measured in the same run
    python bench.py gpu7b    # batch-1 decode of a Llama 2 7B-shaped model on CUDA
                             # against the memory-bandwidth bound
    torchrun --standalone --nproc_per_node=2 bench.py comm
                             # collectives and bytes of one decode step, tensor
                             # parallel against FSDP2, against their formulas

Each section is a function; `--key=value` after the section name overrides the
settings below. transformers is imported only inside the sections that compare
against it (it is a test-time reference, not a dependency).
"""
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace

import torch

import distributed as D
import validate
from checkpoint import hf_config, save_model
from configurator import configure, fail, settings
from model import PRESETS, Transformer, estimate_mfu, preset
from sample import generate

# -----------------------------------------------------------------------------
# Settings
threads = 0  # CPU threads; 0 = this process's cores (or OMP_NUM_THREADS), as the scripts pick
seed = 0  # weights and prompts
bf16 = "auto"  # time bf16 too: 'auto' = on a GPU or a CPU with fast bf16 matmuls, AMX, ARM BF16 or AMD's
               # AVX512-BF16 (elsewhere it is slower than fp32: emulated without AVX512-BF16, the toy train
               # section took 14 min; a dtype the scripts' dtype='auto' never picks there) | 'always' | 'never'
               # | 'only' (bf16 alone, no fp32 runs: the GPU check's MFU, in half the time and memory)
# sample section
sample_models = "toy,toy-large"  # model presets (toy-large: ~5x the toy's parameters, 24.7M against 5.0M)
sample_new_tokens = 128  # tokens generated per prompt
judge_prompts = 32  # judge workload: this many prompts ...
judge_rubric = 300  # ... behind a common rubric of this many tokens ...
judge_n = 3  # ... each judged this many times ...
judge_new_tokens = 32  # ... each judgment this many new tokens
repeats = 3  # best of this many timed runs
sample_compile = False  # also time generate(compile=True) (Inductor; its first call, the compiling, timed apart)
# train section
train_models = "toy,toy-large"  # presets to benchmark (toy-large: ~5x the toy's parameters; llama-1b on a GPU)
train_batch_size = 8  # sequences per step
train_seq_len = 256  # tokens per sequence
train_steps = 5  # timed steps of each model and dtype = train_steps * train_rounds, taken in turn
train_rounds = 3  # (the two multiply: 15 steps by default)
# comm section (under torchrun)
comm_model = "toy"  # model preset
comm_batch = 8  # rows decoded together
comm_dtype = "float32"  # weights (tp) / FSDP2's param_dtype: float32 | bfloat16
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}


def timed(fns, repeats):
    """[(best wall time over `repeats` runs after one warm-up, the last result)]
    for each function; they take turns, so that a machine whose load drifts
    slows them alike."""
    results = [fn() for fn in fns]
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            results[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return list(zip(best, results))


def bench_dtypes(c, device="cpu"):
    """The dtypes a section compares: float32, and bfloat16 where c.bf16 asks
    for it ('only': bfloat16 alone)."""
    if c.bf16 == "only":
        return ["bfloat16"]
    native = device.startswith("cuda") or D.cpu_has_bf16()
    if c.bf16 == "auto" and not native:
        print("bf16 skipped: this CPU has no fast bf16 matmuls (AMX, ARM BF16, AMD's AVX512-BF16): bf16 is slower "
              "than fp32 here and the scripts never pick it; --bf16=always times it anyway")
    wanted = native if c.bf16 == "auto" else c.bf16 == "always"
    return ["float32", "bfloat16"] if wanted else ["float32"]


PROMPT_TOKENS = (16, 64)  # the sample rows' prompt lengths, drawn in this range
JUDGE_TOKENS = (20, 60)   # the judge workload's question and response after the shared rubric


def random_prompts(g, count, lo, hi, vocab):
    """`count` prompts of random tokens (ids 3.. avoid unk/bos/eos), lengths in [lo, hi]."""
    lengths = torch.randint(lo, hi + 1, (count,), generator=g).tolist()
    return [torch.randint(3, vocab, (L,), generator=g).tolist() for L in lengths]


def hf_model(model, dtype=torch.float32):
    """transformers' LlamaForCausalLM with our model's weights, through our checkpoint format."""
    from transformers import LlamaForCausalLM  # reference only
    from transformers.utils import logging
    logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, tmp)
        hf = LlamaForCausalLM.from_pretrained(tmp, dtype=dtype).eval()
    hf.generation_config.eos_token_id = None  # like ours without eos_id: never stop early
    return hf


def hf_generate(hf, prompts, new):
    """Greedy transformers generate (its default dynamic KV cache) on a left-padded batch."""
    T = max(map(len, prompts))
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    att = torch.zeros(len(prompts), T, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, T - len(p):], att[r, T - len(p):] = torch.tensor(p), 1
    with torch.no_grad():
        y = hf.generate(input_ids=ids, attention_mask=att, max_new_tokens=new, do_sample=False,
                        pad_token_id=0, use_cache=True)
    return y[:, T:].tolist()


def agreement(a, b):
    """Share of tokens two sets of greedy completions agree on, each row counted
    up to its first difference (after one differing token the rest follow
    other contexts, so they are counted as differing)."""
    same = total = 0
    for x, y in zip(a, b):
        n = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        same, total = same + n, total + max(len(x), len(y))
    return same / max(total, 1)


def agreement_text(share):
    """agreement() as printed: "all" only where every token agrees; else the
    share rounded down (99.96% is 99.9%, never a 100.0% that hides a difference)."""
    return "all" if share == 1 else f"{math.floor(share * 1000) / 10:.1f}%"


def bench_sample(c):
    """Our generate() against transformers' generate() in fp32 and in bf16
    (weights cast to bf16, as sample.py and the loop sample), our bf16 against
    our fp32; then the cache against recomputing, and the judge workload with
    and without prefix sharing."""
    new = c.sample_new_tokens
    print(f"{torch.get_num_threads()} CPU thread(s); best of {c.repeats} runs; prompts of "
          f"{PROMPT_TOKENS[0]}-{PROMPT_TOKENS[1]} tokens, "
          f"{new} new tokens, greedy, no EOS stop")

    # 1. ours against transformers, and bf16 against fp32: same weights, prompts, batch
    dtypes = bench_dtypes(c)
    print("\n[generate] tokens/s")
    print(f"  {'model':<10} {'batch':>5} {'dtype':<9} {'transformers':>12} {'ours':>8} {'ours/HF':>8} "
          f"{'same tokens':>11}   ours bf16/fp32")
    for name in c.sample_models.split(","):
        torch.manual_seed(c.seed)
        models = {"float32": Transformer(preset(name)).eval()}
        if "bfloat16" in dtypes:
            models["bfloat16"] = copy.deepcopy(models["float32"]).to(torch.bfloat16)
        models = {dt: m for dt, m in models.items() if dt in dtypes}  # (bf16='only': no fp32 runs)
        hfs = {dt: hf_model(m, getattr(torch, dt)) for dt, m in models.items()}
        g = torch.Generator().manual_seed(c.seed)
        for batch in (8, 64):
            prompts = random_prompts(g, batch, *PROMPT_TOKENS, preset(name).vocab_size)
            # every dtype's runs, ours and transformers', take turns in one timing: the bf16/fp32
            # ratio is of rates measured side by side too
            fns, t_compile = [], {}
            for dt, model in models.items():
                ours = lambda compiled=False, model=model: generate(model, prompts, new, temperature=0,
                                                                    batch_size=batch, progress=False,
                                                                    compile=compiled)
                fns += [lambda hf=hfs[dt]: hf_generate(hf, prompts, new), ours]
                if c.sample_compile:  # compile first, outside the timed turns
                    t0 = time.perf_counter()
                    ours(compiled=True)
                    t_compile[dt] = time.perf_counter() - t0
                    fns.append(lambda ours=ours: ours(compiled=True))
            runs, per_dtype = timed(fns, c.repeats), len(fns) // len(models)
            ours_tps = {}
            for k, dt in enumerate(models):
                (t_hf, out_hf), (t, out), *compiled_runs = runs[k * per_dtype:(k + 1) * per_dtype]
                ours_tps[dt] = batch * new / t
                ratio = f"{ours_tps['bfloat16'] / ours_tps['float32']:.2f}x" if len(ours_tps) == 2 else ""
                print(f"  {name:<10} {batch:>5} {dt:<9} {batch * new / t_hf:>12,.0f} {ours_tps[dt]:>8,.0f} "
                      f"{t_hf / t:>7.2f}x {agreement_text(agreement(out, out_hf)):>11}   {ratio}")
                for t_c, out_c in compiled_runs:
                    print(f"  {'':<10} {'':>5} {'compiled':<9} {'':>12} {batch * new / t_c:>8,.0f} "
                          f"{t_hf / t_c:>7.2f}x {agreement_text(agreement(out_c, out_hf)):>11}   first call (compiling) "
                          f"{t_compile[dt]:.0f} s")

    # the rest in fp32, where the cache and the shared prefix must give exactly
    # the tokens of recomputing and of no sharing (in bf16 each rounds in its
    # own order, and a random model's near ties then flip)
    dtype = torch.float32
    torch.manual_seed(c.seed)
    model = Transformer(preset(c.sample_models.split(",")[0])).eval()
    args = model.args
    g = torch.Generator().manual_seed(c.seed)

    # 2. the cache against recomputing the whole sequence at every step
    prompts = random_prompts(g, 2, *PROMPT_TOKENS, args.vocab_size)
    tokens = len(prompts) * new

    def recompute():
        with torch.inference_mode():  # (as generate() runs: the ratio is the cache's alone)
            outs = []
            for p in prompts:  # one prompt at a time: no padding to get wrong
                x = torch.tensor([p])
                for _ in range(new):  # (the last position's logits only, as the cached path computes)
                    x = torch.cat([x, model(x, last_only=True)[:, -1].argmax(-1, keepdim=True)], dim=1)
                outs.append(x[0, len(p):].tolist())
            return outs

    (t_re, out_re), (t_kv, out_kv) = timed([recompute, lambda: [
        generate(model, [p], new, temperature=0, progress=False)[0] for p in prompts]], 1)
    print(f"\n[cache] {c.sample_models.split(',')[0]}, {str(dtype).removeprefix('torch.')}, batch 1, "
          f"one timed run each (the recompute loop is slow)")
    print(f"  recompute, no cache    : {tokens / t_re:7.0f} tok/s  ({t_re:.2f} s)")
    print(f"  KV cache               : {tokens / t_kv:7.0f} tok/s  ({t_kv:.2f} s)  {t_re / t_kv:.2f}x   "
          f"same tokens: {agreement_text(agreement(out_kv, out_re))}")

    # 3. the judge workload: a long rubric in front of every prompt, n samples each
    rubric = random_prompts(g, 1, c.judge_rubric, c.judge_rubric, args.vocab_size)[0]
    judge = [rubric + p for p in random_prompts(g, c.judge_prompts, *JUDGE_TOKENS, args.vocab_size)]
    kw = dict(temperature=0.7, top_p=0.9, n=c.judge_n, seed=1, batch_size=c.judge_prompts * c.judge_n,
              progress=False)
    (t_plain, out_plain), (t_shared, out_shared) = timed([
        lambda: generate(model, judge, c.judge_new_tokens, min_shared_prefix=None, **kw),
        lambda: generate(model, judge, c.judge_new_tokens, **kw)], c.repeats)
    tokens = c.judge_prompts * c.judge_n * c.judge_new_tokens
    print(f"\n[judge] {c.judge_prompts} prompts = {c.judge_rubric}-token rubric + "
          f"{JUDGE_TOKENS[0]}-{JUDGE_TOKENS[1]} tokens, "
          f"n={c.judge_n}, {c.judge_new_tokens} new tokens, T=0.7, top-p 0.9, one batch")
    print(f"  no prefix sharing      : {tokens / t_plain:7.0f} tok/s  ({t_plain:.2f} s)")
    print(f"  prefix prefilled once  : {tokens / t_shared:7.0f} tok/s  ({t_shared:.2f} s)  "
          f"{t_plain / t_shared:.2f}x   same samples: {out_plain == out_shared}")


def bench_gpu7b(c):
    """Batch-1 decode of a Llama 2 7B-shaped model (random bf16 weights) on CUDA,
    against the bound set by reading every weight once per token."""
    if not torch.cuda.is_available():
        sys.exit("gpu7b needs a CUDA device")
    dev = "cuda"
    torch.manual_seed(c.seed)
    with torch.device("meta"):
        model = Transformer(preset("llama2-7b")).to(torch.bfloat16)  # shapes only, no memory
    model.to_empty(device=dev)  # bf16 straight away: never a full fp32 copy
    with torch.no_grad():
        for p in model.parameters():  # random weights: speed does not depend on their values
            p.normal_(0.0, 0.02)
    model.eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    # device-to-device copy bandwidth: a copy reads and writes each byte
    buf = torch.empty(2 * 2**30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(buf)
    dst.copy_(buf)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        dst.copy_(buf)
    torch.cuda.synchronize()
    bandwidth = 2 * buf.numel() * 10 / (time.perf_counter() - t0)
    del buf, dst
    bound = bandwidth / weight_bytes  # tokens/s if a step only read the weights once

    prompt = torch.randint(3, 32000, (1, 128)).tolist()
    new = 256
    for compiled in (False, True):
        run = lambda: generate(model, prompt, new, temperature=0, progress=False, compile=compiled)
        run()  # warm-up (and compilation)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        tps = new / (time.perf_counter() - t0)  # (the 128-token prompt's prefill pass included)
        print(f"llama2-7b bf16, batch 1, 128-token prompt + {new} new, compile={compiled}: "
              f"{tps:.1f} new tok/s, the prefill's time included, one timed run; "
              f"bandwidth bound {bound:.1f} tok/s ({weight_bytes / 1e9:.1f} GB "
              f"of weights at {bandwidth / 1e9:.0f} GB/s): {tps / bound:.0%} of it")


# -----------------------------------------------------------------------------
# Training: forward + backward + AdamW step of our Transformer against Hugging
# Face's LlamaForCausalLM on the same shapes, batch and sequence length, as a
# ratio of tokens/s; and MFU against the FLOP/s of a large matmul measured on
# the same device in the same run (not a datasheet number).

def matmul_flops(device, dtype, n=None, repeats=5):
    """FLOP/s of an n x n @ n x n matmul (2 n^3 FLOPs), the best of `repeats`."""
    n = n or (8192 if device.startswith("cuda") else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _step_fn(model, hf, tokens, dtype):
    """One training step as the trainers take it: fp32 weights, matmuls in
    `dtype` (autocast when bf16), the mean next-token loss, backward, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)  # as training.optimizer_and_resume
    device = tokens.device.type
    cast = torch.autocast(device, dtype=dtype) if dtype != torch.float32 else nullcontext()

    def step():
        with cast:
            if hf:
                loss = model(input_ids=tokens, labels=tokens).loss  # HF shifts labels inside (fp32 loss)
            else:
                _, loss = model(tokens[:, :-1], tokens[:, 1:])  # fp32 log-softmax inside
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def bench_training(model, batch_size, seq_len, steps, rounds, device, dtypes):
    """Ours and transformers' LlamaForCausalLM, in each dtype, one training step
    each in turn (on a shared machine a slow spell then hits all alike).
    Returns {"runs": {(impl, dtype): tokens/s from the median step},
    "ratios": {name: median over the timed steps of each step's time ratio,
    the reference's time over the other's (ours/HF: HF's over ours)}, "mfu"...}."""
    from transformers import LlamaConfig, LlamaForCausalLM

    args = preset(model, max_seq_len=max(seq_len + 1, preset(model).max_seq_len))
    tokens = torch.randint(0, args.vocab_size, (batch_size, seq_len + 1), device=device,
                           generator=torch.Generator(device).manual_seed(0))
    runs, n_params = {}, 0
    for dt in dtypes:
        torch.manual_seed(0)
        cfg = hf_config(args, torch.float32)
        cfg.pop("torch_dtype")
        with torch.device(device):  # initialised where they train (on the CPU, 1.1B parameters take 20 s each)
            ours = Transformer(args).train()  # fp32 master weights, as the trainers keep them
            hf = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="sdpa")).train()
        assert sum(p.numel() for p in hf.parameters()) == ours.num_params()
        n_params = ours.num_params()
        runs[("ours", dt)] = _step_fn(ours, False, tokens, getattr(torch, dt))
        runs[("hf", dt)] = _step_fn(hf, True, tokens[:, :-1], getattr(torch, dt))
    for fn in runs.values():
        fn()  # warm up: allocator, kernels
    times = {k: [] for k in runs}
    for _ in range(steps * rounds):
        for k, fn in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    median = statistics.median  # (of an even count, the mean of the two middle values)
    tps = {k: batch_size * seq_len / median(t) for k, t in times.items()}
    ratio = lambda reference, other: median([r / o for r, o in zip(times[reference], times[other])])
    ratios = {f"ours/HF {dt}": ratio(("hf", dt), ("ours", dt)) for dt in dtypes}
    if "bfloat16" in dtypes and "float32" in dtypes:
        ratios["ours bf16/fp32"] = ratio(("ours", "float32"), ("ours", "bfloat16"))
        ratios["HF bf16/fp32"] = ratio(("hf", "float32"), ("hf", "bfloat16"))
    peaks = {dt: matmul_flops(device, getattr(torch, dt)) for dt in dtypes}
    mfu = {k: estimate_mfu(args, n_params, t, seq_len, peaks[k[1]]) for k, t in tps.items()}
    return {"model": model, "device": device, "batch_size": batch_size, "seq_len": seq_len, "params": n_params,
            "runs": tps, "ratios": ratios, "peak_flops": peaks, "mfu": mfu}


def bench_train(c):
    """Training, side by side in one run per model: ours in bf16 against ours
    in fp32, and ours against transformers in each dtype."""
    print(f"{torch.get_num_threads()} CPU thread(s); forward + backward + AdamW, fp32 master weights, "
          f"bf16 = autocast; median of {c.train_steps * c.train_rounds} alternating steps")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = bench_dtypes(c, device)
    for name in c.train_models.split(","):
        r = bench_training(name, c.train_batch_size, c.train_seq_len, c.train_steps, c.train_rounds, device, dtypes)
        print(f"\n[train] {name} ({r['params'] / 1e6:.1f}M params) on {r['device']}, "
              f"batch {r['batch_size']} x {r['seq_len']}")
        for (impl, dt), tps in r["runs"].items():
            who = "ours" if impl == "ours" else "transformers"
            print(f"  {who:<12} {dt:<9} {tps:>9,.0f} tok/s   MFU {100 * r['mfu'][impl, dt]:4.1f}% of a measured "
                  f"{dt} matmul ({r['peak_flops'][dt] / 1e9:,.0f} GFLOP/s)")
        print("  " + "   ".join(f"{k} {v:.2f}x" for k, v in r["ratios"].items()))


# -----------------------------------------------------------------------------
# Communication of one decode step: tensor parallel (generation's layout)
# against FSDP2 (training's), counted with CommDebugMode

def comm_formulas(args, batch, a):
    """Collectives and bytes (on each rank, of each collective's result) of one
    decode step of `batch` rows, dtype of a bytes:
      tensor parallel  2 all-reduces a layer (after wo and w2: partial sums of
                       (batch, dim)), one after the vocabulary-split embedding,
                       one all-gather of the logits (batch, vocab)
      FSDP2            an all-gather of every block's weights every step,
                       whatever the batch (the root's embedding, norm and output
                       stay gathered after the first forward: no backward comes
                       to reshard them)
    Per decoded token: divide by batch."""
    h, L, V = args.dim, args.n_layers, args.vocab_size
    block = args.block_params()
    return {"tp": {"collectives": 2 * L + 2, "bytes": (2 * L + 1) * batch * h * a + batch * V * a},
            "fsdp": {"collectives": L, "bytes": L * block * a}}


def bench_comm(c):
    """One decode step of the same model, tensor parallel over all ranks and
    FSDP2-sharded, under CommDebugMode: collectives and bytes against
    comm_formulas, then the formulas for Llama 2 70B in bf16, batch 64 (the
    tensor-parallel bytes do not depend on tp; each all-reduce moves about
    2 (tp-1)/tp of them over the links, an all-gather (ranks-1)/ranks)."""
    import torch.distributed as dist
    from torch.distributed._functional_collectives import AsyncCollectiveTensor
    from torch.distributed.tensor.debug import CommDebugMode

    from checkpoint import load_tensors
    from sample import KVCache

    class CommBytes(CommDebugMode):
        """CommDebugMode's counts, plus the bytes of each collective's result on this rank."""
        def __init__(self):
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counted = self.get_total_counts()
            out = super().__torch_dispatch__(func, types, args, kwargs)
            if self.get_total_counts() > counted:  # a collective, as CommDebugMode counts them
                # functional collectives return their result; in-place c10d ops write their first argument
                result = out if "_c10d_functional" in str(func._overloadpacket) else args[0]
                for t in result if isinstance(result, (list, tuple)) else [result]:
                    t = t.elem if isinstance(t, AsyncCollectiveTensor) else t
                    if isinstance(t, torch.Tensor):
                        self.bytes += t.numel() * t.element_size()
            return out

    if "RANK" not in os.environ:
        sys.exit("comm runs under torchrun: torchrun --standalone --nproc_per_node=2 bench.py comm")
    world = int(os.environ["WORLD_SIZE"])
    env = D.setup("cpu", "float32", tp=world)
    dtype = getattr(torch, c.comm_dtype)
    args = preset(c.comm_model)
    tokens = torch.randint(3, args.vocab_size, (c.comm_batch, 16), generator=torch.Generator().manual_seed(c.seed))

    def weights(model):  # the same random weights in any layout: each rank takes its slice
        init = model.initial_weights(torch.Generator().manual_seed(c.seed))
        load_tensors(model, ((n, D.local_part(full, model.get_parameter(n))) for n, full in init), "random init")
        return model.eval()

    tp_model = weights(D.empty_model(args, D.for_generation(env), dtype))
    fsdp_model = weights(D.empty_model(args, D.Env()))  # whole fp32 master weights, then FSDP2 as training does
    D.shard(fsdp_model, replace(env, dtype=dtype))

    measured = {}
    with torch.no_grad():
        for name, model in (("tp", tp_model), ("fsdp", fsdp_model)):
            cache = KVCache(args, c.comm_batch, 32, "cpu")
            logits = model(tokens, cache=cache, last_only=True)  # prefill
            for step in range(2):  # the second step is the steady state
                with CommBytes() as comm:
                    logits = model(logits[:, -1:].argmax(-1), cache=cache)
            measured[name] = {"collectives": comm.get_total_counts(), "bytes": comm.bytes,
                              "ops": {str(k).split(".")[-1]: v for k, v in comm.get_comm_counts().items()}}
    a = dtype.itemsize
    expected = comm_formulas(args, c.comm_batch, a)
    big = comm_formulas(preset("llama2-70b"), 64, 2)
    D.log(f"one decode step of {c.comm_model}, batch {c.comm_batch}, {c.comm_dtype}, {world} ranks "
          f"(bytes: each collective's result on one rank)")
    for name in ("tp", "fsdp"):
        m, e = measured[name], expected[name]
        D.log(f"  {name:5s} measured {m['collectives']:4d} collectives {m['bytes'] / 1e3:10.1f} kB "
              f"({m['bytes'] / c.comm_batch / 1e3:.1f} kB per token) {m['ops']}; "
              f"formula {e['collectives']} collectives {e['bytes'] / 1e3:.1f} kB")
    D.log(f"llama2-70b bf16, batch 64: tp 8 {big['tp']['collectives']} collectives, "
          f"{big['tp']['bytes'] / 1e6:.0f} MB a step ({big['tp']['bytes'] / 64 / 1e6:.2f} MB per token); "
          f"FSDP {big['fsdp']['collectives']} all-gathers, {big['fsdp']['bytes'] / 1e9:.0f} GB a step "
          f"({big['fsdp']['bytes'] / 64 / 1e9:.2f} GB per token)")
    D.log("result: " + json.dumps({"measured": measured, "expected": expected}))
    del tp_model, fsdp_model
    dist.barrier()
    D.teardown(env)


SECTIONS = {"sample": bench_sample, "train": bench_train, "gpu7b": bench_gpu7b, "comm": bench_comm}


def problems(c):
    """What is wrong with the settings, found before minutes of timing."""
    p = validate.Problems(c)
    if not p.no_none():  # --key=None passes the configurator; nothing below can compare it
        return p.found
    for setting, names in (("sample_models", c.sample_models.split(",")),
                           ("train_models", c.train_models.split(",")), ("comm_model", [c.comm_model])):  # one
        for name in names:
            if name not in PRESETS:
                p.add(f"{setting}: no preset {name!r} (presets: {', '.join(PRESETS)})")
    p.require(c.bf16 in ("auto", "always", "never", "only"), "bf16", "must be 'auto', 'always', 'never' or 'only'")
    p.require(c.comm_dtype in ("float32", "bfloat16"), "comm_dtype", "must be 'float32' or 'bfloat16'")
    p.at_least("threads", 0)
    for setting in ("repeats", "sample_new_tokens", "judge_prompts", "judge_rubric", "judge_n", "judge_new_tokens",
                    "train_batch_size", "train_seq_len", "train_steps", "train_rounds", "comm_batch"):
        p.at_least(setting, 1)
    # each row must fit the model's context: generate() would stop it short and the tok/s would count
    # tokens never made (the longest prompt; the judge's: the rubric and the longest question after it)
    contexts = {name: preset(name).max_seq_len for name in c.sample_models.split(",") if name in PRESETS}
    if contexts:
        name = min(contexts, key=contexts.get)
        p.require(PROMPT_TOKENS[1] + c.sample_new_tokens <= contexts[name], "sample_new_tokens",
                  f"{PROMPT_TOKENS[1]} prompt tokens and these must fit {name}'s context of {contexts[name]}")
    first = c.sample_models.split(",")[0]
    if first in PRESETS:  # the cache and judge parts time the first model
        p.require(c.judge_rubric + JUDGE_TOKENS[1] + c.judge_new_tokens <= contexts[first], "judge_rubric",
                  f"with {JUDGE_TOKENS[1]} prompt tokens and judge_new_tokens it must fit {first}'s context of "
                  f"{contexts[first]}")
    return p.found


if __name__ == "__main__":
    usage = f"python bench.py {{{'|'.join(SECTIONS)}}} [--key=value ...]"
    if {"-h", "--help"} & set(sys.argv[1:]):
        configure(dict(DEFAULTS, __file__=__file__, __doc__=__doc__), ["--help"])  # the sections, then the settings
    if len(sys.argv) < 2 or sys.argv[1] not in SECTIONS:
        named = f"no section {sys.argv[1]!r}" if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else \
            "name a section first"
        fail(f"{named}: {usage}")
    section = sys.argv[1]
    c = settings(DEFAULTS, configure(dict(DEFAULTS, __file__=__file__, __doc__=__doc__), sys.argv[2:]))
    found = problems(c)
    if found:
        fail("; ".join(found))
    torch.set_num_threads(D.cpu_threads(c.threads))
    SECTIONS[section](c)
