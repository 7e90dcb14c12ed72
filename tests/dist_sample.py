"""
Run by tests/test_sample.py under `torchrun --standalone --nproc_per_node=2`:
load each checkpoint of a job list, shard it with FSDP2 over the ranks (gloo,
CPU), sample with generate(), and have rank 0 write every result as JSON.

    torchrun --standalone --nproc_per_node=2 tests/dist_sample.py jobs.json out.json

jobs.json: [{"ckpt": DIR, "prompts": [[ids], ...], "kwargs": {...}}, ...]
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import distributed as D  # noqa: E402
from checkpoint import load_model  # noqa: E402
from sample import generate  # noqa: E402

torch.set_num_threads(1)  # two ranks on a small shared CPU
env = D.setup("cpu", "float32")  # gloo process group and a CPU device mesh; fp32, as the one-process reference
jobs_path, out_path = sys.argv[1], sys.argv[2]
with open(jobs_path) as f:
    jobs = json.load(f)
results = []
for job in jobs:
    model = load_model(job["ckpt"]).eval()
    D.shard(model, env)  # FSDP2: fully_shard per block and at the root
    results.append(generate(model, job["prompts"], progress=False, **job["kwargs"]))
if D.is_rank0():
    with open(out_path, "w") as f:
        json.dump(results, f)
del model  # free the sharded model while the process group is alive (see D.teardown)
D.teardown(env)
