"""
sample.py against independent references: a no-cache recompute loop, one prompt
at a time, Hugging Face transformers' generate, a model rigged to emit EOS at
known steps, hand-made distributions for top-p, and one process against two
FSDP2 ranks under torchrun.
"""
import copy
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import model as M
import sample as S
from checkpoint import save_model
from data import read_jsonl, write_jsonl
from sample import generate, next_token, top_p_filter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOS = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors; the machine is shared
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny():
    """A small random model whose attention is sharp (a freshly initialised one
    attends almost uniformly, so it would not notice a wrong position or mask)."""
    torch.manual_seed(0)
    model = M.Transformer(M.preset("toy-tiny")).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.attention.wq.weight.mul_(15)
            layer.attention.wk.weight.mul_(15)
    return model


def random_prompts(lengths, vocab=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (L,), generator=g).tolist() for L in lengths]


MIXED = random_prompts([5, 17, 1, 30, 9, 12])  # mixed lengths, one a lone token


def forward_shapes(monkeypatch):
    """The (rows, tokens) of every forward pass of any Transformer from now
    on, in order: a prefill has more than one token, a decode step one."""
    shapes, real_forward = [], M.Transformer.forward
    monkeypatch.setattr(M.Transformer, "forward", lambda self, tokens, *a, **k: (
        shapes.append(tuple(tokens.shape)), real_forward(self, tokens, *a, **k))[1])
    return shapes


@torch.no_grad()
def recompute_greedy(model, prompt, steps):
    """The naive loop: the whole sequence through the model at every step, no cache."""
    x = list(prompt)
    for _ in range(steps):
        x.append(int(model(torch.tensor([x]))[0, -1].argmax()))
    return x[len(prompt):]


def test_greedy_batched_equals_one_at_a_time_and_recompute(tiny):
    batched = generate(tiny, MIXED, 12, temperature=0, batch_size=4, progress=False)
    assert len(batched) == len(MIXED) and all(len(c) == 12 for c in batched)
    singles = [generate(tiny, [p], 12, temperature=0, progress=False)[0] for p in MIXED]
    assert batched == singles
    assert batched == [recompute_greedy(tiny, p, 12) for p in MIXED]


def test_sampling_runs_in_eval_mode():
    torch.manual_seed(0)
    model = M.Transformer(M.preset("toy-tiny", dropout=0.5)).eval()
    expected = generate(model, MIXED, 5, temperature=0, progress=False)
    model.train()
    assert generate(model, MIXED, 5, temperature=0, progress=False) == expected  # no dropout
    assert model.training  # the caller's mode is back


def test_greedy_equals_transformers(tiny, tmp_path):
    transformers = pytest.importorskip("transformers")
    save_model(tiny, tmp_path / "ckpt")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # ours without eos_id never stops early
    T = max(map(len, MIXED))
    ids = torch.zeros(len(MIXED), T, dtype=torch.long)
    att = torch.zeros(len(MIXED), T, dtype=torch.long)
    for r, p in enumerate(MIXED):  # HF generates from left-padded batches
        ids[r, T - len(p):], att[r, T - len(p):] = torch.tensor(p), 1
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=att, max_new_tokens=12, do_sample=False,
                          pad_token_id=0)[:, T:].tolist()
    assert generate(tiny, MIXED, 12, temperature=0, progress=False) == ref


def test_n_samples_share_prefill_and_seeds_repeat(tiny, monkeypatch):
    kw = dict(temperature=1.0, top_p=0.9, seed=7, progress=False)
    with monkeypatch.context() as m:
        seen = forward_shapes(m)
        shared = generate(tiny, MIXED, 10, n=3, batch_size=6, **kw)
    assert [rows for rows, T in seen if T > 1] == [2, 2, 2]  # 2 prompts a batch of 6 rows, each prefilled once
    assert len(shared) == 3 * len(MIXED)
    # completion k = i*n + j is prompt i's sample j: the same as the k-th of the
    # prompts repeated n times, each prefilled on its own, in other batches
    unshared = generate(tiny, [p for p in MIXED for _ in range(3)], 10, n=1, batch_size=5, **kw)
    assert shared == unshared
    assert shared == generate(tiny, MIXED, 10, n=3, batch_size=64, **kw)  # repeats exactly
    assert len({tuple(c) for c in shared[:3]}) > 1  # the n samples differ
    assert shared != generate(tiny, MIXED, 10, n=3, **{**kw, "seed": 8})


def test_sampling_with_stops_is_the_no_cache_sampler_whatever_the_batching(tiny):
    """Temperature > 0 with rows that stop at different steps (a fifth of the
    vocabulary ends a row), as every candidate and judgment in the loop
    stops: each completion k = i*n + j draws its own uniforms
    (row_uniforms(seed, [k])), whatever rows finished beside it, the batch
    size or how often finished rows are dropped (check_every: 1 on a CPU, 8
    on a GPU). Against a no-cache sampler that runs one completion alone."""
    stops = list(range(3, 120))
    kw = dict(temperature=1.0, top_p=0.9, n=2, seed=7, eos_id=stops, progress=False)
    a = generate(tiny, MIXED, 10, batch_size=12, check_every=1, **kw)
    assert a == generate(tiny, MIXED, 10, batch_size=12, check_every=100, **kw)
    assert a == generate(tiny, MIXED, 10, batch_size=2, check_every=1, **kw)

    @torch.no_grad()
    def alone(prompt, k):
        u, x, out = S.row_uniforms(7, [k], 10)[0], list(prompt), []
        for t in range(10):
            token = int(next_token(tiny(torch.tensor([x]))[:, -1], 1.0, 0.9, u[t:t + 1]))
            if token in stops:
                break
            out.append(token)
            x.append(token)
        return out
    assert a == [alone(p, i * 2 + j) for i, p in enumerate(MIXED) for j in range(2)]
    assert len({len(c) for c in a}) > 2  # rows did stop at different steps


def test_shared_prefix_gives_the_same_output(tiny):
    rubric = random_prompts([80], seed=1)[0]
    prompts = [rubric + p for p in MIXED]
    plain = generate(tiny, prompts, 8, temperature=0, min_shared_prefix=None, progress=False)
    assert plain == generate(tiny, prompts, 8, temperature=0, batch_size=4, progress=False)
    # a prompt that is only the prefix keeps its last token to itself
    with_short = prompts + [rubric]
    assert (generate(tiny, with_short, 8, temperature=0, min_shared_prefix=None, progress=False)
            == generate(tiny, with_short, 8, temperature=0, min_shared_prefix=16, progress=False))
    kw = dict(temperature=0.8, top_p=0.95, n=2, seed=3, progress=False)
    assert (generate(tiny, prompts, 8, min_shared_prefix=None, **kw)
            == generate(tiny, prompts, 8, batch_size=4, **kw))


def test_shared_prefix_is_prefilled_once(tiny, monkeypatch):
    rubric = random_prompts([80], seed=1)[0]
    prompts = [rubric + p for p in MIXED]
    seen = forward_shapes(monkeypatch)
    generate(tiny, prompts, 3, temperature=0, batch_size=3, progress=False)
    prefills = [s for s in seen if s[1] > 1]
    assert prefills[0] == (1, 80)  # the rubric, once
    assert all(s[1] <= 30 for s in prefills[1:])  # then only the prompts' own tokens
    # min_shared_prefix is the shortest prefix shared: 80 tokens are shared at 80, not at 81
    for at_least, first in [(80, (1, 80)), (81, (3, 110))]:
        seen.clear()
        generate(tiny, prompts, 3, temperature=0, batch_size=3, min_shared_prefix=at_least, progress=False)
        assert [s for s in seen if s[1] > 1][0] == first
    seen.clear()  # a lone prompt shares its prefix with no one: one prefill of it all
    generate(tiny, [rubric], 3, temperature=0, progress=False)
    assert seen == [(1, 80), (1, 1), (1, 1)]


def test_a_shared_prefix_counts_in_each_rows_room():
    """The room left for new tokens is the context less the whole prompt, the
    shared prefix included: prompts of 120 and 110 tokens sharing 100, in a
    context of 128, get 8 and 18 new tokens of the 50 asked for."""
    torch.manual_seed(0)
    model = M.Transformer(M.preset("toy-tiny", max_seq_len=128)).eval()
    base = random_prompts([100])[0]
    prompts = [base + p for p in random_prompts([20, 10], seed=1)]
    assert [len(c) for c in generate(model, prompts, 50, temperature=0, progress=False)] == [8, 18]


