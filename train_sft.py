"""
Supervised fine-tuning (SFT): teach the model to answer a prompt with its
response, in the project's chat template

    <s>[INST] {prompt} [/INST] {response}</s>

The loss is the cross-entropy of the RESPONSE tokens only (and the EOS that
ends them): the prompt is given, not learned. It is averaged over every
response token of the global batch, so gradient accumulation and any number
of data-parallel ranks compute exactly the gradient of one big batch.

    python train_sft.py config/sft_toy.py --max_steps=100
    torchrun --nproc_per_node=8 train_sft.py --init_from=llama2-7b-hf --data=ift.jsonl
    torchrun --nnodes=8 --node_rank=$R --master_addr=$HEAD --nproc_per_node=8 train_sft.py ...
    python train_sft.py --plan_only=True --model=llama2-70b --world_size=64
"""
import math
import os
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from tqdm import tqdm

import distributed as D
from data import read_jsonl
from configurator import configure
from model import estimate_mfu
from tokenizer import Tokenizer, chat_tokens

# -----------------------------------------------------------------------------
# Settings (python train_sft.py --help lists them)
init_from = "scratch"      # a checkpoint folder (Hugging Face layout), or 'scratch'
model = "toy"              # preset when init_from='scratch'
tokenizer = ""             # tokenizer.model; '' = the one in init_from
data = "data/sft.jsonl"    # JSON Lines of {"prompt", "response"} ({"text"} with template='text')
template = "chat"          # 'chat': [INST] prompt [/INST] response, loss on the response; 'text': plain documents, loss on every token (pretraining)
eval_data = ""             # held-out JSON Lines; '' = hold out eval_fraction of data
eval_fraction = 0.05       # share of data held out when there is no eval_data
out_dir = "out/sft"        # gets model/ (HF layout), state/ (resume), metrics.jsonl
max_seq_len = 0            # longer examples are skipped (and counted); 0 = the model's
batch_size = 16            # examples per optimizer step, over all ranks (paper: 16)
micro_batch_size = 4       # examples per forward pass on one rank
epochs = 1                 # passes over the data, when max_steps is 0
max_steps = 0              # optimizer steps; 0 = from epochs
lr = 5.5e-6                # peak learning rate (paper: 5.5e-6)
min_lr = 1.1e-6            # cosine decays to this (paper: 1.1e-6)
warmup_steps = 0           # linear warmup steps
weight_decay = 0.0         # AdamW decoupled weight decay
beta1 = 0.9                # AdamW
beta2 = 0.95               # AdamW
grad_clip = 1.0            # clip the global gradient norm to this; 0 = off
dropout = 0.1              # paper: 0.1
seed = 1337                # data order, dropout, random init
eval_interval = 50         # steps between eval losses (and at the end)
save_interval = 50         # steps between resumable training states
log_interval = 1           # steps between metrics lines
activation_checkpointing = False  # recompute each block in backward: less memory, ~1.3x time
compile = False            # torch.compile each block
device = ""                # '' = cuda if available, else cpu
save_dtype = ""            # dtype of the final model; '' = bfloat16 on GPU, float32 on CPU
peak_flops = 989e12        # per device, for MFU (H100/H200 bf16 dense)
plan_only = False          # print the memory plan (of init_from, else of model) and exit
world_size = 0             # for plan_only: GPUs to plan for; 0 = this run's
gpu_memory_gb = 80         # for plan_only
crash_after_step = -1      # testing: exit hard right after this step (a simulated kill)
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}


def settings(config):
    """Defaults with `config` (a dict) on top; unknown keys are an error."""
    unknown = set(config or {}) - set(DEFAULTS)
    if unknown:
        raise KeyError(f"unknown settings: {', '.join(sorted(unknown))}")
    return SimpleNamespace(**{**DEFAULTS, **(config or {})})


# -----------------------------------------------------------------------------
# Data: one example = token ids + where the response starts

def tokenize(tok, records, max_len, source, template="chat"):
    """(ids, response_start) per record; examples that do not fit are skipped
    and counted (truncating would cut the EOS the model must learn). With
    template='text' a record is a plain document, learned whole after its BOS."""
    examples, skipped = [], 0
    for rec in records:
        if template == "text":
            ids, start = tok.encode(rec["text"], bos=True, eos=True), 1
        else:
            ids, start = chat_tokens(tok, rec["prompt"], rec["response"])
        if len(ids) - 1 > max_len:  # the model sees ids[:-1]
            skipped += 1
        else:
            examples.append((ids, start))
    if skipped:
        print(f"{source}: skipped {skipped} of {len(records)} examples longer than {max_len} tokens")
    if not examples:
        raise ValueError(f"{source}: every example is longer than max_seq_len={max_len}")
    return examples


