"""
What train_sft.py and train_dpo.py share, so that each of them shows only its
data, its loss and its training loop (the loop stays in each script: it is
the lesson):

    SETTINGS                   the settings both trainers take
    main(), run()              the command line, the process group around a run
    read_tokenizer(), start()  the tokenizer first (the data is read and checked
                               before any weights load), then the model (from
                               scratch or a checkpoint, sharded under torchrun)
    read_data(), hold_out()    the training records, and a share held out
    batch_indices(), lr_at()   the data order and the learning-rate schedule
    end_step(), save_state()   training state saved every save_interval steps;
    optimizer_and_resume()     the same command resumes a killed run exactly
                               (only from the same inputs: made_from); removed
                               once done.json records the final model (keep_state)
    clip_and_step()            clip the global gradient norm, step AdamW
    memory_plan()              what each GPU will hold, before anyone launches 64 GPUs

Data parallelism is exact by construction: every loss is a SUM over the
examples (or tokens) of one micro-batch divided by the count over the whole
global batch on all ranks, so accumulation and sharding give the same
gradient as one big batch (with dropout 0: dropout's masks are drawn per
rank and per micro-batch, begin_step, so there the world size and
micro_batch_size change them as another seed would).
"""
import json
import math
import os
import shutil
import signal
import sys
import threading
import warnings
from contextlib import contextmanager

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import distributed as D
import validate
from checkpoint import (check_tokenizer, load_model, load_tensors, model_width, planned_args, read_config,
                        save_model)
from configurator import configure, settings
from data import file_fingerprint, fingerprint, read_jsonl, write_text
from model import preset
from tokenizer import HF_TOKENIZER_FILES, Tokenizer

# -----------------------------------------------------------------------------
# Settings both trainers take (each script adds its own: where its model
# starts, its data, its learning rate ...). python train_sft.py --help lists all.
SETTINGS = dict(
    tokenizer="",              # tokenizer.model, tokenizer.json or a folder with one; '' = the one in init_from
    chat_template="",          # '' = the checkpoint's own (tokenizer.py); or llama2, llama3, chatml
    eval_data="",              # held-out JSON Lines; '' = hold out eval_fraction of data
    eval_fraction=0.05,        # share of data held out when there is no eval_data
    max_seq_len=0,             # longer examples (or pairs) are skipped and counted; 0 = the model's
    batch_size=16,             # examples (SFT) or pairs (DPO) per optimizer step, over all ranks (paper: 16)
    epochs=1,                  # passes over the data, when max_steps is 0
    max_steps=0,               # optimizer steps; 0 = from epochs
    warmup_steps=0,            # linear warmup steps
    weight_decay=0.0,          # AdamW decoupled weight decay
    beta1=0.9,                 # AdamW
    beta2=0.95,                # AdamW
    grad_clip=1.0,             # clip the global gradient norm to this; 0 = off
    dropout=0.1,               # paper: 0.1
    seed=1337,                 # data order, dropout, random init
    eval_interval=50,          # steps between eval metrics (and at the end)
    save_interval=50,          # steps between resumable training states (not the paper's checkpoints to choose from)
    log_interval=1,            # steps between metrics lines
    activation_checkpointing=False,  # recompute each block in backward: less memory, ~1.3x time
    compile=False,             # torch.compile each block
    device="",                 # '' = cuda if available, else cpu
    dtype="auto",              # compute: 'auto' = bfloat16 on GPU, and on a CPU with fast bf16 matmuls for models at
                               # least 256 wide; else float32 (weights stay fp32; on a GPU float32 matmuls
                               # run in TF32: distributed.setup)
    threads=0,                 # CPU threads; 0 = this process's cores / ranks on the machine (or OMP_NUM_THREADS)
    save_dtype="",             # dtype of the final model; '' = bfloat16 on GPU, float32 on CPU
    peak_flops=989e12,         # per device, for MFU (H100/H200 bf16 dense)
    crash_after_step=-1,       # testing: exit hard right after this step (a simulated kill)
    keep_state=False,          # keep out_dir/state (optimizer, step) once the final model is saved
    progress=True,             # progress bar
)
# settings that change how a run goes, not what it computes: a saved training
# state is resumed across changes of these (see made_from). (With dropout on,
# micro_batch_size changes the masks drawn, as a seed would, not the method.)
RUNTIME_SETTINGS = {"out_dir", "device", "threads", "eval_interval", "save_interval", "log_interval",
                    "activation_checkpointing", "compile", "save_dtype", "peak_flops", "crash_after_step", "keep_state",
                    "progress", "micro_batch_size", "plan_only", "world_size", "gpu_memory_gb"}
