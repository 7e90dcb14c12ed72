"""
Training: train_sft.py, train_dpo.py and distributed.py.

References: hand-computed values (DPO loss, masking), a single-process run
(for FSDP2 under torchrun, one node and two "nodes"), an uninterrupted run
(for resume after a kill), and a plain load_model (for streaming into
shards). Models are toy-tiny (0.2M parameters) and runs a few steps, so the
file takes about a minute on two CPU cores.
"""
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import types

import pytest
import torch

from conftest import ROOT, held_by_another_job, ranks_said, response_logp

import configurator
import distributed as D
import train_dpo
import train_sft
import training as T
import validate
from training import memory_plan
from checkpoint import load_model, read_tensors, save_model
from data import read_jsonl
from model import Transformer, preset
from tokenizer import Tokenizer, chat_tokens

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
WORDS = "the quick brown fox jumps over a lazy dog reverse sort count add".split()


# -----------------------------------------------------------------------------
# Fixtures: a toy checkpoint and small data sets

@pytest.fixture(scope="module")
def work(tmp_path_factory, toy_tokenizer_path):
    """Folder with ckpt/ (toy-tiny, HF layout), sft.jsonl, pairs.jsonl."""
    import random
    root = tmp_path_factory.mktemp("train")
    tok = Tokenizer(toy_tokenizer_path)
    torch.manual_seed(0)
    model = Transformer(preset("toy-tiny", vocab_size=tok.vocab_size, max_seq_len=128))
    save_model(model, str(root / "ckpt"), tokenizer_path=toy_tokenizer_path)
    rng = random.Random(0)
    with open(root / "sft.jsonl", "w") as f:
        for _ in range(40):
            ws = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
            f.write(json.dumps({"prompt": "reverse " + " ".join(ws), "response": " ".join(ws[::-1])}) + "\n")
    with open(root / "pairs.jsonl", "w") as f:
        for _ in range(32):
            ws = [rng.choice(WORDS) for _ in range(rng.randint(2, 5))]
            f.write(json.dumps({"prompt": "reverse " + " ".join(ws), "chosen": " ".join(ws[::-1]),
                                "rejected": "answer " + " ".join(ws)}) + "\n")
    return root


def sft_config(work, out, **kw):
    # dropout 0 so that runs with different numbers of ranks are comparable;
    # fp32, so that they agree to float rounding (bf16 has its own tests)
    return {"init_from": str(work / "ckpt"), "data": str(work / "sft.jsonl"), "out_dir": str(out), "dtype": "float32",
            "max_steps": 4, "batch_size": 8, "micro_batch_size": 2, "lr": 1e-3, "min_lr": 1e-4,
            "warmup_steps": 1, "dropout": 0.0, "eval_fraction": 0.0, "save_interval": 2, **kw}


def dpo_config(work, out, **kw):
    return {"init_from": str(work / "ckpt"), "data": str(work / "pairs.jsonl"), "out_dir": str(out), "dtype": "float32",
            "max_steps": 4, "batch_size": 8, "micro_batch_size": 2, "lr": 1e-3, "min_lr": 1e-4,
            "dropout": 0.0, "eval_fraction": 0.0, "save_interval": 2, **kw}


def cli_args(config):
    return [f"--{k}={v}" for k, v in config.items()]


