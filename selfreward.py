"""
Self-Rewarding Language Models (Yuan et al. 2024), the whole method, in the
order of the paper's Figure 1:

    seed data -> M0 -> SFT baseline (IFT only)        the reference point
                 M0 -> M1 (SFT on IFT + EFT)           follows instructions AND judges
    for t = 1..T:  a fixed writer (prompt_writer: M0 by default; the paper: Llama 2-Chat 70B) writes new
                   prompts (8-shot); M_t samples 4 candidates per prompt,
                   judges each candidate 3 times with itself, pairs the best
                   against the worst -> DPO from M_t -> M_{t+1}
                   --meta_judge=True (Meta-Rewarding, Wu et al. 2024): between
                   judging and pairing, M_t also compares its judgments of each
                   response whose judgments disagree in score, two at a time;
                   its best against its worst judgment
                   joins the pairs, so the same DPO step trains the judge too
    the SFT baseline, M1 ... M_{T+1} -> evaluation -> report.md (M0, a base model, is not evaluated)

The toy world (the default seed data, data/toy.py) has a grader: a program
that knows every task's right answer (toy.true_grade). It writes the toy seed
data (and, with eft_own_answers, the EFT targets of the SFT baseline's own
answers) and grades the evaluation; the loop's judgments and pairs never
come from it, except in the control settings that say so (pair_by,
meta_pair_by, dpo_pick_every).

    python selfreward.py                                  # the toy world on a laptop CPU
    python selfreward.py --run_name=big --n_prompts=4000       # settings: python selfreward.py --help
    torchrun --nnodes=2 --nproc_per_node=8 ... selfreward.py config/llama2_70b_oasst.py
    python selfreward.py config/llama2_70b_oasst.py --plan_only=True --world_size=16 --gpu_memory_gb=141  # memory plans

This file holds the settings, then one function per stage in the order the
data flows, then main() and run_stages(). Every stage receives the settings
`c` and the run folder `r` explicitly. Elsewhere: the checks before any work
(validate.py), the run folder and resumable stages (run_folder.py), the toy
world and M0's pretraining text (data/toy.py), the judge (judge.py), the
trainers (train_sft.py, train_dpo.py), sampling (sample.py), report.md
(report.py).

Before any stage, validate.py checks every setting and input file and lists
every problem at once. Every stage reads and writes files under
out/<run_name>/ and records itself done with what it was made from (the
settings it reads, STAGE_SETTINGS below; its input files; the stages it
reads) and with the figures its stage function returns (done/<stage>, which
report.py tabulates); running the same command again skips what is done and continues
(long generation stages resume from their last complete shard, a model's
evaluation from its last complete file, training from its last saved step),
and a changed setting redoes only the stages that
depend on it. Under torchrun every rank runs the same stages: generation
splits the prompts over the ranks, training shards the model with FSDP, and
only rank 0 writes shared files.
Generation loads each model in its own layout: tensor parallel over groups of
`tp` ranks (inside a node), the groups splitting the prompts; with tp = 1 a
whole model on every rank.
"""
import filecmp
import os
import random
import re
import shutil
import string
import sys
import time
from collections import Counter
from functools import partial

import torch

import checkpoint
import configurator
import distributed as D
import evaluation as E
import judge as J
import report
import sample
import train_dpo
import train_sft
import training
import validate
from data import SEED_FILES, read_jsonl, toy, write_jsonl
from run_folder import Run, fit_micro, generate_sharded, move_model, save_jsonl, stage_parts, sub_seed
from sample import fits, generate, new_token_budget
from tokenizer import Tokenizer, chat_prompt_ids, train_tokenizer

# -----------------------------------------------------------------------------
# Settings (python selfreward.py --help lists them): the paper's method first, then the variations
# measured on the toy world, then how a run runs
run_name = "toy"            # the run folder: out_root/run_name (not "run": torchrun would take --run= as its
                            # --run-path)
out_root = "out"            # where run folders live
seed = 1337                 # everything random derives from this
# seed data and M0
seed_data = "toy"           # 'toy' (generated), or a folder with ift.jsonl, eft_train.jsonl, eft_eval.jsonl
init_from = "scratch"       # M0: 'scratch' pretrains a toy base model; else a checkpoint folder (HF or Meta layout)
model = "toy-small"         # preset when init_from='scratch' (and the shape --plan_only plans where init_from is
                            # not a folder here)
chat_template = ""          # '' = the one M0's checkpoint implies (tokenizer.py); or llama2, llama3, chatml
vocab_size = 2048           # toy tokenizer size (upper bound) when init_from='scratch'
phrase_pieces = True        # toy tokenizer pieces may span words: the judge rubric costs ~140 tokens, not ~360
rubric_pieces = True        # toy tokenizer: each fixed line of the judge rubric is one piece (~30 tokens, not ~140)
letter_pieces = True        # toy tokenizer: each capital letter is one piece, so made-up words ("TAMILO") are
                            # seen letter by letter and reverse/sort/replace are learnable
n_ift = 3200                # toy IFT seed examples (paper: 3,200)
n_eft_train = 4890          # toy EFT training examples (paper: 1,630; a 1.3M-parameter judge needs 3x)
n_eft_eval = 1623           # toy EFT eval responses (paper: 541; 3x, as the judge's accuracy steps are ~2 points)
eft_judgments = ""          # real data: a JSONL of judgments by a stronger judge (judge.read_judge_file) that
                            # supplies the EFT targets instead of the SFT baseline ('' = the paper's recipe)
n_test = 1024               # toy held-out test prompts (paper: 256 for a GPT-4 judge; the grader is free, and
                            # 4x halves the intervals)
toy_kinds = "reverse,sort,replace,count,length,arith"  # toy task kinds drawn; "invent" adds one with many right
                            # answers, easier to check than to write (data/toy.py; STUDIES.md: a task easier to check)
ift_chatty = 0.6            # toy IFT seed: share of right answers said chattily ("Sure! The answer is 42.")
pretrain_docs = 2000        # toy M0: documents listing task prompts (the base model's "web text")
pretrain_qa_docs = 4000     # toy M0: documents of worked examples ("Q: ... A: ..."), 4-12 each
pretrain_epochs = 2         # toy M0: passes over them
pretrain_lr = 2e-3          # toy M0: peak learning rate
# SFT: M0 -> SFT baseline and M0 -> M1 (paper, for 70B: lr 5.5e-6 -> 1.1e-6, batch 16,
# dropout 0.1; a 1.3M-parameter toy model barely moves at such rates: config/ holds the paper's)
sft_lr = 1e-3               # peak learning rate
sft_min_lr = 1e-4           # cosine floor
sft_batch_size = 16         # examples per step (also M0's pretraining, toy world)
sft_epochs = 3              # passes over the seed data
micro_batch_size = 8        # examples per forward pass on one rank, grouped by length (training.micro_batches):
                            # two of 8 took M0's steps 28-32% less time than one of 16 (SPEED.md, "Micro-batches
                            # grouped by length"); DPO's micro-batches are half as many pairs (two rows each)
dropout = 0.1               # during SFT and DPO (paper: 0.1)
# self-instruction creation (Section 2.2)
iterations = 2              # T: M1 -> M2 -> M3
n_prompts = 1000            # new prompts requested per iteration (before filtering)
prompt_writer = "M0"        # who writes new prompts: a fixed model, as the paper's Llama 2-Chat 70B: 'M0', 'M1', or a
                            # folder; or 'current' (M_t). Toy: SFT leaves a 1.3M-parameter M1 unable to continue a
                            # list (23 of 200 requests usable, M0 193)
n_shots = 8                 # few-shot examples per request: n_shots - 2 from the IFT seed, 2 generated earlier
                            # (all from the seed until 2 are kept; a shard's requests are made before it runs, so
                            # iteration 1's first shard_size requests are all seed examples); at least 2
prompt_temperature = 0.6    # paper: 0.6
prompt_top_p = 0.9          # paper: 0.9
max_prompt_tokens = 64      # a new prompt longer than this is malformed
min_prompt_words = 3        # shorter prompts are dropped (Self-Instruct's filter: 4)
max_prompt_words = 60       # longer prompts are dropped (Self-Instruct's: 150)
rouge_threshold = 0.9       # drop a new prompt whose ROUGE-L F with an existing one reaches this
                            # (the evaluation counts a benchmark question as trained on the same way).
                            # Self-Instruct's, and config/'s for real data: 0.7; toy prompts of one
                            # template differ in a token of 12 (0.92), and 0.7 would drop nearly all
                            # (STUDIES.md, "The near-duplicate filter and the task mix")
n_candidates = 4            # N responses per prompt (paper: 4)
temperature = 0.7           # every sampling but prompt writing and MT-Bench's answers (FastChat's temperatures,
                            # top-p 1): candidates, judgments, meta-judgments, the SFT baseline's EFT judgments
                            # and answers (paper: 0.7)
top_p = 0.9                 # every sampling but prompt writing and MT-Bench's answers, as temperature (paper: 0.9)
max_response_tokens = 64    # per response: candidates, and every answer the evaluation asks for (test prompts,
                            # AlpacaEval, each MT-Bench turn)
n_judge = 3                 # judgments per candidate, averaged (paper: 3); also the SFT baseline's tries at
                            # each EFT group when it writes the EFT targets (real data)
max_judge_tokens = 96       # per judgment
# DPO: M_t -> M_{t+1} (paper, for 70B: lr 1e-6 -> 1e-7, batch 16, beta 0.1, dropout 0.1)
dpo_lr = 2e-5               # peak learning rate (toy: of 2e-5, 5e-5 and 1e-4, the one that costs the fewest right
                            # answers over five seeds: STUDIES.md, "The DPO rate, again")
dpo_min_lr = 1e-5           # cosine floor (paper: a tenth of the peak; here half: a tenth of the earlier peak 1e-4,
                            # kept when the peak became 2e-5, as the measured runs had it)
dpo_beta = 0.1              # paper: 0.1
dpo_batch_size = 16         # pairs per step
dpo_epochs = 1              # passes over the pairs
dpo_pick_every = 0          # toy: DPO keeps a checkpoint every this many steps, and the one whose greedy answers to the
                            # n_valid validation prompts the grader rates best becomes M_{t+1} (the paper: every 200
                            # steps, chosen by a judge comparing their answers on 253 prompts); 0 = the last step
n_valid = 256               # dpo_pick_every: the toy world's validation prompts, none of them in the seed data
# evaluation
eval_judge = True           # reward-model metrics of every model's judge on the EFT eval set
eval_prompts = ""           # real data: AlpacaEval prompts {"instruction"} (its JSON array, or JSONL), answered
                            # into eval/alpaca_eval/<model_id>/model_outputs.json
mt_bench = ""               # real data: MT-Bench question.jsonl, both turns answered into
                            # eval/mt_bench/model_answer/<model_id>.jsonl (FastChat llm_judge's layout)
# variations of the loop measured on the toy world (STUDIES.md); their defaults are the paper's loop
# ... in the seed data and M0's text
ift_declines = 0.0          # toy IFT seed: share of answers that decline ("I am not sure what you mean."): a mistake
                            # the judge can see without solving the task (measured at 0.4 over 3 seeds: mean grade
                            # rises at both iterations in every seed, right answers at the first in every seed and
                            # at the second in 2, as the declines go; STUDIES.md: a mistake the judge can see)
judge_working = False       # toy EFT targets work the task out step by step ("Letters: 1T 2A ...", "Ones: 7+5=12 ...")
                            # before they state the answer and score (measured: the toy-small judge gets worse;
                            # STUDIES.md: a judge that works the task out, quotes and compares)
judge_quotes = False        # toy EFT targets quote the response's answer beside the right one before they grade
                            # ("The correct answer is 27. The response says 72. ...")
