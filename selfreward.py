"""
Self-Rewarding Language Models (Yuan et al. 2024), the whole method:

    seed data -> M0 -> SFT baseline (IFT only)        the reference point
                 M0 -> M1 (SFT on IFT + EFT)           follows instructions AND judges
    for t = 1..T:  M_t writes new prompts (8-shot), samples 4 candidates per
                   prompt, judges each candidate 3 times with itself, pairs
                   the best against the worst -> DPO from M_t -> M_{t+1}
    every model -> evaluation -> report.md

    python selfreward.py                                  # the toy world on a laptop CPU
    python selfreward.py --run_name=big --n_prompts=4000       # settings: python selfreward.py --help
    torchrun --nproc_per_node=8 selfreward.py config/llama2_70b_oasst.py

Every stage reads and writes files under out/<run_name>/ and marks itself done;
running the same command again skips what is done and continues (long
generation stages resume from their last complete shard, training from its
last saved step). Under torchrun every rank runs the same stages: generation
splits the prompts over the ranks, training shards the model with FSDP, and
only rank 0 writes shared files.
"""
import hashlib
import json
import os
import random
import re
import sys
import time
from collections import Counter

import torch.distributed as dist

import judge as J
from data import read_jsonl, write_jsonl, write_text
from tokenizer import Tokenizer, chat_prompt_ids

# -----------------------------------------------------------------------------
# Settings (python selfreward.py --help lists them)
run_name = "toy"            # the run folder: out_root/run_name (not "run": torchrun would take --run= as its --run-path)
out_root = "out"            # where run folders live
seed = 1337                 # everything random derives from this
# seed data and M0
seed_data = "toy"           # 'toy' (generated), or a folder with ift.jsonl, eft_train.jsonl, eft_eval.jsonl
init_from = "scratch"       # M0: 'scratch' pretrains a toy base model; else a checkpoint folder (HF layout)
model = "toy-small"         # preset when init_from='scratch'
vocab_size = 2048           # toy tokenizer size (upper bound) when init_from='scratch'
phrase_pieces = True        # toy tokenizer pieces may span words: the judge rubric costs ~140 tokens, not ~360
rubric_pieces = True        # toy tokenizer: each fixed line of the judge rubric is one piece (~30 tokens, not ~140)
letter_pieces = True        # toy tokenizer: each capital letter is one piece, so made-up words ("TAMILO") are
                            # seen letter by letter and reverse/sort/replace are learnable
n_ift = 3200                # toy IFT seed examples (paper: 3,200)
n_eft_train = 4890          # toy EFT training examples (paper: 1,630; a 1M-parameter judge needs 3x)
n_eft_eval = 541            # toy EFT eval responses (paper: 541)
n_test = 256                # toy held-out test prompts (paper: 256 head-to-head prompts)
ift_chatty = 0.6            # toy IFT seed: share of right answers said chattily ("Sure! The answer is 42.")
pretrain_docs = 2000        # toy M0: documents listing task prompts (the base model's "web text")
pretrain_qa_docs = 4000     # toy M0: documents of worked examples ("Q: ... A: ..."), 4-12 each
pretrain_epochs = 2         # toy M0: passes over them
pretrain_lr = 2e-3          # toy M0: peak learning rate
# SFT: M0 -> SFT baseline and M0 -> M1 (paper, for 70B: lr 5.5e-6 -> 1.1e-6, batch 16,
# dropout 0.1; a 1M-parameter toy model barely moves at such rates: config/ holds the paper's)
sft_lr = 1e-3               # peak learning rate
sft_min_lr = 1e-4           # cosine floor
sft_batch_size = 16         # examples per step
sft_epochs = 3              # passes over the seed data
micro_batch_size = 16       # examples per forward pass on one rank
dropout = 0.1               # during SFT and DPO (paper: 0.1)
# self-instruction creation (Section 2.3)
iterations = 2              # T: M1 -> M2 -> M3
n_prompts = 1000            # new prompts requested per iteration (before filtering)
prompt_writer = "M0"        # fixed writer (the paper used a separate model): 'M0', 'M1', 'current' (M_t), or a folder
                            # (toy: SFT leaves a 1M-parameter M1 unable to continue a list: 23 of 200 requests usable, M0 193)