def torchrun(script, config, nproc=2, extra=(), check=True, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    # one thread a rank, as the one-process runs compared with them (threads=0 would share the cores)
    cmd = [TORCHRUN, *(extra or ["--standalone"]), f"--nproc_per_node={nproc}", script,
           *cli_args({"threads": 1, **config})]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, ranks_said(r)
    return r


def losses(out_dir, key="loss"):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [r[key] for r in map(json.loads, f) if key in r]


def mfu_per_rate(out_dir):
    """A run's logged MFU over its logged rate (all ranks together), step by
    step: MFU is per device, so on 2 ranks half the one process's for the same
    batches (estimate_mfu is linear in the rate)."""
    ratios = [m / t for m, t in zip(losses(out_dir, "mfu"), losses(out_dir, "tokens_per_s"))]
    assert ratios, out_dir  # (none logged would compare equal)
    return ratios


def max_weight_diff(a, b):
    A, B = load_model(a).state_dict(), load_model(b).state_dict()
    assert A.keys() == B.keys()
    return max((A[k] - B[k]).abs().max().item() for k in A)


# Tolerance for "FSDP equals one process": the two runs add the same numbers
# in a different order (reduce-scatter over ranks vs accumulation in one
# process), so they differ by fp32 rounding, ~1e-7 relative per operation.
# Four AdamW steps at lr 1e-3 move each weight by at most ~4e-3; a rounding
# difference in a gradient changes an update by far less than that, so
# weights agree to 1e-5 and losses to 1e-6 relative. A real bug (a wrong
# normaliser, a lost micro-batch, a rank seeing the wrong data) moves losses
# by 1e-2 and weights by ~lr.
W_TOL, L_TOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def sft_single(work):
    out = work / "sft_single"
    train_sft.train(sft_config(work, out))
    return out


@pytest.fixture(scope="module")
def dpo_single(work):
    out = work / "dpo_single"
    train_dpo.train(dpo_config(work, out))
    return out


# -----------------------------------------------------------------------------
# Data and schedule

def test_read_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed JSON \(Expecting value at column 29\)"):
        read_jsonl(str(bad), ["prompt", "response"])
    bad.write_text('{"prompt": "a\tb"}\n')  # a raw tab inside a string: json's message ends in "at" itself
    with pytest.raises(ValueError, match=r"bad.jsonl:1: malformed JSON \(Invalid control character at column 14\)"):
        read_jsonl(str(bad), ["prompt"])
    bad.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "a"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3: missing or non-string field\(s\): response \(each record "
                                         r"needs prompt, response; this one has prompt\)$"):
        read_jsonl(str(bad), ["prompt", "response"])
    bad.write_text('{"prompt": "a", "chosen": ["x"]}\n')  # a field of another type is named with it
    with pytest.raises(ValueError, match=r"field\(s\): chosen, rejected .* this one has prompt, chosen \(list\)\)$"):
        read_jsonl(str(bad), ["prompt", "chosen", "rejected"])
    # a JSON array, as json.dump writes a list: said, whether on one line or many
    for text in ('[{"prompt": "a"}, {"prompt": "b"}]\n', '[\n {"prompt": "a"}\n]\n'):
        bad.write_text(text)
        with pytest.raises(ValueError, match=r"bad.jsonl:1: .* \(the file looks like one JSON array: JSON Lines is "
                                             r"one object per line\)$"):
            read_jsonl(str(bad), ["prompt"])
    bad.write_bytes('{"prompt": "café"}\n'.encode() + '{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not UTF-8 text \(byte 0xe9 at column 16"):
        read_jsonl(str(bad), ["prompt"])
    with pytest.raises(ValueError, match=r"is a folder: give a JSON Lines file"):
        read_jsonl(str(tmp_path), ["prompt"])
    bad.write_text('["prompt"]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected a JSON object"):
        read_jsonl(str(bad), ["prompt"])
    bad.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_jsonl(str(bad), ["prompt"], allow_empty=False)
    with pytest.raises(FileNotFoundError):
        read_jsonl(str(tmp_path / "absent.jsonl"), ["prompt"])
    bad.write_text('{"prompt": "a"}\n{}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*\(each record needs prompt; this one has no fields\)$"):
        read_jsonl(str(bad), ["prompt"])
    # a byte-order mark starts the file only: one on line 2 (two files joined with cat) is an error
    bad.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n\xef\xbb\xbf{"prompt": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed JSON \(Unexpected UTF-8 BOM"):
        read_jsonl(str(bad), ["prompt"])
    bad.write_text('{"prompt": "a"}\n["prompt"]\n')  # an array on a later line is no sign of a JSON array file
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object, found list$"):
        read_jsonl(str(bad), ["prompt"])


def test_cli_reports_bad_input(work, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{oops}\n')
    r = subprocess.run([sys.executable, "train_sft.py", f"--init_from={work / 'ckpt'}", f"--data={bad}",
                        f"--out_dir={tmp_path / 'out'}", "--template=raw"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    # exit status 2, as for a bad --key=value: refused before any work
    assert r.returncode == 2 and "error: train_sft.py cannot start; 2 problem(s)" in r.stderr, r.stderr[-2000:]
    assert f"  - data: {bad}:2: malformed JSON" in r.stderr and "Traceback" not in r.stderr
    assert "  - template = 'raw': must be 'chat' or 'text'" in r.stderr
    # a bad value from a config file names the file and line that set it (a --key=value after it wins)
    config = tmp_path / "mine.py"
    config.write_text(f"# my settings\ndropout = 1.5\ntemplate = 'raw'\ndata = '{tmp_path / 'none.jsonl'}'\n")
    r = subprocess.run([sys.executable, "train_sft.py", str(config), f"--init_from={work / 'ckpt'}",
                        f"--out_dir={tmp_path / 'out'}", "--template=rawer"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"  - dropout = 1.5 (set at {config}:2): must be in [0, 1)" in r.stderr, r.stderr
    assert "  - template = 'rawer': must be 'chat' or 'text'" in r.stderr
    assert f"  - data (set at {config}:4): " in r.stderr


def test_bad_training_settings_are_listed_together_before_any_work(work, tmp_path):
    with pytest.raises(validate.BadInput) as e:
        train_dpo.train(dpo_config(work, tmp_path / "out", lr=0.0, dropout=1.5, beta=-0.1, rpo_alpha=-1.0,
                                   batch_size=7, init_from=str(tmp_path / "nowhere"), data=str(work / "sft.jsonl")))
    text = str(e.value)
    assert text.startswith("train_dpo.py cannot start; 8 problem(s)")  # min_lr > lr = 0 too
    for problem in ["lr = 0.0: must be > 0", "dropout = 1.5: must be in [0, 1)", "beta = -0.1: must be > 0",
                    "rpo_alpha = -1.0: must be >= 0",
                    "batch_size = 7: must divide by the number of ranks (1) x micro_batch_size (2)",
                    f"init_from: checkpoint folder not found: {tmp_path / 'nowhere'}",
                    f"data: {work / 'sft.jsonl'}:1: missing or non-string field(s): chosen, rejected (each record "
                    f"needs prompt, chosen, rejected; this one has prompt, response)"]:
        assert problem in text, (problem, text)
    assert not (tmp_path / "out").exists()
    # a negative epochs beside max_steps (which counts instead) is a mistake all the same
    with pytest.raises(validate.BadInput, match=r"1 problem\(s\).*\n  - epochs = -3: must be >= 0$"):
        train_sft.train(sft_config(work, tmp_path / "out", epochs=-3, max_steps=2))
    # from scratch, a max_seq_len beyond the preset's context (toy-tiny's 512), as beyond a checkpoint's
    with pytest.raises(validate.BadInput, match=r"max_seq_len = 5000: is beyond the context of preset 'toy-tiny' "
                                                r"\(512\); 0 takes the model's"):
        train_sft.train(sft_config(work, tmp_path / "out", init_from="scratch", model="toy-tiny",
                                   tokenizer=str(work / "ckpt" / "tokenizer.model"), max_seq_len=5000))


def test_lr_schedule():
    lrs = [T.lr_at(s, 100, 10, 1e-3, 1e-4) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-3 / 11) and lrs[9] == pytest.approx(1e-3 * 10 / 11)
    assert lrs[10] == pytest.approx(1e-3)  # peak after warmup
    assert lrs[55] == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way down the cosine
    assert lrs[100] == pytest.approx(1e-4) and min(lrs[10:]) >= 1e-4 - 1e-12  # the floor
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert T.lr_at(150, 100, 10, 1e-3, 1e-4) == pytest.approx(1e-4)  # past the run's steps: stays at the floor


def test_data_order_depends_only_on_seed_and_step():
    a = [T.batch_indices(s, 16, 40, seed=3) for s in range(5)]
    torch.manual_seed(123)  # global RNG state must not matter
    assert a == [T.batch_indices(s, 16, 40, seed=3) for s in range(5)]
    flat = sum(a, [])
    assert sorted(flat[:40]) == list(range(40))  # the first epoch is a permutation
    assert sorted(flat[40:80]) == list(range(40)) and flat[40:80] != flat[:40]  # the second another one
    assert a != [T.batch_indices(s, 16, 40, seed=4) for s in range(5)]


def test_the_model_to_train_starts_from_its_seeds_draw_or_its_checkpoint_with_the_dropout_set(tmp_path):
    """build_model from scratch: Transformer.initial_weights drawn from a
    generator seeded with the seed setting (each seed its own start; any
    number of ranks take their slices of the same draw). From a checkpoint:
    its weights, with the dropout setting (the paper fine-tunes with 0.1)."""
    def built(seed, init_from="scratch", dropout=0.0):
        c = types.SimpleNamespace(init_from=init_from, model="toy-tiny", dropout=dropout, seed=seed,
                                  activation_checkpointing=False, compile=False)
        return T.build_model(c, D.Env(), 512)
    one, two = built(1).state_dict(), built(2).state_dict()
    reference = Transformer(preset("toy-tiny", vocab_size=512))
    drawn = dict(reference.initial_weights(torch.Generator().manual_seed(1)))
    assert one.keys() == drawn.keys() and all(torch.equal(one[k], drawn[k]) for k in one)
    assert not torch.equal(one["layers.0.attention.wq.weight"], two["layers.0.attention.wq.weight"])
    save_model(reference, tmp_path / "ckpt")
    loaded = built(1, tmp_path / "ckpt", dropout=0.1)
    assert all(torch.equal(p, reference.state_dict()[n]) for n, p in loaded.state_dict().items())
    assert loaded.args.dropout == loaded.layers[0].dropout_p == loaded.layers[0].attention.attn_dropout_p == 0.1


def test_hold_out_leaves_at_least_one_item_on_each_side():
    """A fraction that rounds to no item still holds one out (an eval set that
    was asked for); one that rounds to every item still leaves one to train on."""
    train, held = T.hold_out(list(range(10)), 0.05, 0)  # round(0.5) = 0: one all the same
    assert len(held) == 1 and len(train) == 9 and sorted(train + held) == list(range(10))
    train, held = T.hold_out([0, 1], 0.75, 0)  # round(1.5) = 2 of 2: one is left to train on
    assert len(train) == 1 and len(held) == 1


# -----------------------------------------------------------------------------
# SFT: the loss sees response tokens only

def test_sft_masking_and_padding(work):
    tok = Tokenizer(str(work / "ckpt" / "tokenizer.model"))
    model = load_model(str(work / "ckpt")).eval()
    env = D.Env()
    a = train_sft.response_example(tok, "reverse the fox", "fox the")
    b = train_sft.response_example(tok, "count the letters in this rather long question please",
                                   "a much longer response 12345")
    ids, [(start, end)] = a
    assert end == len(ids)
    assert ids[-1] == tok.eos_id and len(b[0]) > len(ids)

    tokens, targets = train_sft.collate([a], tok.eos_id)
    assert (targets[0, :start - 1] == -100).all()  # prompt: no loss
    assert targets[0, start - 1:].tolist() == ids[start:]  # response + EOS, shifted by one
    with torch.no_grad():
        loss = train_sft.sft_loss_sum(model, tokens, targets, env).item()
        # by hand: -sum log p(ids[t+1] | ids[:t+1]) over the response positions only
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).float(), -1)[0]
        hand = -sum(logp[t, ids[t + 1]].item() for t in range(start - 1, len(ids) - 1))
        assert loss == pytest.approx(hand, rel=1e-5)
        # the mask matters: scoring the prompt too gives another number
        full = targets.clone()
        full[0, :start - 1] = tokens[0, 1:start]
        assert train_sft.sft_loss_sum(model, tokens, full, env).item() > loss + 1

        # the padding changes nothing: batched with a longer example (row a
        # gets padded), with any padding id, row a's loss is the same
        for pad in (tok.eos_id, 0, 7):
            tokens2, targets2 = train_sft.collate([a, b], pad)
            assert tokens2.shape[1] > len(ids) - 1
            targets2[1] = -100  # score row a only
            assert train_sft.sft_loss_sum(model, tokens2, targets2, env).item() == pytest.approx(loss, rel=1e-5)
        # and the two rows' losses add up: no leakage between examples
        tokens3, targets3 = train_sft.collate([b], 0)
        both = train_sft.sft_loss_sum(model, *train_sft.collate([a, b], 0), env).item()
        assert both == pytest.approx(loss + train_sft.sft_loss_sum(model, tokens3, targets3, env).item(), rel=1e-5)



class LogitTable(torch.nn.Module):
    """A stand-in model whose logits at each position are a row of a fixed
    table picked by that position's token, in a chosen dtype."""

    def __init__(self, vocab, dtype=torch.float32):
        super().__init__()
        self.table = torch.nn.Parameter((torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)) * 3)
                                        .to(dtype))

    def forward(self, tokens):
        self.under_autocast = torch.is_autocast_enabled("cpu")  # (a bf16 Env's training runs under it)
        return self.table[tokens]


def logps_by_hand(model, tokens, targets):
    """Per row: the sum over positions with a target of log p(target), in float64."""
    logits = model(tokens).detach().double()
    return [sum((logits[b, t, y] - torch.logsumexp(logits[b, t], 0)).item()
                for t, y in enumerate(targets[b].tolist()) if y != -100) for b in range(len(tokens))]


TOKENS = torch.tensor([[1, 4, 5, 6], [1, 7, 0, 0]])
TARGETS = torch.tensor([[-100, 5, 6, 2], [-100, 2, -100, -100]])


def test_collate_masks_everything_but_the_response():
    # BOS, two prompt tokens, a response of three, EOS: the response starts at index 3
    a, b = ([1, 10, 11, 20, 21, 22, 2], [(3, 7)]), ([1, 12, 30, 2], [(2, 4)])
    tokens, targets = train_sft.collate([a, b], pad_id=0)
    assert tokens.dtype == targets.dtype == torch.long
    assert tokens.tolist() == [[1, 10, 11, 20, 21, 22], [1, 12, 30, 0, 0, 0]]
    # position t predicts ids[t + 1]: the first response token at position start - 1
    assert targets.tolist() == [[-100, -100, 20, 21, 22, 2], [-100, 30, 2, -100, -100, -100]]
    # a filler row (weight 0) goes through the model but teaches nothing
    tokens, targets = train_sft.collate([a, b], pad_id=9, weights=[1, 0])
    assert tokens[1].tolist() == [1, 12, 30, 9, 9, 9] and targets[1].tolist() == [-100] * 6
    assert targets[0].tolist() == [-100, -100, 20, 21, 22, 2]
    # a conversation: (ids, spans), each assistant turn (start, end) learned, the user's turn between not
    conv = ([1, 10, 20, 21, 2, 11, 30, 2], [(2, 5), (6, 8)])
    tokens, targets = train_sft.collate([conv], pad_id=0)
    assert targets.tolist() == [[-100, 20, 21, 2, -100, 30, 2]]


def test_sft_loss_sum_by_hand():
    for dtype in (torch.float32, torch.bfloat16):  # bf16 logits: the loss is still taken in fp32
        model = LogitTable(8, dtype)
        loss = train_sft.sft_loss_sum(model, TOKENS, TARGETS, D.Env())
        assert loss.dtype == torch.float32 and loss.shape == ()
        assert loss.item() == pytest.approx(-sum(logps_by_hand(model, TOKENS, TARGETS)), rel=1e-6)
    loss.backward()  # a loss to train on: the gradient reaches the model
    assert model.table.grad is not None and model.table.grad.abs().sum() > 0
    # the model runs under the Env's autocast: a bf16 run's matmuls in bf16 (without it, silently fp32)
    train_sft.sft_loss_sum(model, TOKENS, TARGETS, D.Env(dtype=torch.bfloat16))
    assert model.under_autocast


@pytest.mark.parametrize("micro_batch_size", [1, 2])
def test_sft_eval_loss_is_per_response_token_by_hand(micro_batch_size):
    """The eval loss is the summed cross-entropy over every held-out response
    token divided by their count (3 + 7 = 10), not a mean over the examples
    nor over micro-batches (one example each, at micro_batch_size 1)."""
    model = LogitTable(8)
    a, b = ([1, 4, 5, 6, 7, 2], [(3, 6)]), ([1, 4, 3, 5, 6, 7, 3, 5, 2], [(2, 9)])  # responses of 3 and 7 tokens
    c = types.SimpleNamespace(micro_batch_size=micro_batch_size)
    with torch.no_grad():
        total = sum(train_sft.sft_loss_sum(model, *train_sft.collate([x], 0), D.Env()).item() for x in (a, b))
        assert train_sft.evaluate(model, [a, b], D.Env(), c, 0) == pytest.approx(total / 10, rel=1e-6)


def test_the_text_template_learns_every_token_after_the_first(toy_tokenizer_path):
    """template='text' (plain documents): every token is a target but BOS,
    which nothing predicts; no position is masked."""
    tok = Tokenizer(toy_tokenizer_path)
    (ids, spans), = train_sft.tokenize(tok, [{"text": "the quick brown fox"}], 64, "x", "text")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    tokens, targets = train_sft.collate([(ids, spans)], tok.eos_id)
    assert tokens[0].tolist() == ids[:-1] and targets[0].tolist() == ids[1:]


def test_sft_trains_and_saves_hf_layout(sft_single, work):
    curve = losses(sft_single)
    assert len(curve) == 4 and curve[-1] < curve[0]
    with open(sft_single / "metrics.jsonl") as f:
        rec = json.loads(f.readline())
    assert {"loss", "lr", "tokens_per_s", "mfu", "grad_norm"} <= rec.keys()
    out = sft_single / "model"
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"]
    trained = load_model(str(out))
    assert max_weight_diff(out, work / "ckpt") > 1e-4  # it did train
    assert trained.args.vocab_size == Tokenizer(str(out / "tokenizer.model")).vocab_size
    # our tensor-by-tensor safetensors writer opens in transformers and computes the same
    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(str(out)).eval()
    x = torch.randint(0, trained.args.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, trained.eval()(x), atol=1e-5)


def test_sft_first_loss_is_the_batch_cross_entropy_per_token_by_hand(work, sft_single):
    """Step 1's logged loss: the summed cross-entropy of the 8 examples of
    step 0 (training.batch_indices, seed 1337) over their response tokens,
    all counted in one sum, however the micro-batches split them."""
    tok, model = Tokenizer(str(work / "ckpt" / "tokenizer.model")), load_model(str(work / "ckpt")).eval()
    records = read_jsonl(work / "sft.jsonl")
    sums = [response_logp(model, tok, records[i]["prompt"], records[i]["response"])
            for i in T.batch_indices(0, 8, len(records), 1337)]
    by_hand = -sum(lp for lp, _ in sums) / sum(n for _, n in sums)
    assert losses(sft_single)[0] == pytest.approx(by_hand, rel=1e-5)


def test_micro_batches_group_items_of_like_length():
    """Sorted by length, stably, before chunking, when a length is given and
    the items make more than one chunk: every item goes, once; one chunk keeps
    the batch's order."""
    items = ["ccc", "e", "bb", "dddd", "a", "ff"]  # ties ("e", "a"; "bb", "ff") not in the alphabet's order
    assert T.micro_batches(items, 4) == [["ccc", "e", "bb", "dddd"], ["a", "ff"]]
    assert T.micro_batches(items, 4, length=len) == [["e", "a", "bb", "ff"], ["ccc", "dddd"]]
    assert T.micro_batches(items, 2, length=len) == [["e", "a"], ["bb", "ff"], ["ccc", "dddd"]]
    assert T.micro_batches(items, 6, length=len) == [items]


def test_the_trainers_group_each_steps_rows_by_length(work, tmp_path, monkeypatch):
    """In each training step of SFT and of DPO the micro-batches hold the rank's
    rows sorted short to long (recorded at collate; the data's lengths differ,
    so unsorted rows would show)."""
    real_collate = train_sft.collate
    for trainer, config in ((train_sft, sft_config), (train_dpo, dpo_config)):
        settings = config(work, tmp_path / trainer.__name__, max_steps=2)
        lengths = []  # each collate call's rows' lengths

        def collate_and_record(examples, pad_id, weights=None):
            lengths.append([len(ids) for ids, _ in examples])
            return real_collate(examples, pad_id, weights)

        monkeypatch.setattr(trainer, "collate", collate_and_record)
        trainer.train(settings)
        per_step = settings["batch_size"] // settings["micro_batch_size"]
        steps = [lengths[-2 * per_step:-per_step], lengths[-per_step:]]  # the last calls: the 2 steps
        for step in steps:
            if trainer is train_dpo:  # pair_batch's rows: every pair's chosen, then every pair's rejected
                step = [[max(c, r) for c, r in zip(mb[:len(mb) // 2], mb[len(mb) // 2:])] for mb in step]
            rows = [n for mb in step for n in mb]
            assert rows == sorted(rows) and rows[0] < rows[-1], step


@pytest.mark.parametrize("trainer", ["sft", "dpo"])
def test_micro_batches_add_up_to_one_batch(work, tmp_path, trainer, sft_single, dpo_single):
    """Gradient accumulation is exactly one big batch: four micro-batches of
    2 (examples of different lengths) against one of 8, the same losses,
    gradient norms and weights. (Under FSDP each rank groups its own part of
    a step by length, so FSDP against one process groups a step otherwise.)"""
    config, train, four = ((sft_config, train_sft.train, sft_single) if trainer == "sft"
                           else (dpo_config, train_dpo.train, dpo_single))
    one = tmp_path / "one"
    train(config(work, one, micro_batch_size=8))
    assert losses(one) == pytest.approx(losses(four), rel=L_TOL)
    assert losses(one, "grad_norm") == pytest.approx(losses(four, "grad_norm"), rel=1e-5)
    assert max_weight_diff(one / "model", four / "model") < W_TOL


def no_weights(*args):
    raise AssertionError("the model was built before the data was found untrainable")


def test_too_long_examples_are_skipped_and_counted(work, tmp_path, capsys, monkeypatch):
    """Examples longer than max_seq_len are skipped and counted; every one too
    long is an error before any weights load (at 70B, minutes of loading)."""
    data = tmp_path / "long.jsonl"
    lines = [json.dumps({"prompt": "reverse the fox", "response": "fox the"})] * 8
    lines.append(json.dumps({"prompt": "reverse " + "the fox " * 80, "response": "fox the " * 80}))
    data.write_text("\n".join(lines) + "\n")
    cfg = sft_config(work, tmp_path / "out", data=str(data), max_steps=1, max_seq_len=64)
    train_sft.train(cfg)
    assert "skipped 1 of 9 examples longer than 64 tokens" in capsys.readouterr().out
    data.write_text(lines[-1] + "\n")
    with monkeypatch.context() as m, pytest.raises(validate.BadInput, match="every example is longer"):
        m.setattr(T, "build_model", no_weights)
        train_sft.train({**cfg, "out_dir": str(tmp_path / "out2")})  # (the command line: exit status 2)
    # a max_seq_len above the model's context (128) is refused before any work (it was cut to the context
    # in silence); 0, the default, takes the model's: the long example is still skipped
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(validate.BadInput, match=r"max_seq_len = 1280: is beyond the context of init_from's model "
                                                r"\(128\); 0 takes the model's"):
        train_sft.train({**cfg, "out_dir": str(tmp_path / "out3"), "max_seq_len": 1280})
    train_sft.train({**cfg, "out_dir": str(tmp_path / "out3"), "max_seq_len": 0})
    assert "skipped 1 of 9 examples longer than 128 tokens" in capsys.readouterr().out


def test_an_example_of_n_tokens_fits_max_seq_len_n_minus_1(toy_tokenizer_path):
    """The model reads ids[:-1] (the last token is only a target): an example
    or pair of n tokens fits max_seq_len n - 1, and not n - 2."""
    tok = Tokenizer(toy_tokenizer_path)
    rec = {"prompt": "reverse the fox", "response": "fox the"}
    n = len(chat_tokens(tok, rec["prompt"], rec["response"])[0])
    assert len(train_sft.tokenize(tok, [rec], n - 1, "x")) == 1
    with pytest.raises(validate.BadInput, match="every example is longer"):
        train_sft.tokenize(tok, [rec], n - 2, "x")
    pair = {"prompt": "reverse the fox", "chosen": "fox the", "rejected": "the fox the fox the fox"}
    n = len(chat_tokens(tok, pair["prompt"], pair["rejected"])[0])  # the longer of the two
    assert n > len(chat_tokens(tok, pair["prompt"], pair["chosen"])[0])
    assert len(train_dpo.tokenize_pairs(tok, [pair], n - 1, "x")) == 1
    with pytest.raises(validate.BadInput, match="every pair is longer"):
        train_dpo.tokenize_pairs(tok, [pair], n - 2, "x")


def test_too_long_pairs_are_skipped_and_counted(work, tmp_path, capsys, monkeypatch):
    """A pair is as long as its longer response: a long rejected one with a
    short chosen one is skipped too (the forward pass could not take it)."""
    data = tmp_path / "long.jsonl"
    short = {"prompt": "reverse the fox", "chosen": "fox the", "rejected": "the fox"}
    lines = [json.dumps(short)] * 8 + [json.dumps({**short, "rejected": "the fox " * 80}),
                                       json.dumps({**short, "chosen": "fox the " * 80})]
    data.write_text("\n".join(lines) + "\n")
    cfg = dpo_config(work, tmp_path / "out", data=str(data), max_steps=1, max_seq_len=64)
    train_dpo.train(cfg)
    assert "skipped 2 of 10 pairs longer than 64 tokens" in capsys.readouterr().out
    data.write_text(lines[-1] + "\n")
    monkeypatch.setattr(T, "build_model", no_weights)  # (found before any weights load)
    with pytest.raises(validate.BadInput, match="every pair is longer"):
        train_dpo.train({**cfg, "out_dir": str(tmp_path / "out2")})


def test_the_trainers_adamw_is_the_formula_by_hand(tmp_path):
    """The trainers' optimizer (torch's fused AdamW) takes Loshchilov & Hutter's
    step, written out: decoupled weight decay, moments with bias correction."""
    c = types.SimpleNamespace(lr=0.1, beta1=0.9, beta2=0.95, weight_decay=0.1, out_dir=str(tmp_path))
    layer = torch.nn.Linear(3, 2)
    optimizer, step, _ = T.optimizer_and_resume(layer, c, fp="x", steps=3)
    assert step == 0 and optimizer.defaults["fused"]
    p, m, v, bias = layer.weight.detach().clone(), 0, 0, layer.bias.detach().clone()
    torch.manual_seed(0)
    for t in (1, 2, 3):
        g = torch.randn(2, 3)
        layer.weight.grad, layer.bias.grad = g.clone(), torch.zeros(2)
        optimizer.step()
        p = p * (1 - c.lr * c.weight_decay)
        m = c.beta1 * m + (1 - c.beta1) * g
        v = c.beta2 * v + (1 - c.beta2) * g * g
        p = p - c.lr * (m / (1 - c.beta1 ** t)) / ((v / (1 - c.beta2 ** t)).sqrt() + 1e-8)
        torch.testing.assert_close(layer.weight.detach(), p, rtol=1e-6, atol=1e-7)
        bias = bias * (1 - c.lr * c.weight_decay)  # a zero gradient: the decay alone (0 / (0 + eps))
        torch.testing.assert_close(layer.bias.detach(), bias, rtol=1e-6, atol=1e-7)


def test_nan_loss_stops_and_keeps_last_good_state(work, tmp_path, monkeypatch):
    calls = []
    real = train_sft.sft_loss_sum

    def poisoned(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) > 8 else loss  # 4 micro-batches a step: step 3 is NaN

    monkeypatch.setattr(train_sft, "sft_loss_sum", poisoned)
    out = tmp_path / "out"
    for bad in (float("inf"), float("-inf")):  # an infinite loss too (its gradient is no number to step with)
        with pytest.raises(FloatingPointError, match=f"loss is {bad} at step 5"):
            T.check_finite(bad, 5, types.SimpleNamespace(out_dir=str(tmp_path)))
    with pytest.raises(FloatingPointError, match="loss is nan at step 3; .* rerun with a lower learning rate"):  # the 3rd
        train_sft.train(sft_config(work, out, save_interval=1))
    with open(out / "state" / "state.json") as f:
        assert json.load(f)["step"] == 2  # the last good state, complete
    assert not (out / "model").exists() and not (out / "state.tmp").exists()


# -----------------------------------------------------------------------------
# DPO

def test_dpo_loss_by_hand():
    pc, pr, rc, rr, beta = [-10.0, -5.0], [-12.0, -4.0], [-11.0, -6.0], [-11.5, -3.0], 0.1
    losses, chosen, rejected = train_dpo.dpo_losses(*map(torch.tensor, (pc, pr, rc, rr)), beta)
    loss = losses.mean()  # the batch's loss
    # pair 0: rewards 0.1*(1) and 0.1*(-0.5), margin 0.15; pair 1: 0.1, -0.1, margin 0.2
    expected = (math.log(1 + math.exp(-0.15)) + math.log(1 + math.exp(-0.2))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.1, 0.1]) and rejected.tolist() == pytest.approx([-0.05, -0.1])
    # policy == reference: loss ln 2, rewards 0
    x = torch.tensor([-3.0, -7.0])
    losses, chosen, rejected = train_dpo.dpo_losses(x, x + 1, x, x + 1, beta)
    assert losses.tolist() == pytest.approx([math.log(2)] * 2) and losses.mean().item() == pytest.approx(math.log(2)) and chosen.abs().max() == 0 == rejected.abs().max()



def test_dpo_losses_per_pair_by_hand():
    pc, pr = torch.tensor([-10.0, -5.0, -3.0], requires_grad=True), torch.tensor([-12.0, -4.0, -3.0])
    rc, rr, beta = torch.tensor([-11.0, -6.0, -2.0]), torch.tensor([-11.5, -3.0, -4.0]), 0.5
    losses, chosen, rejected = train_dpo.dpo_losses(pc, pr, rc, rr, beta)
    for i in range(3):  # DPO eq. 7 for pair i: -log sigmoid(beta * margin)
        rc_i, rr_i = beta * (pc[i].item() - rc[i].item()), beta * (pr[i].item() - rr[i].item())
        assert losses[i].item() == pytest.approx(math.log(1 + math.exp(-(rc_i - rr_i))), rel=1e-6)
        assert (chosen[i].item(), rejected[i].item()) == pytest.approx((rc_i, rr_i))
    assert losses.shape == (3,) and losses.requires_grad, "the loss trains the policy: one per pair, with its graph"
    assert not chosen.requires_grad and not rejected.requires_grad, "the rewards are only metrics: detach them"
    # far from the reference: finite, as log-sigmoid is (the log of a sigmoid that underflows is not)
    zero = torch.zeros(1)
    assert train_dpo.dpo_losses(zero, zero - 1000, zero, zero, 1.0)[0].item() == pytest.approx(0.0, abs=1e-6)
    assert train_dpo.dpo_losses(zero - 1000, zero, zero, zero, 1.0)[0].item() == pytest.approx(1000.0)


def test_sequence_logps_by_hand():
    for dtype in (torch.float32, torch.bfloat16):  # bf16 logits: log-probs still in fp32
        model = LogitTable(8, dtype)
        logps = train_dpo.sequence_logps(model, TOKENS, TARGETS, D.Env())
        assert logps.shape == (2,) and logps.dtype == torch.float32
        assert logps.tolist() == pytest.approx(logps_by_hand(model, TOKENS, TARGETS), rel=1e-6)
    train_dpo.sequence_logps(model, TOKENS, TARGETS, D.Env(dtype=torch.bfloat16))
    assert model.under_autocast  # the Env's autocast: a bf16 run's matmuls in bf16


def test_dpo_logged_rewards_by_hand(monkeypatch):
    """The figures TRL logs, from given log-probs: rewards beta * (policy -
    reference), accuracy the share of pairs whose chosen reward is strictly
    higher (a tie is not right), margin chosen - rejected; each a sum here,
    weighted (a filler row of weight 0 counts for nothing)."""
    logps = torch.tensor([-1.0, -2.0, -4.0, -1.0, -3.0, -1.0])  # rows: chosen 0..2, then rejected 0..2
    monkeypatch.setattr(train_dpo, "sequence_logps", lambda model, tokens, targets, env: logps)
    pair = lambda ref_c, ref_r: {"chosen": ([1, 2, 3], [(1, 3)]), "rejected": ([1, 2, 4], [(1, 3)]), "ref_chosen": ref_c,
                                 "ref_rejected": ref_r}
    mb = [(pair(0.0, 0.0), 1), (pair(-1.0, -2.0), 1), (pair(0.0, 0.0), 0)]
    c = types.SimpleNamespace(beta=0.1, rpo_alpha=0.0)
    _, stats = train_dpo.dpo_loss_and_sums(None, mb, types.SimpleNamespace(device="cpu"), c, 0, 2)
    # pair 0: rewards -0.1 and -0.1, a tie; pair 1: -0.1 and -0.1 again (ref -1 and -2), a tie too
    figures = lambda s: tuple(s[k] for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                             "rewards/margins"))
    assert figures(stats) == pytest.approx((-0.2, -0.2, 0.0, 0.0)) and stats["pairs"] == 2.0
    assert stats["loss"] == pytest.approx(2 * math.log(2))
    mb[1] = (pair(-1.5, -2.0), 1)  # pair 1 now: chosen -0.05, rejected -0.1: right by 0.05
    _, stats = train_dpo.dpo_loss_and_sums(None, mb, types.SimpleNamespace(device="cpu"), c, 0, 2)
    assert figures(stats) == pytest.approx((-0.15, -0.2, 1.0, 0.05))
    assert stats["loss"] == pytest.approx(math.log(2) - math.log(torch.sigmoid(torch.tensor(0.05)).item()))
    env = types.SimpleNamespace(device="cpu", world=1)
    assert train_dpo.summarize(env, stats)["rewards/accuracies"] == 0.5  # one of the 2 pairs (the filler: none)
    assert not any("pairs" in k for k in train_dpo.summarize(env, stats, "eval/"))  # (a divisor, not a figure)


def test_dpo_starts_at_ln2_and_learns(dpo_single):
    with open(dpo_single / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    first, last = records[0], records[-1]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)  # step 0: policy is the reference
    assert abs(first["rewards/chosen"]) < 1e-5 and abs(first["rewards/rejected"]) < 1e-5
    assert last["rewards/accuracies"] > 0.5 and last["rewards/margins"] > 0 and last["loss"] < math.log(2)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "lr", "grad_norm"):
        assert key in last
    header, *rows = read_jsonl(dpo_single / "ref_logps.jsonl")  # what they were made from, then one per pair
    assert header["pairs"] == len(rows) == 32 and header["made_from"]
    assert not (dpo_single / "state").exists()  # the model is saved: the resumable state went


def test_dpo_learns_the_files_chosen_answers(work, dpo_single):
    """The direction, against the data file and log-probs by hand (the test
    above reads the trainer's own labels): the reference log-probs are the
    starting model's of each pair's chosen and rejected text, and after
    training the file's chosen answers gained on its rejected ones."""
    tok = Tokenizer(str(work / "ckpt" / "tokenizer.model"))
    ref, new = load_model(str(work / "ckpt")).eval(), load_model(str(dpo_single / "model")).eval()
    pairs = read_jsonl(work / "pairs.jsonl")
    for row in read_jsonl(dpo_single / "ref_logps.jsonl")[1:4]:
        p = pairs[row["index"]]
        assert row["chosen"] == pytest.approx(response_logp(ref, tok, p["prompt"], p["chosen"])[0], rel=1e-5)
        assert row["rejected"] == pytest.approx(response_logp(ref, tok, p["prompt"], p["rejected"])[0], rel=1e-5)
    gain = lambda p, side: response_logp(new, tok, p["prompt"], p[side])[0] - response_logp(ref, tok, p["prompt"], p[side])[0]
    margins = [gain(p, "chosen") - gain(p, "rejected") for p in pairs]
    assert sum(m > 0 for m in margins) > 0.75 * len(pairs)


def test_tokens_per_second_counts_the_tokens_the_model_read(work, tmp_path, monkeypatch):
    """tokens_per_s is the real (unpadded) tokens a step ran the model on, all
    of a row's ids but its last (SFT: 40 examples; DPO: 32 pairs, two rows
    each), over the step's time; the clock faked to tick a whole second a
    call, so the logged figure is that count over a whole number of seconds."""
    tok = Tokenizer(str(work / "ckpt" / "tokenizer.model"))
    examples = train_sft.tokenize(tok, read_jsonl(work / "sft.jsonl"), 127, "sft")
    pairs = train_dpo.tokenize_pairs(tok, read_jsonl(work / "pairs.jsonl"), 127, "pairs")
    read = {train_sft: sum(len(ids) - 1 for ids, _ in examples),
            train_dpo: sum(len(p["chosen"][0]) - 1 + len(p["rejected"][0]) - 1 for p in pairs)}
    for trainer, config, n in ((train_sft, sft_config, len(examples)), (train_dpo, dpo_config, len(pairs))):
        ticks = iter(range(10**6))
        monkeypatch.setattr(trainer, "time", types.SimpleNamespace(time=lambda: float(next(ticks))))
        out = tmp_path / trainer.__name__
        trainer.train(config(work, out, max_steps=1, batch_size=n, micro_batch_size=4))
        [tps] = [r["tokens_per_s"] for r in read_jsonl(out / "metrics.jsonl") if "tokens_per_s" in r]
        seconds = read[trainer] / tps
        assert seconds == round(seconds) >= 1, (trainer.__name__, read[trainer], tps)


def test_the_trainers_defaults_are_the_papers():
    """Section 3.1: SFT at 5.5e-6 decayed to 1.1e-6; DPO at 1e-6 decayed to 1e-7, beta 0.1 (the loop's toy
    settings are its own; these are what the trainers run on real checkpoints without a setting)."""
    assert (train_sft.DEFAULTS["lr"], train_sft.DEFAULTS["min_lr"]) == (5.5e-6, 1.1e-6)
    assert (train_dpo.DEFAULTS["lr"], train_dpo.DEFAULTS["min_lr"], train_dpo.DEFAULTS["beta"]) == (1e-6, 1e-7, 0.1)
    long, short = ([1] * 10, [(5, 10)]), ([1] * 3, [(1, 3)])  # a pair pads to its longer row, either side
    assert train_dpo.pair_length({"chosen": long, "rejected": short}) == 10
    assert train_dpo.pair_length({"chosen": short, "rejected": long}) == 10


def test_dpo_eval_starts_at_ln2_and_ends_at_the_held_out_pairs_loss_by_hand(work, tmp_path):
    """The held-out pairs' loss (eval_fraction, the trainer's default 0.05;
    the loop sets 0): at step 0 the policy is the reference, so exactly ln 2
    with rewards 0, over the 8 pairs held out of 32; after the last step, the
    DPO loss of those 8 pairs (and not of the training pairs) by hand, from
    the trained and the starting model's log-probs, at the run's beta (0.5,
    not the default 0.1: the setting must reach the loss)."""
    out = tmp_path / "dpo"
    beta = 0.5
    assert beta != train_dpo.DEFAULTS["beta"]
    c = dpo_config(work, out, eval_fraction=0.25, eval_interval=1, max_steps=2, beta=beta)
    train_dpo.train(c)
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if "eval/loss" in r]
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and first["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["eval/rewards/chosen"] == pytest.approx(0, abs=1e-6) == first["eval/rewards/rejected"]
    header, *rows = read_jsonl(out / "ref_logps.jsonl")
    assert header["pairs"] == len(rows) == 32  # the held-out pairs have reference log-probs too
    tok = Tokenizer(str(work / "ckpt" / "tokenizer.model"))
    ref, new = load_model(str(work / "ckpt")).eval(), load_model(str(out / "model")).eval()

    def dpo_loss(pairs):
        gain = lambda p, side: (response_logp(new, tok, p["prompt"], p[side])[0]
                                - response_logp(ref, tok, p["prompt"], p[side])[0])
        return sum(-torch.nn.functional.logsigmoid(torch.tensor(beta * (gain(p, "chosen") - gain(p, "rejected")))).item()
                   for p in pairs) / len(pairs)
    train, held = T.hold_out(read_jsonl(work / "pairs.jsonl"), 0.25, train_dpo.DEFAULTS["seed"])
    assert last["step"] == 2 and len(held) == 8
    assert last["eval/loss"] == pytest.approx(dpo_loss(held), rel=1e-4)
    assert abs(dpo_loss(train[:8]) - dpo_loss(held)) > 1e-3  # (so the figure tells the two sets apart)


def record_modes(monkeypatch, module, name):
    """module.name (a function of the model first) patched to record, at each
    call, whether gradients are on and the training mode of every module;
    returns the list it fills."""
    seen, real = [], getattr(module, name)

    def recorded(model, *args):
        seen.append((torch.is_grad_enabled(), {m.training for m in model.modules()}))
        return real(model, *args)
    monkeypatch.setattr(module, name, recorded)
    return seen


def test_dropout_is_on_in_training_steps_only(work, tmp_path, monkeypatch):
    """With dropout on (the paper's 0.1; the other DPO tests run without it,
    where train and eval mode compute the same), the reference log-probs and
    the held-out evaluation are taken in eval mode and every training step in
    train mode: each phase leaves the model in the mode the next one needs.
    Recorded at each forward of sequence_logps, in every module (dropout
    lives in the blocks): the reference's 16 and the 3 evaluations' 4 each
    run without gradients and without dropout, the 2 steps' 4 each with both;
    and with no held-out pairs (the loop's eval_fraction 0), where no
    evaluation turns dropout back on after the reference, the same. And by
    value: at step 0 the policy is the reference, so the held-out loss is
    exactly ln 2 only if neither is taken with dropout."""
    seen = record_modes(monkeypatch, train_dpo, "sequence_logps")
    out = tmp_path / "dpo"
    train_dpo.train(dpo_config(work, out, dropout=0.1, eval_fraction=0.25, eval_interval=1, max_steps=2))
    reference, evaluation, step = [False] * 16, [False] * 4, [True] * 4  # (with gradients or not)
    assert [grad for grad, _ in seen] == reference + evaluation + step + evaluation + step + evaluation
    assert all(modes == {grad} for grad, modes in seen), [modes for _, modes in seen]
    seen.clear()
    train_dpo.train(dpo_config(work, tmp_path / "no_eval", dropout=0.1, max_steps=1))
    assert [grad for grad, _ in seen] == reference + step
    assert all(modes == {grad} for grad, modes in seen), [modes for _, modes in seen]
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if "eval/loss" in r]
    assert evals[0]["step"] == 0 and evals[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_sft_dropout_is_on_in_training_steps_only_and_evaluates_on_schedule(work, tmp_path, monkeypatch):
    """SFT with dropout 0.1: every held-out evaluation runs without gradients
    in eval mode, every training step in train mode (an evaluation turns it
    back on for the steps after it); the held-out loss is logged at step 0,
    every eval_interval steps and after the last step (4 steps, interval 2:
    0, 2, 4)."""
    seen = record_modes(monkeypatch, train_sft, "sft_loss_sum")
    out = tmp_path / "sft"
    train_sft.train(sft_config(work, out, dropout=0.1, eval_fraction=0.25, eval_interval=2))
    assert {grad for grad, _ in seen} == {True, False}
    assert all(modes == {grad} for grad, modes in seen), [modes for _, modes in seen]
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "eval_loss" in r] == [0, 2, 4]


def test_sft_eval_loss_leaves_out_a_ranks_fillers(monkeypatch):
    """Rank 1 of 2 over 3 held-out examples runs example 1 and a filler
    (example 0 again, weight 0): its sums are example 1's alone (the process
    group faked: all_sum returns this rank's own)."""
    model = LogitTable(8)
    examples = [([1, 4, 5, 6, 7, 2], [(3, 6)]), ([1, 4, 3, 5, 6, 7, 3, 5, 2], [(2, 9)]), ([1, 5, 6, 2], [(2, 4)])]
    monkeypatch.setattr(D, "all_sum", lambda env, *values: list(values))
    c = types.SimpleNamespace(micro_batch_size=2)
    assert T.split_even(examples, 1, 2) == [(examples[1], 1), (examples[0], 0)]
    assert train_sft.evaluate(model, examples, D.Env(rank=1, world=2), c, 0) == pytest.approx(
        train_sft.evaluate(model, examples[1:2], D.Env(), c, 0), rel=1e-6)


def test_reference_log_probs_are_one_row_per_pair_whatever_fillers_a_rank_runs(work, tmp_path, monkeypatch):
    """Under torchrun a rank short of pairs runs fillers (training.split_even:
    pairs[0] again, weight 0) so that every rank runs as many forwards; their
    log-probs are dropped, not written as a second row of pair 0 (which would
    then take whichever row comes last). Rank 1 of 2 over 5 pairs, the
    process group faked: it computes pairs 1 and 3 and a filler, rank 0
    sends made-up rows for 0, 2 and 4; the file has each pair once, pair 0's
    from rank 0, pairs 1 and 3 the starting model's log-probs by hand."""
    tok = Tokenizer(str(work / "ckpt" / "tokenizer.model"))
    records = read_jsonl(work / "pairs.jsonl")[:5]
    pairs = train_dpo.tokenize_pairs(tok, records, 127, "pairs.jsonl")
    from_rank0 = [(0, -1.0, -2.0), (2, -3.0, -4.0), (4, -5.0, -6.0)]
    monkeypatch.setattr(D, "all_sum", lambda env, *values: list(values))  # (no saved file: nothing to reuse)
    monkeypatch.setattr(torch.distributed, "all_gather_object", lambda out, rows: out.__setitem__(
        slice(None), [from_rank0, rows]))
    c = types.SimpleNamespace(init_from=str(work / "ckpt"), micro_batch_size=2)
    model = load_model(str(work / "ckpt"))
    assert T.split_even(list(range(5)), 1, 2) == [(1, 1), (3, 1), (0, 0)]  # this rank's: two pairs and a filler
    train_dpo.fill_reference_logps(model, pairs, D.Env(rank=1, world=2), c, tok.eos_id, tmp_path / "ref_logps.jsonl")
    header, *rows = read_jsonl(tmp_path / "ref_logps.jsonl")
    assert header["pairs"] == 5 and [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    assert [(p["ref_chosen"], p["ref_rejected"]) for p in pairs[::2]] == [(-1.0, -2.0), (-3.0, -4.0), (-5.0, -6.0)]
    model.eval()
    for i in (1, 3):
        by_hand = [response_logp(model, tok, records[i]["prompt"], records[i][side])[0]
                   for side in ("chosen", "rejected")]
        assert [pairs[i]["ref_chosen"], pairs[i]["ref_rejected"]] == pytest.approx(by_hand, rel=1e-5), i


def test_reference_log_probs_are_reused_only_for_the_same_pairs(work, dpo_single, tmp_path):
    """The same number of pairs with chosen and rejected swapped: the saved
    reference log-probs belong to other pairs and are computed again; so are
    they for the same pairs in another compute dtype, and from other starting
    weights (init_from) in the same out_dir."""
    out = tmp_path / "dpo"
    shutil.copytree(dpo_single, out)
    swapped = tmp_path / "swapped.jsonl"
    swapped.write_text("".join(json.dumps({**p, "chosen": p["rejected"], "rejected": p["chosen"]}) + "\n"
                               for p in read_jsonl(work / "pairs.jsonl")))
    train_dpo.train(dpo_config(work, out, data=str(swapped), max_steps=1))
    old, new = read_jsonl(dpo_single / "ref_logps.jsonl")[1:], read_jsonl(out / "ref_logps.jsonl")[1:]
    assert [(r["chosen"], r["rejected"]) for r in new] == [(r["rejected"], r["chosen"]) for r in old]
    # the same pairs in another compute dtype are other log-probs: an fp32 run's are not kept for a bf16 run
    in_bf16 = tmp_path / "dpo_bf16"
    shutil.copytree(dpo_single, in_bf16)
    train_dpo.train(dpo_config(work, in_bf16, dtype="bfloat16", max_steps=1))
    (fp32_header, *old), (bf16_header, *new) = read_jsonl(dpo_single / "ref_logps.jsonl"), read_jsonl(
        in_bf16 / "ref_logps.jsonl")
    assert fp32_header["made_from"] != bf16_header["made_from"] and len(new) == len(old)
    assert [r["chosen"] for r in new] != [r["chosen"] for r in old]  # computed again, in bf16
    assert [r["chosen"] for r in new] == pytest.approx([r["chosen"] for r in old], rel=0.05)
    # the same pairs and dtype from other starting weights (a retrained SFT model, here the DPO run's own
    # result): the reference is that model's, computed again, not the old file's log-probs of other weights
    tok = Tokenizer(str(work / "ckpt" / "tokenizer.model"))
    other_start = tmp_path / "dpo_other_start"
    shutil.copytree(dpo_single, other_start)
    train_dpo.train(dpo_config(work, other_start, init_from=str(dpo_single / "model"), max_steps=1))
    # ... which a checkpoint retrained in place (the same folder) is too: the fingerprint follows its files
    in_place = tmp_path / "in_place"
    shutil.copytree(work / "ckpt", in_place)
    made_from = lambda: train_dpo.reference_made_from(types.SimpleNamespace(init_from=str(in_place)), [], torch.float32)
    before = made_from()
    save_model(load_model(str(dpo_single / "model")), str(in_place),
               tokenizer_path=str(work / "ckpt" / "tokenizer.model"))
    assert made_from() != before
    start = load_model(str(dpo_single / "model")).eval()
    pairs = read_jsonl(work / "pairs.jsonl")
    for row in read_jsonl(other_start / "ref_logps.jsonl")[1:4]:
        p = pairs[row["index"]]
        assert row["chosen"] == pytest.approx(response_logp(start, tok, p["prompt"], p["chosen"])[0], rel=1e-5)
        assert row["rejected"] == pytest.approx(response_logp(start, tok, p["prompt"], p["rejected"])[0], rel=1e-5)


def test_training_state_is_resumed_only_by_the_same_settings(work, tmp_path, capsys, monkeypatch):
    """The same command again, its model there: nothing to do, and the same
    result (it trained again from step 0). keep_state keeps a finished run's
    state, which the same settings resume; a run with another lr in the same
    out_dir starts from step 0 instead of resuming it, says so, and says
    that it replaces the model."""
    out = tmp_path / "sft"
    first = train_sft.train(sft_config(work, out, max_steps=2, keep_state=True))
    assert (out / "state" / "state.json").exists()
    capsys.readouterr()
    assert train_sft.train(sft_config(work, out, max_steps=2, keep_state=True)) == first
    assert "trained from these same settings and inputs: nothing to do" in capsys.readouterr().out
    (out / "model" / "model.safetensors").unlink()  # its weights deleted by hand: not a model to keep
    assert train_sft.train(sft_config(work, out, max_steps=2, keep_state=True)) == first
    assert "has no config.json or no weights: this run replaces it" in capsys.readouterr().out
    assert (out / "model" / "model.safetensors").exists()
    shutil.rmtree(out / "model")
    train_sft.train(sft_config(work, out, max_steps=2, keep_state=True))  # the same: resumed at its end
    assert "at step 2, the last: the model is saved again from it" in capsys.readouterr().out
    train_sft.train(sft_config(work, out, max_steps=2, lr=5e-4))
    text = capsys.readouterr().out
    assert "not resuming from" in text and "resumed from" not in text and "this run replaces it" in text
    # a run that will replace the model drops the old record first: killed once its own model is in
    # place, the record would have passed the new model off as the old command's
    assert (out / "done.json").exists()

    def killed(c, env, fp):
        assert not (out / "done.json").exists()
        raise KeyboardInterrupt
    monkeypatch.setattr(train_sft, "sft", killed)
    with pytest.raises(KeyboardInterrupt):
        train_sft.train(sft_config(work, out, max_steps=2, lr=2e-4))
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert not (out / "state").exists()


def test_a_trainer_killed_while_its_state_goes_is_finished_by_the_same_command(work, tmp_path, capsys, monkeypatch):
    """The record (done.json) is written before the resumable state is
    removed, and the state's state.json goes first: a kill halfway through
    the removal leaves the finished model, its record, and no state to resume
    from; the same command has nothing to do but finish the removal. (The
    state went first, so the rerun tried to resume from the half of it that
    was left: a traceback from DCP, on every rerun.) A whole state kept by
    keep_state stays, and is said to be there. A state that cannot be read
    is one clear error naming it; Ctrl-C while it is read is Ctrl-C."""
    import training
    from torch.distributed.checkpoint import FileSystemReader
    out = tmp_path / "sft"
    first = train_sft.train(sft_config(work, out, max_steps=2, keep_state=True))
    capsys.readouterr()
    assert train_sft.train(sft_config(work, out, max_steps=2)) == first  # keep_state off: nothing to do, and
    assert f"note: {out / 'state'} is still here" in capsys.readouterr().out  # the kept state stays
    (out / "state" / "state.json").unlink()  # what a kill halfway through the removal leaves
    next((out / "state").glob("*.distcp")).unlink()
    assert train_sft.train(sft_config(work, out, max_steps=2)) == first
    assert "nothing to do" in capsys.readouterr().out and not (out / "state").exists()
    real, seen = training.remove_states, []
    monkeypatch.setattr(training, "remove_states", lambda paths, whole=True: seen.append(
        (out / "done.json").exists()) or real(paths, whole))
    train_sft.train(sft_config(work, out, max_steps=2, lr=5e-4))
    assert seen == [True] and not (out / "state").exists()
    train_sft.train(sft_config(work, out, max_steps=2, keep_state=True))  # a state of these inputs, kept,
    shutil.rmtree(out / "model")  # the model gone (so the same command resumes the state)
    real_read = FileSystemReader.read_data

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(FileSystemReader, "read_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_sft.train(sft_config(work, out, max_steps=2, keep_state=True))
    monkeypatch.setattr(FileSystemReader, "read_data", real_read)
    next((out / "state").glob("*.distcp")).unlink()  # a file of the state lost
    with pytest.raises(ValueError, match=f"cannot resume from the training state {out / 'state'}: it cannot "
                                         f"be read .*FileNotFoundError.*; remove it to train from the start"):
        train_sft.train(sft_config(work, out, max_steps=2, keep_state=True))


def test_a_trained_model_records_the_dtype_it_was_trained_in(work, tmp_path, capsys):
    """done.json's fingerprint counts the dtype 'auto' resolved to: an explicit
    --dtype equal to it finds the model done; one that differs trains again."""
    out = tmp_path / "sft"
    first = train_sft.train(sft_config(work, out, max_steps=2, dtype="auto"))  # fp32 for this tiny model
    capsys.readouterr()
    assert train_sft.train(sft_config(work, out, max_steps=2, dtype="float32")) == first
    assert "nothing to do" in capsys.readouterr().out
    train_sft.train(sft_config(work, out, max_steps=2, dtype="bfloat16"))  # another dtype: trained again
    assert "was made from other settings" in capsys.readouterr().out


def test_a_trained_model_in_another_save_dtype_is_made_again(work, tmp_path, capsys):
    """save_dtype is not in the state's fingerprint (a kept state resumes
    across it), but a finished model stored in another dtype is not taken for
    the one asked for: with its state kept, the run resumes at its last step
    and only saves again."""
    out = tmp_path / "sft"
    first = train_sft.train(sft_config(work, out, max_steps=2, save_dtype="bfloat16", keep_state=True))
    stored = lambda: json.loads((out / "model" / "config.json").read_text())["torch_dtype"]
    assert stored() == "bfloat16"
    capsys.readouterr()
    assert train_sft.train(sft_config(work, out, max_steps=2, save_dtype="bfloat16", keep_state=True)) == first
    assert "nothing to do" in capsys.readouterr().out
    train_sft.train(sft_config(work, out, max_steps=2, save_dtype="float32", keep_state=True))
    log = capsys.readouterr().out
    assert f"note: {out / 'model'} is stored in bfloat16, save_dtype asks for float32" in log
    assert "at step 2, the last: the model is saved again from it" in log and stored() == "float32"


def test_dpo_nan_loss_stops(work, tmp_path, monkeypatch):
    calls = []
    real = train_dpo.sequence_logps

    def poisoned(*args):
        calls.append(1)  # 16 calls for the reference (32 pairs / 2), then 4 a step
        out = real(*args)
        return out * float("nan") if len(calls) > 20 else out

    monkeypatch.setattr(train_dpo, "sequence_logps", poisoned)
    out = tmp_path / "out"
    with pytest.raises(FloatingPointError, match="loss is nan at step 2"):  # the second step (the first went)
        train_dpo.train(dpo_config(work, out, save_interval=1))
    with open(out / "state" / "state.json") as f:
        assert json.load(f)["step"] == 1
    assert not (out / "model").exists()


def test_dpo_log_probs_are_sums(work):
    """sequence_logps is the sum of the response tokens' log-probs, not their
    mean: against SFT's summed loss (negated) for one response, and for a
    longer one in the same batch (padded beside it) against the sum taken
    by hand (conftest.response_logp)."""
    tok = Tokenizer(str(work / "ckpt" / "tokenizer.model"))
    model = load_model(str(work / "ckpt")).eval()
    short = train_sft.response_example(tok, "reverse the fox", "fox the")
    long = train_sft.response_example(tok, "reverse the fox", "fox the fox the fox the")
    assert len(long[0]) > len(short[0])
    tokens, targets = train_sft.collate([short, long], tok.eos_id)
    with torch.no_grad():
        lp_short, lp_long = train_dpo.sequence_logps(model, tokens, targets, D.Env()).tolist()
        ce_sum = train_sft.sft_loss_sum(model, tokens[:1], targets[:1], D.Env()).item()
    by_hand, _ = response_logp(model, tok, "reverse the fox", "fox the fox the fox the")
    assert lp_short == pytest.approx(-ce_sum, rel=1e-5)
    assert lp_long == pytest.approx(by_hand, rel=1e-5)


def test_rpo_adds_the_chosen_responses_nll_per_token(work):
    """rpo_alpha > 0 (Iterative RPO, Pang et al. 2024; TRL's rpo_alpha): each
    pair's loss is its DPO loss plus rpo_alpha times the chosen response's
    cross-entropy per token, computed here by SFT's own loss."""
    tok = Tokenizer(str(work / "ckpt" / "tokenizer.model"))
    model = load_model(str(work / "ckpt")).eval()
    pair = {"chosen": train_sft.response_example(tok, "reverse the fox", "fox the"),
            "rejected": train_sft.response_example(tok, "reverse the fox", "the fox the fox"), "ref_chosen": -3.0,
            "ref_rejected": -9.0}
    c = types.SimpleNamespace(beta=0.1, rpo_alpha=0.0)
    with torch.no_grad():
        plain, plain_stats = train_dpo.dpo_loss_and_sums(model, [(pair, 1)], D.Env(), c, tok.eos_id, 1)
        c.rpo_alpha = 0.5
        rpo, rpo_stats = train_dpo.dpo_loss_and_sums(model, [(pair, 1)], D.Env(), c, tok.eos_id, 1)
        tokens, targets = train_sft.collate([pair["chosen"]], tok.eos_id)
        nll = train_sft.sft_loss_sum(model, tokens, targets, D.Env()).item() / (targets != -100).sum().item()
    assert rpo.item() == pytest.approx(plain.item() + 0.5 * nll, rel=1e-5)
    assert train_dpo.summarize(D.Env(), rpo_stats)["nll_loss"] == pytest.approx(nll, rel=1e-5)  # logged either way
    assert train_dpo.summarize(D.Env(), plain_stats)["nll_loss"] == pytest.approx(nll, rel=1e-5)
    # a filler (weight 0, training.split_even's) adds nothing to the NLL's sum, as to every other figure
    with torch.no_grad():
        _, padded = train_dpo.dpo_loss_and_sums(model, [(pair, 1), (pair, 0)], D.Env(), c, tok.eos_id, 1)
    assert padded == pytest.approx(rpo_stats, rel=1e-5)
    # the rewards do not change: the NLL is a second term, not a new reward
    rewards = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
    assert [rpo_stats[k] for k in rewards] == [plain_stats[k] for k in rewards]
    assert train_dpo.chosen_nll(torch.tensor([-6.0, -1.0]), torch.tensor([3, 4])).tolist() == [2.0, 0.25]


# -----------------------------------------------------------------------------
# FSDP2 under torchrun = one process

def test_fsdp_sft_matches_single_process(work, sft_single):
    out = work / "sft_fsdp"
    torchrun("train_sft.py", sft_config(work, out))
    assert losses(out) == pytest.approx(losses(sft_single), rel=L_TOL)
    # AdamW is blind to a uniform gradient scale; the logged norm is not
    assert losses(out, "grad_norm") == pytest.approx(losses(sft_single, "grad_norm"), rel=1e-5)
    assert max_weight_diff(out / "model", sft_single / "model") < W_TOL
    assert mfu_per_rate(out) == pytest.approx([x / 2 for x in mfu_per_rate(sft_single)], rel=1e-9)


def test_fsdp_dpo_matches_single_process(work, dpo_single):
    out = work / "dpo_fsdp"
    torchrun("train_dpo.py", dpo_config(work, out))
    assert losses(out) == pytest.approx(losses(dpo_single), rel=L_TOL)
    assert losses(out, "grad_norm") == pytest.approx(losses(dpo_single, "grad_norm"), rel=1e-5)
    assert losses(out, "rewards/margins") == pytest.approx(losses(dpo_single, "rewards/margins"), rel=1e-4, abs=1e-6)
    assert max_weight_diff(out / "model", dpo_single / "model") < W_TOL
    assert mfu_per_rate(out) == pytest.approx([x / 2 for x in mfu_per_rate(dpo_single)], rel=1e-9)


def test_under_torchrun_an_error_prints_once_and_a_busy_out_dir_is_refused(work, tmp_path):
    """Every rank meets the same bad setting, and each used to print it; a
    second job on an out_dir that a running one writes (here: this test holds
    its lock) is refused before any work, by every rank, in one message."""
    r = torchrun("train_sft.py", sft_config(work, tmp_path / "a", batch_size=7), check=False)
    assert r.returncode != 0 and "]: Traceback" not in r.stderr  # no rank's traceback ([rank0]: ...)
    assert r.stderr.count("batch_size = 7: must divide by the number of ranks (2)") == 1, r.stderr[-3000:]
    out = tmp_path / "busy"
    with held_by_another_job(out):
        r = torchrun("train_sft.py", sft_config(work, out), check=False)
    assert r.returncode != 0  # (torchrun exits 1 whatever its ranks exit with)
    assert r.stderr.count(f"error: {out} is being written by another job (process 1 on elsewhere)") == 1, \
        r.stderr[-3000:]
    assert os.listdir(out) == [".lock"]  # nothing written
    torchrun("train_sft.py", sft_config(work, out))  # the lock is free again: it runs
    assert (out / "model" / "model.safetensors").exists()
    # an error on rank 0 alone, in the final save (a full disk: a sitecustomize that the ranks' Python loads
    # makes rank 0's folder writer fail), while rank 1 gathers the weights with it: said, and the job ends
    # (it waited forever in teardown's barrier)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '0':\n"
        "    import data\n\n"
        "    def full(path, write_into):\n"
        "        raise OSError(28, 'No space left on device')\n"
        "    data.write_folder_atomically = full\n")
    r = torchrun("train_sft.py", sft_config(work, tmp_path / "late"), check=False,
                 env={"PYTHONPATH": os.pathsep.join([str(hook), ROOT])})
    assert r.returncode != 0 and "error: " in r.stderr and "No space left on device" in r.stderr \
        and "timed out" not in r.stderr, \
        r.stderr[-3000:]


def test_stop_prints_once_or_per_rank_and_the_lock_says_what_stops_it(tmp_path, monkeypatch, capsys):
    """distributed.stop: an error every rank meets is printed by rank 0 alone
    (the others wait a moment, so that rank 0 prints before torchrun ends the
    job); one a rank may meet alone (its disk) by every rank, named. The
    folder lock: a lock file that cannot be made stops the job (status 2); a
    file system without locks only warns."""
    import errno
    import fcntl
    waited = []
    monkeypatch.setattr(D.time, "sleep", waited.append)
    for rank, every_rank, printed in [("0", True, "boom\n"), ("1", True, ""), ("1", False, "[rank 1] boom\n")]:
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as e:
            D.stop("boom", 1, every_rank=every_rank)
        assert e.value.code == 1 and capsys.readouterr().err == printed
    assert waited == [2]
    monkeypatch.delenv("RANK")
    (tmp_path / "a" / ".lock").mkdir(parents=True)  # a lock file that cannot be opened
    lock, problem = D.lock_folder(str(tmp_path / "a"))
    assert lock is None and problem.startswith(f"error: {tmp_path / 'a' / '.lock'}: cannot open it to lock it: ")
    with pytest.raises(SystemExit) as e, D.sole_writer(D.Env(), str(tmp_path / "a")):
        pass
    assert e.value.code == 2

    def no_locks(f, how):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with D.sole_writer(D.Env(), str(tmp_path / "b")):
        assert "warning: " in capsys.readouterr().out  # it runs, and says what is not checked
    with D.sole_writer(D.Env(), str(tmp_path / "c"), str(tmp_path / "c" / "out.partial")) as f:
        f.write("kept\n")  # a locked file the job writes (sample.py's OUT.partial) is still its own to write
    assert "warning: " in capsys.readouterr().out and (tmp_path / "c" / "out.partial").read_text() == "kept\n"


def test_the_folder_lock_is_exclusive_and_names_its_holder_now(tmp_path):
    """A second lock_folder on a held folder is refused, naming the process
    that holds it now: not a name a finished run left in the lock file
    (the file is kept; the kernel's lock is what ends with the process)."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text("process 1 on oldbox\n")  # a finished run's
    me = f"process {os.getpid()} on {socket.gethostname()}"
    lock, problem = D.lock_folder(str(folder))
    try:
        assert lock is not None and problem == "" and (folder / ".lock").read_text() == me + "\n"
        second, problem = D.lock_folder(str(folder))  # (another open file: flock sees another holder)
        assert second is None and f"is being written by another job ({me})" in problem
        assert D.lock_holder(str(folder)) == me
    finally:
        lock.close()
    assert D.lock_holder(str(folder)) is None
    again, problem = D.lock_folder(str(folder))
    assert again is not None and problem == ""
    again.close()


def test_two_nodes_from_scratch_match_single_process(work, tmp_path, toy_tokenizer_path):
    """Two torchrun launches as two nodes of one job (static rendezvous), from
    a random init (which must be the same however the model is sharded)."""
    cfg = {**sft_config(work, tmp_path / "single"), "init_from": "scratch", "model": "toy-tiny",
           "tokenizer": toy_tokenizer_path, "eval_fraction": 0.1, "eval_interval": 2}
    train_sft.train(cfg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    multi = {**cfg, "out_dir": str(tmp_path / "multi")}
    procs = [subprocess.Popen([TORCHRUN, "--nnodes=2", f"--node_rank={r}", "--nproc_per_node=1",
                               "--master_addr=127.0.0.1", f"--master_port={port}", "train_sft.py", *cli_args(multi)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    assert "world size 2" in outs[0]
    assert losses(tmp_path / "multi") == pytest.approx(losses(tmp_path / "single"), rel=L_TOL)
    assert losses(tmp_path / "multi", "grad_norm") == pytest.approx(losses(tmp_path / "single", "grad_norm"), rel=1e-5)
    evals = losses(tmp_path / "single", "eval_loss")
    assert len(evals) == 3 and losses(tmp_path / "multi", "eval_loss") == pytest.approx(evals, rel=L_TOL)
    assert max_weight_diff(tmp_path / "multi" / "model", tmp_path / "single" / "model") < W_TOL


# -----------------------------------------------------------------------------
# Resume after a kill

def test_fsdp_resume_after_kill_equals_uninterrupted(work, sft_single, capsys):
    """Killed (os._exit, no cleanup) right after step 3, when the last saved
    state is step 2: the same command resumes from step 2 under FSDP and ends
    with the weights of the run that was never interrupted."""
    out = work / "sft_resume"
    r = torchrun("train_sft.py", sft_config(work, out, crash_after_step=3), check=False)
    assert r.returncode != 0
    with open(out / "state" / "state.json") as f:
        assert json.load(f)["step"] == 2
    assert not (out / "model").exists()
    # DCP reshards on load: the same state also resumes in one process
    shutil.copytree(out, work / "sft_resume_1proc")
    capsys.readouterr()
    train_sft.train(sft_config(work, work / "sft_resume_1proc"))
    # resumed, not trained again from step 0 (which would end with the same weights)
    assert "at step 2 of 4" in capsys.readouterr().out
    assert max_weight_diff(work / "sft_resume_1proc" / "model", sft_single / "model") < W_TOL
    r = torchrun("train_sft.py", sft_config(work, out))
    assert "resumed from" in r.stdout and "at step 2 of 4" in r.stdout
    assert losses(out) == pytest.approx(losses(sft_single), rel=L_TOL)  # one clean curve
    assert max_weight_diff(out / "model", sft_single / "model") < W_TOL


def test_dpo_resume_after_kill_equals_uninterrupted(work, dpo_single, capsys):
    """One process; dropout on, to show the RNG is restored too (it is derived
    from seed, step and rank). The resume must be one: a run started again from
    step 0 would end with the same weights."""
    out_a, out_b = work / "dpo_a", work / "dpo_b"
    cfg = dict(dpo_config(work, out_a, dropout=0.1, max_steps=3, save_interval=1))
    train_dpo.train(cfg)
    cmd = [sys.executable, "train_dpo.py", *cli_args({**cfg, "out_dir": str(out_b), "crash_after_step": 2})]
    # the same thread count as this process, which runs the other two: CPU
    # kernels may sum in another order with another number of threads
    cmd.append(f"--threads={torch.get_num_threads()}")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr[-2000:]
    stamp = os.stat(out_b / "ref_logps.jsonl").st_mtime_ns
    capsys.readouterr()
    train_dpo.train({**cfg, "out_dir": str(out_b)})
    assert "at step 2 of 3" in capsys.readouterr().out
    with open(out_b / "metrics.jsonl") as f:  # steps 1-2 logged before the kill, step 3 after the resume
        assert [r["step"] for r in map(json.loads, f) if "loss" in r] == [1, 2, 3]
    # the reference log-probs were reused, not recomputed from the moved policy
    assert os.stat(out_b / "ref_logps.jsonl").st_mtime_ns == stamp
    assert max_weight_diff(out_a / "model", out_b / "model") < 1e-6


def test_dpo_keeps_a_checkpoint_every_keep_every_steps(work, dpo_single):
    """keep_every (the paper's checkpoints to choose from): the model at each
    kept step, and keeping them changes nothing. At a constant learning rate
    the first two steps of a 4-step run are those of a 2-step run, so the
    step-2 checkpoint must be that run's model; the last step's is out_dir/model."""
    out = train_dpo.train(dpo_config(work, work / "dpo_keep", keep_every=2, min_lr=1e-3))
    assert out["checkpoints"] == [[2, str(work / "dpo_keep" / "checkpoints" / "step-2")],
                                  [4, str(work / "dpo_keep" / "model")]]
    assert sorted(os.listdir(work / "dpo_keep" / "checkpoints")) == ["step-2"]
    two = train_dpo.train(dpo_config(work, work / "dpo_two", max_steps=2, min_lr=1e-3))
    assert max_weight_diff(work / "dpo_keep" / "checkpoints" / "step-2", two["model"]) == 0
    assert max_weight_diff(work / "dpo_keep" / "checkpoints" / "step-2", work / "dpo_keep" / "model") > 1e-4
    # the same settings without keep_every train the same model
    same = train_dpo.train(dpo_config(work, work / "dpo_nokeep", min_lr=1e-3))
    assert "checkpoints" not in same
    assert max_weight_diff(work / "dpo_keep" / "model", same["model"]) == 0


def test_a_kept_checkpoint_that_is_gone_is_made_again(work, capsys):
    """keep_every's checkpoints are what a choice is made among: a finished run
    whose checkpoint was deleted trains again, and a saved state is resumed
    only with the checkpoints it kept (resuming the last step's state would
    run no step and make none of them)."""
    cfg = dpo_config(work, work / "dpo_gone", keep_every=2, keep_state=True)
    first = train_dpo.train(cfg)
    kept = work / "dpo_gone" / "checkpoints" / "step-2"
    before = load_model(kept).state_dict()
    shutil.rmtree(kept)
    capsys.readouterr()
    assert train_dpo.train(cfg)["checkpoints"] == first["checkpoints"]
    assert f"note: {kept}, a checkpoint this run kept, is gone: training again" in capsys.readouterr().out
    assert max((load_model(kept).state_dict()[k] - v).abs().max().item() for k, v in before.items()) == 0
    shutil.rmtree(kept)  # and the model: only the last step's state is left to resume from
    shutil.rmtree(work / "dpo_gone" / "model")
    train_dpo.train(cfg)
    out = capsys.readouterr().out
    assert "note: the checkpoint of step 2 is gone: not resuming from" in out and "resumed from" not in out
    assert max((load_model(kept).state_dict()[k] - v).abs().max().item() for k, v in before.items()) == 0


@pytest.mark.parametrize("killed_after", [2, 4])
def test_a_state_saved_at_a_kept_step_is_resumed_with_its_checkpoint_there(work, capsys, monkeypatch, killed_after):
    """keep_every=2 over 4 steps, killed after step 2 (its checkpoint kept) or
    after the last step (whose model is out_dir/model, no checkpoint): the
    rerun resumes the saved state, and returns every checkpoint."""
    cfg = dpo_config(work, work / f"dpo_killed_at_{killed_after}", keep_every=2)
    real = T.end_step

    def killed(model, optimizer, step, *rest):
        real(model, optimizer, step, *rest)
        if step == killed_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "end_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train_dpo.train(cfg)
    monkeypatch.undo()
    capsys.readouterr()
    result = train_dpo.train(cfg)
    out = capsys.readouterr().out
    assert f"resumed from {work / f'dpo_killed_at_{killed_after}' / 'state'}" in out and "is gone" not in out
    assert [s for s, _ in result["checkpoints"]] == [2, 4] and all(os.path.isdir(f) for _, f in result["checkpoints"])


def test_a_state_saved_at_a_kept_step_is_not_resumed_without_that_steps_checkpoint(work, capsys, monkeypatch):
    """Killed after step 2, whose state was saved just after its checkpoint:
    with that checkpoint deleted the state is not resumed (its step kept one),
    and every checkpoint the run returns is there."""
    cfg = dpo_config(work, work / "dpo_gone_at_2", keep_every=2)  # save_interval 2, 4 steps
    real = T.end_step

    def killed_after_step_2(model, optimizer, step, *rest):
        real(model, optimizer, step, *rest)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "end_step", killed_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        train_dpo.train(cfg)
    monkeypatch.undo()
    assert json.load(open(work / "dpo_gone_at_2" / "state" / "state.json"))["step"] == 2
    shutil.rmtree(work / "dpo_gone_at_2" / "checkpoints" / "step-2")
    capsys.readouterr()
    result = train_dpo.train(cfg)
    out = capsys.readouterr().out
    assert "note: the checkpoint of step 2 is gone: not resuming from" in out and "resumed from" not in out
    assert [s for s, _ in result["checkpoints"]] == [2, 4] and all(os.path.isdir(f) for _, f in result["checkpoints"])


def test_killed_after_the_last_step_the_rerun_returns_that_steps_metrics(work, capsys):
    """Killed after the last step's state was saved (before or while the model
    is written out): the rerun has no step left to run, says so, and still
    returns the last step's loss and DPO metrics, as the uninterrupted run does
    (they go into the loop's records), whatever line of metrics.jsonl the kill
    cut short."""
    for trainer, config in ((train_sft, sft_config), (train_dpo, dpo_config)):
        name = trainer.__name__
        cfg = config(work, work / f"{name}_whole", max_steps=2, save_interval=1)
        whole = trainer.train(cfg)
        cfg = {**cfg, "out_dir": str(work / f"{name}_killed")}
        cmd = [sys.executable, f"{name}.py", *cli_args({**cfg, "crash_after_step": 2}),
               f"--threads={torch.get_num_threads()}"]  # the same thread count: the same sums
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 3, r.stderr[-2000:]
        assert not (work / f"{name}_killed" / "model").exists()
        metrics = work / f"{name}_killed" / "metrics.jsonl"
        good = metrics.read_text()
        metrics.write_text("not json\n" + good)  # a damaged whole line: named, with what to do
        with pytest.raises(ValueError, match=r"metrics.jsonl:1: not a metrics record .*remove the line to resume"):
            trainer.train(cfg)
        metrics.write_text(good + '{"step": 3, "lo')  # a line a kill cut short (it stopped every resume, naming
        capsys.readouterr()
        rerun = trainer.train(cfg)  # no file): the resume drops it
        assert "at step 2, the last: the model is saved again from it" in capsys.readouterr().out, name
        assert rerun["loss"] == pytest.approx(whole["loss"], rel=1e-6) and not math.isnan(rerun["loss"]), name
        timing = {"model", "tokens_per_s", "mfu"}  # where it was written, and how fast it ran
        assert set(rerun) == set(whole), name
        figures = [k for k, v in whole.items() if k not in timing and v is not None]  # (no eval set: None)
        assert [rerun[k] for k in figures] == pytest.approx([whole[k] for k in figures], rel=1e-6), name


# -----------------------------------------------------------------------------
# bf16 compute on the CPU: one process autocasts, FSDP casts the gathered
# weights (MixedPrecisionPolicy); both keep fp32 master weights, norms and
# losses. bf16 keeps 8 significant bits (rounding ~2e-3 of a value), but a
# loss is a mean over hundreds of tokens whose rounding errors mostly cancel:
# on this model four steps agree with fp32 to ~3e-5 relative. BF16_TOL is 1e-3.
# (Weights are not compared: AdamW moves each by about lr a step whatever the
# gradient's size, so rounding that flips a tiny gradient's sign moves a weight
# by 2 lr, in fp32 as in bf16.)
BF16_TOL = 1e-3


def test_bf16_cpu_training_is_close_to_fp32(work, sft_single):
    out = work / "sft_bf16"
    train_sft.train(sft_config(work, out, dtype="bfloat16"))
    assert losses(out) == pytest.approx(losses(sft_single), rel=BF16_TOL)
    assert losses(out) != losses(sft_single)  # bf16 really ran
    assert load_model(str(out / "model")).tok_embeddings.weight.dtype == torch.float32  # fp32 master weights


@pytest.fixture(scope="module")
def sft_single_bf16(work):
    out = work / "sft_single_bf16"
    train_sft.train(sft_config(work, out, dtype="bfloat16"))
    return out


def test_fsdp_bf16_matches_single_process_bf16(work, sft_single_bf16, sft_single):
    """The FSDP path with bf16 compute (as on GPUs): the ranks' bf16 casts are
    made differently from one process's autocast, so they agree to bf16's
    tolerance, not to fp32 rounding."""
    out = work / "sft_fsdp_bf16"
    torchrun("train_sft.py", sft_config(work, out, dtype="bfloat16"))
    assert losses(out) == pytest.approx(losses(sft_single_bf16), rel=BF16_TOL)
    assert losses(out) != losses(sft_single_bf16)  # FSDP's own casts really ran
    assert losses(out) != pytest.approx(losses(sft_single), rel=L_TOL)  # ... in bf16, not fp32 (which agrees to L_TOL)
    assert load_model(str(out / "model")).tok_embeddings.weight.dtype == torch.float32


# -----------------------------------------------------------------------------
# Streaming into shards and out again; the memory plan

def test_streaming_load_into_shards_and_save(work, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", "tests/fsdp_load_check.py",
                        str(work / "ckpt"), str(tmp_path / "saved")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "FSDP_LOAD_OK" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]


@pytest.mark.parametrize("layout", ["fsdp", "tensor parallel"])
def test_sliced_reader_with_uneven_shards(work, monkeypatch, layout):
    """Pretend to be each of 3 ranks (rows split 22/22/20 for a 64-row wq, so
    shards cut through heads, whose rows HF stores permuted): the slices read
    concatenate to exactly the plain load. FSDP2 splits every tensor by rows;
    tensor parallel splits the row-wise layers (wo, w2) by columns."""
    plain = load_model(str(work / "ckpt"))
    names = {id(p): n for n, p in plain.named_parameters()}
    by_columns = lambda name: layout == "tensor parallel" and name.endswith(("wo.weight", "w2.weight"))
    parts = {n: [] for n in plain.state_dict()}
    import checkpoint
    read, real_open = [], checkpoint.open_safetensors

    class Counted:  # the open file, or a stored tensor's slice: counts the elements read
        def __init__(self, x):
            self.x = x
        def __enter__(self):
            return Counted(self.x.__enter__())
        def __exit__(self, *exc):
            return self.x.__exit__(*exc)
        def __getattr__(self, name):  # keys, get_shape
            return getattr(self.x, name)
        def get_slice(self, name):
            return Counted(self.x.get_slice(name))
        def __getitem__(self, key):
            read.append(self.x[key].numel())
            return self.x[key]
    monkeypatch.setattr(checkpoint, "open_safetensors", lambda file: Counted(real_open(file)))
    for rank in range(3):
        def local_slice(p, rank=rank):
            dim = 1 if by_columns(names[id(p)]) else 0
            size = -(-p.shape[dim] // 3)
            start = min(rank * size, p.shape[dim])
            return dim, start, min(start + size, p.shape[dim])
        monkeypatch.setattr(D, "local_slice", local_slice)
        for name, t in read_tensors(str(work / "ckpt"), plain):
            parts[name].append(t)
    for name, full in plain.state_dict().items():
        assert torch.equal(torch.cat(parts[name], dim=1 if by_columns(name) else 0), full), name
    # each rank read only its part from the file (whole heads of wq, wk: a little more), not whole tensors
    assert sum(read) < 1.5 * plain.num_params(), (sum(read), plain.num_params())


FAKE_RANK = """
import sys
import torch
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore
import distributed as D
import model as M
rank, world = int(sys.argv[1]), int(sys.argv[2])
dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)  # collectives do nothing
env = D.Env(rank=rank, world=world, mesh=D.init_device_mesh("cpu", (world,)))
with torch.device("meta"):
    model = M.Transformer(M.preset("toy-tiny", vocab_size=1001))
D.shard(model, env)
for name, p in model.named_parameters():
    dim, start, end = D.local_slice(p)
    print(name, p.shape[dim], start, end, p.to_local().shape[dim])
print("rank0_answer", D.rank0_answer(env, True), D.rank0_answer(env, False))
"""


def test_local_slice_is_the_shard_fsdp_holds_on_the_last_of_three_ranks():
    """The real D.local_slice (the test above stands in its own formula) on
    FSDP2's DTensors, in a process posing as rank 2 of 3 (torch's fake
    process group): every parameter's slice is as long as the shard torch
    keeps there (64 rows: 22, 22, then 20 from row 44; a vocabulary of 1001:
    334, 334, then 333), never past the end. And rank0_answer gives rank 0's
    answer, not this rank's own (no collective runs here: rank 0's is 0)."""
    r = subprocess.run([sys.executable, "-c", FAKE_RANK, "2", "3"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    *rows, answers = [line.split() for line in r.stdout.splitlines()]
    for name, n, start, end, held in rows:
        size = -(-int(n) // 3)
        assert (int(start), int(end)) == (min(2 * size, int(n)), int(n)) and int(end) - int(start) == int(held), name
    assert {name: (start, end) for name, n, start, end, held in rows if name in (
        "layers.0.attention.wq.weight", "tok_embeddings.weight")} == {
        "layers.0.attention.wq.weight": ("44", "64"), "tok_embeddings.weight": ("668", "1001")}
    assert answers == ["rank0_answer", "False", "False"]


def test_single_process_streaming_save_in_bf16(work, tmp_path):
    model = load_model(str(work / "ckpt"))
    plain = model.state_dict()
    save_model(model, str(tmp_path / "one"), dtype=torch.bfloat16)
    again = load_model(str(tmp_path / "one"))
    from safetensors import safe_open
    with safe_open(str(tmp_path / "one" / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert all(torch.equal(p, plain[n].bfloat16().float()) for n, p in again.named_parameters())


def test_memory_plan_counts_saved_activations(monkeypatch):
    """The plan's activation formula against what autograd really saves for a
    bf16 forward of this model (dropout 0, no checkpointing), with SDPA's
    attention as on a GPU (a CPU's bf16 attention also keeps T x T weights)."""
    monkeypatch.setattr("model.CPU_MATMUL_ATTENTION_MAX_LEN", 0)
    args = preset("toy", dropout=0.0, n_layers=2)
    torch.manual_seed(0)
    model = Transformer(args).to(torch.bfloat16).train()
    B, T = 2, 64
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(torch.randint(0, args.vocab_size, (B, T)))
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), torch.zeros(B * T, dtype=torch.long))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    measured = sum(n for k, n in saved.items() if k not in weights)
    plan = memory_plan(args, 1, B, T)
    # saved in forward: the activations row + the fp32 log-softmax (4 bytes x V per token)
    predicted = plan["rows"]["activations"] + B * T * args.vocab_size * 4
    assert predicted == pytest.approx(measured, rel=0.02)


def test_memory_plan_70b(capsys):
    plan = train_sft.train({"plan_only": True, "model": "llama2-70b", "world_size": 64,
                            "micro_batch_size": 1, "max_seq_len": 2048, "activation_checkpointing": True})
    text = capsys.readouterr().out
    assert "68.98B parameters" in text and "needs at least" in text
    assert text.startswith("planned for the preset 'llama2-70b'\n")  # no init_from folder: the preset, said so
    assert plan["rows"]["AdamW m and v (fp32 shard)"] == pytest.approx(8 * plan["params"] / 64)
    # by hand, from the plan's docstring, for 70B (dim 8192, 80 layers, 8 KV heads of 128, FFN 28672,
    # vocab 32000), bf16 on a GPU (2 bytes), 2048 tokens a micro-batch, dropout 0.1:
    # a block's parameters: 2 norms 2*8192 + wq, wo 2*8192^2 + wk, wv 2*8192*1024 + 3*8192*28672 = 855,654,400;
    # the root's: embedding and output 2*32000*8192 + the final norm 8192 = 524,296,192;
    # in flight: 2 blocks in bf16 + one block's fp32 gradient + the root in bf16 = 8 * block + 2 * root
    assert plan["rows"]["unsharded params/grads in flight"] == 8 * 855_654_400 + 2 * 524_296_192
    # checkpointed, per token: every layer's input 80*2*8192, one layer's full set while it is
    # recomputed (20*8192 + 4*1024 + 8*28672 + 4*64 + 8 + 2*8192 dropout masks = 413,960) and the
    # final norm, token ids and rotary cos/sin (8*8192 + 8 + 8 + 8*128 = 66,576)
    assert plan["rows"]["activations (checkpointed)"] == 2048 * (80 * 2 * 8192 + 413_960 + 66_576)
    assert plan["rows"]["logits and their fp32 loss"] == 2048 * 32000 * (2 + 4 + 4)  # bf16, log-softmax, its grad
    assert plan["total"] == pytest.approx(29.46e9, rel=1e-3) and "needs at least 20 GPUs" in text
    assert "needs at least 20 GPUs (3 nodes of 8)" in text  # 20 / 8 rounded up: 2 nodes hold only 16


def test_memory_plans_count_the_parameters_a_model_has():
    """Both plans count parameters from the shapes (they build no model): as
    many as the model has, tied (one embedding matrix) or not."""
    for name in ("llama2-7b", "llama3.2-1b", "smollm2-135m", "toy"):
        with torch.device("meta"):
            model = Transformer(preset(name))
        assert preset(name).n_params() == model.num_params(), name
        assert memory_plan(model.args, 8, 1, 64)["params"] == model.num_params(), name
    assert preset("smollm2-135m").n_params() == 134_515_008  # its config.json: tie_word_embeddings


def test_activation_checkpointing_gives_the_same_training(work, sft_single, monkeypatch):
    """Every block of every training forward is checkpointed (recomputed in
    backward), and the training is the same as without."""
    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **kw: calls.append(1) or checkpoint(*a, **kw))
    out = work / "sft_ac"
    train_sft.train(sft_config(work, out, activation_checkpointing=True))
    assert len(calls) == 4 * (8 // 2) * 2  # steps x micro-batches a step x toy-tiny's blocks
    train_sft.train(sft_config(work, work / "sft_no_ac"))
    assert len(calls) == 32  # off: none
    assert losses(out) == pytest.approx(losses(sft_single), rel=1e-6)
    assert max_weight_diff(out / "model", sft_single / "model") < 1e-6


# -----------------------------------------------------------------------------
# Tied embeddings and conversations

def test_conversation_records_learn_every_assistant_turn(toy_tokenizer_path, tmp_path):
    tok = Tokenizer(toy_tokenizer_path)
    conv = {"messages": [{"role": "system", "content": "answer briefly"},
                         {"role": "user", "content": "reverse fox dog"}, {"role": "assistant", "content": "dog fox"},
                         {"role": "user", "content": "and the fox"}, {"role": "assistant", "content": "fox the"}]}
    plain = {"prompt": "reverse fox", "response": "fox"}
    (ids, spans), (ids2, spans2) = train_sft.tokenize(tok, [conv, plain], 512, "data.jsonl")
    # the earlier reply as Meta writes it, "{reply} </s>"; the last one ends at </s>
    assert [tok.decode(ids[s:e - 1]) for s, e in spans] == ["dog fox ", "fox the"]
    assert all(ids[e - 1] == tok.eos_id for _, e in spans)
    assert spans2 == [(chat_tokens(tok, "reverse fox", "fox")[1], len(ids2))]
    tokens, targets = train_sft.collate([(ids, spans), (ids2, spans2)], tok.eos_id)
    learned = targets[0][targets[0] != -100].tolist()  # exactly the two replies with their EOS
    assert learned == ids[spans[0][0]:spans[0][1]] + ids[spans[1][0]:spans[1][1]]
    assert targets[1][targets[1] != -100].tolist() == ids2[spans2[0][0]:]
    # bad records are refused before any work, each by its file and line (validate.sft_record)
    assistant_first = {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "hi"}]}
    for bad, why in [({"messages": [{"role": "user", "content": "hi"}]}, "nothing to learn"),
                     ({"messages": [{"role": "robot", "content": "hi"}]}, "a conversation alternates"),
                     (assistant_first, "starting with the user"),
                     ({"prompt": "hi"}, "needs string fields prompt and response, or a messages list"),
                     ({"prompt": " ", "response": "\n"}, "empty prompt and response"),
                     ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "hi"}]},
                      "the content of message 1 (of 2) is not a string")]:
        assert why in validate.sft_record(bad)
    assert validate.dpo_pair({"prompt": "p", "chosen": "same", "rejected": " same\n"}) == \
        "chosen and rejected are the same text: a pair with no preference"
    # an empty chosen answer would teach silence, an empty prompt asks nothing; an empty rejected one is a lesson
    assert validate.dpo_pair({"prompt": "p", "chosen": " ", "rejected": "no"}) == "empty chosen"
    assert validate.dpo_pair({"prompt": "", "chosen": "yes", "rejected": "no"}) == "empty prompt"
    assert validate.dpo_pair({"prompt": "p", "chosen": "yes", "rejected": ""}) is None
    assert validate.eft_group({"prompt": "p", "responses": ["x", " "], "ranks": [0, 1]}) == \
        "an empty response: a group ranks 2 or more texts"
    import configurator
    (tmp_path / "bad_conv.jsonl").write_text(json.dumps(plain) + "\n\n" + json.dumps(assistant_first) + "\n")
    c = configurator.settings(train_sft.DEFAULTS, {"init_from": "scratch", "model": "toy-tiny",
                                                   "tokenizer": toy_tokenizer_path,
                                                   "data": str(tmp_path / "bad_conv.jsonl")})
    with pytest.raises(validate.BadInput, match="bad_conv.jsonl:3: a conversation alternates"):
        validate.check_training(c, 1, [], "train_sft.py", validate.sft_record)


