"""
Direct Preference Optimization (DPO, Rafailov et al. 2023): given a prompt x
and two responses, y_w (chosen) preferred to y_l (rejected), raise the
policy's likelihood of y_w relative to y_l, measured against a frozen
reference model (the starting checkpoint):

    loss = -log sigmoid( beta * [ (log pi(y_w|x) - log ref(y_w|x))
                                - (log pi(y_l|x) - log ref(y_l|x)) ] )        (DPO eq. 7)

log pi(y|x) is the SUM of the response tokens' log-probabilities (not their
mean). With rpo_alpha > 0 each pair's loss also has the chosen response's
negative log-likelihood per token (Iterative RPO, Pang et al. 2024, eq. 1;
the setting's name is TRL's, whose term is instead one mean over all the
chosen tokens of a batch, so a long response weighs more there):

    loss = DPO loss + rpo_alpha * ( -log pi(y_w|x) / |y_w| )

DPO alone only widens the margin, and can do that by lowering both responses'
likelihoods; the NLL term keeps the chosen one likely.

The reference never changes, so its log-probs are computed once before
training and stored in out_dir/ref_logps.jsonl: training holds only the policy.
They are taken without dropout, the policy's with it (the paper trains DPO
with dropout 0.1; TRL turns it off by default): so before any update the
implicit rewards are already below 0 (on the toy world about -0.08 at the
first step, -0.02 to -0.22 over our toy runs' M2 and M3), and a small negative
rewards/chosen in the log is dropout's, not DPO lowering the chosen answers.

This file is DPO's data (pairs), its loss, the reference log-probs and its
training loop; what both trainers share (settings, model building, schedule,
saving and resuming) is in training.py, and the batching of chat sequences
with their loss masks is SFT's (train_sft.collate).

    python train_dpo.py --init_from=out/toy/M1 --data=out/toy/iter1/pairs.jsonl --out_dir=out/toy_dpo
    torchrun --nproc_per_node=8 train_dpo.py --init_from=... --data=...
"""
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import distributed as D
import training as T
import validate
from data import file_fingerprint, fingerprint, read_jsonl, write_jsonl
from model import estimate_mfu
from train_sft import collate, response_example

# -----------------------------------------------------------------------------
# Settings (python train_dpo.py --help lists them): DPO's own here, the rest
# (batch size, schedule, saving, devices) are every trainer's, in training.py
init_from = "out/sft/model"  # the policy's start AND the reference: a checkpoint folder (HF layout)
data = "data/pairs.jsonl"  # JSON Lines of {"prompt", "chosen", "rejected"}
out_dir = "out/dpo"        # gets model/, state/, ref_logps.jsonl, metrics.jsonl, done.json (, checkpoints/)
beta = 0.1                 # DPO temperature (paper: 0.1)
micro_batch_size = 2       # pairs per forward pass on one rank (2x sequences: chosen + rejected)
rpo_alpha = 0.0            # weight of the chosen response's NLL per token (Pang et al. 2024); 0 = plain DPO (the paper)
lr = 1e-6                  # peak learning rate (paper: 1e-6)
min_lr = 1e-7              # cosine decays to this (paper: 1e-7)
keep_every = 0             # also save the model every this many steps, to out_dir/checkpoints/step-N, to choose
                           # one from (paper: every 200 steps; the loop's choice: selfreward.pick_checkpoint);
                           # 0 = the last step's only
# -----------------------------------------------------------------------------
DEFAULTS = {**{k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))},
            **T.SETTINGS}  # this script's settings first, then every trainer's


# -----------------------------------------------------------------------------
# The loss

