"""
A comparison drill, outside the loop: can a fresh toy model learn to tell
whether two letters are the same?

The invent task's judge (STUDIES.md: a task easier to check) checks a word
against the three asks, and with check_each_ask writes each comparison out:

    BZKOT: starts with B, asked B: yes; ends with T, asked O: no; has 5 letters, asked 5: yes. Not right.

Every "yes" or "no" there needs one step the rest of the toy world never
asks for: are the two tokens before it the same? This script trains a
fresh model on such check lines and nothing else, and then asks it, at each
yes/no of held-out lines (drawn from a seed of their own), which of the two
words it prefers:

    python drill.py --p_no=0.5 --loss=yesno     # balanced, the loss on yes/no alone
    python drill.py --p_no=0.3 --loss=lm        # as M0's marked quizzes (7 asks in 10 met), every token
    python drill.py --evaluate=out/<run>/M0     # no training: how a run's M0 (--check_each_ask) does on quiz items
    python drill.py --evaluate=out/<run>/M1 --form=judge   # ... and its M1 at the start of a judgment

It prints, every eval_every steps, the share right on equal and on
differing pairs and their mean (balanced accuracy: always "yes" scores 50%).
The words are random letters, so the check's properties are the only thing
to learn besides the comparison. `--help` lists the settings.
"""
import json
import os
import random
import tempfile
import time

import torch

import distributed as D
import validate
from checkpoint import load_model
from configurator import configure, settings
from data import toy
from model import PRESETS, Transformer, preset
from tokenizer import Tokenizer, chat_tokens, train_tokenizer

# -----------------------------------------------------------------------------
# Settings
tokenizer = ""       # a run's toy tokenizer (out/<run>/tokenizer.model); '' = train one on the drill's lines,
                     # as the loop trains its own (phrase pieces, each capital letter one piece)
model = "toy-small"  # model preset, trained from scratch
p_no = 0.5           # chance that each ask differs from the word's property (M0's marked quizzes: 0.3)
loss = "yesno"       # 'yesno': the loss on the yes and no words alone | 'lm': on every token, as M0 learns
steps = 1000         # optimizer steps
batch_size = 16      # rows a step, each seq_len tokens of check lines one after another
seq_len = 256        # tokens a row
lr = 2e-3            # AdamW's learning rate after warm-up (M0's peak, pretrain_lr)
warmup = 100         # steps of linear warm-up
eval_every = 200     # steps between evaluations
eval_lines = 600     # held-out check lines (three yes/no each)
seed = 0             # model weights and training lines (the held-out lines have a seed of their own)
form = ""            # how each item is written: 'line', a bare check line | 'quiz', a marked quiz's item
                     # ("Q: ...\nStudent: BZKOT\nA: BZKOT: starts ..."), as M0 reads them | 'judge' (evaluate only),
                     # the judge prompt with the word as the response and the check opening the judgment, as M1
                     # learns them from EFT | '' = 'line' for training, 'quiz' with evaluate
evaluate = ""        # a run's checkpoint folder (out/<run>/M0, or SFT, M1, ...): evaluate it on held-out items with its
                     # own tokenizer, no training
threads = 0          # CPU threads; 0 = this process's cores (or OMP_NUM_THREADS)
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}
ASKS = ("first", "last", "n")  # the three comparisons of a line, in order


def check_line(rng, p_no, form="line", compares=True):
    """One check of a random invent task and a random student's word
    (toy.drill_word): (prompt, text, met), met saying whether each of its
    three asks is met. form 'line': the check line alone; 'quiz': an item
    of a marked quiz (toy.marked_quiz), the question and the word first;
    'judge': an EFT record (toy.eft_target, its verdict as judge_compares
    says) whose response is the bare word, prompt the judge prompt and text
    the judgment, which opens with the check. prompt is None but for
    'judge'. The quiz and judge forms draw the same words from the same rng;
    the line form, with no question to write, draws other ones after its first."""
    task = None
    while task is None:
        task = toy.sample_task(rng, ["invent"])
    word = toy.drill_word(task, rng, miss=p_no)
    met = (word[0] == task["first"], word[-1] == task["last"], len(word) == task["n"])
    if form == "quiz":
        return None, toy.marked_quiz([(toy.render(task, rng), task, word)], each_ask=True).rstrip("\n"), met
    if form == "judge":
        record = toy.eft_target(toy.render(task, rng), task, word, compares=compares, each_ask=True)
        return record["prompt"], record["response"], met
    return None, toy.invent_check(task, [word], verdict=True, each_ask=True), met


