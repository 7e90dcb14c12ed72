"""
Sampling from the model: batched generation with a KV cache.

    prompts -> [shared prefix prefill] -> prompt prefill -> n copies per prompt
            -> one-token decode steps until every row has its EOS or its budget

This file owns the KV cache (KVCache, and StaticKVCache for a compiled decode
step) and attention against it: model.py's Attention hands its queries, keys
and values to KVCache.attend whenever it is given a cache.

`generate(model, prompts, ...)` is what the rest of the project calls (the
self-rewarding loop samples candidate responses and judge evaluations with it);
run as a script it samples chat responses from a checkpoint:

    python sample.py --ckpt=out/toy/M1 --prompt="Reverse the word fox"
    python sample.py --ckpt=out/toy/M1 --prompts_file=in.jsonl --out=out.jsonl
    torchrun --nproc_per_node=8 sample.py --ckpt=... --prompts_file=... --out=... --tp=8

How the work is saved:
- Prefill once, then decode one token per step: every step reads the keys and
  values of earlier tokens from the cache instead of recomputing them.
- Prompts of different lengths share a batch: they are left-padded, the cache
  marks padding slots invalid and counts positions per row (KVCache, below).
- The n samples of one prompt copy its cache rows instead of prefilling n times.
- A long prefix common to all prompts (the judge's rubric) is prefilled once
  for the whole call and stored once: every row of every batch attends to that
  one copy (KVCache's prefix); rows are [prefix][pad][suffix].
- A row that is finished is dropped from the batch, so it stops costing work
  (checked every few steps on a GPU: each check waits for the GPU).
- The cache is allocated in the dtype the keys arrive in (bf16 weights, FSDP's
  mixed precision or autocast alike) and with the heads they arrive with (a
  tensor-parallel rank's share); it grows by chunks of slots as the rows
  fill it, and a step reads each layer's keys and values as one contiguous
  block; growing, dropping rows and making n copies happen one layer at a
  time, so the cache never needs twice its size.

Randomness: completion k (prompt k // n, sample k % n) draws its uniforms from
its own generator, seeded from (seed, k). So a seeded call draws the same
uniforms whatever the batching, the sharing of prefills, or the number of
ranks, and gives the same samples wherever the logits come out the same (fp32
on one layout; bf16 tensor parallel rounds otherwise: README, "Generation at
scale").
"""
import functools
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import distributed as D
from checkpoint import load_model, read_config
from configurator import configure, settings
from data import file_fingerprint, fingerprint, read_jsonl, unwritable_file, write_jsonl
from model import ModelArgs
from tokenizer import Tokenizer, chat_prompt_ids

# -----------------------------------------------------------------------------
# Command-line settings (python sample.py --help lists them)
ckpt = ""  # checkpoint folder (config.json, model.safetensors, the tokenizer's files)
prompt = ""  # one chat prompt to answer
prompts_file = ""  # or a JSONL file of records with a "prompt" field
out = ""  # with prompts_file: JSONL written here, each record plus "response" (or "responses" when num_samples > 1);
         # a file that exists is replaced only if it holds answers to the same prompts (an earlier run) or nothing
save_every = 256  # with prompts_file: prompts per chunk kept in OUT.partial as it goes (a killed run resumes
                  # from the last whole chunk); each chunk has its own seed, so seed and save_every fix the samples
max_new_tokens = 256  # at most this many tokens per response
temperature = 0.7  # 0: greedy
top_p = 0.9  # nucleus sampling: keep the smallest set of tokens with this much probability
num_samples = 1  # samples per prompt (not "n": torchrun would take --n= for its own --nnodes)
seed = 1337  # the same seed gives the same samples (None: a fresh random seed)
chat_template = ""  # '' = the checkpoint's own; or llama2, llama3, chatml
batch_size = 32  # sequences decoded together
tp = 1  # under torchrun: GPUs per tensor-parallel group (1: a whole model on every rank)
device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu | cuda (under torchrun: each rank's own GPU)
dtype = "auto"  # compute: 'auto' = bfloat16 on GPU, and on a CPU with fast bf16 matmuls for models at least 256 wide;
                # else float32 (the weights are cast to it)
threads = 0  # CPU threads; 0 = this process's cores / ranks on the machine (or OMP_NUM_THREADS)
compile = False  # torch.compile the decode step (CPU, fp32: decode 1.05-1.3x faster after 25-70 s of compiling)
progress = True  # show a progress bar
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}


# -----------------------------------------------------------------------------
# Choosing the next token

# Exercise (easy): nucleus (top-p) filtering, its running sum in float64. Graded by: tests/test_sample.py -k top_p
def top_p_filter(probs, top_p):
    """
    Nucleus filtering (Holtzman et al. 2019): keep the smallest set of tokens
    whose total probability reaches top_p, zero the rest (not renormalised).
    Order the tokens by probability, equally likely ones lower id first (a
    stable sort); a token is kept if the tokens before it in that order have
    less than top_p in total, a running sum taken in float64.
    probs: (B, V) -> (B, V)
    """
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    # (B, V): exclusive cumulative sum, in float64: an fp32 running sum over
    # 32,000 tokens drifts by ~1e-6, enough to drop a token at the boundary
    mass_before = F.pad(sorted_probs.double().cumsum(dim=-1)[:, :-1], (1, 0))
    keep_sorted = mass_before < top_p  # the most likely token is always kept (0 < top_p)
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return probs * keep


