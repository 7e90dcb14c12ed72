"""
The Llama 2 network, written directly in PyTorch.

    tokens -> tok_embeddings -> n_layers x [x + attention(attention_norm(x))
                                            x + feed_forward(ffn_norm(x))]
           -> norm -> output -> logits

Parameter names are Meta's (tok_embeddings, layers.N.attention.wq, ...), so
Meta's checkpoints map one-to-one; `save_checkpoint` / `load_checkpoint`
translate to and from the Hugging Face layout so that a model trained here
opens in `transformers` and real Llama weights open here.

The same code builds a toy model on a laptop CPU and Llama 2 70B on the `meta`
device (shapes only, no memory), ready to be sharded with FSDP2.
"""
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None: as many as n_heads (multi-head attention)
    vocab_size: int = 32000
    multiple_of: int = 256  # the feed-forward width is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 4096
    dropout: float = 0.0  # the paper fine-tunes with 0.1

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim {self.dim} must divide by n_heads {self.n_heads}, "
                             f"and n_heads by n_kv_heads {self.n_kv_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError("the head dimension must be even for rotary embeddings")

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    @property
    def hidden_dim(self):
        # Llama's rule: 2/3 of 4*dim (SwiGLU has three matrices instead of two,
        # so this keeps the parameter count of a 4*dim MLP), times an optional
        # multiplier, rounded up to a multiple of `multiple_of`.
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


# Named sizes. The toy ones train on a laptop CPU; the Llama 2 ones are the
# published shapes (Touvron et al. 2023, and Meta's params.json files).
PRESETS = {
    "toy-tiny": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512,
                          multiple_of=32, max_seq_len=512),
    # the self-rewarding loop's default: ~1M parameters, fast enough on a 2-core CPU
    "toy-small": ModelArgs(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=1024,
                           multiple_of=32, max_seq_len=1024),
    "toy": ModelArgs(dim=256, n_layers=6, n_heads=8, n_kv_heads=4, vocab_size=1024,
                     multiple_of=64, max_seq_len=1024),
    "toy-large": ModelArgs(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, vocab_size=1024,
                           multiple_of=64, max_seq_len=1024),
    # TinyLlama 1.1B's shape (Llama 2 architecture), for speed checks on one GPU
    "llama-1b": ModelArgs(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, vocab_size=32000,
                          multiple_of=256, max_seq_len=2048),
    "llama2-7b": ModelArgs(dim=4096, n_layers=32, n_heads=32, vocab_size=32000),
    "llama2-13b": ModelArgs(dim=5120, n_layers=40, n_heads=40, vocab_size=32000),
    "llama2-70b": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=32000,
                            multiple_of=4096, ffn_dim_multiplier=1.3),
}


def preset(name, **overrides):
    """A copy of a named preset, with some fields changed."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
    return ModelArgs(**{**asdict(PRESETS[name]), **overrides})


# -----------------------------------------------------------------------------
# The building blocks

class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019), computed in fp32."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # F.rms_norm: one call instead of six ops (a decode step is mostly per-op overhead)
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


def rope_rotation(positions, head_dim, theta):
    """
    Rotary position embeddings (Su et al. 2021): the pair (x[2i], x[2i+1]) of a
    query or key at position p is rotated by the angle p * theta^(-2i/head_dim):
        (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)
    positions: (B, T) integers -> cos, sin: (B, T, 1, head_dim) fp32, each angle
    repeated for both members of its pair and sin signed (-sin, +sin), so that
    apply_rope is x * cos + swap_pairs(x) * sin. Computed once per forward and
    shared by every layer's queries (B, T, H, hd) and keys; computed on the fly
    (it is tiny), so the model has no buffers to rebuild after being created
    on the meta device.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[:, :, None, None] * inv_freq  # (B, T, 1, head_dim/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.stack((cos, cos), -1).flatten(-2), torch.stack((-sin, sin), -1).flatten(-2)


