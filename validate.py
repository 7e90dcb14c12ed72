"""
Checks before any work: a run that cannot finish is refused in seconds, with
one message listing every problem found, instead of failing at the stage that
first uses a bad setting (after hours of training, at 70B).

    Problems            collects the problems, each naming its setting or file
                        (and line); .stop() ends the command with all of them
    check_loop(c, world)        selfreward.py's settings and input files
    check_training(c, ...)      a trainer's (train_sft.py, train_dpo.py)
    check_checkpoint(p, ...)    a model folder: config, weights, tokenizer agree

Only what can be known before the first stage is checked here: files that
the loop writes itself (the toy seed, M1 ...) are checked by the stage that
reads them.
"""
import difflib
import math
import os
import re

import torch

import distributed as D
import evaluation as E
import judge as J
from checkpoint import check_hf_tensors, check_meta_tensors, check_tokenizer, planned_args, read_config
from configurator import set_in_file
from data import SEED_FILES, fields_of, read_jsonl, toy, unwritable
from model import PRESETS, Transformer
from tokenizer import TEMPLATES, Tokenizer, chat_prompt_ids, conversation_problem


class Problems:
    """What is wrong, in the order found; nothing is raised until stop()."""

    def __init__(self, c):
        self.c = c
        self.found = []

    def add(self, text):
        self.found.append(text)

    def require(self, ok, setting, text):
        """`setting` is bad unless ok; text says what it must be."""
        if not ok:
            self.add(f"{self.shown(setting)}: {text}")
        return ok

    def shown(self, setting):
        """'lr = -1.0', and the file and line that set it when a config file did."""
        return f"{setting} = {getattr(self.c, setting)!r}{self.set_at(setting)}"

    def set_at(self, setting):
        """' (set at FILE:LINE)' where a config file set the setting's value, else ''."""
        where = set_in_file(setting, getattr(self.c, setting, None))
        return f" (set at {where})" if where else ""

    def no_none(self, allowed=()):
        """--key=None passes the configurator for any setting; True if none is None (but `allowed`)."""
        nones = [k for k, v in vars(self.c).items() if v is None and k not in allowed]
        for k in nones:
            self.add(f"{k} = None: give a value like its default")
        return not nones

    def at_least(self, setting, low):
        return self.finite(setting) and self.require(getattr(self.c, setting) >= low, setting, f"must be >= {low}")

    def positive(self, setting):
        return self.finite(setting) and self.require(getattr(self.c, setting) > 0, setting, "must be > 0")

    def finite(self, setting):
        """--lr=1e999 parses as inf: not a number to train with (an int is always finite)."""
        v = getattr(self.c, setting)
        return self.require(not isinstance(v, float) or math.isfinite(v), setting, "must be a finite number")

    def read_only_with(self, setting, on, where, default):
        """A setting read only where `where` holds (on: whether it does here):
        changed from its default without it, it would change nothing, which is a
        mistake to say, not to ignore."""
        return self.require(on or getattr(self.c, setting) == default, setting, f"is read only with {where}, which "
                            f"this run does not have: it would change nothing; leave it at {default!r}")

    def fraction(self, setting, low_open=True, high_open=False):
        """A value in (0, 1] by default; low_open=False allows 0, high_open excludes 1."""
        v = getattr(self.c, setting)
        ok = (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)
        return self.require(ok, setting, f"must be in {'(' if low_open else '['}0, 1{')' if high_open else ']'}")

    def writable_folder(self, setting, folder):
        """A folder the command will write into: a folder, or one it can make,
        where it may write (data.unwritable); '' names none."""
        problem = "give a folder ('.' for this one)" if not str(folder).strip() else unwritable(folder)
        return self.require(problem is None, setting, problem)

    def tensor_parallel(self, ranks, what="the number of ranks", models=()):
        """tp (tensor-parallel size, checked >= 1 elsewhere) must divide the
        ranks, and each model's KV heads and FFN width: each rank holds whole
        heads and an equal slice of the FFN. models: (whose, ModelArgs) pairs."""
        tp = self.c.tp
        if tp < 1:
            return
        self.require(ranks % tp == 0, "tp", f"must divide {what}, {ranks}")
        for whose, args in models:
            self.require(args.n_kv_heads % tp == 0 and args.hidden_dim % tp == 0, "tp",
                         f"must divide {whose} n_kv_heads {args.n_kv_heads} and FFN width {args.hidden_dim}")

    def compute(self):
        """Where and how a script computes: its device, dtype, threads, seed and chat template settings."""
        v = self.c.device
        # (torch.device would refuse 'cuda0' or 'cuda:x' only once the run had started)
        if self.require(v in ("", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", v), "device",
                        "must be '', 'cpu', 'cuda' or 'cuda:N'"):
            self.require(not v.startswith("cuda") or torch.cuda.is_available(), "device",
                         "CUDA is not available on this machine")
        self.require(self.c.dtype in ("auto", "bfloat16", "float32"), "dtype",
                     "must be 'auto', 'bfloat16' or 'float32'")
        self.at_least("threads", 0)
        if getattr(self.c, "seed", None) is not None:  # (the trainers' RNG seeds are seed * 1,000,003 + step ...)
            self.require(0 <= self.c.seed < 2**32, "seed", "must be in [0, 2**32)")
        if "chat_template" in vars(self.c):
            self.require(self.c.chat_template in ("", *TEMPLATES), "chat_template",
                         f"must be '' (the checkpoint's own) or one of {', '.join(TEMPLATES)}")

    def jsonl(self, setting, path, check_record=None, fields=()):
        """Every record of a JSON Lines input: it parses, it has `fields` (strings),
        and check_record(rec) -> None or what is wrong with it. The records, or []."""
        try:
            return read_jsonl(path, fields, allow_empty=False, check=check_record)
        except (ValueError, FileNotFoundError) as e:
            self.add(f"{setting}{self.set_at(setting)}: {e}")
            return []

    def message(self, what):
        lines = "\n".join(f"  - {p}" for p in self.found)
        return f"{what} cannot start; {len(self.found)} problem(s), nothing was run or written:\n{lines}"

    def stop(self, what="the run"):
        """End the command (exit status 2, as for a bad --key=value) if anything
        was found: one error listing every problem, printed once under torchrun."""
        if self.found:
            D.stop(f"error: {self.message(what)}", 2)


# -----------------------------------------------------------------------------
# Records the loop reads (data/__init__.py has the formats)

def sft_record(rec):
    """An SFT / IFT record: prompt and response, or a conversation (train_sft.tokenize)."""
    if "messages" in rec:
        problem = conversation_problem(rec["messages"])
        if problem:
            return problem
        if not any(m["role"] == "assistant" for m in rec["messages"]):
            return "a conversation without an assistant message has nothing to learn"
        return None
    if not (isinstance(rec.get("prompt"), str) and isinstance(rec.get("response"), str)):
        text = "; a plain document, {\"text\"}, is template='text'" if isinstance(rec.get("text"), str) else ""
        return f"needs string fields prompt and response, or a messages list (this record has {fields_of(rec)}{text})"
    return blank(rec, ("prompt", "response"))


def blank(rec, fields):
    """What is wrong where a text field holds no text (nothing to learn or to ask), or None."""
    empty = [k for k in fields if not rec[k].strip()]
    return f"empty {' and '.join(empty)}" if empty else None


def seed_ift_record(rec):
    """The loop's IFT seed: prompt and response, not a conversation (its
    prompts are the prompt writer's few-shot examples)."""
    if not (isinstance(rec.get("prompt"), str) and isinstance(rec.get("response"), str)):
        return (f"needs string fields prompt and response (this record has {fields_of(rec)}; the loop's seed "
                f"prompts are the prompt writer's examples, and a messages list is for train_sft.py on its own)")
    return blank(rec, ("prompt", "response"))


def dpo_pair(rec):
    """A DPO pair: a prompt, a chosen answer (an empty one would teach the
    model to say nothing; an empty rejected one is a fair lesson), and
    chosen and rejected differ (the same text on both sides has no
    preference, and its gradient is zero: it only dilutes the batch)."""
    problem = blank(rec, ("prompt", "chosen"))
    if problem:
        return problem
    if rec["chosen"].strip() == rec["rejected"].strip():  # (the chat templates strip them: the same tokens)
        return "chosen and rejected are the same text: a pair with no preference"
    return None


def eft_group(rec):
    """An EFT group: a prompt, 2+ responses and one human rank each."""
    responses, ranks = rec.get("responses"), rec.get("ranks")
    if not isinstance(rec.get("prompt"), str):
        return "missing or non-string field: prompt"
    if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(x, str) for x in responses):
        return "'responses' must be a list of 2 or more strings"
    if not all(x.strip() for x in responses):
        return "an empty response: a group ranks 2 or more texts"
    if not J.human_ranks(ranks, len(responses)):
        return "'ranks' must be a list of integers >= 0, one per response (0 = best)"
    return None


