"""
The Llama network (Llama 2 and 3, and models of the same architecture such
as SmolLM2), written directly in PyTorch.

    tokens -> tok_embeddings -> n_layers x [x + attention(attention_norm(x))
                                            x + feed_forward(ffn_norm(x))]
           -> norm -> output -> logits

This file is the network and nothing else: ModelArgs and the named sizes,
RMSNorm, rotary embeddings (with Llama 3.1's frequency scaling), grouped-query
attention, SwiGLU, the block, the Transformer (its output layer tied to the
input embedding or not), and estimate_mfu. Parameter names are Meta's
(tok_embeddings, layers.N.attention.wq, ...), so Meta's checkpoints map one-to-one;
checkpoint.py reads every file format and writes the Hugging Face layout,
sample.py owns the KV cache
and generation, distributed.py shards the model over ranks.

The same code builds a toy model on a laptop CPU and Llama 2 70B on the `meta`
device (shapes only, no memory), ready to be sharded with FSDP2.
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# Llama 3.1's rotary scaling (rope_scaling), in Hugging Face's names
ROPE_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def ffn_width(dim, multiple_of, ffn_dim_multiplier=None):
    """Llama's feed-forward width: 2/3 of 4*dim (SwiGLU has three matrices
    instead of two, so this keeps the parameter count of a 4*dim MLP), times
    an optional multiplier, rounded up to a multiple of `multiple_of`."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


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
    # Llama 3.1+'s rotary frequency scaling for long contexts (None: plain RoPE):
    # {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    rope_scaling: dict | None = None
    max_seq_len: int = 4096
    head_dim: int | None = None  # None: dim // n_heads (some models set it apart from dim)
    tie_embeddings: bool = False  # the output layer reuses the input embedding (Llama 3.2 1B/3B, SmolLM2)
    dropout: float = 0.0  # the paper fine-tunes with 0.1

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim {self.dim} must divide by n_heads {self.n_heads} (or set head_dim)")
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} must divide by n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError("the head dimension must be even for rotary embeddings")
        if self.rope_scaling is not None and set(self.rope_scaling) != set(ROPE_SCALING_KEYS):
            raise ValueError(f"rope_scaling needs exactly the keys {sorted(ROPE_SCALING_KEYS)}, "
                             f"got {sorted(self.rope_scaling)}")

    @property
    def hidden_dim(self):
        return ffn_width(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    def block_params(self):
        """Parameters of one block, counted from the shapes: two RMSNorms,
        wq and wo, wk and wv, and the SwiGLU's w1, w2, w3."""
        h, hd = self.dim, self.head_dim
        return 2 * h + 2 * h * self.n_heads * hd + 2 * h * self.n_kv_heads * hd + 3 * h * self.hidden_dim

    def n_params(self):
        """Parameters of the whole model, counted from the shapes, for the
        memory plans (which build no model): the blocks, the final norm, the
        input embedding and, unless tied to it, the output layer."""
        embeddings = 1 if self.tie_embeddings else 2
        return self.n_layers * self.block_params() + self.dim + embeddings * self.vocab_size * self.dim


# Named sizes. The toy ones train on a laptop CPU; the others are the
# published shapes (Touvron et al. 2023, Meta's params.json files, the
# models' config.json on the Hugging Face hub).
LLAMA3_VOCAB = 128256
# Llama 3.1's and 3.2's scaling of the rotary frequencies (their config.json's rope_scaling): 3.1,
# 3.3 and 3.2's vision models scale by 8, 3.2's 1B and 3B by 32
LLAMA31_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
LLAMA32_ROPE = {**LLAMA31_ROPE, "factor": 32.0}
PRESETS = {
    "toy-tiny": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512,
                          multiple_of=32, max_seq_len=512),
    # the self-rewarding loop's default: 1.0M parameters (1.3M with the loop's 2048-piece tokenizer), fast
    # enough on a 2-core CPU
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
    "llama3-8b": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=LLAMA3_VOCAB,
                           multiple_of=1024, ffn_dim_multiplier=1.3, rope_theta=500000.0, max_seq_len=8192),
    "llama3-70b": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=LLAMA3_VOCAB,
                            multiple_of=4096, ffn_dim_multiplier=1.3, rope_theta=500000.0, max_seq_len=8192),
    "llama3.2-1b": ModelArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=LLAMA3_VOCAB,
                             multiple_of=256, ffn_dim_multiplier=1.5, rope_theta=500000.0,
                             rope_scaling=LLAMA32_ROPE, max_seq_len=131072, tie_embeddings=True),
    "llama3.2-3b": ModelArgs(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, vocab_size=LLAMA3_VOCAB,
                             multiple_of=256, ffn_dim_multiplier=1.0, rope_theta=500000.0,
                             rope_scaling=LLAMA32_ROPE, max_seq_len=131072, tie_embeddings=True),
    # SmolLM2-135M (Allal et al. 2025): the Llama architecture, small and deep
    "smollm2-135m": ModelArgs(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152,
                              multiple_of=256, rope_theta=100000.0, max_seq_len=8192, tie_embeddings=True),
}