def apply_rope(x, rotation):
    """x: (B, T, H, head_dim), rotated pairwise in fp32 as Meta's reference does."""
    # three elementwise ops and a swap, instead of a dozen ops on the halves of
    # each pair (real-valued, unlike Meta's complex multiply: torch.compile fuses it)
    cos, sin = rotation
    xf = x if x.dtype == torch.float32 else x.float()  # no no-op casts: a decode step is mostly per-op overhead
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0) for each pair (x0, x1)
    out = torch.addcmul(xf * cos, swapped, sin)
    return out if x.dtype == torch.float32 else out.to(x.dtype)


def decode_attention(q, k, v, mask, shared=None):
    """
    softmax(q k^T / sqrt(hd) + mask) v for one new token per row, against the
    KV cache, written out as batched matmuls: for a single query SDPA's CPU
    kernel is several times slower, and fewer ops means less per-op overhead.
    q: (B, 1, H, hd); k, v: (B, KV, S, hd) each row's own slots;
    shared: None, or keys and values (1, KV, P, hd) of a prefix every row
    attends to first, stored once (see KVCache); mask: (B, 1, 1, P + S) additive.
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
        qs = q.view(B, KV, G, hd).transpose(0, 1).reshape(KV, B * G, hd)
        prefix_scores = torch.bmm(qs, shared[0][0].transpose(1, 2))  # (KV, B*G, P)
        scores = torch.cat([prefix_scores.view(KV, B, G, P).transpose(0, 1).reshape(B, H, P), scores], dim=-1)
    scores = torch.add(mask.view(B, 1, P + S), scores, alpha=hd ** -0.5)  # scale and mask in one op
    probs = scores.softmax(-1, dtype=torch.float32).to(v.dtype)  # (B, H, P + S): one softmax over both parts
    y = torch.bmm(probs[:, :, P:].reshape(B * KV, G, S), v.reshape(B * KV, S, hd))  # (B*KV, G, hd)
    if shared is not None:
        probs = probs[:, :, :P].reshape(B, KV, G, P).transpose(0, 1).reshape(KV, B * G, P)
        y = y.view(B, KV, G, hd) + torch.bmm(probs, shared[1][0]).view(KV, B, G, hd).transpose(0, 1)
    return y.reshape(B, 1, H * hd)


class Attention(nn.Module):
    """Grouped-query attention (Ainslie et al. 2023): n_kv_heads key/value heads
    shared by groups of n_heads // n_kv_heads query heads."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.dropout = args.dropout

    def forward(self, x, rotation, cache=None, layer=0):
        B, T, _ = x.shape
        q = apply_rope(self.wq(x).view(B, T, self.n_heads, self.head_dim), rotation)  # (B, T, H, hd)
        k = apply_rope(self.wk(x).view(B, T, self.n_kv_heads, self.head_dim), rotation)  # (B, T, KV, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        if cache is not None and T == 1:  # a decode step: the hot loop of sampling
            k, v = cache.update(layer, k.transpose(1, 2), v.transpose(1, 2))  # (B, KV, S, hd): all cached so far
            return self.wo(decode_attention(q, k, v, cache.mask, cache.shared(layer)))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        if cache is None:
            mask, causal = None, True  # training / full recompute: plain causal attention
        else:
            k, v = cache.update(layer, k, v)  # (B, KV, S, hd): everything cached so far
            if cache.prefix is not None:  # behind a shared prefix: attend to it too (a copy, in prefill only)
                pk, pv = cache.shared(layer)
                k = torch.cat([pk.expand(B, -1, -1, -1), k], dim=2)
                v = torch.cat([pv.expand(B, -1, -1, -1), v], dim=2)
            mask, causal = cache.mask, False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) * w3 x)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)
        self.w3 = nn.Linear(args.dim, args.hidden_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, layer_id, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)
        # Dropout on each residual branch (as in GPT-2/nanoGPT); Meta's Llama
        # has none, the paper fine-tunes with 0.1. Off in eval mode.
        self.dropout = nn.Dropout(args.dropout)

    def forward(self, x, rotation, cache=None):
        h = self.attention(self.attention_norm(x), rotation, cache, self.layer_id)
        x = x + (self.dropout(h) if self.training and self.dropout.p > 0 else h)  # skip the call when it is a no-op
        h = self.feed_forward(self.ffn_norm(x))
        return x + (self.dropout(h) if self.training and self.dropout.p > 0 else h)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(i, args) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)  # untied, as in Llama
        self.activation_checkpointing = False  # set by the training scripts
        if self.tok_embeddings.weight.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """Random init for training from scratch: N(0, 0.02), with the residual
        output projections scaled by 1/sqrt(2 * n_layers) (GPT-2)."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            else:
                std = 0.02 / math.sqrt(2 * self.args.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, tokens, targets=None, positions=None, cache=None, pad_mask=None, last_only=False):
        """
        tokens: (B, T) token ids.
        targets: (B, T) the next token for each position (-100: no loss there);
                 given, the mean cross-entropy (in fp32) is returned as well.
        positions: (B, T) the position of each token; default 0..T-1, or the
                 cache's next positions when decoding with a cache.
        cache: a KVCache; keys/values of these tokens are appended to it and
                 attention sees everything cached before them.
        pad_mask: (B, T) True at padding tokens (with a cache only): they take
                 a slot but are never attended to and do not advance positions.
        last_only: logits (B, 1, V) of the last position only: a prefill for
                 sampling needs no more, and skips T-1 rows of the output matmul.
        """
        B, T = tokens.shape
        if cache is not None:
            positions = cache.begin(tokens, positions, pad_mask)
        elif positions is None:
            if T > self.args.max_seq_len:
                raise ValueError(f"sequence of {T} tokens is longer than max_seq_len {self.args.max_seq_len}")
            positions = torch.arange(T, device=tokens.device).expand(B, T)
        rotation = rope_rotation(positions, self.args.head_dim, self.args.rope_theta)
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                h = torch.utils.checkpoint.checkpoint(layer, h, rotation, cache, use_reentrant=False)
            else:
                h = layer(h, rotation, cache)
        if cache is not None:
            cache.end(T)
        if last_only:
            h = h[:, -1:]
        logits = self.output(self.norm(h))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

    def num_params(self):
        return sum(p.numel() for p in self.parameters())


# -----------------------------------------------------------------------------
# The KV cache

class KVCache:
    """
    A static key/value cache for batched sampling: for each layer, a buffer
    (B, n_kv_heads, max_len, head_dim) filled left to right. All rows share
    the same slot index, and a boolean `valid` (B, max_len) marks which slots
    hold real tokens of that row; padding slots (rows whose prompts are
    shorter) are never attended to. Each row's positions count only its own
    valid slots, so rotary angles are right whatever the padding.

    A padding slot's own query attends to itself, so no attention row is ever
    fully masked (softmax of all -inf would be NaN); its output is discarded.

    With `prefix` (a filled one-row KVCache, e.g. the judge's rubric), every
    row continues that prefix: its keys/values are stored once and attended to
    by all rows (`shared`), the buffers here hold only each row's own slots.
    """

    def __init__(self, args: ModelArgs, batch_size, max_len, device, dtype, prefix=None):
        shape = (args.n_layers, batch_size, args.n_kv_heads, max_len, args.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.max_len = max_len
        self.length = 0  # slots filled so far (the same for every row)
        self.mask = None
        # prefix: a filled KVCache of one row (no padding) that every row of this
        # one continues, e.g. the judge's rubric: stored once, not once per row
        self.prefix = prefix

    @property
    def batch_size(self):
        return self.valid.shape[0]

    def shared(self, layer):
        """The prefix's keys and values (1, KV, P, hd) for `layer`, or None."""
        if self.prefix is None:
            return None
        P = self.prefix.length
        return self.prefix.k[layer, :, :, :P], self.prefix.v[layer, :, :, :P]

    def next_positions(self):
        """(B,) the position the next real token of each row will have."""
        positions = self.valid[:, :self.length].sum(dim=1)
        return positions if self.prefix is None else positions + self.prefix.length

    def begin(self, tokens, positions=None, pad_mask=None):
        """Prepare a forward pass over `tokens` (B, T) written at slots
        length .. length+T-1; pad_mask (B, T) is True at padding tokens.
        Returns the tokens' positions (B, T)."""
        B, T = tokens.shape
        start, end = self.length, self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} slots needed, {self.max_len} allocated")
        if T == 1 and pad_mask is None:
            # a decode step, the hot loop of sampling: kept to a few cheap ops.
            # One real token per row; every valid slot is in its past.
            if positions is None:
                positions = self.next_positions()[:, None]
            self.valid[:, start] = True
            allowed = self.valid[:, None, None, :end]  # (B, 1, 1, end)
        else:
            real = torch.ones(B, T, dtype=torch.bool, device=tokens.device) if pad_mask is None else ~pad_mask
            if positions is None:
                positions = self.next_positions()[:, None] + real.cumsum(dim=1) - 1
                positions = positions.clamp(min=0)
            self.valid[:, start:end] = real
            # (B, 1, T, end): causal over slots, only valid slots, and every
            # query may see its own slot (so padding rows are not empty)
            slots = torch.arange(end, device=tokens.device)
            causal = slots[None, :] <= (start + torch.arange(T, device=tokens.device))[:, None]  # (T, end)
            own = slots[None, :] == (start + torch.arange(T, device=tokens.device))[:, None]
            allowed = ((causal[None] & self.valid[:, None, :end]) | own[None])[:, None]
        # as an additive mask (0 / -inf): SDPA would convert a boolean one in every layer
        self.mask = torch.zeros(allowed.shape, dtype=self.k.dtype, device=tokens.device)
        self.mask.masked_fill_(~allowed, float("-inf"))
        if self.prefix is not None:  # every prefix slot is visible to every query
            self.mask = F.pad(self.mask, (self.prefix.length, 0))
        return positions

    def update(self, layer, k, v):
        """Write k, v (B, KV, T, hd) at the next T slots of `layer`; return its
        keys and values so far, (B, KV, length+T, hd) views of the buffers."""
        end = self.length + k.shape[2]
        k_all, v_all = self.k[layer, :, :, :end], self.v[layer, :, :, :end]
        k_all.narrow(2, self.length, k.shape[2]).copy_(k)  # narrow + copy_: the fewest ops for a write
        v_all.narrow(2, self.length, k.shape[2]).copy_(v)
        return k_all, v_all

    def end(self, T):
        self.length += T
        self.mask = None

    def select(self, rows):
        """
        Keep these rows, in this order (rows: 1-D index tensor, repeats allowed):
        copy a prompt's rows for n samples or a shared prefix's row for every
        prompt, or drop finished rows so they stop costing work.
        """
        rows = torch.as_tensor(rows, device=self.valid.device)
        self.k = self.k.index_select(1, rows)  # one pass over the buffers
        self.v = self.v.index_select(1, rows)
        self.valid = self.valid.index_select(0, rows)
        return self

    def repeat_interleave(self, n):
        """Copy every row n times (n samples of one prompt share its prefill)."""
        return self.select(torch.arange(self.batch_size, device=self.valid.device).repeat_interleave(n))


