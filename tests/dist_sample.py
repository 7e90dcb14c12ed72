"""
Run by tests/test_sample.py under `torchrun --standalone --nproc_per_node=2`:
load each checkpoint of a job list in a layout (gloo, CPU), sample with
generate(), check that each rank (each tensor-parallel group) sampled its
own share of the prompts, and have rank 0 write every result as JSON.

    torchrun --standalone --nproc_per_node=2 tests/dist_sample.py jobs.json out.json
    (or --nproc_per_node=1: FSDP2 over one rank, "fsdp" jobs only;
     or --nproc_per_node=4 ... jobs.json out.json 2: "tp" jobs in two
     tensor-parallel groups of 2 ranks, dp = 2, each group sampling its share)

jobs.json: [{"ckpt": DIR, "prompts": [[ids], ...], "kwargs": {...},
             "layout": "fsdp" | "tp", "dtype": "float32" | "bfloat16",
             "global_seed": N (optional: rank r seeds torch's generator N + r first)}, ...]
  fsdp  FSDP2 over both ranks (the training layout, distributed.shard): in
        bf16 through MixedPrecisionPolicy(param_dtype=bf16) on fp32 master
        weights, as on GPUs
  tp    tensor parallel over both ranks (tp = 2, one dp group; or tp as the
        third argument says, world / tp groups), each rank streaming only its
        slices from the safetensors file, weights in dtype
"""
import json
import os
import sys

from dataclasses import replace

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import distributed as D  # noqa: E402
from checkpoint import load_model  # noqa: E402
import sample  # noqa: E402
from sample import generate  # noqa: E402

sampled = set()  # the prompt indices this rank's batches held (its share of the prompts: checked below)
generate_batch = sample._generate_batch


def counting_batch(model, decode, cache_class, prompts, prompt_index, *rest):
    sampled.update(prompt_index)
    return generate_batch(model, decode, cache_class, prompts, prompt_index, *rest)


sample._generate_batch = counting_batch

torch.set_num_threads(1)  # two ranks on a small shared CPU
world = int(os.environ["WORLD_SIZE"])  # 2; or 1 (FSDP2 over one rank takes its own path); or 4
jobs_path, out_path = sys.argv[1], sys.argv[2]
tp = int(sys.argv[3]) if len(sys.argv) > 3 else world
env = D.setup("cpu", "float32", threads=1, tp=tp)  # gloo, a flat CPU mesh (FSDP) and a (world / tp, tp) one (tp);
# each job's dtype below
with open(jobs_path) as f:
    jobs = json.load(f)
results = []
for job in jobs:
    dtype = getattr(torch, job.get("dtype", "float32"))
    if job.get("layout", "fsdp") == "tp":
        model = load_model(job["ckpt"], D.for_generation(env), dtype=dtype).eval()
        assert D.tp_size(model) == tp
        assert {p.dtype for p in model.parameters()} == {dtype}  # the weights in the job's dtype, each shard
    else:
        model = load_model(job["ckpt"]).eval()  # fp32 master weights
        D.shard(model, replace(env, dtype=dtype))  # FSDP2; in bf16 it casts each unit's gathered weights
    sampled.clear()
    if "global_seed" in job:  # each rank's global generator in a state of its own (a job with seed None)
        torch.manual_seed(job["global_seed"] + dist.get_rank())
    results.append(generate(model, job["prompts"], progress=False, **job["kwargs"]))
    # each rank (tp: each group, its ranks together) sampled its own share: shares disjoint, all prompts covered
    shares = [None] * world
    dist.all_gather_object(shares, sorted(sampled))
    per_group = tp if job.get("layout", "fsdp") == "tp" else 1
    assert all(shares[r] == shares[r - r % per_group] for r in range(world)), shares
    groups = shares[::per_group]
    assert sorted(i for g in groups for i in g) == list(range(len(job["prompts"]))), shares
if D.is_rank0():
    with open(out_path, "w") as f:
        json.dump(results, f)
del model  # free the sharded model while the process group is alive (see D.teardown)
D.teardown(env)
