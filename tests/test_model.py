"""The Llama network and its checkpoints, checked against Hugging Face transformers."""
import dataclasses
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT

import model as M
from checkpoint import (args_from_hf_config, check_meta_tensors, hf_config, hf_name, load_model, planned_args,
                        read_config, save_model)
from model import PRESETS, ModelArgs, Transformer, estimate_mfu, preset
from sample import KVCache

transformers = pytest.importorskip("transformers")

# (name, ModelArgs): multi-head, grouped-query, and a non-default rope theta
CONFIGS = [
    ("mha", ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=300, multiple_of=32, max_seq_len=128)),
    ("gqa", ModelArgs(dim=64, n_layers=3, n_heads=8, n_kv_heads=2, vocab_size=300, multiple_of=16,
                      max_seq_len=128, norm_eps=1e-6)),
    ("gqa-theta", ModelArgs(dim=96, n_layers=2, n_heads=6, n_kv_heads=3, vocab_size=300, multiple_of=64,
                            ffn_dim_multiplier=1.3, rope_theta=500000.0, max_seq_len=128)),
]


def random_model(args, seed=0):
    torch.manual_seed(seed)
    model = Transformer(args).eval()
    with torch.no_grad():  # random norm weights too, so a swapped norm would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def hf_logits(hf_model, tokens):
    with torch.no_grad():
        return hf_model(tokens).logits


@pytest.mark.parametrize("name,args", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_our_checkpoint_opens_in_transformers(tmp_path, name, args):
    model = random_model(args)
    save_model(model, tmp_path / "ckpt")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32).eval()
    assert hf.config.num_key_value_heads == args.n_kv_heads
    assert hf.config.intermediate_size == args.hidden_dim
    tokens = torch.randint(0, args.vocab_size, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens)
    diff = (ours - hf_logits(hf, tokens)).abs().max().item()
    assert diff <= 1e-4, diff
    assert ours.abs().max() > 0.1  # a real comparison, not two zero tensors


@pytest.mark.parametrize("name,args", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_transformers_sharded_checkpoint_loads(tmp_path, name, args):
    config = transformers.LlamaConfig(
        hidden_size=args.dim, intermediate_size=args.hidden_dim, num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads, num_key_value_heads=args.n_kv_heads, vocab_size=args.vocab_size,
        max_position_embeddings=args.max_seq_len, rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta)
    torch.manual_seed(2)
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            p.normal_(0, 0.05 if "norm" not in n else 0.3).add_(1.0 if "norm" in n else 0.0)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="60KB")
    shards = [f for f in os.listdir(tmp_path / "hf") if f.endswith(".safetensors")]
    assert len(shards) >= 3 and os.path.exists(tmp_path / "hf" / "model.safetensors.index.json")

    model = load_model(tmp_path / "hf").eval()
    assert model.args.hidden_dim == args.hidden_dim and model.args.rope_theta == args.rope_theta
    tokens = torch.randint(0, args.vocab_size, (3, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (model(tokens) - hf_logits(hf, tokens)).abs().max().item()
    assert diff <= 1e-4, diff


def test_save_load_roundtrip_sharded_and_bf16(tmp_path):
    model = random_model(CONFIGS[1][1])
    save_model(model, tmp_path / "a", max_shard_bytes=20_000)
    files = os.listdir(tmp_path / "a")
    assert "model.safetensors.index.json" in files and "model-00001-of-" in " ".join(files)
    loaded = load_model(tmp_path / "a")
    for (n, p), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n == n2 and torch.equal(p, p2), n
    # and every setting reads back as it was saved, the context length (128, not LlamaConfig's 2048), eps, theta,
    # tie, head_dim and rope scaling among them (the feed-forward width as a width: config.json has no multiple_of)
    settings = lambda a: {**vars(a), "multiple_of": None, "ffn_dim_multiplier": None, "hidden_dim": a.hidden_dim}
    assert settings(loaded.args) == settings(model.args)
    save_model(random_model(NEW_CONFIGS[-1][1]), tmp_path / "all")
    assert settings(load_model(tmp_path / "all").args) == settings(NEW_CONFIGS[-1][1])
    save_model(model, tmp_path / "b", dtype=torch.bfloat16)
    assert json.load(open(tmp_path / "b" / "config.json"))["torch_dtype"] == "bfloat16"
    half = load_model(tmp_path / "b", dtype=torch.bfloat16)
    assert half.output.weight.dtype == torch.bfloat16
    assert torch.equal(half.output.weight, model.output.weight.to(torch.bfloat16))
    save_model(half, tmp_path / "b2")  # no dtype given: as the parameters are
    assert json.load(open(tmp_path / "b2" / "config.json"))["torch_dtype"] == "bfloat16"
    from safetensors import safe_open
    with safe_open(tmp_path / "b2" / "model.safetensors", framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
        assert f.metadata() == {"format": "pt"}  # (as save_pretrained writes it)


def test_sharded_index_names_every_shard_and_their_total_size(tmp_path):
    """A sharded save's model.safetensors.index.json against the files
    written: every shard file on disk is named in weight_map and holds
    exactly the tensors weight_map gives it (none empty: here the first
    tensor, the embedding, is larger than max_shard_bytes on its own), and
    metadata.total_size is the sum of the tensors' bytes as the files' own
    headers give them, in fp32 and in bf16."""
    from safetensors import safe_open
    model = random_model(CONFIGS[1][1])
    assert next(iter(model.parameters())).numel() * 2 > 20_000  # the first tensor alone overflows a shard
    for dtype in (torch.float32, torch.bfloat16):
        save_model(model, tmp_path / "c", dtype=dtype, max_shard_bytes=20_000)
        index = json.load(open(tmp_path / "c" / "model.safetensors.index.json"))
        files = sorted(f for f in os.listdir(tmp_path / "c") if f.endswith(".safetensors"))
        assert len(files) >= 3 and sorted(set(index["weight_map"].values())) == files, dtype
        total = 0
        for fname in files:
            with safe_open(tmp_path / "c" / fname, framework="pt") as f:
                assert sorted(f.keys()) == sorted(k for k, v in index["weight_map"].items() if v == fname)
                total += sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
        assert index["metadata"]["total_size"] == total == model.num_params() * dtype.itemsize, dtype


def test_fsdp_streaming_load_of_an_odd_vocabulary_equals_one_process(tmp_path):
    """torchrun, 2 ranks, gloo: a checkpoint whose vocabulary (511 rows) does
    not split evenly streams into FSDP2 shards of 256 and 255 rows (as
    torch.chunk cuts them), each rank's slice equal to the same rows of a
    one-process load_model, and saves back equal (tests/fsdp_load_check.py)."""
    import subprocess
    import sys
    save_model(random_model(ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=511,
                                      multiple_of=32)), tmp_path / "odd")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        os.path.join(root, "tests", "fsdp_load_check.py"), str(tmp_path / "odd"),
                        str(tmp_path / "saved")], cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "FSDP_LOAD_OK" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]


def test_save_refuses_what_transformers_cannot_open_before_writing(tmp_path):
    """A head_dim set apart from a dim that n_heads does not divide (our
    network runs it; transformers' LlamaConfig refuses it) and a dtype
    safetensors has no name for here: a clear error, and no folder written."""
    odd = ModelArgs(dim=64, n_layers=1, n_heads=6, n_kv_heads=2, head_dim=16, vocab_size=128, multiple_of=32)
    with pytest.raises(ValueError, match="dim 64 is not a multiple of n_heads 6"):
        save_model(Transformer(odd), tmp_path / "odd")
    with pytest.raises(ValueError, match="dtype torch.float64"):
        save_model(random_model(CONFIGS[0][1]), tmp_path / "f64", dtype=torch.float64)
    assert os.listdir(tmp_path) == []


