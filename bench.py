"""
Speed, measured side by side against a reference in one run.

    python bench.py sample   # generate() against transformers, cache against
                             # recompute, the judge workload with/without prefix sharing
    python bench.py train    # forward+backward+AdamW against transformers, and MFU
                             # against a large matmul measured in the same run
    python bench.py gpu7b    # batch-1 decode of a Llama 2 7B-shaped model on CUDA
                             # against the memory-bandwidth bound

Each section is a function; `--key=value` after the section name overrides the
settings below. transformers is imported only inside the sections that compare
against it (it is a test-time reference, not a dependency).
"""
import sys
import tempfile
import time

import torch

from checkpoint import hf_config, save_model
from configurator import configure, settings
from model import Transformer, estimate_mfu, preset
from sample import generate

# -----------------------------------------------------------------------------
# Settings
threads = 1  # torch CPU threads (0: torch's default); 1 gives steadier numbers on a shared machine
seed = 0  # weights and prompts
# sample section
sample_model = "toy"  # model preset
sample_compile = False  # also time generate(compile=True) (CPU compile takes minutes)
sample_new_tokens = 128  # tokens generated per prompt
judge_prompts = 32  # judge workload: this many prompts ...
judge_rubric = 300  # ... behind a common rubric of this many tokens ...
judge_n = 3  # ... each judged this many times ...
judge_new_tokens = 32  # ... with responses this long
repeats = 3  # best of this many timed runs
# train section
train_model = "toy"  # preset to benchmark (llama-1b on a GPU)
train_batch_size = 8  # sequences per step
train_seq_len = 256  # tokens per sequence
train_steps = 5  # timed steps of each model = train_steps * train_rounds, alternating
train_rounds = 3  # rounds of train_steps steps
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


def random_prompts(g, count, lo, hi, vocab):
    """`count` prompts of random tokens (ids 3.. avoid unk/bos/eos), lengths in [lo, hi]."""
    lengths = torch.randint(lo, hi + 1, (count,), generator=g).tolist()
    return [torch.randint(3, vocab, (L,), generator=g).tolist() for L in lengths]


def hf_model(model):
    """transformers' LlamaForCausalLM with our model's weights, through our checkpoint format."""
    from transformers import LlamaForCausalLM  # reference only
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, tmp)
        hf = LlamaForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
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