quote_first = False         # with judge_quotes: the quote opens the judgment ("The response says 72. <working> The
                            # correct answer is 27. ..."), copied while the response is the nearest text
judge_compares = False      # toy EFT targets set the response's answer against the right one and say whether they
                            # are the same before they grade ("72 against 27: not the same."; an invent task's:
                            # whether its word meets the asks, "Right."; STUDIES.md: a judge that works the task out)
eft_own_answers = 0         # toy: the SFT baseline's sampled answers per EFT training prompt, graded and judged by
                            # the grader in the EFT targets' form, added to M1's EFT data (STUDIES.md: where the judge's
                            # answer comes from)
pretrain_working = 0.0      # toy M0: share of quiz pages that show the working before each answer
pretrain_checking = 0.0     # toy M0: share of quiz pages that are marked: a student's answer, the working, and
                            # whether the two are the same ("72 against 27: not the same."; an invent task's
                            # word checked as its judgments check it; STUDIES.md: a task easier to check)
check_each_ask = False      # toy, invent: the judgments' and marked quizzes' check sets each property of the word
                            # beside its ask ("BAKIO: starts with B, asked B: yes; ..."), every comparison between
                            # neighbours (STUDIES.md: a task easier to check)
pretrain_check_drill = 0    # toy M0, invent: pages of a checking drill added to M0's text, checks of invent tasks'
                            # words that meet each ask half the time, laid out as pretrain_drill_layouts says
                            # (STUDIES.md: a task easier to check)
pretrain_drill_layouts = "quiz"  # toy M0, with pretrain_check_drill: how the drill's items are laid out, one drawn per
                            # item: quiz (a marked quiz's), line (the check alone), review (the check under
                            # "User: ...\n<response>WORD</response>", the judge prompt's markup without its rubric)
# ... in who picks the pairs, and in DPO's loss
pair_by = "judge"           # who picks the best and worst candidate: 'judge' (the paper: the model's own scores), or
                            # toy only, controls that show what DPO on best-versus-worst pairs can teach with a
                            # perfect judge (STUDIES.md: with a perfect judge): 'grader' (its grades 0-5, form
                            # included), 'right' (right or wrong only: grade >= 4 or not); or 'coin', a control with
                            # the preference taken out: the judge's pairs, each turned round or not on a fair coin
rpo_alpha = 0.0             # + rpo_alpha x the chosen response's NLL per token in each pair's loss (Iterative RPO,
                            # Pang et al. 2024; 0 = plain DPO, the paper): keeps the chosen answer likely
                            # (STUDIES.md: with a perfect judge)
# ... Meta-Rewarding (Wu et al. 2024): the judge trained on its own judgments
meta_judge = False          # Meta-Rewarding (Wu et al. 2024): the model also judges its judgments; DPO trains the
                            # judge on the best against the worst judgment of a response
meta_pair_by = "meta"       # meta_judge: who picks a response's best and worst judgment: 'meta' (Wu et al.: the
                            # model's own battles), or toy only, a control with a perfect meta-judge (STUDIES.md: at
                            # today's DPO rate, and with a perfect meta-judge):
                            # 'grader' (the judgment whose score is nearer the true grade wins each battle)
max_meta_tokens = 64        # per meta-judgment (a sentence and "Winner: A": the toy targets take 54 tokens at most)
n_meta_seed = 500           # toy, meta_judge: meta-judge demonstrations added to M1's SFT data, made by the grader
                            # (~141 tokens each: 500 add 17% to the tokens of M1's 8,090 IFT + EFT examples)
# running
gen_batch_size = 64         # sequences decoded together; 0: the largest the generation memory plan fits the GPU
                            # (on a CPU, 64)
tp = 1                      # generation: GPUs per tensor-parallel group (inside a node); training is FSDP over all
shard_size = 256            # prompts per resumable generation shard (each shard draws from a seed of its own:
                            # another size gives other samples, and redoes the generation stages)
save_interval = 50          # training steps between resumable training states
keep_train_state = False    # keep each trained model's resumable state (optimizer, step) once the model is saved,
                            # and dpo_pick_every's checkpoints once one is chosen
activation_checkpointing = False  # recompute each block in backward (needed for 70B)
device = ""                 # '' = cuda if available, else cpu
dtype = "auto"              # compute: 'auto' = bfloat16 on GPU, and on a CPU with fast bf16 matmuls for models at least
                            # 256 wide; else float32 (training keeps fp32 weights)
threads = 0                 # CPU threads; 0 = this process's cores / ranks on the machine (or OMP_NUM_THREADS)
progress = True             # progress bars
plan_only = False           # print the training and generation memory plans for world_size GPUs, and exit
dry_run = False             # say which stages this command would run in its run folder, and why; run and write nothing
world_size = 0              # for plan_only: GPUs to plan for; 0 = this run's
gpu_memory_gb = 80          # for plan_only: memory of one GPU
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}
# settings that change how a run goes, not what it computes: a resumed run may differ in these (a device
# that changes what dtype='auto' resolves to changes the dtype, which the stages record: Run.setting);
# the trainers' own list, training.RUNTIME_SETTINGS, is the same idea for their settings
RUNTIME_SETTINGS = {"progress", "device", "threads", "gen_batch_size", "tp", "plan_only", "dry_run", "world_size",
                    "gpu_memory_gb", "micro_batch_size", "run_name", "out_root", "save_interval",
                    "activation_checkpointing", "keep_train_state"}
# The settings that name input files or folders (validate.INPUT_SETTINGS, with their values that are
# not paths): each stage that lists one also lists its files, whose contents count, not how the path
# is written (run_folder.Run).
INPUT_SETTINGS = validate.INPUT_SETTINGS
# What each kind of stage computes its output from, besides the stages it reads (run_stages() names those):
# changing one of these settings redoes that stage and the stages downstream of it, nothing else.
STAGE_SETTINGS = {
    "toy seed": ["seed", "n_ift", "n_eft_train", "n_eft_eval", "n_test", "ift_chatty", "ift_declines", "judge_working",
                 "judge_quotes", "quote_first", "judge_compares", "check_each_ask", "toy_kinds"],
    "tokenizer": ["vocab_size", "phrase_pieces", "rubric_pieces", "letter_pieces", "meta_judge"],
    "M0": ["seed", "dtype", "chat_template", "model", "pretrain_docs", "pretrain_qa_docs", "pretrain_working",
           "pretrain_checking", "check_each_ask", "pretrain_check_drill", "pretrain_drill_layouts", "toy_kinds",
           "pretrain_epochs", "pretrain_lr", "sft_batch_size"],
    # the SFT settings, shared by the SFT baseline and M1 (M1's stage lists these and its own)
    "SFT": ["seed", "dtype", "chat_template", "sft_lr", "sft_min_lr", "sft_batch_size", "sft_epochs", "dropout"],
    "eft_own": ["seed", "dtype", "chat_template", "eft_own_answers", "temperature", "top_p", "max_response_tokens",
                "shard_size", "judge_working", "judge_quotes", "quote_first", "judge_compares", "check_each_ask"],
    "M1": ["eft_own_answers", "meta_judge"],
    "eft_targets": ["seed", "eft_judgments"],
    # ... and only when the SFT baseline judges (no eft_judgments file: run_stages adds them)
    "eft_targets+judge": ["dtype", "chat_template", "n_judge", "temperature", "top_p", "max_judge_tokens",
                          "shard_size"],
    "prompts": ["seed", "dtype", "chat_template", "prompt_writer", "n_prompts", "n_shots", "prompt_temperature",
                "prompt_top_p", "max_prompt_tokens", "min_prompt_words", "max_prompt_words", "rouge_threshold",
                "shard_size"],
    "candidates": ["seed", "dtype", "chat_template", "n_candidates", "temperature", "top_p", "max_response_tokens",
                   "shard_size"],
    "judgments": ["seed", "dtype", "chat_template", "n_judge", "temperature", "top_p", "max_judge_tokens",
                  "shard_size"],
    "pairs": ["pair_by"],
    "DPO": ["seed", "dtype", "chat_template", "dpo_lr", "dpo_min_lr", "dpo_beta", "dpo_batch_size", "dpo_epochs",
            "rpo_alpha", "dropout", "dpo_pick_every"],
    "DPO+pick": ["n_valid", "toy_kinds", "max_response_tokens"],  # only with dpo_pick_every (run_stages adds them)
    "eval": ["seed", "dtype", "chat_template", "eval_judge", "eval_prompts", "mt_bench", "max_response_tokens",
             "n_judge", "temperature", "top_p", "max_judge_tokens"],
    # ... and only with a benchmark's prompts (eval_prompts or mt_bench: run_stages adds it), how many of them
    # the loop's own prompts came near (without one it changes nothing, so changing it redoes no evaluation)
    "eval+benchmarks": ["rouge_threshold"],
    # Meta-Rewarding's: these count only when meta_judge is on (run_stages adds them): without it
    # they change nothing computed, so changing them redoes nothing. meta_judge itself is listed
    # above, on or off: turning it off must redo what it made. (A setting that is new to a list
    # needs no such care: the run folder reuses a record made before it existed while the
    # setting is at its default.)
    # (the meta-judge demonstrations take the EFT targets' form)
    "M1+meta": ["n_meta_seed", "judge_working", "judge_quotes", "quote_first", "judge_compares"],
    "meta_judgments": ["seed", "dtype", "chat_template", "temperature", "top_p", "max_meta_tokens", "shard_size"],
    "pairs+meta": ["seed", "meta_pair_by"],
    "pairs+coin": ["seed"],  # the coin's seed: counts only with pair_by='coin' (run_stages adds it)
}


# Settings read only by what the toy world alone makes: its seed data (seed_data='toy': also its
# own EFT answers and meta-judge demonstrations, which need the toy seed's groups) and its M0
# pretrained from scratch (init_from='scratch'). Elsewhere they would change nothing, so a changed
# one is a mistake, which validate.check_loop says.
TOY_ONLY = {  # (setting, the value that makes them read): the settings
    ("seed_data", "toy"): [s for s in STAGE_SETTINGS["toy seed"] if s != "seed"] + ["n_meta_seed"],
    ("init_from", "scratch"): ["vocab_size", "phrase_pieces", "rubric_pieces", "letter_pieces", "pretrain_docs",
                               "pretrain_qa_docs", "pretrain_working", "pretrain_checking", "pretrain_check_drill",
                               "pretrain_drill_layouts", "pretrain_epochs", "pretrain_lr"],
}


# -----------------------------------------------------------------------------
# Models: loaded for generation (sharded under torchrun), trained by the scripts

def load_for_sampling(r, path):
    """A checkpoint folder, ready to sample, in the generation layout (never
    FSDP's, which would gather every weight for every token): tensor parallel
    over each group of tp ranks, each rank streaming in only its slices, or
    whole on every rank (tp = 1); weights in the compute dtype (sampling
    needs no fp32 master weights)."""
    return (checkpoint.load_model(path, D.for_generation(r.env), dtype=r.env.dtype).eval(),
            Tokenizer(path, r.c.chat_template))


def loop_sampling(c, seed):
    """How the loop samples its candidates and its judgments alike (Section 3.1:
    temperature 0.7, top-p 0.9), `seed` making the draws repeatable."""
    return dict(temperature=c.temperature, top_p=c.top_p, seed=seed, batch_size=c.gen_batch_size,
                progress=c.progress)


def memory_plans(c, world, gpu_memory_gb):
    """The run's two memory plans: training (FSDP2 over all `world` GPUs,
    training.memory_plan) and generation (tp GPUs a group, sample.memory_plan)
    for rows of the model's whole context."""
    args, which = checkpoint.planned_args(c.init_from, c.model)
    D.log(which)
    train = training.memory_plan(args, world, c.micro_batch_size, args.max_seq_len, c.activation_checkpointing,
                                 gpu_memory_gb=gpu_memory_gb, dropout=c.dropout)
    new = max(c.max_prompt_tokens, c.max_response_tokens, c.max_judge_tokens,
              c.max_meta_tokens if c.meta_judge else 0)
    gen = sample.memory_plan(args, c.tp, c.gen_batch_size or 1, args.max_seq_len, new, gpu_memory_gb)
    return train, gen