def yes_no_ids(tok):
    """The token ids of the yes and no that follow "asked X:"."""
    yes, no = tok.encode("asked B: yes")[-1], tok.encode("asked B: no")[-1]
    if yes == no or not tok.decode([yes]).endswith("yes") or not tok.decode([no]).endswith("no"):
        raise ValueError("the tokenizer does not end 'asked B: yes' and 'asked B: no' in two pieces of their own")
    return yes, no


def batch(tok, rng, c, yes, no):
    """(inputs, targets): rows of check lines, one after another; with
    loss='yesno' every target but the yes and no words is ignored (-100)."""
    rows = []
    for _ in range(c.batch_size):
        ids = []
        while len(ids) < c.seq_len + 1:
            ids += tok.encode(check_line(rng, c.p_no, item_form(c))[1] + "\n")
        rows.append(ids[:c.seq_len + 1])
    x = torch.tensor(rows)
    inputs, targets = x[:, :-1], x[:, 1:].clone()
    if c.loss == "yesno":
        targets[(targets != yes) & (targets != no)] = -100
    return inputs, targets


@torch.no_grad()
def score(model, tok, lines, yes, no, bos=False):
    """{(ask, met): [right, of]} over held-out (prompt, text, met) items: at
    each of a check's three yes/no words, whether the model gives "yes" the
    higher logit exactly where the ask is met. With a prompt, the model reads
    prompt and text as the judge's SFT records are read (the chat template),
    and only the text's yes/no words count. Without one, the text alone,
    after a BOS with bos=True (as a run's M0 read each pretraining document;
    the drill's own model learns lines without one)."""
    was_training = model.training
    model.eval()
    counts = {(ask, met): [0, 0] for ask in ASKS for met in (True, False)}
    for prompt, text, met in lines:
        ids, start = chat_tokens(tok, prompt, text) if prompt is not None else (tok.encode(text, bos=bos), 1)
        logits = model(torch.tensor([ids]))[0]
        spots = [i for i in range(start - 1, len(ids) - 1) if ids[i + 1] in (yes, no)]
        if len(spots) != 3:
            raise ValueError(f"expected three yes/no words in {text!r}, found {len(spots)}")
        for ask, i, m in zip(ASKS, spots, met):
            says_yes = bool(logits[i, yes] > logits[i, no])
            counts[(ask, m)][0] += says_yes == m
            counts[(ask, m)][1] += 1
    model.train(was_training)
    return counts


def balanced_accuracy(counts):
    """The mean of the shares right on met and on missed asks (always "yes": 0.5)."""
    share = lambda m: sum(counts[(a, m)][0] for a in ASKS) / max(1, sum(counts[(a, m)][1] for a in ASKS))
    return (share(True) + share(False)) / 2


def summary(counts):
    return " ".join(f"{a}: same {counts[(a, True)][0]}/{counts[(a, True)][1]}, "
                    f"differ {counts[(a, False)][0]}/{counts[(a, False)][1]};" for a in ASKS)


def item_form(c):
    """The form items are written in: c.form, else 'quiz' with evaluate (as M0 reads them) and 'line' for training."""
    return c.form or ("quiz" if c.evaluate else "line")


def held_out_lines(c, compares=True):
    rng = random.Random(f"drill held-out {c.p_no}")
    return [check_line(rng, c.p_no, item_form(c), compares) for _ in range(c.eval_lines)]