def preset(name, **overrides):
    """A copy of a named preset, with some fields changed."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
    base = PRESETS[name]
    fields = asdict(base)  # (a deep copy: rope_scaling too)
    # head_dim and n_kv_heads are derived where the preset did not set them apart (__post_init__): they
    # follow an overridden dim or n_heads (llama2-7b with n_heads=64 stays multi-head, not 64 over 32)
    if base.head_dim == base.dim // base.n_heads:
        fields["head_dim"] = None
    if base.n_kv_heads == base.n_heads:
        fields["n_kv_heads"] = None
    return ModelArgs(**{**fields, **overrides})


# -----------------------------------------------------------------------------
# The building blocks

class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019): normalised in
    fp32; in bf16 the weight then multiplies in bf16, as in Meta's reference code."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    # Exercise (easy): RMSNorm, as the class docstring says. Graded by: tests/test_model.py -k rmsnorm
    def forward(self, x):
        # F.rms_norm: one call instead of six ops (a decode step is mostly per-op overhead)
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


def rope_frequencies(args: ModelArgs, device=None):
    """
    The rotation speed of each pair of a head, theta^(-2i/head_dim) (RoPE),
    with Llama 3.1's long-context scaling when args.rope_scaling is set: pairs
    that turn fast (wavelength under original_len / high_freq_factor) keep
    their speed, slow ones (over original_len / low_freq_factor) are slowed
    down `factor` times, and those between blend the two smoothly (Meta's
    apply_scaling in the Llama 3.1 reference code; transformers'
    _compute_llama3_parameters, which tests/test_model.py compares against).
    """
    hd = args.head_dim
    inv_freq = 1.0 / args.rope_theta ** (torch.arange(0, hd, 2, device=device).float() / hd)
    s = args.rope_scaling
    if s is None:
        return inv_freq
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # old_len / wavelen: how many whole turns a pair makes over the trained context; smooth goes linearly
    # from 0 at low_freq_factor turns (where the slowed branch ends) to 1 at high_freq_factor turns (where
    # the unchanged one begins), so the speeds are continuous across the three ranges
    smooth = (old_len / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
    blended = (1 - smooth) * inv_freq / s["factor"] + smooth * inv_freq
    return torch.where(wavelen < old_len / s["high_freq_factor"], inv_freq,  # fast: as trained
                       torch.where(wavelen > old_len / s["low_freq_factor"], inv_freq / s["factor"], blended))


# Exercise (easy): rotary embeddings, the angle of every pair. Graded by: tests/test_model.py -k rope_rotation
def rope_rotation(positions, inv_freq):
    """
    Rotary position embeddings (Su et al. 2021): the pair (x[2i], x[2i+1]) of a
    query or key at position p is rotated by the angle p * theta^(-2i/head_dim):
        (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)
    (inv_freq: rope_frequencies, one speed per pair; theta^(-2i/head_dim) for plain RoPE.)
    Pairs are adjacent, as in Meta's code; transformers pairs x[i] with
    x[i + head_dim/2] ("rotate_half") and computes the same network because
    its checkpoints' wq and wk rows are permuted (checkpoint.py undoes it on load).
    positions: (B, T) integers -> cos, sin: (B, T, 1, head_dim) fp32, each angle
    repeated for both members of its pair and sin signed (-sin, +sin), so that
    apply_rope is x * cos + (x1, x0 per pair) * sin. Computed once per forward and
    shared by every layer's queries (B, T, H, hd) and keys; computed on the fly
    (it is tiny), so the model has no buffers to rebuild after being created
    on the meta device.
    """
    angles = positions.float()[:, :, None, None] * inv_freq  # (B, T, 1, head_dim/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.stack((cos, cos), -1).flatten(-2), torch.stack((-sin, sin), -1).flatten(-2)


def apply_rope(x, rotation):
    """x: (B, T, H, head_dim), rotated pairwise in fp32 as Meta's reference does."""
    # three elementwise ops and a swap, instead of a dozen ops on the halves of
    # each pair (real-valued, unlike Meta's complex multiply: torch.compile fuses it).
    # cos and sin are fp32, so a bf16 x is promoted inside the multiplies (exactly:
    # every bf16 number is an fp32 one) and rounded once at the end: no fp32 copy
    # of x, and the swap moves half the bytes. (Its gradient is rounded to bf16 per
    # term before the two are added, as under autocast in transformers.)
    cos, sin = rotation
    swapped = x.unflatten(-1, (-1, 2)).roll(1, -1).flatten(-2)  # (x1, x0) for each pair (x0, x1); roll: ~1.7x flip
    out = torch.addcmul(x * cos, swapped, sin)
    return out if x.dtype == torch.float32 else out.to(x.dtype)  # no no-op casts: a decode step is per-op overhead