def test_a_prefix_is_shared_only_when_every_prompt_starts_with_it(tiny):
    """The common prefix is checked against every prompt, not the first two
    only: here the second lacks the first's 70 tokens (it has them later),
    so nothing is shared, and the answers are those of sharing turned off."""
    assert S.common_prefix_length([[1, 2, 3], [1, 9], [1, 2, 3]]) == 1
    assert S.common_prefix_length([[1, 2, 3], [1, 2, 3], [1, 9]]) == 1  # the last one too
    base = random_prompts([70], seed=2)[0]
    prompts = [base + [5, 6], [3, 4] + base, base + [7, 8]]
    assert (generate(tiny, prompts, 4, temperature=0, min_shared_prefix=8, progress=False)
            == generate(tiny, prompts, 4, temperature=0, min_shared_prefix=None, progress=False))


def test_prompts_are_batched_longest_first(tiny, monkeypatch):
    """Sorted by length before batching, so a batch holds prompts of like
    length and pads little: lengths 30, 3, 29 in batches of 2 are prefilled
    as (30, 29) then (3), 63 slots, not (3, 29) then (30), 88."""
    seen = forward_shapes(monkeypatch)
    generate(tiny, random_prompts([30, 3, 29], seed=3), 2, temperature=0, batch_size=2, progress=False)
    assert [s for s in seen if s[1] > 1] == [(2, 30), (1, 3)]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.25, 0.5, 0.125, 0.125]])
    kept = lambda p: (top_p_filter(probs, p)[0] > 0).nonzero().flatten().tolist()
    assert kept(0.5) == [1]  # 0.5 alone reaches 0.5
    assert kept(0.25) == [1]
    assert kept(0.75) == [0, 1]
    assert kept(0.76) == [0, 1, 2]  # ties 2 and 3: the lower id first
    assert kept(0.875) == [0, 1, 2]
    assert kept(1.0) == [0, 1, 2, 3]
    ties = torch.tensor([[0.125, 0.375, 0.125, 0.375]])
    assert (top_p_filter(ties, 0.375)[0] > 0).nonzero().flatten().tolist() == [1]
    assert (top_p_filter(ties, 0.5)[0] > 0).nonzero().flatten().tolist() == [1, 3]
    # rows are independent; kept tokens keep their probability
    both = top_p_filter(torch.cat([probs, ties]), 0.7)
    assert both.tolist() == [[0.25, 0.5, 0, 0], [0, 0.375, 0, 0.375]]


def test_top_p_boundary_tokens_are_kept_as_in_float64():
    """A token is kept when the tokens more likely than it have less than top_p
    in total. Rows over a 32,000-token vocabulary with top_p set just above one
    token's exclusive mass (1e-9 .. 2e-6 above, as a float64 numpy sum says):
    that token must be kept. A float32 running sum rounds to 6e-8 at 0.9 and
    drops some of them."""
    import numpy as np
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(256, 32000, generator=g), dim=-1)
    margins = 10 ** torch.empty(256, dtype=torch.float64).uniform_(-9, np.log10(2e-6), generator=g)
    fp32_drops = 0
    for row, margin in zip(probs, margins.tolist()):
        mass_before = np.concatenate([[0.0], np.cumsum(np.sort(row.numpy().astype(np.float64))[::-1])[:-1]])
        j = int((mass_before < 0.9).sum())  # the first token past 0.9 ...
        top_p = mass_before[j] + margin  # ... becomes the boundary token, kept by the float64 sum
        kept = int((top_p_filter(row[None], top_p) > 0).sum())
        assert kept == j + 1 == int((mass_before < top_p).sum())
        fp32_sum = F.pad(row.sort(descending=True).values.cumsum(0)[:-1], (1, 0))
        fp32_drops += int((fp32_sum < top_p).sum()) != j + 1
    assert fp32_drops > 0  # the case is real: a float32 sum loses some boundary tokens


def test_top_p_breaks_ties_by_lower_id_in_a_large_vocabulary():
    """Rows of 2,000 tokens, each of three probabilities (4 : 2 : 1), so
    hundreds of tokens tie at the boundary: the kept set equals a plain-Python
    reference that orders by (probability descending, id ascending) and keeps
    a token while the mass before it (a float64 sum) is under top_p. An
    unstable sort (torch's CPU sort over this many elements) orders tied
    tokens arbitrarily and keeps other ids."""
    g = torch.Generator().manual_seed(0)
    levels = torch.tensor([4.0, 2.0, 1.0])
    probs = levels[torch.randint(0, 3, (8, 2000), generator=g)]
    probs = probs / probs.sum(-1, keepdim=True)
    for top_p in (0.1, 0.5, 0.8, 0.97):
        kept = top_p_filter(probs, top_p) > 0
        for row, got in zip(probs.tolist(), kept):
            order = sorted(range(len(row)), key=lambda i: (-row[i], i))
            expected, before = set(), 0.0
            for i in order:
                if before >= top_p:
                    break
                expected.add(i)
                before += row[i]
            assert got.nonzero().flatten().tolist() == sorted(expected), top_p
            boundary = row[order[len(expected) - 1]]  # the level cut through: some of its ties kept, some not
            assert 0 < sum(row[i] == boundary for i in expected) < sum(p == boundary for p in row)


def test_bf16_logits_draw_as_their_fp32_values():
    """Sampling from bf16 logits (a bf16 model's output) computes the softmax
    in fp32: 4,000 rows of 2,000 bf16 logits, with fixed uniforms, draw
    exactly the tokens the same logits cast to fp32 first draw, with and
    without a nucleus. A softmax in bf16 rounds each probability to 8 bits
    and moves a few draws in a hundred."""
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(4000, 2000, generator=g)).bfloat16()
    u = torch.rand(4000, dtype=torch.float64, generator=g)
    for temperature, top_p in ((0.7, 0.9), (1.0, 1.0)):
        got, ref = next_token(logits, temperature, top_p, u), next_token(logits.float(), temperature, top_p, u)
        assert torch.equal(got, ref), f"{int((got != ref).sum())} of 4000 draws differ at T={temperature}"


def test_sampling_stays_inside_the_nucleus():
    logits = torch.log(torch.tensor([[0.0, 0.5, 0.25, 0.125, 0.125]]))
    pick = lambda u, top_p: int(next_token(logits, 1.0, top_p, torch.tensor([u], dtype=torch.float64)))
    assert pick(0.0, 1.0) == 1  # never the zero-probability token 0
    assert pick(0.49, 1.0) == 1 and pick(0.51, 1.0) == 2 and pick(1 - 1e-12, 1.0) == 4
    assert pick(1 - 1e-12, 0.75) == 2 and pick(0.6, 0.75) == 1  # renormalised over {1, 2}
    torch.manual_seed(0)
    draws = next_token(logits.expand(4000, -1), 1.0, 0.75, torch.rand(4000, dtype=torch.float64))
    assert set(draws.tolist()) == {1, 2}
    assert abs((draws == 1).float().mean().item() - 2 / 3) < 0.03
    assert next_token(logits, 0.0, 1.0, None).tolist() == [1]  # greedy


def test_temperature_sharpens_by_hand():
    """p ~ exp(logit / T): at T = 0.5, probabilities 1/2, 1/4, 1/8, 1/8 become
    their squares, 16 : 4 : 1 : 1 of 22; the nucleus is then taken of those."""
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]]))
    pick = lambda u, top_p=1.0: int(next_token(logits, 0.5, top_p, torch.tensor([u], dtype=torch.float64)))
    cdf = [16 / 22, 20 / 22, 21 / 22]
    assert [pick(c - 1e-6) for c in cdf] == [0, 1, 2] and [pick(c + 1e-6) for c in cdf] == [1, 2, 3]
    assert pick(0.79, top_p=0.8) == 0 and pick(0.81, top_p=0.8) == 1  # the nucleus {0, 1}: 16 : 4 of 20
    torch.manual_seed(0)
    draws = next_token(logits.expand(8000, -1), 2.0, 1.0, torch.rand(8000, dtype=torch.float64))
    share = torch.bincount(draws, minlength=4).double() / 8000  # at T = 2: square roots, 2.83 : 2 : 1.41 : 1.41
    expected = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64).sqrt()
    assert torch.allclose(share, expected / expected.sum(), atol=0.015)
    # at T = 0.25, fourth powers: 256 : 16 : 1 : 1 of 274 (below 0.5 too)
    assert [int(next_token(logits, 0.25, 1.0, torch.tensor([256 / 274 + d], dtype=torch.float64)))
            for d in (-1e-6, 1e-6)] == [0, 1]


