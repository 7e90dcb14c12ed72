"""
Supervised fine-tuning (SFT): teach the model to answer a prompt with its
response, in the checkpoint's chat template (tokenizer.py), e.g. Llama 2's

    <s>[INST] {prompt} [/INST] {response}</s>

A record is {"prompt", "response"}, or a conversation {"messages": [{"role",
"content"}, ...]} (a system prompt, several turns). The loss is the
cross-entropy of the RESPONSE tokens only (every assistant turn's, and the
end-of-turn token that closes each): the prompt is given, not learned. It
is averaged over every response token of the global batch, so gradient
accumulation and any number of data-parallel ranks compute exactly the
gradient of one big batch.

This file is SFT's data (tokenize, collate: the response-token mask), its
loss and its training loop; what both trainers share (settings, model
building, schedule, saving and resuming) is in training.py.

    python train_sft.py config/sft_toy.py --max_steps=100
    torchrun --nproc_per_node=8 train_sft.py --init_from=llama2-7b-hf --data=ift.jsonl
    torchrun --nnodes=8 --node_rank=$R --master_addr=$HEAD --nproc_per_node=8 train_sft.py ...
    python train_sft.py config/sft_llama2_70b.py --plan_only=True --world_size=16 --gpu_memory_gb=141
"""
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import distributed as D
import training as T
import validate
from configurator import settings
from model import estimate_mfu
from tokenizer import chat_ids, chat_tokens

# -----------------------------------------------------------------------------
# Settings (python train_sft.py --help lists them): SFT's own here, the rest
# (batch size, schedule, saving, devices) are every trainer's, in training.py
init_from = "scratch"      # a checkpoint folder (Hugging Face layout), or 'scratch'
model = "toy"              # preset when init_from='scratch'
data = "data/sft.jsonl"    # JSON Lines of {"prompt", "response"} or {"messages": [...]} ({"text"} with template='text')
template = "chat"          # 'chat': conversations, loss on the responses (which chat format: the trainers'
                           # chat_template setting); 'text': plain documents, loss on every token (pretraining)
out_dir = "out/sft"        # gets model/ (HF layout), state/ (resume), metrics.jsonl, done.json
micro_batch_size = 4       # examples per forward pass on one rank
lr = 5.5e-6                # peak learning rate (paper: 5.5e-6)
min_lr = 1.1e-6            # cosine decays to this (paper: 1.1e-6)
plan_only = False          # print the memory plan (of init_from, else of model) and exit
world_size = 0             # for plan_only: GPUs to plan for; 0 = this run's
gpu_memory_gb = 80         # for plan_only
# -----------------------------------------------------------------------------
DEFAULTS = {**{k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))},
            **T.SETTINGS}  # this script's settings first, then every trainer's


# -----------------------------------------------------------------------------
# Data: one example = token ids + the spans of them the loss is on (the responses)

def tokenize(tok, records, max_len, source, template="chat"):
    """(ids, spans) per record, spans the (start, end) ranges of ids the loss
    is on: the response, or every assistant turn of a conversation. Examples
    that do not fit are skipped and counted (truncating would cut the EOS the
    model must learn). With template='text' a record is a plain document,
    learned whole after its first token."""
    examples, skipped = [], 0
    for rec in records:  # (each checked before any work: validate.sft_record, with its file and line)
        if template == "text":
            ids = tok.encode(rec["text"], bos=True, eos=True)
            spans = [(1, len(ids))]
        elif "messages" in rec:
            ids, spans = chat_ids(tok, rec["messages"])
        else:
            ids, spans = response_example(tok, rec["prompt"], rec["response"])
        if len(ids) - 1 > max_len:  # the model sees ids[:-1]
            skipped += 1
        else:
            examples.append((ids, spans))
    if skipped:
        D.log(f"{source}: skipped {skipped} of {len(records)} examples longer than {max_len} tokens")
    if not examples:
        raise validate.BadInput(f"{source}: every example is longer than max_seq_len={max_len}")
    return examples