def dropout(x, p):
    """
    Dropout (Srivastava et al. 2014; callers pass p = 0 outside training, and
    p = 0 returns x itself, no op run): each element is zeroed with
    probability p and the rest scaled by 1/(1-p), so the expectation is x. As F.dropout, but on a CPU the mask is drawn as
    fp32 uniforms compared with p: torch's CPU bernoulli_ (F.dropout's draw)
    takes about twice as long a number, and dropout is a sixth of an SFT step
    of the default run's model (SPEED.md "Dropout on a CPU"). fp32 draws
    whatever x's dtype: bf16 uniforms are coarse (about 1,900 values in [0, 1))
    and would drop about 0.102 of the elements for p = 0.1 (measured: 0.1016-
    0.1020 over two seeds of 4M draws, torch 2.13).
    """
    if p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p)
    keep = torch.rand(x.shape, dtype=torch.float32, device=x.device) >= p  # (bool: one byte an element for backward)
    return x * keep * (1 / (1 - p))


# Which attention runs (Attention.forward): sampling attends through the KV
# cache (sample.py); training on a CPU in bf16 or with dropout, up to this many
# tokens, runs causal_matmul_attention; everything else runs torch's SDPA.
# Why: on a CPU, SDPA's kernel runs no faster in bf16 than in fp32 while bf16
# matmuls run about twice as fast (distributed.cpu_has_bf16), and with
# dropout_p > 0 it falls back to a plain kernel that copies K and V for each
# query head. The two matmuls compute all T x T scores (SDPA skips the masked
# half), so past about 400 tokens SDPA wins again; without autograd (scoring)
# SDPA's forward wins at some shapes, and scoring is a small share of a run,
# so SDPA is kept there. Timings: SPEED.md, "Training
# attention as bf16 matmuls on the CPU" and "Dropout on a CPU".
CPU_MATMUL_ATTENTION_MAX_LEN = 384