# -----------------------------------------------------------------------------
# Model FLOPs utilisation

def estimate_mfu(args: ModelArgs, n_params, tokens_per_second, seq_len, peak_flops):
    """
    The share of the hardware's peak FLOP/s that training achieves (PaLM,
    Chowdhery et al. 2022, appendix B): each token costs 6*N FLOPs for the
    matmuls with the weights (forward 2N, backward 4N) plus 12*L*H*Q*T for
    attention (L layers, H heads, Q head dim, T sequence length).
    peak_flops: the device's peak, e.g. 989e12 for an H100/H200 in bf16.
    """
    flops_per_token = 6 * n_params + 12 * args.n_layers * args.n_heads * args.head_dim * seq_len
    return flops_per_token * tokens_per_second / peak_flops


# -----------------------------------------------------------------------------
# Checkpoints in the Hugging Face Llama layout
#
# A folder with config.json, model.safetensors (or model-0000N-of-0000M
# .safetensors shards + model.safetensors.index.json) and tokenizer.model.
# Names map one-to-one; the only subtlety is rotary embeddings: Meta rotates
# interleaved pairs (x0,x1),(x2,x3),... while Hugging Face rotates the two
# halves of each head (x_i, x_{i+hd/2}). The HF conversion script permutes the
# rows of wq and wk so both compute the same thing; we do the same.