def test_the_nucleus_edges_and_the_cdf_by_hand():
    """top_p = 1 filters nothing: a token of probability 9e-14 (exp(-30))
    stays drawable, where a filter at 1 would drop it (the mass before it
    rounds to 1 in fp32); just under 1 (0.995) the filter is on: 0.004 of
    the mass lies past it. The CDF is summed in float64: a token of 1e-9
    between two halves keeps its share (an fp32 sum loses it)."""
    draw = lambda probs, top_p, u: int(next_token(torch.log(torch.tensor([probs])), 1.0, top_p,
                                                  torch.tensor([u], dtype=torch.float64)))
    assert int(next_token(torch.tensor([[0.0, -30.0]]), 1.0, 1.0, torch.tensor([1 - 1e-15], dtype=torch.float64))) == 1
    assert draw([0.5, 0.496, 0.004], 0.995, 0.999) == 1 and draw([0.5, 0.496, 0.004], 1.0, 0.999) == 2
    assert draw([0.5, 1e-9, 0.5], 1.0, 0.5) == 1


def test_row_uniforms_are_the_runs_own_float64_draws():
    """Each sample's uniforms: full float64 resolution (fp32's are multiples of
    2^-24, too coarse to reach a token below ~6e-8); seeded by (seed, k), so
    seed 7's sample 1 is not seed 8's sample 0; and the draws every run so far
    made (the README's included: a change redraws every sample they hold)."""
    u = S.row_uniforms(7, [0], 1000)
    assert u.dtype == torch.float64 and ((u * 2**24) != (u * 2**24).round()).any()
    assert not torch.equal(S.row_uniforms(7, [1], 5), S.row_uniforms(8, [0], 5))
    assert S.row_uniforms(1337, [0, 1], 2).tolist() == [[0.09149272321582413, 0.5303300905025853],
                                                       [0.24399974794890367, 0.41400276958626625]]



def test_decode_attention_equals_naive_attention(monkeypatch):
    """One new token per row against its cached keys and values: 8 query heads
    sharing 2 KV heads, masked slots, and a prefix every row shares; against
    plain softmax attention over KV heads repeated for their query heads. It
    must attend as its docstring says, without SDPA and without copying K and
    V for each query head (a handout's student has this file: the reference
    below, pasted in, must not pass)."""
    g = torch.Generator().manual_seed(0)
    B, H, KV, hd, S_, P = 3, 8, 2, 16, 5, 4
    q = torch.randn(B, 1, H, hd, generator=g)
    k, v = torch.randn(B, KV, S_, hd, generator=g), torch.randn(B, KV, S_, hd, generator=g)
    shared = torch.randn(1, KV, P, hd, generator=g), torch.randn(1, KV, P, hd, generator=g)
    valid = torch.rand(B, P + S_, generator=g) > 0.4
    valid[:, -1] = True  # the new token's own slot
    mask = torch.zeros(B, 1, 1, P + S_).masked_fill(~valid[:, None, None], float("-inf"))

    def naive(keys, values, mask):  # keys, values: (B, KV, L, hd); mask: (B, 1, 1, L)
        keys, values = keys.repeat_interleave(H // KV, 1), values.repeat_interleave(H // KV, 1)  # (B, H, L, hd)
        scores = torch.einsum("bhd,bhld->bhl", q[:, 0], keys) / hd ** 0.5 + mask[:, 0]
        return torch.einsum("bhl,bhld->bhd", scores.softmax(-1), values).reshape(B, 1, H * hd)

    def refused(what):
        def refuse(*a, **kw):
            raise AssertionError(f"decode_attention: write it as batched matmuls over each group's query heads (its "
                                 f"docstring), not with {what}")
        return refuse
    with monkeypatch.context() as m:
        # SDPA: the prefill's way, several times slower for one query on a CPU; the others copy K and V
        m.setattr(F, "scaled_dot_product_attention", refused("SDPA"))
        for owner, name in [(torch, "repeat_interleave"), (torch.Tensor, "repeat_interleave"),
                            (torch.Tensor, "repeat"), (torch, "einsum")]:
            m.setattr(owner, name, refused(name))
        own = S.decode_attention(q, k, v, mask[..., P:])  # no shared prefix
        with_prefix = S.decode_attention(q, k, v, mask, shared)
    assert own.shape == (B, 1, H * hd), f"shape {tuple(own.shape)}, not (B, 1, H * hd) = {(B, 1, H * hd)}"
    gap = (own - naive(k, v, mask[..., P:])).abs().max().item()
    assert gap < 1e-5, f"without a prefix: {gap:.3g} off plain attention (query head h uses KV head h // (H // KV))"
    keys = torch.cat([shared[0].expand(B, -1, -1, -1), k], 2)
    values = torch.cat([shared[1].expand(B, -1, -1, -1), v], 2)
    gap = (with_prefix - naive(keys, values, mask)).abs().max().item()
    assert gap < 1e-5, f"with a shared prefix: {gap:.3g} off plain attention over the prefix's slots, then the row's own"


def chain_model(max_seq_len=64):
    """A model rigged so that the next token is always current + 1 (mod 16):
    no attention or MLP (zero output projections), one-hot embeddings, and an
    output layer that maps token t to t + 1. EOS (2) comes right after 1."""
    args = M.ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=16, multiple_of=16, max_seq_len=max_seq_len)
    model = M.Transformer(args).eval()
    with torch.no_grad():
        model.layers[0].attention.wo.weight.zero_()
        model.layers[0].feed_forward.w2.weight.zero_()
        model.tok_embeddings.weight.zero_()
        model.tok_embeddings.weight[:, :16] = torch.eye(16)
        model.output.weight.zero_()
        for t in range(16):
            model.output.weight[(t + 1) % 16, t] = 1.0
    return model


def test_each_row_stops_at_its_own_eos():
    model = chain_model()
    prompts = [[3, 14], [5, 15], [9], [7, 0], [4, 1]]
    out = generate(model, prompts, 6, temperature=0, eos_id=EOS, progress=False)
    # 14 -> 15 0 1 (EOS); 15 -> 0 1 (EOS); 9 -> 10..15 (cut at 6); 0 -> 1 (EOS); 1 -> EOS at once
    assert out == [[15, 0, 1], [0, 1], [10, 11, 12, 13, 14, 15], [1], []]
    # without eos_id it runs through EOS to max_new_tokens
    assert generate(model, [[15]], 4, temperature=0, progress=False) == [[0, 1, 2, 3]]
    # sampling at a low temperature is as good as greedy here, n rows each stop alone
    out = generate(model, [[14], [10]], 5, temperature=0.01, n=2, eos_id=EOS, seed=0, progress=False)
    assert out == [[15, 0, 1]] * 2 + [[11, 12, 13, 14, 15]] * 2


def test_any_of_several_eos_ids_ends_a_row(monkeypatch):
    """Llama 3 instruct ends a turn with <|eot_id|>, text with <|end_of_text|>:
    a row stops at whichever of the given ids comes first."""
    model = chain_model()
    out = generate(model, [[3], [9], [12]], 6, temperature=0, eos_id=[6, 11, 15], progress=False)
    assert out == [[4, 5], [10], [13, 14]]
    assert generate(model, [[3]], 6, temperature=0, eos_id=(11, 6), progress=False) == [[4, 5]]
    # a row ended by its second stop id is done, and no longer decoded: 2 rows, 2, then [3] alone until its 6
    seen = forward_shapes(monkeypatch)
    assert generate(model, [[3], [9]], 8, temperature=0, eos_id=[11, 6], progress=False,
                    check_every=1) == [[4, 5], [10]]
    assert [rows for rows, _ in seen] == [2, 2, 1]
    # sample_chat (the loop's and sample.py's way in) stops at every id the tokenizer lists, not only eos_id
    monkeypatch.setattr(S, "chat_prompt_ids", lambda tok, text: [3])
    from types import SimpleNamespace
    tok = SimpleNamespace(eos_id=11, stop_ids=[6, 11], decode=lambda ids: " ".join(map(str, ids)))
    assert S.sample_chat(model, tok, ["hi"], max_new_tokens=10, temperature=0, progress=False) == ["4 5"]