def run_settings(checkpoint):
    """The settings of the run a checkpoint comes from (out/<run>/M1 beside
    out/<run>/settings.json), or {} for a checkpoint outside a run."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "settings.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def drill(c, tok):
    """Train a fresh model on check lines; returns [(step, counts)] at each evaluation."""
    torch.manual_seed(c.seed)
    yes, no = yes_no_ids(tok)
    held_out = held_out_lines(c)
    model = Transformer(preset(c.model, vocab_size=tok.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, betas=(0.9, 0.95), weight_decay=0.1)
    rng = random.Random(c.seed)
    results, t0 = [], time.time()
    for step in range(1, c.steps + 1):
        for g in opt.param_groups:
            g["lr"] = c.lr * min(1.0, step / max(1, c.warmup))
        _, loss = model(*batch(tok, rng, c, yes, no))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % c.eval_every == 0 or step == c.steps:
            counts = score(model, tok, held_out, yes, no)
            results.append((step, counts))
            D.log(f"step {step:5d} ({time.time() - t0:4.0f} s) loss {loss.item():.3f} "
                  f"balanced accuracy {100 * balanced_accuracy(counts):5.1f}% | {summary(counts)}")
    return results


def drill_tokenizer(folder, p_no):
    """A toy tokenizer trained on drill lines, as the loop trains its own."""
    rng = random.Random("drill tokenizer")
    lines = [check_line(rng, p_no)[1] for _ in range(5000)]
    return train_tokenizer(lines, os.path.join(folder, "drill.model"), vocab_size=1024, phrases=True,
                           symbols=list(toy.LETTERS))


def check(c):
    """Every problem with the settings, before any work."""
    p = validate.Problems(c)
    p.require(c.loss in ("yesno", "lm"), "loss", "must be 'yesno' or 'lm'")
    p.require(c.form in ("", "line", "quiz", "judge"), "form",
              "must be '' (line to train, quiz to evaluate), 'line', 'quiz' or 'judge'")
    p.require(c.form != "judge" or c.evaluate, "form", "'judge' is for --evaluate only (a judge prompt is longer "
              "than a training row)")
    p.require(c.model in PRESETS, "model", f"must be one of {', '.join(PRESETS)}")
    p.fraction("p_no", high_open=True)  # (0: no differing pair to learn or score; 1: no equal one)
    p.positive("lr")
    for s in ("steps", "batch_size", "seq_len", "eval_every", "eval_lines"):
        p.at_least(s, 1)
    p.at_least("warmup", 0)
    p.at_least("threads", 0)
    if c.evaluate:
        validate.check_checkpoint(p, "evaluate", c.evaluate)
        p.require(run_settings(c.evaluate).get("check_each_ask", True), "evaluate", "comes from a run without "
                  "--check_each_ask: its M0 never read checks in the form the drill scores")
    else:
        if c.model in PRESETS:  # a row longer than the model's context would fail at the first step
            context = preset(c.model).max_seq_len
            p.require(c.seq_len <= context, "seq_len", f"must be <= {context}, the context of {c.model}")
        if c.tokenizer and p.require(os.path.isfile(c.tokenizer), "tokenizer", "no such file"):
            try:  # it parses, and writes the yes and no the drill reads as pieces of their own
                yes_no_ids(Tokenizer(c.tokenizer))
            except (ValueError, OSError) as e:
                p.add(f"{p.shown('tokenizer')}: {e}")
    return p


def evaluate_checkpoint(c):
    """A run's model (c.evaluate, with the tokenizer beside it) on held-out
    items, marked-quiz items unless c.form says otherwise: {(ask, met): [right, of]}.
    The judge's records are written as that run wrote them: its chat
    template, and a verdict after the check where it had judge_compares."""
    run = run_settings(c.evaluate)
    tok = Tokenizer(c.evaluate, run.get("chat_template", ""))
    lines = held_out_lines(c, run.get("judge_compares", True))
    return score(load_model(c.evaluate).eval(), tok, lines, *yes_no_ids(tok), bos=True)


if __name__ == "__main__":
    c = settings(DEFAULTS, configure(dict(DEFAULTS, __file__=__file__, __doc__=__doc__)))
    check(c).stop("drill.py")
    torch.set_num_threads(D.cpu_threads(c.threads))
    if c.evaluate:
        counts = evaluate_checkpoint(c)
        D.log(f"{c.evaluate}, p_no {c.p_no}, {c.eval_lines} {item_form(c)} items, "
              f"threads: {torch.get_num_threads()}, float32: balanced accuracy "
              f"{100 * balanced_accuracy(counts):5.1f}% | {summary(counts)}")
    else:
        D.log(f"drill: {c.model}, p_no {c.p_no}, loss on {c.loss}, {c.steps} steps of {c.batch_size} x {c.seq_len} "
              f"tokens, threads: {torch.get_num_threads()}, float32")
        with tempfile.TemporaryDirectory() as tmp:
            drill(c, Tokenizer(c.tokenizer) if c.tokenizer else drill_tokenizer(tmp, c.p_no))
