"""
What train_sft.py and train_dpo.py share: running one training script from a
laptop to a multi-node cluster without changing it.

    setup()             one process, or one of many under torchrun (gloo on CPU, nccl on GPU)
    build_model()       on `meta`, sharded with FSDP2, then each rank streams in only its slice
    save_model()        the Hugging Face layout, gathered one tensor at a time
    save_state()        model shards + optimizer + step with torch.distributed.checkpoint,
    load_state()        atomically, so the same command resumes after a kill
    memory_plan()       what each GPU will hold, before anyone launches 64 of them
    lr_at(), batch_indices(), split_even()   data order and schedule

Data parallelism is exact by construction: every loss is a SUM over the
examples (or tokens) of one micro-batch divided by the count over the whole
global batch on all ranks, so accumulation and sharding give the same
gradient as one big batch.
"""
import json
import math
import os
import shutil
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from data import write_text
from model import (Transformer, _hf_name, _write_atomically, hf_config, iter_meta_tensors, preset, read_config,
                   to_hf)


# -----------------------------------------------------------------------------
# The process group

@dataclass
class Env:
    rank: int = 0
    world: int = 1
    device: str = "cpu"
    mesh: object = None        # DeviceMesh over all ranks (None: one process, no FSDP)
    owns_group: bool = False   # we created the process group, so we destroy it

    @property
    def master(self):
        return self.rank == 0

    @property
    def fsdp(self):
        return self.mesh is not None

    def autocast(self):
        """bf16 compute with fp32 master weights on one GPU. Under FSDP the
        MixedPrecisionPolicy does the same cast, so no autocast there."""
        if self.device.startswith("cuda") and not self.fsdp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()


def setup(device=""):
    """Start (or join) the process group when run under torchrun (RANK is set);
    otherwise a plain single process. device: '' picks cuda if available."""
    cuda = torch.cuda.is_available() and device != "cpu"
    if "RANK" not in os.environ:
        return Env(device=device or ("cuda" if cuda else "cpu"))
    from torch.distributed.device_mesh import init_device_mesh
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    # one flat mesh over every rank of every node: plain FSDP (ZeRO-3)
    mesh = init_device_mesh("cuda" if cuda else "cpu", (dist.get_world_size(),))
    return Env(rank=dist.get_rank(), world=dist.get_world_size(),
               device=f"cuda:{local_rank}" if cuda else "cpu", mesh=mesh, owns_group=owns)


def teardown(env):
    if env.owns_group and dist.is_initialized():
        dist.barrier()  # gloo can crash at exit if a peer is still talking
        dist.destroy_process_group()


def all_sum(env, *values):
    """Sum floats over all ranks (float64, so counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    if env.world > 1:
        dist.all_reduce(t)
    return t.tolist()


def is_rank0():
    """The one answer to "am I rank 0?": true in a plain process, and on the
    first rank under torchrun. Only rank 0 prints and writes shared files."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier():
    """Wait for every rank (no-op in a plain process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def seed_step(seed, step, rank):
    """Reseed every RNG (dropout) from (seed, step, rank) at the start of each
    step: a resumed run draws exactly the numbers an uninterrupted one would,
    with no RNG state to carry in the checkpoint."""
    torch.manual_seed(seed * 1_000_003 + step * 1009 + rank)


# -----------------------------------------------------------------------------
# Data: JSON Lines, a reproducible order, the schedule

def hold_out(items, fraction, seed):
    """(train, eval): a fixed, seeded share of items held out for the eval loss."""
    n_eval = 0 if fraction <= 0 or len(items) < 2 else min(len(items) - 1, max(1, round(len(items) * fraction)))
    perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(perm[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


def batch_indices(step, batch_size, n, seed):
    """The examples of optimizer step `step`. The data is an endless stream of
    epochs, each a permutation drawn from (seed, epoch): the order depends on
    nothing but the step, so a resumed run sees the same batches."""
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(k, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.append(perm[i].item())
    return out


def split_even(items, rank, world):
    """This rank's share of items as (item, weight) pairs, the same number on
    every rank (short ranks repeat items[0] with weight 0): under FSDP every
    rank must run the same number of forward passes or the job hangs."""
    mine = [(x, 1) for x in items[rank::world]]
    per_rank = -(-len(items) // world)
    return mine + [(items[0], 0)] * (per_rank - len(mine))


def lr_at(step, max_steps, warmup_steps, lr, min_lr):
    """Linear warmup to lr, then cosine decay to min_lr at max_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def log_metrics(env, path, record):
    if env.master:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def trim_metrics(env, path, step):
    """On resume: keep only the metrics lines up to the resumed step, so the
    file reads as one run."""
    if env.master and os.path.exists(path):
        with open(path) as f:
            keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        write_text(path, "".join(keep))
    barrier()