# Exercise (easy): the DPO loss of each pair (eq. 7 above). Graded by: tests/test_train.py -k dpo_loss
def dpo_losses(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Per pair: the DPO loss, and the implicit rewards beta * (log pi - log ref)
    of the chosen and rejected responses (DPO section 5). Inputs (B,) summed
    sequence log-probs. Returns (losses, chosen_rewards, rejected_rewards),
    each (B,); the rewards detached (they are logged, not trained on); the
    loss through F.logsigmoid, which stays finite at any margin."""
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def chosen_nll(policy_chosen_logps, chosen_tokens):
    """Per pair: the chosen response's negative log-likelihood per token, the
    term Iterative RPO (Pang et al. 2024) adds to the DPO loss, rpo_alpha times.
    chosen_tokens: (B,) the number of response tokens of each chosen response."""
    return -policy_chosen_logps / chosen_tokens


# Exercise (medium): a response's summed log-probability. Graded by: tests/test_train.py -k sequence_logps
def sequence_logps(model, tokens, targets, env):
    """(B,) sum over each row's response tokens of log p(token), in fp32.
    tokens (B, T) are what the model reads and targets (B, T) the next token
    at each response position, -100 elsewhere (train_sft.collate); the
    model's forward pass gives logits (B, T, V), run under env.autocast()
    (bf16 matmuls where the run computes in bf16) with the tensors on
    env.device; the log-softmax in fp32."""
    with env.autocast():
        logits = model(tokens.to(env.device))
    targets = targets.to(env.device)
    token_logps = -F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none")
    return token_logps.sum(dim=1)  # ignored positions contribute 0


def pair_batch(pairs, pad_id):
    """One forward for chosen and rejected: rows [chosen_0..chosen_B-1, rejected_0..].
    collate (train_sft.py) sets the targets of the prompt and the padding to -100,
    so sequence_logps sums log pi(y|x) over the response's tokens alone."""
    return collate([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_id)


def pair_length(pair):
    """A pair's tokens as pair_batch pads it: its longer response's row."""
    return max(len(pair["chosen"][0]), len(pair["rejected"][0]))


def tokenize_pairs(tok, records, max_len, source):
    pairs, skipped = [], 0
    for rec in records:
        chosen = response_example(tok, rec["prompt"], rec["chosen"])
        rejected = response_example(tok, rec["prompt"], rec["rejected"])
        if max(len(chosen[0]), len(rejected[0])) - 1 > max_len:  # (the model reads ids[:-1])
            skipped += 1
        else:
            pairs.append({"chosen": chosen, "rejected": rejected})
    if skipped:
        D.log(f"{source}: skipped {skipped} of {len(records)} pairs longer than {max_len} tokens")
    if not pairs:
        raise validate.BadInput(f"{source}: every pair is longer than max_seq_len={max_len}")
    return pairs


# -----------------------------------------------------------------------------
# The reference: computed once, stored beside the run

def reference_made_from(c, pairs, dtype):
    """What the reference log-probs are computed from: the starting weights, the
    token ids of every pair (which the data, tokenizer and max_seq_len decide)
    and the compute dtype (bf16 log-probs differ from fp32's in the third digit)."""
    return fingerprint(file_fingerprint(c.init_from), [[p["chosen"], p["rejected"]] for p in pairs], str(dtype))


def saved_reference(path, fp):
    """The rows of a reference log-prob file computed from `fp`, or None."""
    if not os.path.exists(path):
        return None
    header, *rows = read_jsonl(path)
    return rows if header.get("made_from") == fp else None


@torch.no_grad()
def fill_reference_logps(model, pairs, env, c, pad_id, path):
    """Fill pair["ref_chosen"], pair["ref_rejected"] for every pair, from `path`
    if an earlier (possibly killed) run wrote it from the same weights and
    pairs (its first line says what it was made from), else with `model` (the
    starting checkpoint, in eval mode: no dropout), split over ranks."""
    fp = reference_made_from(c, pairs, env.dtype)
    # rank 0 reads the file and decides for all (the others need not read it)
    reuse = D.rank0_answer(env, D.is_rank0() and saved_reference(path, fp) is not None)
    if not reuse:
        model.eval()
        mine = T.split_even(list(enumerate(pairs)), env.rank, env.world)
        rows = []
        for mb in T.micro_batches(mine, c.micro_batch_size):
            tokens, targets = pair_batch([p for (_, p), _ in mb], pad_id)
            logps = sequence_logps(model, tokens, targets, env).cpu().tolist()
            n = len(mb)  # logps: the n chosen rows, then the n rejected ones
            # (pair index, chosen, rejected) of each real pair; a filler (weight 0) is dropped
            rows += [(i, logps[k], logps[n + k]) for k, ((i, _), weight) in enumerate(mb) if weight]
        model.train()
        D.reshard(model)
        if env.world > 1:
            gathered = [None] * env.world
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        if D.is_rank0():  # complete or absent, never half written
            write_jsonl(path, [{"made_from": fp, "pairs": len(pairs)}]
                        + [{"index": i, "chosen": ch, "rejected": rj} for i, ch, rj in sorted(rows)])
        D.barrier()
    for row in saved_reference(path, fp):
        pairs[row["index"]]["ref_chosen"] = row["chosen"]
        pairs[row["index"]]["ref_rejected"] = row["rejected"]


# what DPO logs per step, as sums over pairs (dpo_loss_and_sums) and then means (summarize)
FIGURES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "nll_loss", "pairs")


def dpo_loss_and_sums(model, mb, env, c, pad_id, global_pairs):
    """For a micro-batch of (pair, weight): the loss as this micro-batch's share
    of the mean over the step's pairs on all ranks (sum over its pairs /
    global_pairs), and the weighted sums
    of what TRL logs (summarize turns them into means): the loss, the rewards
    beta * (policy - reference log-prob) of the chosen and rejected responses,
    the pairs whose chosen reward is strictly higher (accuracies), the margins
    chosen - rejected, the chosen responses' NLL, and the pairs counted."""
    pairs = [p for p, _ in mb]
    # weight 1 for a real pair, 0 for a filler training.split_even adds so that every rank runs as many
    # forwards (evaluation; fill_reference_logps drops its fillers itself); training's pairs are all 1
    w = torch.tensor([float(x) for _, x in mb], device=env.device)
    tokens, targets = pair_batch(pairs, pad_id)
    logps = sequence_logps(model, tokens, targets, env)  # (2n,): chosen rows, then rejected
    n = len(pairs)
    ref_c = torch.tensor([p["ref_chosen"] for p in pairs], device=env.device)
    ref_r = torch.tensor([p["ref_rejected"] for p in pairs], device=env.device)
    losses, rc, rr = dpo_losses(logps[:n], logps[n:], ref_c, ref_r, c.beta)
    nll = chosen_nll(logps[:n], (targets[:n] != -100).sum(dim=1).to(env.device))
    if c.rpo_alpha:  # Iterative RPO: keep the chosen response likely
        losses = losses + c.rpo_alpha * nll
    loss = (losses * w).sum() / global_pairs
    stats = {"loss": losses * w, "rewards/chosen": rc * w, "rewards/rejected": rr * w,
             "rewards/accuracies": (rc > rr).float() * w, "rewards/margins": (rc - rr) * w,
             "nll_loss": nll.detach() * w, "pairs": w}
    return loss, {k: stats[k].sum().item() for k in FIGURES}


def add_up(totals, stats):
    """Sums of dpo_loss_and_sums' figures, key by key: every rank sums the same ones
    in the same order (all_sum pairs them by position)."""
    return {k: totals[k] + stats[k] for k in FIGURES}


@torch.no_grad()
def evaluate(model, pairs, env, c, pad_id):
    model.eval()
    stats = dict.fromkeys(FIGURES, 0.0)
    for mb in T.micro_batches(T.split_even(pairs, env.rank, env.world), c.micro_batch_size):
        stats = add_up(stats, dpo_loss_and_sums(model, mb, env, c, pad_id, 1)[1])  # (its figures; the loss is unused)
    model.train()
    D.reshard(model)
    return summarize(env, stats, "eval/")


def summarize(env, stats, prefix=""):
    """This rank's sums -> the means over every rank's pairs, as TRL logs them
    (nll_loss: the chosen responses' NLL per token, in the loss only if rpo_alpha > 0)."""
    stats = dict(zip(stats, D.all_sum(env, *stats.values())))
    n = max(stats.pop("pairs"), 1)
    return {prefix + k: v / n for k, v in stats.items()}


# -----------------------------------------------------------------------------
# Training

PAIR_FIELDS = ["prompt", "chosen", "rejected"]  # the strings every pair record holds


def train(config=None, announce=False):
    """Run DPO with settings `config` (dict, over the defaults above). Returns
    {"model": path of the trained model, "steps", "loss": ..., metrics of the
    last step, and with keep_every "checkpoints": [[step, path]] of the models
    kept, the last step's last}.
    announce: print where and how it computes (the command line does)."""
    return T.run(dpo, DEFAULTS, config, PAIR_FIELDS, announce, check_record=validate.dpo_pair)


def dpo(c, env, fp):
    tok, tok_path, max_len = T.read_tokenizer(c)
    pad_id = tok.eos_id

    train_recs, eval_recs = T.read_data(c, PAIR_FIELDS)
    train_set = tokenize_pairs(tok, train_recs, max_len, c.data)
    eval_set = tokenize_pairs(tok, eval_recs, max_len, c.eval_data or c.data) if eval_recs else []
    model = T.start(c, env, tok, tok_path)  # the policy (and, as loaded, the reference: below)
    # the reference is the model as loaded, before any step (reused on resume)
    fill_reference_logps(model, train_set + eval_set, env, c, pad_id, os.path.join(c.out_dir, "ref_logps.jsonl"))
    steps = T.total_steps(c, len(train_set))
    n_params = model.num_params()
    D.log(f"DPO: {len(train_set)} train / {len(eval_set)} eval pairs, {steps} steps of {c.batch_size}, "
          f"beta {c.beta}{f', rpo_alpha {c.rpo_alpha}' if c.rpo_alpha else ''}, world size {env.world}")

    # a saved state is resumed only if it was made from the same inputs (fp: training.run's made_from),
    # and with keep_every only if the checkpoints it kept are all there
    if c.keep_every:
        forget_state_missing_checkpoints(c, steps)
    optimizer, step, record = T.optimizer_and_resume(model, c, fp, steps)  # step 0 and {} on a fresh start
    model.train()
    with tqdm(total=steps, initial=step, disable=not (c.progress and D.is_rank0()), desc="dpo") as bar:
        while step < steps:
            if eval_set and step % c.eval_interval == 0:
                T.log_metrics(c, {"step": step, **evaluate(model, eval_set, env, c, pad_id)})
            t0 = time.time()
            lr = T.begin_step(optimizer, step, steps, c, env)
            batch, mine = T.step_batch(train_set, step, c, env)  # this step's pairs, this rank's part
            # (pairs of like length together: little padding in each micro-batch; each a real pair, weight 1)
            mbs = [[(p, 1) for p in mb] for mb in T.micro_batches(mine, c.micro_batch_size, length=pair_length)]
            stats = dict.fromkeys(FIGURES, 0.0)
            for mb in mbs:  # (FSDP2 reduce-scatters each one's gradients: train_sft.py says why)
                # each micro-batch's loss is its share of the mean over the GLOBAL
                # batch; times world undoes FSDP's average over ranks
                loss, s = dpo_loss_and_sums(model, mb, env, c, pad_id, c.batch_size)
                (loss * env.world).backward()
                stats = add_up(stats, s)
            record = summarize(env, stats)
            T.check_finite(record["loss"], step + 1, c)  # (the step being taken)
            grad_norm = T.clip_and_step(model, optimizer, c.grad_clip)
            step += 1
            bar.update(1)

            if step % c.log_interval == 0 or step == steps:
                dt = time.time() - t0
                n_seen = sum(len(p["chosen"][0]) + len(p["rejected"][0]) - 2 for p in batch)
                mfu = estimate_mfu(model.args, n_params, n_seen / dt / env.world, n_seen / len(batch) / 2, c.peak_flops)
                record.update(step=step, lr=lr, grad_norm=grad_norm.item(), tokens_per_s=n_seen / dt, mfu=mfu)
                bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['rewards/accuracies']:.2f}")
                T.log_metrics(c, record)
            if c.keep_every and step % c.keep_every == 0 and step < steps:  # (the last step's is out_dir/model)
                T.save_final(model, c, env, tok_path, checkpoint_folder(step))
            T.end_step(model, optimizer, step, steps, c, {"record": record, "made_from": fp})  # every save_interval

    if eval_set:
        record.update(evaluate(model, eval_set, env, c, pad_id))
        T.log_metrics(c, {"step": step, **{k: v for k, v in record.items() if k.startswith("eval/")}})
    out = T.save_final(model, c, env, tok_path)
    D.log(f"saved {out}")
    # keep_every's checkpoints to choose from, in step order, the last step's (out_dir/model) last
    return {"model": out, "steps": step, **record,
            **({"checkpoints": kept_checkpoints(c, step) + [[step, out]]} if c.keep_every else {})}