def test_finished_rows_stop_costing_work(monkeypatch):
    model = chain_model()
    seen = forward_shapes(monkeypatch)
    prompts, expected = [[0], [13], [9]], [[1], [14, 15, 0, 1], [10, 11, 12, 13, 14, 15, 0, 1]]
    assert generate(model, prompts, 8, temperature=0, eos_id=EOS, progress=False, check_every=1) == expected
    # prefill 3 rows; [0] -> 1 then EOS: 2 decode steps with 3 rows, then 2 rows
    # until [13] -> 14 15 0 1 EOS, then [9] alone until its 8 tokens
    assert [rows for rows, _ in seen] == [3, 3, 2, 2, 2, 1, 1, 1]
    # looking every 4 steps (as on a GPU: a look waits for the device): finished
    # rows are decoded until the next look, the results are the same
    seen.clear()
    assert generate(model, prompts, 8, temperature=0, eos_id=EOS, progress=False, check_every=4) == expected
    assert [rows for rows, _ in seen] == [3, 3, 3, 3, 2, 2, 2, 2]


def test_copying_and_dropping_rows_is_in_place(tiny):
    """select() reuses the cache's buffers: the largest tensor it creates is
    one layer's rows, never a second cache."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        """The largest storage created, other than the cache's own buffers (views of them are free)."""
        def __init__(self):
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in buffers:
                    self.bytes = max(self.bytes, t.untyped_storage().nbytes())
            return out

    cache = S.KVCache(tiny.args, 2, 16, "cpu", capacity=6)
    with torch.no_grad():
        tiny(torch.tensor([[5, 6, 7], [8, 9, 10]]), cache=cache)

    def keys():  # every layer's keys of the rows in use, first 3 slots: (layers, B, KV, 3, hd)
        return torch.stack([cache.layer(i)[0][:, :, :3] for i in range(tiny.args.n_layers)])

    k, buffer = keys().clone(), cache.keys[0].data_ptr()
    buffers = {b.untyped_storage().data_ptr() for b in cache.keys + cache.values}
    layer_rows = cache.keys[0].numel() * cache.keys[0].element_size()  # one layer's keys, all 6 rows
    with Largest() as largest:
        cache.repeat_interleave(3)  # 2 prompts -> 3 samples each
    assert torch.equal(keys(), k.repeat_interleave(3, dim=1))
    with Largest() as largest_drop:
        cache.select(torch.tensor([5, 0]))  # the last sample of prompt 1, the first of prompt 0
    assert torch.equal(keys(), k[:, [1, 0]])
    assert cache.keys[0].data_ptr() == buffer and cache.layer(0)[0].data_ptr() == buffer
    assert 0 < largest.bytes <= layer_rows and 0 < largest_drop.bytes <= layer_rows
    assert cache.keys[0].numel() == 6 * tiny.args.n_kv_heads * 16 * tiny.args.head_dim


def test_cache_grows_by_chunks_and_steps_read_one_block(tiny):
    """The buffers hold whole chunks of slots, grown as the rows fill them, and
    a decode step reads each layer's keys and values as one contiguous block
    (a slice of a bigger buffer would be copied by the CPU's bf16 matmul at
    every step); logits match the model without a cache across the growth."""
    prompt = [5, 6, 7, 8, 9]
    cache = S.KVCache(tiny.args, 1, 40, "cpu")
    cache.CHUNK = 8
    tokens, slots, buffers = list(prompt), [], []
    with torch.no_grad():
        logits = tiny(torch.tensor([prompt]), cache=cache)[:, -1]
        slots.append(cache.keys[0].shape[2])
        buffers.append(cache.keys[0].data_ptr())
        for _ in range(30):
            tokens.append(int(logits.argmax()))
            logits = tiny(torch.tensor([tokens[-1:]]), cache=cache)[:, -1]
            slots.append(cache.keys[0].shape[2])
            buffers.append(cache.keys[0].data_ptr())
            k, v = cache.layer(tiny.args.n_layers - 1)
            assert k.is_contiguous() and v.is_contiguous() and k.shape[2] == cache.slots
        reference = tiny(torch.tensor([tokens]))[:, -1]
    # 5 slots filled -> 8; 9 -> 16; ... ; 35 -> 40 (max_slots, not 48)
    assert slots == [8] * 4 + [16] * 8 + [24] * 8 + [32] * 8 + [40] * 3
    # a step inside a chunk writes into the buffer it has (one allocation a chunk, not one a step)
    assert all(b == a for a, b, n, m in zip(buffers, buffers[1:], slots, slots[1:]) if n == m)
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)


def test_a_cache_too_small_a_padded_one_token_pass_and_too_many_rows(tiny):
    """The cache's own checks, used directly (model.forward with a cache):
    more tokens than slots is a clear error; a one-token pass with a padding
    mask leaves the padded row's slot out of attention, as a longer one does;
    selecting more rows than its capacity is a clear error."""
    cache = S.KVCache(tiny.args, 1, 8, "cpu")
    with torch.no_grad(), pytest.raises(ValueError, match="KV cache full: 9 slots needed, room for 8"):
        tiny(torch.tensor([[5] * 9]), cache=cache)
    cache = S.KVCache(tiny.args, 2, 8, "cpu")
    with torch.no_grad():
        tiny(torch.tensor([[0], [9]]), cache=cache, pad_mask=torch.tensor([[True], [False]]))
        tiny(torch.tensor([[7], [7]]), cache=cache)
    assert cache.valid[:, :2].tolist() == [[False, True], [True, True]]
    cache = S.KVCache(tiny.args, 2, 8, "cpu", capacity=3)
    with torch.no_grad():
        tiny(torch.tensor([[5, 6], [7, 8]]), cache=cache)
    with pytest.raises(ValueError, match="KV cache has room for 3 rows, 4 asked for"):
        cache.select(torch.tensor([0, 0, 1, 1]))
    cache = S.StaticKVCache(tiny.args, 2, 8, "cpu")  # the static cache's one-token pass with padding too
    with torch.no_grad():
        tiny(torch.tensor([[5, 6], [7, 8]]), cache=cache)
        tiny(torch.tensor([[0], [9]]), cache=cache, pad_mask=torch.tensor([[True], [False]]))
        tiny(torch.tensor([[7], [7]]), cache=cache)
    assert cache.valid[:, :4].tolist() == [[True, True, False, True], [True, True, True, True]]
    # a shared prefix cache with room to spare (generate sizes it exactly): rows read its filled slots only
    prefix = S.KVCache(tiny.args, 1, 40, "cpu")
    with torch.no_grad():
        tiny(torch.tensor([[5, 6, 7, 8, 9]]), cache=prefix)
        cache = S.KVCache(tiny.args, 1, 8, "cpu", prefix=prefix)
        tiny(torch.tensor([[10, 11]]), cache=cache)
        logits = tiny(torch.tensor([[12]]), cache=cache)[:, -1]
        torch.testing.assert_close(logits, tiny(torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]]))[:, -1], atol=1e-4,
                                   rtol=1e-4)


def test_context_limit_cuts_completions():
    model = chain_model(max_seq_len=8)
    assert generate(model, [[3] * 5, [3]], 10, temperature=0, progress=False) == [
        [4, 5, 6], [4, 5, 6, 7, 8, 9, 10]]  # prompt + completion fill at most 8
    # with n = 2, each prompt's two rows have its room (rows i * n + j)
    assert generate(model, [[3] * 5, [3]], 10, temperature=0.01, n=2, seed=0, progress=False) == [
        [4, 5, 6], [4, 5, 6], [4, 5, 6, 7, 8, 9, 10], [4, 5, 6, 7, 8, 9, 10]]


def test_bad_input_is_a_clear_error(tiny):
    cases = [
        (dict(prompts=[]), "non-empty"),
        (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
        (dict(prompts=[[1] * 512]), "prompt 0 has 512 tokens"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=-0.1), "temperature"),
        (dict(n=0), "n and batch_size"),
        (dict(batch_size=0), "n and batch_size must be >= 1, got n=1, batch_size=0"),
        (dict(max_new_tokens=-1), "max_new_tokens must be >= 0, got -1"),
        (dict(top_p=1.2), r"top_p must be in \(0, 1\], got 1.2"),
        (dict(temperature=-0.01), "temperature"),
        (dict(prompts=torch.tensor([[5, 6, 7]])), "prompts must be a non-empty list of token-id lists"),
    ]
    for change, message in cases:
        kw = dict(prompts=[[1, 2]], max_new_tokens=2, progress=False) | change
        with pytest.raises(ValueError, match=message):
            generate(tiny, **kw)
    assert generate(tiny, [[1, 2]], 0, progress=False) == [[]]
    with torch.no_grad():  # no token asked for: n empty completions a prompt, and no forward pass
        seen = []
        with pytest.MonkeyPatch.context() as m:
            seen = forward_shapes(m)
            assert generate(tiny, [[1, 2], [3]], 0, n=3, progress=False) == [[]] * 6
        assert seen == []
    # fits: a prompt with room for one token at least, not an empty one
    assert S.fits(tiny, [1] * 511) and not S.fits(tiny, [1] * 512) and not S.fits(tiny, [])


