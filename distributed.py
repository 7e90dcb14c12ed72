"""
Running one script from a laptop to a multi-node cluster without changing it:
the process group, the device mesh, and sharding the model with FSDP2.

    setup(device, dtype, threads)
                            one plain process, or one of many under torchrun
                            (RANK is set): gloo on CPU, nccl on GPU, and a
                            flat device mesh over every rank of every node;
                            the compute dtype and the CPU thread count
    describe(env)           one line saying where and how a run computes
    is_rank0(), barrier()   the one place that answers "am I rank 0?" (only
                            rank 0 prints, log(), and writes shared files) and waits
    all_sum(env, ...)       sum numbers over ranks
    empty_model(args, env)  a Transformer built on `meta`, sharded, allocated
    local_rows(param)       which rows of a parameter this rank holds (local_part: those rows of a tensor)
    full_tensor(param)      a parameter whole, gathered from every rank

Reading a checkpoint into the shards is checkpoint.py's job, training with
them train_sft.py's and train_dpo.py's (with training.py).
"""
import gc
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard

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

    @property
    def fsdp(self):
        return self.mesh is not None

    def autocast(self):
        """Matmuls in the compute dtype (bf16) with fp32 master weights, on a
        GPU or a CPU alike; norms, softmax and losses stay fp32 (model.py and
        the losses cast up). Under FSDP the MixedPrecisionPolicy casts the
        weights instead (shard()), so no autocast there."""
        if self.dtype != torch.float32 and not self.fsdp:
            return torch.autocast(self.device.split(":")[0], dtype=self.dtype)
        return nullcontext()


def cpu_has_bf16():
    """Does this CPU multiply bf16 matrices natively (x86 AVX512-BF16 or AMX,
    ARM's BF16 extension)? There, bf16 matmuls run about 4x fp32. Read from
    /proc/cpuinfo's flags; where that file is missing, assume not."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def compute_dtype(device, setting="auto"):
    """The dtype a run computes in. 'auto': bfloat16 on a GPU and on a CPU
    with bf16 matrix units, else float32; 'bfloat16' or 'float32' forces it."""
    if setting == "auto":
        return torch.bfloat16 if device.startswith("cuda") or cpu_has_bf16() else torch.float32
    if setting not in ("bfloat16", "float32"):
        raise ValueError(f"dtype must be 'auto', 'bfloat16' or 'float32', not {setting!r}")
    return getattr(torch, setting)


def cpu_threads(setting=0):
    """CPU threads for torch's matmuls. 0: the cores this process may run on,
    shared evenly by the ranks on this machine (torchrun's LOCAL_WORLD_SIZE),
    so ranks never fight over cores. OMP_NUM_THREADS, when set, wins over 0.
    The thread count changes the order of float sums: the same seed, thread
    count and dtype give the same result; a different thread count, results
    that differ in the last bits and then drift."""
    if setting:
        return setting
    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def usable_cores():
    """The CPU cores this process may run on (its affinity mask, e.g. under a
    container's or taskset's limit), else all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def setup(device="", dtype="auto", threads=0):
    """Start (or join) the process group when run under torchrun (RANK is set);
    otherwise a plain single process. device: '' picks cuda if available;
    dtype: the compute dtype (compute_dtype); threads: CPU threads (cpu_threads)."""
    torch.set_num_threads(cpu_threads(threads))
    cuda = torch.cuda.is_available() and device != "cpu"
    if "RANK" not in os.environ:
        device = device or ("cuda" if cuda else "cpu")
        return Env(device=device, dtype=compute_dtype(device, dtype))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    # one flat mesh over every rank of every node: plain FSDP (ZeRO-3)
    mesh = init_device_mesh("cuda" if cuda else "cpu", (dist.get_world_size(),))
    device = f"cuda:{local_rank}" if cuda else "cpu"
    return Env(rank=dist.get_rank(), world=dist.get_world_size(), device=device, mesh=mesh,
               owns_group=owns, dtype=compute_dtype(device, dtype))


def describe(env):
    """One line for the top of a run's log: where it computes, in what, and
    with how many threads (the three things that change its numbers)."""
    where = env.device if env.world == 1 else f"{env.world} ranks on {env.device.split(':')[0]}"
    why = ""
    if env.device == "cpu":
        why = " (CPU has bf16 matrix units)" if cpu_has_bf16() else " (CPU has no bf16 matrix units)"
    busy = ""
    if env.device == "cpu" and hasattr(os, "getloadavg"):
        others = os.getloadavg()[0]  # runnable processes, mostly other programs' as we just started
        if others + torch.get_num_threads() > usable_cores() + 0.5:
            busy = f"; load average {others:.1f}: busy cores slow every thread (try --threads=1)"
    return (f"computing on {where}, {str(env.dtype).removeprefix('torch.')}{why}, "
            f"{torch.get_num_threads()} CPU thread(s) per rank{busy}")


def teardown(env):
    """Leave the process group. Sharded models hold it and often sit in
    reference cycles: collect them while the group still exists, or gloo's
    threads can be torn down at interpreter exit and abort the process."""
    if env.owns_group and dist.is_initialized():
        gc.collect()
        dist.barrier()  # gloo can crash at exit if a peer is still talking
        dist.destroy_process_group()


def is_rank0():
    """The one answer to "am I rank 0?": true in a plain process, and on the
    first rank under torchrun. Only rank 0 prints and writes shared files."""
    return not dist.is_initialized() or dist.get_rank() == 0


def log(*args):
    """print, on rank 0 only (every rank runs the same code)."""
    if is_rank0():
        print(*args, flush=True)


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


# -----------------------------------------------------------------------------
# Sharding: FSDP2, each block its own unit

def shard(model, env):
    """FSDP2: each block is its own unit (its parameters are all-gathered just
    before it runs and freed after), the root takes the embedding, final norm
    and output. In bf16 (env.dtype, GPU or CPU): FSDP casts the gathered
    weights to bf16 to compute and reduces gradients in fp32."""
    mp = MixedPrecisionPolicy()
    if env.dtype != torch.float32:
        mp = MixedPrecisionPolicy(param_dtype=env.dtype, reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, mesh=env.mesh, mp_policy=mp)
    fully_shard(model, mesh=env.mesh, mp_policy=mp)


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
    model.to_empty(device=env.device)
    return model


def local_rows(param):
    """(start, end): the rows (dim 0) of a parameter this rank holds. FSDP2
    shards dim 0 as torch.chunk does: ceil(n / world) rows a rank, the last
    ranks possibly fewer or none. A plain tensor: all of them."""
    n = param.shape[0]
    if not isinstance(param, DTensor):
        return 0, n
    assert list(param.placements) == [Shard(0)], f"expected FSDP2's Shard(0), got {param.placements}"
    size = -(-n // param.device_mesh.size())
    start = min(param.device_mesh.get_coordinate()[0] * size, n)
    return start, min(start + size, n)


def local_part(full, param):
    """This rank's rows of `full`, a whole tensor (or a lazily read safetensors
    slice) of the shape of `param`."""
    start, end = local_rows(param)
    return full[start:end]


def local_tensor(param):
    """The tensor this rank stores for a parameter (its shard under FSDP)."""
    return param.to_local() if isinstance(param, DTensor) else param


def full_tensor(param):
    """A parameter whole: under FSDP all-gathered from every rank (every rank
    must call), else the parameter itself."""
    return param.full_tensor() if isinstance(param, DTensor) else param
