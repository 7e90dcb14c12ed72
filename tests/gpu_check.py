"""
GPU checks of generation that a CPU cannot make (run by tests/gpu_check.sh,
under `torchrun --standalone --nproc_per_node=1`, on one CUDA device):

  1. FSDP2 with MixedPrecisionPolicy(param_dtype=bf16), as distributed.shard
     runs on GPUs (the setting whose KV cache crashed): generate runs, and
     agrees with one process sampling from bf16 weights.
  2. Host syncs of the decode loop: with check_every=8, CUDA's sync debug mode
     sees about one sync per 8 steps, not one per step.
  3. The KV cache's peak when rows are copied n times and dropped: at most one
     layer's rows above the cache itself (the bytes the tensors requested).

Prints one line per check (a check that raises prints its traceback, and
the others still run) and exits non-zero if one fails.
"""
import copy
import os
import sys
import traceback
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import distributed as D  # noqa: E402
import model as M  # noqa: E402
from sample import KVCache, generate  # noqa: E402

env = D.setup("cuda")
torch.manual_seed(0)
args = M.preset("toy", vocab_size=1024)
prompts = [torch.randint(3, 1024, (n,)).tolist() for n in (5, 40, 17, 90, 3, 64, 33, 8)]


def check_1():
    """FSDP2 bf16 mixed precision generates, and agrees with one process's bf16 weights."""
    whole = M.Transformer(args).cuda().eval()  # fp32 master weights
    reference = generate(copy.deepcopy(whole).to(torch.bfloat16), prompts, 32, temperature=0, progress=False)
    assert env.dtype == torch.bfloat16
    D.shard(whole, env)  # FSDP2, MixedPrecisionPolicy(param_dtype=bf16), as training runs on GPUs
    got = generate(whole, prompts, 32, temperature=0, progress=False)
    agree = sum(a == b for r, g in zip(reference, got) for a, b in zip(r, g))
    print(f"1. FSDP2 bf16 mixed precision on CUDA: ran; {agree} of {32 * len(prompts)} greedy tokens equal "
          f"one process with bf16 weights")
    return agree >= 0.95 * 32 * len(prompts)  # the same bf16 ops on the same weights: equal on the CPU


def check_2():
    """Host syncs per decode step."""
    model = M.Transformer(args).cuda().to(torch.bfloat16).eval()
    generate(model, prompts, 8, temperature=0.7, top_p=0.9, seed=0, progress=False)  # warm up
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generate(model, prompts, 64, temperature=0.7, top_p=0.9, seed=0, progress=False, check_every=8,
                     min_shared_prefix=None)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    # about 14 expected (counted on the CPU by a review): 7 looks at the finished rows (one per 8 of 64
    # steps), 2 .tolist() of the results, 3 copies of the inputs to the GPU and 2 small tensors made
    # there; a look every 4 steps would be about 23, every step 64 or more
    print(f"2. host syncs in generate (8 prompts, 64 new tokens, check_every=8): {syncs} "
          f"(about 14 expected; per-step syncs would be 64 or more)")
    return syncs < 20


def check_3():
    """The cache's peak when copying and dropping rows: at most one layer's rows above the cache."""
    big = M.preset("toy", n_layers=16, vocab_size=1024)
    net = M.Transformer(big).cuda().to(torch.bfloat16).eval()
    cache = KVCache(big, 16, 512, "cuda", capacity=64)
    with torch.no_grad():
        net(torch.randint(3, 1024, (16, 256), device="cuda"), cache=cache, last_only=True)
    cache_bytes = sum(b.numel() * b.element_size() for b in cache.keys + cache.values)
    layer_bytes = cache_bytes // (2 * big.n_layers)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    # bytes the tensors asked for, not the allocator's blocks (a cached block a little
    # larger than a layer's rows, reused, would count whole)
    requested = lambda what: torch.cuda.memory_stats()[f"requested_bytes.all.{what}"]
    before = requested("current")
    cache.repeat_interleave(4)
    cache.select(torch.arange(0, 64, 3, device="cuda"))
    peak = requested("peak") - before
    print(f"3. KV cache {cache_bytes / 2**20:.0f} MiB: copying rows 4x then dropping 2/3 of them peaked "
          f"{peak / 2**20:.1f} MiB above it (one layer's rows: {layer_bytes / 2**20:.1f} MiB)")
    return peak <= 1.1 * layer_bytes


failed = []
for number, check in enumerate((check_1, check_2, check_3), 1):
    try:
        if not check():
            failed.append(number)
    except Exception:  # a crash in one (the first runs FSDP2 over NCCL, new on CUDA) does not hide the others
        traceback.print_exc()
        print(f"{number}. raised (the traceback above)")
        failed.append(number)
    torch.cuda.empty_cache()

D.teardown(env)
sys.exit(f"failed: {failed}" if failed else 0)