FILE_SETTINGS = ("init_from", "data", "eval_data", "tokenizer")  # their files' contents count, not their paths


def main(train, defaults, script_file, doc, argv=None):
    """A trainer's command line: settings from config files and --key=value
    (--help lists them), then train(); bad input or a diverged run ends with
    one clear line, not a traceback."""
    config = configure(dict(defaults, __file__=script_file, __doc__=doc), argv, comment_files=[__file__])
    try:
        return train(config, announce=True)
    except (OSError, ValueError, FloatingPointError) as e:  # OSError: a disk full or read-only, a file missing
        D.stop(f"error: {e}", 2 if isinstance(e, validate.BadInput) else 1,  # 2: refused before any work
               every_rank=not isinstance(e, OSError))  # (a disk error may be one rank's alone)
    except KeyboardInterrupt:
        if D.is_rank0():
            out_dir = settings(defaults, config).out_dir
            print(f"\ninterrupted; the same command resumes from the last training state saved in "
                  f"{os.path.join(out_dir, 'state')}", file=sys.stderr)
        sys.exit(130)


def run(loop, defaults, config, fields, announce=False, check_record=None):
    """Run loop(c, env, fp) with the settings (defaults, then `config` on top)
    inside the process group: one process, or one rank of many under torchrun,
    once every setting and input has been checked (fields: the strings each
    data record needs; check_record: validate.sft_record, say). announce:
    print where and how it computes (the command line does). fp: made_from's
    fingerprint of the run's inputs, computed once here."""
    c = settings(defaults, config)
    script = os.path.basename(loop.__code__.co_filename)  # train_sft.py or train_dpo.py
    validate.check_training(c, D.launched_world(), fields, script, check_record, defaults)  # before setup
    scratch_preset = c.model if c.init_from == "scratch" else ""  # (DPO always starts from a checkpoint)
    env = D.setup(c.device, c.dtype, c.threads, width=model_width(c.init_from, scratch_preset))
    if announce:
        D.log(D.describe(env))
    with D.sole_writer(env, c.out_dir):
        counted, files = training_inputs(c, tokenizer_path(c))  # (read once: data files are hashed)
        fp = made_from(counted, files, env.dtype)
        result = earlier_result(c, fp, saved_dtype(c, env))
        trained = result is None
        if trained:
            if D.is_rank0() and os.path.exists(done_path(c)):  # (a kill after the new model is in place must
                os.remove(done_path(c))  # not leave the old record beside it)
            result = loop(c, env, fp)
            if D.is_rank0():  # what out_dir/model was made from, and what the run returned
                write_text(done_path(c), json.dumps({"made_from": fp, "result": result}))
        if D.is_rank0() and not c.keep_state:  # only once the record is written: a kill before it resumes
            remove_state(c, whole=trained)  # from the state; one during it, the same command finishes it
        D.barrier()
    # only after a success: teardown waits for every rank, and after an error on
    # one rank the others may be inside a collective that never ends
    D.teardown(env)
    return result


def done_path(c):
    return os.path.join(c.out_dir, "done.json")


def tokenizer_path(c):
    """The tokenizer a run reads: the tokenizer setting, else init_from's."""
    return c.tokenizer or c.init_from