def _hf_name(name):
    """Meta parameter name -> Hugging Face name."""
    if name == "tok_embeddings.weight":
        return "model.embed_tokens.weight"
    if name == "norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    parts = name.split(".")  # layers.N.module.[sub.]weight
    i, rest = parts[1], ".".join(parts[2:])
    table = {
        "attention.wq.weight": "self_attn.q_proj.weight",
        "attention.wk.weight": "self_attn.k_proj.weight",
        "attention.wv.weight": "self_attn.v_proj.weight",
        "attention.wo.weight": "self_attn.o_proj.weight",
        "feed_forward.w1.weight": "mlp.gate_proj.weight",
        "feed_forward.w2.weight": "mlp.down_proj.weight",
        "feed_forward.w3.weight": "mlp.up_proj.weight",
        "attention_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
    }
    return f"model.layers.{i}.{table[rest]}"


def _meta_to_hf_rope(w, n_heads):
    """Permute the rows of wq/wk: interleaved pairs -> halves, per head."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _hf_to_meta_rope(w, n_heads):
    """The inverse permutation: halves -> interleaved pairs, per head."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, 2, out_dim // n_heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def to_hf(name, tensor, args: ModelArgs):
    """One tensor of our state dict -> (HF name, HF tensor)."""
    if name.endswith("attention.wq.weight"):
        tensor = _meta_to_hf_rope(tensor, args.n_heads)
    elif name.endswith("attention.wk.weight"):
        tensor = _meta_to_hf_rope(tensor, args.n_kv_heads)
    return _hf_name(name), tensor