def test_save_overwrites_atomically(tmp_path):
    model = random_model(CONFIGS[0][1])
    save_model(model, tmp_path / "ckpt")
    model2 = random_model(CONFIGS[0][1], seed=5)
    save_model(model2, tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary folders left behind
    assert torch.equal(load_model(tmp_path / "ckpt").output.weight, model2.output.weight)


def test_a_write_killed_between_the_renames_or_midway_loses_nothing(tmp_path):
    """What kills leave: the old checkpoint moved aside as .tmp-ckpt.old
    (between the two renames, where ckpt does not exist), a half-written
    .tmp-ckpt, a half-deleted .tmp-ckpt.trash. The next save puts the old one
    back before it writes, so even a save that fails again leaves ckpt whole,
    and no leftover stays behind."""
    from data import write_folder_atomically
    model, model2 = random_model(CONFIGS[0][1]), random_model(CONFIGS[0][1], seed=5)
    save_model(model, tmp_path / "ckpt")
    os.replace(tmp_path / "ckpt", tmp_path / ".tmp-ckpt.old")
    os.makedirs(tmp_path / ".tmp-ckpt")
    (tmp_path / ".tmp-ckpt" / "model.safetensors").write_bytes(b"half")
    os.makedirs(tmp_path / ".tmp-ckpt.trash")  # an older folder half deleted: it never goes back
    (tmp_path / ".tmp-ckpt.trash" / "config.json").write_text("{}")

    def fails(folder):
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        write_folder_atomically(tmp_path / "ckpt", fails)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert torch.equal(load_model(tmp_path / "ckpt").output.weight, model.output.weight)
    save_model(model2, tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert torch.equal(load_model(tmp_path / "ckpt").output.weight, model2.output.weight)
    # killed after the new folder went into place, before the old one went to the trash: both there. The new
    # one stays (the old is not put back over it) and the old goes
    shutil.copytree(tmp_path / "ckpt", tmp_path / ".tmp-ckpt.old")
    save_model(model, tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert torch.equal(load_model(tmp_path / "ckpt").output.weight, model.output.weight)
    # a file where the folder goes is replaced, and leaves nothing behind that stops the next writes
    (tmp_path / "file").write_text("not a folder")
    for text in ("one", "two"):
        write_folder_atomically(tmp_path / "file", lambda folder: (Path(folder) / "f").write_text(text))
        assert sorted(os.listdir(tmp_path)) == ["ckpt", "file"] and (tmp_path / "file" / "f").read_text() == text


def test_the_atomic_writers_errors_descriptors_and_text(tmp_path, monkeypatch):
    """A disk error from fsync is raised (the write is not durable), where a
    file system that cannot sync (EINVAL) is let be; every descriptor opened
    to sync is closed; JSON Lines keep non-ASCII text as UTF-8."""
    from data import write_jsonl, write_text
    fds = len(os.listdir("/proc/self/fd"))
    for i in range(20):
        write_text(tmp_path / "x.txt", str(i))
    assert len(os.listdir("/proc/self/fd")) == fds
    write_jsonl(tmp_path / "x.jsonl", [{"prompt": "café ☕"}])
    assert (tmp_path / "x.jsonl").read_bytes() == '{"prompt": "café ☕"}\n'.encode()

    def fails(errno_):
        def fsync(fd):
            raise OSError(errno_, os.strerror(errno_))
        return fsync
    monkeypatch.setattr(os, "fsync", fails(errno.EINVAL))
    write_text(tmp_path / "x.txt", "synced or not")
    monkeypatch.setattr(os, "fsync", fails(errno.EIO))
    with pytest.raises(OSError, match="Input/output error"):
        write_text(tmp_path / "x.txt", "lost?")
    assert (tmp_path / "x.txt").read_text() == "synced or not"


def test_every_written_file_is_synced_to_disk_before_the_swap(tmp_path, monkeypatch):
    """A rename can reach the disk before the data it names: without fsync a
    power cut may leave a checkpoint of empty files, or an empty stage record,
    under the final name. The folder is synced after the rename, so the
    rename itself lasts."""
    from data import write_jsonl
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isdir(name):  # the folder, for the rename: after it
            synced.append("folder " + os.path.basename(name))
        else:
            final = [f for f in os.listdir(tmp_path / "out") if not f.startswith(".tmp-")]
            assert not final, f"{name} synced after the swap"
            synced.append(os.path.basename(name))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    os.makedirs(tmp_path / "out")
    save_model(random_model(CONFIGS[0][1]), tmp_path / "out" / "ckpt")
    assert sorted(synced[:-1]) == sorted(os.listdir(tmp_path / "out" / "ckpt")) and synced[-1] == "folder out"
    synced.clear()
    os.replace(tmp_path / "out" / "ckpt", tmp_path / "ckpt")
    write_jsonl(tmp_path / "out" / "pairs.jsonl", [{"a": 1}])
    assert len(synced) == 2 and synced[0].startswith(".tmp-") and synced[1] == "folder out"


def test_a_write_killed_midway_leaves_nothing_that_piles_up(tmp_path):
    """write_text goes through a fixed .tmp-NAME beside its file: one a kill
    left behind is taken over by the next write of that file, not left
    forever; and where the temporary file cannot be opened, that is the
    error the caller sees."""
    from data import write_text
    (tmp_path / ".tmp-a.txt").write_text("half of an old wri")  # a kill mid-write
    write_text(tmp_path / "a.txt", "whole")
    assert sorted(os.listdir(tmp_path)) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "whole"
    (tmp_path / ".tmp-b.txt").mkdir()  # something in the way of the temporary file
    with pytest.raises(IsADirectoryError, match=r"\.tmp-b\.txt"):
        write_text(tmp_path / "b.txt", "x")
    assert not (tmp_path / "b.txt").exists()


def test_saved_files_have_the_umasks_permissions(tmp_path):
    """Written through a temporary folder or file beside their place, a
    checkpoint and a run's files end with the permissions open() and makedirs
    give (others on a shared machine can read them where the umask lets them;
    tempfile's names would have been the owner's only)."""
    from data import write_jsonl
    before = os.umask(0o022)
    try:
        save_model(random_model(CONFIGS[0][1]), tmp_path / "ckpt")
        write_jsonl(tmp_path / "pairs.jsonl", [{"a": 1}])
        assert os.stat(tmp_path / "ckpt").st_mode & 0o777 == 0o755
        assert os.stat(tmp_path / "pairs.jsonl").st_mode & 0o777 == 0o644
    finally:
        os.umask(before)


def make_meta_layout(model, path, n_shards, llama3=False):
    """Write `model` the way Meta's Llama 2 release does: params.json and one
    consolidated.NN.pth per model-parallel rank, each with its slice. llama3:
    as Meta's Llama 3 release does, whose embedding is split by vocabulary
    (VocabParallelEmbedding) and whose params.json gives the vocabulary size."""
    os.makedirs(path)
    a = model.args
    params = {"dim": a.dim, "n_layers": a.n_layers, "n_heads": a.n_heads, "n_kv_heads": a.n_kv_heads,
              "multiple_of": a.multiple_of, "ffn_dim_multiplier": a.ffn_dim_multiplier,
              "norm_eps": a.norm_eps, "vocab_size": a.vocab_size if llama3 else -1, "rope_theta": a.rope_theta}
    json.dump(params, open(os.path.join(path, "params.json"), "w"))
    sd = model.state_dict()
    for r in range(n_shards):
        shard = {}
        for name, t in sd.items():
            if name.endswith("norm.weight"):
                shard[name] = t.clone()
            elif name == "tok_embeddings.weight" and llama3:
                shard[name] = t.chunk(n_shards, dim=0)[r].clone()
            elif name == "tok_embeddings.weight" or name.endswith(("wo.weight", "w2.weight")):
                shard[name] = t.chunk(n_shards, dim=1)[r].clone()
            else:
                shard[name] = t.chunk(n_shards, dim=0)[r].clone()
        torch.save(shard, os.path.join(path, f"consolidated.{r:02d}.pth"))


def test_meta_layout_two_shards_equals_one(tmp_path):
    # norm_eps 1e-6, as Llama 1's params.json says (ModelArgs' default is 1e-5): read from the file, not defaulted
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=32, norm_eps=1e-6)
    model = random_model(args)
    make_meta_layout(model, tmp_path / "mp1", 1)
    make_meta_layout(model, tmp_path / "mp2", 2)
    make_meta_layout(model, tmp_path / "mp2v", 2, llama3=True)  # the embedding split by vocabulary
    torch.save({}, tmp_path / "mp2" / "adapter.pth")  # another .pth beside the shards is not one of them
    one, two, two_v = load_model(tmp_path / "mp1"), load_model(tmp_path / "mp2"), load_model(tmp_path / "mp2v")
    assert one.args.vocab_size == 300  # params.json says -1: taken from the weights
    # every setting params.json gives is the model's (the context it does not give: Llama 2's 4096, the default)
    assert one.args == two.args == two_v.args == args
    for name, p in model.state_dict().items():
        assert torch.equal(one.state_dict()[name], p), name
        assert torch.equal(two.state_dict()[name], p), name
        assert torch.equal(two_v.state_dict()[name], p), name
    # and a Meta checkpoint converted by us opens in transformers with the same logits
    save_model(two, tmp_path / "hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tokens = torch.randint(0, 300, (1, 30))
    with torch.no_grad():
        assert (model(tokens) - hf_logits(hf, tokens)).abs().max() <= 1e-4
    # and what we compute is what Meta's files mean, not only what our own layout means (the files above
    # are our own state dict): transformers' model of the same weights
    with torch.no_grad():
        assert (two(tokens) - hf_logits(hf_from_meta_weights(args, model.state_dict()), tokens)).abs().max() <= 1e-4


def test_meta_layout_is_checked_from_its_files_metadata(tmp_path, monkeypatch):
    """check_meta_tensors, the check before any work (validate.check_checkpoint),
    finds a tensor of Meta's layout missing or misshapen, its parts joined on
    the dimension they were split on, reading no tensor data (it only listed the
    files: a bad prompt writer failed after the SFT baseline and M1 trained)."""
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=32)
    make_meta_layout(random_model(args), tmp_path / "m", 2)
    import checkpoint
    loads, real_load = [], torch.load

    def load(*a, **kw):  # every shard opened memory-mapped: its tensors' bytes are read only if touched
        loads.append(kw.get("mmap"))
        return real_load(*a, **kw)
    monkeypatch.setattr(checkpoint.torch, "load", load)
    with torch.device("meta"):
        params, deeper = (dict(Transformer(a).named_parameters()) for a in (args, dataclasses.replace(args, n_layers=3)))
    assert len(check_meta_tensors(tmp_path / "m", params)) == 2
    assert loads == [True, True]
    with pytest.raises(ValueError, match=r"consolidated\.00\.pth: missing tensor 'layers\.2\."):  # params.json: 3 layers
        check_meta_tensors(tmp_path / "m", deeper)
    shard = torch.load(tmp_path / "m" / "consolidated.01.pth")  # rank 1's part of a row-parallel weight cut short
    shard["layers.0.attention.wo.weight"] = shard["layers.0.attention.wo.weight"][:, :-1].clone()
    torch.save(shard, tmp_path / "m" / "consolidated.01.pth")
    with pytest.raises(ValueError, match=r"tensor layers\.0\.attention\.wo\.weight .* has shape \(64, 63\), the "
                                         r"config implies \(64, 64\)"):
        check_meta_tensors(tmp_path / "m", params)


def hf_from_meta_weights(args, state_dict):
    """transformers.LlamaForCausalLM holding a Meta-layout state dict of the model `args` describes, wq and
    wk turned from Meta's interleaved rotary pairs into transformers' halves by transformers' own code (its
    GGUF reader's permutation: llama.cpp's files keep Meta's order), not by checkpoint.py's."""
    import transformers.modeling_gguf_pytorch_utils as gguf  # (transformers 4.45's name for it, or today's)
    turn = getattr(gguf, "reverse_permute_weights", None) or gguf.LlamaTensorProcessor()._reverse_permute_weights
    config = transformers.LlamaConfig(
        hidden_size=args.dim, intermediate_size=args.hidden_dim, num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads, num_key_value_heads=args.n_kv_heads, vocab_size=args.vocab_size,
        max_position_embeddings=args.max_seq_len, rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta,
        rope_scaling={"rope_type": "llama3", **args.rope_scaling} if args.rope_scaling else None,
        tie_word_embeddings=args.tie_embeddings)
    hf = transformers.LlamaForCausalLM(config).eval()
    heads = {"attention.wq.weight": args.n_heads, "attention.wk.weight": args.n_kv_heads}
    weights = {hf_name(n): next((turn(t, args.n_heads, kv) for end, kv in heads.items() if n.endswith(end)), t)
               for n, t in state_dict.items()}
    if args.tie_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    hf.load_state_dict(weights)
    return hf


PUBLISHED_COUNTS = [("llama2-7b", 6_738_415_616), ("llama2-13b", 13_015_864_320), ("llama2-70b", 68_976_648_192),
                    ("llama3-8b", 8_030_261_248), ("llama3-70b", 70_553_706_496),
                    ("llama3.2-1b", 1_235_814_400), ("llama3.2-3b", 3_212_749_824),
                    ("smollm2-135m", 134_515_008)]


@pytest.mark.parametrize("name,count", PUBLISHED_COUNTS, ids=[c[0] for c in PUBLISHED_COUNTS])
def test_meta_device_presets_have_published_counts(name, count):
    with torch.device("meta"):
        model = Transformer(PRESETS[name])
    assert model.num_params() == count
    assert all(p.device.type == "meta" for p in model.parameters())
    names = [n for n, _ in model.named_parameters()]  # every parameter has its own Hugging Face name
    assert len({hf_name(n) for n in names}) == len(names)
    assert (hf_name(names[-1]) == "lm_head.weight") != PRESETS[name].tie_embeddings  # tied: no lm_head


@pytest.mark.parametrize("name", [n for n, _ in PUBLISHED_COUNTS])
def test_presets_match_transformers_on_meta(tmp_path, name):
    """Our config.json of each preset, built by transformers on the meta
    device: the same parameter count, and the config reads back to the preset."""
    with torch.device("meta"):
        ours = Transformer(PRESETS[name])
    config = transformers.LlamaConfig(**hf_config(PRESETS[name]))
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(config)
    assert sum(p.numel() for p in hf.parameters()) == ours.num_params()
    assert hf.config.tie_word_embeddings == PRESETS[name].tie_embeddings
    back = args_from_hf_config(hf_config(PRESETS[name]))
    assert (back.hidden_dim, back.head_dim, back.rope_scaling, back.tie_embeddings, back.rope_theta) == \
        (PRESETS[name].hidden_dim, PRESETS[name].head_dim, PRESETS[name].rope_scaling,
         PRESETS[name].tie_embeddings, PRESETS[name].rope_theta)


# (name, ModelArgs): today's Llama-family features, each on its own and together
SHORT_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}  # 200 positions reach every regime of the scaling; at
# head_dim 16 (llama3-rope) one pair turns fast, one blends and six are slowed (test_llama3_rope_frequencies...)
NEW_CONFIGS = [
    ("tied", ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=32,
                       max_seq_len=256, tie_embeddings=True)),
    ("head_dim", ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=32,
                           max_seq_len=256, head_dim=24)),
    ("llama3-rope", ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=32,
                              max_seq_len=256, rope_theta=500000.0, rope_scaling=SHORT_ROPE)),
    ("all", ModelArgs(dim=96, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=300, multiple_of=32, head_dim=8,
                      max_seq_len=256, rope_theta=500000.0, rope_scaling=SHORT_ROPE, tie_embeddings=True)),
]