# -----------------------------------------------------------------------------
# The model: built on meta, sharded, then filled slice by slice

def model_args(init_from, model, vocab_size, dropout):
    """ModelArgs of the starting checkpoint, or of a preset when from scratch."""
    if init_from == "scratch":
        return preset(model, vocab_size=vocab_size, dropout=dropout)
    args = read_config(init_from)
    args.dropout = dropout
    return args


def shard(model, env):
    """FSDP2: each block is its own unit (its parameters are all-gathered just
    before it runs and freed after), the root takes the embedding, final norm
    and output. On GPU: compute in bf16, reduce gradients in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy()
    if env.device.startswith("cuda"):
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, mesh=env.mesh, mp_policy=mp)
    fully_shard(model, mesh=env.mesh, mp_policy=mp)


def reshard(model):
    """After a forward pass without backward (eval, reference log-probs):
    FSDP2 keeps the root's parameters gathered until a backward that never
    comes, so free them explicitly (or an optimizer built now would hold the
    gathered copies instead of the shards)."""
    from torch.distributed.fsdp import FSDPModule
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def init_tensors(model, seed):
    """Random init for training from scratch, one full tensor at a time from a
    seeded generator, so one process and any number of ranks start from the
    same weights. The rule is Transformer.init_weights': N(0, 0.02), residual
    projections scaled by 1/sqrt(2 n_layers), norms at 1."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            yield name, torch.ones(p.shape)
        else:
            std = 0.02 / math.sqrt(2 * model.args.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 0.02
            yield name, torch.randn(p.shape, generator=g) * std


def local_rows(param):
    """(start, end): the rows (dim 0) of a parameter this rank holds. FSDP2
    shards dim 0 as torch.chunk does: ceil(n / world) rows a rank, the last
    ranks possibly fewer or none."""
    from torch.distributed.tensor import DTensor, Shard
    n = param.shape[0]
    if not isinstance(param, DTensor):
        return 0, n
    assert list(param.placements) == [Shard(0)], f"expected FSDP2's Shard(0), got {param.placements}"
    size = -(-n // param.device_mesh.size())
    start = min(param.device_mesh.get_coordinate()[0] * size, n)
    return start, min(start + size, n)


def local_slice(full, param):
    """The part of a full tensor that this rank holds of `param`."""
    start, end = local_rows(param)
    return full[start:end]


def iter_hf_slices(path, model):
    """
    Yield (name, this rank's rows) for every parameter of `model`, read from
    the memory-mapped safetensors files of an HF checkpoint with get_slice:
    a rank reads only its rows, so streaming 70B into 64 ranks reads each
    byte once, not 64 times. wq and wk are stored with their rows permuted
    within each head (see model.to_hf), so for them whole heads are read and
    un-permuted, then narrowed.
    """
    from safetensors import safe_open
    from model import _hf_to_meta_rope, safetensors_files
    weight_map = safetensors_files(path)
    expected = {_hf_name(n) for n, _ in model.named_parameters()}
    extra = [k for k in weight_map if k not in expected and not k.endswith("rotary_emb.inv_freq")]
    if extra:
        raise ValueError(f"{path}: unexpected tensors for this model: {', '.join(extra[:5])}")
    hd = model.args.head_dim
    for name, p in model.named_parameters():
        hf_name = _hf_name(name)
        if hf_name not in weight_map:
            raise ValueError(f"{path}: missing tensor {hf_name}")
        start, end = local_rows(p)
        if start == end:  # more ranks than rows: this rank holds none
            yield name, torch.empty((0,) + tuple(p.shape[1:]))
            continue
        with safe_open(os.path.join(path, weight_map[hf_name]), framework="pt") as f:
            part = f.get_slice(hf_name)
            if tuple(part.get_shape()) != tuple(p.shape):
                raise ValueError(f"{path}: tensor {hf_name} has shape {tuple(part.get_shape())}, "
                                 f"the config implies {tuple(p.shape)}")
            if name.endswith(("attention.wq.weight", "attention.wk.weight")):
                h0, h1 = start // hd, -(-end // hd)  # the heads covering our rows
                rows = _hf_to_meta_rope(part[h0 * hd:h1 * hd], h1 - h0)[start - h0 * hd:end - h0 * hd]
            else:
                rows = part[start:end]
        yield name, rows


@torch.no_grad()
def load_tensors(model, tensors, source, sliced=False):
    """Copy (name, tensor) pairs into the model, one at a time: each rank
    keeps only its rows of a full tensor, or takes them as they are when the
    reader already sliced them (sliced=True)."""
    from torch.distributed.tensor import DTensor
    params = dict(model.named_parameters())
    seen = set()
    for name, t in tensors:
        if name not in params:
            raise ValueError(f"{source}: unexpected tensor {name}")
        p = params[name]
        if not sliced and tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"{source}: tensor {name} has shape {tuple(t.shape)}, the model {tuple(p.shape)}")
        local = p.to_local() if isinstance(p, DTensor) else p
        local.copy_(t if sliced else local_slice(t, p))
        seen.add(name)
    missing = sorted(set(params) - seen)
    if missing:
        raise ValueError(f"{source}: missing tensors: {', '.join(missing[:5])}")


def build_model(env, init_from, model="toy", vocab_size=512, dropout=0.0, seed=1337,
                activation_checkpointing=False, compile=False):
    """The model to train: never materialised whole on any rank when sharded."""
    args = model_args(init_from, model, vocab_size, dropout)
    with torch.device("meta"):
        net = Transformer(args)  # shapes only
    if env.fsdp:
        shard(net, env)  # parameters become DTensors, still on meta
    net.to_empty(device=env.device)  # allocate only this rank's shards (fp32 master weights)
    if init_from == "scratch":
        load_tensors(net, init_tensors(net, seed), "random init")
    elif os.path.exists(os.path.join(init_from, "config.json")):
        load_tensors(net, iter_hf_slices(init_from, net), init_from, sliced=True)  # HF: read only our rows
    else:
        load_tensors(net, iter_meta_tensors(init_from, args), init_from)  # Meta's .pth: whole tensors
    net.activation_checkpointing = activation_checkpointing
    if compile:
        for block in net.layers:
            block.compile()  # in place: parameter names stay the same
    return net


def full_params(model):
    """Yield (name, full tensor) one parameter at a time: under FSDP each is
    all-gathered, used, and dropped before the next (every rank must call)."""
    from torch.distributed.tensor import DTensor
    for name, p in model.named_parameters():
        yield name, (p.full_tensor() if isinstance(p, DTensor) else p).detach()


# -----------------------------------------------------------------------------
# Saving the trained model in the Hugging Face layout, tensor by tensor

_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def save_model(model, env, path, tokenizer_path=None, dtype=torch.float32, max_shard_bytes=5 * 2**30):
    """
    Write config.json + safetensors shard(s) (+ index) + tokenizer.model.
    All shapes are known in advance, so each safetensors header is written
    first and tensors are streamed after it: rank 0 holds one tensor at a
    time, never a shard and never the model. Atomic: a temporary folder is
    renamed into place at the end.
    """
    args = model.args
    names = [n for n, _ in model.named_parameters()]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    itemsize = torch.empty(0, dtype=dtype).element_size()
    nbytes = {n: math.prod(shapes[n]) * itemsize for n in names}
    shards, size = [[]], 0  # consecutive tensors, at most max_shard_bytes a file
    for n in names:
        if shards[-1] and size + nbytes[n] > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(n)
        size += nbytes[n]
    files = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    tensors = full_params(model)

    def write(tmp):
        weight_map = {}
        for fname, group in zip(files, shards):
            # header: HF name -> dtype, shape (after to_hf, which only permutes rows), byte range
            header, offset = {"__metadata__": {"format": "pt"}}, 0
            for n in group:
                hf_name = _hf_name(n)
                header[hf_name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shapes[n]),
                                   "data_offsets": [offset, offset + nbytes[n]]}
                weight_map[hf_name] = fname
                offset += nbytes[n]
            blob = json.dumps(header).encode()
            blob += b" " * (-len(blob) % 8)  # the format aligns the data to 8 bytes
            f = open(os.path.join(tmp, fname), "wb") if env.master else None
            if f:
                f.write(len(blob).to_bytes(8, "little") + blob)
            for n in group:
                name, full = next(tensors)
                assert name == n
                if f:
                    _, t = to_hf(name, full.to("cpu", dtype), args)
                    f.write(t.contiguous().view(torch.uint8).numpy().tobytes())
                del full
            if f:
                f.close()
        if env.master:
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(hf_config(args, dtype), f, indent=2)
            if len(files) > 1:
                with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                    json.dump({"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}, f, indent=2)
            if tokenizer_path:
                shutil.copyfile(tokenizer_path, os.path.join(tmp, "tokenizer.model"))

    if env.master:
        _write_atomically(path, write)
    else:
        write(None)  # take part in the all-gathers, write nothing
    barrier()


# -----------------------------------------------------------------------------
# Training state for resume: torch.distributed.checkpoint, written atomically

def save_state(model, optimizer, step, path, env, info=None):
    """
    Model shards, optimizer state and the step, each rank writing its own
    shards (DCP needs a filesystem all ranks share). Written to path.tmp, then
    swapped in: a kill at any moment leaves `path` (or, between the two
    renames, path.old) holding the last complete state.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    tmp, old = path + ".tmp", path + ".old"
    if env.master and os.path.exists(tmp):
        shutil.rmtree(tmp)
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # one process: DCP warns that it is not distributed
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model_sd, "optim": optim_sd, "step": torch.tensor(step)}, checkpoint_id=tmp)
    barrier()
    if env.master:
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump({"step": step, **(info or {})}, f)  # for people; the step that counts is in DCP
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def load_state(model, optimizer, path, env):
    """Restore a state written by save_state; returns its step, or 0 if none."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    for candidate in (path, path + ".old"):  # .old: killed between the two renames
        if os.path.exists(os.path.join(candidate, "state.json")):
            break
    else:
        return 0
    model_sd, optim_sd = get_state_dict(model, optimizer)  # the shapes to load into
    state = {"model": model_sd, "optim": optim_sd, "step": torch.tensor(0)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=candidate)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return int(state["step"])


# -----------------------------------------------------------------------------
# The memory plan

def resume(model, optimizer, state_dir, metrics_path, env):
    """Load the last saved training state, if any, and return its step (0 for
    a fresh start); metrics lines a killed run wrote after that state go."""
    step = load_state(model, optimizer, state_dir, env)
    if step:
        if env.master:
            print(f"resumed from {state_dir} at step {step}", flush=True)
        trim_metrics(env, metrics_path, step)
    return step


def clip_and_step(model, optimizer, grad_clip):
    """Clip the global gradient norm (over all shards), take the optimizer
    step, clear the gradients; returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def memory_plan(args, world_size, micro_batch_size, seq_len, activation_checkpointing=False,
                gpu=True, gpu_memory_gb=80, dropout=0.0):
    """
    Bytes each GPU holds under FSDP2 with fp32 master weights and AdamW:
      sharded state     (4 param + 4 grad + 8 AdamW m,v) * P / world
      in flight         2 blocks' bf16 params (the running one + the prefetched
                        next), one block's fp32 gradient before its
                        reduce-scatter, and the root's embedding + output in bf16
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
    buffers inside kernels, NCCL buffers; leave 10-20% headroom. Attention
    dropout on the math SDPA kernel (CPU) stores T x T probabilities per head.
    """
    a = 2 if gpu else 4
    h, kv, f, L, V = args.dim, args.n_kv_heads * args.head_dim, args.hidden_dim, args.n_layers, args.vocab_size
    block = 2 * h + 2 * h * h + 2 * h * kv + 3 * h * f  # two norms, wq wo, wk wv, w1 w2 w3
    root = 2 * V * h + h
    P = L * block + root
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
        ("unsharded params/grads in flight", 2 * 2 * block + 4 * block + 2 * root if gpu else 4 * (2 * block + root)),
        ("activations" + (" (checkpointed)" if activation_checkpointing else ""), acts),
        ("logits and their fp32 loss", logits),
    ]
    total = sum(b for _, b in rows)
    lines = [f"memory plan: {P / 1e9:.2f}B parameters, world size {world_size}, micro-batch "
             f"{micro_batch_size} x {seq_len} tokens, activation checkpointing {activation_checkpointing}"]
    lines += [f"  {name:38s} {b / 2**30:9.2f} GiB" for name, b in rows]
    lines.append(f"  {'total per GPU':38s} {total / 2**30:9.2f} GiB")
    # the fewest GPUs for this micro-batch: only the 16 bytes/param shrink with world size
    usable = gpu_memory_gb * 1e9 * 0.85
    per_gpu_fixed = total - 16 * P / world_size
    if per_gpu_fixed >= usable:
        lines.append(f"  does not fit a {gpu_memory_gb} GB GPU at any world size: turn on "
                     "activation_checkpointing or lower the micro-batch")
    else:
        need = math.ceil(16 * P / (usable - per_gpu_fixed))
        lines.append(f"  {gpu_memory_gb} GB GPUs (85% usable): needs at least {need} GPUs "
                     f"({math.ceil(need / 8)} nodes of 8); {world_size} {'fits' if total <= usable else 'does NOT fit'}")
    return {"params": P, "rows": dict(rows), "total": total, "text": "\n".join(lines)}