def from_hf(name, tensor, args: ModelArgs):
    """The inverse of `to_hf` for one tensor: HF tensor -> our layout."""
    if name.endswith("attention.wq.weight"):
        return _hf_to_meta_rope(tensor, args.n_heads)
    if name.endswith("attention.wk.weight"):
        return _hf_to_meta_rope(tensor, args.n_kv_heads)
    return tensor


def hf_config(args: ModelArgs, dtype=torch.float32):
    """The config.json that `transformers` expects for LlamaForCausalLM."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "vocab_size": args.vocab_size,
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


def args_from_hf_config(config, path="config.json"):
    """ModelArgs from a Hugging Face Llama config.json (already parsed)."""
    needed = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"]
    missing = [k for k in needed if k not in config]
    if missing:
        raise ValueError(f"{path}: not a Llama config, missing keys: {', '.join(missing)}")
    if config.get("model_type", "llama") != "llama":
        raise ValueError(f"{path}: model_type is {config['model_type']!r}, expected 'llama'")
    if config.get("tie_word_embeddings", False):
        raise ValueError(f"{path}: tied word embeddings are not supported (Llama's output layer is untied)")
    # transformers 4 writes rope_theta (+ rope_scaling), transformers 5 rope_parameters
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"{path}: rope scaling {rope} is not supported (plain Llama 2 rotary embeddings only)")
    rope_theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    n_heads = config["num_attention_heads"]
    if config.get("head_dim", config["hidden_size"] // n_heads) != config["hidden_size"] // n_heads:
        raise ValueError(f"{path}: head_dim must equal hidden_size / num_attention_heads")
    args = ModelArgs(
        dim=config["hidden_size"], n_layers=config["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads") or n_heads, vocab_size=config["vocab_size"],
        norm_eps=config.get("rms_norm_eps", 1e-5), rope_theta=rope_theta,
        max_seq_len=config.get("max_position_embeddings", 4096))
    # Store the exact feed-forward width: pick multiple_of so the rule gives it.
    args.multiple_of, args.ffn_dim_multiplier = _ffn_rule_for(args.dim, config["intermediate_size"])
    return args


def _ffn_rule_for(dim, hidden_dim):
    """(multiple_of, ffn_dim_multiplier) that make ModelArgs.hidden_dim == hidden_dim."""
    base = int(2 * (4 * dim) / 3)
    if base == hidden_dim:
        return hidden_dim, None
    for multiple_of in (256, 4096, 1024, 512, 128, 64, 32, 16, 8, 1):
        for mult in (None, 1.3, 1.5, 2.0, 4.0):  # Meta's published multipliers first
            hidden = base if mult is None else int(mult * base)
            if multiple_of * ((hidden + multiple_of - 1) // multiple_of) == hidden_dim:
                return multiple_of, mult
    # Any width: multiple_of = hidden_dim and a multiplier that does not exceed it.
    return hidden_dim, hidden_dim / base if hidden_dim < base else None


def _write_atomically(path, write_into):
    """Write a checkpoint folder completely in a temporary folder beside it, then
    swap it into place, so a crash never leaves a half-written checkpoint."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    try:
        write_into(tmp)
        if os.path.exists(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(model, path, tokenizer_path=None, max_shard_bytes=5 * 2**30, dtype=None,
                    state_dict=None):
    """
    Write `model` to folder `path` in the Hugging Face layout: config.json,
    model.safetensors (or shards + index when larger than max_shard_bytes),
    and tokenizer.model copied from tokenizer_path. dtype: cast on the way out
    (default: as the parameters are). state_dict: tensors to write instead of
    model.state_dict() (e.g. gathered from FSDP shards), same names.
    """
    from safetensors.torch import save_file

    args = model.args
    if tokenizer_path is not None:
        from tokenizer import Tokenizer
        n = Tokenizer(tokenizer_path).vocab_size
        if n != args.vocab_size:
            raise ValueError(f"tokenizer {tokenizer_path} has {n} tokens but the model's vocab_size is {args.vocab_size}")
    sd = state_dict if state_dict is not None else model.state_dict()
    tensors = {}
    for name, t in sd.items():
        hf_name, t = to_hf(name, t.detach(), args)
        tensors[hf_name] = (t.to(dtype) if dtype is not None else t).contiguous().cpu()
    out_dtype = next(iter(tensors.values())).dtype

    # Split into shards of at most max_shard_bytes (a tensor larger than that gets its own shard).
    shards, size = [[]], 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes

    def write(tmp):
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config(args, out_dtype), f, indent=2)
        if len(shards) == 1:
            save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, names in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file({n: tensors[n] for n in names}, os.path.join(tmp, fname), metadata={"format": "pt"})
                weight_map.update({n: fname for n in names})
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, os.path.join(tmp, "tokenizer.model"))

    _write_atomically(path, write)