def earlier_result(c, fp, dtype):
    """What an earlier run made from the same settings and inputs (fp:
    made_from) returned, if its out_dir/model is there, stored in `dtype`
    (save_dtype, which made_from does not count: a kept state resumes across
    it): the same command again does not train again (remove out_dir/model
    to). A model made from other settings is said to be replaced when this
    run ends."""
    model = os.path.join(c.out_dir, "model")
    if not os.path.isdir(model):
        return None
    if not os.path.isfile(os.path.join(model, "config.json")) or \
            not any(f.endswith(".safetensors") for f in os.listdir(model)):  # (files deleted from it by hand)
        D.log(f"note: {model} has no config.json or no weights: this run replaces it when it ends")
        return None
    try:
        with open(done_path(c)) as f:
            done = json.load(f)
    except (OSError, ValueError):
        done = {}
    if done.get("made_from") != fp:
        D.log(f"note: {model} " + ("was made from other settings or inputs" if done else "is there, with no record "
              "of what it was made from") + ": this run replaces it when it ends")
        return None
    with open(os.path.join(model, "config.json")) as f:
        stored = json.load(f).get("torch_dtype")
    if stored != D.dtype_name(dtype):
        D.log(f"note: {model} is stored in {stored}, save_dtype asks for {D.dtype_name(dtype)}: training again "
              f"(a kept state resumes where it ended)")
        return None
    gone = [f for _, f in done["result"].get("checkpoints", []) if not os.path.isdir(f)]  # (train_dpo's keep_every)
    if gone:
        D.log(f"note: {gone[0]}, a checkpoint this run kept, is gone: training again")
        return None
    D.log(f"{model} was trained from these same settings and inputs: nothing to do (remove it to train again)")
    return done["result"]


# -----------------------------------------------------------------------------
# The model and the data

def build_model(c, env, vocab_size):
    """The model to train, never materialised whole on any rank when sharded:
    from a checkpoint folder (each rank streams in only its slice), or from
    scratch (a preset, c.model) with Transformer.initial_weights drawn from a
    seeded generator, so one process and any number of ranks start alike."""
    if c.init_from == "scratch":
        model = D.empty_model(preset(c.model, vocab_size=vocab_size, dropout=c.dropout), env)
        init = model.initial_weights(torch.Generator().manual_seed(c.seed))  # whole tensors, one at a time
        load_tensors(model, ((name, D.local_part(full, model.get_parameter(name))) for name, full in init),
                     "random init")
    else:
        model = load_model(c.init_from, env, dropout=c.dropout)
    model.activation_checkpointing = c.activation_checkpointing
    if c.compile:
        for block in model.layers:
            block.compile()  # in place: parameter names stay the same
    return model


def read_tokenizer(c):
    """What a trainer reads its data with, before any weights load (so data
    it cannot train on, every example too long, is refused without that
    wait): (tokenizer, its path, the longest sequence, in tokens the model
    sees, an example may have: from the preset, or the checkpoint's config,
    read without its weights). (validate.check_training has checked the
    settings and inputs.)"""
    tok_path = tokenizer_path(c)
    tok = Tokenizer(tok_path, c.chat_template)
    args = preset(c.model, vocab_size=tok.vocab_size) if c.init_from == "scratch" else read_config(c.init_from)
    return tok, tok_path, min(c.max_seq_len or args.max_seq_len, args.max_seq_len)


def start(c, env, tok, tok_path):
    """The model to train, ready for its first step (read_tokenizer's
    tokenizer checked against it)."""
    os.makedirs(c.out_dir, exist_ok=True)
    model = build_model(c, env, tok.vocab_size)
    check_tokenizer(tok_path, model.args, c.init_from, tok)
    return model


def read_data(c, fields):
    """(train records, eval records): c.data, and c.eval_data or a fixed,
    seeded share (eval_fraction) of c.data held out."""
    records = read_jsonl(c.data, fields, allow_empty=False)
    if c.eval_data:
        return records, read_jsonl(c.eval_data, fields, allow_empty=False)
    return hold_out(records, c.eval_fraction, c.seed)