def test_tied_embeddings_under_fsdp(work, tmp_path, toy_tokenizer_path):
    """A tied model (one Parameter for input and output, head_dim apart from
    dim / n_heads) streamed into FSDP2 shards and saved; then SFT on
    conversations under torchrun equals one process."""
    tok = Tokenizer(toy_tokenizer_path)
    torch.manual_seed(3)
    model = Transformer(preset("toy-tiny", vocab_size=tok.vocab_size, max_seq_len=128, tie_embeddings=True,
                               head_dim=24))
    save_model(model, str(tmp_path / "tied"), tokenizer_path=toy_tokenizer_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", "tests/fsdp_load_check.py",
                        str(tmp_path / "tied"), str(tmp_path / "saved")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "FSDP_LOAD_OK" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]

    records = [json.loads(line) for line in open(work / "sft.jsonl")]
    with open(tmp_path / "chats.jsonl", "w") as f:
        for a, b in zip(records[::2], records[1::2]):
            f.write(json.dumps({"messages": [{"role": "user", "content": a["prompt"]},
                                             {"role": "assistant", "content": a["response"]},
                                             {"role": "user", "content": b["prompt"]},
                                             {"role": "assistant", "content": b["response"]}]}) + "\n")
    cfg = dict(init_from=str(tmp_path / "tied"), data=str(tmp_path / "chats.jsonl"), batch_size=4)
    train_sft.train(sft_config(work, tmp_path / "single", **cfg))
    torchrun("train_sft.py", sft_config(work, tmp_path / "fsdp", **cfg))
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "single"), rel=L_TOL)
    assert max_weight_diff(tmp_path / "fsdp" / "model", tmp_path / "single" / "model") < W_TOL
    trained = load_model(tmp_path / "single" / "model")
    assert trained.args.tie_embeddings and trained.output is None
    assert (trained.tok_embeddings.weight - model.tok_embeddings.weight).abs().max() > 1e-4