def read_config(path):
    """ModelArgs of the checkpoint in folder `path` (HF config.json or Meta params.json)."""
    hf, meta = os.path.join(path, "config.json"), os.path.join(path, "params.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder not found: {path}")
    cfg_path = hf if os.path.exists(hf) else meta if os.path.exists(meta) else None
    if cfg_path is None:
        raise FileNotFoundError(f"{path}: no config.json (Hugging Face layout) or params.json (Meta layout)")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: corrupt JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object, found {type(config).__name__}")
    if cfg_path == hf:
        return args_from_hf_config(config, cfg_path)
    known = {f.name for f in fields(ModelArgs)}
    args = {k: v for k, v in config.items() if k in known and v is not None}
    if args.get("vocab_size", -1) == -1:
        # Meta's Llama 2 params.json says -1: the tokenizer decides. Read the
        # number of rows of the embedding (memory-mapped, nothing loaded).
        first = sorted(f for f in os.listdir(path) if f.startswith("consolidated.") and f.endswith(".pth"))
        if not first:
            raise FileNotFoundError(f"{path}: no consolidated.NN.pth files")
        shard = torch.load(os.path.join(path, first[0]), map_location="cpu", mmap=True, weights_only=True)
        args["vocab_size"] = shard["tok_embeddings.weight"].shape[0]
    return ModelArgs(**args)


def safetensors_files(path):
    """The safetensors files of an HF checkpoint folder, and which tensor is in which file."""
    from safetensors import safe_open

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
    elif os.path.exists(os.path.join(path, "model.safetensors")):
        with safe_open(os.path.join(path, "model.safetensors"), framework="pt") as f:
            weight_map = {k: "model.safetensors" for k in f.keys()}
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
    return weight_map