def eft_train_records():
    """A check for the records of one eft_train.jsonl: EFT groups (real data)
    or ready SFT targets, judgments ending in their score (toy), one kind per
    file (the loop reads the file as the kind of its first record)."""
    kinds = []

    def check(rec):
        kind = "groups" if "responses" in rec or "ranks" in rec else "judgments"
        kinds.append(kind)
        if kind != kinds[0]:
            return (f"a file of EFT {kinds[0]} (its first record) cannot hold {kind} too: "
                    "prompt + responses + ranks are groups, prompt + response a judgment to learn")
        if kind == "groups":
            return eft_group(rec)
        if not (isinstance(rec.get("prompt"), str) and isinstance(rec.get("response"), str)):
            return "needs either prompt + response (a judgment to learn) or prompt + responses + ranks (a group)"
        if J.parse_score(rec["response"]) is None:
            return "a judgment to learn ends with its score, 'Score: N' with N in 0..5"
        return None
    return check


# -----------------------------------------------------------------------------

def check_checkpoint(p, setting, folder, chat_template="", chats=True):
    """A checkpoint folder to load: config, weights and tokenizer (tokenizer.model
    or tokenizer.json) present and agreeing, and (where it will write chats) a
    chat template to write them in: its own, or the chat_template setting,
    which its vocabulary must be able to write. Returns its ModelArgs and
    Tokenizer (with that template), (args, None) where only the template is
    refused, or (None, None)."""
    try:
        args = read_config(folder)
        with torch.device("meta"):  # the parameters' names and shapes, no memory
            params = dict(Transformer(args).named_parameters())
        if os.path.exists(os.path.join(folder, "config.json")):
            check_hf_tensors(folder, params, args)  # the headers: a truncated file, a tensor missing or misshapen
        else:
            check_meta_tensors(folder, params)  # the same, from the consolidated files' metadata
        if not any(os.path.exists(os.path.join(folder, f)) for f in ("tokenizer.model", "tokenizer.json")):
            raise FileNotFoundError(f"{folder}: no tokenizer.model or tokenizer.json")
        tok = check_tokenizer(folder, args, folder)
        if tok.template_problem and chats and not chat_template:
            raise ValueError(tok.template_problem)
    except (ValueError, FileNotFoundError, OSError) as e:
        p.add(f"{setting}{p.set_at(setting)}: {e}")
        return None, None
    if chats and chat_template in TEMPLATES:  # (p.compute names an unknown one)
        try:  # the template given, which its vocabulary may not write (the tokens it needs are not in it)
            tok = Tokenizer(folder, chat_template)
        except ValueError as e:
            p.add(f"chat_template = {chat_template!r}: {e}")
            return args, None
    return args, tok