def test_auto_dtype_is_bf16_only_where_it_pays():
    """'auto': bf16 on a GPU whatever the size; on a CPU only with bf16 matrix
    units and for models at least 256 wide (toy-small, 128, runs faster in fp32)."""
    assert D.compute_dtype("cuda:0", "auto", width=64) == torch.bfloat16
    with pytest.MonkeyPatch.context() as mp:  # a CPU with fast bf16 matmuls, whatever this one has
        mp.setattr(D, "cpu_has_bf16", lambda: True)
        assert D.compute_dtype("cpu", "auto", width=128) == torch.float32
        assert D.compute_dtype("cpu", "auto", width=256) == torch.bfloat16 == D.compute_dtype("cpu", "auto")
        mp.setattr(D, "cpu_has_bf16", lambda: False)  # and one without
        assert D.compute_dtype("cpu", "auto", width=4096) == torch.float32 == D.compute_dtype("cpu", "auto")
    assert D.compute_dtype("cpu", "bfloat16", width=64) == torch.bfloat16  # a setting forces it
    assert D.compute_dtype("cuda", "float32") == torch.float32


def test_cpu_bf16_units_are_read_from_cpuinfo(monkeypatch):
    import builtins, io
    real_open = builtins.open
    # AVX512-BF16 without AMX: on Intel, bf16 matmuls slower than fp32; on AMD (Zen 4), 2.2x fp32
    # (measured; cpu_has_bf16's docstring)
    intel_avx512_bf16 = "vendor_id\t: GenuineIntel\nflags\t: fpu avx512f avx512_bf16"
    for cpuinfo, has in (("vendor_id\t: AuthenticAMD\nflags\t: fpu avx2", False),
                         ("vendor_id\t: GenuineIntel\nflags\t: fpu avx2 avx512f", False),
                         (intel_avx512_bf16, False),
                         ("vendor_id\t: AuthenticAMD\nflags\t: fpu avx512f avx512_bf16", True),
                         ("vendor_id\t: GenuineIntel\nflags\t: fpu avx512_bf16 amx_bf16 amx_tile", True),
                         ("Features\t: fp asimd bf16", True)):
        monkeypatch.setattr(builtins, "open", lambda path, *a, **kw: io.StringIO(cpuinfo + "\n")
                            if path == "/proc/cpuinfo" else real_open(path, *a, **kw))
        assert D.cpu_has_bf16() == has, cpuinfo
        # the run's first line says so, and names the flag a user may know where it is not enough
        line = D.describe(D.Env(dtype=torch.bfloat16))
        assert ("(CPU has fast bf16 matmuls)" in line) == has, line
        assert ("AVX512-BF16 but no AMX" in line) == (cpuinfo == intel_avx512_bf16), line
        # ... and why it computes in fp32 all the same (the toy-small default is too narrow to gain)
        line = D.describe(D.Env(dtype=torch.float32))
        assert ("(CPU has fast bf16 matmuls; float32 for a model narrower than 256, or as set)" in line) == has