@pytest.mark.parametrize("name,args", NEW_CONFIGS, ids=[c[0] for c in NEW_CONFIGS])
def test_llama3_features_match_transformers_both_ways(tmp_path, name, args):
    model = random_model(args)
    tokens = torch.randint(0, args.vocab_size, (2, 200), generator=torch.Generator().manual_seed(1))
    # ours -> transformers
    save_model(model, tmp_path / "ours")
    stored = json.load(open(tmp_path / "ours" / "config.json"))
    from safetensors import safe_open
    with safe_open(tmp_path / "ours" / "model.safetensors", framework="pt") as f:
        assert ("lm_head.weight" in f.keys()) != args.tie_embeddings  # tied: stored once, as HF does
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    assert hf.config.tie_word_embeddings == args.tie_embeddings == stored["tie_word_embeddings"]
    assert hf.config.head_dim == args.head_dim
    with torch.no_grad():
        ours = model(tokens)
    assert (ours - hf_logits(hf, tokens)).abs().max() <= 1e-4
    assert ours.abs().max() > 0.1
    # transformers -> ours (transformers 5 writes rope_parameters, not rope_scaling)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            p.normal_(0, 0.05) if "norm" not in n else p.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path / "hf")
    loaded = load_model(tmp_path / "hf").eval()
    assert (loaded.args.rope_scaling, loaded.args.head_dim, loaded.args.tie_embeddings) == \
        (args.rope_scaling, args.head_dim, args.tie_embeddings)
    with torch.no_grad():
        assert (loaded(tokens) - hf_logits(hf, tokens)).abs().max() <= 1e-4
    if args.tie_embeddings:  # one Parameter: what training does to it, the output sees
        assert loaded.output is None and len(list(loaded.parameters())) == len(loaded.state_dict())
        # ... and its gradient is the sum of both uses, input and output, as transformers' tied weight's
        def loss(logits):
            return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss(loaded(tokens)).backward()
        loss(hf(tokens).logits).backward()
        ours_grad, hf_grad = loaded.tok_embeddings.weight.grad, hf.model.embed_tokens.weight.grad
        assert hf.lm_head.weight is hf.model.embed_tokens.weight and hf_grad.abs().max() > 1e-3
        assert torch.allclose(ours_grad, hf_grad, rtol=1e-4, atol=1e-6)
    if args.rope_scaling:  # the scaling matters at these lengths: without it the logits differ
        plain = Transformer(ModelArgs(**{**vars(loaded.args), "rope_scaling": None})).eval()
        plain.load_state_dict(loaded.state_dict())
        with torch.no_grad():
            assert (plain(tokens) - loaded(tokens)).abs().max() > 1e-2


@pytest.mark.parametrize("head_dim", [16, 64])
def test_llama3_rope_frequencies_match_transformers_in_every_regime(head_dim):
    """Llama 3.1's scaled rotation speeds against transformers' own llama3
    rope function, on shapes where pairs fall in each of the three regimes
    (kept as trained, blended, slowed down): the blend is the part a
    logits comparison at short lengths could miss."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=32, max_seq_len=256,
                     head_dim=head_dim, rope_theta=500000.0, rope_scaling=SHORT_ROPE)
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](transformers.LlamaConfig(**hf_config(args)), "cpu")
    ours, plain = M.rope_frequencies(args), M.rope_frequencies(ModelArgs(**{**vars(args), "rope_scaling": None}))
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=0)
    kept, slowed = (ours == plain), torch.isclose(ours, plain / SHORT_ROPE["factor"], rtol=1e-6)
    blended = ~kept & ~slowed
    assert kept.any() and slowed.any() and blended.any()  # every regime is checked
    assert ((ours[blended] < plain[blended]) & (ours[blended] > plain[blended] / SHORT_ROPE["factor"])).all()


def test_kv_cache_with_head_dim_tied_and_scaled_rope():
    """Sampling's cached path on the new features: decoding step by step equals one full forward."""
    model = random_model(NEW_CONFIGS[-1][1])
    tokens = torch.randint(0, 300, (2, 60))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(model.args, 2, 64, "cpu")
        steps = [model(tokens[:, :40], cache=cache)] + [model(tokens[:, t:t + 1], cache=cache) for t in range(40, 60)]
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-5