def collate(examples, pad_id, weights=None):
    """
    Right-pad a micro-batch into tokens (B, T) and targets (B, T), where
    targets[t] = ids[t+1] on response tokens and -100 (no loss) everywhere
    else: on the prompt and on padding. Causal attention means a row's real
    tokens never see the padding after them, and rows never see each other.
    weights: 0 for a filler row (see split_even) whose targets are all -100.
    """
    T = max(len(ids) for ids, _ in examples) - 1
    tokens = torch.full((len(examples), T), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), T), -100, dtype=torch.long)
    for row, (ids, start) in enumerate(examples):
        ids = torch.tensor(ids)
        tokens[row, :len(ids) - 1] = ids[:-1]
        if weights is None or weights[row]:
            # position t predicts ids[t+1]; the first response token is
            # predicted at position start-1 (by the "[/INST]" token)
            targets[row, start - 1:len(ids) - 1] = ids[start:]
    return tokens, targets


def sft_loss_sum(model, tokens, targets, env):
    """Sum of the response tokens' cross-entropies (log-softmax in fp32)."""
    with env.autocast():
        logits = model(tokens.to(env.device))
    return F.cross_entropy(logits.float().flatten(0, 1), targets.to(env.device).flatten(),
                           ignore_index=-100, reduction="sum")


def micro_batches(share, size):
    """items in consecutive chunks of `size` (the last may be shorter)."""
    return [share[i:i + size] for i in range(0, len(share), size)]


@torch.no_grad()
def evaluate(model, examples, env, c, pad_id):
    """Mean response-token loss over held-out examples, split over ranks."""
    model.eval()
    total, count = 0.0, 0
    for mb in micro_batches(D.split_even(examples, env.rank, env.world), c.micro_batch_size):
        tokens, targets = collate([x for x, _ in mb], pad_id, [w for _, w in mb])
        total += sft_loss_sum(model, tokens, targets, env).item()
        count += (targets != -100).sum().item()
    model.train()
    D.reshard(model)
    total, count = D.all_sum(env, total, count)
    return total / max(count, 1)


# -----------------------------------------------------------------------------

def train(config=None):
    """Run SFT with settings `config` (dict, over the defaults above). Returns
    {"model": path of the trained model, "loss": last training loss, ...}."""
    c = settings(config)
    if c.plan_only:  # no data, no weights: shapes only (init_from's config, else the preset)
        source = c.init_from if os.path.isdir(c.init_from) else "scratch"
        args = D.model_args(source, c.model, D.preset(c.model).vocab_size, c.dropout)
        plan = D.memory_plan(args, c.world_size or int(os.environ.get("WORLD_SIZE", 1)), c.micro_batch_size,
                             c.max_seq_len or args.max_seq_len, c.activation_checkpointing,
                             gpu_memory_gb=c.gpu_memory_gb, dropout=c.dropout)
        print(plan["text"])
        return plan
    scratch = c.init_from == "scratch"
    if scratch and not c.tokenizer:
        raise ValueError("init_from='scratch' needs --tokenizer=PATH (the vocabulary sets the model's vocab_size)")
    tok_path = c.tokenizer or os.path.join(c.init_from, "tokenizer.model")
    tok = Tokenizer(tok_path)

    env = D.setup(c.device)
    try:
        return _train(c, env, tok, tok_path)
    finally:
        D.teardown(env)