def test_training_from_scratch_takes_a_tokenizer_folder(work, toy_tokenizer_path, tmp_path):
    """tokenizer: a tokenizer.model, a tokenizer.json or a folder with one (as the setting says)."""
    import configurator
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(toy_tokenizer_path, folder / "tokenizer.model")
    settings = {"init_from": "scratch", "model": "toy-tiny", "data": str(work / "sft.jsonl"),
                "out_dir": str(tmp_path / "out")}
    # a tokenizer.json (transformers' conversion of the same SentencePiece model), alone in its folder
    from transformers import AutoTokenizer
    json_folder = tmp_path / "tok_json"
    AutoTokenizer.from_pretrained(folder).save_pretrained(json_folder)
    (json_folder / "tokenizer.model").unlink(missing_ok=True)
    assert Tokenizer(json_folder).model_path == str(json_folder / "tokenizer.json")
    for given in (folder, folder / "tokenizer.model", json_folder, json_folder / "tokenizer.json"):
        c = configurator.settings(train_sft.DEFAULTS, {**settings, "tokenizer": str(given)})
        validate.check_training(c, 1, [], "train_sft.py")  # accepted: no BadInput
    c = configurator.settings(train_sft.DEFAULTS, {**settings, "tokenizer": str(tmp_path / "nope")})
    with pytest.raises(validate.BadInput, match="tokenizer = .*nope': no such file or folder"):
        validate.check_training(c, 1, [], "train_sft.py")