def judge_room(p, c, args, tok):
    """Where the loop's model judges to learn (EFT targets, the iterations), the
    judge prompt's fixed text (and the meta-judge's) and max_judge_tokens must
    fit init_from's context, or every judgment is skipped as too long, after the
    SFT baseline trained (an evaluation alone only reports no coverage)."""
    if (c.iterations == 0 and c.eft_judgments) or tok is None:  # (None: its template is refused already)
        return
    judges = [("max_judge_tokens", "judge", J.judge_prompt_ids(tok, "", ""))]
    if c.meta_judge:
        judges.append(("max_meta_tokens", "meta-judge", chat_prompt_ids(tok, J.meta_judge_prompt("", "", "", ""))))
    for s, who, ids in judges:
        p.require(len(ids) + getattr(c, s) < args.max_seq_len, s, f"with the {who} prompt's own {len(ids)} "
                  f"tokens, leaves no room for a prompt and a response in init_from's context "
                  f"(max_seq_len {args.max_seq_len})")


# The loop's settings that name input files or folders, with the values they take that are not paths:
# the toy seed data, a toy base model pretrained here (init_from), one of this run's models as the
# prompt writer, or none. selfreward.py's run folder counts an input by its files' contents, not by how
# its path is written (run_folder.Run), and nothing the run reads may lie inside the folder it writes.
INPUT_SETTINGS = {"seed_data": ("toy",), "init_from": ("scratch",), "prompt_writer": ("M0", "M1", "current"),
                  "eval_prompts": ("",), "mt_bench": ("",), "eft_judgments": ("",)}