def iter_hf_tensors(path, args: ModelArgs):
    """Yield (our name, tensor) for every tensor of an HF checkpoint, one at a
    time, read from memory-mapped safetensors files: never the whole model."""
    from safetensors import safe_open

    weight_map = safetensors_files(path)
    by_file = {}
    for hf_name, fname in weight_map.items():
        by_file.setdefault(fname, []).append(hf_name)
    ours = {_hf_name(n): n for n in param_names(args)}  # HF name -> our name
    for fname, names in by_file.items():
        with safe_open(os.path.join(path, fname), framework="pt") as f:
            for hf_name in names:
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue  # a buffer some old exports carry; we compute it
                if hf_name not in ours:
                    raise ValueError(f"{path}/{fname}: unexpected tensor {hf_name!r} for a Llama model")
                name = ours[hf_name]
                yield name, from_hf(name, f.get_tensor(hf_name), args)


def param_names(args: ModelArgs):
    """Every parameter name of Transformer(args), in Meta's naming."""
    names = ["tok_embeddings.weight", "norm.weight", "output.weight"]
    for i in range(args.n_layers):
        names += [f"layers.{i}.{m}.weight" for m in (
            "attention.wq", "attention.wk", "attention.wv", "attention.wo", "attention_norm",
            "feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "ffn_norm")]
    return names


def iter_meta_tensors(path, args: ModelArgs):
    """
    Yield (name, tensor) from Meta's original layout: consolidated.00.pth ...
    consolidated.NN.pth, one per model-parallel rank. Each rank holds a slice
    of every parallel layer; the slices are concatenated along the dimension
    that layer was split on (fairscale's Column/RowParallelLinear and
    ParallelEmbedding). Files are memory-mapped and read with weights_only.
    """
    files = sorted(f for f in os.listdir(path) if f.startswith("consolidated.") and f.endswith(".pth"))
    if not files:
        raise FileNotFoundError(f"{path}: no consolidated.NN.pth files")
    shards = [torch.load(os.path.join(path, f), map_location="cpu", mmap=True, weights_only=True) for f in files]
    for name in param_names(args):
        parts = []
        for f, shard in zip(files, shards):
            if name not in shard:
                raise ValueError(f"{path}/{f}: missing tensor {name!r}")
            parts.append(shard[name])
        if len(parts) == 1 or name.endswith("norm.weight"):
            yield name, parts[0]  # norms are replicated on every rank
        elif name == "tok_embeddings.weight" or name.endswith(("wo.weight", "w2.weight")):
            yield name, torch.cat(parts, dim=1)  # embedding and row-parallel: split on the input dim
        else:
            yield name, torch.cat(parts, dim=0)  # column-parallel (wq wk wv w1 w3 output): output dim


def load_checkpoint(path, device="cpu", dtype=None, tokenizer_path=None):
    """
    Load a checkpoint folder (HF layout, or Meta's params.json +
    consolidated.NN.pth) into a new Transformer on `device`. The model is
    built on the meta device (no memory), then each tensor is streamed from
    the memory-mapped files into its place. If a tokenizer.model sits beside
    the weights (or tokenizer_path is given), its vocabulary must match.
    """
    args = read_config(path)
    tok = tokenizer_path or os.path.join(path, "tokenizer.model")
    if os.path.exists(tok):
        from tokenizer import Tokenizer
        n = Tokenizer(tok).vocab_size
        if n != args.vocab_size:
            raise ValueError(f"{path}: the model's vocab_size is {args.vocab_size} but tokenizer {tok} has {n} tokens")
    tensors = (iter_hf_tensors if os.path.exists(os.path.join(path, "config.json")) else iter_meta_tensors)(path, args)
    with torch.device("meta"):
        model = Transformer(args)
    if dtype is not None:
        model.to(dtype)  # on the meta device: no memory is touched yet
    model.to_empty(device=device)  # allocate, uninitialised; every tensor is filled below
    params = dict(model.named_parameters())
    seen = set()
    with torch.no_grad():
        for name, t in tensors:
            p = params[name]
            if t.shape != p.shape:
                raise ValueError(f"{path}: tensor {name} ({_hf_name(name)}) has shape {tuple(t.shape)}, "
                                 f"the config implies {tuple(p.shape)}")
            p.copy_(t)
            seen.add(name)
    missing = [n for n in params if n not in seen]
    if missing:
        raise ValueError(f"{path}: missing tensors: {', '.join(_hf_name(n) for n in missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return model