def check_generation_batch(c, env):
    """Sets gen_batch_size where it is 0: on a GPU the largest batch the
    generation plan fits, on a CPU the default batch. On a GPU a
    larger batch than the plan fits is worth a warning (the plan assumes
    every row fills the context, which real prompts rarely do), and weights
    that do not fit stop the run."""
    if not env.device.startswith("cuda"):
        c.gen_batch_size = c.gen_batch_size or DEFAULTS["gen_batch_size"]
        return
    _, plan = memory_plans(c, env.world, torch.cuda.get_device_properties(env.device).total_memory / 1e9)
    if not plan["weights_fit"]:
        D.stop(f"error: {plan['text'].splitlines()[-1].strip()} (tp={c.tp})")
    if plan["max_batch"] == 0:  # a long context (Llama 3.1's 131072): rows that fill it are rare
        D.log(f"warning: {plan['text'].splitlines()[-1].strip()} (tp={c.tp}); sampling "
              f"{c.gen_batch_size or 1} row(s) at a time")
        c.gen_batch_size = c.gen_batch_size or 1
    elif c.gen_batch_size == 0:
        c.gen_batch_size = plan["max_batch"]
        D.log(f"gen_batch_size: {c.gen_batch_size}, the generation memory plan's largest")
    elif c.gen_batch_size > plan["max_batch"]:
        D.log(f"warning: gen_batch_size {c.gen_batch_size} is more than the {plan['max_batch']} rows of full context "
              f"the generation memory plan fits (python selfreward.py ... --plan_only=True)")


def trainer_settings(c, r, name, batch_size, micro, seed_parts):
    """What every training stage tells train_sft / train_dpo: where, how often
    to save, the device; each stage adds its data and hyperparameters."""
    return {"out_dir": r.path("train", name), "seed": sub_seed(c.seed, *seed_parts) % 2**31, "device": c.device,
            # the dtype 'auto' resolved to: a saved state is resumed only in the dtype it was trained in
            "dtype": r.setting("dtype"), "threads": c.threads, "chat_template": c.chat_template,
            "batch_size": batch_size, "micro_batch_size": fit_micro(batch_size, micro, r.env.world),
            "save_interval": c.save_interval, "activation_checkpointing": c.activation_checkpointing,
            "progress": c.progress,
            # the loop evaluates every model itself (stage 5): the trainers hold nothing out, so each model
            # learns from all of its data (the paper's 3,200 IFT examples, not 95% of them)
            "eval_fraction": 0.0,
            # each model is the next stage's starting point: stored as trained (fp32). In bf16 (the trainers'
            # default on a GPU) the next training's fp32 weights would start on bf16 values and its save round
            # away every change under half a bf16 step: 26 DPO steps at the paper's 1e-6 from the toy M1 moved
            # 80% of the weights, their bf16 save 1.7% (README; on a CPU the default was fp32 already)
            "save_dtype": "float32",
            "keep_state": True}  # the stage removes it once marked done (Run.stage's temporary)


def run_sft(c, r, name, init, data):
    """SFT from `init` on `data` with the run's SFT settings -> out/<run>/<name>/."""
    out = train_sft.train({**trainer_settings(c, r, name, c.sft_batch_size, c.micro_batch_size, ("sft", name)),
                           "init_from": init, "data": data, "lr": c.sft_lr, "min_lr": c.sft_min_lr,
                           "epochs": c.sft_epochs, "dropout": c.dropout})
    return move_model(r, out["model"], name)


# -----------------------------------------------------------------------------
# Stage 1: seed data

def stage_seed_data(c, r):
    # written to seed.new/ first, then swapped in: later stages tell toy from real data, and find EFT
    # targets, by which files are in seed/, so a seed of other contents replaces the folder whole; one
    # whose files come out the same (made again because one was deleted) keeps what later stages wrote
    # into it (real data's EFT targets: hours of judging at 70B)
    new_dir, seed_dir = r.path("seed.new"), r.path("seed")
    if D.is_rank0():
        shutil.rmtree(new_dir, ignore_errors=True)  # (what a kill left)
        os.makedirs(new_dir)
    D.barrier()
    if c.seed_data == "toy":
        if D.is_rank0():
            toy.write_toy(new_dir, seed=c.seed, n_ift=c.n_ift, n_eft_train=c.n_eft_train,
                          n_eft_eval=c.n_eft_eval, n_test=c.n_test, ift_chatty=c.ift_chatty,
                          ift_declines=c.ift_declines, judge_working=c.judge_working, judge_quotes=c.judge_quotes,
                          quote_first=c.quote_first, judge_compares=c.judge_compares,
                          check_each_ask=c.check_each_ask, toy_kinds=c.toy_kinds)
    else:
        for f in SEED_FILES:
            src = os.path.join(c.seed_data, f)
            if not os.path.exists(src):
                D.stop(f"error: seed data folder {c.seed_data} has no {f} "
                         f"(write it with python -m data.prepare_oasst ... --out={c.seed_data})")
            if D.is_rank0():
                shutil.copyfile(src, os.path.join(new_dir, f))
    if D.is_rank0():
        there = [f for f in os.listdir(new_dir) if os.path.isfile(os.path.join(seed_dir, f))]
        if there and all(filecmp.cmp(os.path.join(new_dir, f), os.path.join(seed_dir, f), shallow=False)
                         for f in there):
            for f in os.listdir(new_dir):
                os.replace(os.path.join(new_dir, f), os.path.join(seed_dir, f))
            os.rmdir(new_dir)
        else:
            shutil.rmtree(seed_dir, ignore_errors=True)
            os.replace(new_dir, seed_dir)
    D.barrier()
    counts, said = {}, []
    for f in SEED_FILES:
        recs = read_jsonl(r.path("seed", f))
        if not recs:
            D.stop(f"error: seed data {r.path('seed', f)} is empty")
        name = f.removesuffix(".jsonl")
        counts[name] = len(recs)
        groups = "responses" in recs[0]  # a prompt with several ranked responses (an EFT eval set; real EFT train)
        said.append(f"{name} {len(recs):,} " + (f"groups ({sum(len(x['responses']) for x in recs):,} responses)"
                                              if groups else "examples"))
    D.log("seed data: " + ", ".join(said))
    return counts


# -----------------------------------------------------------------------------
# Stage 2: M0. Real runs start from a pretrained checkpoint (Llama 2 70B in the
# paper). The toy world has no pretrained model, so M0 is pretrained here on
# the toy world's "web text" (data/toy.py: pretraining_docs), with a tokenizer
# trained on the toy world's text.

def stage_tokenizer(c, r):
    if D.is_rank0():
        # the seed files' text, and M0's pretraining markup (task listings, quiz pages), which they lack
        texts = list(toy.corpus(r.path("seed"))) + [toy.fewshot_text(["x"]), toy.worked_examples([("x", "y")])]
        symbols = (J.rubric_lines() if c.rubric_pieces else []) + (list(toy.LETTERS) if c.letter_pieces else [])
        if c.meta_judge:  # Meta-Rewarding: the meta-judge prompt's fixed lines one piece each too (M1 learns it)
            texts.append(J.META_JUDGE_PROMPT)
            symbols += J.meta_rubric_lines() if c.rubric_pieces else []
        tok = train_tokenizer(texts, r.path("tokenizer.model"), vocab_size=c.vocab_size, phrases=c.phrase_pieces,
                              symbols=symbols)
        D.log(f"toy tokenizer: {tok.vocab_size} pieces")
    D.barrier()
    return {"vocab_size": Tokenizer(r.path("tokenizer.model")).vocab_size}


def stage_pretrain(c, r):
    """Stage M0 (init_from='scratch'): a base model pretrained from scratch on
    data/toy.py's "web text"; otherwise M0 is the init_from checkpoint."""
    rng = random.Random(sub_seed(c.seed, "pretrain"))
    docs = toy.pretraining_docs(r.path("seed"), rng, c.pretrain_docs, c.pretrain_qa_docs,
                                 working_share=c.pretrain_working, checking_share=c.pretrain_checking,
                                 kinds=c.toy_kinds.split(","), each_ask=c.check_each_ask,
                                 drill_pages=c.pretrain_check_drill,
                                 drill_layouts=tuple(c.pretrain_drill_layouts.split(",")))
    save_jsonl(r.path("train", "pretrain.jsonl"), docs)
    out = train_sft.train({**trainer_settings(c, r, "M0", c.sft_batch_size, c.micro_batch_size, ("M0",)),
                           "init_from": "scratch", "model": c.model, "tokenizer": r.path("tokenizer.model"),
                           "data": r.path("train", "pretrain.jsonl"), "template": "text",
                           "epochs": c.pretrain_epochs, "lr": c.pretrain_lr, "min_lr": c.pretrain_lr / 10,
                           "warmup_steps": 20, "dropout": 0.0})
    move_model(r, out["model"], "M0")
    return {"docs": len(docs), "loss": out["loss"]}


# -----------------------------------------------------------------------------
# Stage 3: SFT baseline (IFT only) and M1 (IFT + EFT). Real data: the EFT
# targets are the SFT baseline's judgments that rank a group as the humans did
# (stage_eft_targets). The toy world's are given: the seed's eft_train.jsonl
# holds the grader's own judgment of every EFT response (a perfect judge; no
# judging by the baseline, no filter, no down-sampling). Which seed/ file holds what:
#   eft_train.jsonl          toy: the targets; real: ranked groups (or targets, if given so)
#   eft_train_targets.jsonl  real data with groups: the targets stage_eft_targets keeps
#   eft_train_groups.jsonl   toy: the groups the targets were written from (tasks and responses)
#   eft_train_own.jsonl      toy, eft_own_answers: the SFT baseline's answers, judged by the grader
#   test.jsonl               toy: the held-out test prompts the grader grades
# (Inside a stage the worlds are told apart by these files, not by the
# seed_data setting: a stage declares every setting it reads, and the files
# are what it was made from; run_stages, which picks the stages, reads the setting.)

def stage_sft_baseline(c, r, m0):
    run_sft(c, r, "SFT", m0, r.path("seed", "ift.jsonl"))
    return {}


def stage_eft_targets(c, r):
    """Real data (Section 2.1): the EFT seed holds groups of human-ranked
    responses. The paper's recipe: the SFT baseline writes the judgments, and
    only those whose scores rank a group as the humans did are kept, then
    the most frequent score is down-sampled to the next one's count
    (judge.make_eft_targets); its raw judgments are kept beside the seed.
    With eft_judgments set, a stronger judge's file supplies them instead."""
    groups = read_jsonl(r.path("seed", "eft_train.jsonl"))
    if c.eft_judgments:
        return eft_targets_from_file(c, r, groups)
    raw = os.path.join("seed", "eft_train_sft_judgments")  # (.jsonl: the SFT baseline's judgments, kept)
    net, tok = load_for_sampling(r, r.path("SFT"))

    # n_judge doubles as the attempts: attempt a is every response's a-th judgment, and the first attempt
    # whose scores rank the group as the humans did is kept. In shards, as the loop's own judging:
    # hours at 70B, and a killed run loses at most one shard
    def work(chunk, shard):
        return J.judge_eft_groups(net, tok, chunk, n_attempts=c.n_judge, max_new_tokens=c.max_judge_tokens,
                                  **loop_sampling(c, sub_seed(c.seed, "eft targets", shard)))

    judged = generate_sharded(r, raw, groups, c.shard_size, work)
    recs = J.make_eft_targets(judged, seed=sub_seed(c.seed, "eft targets"))
    info = {"groups": len(groups), "targets": len(recs), **J.judgment_counts(ss for g in judged for ss in g["scores"]),
            "too_long": sum(sum(g["too_long"]) for g in judged)}  # responses whose judge prompt did not fit
    if not recs:
        D.stop(f"error: EFT targets: no judgment of the SFT baseline agreed with the human ranking of any "
                 f"group ({info['judgments_with_score']} of {info['judgments']} judgments had a score, "
                 f"{info['too_long']} responses too long to judge), so M1 would get no evaluation data. Its "
                 f"judgments are in {r.path(raw + '.jsonl')}. A small model may need a stronger judge's file: "
                 f"--eft_judgments=FILE.")
    save_jsonl(r.path("seed", "eft_train_targets.jsonl"), recs)
    return info