def response_example(tok, prompt, response):
    """(ids, spans) of one prompt and its response in the chat template: the
    response learned, from its first token to its EOS (train_dpo's pairs too)."""
    ids, start = chat_tokens(tok, prompt, response)
    return ids, [(start, len(ids))]


# Exercise (medium): the response-token mask. Graded by: tests/test_train.py -k collate
def collate(examples, pad_id, weights=None):
    """
    Right-pad a micro-batch into tokens (B, T) and targets (B, T), where
    targets[t] = ids[t+1] on response tokens and -100 (no loss) everywhere
    else: on the prompt and on padding. An example is (ids, spans), spans
    the (start, end) ranges learned. A row of tokens is its example's
    ids[:-1]; position t is learned where ids[t+1] lies in a span, so a span
    (start, end) fills targets[start-1:end-1]. Both tensors are torch.long.
    Causal attention means a row's real tokens never see the padding after
    them, and rows never see each other.
    weights: 0 for a filler row (see training.split_even) whose targets are all -100.
    """
    length = max(len(ids) for ids, _ in examples) - 1
    tokens = torch.full((len(examples), length), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), length), -100, dtype=torch.long)
    for row, (ids, spans) in enumerate(examples):
        ids = torch.tensor(ids)
        tokens[row, :len(ids) - 1] = ids[:-1]
        if weights is None or weights[row]:
            # position t predicts ids[t+1]; the first response token is
            # predicted at position start-1 (by the last token of the prompt)
            for start, end in spans:
                targets[row, start - 1:end - 1] = ids[start:end]
    return tokens, targets


# Exercise (easy): the SFT loss. Graded by: tests/test_train.py -k sft_loss_sum
def sft_loss_sum(model, tokens, targets, env):
    """Sum of the response tokens' cross-entropies (log-softmax in fp32): a
    0-dim fp32 tensor to backpropagate. The model runs under env.autocast()
    with the tensors on env.device; targets are collate's (-100: no loss).
    It is -sum_rows log pi(y|x): DPO's train_dpo.sequence_logps summed over
    the rows and negated (one reduction here, per row there)."""
    with env.autocast():
        logits = model(tokens.to(env.device))
    return F.cross_entropy(logits.float().flatten(0, 1), targets.to(env.device).flatten(),
                           ignore_index=-100, reduction="sum")


@torch.no_grad()
def evaluate(model, examples, env, c, pad_id):
    """Mean response-token loss over held-out examples, split over ranks."""
    model.eval()
    total, count = 0.0, 0
    for mb in T.micro_batches(T.split_even(examples, env.rank, env.world), c.micro_batch_size):
        tokens, targets = collate([x for x, _ in mb], pad_id, [w for _, w in mb])
        total += sft_loss_sum(model, tokens, targets, env).item()
        count += (targets != -100).sum().item()
    model.train()
    D.reshard(model)
    total, count = D.all_sum(env, total, count)
    return total / max(count, 1)


# -----------------------------------------------------------------------------
# Training

TEXT_FIELDS = ["text"]  # template='text': the string every record holds (chat records: validate.sft_record)


def train(config=None, announce=False):
    """Run SFT with settings `config` (dict, over the defaults above). Returns
    {"model": path of the trained model, "loss": last training loss, ...}.
    announce: print where and how it computes (the command line does)."""
    if config and config.get("plan_only"):  # no data, no weights: shapes only
        return T.plan_memory(settings(DEFAULTS, config))
    if (config or {}).get("template", DEFAULTS["template"]) == "text":
        return T.run(sft, DEFAULTS, config, TEXT_FIELDS, announce)
    return T.run(sft, DEFAULTS, config, [], announce, check_record=validate.sft_record)