def test_rope_config_keys_old_and_new(tmp_path):
    """transformers 4's rope_theta + rope_scaling ("type" or "rope_type") and
    transformers 5's rope_parameters give the same ModelArgs; unknown kinds are refused."""
    base = hf_config(NEW_CONFIGS[2][1])
    old = {**base, "rope_scaling": {"type": "llama3", **SHORT_ROPE}}
    new = {k: v for k, v in base.items() if k not in ("rope_theta", "rope_scaling")}
    new["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, **SHORT_ROPE}
    assert args_from_hf_config(old) == args_from_hf_config(new) == args_from_hf_config(base)
    read = args_from_hf_config(new)
    assert (read.rope_scaling, read.rope_theta, read.hidden_dim) == (SHORT_ROPE, 500000.0, NEW_CONFIGS[2][1].hidden_dim)
    with pytest.raises(ValueError, match="rope_type 'yarn' is not supported"):
        args_from_hf_config({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="needs factor"):
        args_from_hf_config({**base, "rope_scaling": {"rope_type": "llama3", "factor": 4.0}})


def test_config_read_as_transformers_reads_it():
    """Keys a config may have, lack, or have twice, read as transformers'
    LlamaConfig reads them (the reference): both rope forms (rope_scaling
    wins, its theta from the top level), no rms_norm_eps (1e-6), no
    max_position_embeddings (LlamaConfig's default context); an activation
    other than SwiGLU's silu is refused, not computed otherwise."""
    transformers = pytest.importorskip("transformers")
    base = {k: v for k, v in hf_config(NEW_CONFIGS[2][1]).items() if k not in ("rope_scaling", "rope_parameters")}
    cases = [{**base, "rope_theta": 500000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
              "rope_scaling": {"rope_type": "llama3", **SHORT_ROPE}},
             {**base, "rope_theta": 500000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 20000.0}},
             {k: v for k, v in base.items() if k != "rms_norm_eps"},
             {k: v for k, v in base.items() if k != "max_position_embeddings"},
             {**base, "num_key_value_heads": None},  # (null: as many as the query heads)
             {k: v for k, v in base.items() if k != "rope_theta"},  # (absent: 10000, RoPE's own)
             {k: v for k, v in base.items() if k != "tie_word_embeddings"},  # (absent: untied)
             # Phi-3's place for the pretraining length, beside the dict's own (transformers 5: the top one wins)
             {**base, "rope_scaling": {"rope_type": "llama3", **SHORT_ROPE},
              "original_max_position_embeddings": 4 * SHORT_ROPE["original_max_position_embeddings"]}]
    for config in cases:
        ours, theirs = args_from_hf_config(config), transformers.LlamaConfig(**config)
        theirs.standardize_rope_params()  # as building the model's rotary embedding does: the top-level key moves in
        rope = theirs.rope_parameters
        assert ours.rope_theta == rope["rope_theta"] and ours.norm_eps == theirs.rms_norm_eps
        assert ours.max_seq_len == theirs.max_position_embeddings
        assert ours.n_kv_heads == theirs.num_key_value_heads and ours.tie_embeddings == theirs.tie_word_embeddings
        assert ours.rope_scaling == ({k: rope[k] for k in SHORT_ROPE} if rope["rope_type"] == "llama3" else None)
    with pytest.raises(ValueError, match="hidden_act 'gelu' is not supported"):
        args_from_hf_config({**base, "hidden_act": "gelu"})
    assert args_from_hf_config({**base, "hidden_act": "silu"}) == args_from_hf_config(base)
    # "swish" is transformers' other name for the same x * sigmoid(x)
    assert args_from_hf_config({**base, "hidden_act": "swish"}) == args_from_hf_config(base)


def test_config_json_token_ids():
    """config.json's BOS and EOS ids: without a tokenizer Llama 2's (1 and 2,
    LlamaConfig's defaults too); one id that ends a turn written as a number,
    as Llama 2's own config.json has it; several as a list (Llama 3.1)."""
    transformers = pytest.importorskip("transformers")
    from types import SimpleNamespace
    args, reference = CONFIGS[0][1], transformers.LlamaConfig()
    assert [hf_config(args)[k] for k in ("bos_token_id", "eos_token_id")] == \
        [reference.bos_token_id, reference.eos_token_id] == [1, 2]
    one, several = SimpleNamespace(bos_id=5, stop_ids=[7]), SimpleNamespace(bos_id=0, stop_ids=[1, 4])
    assert [hf_config(args, tokenizer=one)[k] for k in ("bos_token_id", "eos_token_id")] == [5, 7]
    assert [hf_config(args, tokenizer=several)[k] for k in ("bos_token_id", "eos_token_id")] == [0, [1, 4]]


def test_tied_checkpoint_with_a_stored_head(tmp_path):
    """A tied checkpoint may store lm_head.weight anyway: a copy of the
    embedding loads (tied), another matrix is refused by name, since
    transformers 4 would tie and 5 would use the stored head."""
    from safetensors.torch import load_file, save_file
    args = NEW_CONFIGS[0][1]
    assert args.tie_embeddings
    save_model(random_model(args), tmp_path / "m")
    file = tmp_path / "m" / "model.safetensors"
    tensors = load_file(file)
    save_file({**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"].clone()}, file)
    assert load_model(tmp_path / "m").output is None
    other = tensors["model.embed_tokens.weight"].clone()
    other[-1, 0] += 1  # one number in the last row: every row is compared
    save_file({**tensors, "lm_head.weight": other}, file)
    with pytest.raises(ValueError, match="tie_word_embeddings, but lm_head.weight is not a copy"):
        load_model(tmp_path / "m")
    # a head with a row more than the embedding (whose rows all match) is not its copy either
    from checkpoint import check_tied_copy, safetensors_files
    rows = other.shape[0] // 2  # a block size that ends a block at the embedding's end
    save_file({**tensors, "lm_head.weight": torch.cat([tensors["model.embed_tokens.weight"], other[-1:]])}, file)
    with pytest.raises(ValueError, match="tie_word_embeddings, but lm_head.weight is not a copy"):
        load_model(tmp_path / "m")
    with pytest.raises(ValueError, match="lm_head.weight is not a copy"):
        check_tied_copy(tmp_path / "m", safetensors_files(tmp_path / "m"), rows=rows)
    # compared a block of rows at a time: every row of each block, the block's last too
    assert torch.equal(other[rows - 1], tensors["model.embed_tokens.weight"][rows - 1])
    other[rows - 1, 0] += 1  # now only the first block's last row differs
    other[-1, 0] -= 1  # (the last row put back)
    save_file({**tensors, "lm_head.weight": other}, file)
    with pytest.raises(ValueError, match="lm_head.weight is not a copy"):
        check_tied_copy(tmp_path / "m", safetensors_files(tmp_path / "m"), rows=rows)


def test_meta_layout_llama3_tied_and_scaled(tmp_path):
    """Meta's Llama 3.2 download: params.json says use_scaled_rope, and a tied
    model's consolidated.00.pth has no output.weight."""
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=32,
                     rope_theta=500000.0, tie_embeddings=True)
    model = random_model(args)
    make_meta_layout(model, tmp_path / "meta", 1)
    params = json.load(open(tmp_path / "meta" / "params.json"))
    json.dump({**params, "use_scaled_rope": True}, open(tmp_path / "meta" / "params.json", "w"))
    loaded = load_model(tmp_path / "meta")
    assert loaded.args.tie_embeddings and loaded.args.rope_scaling == {
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert torch.equal(loaded.tok_embeddings.weight, model.tok_embeddings.weight)
    # computing what the files mean (params.json's theta, its scaling): against transformers' model of them
    meant = ModelArgs(**{**vars(args), "rope_scaling": dict(M.LLAMA31_ROPE)})
    tokens = torch.randint(0, 300, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (loaded(tokens) - hf_logits(hf_from_meta_weights(meant, model.state_dict()), tokens)).abs().max() <= 1e-4
    # params.json gives no context length: Llama 3.1+'s (scaled rope) 131072; Llama 3.0's 8192; Llama 2's 4096
    assert loaded.args.max_seq_len == 131072
    # nor the scaling factor: Meta's reference code's 8 (Llama 3.1, 3.3), but Llama 3.2 1B's and 3B's
    # config.json files say 32 (Meta's params.json of those two: their widths with Llama 3's vocabulary)
    for dim, factor in ((2048, 32.0), (3072, 32.0), (4096, 8.0), (8192, 8.0)):
        json.dump({**params, "dim": dim, "vocab_size": 128256, "use_scaled_rope": True},
                  open(tmp_path / "meta" / "params.json", "w"))
        assert read_config(tmp_path / "meta").rope_scaling["factor"] == factor, dim
    # the width alone does not make Llama 3.2 1B or 3B: at 2048 and 3072 without Llama 3's vocabulary
    # (a scaled-rope model of another vocabulary) it is Meta's reference factor, 8
    for dim in (2048, 3072):
        json.dump({**params, "dim": dim, "vocab_size": 32000, "use_scaled_rope": True},
                  open(tmp_path / "meta" / "params.json", "w"))
        assert read_config(tmp_path / "meta").rope_scaling["factor"] == 8.0, dim
    assert PRESETS["llama3.2-1b"].rope_scaling["factor"] == PRESETS["llama3.2-3b"].rope_scaling["factor"] == 32.0
    json.dump({**params, "vocab_size": 128256}, open(tmp_path / "meta" / "params.json", "w"))
    assert read_config(tmp_path / "meta").max_seq_len == 8192
    json.dump(params, open(tmp_path / "meta" / "params.json", "w"))
    assert read_config(tmp_path / "meta").max_seq_len == 4096
    # what a params.json says wins: its own context, use_scaled_rope false (plain rope), a null as absent; keys of
    # config.json's vocabulary (rope_scaling) are not params.json's and are not read
    for change, read in [({"max_seq_len": 2048}, (2048, None, 500000.0)),
                         ({"use_scaled_rope": False}, (4096, None, 500000.0)),
                         ({"rope_theta": None}, (4096, None, 10000.0)),
                         ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, (4096, None, 500000.0))]:
        json.dump({**params, **change}, open(tmp_path / "meta" / "params.json", "w"))
        got = read_config(tmp_path / "meta")
        assert (got.max_seq_len, got.rope_scaling, got.rope_theta) == read, change
    # the memory plan says which file it read (no weights), or that init_from is not there
    assert planned_args(str(tmp_path / "meta"), "toy")[1] == f"planned for {tmp_path / 'meta' / 'params.json'}"
    assert planned_args("scratch", "toy")[1] == "planned for the preset 'toy'"
    assert planned_args(str(tmp_path / "none"), "toy")[1] == \
        f"planned for the preset 'toy' (init_from {tmp_path / 'none'} is not a folder here)"
    # a folder with both files (a Meta download converted in place): config.json, the Hugging Face layout, is read
    save_model(model, tmp_path / "both")
    json.dump({**params, "use_scaled_rope": True}, open(tmp_path / "both" / "params.json", "w"))
    assert (read_config(tmp_path / "both").max_seq_len, read_config(tmp_path / "both").rope_scaling) == (4096, None)


def test_llama2_70b_shapes():
    a = PRESETS["llama2-70b"]
    assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.hidden_dim, a.vocab_size) == (8192, 80, 64, 8, 28672, 32000)
    with pytest.raises(KeyError, match="presets: .*llama2-70b"):
        preset("llama2-71b")
    # a derived head_dim follows an overridden width; a set one stays
    assert (preset("toy-tiny", dim=128).head_dim, preset("toy-tiny", head_dim=24).head_dim) == (32, 24)
    # so does a derived n_kv_heads (multi-head stays multi-head); a set one (grouped-query) stays
    assert (preset("llama2-7b", n_heads=64).n_kv_heads, preset("llama2-7b", n_heads=16).n_kv_heads) == (64, 16)
    assert preset("llama2-70b", n_heads=32).n_kv_heads == 8
    # a preset is a copy, its rope_scaling too: changing one leaves the presets (and their shared table) as they are
    preset("llama3.2-1b").rope_scaling["factor"] = 1.0
    assert PRESETS["llama3.2-1b"].rope_scaling["factor"] == preset("llama3.2-3b").rope_scaling["factor"] == 32.0


def test_forward_refuses_what_it_would_do_wrong():
    """pad_mask without a cache would be ignored (padding attended to), and
    last_only with targets has no logits to take a loss over: both refused."""
    model = Transformer(preset("toy-tiny"))
    x = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="pad_mask is for sampling with a cache"):
        model(x, pad_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="last_only computes no loss"):
        model(x, targets=x, last_only=True)


def test_kv_cache_matches_full_forward():
    model = random_model(CONFIGS[1][1])
    tokens = torch.randint(0, 300, (3, 24))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(model.args, 3, 32, "cpu")
        steps = [model(tokens[:, :10], cache=cache)] + [model(tokens[:, t:t + 1], cache=cache) for t in range(10, 24)]
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-5
    assert cache.length == 24
    with torch.no_grad():  # last_only: the same last row, without the other T-1
        last = model(tokens, last_only=True)
    assert last.shape == (3, 1, 300) and torch.allclose(last[:, 0], full[:, -1], atol=1e-6)


def test_kv_cache_left_padding_gives_each_row_its_own_positions():
    model = random_model(CONFIGS[2][1])
    short, long = torch.randint(0, 300, (1, 5)), torch.randint(0, 300, (1, 9))
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[0, :4] = True
    with torch.no_grad():
        cache = KVCache(model.args, 2, 16, "cpu")
        out = model(batch, cache=cache, pad_mask=pad)
        assert not out.isnan().any()  # padding rows attend to themselves, never to nothing
        nxt = model(torch.tensor([[7], [7]]), cache=cache)
        ref_short = model(torch.cat([short, torch.tensor([[7]])], 1))
        ref_long = model(torch.cat([long, torch.tensor([[7]])], 1))
    assert (out[0, 4:] - ref_short[0, :5]).abs().max() < 1e-5
    assert (nxt[0, 0] - ref_short[0, -1]).abs().max() < 1e-5
    assert (nxt[1, 0] - ref_long[0, -1]).abs().max() < 1e-5


def test_model_args_refuse_shapes_that_cannot_work():
    """Each query head group shares whole KV heads, RoPE turns pairs (an even
    head dimension), and rope_scaling has exactly Llama 3.1's four keys."""
    with pytest.raises(ValueError, match="n_heads 6 must divide by n_kv_heads 4"):
        ModelArgs(dim=48, n_heads=6, n_kv_heads=4)  # (fewer KV heads than query heads, but not a divisor)
    with pytest.raises(ValueError, match="must be even for rotary embeddings"):
        ModelArgs(dim=12, n_heads=4)  # head_dim 3
    with pytest.raises(ValueError, match="rope_scaling needs exactly the keys"):
        ModelArgs(dim=64, n_heads=4, rope_scaling={**M.LLAMA31_ROPE, "rope_type": "llama3"})
    with pytest.raises(ValueError, match="rope_scaling needs exactly the keys"):  # one missing (else a KeyError later)
        ModelArgs(dim=64, n_heads=4, rope_scaling={"factor": 8.0})
    with pytest.raises(ValueError, match="dim 10 must divide by n_heads 4"):  # (or head_dim is set)
        ModelArgs(dim=10, n_heads=4)
    assert ModelArgs(dim=48, n_heads=6, n_kv_heads=3, rope_scaling=dict(M.LLAMA31_ROPE)).head_dim == 8


def test_ffn_width_is_metas_rule():
    """The feed-forward width as Meta's reference code computes it: int(2 *
    4 dim / 3), times the multiplier and truncated again, rounded up to
    multiple_of; the published widths of Llama 2 7B and 70B and Llama 3 8B
    come out, and the truncations by hand (10: int(80 / 3) = 26, 26 x 1.3 =
    33.8 -> 33, not 34)."""
    assert (M.ffn_width(4096, 256), M.ffn_width(8192, 4096, 1.3), M.ffn_width(4096, 1024, 1.3)) == \
        (11008, 28672, 14336)
    assert (M.ffn_width(10, 1), M.ffn_width(10, 1, 1.3), M.ffn_width(10, 4, 1.3)) == (26, 33, 36)


@pytest.mark.parametrize("name", list(PRESETS))
def test_n_params_counts_the_model_that_is_built(name):
    """ModelArgs.n_params (the memory plans' count, from the shapes) is the
    built model's, grouped-query and tied presets included."""
    with torch.device("meta"):
        assert PRESETS[name].n_params() == Transformer(PRESETS[name]).num_params()


def test_initial_weights_scale_the_residual_projections():
    """N(0, 0.02), the residual output projections (wo, w2) by 1/sqrt(2 n_layers)
    (GPT-2): with 8 layers, std 0.005; the norms at 1."""
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=256, n_layers=8, n_heads=4, vocab_size=300, multiple_of=32))
    std = {n: p.std().item() for n, p in model.named_parameters()}
    for n, s in std.items():
        want = 0.0 if "norm" in n else 0.005 if n.endswith(("wo.weight", "w2.weight")) else 0.02
        assert s == pytest.approx(want, rel=0.05, abs=1e-9), n
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in model.named_parameters() if "norm" in n)