def check_loop(c, world):
    """Every problem with the loop's settings `c` and its input files, for a run
    on `world` ranks, before anything is run or written (Problems.stop)."""
    p = Problems(c)
    if not p.no_none():
        return p
    # the run folder: out_root/run_name, a folder of its own
    inside = os.path.relpath(os.path.normpath(os.path.join(c.out_root, c.run_name)), os.path.normpath(c.out_root))
    p.require(c.run_name.strip() and not os.path.isabs(c.run_name) and inside != os.curdir and
              inside != os.pardir and not inside.startswith(os.pardir + os.sep), "run_name",
              "must name a folder inside out_root (the run's files would mix with other runs')")
    run = os.path.join(c.out_root, c.run_name)
    if p.writable_folder("out_root", c.out_root):  # (an existing run folder is a run to resume)
        p.writable_folder("run_name", run)
    # a folder that holds something else by the names the loop writes is not taken over (it remakes seed/, M0/, ...)
    if os.path.isdir(run) and not os.path.isfile(os.path.join(run, "settings.json")):
        taken = sorted(n for n in os.listdir(run) if re.fullmatch(r"seed|SFT|M\d+|iter\d+|train|eval|done|report\.md"
                                                                  r"|metrics\.jsonl|tokenizer\.model", n))
        if taken:
            p.add(f"run_name: {run} is not a run folder (no settings.json) and holds {', '.join(taken)}, which "
                  f"the loop would replace; give another run_name or out_root")
    # nothing the run reads may lie inside the folder it writes (stage seed_data replaces seed/ whole)
    for setting, keywords in INPUT_SETTINGS.items():
        value = getattr(c, setting)
        if value not in ("", *keywords) and within(value, run):
            p.add(f"{setting}: {value} is inside the run folder {run}, which this run writes: copy it out, "
                  f"or give another run_name")
    # the loop's settings: its defaults, and those only the toy world reads. (Imported here, as selfreward
    # imports this module; under `python selfreward.py` that reads the file again as the module
    # `selfreward`: the same definitions, and it runs nothing.)
    from selfreward import DEFAULTS, TOY_ONLY
    # which world the run is in: the toy one, or a folder of real seed data. A seed_data that is neither
    # (a typo, most often) is one problem; the checks that ask which world this is (a grader, the toy
    # world's own settings, init_from='scratch') would each add one that follows from it, so they wait
    toy_world = c.seed_data == "toy"
    real_world = not toy_world and os.path.isdir(c.seed_data) and any(
        os.path.exists(os.path.join(c.seed_data, f)) for f in SEED_FILES)
    # ranges
    for s in ("n_eft_train", "n_eft_eval"):
        p.at_least(s, 2)  # a toy EFT set is made of groups of 2 or more responses
    for s in ("n_ift", "n_test", "sft_batch_size", "micro_batch_size", "n_prompts",
              "max_prompt_tokens", "max_response_tokens", "n_judge", "max_judge_tokens", "max_meta_tokens",
              "dpo_batch_size",
              "shard_size", "save_interval", "pretrain_epochs", "tp"):
        p.at_least(s, 1)
    p.at_least("gen_batch_size", 0)  # 0: the largest the generation memory plan fits the GPU
    p.require(c.temperature != 0 or c.iterations == 0, "temperature", "must be > 0 with iterations: at 0 a "
              "prompt's candidates are all the same answer, and an iteration makes no preference pairs (paper: 0.7)")
    for s in ("pretrain_lr", "sft_lr", "dpo_lr", "sft_epochs", "dpo_epochs", "dpo_beta"):
        p.positive(s)
    for s in ("pretrain_docs", "pretrain_qa_docs", "pretrain_check_drill", "n_meta_seed", "eft_own_answers",
              "iterations", "min_prompt_words", "sft_min_lr", "dpo_min_lr", "rpo_alpha", "temperature",
              "prompt_temperature"):
        p.at_least(s, 0)
    p.require(c.sft_min_lr <= c.sft_lr, "sft_min_lr", f"must not exceed sft_lr = {c.sft_lr}")
    p.require(c.dpo_min_lr <= c.dpo_lr, "dpo_min_lr", f"must not exceed dpo_lr = {c.dpo_lr}")
    for s in ("top_p", "prompt_top_p", "rouge_threshold"):
        p.fraction(s)
    p.fraction("ift_chatty", low_open=False)
    p.fraction("ift_declines", low_open=False, high_open=True)
    p.fraction("pretrain_working", low_open=False)
    p.fraction("pretrain_checking", low_open=False)
    p.fraction("dropout", low_open=False, high_open=True)
    p.at_least("n_candidates", 2)  # a preference pair needs two responses
    p.at_least("n_shots", 2)  # two of the shots are prompts generated earlier
    p.require(not c.meta_judge or c.n_judge >= 2, "n_judge", "must be >= 2 when meta_judge is on (the meta-judge "
              "compares two judgments of one response)")
    try:  # (the toy world's own check, of the settings that need invent or cannot go with it)
        toy.check_kinds(c.toy_kinds.split(","), vars(c))
        world_size = toy.n_tasks(c.toy_kinds.split(","))  # (None: more than any set size needs)
        if toy_world and world_size is not None:  # (a validation set is drawn at an iteration's DPO stage)
            n_valid = c.n_valid if c.dpo_pick_every and c.iterations else 0
            needed = toy.tasks_needed(c.seed, c.n_ift, c.n_eft_train, c.n_eft_eval, c.n_test, n_valid)
            p.require(needed <= world_size, "toy_kinds", f"holds {world_size:,} different tasks, and the seed sets "
                      f"need {needed:,} (n_ift, the EFT train and eval groups, n_test{', n_valid' * bool(n_valid)}): "
                      f"give smaller sizes or more kinds")
    except ValueError as e:
        p.add(f"{p.shown('toy_kinds')}: {e}")
    try:
        toy.some_of(c.pretrain_drill_layouts.split(","), toy.DRILL_LAYOUTS)
        p.require(c.pretrain_drill_layouts == "quiz" or c.pretrain_check_drill > 0, "pretrain_drill_layouts",
                  "lays out the drill's items, and pretrain_check_drill = 0 draws none")
    except ValueError as e:
        p.add(f"{p.shown('pretrain_drill_layouts')}: {e}")
    p.require(c.max_prompt_words >= max(c.min_prompt_words, 1), "max_prompt_words",
              f"must be >= min_prompt_words = {c.min_prompt_words}" if c.min_prompt_words >= 1 else
              "must be >= 1 (a prompt of no words is always dropped: the writer would keep nothing)")
    p.require(c.pretrain_docs + c.pretrain_qa_docs > 0 or c.init_from != "scratch", "pretrain_docs",
              "and pretrain_qa_docs cannot both be 0 when init_from='scratch' (M0 has nothing to learn from)")
    p.compute()
    # batches over ranks (tensor-parallel groups: with the models, below)
    for s in ("sft_batch_size", "dpo_batch_size"):
        p.require(getattr(c, s) % world == 0, s, f"must divide by the number of ranks, {world}")

    # M0 and the other models given: generation must fit in their context, tensor parallelism their heads
    models = {}  # setting -> the model's ModelArgs
    if c.init_from == "scratch":
        p.require(not real_world, "init_from", "'scratch' pretrains a toy base model; with real seed "
                  "data, give init_from a pretrained checkpoint folder")
        # (the toy tokenizer it trains is SentencePiece's, with no special tokens but BOS and EOS)
        p.require(c.chat_template not in TEMPLATES or c.chat_template == "llama2", "chat_template",  # ('' or Llama 2's)
                  "the toy tokenizer that init_from='scratch' "
                  "trains writes Llama 2's chat format only (the others need special tokens it lacks); leave it ''")
        if p.require(c.model in PRESETS, "model", f"no such preset; presets: {', '.join(PRESETS)}"):
            models["init_from"] = PRESETS[c.model]
        p.at_least("vocab_size", 300)  # the tokenizer's 256 byte pieces count towards it
    for setting in ("init_from", "prompt_writer"):
        value, keywords = getattr(c, setting), INPUT_SETTINGS[setting]
        meant = [k for k in keywords if k.lower() == value.lower() and k != value]
        if meant and not os.path.exists(value):  # --prompt_writer=m0: a keyword, spelled otherwise
            p.add(f"{setting} = {value!r}: no such checkpoint folder; did you mean {meant[0]!r}?")
        elif value not in keywords:
            # (the prompt writer continues a plain-text listing: it needs no chat template)
            args, tok = check_checkpoint(p, setting, value, c.chat_template, chats=setting == "init_from")
            if args:
                models[setting] = args
            if args and setting == "init_from":  # (tok: with the chat template the run writes in)
                judge_room(p, c, args, tok)
                model_beside_checkpoint(p, c, args, DEFAULTS["model"])
    for setting, args in models.items():  # (a prompt writer of its own only writes prompts)
        for s in ("max_prompt_tokens",) + (("max_response_tokens", "max_judge_tokens", "max_meta_tokens")
                                          if setting != "prompt_writer" else ()):
            p.require(getattr(c, s) < args.max_seq_len, s, f"must be below the context of {setting}'s model "
                      f"(max_seq_len {args.max_seq_len})")
    p.tensor_parallel(world, models=[(f"{setting}'s", args) for setting, args in models.items()])

    # input files
    eft_eval = []  # a real seed's EFT eval groups (the eft_judgments check reads them)
    if not toy_world:
        if not real_world:
            what = "is a file" if os.path.isfile(c.seed_data) else "holds none of the seed files" \
                if os.path.isdir(c.seed_data) else "is not a folder here"
            meant = "; did you mean 'toy'?" if difflib.get_close_matches(c.seed_data.lower(), ["toy"]) else ""
            p.add(f"seed_data: {c.seed_data} {what}{meant} ('toy', or a folder with {', '.join(SEED_FILES)}; "
                  "python -m data.prepare_oasst writes one from oasst1's messages)")
        else:
            ift = p.jsonl("seed_data", os.path.join(c.seed_data, "ift.jsonl"), seed_ift_record)
            eft_train = p.jsonl("seed_data", os.path.join(c.seed_data, "eft_train.jsonl"), eft_train_records())
            eft_eval = p.jsonl("seed_data", os.path.join(c.seed_data, "eft_eval.jsonl"), eft_group)
            # (a target record's prompt is the whole judge prompt: its question is its instruction, if it has one)
            leaked = {J.prompt_key(x.get("instruction") or x["prompt"]) for x in eft_train or []} & {
                J.prompt_key(g["prompt"]) for g in eft_eval or []}
            if leaked:
                p.add(f"{p.shown('seed_data')}: {len(leaked)} prompt(s) of eft_train.jsonl are EFT eval prompts "
                      f"(eft_eval.jsonl), e.g. {min(leaked)[:60]!r}: M1's judge would be evaluated on prompts it "
                      f"learned to judge; split the groups by prompt")
            if eft_train and c.eft_judgments:
                p.require("responses" in eft_train[0], "eft_judgments", f"supplies judgments for EFT groups of "
                          f"ranked responses, and {p.shown('seed_data')}'s eft_train.jsonl holds targets already "
                          f"(judge prompts with judgments): leave it out, or give the groups")
            if ift:
                p.require(len(ift) >= c.n_shots, "n_shots", f"needs {c.n_shots} seed prompts (the first requests "
                          f"have no generated ones yet), the seed has {len(ift)}")
    else:
        p.require(c.n_ift >= c.n_shots, "n_shots", f"needs {c.n_shots} seed prompts (the first requests have "
                  f"no generated ones yet), n_ift = {c.n_ift}")
    # the evaluation files, read by the readers the evaluation stage uses
    for setting, read in (("eval_prompts", E.read_eval_prompts), ("mt_bench", E.read_mt_bench),
                          ("eft_judgments", J.read_judge_file)):
        if getattr(c, setting):
            try:
                got = read(getattr(c, setting))
            except (ValueError, FileNotFoundError) as e:
                p.add(f"{setting}: {e}")
                continue
            if setting == "eft_judgments" and eft_eval and eft_train and "responses" in eft_train[0]:
                usable_judgments(p, c, *got, eft_train, eft_eval, ift or [])  # (a real seed's, read above)
    p.require(not (c.eft_judgments and toy_world), "eft_judgments", "supplies judgments for EFT "
              "groups (real seed data); the toy seed's EFT training records are already targets")
    if p.require(c.pair_by in ("judge", "grader", "right", "coin"), "pair_by", "must be 'judge' (the paper), "
                 "'grader' or 'right' (toy: controls with a perfect judge) or 'coin' (a control with no preference)"):
        p.require(c.pair_by in ("judge", "coin") or not real_world, "pair_by", "is for the toy world; "
                  "real seed data has no grader")
    if p.require(c.meta_pair_by in ("meta", "grader"), "meta_pair_by", "must be 'meta' (Wu et al.) or 'grader' "
                 "(toy: a control with a perfect meta-judge)"):
        p.require(c.meta_pair_by == "meta" or (c.meta_judge and not real_world), "meta_pair_by",
                  "'grader' is for the toy world with meta_judge=True; real seed data has no grader")
    p.require(not (c.eft_own_answers and real_world), "eft_own_answers", "is for the toy world, whose "
              "grader judges the answers; real seed data has no grader")
    if p.at_least("dpo_pick_every", 0) and c.dpo_pick_every:
        p.require(not real_world, "dpo_pick_every", "is for the toy world, whose grader stands in for the "
                  "paper's external judge in choosing a checkpoint; with real seed data each iteration keeps its last step")
        p.at_least("n_valid", 1)
    # settings read only where another setting has a value this run lacks (the toy world's, read only by
    # what it alone makes: its seed, its M0; others only where a feature is on): a changed one would
    # change nothing, which is a mistake to say, not to ignore. Each: (setting, whether what reads it runs, where)
    read_only_with = [(s, getattr(c, setting) == value, f"{setting}={value!r}")
                      for (setting, value), names in TOY_ONLY.items()
                      if toy_world or real_world or setting != "seed_data"  # (a bad seed_data is refused above)
                      for s in names]
    read_only_with += [("n_valid", c.dpo_pick_every != 0, "dpo_pick_every > 0"),  # (a negative one: refused above)
                       ("world_size", c.plan_only, "plan_only=True"), ("gpu_memory_gb", c.plan_only, "plan_only=True"),
                       ("max_meta_tokens", c.meta_judge, "meta_judge=True"),
                       ("n_meta_seed", c.meta_judge or not toy_world, "meta_judge=True")]  # (real data: TOY_ONLY's)
    for s, on, where in read_only_with:
        p.read_only_with(s, on, where, DEFAULTS[s])
    # (a setting that changes nothing would still redo every stage that lists it)
    # (with real seed data quote_first is refused above as toy-only: no advice to set judge_quotes too)
    p.require(c.judge_quotes or not c.quote_first or not toy_world, "quote_first",
              "orders judge_quotes' quotes: set judge_quotes=True too, or leave quote_first off")
    return p