def hold_out(items, fraction, seed):
    """(train, eval): a fixed, seeded share of items held out for the eval loss."""
    n_eval = 0 if fraction <= 0 or len(items) < 2 else min(len(items) - 1, max(1, round(len(items) * fraction)))
    perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(perm[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


def made_from(counted, files, dtype):
    """The fingerprint of what a training run computes from (training_inputs:
    its settings but the runtime ones, and its files: starting weights, data,
    tokenizer). A saved training state or a finished model is reused only by
    a run with the same. dtype: the dtype the run computes in, counted in
    place of the setting ('auto' is bf16 on one machine and fp32 on another)."""
    return fingerprint({**counted, "dtype": D.dtype_name(dtype)}, files)


def training_inputs(c, tok_path):
    """What made_from counts: the settings that count, and the fingerprints
    of the input files (data files are hashed: read them once)."""
    # beside a tokenizer file, the files that name its special tokens and chat template (Tokenizer reads them)
    beside = [] if os.path.isdir(tok_path) else [os.path.join(os.path.dirname(tok_path), f) for f in
                                                 (*HF_TOKENIZER_FILES, "config.json")]
    files = [c.data, c.eval_data, tok_path, *(f for f in beside if os.path.isfile(f))] + \
        ([] if c.init_from == "scratch" else [c.init_from])
    return ({k: v for k, v in vars(c).items() if k not in RUNTIME_SETTINGS and k not in FILE_SETTINGS},
            [file_fingerprint(f) for f in files if f])


def total_steps(c, n_examples):
    """The run's optimizer steps. A warmup as long as the run or longer is
    allowed but warned about (the run's length is known only once the data is
    read): the learning rate would never reach lr. So is a batch larger than
    the data: each step then repeats examples."""
    steps = c.max_steps or math.ceil(c.epochs * n_examples / c.batch_size)
    if c.batch_size > n_examples:
        D.log(f"warning: batch_size = {c.batch_size} is larger than the {n_examples} examples: each step holds "
              f"each example {c.batch_size / n_examples:.1f} times, {steps * c.batch_size / n_examples:.1f} passes "
              f"over the data in all")
    if c.warmup_steps >= steps:
        D.log(f"warning: warmup_steps = {c.warmup_steps} is not below this run's {steps} steps: "
              f"the learning rate never reaches lr = {c.lr}")
    return steps


# -----------------------------------------------------------------------------
# Data order and the schedule

def batch_indices(step, batch_size, n, seed):
    """The examples of optimizer step `step`. The data is an endless stream of
    epochs, each a permutation drawn from (seed, epoch): the order depends on
    nothing but the step, so a resumed run sees the same batches."""
    perms, out = {}, []  # (a step may span two epochs)
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(k, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.append(perms[epoch][i].item())
    return out


def step_batch(items, step, c, env):
    """(the global batch of this step, this rank's contiguous part of it).
    batch_size divides by world x micro_batch_size (validate.check_training),
    so every rank runs as many forwards, with no fillers (split_even is for
    evaluation sets of any size)."""
    batch = [items[i] for i in batch_indices(step, c.batch_size, len(items), c.seed)]
    per_rank = c.batch_size // env.world
    return batch, batch[env.rank * per_rank:(env.rank + 1) * per_rank]


def split_even(items, rank, world):
    """This rank's share of items as (item, weight) pairs, the same number on
    every rank (short ranks repeat items[0] with weight 0): under FSDP every
    rank must run the same number of forward passes or the job hangs. Each
    caller makes a weight-0 item count for nothing: SFT's evaluation gives it
    no targets (train_sft.collate's weights), DPO's sums multiply by the
    weight, and DPO's reference pass drops its results."""
    mine = [(x, 1) for x in items[rank::world]]
    per_rank = -(-len(items) // world)
    return mine + [(items[0], 0)] * (per_rank - len(mine))


def micro_batches(items, size, length=None):
    """items in consecutive chunks of `size` (the last may be shorter).
    length(item) -> its tokens: when the items make more than one chunk,
    sorted by it first, so that rows of like length share a micro-batch and
    little of it is padding. The step's gradient is the same sum (each
    trainer divides by the whole batch's count) up to rounding, but with
    dropout on, rows meet other masks than unsorted: another draw, as another
    seed would give. (One chunk is left in the batch's order: sorting would
    change the draws and save nothing.)"""
    if length is not None and size < len(items):
        items = sorted(items, key=length)  # (stable: equal lengths keep the batch's order)
    return [items[i:i + size] for i in range(0, len(items), size)]


def lr_at(step, n_steps, warmup_steps, lr, min_lr):
    """Linear warmup to lr, then cosine decay to min_lr at n_steps (the run's
    steps, as total_steps() counts them: not the max_steps setting, which may
    be 0 for 'from epochs'). The trainers take steps 0 .. n_steps - 1, so the
    last step's lr is a little above min_lr; nanoGPT's loop takes one more
    step, at min_lr exactly."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, n_steps - warmup_steps))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def begin_step(optimizer, step, steps, c, env):
    """Set this step's learning rate and reseed every RNG (dropout) from
    (seed, step, rank): a resumed run draws exactly the numbers an
    uninterrupted one would, with no RNG state to carry in the checkpoint."""
    lr = lr_at(step, steps, c.warmup_steps, c.lr, c.min_lr)
    for group in optimizer.param_groups:
        group["lr"] = lr
    # (the rank's term is a prime, 2^31 - 1: two (step, rank) would share a seed only for steps 2^31 - 1 apart)
    torch.manual_seed(c.seed * 1_000_003 + step * 1009 + env.rank * 2_147_483_647)
    return lr


def clip_and_step(model, optimizer, grad_clip):
    """Clip the global gradient norm (over all shards), take the optimizer
    step, clear the gradients; returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def check_finite(loss, step, c):
    """Stop before the optimizer touches the weights of step `step` (counted
    from 1, as metrics.jsonl and the saved states count): the last saved
    state in out_dir/state is intact. The same command resumes from it and
    meets the same loss (data order and dropout follow from seed and step);
    another lr is another run (lr is part of what a state was made from)."""
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"loss is {loss} at step {step}; stopping. The last good training state is in {state_dir(c)} (if any "
            f"was saved), but the same settings would meet this loss again: rerun with a lower learning rate "
            f"(lr; in selfreward.py pretrain_lr, sft_lr or dpo_lr: it starts from step 0) or another seed.")


# -----------------------------------------------------------------------------
# Metrics, training state, resume, the final model

def state_dir(c):
    return os.path.join(c.out_dir, "state")


def metrics_path(c):
    return os.path.join(c.out_dir, "metrics.jsonl")


def log_metrics(c, record):
    if D.is_rank0():
        with open(metrics_path(c), "a") as f:
            f.write(json.dumps(record) + "\n")


@contextmanager
def ctrl_c_after():
    """A Ctrl-C (or, in one process, a SIGTERM, which D.setup takes as one;
    under torchrun SIGTERM keeps its default and ends a rank at once) inside the block
    is raised when it ends: a state save cut short is wasted work, and
    torch's checkpoint writers turn the interrupt into errors of their own
    (CheckpointException, a RuntimeError from the zip writer) with a
    traceback. A second one raises at once. Under torchrun, which kills its
    workers 30 s after passing a Ctrl-C on, a longer save (a large model's)
    is cut short all the same unless torchrun is given more time
    (--shutdown_timeout=SECONDS); the last complete state stays, as after
    any kill."""
    if threading.current_thread() is not threading.main_thread():  # (signals reach the main thread only)
        yield
        return
    # the signals that raise KeyboardInterrupt now (not one ignored, or with someone's own handler)
    mine = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is signal.default_int_handler]
    pressed = []

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)
        D.log(f"\n{'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'}: stopping once the training state is "
              f"saved (Ctrl-C again to stop now)")
    previous = {s: signal.signal(s, handler) for s in mine}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if pressed:
        raise KeyboardInterrupt


@ctrl_c_after()  # (a context manager made by contextmanager is a decorator too)
def save_state(model, optimizer, step, path, info=None):
    """
    Model shards, optimizer state and the step with torch.distributed.checkpoint,
    each rank writing its own shards (DCP needs a filesystem all ranks share).
    Written to path.tmp, then swapped in: a kill at any moment leaves `path`
    (or, between the two renames, path.old) holding the last complete state;
    a Ctrl-C stops the run once the state is saved (ctrl_c_after).
    """
    tmp, old = path + ".tmp", path + ".old"
    if D.is_rank0() and os.path.exists(tmp):
        shutil.rmtree(tmp)
    D.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # one process: DCP warns that it is not distributed
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model_sd, "optim": optim_sd, "step": torch.tensor(step)}, checkpoint_id=tmp)
    D.barrier()
    if D.is_rank0():
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump({"step": step, **(info or {})}, f)  # for people; the step that counts is in DCP
        if os.path.exists(path):  # complete (it only ever appears by the rename below)
            shutil.rmtree(old, ignore_errors=True)  # an older one a kill left behind: a rename cannot replace it
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    D.barrier()


