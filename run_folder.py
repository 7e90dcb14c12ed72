"""
The run folder, out/<run>/, and running the self-rewarding loop's stages in it
resumably, on one process or on every rank under torchrun:

    Run                 the folder: its settings, which stages are done and what
                        each was made from, metrics.jsonl
    Run.stage(name, fn, uses, files, after)
                        run a stage unless it is done and made from the same
                        settings, input files and upstream stages; then mark it done
    save_jsonl(...)     a shared output: rank 0 writes it atomically, every rank waits
    generate_sharded()  generation in resumable shards, merged in order
    stage_parts(...)    a stage's outputs made one at a time, each kept through an interruption
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
import time

import distributed as D
from data import file_fingerprint, fingerprint, read_jsonl, write_jsonl, write_text
from training import remove_states


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2))


class Run:
    """The run folder: which stages are done and what each was made from, the
    metrics log. c: the run's settings, already validated (validate.py);
    env: the processes running it (distributed.setup); defaults: every
    setting's default (see stage(): a setting added to the code later);
    inputs: the settings that name input files or folders, each with its
    values that are not paths ({"seed_data": ("toy",), ...}): where a stage
    lists such a file, its contents count, not how its path is written.
    dry: say which stages would run, and why, but run and write nothing."""

    def __init__(self, folder, c, env, runtime_only=(), defaults=None, inputs=None, dry=False, quiet=False):
        self.dir = folder
        self.c = c
        self.env = env
        self.defaults = defaults or {}
        self.inputs = inputs or {}
        self.dry = dry
        self.quiet = quiet  # a dry pass that says nothing: its would_run list is read instead
        self.would_run = []  # a dry pass's stages to run: (name, why it runs again, "" for a stage never done)
        # for people and the report: the settings of the latest command (runtime-only ones left out)
        self.settings = {k: v for k, v in vars(c).items() if k not in runtime_only}
        self.fingerprints = {}  # stage -> fingerprint of what it is made from, for the stages after it
        self.current = None  # the stage running now (for Ctrl-C's message and generation shards)
        self.reused = []  # the stages found done, made from the same inputs (said at the end of a run)
        self.made = []  # the stages this command ran
        self.part_markers = {}  # stage -> the parts markers (stage_parts) it wrote: removed once it is done
        self.remakers = {}  # done stages with outputs: made again if one is gone when a stage that reads it runs
        if D.is_rank0() and not dry:
            write_json(self.path("settings.json"), self.settings)
        D.barrier()

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def record(self, stage):
        """A done stage's record (its info and what it was made from), or None."""
        if not os.path.exists(self.path("done", stage)):
            return None
        with open(self.path("done", stage)) as f:
            return json.load(f)

    def given(self, stage, folder):
        """A stage's output made elsewhere (init_from's checkpoint as M0): its
        files stand for it in the fingerprints of the stages after it."""
        self.fingerprints[stage] = fingerprint(stage, file_fingerprint(folder))

    def stage(self, name, fn, uses=(), files=(), after=(), temporary=(), outputs=()):
        """Run fn() unless stage `name` is done AND was made from what it would
        be made from now: the settings named in `uses`, the contents of the
        input `files`, and the stages it reads (`after`, each standing for
        everything it was made from in turn). So a changed setting redoes the
        stages that use it and those downstream of them, nothing else.
        A setting the stage's record does not name (added to the code after
        the stage was done) counts as unchanged while it is at its default,
        which computes what the code computed before it existed; one the
        record names that the stage no longer lists does not count (the stage
        reads only the settings it lists: tests/test_selfreward.py checks the
        bytecode). So updating the code does not redo a finished run. Nor does
        an input's path written another way (data/ or data, relative or
        absolute, a folder moved): its files' contents are what count (a file
        over 64 MiB, model weights, by its size and modification time:
        data.file_fingerprint; a copy made with a new time counts as new).
        `temporary`: paths only a running stage needs (a trainer's resumable
        state), removed once the stage is marked done (what a kill left of
        that removal, when the stage is next found done). `outputs`: what the
        stage writes that later stages read (a model folder): one that is gone
        (deleted to free a disk) is made again, from the same inputs, when a
        stage that reads it has to run, and only then. Returns fn's info dict."""
        made_from = {"settings": {k: self.setting(k) for k in uses},
                     "files": {f: file_fingerprint(f) for f in files},
                     "after": {a: self.fingerprints[a] for a in after}}
        fp = self.fingerprints[name] = fingerprint(name, self.identity(made_from))
        old = self.record(name)
        same = old and (old.get("made_from", {}).get("fingerprint") == fp
                        or self.same_inputs(old.get("made_from", {}), made_from))
        if same:
            # the stages after this one compare against the fingerprint they were made after
            fp = self.fingerprints[name] = old["made_from"]["fingerprint"]
            self.reused.append(name)
            if D.is_rank0() and not self.dry:  # what a kill before or during mark's removal left
                remove_states(temporary)  # (temporary: only what this command does not keep, keep_train_state)
                self.metric_once(name, {k: v for k, v in old.items() if k != "made_from"})  # (or after it)
            if outputs:  # (looked at when a reader runs: a stage made again may remove another's outputs)
                self.remakers[name] = outputs, lambda reader, gone: self.run(
                    name, fn, old, made_from, fp, after, temporary, f"{', '.join(gone)} gone, and {reader} reads it")
            return {k: v for k, v in old.items() if k != "made_from"}
        return self.run(name, fn, old, made_from, fp, after, temporary,
                        changes(old.get("made_from", {}), made_from, self.same_setting, self.at_default)
                        if old else "")

    def run(self, name, fn, old, made_from, fp, after, temporary, why):
        """stage()'s work: the stages it reads whose outputs are gone made
        again first, then fn(), then the record that it is done."""
        for a in after:
            self.remake_if_gone(a, name)
        if self.dry:  # (the stages after it see its new fingerprint: they would run too)
            self.would_run.append((name, why))
            if not self.quiet:
                D.log(f"would run {name}" + (f" (again: {why})" if why else ""))
            return {}
        D.log(f"\n=== {name}" + (f" (again: {why})" if why else ""))
        self.made.append(name)
        if old:  # redone: its old record goes first, or a redo stopped halfway (its outputs partly
            D.barrier()  # rewritten) would pass as done under the old settings; once every rank has read it
            if D.is_rank0():
                os.remove(self.path("done", name))
            D.barrier()
        t0 = time.time()
        outer, self.current = self.current, name  # (outer: a stage that made this one again, running on after it)
        try:
            info = fn() or {}
        except (OSError, ValueError, FloatingPointError) as e:  # bad input, a diverged trainer, a full disk: one line
            D.stop(f"error: stage {name}: {e}", every_rank=not isinstance(e, OSError))  # (a disk: one rank's alone)
        self.current = outer
        info["seconds"] = round(time.time() - t0, 1)
        # its parts are finished outputs now: no later run of this stage may take them for its own (one
        # redone from the same inputs, its record deleted, would otherwise read the earlier run's files).
        # (Before the record: a kill between the two redoes the parts, never reuses them wrongly.)
        for marker in self.part_markers.pop(name, []):
            if D.is_rank0() and os.path.exists(marker):
                os.remove(marker)
        self.mark(name, info, {**made_from, "fingerprint": fp}, temporary)
        self.metric({"stage": name, **info})
        return info

    def identity(self, made_from):
        """What a stage's fingerprint hashes: made_from with each input named
        as same_setting and files_by_name compare it, not as its path is
        written (a setting naming a file or folder as "(a path)", its files by
        their names: their contents are in `files`). So the same stage given
        data/x or ./data/x has one fingerprint, in its record and in the
        marker of the parts an interrupted run left (parts_marker)."""
        return {"settings": {k: "(a path)" if k in self.inputs and v not in self.inputs[k] else v
                             for k, v in made_from["settings"].items()},
                "files": files_by_name(made_from["files"]), "after": made_from["after"]}

    def same_inputs(self, old, new):
        """Is `new` what `old` recorded, but for settings the record does not
        name that are at their defaults, settings the stage no longer lists,
        and input paths written otherwise whose files hold the same bytes?"""
        old_settings = old.get("settings", {})
        return ("fingerprint" in old and files_by_name(old.get("files", {})) == files_by_name(new["files"])
                and old.get("after") == new["after"]
                and all(self.same_setting(k, old_settings[k], v) if k in old_settings else self.at_default(k)
                        for k, v in new["settings"].items()))

    def at_default(self, name):
        """Is setting `name` at its default? (A setting a stage's record does
        not name, added to the code since, counts as unchanged while it is:
        stage().) As given, not resolved."""
        return name in self.defaults and self.defaults[name] == getattr(self.c, name, None)

    def setting(self, name):
        """A setting's value as a stage's record keeps it: `dtype` as the dtype
        the run computes in (what 'auto' resolved to here: the same 'auto' is
        bf16 on one machine and fp32 on another), the others as given."""
        if name == "dtype":
            return D.dtype_name(self.env.dtype)
        return getattr(self.c, name)

    def same_setting(self, name, old, new):
        """Equal values; or, for a setting naming input files, two paths (the
        stage compares the files they name by contents). Older records kept
        the dtype setting as given ('auto' itself): such a record matches a
        run whose setting is the same, whatever it resolves to, as it did then."""
        keywords = self.inputs.get(name)
        return (old == new or keywords is not None and old not in keywords and new not in keywords
                or name == "dtype" and old == self.c.dtype)

    def remake_if_gone(self, name, reader):
        """Make done stage `name` again, from the same inputs, if an output of
        it is gone now that `reader` needs it (deleted to free a disk, or
        removed by a stage made again before it); once."""
        if name not in self.remakers:
            return
        outputs, remake = self.remakers[name]
        gone = [p for p in outputs if not os.path.exists(p)]
        if gone:
            del self.remakers[name]
            self.reused.remove(name)
            remake(reader, gone)

    def mark(self, stage, info, made_from=None, temporary=()):
        """Record `stage` done: its info and what it was made from; then remove its temporary paths."""
        if D.is_rank0():
            write_json(self.path("done", stage), {**info, "made_from": made_from or {}})
            remove_states(temporary)
        D.barrier()

    def metric(self, record):
        if D.is_rank0():
            with open(self.path("metrics.jsonl"), "a+b") as f:  # (appends go to the end wherever it reads)
                cut = False
                if f.seek(0, os.SEEK_END) > 0:
                    f.seek(-1, os.SEEK_END)
                    cut = f.read(1) != b"\n"  # the last line was cut short by a kill: end it first
                f.write((("\n" if cut else "") + json.dumps(record) + "\n").encode())

    def metric_once(self, stage, info):
        """Stage `stage`'s line in metrics.jsonl, written if it is not there: a
        kill between the stage's record and its line (run) lost it. (Written
        before the record instead, a kill between them would give it two lines.)"""
        record = {"stage": stage, **info}
        if record not in metric_records(self.dir):
            self.metric(record)