def model_beside_checkpoint(p, c, args, default):
    """`model` names the preset for init_from='scratch' (and the shape
    --plan_only plans before init_from's folder is there); beside a
    checkpoint, whose config.json gives the shape (args), nothing reads it.
    Changed from its default to a shape other than the checkpoint's, it
    would change nothing: said, as for the toy world's settings. A config
    that names its checkpoint's own preset (config/llama2_70b_oasst.py) is
    fine, whatever its vocabulary (a preset takes its tokenizer's: the
    loop's toy M0 is toy-small with vocab_size pieces)."""
    shape = lambda a: (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.hidden_dim)
    p.require(c.model == default or (c.model in PRESETS and shape(PRESETS[c.model]) == shape(args)), "model",
              f"is read only with init_from='scratch' (and by --plan_only before init_from is there), and "
              f"init_from's checkpoint is another shape (dim {args.dim}, {args.n_layers} layers): it would change "
              f"nothing; leave it at {default!r}, or name the checkpoint's preset")


def within(path, folder):
    """Is path the folder or inside it (links resolved)?"""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def usable_judgments(p, c, groups, judged, eft_train, eft_eval, ift):
    """eft_judgments must give the EFT targets stage a target (the same
    judge.judge_file_targets): a judgment with a score ('Score: N') of a
    prompt that is not an EFT eval or IFT prompt, and, where the seed's human
    ranks cover the prompt, one that agrees with them."""
    targets, kept, _ = J.judge_file_targets(groups, judged, eft_train, eft_eval, ift)
    if not targets:
        scored = sum(s is not None for _, mine in kept for r in mine for s in r["scores"])
        p.add(f"eft_judgments: {c.eft_judgments}: no judgment of a prompt outside the EFT eval and IFT sets "
              + ("has a score (a judgment ends with 'Score: N', N in 0..5, the paper's format)" if not scored else
                 f"agrees with the human ranking of its prompt ({scored} with a score)")
              + ": it would give M1 no EFT data")


