"""
Training speed, side by side in one run: forward + backward + AdamW step of
our Transformer against Hugging Face's LlamaForCausalLM on the same shapes,
batch and sequence length, as a ratio of tokens/s; and MFU against the
FLOP/s of a large matmul measured on the same device in the same run (not a
datasheet number, so the MFU is honest on any machine).

    python bench_train.py                      # toy model on CPU
    python bench_train.py --model=llama-1b --batch_size=4 --seq_len=2048   # on a GPU
"""
import time

import torch

from model import Transformer, estimate_mfu, hf_config, preset

# settings for the command line (bench_training() takes them as arguments)
model = "toy"      # preset to benchmark
batch_size = 8     # sequences per step
seq_len = 256      # tokens per sequence
steps = 5          # timed steps of each model = steps * rounds, alternating
rounds = 3         # (so 15 steps each by default)


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


if __name__ == "__main__":
    from configurator import configure
    c = configure(globals())
    r = bench_training(c["model"], c["batch_size"], c["seq_len"], c["steps"], c["rounds"])
    print(f"training {r['model']} ({r['params'] / 1e6:.1f}M params) on {r['device']} {r['dtype']}, "
          f"batch {r['batch_size']} x {r['seq_len']}:")
    print(f"  ours {r['ours_tokens_per_s']:,.0f} tok/s  HF LlamaForCausalLM {r['hf_tokens_per_s']:,.0f} tok/s"
          f"  ratio {r['ratio']:.2f}x")
    print(f"  MFU {100 * r['mfu']:.1f}% (HF {100 * r['hf_mfu']:.1f}%) of a measured matmul peak "
          f"{r['peak_flops'] / 1e9:,.0f} GFLOP/s")