def saved_state(path):
    """(the folder of the last complete state save_state wrote at `path`, its
    state.json), or (None, {})."""
    for candidate in (path, path + ".old"):  # .old: killed between the two renames
        if os.path.exists(os.path.join(candidate, "state.json")):
            with open(os.path.join(candidate, "state.json")) as f:
                return candidate, json.load(f)
    return None, {}


def load_state(model, optimizer, path, fp):
    """Restore a state written by save_state from the same inputs (its
    made_from fingerprint is `fp`); returns (its step, the info saved with
    it), or (0, {}) if none."""
    candidate, info = saved_state(path)
    if candidate is None:
        return 0, {}
    if info.get("made_from") != fp:
        D.log(f"not resuming from {candidate}: it was saved by a run of other settings, data or weights")
        return 0, {}
    model_sd, optim_sd = get_state_dict(model, optimizer)  # the shapes to load into
    state = {"model": model_sd, "optim": optim_sd, "step": torch.tensor(0)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        try:
            dcp.load(state, checkpoint_id=candidate)
        except (OSError, ValueError, CheckpointException) as e:  # a file of it gone or damaged, but
            # not Ctrl-C or memory, which DCP wraps the same way (a BaseException holding each rank's cause)
            causes = [exc for exc, _ in e.failures.values()] if isinstance(e, CheckpointException) else [e]
            for cause in causes:
                if isinstance(cause, (KeyboardInterrupt, MemoryError, torch.OutOfMemoryError)):
                    raise cause from None
            why = "; ".join(dict.fromkeys(f"{type(x).__name__}: {x}" for x in causes))
            raise ValueError(f"cannot resume from the training state {candidate}: it cannot be read ({why}); "
                             f"remove it to train from the start") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return int(state["step"]), info


def optimizer_and_resume(model, c, fp, steps):
    """AdamW over the (sharded) parameters, the step to start from and what
    that step recorded: the last saved training state's, if one was saved
    from the same inputs (fp: made_from), else 0 and {}. (A run killed after
    its last step, while saving its model, has no step left to run: it
    returns what that one recorded, and the caller saves the model.)
    Metrics lines written after that state go (all of them on a fresh start),
    so the file reads as one run."""
    # fused: torch's one-kernel-per-tensor AdamW, on the CPU as on GPUs (and on FSDP2's DTensor
    # shards); its update is AdamW's formula within float rounding (tests/test_train.py; against the
    # for-loop one, SPEED.md). A toy-large step of it, 2 threads: 15 ms against the default for-loop's
    # 46, ~3% of a bf16 training step saved.
    optimizer = torch.optim.AdamW(model.parameters(), lr=c.lr, betas=(c.beta1, c.beta2),
                                  weight_decay=c.weight_decay, fused=True)
    step, saved = load_state(model, optimizer, state_dir(c), fp)
    if step and step == steps:
        D.log(f"resumed from {state_dir(c)} at step {step}, the last: the model is saved again from it")
    elif step:
        D.log(f"resumed from {state_dir(c)} at step {step} of {steps}")
    if D.is_rank0() and os.path.exists(metrics_path(c)):
        def before_resume(rec):  # a line for a step taken before the state; an evaluation at the state's
            at = rec.get("step", 0)  # own step comes again: the resumed loop evaluates there first
            return at < step or at == step and not any(k.startswith("eval") for k in rec)
        keep = []
        with open(metrics_path(c)) as f:  # (a line a kill cut short has no newline yet: it goes too)
            for n, line in enumerate(f, 1):
                if step and line.endswith("\n") and line.strip():
                    try:
                        rec = json.loads(line)
                    except ValueError as e:
                        raise ValueError(f"{metrics_path(c)}:{n}: not a metrics record ({e}); remove the line "
                                         f"to resume") from None
                    if before_resume(rec):
                        keep.append(line)
        write_text(metrics_path(c), "".join(keep))
    D.barrier()
    return optimizer, step, saved.get("record", {})


def end_step(model, optimizer, step, steps, c, info):
    """After optimizer step `step`: save the resumable state every
    save_interval steps and at the end."""
    if step % c.save_interval == 0 or step == steps:
        save_state(model, optimizer, step, state_dir(c), info)
    if step == c.crash_after_step:
        os._exit(3)  # testing: die like a killed job, no cleanup


def save_final(model, c, env, tok_path, folder="model"):
    """The trained model, in the Hugging Face layout at out_dir/model (or at
    out_dir/<folder>: DPO's checkpoints to choose from). (Once done.json
    records it, the resumable state has done its job and goes, unless
    keep_state: at 70B it is ~0.8 TB of fp32 weights and AdamW moments.)"""
    return save_model(model, os.path.join(c.out_dir, folder), tok_path, saved_dtype(c, env))


def saved_dtype(c, env):
    """The dtype the final model is stored in: save_dtype, or '' = bf16 on a GPU, fp32 on the CPU."""
    return getattr(torch, c.save_dtype) if c.save_dtype else (
        torch.bfloat16 if env.device.startswith("cuda") else torch.float32)


def remove_state(c, whole=True):
    """The resumable state, once out_dir/done.json records the model it made
    (training.run). whole=False (a run that found the model done): only what
    a kill during an earlier removal left; a whole state (kept by keep_state
    earlier) stays, and is said to be there."""
    for path in remove_states([state_dir(c), state_dir(c) + ".old", state_dir(c) + ".tmp"], whole):
        D.log(f"note: {path} is still here (a run with keep_state kept it): remove it to free the disk")


def remove_states(paths, whole=True):
    """Remove training states (save_state's folders), each one's state.json
    first: a state a kill cut short halfway through is no longer one to
    resume from. whole=False: only such cut-short ones; returns the whole
    states it left."""
    left = []
    for path in paths:
        if os.path.exists(os.path.join(path, "state.json")):
            if not whole:
                left.append(path)
                continue
            os.remove(os.path.join(path, "state.json"))
        shutil.rmtree(path, ignore_errors=True)
    return left


# -----------------------------------------------------------------------------
# The memory plan

def plan_memory(c):
    """--plan_only: print the memory plan of init_from's config (else the
    preset c.model) for c.world_size GPUs; no data, no weights."""
    world = c.world_size or D.launched_world()
    problems = validate.check_plan(c, world)
    if problems.found:
        raise validate.BadInput(problems.message("the plan"))
    args, which = planned_args(c.init_from, c.model)  # (readable: check_plan read it)
    plan = memory_plan(args, world, c.micro_batch_size,
                       c.max_seq_len or args.max_seq_len, c.activation_checkpointing,
                       gpu_memory_gb=c.gpu_memory_gb, dropout=c.dropout)
    D.log(which)
    D.log(plan["text"])
    return plan


def memory_plan(args, world_size, micro_batch_size, seq_len, activation_checkpointing=False,
                gpu_memory_gb=80, dropout=0.0):
    """
    Bytes each GPU holds under FSDP2 with fp32 master weights and AdamW:
      sharded state     (4 param + 4 grad + 8 AdamW m,v) * P / world (the
                        trainers reduce-scatter gradients after every
                        micro-batch, so none is held unsharded: train_sft.py)
      in flight         2 blocks' bf16 params (the running one + the prefetched
                        next), one block's fp32 gradient before its
                        reduce-scatter, and the root's embedding + output in bf16
                        (one matrix when tied)
      activations       what autograd saves, per token per layer, counted from
                        this model's forward (a = bytes of the compute dtype, 2
                        for bf16; h dim, kv = n_kv_heads*head_dim, f ffn width,
                        H heads):
                          2 RMSNorms   2*(4h fp32 input + 4 rstd + a*h normalised
                                       + a*h times the weight, the next matmul's input)
                          attention    a*(h + 2kv) q,k,v + 4H logsumexp
                                       (flash/efficient SDPA: no T x T matrix stored)
                                       + a*h the output re-laid out for wo
                          SwiGLU       4*a*f (w1 x, w3 x, silu(w1 x), their product)
                          dropout      2h one-byte masks (when dropout > 0)
                        = (8 + 6a)h + 2a*kv + 4a*f + 4H + 8 [+ 2h]
                        plus, once: the final norm (4 + 2a)h + 8, the token
                        ids 8, and the rotary cos/sin 8*head_dim (fp32)
                        With activation checkpointing a layer keeps only its
                        input a*h, plus one layer's full set while it is
                        recomputed in backward.
      logits            a*V logits + 4V fp32 log-softmax + 4V its gradient
    tests/test_train.py checks the activation count against the bytes autograd
    really saves (bf16, CPU). Not counted: allocator fragmentation, temporary
    buffers inside kernels, NCCL buffers; leave 10-20% headroom. On a CPU,
    training in bf16 or with dropout up to 384 tokens (model.causal_matmul_attention),
    and with dropout beyond them (SDPA's math kernel), store T x T probabilities per head.
    """
    a = 2  # bf16 compute
    h, kv, f, L, V = args.dim, args.n_kv_heads * args.head_dim, args.hidden_dim, args.n_layers, args.vocab_size
    P, block = args.n_params(), args.block_params()
    root = P - L * block  # the embedding (and the output layer, untied) and the final norm
    tokens = micro_batch_size * seq_len
    per_layer = (8 + 6 * a) * h + 2 * a * kv + 4 * a * f + 4 * args.n_heads + 8 + (2 * h if dropout > 0 else 0)
    final_norm = (4 + 2 * a) * h + 8 + 8 + 8 * args.head_dim  # final RMSNorm, token ids (int64), rotary cos/sin
    if activation_checkpointing:
        acts = tokens * (L * a * h + per_layer + final_norm)
    else:
        acts = tokens * (L * per_layer + final_norm)
    logits = tokens * V * (a + 8)
    rows = [
        ("parameters (fp32 shard)", 4 * P / world_size),
        ("gradients (fp32 shard)", 4 * P / world_size),
        ("AdamW m and v (fp32 shard)", 8 * P / world_size),
        ("unsharded params/grads in flight", 2 * 2 * block + 4 * block + 2 * root),
        ("activations" + (" (checkpointed)" if activation_checkpointing else ""), acts),
        ("logits and their fp32 loss", logits),
    ]
    total = sum(b for _, b in rows)
    lines = [f"memory plan: {P / 1e9:.2f}B parameters, world size {world_size}, micro-batch "
             f"{micro_batch_size} x {seq_len} tokens, activation checkpointing {activation_checkpointing}"]
    lines += [f"  {name:38s} {b / 2**30:9.2f} GiB" for name, b in rows]
    lines.append(f"  {'total per GPU':38s} {total / 2**30:9.2f} GiB")
    # the fewest GPUs for this micro-batch: only the 16 bytes/param shrink with world size
    usable = D.USABLE_GPU_SHARE * gpu_memory_gb * 1e9
    per_gpu_fixed = total - 16 * P / world_size
    if per_gpu_fixed >= usable:
        lines.append(f"  does not fit a {gpu_memory_gb} GB GPU at any world size: turn on "
                     "activation_checkpointing or lower the micro-batch")
    else:
        need = math.ceil(16 * P / (usable - per_gpu_fixed))
        verdict = "fits" if total <= usable else "does NOT fit"
        lines.append(f"  {gpu_memory_gb} GB GPUs ({D.USABLE_GPU_SHARE:.0%} usable): needs at least {need} GPUs "
                     f"({math.ceil(need / 8)} nodes of 8); {world_size} {verdict}")
    return {"params": P, "rows": dict(rows), "total": total, "text": "\n".join(lines)}


if __name__ == "__main__":
    import configurator
    configurator.library(__doc__, "training.py", "python train_sft.py and python train_dpo.py are the trainers")