def test_generate_defaults_and_its_name():
    """generate's defaults sample plainly (temperature 1, top_p 1); seed None
    draws a new seed each call; the autograd wrapper keeps its name and
    docstring (help(generate))."""
    import inspect
    params = inspect.signature(generate).parameters
    assert (params["temperature"].default, params["top_p"].default) == (1.0, 1.0)
    assert generate.__name__ == "generate" and generate.__doc__.strip().startswith("Sample n completions")
    torch.manual_seed(0)
    model = M.Transformer(M.preset("toy-tiny")).eval()
    assert generate(model, [[5, 6, 7]], 8, seed=None, progress=False) != generate(model, [[5, 6, 7]], 8, seed=None,
                                                                                  progress=False)


def test_cli_prompts_file(tiny, toy_tokenizer_path, tmp_path, monkeypatch, capsys):
    from tokenizer import Tokenizer, chat_prompt_ids
    vocab = Tokenizer(toy_tokenizer_path).vocab_size
    torch.manual_seed(0)
    model = M.Transformer(M.preset("toy-tiny", vocab_size=vocab)).eval()
    save_model(model, tmp_path / "ckpt", tokenizer_path=toy_tokenizer_path)
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text('{"prompt": "reverse the word fox", "id": 7}\n\n{"prompt": "count the letters"}\n')
    argv = [f"--{k}={v}" for k, v in dict(ckpt=tmp_path / "ckpt", prompts_file=inp, out=out, device="cpu",
                                          dtype="float32", max_new_tokens=6, temperature=0.0, progress=False).items()]
    S.main(argv)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    tok = Tokenizer(toy_tokenizer_path)
    # (sample_chat's steps written out: the chat template, greedy decoding to the end-of-turn, decode)
    ids = generate(model, [chat_prompt_ids(tok, t) for t in ["reverse the word fox", "count the letters"]], 6,
                   temperature=0, eos_id=tok.stop_ids, progress=False)
    expected = [tok.decode(x) for x in ids]
    assert records == [{"prompt": "reverse the word fox", "id": 7, "response": expected[0]},
                       {"prompt": "count the letters", "response": expected[1]}]
    # several samples a prompt: record i holds samples 2i and 2i+1 of one generate call (chunk 0 uses the seed)
    S.main([a for a in argv if "temperature" not in a and "--out=" not in a]
           + [f"--out={tmp_path / 'two.jsonl'}", "--num_samples=2", "--temperature=1.0", "--seed=5"])
    ids = generate(model, [chat_prompt_ids(tok, t) for t in ["reverse the word fox", "count the letters"]], 6,
                   temperature=1.0, top_p=S.DEFAULTS["top_p"], n=2, seed=5, eos_id=tok.stop_ids, progress=False)
    samples = [tok.decode(x) for x in ids]
    assert [r["responses"] for r in map(json.loads, (tmp_path / "two.jsonl").read_text().splitlines())] == [
        samples[:2], samples[2:]]
    assert len(set(samples)) > 1
    # as many new tokens as the context holds, or more: said at the start (generate stops where it is full)
    capsys.readouterr()
    S.main(argv[:-3] + ["--max_new_tokens=512", "--temperature=0.0", "--progress=False"])
    assert "warning: max_new_tokens 512 is not below the model's context of 512 tokens" in capsys.readouterr().err
    # one prompt: stdout holds its answer alone (what a script captures), the log line goes to stderr
    S.main([f"--ckpt={tmp_path / 'ckpt'}", "--prompt=reverse the word fox", "--device=cpu", "--dtype=float32",
            "--max_new_tokens=6", "--temperature=0", "--progress=False"])
    said = capsys.readouterr()
    assert said.out == expected[0] + "\n" and said.err.startswith("computing on cpu, float32")
    inp.write_text('{"prompt": "fine"}\n{"prompt": broken\n')
    os.link(inp, tmp_path / "link.jsonl")
    ift = '{"prompt": "say hi", "response": "hi"}\n'
    (tmp_path / "ift.jsonl").write_text(ift)
    (tmp_path / "empty.jsonl").write_text("")  # (as mktemp makes: accepted)
    inp.write_text('{"prompt": "fine"}\n')
    assert S.answers_to(str(tmp_path / "empty.jsonl"), ["fine"])
    assert not S.answers_to(str(tmp_path / "ift.jsonl"), ["fine"])
    assert not S.answers_to(str(inp), ["fine"])  # the prompts themselves, answered by nothing
    capsys.readouterr()
    for text, extra, message in [
            ('{"prompt": "fine"}\n{"prompt": broken\n', [], r"in.jsonl:2: malformed JSON"),
            ('{"text": "no prompt"}\n', [], r"in.jsonl:1: missing or non-string field(s): prompt"),
            ('{"prompt": "fine"}\n', ["--num_samples=0"], "num_samples = 0: must be >= 1"),
            ('{"prompt": "fine"}\n', ["--batch_size=0"], "batch_size = 0: must be >= 1"),
            ('{"prompt": "fine"}\n', ["--seed=None", "--top_p=None"], "top_p = None: give a value like its default"),
            ('{"prompt": "fine"}\n', ["--max_new_tokens=0"], "max_new_tokens = 0: must be >= 1"),
            ('{"prompt": "fine"}\n', [f"--out={tmp_path}"], "is a folder: give the file to write"),
            ('{"prompt": "fine"}\n', [f"--out={inp}/x.jsonl"], f"{inp} is a file, not a folder"),
            ('{"prompt": "fine"}\n', [f"--ckpt={tmp_path}/nockpt"], "ckpt: checkpoint folder not found"),
            # a prompt with no room to answer: by file and line, before the model loads or OUT.partial is made
            ('{"prompt": "fine"}\n' + json.dumps({"prompt": "fox " * 600}) + "\n", [],
             "in.jsonl:2: the prompt is "),
            ('{"prompt": "fine"}\n', ["--prompts_file=", "--out=", "--prompt=" + "fox " * 600], "- prompt: the prompt is "),
            ('{"prompt": "fine"}\n{"prompt": " "}\n', [], "in.jsonl:2: empty prompt: nothing to answer"),
            ('{"prompt": "fine"}\n', [f"--out={inp}"], "is --prompts_file itself: give the answers a file of their own"),
            ('{"prompt": "fine"}\n', [f"--out={tmp_path / 'link.jsonl'}"], "is --prompts_file itself"),  # a hard link
            # nor any file but answers to these prompts (a run's seed data: records with a response too)
            ('{"prompt": "fine"}\n', [f"--out={tmp_path / 'ift.jsonl'}"], "exists and is not answers to "
                                                                           "--prompts_file's prompts"),
            # nor a file of the model it reads (its weights were replaced when the run ended)
            ('{"prompt": "fine"}\n', [f"--out={tmp_path / 'ckpt' / 'model.safetensors'}"],
             f"is inside --ckpt={tmp_path / 'ckpt'}, the model this run reads"),
            # --out with one --prompt (its answer goes to stdout), and several samples at temperature 0 (argv's)
            ('{"prompt": "fine"}\n', ["--prompts_file=", "--prompt=fine"], "': goes with --prompts_file"),
            ('{"prompt": "fine"}\n', ["--num_samples=3"], "num_samples = 3: at temperature 0 every sample is the one"),
            ('{"prompt": "fine"}\n', ["--tp=3"], "tp = 3: must divide the number of ranks, 1"),
            ('{"prompt": "fine"}\n', ["--tp=3"], "tp = 3: must divide the model's n_kv_heads 2 and FFN width 192")]:
        inp.write_text(text)
        with pytest.raises(SystemExit) as e:
            S.main(argv + extra)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: sample.py cannot start; ") and message in err, err
    assert not os.path.exists(f"{out}.partial") and (tmp_path / "ift.jsonl").read_text() == ift
    # --seed=None (a fresh draw) is the one None taken: the check says nothing of it
    from configurator import settings
    assert S.check(settings(S.DEFAULTS, {"seed": None, "ckpt": str(tmp_path / "ckpt"), "prompt": "fine"})).found == []