def sft(c, env, fp):
    tok, tok_path, max_len = T.read_tokenizer(c)
    pad_id = tok.eos_id  # Llama has no pad token; padded positions carry no loss anyway

    # (every record was checked before any work: prompt and response, or messages; validate.sft_record)
    train_recs, eval_recs = T.read_data(c, TEXT_FIELDS if c.template == "text" else [])
    train_set = tokenize(tok, train_recs, max_len, c.data, c.template)
    eval_set = tokenize(tok, eval_recs, max_len, c.eval_data or f"the held-out share of {c.data}", c.template) \
        if eval_recs else []
    model = T.start(c, env, tok, tok_path)  # from a checkpoint or a preset, sharded under torchrun
    steps = T.total_steps(c, len(train_set))
    n_params = model.num_params()
    what = "SFT" if c.template == "chat" else "plain text (every token learned: pretraining)"  # the toy M0's
    D.log(f"{what}: {len(train_set)} train / {len(eval_set)} eval examples, {steps} steps of {c.batch_size}, "
          f"{n_params / 1e6:.1f}M parameters, world size {env.world}")

    # a saved state is resumed only if it was made from the same inputs (fp: training.run's made_from)
    optimizer, step, record = T.optimizer_and_resume(model, c, fp, steps)  # step 0 and {} on a fresh start
    loss = record.get("loss", float("nan"))  # the loss of the step resumed from (saved with the state)
    model.train()
    with tqdm(total=steps, initial=step, disable=not (c.progress and D.is_rank0()), desc="sft") as bar:
        while step < steps:
            if eval_set and step % c.eval_interval == 0:
                T.log_metrics(c, {"step": step, "eval_loss": evaluate(model, eval_set, env, c, pad_id)})
            t0 = time.time()
            lr = T.begin_step(optimizer, step, steps, c, env)
            batch, mine = T.step_batch(train_set, step, c, env)  # this step's examples, this rank's part
            # (rows of like length together: little padding in each micro-batch)
            mbs = [collate(mb, pad_id)
                   for mb in T.micro_batches(mine, c.micro_batch_size, length=lambda ex: len(ex[0]))]
            # the loss is sum / (response tokens in the GLOBAL batch): the same
            # normaliser on every rank and micro-batch, so gradients just add up
            n_tokens, = D.all_sum(env, sum((t != -100).sum().item() for _, t in mbs))
            loss_sum = 0.0
            # (FSDP2 reduce-scatters each micro-batch's gradients as its backward ends. Skipping that until
            # the last one, set_requires_gradient_sync(False), sends less but holds every parameter's
            # unsharded fp32 gradient on every GPU meanwhile (4 bytes x all parameters: 280 GB at 70B),
            # which training.memory_plan does not count)
            for tokens, targets in mbs:
                micro_loss = sft_loss_sum(model, tokens, targets, env)
                # FSDP averages gradients over ranks; times world makes that a sum
                (micro_loss / n_tokens * env.world).backward()
                loss_sum += micro_loss.item()
            loss = D.all_sum(env, loss_sum)[0] / n_tokens
            T.check_finite(loss, step + 1, c)  # (step + 1: the step being taken)
            grad_norm = T.clip_and_step(model, optimizer, c.grad_clip)
            step += 1
            bar.update(1)

            if step % c.log_interval == 0 or step == steps:
                dt = time.time() - t0
                n_seen = sum(len(ids) - 1 for ids, _ in batch)  # real (unpadded) tokens the model ran on
                tps = n_seen / dt  # all ranks together
                mfu = estimate_mfu(model.args, n_params, tps / env.world, n_seen / len(batch), c.peak_flops)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                T.log_metrics(c, {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm.item(),
                                  "tokens_per_s": tps, "mfu": mfu})
            # (every save_interval steps: the training state)
            T.end_step(model, optimizer, step, steps, c, {"record": {"loss": loss}, "made_from": fp})

    eval_loss = evaluate(model, eval_set, env, c, pad_id) if eval_set else None
    if eval_set:
        T.log_metrics(c, {"step": step, "eval_loss": eval_loss})
    out = T.save_final(model, c, env, tok_path)
    D.log(f"saved {out} (loss {loss:.4f}" + (f", eval loss {eval_loss:.4f})" if eval_loss is not None else ")"))
    return {"model": out, "loss": loss, "eval_loss": eval_loss, "steps": step}


def main(argv=None):
    return T.main(train, DEFAULTS, __file__, __doc__, argv)


if __name__ == "__main__":
    main()