n_shots = 8                 # few-shot examples per request: 6 from the IFT seed, 2 generated earlier
prompt_temperature = 0.6    # paper: 0.6
prompt_top_p = 0.9          # paper: 0.9
max_prompt_tokens = 64      # a new prompt longer than this is malformed
min_prompt_words = 3        # shorter prompts are dropped
max_prompt_words = 60       # longer prompts are dropped
rouge_threshold = 0.9       # drop a new prompt whose ROUGE-L F with an existing one reaches this
n_candidates = 4            # N responses per prompt (paper: 4)
temperature = 0.7           # candidates and judgments (paper: 0.7)
top_p = 0.9                 # candidates and judgments (paper: 0.9)
max_response_tokens = 64    # per candidate response
n_judge = 3                 # judgments per candidate, averaged (paper: 3)
max_judge_tokens = 96       # per judgment
# DPO: M_t -> M_{t+1} (paper, for 70B: lr 1e-6 -> 1e-7, batch 16, beta 0.1, dropout 0.1)
dpo_lr = 1e-4               # peak learning rate
dpo_min_lr = 1e-5           # cosine floor
dpo_beta = 0.1              # paper: 0.1
dpo_batch_size = 16         # pairs per step
dpo_epochs = 1              # passes over the pairs
# evaluation
eval_judge = True           # reward-model metrics of every model's judge on the EFT eval set
eval_prompts = ""           # real data: a JSONL of {"instruction"} answered in AlpacaEval's model_outputs.json format
mt_bench = ""               # real data: MT-Bench question.jsonl, first turns answered for external judging
# running
gen_batch_size = 64         # sequences decoded together
shard_size = 256            # prompts per resumable generation shard
save_interval = 50          # training steps between resumable training states
activation_checkpointing = False  # recompute each block in backward (needed for 70B)
device = ""                 # '' = cuda if available, else cpu
progress = True             # progress bars
# -----------------------------------------------------------------------------
SETTINGS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}
# settings that change how a run goes, not what it computes: a resumed run may differ in these
RUNTIME_ONLY = {"progress", "device", "gen_batch_size", "micro_batch_size", "run_name", "out_root", "save_interval",
                "activation_checkpointing"}


# -----------------------------------------------------------------------------
# Running stages: each writes its outputs atomically, then its done-marker

def is_rank0():
    return not dist.is_initialized() or dist.get_rank() == 0


def log(msg):
    if is_rank0():
        print(msg, flush=True)


def barrier():
    if dist.is_initialized():
        dist.barrier()


class Run:
    """The run folder: out/<run>/, its settings, and which stages are done."""

    def __init__(self, c):
        self.c = c
        self.dir = os.path.join(c["out_root"], c["run_name"])
        self.check_settings()

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def check_settings(self):
        """Refuse to mix a run folder with another configuration."""
        mine = {k: v for k, v in self.c.items() if k not in RUNTIME_ONLY}
        f = self.path("settings.json")
        if os.path.exists(f):
            with open(f) as fh:
                theirs = json.load(fh)
            diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
            if diff:
                shown = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in sorted(diff.items())[:6])
                sys.exit(f"error: {self.dir} was started with other settings ({shown}).\n"
                         f"Run again with the same settings to resume, or start fresh with "
                         f"--run_name=<new name> (or delete {self.dir}).")
        elif is_rank0():
            os.makedirs(self.dir, exist_ok=True)
            write_json(f, mine)
        barrier()

    def done(self, stage):
        return os.path.exists(self.path("done", stage))

    def mark(self, stage, info=None):
        if is_rank0():
            write_json(self.path("done", stage), info or {})
        barrier()

    def stage(self, name, fn):
        """Run fn() unless stage `name` is done; return its info dict."""
        if self.done(name):
            with open(self.path("done", name)) as f:
                return json.load(f)
        log(f"\n=== {name}")
        t0 = time.time()
        try:
            info = fn() or {}
        except (ValueError, FileNotFoundError) as e:  # bad input: say where, not a traceback
            sys.exit(f"error: stage {name}: {e}")
        info["seconds"] = round(time.time() - t0, 1)
        self.mark(name, info)
        self.metric({"stage": name, **info})
        return info

    def metric(self, record):
        if is_rank0():
            with open(self.path("metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")


def save_jsonl(path, records):
    """Shared output: rank 0 writes it (atomically), every rank waits for it."""
    if is_rank0():
        write_jsonl(path, records)
    barrier()


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2))


def sub_seed(*parts):
    """A seed for one piece of work, derived from the run's seed and a name."""
    h = hashlib.sha256(repr((seed,) + parts).encode()).hexdigest()
    return int(h[:12], 16)