def next_token(logits, temperature, top_p, u):
    """
    logits: (B, V); u: (B,) float64 uniforms in [0, 1), one per row.
    Greedy when temperature == 0, else inverse-CDF sampling from the
    temperature-scaled, nucleus-filtered distribution. Returns (B,) ids.
    (Inverse CDF on uniforms given, not torch.multinomial: each row's
    uniforms come from its own generator (row_uniforms), so its draw does
    not depend on the batch it sits in.)
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs = top_p_filter(probs, top_p)
    # the first token whose cumulative probability exceeds u * total; in float64
    # so that u * total < total and a token of zero probability is never chosen
    cdf = probs.double().cumsum(dim=-1)  # (B, V)
    x = (u * cdf[:, -1])[:, None]  # (B, 1)
    return torch.searchsorted(cdf, x, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)


def row_uniforms(seed, rows, steps):
    """(len(rows), steps) float64 uniforms: row k's come from a generator
    seeded from (seed, k) only, so they do not depend on the batching."""
    u = torch.empty(len(rows), steps, dtype=torch.float64)
    g = torch.Generator()
    for i, k in enumerate(rows):
        g.manual_seed(hash((seed, k)) & (2**63 - 1))  # a tuple of ints hashes alike in every run (CPython 3.8+, 64-bit)
        u[i] = torch.rand(steps, generator=g, dtype=torch.float64)
    return u


def common_prefix_length(prompts):
    """The length of the longest prefix that every prompt starts with."""
    first, length = prompts[0], min(map(len, prompts))
    for p in prompts[1:]:
        i = 0
        while i < length and p[i] == first[i]:
            i += 1
        length = i
    return length


# -----------------------------------------------------------------------------
# The KV cache: keys and values of every token so far, so a decode step
# computes attention for one new token instead of the whole sequence

# Exercise (hard): a decode step of grouped-query attention. Graded by: tests/test_sample.py -k decode_attention
def decode_attention(q, k, v, mask, shared=None):
    """
    softmax(q k^T / sqrt(hd) + mask) v for one new token per row, against the
    KV cache, written out as batched matmuls: for a single query SDPA's CPU
    kernel is several times slower, and fewer ops means less per-op overhead.
    q: (B, 1, H, hd); k, v: (B, KV, S, hd) each row's own slots;
    shared: None, or keys and values (1, KV, P, hd) of a prefix every row
    attends to first, stored once (see KVCache); mask: (B, 1, 1, P + S) additive.
    Query head h attends with KV head h // (H // KV): a group's H // KV query
    heads are consecutive, as SDPA's enable_gqa takes them (model.py). One softmax
    runs over the P prefix slots and the S own slots together.
    Returns (B, 1, H * hd), ready for wo.
    """
    B, _, H, hd = q.shape
    KV, S = k.shape[1], k.shape[2]
    G, P = H // KV, 0 if shared is None else shared[0].shape[2]
    # the G = H/KV query heads of a group share one key/value head: they are the
    # G rows of one (G, hd) @ (hd, S) matmul, so K and V are read once, never copied
    scores = torch.bmm(q.view(B * KV, G, hd), k.reshape(B * KV, S, hd).transpose(1, 2)).view(B, H, S)
    if shared is not None:
        # the prefix is read once for the whole batch: all B*G queries of a KV
        # head are the rows of one matmul, instead of B copies read row by row
        # (the same sums as with the prefix copied into every row's slots:
        # scores (B, H, P + S) = [q . prefix keys, q . own keys])
        qs = q.view(B, KV, G, hd).transpose(0, 1).reshape(KV, B * G, hd)  # each KV head's queries of all rows
        prefix_scores = torch.bmm(qs, shared[0][0].transpose(1, 2))  # (KV, B*G, P)
        prefix_scores = prefix_scores.view(KV, B, G, P).transpose(0, 1).reshape(B, H, P)  # back to rows, heads
        scores = torch.cat([prefix_scores, scores], dim=-1)  # (B, H, P + S)
    scores = torch.add(mask.view(B, 1, P + S), scores, alpha=hd ** -0.5)  # scale and mask in one op
    probs = scores.softmax(-1, dtype=torch.float32).to(v.dtype)  # (B, H, P + S): one softmax over both parts
    y = torch.bmm(probs[:, :, P:].reshape(B * KV, G, S), v.reshape(B * KV, S, hd))  # (B*KV, G, hd)
    if shared is not None:
        probs = probs[:, :, :P].reshape(B, KV, G, P).transpose(0, 1).reshape(KV, B * G, P)  # as qs
        prefix_y = torch.bmm(probs, shared[1][0]).view(KV, B, G, hd).transpose(0, 1)  # (B, KV, G, hd)
        y = y.view(B, KV, G, hd) + prefix_y  # each row's own slots' share plus the prefix's
    return y.reshape(B, 1, H * hd)



class KVCache:
    """
    A key/value cache for batched sampling: for each layer, buffers
    (capacity, n_kv_heads, slots, head_dim) filled left to right, of which
    the first B rows are in use.

    One forward pass of model.Transformer with a cache makes three calls:
      begin(tokens, pad_mask)   once, before the layers: marks which of the
                                new tokens' slots are real (not padding), decides
                                what each query may see, and returns the
                                tokens' positions, for the rotary angles;
      attend(layer, q, k, v)    in each layer's attention: stores this layer's
                                new keys and values, then attends the queries
                                to everything cached (prefill or decode);
      end(T)                    once, after the layers: the T new slots count
                                as filled.

    All rows share the same slot index, and a boolean `valid` (B, max_slots)
    marks which slots hold real tokens of that row; padding slots (rows whose
    prompts are shorter) and slots not yet filled are never attended to. Each
    row's positions count only its own valid slots, so rotary angles are right
    whatever the padding.

    A padding slot's own query attends to itself, so no attention row is ever
    fully masked (softmax of all -inf would be NaN); its output is discarded.

    The buffers grow by whole chunks of CHUNK slots (up to max_slots), and
    attention reads every slot of them, filled or not (the mask hides the
    rest): then the keys and values a step reads are one contiguous block.
    A slice of a bigger buffer is not (its rows lie max_slots apart), and
    the CPU's bf16 batched matmul copies such a slice whole at every layer of
    every step, which costs more than the up to CHUNK - 1 masked slots and
    the copy into a bigger buffer once per CHUNK steps.

    With `prefix` (a filled one-row KVCache, e.g. the judge's rubric), every
    row continues that prefix: its keys/values are stored once and attended to
    by all rows (`shared`), the buffers here hold only each row's own slots.

    The buffers are allocated at the first write, from the keys that arrive:
    their dtype is the compute dtype, whatever set it (bf16 weights, FSDP2's
    MixedPrecisionPolicy casting fp32 master weights, autocast), and their
    heads are this rank's under tensor parallelism. `capacity` rows are
    allocated (default: rows), so that select() can make n copies of
    each prompt's rows, or drop finished ones, in place.
    """
    CHUNK = 32  # slots added to the buffers at a time

    def __init__(self, args: ModelArgs, rows, max_slots, device, prefix=None, capacity=None):
        # rows: one per prompt at the prefill (select() changes how many are in use); max_slots: the most
        # slots a row fills, its padded prompt plus the new tokens (a shared prefix is stored apart)
        self.n_layers, self.capacity = args.n_layers, capacity or rows
        # per layer, keys and values (capacity, KV, slots, hd): allocated by the first update, grown by update
        self.keys = self.values = None
        self.valid = torch.zeros(rows, max_slots, dtype=torch.bool, device=device)
        self.max_slots = max_slots
        self.length = 0  # slots filled so far (the same for every row)
        self.slots = 0  # slots the buffers hold per row, filled or not
        self.allowed = self.mask = None  # this forward pass's attention mask: boolean, then additive
        # prefix: a filled KVCache of one row (no padding) that every row of this
        # one continues, e.g. the judge's rubric: stored once, not once per row
        self.prefix = prefix

    @property
    def rows_in_use(self):
        return self.valid.shape[0]

    def layer(self, layer):
        """`layer`'s keys and values of the rows in use, (B, KV, slots, hd) each."""
        return self.keys[layer][:self.rows_in_use], self.values[layer][:self.rows_in_use]

    def shared(self, layer):
        """The prefix's keys and values (1, KV, P, hd) for `layer`, or None."""
        if self.prefix is None:
            return None
        P = self.prefix.length
        k, v = self.prefix.layer(layer)
        return k[:, :, :P], v[:, :, :P]

    def next_positions(self):
        """(B,) the position the next real token of each row will have."""
        positions = self.valid[:, :self.length].sum(dim=1)
        return positions if self.prefix is None else positions + self.prefix.length

    def slots_for(self, end):
        """The slots the buffers must hold once `end` are filled: whole chunks, at most max_slots."""
        return max(self.slots, min(self.max_slots, -(-end // self.CHUNK) * self.CHUNK))

    def begin(self, tokens, pad_mask=None):
        """Prepare a forward pass over `tokens` (B, T) written at slots
        length .. length+T-1; pad_mask (B, T) is True at padding tokens.
        Returns the tokens' positions (B, T)."""
        B, T = tokens.shape
        start, end = self.length, self.length + T
        if end > self.max_slots:
            raise ValueError(f"KV cache full: {end} slots needed, room for {self.max_slots}")
        self.slots = S = self.slots_for(end)  # this pass attends over all S slots; those past `end` are not valid
        if T == 1 and pad_mask is None:
            # a decode step, the hot loop of sampling: kept to a few cheap ops.
            # One real token per row; every valid slot is in its past.
            positions = self.next_positions()[:, None]
            self.valid[:, start] = True
            allowed = self.valid[:, None, None, :S]  # (B, 1, 1, S)
        else:
            real = torch.ones(B, T, dtype=torch.bool, device=tokens.device) if pad_mask is None else ~pad_mask
            # padding does not advance a row's positions, so its first real token comes right after the
            # prefix (or at 0); a leading pad would be at -1: clamped, its output is discarded
            positions = (self.next_positions()[:, None] + real.cumsum(dim=1) - 1).clamp(min=0)
            self.valid[:, start:end] = real
            # (B, 1, T, S): causal over slots, only valid slots, and every
            # query may see its own slot (so padding rows are not empty)
            slots = torch.arange(S, device=tokens.device)
            causal = slots[None, :] <= (start + torch.arange(T, device=tokens.device))[:, None]  # (T, S)
            own = slots[None, :] == (start + torch.arange(T, device=tokens.device))[:, None]
            allowed = ((causal[None] & self.valid[:, None, :S]) | own[None])[:, None]
        self.allowed, self.mask = allowed, None
        return positions

    def attention_mask(self, dtype):
        """This forward pass's mask as an additive one (0 / -inf) in the compute
        dtype (SDPA would convert a boolean one in every layer), made at its
        first layer; every prefix slot is visible to every query."""
        if self.mask is None:
            self.mask = torch.zeros(self.allowed.shape, dtype=dtype, device=self.allowed.device)
            self.mask.masked_fill_(~self.allowed, float("-inf"))
            if self.prefix is not None:
                self.mask = F.pad(self.mask, (self.prefix.length, 0))
        return self.mask

    def update(self, layer, k, v):
        """Write k, v (B, KV, T, hd) at the next T slots of `layer`; return all
        of its keys and values, (B, KV, slots, hd) views of the buffers."""
        if self.keys is None:  # the first write: now the dtype and the heads are known
            self.keys, self.values = ([k.new_zeros(self.capacity, k.shape[1], 0, k.shape[3])
                                       for _ in range(self.n_layers)] for _ in "kv")
        for buffers in (self.keys, self.values):
            if buffers[layer].shape[2] < self.slots:  # grow: a bigger buffer, this layer only, and the
                bigger = k.new_zeros(self.capacity, k.shape[1], self.slots, k.shape[3])  # filled slots copied
                bigger[:, :, :self.length] = buffers[layer][:, :, :self.length]
                buffers[layer] = bigger
        k_all, v_all = self.layer(layer)
        k_all.narrow(2, self.length, k.shape[2]).copy_(k)  # narrow + copy_: the fewest ops for a write
        v_all.narrow(2, self.length, k.shape[2]).copy_(v)
        return k_all, v_all

    def attend(self, layer, q, k, v):
        """
        Attention for `layer` with the cache (Attention.forward calls this when
        sampling): store this pass's keys and values, then attend over every
        valid slot so far. q: (B, T, H, hd); k, v: (B, T, KV, hd) with rotary
        already applied. Returns (B, T, H * hd), ready for wo.
        """
        B, T, H, hd = q.shape
        k, v = self.update(layer, k.transpose(1, 2), v.transpose(1, 2))  # (B, KV, S, hd): all cached so far
        mask = self.attention_mask(q.dtype)
        if T == 1:  # a decode step: the hot loop of sampling
            return decode_attention(q, k, v, mask, self.shared(layer))
        # a prefill: T new tokens per row, masked by begin() (causal, valid slots only)
        if self.prefix is not None:  # behind a shared prefix: attend to it too (a copy, in prefill only)
            pk, pv = self.shared(layer)
            k = torch.cat([pk.expand(B, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.expand(B, -1, -1, -1), v], dim=2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask,
                                           enable_gqa=k.shape[1] != H)  # (B, H, T, hd)
        return y.transpose(1, 2).reshape(B, T, H * hd)

    def end(self, T):
        self.length += T
        self.allowed = self.mask = None

    def select(self, rows):
        """
        Keep these rows, in this order (rows: 1-D index tensor, repeats allowed,
        at most `capacity`): copy a prompt's rows for n samples, or drop
        finished rows so they stop costing work. In place, one layer at a
        time: the peak is the cache plus one layer's rows, never two caches.
        """
        rows = torch.as_tensor(rows, device=self.valid.device)
        n, end = len(rows), self.length
        if n > self.capacity:
            raise ValueError(f"KV cache has room for {self.capacity} rows, {n} asked for")
        for buffers in (self.keys, self.values):
            for layer in range(self.n_layers):  # gather (a copy of one layer's rows) then write back
                in_use = buffers[layer][:self.rows_in_use, :, :end]
                buffers[layer][:n, :, :end] = in_use.index_select(0, rows)
        self.valid = self.valid.index_select(0, rows)
        return self

    def repeat_interleave(self, n):
        """Copy every row n times (n samples of one prompt share its prefill);
        allocate the cache with capacity = rows * n."""
        return self.select(torch.arange(self.rows_in_use, device=self.valid.device).repeat_interleave(n))


# -----------------------------------------------------------------------------
# A cache for a compiled decode step

class StaticKVCache(KVCache):
    """
    The KV cache for a torch.compile'd decode step. KVCache writes at a
    Python int that changes every step and grows its buffers, so a compiled
    step would be recompiled again and again. Here the buffers hold all
    max_slots slots from the start, a decode step touches tensors only (the
    slot to write is a tensor, attention covers all max_slots slots, unfilled
    ones masked), and the compiler sees one graph for the whole loop (as
    gpt-fast does). Prefill runs eagerly through KVCache.
    """

    def slots_for(self, end):
        return self.max_slots

    @property
    def length(self):  # the filled slots, kept as a tensor: `slot`
        return int(self.slot)

    @length.setter
    def length(self, value):
        self.slot = torch.full((1,), value, dtype=torch.long, device=self.valid.device)

    def begin(self, tokens, pad_mask=None):
        self.decoding = tokens.shape[1] == 1 and pad_mask is None
        if not self.decoding:
            return super().begin(tokens, pad_mask)
        positions = self.valid.sum(dim=1, keepdim=True)  # (B, 1): unfilled slots are not valid
        if self.prefix is not None:
            positions = positions + self.prefix.length
        self.valid.index_fill_(1, self.slot, True)
        # (the buffers are allocated by now: the mask takes their dtype)
        self.mask = torch.zeros(self.valid.shape, dtype=self.keys[0].dtype, device=self.valid.device)
        self.mask = self.mask.masked_fill(~self.valid, float("-inf"))[:, None, None, :]  # (B, 1, 1, max_slots)
        if self.prefix is not None:  # every prefix slot is visible
            self.mask = F.pad(self.mask, (self.prefix.length, 0))
        return positions

    def update(self, layer, k, v):
        if not self.decoding:
            return super().update(layer, k, v)
        k_all, v_all = self.layer(layer)
        k_all.index_copy_(2, self.slot, k)  # k: (B, KV, 1, hd) into slot `slot`
        v_all.index_copy_(2, self.slot, v)
        return k_all, v_all

    def end(self, T):
        if not self.decoding:
            return super().end(T)
        self.slot = self.slot + 1
        self.allowed = self.mask = None



# -----------------------------------------------------------------------------
# Generation

def _check_args(model, prompts, max_new_tokens, temperature, top_p, n, batch_size):
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty (give at least a BOS token)")
        if len(p) >= model.args.max_seq_len:
            raise ValueError(f"prompt {i} has {len(p)} tokens: no room to generate within the "
                             f"model's context of max_seq_len={model.args.max_seq_len}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")


def fits(model, prompt):
    """Does a prompt (token ids) leave room in the model's context to generate?
    generate() refuses one that does not; callers facing real data skip and count it."""
    return 0 < len(prompt) < model.args.max_seq_len


def without_autograd(generate):
    """generate() with autograd off: under inference_mode, not no_grad, which
    also skips autograd's version counters and view tracking, a cost per
    operator, and a decode step is mostly small operators (SPEED.md: 7-11%
    more tokens/s at batch 8, 0-5% at 64). An FSDP2 model runs under no_grad:
    over a single rank (torchrun on one GPU) FSDP2 copies its parameters in
    place under a guard of their version counters, which inference tensors
    lack."""
    @functools.wraps(generate)
    def run(model, *args, **kwargs):
        with torch.no_grad() if D.is_fsdp(model) else torch.inference_mode():
            return generate(model, *args, **kwargs)
    return run


def new_token_budget(model, prompt_ids, max_new_tokens):
    """How many tokens generate() may add after a prompt: max_new_tokens, or
    less where the context would overflow. A completion this long was cut
    off, not ended by a stop id (generate cuts completions before it)."""
    return min(max_new_tokens, model.args.max_seq_len - len(prompt_ids))


@without_autograd
def generate(model, prompts, max_new_tokens, temperature=1.0, top_p=1.0, n=1, eos_id=None,
             seed=None, batch_size=32, min_shared_prefix=64, compile=False, progress=True, check_every=None):
    """
    Sample n completions for each prompt (a list of token-id lists).

    Returns a flat list of len(prompts) * n completions, completion j of prompt
    i at index i * n + j; each is a list of new token ids, cut before eos_id
    (when given: an id, or a list of ids that each end a row, such as
    tokenizer.stop_ids) and after max_new_tokens, or where prompt +
    completion fill the model's context (max_seq_len).

    temperature: 0 is greedy (argmax). top_p: nucleus sampling, 1.0 is off.
    seed: the same seed gives the same completions whatever batch_size and
        prefix sharing (None: draw one from torch's global RNG); n is part of
        the request: completion i * n + j draws from its own generator.
    batch_size: sequences decoded together (prompts per batch: batch_size // n,
        at least one: with n > batch_size, one prompt's n rows).
    min_shared_prefix: prefill a common prefix of all prompts once when it is
        at least this many tokens (None: never).
    compile: torch.compile the decode step.
    check_every: decode steps between looks at which rows are finished (to
        drop them, and to stop). A look waits for the device, which a GPU
        otherwise never does within a decode loop; rows finished in between
        are decoded and discarded. None: 1 on a CPU (waiting is free), 8 on
        a GPU. The results do not depend on it.
    Under torch.distributed every rank passes the same prompts; each rank
    (a tensor-parallel group: its ranks together) samples a share, every
    rank runs the same number of forward passes, and every rank gets all the
    results. The model may be whole on every rank, FSDP-sharded or tensor
    parallel (distributed.for_generation).
    """
    _check_args(model, prompts, max_new_tokens, temperature, top_p, n, batch_size)
    if check_every is None:
        check_every = 8 if _device(model).type == "cuda" else 1
    eos_id = None if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id)
    if max_new_tokens == 0:
        return [[] for _ in range(len(prompts) * n)]
    training = model.training
    model.eval()  # no dropout while sampling; the caller's mode comes back after
    try:
        return _generate(model, prompts, max_new_tokens, temperature, top_p, n, eos_id, seed,
                         batch_size, min_shared_prefix, compile, progress, check_every)
    finally:
        model.train(training)


def _generate(model, prompts, max_new_tokens, temperature, top_p, n, eos_id, seed,
              batch_size, min_shared_prefix, compile, progress, check_every):
    """generate() after the checks: split the work over ranks and batches."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    share_index, shares = D.sampling_share(model)  # tensor parallel: a group's ranks share one share
    if seed is None:
        seed = int(torch.randint(2**62, ()))
        if world > 1:  # everyone uses rank 0's
            box = [seed]
            dist.broadcast_object_list(box, src=0)
            seed = box[0]

    # A prefix shared by all prompts (decided on all prompts, so the same on every rank);
    # every prompt keeps at least one token of its own, whose logits start sampling.
    P = common_prefix_length(prompts) if len(prompts) > 1 else 0
    P = min(P, min(map(len, prompts)) - 1)
    if min_shared_prefix is None or P < min_shared_prefix:
        P = 0

    # Sort by length (less padding in each batch), deal out to shares round-robin,
    # and pad every share to the same length so all ranks run the same batches.
    # Why in lockstep: under FSDP every forward pass all-gathers each block's
    # weights from all ranks, under tensor parallelism it all-reduces
    # activations, so a rank that made fewer passes would leave the others
    # waiting in a collective forever. Hence the fillers here, and in the
    # decode loop a rank with nothing left keeps stepping one dummy row.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    share = order[share_index::shares]
    real = len(share)  # this rank's own prompts; the fillers after them have their results dropped
    n_share = -(-len(prompts) // shares)
    share = share + [share[-1] if share else order[0]] * (n_share - len(share))

    # a compiled decode step needs a cache whose decode step has fixed shapes
    decode = torch.compile(model, dynamic=True) if compile else model
    cache_class = StaticKVCache if compile else KVCache
    prefix_cache = None
    if P > 0:  # prefilled once, then attended to by every row of every batch, never copied
        prefix_cache = KVCache(model.args, 1, P, _device(model))
        # only its keys and values are needed
        model(torch.tensor([prompts[0][:P]], device=_device(model)), cache=prefix_cache, last_only=True)

    per_batch = max(1, batch_size // n)
    results = {}
    # rank 0's bar counts every rank's prompts: all shares run the same batches in step
    with tqdm(total=len(prompts), desc="sampling", unit="prompt", disable=not progress or not D.is_rank0()) as bar:
        for b in range(0, n_share, per_batch):
            idx = share[b:b + per_batch]
            completions = _generate_batch(
                model, decode, cache_class, [prompts[i] for i in idx], idx, P, prefix_cache, max_new_tokens,
                temperature, top_p, n, eos_id, seed, world, check_every)
            for j, i in enumerate(idx):
                if b + j < real:
                    results[i] = completions[j * n:(j + 1) * n]
            bar.update(min(len(prompts), (b + len(idx)) * shares) - bar.n)

    if world > 1:  # every rank gets everything
        gathered = [None] * world
        dist.all_gather_object(gathered, results)
        results = {i: c for part in gathered for i, c in part.items()}
    return [c for i in range(len(prompts)) for c in results[i]]


def _device(model):
    return next(model.parameters()).device


def _generate_batch(model, decode, cache_class, prompts, prompt_index, P, prefix_cache, max_new_tokens,
                    temperature, top_p, n, eos_id, seed, world, check_every):
    """Sample n completions for each of a batch of prompts; returns len(prompts)*n lists."""
    dev, B, N = _device(model), len(prompts), len(prompts) * n

    # Prefill: [shared prefix][left padding][suffix], the last slot real for every row.
    suffixes = [p[P:] for p in prompts]
    T = max(map(len, suffixes))
    tokens = torch.zeros(B, T, dtype=torch.long)
    pad_mask = torch.ones(B, T, dtype=torch.bool)
    for r, s in enumerate(suffixes):
        tokens[r, T - len(s):] = torch.tensor(s)
        pad_mask[r, T - len(s):] = False
    # [shared prefix, stored once in prefix_cache][left padding][suffix]
    cache = cache_class(model.args, B, T + max_new_tokens, dev, prefix=prefix_cache, capacity=N)
    logits = model(tokens.to(dev), cache=cache, pad_mask=pad_mask.to(dev), last_only=True)[:, -1]  # (B, V)

    # n samples per prompt: copy the rows, not the work
    if n > 1:
        cache.repeat_interleave(n)
        logits = logits.repeat_interleave(n, dim=0)  # (N, V)
    completion_index = [i * n + j for i in prompt_index for j in range(n)]  # each row's place in the whole request
    u = row_uniforms(seed, completion_index, max_new_tokens).to(dev) if temperature > 0 else None
    budget = torch.tensor([new_token_budget(model, p, max_new_tokens) for p in prompts for _ in range(n)], device=dev)
    stops = torch.tensor(eos_id if eos_id is not None else [], dtype=torch.long, device=dev)

    out = torch.full((N, max_new_tokens), -1, dtype=torch.long, device=dev)  # (N, steps)
    rows = torch.arange(N, device=dev)  # which completion each row of the cache is
    done = torch.zeros(N, dtype=torch.bool, device=dev)  # per cache row: finished, later tokens discarded
    alive = True  # False: this rank has nothing left but keeps stepping with its peers
    for step in range(max_new_tokens):
        tok = next_token(logits, temperature, top_p, u[rows, step] if u is not None else None)  # (rows,)
        if alive:
            out[rows, step] = tok.masked_fill(done, -1)
            done |= step + 1 >= budget[rows]
            done |= torch.isin(tok, stops)
        if step + 1 == max_new_tokens:
            break
        if (step + 1) % check_every == 0:  # the only host syncs of the loop
            if alive and done.any():  # drop finished rows from the cache (in place)
                keep = (~done).nonzero().squeeze(1)
                if len(keep) == 0:
                    alive = False
                    keep = keep.new_zeros(1)  # keep one row to step with the other ranks
                cache.select(keep)
                rows, tok, done = rows[keep], tok[keep], done[keep]
            if world > 1:  # stop when every rank is done, all together
                anyone = torch.tensor([int(alive)], device=dev)
                dist.all_reduce(anyone, op=dist.ReduceOp.MAX)
                if not anyone.item():
                    break
            elif not alive:
                break
        logits = decode(tok[:, None], cache=cache)[:, -1]

    # cut each row at its budget and before its EOS (-1: the steps after a row finished, all past
    # one of those cuts; the filter is a guard)
    result, stop_set = [], set(eos_id or [])
    for row, limit in zip(out.tolist(), budget.tolist()):
        row = row[:limit]
        ends = [i for i, t in enumerate(row) if t in stop_set]
        if ends:
            row = row[:ends[0]]
        result.append([t for t in row if t >= 0])
    return result


# -----------------------------------------------------------------------------
# The generation memory plan

def memory_plan(args: ModelArgs, tp, batch_size, context, new_tokens, gpu_memory_gb=80, dtype_bytes=2):
    """
    Bytes each GPU holds while sampling with a tensor-parallel group of tp
    GPUs (the model's weights in the compute dtype, dtype_bytes each; bf16: 2),
    a batch of batch_size rows of `context` tokens (prompt + new_tokens):
      weights      every parameter * dtype_bytes / tp (the norms, whole on
                   every rank, are a few MB; a tied embedding is whole too)
      KV cache     2 (keys, values) * n_layers * (n_kv_heads / tp) * head_dim
                   * dtype_bytes per token, for batch_size * context tokens
      prefill      the peak of one layer over the batch's prompts (T =
                   context - new_tokens tokens a row), nothing kept for a
                   backward: the residual stream, its norm and the block's
                   output (3 dim), this rank's q, k, v and attention output
                   ((2 H + 2 KV) * hd / tp), its share of w1 x, w3 x and their
                   product (3 f / tp), in the compute dtype; the attention mask
                   (T x context, additive + boolean); rotary cos/sin (fp32)
      sampling     per row and vocabulary entry: the logits, fp32 probabilities,
                   their sort (values + int64 order), the float64 cumulative
                   sums of top-p and inverse-CDF sampling, masks: about 48 bytes
    Usable: D.USABLE_GPU_SHARE of the GPU. Returns {"rows", "total", "max_batch" (the largest batch that
    fits), "weights_fit" (do the weights alone fit), "text"}.
    """
    a, h, L, V = dtype_bytes, args.dim, args.n_layers, args.vocab_size
    kv, hd, f = args.n_kv_heads, args.head_dim, args.hidden_dim
    params = args.n_params()  # (one embedding matrix when tied)
    whole = V * h if args.tie_embeddings else 0  # parameters every rank holds whole (distributed.tensor_parallel)
    T = context - new_tokens
    per_row = {
        "KV cache": 2 * L * kv // tp * hd * a * context,
        "prefill (one layer's peak)": T * (a * (3 * h + (2 * args.n_heads + 2 * kv) * hd // tp + 3 * f // tp)
                                           + (a + 1) * context + 2 * 4 * hd),
        "sampling (logits, top-p)": 48 * V,
    }
    rows = [("weights", a * ((params - whole) / tp + whole))] + [(name, b * batch_size) for name, b in per_row.items()]
    total = sum(b for _, b in rows)
    usable = D.USABLE_GPU_SHARE * gpu_memory_gb * 1e9
    max_batch = max(0, int((usable - rows[0][1]) // sum(per_row.values())))
    lines = [f"generation memory plan: {params / 1e9:.2f}B parameters in {a}-byte weights, tensor parallel "
             f"over {tp} GPU(s), batch {batch_size} x {context} tokens ({T} prompt + {new_tokens} new)"]
    lines += [f"  {name:38s} {b / 2**30:9.2f} GiB" for name, b in rows]
    lines.append(f"  {'total per GPU':38s} {total / 2**30:9.2f} GiB")
    lines.append(f"  {gpu_memory_gb} GB GPUs ({D.USABLE_GPU_SHARE:.0%} usable): " + (
        f"batch {batch_size} {'fits' if total <= usable else 'does NOT fit'}; at most {max_batch} rows"
        if max_batch else "the weights alone do not fit; use a larger tp" if rows[0][1] > usable else
        f"not one row of the whole {context}-token context fits beside the weights (real rows are "
        f"shorter); a larger tp fits more"))
    return {"rows": dict(rows), "total": total, "max_batch": max_batch, "weights_fit": rows[0][1] <= usable,
            "text": "\n".join(lines)}


# -----------------------------------------------------------------------------
# The command line: one prompt, or many prompts from a file (answered in
# chunks, resumed after an interruption). File handling, not the method: skip
# it on a first read.

def sample_chat(model, tok, texts, **kw):
    """Chat responses (strings) to prompts (strings): len(texts) * n of them, as generate orders them."""
    ids = generate(model, [chat_prompt_ids(tok, t) for t in texts], eos_id=tok.stop_ids, **kw)
    return [tok.decode(c) for c in ids]


def check(c):
    """Every problem with the command line's settings, before a model is loaded."""
    import validate  # here, not at the top: validate reads judge.py, which samples with this file
    p = validate.Problems(c)
    if not p.no_none(allowed=("seed",)):
        return p
    args = tok = None
    if not c.ckpt:
        p.add("ckpt: give a checkpoint folder (--ckpt=DIR)")
    else:
        args, tok = validate.check_checkpoint(p, "ckpt", c.ckpt, c.chat_template)  # (tok: in the template given)

    def no_room(rec):  # a prompt that fills the context leaves no room for an answer (as generate() refuses)
        if not rec["prompt"].strip():  # (and an empty one asks nothing, as the loop's checks say of its own)
            return "empty prompt: nothing to answer"
        n = len(chat_prompt_ids(tok, rec["prompt"])) if tok is not None else 0
        return (f"the prompt is {n} tokens: no room to answer in the model's context of {args.max_seq_len}"
                if tok is not None and n >= args.max_seq_len else None)
    if bool(c.prompt) == bool(c.prompts_file):
        p.add("give either --prompt=TEXT or --prompts_file=IN.jsonl (with --out=OUT.jsonl)")
    elif c.prompt:
        problem = no_room({"prompt": c.prompt})
        if problem:  # (named without its text, which may be long)
            p.add(f"prompt: {problem}")
        p.require(not c.out, "out", "goes with --prompts_file: one --prompt's answer is printed on stdout")
    if c.prompts_file:
        asked = [x["prompt"] for x in p.jsonl("prompts_file", c.prompts_file, no_room, ["prompt"])]  # ([]: refused)
        if p.require(bool(c.out), "out", "--prompts_file needs --out=OUT.jsonl"):
            problem = unwritable_file(c.out)
            if p.require(problem is None, "out", problem) and os.path.exists(c.out):
                # the answers must not replace the prompts they answer, nor any file but answers to the same
                # prompts in their order (an earlier run of this command), or an empty one: not a benchmark's
                # questions, a data set, answers to other prompts
                same = os.path.exists(c.prompts_file) and os.path.samefile(c.out, c.prompts_file)
                if p.require(not same, "out", "is --prompts_file itself: give the answers a file of their own") \
                        and asked:
                    p.require(answers_to(c.out, asked), "out",
                              "exists and is not answers to --prompts_file's prompts (what an earlier run of this "
                              "command wrote): this run would replace it; give the answers a new file, or remove it")
            # nor the model that writes them (a checkpoint's own file, replaced when the run ends)
            p.require(not (c.ckpt and os.path.isdir(c.ckpt) and validate.within(c.out, c.ckpt)), "out",
                      f"is inside --ckpt={c.ckpt}, the model this run reads: give the answers a file outside it")
    p.at_least("max_new_tokens", 1)
    p.at_least("temperature", 0)
    p.require(c.temperature != 0 or c.num_samples <= 1, "num_samples",
              "at temperature 0 every sample is the one greedy answer: give a temperature above 0, or num_samples=1")
    p.fraction("top_p")
    for s in ("num_samples", "batch_size", "save_every", "tp"):
        p.at_least(s, 1)
    p.tensor_parallel(D.launched_world(), models=[("the model's", args)] if args else [])
    p.compute()
    return p


def answers_to(out, asked):
    """Does file `out` hold answers to the prompts `asked`, in their order,
    each with its "response" or "responses" (an earlier run of the same
    command), or nothing (an empty file, as mktemp makes)?"""
    try:
        answers = read_jsonl(out)
    except (OSError, ValueError):
        return False
    return not answers or [a.get("prompt") for a in answers] == asked and all(
        "response" in a or "responses" in a for a in answers)


def main(argv=None):
    """The command line: one prompt answered on stdout, or a prompts file
    answered into --out; bad input and Ctrl-C end with one line."""
    c = settings(DEFAULTS, configure(dict(DEFAULTS, __file__=__file__, __doc__=__doc__), argv))
    check(c).stop("sample.py")
    args = read_config(c.ckpt)
    # under torchrun: one GPU per rank
    env = D.setup(c.device, c.dtype, c.threads, tp=c.tp, width=args.dim)
    D.log(D.describe(env), file=sys.stderr)  # (stdout holds the answers alone)
    if c.max_new_tokens >= args.max_seq_len:  # generate() stops where prompt + answer fill the context
        D.log(f"warning: max_new_tokens {c.max_new_tokens} is not below the model's context of "
              f"{args.max_seq_len} tokens: answers end where prompt and answer fill it", file=sys.stderr)
    try:
        tok = Tokenizer(c.ckpt, c.chat_template)
        # whole on every rank, or tensor parallel over tp ranks, each streaming in only its slices; in the
        # compute dtype (sampling needs no fp32 master weights)
        model = load_model(c.ckpt, D.for_generation(env), dtype=env.dtype).eval()
        kw = dict(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p, n=c.num_samples,
                  batch_size=c.batch_size, compile=c.compile, progress=c.progress)
        if c.prompts_file:
            answer_file(model, tok, c, env, kw)
        else:
            for r in sample_chat(model, tok, [c.prompt], seed=c.seed, **kw):
                D.log(r)
    except (OSError, ValueError) as e:  # OSError: a disk full or read-only, a file missing
        D.stop(f"error: {e}", every_rank=False)
    except KeyboardInterrupt:
        if D.is_rank0():
            print("\ninterrupted; " + (f"the same command resumes after the prompts kept in {c.out}.partial"
                                       if c.prompts_file else "nothing was kept"), file=sys.stderr)
        sys.exit(130)
    D.teardown(env)


def answer_file(model, tok, c, env, kw):
    """Answer every record of c.prompts_file into c.out, save_every prompts at a
    time. Each chunk is appended to OUT.partial as it is done (its first line
    says what the answers are made from), so a killed run resumes after the
    last whole chunk, drawing exactly what an uninterrupted run would; at the
    end OUT is written whole and OUT.partial removed. While it runs, the job
    holds a lock on OUT.partial: a second job on the same OUT is refused."""
    records = read_jsonl(c.prompts_file, ["prompt"], allow_empty=False)
    partial, t0 = c.out + ".partial", time.time()
    files = file_fingerprint(c.ckpt), file_fingerprint(c.prompts_file)  # (read once: a prompts file is hashed)

    # what the answers are made from, by name, in the fingerprint's order (the header keeps them, to say
    # what differs); the dtype it samples in, not the setting ('auto' is bf16 on one machine, fp32 on another)
    shown = {"ckpt": files[0], "prompts_file": files[1],
             **{k: getattr(c, k) for k in ("max_new_tokens", "temperature", "top_p", "num_samples", "seed",
                                           "save_every")},
             "dtype": D.dtype_name(env.dtype), "chat_template": c.chat_template}
    with D.sole_writer(env, os.path.dirname(partial) or ".", partial) as kept_file:  # rank 0's; None elsewhere
        kept = kept_answers(kept_file, fingerprint(*shown.values()), c.save_every, shown) if D.is_rank0() else 0
        kept = int(D.all_sum(env, kept)[0])  # rank 0 read the file and cut it to whole chunks; all agree
        if os.path.exists(c.out):  # (as the trainers say of a model they will replace)
            D.log(f"note: {c.out} exists: this run replaces it when it ends", file=sys.stderr)
        if kept:
            D.log(f"resuming: {kept} of {len(records)} prompts already answered in {partial}", file=sys.stderr)
        for k in range(kept // c.save_every, -(-len(records) // c.save_every)):
            chunk = records[k * c.save_every:(k + 1) * c.save_every]
            seed = None if c.seed is None else c.seed + k * 1_000_003  # chunk 0 draws what one call would
            answers = sample_chat(model, tok, [r["prompt"] for r in chunk], seed=seed, **kw)
            if D.is_rank0():
                for i, rec in enumerate(chunk):
                    mine = answers[i * c.num_samples:(i + 1) * c.num_samples]
                    rec = {**rec, **({"response": mine[0]} if c.num_samples == 1 else {"responses": mine})}
                    kept_file.write(json.dumps(rec, ensure_ascii=False) + "\n")
                kept_file.flush()
                os.fsync(kept_file.fileno())
            D.barrier()
        if D.is_rank0():
            write_jsonl(c.out, read_jsonl(partial)[1:])
            os.remove(partial)
            print(f"wrote {len(records)} records to {c.out} in {time.time() - t0:.1f}s", file=sys.stderr)
        D.barrier()


def kept_answers(f, made_from, chunk, shown):
    """How many prompts OUT.partial (f, open to read and append) holds answers
    to from the same inputs (made_from), in whole chunks. The file is cut to those in place
    (it is the lock), or started afresh with its header (shown: the inputs
    by name, which a later run compares to say what differs); a kill while
    it is cut leaves a prefix of its lines, which the next run reads the same way."""
    f.seek(0)
    # a line cut by a kill has no newline yet, and may end inside a character: whole lines are decoded
    lines = [x.decode("utf-8") + "\n" for x in f.buffer.read().split(b"\n")[:-1]]
    header = json.loads(lines[0]) if lines else {}
    if header.get("made_from") != made_from:
        if len(lines) > 1:  # (a mistyped setting must not cost the answers without a word)
            old, named = header.get("inputs", {}), {"ckpt": "another checkpoint", "prompts_file": "another prompts file"}
            what = ", ".join(named.get(k) or f"{k} {old[k]!r} (now {v!r})"
                             for k, v in shown.items() if k in old and old[k] != v)
            print(f"not resuming from {f.name}: its {len(lines) - 1} answers were written with "
                  f"{what or 'other settings, checkpoint or prompts file'}; starting afresh", file=sys.stderr)
        f.truncate(0)
        f.write(json.dumps({"made_from": made_from, "inputs": shown}) + "\n")
        lines = []
    kept = max(len(lines) - 1, 0) // chunk * chunk
    if lines:
        f.truncate(len("".join(lines[:1 + kept]).encode("utf-8")))
    f.flush()
    os.fsync(f.fileno())
    return kept


if __name__ == "__main__":
    main()