def test_cli_prompts_file_resumes_after_an_interruption(toy_tokenizer_path, tmp_path, monkeypatch, capsys):
    """Answers are kept chunk by chunk in OUT.partial: interrupted in its third
    chunk (Ctrl-C: one line), the same command answers only what is left, and
    the file equals an uninterrupted run's. A chunk cut by a kill is redone;
    a partial file from other settings is started afresh. A second job on the
    same OUT is refused while the first runs (it holds OUT.partial's lock)."""
    import fcntl

    from tokenizer import Tokenizer
    torch.manual_seed(0)
    model = M.Transformer(M.preset("toy-tiny", vocab_size=Tokenizer(toy_tokenizer_path).vocab_size)).eval()
    save_model(model, tmp_path / "ckpt", tokenizer_path=toy_tokenizer_path)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"prompt": f"reverse the word {w}"}) + "\n"
                           for w in "fox dog cat owl bee ant elk yak".split()))
    cli = lambda out, **kw: [f"--{k}={v}" for k, v in dict(ckpt=tmp_path / "ckpt", prompts_file=inp, out=out,
                                                          device="cpu", dtype="float32", max_new_tokens=5,
                                                          save_every=3, num_samples=2, progress=False, **kw).items()]
    S.main(cli(tmp_path / "whole.jsonl"))
    whole = (tmp_path / "whole.jsonl").read_text()
    assert len(whole.splitlines()) == 8 and not (tmp_path / "whole.jsonl.partial").exists()

    out, partial, calls, real = tmp_path / "out.jsonl", tmp_path / "out.jsonl.partial", [], S.sample_chat
    stop = {"at": 3}  # interrupt the call that answers the third chunk

    def interrupted(*args, **kw):
        calls.append(len(args[2]))
        if len(calls) == stop["at"]:
            raise KeyboardInterrupt
        return real(*args, **kw)
    monkeypatch.setattr(S, "sample_chat", interrupted)
    with pytest.raises(SystemExit) as e:
        S.main(cli(out))
    assert e.value.code == 130 and "the same command resumes after the prompts kept in" in capsys.readouterr().err
    assert len(partial.read_text().splitlines()) == 1 + 6 and not out.exists()  # header + two chunks of 3
    with open(partial, "ab") as f:  # what a kill mid-write leaves, here inside a character of two bytes or more
        f.write(partial.read_bytes().splitlines()[1][:20] + "é本".encode()[:4])
    calls.clear()
    stop["at"] = None
    S.main(cli(out))
    assert calls == [2] and out.read_text() == whole and not partial.exists()  # only the last chunk was run

    calls.clear()
    stop["at"] = 3
    with pytest.raises(SystemExit):
        S.main(cli(out))  # two chunks kept at temperature 0.7 ...
    calls.clear()
    stop["at"] = None
    kept = partial.read_text()
    with open(partial, "a+") as held:  # another job answering into the same OUT holds its partial file
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit) as e:
            S.main(cli(out, temperature=0.5))
    assert e.value.code == 2 and f"error: {partial} is being written by another job" in capsys.readouterr().err
    assert calls == [] and partial.read_text() == kept  # refused before any work; its chunks left as they were
    S.main(cli(out, temperature=0.5))  # ... are not reused at 0.5, and it says so
    assert calls == [3, 3, 2]
    assert (f"not resuming from {partial}: its 6 answers were written with temperature 0.7 (now 0.5); starting "
            f"afresh") in capsys.readouterr().err  # the setting that differs, named

    # the dtype counts as what it resolves to: answers kept under dtype=float32 are resumed under 'auto',
    # which is float32 for this tiny model
    calls.clear()
    stop["at"] = 3
    with pytest.raises(SystemExit):
        S.main(cli(out))
    calls.clear()
    stop["at"] = None
    S.main(cli(out) + ["--dtype=auto"])
    assert calls == [2] and out.read_text() == whole
    # ... and answers kept in bf16 are not resumed in fp32
    calls.clear()
    stop["at"] = 3
    with pytest.raises(SystemExit):
        S.main(cli(out) + ["--dtype=bfloat16"])
    calls.clear()
    stop["at"] = None
    capsys.readouterr()
    S.main(cli(out))
    assert calls == [3, 3, 2] and out.read_text() == whole
    err = capsys.readouterr().err
    assert f"not resuming from {partial}: its 6 answers were written with dtype 'bfloat16' (now 'float32')" in err
    assert f"note: {out} exists: this run replaces it when it ends" in err  # (the answers of the run before)


def first_divergence(a, b):
    """The first step where two completions differ, or None."""
    return next((t for t, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


@torch.no_grad()
def bf16_disagreements(model, prompts, ref, got):
    """Compare bf16 runs completion by completion up to their first difference
    (after it, they continue different texts). Returns (tokens agreeing, tokens
    compared, fp32 logit gaps at the differences): for each first difference,
    how far apart the fp32 model puts the two tokens chosen there."""
    agree = total = 0
    gaps = []
    for p, r, g in zip(prompts, ref, got):
        t = first_divergence(r, g)
        agree += len(r) if t is None else t
        total += len(r)
        if t is not None and t < min(len(r), len(g)):
            logits = model(torch.tensor([p + r[:t]]))[0, -1]
            gaps.append(abs(logits[r[t]] - logits[g[t]]).item())
    return agree, total, gaps


def test_two_ranks_fsdp_and_tensor_parallel_equal_one_process(tiny, tmp_path):
    """torchrun, 2 ranks, gloo. FSDP2 (the training layout) and tensor
    parallel (tp = 2: heads, FFN width and vocabulary split, each rank reading
    its slices) give one process's results in fp32: greedy with mixed lengths,
    n > 1 sampled, the judge's shared prefix, uneven shares (7 prompts) and
    ranks that finish at different times. In bf16 (FSDP: fp32 master weights
    cast by MixedPrecisionPolicy, the GPU setting that crashed the KV cache;
    TP: bf16 weights) FSDP gives one process's bf16 tokens, TP agrees with
    them except where two tokens are within bf16 rounding of each other
    (each rank rounds its partial sums before the all-reduce)."""
    save_model(tiny, tmp_path / "tiny")
    torch.manual_seed(4)  # tied embeddings (whole on every rank under tp) and a head_dim apart from dim / n_heads
    tied = M.Transformer(M.preset("toy-tiny", tie_embeddings=True, head_dim=24)).eval()
    save_model(tied, tmp_path / "tied")
    chain = chain_model()
    save_model(chain, tmp_path / "chain")
    # sorted by length and dealt out: rank 0 gets the long-running rows, rank 1 is done after two tokens
    chain_prompts = [[3, 3, 3, 3, 3], [3, 3, 3, 3, 0], [3, 3, 3, 4], [3, 3, 0], [5, 5], [0], [9]]
    rubric = random_prompts([80], seed=1)[0]
    judge_prompts = [rubric + p for p in MIXED]
    tiny_ckpt, chain_ckpt, tied_ckpt = str(tmp_path / "tiny"), str(tmp_path / "chain"), str(tmp_path / "tied")
    greedy, sampled = dict(max_new_tokens=8, temperature=0, batch_size=2), \
        dict(max_new_tokens=6, temperature=0.9, top_p=0.9, n=3, seed=11, batch_size=4)
    exact = [  # (checkpoint, prompts, kwargs): each in both layouts, fp32
        (tiny_ckpt, MIXED + MIXED[:1], greedy),
        (tiny_ckpt, MIXED, sampled),
        (tiny_ckpt, judge_prompts, dict(max_new_tokens=6, temperature=0.7, top_p=0.9, n=3, seed=5)),
        (chain_ckpt, chain_prompts, dict(max_new_tokens=12, temperature=0, eos_id=EOS)),
        (tied_ckpt, MIXED, sampled),
        (tiny_ckpt, MIXED + MIXED[:1], dict(max_new_tokens=4, temperature=0, batch_size=1)),  # 4 and 3 batches
    ]
    bf16 = [(tiny_ckpt, prompts, dict(max_new_tokens=12, temperature=0)) for prompts in (MIXED, judge_prompts)]
    jobs = [dict(ckpt=ck, prompts=p, kwargs=kw, layout=layout, dtype="float32")
            for layout in ("fsdp", "tp") for ck, p, kw in exact]
    jobs += [dict(ckpt=ck, prompts=p, kwargs=kw, layout=layout, dtype="bfloat16")
             for layout in ("fsdp", "tp") for ck, p, kw in bf16]
    # seed None, each rank's global generator in a state of its own: every rank samples with rank 0's draw
    jobs.append(dict(ckpt=tiny_ckpt, prompts=MIXED, kwargs={**sampled, "seed": None}, layout="fsdp", dtype="float32",
                     global_seed=100))
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "dist_sample.py"), str(tmp_path / "jobs.json"), str(tmp_path / "out.json")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())
    assert len(results) == len(jobs) and all(results)  # (zip below would stop at the shorter)
    models = {tiny_ckpt: tiny, chain_ckpt: chain, tied_ckpt: tied}
    for job, got in zip(jobs, results):
        if job["dtype"] == "float32":
            if "global_seed" in job:
                torch.manual_seed(job["global_seed"])  # as rank 0's
            assert got == generate(models[job["ckpt"]], job["prompts"], progress=False, **job["kwargs"]), job["layout"]
    chain_results = [got for job, got in zip(jobs, results) if job["ckpt"] == chain_ckpt]
    assert len(chain_results) == 2 and all(r[5] == [1] and len(r[0]) == 12 for r in chain_results)  # EOS early on one rank, late on the other
    # bf16: against one process sampling with bf16 weights
    tiny_bf16 = copy.deepcopy(tiny).to(torch.bfloat16)
    for job, got in zip(jobs, results):
        if job["dtype"] == "bfloat16":
            ref = generate(tiny_bf16, job["prompts"], progress=False, **job["kwargs"])
            agree, total, gaps = bf16_disagreements(tiny, job["prompts"], ref, got)
            print(f"bf16 {job['layout']}, {len(job['prompts'])} prompts: {agree} of {total} tokens agree "
                  f"with one process; fp32 logit gaps where they differ: {gaps}")
            if job["layout"] == "fsdp":  # the same bf16 ops as one process, on gathered weights
                assert got == ref
            assert agree >= 0.8 * total
            # each difference is a near tie: the two tokens within bf16 rounding of each other
            # (logits here are about 0.5, where one bf16 step is 0.002)
            assert all(gap < 0.01 for gap in gaps), gaps