def generate_sharded(r, name, items, work, replay=None):
    """
    Run work(chunk, shard_index) -> list of output records over `items` in
    shards of shard_size, writing name.part-NNNNN.jsonl as each completes and
    skipping the parts already written (replay(records) is called for those,
    to restore any state later shards depend on), then merge them into
    name.jsonl in order. A killed run loses at most the shard it was in.
    """
    parts = []
    for s, start in enumerate(range(0, len(items), shard_size)):
        part = r.path(f"{name}.part-{s:05d}.jsonl")
        if os.path.exists(part):
            if replay:
                replay(read_jsonl(part))
        else:
            save_jsonl(part, work(items[start:start + shard_size], s))
        parts.append(part)
    merged = [rec for p in parts for rec in read_jsonl(p)]
    barrier()  # every rank has read the parts before rank 0 removes them
    if is_rank0():
        write_jsonl(r.path(f"{name}.jsonl"), merged)
        for p in parts:
            os.remove(p)
    barrier()
    return merged


# -----------------------------------------------------------------------------
# Models: loaded for generation (sharded under torchrun), trained by the scripts

def load_model(path):
    """A checkpoint folder, ready to sample: whole on one process, FSDP-sharded
    and streamed slice by slice under torchrun."""
    import distributed as D
    env = D.setup(device)
    if env.fsdp:
        net = D.build_model(env, path)
    else:
        from model import load_checkpoint
        net = load_checkpoint(path, device=env.device)
    return net.eval(), Tokenizer(os.path.join(path, "tokenizer.model"))


def fit_micro(batch_size, want):
    """The largest micro-batch <= want that splits each rank's share of a batch evenly."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    if batch_size % world:
        sys.exit(f"error: a batch of {batch_size} cannot be split over {world} ranks")
    share = batch_size // world
    m = max(1, min(want, share))
    while share % m:
        m -= 1
    return m


def trainer_settings(r, name, batch_size, micro, seed_parts):
    """What every training stage tells train_sft / train_dpo: where, how often
    to save, the device; each stage adds its data and hyperparameters."""
    return {"out_dir": r.path("train", name), "seed": sub_seed(*seed_parts) % 2**31, "device": device,
            "batch_size": batch_size, "micro_batch_size": fit_micro(batch_size, micro),
            "save_interval": save_interval, "activation_checkpointing": activation_checkpointing,
            "eval_interval": 10**9}  # the loop evaluates every model itself (stage 5)


def sft(r, name, init, data):
    """SFT from `init` on `data` with the run's SFT settings -> out/<run>/<name>/."""
    import train_sft
    out = train_sft.train({**trainer_settings(r, name, sft_batch_size, micro_batch_size, ("sft", name)),
                           "init_from": init, "data": data, "lr": sft_lr, "min_lr": sft_min_lr,
                           "epochs": sft_epochs, "dropout": dropout})
    return move_model(r, out["model"], name)


def move_model(r, trained, name):
    """Put a trained model folder at out/<run>/<name>/ (atomic rename)."""
    dest = r.path(name)
    if is_rank0():
        if os.path.exists(dest):
            import shutil
            shutil.rmtree(dest)
        os.replace(trained, dest)
    barrier()
    return dest


# -----------------------------------------------------------------------------
# Stage 1: seed data