def causal_matmul_attention(q, k, v, dropout_p=0.0):
    """
    Causal softmax(q k^T / sqrt(hd)) v, as two batched matmuls (what SDPA
    computes, for training on a CPU in bf16 or with dropout: see above).
    q: (B, H, T, hd); k, v: (B, KV, T, hd). Returns (B, H, T, hd).
    The G = H/KV query heads of a group share one key/value head (consecutive,
    as SDPA's enable_gqa takes them): their queries are the G*T rows of one
    matmul against that head's keys, so K and V are never copied (as
    sample.decode_attention does for one token).
    """
    B, H, T, hd = q.shape
    KV = k.shape[1]
    G = H // KV
    future = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)  # j > i: masked
    scores = (q.reshape(B, KV, G * T, hd) @ k.transpose(-2, -1)).view(B, KV, G, T, T)
    scores = torch.add(future, scores, alpha=hd ** -0.5)  # scale and mask in one op
    # torch's CPU softmax of bf16 computes in fp32 and rounds only its output:
    # the same bits as softmax(dtype=float32).to(bf16) (tested), without the casts
    probs = dropout(scores.softmax(-1), dropout_p)  # on the attention weights, as SDPA's dropout_p
    return (probs.view(B, KV, G * T, T) @ v).view(B, H, T, hd)


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
        self.attn_dropout_p = args.dropout  # dropout on the attention weights (training only)

    def forward(self, x, rotation, cache=None, layer=0):
        B, T, _ = x.shape
        q = apply_rope(self.wq(x).view(B, T, self.n_heads, self.head_dim), rotation)  # (B, T, H, hd)
        k = apply_rope(self.wk(x).view(B, T, self.n_kv_heads, self.head_dim), rotation)  # (B, T, KV, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        if cache is not None:
            # sampling: the cache stores these keys and values and attends over
            # everything stored so far (sample.KVCache.attend: prefill and decode)
            return self.wo(cache.attend(layer, q, k, v))  # (B, T, H * hd) -> (B, T, dim)
        # training and scoring: causal attention within the sequence
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        dropout_p = self.attn_dropout_p if self.training else 0.0
        if (q.device.type == "cpu" and (q.dtype == torch.bfloat16 or dropout_p > 0) and torch.is_grad_enabled()
                and T <= CPU_MATMUL_ATTENTION_MAX_LEN):
            y = causal_matmul_attention(q, k, v, dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p,
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
        # Dropout on each residual branch and on the attention weights (as
        # nanoGPT's, less its dropout on the embeddings); Meta's Llama has none,
        # the paper fine-tunes with 0.1.
        # Off in eval mode.
        self.dropout_p = args.dropout

    def forward(self, x, rotation, cache=None):
        p = self.dropout_p if self.training else 0.0
        h = self.attention(self.attention_norm(x), rotation, cache, self.layer_id)
        x = x + dropout(h, p)
        h = self.feed_forward(self.ffn_norm(x))
        return x + dropout(h, p)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(i, args) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        # Tied: the logits are h @ tok_embeddings.weight^T, one Parameter used
        # twice (no second module holding a reference to it, so moving the
        # model off `meta` or sharding it cannot untie them).
        self.output = None if args.tie_embeddings else nn.Linear(args.dim, args.vocab_size, bias=False)
        self.activation_checkpointing = False  # set by the training scripts
        if self.tok_embeddings.weight.device.type != "meta":
            with torch.no_grad():
                for name, t in self.initial_weights():
                    self.get_parameter(name).copy_(t)

    def initial_weights(self, generator=None):
        """
        Random init for training from scratch, yielded as (name, full tensor)
        one at a time, so a sharded model can take its slice of each and one
        process and any number of ranks start from the same weights:
        N(0, 0.02), the residual output projections (wo, w2) scaled by
        1/sqrt(2 * n_layers) (GPT-2), norms at 1.
        """
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                yield name, torch.ones(p.shape)
            else:
                std = 0.02 / math.sqrt(2 * self.args.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 0.02
                yield name, torch.randn(p.shape, generator=generator) * std

    def forward(self, tokens, targets=None, cache=None, pad_mask=None, last_only=False):
        """
        tokens: (B, T) token ids.
        targets: (B, T) the next token for each position (-100: no loss there);
                 given, the mean cross-entropy (in fp32) is returned as well
                 (for bench.py and quick checks: the trainers compute their own
                 summed losses: train_sft.sft_loss_sum, train_dpo.sequence_logps).
        cache: a sample.KVCache; keys/values of these tokens are appended to
                 it and attention sees everything cached before them. The
                 tokens' positions are 0..T-1 without one, else each row's
                 next positions in the cache.
        pad_mask: (B, T) True at padding tokens (with a cache only): they take
                 a slot but are never attended to and do not advance positions.
        last_only: logits (B, 1, V) of the last position only: a prefill for
                 sampling needs no more, and skips T-1 rows of the output matmul.
        """
        B, T = tokens.shape
        if pad_mask is not None and cache is None:  # (without a cache, padding would be attended to)
            raise ValueError("pad_mask is for sampling with a cache; training masks padding by its targets")
        if last_only and targets is not None:
            raise ValueError("last_only computes no loss: it keeps the last position's logits alone")
        if cache is not None:
            positions = cache.begin(tokens, pad_mask)
        else:
            if T > self.args.max_seq_len:
                raise ValueError(f"sequence of {T} tokens is longer than max_seq_len {self.args.max_seq_len}")
            positions = torch.arange(T, device=tokens.device).expand(B, T)
        rotation = rope_rotation(positions, rope_frequencies(self.args, tokens.device))
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
        h = self.norm(h)
        logits = F.linear(h, self.tok_embeddings.weight) if self.output is None else self.output(h)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

    def num_params(self):
        """Parameters of this built model (ModelArgs.n_params counts them from the shapes)."""
        return sum(p.numel() for p in self.parameters())


# -----------------------------------------------------------------------------
# Model FLOPs utilisation

def estimate_mfu(args: ModelArgs, n_params, tokens_per_second, seq_len, peak_flops):
    """
    The share of the hardware's peak FLOP/s that training achieves (PaLM,
    Chowdhery et al. 2022, appendix B): each token costs 6*N FLOPs for the
    matmuls with the weights (forward 2N, backward 4N) plus 12*L*H*Q*T for
    attention (L layers, H heads, Q head dim, T sequence length). N counts
    the weights that multiply: not an untied input embedding, a lookup (a
    tied one is also the output layer's matmul).
    peak_flops: the device's peak, e.g. 989e12 for an H100/H200 in bf16.
    """
    n_matmul = n_params - (0 if args.tie_embeddings else args.vocab_size * args.dim)
    flops_per_token = 6 * n_matmul + 12 * args.n_layers * args.n_heads * args.head_dim * seq_len
    return flops_per_token * tokens_per_second / peak_flops


if __name__ == "__main__":
    import configurator
    configurator.library(__doc__, "model.py",
                         "python sample.py --ckpt=FOLDER runs a model; train_sft.py and train_dpo.py train one")
