"""
The paper's seed data from Open Assistant (oasst1), Section 3.1:
    IFT  English first-turn prompts, each with its human rank-0 reply
    EFT  English first-turn prompts with 2 or more human-ranked replies, as
         groups {"prompt", "responses", "ranks"}, disjoint from the IFT prompts
         (the paper says "first turn" of IFT only; first turns for EFT too is
         our reading, which gives its 541 eval replies: module docstring below)

Input: the oasst1 per-message export, one JSON object per message
(message_id, parent_id, text, role, lang, rank, deleted, review_result, ...),
train and/or validation split, any number of files.

Which messages are used:
- a prompt is a root message (no parent) from the prompter, in English, not
  deleted, with a passed review, human-written (not "synthetic") and in a tree
  "ready_for_export" (every oasst1 tree; oasst_all's others are not); prompts with the same text (case and
  spacing aside) are kept once, an eval prompt's text never in training
- a reply is a direct assistant child of such a prompt, usable by the same
  rules; it is ranked if it has a rank (0 = best)
- IFT takes the rank-0 reply only; if that one is unusable the prompt is not
  an IFT example (we never promote rank 1)
- EFT keeps the usable ranked replies, renumbered 0..k-1 in their human order
- later turns are not used; the rest is counted and printed as dropped

How prompts are split (each prompt goes to at most one of the three sets):
- EFT eval: the prompts of --eval_files if given, else a share
  (--eft_eval_frac) of the prompts. The paper does not say which prompts
  its eval set holds; the validation split fits its size: its 186 prompts
  with 2+ ranked replies hold 541 replies, the paper's EFT eval count (its
  v1: 531), at 2.91 replies a prompt (the paper: 2.85 on average). Note:
  the validation split's 188 root prompts are AlpacaEval's oasst prompts,
  so keeping them out of training keeps that benchmark clean.
- the rest go to IFT with probability --ift_frac, else to EFT train (a prompt
  that fits only one set goes there). The draw is a hash of the message id
  and the seed, so a prompt's set does not change when files are added
  (a prompt whose text another prompt already has aside). A message in an
  eval file is an eval message, whatever training file holds it too.
  The paper gives its sizes (3,200 IFT examples, 1,630 EFT training
  judgments) but not how it split the prompts: --ift_frac is ours, and it
  sets how many IFT examples there are. The train split is not at hand
  here; scaled by the validation split's share of English trees (188 of
  518; the train split has 9,846 trees), the default 0.6 gives about 2,100
  IFT examples (1,900-2,400 over that share's uncertainty) and about 1,400
  EFT train groups (4,100 replies before the agreement filter). The paper's
  two sizes cannot both come from first turns kept apart between the sets:
  --ift_frac=0.9 gives about 3,200 IFT examples but leaves about 335 groups
  (980 replies) for EFT, fewer than the 1,630 judgments the paper kept
  after its filter. Its EFT set may have used later turns too, which this
  reading leaves out (the judge prompt has no place for a conversation).

    python -m data.prepare_oasst train.jsonl validation.jsonl --eval_files=validation.jsonl --out=data/oasst
writes ift.jsonl, eft_train.jsonl, eft_eval.jsonl (EFT groups) into --out.
The EFT training targets are then written by the SFT baseline with
judge.make_eft_targets, as the paper did.
"""
import argparse
import hashlib
import math
import os
import sys
from collections import Counter, defaultdict

from data import read_jsonl, unwritable, write_jsonl

REQUIRED = ("message_id", "parent_id", "text", "role")


def read_messages(paths):
    """All messages of the input files as {message_id: message}; each message
    remembers its file in "_file". A malformed line is an error naming file and line."""
    def not_a_message(m):
        missing = [k for k in REQUIRED if k not in m]
        if missing:
            return f"not an oasst message, missing {', '.join(missing)}"
        wrong = [k for k in ("message_id", "text", "role") if not isinstance(m[k], str)]
        if not wrong and m["role"] not in ("prompter", "assistant"):
            return f"not an oasst message, role {m['role']!r} (oasst's are 'prompter' and 'assistant')"
        if m["parent_id"] is not None and not isinstance(m["parent_id"], str):
            wrong.append("parent_id")  # (null for a root)
        rank = m.get("rank")  # null, NaN (pandas' null) or a whole number
        number = isinstance(rank, (int, float)) and not isinstance(rank, bool)
        if not (rank is None or number and (math.isnan(rank) or math.isfinite(rank) and rank == int(rank))):
            wrong.append("rank")
        return f"not an oasst message, wrong type of {', '.join(wrong)}" if wrong else None

    messages = {}
    for path in paths:
        for m in read_jsonl(path, check=not_a_message):
            m["_file"] = os.path.abspath(path)
            messages.setdefault(m["message_id"], m)  # a message in two files counts once, as its first file's
    return messages