def metric_records(folder):
    """The records of a run folder's metrics.jsonl ([] if it has none), less a
    line a kill cut short (Run.metric starts the next record on a line of its own)."""
    records, path = [], os.path.join(folder, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass
    return records


def file_name(path):
    """An input file's name however its path is written (data/x, ./data/x, absolute): what identifies it."""
    return os.path.basename(os.path.normpath(path))


def files_by_name(files):
    """{path: fingerprint} as (file name, fingerprint) pairs: an input's path
    written another way is the same input. In the stage's order (its `files`
    list, which records keep), not sorted: two inputs of one name (a/q.jsonl,
    b/q.jsonl) that trade settings are a change."""
    return [(file_name(f), v) for f, v in files.items()]


def changes(old, new, same_setting, at_default):
    """What differs between a stage's recorded inputs and today's, in words
    (same_setting and at_default: Run's, which say what counts as unchanged,
    as Run.same_inputs counts it)."""
    recorded = old.get("settings", {})
    said = [f"{k} {recorded.get(k, '?')!r} -> {v!r}" for k, v in new["settings"].items()
            if not (same_setting(k, recorded[k], v) if k in recorded else at_default(k))]
    before = dict(files_by_name(old.get("files", {})))
    said += [f"{f} changed" for f, v in new["files"].items()
             if before.get(file_name(f), v) != v]
    said += [f"{a} {'redone' if a in old.get('after', {}) else 'added'}" for a, v in new["after"].items()
             if old.get("after", {}).get(a) != v]
    return ", ".join(said) or "made from other inputs"


def save_jsonl(path, records):
    """Shared output: rank 0 writes it (atomically), every rank waits for it."""
    if D.is_rank0():
        write_jsonl(path, records)
    D.barrier()


def sub_seed(seed, *parts):
    """A seed for one piece of work, derived from the run's seed and a name."""
    h = hashlib.sha256(repr((seed,) + parts).encode()).hexdigest()
    return int(h[:12], 16)


def parts_marker(r, name, parts):
    """The marker name.parts holds the fingerprint of the stage whose parts
    (files) are being written: an interrupted stage, run again, reuses them
    only if it is the same stage made from the same inputs. Where the marker
    is missing or another's, the files in `parts` are stale and removed.
    Returns the marker's path (generate_sharded removes it with the parts it
    merged; stage_parts keeps it beside the files it names)."""
    marker, fp = r.path(f"{name}.parts"), str(r.fingerprints.get(r.current))  # None: a stage called directly
    if D.is_rank0():
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        if not os.path.exists(marker) or open(marker).read() != fp:
            for f in parts:
                if os.path.exists(f):
                    os.remove(f)
            write_text(marker, fp)
    D.barrier()
    return marker


def stage_parts(r, name, paths):
    """For a stage whose outputs are several files made one after another
    (selfreward's evaluation of a model: answers, judgments, benchmark
    answers): returns part(path, make, save, load), which reads a file the
    same stage already finished (load(path)), else makes it (make()) and
    rank 0 writes it (save(path, records)): a killed run loses at most the
    part it was in, and gives what a run never killed gives. paths: every
    file the stage may write. The marker stays beside them while the stage
    runs (generate_sharded's goes with the parts it merges) and goes when
    the stage is done (Run.run): a stage run again later, from the same
    inputs or not, makes its files again."""
    r.part_markers.setdefault(r.current, []).append(parts_marker(r, name, paths))

    def part(path, make, save, load):
        if D.rank0_answer(r.env, os.path.exists(path)):  # (rank 0 may be writing it: it decides for all)
            return load(path)
        records = make()
        if D.is_rank0():
            save(path, records)
        D.barrier()
        return records
    return part


def generate_sharded(r, name, items, shard_size, work, replay=None):
    """
    Run work(chunk, shard_index) -> list of output records over `items` in
    shards of shard_size, writing name.part-NNNNN.jsonl as each completes and
    skipping the parts already written (replay(records) is called for those,
    to restore any state later shards depend on), then merge them into
    name.jsonl in order. A killed run loses at most the shard it was in.
    Parts are reused only by the stage fingerprint that wrote them (kept in
    name.parts): after a change of settings they are stale and removed.
    """
    folder, stem = os.path.split(r.path(name))
    written = os.listdir(folder) if os.path.isdir(folder) else []
    marker = parts_marker(r, name, [os.path.join(folder, f) for f in written if f.startswith(stem + ".part-")])
    parts = []
    for s, start in enumerate(range(0, len(items), shard_size)):
        part = r.path(f"{name}.part-{s:05d}.jsonl")
        if D.rank0_answer(r.env, os.path.exists(part)):  # (rank 0 may be writing it: it decides for all)
            if replay:
                replay(read_jsonl(part))
        else:
            save_jsonl(part, work(items[start:start + shard_size], s))
        parts.append(part)
    merged = [rec for p in parts for rec in read_jsonl(p)]
    D.barrier()  # every rank has read the parts before rank 0 removes them
    if D.is_rank0():
        write_jsonl(r.path(f"{name}.jsonl"), merged)
        for p in parts + [marker]:
            os.remove(p)
    D.barrier()
    return merged


def move_model(r, trained, name):
    """Put a trained model folder at out/<run>/<name>/ (a rename; an older
    folder there goes first: a kill between the two leaves none, and the
    stage, whose record is already gone, makes it again)."""
    dest = r.path(name)
    if D.is_rank0():
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.replace(trained, dest)
    D.log(f"{name} is {dest} (moved from {trained})")  # the trainer's "saved" line named the folder it left
    D.barrier()
    return dest


def fit_micro(batch_size, want, world):
    """The largest micro-batch <= want that splits each rank's share of a batch evenly."""
    if batch_size % world:
        D.stop(f"error: a batch of {batch_size} cannot be split over {world} ranks")
    share = batch_size // world
    m = max(1, min(want, share))
    while share % m:
        m -= 1
    return m


if __name__ == "__main__":
    import configurator
    configurator.library(__doc__, "run_folder.py", "python selfreward.py keeps its run folder through it")