def test_four_ranks_in_two_tensor_parallel_groups_equal_one_process(tiny, tmp_path):
    """torchrun, 4 ranks, gloo, tp = 2: two tensor-parallel groups (dp = 2)
    of consecutive ranks, {0, 1} and {2, 3}, each sampling its share of the
    prompts (uneven: 7 prompts, of mixed lengths), give one process's greedy
    tokens in fp32. A group's two ranks must sample the same share, and the
    mesh's tp dimension must pair them: otherwise ranks that all-reduce
    together hold different prompts (wrong tokens, or a collective that
    never completes: then the run is stopped at the timeout)."""
    save_model(tiny, tmp_path / "tiny")
    kw = dict(max_new_tokens=6, temperature=0, batch_size=2)
    prompts = MIXED + MIXED[:1]
    (tmp_path / "jobs.json").write_text(json.dumps([dict(ckpt=str(tmp_path / "tiny"), prompts=prompts, kwargs=kw,
                                                         layout="tp", dtype="float32")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
           os.path.join(ROOT, "tests", "dist_sample.py"), str(tmp_path / "jobs.json"), str(tmp_path / "out.json"), "2"]
    # its own session, so that on a timeout the ranks are killed with torchrun, not left waiting
    proc = subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail("4 ranks, tp = 2: no result in 120 s (ranks waiting on each other in a collective)\n"
                    + err[-2000:])
    assert proc.returncode == 0, err[-3000:]
    (got,) = json.loads((tmp_path / "out.json").read_text())
    assert got == generate(tiny, prompts, progress=False, **kw)


def test_generate_runs_under_inference_mode(tiny):
    """A whole model samples under inference_mode (autograd's per-operator
    bookkeeping off: SPEED.md), not merely no_grad; an FSDP2 model under
    no_grad (the test below)."""
    modes = []
    hook = tiny.register_forward_hook(lambda *_: modes.append(torch.is_inference_mode_enabled()))
    try:
        generate(tiny, MIXED[:2], 3, temperature=0, progress=False)
    finally:
        hook.remove()
    assert modes and all(modes)
    assert not torch.is_inference_mode_enabled()  # and off again after it


def test_fsdp_over_one_rank_generates_as_one_process(tiny, tmp_path):
    """torchrun with one rank (a one-GPU machine): FSDP2 over a single rank
    takes a shortcut (no all-gather, its parameters copied in place under a
    guard of autograd's version counter) that inference_mode's tensors do not
    have; generate() must still run, and give one process's tokens, in fp32
    and in bf16 (MixedPrecisionPolicy)."""
    save_model(tiny, tmp_path / "tiny")
    kw = dict(max_new_tokens=8, temperature=0, batch_size=2)
    jobs = [dict(ckpt=str(tmp_path / "tiny"), prompts=MIXED, kwargs=kw, layout="fsdp", dtype=d)
            for d in ("float32", "bfloat16")]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           os.path.join(ROOT, "tests", "dist_sample.py"), str(tmp_path / "jobs.json"), str(tmp_path / "out.json")]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fp32, bf16 = json.loads((tmp_path / "out.json").read_text())
    assert fp32 == generate(tiny, MIXED, progress=False, **kw)
    assert bf16 == generate(copy.deepcopy(tiny).to(torch.bfloat16), MIXED, progress=False, **kw)


def test_fsdp_mixed_precision_policy_reduces_gradients_in_fp32(monkeypatch):
    """The policy distributed.shard hands fully_shard for every block and the
    root, against the one its docstring states: in bf16, weights gathered in
    bf16, gradients reduced in fp32 (a bf16 reduce-scatter sums the ranks'
    gradients with 8-bit mantissas), the blocks' inputs left alone; in fp32,
    torch's default policy (no casts). fully_shard is captured, not run: no
    process group is needed to see what it is given."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    import distributed as D
    model = M.Transformer(M.preset("toy-tiny"))
    for dtype, expected in ((torch.bfloat16, MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                                  reduce_dtype=torch.float32,
                                                                  cast_forward_inputs=False)),
                            (torch.float32, MixedPrecisionPolicy())):
        given = []
        monkeypatch.setattr(D, "fully_shard", lambda module, mesh, mp_policy: given.append((module, mp_policy)))
        D.shard(model, D.Env(dtype=dtype))
        assert [m for m, _ in given] == list(model.layers) + [model]
        assert all(policy == expected for _, policy in given), (dtype, given[0][1])


def test_all_sum_keeps_counts_exact():
    """distributed.all_sum sums in float64, so a count past 2^24 (a token
    count over a large data set) comes back exact: float32 would round
    2^24 + 1 to 2^24. One process: the sum of one rank is its own value."""
    import distributed as D
    assert D.all_sum(D.Env(), 2**24 + 1, 2**40 + 3, True) == [2**24 + 1, 2**40 + 3, 1]


def test_static_cache_of_the_compiled_decode_step(tiny, monkeypatch):
    """compile=True decodes through StaticKVCache (fixed shapes, one graph for
    the loop). Checked here uncompiled: compiling on CPU takes a minute."""
    compiled, static_caches = [], []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(kw) or model)

    class CountedStaticKVCache(S.StaticKVCache):
        def __init__(self, *a, **kw):
            static_caches.append(1)
            super().__init__(*a, **kw)

    monkeypatch.setattr(S, "StaticKVCache", CountedStaticKVCache)
    kw = dict(temperature=0, progress=False)
    assert generate(tiny, MIXED, 10, **kw) and not compiled and not static_caches  # eager: neither
    assert generate(tiny, MIXED, 10, compile=True, batch_size=4, **kw) == generate(tiny, MIXED, 10, **kw)
    assert compiled == [{"dynamic": True}] and len(static_caches) == -(-len(MIXED) // 4)  # one cache a batch
    rubric = random_prompts([80], seed=1)[0]
    prompts = [rubric + p for p in MIXED]
    sampled = dict(temperature=0.8, top_p=0.9, n=2, seed=5, progress=False)
    assert (generate(tiny, prompts, 6, compile=True, **sampled)
            == generate(tiny, prompts, 6, min_shared_prefix=None, **sampled))
    chain = chain_model()  # rows finishing at different steps: the batch shrinks
    assert generate(chain, [[3, 14], [5, 15], [9], [7, 0]], 6, eos_id=EOS, compile=True, **kw) == [
        [15, 0, 1], [0, 1], [10, 11, 12, 13, 14, 15], [1]]
    # in bf16, with a head size whose 1/sqrt is no power of two: the static cache's mask in the compute
    # dtype, as the growing cache's (an fp32 mask moved 3 of these 8 completions)
    torch.manual_seed(0)
    bf16 = M.Transformer(M.preset("toy-tiny", head_dim=24)).eval()
    with torch.no_grad():
        for layer in bf16.layers:
            layer.attention.wq.weight.mul_(15)
            layer.attention.wk.weight.mul_(15)
    bf16 = bf16.to(torch.bfloat16)
    prompts = random_prompts([20] * 8)
    assert generate(bf16, prompts, 30, compile=True, **kw) == generate(bf16, prompts, 30, **kw)


def test_decode_step_communication_tensor_parallel_against_fsdp():
    """torchrun, 2 ranks: one decode step's collectives and bytes under
    CommDebugMode equal bench.comm_formulas, for tensor parallel (activations:
    2 all-reduces a layer + embedding + logits) and FSDP2 (every block's
    weights all-gathered every step), in fp32 and bf16."""
    for dtype in ("float32", "bfloat16"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               os.path.join(ROOT, "bench.py"), "comm", "--comm_model=toy-tiny", "--comm_batch=4", f"--comm_dtype={dtype}"]
        proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                              timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = next(x for x in proc.stdout.splitlines() if x.startswith("result: "))
        result = json.loads(line[len("result: "):])
        for layout in ("tp", "fsdp"):
            m, e = result["measured"][layout], result["expected"][layout]
            assert (m["collectives"], m["bytes"]) == (e["collectives"], e["bytes"]), (dtype, layout, m, e)
        assert result["measured"]["tp"]["bytes"] * 10 < result["measured"]["fsdp"]["bytes"]


def test_generation_memory_plan_counts_what_is_allocated(tiny):
    """sample.memory_plan's weights and KV cache against the bytes a real
    model and a real cache hold; its largest batch is the largest that fits."""
    args = tiny.args
    plan = S.memory_plan(args, 1, 3, 32, 8, dtype_bytes=4)
    assert plan["rows"]["weights"] == 4 * tiny.num_params()
    cache = S.KVCache(args, 3, 32, "cpu")
    with torch.no_grad():
        tiny(torch.tensor([[5, 6, 7] * 10] * 3), cache=cache)  # 30 slots filled: whole chunks, all 32 held
    assert plan["rows"]["KV cache"] == sum(b.numel() * b.element_size() for b in cache.keys + cache.values)
    big = S.memory_plan(M.preset("llama2-70b"), 8, 1, 4096, 1024)
    fits = S.memory_plan(M.preset("llama2-70b"), 8, big["max_batch"], 4096, 1024)
    over = S.memory_plan(M.preset("llama2-70b"), 8, big["max_batch"] + 1, 4096, 1024)
    assert fits["total"] <= 0.85 * 80e9 < over["total"]
    too_big = S.memory_plan(M.preset("llama2-70b"), 2, 1, 4096, 1024)  # 69 GB of weights a GPU
    assert too_big["max_batch"] == 0 and "the weights alone do not fit" in too_big["text"]
    # Llama 3.1's whole context: the weights fit, not one row of 131072 tokens (the loop warns, and goes on)
    long = S.memory_plan(M.preset("llama3-8b", max_seq_len=131072), 1, 1, 131072, 1024)
    assert long["max_batch"] == 0 and "not one row of the whole 131072-token context fits" in long["text"]
    # tied (SmolLM2, Llama 3.2): one embedding matrix, whole on every rank of a tensor-parallel group
    with torch.device("meta"):
        tied = M.Transformer(M.preset("smollm2-135m"))
    V, h = tied.args.vocab_size, tied.args.dim
    assert S.memory_plan(tied.args, 1, 1, 32, 8, dtype_bytes=4)["rows"]["weights"] == 4 * tied.num_params()
    assert S.memory_plan(tied.args, 3, 1, 32, 8, dtype_bytes=4)["rows"]["weights"] == \
        pytest.approx(4 * ((tied.num_params() - V * h) / 3 + V * h))


def test_generation_memory_plan_70b_by_hand():
    """Llama 2 70B (dim 8192, 80 layers, 64 heads, 8 KV heads of 128, FFN
    28672), tensor parallel over 8 GPUs, bf16, one row of 4096 tokens, 1024
    of them new (a 3072-token prompt), from the docstring's formulas:
    KV cache 2 x 80 layers x 8/8 heads x 128 x 2 bytes x 4096 tokens;
    prefill per prompt token 2 x (3 x 8192 + (2 x 64 + 2 x 8) x 128 / 8
    + 3 x 28672 / 8) + 3 x 4096 (the additive and boolean masks) + 8 x 128."""
    plan = S.memory_plan(M.preset("llama2-70b"), 8, 1, 4096, 1024)
    assert plan["rows"]["KV cache"] == 2 * 80 * 1 * 128 * 2 * 4096 == 167_772_160
    assert plan["rows"]["prefill (one layer's peak)"] == 3072 * (2 * (24576 + 2304 + 10752) + 12288 + 1024)
    assert plan["rows"]["sampling (logits, top-p)"] == 48 * 32000
    two = S.memory_plan(M.preset("llama2-70b"), 8, 2, 4096, 1024)  # every per-row figure twice
    assert two["rows"]["KV cache"] == 2 * plan["rows"]["KV cache"]
    assert plan["weights_fit"] and plan["text"].splitlines()[-1].startswith(
        "  80 GB GPUs (85% usable): batch 1 fits; at most ")
    one_gpu = S.memory_plan(M.preset("llama2-70b"), 1, 1, 4096, 1024)  # 138 GB of weights on one 80 GB GPU
    assert not one_gpu["weights_fit"] and one_gpu["text"].endswith("the weights alone do not fit; use a larger tp")


def test_a_row_whose_context_is_full_stops_costing_work(monkeypatch):
    """A 5-token prompt in an 8-token context has room for 3 new tokens: the
    prefill gives the first, two decode steps the others, and then nothing
    runs (not a fourth forward pass whose token is cut off anyway)."""
    torch.manual_seed(0)
    model = M.Transformer(M.preset("toy-tiny", max_seq_len=8)).eval()
    passes = forward_shapes(monkeypatch)
    out = S.generate(model, [[5, 6, 7, 8, 9]], 10, temperature=0, progress=False)
    assert len(out[0]) == 3
    assert passes == [(1, 5), (1, 1), (1, 1)]


def test_kept_answers_keeps_whole_chunks_only(tmp_path, capsys):
    """OUT.partial with 4 answers written in chunks of 3 (a kill after the
    first line of the second chunk reached the disk): 3 are kept, the file is
    cut to its header and those 3, and the next chunk starts at prompt 3."""
    path = tmp_path / "out.jsonl.partial"
    shown = {"seed": 1}
    header = json.dumps({"made_from": "fp", "inputs": shown}) + "\n"
    answers = [json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n" for i in range(4)]
    path.write_text(header + "".join(answers))
    with open(path, "a+", encoding="utf-8") as f:
        assert S.kept_answers(f, "fp", 3, shown) == 3
    assert path.read_text() == header + "".join(answers[:3])
    # one answer made with other settings: none kept, and the note says why
    path.write_text(header + answers[0])
    with open(path, "a+", encoding="utf-8") as f:
        assert S.kept_answers(f, "other", 3, {"seed": 2}) == 0
    assert "not resuming from" in capsys.readouterr().err


def test_each_chunk_of_a_prompts_file_samples_with_its_own_seed(toy_tokenizer_path, tmp_path):
    """save_every=1: the same prompt twice is two chunks, and at temperature 1
    they draw different numbers (chunk k's seed is its own), so the two
    answers differ; chunk 0 draws what one generate() call with the seed does.
    Chunk 1's seed is not the next seed's chunk 0 (seed + 1): runs of
    neighbouring seeds share no draws."""
    from tokenizer import Tokenizer, chat_prompt_ids
    tok = Tokenizer(toy_tokenizer_path)
    torch.manual_seed(0)
    model = M.Transformer(M.preset("toy-tiny", vocab_size=tok.vocab_size)).eval()
    save_model(model, tmp_path / "ckpt", tokenizer_path=toy_tokenizer_path)
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, [{"prompt": "reverse the word fox"}] * 2)
    S.main([f"--{k}={v}" for k, v in dict(ckpt=tmp_path / "ckpt", prompts_file=inp, out=out, device="cpu",
                                          dtype="float32", max_new_tokens=8, temperature=1.0, top_p=1.0, seed=5,
                                          save_every=1, progress=False).items()])
    first, second = [r["response"] for r in read_jsonl(out)]
    alone = lambda seed: tok.decode(S.generate(model, [chat_prompt_ids(tok, "reverse the word fox")], 8,
                                               temperature=1.0, top_p=1.0, seed=seed, eos_id=tok.stop_ids,
                                               progress=False)[0])  # one generate() call with the seed
    assert first == alone(5) and first != second
    assert second != alone(6)