def bench_sample(c):
    """Our generate() against transformers' generate(), the cache against
    recomputing, and the judge workload with and without prefix sharing."""
    torch.manual_seed(c.seed)
    model = Transformer(preset(c.sample_model)).eval()
    args = model.args
    hf = hf_model(model)
    g = torch.Generator().manual_seed(c.seed)
    new = c.sample_new_tokens
    print(f"model {c.sample_model}: {model.num_params() / 1e6:.1f}M params, fp32, "
          f"{torch.get_num_threads()} CPU thread(s); best of {c.repeats} runs")

    # 1. ours against transformers: same weights, prompts, batch, greedy, no EOS stop
    for batch in (8, 64):
        prompts = random_prompts(g, batch, 16, 64, args.vocab_size)
        tokens = batch * new
        variants = [False, True] if c.sample_compile else [False]
        (t_hf, out_hf), *ours = timed([lambda: hf_generate(hf, prompts, new)] + [
            lambda compiled=compiled: generate(model, prompts, new, temperature=0, batch_size=batch,
                                               compile=compiled, progress=False) for compiled in variants], c.repeats)
        print(f"\n[generate] batch {batch}, prompts of 16-64 tokens, {new} new tokens, greedy")
        print(f"  transformers generate  : {tokens / t_hf:7.0f} tok/s  ({t_hf:.2f} s)")
        for compiled, (t, out) in zip(variants, ours):
            name = "ours, compiled decode" if compiled else "ours"
            print(f"  {name:<23}: {tokens / t:7.0f} tok/s  ({t:.2f} s)  {t_hf / t:.2f}x   "
                  f"same tokens: {out == out_hf}")

    # 2. the cache against recomputing the whole sequence at every step
    prompts = random_prompts(g, 2, 16, 64, args.vocab_size)
    tokens = len(prompts) * new

    def recompute():
        with torch.no_grad():
            outs = []
            for p in prompts:  # one prompt at a time: no padding to get wrong
                x = torch.tensor([p])
                for _ in range(new):
                    x = torch.cat([x, model(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
                outs.append(x[0, len(p):].tolist())
            return outs

    (t_re, out_re), (t_kv, out_kv) = timed([recompute, lambda: [
        generate(model, [p], new, temperature=0, progress=False)[0] for p in prompts]], 1)
    print(f"\n[cache] batch 1, prompts of 16-64 tokens, {new} new tokens, greedy")
    print(f"  recompute, no cache    : {tokens / t_re:7.0f} tok/s  ({t_re:.2f} s)")
    print(f"  KV cache               : {tokens / t_kv:7.0f} tok/s  ({t_kv:.2f} s)  {t_re / t_kv:.2f}x   "
          f"same tokens: {out_re == out_kv}")

    # 3. the judge workload: a long rubric in front of every prompt, n samples each
    rubric = random_prompts(g, 1, c.judge_rubric, c.judge_rubric, args.vocab_size)[0]
    judge = [rubric + p for p in random_prompts(g, c.judge_prompts, 20, 60, args.vocab_size)]
    kw = dict(temperature=0.7, top_p=0.9, n=c.judge_n, seed=1, batch_size=c.judge_prompts * c.judge_n,
              progress=False)
    (t_plain, out_plain), (t_shared, out_shared) = timed([
        lambda: generate(model, judge, c.judge_new_tokens, min_shared_prefix=None, **kw),
        lambda: generate(model, judge, c.judge_new_tokens, **kw)], c.repeats)
    tokens = c.judge_prompts * c.judge_n * c.judge_new_tokens
    print(f"\n[judge] {c.judge_prompts} prompts = {c.judge_rubric}-token rubric + 20-60 tokens, "
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
        tps = new / (time.perf_counter() - t0)
        print(f"llama2-7b bf16, batch 1, 128-token prompt + {new} new, compile={compiled}: "
              f"{tps:.1f} tok/s; bandwidth bound {bound:.1f} tok/s ({weight_bytes / 1e9:.1f} GB "
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


def _step_fn(model, hf, tokens):
    """One training step: the mean next-token loss, backward, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        if hf:
            loss = model(input_ids=tokens, labels=tokens).loss  # HF shifts labels inside
        else:
            _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def bench_training(model="toy", batch_size=8, seq_len=256, steps=5, rounds=3, device=None, dtype=None):
    """Returns {"ours_tokens_per_s", "hf_tokens_per_s", "ratio", "mfu", "peak_flops", ...}:
    tokens/s from the median step time of each, ratio the median over
    steps * rounds pairs of adjacent steps of HF time / our time."""
    from transformers import LlamaConfig, LlamaForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    args = preset(model, max_seq_len=max(seq_len + 1, preset(model).max_seq_len))
    torch.manual_seed(0)
    ours = Transformer(args).to(device, dtype).train()
    cfg = hf_config(args, dtype)
    cfg.pop("torch_dtype")
    hf = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="sdpa")).to(device, dtype).train()
    assert sum(p.numel() for p in hf.parameters()) == ours.num_params()
    tokens = torch.randint(0, args.vocab_size, (batch_size, seq_len + 1), device=device)
    runs = {"ours": _step_fn(ours, False, tokens), "hf": _step_fn(hf, True, tokens[:, :-1])}
    for fn in runs.values():
        fn()  # warm up: allocator, kernels
    # Alternate single steps, ours then HF, and compare the medians: on a
    # shared machine a slow spell then hits both sides of a pair alike.
    times = {k: [] for k in runs}
    for _ in range(steps * rounds):
        for k, fn in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    ratios = sorted(h / o for o, h in zip(times["ours"], times["hf"]))
    tps = {k: batch_size * seq_len / sorted(t)[len(t) // 2] for k, t in times.items()}
    peak = matmul_flops(device, dtype)
    return {"model": model, "device": device, "dtype": str(dtype).removeprefix("torch."),
            "batch_size": batch_size, "seq_len": seq_len, "params": ours.num_params(),
            "ours_tokens_per_s": tps["ours"], "hf_tokens_per_s": tps["hf"], "ratio": ratios[len(ratios) // 2],
            "peak_flops": peak, "mfu": estimate_mfu(args, ours.num_params(), tps["ours"], seq_len, peak),
            "hf_mfu": estimate_mfu(args, ours.num_params(), tps["hf"], seq_len, peak)}


def bench_train(c):
    r = bench_training(c.train_model, c.train_batch_size, c.train_seq_len, c.train_steps, c.train_rounds)
    print(f"training {r['model']} ({r['params'] / 1e6:.1f}M params) on {r['device']} {r['dtype']}, "
          f"batch {r['batch_size']} x {r['seq_len']}:")
    print(f"  ours {r['ours_tokens_per_s']:,.0f} tok/s  HF LlamaForCausalLM {r['hf_tokens_per_s']:,.0f} tok/s"
          f"  ratio {r['ratio']:.2f}x")
    print(f"  MFU {100 * r['mfu']:.1f}% (HF {100 * r['hf_mfu']:.1f}%) of a measured matmul peak "
          f"{r['peak_flops'] / 1e9:,.0f} GFLOP/s")


SECTIONS = {"sample": bench_sample, "train": bench_train, "gpu7b": bench_gpu7b}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in SECTIONS:
        sys.exit(f"usage: python bench.py {{{'|'.join(SECTIONS)}}} [--key=value ...]")
    section = sys.argv[1]
    c = settings(DEFAULTS, configure(dict(DEFAULTS, __file__=__file__, __doc__=__doc__), sys.argv[2:]))
    if c.threads:
        torch.set_num_threads(c.threads)
    SECTIONS[section](c)
