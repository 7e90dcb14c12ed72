"""
Direct Preference Optimization (DPO, Rafailov et al. 2023): given a prompt x
and two responses, y_w (chosen) preferred to y_l (rejected), raise the
policy's likelihood of y_w relative to y_l, measured against a frozen
reference model (the starting checkpoint):

    loss = -log sigmoid( beta * [ (log pi(y_w|x) - log ref(y_w|x))
                                - (log pi(y_l|x) - log ref(y_l|x)) ] )        (DPO eq. 7)

log pi(y|x) is the SUM of the response tokens' log-probabilities (not their
mean). The reference never changes, so its log-probs are computed once before
training and stored in out_dir/ref_logps.jsonl: training holds only the policy.

    python train_dpo.py --init_from=out/M1/model --data=pairs.jsonl --out_dir=out/M2
    torchrun --nproc_per_node=8 train_dpo.py --init_from=... --data=...
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
from data import read_jsonl, write_jsonl
from configurator import configure
from model import estimate_mfu
from tokenizer import Tokenizer, chat_tokens
from train_sft import collate, micro_batches

# -----------------------------------------------------------------------------
# Settings (python train_dpo.py --help lists them)
init_from = "out/sft/model"  # the policy's start AND the reference: a checkpoint folder (HF layout)
tokenizer = ""             # tokenizer.model; '' = the one in init_from
data = "data/pairs.jsonl"  # JSON Lines of {"prompt", "chosen", "rejected"}
eval_data = ""             # held-out pairs; '' = hold out eval_fraction of data
eval_fraction = 0.05       # share of data held out when there is no eval_data
out_dir = "out/dpo"        # gets model/, state/, ref_logps.jsonl, metrics.jsonl
max_seq_len = 0            # pairs with a longer sequence are skipped (and counted); 0 = the model's
beta = 0.1                 # DPO temperature (paper: 0.1)
batch_size = 16            # pairs per optimizer step, over all ranks (paper: 16)
micro_batch_size = 2       # pairs per forward pass on one rank (2x sequences: chosen + rejected)
epochs = 1                 # passes over the data, when max_steps is 0
max_steps = 0              # optimizer steps; 0 = from epochs
lr = 1e-6                  # peak learning rate (paper: 1e-6)
min_lr = 1e-7              # cosine decays to this (paper: 1e-7)
warmup_steps = 0           # linear warmup steps
weight_decay = 0.0         # AdamW decoupled weight decay
beta1 = 0.9                # AdamW
beta2 = 0.95               # AdamW
grad_clip = 1.0            # clip the global gradient norm to this; 0 = off
dropout = 0.1              # paper: 0.1
seed = 1337                # data order, dropout
eval_interval = 50         # steps between eval metrics (and at the end)
save_interval = 50         # steps between resumable training states (paper: a checkpoint every 200)
log_interval = 1           # steps between metrics lines
activation_checkpointing = False  # recompute each block in backward
compile = False            # torch.compile each block
device = ""                # '' = cuda if available, else cpu
save_dtype = ""            # dtype of the final model; '' = bfloat16 on GPU, float32 on CPU
peak_flops = 989e12        # per device, for MFU
crash_after_step = -1      # testing: exit hard right after this step (a simulated kill)
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}


def settings(config):
    unknown = set(config or {}) - set(DEFAULTS)
    if unknown:
        raise KeyError(f"unknown settings: {', '.join(sorted(unknown))}")
    return SimpleNamespace(**{**DEFAULTS, **(config or {})})


# -----------------------------------------------------------------------------
# The loss

def dpo_losses(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Per pair: the DPO loss, and the implicit rewards beta * (log pi - log ref)
    of the chosen and rejected responses (DPO section 5). Inputs (B,) summed
    sequence log-probs."""
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """(mean loss, chosen rewards, rejected rewards) for a batch of pairs."""
    losses, chosen_rewards, rejected_rewards = dpo_losses(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    return losses.mean(), chosen_rewards, rejected_rewards


def sequence_logps(model, tokens, targets, env):
    """(B,) sum over each row's response tokens of log p(token), in fp32."""
    with env.autocast():
        logits = model(tokens.to(env.device))
    targets = targets.to(env.device)
    token_logps = -F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none")
    return token_logps.sum(dim=1)  # ignored positions contribute 0


def pair_batch(pairs, pad_id, weights=None):
    """One forward for chosen and rejected: rows [chosen_0..chosen_B-1, rejected_0..]."""
    seqs = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    w = None if weights is None else list(weights) * 2
    return collate(seqs, pad_id, w)


def tokenize_pairs(tok, records, max_len, source):
    pairs, skipped = [], 0
    for rec in records:
        chosen = chat_tokens(tok, rec["prompt"], rec["chosen"])
        rejected = chat_tokens(tok, rec["prompt"], rec["rejected"])
        if max(len(chosen[0]), len(rejected[0])) - 1 > max_len:
            skipped += 1
        else:
            pairs.append({"chosen": chosen, "rejected": rejected})
    if skipped:
        print(f"{source}: skipped {skipped} of {len(records)} pairs longer than {max_len} tokens")
    if not pairs:
        raise ValueError(f"{source}: every pair is longer than max_seq_len={max_len}")
    return pairs


# -----------------------------------------------------------------------------
# The reference: computed once, stored beside the run

@torch.no_grad()
def reference_logps(model, pairs, env, c, pad_id, path):
    """Fill pair["ref_chosen"], pair["ref_rejected"] for every pair, from `path`
    if an earlier (possibly killed) run wrote it, else with `model` (the
    starting checkpoint, in eval mode: no dropout), split over ranks."""
    exists = D.all_sum(env, float(env.master and os.path.exists(path)))[0] > 0  # rank 0 decides for all
    if not exists:
        model.eval()
        mine = D.split_even(list(enumerate(pairs)), env.rank, env.world)
        rows = []
        for mb in micro_batches(mine, c.micro_batch_size):
            tokens, targets = pair_batch([p for (_, p), _ in mb], pad_id)
            logps = sequence_logps(model, tokens, targets, env).cpu().tolist()
            n = len(mb)
            rows += [(i, logps[k], logps[n + k]) for k, ((i, _), w) in enumerate(mb) if w]
        model.train()
        D.reshard(model)
        if env.world > 1:
            gathered = [None] * env.world
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        if env.master:  # complete or absent, never half written
            write_jsonl(path, [{"index": i, "chosen": c, "rejected": r} for i, c, r in sorted(rows)])
        D.barrier(env)
    rows = read_jsonl(path)
    if len(rows) != len(pairs):
        raise ValueError(f"{path} has {len(rows)} reference log-probs for {len(pairs)} pairs: it belongs to "
                         "other data; delete it to recompute")
    for row in rows:
        pairs[row["index"]]["ref_chosen"] = row["chosen"]
        pairs[row["index"]]["ref_rejected"] = row["rejected"]


def dpo_sums(model, mb, env, c, pad_id, n_pairs):
    """For a micro-batch of (pair, weight): the loss as this micro-batch's share
    of the global mean (sum over its pairs / n_pairs), and the sums of the
    rewards, accuracies and margins to log."""
    pairs = [p for p, _ in mb]
    w = torch.tensor([float(x) for _, x in mb], device=env.device)
    tokens, targets = pair_batch(pairs, pad_id)
    logps = sequence_logps(model, tokens, targets, env)  # (2n,): chosen rows, then rejected
    n = len(pairs)
    ref_c = torch.tensor([p["ref_chosen"] for p in pairs], device=env.device)
    ref_r = torch.tensor([p["ref_rejected"] for p in pairs], device=env.device)
    losses, rc, rr = dpo_losses(logps[:n], logps[n:], ref_c, ref_r, c.beta)
    loss = (losses * w).sum() / n_pairs
    stats = [(losses * w).sum().item(), (rc * w).sum().item(), (rr * w).sum().item(),
             ((rc > rr).float() * w).sum().item(), ((rc - rr) * w).sum().item(), w.sum().item()]
    return loss, stats


@torch.no_grad()
def evaluate(model, pairs, env, c, pad_id):
    model.eval()
    stats = [0.0] * 6
    for mb in micro_batches(D.split_even(pairs, env.rank, env.world), c.micro_batch_size):
        _, s = dpo_sums(model, mb, env, c, pad_id, 1)
        stats = [a + b for a, b in zip(stats, s)]
    model.train()
    D.reshard(model)
    return summarize(D.all_sum(env, *stats), "eval/")


def summarize(stats, prefix=""):
    """Global sums -> the means TRL logs."""
    loss, rc, rr, acc, margin, n = stats
    n = max(n, 1)
    return {prefix + "loss": loss / n, prefix + "rewards/chosen": rc / n, prefix + "rewards/rejected": rr / n,
            prefix + "rewards/accuracies": acc / n, prefix + "rewards/margins": margin / n}


# -----------------------------------------------------------------------------

def train(config=None):
    """Run DPO with settings `config` (dict, over the defaults above). Returns
    {"model": path of the trained model, "loss": ..., metrics of the last step}."""
    c = settings(config)
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

    model = D.build_model(env, c.init_from, dropout=c.dropout, seed=c.seed,
                          activation_checkpointing=c.activation_checkpointing, compile=c.compile)
    if model.args.vocab_size != tok.vocab_size:
        raise ValueError(f"tokenizer {tok_path} has {tok.vocab_size} tokens, the model {model.args.vocab_size}")
    max_len = min(c.max_seq_len or model.args.max_seq_len, model.args.max_seq_len)
    pad_id = tok.eos_id

    fields = ["prompt", "chosen", "rejected"]
    records = read_jsonl(c.data, fields, allow_empty=False)
    if c.eval_data:
        train_recs, eval_recs = records, read_jsonl(c.eval_data, fields, allow_empty=False)
    else:
        train_recs, eval_recs = D.hold_out(records, c.eval_fraction, c.seed)
    train_set = tokenize_pairs(tok, train_recs, max_len, c.data)
    eval_set = tokenize_pairs(tok, eval_recs, max_len, c.eval_data or c.data) if eval_recs else []
    # the reference is the model as loaded, before any step (reused on resume)
    reference_logps(model, train_set + eval_set, env, c, pad_id, os.path.join(c.out_dir, "ref_logps.jsonl"))
    steps = c.max_steps or math.ceil(c.epochs * len(train_set) / c.batch_size)
    log(f"DPO: {len(train_set)} train / {len(eval_set)} eval pairs, {steps} steps of {c.batch_size}, "
        f"beta {c.beta}, world size {env.world}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=c.lr, betas=(c.beta1, c.beta2),
                                  weight_decay=c.weight_decay)
    state_dir = os.path.join(c.out_dir, "state")
    metrics = os.path.join(c.out_dir, "metrics.jsonl")
    step = D.resume(model, optimizer, state_dir, metrics, env)  # 0 on a fresh start
    n_params = model.num_params()
    record = {}
    model.train()

    bar = tqdm(total=steps, initial=step, disable=not env.master, desc="dpo")
    while step < steps:
        if eval_set and step % c.eval_interval == 0:
            D.log_metrics(env, metrics, {"step": step, **evaluate(model, eval_set, env, c, pad_id)})
        t0 = time.time()
        lr = D.lr_at(step, steps, c.warmup_steps, c.lr, c.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        D.seed_step(c.seed, step, env.rank)

        batch = [train_set[i] for i in D.batch_indices(step, c.batch_size, len(train_set), c.seed)]
        per_rank = c.batch_size // env.world
        mine = [(p, 1) for p in batch[env.rank * per_rank:(env.rank + 1) * per_rank]]
        mbs = micro_batches(mine, c.micro_batch_size)
        stats = [0.0] * 6
        for i, mb in enumerate(mbs):
            if env.fsdp:
                model.set_requires_gradient_sync(i == len(mbs) - 1)
            # each micro-batch's loss is its share of the mean over the GLOBAL
            # batch; times world undoes FSDP's average over ranks
            loss, s = dpo_sums(model, mb, env, c, pad_id, c.batch_size)
            (loss * env.world).backward()
            stats = [a + b for a, b in zip(stats, s)]
        record = summarize(D.all_sum(env, *stats))
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"loss is {record['loss']} at step {step}; stopping. The last good training "
                                     f"state is in {state_dir} (if any was saved); lower lr and rerun to resume.")
        grad_norm = D.clip_and_step(model, optimizer, c.grad_clip)
        step += 1
        bar.update(1)

        if step % c.log_interval == 0 or step == steps:
            dt = time.time() - t0
            n_seen = sum(len(p["chosen"][0]) + len(p["rejected"][0]) - 2 for p in batch)
            mfu = estimate_mfu(model.args, n_params, n_seen / dt / env.world, n_seen / len(batch) / 2, c.peak_flops)
            record.update(step=step, lr=lr, grad_norm=grad_norm.item(), tokens_per_s=n_seen / dt, mfu=mfu)
            bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['rewards/accuracies']:.2f}")
            D.log_metrics(env, metrics, record)
        if step % c.save_interval == 0 or step == steps:
            D.save_state(model, optimizer, step, state_dir, env, {"loss": record["loss"]})
        if step == c.crash_after_step:
            os._exit(3)  # testing: die like a killed job
    bar.close()

    if eval_set:
        record.update(evaluate(model, eval_set, env, c, pad_id))
        D.log_metrics(env, metrics, {"step": step, **{k: v for k, v in record.items() if k.startswith("eval/")}})
    dtype = getattr(torch, c.save_dtype) if c.save_dtype else (
        torch.bfloat16 if env.device.startswith("cuda") else torch.float32)
    out = os.path.join(c.out_dir, "model")
    D.save_model(model, env, out, tok_path, dtype)
    log(f"saved {out}")
    return {"model": out, "steps": step, **record}


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