def test_a_sequence_of_max_seq_len_tokens_fits():
    model = random_model(CONFIGS[0][1])
    assert model(torch.zeros(1, model.args.max_seq_len, dtype=torch.long)).shape[1] == model.args.max_seq_len


def test_loss_ignores_minus_100_and_sequence_limit():
    model = random_model(CONFIGS[0][1])
    tokens = torch.randint(0, 300, (2, 12))
    targets = torch.randint(0, 300, (2, 12))
    targets[:, :5] = -100
    logits, loss = model(tokens, targets)
    manual = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, 300), targets[:, 5:].reshape(-1))
    assert torch.allclose(loss, manual)
    with pytest.raises(ValueError, match="longer than max_seq_len"):
        model(torch.zeros(1, 129, dtype=torch.long))
    # in bf16 the loss is still an fp32 cross-entropy, of the logits taken to fp32
    logits, loss = model.to(torch.bfloat16)(tokens, targets)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.equal(loss, torch.nn.functional.cross_entropy(logits.float().reshape(-1, 300), targets.reshape(-1)))


def test_dropout_only_in_training():
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=300, multiple_of=32, dropout=0.1)
    model = random_model(args)
    tokens = torch.randint(0, 300, (1, 16))
    assert torch.equal(model(tokens), model(tokens))
    model.train()
    assert not torch.equal(model(tokens), model(tokens))


@pytest.mark.parametrize("branch", ["attention", "feed_forward"])
def test_dropout_on_each_residual_branch(branch):
    """Dropout on each residual branch: with the other branch at 0 and no
    dropout on the attention weights, this branch's own dropout alone makes
    two training forwards differ."""
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=300, multiple_of=32, dropout=0.5)
    model = random_model(args)
    with torch.no_grad():
        for layer in model.layers:
            other = layer.feed_forward.w2 if branch == "attention" else layer.attention.wo
            other.weight.zero_()
            layer.attention.attn_dropout_p = 0.0
    model.train()
    tokens = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        assert not torch.equal(model(tokens), model(tokens))