def _rank(m):
    """The human rank as an int, or None (exports written by pandas may hold 0.0 or NaN)."""
    r = m.get("rank")
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return None
    return int(r)


def _why_unusable(m, role):
    """Why a message cannot be used, or None if it can."""
    if m["role"] != role:
        return f"role {m['role']!r}, not {role!r}"
    if m.get("lang") != "en":
        return "not English"
    if m.get("deleted"):
        return "deleted"
    if m.get("review_result") is not True:
        return "review not passed"
    if m.get("synthetic"):  # (oasst1's human-written messages have it false; a model wrote these)
        return "synthetic (written by a model)"
    if m.get("tree_state") not in (None, "ready_for_export"):  # (oasst_all's unfinished or halted trees)
        return f"tree {m['tree_state']!r}, not ready for export"
    return None


def _draw(message_id, seed, salt):
    """A number in [0, 1) fixed by the message id and the seed."""
    digest = hashlib.sha256(f"{seed}:{salt}:{message_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def prepare(paths, eval_files=(), eft_eval_frac=0.1, ift_frac=0.6, seed=1337):
    """
    Returns (sets, kept, dropped): sets = {"ift": [...], "eft_train": [...], "eft_eval": [...]};
    kept and dropped count every input message once, dropped by reason.
    """
    paths = [os.path.abspath(p) for p in paths]
    eval_files = {os.path.abspath(p) for p in eval_files}
    # eval files first: a message also in a training file keeps its eval file (read_messages keeps the first copy)
    messages = read_messages(sorted(eval_files) + [p for p in paths if p not in eval_files])
    if not messages:
        raise ValueError(f"no messages in {', '.join(paths)}: the files are empty")
    kept, dropped = Counter(), Counter()
    children = defaultdict(list)
    for m in messages.values():
        parent = messages.get(m["parent_id"])
        if m["parent_id"] is None:
            continue
        if parent is None:
            dropped["message whose parent is absent (e.g. in another language)"] += 1
        elif parent["parent_id"] is not None:
            dropped["later-turn message (only first turns are used)"] += 1
        else:
            children[m["parent_id"]].append(m)

    def to_eval(root):  # the split's first question (module docstring)
        if eval_files:
            return root["_file"] in eval_files
        return _draw(root["message_id"], seed, "eval") < eft_eval_frac

    sets, seen_text, eval_text = {"ift": [], "eft_train": [], "eft_eval": []}, set(), set()
    roots = {m["message_id"]: to_eval(m) for m in messages.values() if m["parent_id"] is None}
    # eval prompts first: of two prompts with the same text the eval one is kept, so the
    # evaluation's questions (AlpacaEval's, for the validation split) never reach training
    for root_id in sorted(roots, key=lambda i: (not roots[i], i)):
        root, eval_root = messages[root_id], roots[root_id]
        replies, n_replies = [], len(children[root["message_id"]])
        why = _why_unusable(root, "prompter")
        text = " ".join(root["text"].split()).lower()
        if not why and (text in seen_text or not eval_root and text in eval_text):
            why = "same text as another prompt"
        if eval_root:  # an evaluation question, even one dropped, never reaches training
            eval_text.add(text)
        if why:
            dropped[f"prompt: {why}"] += 1
            dropped["first-turn reply: its prompt is dropped"] += n_replies
            continue
        for c in children[root["message_id"]]:
            why = _why_unusable(c, "assistant") or (_rank(c) is None and "unranked")
            if why:
                dropped[f"first-turn reply: {why}"] += 1
            else:
                replies.append(c)
        replies.sort(key=_rank)
        best = replies[0] if replies and _rank(replies[0]) == 0 else None
        ift = best and {"prompt": root["text"].strip(), "response": best["text"].strip(),
                        "prompt_id": root["message_id"], "response_id": best["message_id"]}
        eft = len(replies) >= 2 and {
            "prompt": root["text"].strip(), "responses": [c["text"].strip() for c in replies],
            "ranks": list(range(len(replies))),  # renumbered 0..k-1 in the human order
            "prompt_id": root["message_id"], "response_ids": [c["message_id"] for c in replies]}

        # the split (module docstring): eval first, then IFT or EFT train
        if eval_root and eft:
            name = "eft_eval"
        elif eval_root:
            name = None
            dropped["prompt: eval prompt with fewer than 2 usable ranked replies"] += 1
        elif ift and (not eft or _draw(root["message_id"], seed, "ift") < ift_frac):
            name = "ift"
        elif eft:
            name = "eft_train"
        else:
            name = None
            dropped["prompt: no usable rank-0 reply and fewer than 2 ranked replies"] += 1
        if name is None:  # (a training prompt's text stays free: a later copy with usable replies is kept)
            dropped["first-turn reply: its prompt is dropped"] += len(replies)
            continue
        seen_text.add(text)
        sets[name].append(ift if name == "ift" else eft)
        kept[f"{name} prompt"] += 1
        kept[f"{name} reply"] += 1 if name == "ift" else len(replies)
        if name == "ift" and len(replies) > 1:  # (a count of 0 would print as "dropped 0")
            dropped["first-turn reply: not the rank-0 reply of an IFT prompt"] += len(replies) - 1
    return sets, kept, dropped


def report(sets, kept, dropped):
    """What was kept and what was dropped, as printable lines."""
    lines = [f"read {sum(kept.values()) + sum(dropped.values())} messages",
             f"kept {len(sets['ift'])} IFT examples"]
    for name in ("eft_train", "eft_eval"):
        n = sum(len(g["responses"]) for g in sets[name])
        lines.append(f"kept {len(sets[name])} {name} groups with {n} ranked replies")
    lines += [f"dropped {n:5d}  {why}" for why, n in sorted(dropped.items())]
    return lines


def empty_set_warnings(sets, paths, eval_files):
    """A warning line for each set that came out empty: the loop cannot run on it,
    and an empty file written silently is found only when a stage fails."""
    every_file_is_eval = bool(eval_files) and {os.path.abspath(p) for p in paths} <= \
        {os.path.abspath(p) for p in eval_files}
    why = {"ift": "IFT", "eft_train": "EFT train", "eft_eval": "EFT eval"}
    lines = []
    for name, records in sets.items():
        if records:
            continue
        if every_file_is_eval and name != "eft_eval":
            hint = ("every input file is an --eval_files file, so all its prompts went to the EFT eval set; "
                    "add the train split, or leave --eval_files out to split these files")
        else:
            hint = "check the input files and the split settings (--eft_eval_frac, --ift_frac)"
        lines.append(f"warning: {name}.jsonl will be empty (no {why[name]} prompt): {hint}")
    return lines


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Write the IFT and EFT seed sets from oasst1 message files.",
                                allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.error = lambda message: p.exit(2, f"error: {message}\n")  # one line, not the usage block first (--help has it)
    p.add_argument("files", nargs="+", help="oasst1 per-message JSONL files (train, validation)")
    p.add_argument("--eval_files", nargs="*", default=[], help="files whose prompts form the EFT eval set")
    p.add_argument("--eft_eval_frac", type=float, default=0.1,
                   help="share of prompts for EFT eval, without --eval_files")
    p.add_argument("--ift_frac", type=float, default=0.6, help="share of the other prompts for IFT")
    p.add_argument("--seed", type=int, default=1337, help="the random split of prompts derives from it")
    p.add_argument("--out", default="data/oasst", help="output folder")
    args = p.parse_args()
    for name in ("eft_eval_frac", "ift_frac"):
        if not 0 <= getattr(args, name) <= 1:
            p.exit(2, f"error: --{name} = {getattr(args, name)}: a share, must be in [0, 1]\n")
    if not args.out.strip():
        p.exit(2, "error: --out: give a folder ('.' for this one)\n")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        p.exit(2, f"error: --out = {args.out}: a file, not a folder\n")
    if problem := unwritable(args.out):
        p.exit(2, f"error: --out = {args.out}: {problem}\n")
    try:
        sets, kept, dropped = prepare(args.files, args.eval_files, args.eft_eval_frac, args.ift_frac, args.seed)
    except (ValueError, OSError) as e:  # a missing or malformed file: one line naming it, nothing written
        p.exit(2, f"error: {e}\n")
    print("\n".join(report(sets, kept, dropped)))
    for line in empty_set_warnings(sets, args.files, args.eval_files):
        print(line, file=sys.stderr)
    for name, records in sets.items():
        print("wrote", write_jsonl(os.path.join(args.out, f"{name}.jsonl"), records))
