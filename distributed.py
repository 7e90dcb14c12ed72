"""
Running one script from a laptop to a multi-node cluster without changing it:
the process group, the device meshes, and the two layouts of the model:
FSDP2 for training, tensor parallel for generation.

    setup(device, dtype, threads, tp)
                            one plain process, or one of many under torchrun
                            (RANK is set): gloo on CPU, nccl on GPU, a flat
                            device mesh over every rank of every node (FSDP),
                            a 2-D (dp, tp) mesh for generation when tp > 1;
                            the compute dtype and the CPU thread count
    describe(env)           one line saying where and how a run computes
    is_rank0(), barrier()   the one place that answers "am I rank 0?" (only
                            rank 0 prints, log(), and writes shared files) and waits
    stop(message, status)   end every rank, the message printed once
    sole_writer(env, dir)   refuse a second job on the same output folder (or file)
    all_sum(env, ...)       sum numbers over ranks
    empty_model(args, env)  a Transformer built on `meta`, sharded, allocated
    for_generation(env)     the same processes, models loaded in the generation
                            layout: tensor parallel (tp > 1) or whole replicas
    tensor_parallel(m, ...) the tensor-parallel plan (torch.distributed.tensor.parallel)
    sampling_share(model)   which share of the prompts this rank samples
    local_rows(param)       which rows of a parameter this rank holds (local_part: its slice of a tensor)
    full_tensor(param)      a parameter whole, gathered from every rank

Reading a checkpoint into the shards is checkpoint.py's job, training with
them train_sft.py's and train_dpo.py's (with training.py).
"""
import fcntl
import gc
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from model import Transformer

# -----------------------------------------------------------------------------
# The process group


@dataclass
class Env:
    rank: int = 0
    world: int = 1
    device: str = "cpu"
    mesh: object = None        # DeviceMesh over all ranks (None: one process, no FSDP)
    owns_group: bool = False   # we created the process group, so we destroy it
    dtype: torch.dtype = torch.float32  # compute dtype: matmuls and activations (weights stay fp32 to train)
    tp_mesh: object = None     # 2-D (dp, tp) DeviceMesh for tensor-parallel generation (None: tp = 1)

    @property
    def fsdp(self):
        return self.mesh is not None

    def autocast(self):
        """Matmuls in the compute dtype (bf16) with fp32 master weights, on a
        GPU or a CPU alike; norms, softmax and losses stay fp32 (model.py and
        the losses cast up). Under FSDP the MixedPrecisionPolicy casts the
        weights instead (shard()), so no autocast there. The two bf16 runs
        differ beyond rounding: under autocast only matmuls are bf16 (the
        embedding's output, the residual stream and the norms stay fp32);
        under FSDP every weight is bf16, and so is the residual stream."""
        if self.dtype != torch.float32 and not self.fsdp:
            return torch.autocast(self.device.split(":")[0], dtype=self.dtype)
        return nullcontext()


# The share of a GPU's memory the memory plans count on (sample.memory_plan for
# generation, training.memory_plan for training): the rest goes to the CUDA
# context, the allocator's fragmentation and NCCL's buffers
USABLE_GPU_SHARE = 0.85


def dtype_name(dtype):
    """'bfloat16' for torch.bfloat16: a dtype as settings and records write it."""
    return str(dtype).removeprefix("torch.")