@pytest.mark.parametrize("H,KV", [(4, 4), (4, 2), (6, 1)])
def test_causal_matmul_attention_matches_sdpa(H, KV):
    """The CPU's bf16 attention (two batched matmuls, query heads grouped over
    shared key/value heads) against SDPA's causal kernel, in fp64: the output
    and the gradients of q, k and v."""
    torch.manual_seed(0)
    q = torch.randn(2, H, 7, 8, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, KV, 7, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    ours = M.causal_matmul_attention(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=KV != H)
    assert torch.allclose(ours, ref, atol=1e-12)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        assert torch.allclose(a, b, atol=1e-12)


def test_cpu_bf16_softmax_computes_in_fp32_and_rounds_once():
    """What causal_matmul_attention relies on to skip the casts: torch's CPU
    softmax of a bf16 tensor gives the bits of softmax in fp32 rounded to bf16."""
    torch.manual_seed(0)
    s = (torch.randn(3, 5, 64) * 4).bfloat16()
    assert torch.equal(s.softmax(-1), s.softmax(-1, dtype=torch.float32).bfloat16())


def test_causal_matmul_attention_dropout_keeps_the_expectation():
    """Dropout on the attention weights, scaled by 1/(1-p) as SDPA's: the mean
    over many draws is the output without dropout; single draws differ."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    exact = M.causal_matmul_attention(q, k, v)
    draws = M.causal_matmul_attention(*(t.expand(20000, -1, -1, -1) for t in (q, k, v)), dropout_p=0.5)
    assert not torch.equal(draws[0], draws[1])
    assert torch.allclose(draws.mean(0), exact[0], atol=0.05)
    # (outputs large enough that an unscaled mask, whose mean is half of them, would fail the line above)
    assert exact.abs().max() > 0.2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_zeroes_a_share_p_and_scales_the_rest(dtype):
    """model.dropout on a CPU (its own fp32 draws, not F.dropout's): the share
    zeroed is p within 6 standard deviations of a binomial count (in bf16 too:
    bf16 draws would zero about 0.102, 10 or more deviations off), every kept element
    is x / (1 - p), and the gradient is the mask over (1 - p)."""
    torch.manual_seed(0)
    n, p = 4_000_000, 0.1
    x = (torch.rand(n) + 0.5).to(dtype).requires_grad_()
    out = M.dropout(x, p)
    kept = out != 0
    assert abs((1 - kept.float().mean().item()) - p) < 6 * (p * (1 - p) / n) ** 0.5
    assert out.dtype == dtype
    assert torch.equal(out[kept], x[kept] * (1 / (1 - p)))
    g = torch.randn(n).to(dtype)
    grad, = torch.autograd.grad(out, x, g)
    assert torch.equal(grad, g * kept * (1 / (1 - p)))
    assert not torch.equal(M.dropout(x, p), M.dropout(x, p))  # a new mask each call
    assert M.dropout(x, 0.0) is x  # p = 0 (eval mode, or no dropout): x itself, no op run


def test_training_with_dropout_on_a_cpu_attends_with_matmuls(monkeypatch):
    """SDPA's fast CPU kernel has no dropout (it falls back to its math kernel):
    training in fp32 with dropout attends with the matmuls too, and their
    dropout on the attention weights is what makes two training forwards differ
    (the residual branches' dropout off). Eval mode: SDPA."""
    calls = []
    matmuls = M.causal_matmul_attention
    monkeypatch.setattr(M, "causal_matmul_attention", lambda *a: calls.append(a[3]) or matmuls(*a))
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=32, dropout=0.5)
    model = random_model(args)
    tokens = torch.randint(0, 300, (2, 16))
    model(tokens)
    assert calls == []  # eval mode: no dropout, SDPA
    without_dropout = random_model(dataclasses.replace(args, dropout=0.0)).train()
    without_dropout(tokens)
    assert calls == []  # training in fp32 without dropout (M0's pretraining): SDPA's fast kernel
    model.train()
    for layer in model.layers:
        layer.dropout_p = 0.0
    assert not torch.equal(model(tokens), model(tokens))
    assert calls == [0.5] * 2 * args.n_layers


def test_bf16_training_on_a_cpu_attends_with_matmuls_up_to_the_length_limit(monkeypatch):
    """Which attention a forward uses: the matmuls when training in bf16 on a
    CPU up to CPU_MATMUL_ATTENTION_MAX_LEN tokens; SDPA in fp32 without
    dropout, without autograd (scoring) or beyond the limit. Both give logits within bf16's
    rounding of each other."""
    calls = []
    matmuls = M.causal_matmul_attention
    monkeypatch.setattr(M, "causal_matmul_attention", lambda *a: calls.append(1) or matmuls(*a))
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=32)
    model = random_model(args)
    tokens = torch.randint(0, 300, (2, 16))
    model(tokens)
    assert calls == []  # fp32: SDPA
    model.to(torch.bfloat16)
    with torch.no_grad():
        without_autograd = model(tokens).float()
    assert calls == []  # scoring: SDPA
    with_matmuls = model(tokens).float()
    assert len(calls) == args.n_layers
    monkeypatch.setattr(M, "CPU_MATMUL_ATTENTION_MAX_LEN", 16)
    model(tokens)
    assert len(calls) == 2 * args.n_layers  # 16 tokens, up to 16: the matmuls
    monkeypatch.setattr(M, "CPU_MATMUL_ATTENTION_MAX_LEN", 15)
    with_sdpa = model(tokens).float()
    assert len(calls) == 2 * args.n_layers  # 16 tokens > 15: SDPA
    assert torch.equal(with_sdpa, without_autograd)
    assert torch.allclose(with_matmuls, with_sdpa, atol=0.05)
    assert not torch.equal(with_matmuls, with_sdpa)  # (two kernels really ran)


def test_load_model_with_dropout(tmp_path):
    """load_model(path, dropout=p) builds the model with that dropout (SFT and
    DPO fine-tune with it): args.dropout is p, two forwards in train mode
    differ, in eval mode they agree; without it, no dropout."""
    save_model(random_model(CONFIGS[0][1]), tmp_path / "c")
    assert load_model(tmp_path / "c").args.dropout == 0.0
    model = load_model(tmp_path / "c", dropout=0.3)
    assert model.args.dropout == 0.3 and model.layers[0].dropout_p == 0.3
    tokens = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(tokens), model(tokens))
        model.eval()
        assert torch.equal(model(tokens), model(tokens))


def test_estimate_mfu_by_hand():
    a = ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=300, multiple_of=32)
    # 6N + 12*L*H*Q*T FLOPs per token (PaLM appendix B); N without the untied input embedding (300 x 64), a lookup
    flops = 6 * (100000 - 300 * 64) + 12 * 2 * 4 * 16 * 128
    assert estimate_mfu(a, 100000, tokens_per_second=500, seq_len=128, peak_flops=1e9) == pytest.approx(flops * 500 / 1e9)
    tied = ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=300, multiple_of=32, tie_embeddings=True)
    flops = 6 * 100000 + 12 * 2 * 4 * 16 * 128  # the one embedding is also the output layer: all of N multiplies
    assert estimate_mfu(tied, 100000, 500, 128, 1e9) == pytest.approx(flops * 500 / 1e9)
    wide = ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=300, multiple_of=32, head_dim=24)  # H*Q = 96, not dim
    flops = 6 * (100000 - 300 * 64) + 12 * 2 * 4 * 24 * 128
    assert estimate_mfu(wide, 100000, 500, 128, 1e9) == pytest.approx(flops * 500 / 1e9)



# --- the building blocks on their own, each against its formula written another way

def test_rmsnorm_by_hand():
    torch.manual_seed(0)
    norm = M.RMSNorm(16, eps=0.5)  # a large eps: one in the wrong place shows
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 16) * 0.3

    def by_hand(x, w):  # float64: x / sqrt(mean(x^2) + eps) * weight
        x = x.double()
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 0.5) * w.detach().double()

    out = norm(x)
    assert out.dtype == torch.float32 and (out.double() - by_hand(x, norm.weight)).abs().max() < 1e-6
    # bf16 activations and weights (FSDP's mixed precision): normalised in fp32, returned in bf16
    norm.to(torch.bfloat16)
    xb = x.bfloat16()
    out = norm(xb)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.double(), by_hand(xb, norm.weight), rtol=1e-2, atol=1e-2)
    # normalised in fp32, cast to bf16, then times the bf16 weight: exactly that, not only within bf16's tolerance
    assert torch.equal(out, norm.weight * by_hand(xb, torch.ones(16)).bfloat16()), \
        "bf16 input: normalise x.float(), cast the result to bf16, then multiply by the weight"