def eft_targets_from_file(c, r, seed_groups):
    """EFT targets from another judge's judgments (judge.read_judge_file), but
    for the EFT eval and IFT prompts, and where the seed's human ranks cover a
    prompt, only those that agree with them (judge.judge_file_targets)."""
    groups, judged = J.read_judge_file(c.eft_judgments)
    eft_eval, ift = (read_jsonl(r.path("seed", name)) for name in ("eft_eval.jsonl", "ift.jsonl"))
    recs, kept, dropped = J.judge_file_targets(groups, judged, seed_groups, eft_eval, ift,
                                               seed=sub_seed(c.seed, "eft targets"))
    info = {"file": c.eft_judgments, "prompts": len(groups), "prompts_with_human_ranks":
            sum(g["ranks"] is not None for g, _ in kept), "dropped": dict(dropped), "targets": len(recs),
            **J.judgment_counts(j["scores"] for _, m in kept for j in m)}
    if not recs:
        D.stop(f"error: EFT targets: no judgment in {c.eft_judgments} has a score that agrees with the human "
                 f"ranking where there is one ({info['judgments_with_score']} of {info['judgments']} with a score; "
                 f"dropped {dict(dropped)}), so M1 would get no evaluation data.")
    save_jsonl(r.path("seed", "eft_train_targets.jsonl"), recs)
    D.log(f"EFT targets from {c.eft_judgments}: {len(recs)} kept of {info['judgments']} judgments")
    return info


def stage_eft_own_answers(c, r):
    """Toy world, eft_own_answers > 0: the SFT baseline answers every EFT
    training prompt (sampled as the loop samples candidates), and the grader
    writes each answer's EFT target in the run's judgment form
    (toy.eft_target). Why: the judge takes an answer it reads for the right
    one when the answer is likely to it, as its own mistakes are, far more
    than when it is one of the grader's random near misses (STUDIES.md: "Where
    the judge's answer comes from"); here M1 sees judgments of the mistakes
    a model like it makes, with the right answer worked out beside them."""
    groups = read_jsonl(r.path("seed", "eft_train_groups.jsonl"))
    net, tok = load_for_sampling(r, r.path("SFT"))
    n = c.eft_own_answers

    def work(chunk, shard):
        outs = generate(net, [chat_prompt_ids(tok, g["prompt"]) for g in chunk], c.max_response_tokens,
                        n=n, eos_id=tok.stop_ids, **loop_sampling(c, sub_seed(c.seed, "eft own answers", shard)))
        return [toy.eft_target(g["prompt"], g["task"], tok.decode(o).strip(), show_working=c.judge_working,
                               quotes=c.judge_quotes, quote_first=c.quote_first, compares=c.judge_compares,
                               each_ask=c.check_each_ask)
                for k, g in enumerate(chunk) for o in outs[k * n:(k + 1) * n]]

    recs = generate_sharded(r, os.path.join("seed", "eft_train_own"), groups, c.shard_size, work)
    grades = Counter(x["score"] for x in recs)
    return {"answers": len(recs), "grades": {g: grades[g] for g in range(6)}}


def eft_train_file(r):
    """The EFT training records: given (toy), or written by the SFT baseline (real data), or
    taken from another judge's file (eft_judgments)."""
    targets = r.path("seed", "eft_train_targets.jsonl")
    return targets if os.path.exists(targets) else r.path("seed", "eft_train.jsonl")


def stage_m1(c, r, m0):
    both = read_jsonl(r.path("seed", "ift.jsonl")) + read_jsonl(eft_train_file(r))
    info = {}
    if c.eft_own_answers:  # toy: the SFT baseline's own answers, judged by the grader (stage_eft_own_answers)
        own = read_jsonl(r.path("seed", "eft_train_own.jsonl"))
        both += own
        info["own_answers"] = len(own)
    groups = r.path("seed", "eft_train_groups.jsonl")  # the toy world's (the table above Stage 3)
    if c.meta_judge and os.path.exists(groups):
        # Meta-Rewarding on the toy world: demonstrations of meta-judging made by the grader
        # (data/toy.py), as the EFT data demonstrates judging. Real data gets none: Wu et al.
        # rely on the instruct model's own ability to compare judgments.
        meta = toy.meta_judge_examples(read_jsonl(groups), c.n_meta_seed, random.Random(sub_seed(c.seed, "meta seed")),
                                       show_working=c.judge_working, quotes=c.judge_quotes,
                                       quote_first=c.quote_first, compares=c.judge_compares)
        both += meta
        info["meta_examples"] = len(meta)
    # (the trainer draws its own order every epoch too; this mixes the file a reader opens, IFT and EFT
    # records in no blocks, and the measured runs had it)
    random.Random(sub_seed(c.seed, "M1 data")).shuffle(both)
    save_jsonl(r.path("train", "ift_eft.jsonl"), [{"prompt": x["prompt"], "response": x["response"]} for x in both])
    run_sft(c, r, "M1", m0, r.path("train", "ift_eft.jsonl"))
    return {"examples": len(both), **info}


# -----------------------------------------------------------------------------
# Stage 4a: new prompts (Section 2.2, step 1), Self-Instruct style

def words(text):
    """The near-duplicate filter's tokens: lower-cased words and each punctuation
    mark. (Self-Instruct's scorer, rouge_score, keeps letters and digits only, so
    its 0.7 is not quite the same filter here; the toy world's measured loop was
    made with these tokens, and they stay.)"""
    return re.findall(r"\w+|[^\w\s]", text.lower())


# Exercise (medium): ROUGE-L, the near-duplicate filter's measure. Graded by: tests/test_selfreward.py -k rouge_l
def rouge_l(a, b):
    """ROUGE-L F1 of two word lists: from their longest common subsequence,
    F1 = 2 LCS / (len(a) + len(b)); 0.0 when either list is empty."""
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    return 2 * lcs / (len(a) + len(b))


def too_similar(new, existing, threshold):
    """Is `new` (a word list) a near duplicate of any prompt in `existing`?
    A ROUGE-L F1 can be no higher than the bag-of-words overlap bound, so
    most pairs are ruled out without computing the LCS (and the overlap is
    no larger than the shorter list: most without counting it either)."""
    if not new:
        return False
    cn = Counter(new)
    for old, co in existing:
        if 2 * min(len(new), len(old)) / (len(new) + len(old)) < threshold:
            continue
        overlap = sum((cn & co).values())
        if 2 * overlap / (len(new) + len(old)) >= threshold and rouge_l(new, old) >= threshold:
            return True
    return False


# Self-Instruct's filters (Wang et al. 2023), which the paper applies to its new
# prompts with Self-Instruct's template: tasks a model cannot do in text
# (pictures, files, plots, browsing), word for word from its generation code;
# and tasks that begin oddly. (Its length bounds are settings here:
# min_prompt_words 4 and max_prompt_words 150 are its own.)
NOT_FOR_TEXT = re.compile(r"\b(image|images|graph|graphs|picture|pictures|file|files|map|maps|draw|plot|go to)\b",
                          re.IGNORECASE)


def malformed(text, finished, min_words, max_words):
    """Why a generated prompt cannot be used, or None."""
    n = len(text.split())
    if not finished:
        return "unfinished (no end of line within max_prompt_tokens or the context)"
    if not text.strip():
        return "empty"
    if any(s in text for s in ("Task:", "[INST]", "[/INST]", "Score:", "<response>")):
        return "contains markup"
    if n < min_words or n > max_words:
        return "length out of bounds"
    if NOT_FOR_TEXT.search(text) or text.startswith("Write a program"):
        return "not a task for text (Self-Instruct's keywords)"
    if text[0] in string.punctuation or not text[0].isascii():
        return "starts with punctuation or a non-ASCII character"
    return None


def fewshot_request(shots, toy_world):
    """The request a prompt writer continues with one new task (Section 3.1:
    8-shot, Self-Instruct's template for tasks that are not classification).
    A real writer gets that template: "Come up with a series of tasks:", the
    shots numbered one per line (each task's line breaks made spaces, so that
    a shot of several lines keeps to its own), and the next number left open.
    The toy M0 gets the listing its pretraining text taught it (data/toy.py)."""
    if toy_world:
        return toy.fewshot_text(shots)
    lines = [re.sub(r"\s+", " ", s).strip().rstrip(":") for s in shots]
    return ("Come up with a series of tasks:\n" + "".join(f"{i}. {x}\n" for i, x in enumerate(lines, 1))
            + f"{len(lines) + 1}.")


def first_line(tok, ids, room):
    """(the new task, whether its line ended) from what the writer sampled,
    stopped at a token that begins with a line break or at the end of text.
    room: the most tokens it could sample (max_prompt_tokens, or fewer where
    the request nearly fills the context): stopped before that, it stopped at
    one of those tokens. A token may also hold a line break after some text
    ("?\\n" in Llama 3's vocabulary): it does not stop sampling (its "?"
    would be cut off with it), but the line ends there all the same: the task
    is the text before the first line break."""
    text = tok.decode(ids)
    return text.split("\n")[0].strip(), len(ids) < room or "\n" in text


def held_out_check(r):
    """is_held_out(prompt): is a new prompt one of the seed data's held-out
    questions, the EFT eval prompts (the judge's test) and the toy world's
    test prompts? Such a prompt is dropped, or the loop would train on the
    evaluation's own questions. A prompt matches as J.prompt_key does (spaces
    and case aside); in the toy world a task matches too, in any of its
    phrasings ("What is 11 x 2?" asks the test's "Compute the product of 11
    and 2.", and 2 x 11 the same; toy.question_key). (External benchmarks, eval_prompts and
    mt_bench, are not checked: they are chosen at evaluation time, and
    changing them redoes only the evaluation.)"""
    files = [r.path("seed", name) for name in ("test.jsonl", "eft_eval.jsonl")]
    records = [x for f in files if os.path.exists(f) for x in read_jsonl(f)]
    prompts = {J.prompt_key(x["prompt"]) for x in records}
    tasks = {toy.question_key(x["task"]) for x in records if x.get("task")}

    def is_held_out(prompt):
        task = toy.task_from_prompt(prompt) if tasks else None
        return J.prompt_key(prompt) in prompts or task is not None and toy.question_key(task) in tasks
    return is_held_out