def cpu_flags():
    """This CPU's feature flags, from /proc/cpuinfo (an empty set where that
    file is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(f.read().split())
    except OSError:
        return set()


def cpu_has_bf16(flags=None):
    """Does this CPU multiply bf16 matrices faster than fp32? x86 AMX, ARM's
    BF16 extension and AMD's AVX512-BF16 (Zen 4 and later) do; Intel's
    AVX512-BF16 without AMX does not. Measured, 2 threads, python bench.py
    train --bf16=always: on a 2-core Intel Xeon with AVX512-BF16 and no AMX
    the bench's 2048-square bf16 matmul ran at 163-166 GFLOP/s against fp32's
    314-324, and the toy preset trained 0.61x as fast in bf16; on a 2-core
    AMD EPYC (Zen 4) with AVX512-BF16, 413-416 against 186-187, and the toy
    preset trained 1.38x as fast, toy-large 1.84x; with AMX (the speed
    tables' box) bf16 matmuls ran 6.7x fp32, 2,200 GFLOP/s."""
    flags = cpu_flags() if flags is None else flags  # (describe() passes those it read)
    amd_avx512_bf16 = "avx512_bf16" in flags and "AuthenticAMD" in flags  # (the vendor_id line's word)
    return bool(flags & {"amx_bf16", "bf16"}) or amd_avx512_bf16  # 'bf16': ARM's flag


# Below this model width bf16 does not pay on a CPU: the matmuls are too small
# for the bf16 units to gain what the extra casts and kernel overheads cost
# (measured on the AMX box, 2026-12-01, 2 threads, with SDPA's attention:
# toy-small, width 128, pretraining M0 203 s in fp32 and 226 s in bf16; the
# toy preset, width 256, trains 1.48x faster in bf16, toy-large 2.1x: python
# bench.py train). With attention trained as bf16
# matmuls (model.causal_matmul_attention) toy-small's M0 does gain on the Zen 4
# box (214-225 s against 243-277), but its SFT stages' short rows do not, the
# whole default run gained less than two runs differ (bf16 9.5, 10.3, 10.3
# min of stages; fp32 10.5, 10.4), and bf16 held 4.1 GB at its peak against fp32's
# 0.9: toy-small stays fp32. (Again at commits 62d6c26 and 571b1d9, after
# micro-batches were grouped by length and fp32's dropout sped up: bf16 11.8
# and 10.0 min, its training stages slower, 2.6-2.8 GB at its peak; fp32
# 9.0-9.1 min, 0.67 GB. STUDIES.md, "The default run before the count change".)
CPU_BF16_MIN_WIDTH = 256


def compute_dtype(device, setting="auto", width=None):
    """The dtype a run computes in. 'auto': bfloat16 on a GPU, and on a CPU
    with fast bf16 matmuls (cpu_has_bf16) for models at least CPU_BF16_MIN_WIDTH wide (width:
    the model's dim, None if not known); else float32. 'bfloat16' or
    'float32' forces it."""
    if setting == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16
        wide = width is None or width >= CPU_BF16_MIN_WIDTH
        return torch.bfloat16 if cpu_has_bf16() and wide else torch.float32
    if setting not in ("bfloat16", "float32"):
        raise ValueError(f"dtype must be 'auto', 'bfloat16' or 'float32', not {setting!r}")
    return getattr(torch, setting)


def cpu_threads(setting=0):
    """CPU threads for torch's matmuls. 0: the cores this process may run on,
    shared evenly by the ranks on this machine (torchrun's LOCAL_WORLD_SIZE),
    so ranks never fight over cores. OMP_NUM_THREADS, when set, wins over 0,
    except a 1 with several ranks on the machine: torchrun sets that itself
    when the variable is unset, so it is its default, not a choice (pass
    threads=1 to pin one thread a rank). The thread count changes the order
    of float sums: the same seed, thread count and dtype give the same
    result; a different thread count, results that differ in the last bits
    and then drift."""
    if setting:
        return setting
    ranks_here = launched_here()
    if os.environ.get("OMP_NUM_THREADS") and not (os.environ["OMP_NUM_THREADS"] == "1" and ranks_here > 1):
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, usable_cores() // ranks_here)


def usable_cores():
    """The CPU cores this process may run on (its affinity mask, e.g. under a
    container's or taskset's limit), else all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def others_busy_cores(window=0.25):
    """How many of the cores this process may use other programs keep busy
    right now: the share of their time not idle over a short window, read
    twice from /proc/stat (Linux) while this process sleeps, times the cores.
    None where /proc/stat cannot be read (or, in a container that renumbers
    its cores there, names none of the affinity mask's: then no warning). A
    load average would lag: a run that ended a minute ago still counts in it."""
    if not (hasattr(os, "sched_getaffinity") and os.path.exists("/proc/stat")):
        return None
    names = {f"cpu{i}" for i in os.sched_getaffinity(0)}

    def ticks():  # per core: (all ticks, idle ticks); columns user nice system idle iowait irq softirq steal
        with open("/proc/stat") as f:
            rows = (line.split() for line in f if line.startswith("cpu"))
            return {r[0]: (sum(map(int, r[1:9])), int(r[4]) + int(r[5])) for r in rows if r[0] in names}
    try:
        before = ticks()
        time.sleep(window)
        after = ticks()
    except OSError:
        return None
    spent = sum(after[c][0] - before[c][0] for c in after)
    idle = sum(after[c][1] - before[c][1] for c in after)
    return len(after) * (spent - idle) / spent if spent else None


def launched_world():
    """How many ranks torchrun launched (WORLD_SIZE; 1 for a plain python),
    known before the process group exists: what the checks before any work
    divide batches and tensor-parallel groups by."""
    return int(os.environ.get("WORLD_SIZE", 1))


def launched_here():
    """How many of those ranks run on this machine (LOCAL_WORLD_SIZE): they share its cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def setup(device="", dtype="auto", threads=0, tp=1, width=None):
    """Start (or join) the process group when run under torchrun (RANK is set);
    otherwise a plain single process. device: '' picks cuda if available;
    dtype: the compute dtype (compute_dtype, for a model `width` wide);
    threads: CPU threads (cpu_threads);
    tp: ranks per tensor-parallel group for generation (inside a node: its
    all-reduces run every layer of every token); the world is a grid of
    world/tp groups (dp) of tp ranks. One process takes SIGTERM as Ctrl-C (sigterm_as_ctrl_c)."""
    torch.set_num_threads(cpu_threads(threads))
    sigterm_as_ctrl_c()
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:  # fp32 matmuls (one process sampling in fp32, fp32 parts of bf16 runs) on tensor cores
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    world = launched_world()
    if tp < 1 or world % tp:
        raise ValueError(f"tp={tp} must be >= 1 and divide the world size {world}")
    if "RANK" not in os.environ:
        device = device or ("cuda" if cuda else "cpu")
        return Env(device=device, dtype=compute_dtype(device, dtype, width))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    # one flat mesh over every rank of every node: plain FSDP (ZeRO-3)
    mesh = init_device_mesh("cuda" if cuda else "cpu", (dist.get_world_size(),))
    device = f"cuda:{local_rank}" if cuda else "cpu"
    # generation: consecutive ranks (one node's GPUs under torchrun) form a tp group
    tp_mesh = None if tp == 1 else init_device_mesh("cuda" if cuda else "cpu", (world // tp, tp),
                                                    mesh_dim_names=("dp", "tp"))
    return Env(rank=dist.get_rank(), world=dist.get_world_size(), device=device, mesh=mesh,
               owns_group=owns, dtype=compute_dtype(device, dtype, width), tp_mesh=tp_mesh)


def sigterm_as_ctrl_c():
    """SIGTERM (`kill`, a cluster scheduler's preemption) is raised as a
    KeyboardInterrupt, as Ctrl-C is: each script's Ctrl-C handling then says
    where it stopped and that the same command resumes, and a training state
    save in progress is finished first (training.ctrl_c_after), where
    SIGTERM's default would end the process in silence. One process only,
    where nobody has set a SIGTERM handler of their own (and in the main
    thread, which signals reach): under torchrun, SIGTERM is how torchrun
    stops the ranks left when one has failed, and a rank waiting in a
    collective would act on it only once the collective returned (torchrun
    would wait its 30 s, then kill it); there it keeps its default."""
    if "RANK" in os.environ or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def describe(env):
    """One line for the top of a run's log: where it computes, in what, and
    with how many threads (the three things that change its numbers)."""
    where = env.device if env.world == 1 else f"{env.world} ranks on {env.device.split(':')[0]}"
    why = ""
    if env.device == "cpu":
        flags = cpu_flags()
        fast_bf16 = cpu_has_bf16(flags)
        if fast_bf16 and env.dtype == torch.float32:  # (the toy-small default: too narrow to gain)
            why = f" (CPU has fast bf16 matmuls; float32 for a model narrower than {CPU_BF16_MIN_WIDTH}, or as set)"
        elif fast_bf16:
            why = " (CPU has fast bf16 matmuls)"
        elif "avx512_bf16" in flags:  # a flag users know, and not enough (cpu_has_bf16)
            why = " (Intel CPU with AVX512-BF16 but no AMX: bf16 matmuls slower than fp32)"
        else:
            why = " (CPU has no fast bf16 matmuls)"
    busy = ""
    if env.device == "cpu" and torch.get_num_threads() > 1:
        # said only where fewer threads is possible; this job's threads are
        # those of every rank on this machine (the others sleep through about the
        # same window: every rank describes right after setup)
        others = others_busy_cores()
        mine = torch.get_num_threads() * launched_here()
        if others is not None and others >= 0.75 and others + mine > usable_cores() + 0.5:
            busy = (f"; other programs keep {others:.1f} of {usable_cores()} cores busy: fewer threads "
                    f"(--threads) run much faster")
    return (f"computing on {where}, {dtype_name(env.dtype)}{why}, "
            f"{torch.get_num_threads()} CPU thread(s) per rank{busy}")


def for_generation(env):
    """The same processes, with models loaded in the generation layout
    (empty_model): tensor parallel over env.tp_mesh's tp groups, or, with
    tp = 1, a whole model on every rank. No FSDP: it would all-gather every
    weight for every decoded token."""
    return replace(env, mesh=None)


def teardown(env):
    """The end of a script's work: the objects it no longer references are
    collected, and the process group goes if the script made it. Sharded
    models often sit in reference cycles: they are collected here even when
    the group stays (a trainer inside the loop, whose next stage loads another
    model into the memory the plan counted as free), and before the group
    goes, or gloo's threads can be torn down at interpreter exit and abort the
    process. (A model in one process
    has no such cycles and went with its last reference: no collection, which
    costs 0.2 s or more with transformers loaded, as in the tests.)"""
    if env.fsdp:
        gc.collect()
    if env.device.startswith("cuda"):
        torch.cuda.empty_cache()  # (the freed blocks back to the GPU, for the next stage's other layout)
    if env.owns_group and dist.is_initialized():
        dist.barrier()  # gloo can crash at exit if a peer is still talking
        dist.destroy_process_group()


def is_rank0():
    """The one answer to "am I rank 0?": true in a plain process, and on the
    first rank under torchrun (before the process group exists, and after it
    is gone, torchrun's RANK says which). Only rank 0 prints and writes shared files."""
    return rank() == 0


def rank():
    """This process's rank: the process group's, or before it exists (and
    after it is gone) torchrun's RANK; 0 in a plain process."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def log(*args, file=None):
    """print, on rank 0 only (every rank runs the same code); file: sys.stderr
    for what is not a script's output (sample.py answers on stdout)."""
    if is_rank0():
        print(*args, file=file, flush=True)


def stop(message, status=1, every_rank=True):
    """End this process with a message and an exit status: 2 for input
    refused before any work, 1 for a failure during it. every_rank: every
    rank meets this same error (a setting, an input all ranks read, a count
    they agree on), so rank 0 alone prints it, and the others wait a moment
    before they exit, so that rank 0 has printed before torchrun, seeing a
    rank end, stops the rest. Otherwise (an error a rank may meet alone: its
    disk, its file system) each rank that meets it prints it, with its rank."""
    if is_rank0():
        print(message, file=sys.stderr, flush=True)
    elif not every_rank:
        print(f"[rank {rank()}] {message}", file=sys.stderr, flush=True)
    else:
        time.sleep(2)
    sys.exit(status)


@contextmanager
def sole_writer(env, folder, file=None):
    """While the body runs, no other job may write `folder` (a run folder, a
    trainer's out_dir): rank 0 holds an exclusive lock on folder/.lock. A
    second command on the same folder (by mistake, or while the ranks of a job
    whose torchrun was killed still run) is refused at once; two jobs writing
    the same stage records and training states would corrupt them without an
    error. The kernel drops the lock when the process ends, kill -9 included,
    so a killed run never leaves a stale one behind. Every rank learns the answer.
    file: lock this file instead, one the job writes itself (sample.py's
    OUT.partial): rank 0 gets it open to read and append (the body's value;
    None on other ranks), its content as it was."""
    lock, problem = None, ""
    if is_rank0():
        lock, problem = lock_folder(folder, file)
    if all_sum(env, bool(problem))[0]:  # every rank stops, or none
        stop(problem, 2)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.close()  # releases it


def lock_folder(folder, file=None):
    """(the open lock file, or None; what stops the job, or ""): sole_writer's
    lock, taken without waiting; on folder/.lock, where the holder writes who
    it is, or on `file`, left as it is."""
    path = file or os.path.join(folder, ".lock")
    try:
        os.makedirs(folder, exist_ok=True)
        try:
            lock = open(path, "a+", encoding="utf-8")
        except PermissionError:  # another user's lock file in a shared folder: a lock needs no writing
            if file:
                raise
            lock = open(path, encoding="utf-8")
    except OSError as e:
        return None, f"error: {path}: cannot open it to lock it: {e}"
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = "another process" if file else lock.readline().strip() or "another process"
        lock.close()
        return None, (f"error: {file or folder} is being written by another job ({holder}); nothing was run. "
                      f"Wait for it to end (or stop it), then run the same command again.")
    except OSError as e:  # a file system without locks (some network mounts): run, and say what is not checked
        log(f"warning: {path}: cannot lock it ({e.strerror}): a second job on it would not be refused")
        if file:
            return lock, ""  # the job writes it all the same
        lock.close()
        return None, ""
    if file:
        return lock, ""
    try:  # who holds it, for the message a second job gets (a full disk only loses the name)
        lock.truncate(0)
        lock.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
    except OSError:
        pass
    return lock, ""


def lock_holder(folder):
    """Who holds folder's sole_writer lock now (what it wrote of itself), or
    None; for a dry run, which neither takes the lock nor writes."""
    try:
        f = open(os.path.join(folder, ".lock"), encoding="utf-8")
    except OSError:
        return None
    with f:  # (closing it releases a lock taken here)
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.readline().strip() or "another process"
        except OSError:  # a file system without locks: nothing to tell
            pass
    return None


def barrier():
    """Wait for every rank (no-op in a plain process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_sum(env, *values):
    """Sum floats over all ranks (float64, so counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    if env.world > 1:
        dist.all_reduce(t)
    return t.tolist()


def rank0_answer(env, answer):
    """Rank 0's answer (True or False) on every rank, for a question about a
    file rank 0 itself may be about to write ("is this part done?"): a rank
    that asked the file system a moment later could see rank 0's new file and
    take another branch, one collective out of step with the others, and the
    job would hang. No rank goes on until every rank has asked."""
    return all_sum(env, float(bool(answer)) if is_rank0() else 0.0)[0] > 0


# -----------------------------------------------------------------------------
# Sharding: FSDP2, each block its own unit

def shard(model, env):
    """FSDP2: each block is its own unit (its parameters are all-gathered just
    before it runs and freed after), the root takes the embedding, final norm
    and output. In bf16 (env.dtype, GPU or CPU): FSDP casts each rank's fp32
    shard to bf16 before the all-gather (bf16 on the wire) and reduce-scatters
    gradients in fp32. It leaves the
    blocks' inputs alone (cast_forward_inputs=False): the residual stream
    comes out of the bf16 embedding in bf16 anyway, and the rotary cos/sin
    must stay fp32 (rounded to bf16 they move a token's angle by up to 2^-9
    of itself, and sampling stopped matching one process's bf16 run)."""
    mp = MixedPrecisionPolicy()
    if env.dtype != torch.float32:
        mp = MixedPrecisionPolicy(param_dtype=env.dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for block in model.layers:
        fully_shard(block, mesh=env.mesh, mp_policy=mp)
    fully_shard(model, mesh=env.mesh, mp_policy=mp)


def is_fsdp(model):
    """Is the model sharded by FSDP2 (shard)?"""
    return isinstance(model, FSDPModule)


def reshard(model):
    """After a forward pass without backward (eval, reference log-probs):
    FSDP2 keeps the root's parameters gathered until a backward that never
    comes, so free them explicitly (or an optimizer built now would hold the
    gathered copies instead of the shards)."""
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def empty_model(args, env, dtype=None):
    """Transformer(args) built on the meta device (shapes only, no memory),
    sharded when env has a mesh (parameters become DTensors, still on meta),
    then allocated on env.device: only this rank's shards, uninitialised,
    for checkpoint.load_tensors to fill."""
    with torch.device("meta"):
        model = Transformer(args)
    if dtype is not None:
        model.to(dtype)  # on the meta device: no memory is touched yet
    if env.fsdp:
        shard(model, env)
    elif env.tp_mesh is not None:
        tensor_parallel(model, env.tp_mesh["tp"])
    model.to_empty(device=env.device)
    return model


# -----------------------------------------------------------------------------
# Tensor parallel: generation inside a node

def tensor_parallel(model, mesh):
    """
    Megatron-style tensor parallelism (Shoeybi et al. 2019) with PyTorch's
    engine, over a 1-D mesh of tp ranks. In each block the first matmuls are
    split by output (column-wise: wq wk wv by heads, w1 w3 by FFN width), so
    each rank computes its own heads and its share of the FFN from the whole
    input with no communication; the second ones (wo, w2) by input
    (row-wise), so each rank's partial sum is all-reduced: two all-reduces of
    (B, T, dim) activations per layer, never a weight. The KV cache holds
    only this rank's heads (sample.KVCache takes the heads that arrive).
    The embedding is split by vocabulary rows (a masked lookup, all-reduced),
    the output by vocabulary rows too, its logits all-gathered so every rank
    samples the same tokens; a tied embedding (one matrix for both) is
    whole on every rank instead. The norms (dim numbers each) are whole on every
    rank. Parameters become DTensors (still on meta: no memory, nothing sent),
    for checkpoint.load_tensors to fill with this rank's slices.
    """
    tp, args = mesh.size(), model.args
    if args.n_kv_heads % tp or args.hidden_dim % tp:
        raise ValueError(f"tp={tp} must divide n_kv_heads {args.n_kv_heads} and the FFN width {args.hidden_dim}")
    block_plan = {"attention.wq": ColwiseParallel(), "attention.wk": ColwiseParallel(),
                  "attention.wv": ColwiseParallel(), "attention.wo": RowwiseParallel(),
                  "feed_forward.w1": ColwiseParallel(), "feed_forward.w3": ColwiseParallel(),
                  "feed_forward.w2": RowwiseParallel()}
    for block in model.layers:
        parallelize_module(block, mesh, block_plan, src_data_rank=None)  # None: split locally, no scatter
        block.attention.n_heads //= tp  # the heads this rank computes (the views in Attention.forward)
        block.attention.n_kv_heads //= tp
    if args.tie_embeddings:
        # one matrix for the input and the output (small models tie them): left whole on every rank, so
        # the logits need no gather and the embedding no masked lookup
        return model
    parallelize_module(model, mesh, {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate()),  # token ids: the same on every rank
        "output": ColwiseParallel(output_layouts=Replicate()),  # logits all-gathered: (B, T, V) on every rank
    }, src_data_rank=None)
    return model


def tp_size(model):
    """The ranks of the tensor-parallel group a model is split over (1: not split)."""
    w = model.layers[0].attention.wq.weight
    if isinstance(w, DTensor) and w.device_mesh.mesh_dim_names == ("tp",):
        return w.device_mesh.size()
    return 1


def sampling_share(model):
    """(share, shares): which share of the prompts this rank samples, of how
    many. One per rank (one process, replicas, FSDP); the ranks of a tensor-
    parallel group sample one share together (global rank = dp * tp + tp rank)."""
    if not dist.is_initialized():
        return 0, 1
    tp = tp_size(model)
    return dist.get_rank() // tp, dist.get_world_size() // tp


def local_slice(param):
    """(dim, start, end): the slice of a parameter this rank holds, on the dim
    its placement names. FSDP2 and the column-wise parallel layers split dim 0
    (rows), the row-wise parallel linear layers dim 1 (columns), and the
    row-wise parallel embedding dim 0 (the vocabulary), as torch.chunk does:
    ceil(n / ranks) a rank, the last ranks possibly fewer or none. A plain or
    replicated tensor: all of it."""
    if not isinstance(param, DTensor) or param.placements[0].is_replicate():
        return 0, 0, param.shape[0]
    (placement,) = param.placements
    assert isinstance(placement, Shard) and placement.dim in (0, 1), f"unexpected placement {placement}"
    n = param.shape[placement.dim]
    size = -(-n // param.device_mesh.size())
    start = min(param.device_mesh.get_coordinate()[0] * size, n)
    return placement.dim, start, min(start + size, n)


def local_rows(param):
    """(start, end): the rows (dim 0) of a parameter this rank holds: all of
    them unless it is split by rows."""
    dim, start, end = local_slice(param)
    return (start, end) if dim == 0 else (0, param.shape[0])


def local_part(full, param):
    """This rank's slice of `full`, a whole tensor (or a lazily read
    safetensors slice: only these bytes are read) of the shape of `param`."""
    dim, start, end = local_slice(param)
    return full[start:end] if dim == 0 else full[:, start:end]


def local_tensor(param):
    """The tensor this rank stores for a parameter (its shard under FSDP)."""
    return param.to_local() if isinstance(param, DTensor) else param


def full_tensor(param):
    """A parameter whole: under FSDP all-gathered from every rank (every rank
    must call), else the parameter itself."""
    return param.full_tensor() if isinstance(param, DTensor) else param


if __name__ == "__main__":
    import configurator
    configurator.library(__doc__, "distributed.py",
                         "every script sets up its processes through it (under torchrun too)")