CHECKPOINTS = "checkpoints"  # keep_every's folder, inside out_dir


def checkpoint_folder(step):
    """Where keep_every's checkpoint of step `step` goes, inside out_dir."""
    return os.path.join(CHECKPOINTS, f"step-{step}")


def forget_state_missing_checkpoints(c, steps):
    """keep_every: a saved state whose steps kept a checkpoint that is gone
    is removed (training starts from step 0): a choice among the checkpoints
    needs each of them."""
    if D.is_rank0():
        path, info = T.saved_state(T.state_dir(c))
        kept = kept_checkpoints(c, min(info.get("step", 0) + 1, steps))  # (those the state's steps saved)
        gone = [s for s, folder in kept if not os.path.isdir(folder)]
        if path and gone:
            D.log(f"note: the checkpoint of step {gone[0]} is gone: not resuming from {path}, training from step 0")
            T.remove_states([path])
    D.barrier()


def kept_checkpoints(c, before):
    """[step, folder] of keep_every's checkpoints of the steps before `before`
    (the last step's is out_dir/model, not one of them)."""
    return [[s, os.path.join(c.out_dir, checkpoint_folder(s))] for s in range(c.keep_every, before, c.keep_every)]


def main(argv=None):
    return T.main(train, DEFAULTS, __file__, __doc__, argv)


if __name__ == "__main__":
    main()