def stage_prompts(c, r, t, writer_path):
    """Ask the writer for n_prompts new prompts, n_shots-shot (the paper: 8), and keep the good ones."""
    seed_prompts = [x["prompt"] for x in read_jsonl(r.path("seed", "ift.jsonl"))]
    earlier = [x["prompt"] for s in range(1, t) for x in read_jsonl(r.path(f"iter{s}", "prompts.jsonl"))]
    is_held_out = held_out_check(r)
    toy_world = os.path.exists(r.path("seed", "test.jsonl"))  # (only the toy world's seed data has a test set)
    net, tok = load_for_sampling(r, writer_path)
    # the end of a line ends a new task: any token that begins with a line break
    # ("\n" in Llama 2's and the toy's vocabularies; "\n", "\n\n", ... in BPE ones)
    line_breaks = tok.ids_starting_with("\n")
    # The pool every shard checks against and draws its examples from, grown by each prompt kept
    # (accept): shard s depends on the shards before it, so shards run in order, and a restart
    # rebuilds the pool from the shards already written (replay) before it writes the next
    existing = [(w, Counter(w)) for w in map(words, seed_prompts + earlier)]
    seen = {J.prompt_key(p) for p in seed_prompts + earlier}  # the same prompt: spaces and case aside
    generated = list(earlier)

    def accept(prompt):
        w = words(prompt)
        seen.add(J.prompt_key(prompt))
        existing.append((w, Counter(w)))
        generated.append(prompt)

    def work(requests, shard):
        rng = random.Random(sub_seed(c.seed, "fewshot", t, shard))
        texts = []
        # n_shots - 2 seed examples + 2 generated earlier (n_shots seed ones while there are fewer than 2); all of a
        # shard's requests are made before it runs, so a prompt kept in this shard is an example from the next on
        for _ in requests:
            if len(generated) >= 2:
                shots = rng.sample(seed_prompts, c.n_shots - 2) + rng.sample(generated, 2)
                rng.shuffle(shots)
            else:  # (drawn at once: no seed example twice)
                shots = rng.sample(seed_prompts, c.n_shots)
            texts.append(fewshot_request(shots, toy_world))
        # plain text, no chat template, for a base writer and a chat one alike: the writer continues a
        # list (Self-Instruct's way), it does not answer a request
        ids = [tok.encode(x, bos=True) for x in texts]
        fitting = [i for i, x in enumerate(ids) if fits(net, x)]  # long real prompts can overfill a small context
        # the end of the line ends the new task, and so does the end of text (a writer may end its list)
        outs = generate(net, [ids[i] for i in fitting], c.max_prompt_tokens, temperature=c.prompt_temperature,
                        top_p=c.prompt_top_p, eos_id=sorted(set(line_breaks) | set(tok.stop_ids)),
                        seed=sub_seed(c.seed, "prompts", t, shard), batch_size=c.gen_batch_size,
                        progress=c.progress) if fitting else []
        records = []
        for i, o in zip(fitting, outs):
            # a request that nearly fills the context leaves fewer than max_prompt_tokens
            prompt, finished = first_line(tok, o, new_token_budget(net, ids[i], c.max_prompt_tokens))
            why = malformed(prompt, finished, c.min_prompt_words, c.max_prompt_words)
            if why is None and J.prompt_key(prompt) in seen:
                why = "exact duplicate"
            if why is None and is_held_out(prompt):
                why = "a held-out evaluation prompt"
            if why is None and too_similar(words(prompt), existing, c.rouge_threshold):
                why = f"near duplicate (ROUGE-L >= {c.rouge_threshold})"
            if why is None:
                accept(prompt)
            records.append({"prompt": prompt, "dropped": why})
        for i in sorted(set(range(len(ids))) - set(fitting)):  # each request with no room, in its place
            records.insert(i, {"prompt": "", "dropped": "request longer than the context"})
        return records

    def replay(records):  # a shard done before a restart: its prompts join the pool again
        for x in records:
            if x["dropped"] is None:
                accept(x["prompt"])

    out = generate_sharded(r, os.path.join(f"iter{t}", "prompts_generated"), list(range(c.n_prompts)),
                           c.shard_size, work, replay)
    kept = [{"prompt": x["prompt"]} for x in out if x["dropped"] is None]
    dropped = dict(Counter(x["dropped"] for x in out if x["dropped"] is not None))
    if dropped.get("request longer than the context") == c.n_prompts:  # (raising n_prompts would not help)
        D.stop(f"error: iteration {t}: every one of the {c.n_prompts} requests is longer than the prompt writer's "
               f"context ({writer_path}: {net.args.max_seq_len} tokens): its n_shots = {c.n_shots} example prompts "
               f"do not fit; give a smaller n_shots, shorter seed prompts, or a writer with a longer context.")
    if not kept:
        D.stop(f"error: iteration {t}: the prompt writer ({writer_path}) produced no usable prompt out of "
                 f"{c.n_prompts} requests (dropped: {dropped}). Check the writer model, or raise n_prompts"
                 + (f", or widen min_prompt_words..max_prompt_words ({c.min_prompt_words}..{c.max_prompt_words})"
                    if "length out of bounds" in dropped else "")
                 + (f", or raise max_prompt_tokens ({c.max_prompt_tokens})"
                    if any(why.startswith("unfinished") for why in dropped) else "") + ".")
    save_jsonl(r.path(f"iter{t}", "prompts.jsonl"), kept)
    D.log(f"iteration {t}: {len(kept)} new prompts kept of {c.n_prompts} requested; dropped {dropped}")
    return {"requested": c.n_prompts, "kept": len(kept), "dropped": dropped}


# -----------------------------------------------------------------------------
# Stage 4b-d: candidates and judgments (Section 2.2, steps 2-3), pairs (Section 2.3)

def stage_candidates(c, r, t, mt_path):
    prompts = read_jsonl(r.path(f"iter{t}", "prompts.jsonl"))
    net, tok = load_for_sampling(r, mt_path)
    n = c.n_candidates

    def work(chunk, shard):
        ids = [chat_prompt_ids(tok, x["prompt"]) for x in chunk]
        fitting = [i for i, x in enumerate(ids) if fits(net, x)]  # the others are skipped and counted
        outs = generate(net, [ids[i] for i in fitting], c.max_response_tokens, n=n, eos_id=tok.stop_ids,
                        **loop_sampling(c, sub_seed(c.seed, "candidates", t, shard))) if fitting else []
        # finished: the candidate ended its turn; one that used its whole budget was cut off (response_pairs)
        return [{"prompt": chunk[i]["prompt"], "candidates": [tok.decode(o).strip() for o in outs[k * n:(k + 1) * n]],
                 "finished": [len(o) < new_token_budget(net, ids[i], c.max_response_tokens)
                              for o in outs[k * n:(k + 1) * n]]}
                for k, i in enumerate(fitting)]

    recs = generate_sharded(r, os.path.join(f"iter{t}", "candidates"), prompts, c.shard_size, work)
    cut_off = cut_off_count(recs)
    if cut_off:
        D.log(f"iteration {t}: {cut_off} of {len(recs) * n} candidates ran out of max_response_tokens "
              f"({c.max_response_tokens}) before their end of turn: they take no part in a pair")
    return {"prompts": len(recs), "candidates": len(recs) * n, "too_long": len(prompts) - len(recs),
            "cut_off": cut_off}


def cut_off_count(recs):
    return sum(not done for x in recs for done in J.finished_flags(x))


def judge_settings(c, seed):
    """How the loop samples judgments (Section 3.1: 3 samples at T 0.7 / top-p 0.9, averaged)."""
    return dict(n_samples=c.n_judge, max_new_tokens=c.max_judge_tokens, **loop_sampling(c, seed))


def stage_judgments(c, r, t, mt_path):
    recs = read_jsonl(r.path(f"iter{t}", "candidates.jsonl"))
    net, tok = load_for_sampling(r, mt_path)

    def work(chunk, shard):
        judged = J.judge_groups(net, tok, [x["prompt"] for x in chunk], [x["candidates"] for x in chunk],
                                **judge_settings(c, sub_seed(c.seed, "judge", t, shard)))
        # "scores"[k]: candidate k's n_judge parsed scores; "score"[k]: their mean, the candidate's reward
        return [{"prompt": x["prompt"], "candidates": x["candidates"], "finished": J.finished_flags(x),
                 **J.by_field(mine, ["judgments", "scores", "score", "too_long"])} for x, mine in zip(chunk, judged)]

    recs = generate_sharded(r, os.path.join(f"iter{t}", "judgments"), recs, c.shard_size, work)
    scored = sum(s is not None for x in recs for s in x["score"])
    return {"candidates": sum(len(x["score"]) for x in recs), "with_score": scored,
            **J.judgment_counts(ss for x in recs for ss in x["scores"]),
            "too_long": sum(sum(x["too_long"]) for x in recs)}  # candidates whose judge prompt did not fit


# Exercise (easy): best-versus-worst pairs, ties to the first. Graded by: tests/test_selfreward.py -k make_pairs
def make_pairs(judged):
    """Highest against lowest average score (Section 2.3). judged: records of
    iter{t}/judgments.jsonl, one per prompt, where "candidates"[k] is a
    response, "scores"[k] the n_judge scores parsed from its judgments (None
    where a judgment gave none) and "score"[k] their average, the candidate's
    reward (None if no judgment gave a score). Candidates without any parsed
    score are never chosen nor rejected; prompts whose scored candidates all
    tie (or have fewer than 2 scores) give no pair. A worst candidate with the
    same text as the best (the judge scored one answer twice differently)
    states no preference, so DPO would learn nothing from it but noise:
    another candidate of the same lowest score with a different text is
    rejected instead, and without one the prompt gives no pair. An empty
    candidate counts as unscored: chosen, DPO would teach the model to say
    nothing (and the coin control, coin_turned, may turn any pair). Ties: the
    first of the best, the first of the worst (by candidate index). Texts
    are compared with surrounding whitespace stripped; only "score" is read
    ("scores" is the judge's record of how it got there).
    Returns (pairs, dropped): pairs {"prompt", "chosen", "rejected",
    "chosen_score", "rejected_score", "chosen_index", "rejected_index"};
    dropped counts the prompts without a pair by reason, every reason a
    key, 0 included: "fewer than 2 scored candidates", "all scores tie",
    "same text"."""
    pairs, dropped = [], {"fewer than 2 scored candidates": 0, "all scores tie": 0, "same text": 0}
    for x in judged:
        scored = [(s, i) for i, s in enumerate(x["score"]) if s is not None and x["candidates"][i].strip()]
        if len(scored) < 2:
            dropped["fewer than 2 scored candidates"] += 1
            continue
        best = max(scored, key=lambda si: (si[0], -si[1]))    # first of the best
        worst = min(scored, key=lambda si: (si[0], si[1]))    # first of the worst
        if best[0] == worst[0]:
            dropped["all scores tie"] += 1
            continue
        text = lambda si: x["candidates"][si[1]].strip()
        # of the worst, the first whose text differs from the chosen one
        worst = next((si for si in sorted(scored) if si[0] == worst[0] and text(si) != text(best)), None)
        if worst is None:
            dropped["same text"] += 1
            continue
        pairs.append({"prompt": x["prompt"], "chosen": x["candidates"][best[1]],
                      "rejected": x["candidates"][worst[1]], "chosen_score": best[0], "rejected_score": worst[0],
                      "chosen_index": best[1], "rejected_index": worst[1]})
    return pairs, dropped


def grader_scored(judged, only_right=False):
    """Toy world, pair_by='grader' or 'right' (controls, not the paper's
    method): each candidate's score is the ground truth's grade (toy.true_grade)
    instead of the judge's average, so make_pairs sets a truly best candidate
    against a truly worst one; only_right: 1 for a right answer (grade >= 4)
    and 0 for a wrong one, blind to form (a bare answer's extra point). A
    prompt the grader cannot read (the writer made up a task) gets no
    scores, hence no pair."""
    out = []
    for x in judged:
        grades = [toy.true_grade(x["prompt"], y) for y in x["candidates"]]
        if only_right:
            grades = [None if g is None else int(g >= toy.RIGHT) for g in grades]
        out.append({**x, "score": grades})
    return out


def coin_turned(pairs, seed):
    """pair_by='coin' (a control, not the paper's method): the judge's pairs
    with chosen and rejected swapped on a fair coin, pair by pair. DPO then
    trains on the same responses, as many steps, with the judge's preference
    taken out: what the loop gains this way it owes to DPO on its own
    samples, not to which of the two the judge preferred."""
    rng = random.Random(seed)
    turned = []
    for p in pairs:
        if rng.random() < 0.5:
            p = {**p, "chosen": p["rejected"], "rejected": p["chosen"], "chosen_score": p["rejected_score"],
                 "rejected_score": p["chosen_score"], "chosen_index": p["rejected_index"],
                 "rejected_index": p["chosen_index"]}
        turned.append(p)
    return turned