def check_plan(c, world):
    """plan_only's settings, and the shapes planned for: init_from's config, or
    the preset c.model (a memory plan reads shapes only: no data, no weights)."""
    p = Problems(c)
    if not p.no_none():
        return p
    p.at_least("world_size", 0)  # 0: this run's
    p.positive("gpu_memory_gb")
    # (plan_only runs nothing: a dry run beside it, which lists the stages a run would do, would go unsaid)
    p.require(not getattr(c, "dry_run", False), "dry_run", "beside plan_only=True: give one (plan_only prints "
              "the memory plans, dry_run the stages a run would do)")
    p.at_least("micro_batch_size", 1)
    try:
        models = [("the planned model's", planned_args(c.init_from, c.model)[0])]
    except (ValueError, OSError) as e:  # no such preset; a folder without a readable config
        p.add(str(e) if str(e).startswith("model =") else f"init_from: {e}")
        models = []
    if "tp" in vars(c):  # the loop's generation plan: tp GPUs a group, each holding whole heads
        if p.at_least("tp", 1):
            p.tensor_parallel(world, "the number of GPUs planned for", models)
    return p


class BadInput(ValueError):
    """A trainer's settings or inputs cannot work (check_training): its
    command line ends with exit status 2, as for a bad --key=value."""


def check_training(c, world, fields, script, check_record=None, defaults=None):
    """Every problem with a trainer's settings and inputs (`fields`: strings
    each data record needs; check_record(rec): what else is wrong with one,
    or None), before a model is built; raised as one BadInput
    (the command line prints it as one error, the loop names its stage).
    defaults: the trainer's, to refuse a plan_only setting changed in a run
    that trains (it would change nothing)."""
    p = Problems(c)
    if not p.no_none():
        raise BadInput(p.message(script))
    for s in ("world_size", "gpu_memory_gb"):  # (train_sft.py's; train_dpo.py plans nothing)
        if defaults and s in defaults:
            p.read_only_with(s, c.plan_only, "plan_only=True", defaults[s])
    for s in ("batch_size", "micro_batch_size", "eval_interval", "save_interval", "log_interval"):
        p.at_least(s, 1)
    for s in ("max_steps", "warmup_steps", "weight_decay", "grad_clip", "max_seq_len", "min_lr"):
        p.at_least(s, 0)
    p.positive("lr")
    p.positive("peak_flops")  # (MFU divides by it)
    p.at_least("crash_after_step", -1)  # -1: never (a test's simulated kill)
    p.require(c.min_lr <= c.lr, "min_lr", f"must not exceed lr = {c.lr}")
    p.require(c.max_steps > 0 or c.epochs > 0, "epochs", "must be > 0 when max_steps is 0")
    if c.max_steps > 0:  # (max_steps counts instead; a negative epochs is a mistake all the same)
        p.at_least("epochs", 0)
    for s in ("dropout", "eval_fraction", "beta1", "beta2"):
        p.fraction(s, low_open=False, high_open=True)
    if "beta" in vars(c):  # DPO's
        p.positive("beta")
        p.at_least("rpo_alpha", 0)
        p.at_least("keep_every", 0)
    if "template" in vars(c):  # SFT's
        p.require(c.template in ("chat", "text"), "template", "must be 'chat' or 'text'")
    p.writable_folder("out_dir", c.out_dir)
    p.require(not os.path.isfile(os.path.join(c.out_dir, "settings.json")), "out_dir",
              "is a selfreward.py run folder (it holds settings.json): this trainer would replace the run's "
              "metrics.jsonl; give the trainer a folder of its own")
    from training import FILE_SETTINGS  # (the trainer's input files; imported here: training imports this module)
    written = [os.path.join(c.out_dir, x) for x in ("model", "state", "checkpoints")]  # (what the trainer replaces)
    for s in FILE_SETTINGS:
        read = getattr(c, s)
        p.require(not read or read == "scratch" or not any(within(read, w) for w in written), s,
                  f"is inside {c.out_dir}'s model/, state/ or checkpoints/, which this run replaces: it would "
                  f"overwrite what it reads (and a rerun would start from its own result); give another out_dir")
    p.require(c.save_dtype in ("", "float32", "bfloat16", "float16"), "save_dtype",
              "must be '' (bfloat16 on a GPU, float32 on a CPU), 'float32', 'bfloat16' or 'float16'")
    p.compute()
    p.require(c.batch_size % (world * max(1, c.micro_batch_size)) == 0, "batch_size",
              f"must divide by the number of ranks ({world}) x micro_batch_size ({c.micro_batch_size})")
    args = None
    if c.init_from == "scratch":
        if p.require("model" in vars(c), "init_from", "'scratch' is for train_sft.py: DPO starts from a trained "
                     "model (and keeps it as the reference), a checkpoint folder"):
            p.require(c.model in PRESETS, "model", f"no such preset; presets: {', '.join(PRESETS)}")
        p.require(bool(c.tokenizer), "tokenizer", "init_from='scratch' needs a tokenizer (it sets vocab_size)")
        shape = (f"preset {getattr(c, 'model', None)!r}", PRESETS.get(getattr(c, "model", None)))
    else:
        # (train_sft's plain-text training writes no chats)
        args, _ = check_checkpoint(p, "init_from", c.init_from, c.chat_template, getattr(c, "template", "") != "text")
        shape = ("init_from's model", args)
        if args and "model" in vars(c):  # (SFT's; DPO has no model setting)
            from train_sft import DEFAULTS  # (imported here: train_sft imports this module)
            model_beside_checkpoint(p, c, args, DEFAULTS["model"])
    whose, model_args = shape  # examples longer than its context cannot be trained on: said, not cut in silence
    if model_args:
        p.require(c.max_seq_len <= model_args.max_seq_len, "max_seq_len", f"is beyond the context of {whose} "
                  f"({model_args.max_seq_len}); 0 takes the model's")
    if c.tokenizer and p.require(os.path.exists(c.tokenizer), "tokenizer", "no such file or folder"):
        try:  # it parses (and, over a checkpoint, fits its embedding: the check training.start makes)
            check_tokenizer(c.tokenizer, args, c.init_from) if args else Tokenizer(c.tokenizer)
        except (ValueError, FileNotFoundError) as e:
            p.add(f"{p.shown('tokenizer')}: {e}")
        else:
            if c.init_from == "scratch" and c.chat_template in TEMPLATES and getattr(c, "template", "") != "text":
                try:  # from scratch: the template the run writes chats in, which this vocabulary may lack
                    Tokenizer(c.tokenizer, c.chat_template)
                except ValueError as e:
                    p.add(f"{p.shown('chat_template')}: {e}")
    p.jsonl("data", c.data, check_record, fields)
    if c.eval_data:
        p.jsonl("eval_data", c.eval_data, check_record, fields)
    if p.found:
        raise BadInput(p.message(script))


if __name__ == "__main__":
    import configurator
    configurator.library(__doc__, "validate.py", "every script runs its checks before any work")