def test_rope_rotation_is_a_complex_rotation():
    """Meta's formulation: the pair (x[2i], x[2i+1]) is the complex number
    x[2i] + i x[2i+1], multiplied by e^(i p theta^(-2i/head_dim)) at position p."""
    torch.manual_seed(0)
    B, T, H, hd = 2, 6, 3, 8
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 3, 0, 11, 2, 9]])  # each row its own positions
    x = torch.randn(B, T, H, hd)
    for theta in (10000.0, 500000.0):
        freqs = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)  # (hd/2,): plain RoPE's speeds
        rotation = M.rope_rotation(positions, freqs.float())
        assert all(r.shape == (B, T, 1, hd) and r.dtype == torch.float32 for r in rotation)
        angles = positions.double()[:, :, None, None] * freqs  # (B, T, 1, hd/2)
        pairs = torch.view_as_complex(x.double().unflatten(-1, (hd // 2, 2)).contiguous())  # (B, T, H, hd/2)
        expected = torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2)
        assert (M.apply_rope(x, rotation).double() - expected).abs().max() < 1e-5


def test_rope_rotates_bf16_in_fp32_and_rounds_once():
    """A bf16 query or key is rotated in fp32 and rounded to bf16 once, as Meta
    rotates: bit for bit the fp32 rotation of the same numbers, then the cast
    (a rotation in bf16 would round each product and the sum). Its gradient
    comes back in bf16: each of its two terms (through cos and through sin) is
    rounded, then their sum, so it is within 2u (|g cos| + |swap(g) sin|) of the
    fp32 rotation's gradient, g being the incoming one and u = 2^-8 bf16's unit roundoff."""
    torch.manual_seed(0)
    positions = torch.arange(40)[None].expand(2, 40)
    rotation = M.rope_rotation(positions, 10000.0 ** (-torch.arange(0, 64, 2) / 64))
    x = torch.randn(2, 40, 3, 64).bfloat16().requires_grad_()
    out = M.apply_rope(x, rotation)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, M.apply_rope(x.detach().float(), rotation).bfloat16())
    cos, sin = (r.bfloat16() for r in rotation)
    in_bf16 = torch.addcmul(x.detach() * cos, x.detach().unflatten(-1, (-1, 2)).flip(-1).flatten(-2), sin)
    assert not torch.equal(out, in_bf16)  # the test can tell the two apart
    grad = torch.randn_like(out)
    out.backward(grad)
    xf = x.detach().float().requires_grad_()
    M.apply_rope(xf, rotation).backward(grad.float())
    assert x.grad.dtype == torch.bfloat16
    g, (cos, sin) = grad.float(), rotation
    bound = 2 * 2 ** -8 * ((g * cos).abs() + (g.unflatten(-1, (-1, 2)).flip(-1).flatten(-2) * sin).abs())
    assert ((x.grad.float() - xf.grad).abs() <= bound).all()


# --- bad input: clear errors naming the problem --------------------------------

def test_load_tensors_takes_each_parameter_once_in_its_shape():
    """load_tensors (every reader's last step): a name the model lacks, a
    part of another shape and a parameter never given are each refused, named
    with the source."""
    from checkpoint import load_tensors
    model = Transformer(CONFIGS[0][1])
    given = [(n, p.detach().clone()) for n, p in model.named_parameters()]
    load_tensors(model, given, "src")
    for tensors, message in [(given + [("layers.9.attention.wq.weight", given[1][1])],
                              "src: unexpected tensor layers.9.attention.wq.weight"),
                             ([(given[0][0], given[0][1][:-1])] + given[1:], f"src: tensor {given[0][0]} has shape"),
                             ([(given[0][0], given[0][1].t())] + given[1:], f"src: tensor {given[0][0]} has shape"),
                             (given[1:], f"src: missing tensors: {hf_name(given[0][0])}")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            load_tensors(model, tensors, "src")


def test_gguf_file_takes_a_packages_one_gguf_file(tmp_path, monkeypatch):
    """--from_gguf=PACKAGE: the package's one .gguf file; with two it cannot
    know which, and says so (as for a name that is no package)."""
    from checkpoint import gguf_file
    (tmp_path / "ggufpkg").mkdir()
    (tmp_path / "ggufpkg" / "__init__.py").write_text("")
    (tmp_path / "ggufpkg" / "model-q8.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert gguf_file("ggufpkg") == str(tmp_path / "ggufpkg" / "model-q8.gguf")
    (tmp_path / "ggufpkg" / "model-f16.gguf").write_bytes(b"GGUF")
    with pytest.raises(FileNotFoundError, match="ggufpkg: neither a .gguf file nor an installed package with one"):
        gguf_file("ggufpkg")


def test_missing_tensor(tmp_path):
    from safetensors.torch import load_file, save_file
    save_model(random_model(CONFIGS[0][1]), tmp_path / "c")
    f = tmp_path / "c" / "model.safetensors"
    tensors = load_file(f)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(tmp_path / "c")
    # five named, more counted (layer 1's up_proj is gone already)
    gone = [k for k in tensors if k.startswith("model.layers.0.")]
    for n, said in ((4, r"model\.layers\.1\.mlp\.up_proj\.weight$"), (5, r"\.weight and 1 more$")):
        save_file({k: v for k, v in tensors.items() if k not in gone[:n]}, f, metadata={"format": "pt"})
        with pytest.raises(ValueError, match=said):
            load_model(tmp_path / "c")


def test_tied_export_that_also_stores_lm_head_and_inv_freq_loads(tmp_path):
    """Some tied exports store lm_head.weight anyway (a copy of the
    embedding), older ones the rotary buffer rotary_emb.inv_freq: such a file
    loads, with the logits of the model it holds (we compute the frequencies
    and use the one embedding). Any other extra tensor is still refused."""
    from safetensors.torch import load_file, save_file
    args = NEW_CONFIGS[0][1]  # tied
    model = random_model(args)
    save_model(model, tmp_path / "c")
    f = tmp_path / "c" / "model.safetensors"
    tensors = load_file(f)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    hd = args.head_dim
    for layer in range(args.n_layers):
        tensors[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = \
            1.0 / args.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    save_file(tensors, f, metadata={"format": "pt"})
    loaded = load_model(tmp_path / "c").eval()
    tokens = torch.randint(0, args.vocab_size, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    tensors["model.layers.0.self_attn.q_norm.weight"] = torch.ones(hd)
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected tensors .*: model\.layers\.0\.self_attn\.q_norm\.weight$"):
        load_model(tmp_path / "c")


def test_shape_mismatch(tmp_path):
    save_model(random_model(CONFIGS[0][1]), tmp_path / "c")
    cfg = json.load(open(tmp_path / "c" / "config.json"))
    cfg["intermediate_size"] += 32
    json.dump(cfg, open(tmp_path / "c" / "config.json", "w"))
    with pytest.raises(ValueError, match=r"tensor layers\.0\.feed_forward\.w\d\.weight \(model\.layers\.0\.mlp\.\w+_proj\.weight\) has shape .*, the config implies"):
        load_model(tmp_path / "c")


def test_vocab_differs_from_tokenizer(tmp_path, toy_tokenizer_path):
    with pytest.raises(ValueError, match="the model's vocab_size is 300 but tokenizer .* has \\d+ tokens"):
        save_model(random_model(CONFIGS[0][1]), tmp_path / "c", tokenizer_path=toy_tokenizer_path)
    save_model(random_model(CONFIGS[0][1]), tmp_path / "c")
    import shutil
    shutil.copy(toy_tokenizer_path, tmp_path / "c" / "tokenizer.model")
    with pytest.raises(ValueError, match="vocab_size is 300 but tokenizer .* has \\d+ tokens"):
        load_model(tmp_path / "c")
    # a Hugging Face tokenizer.json (Llama 3's, SmolLM2's kind) of 400 tokens beside a 300-row model: refused too
    from tokenizers import Tokenizer as HFTok, models
    save_model(random_model(CONFIGS[0][1]), tmp_path / "j")
    vocab = {f"w{i}": i for i in range(400)}
    HFTok(models.WordLevel(vocab, unk_token="w0")).save(str(tmp_path / "j" / "tokenizer.json"))
    (tmp_path / "j" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "w1"}))
    with pytest.raises(ValueError, match="vocab_size is 300 but tokenizer .*j has 400 tokens"):
        load_model(tmp_path / "j")


def test_corrupt_or_missing_config(tmp_path):
    save_model(random_model(CONFIGS[0][1]), tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text('{"hidden_size": 64, ')
    with pytest.raises(ValueError, match=r"config\.json: corrupt JSON"):
        load_model(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text('{"hidden_size": 64}')
    with pytest.raises(ValueError, match="missing keys: intermediate_size"):
        read_config(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text('[{"hidden_size": 64}]')
    with pytest.raises(ValueError, match=r"config\.json: expected a JSON object, found list"):
        read_config(tmp_path / "c")
    # a value of the wrong type or sign, and heads that do not group: said in the file's own names
    good = json.loads(json.dumps(hf_config(CONFIGS[0][1])))
    for change, message in [({"hidden_size": "64"}, "hidden_size '64': each must be a positive number"),
                            ({"num_hidden_layers": 0}, "num_hidden_layers 0: each"),
                            ({"vocab_size": True}, "vocab_size True: each"),
                            ({"rms_norm_eps": "1e-5"}, "rms_norm_eps '1e-5': each"),
                            ({"rms_norm_eps": 0}, "rms_norm_eps 0: each"),
                            ({"rope_theta": -1.0}, "rope_theta -1.0: each"),
                            ({"head_dim": 0}, "head_dim 0: each"),
                            ({"max_position_embeddings": 2048.0}, "max_position_embeddings 2048.0: each"),
                            ({"num_attention_heads": 3, "num_key_value_heads": 2},
                             "num_attention_heads 3 must be a multiple of num_key_value_heads 2")]:
        (tmp_path / "c" / "config.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(ValueError, match=re.escape(f"config.json: {message}")):
            read_config(tmp_path / "c")
    os.remove(tmp_path / "c" / "config.json")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="model.safetensors is a file: give the checkpoint's folder"):
        load_model(tmp_path / "model.safetensors")


def test_a_file_that_is_not_gguf_is_refused_with_a_message(tmp_path):
    """python checkpoint.py --from_gguf=FILE with a file that is not GGUF (or
    empty): one line naming the setting, exit status 2, no traceback."""
    (tmp_path / "junk.gguf").write_text("junk")
    (tmp_path / "empty.gguf").write_bytes(b"")
    for name in ("junk.gguf", "empty.gguf"):
        r = subprocess.run([sys.executable, "checkpoint.py", f"--from_gguf={tmp_path / name}",
                            f"--out={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert r.stderr.startswith(f"error: --from_gguf={tmp_path / name}: "), r.stderr
        assert not (tmp_path / "out").exists()
    r = subprocess.run([sys.executable, "checkpoint.py", "--from_gguf=", f"--out={tmp_path / 'out'}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)  # (it said "error: : neither a .gguf file ...")
    assert r.returncode == 2 and r.stderr.startswith("error: --from_gguf= names nothing"), r.stderr


def test_a_gguf_conversion_replaces_only_an_earlier_conversion(tmp_path):
    """python checkpoint.py --from_gguf=FILE --out=FOLDER replaces FOLDER whole:
    a folder holding anything else (a run, a model with its own tokenizer, notes)
    is refused before any work, and left as it was; one holding only what a
    conversion writes (or nothing) may be replaced."""
    pytest.importorskip("gguf")
    from checkpoint import earlier_conversion
    (tmp_path / "junk.gguf").write_text("junk")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "mine" / "config.json").write_text("{}")
    r = subprocess.run([sys.executable, "checkpoint.py", f"--from_gguf={tmp_path / 'junk.gguf'}",
                        f"--out={tmp_path / 'mine'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"--out={tmp_path / 'mine'} exists and holds files other than a converted checkpoint's" in r.stderr
    assert sorted(os.listdir(tmp_path / "mine")) == ["config.json", "notes.txt"]
    (tmp_path / "here").mkdir()  # no --out: refused, not written into the folder it runs in
    for out in ([], ["--out= "]):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "checkpoint.py"), f"--from_gguf={tmp_path / 'junk.gguf'}",
                            *out], cwd=tmp_path / "here", capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "--from_gguf needs --out=FOLDER" in r.stderr, r.stderr[-2000:]
    assert os.listdir(tmp_path / "here") == []
    (tmp_path / "mine" / "notes.txt").unlink()
    (tmp_path / "mine" / "model-00001-of-00002.safetensors").write_text("")
    assert earlier_conversion(tmp_path / "mine") and not earlier_conversion(tmp_path / "junk.gguf")
    (tmp_path / "mine" / "adapter_model.safetensors").write_text("")  # (a LoRA adapter: not a conversion's shard)
    assert not earlier_conversion(tmp_path / "mine")
    (tmp_path / "mine" / "adapter_model.safetensors").unlink()
    (tmp_path / "mine" / "model-card.md").write_text("mine")  # named like a shard's start, but the user's
    assert not earlier_conversion(tmp_path / "mine")
    (tmp_path / "mine" / "model-card.md").unlink()
    (tmp_path / "mine" / "tokenizer.model").write_text("")  # (a SentencePiece checkpoint: not what it writes)
    assert not earlier_conversion(tmp_path / "mine")
    (tmp_path / "empty").mkdir()
    assert earlier_conversion(tmp_path / "empty")


def test_safetensors_data_is_8_byte_aligned_and_a_tokenizer_is_saved_as_tokenizer_model(tmp_path,
                                                                                           toy_tokenizer_path):
    """The safetensors header is padded so that the tensors start on an 8-byte
    boundary (the format's rule: readers may map the file and view the
    tensors in place), whatever the header's length; a SentencePiece model
    of any name is saved as tokenizer.model, the name loaders look for."""
    import shutil
    import struct

    from tokenizer import Tokenizer
    for v in (64, 100, 1000, 12345):  # headers of different lengths
        save_model(Transformer(ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=v, multiple_of=32)), tmp_path / str(v))
        header = struct.unpack("<Q", (tmp_path / str(v) / "model.safetensors").read_bytes()[:8])[0]
        assert (8 + header) % 8 == 0, (v, header)
    shutil.copy(toy_tokenizer_path, tmp_path / "tok.model")
    n = Tokenizer(toy_tokenizer_path).vocab_size
    save_model(random_model(preset("toy-tiny", vocab_size=n)), tmp_path / "named", tokenizer_path=str(tmp_path / "tok.model"))
    assert "tokenizer.model" in os.listdir(tmp_path / "named") and "tok.model" not in os.listdir(tmp_path / "named")
    assert Tokenizer(str(tmp_path / "named")).vocab_size == n


def test_matching_tokenizer_is_copied_and_checked(tmp_path, toy_tokenizer_path):
    from tokenizer import Tokenizer
    n = Tokenizer(toy_tokenizer_path).vocab_size
    model = random_model(preset("toy-tiny", vocab_size=n))
    save_model(model, tmp_path / "c", tokenizer_path=toy_tokenizer_path)
    assert os.path.exists(tmp_path / "c" / "tokenizer.model")
    assert load_model(tmp_path / "c").args.vocab_size == n


def test_truncated_weights_name_the_file(tmp_path):
    """A copy cut short (a full disk, a killed download): the error names the file."""
    save_model(Transformer(preset("toy-tiny")), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"{weights}: cannot read it as safetensors .*truncated"):
        load_model(tmp_path / "ckpt")
    # a sharded one's index that is not an index (a list, not an object with weight_map), by name
    save_model(Transformer(preset("toy-tiny")), tmp_path / "sharded", max_shard_bytes=100_000)
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(ValueError, match="model.safetensors.index.json: not a safetensors index"):
        load_model(tmp_path / "sharded")
    # Meta's layout: an empty consolidated.00.pth (torch.load with mmap: a RuntimeError), by name
    args = ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=300, multiple_of=32)
    make_meta_layout(random_model(args), tmp_path / "meta", 1)
    (tmp_path / "meta" / "consolidated.00.pth").write_bytes(b"")
    with pytest.raises(ValueError, match=r"consolidated\.00\.pth: cannot read it as a PyTorch checkpoint"):
        load_model(tmp_path / "meta")


def test_shards_hold_at_most_max_shard_bytes_and_are_filled_up_to_it(tmp_path):
    """save_model's shards: each at most max_shard_bytes (unless one tensor
    alone is larger), and a shard is closed only when the next tensor would
    not fit: at max_shard_bytes = 76800 + 256 + 16384 (the embedding, 300 x 64
    fp32, then layer 0's norm, 64, and wq, 64 x 64) the first shard holds those
    three exactly, filling it to the byte."""
    from safetensors import safe_open

    from checkpoint import save_model
    from model import ModelArgs, Transformer
    model = Transformer(ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=300, multiple_of=16))
    limit = 76800 + 256 + 16384
    save_model(model, tmp_path / "c", max_shard_bytes=limit)
    index = json.load(open(tmp_path / "c" / "model.safetensors.index.json"))
    shards = []  # per file, in order: [(offset, bytes)] of its tensors
    for fname in sorted(set(index["weight_map"].values())):
        with open(tmp_path / "c" / fname, "rb") as f:  # the safetensors header: 8 bytes of length, then JSON
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        shards.append(sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__"))
    with safe_open(tmp_path / "c" / f"model-00001-of-{len(shards):05d}.safetensors", framework="pt") as f:
        assert sorted(f.keys()) == ["model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                                    "model.layers.0.self_attn.q_proj.weight"]
    sizes = [sum(end - start for start, end in s) for s in shards]
    assert sizes[0] == limit
    assert all(size <= limit or len(s) == 1 for size, s in zip(sizes, shards))
    for size, nxt in zip(sizes, shards[1:]):  # closed only when the next tensor would overflow it
        assert size + (nxt[0][1] - nxt[0][0]) > limit


@pytest.mark.parametrize("width", [1, 11, 100, 150, 169, 200, 1000])
def test_any_feed_forward_width_in_config_json_reads_back_exactly(width):
    """config.json's intermediate_size is the width, whatever it is: 8/3 x 64
    = 170, and widths below it (100, 150, 169) or no rule's multiple (200,
    1000) come back as themselves."""
    from checkpoint import args_from_hf_config
    cfg = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=300, intermediate_size=width)
    assert args_from_hf_config(cfg).hidden_dim == width


def test_a_swap_that_fails_between_its_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    """write_folder_atomically: the old folder has been moved aside and the
    new one's rename into place fails (or a Ctrl-C / SIGTERM lands there):
    the old folder is back under its name at once, not only at the next write."""
    from data import write_folder_atomically

    def writing(text):
        return lambda folder: open(os.path.join(folder, "f"), "w").write(text)
    write_folder_atomically(tmp_path / "ckpt", writing("old"))
    real = os.replace

    def replace(src, dst):
        if os.path.basename(os.fspath(src)) == ".tmp-ckpt":  # the new folder going into place
            raise KeyboardInterrupt
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_folder_atomically(tmp_path / "ckpt", writing("new"))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ckpt"] and (tmp_path / "ckpt" / "f").read_text() == "old"
