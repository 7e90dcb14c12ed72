"""
The run folder, out/<run>/, and running the self-rewarding loop's stages in it
resumably, on one process or on every rank under torchrun:

    Run                 the folder: its settings (a run never mixes two
                        configurations), which stages are done, metrics.jsonl
    Run.stage(name, fn) run a stage unless it is done, then mark it done
    save_jsonl(...)     a shared output: rank 0 writes it atomically, every rank waits
    generate_sharded()  generation in resumable shards, merged in order
    sub_seed(...)       a seed for one piece of work, from the run's seed and a name
    move_model(...)     put a trained model folder in its place
    fit_micro(...)      a micro-batch that splits each rank's share of a batch evenly

What the stages compute is selfreward.py's business; this file only decides
where their outputs go and when a stage counts as done.
"""
import hashlib
import json
import os
import shutil
import sys
import time

import distributed as D
from data import read_jsonl, write_jsonl, write_text


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2))


class Run:
    """The run folder: its settings, which stages are done, the metrics log.
    settings: what a resumed run must agree on (written to settings.json);
    env: the processes running it (distributed.setup)."""

    def __init__(self, folder, settings, env):
        self.dir = folder
        self.settings = settings
        self.env = env
        self.check_settings()

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def check_settings(self):
        """Refuse to mix a run folder with another configuration."""
        f = self.path("settings.json")
        if os.path.exists(f):
            with open(f) as fh:
                theirs = json.load(fh)
            diff = {k: (theirs.get(k), v) for k, v in self.settings.items() if theirs.get(k) != v}
            if diff:
                shown = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in sorted(diff.items())[:6])
                sys.exit(f"error: {self.dir} was started with other settings ({shown}).\n"
                         f"Run again with the same settings to resume, or start fresh with "
                         f"--run_name=<new name> (or delete {self.dir}).")
        elif D.is_rank0():
            os.makedirs(self.dir, exist_ok=True)
            write_json(f, self.settings)
        D.barrier()

    def done(self, stage):
        return os.path.exists(self.path("done", stage))

    def mark(self, stage, info=None):
        if D.is_rank0():
            write_json(self.path("done", stage), info or {})
        D.barrier()

    def stage(self, name, fn):
        """Run fn() unless stage `name` is done; return its info dict."""
        if self.done(name):
            with open(self.path("done", name)) as f:
                return json.load(f)
        D.log(f"\n=== {name}")
        t0 = time.time()
        try:
            info = fn() or {}
        except (ValueError, FileNotFoundError) as e:  # bad input: say where, not a traceback
            sys.exit(f"error: stage {name}: {e}")
        info["seconds"] = round(time.time() - t0, 1)
        self.mark(name, info)
        self.metric({"stage": name, **info})
        return info

    def metric(self, record):
        if D.is_rank0():
            with open(self.path("metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")


def save_jsonl(path, records):
    """Shared output: rank 0 writes it (atomically), every rank waits for it."""
    if D.is_rank0():
        write_jsonl(path, records)
    D.barrier()


def sub_seed(seed, *parts):
    """A seed for one piece of work, derived from the run's seed and a name."""
    h = hashlib.sha256(repr((seed,) + parts).encode()).hexdigest()
    return int(h[:12], 16)


def generate_sharded(r, name, items, shard_size, work, replay=None):
    """
    Run work(chunk, shard_index) -> list of output records over `items` in
    shards of shard_size, writing name.part-NNNNN.jsonl as each completes and
    skipping the parts already written (replay(records) is called for those,
    to restore any state later shards depend on), then merge them into
    name.jsonl in order. A killed run loses at most the shard it was in.
    """
    parts = []
    for s, start in enumerate(range(0, len(items), shard_size)):
        part = r.path(f"{name}.part-{s:05d}.jsonl")
        if os.path.exists(part):
            if replay:
                replay(read_jsonl(part))
        else:
            save_jsonl(part, work(items[start:start + shard_size], s))
        parts.append(part)
    merged = [rec for p in parts for rec in read_jsonl(p)]
    D.barrier()  # every rank has read the parts before rank 0 removes them
    if D.is_rank0():
        write_jsonl(r.path(f"{name}.jsonl"), merged)
        for p in parts:
            os.remove(p)
    D.barrier()
    return merged


def move_model(r, trained, name):
    """Put a trained model folder at out/<run>/<name>/ (atomic rename)."""
    dest = r.path(name)
    if D.is_rank0():
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.replace(trained, dest)
    D.barrier()
    return dest


def fit_micro(batch_size, want, world):
    """The largest micro-batch <= want that splits each rank's share of a batch evenly."""
    if batch_size % world:
        sys.exit(f"error: a batch of {batch_size} cannot be split over {world} ranks")
    share = batch_size // world
    m = max(1, min(want, share))
    while share % m:
        m -= 1
    return m