def _train(c, env, tok, tok_path):
    if c.batch_size % (env.world * c.micro_batch_size):
        raise ValueError(f"batch_size {c.batch_size} must divide by world size {env.world} x "
                         f"micro_batch_size {c.micro_batch_size}")
    os.makedirs(c.out_dir, exist_ok=True)
    log = (lambda *a: print(*a, flush=True)) if env.master else (lambda *a: None)

    # the model: from a checkpoint or a preset, sharded when under torchrun
    model = D.build_model(env, c.init_from, c.model, tok.vocab_size, c.dropout, c.seed,
                          c.activation_checkpointing, c.compile)
    if model.args.vocab_size != tok.vocab_size:
        raise ValueError(f"tokenizer {tok_path} has {tok.vocab_size} tokens, the model {model.args.vocab_size}")
    max_len = min(c.max_seq_len or model.args.max_seq_len, model.args.max_seq_len)
    pad_id = tok.eos_id  # Llama has no pad token; padded positions carry no loss anyway

    # the data
    if c.template not in ("chat", "text"):
        raise ValueError(f"template must be 'chat' or 'text', got {c.template!r}")
    fields = ["text"] if c.template == "text" else ["prompt", "response"]
    records = read_jsonl(c.data, fields, allow_empty=False)
    if c.eval_data:
        train_recs, eval_recs = records, read_jsonl(c.eval_data, fields, allow_empty=False)
    else:
        train_recs, eval_recs = D.hold_out(records, c.eval_fraction, c.seed)
    train_set = tokenize(tok, train_recs, max_len, c.data, c.template)
    eval_set = tokenize(tok, eval_recs, max_len, c.eval_data or c.data, c.template) if eval_recs else []
    steps = c.max_steps or math.ceil(c.epochs * len(train_set) / c.batch_size)
    log(f"SFT: {len(train_set)} train / {len(eval_set)} eval examples, {steps} steps of {c.batch_size}, "
        f"{model.num_params() / 1e6:.1f}M parameters, world size {env.world}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=c.lr, betas=(c.beta1, c.beta2),
                                  weight_decay=c.weight_decay)
    state_dir = os.path.join(c.out_dir, "state")
    metrics = os.path.join(c.out_dir, "metrics.jsonl")
    step = D.resume(model, optimizer, state_dir, metrics, env)  # 0 on a fresh start
    n_params = model.num_params()
    loss = float("nan")
    model.train()

    bar = tqdm(total=steps, initial=step, disable=not env.master, desc="sft")
    while step < steps:
        if eval_set and step % c.eval_interval == 0:
            eval_loss = evaluate(model, eval_set, env, c, pad_id)
            D.log_metrics(env, metrics, {"step": step, "eval_loss": eval_loss})
        t0 = time.time()
        lr = D.lr_at(step, steps, c.warmup_steps, c.lr, c.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        D.seed_step(c.seed, step, env.rank)

        # this step's global batch; this rank takes a contiguous part of it
        batch = [train_set[i] for i in D.batch_indices(step, c.batch_size, len(train_set), c.seed)]
        per_rank = c.batch_size // env.world
        mine = batch[env.rank * per_rank:(env.rank + 1) * per_rank]
        mbs = [collate(mb, pad_id) for mb in micro_batches(mine, c.micro_batch_size)]
        # the loss is sum / (response tokens in the GLOBAL batch): the same
        # normaliser on every rank and micro-batch, so gradients just add up
        n_tokens, = D.all_sum(env, sum((t != -100).sum().item() for _, t in mbs))
        loss_sum = 0.0
        for i, (tokens, targets) in enumerate(mbs):
            if env.fsdp:  # reduce-scatter gradients only after the last micro-batch
                model.set_requires_gradient_sync(i == len(mbs) - 1)
            micro_loss = sft_loss_sum(model, tokens, targets, env)
            # FSDP averages gradients over ranks; times world makes that a sum
            (micro_loss / n_tokens * env.world).backward()
            loss_sum += micro_loss.item()
        loss = D.all_sum(env, loss_sum)[0] / n_tokens
        if not math.isfinite(loss):
            # stop before the optimizer touches the weights: the last saved
            # state in out_dir/state is intact and the run can be resumed
            # from it with a lower lr
            raise FloatingPointError(f"loss is {loss} at step {step}; stopping. The last good training "
                                     f"state is in {state_dir} (if any was saved); lower lr and rerun to resume.")
        grad_norm = D.clip_and_step(model, optimizer, c.grad_clip)
        step += 1
        bar.update(1)

        if step % c.log_interval == 0 or step == steps:
            dt = time.time() - t0
            n_seen = sum(len(ids) - 1 for ids, _ in batch)  # real (unpadded) tokens the model ran on
            tps = n_seen / dt  # all ranks together
            mfu = estimate_mfu(model.args, n_params, tps / env.world, n_seen / len(batch), c.peak_flops)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            D.log_metrics(env, metrics, {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm.item(),
                                         "tokens_per_s": tps, "mfu": mfu})
        if step % c.save_interval == 0 or step == steps:
            D.save_state(model, optimizer, step, state_dir, env, {"loss": loss})
        if step == c.crash_after_step:
            os._exit(3)  # testing: die like a killed job, no cleanup
    bar.close()

    eval_loss = evaluate(model, eval_set, env, c, pad_id) if eval_set else None
    if eval_set:
        D.log_metrics(env, metrics, {"step": step, "eval_loss": eval_loss})
    dtype = getattr(torch, c.save_dtype) if c.save_dtype else (
        torch.bfloat16 if env.device.startswith("cuda") else torch.float32)
    out = os.path.join(c.out_dir, "model")
    D.save_model(model, env, out, tok_path, dtype)
    log(f"saved {out} (loss {loss:.4f}" + (f", eval loss {eval_loss:.4f})" if eval_loss is not None else ")"))
    return {"model": out, "loss": loss, "eval_loss": eval_loss, "steps": step}


def main(argv=None):
    config = configure(dict(DEFAULTS, __file__=__file__, __doc__=__doc__), argv)
    try:
        return train(config)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        # bad input or a diverged run: one clear line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    if os.environ.get("TORCH_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["TORCH_NUM_THREADS"]))
    main(sys.argv[1:])