def test_usable_cores_are_the_ones_this_process_may_run_on(monkeypatch):
    """Under taskset or a container's CPU limit, the affinity mask, not the
    machine's count: threads=0 then uses those cores (1 here of 8)."""
    for k in ("LOCAL_WORLD_SIZE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert D.usable_cores() == 1 and D.cpu_threads(0) == 1
    monkeypatch.delattr(os, "sched_getaffinity")  # (macOS, Windows: no affinity to read)
    assert D.usable_cores() == 8


def test_default_threads_share_the_cores_among_the_ranks_on_the_machine(monkeypatch):
    """threads=0: the usable cores over the ranks here; OMP_NUM_THREADS wins,
    but not torchrun's own 1 (it sets that when it starts several ranks and the
    variable is unset); a thread setting wins over both."""
    monkeypatch.setattr(D, "usable_cores", lambda: 16)
    for env, setting, threads in [({}, 0, 16), ({"LOCAL_WORLD_SIZE": "2"}, 0, 8),
                                  ({"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}, 0, 8),  # torchrun's default
                                  ({"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "3"}, 0, 3),
                                  ({"OMP_NUM_THREADS": "1"}, 0, 1), ({"LOCAL_WORLD_SIZE": "32"}, 0, 1),
                                  ({"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}, 1, 1)]:
        for k in ("LOCAL_WORLD_SIZE", "OMP_NUM_THREADS"):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert D.cpu_threads(setting) == threads, (env, setting)


def test_the_start_line_warns_of_busy_cores_only_where_fewer_threads_would_help(monkeypatch):
    """Other programs' busy cores plus this job's threads (every rank's on this
    machine) beyond the cores: a warning that suggests fewer threads, but
    never to a run that already uses one thread a rank."""
    monkeypatch.setattr(D, "usable_cores", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    threads = torch.get_num_threads()
    try:
        for n, busy, ranks, warned in [(2, 1.5, 1, True), (2, 0.4, 1, False), (1, 4.0, 2, False), (1, 4.0, 1, False),
                                       (2, 1.0, 2, True), (2, None, 1, False)]:
            torch.set_num_threads(n)
            monkeypatch.setattr(D, "others_busy_cores", lambda: busy)
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
            line = D.describe(D.Env())
            assert ("fewer threads (--threads) run much faster" in line) == warned, (n, busy, ranks, line)
    finally:
        torch.set_num_threads(threads)


def test_busy_cores_are_read_from_two_samples_of_proc_stat(monkeypatch):
    """Hand-computed: over the window core 0 spent 100 ticks, 25 of them idle
    or waiting on disk; core 1 100, all idle; core 2, busy, is not among this
    process's cores (its affinity): 0.75 + 0 = 0.75 busy cores."""
    samples = iter(["cpu  9 9 9 9 9 9 9 9 0 0\n"
                    "cpu0 100 0 50 200 10 0 0 0 0 0\ncpu1 10 0 10 500 0 0 0 0 0 0\ncpu2 0 0 0 0 0 0 0 0 0 0\n",
                    "cpu  0 0 0 0 0 0 0 0 0 0\n"  # (the all-cores line is not read)
                    "cpu0 160 0 60 215 20 0 5 0 7 0\ncpu1 10 0 10 600 0 0 0 0 0 0\ncpu2 900 0 0 0 0 0 0 0 0 0\n"])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os.path, "exists", lambda path: True)  # (/proc/stat: the samples below, on any system)
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: io.StringIO(next(samples)))
    monkeypatch.setattr(D.time, "sleep", lambda s: None)
    # core 0: 60 user + 10 system + 15 idle + 10 iowait + 5 softirq = 100 ticks (guest, column 9, is in user)
    assert D.others_busy_cores() == pytest.approx(0.75)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat (Linux)")
def test_a_program_spinning_on_a_core_counts_as_one_busy_core():
    """A real one: a child process that spins keeps about one core busy,
    which the load average would show only a minute later."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # (started)
        assert D.others_busy_cores(window=0.5) >= 0.85
    finally:
        spinner.kill()
        spinner.wait()


def test_a_state_left_behind_by_a_kill_does_not_stop_the_next_save(tmp_path):
    """Killed after the new state was renamed into place but before the old one
    was deleted: state/ and state.old/ both exist. The next save replaces
    state/ (a rename onto a folder that is not empty would fail every save)."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = str(tmp_path / "state")
    T.save_state(model, optimizer, 1, path, {"made_from": "x"})
    shutil.copytree(path, path + ".old")  # what the kill left
    T.save_state(model, optimizer, 2, path, {"made_from": "x"})
    assert json.load(open(os.path.join(path, "state.json")))["step"] == 2 and not os.path.exists(path + ".old")
    assert T.load_state(model, optimizer, path, "x")[0] == 2


def test_a_kill_between_the_two_renames_resumes_from_state_old(tmp_path, monkeypatch):
    """Killed after state/ was renamed to state.old/ and before state.tmp/
    took its place: state.old/ is the last complete state, and is resumed."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = str(tmp_path / "state")
    T.save_state(model, optimizer, 2, path, {"made_from": "x"})

    class Killed(BaseException):
        pass
    rename = os.replace

    def killed_at_the_second_rename(src, dst):
        if str(src).endswith(".tmp"):
            raise Killed
        rename(src, dst)
    monkeypatch.setattr(os, "replace", killed_at_the_second_rename)
    with pytest.raises(Killed):
        T.save_state(model, optimizer, 3, path, {"made_from": "x"})  # state/ moved aside, then the kill
    monkeypatch.undo()
    assert not os.path.exists(path) and os.path.exists(path + ".tmp")
    assert T.saved_state(path) == (path + ".old", {"step": 2, "made_from": "x"})
    assert T.load_state(model, optimizer, path, "x") == (2, {"step": 2, "made_from": "x"})
    # killed one moment later, after the new state took its place and before state.old/ was removed: the new
    # one is resumed (the old would redo a step)
    T.save_state(model, optimizer, 3, path, {"made_from": "x"})
    T.save_state(model, optimizer, 2, str(tmp_path / "older"), {"made_from": "x"})
    os.replace(tmp_path / "older", path + ".old")  # state/ at step 3, state.old/ at step 2 not yet removed
    assert T.saved_state(path)[0] == path and T.load_state(model, optimizer, path, "x")[0] == 3
    # the step that counts is the one inside the state (state.json's is for people)
    with open(os.path.join(path, "state.json"), "w") as f:
        json.dump({"step": 99, "made_from": "x"}, f)
    assert T.load_state(model, optimizer, path, "x")[0] == 3


def test_the_last_step_saves_the_state_whatever_the_save_interval(tmp_path):
    """3 steps saved every 2: steps 1 and 3 are not multiples of 2, but the
    last step's state is saved (keep_state keeps it; a kill before the model
    is written resumes it)."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    c = types.SimpleNamespace(out_dir=str(tmp_path), save_interval=2, crash_after_step=-1)
    T.end_step(model, optimizer, 1, 3, c, {"made_from": "x"})
    assert not os.path.exists(T.state_dir(c))
    T.end_step(model, optimizer, 3, 3, c, {"made_from": "x"})
    assert T.saved_state(T.state_dir(c))[1]["step"] == 3


def test_resume_keeps_the_metrics_before_the_state_and_not_its_evaluation(tmp_path):
    """metrics.jsonl after a resume from the state of step 2 reads as one run:
    lines up to step 2 kept, except an evaluation at step 2 (the resumed loop
    evaluates there first, and would write it twice); later ones dropped."""
    import types
    model = torch.nn.Linear(2, 2)
    c = types.SimpleNamespace(out_dir=str(tmp_path), lr=0.1, beta1=0.9, beta2=0.95, weight_decay=0.0)
    T.save_state(model, torch.optim.AdamW(model.parameters(), lr=0.1), 2, T.state_dir(c), {"made_from": "x"})
    lines = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_loss": 2.5},
             {"step": 2, "eval/loss": 0.6}, {"step": 3, "loss": 1.0}]
    with open(T.metrics_path(c), "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in lines)
    _, step, _ = T.optimizer_and_resume(model, c, "x", 4)
    assert step == 2 and read_jsonl(T.metrics_path(c)) == lines[:2]


def test_a_saved_state_is_made_from_the_files_beside_its_tokenizer(tmp_path, toy_tokenizer_path):
    """--tokenizer names a file: the files beside it that set its special tokens
    and chat template (tokenizer_config.json, ...) are part of what a training
    state was made from, so editing one does not resume a state made before."""
    import configurator
    tok = tmp_path / "tok" / "tokenizer.model"
    tok.parent.mkdir()
    shutil.copy(toy_tokenizer_path, tok)
    c = configurator.settings(train_sft.DEFAULTS, {"init_from": "scratch", "tokenizer": str(tok), "data": str(tok)})
    fp = lambda: T.made_from(*T.training_inputs(c, str(tok)), torch.float32)
    before = fp()
    (tok.parent / "tokenizer_config.json").write_text('{"eos_token": "</s>"}')
    assert fp() != before
    before = fp()
    (tok.parent / "config.json").write_text('{"eos_token_id": 2}')  # (its EOS ids end a turn too)
    assert fp() != before


def test_clip_and_step_scales_the_gradient_to_the_clip_norm():
    """A gradient of norm 5 clipped to 1 is the same direction at norm 1 (what
    SGD at lr 1 then subtracts); grad_clip=0 leaves it whole. Returns the norm
    before clipping, which the trainers log."""
    for grad_clip, step in ((1.0, [0.6, 0.8, 0.0]), (0.0, [3.0, 4.0, 0.0])):
        layer = torch.nn.Linear(3, 1, bias=False)
        torch.nn.init.zeros_(layer.weight)
        layer.weight.grad = torch.tensor([[3.0, 4.0, 0.0]])
        norm = T.clip_and_step(layer, torch.optim.SGD(layer.parameters(), lr=1.0), grad_clip)
        assert norm.item() == pytest.approx(5.0)
        assert layer.weight.detach().flatten().tolist() == pytest.approx([-x for x in step])
        assert layer.weight.grad is None


def test_teardown_collects_a_models_cycles_even_when_the_group_stays():
    """A trainer inside the loop (which owns the process group) still frees
    its model when it ends: FSDP2 modules sit in reference cycles, which only
    the cycle collector frees, and the next stage's plan counts that memory
    as free. (Automatic collection is off here, as between its thresholds.)"""
    import gc
    import weakref
    module = torch.nn.Linear(2, 2)
    module.me = [module]  # a reference cycle, as FSDP2's hooks make
    alive = weakref.ref(module)
    gc.disable()
    try:
        del module
        assert alive() is not None
        D.teardown(D.Env(mesh="a mesh"))  # a sharded run's env; owns_group False: the loop's group stays
        assert alive() is None
    finally:
        gc.enable()


def test_each_rank_trains_on_its_own_part_of_the_global_batch():
    """step_batch: the same global batch on every rank, cut into disjoint parts
    that together are that batch (FSDP = one process holds even if every rank
    ran the whole batch: SFT's normaliser is summed over ranks)."""
    c = types.SimpleNamespace(batch_size=8, seed=0)
    for world in (1, 2, 4):
        parts = [T.step_batch(list(range(20)), 3, c, D.Env(rank=r, world=world)) for r in range(world)]
        batch = parts[0][0]
        assert len(batch) == 8 and all(b == batch for b, _ in parts)
        assert [x for _, mine in parts for x in mine] == batch


def test_split_even_gives_short_ranks_weight_zero_fillers():
    """Five eval items on two ranks: rank 1 runs a third pass on items[0]
    with weight 0, so both ranks run as many passes and the weighted sums over
    ranks count each item once."""
    items = ["a", "b", "c", "d", "e"]
    assert T.split_even(items, 0, 2) == [("a", 1), ("c", 1), ("e", 1)]
    assert T.split_even(items, 1, 2) == [("b", 1), ("d", 1), ("a", 0)]
    assert T.split_even(items, 0, 1) == [(x, 1) for x in items]


def test_a_training_state_is_made_from_its_files_contents(tmp_path):
    """made_from fingerprints the data, tokenizer and starting weights by
    their contents, and the settings with the dtype computed in: a data file
    edited in place is another run's data, and its saved state is not
    resumed."""
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.model").write_bytes(b"pieces")
    data, weights = tmp_path / "train.jsonl", tmp_path / "M0"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"w")
    c = types.SimpleNamespace(data=str(data), eval_data="", init_from=str(weights), lr=1e-5, dtype="auto")
    tok = str(tmp_path / "tok" / "tokenizer.model")
    fp = lambda c, dtype=torch.float32: T.made_from(*T.training_inputs(c, tok), dtype)
    before = fp(c)
    assert fp(c) == before
    data.write_text('{"prompt": "a", "response": "c"}\n')
    assert fp(c) != before
    after_data = fp(c)
    (tmp_path / "tok" / "tokenizer.model").write_bytes(b"other pieces")
    assert fp(c) != after_data
    after_tok = fp(c)
    (weights / "model.safetensors").write_bytes(b"v")
    assert fp(c) != after_tok
    held = tmp_path / "eval.jsonl"  # a held-out file's contents count too
    held.write_text('{"prompt": "x", "response": "y"}\n')
    with_eval = types.SimpleNamespace(**{**vars(c), "eval_data": str(held)})
    before = fp(with_eval)
    held.write_text('{"prompt": "x", "response": "z"}\n')
    assert fp(with_eval) != before
    # by contents, not by path: the same data copied elsewhere is the same run's
    shutil.copy(data, tmp_path / "moved.jsonl")
    assert fp(types.SimpleNamespace(**{**vars(c), "data": str(tmp_path / "moved.jsonl")})) == fp(c)
    assert fp(types.SimpleNamespace(**{**vars(c), "lr": 2e-5})) != fp(c)
    # the dtype computed in counts in place of the setting: 'auto' resolved to bf16 is not 'auto' resolved to fp32
    assert fp(c, torch.bfloat16) != fp(c, torch.float32)
    assert fp(c, torch.float32) == fp(types.SimpleNamespace(**{**vars(c), "dtype": "float32"}), torch.float32)


def test_each_rank_and_step_draws_its_own_dropout_masks():
    """begin_step seeds the RNG from (seed, step, rank): ranks draw different
    masks (identical masks on every rank would shrink dropout's effect), and a
    resumed run draws again exactly what the uninterrupted one drew."""
    c = types.SimpleNamespace(seed=1337, warmup_steps=0, lr=1.0, min_lr=0.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    def draw(step, rank):
        T.begin_step(optimizer, step, 10, c, types.SimpleNamespace(rank=rank))
        return torch.rand(8)
    assert torch.equal(draw(3, 0), draw(3, 0))
    assert not torch.equal(draw(3, 0), draw(3, 1))
    assert not torch.equal(draw(3, 0), draw(4, 0))
    assert not torch.equal(draw(3, 1009), draw(4, 0))  # a large job: rank 1009 is not rank 0 a step later


def test_trainers_refuse_an_unreadable_tokenizer_a_bad_save_dtype_or_out_dir_and_dpo_from_scratch(work, tmp_path):
    """Found before any work, each by its setting: a tokenizer file that does
    not parse (it failed with the library's traceback), a save_dtype torch
    does not have (it failed after training, when saving), and DPO from
    scratch (a raw AttributeError)."""
    import configurator
    junk = tmp_path / "junk.model"
    junk.write_text("not a SentencePiece model\n")
    c = configurator.settings(train_sft.DEFAULTS, {"init_from": "scratch", "model": "toy-tiny", "tokenizer": str(junk),
                                                   "data": str(work / "sft.jsonl"), "save_dtype": "fp8",
                                                   "out_dir": str(junk), "seed": 10**20, "peak_flops": -1.0})
    with pytest.raises(validate.BadInput) as e:
        validate.check_training(c, 1, [], "train_sft.py")
    assert f"tokenizer = '{junk}': {junk}: cannot read it as a SentencePiece model" in str(e.value)
    assert "save_dtype = 'fp8': must be '' (bfloat16 on a GPU, float32 on a CPU)" in str(e.value)
    assert f"out_dir = '{junk}': {junk} is a file, not a folder" in str(e.value)
    assert "seed = 100000000000000000000: must be in [0, 2**32)" in str(e.value)  # (an overflow after startup)
    assert "peak_flops = -1.0: must be > 0" in str(e.value)
    c = configurator.settings(train_dpo.DEFAULTS, {"init_from": "scratch", "data": str(work / "pairs.jsonl")})
    with pytest.raises(validate.BadInput, match="init_from = 'scratch': 'scratch' is for train_sft.py"):
        validate.check_training(c, 1, [], "train_dpo.py")
    # a checkpoint whose tokenizer file does not parse: named with the checkpoint's setting
    shutil.copytree(work / "ckpt", tmp_path / "ckpt")
    (tmp_path / "ckpt" / "tokenizer.model").write_text("junk\n")
    c = configurator.settings(train_sft.DEFAULTS, {"init_from": str(tmp_path / "ckpt"), "data": str(work / "sft.jsonl")})
    with pytest.raises(validate.BadInput, match="init_from: .*tokenizer.model: cannot read it as a SentencePiece"):
        validate.check_training(c, 1, [], "train_sft.py")
    # weights that do not match the config: found in the safetensors headers, before any model is built
    from safetensors.torch import load_file, save_file
    shutil.copy(work / "ckpt" / "tokenizer.model", tmp_path / "ckpt" / "tokenizer.model")
    weights = load_file(tmp_path / "ckpt" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "model.norm.weight"}, tmp_path / "ckpt" / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(validate.BadInput, match="init_from: .*ckpt: missing tensors: model.norm.weight"):
        validate.check_training(c, 1, [], "train_sft.py")
    save_file(weights, tmp_path / "ckpt" / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "intermediate_size": 2 * config["intermediate_size"]}))
    with pytest.raises(validate.BadInput, match=r"init_from: .*ckpt: tensor layers.0.feed_forward.w1.weight "
                                                r"\(model.layers.0.mlp.gate_proj.weight\) has shape"):
        validate.check_training(c, 1, [], "train_sft.py")
    # starting from the model this run would replace (train_sft.py --init_from=out/sft/model, out_dir's default
    # out/sft): the starting weights were overwritten, and the same command trained again from its own result
    c = configurator.settings(train_sft.DEFAULTS, {"init_from": str(work / "ckpt"), "data": str(work / "sft.jsonl"),
                                                   "out_dir": str(work)})
    validate.check_training(c, 1, [], "train_sft.py")  # (beside: fine)
    shutil.copytree(work / "ckpt", tmp_path / "run" / "model")
    c = configurator.settings(train_dpo.DEFAULTS, {"init_from": str(tmp_path / "run" / "model"),
                                                   "data": str(work / "pairs.jsonl"), "out_dir": str(tmp_path / "run")})
    with pytest.raises(validate.BadInput, match=rf"init_from = '{tmp_path / 'run' / 'model'}': is inside "
                                                rf"{tmp_path / 'run'}'s model/, state/ or checkpoints/"):
        validate.check_training(c, 1, [], "train_dpo.py")
    # out_dir a selfreward.py run folder: the trainer's metrics.jsonl replaced the run's
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "settings.json").write_text("{}")
    c = configurator.settings(train_sft.DEFAULTS, {"init_from": str(work / "ckpt"), "data": str(work / "sft.jsonl"),
                                                   "out_dir": str(tmp_path / "loop")})
    with pytest.raises(validate.BadInput, match=rf"out_dir = '{tmp_path / 'loop'}': is a selfreward.py run folder"):
        validate.check_training(c, 1, [], "train_sft.py")
    # no out_dir at all: said by its name (it failed after setup, at the lock file's open of '')
    c = configurator.settings(train_sft.DEFAULTS, {"init_from": str(work / "ckpt"), "data": str(work / "sft.jsonl"),
                                                   "out_dir": ""})
    with pytest.raises(validate.BadInput, match=r"out_dir = '': give a folder \('.' for this one\)"):
        validate.check_training(c, 1, [], "train_sft.py")


def test_a_bad_eval_data_file_or_a_none_or_a_device_or_dtype_torch_lacks_is_refused_before_any_work(
        work, tmp_path, monkeypatch):
    """eval_data is read at the first evaluation, eval_interval steps in: a
    malformed record there failed after that much training, so it is checked
    with the data, naming its file and line. --lr=None passes the
    configurator (as any None does): named, not a TypeError from the range
    check. A device or dtype that cannot be used is named up front too."""
    import configurator
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    given = {"init_from": str(work / "ckpt"), "data": str(work / "sft.jsonl"), "out_dir": str(tmp_path / "out")}
    c = configurator.settings(train_sft.DEFAULTS, {**given, "eval_data": str(bad)})
    with pytest.raises(validate.BadInput) as e:
        validate.check_training(c, 1, ["prompt", "response"], "train_sft.py")
    assert f"eval_data: {bad}:2: missing or non-string field(s): response" in str(e.value)
    c = configurator.settings(train_sft.DEFAULTS, {**given, "lr": None})
    with pytest.raises(validate.BadInput, match=r"lr = None: give a value like its default"):
        validate.check_training(c, 1, ["prompt", "response"], "train_sft.py")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    c = configurator.settings(train_sft.DEFAULTS, {**given, "device": "cuda", "dtype": "fp16"})
    with pytest.raises(validate.BadInput) as e:
        validate.check_training(c, 1, ["prompt", "response"], "train_sft.py")
    assert "device = 'cuda': CUDA is not available on this machine" in str(e.value)
    assert "dtype = 'fp16': must be 'auto', 'bfloat16' or 'float32'" in str(e.value)
    c = configurator.settings(train_sft.DEFAULTS, {**given, "device": "gpu"})
    with pytest.raises(validate.BadInput, match=r"device = 'gpu': must be '', 'cpu', 'cuda' or 'cuda:N'"):
        validate.check_training(c, 1, ["prompt", "response"], "train_sft.py")
    # on a machine with CUDA: a device torch would refuse only once the run had started, refused before it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for device in ("cuda0", "cuda:", "cuda:x", "cudas"):
        c = configurator.settings(train_sft.DEFAULTS, {**given, "device": device})
        with pytest.raises(validate.BadInput, match=f"device = '{device}': must be '', 'cpu', 'cuda' or 'cuda:N'"):
            validate.check_training(c, 1, ["prompt", "response"], "train_sft.py")
    for device in ("cuda", "cuda:1"):
        p = validate.Problems(configurator.settings(train_sft.DEFAULTS, {**given, "device": device}))
        p.compute()
        assert p.found == [], device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    validate.check_training(configurator.settings(train_sft.DEFAULTS, given), 1, ["prompt", "response"], "train_sft.py")


def test_the_trainers_ranges_at_their_edges(work, tmp_path):
    """check_training, one setting at a time: min_lr may equal lr; an
    infinite grad_clip is not a number to clip at; micro_batch_size 0 is
    named (it once divided by zero first); epochs -1 with max_steps 0 is one
    problem, not two; a blank out_dir names no folder."""
    given = {"init_from": str(work / "ckpt"), "data": str(work / "sft.jsonl"), "out_dir": str(tmp_path / "out")}

    def found(**changed):
        try:
            validate.check_training(configurator.settings(train_sft.DEFAULTS, {**given, **changed}), 1,
                                    ["prompt", "response"], "train_sft.py")
        except validate.BadInput as e:
            return [line.removeprefix("  - ") for line in str(e).splitlines()[1:]]
        return []
    assert found(lr=1e-5, min_lr=1e-5) == []
    assert found(grad_clip=float("inf")) == ["grad_clip = inf: must be a finite number"]
    assert found(micro_batch_size=0) == ["micro_batch_size = 0: must be >= 1"]
    assert found(max_steps=0, epochs=-1) == ["epochs = -1: must be > 0 when max_steps is 0"]
    assert found(out_dir="  ") == ["out_dir = '  ': give a folder ('.' for this one)"]
    assert found(device="cuda:0x") == ["device = 'cuda:0x': must be '', 'cpu', 'cuda' or 'cuda:N'"]


def test_a_warmup_as_long_as_the_run_is_said(capsys):
    c = types.SimpleNamespace(max_steps=0, epochs=1, batch_size=4, warmup_steps=10, lr=1e-5)
    assert T.total_steps(c, 40) == 10
    assert "warning: warmup_steps = 10 is not below this run's 10 steps" in capsys.readouterr().out
    assert T.total_steps(types.SimpleNamespace(**{**vars(c), "warmup_steps": 9}), 40) == 10
    assert "warning" not in capsys.readouterr().out
    assert T.total_steps(types.SimpleNamespace(**{**vars(c), "batch_size": 40, "warmup_steps": 0}), 40) == 1
    assert "warning" not in capsys.readouterr().out  # a batch of all the data repeats nothing
    # a batch larger than the data repeats examples within a step (epochs=1 on 80 examples, batch 100,000:
    # one step, 1,250 passes): said
    assert T.total_steps(types.SimpleNamespace(**{**vars(c), "batch_size": 100_000, "warmup_steps": 0}), 80) == 1
    assert ("warning: batch_size = 100000 is larger than the 80 examples: each step holds each example 1250.0 "
            "times, 1250.0 passes over the data in all") in capsys.readouterr().out


def test_a_trainer_refuses_a_tokenizer_larger_than_its_checkpoints_vocabulary(work, llama_tokenizer_path):
    """Llama 2's 32,000 pieces over a toy checkpoint's small embedding: ids
    without a row, found before any work by the check training.start makes."""
    import configurator
    c = configurator.settings(train_sft.DEFAULTS, {"init_from": str(work / "ckpt"), "data": str(work / "sft.jsonl"),
                                                   "tokenizer": llama_tokenizer_path})
    with pytest.raises(validate.BadInput, match=r"tokenizer = .*: .*ckpt: the model's vocab_size is \d+ but tokenizer "
                                                r".* has 32000 tokens"):
        validate.check_training(c, 1, [], "train_sft.py")


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_ctrl_c_during_a_state_save_stops_once_the_state_is_saved(tmp_path, monkeypatch, signum):
    """torch's checkpoint writer turned a Ctrl-C into a CheckpointException (or
    a zip writer's RuntimeError) with a traceback: now the save finishes, then
    the interrupt is raised, and the state saved is the one to resume from.
    The same for a SIGTERM (a scheduler's preemption), which D.setup takes as
    Ctrl-C: by default it would end the process in silence."""
    import signal
    signum = getattr(signal, signum)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = str(tmp_path / "state")
    save = T.dcp.save

    def interrupted_save(*a, **kw):
        os.kill(os.getpid(), signum)  # Ctrl-C (or a kill) halfway through writing
        return save(*a, **kw)
    monkeypatch.setattr(T.dcp, "save", interrupted_save)
    # (a background job may ignore Ctrl-C; SIGTERM as D.setup sets it)
    before = {s: signal.signal(s, signal.default_int_handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if signum == signal.SIGTERM:
            own = lambda *a: None  # a handler of the user's own is kept
            signal.signal(signal.SIGTERM, own)
            D.sigterm_as_ctrl_c()
            assert signal.getsignal(signal.SIGTERM) is own
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            monkeypatch.setenv("RANK", "0")  # a torchrun rank keeps the default: torchrun's way to stop it
            D.sigterm_as_ctrl_c()
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
            monkeypatch.delenv("RANK")
            D.sigterm_as_ctrl_c()
            assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler  # (else the kill ends pytest)
        with pytest.raises(KeyboardInterrupt):
            T.save_state(model, optimizer, 3, path, {"made_from": "x"})
        assert signal.getsignal(signum) is signal.default_int_handler  # a signal works as before after it
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    assert T.load_state(model, optimizer, path, "x")[0] == 3


def test_the_final_model_is_stored_in_bf16_on_a_gpu_and_fp32_on_a_cpu_unless_set():
    c = lambda save_dtype="": types.SimpleNamespace(save_dtype=save_dtype)
    assert T.saved_dtype(c(), D.Env(device="cuda:0")) == torch.bfloat16
    assert T.saved_dtype(c(), D.Env(device="cpu")) == torch.float32
    assert T.saved_dtype(c("float32"), D.Env(device="cuda:0")) == torch.float32


def test_removing_the_state_removes_what_a_kill_left_beside_it(tmp_path):
    """Once the model is recorded, state/ goes, and with it state.old/ and
    state.tmp/ (a kill during a save leaves them)."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    c = types.SimpleNamespace(out_dir=str(tmp_path))
    for folder in ("state", "state.old", "state.tmp"):
        T.save_state(model, optimizer, 1, str(tmp_path / folder), {"made_from": "x"})
    T.remove_state(c)
    assert sorted(os.listdir(tmp_path)) == []


def test_a_second_ctrl_c_during_a_state_save_stops_at_once():
    """The first Ctrl-C inside ctrl_c_after waits for the block to end; a
    second one (the user insists) raises at once."""
    import signal
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    reached = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with T.ctrl_c_after():
                os.kill(os.getpid(), signal.SIGINT)
                reached.append("after the first")
                os.kill(os.getpid(), signal.SIGINT)
                reached.append("after the second")
    finally:
        signal.signal(signal.SIGINT, before)
    assert reached == ["after the first"]


def test_hold_out_rounds_the_share_to_the_nearest_item():
    """eval_fraction 0.05 of 38 items is 1.9: two held out (rounded, not cut
    down to one); of 30, 1.5: two (Python rounds half to even); of 10, 0.5:
    one all the same."""
    for n, held_n in ((38, 2), (30, 2), (10, 1), (100, 5)):
        train, held = T.hold_out(list(range(n)), 0.05, 1337)
        assert len(held) == held_n and sorted(train + held) == list(range(n)), n


def test_hold_out_is_seeded_by_the_runs_seed():
    """The same seed holds out the same items; another seed, other items
    (10 of 100: two seeds agreeing by chance is ~1e-13)."""
    items = list(range(100))
    assert T.hold_out(items, 0.1, 1) == T.hold_out(items, 0.1, 1)
    assert T.hold_out(items, 0.1, 1)[1] != T.hold_out(items, 0.1, 2)[1]


def test_a_saved_state_is_made_from_every_method_setting_and_no_runtime_one(tmp_path):
    """made_from counts what a run computes: a change of any method setting
    (the clip norm, the batch, AdamW's betas ...) makes another run, whose
    saved state is not resumed; a change of how it runs (micro-batches,
    intervals, threads ...) resumes it."""
    data, tok = tmp_path / "train.jsonl", tmp_path / "tokenizer.model"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    tok.write_bytes(b"pieces")
    base = {"init_from": "scratch", "data": str(data), "tokenizer": str(tok)}
    fp = lambda **kw: T.made_from(*T.training_inputs(configurator.settings(train_sft.DEFAULTS, {**base, **kw}),
                                                      str(tok)), torch.float32)
    before = fp()
    method = dict(grad_clip=0.5, batch_size=32, beta1=0.8, beta2=0.99, weight_decay=0.1, warmup_steps=3,
                  dropout=0.2, seed=7, epochs=2, max_steps=5, max_seq_len=64, eval_fraction=0.1, lr=1e-4,
                  min_lr=1e-6, model="toy-tiny", chat_template="chatml", template="text")
    for k, v in method.items():
        assert v != train_sft.DEFAULTS[k] and fp(**{k: v}) != before, k
    runtime = dict(micro_batch_size=2, eval_interval=7, save_interval=9, log_interval=5, threads=1, progress=False,
                   keep_state=True, activation_checkpointing=True, compile=True, save_dtype="bfloat16",
                   peak_flops=1e12, crash_after_step=3, out_dir=str(tmp_path / "elsewhere"))
    for k, v in runtime.items():
        assert v != train_sft.DEFAULTS[k] and fp(**{k: v}) == before, k


def test_memory_plan_says_whether_a_world_size_fits():
    """70B, 2048 tokens a micro-batch: checkpointed, 29.5 GB a GPU at 64 GPUs
    fits an 80 GB GPU (85% usable), while at 8 GPUs the 16 bytes a parameter
    alone are 138 GB; not checkpointed, 80 layers' activations (2048 x (80 x
    413,960 + 66,576) bytes: tests/test_train.py's per-layer count), the
    blocks in flight and the logits, 76.5 GB a GPU whatever the world size,
    leave no room for the sharded state."""
    args = preset("llama2-70b")
    fits = T.memory_plan(args, 64, 1, 2048, True, dropout=0.1)
    assert fits["total"] < 0.85 * 80e9 and "; 64 fits" in fits["text"]
    short = T.memory_plan(args, 8, 1, 2048, True, dropout=0.1)
    assert short["total"] > 16 * short["params"] / 8 > 0.85 * 80e9 and "; 8 does NOT fit" in short["text"]
    whole = T.memory_plan(args, 64, 1, 2048, False, dropout=0.1)
    fixed = 2048 * (80 * 413_960 + 66_576) + 8 * 855_654_400 + 2 * 524_296_192 + 2048 * 32000 * 10
    assert whole["total"] - 16 * whole["params"] / 64 == pytest.approx(fixed) and fixed > 0.85 * 80e9
    assert "does not fit a 80 GB GPU at any world size" in whole["text"] and "needs at least" not in whole["text"]
    # the fewest GPUs is rounded up: at 2 x 2048 tokens the sharded state needs 21.4 GPUs' free memory: 22
    two = T.memory_plan(args, 64, 2, 2048, True, dropout=0.1)
    free = 0.85 * 80e9 - (two["total"] - 16 * two["params"] / 64)
    assert 21 < 16 * two["params"] / free < 21.5 and "needs at least 22 GPUs (3 nodes of 8)" in two["text"]