def response_pairs(c, r, t):
    """Iteration t's preference pairs of responses (make_pairs) by the judge's
    scores (pair_by='coin': then each turned round or not on a coin) or,
    pair_by='grader' or 'right', the grader's; or the end of the run if
    there are none."""
    judged = read_jsonl(r.path(f"iter{t}", "judgments.jsonl"))
    if c.pair_by in ("grader", "right"):
        judged = grader_scored(judged, only_right=c.pair_by == "right")
    # a candidate cut off at max_response_tokens takes no part, as if unscored: chosen, it would teach DPO
    # to end an answer mid-sentence (a pair closes each response with the end-of-turn token)
    judged = [{**x, "score": [s if done else None for s, done in zip(x["score"], J.finished_flags(x))]} for x in judged]
    pairs, dropped = make_pairs(judged)
    if not pairs:
        scorer = "the judge" if c.pair_by in ("judge", "coin") else f"the grader (pair_by={c.pair_by!r})"
        cut_off = cut_off_count(judged)
        D.stop(f"error: iteration {t}: no preference pairs (dropped: {dropped}): no prompt had two candidates "
               f"of different texts that {scorer} scored differently"
               + (f", among those that ended their turn ({cut_off} ran out of max_response_tokens: raise it)"
                  if cut_off else "")
               + f". DPO cannot run. Look at {r.path(f'iter{t}', 'judgments.jsonl')}.")
    if c.pair_by == "coin":
        pairs = coin_turned(pairs, sub_seed(c.seed, "coin", t))
    return pairs, dropped


def stage_pairs(c, r, t):
    pairs, dropped = response_pairs(c, r, t)
    save_jsonl(r.path(f"iter{t}", "pairs.jsonl"), pairs)
    D.log(f"iteration {t}: {len(pairs)} pairs{report.pairs_by(c.pair_by)}; dropped {dropped}")
    return {"pairs": len(pairs), "by": c.pair_by, "dropped": dropped}


# -----------------------------------------------------------------------------
# Meta-Rewarding (Wu et al. 2024), a setting and not the paper's loop (--meta_judge=True): after stage
# 4c M_t also judges its own judgments, and stage 4d adds pairs of judgments for the judge to the
# actor's pairs of responses

def stage_meta_judgments(c, r, t, mt_path):
    """Meta-Rewarding (Wu et al. 2024): M_t compares its own
    judgments of a response, two at a time in both orders
    (judge.compare_judgments). Only responses whose judgments disagree in
    score are meta-judged: where every judgment gives the same score, no
    judge pair could teach anything about scoring, and skipping them keeps
    the stage cheap."""
    judged = read_jsonl(r.path(f"iter{t}", "judgments.jsonl"))
    items = [{"prompt": x["prompt"], "candidate": k, "response": x["candidates"][k], "judgments": x["judgments"][k],
              "scores": x["scores"][k]} for x in judged for k in range(len(x["candidates"]))
             if len({s for s in x["scores"][k] if s is not None}) >= 2]
    net, tok = load_for_sampling(r, mt_path)

    def work(chunk, shard):
        battles = J.compare_judgments(net, tok, chunk, max_new_tokens=c.max_meta_tokens,
                                      **loop_sampling(c, sub_seed(c.seed, "meta judge", t, shard)))
        return [{**x, "battles": b} for x, b in zip(chunk, battles)]

    recs = generate_sharded(r, os.path.join(f"iter{t}", "meta_judgments"), items, c.shard_size, work)
    every = [b for x in recs for b in x["battles"]]
    return {"candidates": sum(len(x["candidates"]) for x in judged), "meta_judged": len(recs),
            "meta_judgments": len(every), "with_verdict": sum(b["winner"] is not None for b in every),
            "too_long": sum(b["too_long"] for b in every)}  # battles whose meta-judge prompt did not fit


# Exercise (medium): the judge's pairs from battles of judgments. Graded by: tests/test_selfreward.py -k make_judge_pairs
def make_judge_pairs(meta_judged, cap=None, seed=0):
    """Meta-Rewarding's pairs for the judge (Wu et al. 2024): per
    response, every verdict of its battles (judge.compare_judgments) is a win
    for the judgment it names (verdict "A": the battle's judgment a) and a
    loss for the other. The judgment with the most net wins (wins - losses)
    is chosen, the one with the fewest rejected (ties to the first, as
    make_pairs; the paper rates the judgments by Elo from the same battles,
    a net count is one a reader can check by hand); only judgments with a
    score take part. Net wins, not wins: a response's judgments meet
    different numbers of battles (two identical texts never meet,
    judge.judgment_battles), and a meta-judge that always names the same
    position would give the judgment in the most battles the most wins;
    its net wins are 0 for every judgment (each battle comes in both
    orders). No pair where no battle has a verdict, where best and worst
    have equal net wins, or where the two texts are the same (surrounding
    whitespace stripped, as in make_pairs); each reason is counted. At most `cap` pairs are kept, a random subset drawn with
    `seed`, in their order. The record is DPO's: the judge prompt of the response, with the
    two judgments as chosen and rejected, so the judge is trained under the
    prompt it judges with.
    meta_judged: records {"prompt", "response", "judgments", "scores",
    "battles": [{"a", "b", "winner": "A", "B" or None}]}, a and b indices
    into judgments. Returns (pairs, dropped): pairs {"prompt" (the judge
    prompt), "chosen", "rejected", "kind": "judge", "instruction" (the
    question), "response", "chosen_score", "rejected_score",
    "chosen_net_wins", "rejected_net_wins"}; dropped counts by reason: "no
    verdict", "wins tie", "same text", "over the cap"."""
    pairs, dropped = [], {"no verdict": 0, "wins tie": 0, "same text": 0, "over the cap": 0}
    for x in meta_judged:
        net = Counter()
        verdicts = [b for b in x["battles"] if b["winner"] is not None]
        for b in verdicts:
            winner, loser = (b["a"], b["b"]) if b["winner"] == "A" else (b["b"], b["a"])
            net[winner] += 1
            net[loser] -= 1
        if not verdicts:
            dropped["no verdict"] += 1
            continue
        scored = [k for k, s in enumerate(x["scores"]) if s is not None]
        best = max(scored, key=lambda k: (net[k], -k))    # first of those with the most net wins
        worst = min(scored, key=lambda k: (net[k], k))    # first of those with the fewest
        if net[best] == net[worst]:
            dropped["wins tie"] += 1
            continue
        if x["judgments"][best].strip() == x["judgments"][worst].strip():
            dropped["same text"] += 1
            continue
        pairs.append({"prompt": J.judge_prompt(x["prompt"], x["response"]), "chosen": x["judgments"][best],
                      "rejected": x["judgments"][worst], "kind": "judge", "instruction": x["prompt"],
                      "response": x["response"], "chosen_score": x["scores"][best],
                      "rejected_score": x["scores"][worst], "chosen_net_wins": net[best],
                      "rejected_net_wins": net[worst]})
    if cap is not None and len(pairs) > cap:
        keep = set(random.Random(seed).sample(range(len(pairs)), cap))
        dropped["over the cap"] = len(pairs) - cap
        pairs = [p for i, p in enumerate(pairs) if i in keep]
    return pairs, dropped


def grader_battles(meta_judged):
    """Toy world, meta_pair_by='grader' (a control, not Meta-Rewarding):
    every battle's verdict is the grader's instead of the meta-judge's. The
    judgment whose score is nearer the response's true grade (toy.true_grade)
    wins, equally near ones draw (no verdict), so make_judge_pairs sets the
    judgment nearest the truth against the farthest. A prompt the grader
    cannot read gets no verdict, hence no pair."""
    out = []
    for x in meta_judged:
        truth = toy.true_grade(x["prompt"], x["response"])
        off = [None if truth is None or s is None else abs(s - truth) for s in x["scores"]]
        verdict = lambda b: (None if off[b["a"]] is None or off[b["a"]] == off[b["b"]]
                             else "A" if off[b["a"]] < off[b["b"]] else "B")
        out.append({**x, "battles": [{**b, "winner": verdict(b)} for b in x["battles"]]})
    return out


def stage_pairs_meta(c, r, t):
    """Meta-Rewarding: the actor's pairs (as stage_pairs) and the judge's
    (make_judge_pairs), in the one file DPO reads, each marked with its kind.
    The judge's are capped at the actor's count: Wu et al. train both roles
    in one DPO run, and on the toy world the judge's pairs could otherwise
    outnumber the actor's and turn M_{t+1} into a better judge of a worse
    policy (its next candidates come from that policy)."""
    pairs, dropped = response_pairs(c, r, t)
    meta_judged = read_jsonl(r.path(f"iter{t}", "meta_judgments.jsonl"))
    if c.meta_pair_by == "grader":
        meta_judged = grader_battles(meta_judged)
    judge_pairs, judge_dropped = make_judge_pairs(meta_judged, cap=len(pairs), seed=sub_seed(c.seed, "judge pairs", t))
    save_jsonl(r.path(f"iter{t}", "pairs.jsonl"), [{**p, "kind": "actor"} for p in pairs] + judge_pairs)
    by = "" if c.meta_pair_by == "meta" else " (best and worst judgment by the grader: meta_pair_by='grader')"
    D.log(f"iteration {t}: {len(pairs)} pairs{report.pairs_by(c.pair_by)}; dropped {dropped}; "
          f"{len(judge_pairs)} judge pairs{by}; "
          f"dropped {judge_dropped}")
    return {"pairs": len(pairs), "by": c.pair_by, "dropped": dropped, "judge_pairs": len(judge_pairs),
            "judge_by": c.meta_pair_by, "judge_dropped": judge_dropped}


# -----------------------------------------------------------------------------
# Stage 4e: DPO, M_t -> M_{t+1} (Section 2.3)