def stage_seed_data(r):
    os.makedirs(r.path("seed"), exist_ok=True)
    if seed_data == "toy":
        from data import toy
        if is_rank0():
            toy.write_toy(r.path("seed"), seed=seed, n_ift=n_ift, n_eft_train=n_eft_train,
                          n_eft_eval=n_eft_eval, n_test=n_test, ift_chatty=ift_chatty)
        barrier()
    else:
        import shutil
        for f in ("ift.jsonl", "eft_train.jsonl", "eft_eval.jsonl"):
            src = os.path.join(seed_data, f)
            if not os.path.exists(src):
                sys.exit(f"error: seed data folder {seed_data} has no {f} "
                         f"(write it with python -m data.prepare_oasst ... --out={seed_data})")
            if is_rank0():
                shutil.copyfile(src, r.path("seed", f))
        barrier()
    counts = {}
    for f in ("ift", "eft_train", "eft_eval"):
        recs = read_jsonl(r.path("seed", f + ".jsonl"))
        if not recs:
            sys.exit(f"error: seed data {r.path('seed', f + '.jsonl')} is empty")
        counts[f] = len(recs)
    log("seed data: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


# -----------------------------------------------------------------------------
# Stage 2: M0. Real runs start from a pretrained checkpoint (Llama 2 70B in the
# paper). The toy world has no pretrained model, so M0 is pretrained here on a
# small "web text" of the toy world: documents that list task prompts, and
# quiz pages of worked examples (no chat template, no judgments). That gives
# the base model what the method assumes a pretrained LM has: the language of
# the tasks, some skill at them, and the habit of continuing a list of
# instructions, which few-shot prompt writing relies on.

DOC_HEAD = "Here are some tasks:\n"


def task_list(prompts):
    """A toy pretraining document: a Self-Instruct style listing, one task per line."""
    return DOC_HEAD + "".join(f"Task: {p}\n" for p in prompts)


def fewshot_text(prompts):
    """The few-shot request: the same listing, left open for the model to continue."""
    return task_list(prompts) + "Task:"


def stage_tokenizer(r):
    from data import toy
    from tokenizer import train_tokenizer
    if is_rank0():
        texts = list(toy.corpus(r.path("seed"))) + [fewshot_text(["x"]), worked_examples([("x", "y")])]
        symbols = (J.rubric_lines() if rubric_pieces else []) + (list(toy.LETTERS) if letter_pieces else [])
        tok = train_tokenizer(texts, r.path("tokenizer.model"), vocab_size=vocab_size, phrases=phrase_pieces,
                              symbols=symbols)
        log(f"toy tokenizer: {tok.vocab_size} pieces")
    barrier()
    return {"vocab_size": Tokenizer(r.path("tokenizer.model")).vocab_size}


def worked_examples(pairs):
    """A toy pretraining document: questions with their answers, as a quiz page
    on the web would have them (no chat template, no judgments)."""
    return "".join(f"Q: {p}\nA: {a}\n" for p, a in pairs)


def stage_pretrain(r):
    from data import toy
    rng = random.Random(sub_seed("pretrain"))
    # nothing the evaluation asks about is in the "web text"
    held = [rec for f in ("test", "eft_eval") for rec in read_jsonl(r.path("seed", f + ".jsonl"))]
    held_prompts = {rec["prompt"] for rec in held}
    held_tasks = {json.dumps(rec["task"], sort_keys=True) for rec in held}

    def fresh_tasks(k):
        out = []
        while len(out) < k:
            task = toy.sample_task(rng)
            if task and json.dumps(task, sort_keys=True) not in held_tasks:
                p = toy.render(task, rng)
                if p not in held_prompts:
                    out.append((p, task))
        return out

    docs = [{"text": task_list([p for p, _ in fresh_tasks(rng.randint(4, 12))])} for _ in range(pretrain_docs)]
    docs += [{"text": worked_examples([(p, toy.answer(t)) for p, t in fresh_tasks(rng.randint(4, 12))])}
             for _ in range(pretrain_qa_docs)]
    rng.shuffle(docs)
    save_jsonl(r.path("train", "pretrain.jsonl"), docs)
    import train_sft
    out = train_sft.train({**trainer_settings(r, "M0", sft_batch_size, micro_batch_size, ("M0",)),
                           "init_from": "scratch", "model": model, "tokenizer": r.path("tokenizer.model"),
                           "data": r.path("train", "pretrain.jsonl"), "template": "text", "eval_fraction": 0.0,
                           "epochs": pretrain_epochs, "lr": pretrain_lr, "min_lr": pretrain_lr / 10,
                           "warmup_steps": 20, "dropout": 0.0})
    move_model(r, out["model"], "M0")
    return {"docs": len(docs), "loss": out["loss"]}


# -----------------------------------------------------------------------------
# Stage 3: SFT baseline (IFT only) and M1 (IFT + EFT)

def stage_sft_baseline(r, m0):
    sft(r, "SFT", m0, r.path("seed", "ift.jsonl"))
    return {}


def stage_eft_targets(r):
    """Real data (Section 2.2): the EFT seed holds groups of human-ranked
    responses; the SFT baseline writes the judgments, and only those whose
    scores rank the group as the humans did are kept (judge.make_eft_targets)."""
    groups = read_jsonl(r.path("seed", "eft_train.jsonl"))
    net, tok = load_model(r.path("SFT"))
    recs = J.make_eft_targets(net, tok, groups, n_attempts=n_judge, temperature=temperature, top_p=top_p,
                              max_new_tokens=max_judge_tokens, seed=sub_seed("eft targets"),
                              batch_size=gen_batch_size)
    if not recs:
        sys.exit("error: EFT targets: no judgment of the SFT baseline agreed with the human ranking of any "
                 "group, so M1 would get no evaluation data. Check the SFT baseline's judgments.")
    save_jsonl(r.path("seed", "eft_train_targets.jsonl"), recs)
    return {"groups": len(groups), "targets": len(recs)}


def eft_train_file(r):
    """The EFT training records: given (toy), or written by the SFT baseline (real data)."""
    targets = r.path("seed", "eft_train_targets.jsonl")
    return targets if os.path.exists(targets) else r.path("seed", "eft_train.jsonl")


def stage_m1(r, m0):
    both = read_jsonl(r.path("seed", "ift.jsonl")) + read_jsonl(eft_train_file(r))
    random.Random(sub_seed("M1 data")).shuffle(both)
    save_jsonl(r.path("train", "ift_eft.jsonl"), [{"prompt": x["prompt"], "response": x["response"]} for x in both])
    sft(r, "M1", m0, r.path("train", "ift_eft.jsonl"))
    return {"examples": len(both)}


# -----------------------------------------------------------------------------
# Stage 4a: new prompts (Section 2.3, step 1), Self-Instruct style

def words(text):
    return re.findall(r"\w+|[^\w\s]", text.lower())


def rouge_l(a, b):
    """ROUGE-L F1 of two word lists: from their longest common subsequence."""
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
    most pairs are ruled out without computing the LCS."""
    cn = Counter(new)
    for old, co in existing:
        overlap = sum((cn & co).values())
        if 2 * overlap / (len(new) + len(old)) >= threshold and rouge_l(new, old) >= threshold:
            return True
    return False


def malformed(text, finished):
    """Why a generated prompt cannot be used, or None."""
    n = len(text.split())
    if not finished:
        return "unfinished (no end of line within max_prompt_tokens)"
    if not text.strip():
        return "empty"
    if any(s in text for s in ("Task:", "[INST]", "[/INST]", "Score:", "<response>")):
        return "contains markup"
    if n < min_prompt_words or n > max_prompt_words:
        return "length out of bounds"
    return None


def stage_prompts(r, t, writer_path):
    """Ask the writer for n_prompts new prompts, 8-shot, and keep the good ones."""
    seed_prompts = [x["prompt"] for x in read_jsonl(r.path("seed", "ift.jsonl"))]
    earlier = [x["prompt"] for s in range(1, t) for x in read_jsonl(r.path(f"iter{s}", "prompts.jsonl"))]
    net, tok = load_model(writer_path)
    newline = tok.encode("\n")[-1]  # its own piece in both tokenizers (Llama's <0x0A>, the toy's "\n")
    existing = [(w, Counter(w)) for w in map(words, seed_prompts + earlier)]
    seen = {p.strip().lower() for p in seed_prompts + earlier}
    generated = list(earlier)

    def accept(prompt):
        w = words(prompt)
        seen.add(prompt.lower())
        existing.append((w, Counter(w)))
        generated.append(prompt)

    def work(requests, shard):
        rng = random.Random(sub_seed("fewshot", t, shard))
        texts = []
        for _ in requests:  # 6 seed examples + 2 generated earlier (seed again while there are none)
            pool = generated if len(generated) >= 2 else seed_prompts
            shots = rng.sample(seed_prompts, n_shots - 2) + rng.sample(pool, 2)
            rng.shuffle(shots)
            texts.append(fewshot_text(shots))
        ids = [tok.encode(x, bos=True) for x in texts]
        # the end of the line ends the new task, as the end of text ends a response
        outs = generate_fn()(net, ids, max_prompt_tokens, temperature=prompt_temperature, top_p=prompt_top_p,
                             eos_id=newline, seed=sub_seed("prompts", t, shard), batch_size=gen_batch_size,
                             progress=progress)
        records = []
        for o in outs:
            prompt = tok.decode(o).strip()
            why = malformed(prompt, finished=len(o) < max_prompt_tokens)
            if why is None and prompt.lower() in seen:
                why = "exact duplicate"
            if why is None and too_similar(words(prompt), existing, rouge_threshold):
                why = f"near duplicate (ROUGE-L >= {rouge_threshold})"
            if why is None:
                accept(prompt)
            records.append({"prompt": prompt, "dropped": why})
        return records

    def replay(records):  # a shard done before a restart: its prompts join the pool again
        for x in records:
            if x["dropped"] is None:
                accept(x["prompt"])

    out = generate_sharded(r, os.path.join(f"iter{t}", "prompts_generated"), list(range(n_prompts)), work, replay)
    kept = [{"prompt": x["prompt"]} for x in out if x["dropped"] is None]
    dropped = dict(Counter(x["dropped"] for x in out if x["dropped"] is not None))
    if not kept:
        sys.exit(f"error: iteration {t}: the prompt writer ({writer_path}) produced no usable prompt out of "
                 f"{n_prompts} requests (dropped: {dropped}). Check the writer model, or raise n_prompts.")
    save_jsonl(r.path(f"iter{t}", "prompts.jsonl"), kept)
    log(f"iteration {t}: {len(kept)} new prompts kept of {n_prompts} requested; dropped {dropped}")
    return {"requested": n_prompts, "kept": len(kept), "dropped": dropped}


def generate_fn():
    from sample import generate
    return generate


# -----------------------------------------------------------------------------
# Stage 4b-d: candidates, judgments, pairs (Section 2.3, steps 2-4)

def stage_candidates(r, t, mt_path):
    prompts = read_jsonl(r.path(f"iter{t}", "prompts.jsonl"))
    net, tok = load_model(mt_path)

    def work(chunk, shard):
        ids = [chat_prompt_ids(tok, x["prompt"]) for x in chunk]
        outs = generate_fn()(net, ids, max_response_tokens, temperature=temperature, top_p=top_p,
                             n=n_candidates, eos_id=tok.eos_id, seed=sub_seed("candidates", t, shard),
                             batch_size=gen_batch_size, progress=progress)
        return [{"prompt": x["prompt"], "candidates": [tok.decode(o).strip() for o in
                                                      outs[i * n_candidates:(i + 1) * n_candidates]]}
                for i, x in enumerate(chunk)]

    recs = generate_sharded(r, os.path.join(f"iter{t}", "candidates"), prompts, work)
    return {"prompts": len(recs), "candidates": len(recs) * n_candidates}


def stage_judgments(r, t, mt_path):
    recs = read_jsonl(r.path(f"iter{t}", "candidates.jsonl"))
    net, tok = load_model(mt_path)

    def work(chunk, shard):
        flat = [(x["prompt"], c) for x in chunk for c in x["candidates"]]
        scores, raw = J.judge(net, tok, [p for p, _ in flat], [c for _, c in flat], n_samples=n_judge,
                              temperature=temperature, top_p=top_p, max_new_tokens=max_judge_tokens,
                              seed=sub_seed("judge", t, shard), batch_size=gen_batch_size,
                              progress=progress)
        out, k = [], 0
        for x in chunk:
            mine = raw[k:k + len(x["candidates"])]
            k += len(x["candidates"])
            out.append({"prompt": x["prompt"], "candidates": x["candidates"],
                        "judgments": [j["judgments"] for j in mine], "scores": [j["scores"] for j in mine],
                        "score": [j["score"] for j in mine]})
        return out

    recs = generate_sharded(r, os.path.join(f"iter{t}", "judgments"), recs, work)
    scored = sum(s is not None for x in recs for s in x["score"])
    return {"candidates": sum(len(x["score"]) for x in recs), "with_score": scored}


def make_pairs(judged):
    """Highest against lowest average score (Section 2.3, step 4). Candidates
    without any parsed score are never chosen nor rejected; prompts whose
    scored candidates all tie (or have fewer than 2 scores) give no pair."""
    pairs, dropped = [], {"fewer than 2 scored candidates": 0, "all scores tie": 0}
    for x in judged:
        scored = [(s, i) for i, s in enumerate(x["score"]) if s is not None]
        if len(scored) < 2:
            dropped["fewer than 2 scored candidates"] += 1
            continue
        best = max(scored, key=lambda si: (si[0], -si[1]))    # first of the best
        worst = min(scored, key=lambda si: (si[0], si[1]))    # first of the worst
        if best[0] == worst[0]:
            dropped["all scores tie"] += 1
            continue
        pairs.append({"prompt": x["prompt"], "chosen": x["candidates"][best[1]],
                      "rejected": x["candidates"][worst[1]], "chosen_score": best[0], "rejected_score": worst[0],
                      "chosen_index": best[1], "rejected_index": worst[1]})
    return pairs, dropped


def stage_pairs(r, t):
    pairs, dropped = make_pairs(read_jsonl(r.path(f"iter{t}", "judgments.jsonl")))
    if not pairs:
        sys.exit(f"error: iteration {t}: no preference pairs (dropped: {dropped}); the judge gave every "
                 f"candidate the same score or none. DPO cannot run. Look at {r.path(f'iter{t}', 'judgments.jsonl')}.")
    save_jsonl(r.path(f"iter{t}", "pairs.jsonl"), pairs)
    log(f"iteration {t}: {len(pairs)} pairs; dropped {dropped}")
    return {"pairs": len(pairs), "dropped": dropped}


def stage_dpo(r, t, mt_path):
    import train_dpo
    settings = trainer_settings(r, f"M{t + 1}", dpo_batch_size, max(1, micro_batch_size // 2), ("dpo", t))
    out = train_dpo.train({**settings, "init_from": mt_path, "data": r.path(f"iter{t}", "pairs.jsonl"),
                           "beta": dpo_beta, "epochs": dpo_epochs, "lr": dpo_lr, "min_lr": dpo_min_lr,
                           "dropout": dropout, "eval_fraction": 0.0})
    move_model(r, out["model"], f"M{t + 1}")
    return {k: v for k, v in out.items() if k != "model"}


# -----------------------------------------------------------------------------
# Stage 5: evaluation of every model (Section 3). The toy world's grader is
# consulted here and only here: it never feeds back into the loop.

def stage_eval(r, name, path):
    net, tok = load_model(path)
    info = {}
    os.makedirs(r.path("eval"), exist_ok=True)
    sample_kw = dict(eos_id=tok.eos_id, batch_size=gen_batch_size, progress=progress)
    test_file = r.path("seed", "test.jsonl")
    if os.path.exists(test_file):  # the toy world: held-out prompts answered greedily
        from data import toy
        test = read_jsonl(test_file)
        outs = generate_fn()(net, [chat_prompt_ids(tok, x["prompt"]) for x in test], max_response_tokens,
                             temperature=0.0, **sample_kw)
        recs = [{"prompt": x["prompt"], "response": tok.decode(o).strip(), "task": x.get("task")}
                for x, o in zip(test, outs)]
        for x in recs:
            x["grade"] = toy.grade(x, x["response"])
        if is_rank0():
            write_jsonl(r.path("eval", f"{name}_test.jsonl"), recs)
    if eval_judge:  # the model as a judge, against the human (toy: grader) ranks of the EFT eval set
        groups = read_jsonl(r.path("seed", "eft_eval.jsonl"))
        flat = [(g["prompt"], resp) for g in groups for resp in g["responses"]]
        scores, raw = J.judge(net, tok, [p for p, _ in flat], [x for _, x in flat], n_samples=n_judge,
                              temperature=temperature, top_p=top_p, max_new_tokens=max_judge_tokens,
                              seed=sub_seed("eval judge", name), batch_size=gen_batch_size,
                              progress=progress)
        per_group, k = [], 0
        for g in groups:
            per_group.append(scores[k:k + len(g["responses"])])
            k += len(g["responses"])
        info["judge"] = J.reward_metrics(per_group, [g["ranks"] for g in groups])
        if is_rank0():
            write_jsonl(r.path("eval", f"{name}_judgments.jsonl"), raw)
    real_prompts = [(eval_prompts, "alpaca_eval"), (mt_bench, "mt_bench")]
    for src, kind in real_prompts:  # real data: answers for external judging
        if not src:
            continue
        qs = read_jsonl(src)
        texts = [q["instruction"] if kind == "alpaca_eval" else q["turns"][0] for q in qs]
        outs = generate_fn()(net, [chat_prompt_ids(tok, x) for x in texts], max_response_tokens,
                             temperature=0.0, **sample_kw)
        answers = [tok.decode(o).strip() for o in outs]
        if is_rank0() and kind == "alpaca_eval":
            write_json(r.path("eval", f"{name}_alpaca_eval.json"),
                       [{"instruction": x, "output": a, "generator": f"selfreward-{name}"} for x, a in zip(texts, answers)])
        elif is_rank0():
            write_jsonl(r.path("eval", f"{name}_mt_bench.jsonl"),
                        [{"question_id": q["question_id"], "model_id": f"selfreward-{name}",
                          "choices": [{"index": 0, "turns": [a]}]} for q, a in zip(qs, answers)])
    barrier()
    return info


def head_to_head(a, b):
    """Win / tie / loss of model a against model b, prompt by prompt, by grade."""
    w = t = l = 0
    for x, y in zip(a, b):
        w, t, l = w + (x["grade"] > y["grade"]), t + (x["grade"] == y["grade"]), l + (x["grade"] < y["grade"])
    n = max(1, len(a))
    return {"win": w / n, "tie": t / n, "loss": l / n}


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def stage_report(r, names, infos):
    rows, metrics = [], []
    tests = {n: read_jsonl(r.path("eval", f"{n}_test.jsonl")) for n in names
             if os.path.exists(r.path("eval", f"{n}_test.jsonl"))}
    header = ("| model | mean grade (0-5) | exact solve % | vs previous: win / tie / loss % | "
              "vs SFT baseline: win / tie / loss % | judge pairwise acc % | 5-best % | exact match % | "
              "Spearman | Kendall tau | judge coverage % | avg response length (chars) |")
    rows += [header, "|" + "---|" * (header.count("|") - 1)]
    for i, n in enumerate(names):
        m = {"model": n}
        if n in tests:
            g = [x["grade"] for x in tests[n]]
            m.update(mean_grade=sum(g) / len(g), exact_solve=sum(x == 5 for x in g) / len(g),
                     avg_length=sum(len(x["response"]) for x in tests[n]) / len(g))
            if i > 0:
                m["vs_previous"] = head_to_head(tests[n], tests[names[i - 1]])
            if n != "SFT" and "SFT" in tests:
                m["vs_sft"] = head_to_head(tests[n], tests["SFT"])
        j = infos.get(n, {}).get("judge") or {}
        m["judge"] = j
        metrics.append(m)
        wtl = lambda d: "-" if not d else f"{100 * d['win']:.1f} / {100 * d['tie']:.1f} / {100 * d['loss']:.1f}"
        corr = lambda v: "-" if v is None else f"{v:.3f}"
        rows.append(f"| {n} | {m.get('mean_grade', float('nan')):.2f} | {pct(m.get('exact_solve'))} | "
                    f"{wtl(m.get('vs_previous'))} | {wtl(m.get('vs_sft'))} | {pct(j.get('pairwise_accuracy'))} | "
                    f"{pct(j.get('five_best'))} | {pct(j.get('exact_match'))} | {corr(j.get('spearman'))} | "
                    f"{corr(j.get('kendall_tau'))} | {pct(j.get('coverage'))} | {m.get('avg_length', 0):.1f} |")
    stages = {}
    for f in sorted(os.listdir(r.path("done"))):
        with open(r.path("done", f)) as fh:
            stages[f] = json.load(fh)
    total = sum(s.get("seconds", 0) for s in stages.values())
    counts = [f"- iteration {t}: {stages.get(f'iter{t}_prompts', {}).get('kept', '?')} new prompts kept of "
              f"{stages.get(f'iter{t}_prompts', {}).get('requested', '?')} requested, "
              f"{stages.get(f'iter{t}_pairs', {}).get('pairs', '?')} preference pairs"
              for t in range(1, iterations + 1)]
    settings = {k: v for k, v in SETTINGS.items() if k not in RUNTIME_ONLY}
    text = "\n".join([
        f"# Self-rewarding run `{run_name}`", "",
        "Test prompts answered greedily and graded by the toy world's ground-truth grader (never used "
        "inside the loop); the judge columns are each model's reward-model metrics on the EFT eval set "
        "against the ground-truth ranking (3 judgments per response, averaged).", "",
        *rows, "", *counts, f"- stage time in all: {total / 60:.1f} min", "",
        "Settings:", "", "```", *(f"{k} = {v!r}" for k, v in settings.items()), "```", ""])
    if is_rank0():
        write_text(r.path("report.md"), text)
        for m in metrics:
            r.metric({"eval": m})
    barrier()
    log("\n" + "\n".join(rows))
    return {}


# -----------------------------------------------------------------------------

def main():
    import distributed as D
    D.setup(device)  # under torchrun: join the process group once, for every stage
    r = Run({k: globals()[k] for k in SETTINGS})
    t_start = time.time()
    r.stage("seed_data", lambda: stage_seed_data(r))
    if init_from == "scratch":
        if seed_data != "toy":
            sys.exit("error: init_from='scratch' pretrains a toy base model; with real seed data, "
                     "give init_from a pretrained checkpoint folder")
        r.stage("tokenizer", lambda: stage_tokenizer(r))
        r.stage("M0", lambda: stage_pretrain(r))
        m0 = r.path("M0")
    else:
        m0 = init_from
    r.stage("SFT", lambda: stage_sft_baseline(r, m0))
    if "responses" in read_jsonl(r.path("seed", "eft_train.jsonl"))[0]:  # groups, not targets
        r.stage("eft_targets", lambda: stage_eft_targets(r))
    r.stage("M1", lambda: stage_m1(r, m0))
    writer = {"M0": m0, "M1": r.path("M1")}.get(prompt_writer, prompt_writer)
    for t in range(1, iterations + 1):
        mt = r.path(f"M{t}")
        r.stage(f"iter{t}_prompts", lambda: stage_prompts(r, t, mt if writer == "current" else writer))
        r.stage(f"iter{t}_candidates", lambda: stage_candidates(r, t, mt))
        r.stage(f"iter{t}_judgments", lambda: stage_judgments(r, t, mt))
        r.stage(f"iter{t}_pairs", lambda: stage_pairs(r, t))
        r.stage(f"M{t + 1}", lambda: stage_dpo(r, t, mt))
    names = ["SFT"] + [f"M{t}" for t in range(1, iterations + 2)]
    infos = {n: r.stage(f"eval_{n}", lambda: stage_eval(r, n, r.path(n))) for n in names}
    r.stage("report", lambda: stage_report(r, names, infos))
    log(f"\ndone in {(time.time() - t_start) / 60:.1f} min: {r.path('report.md')}")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    from configurator import configure
    configure(globals())
    SETTINGS.update({k: globals()[k] for k in SETTINGS})
    main()
