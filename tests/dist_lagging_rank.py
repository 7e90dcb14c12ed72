"""
Run by tests/test_selfreward.py under `torchrun --standalone --nproc_per_node=2`:
the run folder's decisions about files rank 0 writes, with rank 1 lagging
0.2 s after every collective (a GC pause, a busy node). Each rank asking the
file system for itself, rank 1 would see a file rank 0 had written meanwhile
and take the other branch, one collective out of step: the job would hang.

    torchrun --standalone --nproc_per_node=2 tests/dist_lagging_rank.py OUT_ROOT

Checked, in a new run folder: the opening (is it a new run? rank 0 writes
settings.json right after), generate_sharded's shards and stage_parts' parts
(work that calls no collective, so rank 0 writes each file while rank 1
still lags). Each rank prints one line "rank R ok ..." at the end.

    ... tests/dist_lagging_rank.py OUT_ROOT HELD

First, HELD: a folder another job holds (its lock taken), which sole_writer
must refuse on every rank, rank 1 too, which cannot see the lock itself:
each rank prints "rank R refused (exit 2)" or, wrongly, "rank R wrote".
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import configurator  # noqa: E402
import distributed as D  # noqa: E402
import selfreward as S  # noqa: E402
from data import read_jsonl, write_jsonl  # noqa: E402
from run_folder import Run, generate_sharded, stage_parts  # noqa: E402

out_root, held = sys.argv[1:3]
env = D.setup("cpu", "float32", threads=1)
try:
    with D.sole_writer(env, held):
        print(f"rank {env.rank} wrote", flush=True)  # (rank 1 never tries the lock: rank 0 tells it)
except SystemExit as e:
    print(f"rank {env.rank} refused (exit {e.code})", flush=True)
if env.rank == 1:  # lag behind rank 0 after every collective
    for name in ("barrier", "all_sum"):
        real = getattr(D, name)
        setattr(D, name, lambda *a, _real=real: (_real(*a), time.sleep(0.2))[0])
c = configurator.settings(S.DEFAULTS, {"run_name": "lag", "out_root": out_root, "progress": False})
folder = os.path.join(out_root, "lag")
with D.sole_writer(env, folder):
    S.note_stages_redone(c, env, folder)
    r = Run(folder, c, env, S.RUNTIME_SETTINGS, S.DEFAULTS, S.INPUT_SETTINGS)
    merged = generate_sharded(r, "shards", list(range(6)), 2, lambda chunk, s: [{"x": x, "shard": s} for x in chunk])
    part = stage_parts(r, "parts", [r.path(f"part{i}.jsonl") for i in range(3)])
    parts = [part(r.path(f"part{i}.jsonl"), lambda i=i: [{"i": i}], write_jsonl, read_jsonl) for i in range(3)]
    total = D.all_sum(env, 10.0 ** env.rank)[0]  # the ranks still pair their collectives: 1 + 10
print(f"rank {env.rank} ok: {len(merged)} records, {len(parts)} parts, all_sum {total:g}", flush=True)
D.teardown(env)