def stage_dpo(c, r, t, mt_path):
    # a DPO micro-batch counts pairs, two sequences each (chosen and rejected): half the SFT micro-batch
    settings = trainer_settings(c, r, f"M{t + 1}", c.dpo_batch_size, max(1, c.micro_batch_size // 2), ("dpo", t))
    out = train_dpo.train({**settings, "init_from": mt_path, "data": r.path(f"iter{t}", "pairs.jsonl"),
                           "beta": c.dpo_beta, "rpo_alpha": c.rpo_alpha, "epochs": c.dpo_epochs, "lr": c.dpo_lr,
                           "min_lr": c.dpo_min_lr, "dropout": c.dropout, "keep_every": c.dpo_pick_every})
    info = {k: v for k, v in out.items() if k not in ("model", "checkpoints")}
    if not c.dpo_pick_every:
        move_model(r, out["model"], f"M{t + 1}")
        return info
    chosen, info["pick"] = pick_checkpoint(c, r, t, out["checkpoints"])
    # copied, not moved: the trainer's record lists every checkpoint, and a rerun of this stage (killed
    # before it was marked done, or made again) chooses among them again (toy models: a few MB each)
    if D.is_rank0():
        shutil.rmtree(r.path(f"M{t + 1}.tmp"), ignore_errors=True)
        shutil.copytree(chosen, r.path(f"M{t + 1}.tmp"))
    D.barrier()
    move_model(r, r.path(f"M{t + 1}.tmp"), f"M{t + 1}")
    return info


def pick_checkpoint(c, r, t, checkpoints):
    """The paper's choice among DPO checkpoints (kept every 200 steps, the
    one chosen by a pairwise comparison of their answers to 253 validation
    prompts): here the toy world's grader stands in for that judge, the role it plays in the
    evaluation, on prompts that are in neither the seed data nor the test
    set (toy.validation_set). Each checkpoint ([step, folder]) answers them
    greedily; the one with the highest mean grade (the earliest of equals)
    is M_{t+1}. Returns its folder, and each checkpoint's figures. (The
    loop's own prompts are not kept from the validation set, as they are
    from the test set: how many it wrote is counted.)"""
    valid = toy.validation_set(r.path("seed"), c.n_valid, c.seed, c.toy_kinds.split(","))
    written = {J.prompt_key(x["prompt"]) for s in range(1, t + 1)
               for x in read_jsonl(r.path(f"iter{s}", "prompts.jsonl"))}
    figures = []
    for step, folder in checkpoints:
        graded = answer_and_grade(c, *load_for_sampling(r, folder), valid)
        grades = [x["grade"] for x in graded]
        figures.append({"step": step, "mean_grade": sum(grades) / len(grades),
                        "right": sum(g >= toy.RIGHT for g in grades) / len(grades)})
    best = max(figures, key=lambda x: (x["mean_grade"], -x["step"]))
    D.log(f"iteration {t}: DPO checkpoints' mean grade on {len(valid)} validation prompts: "
          + ", ".join(f"step {x['step']} {x['mean_grade']:.3f} ({100 * x['right']:.1f}% right)" for x in figures)
          + f"; M{t + 1} is step {best['step']}")
    return dict(map(tuple, checkpoints))[best["step"]], {
        "valid_prompts": len(valid), "written_by_the_loop": sum(J.prompt_key(x["prompt"]) in written for x in valid),
        "checkpoints": figures, "picked": best["step"]}


# -----------------------------------------------------------------------------
# Stage 5: evaluation of every model (Section 3). With the paper's settings
# the toy world's grader, once it has written the seed data and M0's text
# (stages 1 and 2: the IFT answers, the EFT targets, worked and marked quizzes),
# is consulted here and only here: it never feeds back into the loop. With
# meta_judge it also writes M1's meta-judge demonstrations (n_meta_seed, 500 by
# default: the toy model's stand-in for an instruct model's ability). (The
# controls pair_by='grader' or 'right', meta_pair_by='grader' and
# eft_own_answers let it in on purpose, to measure what a
# perfect judge would teach; dpo_pick_every lets it choose each DPO checkpoint,
# as the paper's external judge did, on prompts of its own.) The table of all models is
# report.py's.

def eval_model_id(c, name):
    """The name external judges list model `name`'s answers under: one file
    name (FastChat names a model after its answer file), so a run_name with
    folders in it (exp/1) gives exp-1-M1."""
    return f"{os.path.normpath(c.run_name).replace(os.sep, '-')}-{name}"


def eval_paths(c, r, name):
    """Every file stage_eval can write for model `name`, in the order it writes them."""
    return {"test": r.path("eval", f"{name}_test.jsonl"), "judgments": r.path("eval", f"{name}_judgments.jsonl"),
            "alpaca_eval": E.alpaca_eval_path(r.path("eval"), eval_model_id(c, name)),
            "mt_bench": E.mt_bench_path(r.path("eval"), eval_model_id(c, name))}


def eval_outputs(c, r, name):
    """The files stage_eval writes for model `name` with these settings (the report reads them)."""
    made = {"test": c.seed_data == "toy", "judgments": c.eval_judge, "alpaca_eval": bool(c.eval_prompts),
            "mt_bench": bool(c.mt_bench)}
    return [path for kind, path in eval_paths(c, r, name).items() if made[kind]]


def stage_eval(c, r, name, path):
    net, tok = load_for_sampling(r, path)
    info = {}
    os.makedirs(r.path("eval"), exist_ok=True)
    sample_kw = dict(eos_id=tok.stop_ids, batch_size=c.gen_batch_size, progress=c.progress)
    model_id = eval_model_id(c, name)
    test_out, judge_out, alpaca_out, mt_out = eval_paths(c, r, name).values()
    # each file below is kept as it is finished: a killed evaluation (hours at 70B) redoes only the one it was in
    part = stage_parts(r, os.path.join("eval", name), [test_out, judge_out, alpaca_out, mt_out])
    test_file = r.path("seed", "test.jsonl")
    if os.path.exists(test_file):  # the toy world: held-out prompts answered greedily (all short: none skipped)
        part(test_out, lambda: answer_and_grade(c, net, tok, read_jsonl(test_file)), write_jsonl, read_jsonl)
    # Every model draws the same random numbers (common random numbers: one seed for all, not one a model), so
    # that two models' sampled judgments, or MT-Bench answers, differ where the models differ, not because they
    # drew other numbers: with a seed of its own a model, the toy judge's accuracy moved up to 2 points with
    # the draws alone, more than the models differed (STUDIES.md, "The judge's dip at M2 was its draws"). The
    # seed is the one M1 had when each model had its own, so M1's figures of earlier runs still hold.
    common_seed = lambda what: sub_seed(c.seed, what, "M1")
    if c.eval_judge:  # the model as a judge, against the human (toy: grader) ranks of the EFT eval set
        groups = read_jsonl(r.path("seed", "eft_eval.jsonl"))
        # every response of every group, judged as one flat list (what judge_groups does, kept flat: the
        # file holds one judgment record a response), then cut back into the groups
        every = part(judge_out, lambda: J.judge(net, tok, [g["prompt"] for g in groups for _ in g["responses"]],
                                                [x for g in groups for x in g["responses"]],
                                                **judge_settings(c, common_seed("eval judge"))),
                     write_jsonl, read_jsonl)
        judged = J.regroup(every, [len(g["responses"]) for g in groups])
        info["judge"] = J.reward_metrics([[j["score"] for j in mine] for mine in judged],
                                         [g["ranks"] for g in groups])
        # the judgments' own counts: the report's judge coverage is per judgment, not per response
        info["judge"].update(**J.judgment_counts(j["scores"] for j in every),
                             too_long=sum(j["too_long"] for j in every))
    trained = {}
    if c.eval_prompts or c.mt_bench:  # what the model was trained on (its EFT targets and pairs: made again if gone)
        for stage in ["eft_targets"] + [f"iter{s}_pairs" for s in iterations_before(name)]:
            r.remake_if_gone(stage, f"eval_{name}")
        trained = trained_prompts(r.path("seed"), name, lambda s: r.path(f"iter{s}", "pairs.jsonl"))
    if c.eval_prompts:  # real data: answers for external judges, in their own tools' files (evaluation.py)
        prompts = E.read_eval_prompts(c.eval_prompts)
        recs = part(alpaca_out, lambda: E.answer_alpaca_eval(net, tok, prompts, model_id, c.max_response_tokens,
                                                             **sample_kw),
                    E.write_alpaca_eval, E.read_alpaca_eval)
        skipped = E.alpaca_unanswered(recs)  # every prompt: one with no room is E.NO_ROOM
        info["alpaca_eval"] = {"path": alpaca_out, "answered": len(recs) - skipped, "too_long": skipped,
                               "avg_length": E.mean_length(x["output"] for x in recs if x["output"] != E.NO_ROOM),
                               "trained_on": benchmark_overlap(list(map(E.question, prompts)), trained,
                                                               c.rouge_threshold)}
    if c.mt_bench:
        questions = E.read_mt_bench(c.mt_bench)
        recs = part(mt_out, lambda: E.answer_mt_bench(net, tok, questions, model_id, c.max_response_tokens,
                                                      seed=common_seed("mt_bench"), **sample_kw),
                    E.write_mt_bench, read_jsonl)
        turns = [x["choices"][0]["turns"] for x in recs]  # every question: a turn with no room is E.NO_ROOM
        skipped = E.unanswered(recs)
        info["mt_bench"] = {"path": mt_out, "answered": len(recs) - skipped, "too_long": skipped,
                            "avg_length": E.mean_length(t for ts in turns if E.NO_ROOM not in ts for t in ts),
                            "trained_on": benchmark_overlap(list(map(E.question, questions)), trained,
                                                            c.rouge_threshold)}
    D.barrier()
    return info


def answer_and_grade(c, net, tok, tasks):
    """Toy world: the model's greedy answers to `tasks` ({"prompt", "task"}),
    each graded 0-5 by the ground truth (toy.grade)."""
    outs = generate(net, [chat_prompt_ids(tok, x["prompt"]) for x in tasks], c.max_response_tokens, temperature=0.0,
                    eos_id=tok.stop_ids, batch_size=c.gen_batch_size, progress=c.progress)
    recs = [{"prompt": x["prompt"], "response": tok.decode(o).strip(), "task": x.get("task")}
            for x, o in zip(tasks, outs)]
    for x in recs:
        x["grade"] = toy.grade(x, x["response"])
    return recs


# Were a benchmark's questions trained on? An external benchmark is chosen at
# evaluation time, so its questions cannot be kept out of training as the
# held-out prompts are (held_out_check): they are counted instead.

def iterations_before(name):
    """The iterations whose pairs trained model `name` (M_t: 1 .. t-1; none for the SFT baseline)."""
    return range(1, 1 if name == "SFT" else int(name[1:]))


def trained_prompts(seed_dir, name, pairs_file=None):
    """The instructions model `name` was trained on, by where they came from:
    the SFT baseline the seed IFT prompts (in seed_dir); M1 those and the
    questions of its EFT training records (inside their judge prompts, with
    responses); M_t also the prompts the loop wrote that made DPO pairs in
    iterations 1 .. t-1 (pairs_file(s): iteration s's pairs; a
    Meta-Rewarding judge pair's question is its "instruction")."""
    seen = {"seed IFT": [x["prompt"] for x in read_jsonl(os.path.join(seed_dir, "ift.jsonl"))]}
    if name == "SFT":
        return seen
    # real data: the EFT targets kept (each names its question); the toy world: its groups, every
    # response of which is a target; real groups before their targets are written: those that may be
    eft = next((f for f in (os.path.join(seed_dir, g) for g in ("eft_train_targets.jsonl", "eft_train_groups.jsonl",
                                                                "eft_train.jsonl")) if os.path.exists(f)), None)
    records = read_jsonl(eft) if eft else []
    seen["EFT training"] = list(dict.fromkeys(x.get("instruction", x["prompt"]) for x in records
                                              if "instruction" in x or "responses" in x))
    written = []
    for t in iterations_before(name):
        written += [p.get("instruction", p["prompt"]) for p in read_jsonl(pairs_file(t))]
    seen["written by the loop"] = list(dict.fromkeys(written))
    return seen


def benchmark_overlap(questions, trained, threshold):
    """How many benchmark questions (AlpacaEval instructions, MT-Bench first
    turns) the model was trained on, the same text (letter case and spaces
    aside) or a near duplicate by the loop's own filter (ROUGE-L >= threshold),
    per source of trained_prompts; a question counts under its first source.
    The loop keeps the seed data's own held-out prompts out of training
    (held_out_check), but not an external benchmark's: this says whether
    its scores are of questions the model has seen."""
    # (the same text has the same words, ROUGE-L 1: the near-duplicate search finds it too)
    sources = {k: [(w, Counter(w)) for w in map(words, v)] for k, v in trained.items()}
    counts, examples = Counter(), []
    for q in questions:
        for source, prompts in sources.items():
            if too_similar(words(q), prompts, threshold):
                counts[source] += 1
                examples.append(q)
                break
    return {"questions": len(questions), "seen": sum(counts.values()),
            "by_source": {k: counts[k] for k in trained}, "examples": examples[:3]}


def warn_of_benchmarks_in_seed(c):
    """Before any work: a benchmark whose questions are among real seed
    data's training prompts would score every model on questions it was
    trained on (oasst1's validation prompts are AlpacaEval's oasst ones)."""
    if c.seed_data == "toy":
        return
    trained = trained_prompts(c.seed_data, "M1")
    for setting, read in (("eval_prompts", E.read_eval_prompts), ("mt_bench", E.read_mt_bench)):
        if not getattr(c, setting):
            continue
        o = benchmark_overlap([E.question(x) for x in read(getattr(c, setting))], trained, c.rouge_threshold)
        if o["seen"]:
            D.log(f"warning: {setting}: {o['seen']} of its {o['questions']} questions are training prompts of the "
                  f"seed data ({c.seed_data}: {report.by_source(o)}; "
                  f"e.g. {o['examples'][0][:80]!r}), so their scores are not of held-out questions. Keep them out "
                  f"of the seed's IFT and EFT training sets (AlpacaEval's oasst prompts are oasst1's validation "
                  f"prompts: python -m data.prepare_oasst ... --eval_files=<the validation split>).")


# -----------------------------------------------------------------------------

def main(argv=None, table_again=True):
    """Run (or resume) the whole method. argv: config files and --key=value
    settings (default: the command line). table_again=False (seeds.py): a
    run that found every stage done says so in one line, without its table
    (it was shown when the run finished)."""
    overrides = configurator.configure(dict(DEFAULTS, __file__=__file__, __doc__=__doc__), argv)
    c = configurator.settings(DEFAULTS, overrides)
    if c.plan_only:
        world = c.world_size or D.launched_world()
        validate.check_plan(c, world).stop("the plan")  # (and the shapes: init_from's config, or the preset)
        for plan in memory_plans(c, world, c.gpu_memory_gb):
            D.log(plan["text"])
        return
    validate.check_loop(c, D.launched_world()).stop()  # every setting and input, before any work
    env = D.setup(c.device, c.dtype, c.threads, tp=c.tp,  # under torchrun: join the process group once, for every stage
                  width=checkpoint.model_width(c.init_from, c.model))
    D.log(D.describe(env))
    warn_of_benchmarks_in_seed(c)
    check_generation_batch(c, env)
    folder = os.path.join(c.out_root, c.run_name)
    if c.dry_run:  # (before a changed setting's stage drops its record: what would be redone)
        if not os.path.isfile(os.path.join(folder, "settings.json")):
            D.log(f"{folder} is a new run: every stage would run")
        else:
            r = Run(folder, c, env, RUNTIME_SETTINGS, DEFAULTS, INPUT_SETTINGS, dry=True)
            run_stages(c, r)
            D.log(f"reused: {', '.join(r.reused) or 'none'}; nothing was run or written")
            holder = D.lock_holder(folder) if D.is_rank0() else None
            if holder:
                D.log(f"note: another job ({holder}) is writing {folder} now: the command would be refused until "
                      f"it ends")
        D.teardown(env)
        return
    with D.sole_writer(env, folder):
        note_stages_redone(c, env, folder)
        r = Run(folder, c, env, RUNTIME_SETTINGS, DEFAULTS, INPUT_SETTINGS)
        t_start = time.time()
        try:
            run_stages(c, r)
        except KeyboardInterrupt:
            if D.is_rank0():
                print(f"\ninterrupted in stage {r.current or '(between stages)'}; the same command resumes the run",
                      file=sys.stderr)
            sys.exit(130)
    if not r.made and not table_again:
        D.log(f"every stage was done before, from the same settings and inputs: {r.path('report.md')}")
    else:
        if r.reused:  # (a rerun that redid nothing would otherwise look like one that never ran)
            D.log(f"\nreused, done before from the same settings and inputs: {', '.join(r.reused)}")
        D.log(f"\n{report.table(r.path('report.md'))}\n\ndone in {(time.time() - t_start) / 60:.1f} min: "
              f"{r.path('report.md')}")
    D.teardown(env)


def note_stages_redone(c, env, folder):
    """Say at the start which finished stages this command makes again,
    replacing their files, because a setting or an input changed (each stage
    says why as it starts, but by then the first model may be gone): a user
    who meant a new run hears it first. The stages are found as --dry_run=True
    finds them, by a dry pass that says nothing."""
    if not D.rank0_answer(env, os.path.isfile(os.path.join(folder, "settings.json"))):
        return  # (a new run, whose settings.json rank 0 writes next)
    probe = Run(folder, c, env, RUNTIME_SETTINGS, DEFAULTS, INPUT_SETTINGS, dry=True, quiet=True)
    run_stages(c, probe)
    redone = [(name, why) for name, why in probe.would_run if why]  # (no why: never done, or cut short)
    if redone:
        D.log(f"note: {folder} holds stages made from other settings or inputs; this command makes them again, "
              f"replacing their files: {', '.join(name for name, _ in redone)} (the first because: {redone[0][1]}; "
              f"--dry_run=True says why for each, another --run_name keeps this run as it is)")


def run_stages(c, r):
    """Figure 1, stage by stage. Each stage names the settings (STAGE_SETTINGS),
    input files and earlier stages its output is made from: it is skipped when
    it was done from the same, and redone (with every stage after it that
    reads it) when one of them changed."""
    S = STAGE_SETTINGS
    temporary = lambda name: [] if c.keep_train_state else [r.path("train", name, "state")]
    # dpo_pick_every's checkpoints and the last step's model, once M_{t+1} is a copy of one of them (with
    # dpo_pick_every off, the checkpoints an earlier command kept with keep_train_state: not this model's)
    checkpoints = lambda name: [] if c.keep_train_state else \
        [r.path("train", name, train_dpo.CHECKPOINTS), r.path("train", name, "model")]
    meta = lambda kind: S[kind + "+meta"] if c.meta_judge else []  # Meta-Rewarding's settings, only when on
    coin = S["pairs+coin"] if c.pair_by == "coin" else []
    pick = S["DPO+pick"] if c.dpo_pick_every else []
    if c.seed_data == "toy":
        r.stage("seed_data", lambda: stage_seed_data(c, r), uses=["seed_data"] + S["toy seed"],
                outputs=[r.path("seed", f) for f in SEED_FILES + ["test.jsonl", "eft_train_groups.jsonl"]])
    else:
        r.stage("seed_data", lambda: stage_seed_data(c, r), uses=["seed_data"],
                files=[os.path.join(c.seed_data, f) for f in SEED_FILES],
                outputs=[r.path("seed", f) for f in SEED_FILES])
    if c.init_from == "scratch":
        r.stage("tokenizer", lambda: stage_tokenizer(c, r), uses=S["tokenizer"],
                after=["seed_data"], outputs=[r.path("tokenizer.model")])
        r.stage("M0", lambda: stage_pretrain(c, r), uses=S["M0"], after=["seed_data", "tokenizer"],
                temporary=temporary("M0"), outputs=[r.path("M0")])
        m0 = r.path("M0")
    else:
        r.given("M0", c.init_from)
        m0 = c.init_from
    r.stage("SFT", lambda: stage_sft_baseline(c, r, m0), uses=S["SFT"], after=["M0", "seed_data"],
            temporary=temporary("SFT"), outputs=[r.path("SFT")])
    m1_reads = ["M0", "seed_data"]
    # real seed data's EFT training set: groups of ranked responses, which EFT targets are made from (the
    # toy world's is targets already); read from the input, which seed/ copies, and which is there in a dry run
    if c.seed_data != "toy" and "responses" in read_jsonl(os.path.join(c.seed_data, "eft_train.jsonl"))[0]:
        judging = [] if c.eft_judgments else S["eft_targets+judge"]  # (a judge file: no model, no sampling)
        r.stage("eft_targets", lambda: stage_eft_targets(c, r), uses=S["eft_targets"] + judging,
                after=["SFT", "seed_data"],
                files=[c.eft_judgments] if c.eft_judgments else [],
                outputs=[r.path("seed", "eft_train_targets.jsonl")])
        m1_reads.append("eft_targets")
    if c.seed_data == "toy" and c.eft_own_answers:
        r.stage("eft_own", lambda: stage_eft_own_answers(c, r), uses=S["eft_own"], after=["SFT", "seed_data"],
                outputs=[r.path("seed", "eft_train_own.jsonl")])
        m1_reads.append("eft_own")
    r.stage("M1", lambda: stage_m1(c, r, m0), uses=S["SFT"] + S["M1"] + meta("M1"), after=m1_reads,
            temporary=temporary("M1"), outputs=[r.path("M1")])
    # one iteration (Section 2.2): a writer model -> new prompts; M_t -> 4 candidates each; M_t judges each
    # candidate 3 times -> pairs of its best against its worst; DPO from M_t (its own reference) -> M_{t+1}
    for t in range(1, c.iterations + 1):  # (partial binds this t: a stage made again later runs for its own)
        mt, it = r.path(f"M{t}"), f"iter{t}"
        # the prompt writer: one of this run's models (a stage the prompts come after), or, where the setting
        # names none of them (writer_model None), a checkpoint folder of its own
        writer_model = {"M0": "M0", "M1": "M1", "current": f"M{t}"}.get(c.prompt_writer)
        writer = m0 if writer_model == "M0" else r.path(writer_model) if writer_model else c.prompt_writer
        r.stage(f"{it}_prompts", partial(stage_prompts, c, r, t, writer), uses=S["prompts"],
                files=[] if writer_model else [writer],
                after=["seed_data", *([writer_model] if writer_model else []),
                       *(f"iter{s}_prompts" for s in range(1, t))], outputs=[r.path(it, "prompts.jsonl")])
        r.stage(f"{it}_candidates", partial(stage_candidates, c, r, t, mt), uses=S["candidates"],
                after=[f"{it}_prompts", f"M{t}"], outputs=[r.path(it, "candidates.jsonl")])
        r.stage(f"{it}_judgments", partial(stage_judgments, c, r, t, mt), uses=S["judgments"],
                after=[f"{it}_candidates", f"M{t}"], outputs=[r.path(it, "judgments.jsonl")])
        if not c.meta_judge:
            r.stage(f"{it}_pairs", partial(stage_pairs, c, r, t), uses=S["pairs"] + coin, after=[f"{it}_judgments"],
                    outputs=[r.path(it, "pairs.jsonl")])
        else:  # Meta-Rewarding: M_t also judges its judgments, and the judge's pairs join the actor's
            r.stage(f"{it}_meta_judgments", partial(stage_meta_judgments, c, r, t, mt), uses=S["meta_judgments"],
                    after=[f"{it}_judgments", f"M{t}"], outputs=[r.path(it, "meta_judgments.jsonl")])
            r.stage(f"{it}_pairs", partial(stage_pairs_meta, c, r, t), uses=S["pairs"] + S["pairs+meta"] + coin,
                    after=[f"{it}_judgments", f"{it}_meta_judgments"], outputs=[r.path(it, "pairs.jsonl")])
        r.stage(f"M{t + 1}", partial(stage_dpo, c, r, t, mt), uses=S["DPO"] + pick, after=[f"{it}_pairs", f"M{t}"],
                temporary=temporary(f"M{t + 1}") + checkpoints(f"M{t + 1}"), outputs=[r.path(f"M{t + 1}")])
    names = ["SFT"] + [f"M{t}" for t in range(1, c.iterations + 2)]
    eval_files = [f for f in (c.eval_prompts, c.mt_bench) if f]
    benchmarks = S["eval+benchmarks"] if eval_files else []
    infos = {n: r.stage(f"eval_{n}", partial(stage_eval, c, r, n, r.path(n)), uses=S["eval"] + benchmarks,
                        files=eval_files,
                        after=[n, "seed_data"], outputs=eval_outputs(c, r, n)) for n in names}
    r.stage("report", lambda: report.write_report(r, names, infos, c.run_name, c.iterations, list(r.fingerprints)),
            after=[f"eval_{n}" for n in names], outputs=[r.path("report.md")])
    r.remake_if_gone("report", "the run's last line")  # (which prints its table)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # before the stages began (checks, setup): a stage's own Ctrl-C says where it was
        print("\ninterrupted before any work; nothing was written", file=sys.stderr)
        sys.exit(130)
