"""
Answers for external judges, written where and as their own tools read them,
so they can be judged as they are (the paper reports AlpacaEval 2.0, judged by
GPT-4 Turbo against GPT-4 Turbo's answers, and MT-Bench, judged by GPT-4, Section 3):

    AlpacaEval  prompts: its evaluation set as it ships, a JSON array, or JSON Lines;
                each {"instruction", "dataset"?, ...}
                answers: eval/alpaca_eval/<model_id>/model_outputs.json, a JSON array of
                {"instruction", "output", "generator", "dataset"?}
                    alpaca_eval --model_outputs=eval/alpaca_eval/<model_id>/model_outputs.json
    MT-Bench    questions: FastChat's question.jsonl, {"question_id", "category", "turns": [t1, t2]}
                answers: eval/mt_bench/model_answer/<model_id>.jsonl, one line per question
                {"question_id", "answer_id", "model_id", "choices": [{"index": 0, "turns": [a1, a2]}], "tstamp"}
                FastChat's llm_judge reads every *.jsonl in a model_answer/ folder and names the
                model after the file, so that folder holds answer files and nothing else:
                    mkdir -p FastChat/fastchat/llm_judge/data/mt_bench/model_answer   (a fresh clone has none)
                    cp eval/mt_bench/model_answer/*.jsonl FastChat/fastchat/llm_judge/data/mt_bench/model_answer/
                    cd FastChat/fastchat/llm_judge && python gen_judgment.py --model-list <model_id> ...
                The file is ASCII (other characters escaped as \\uXXXX, as FastChat writes its own):
                FastChat opens it in the system's default encoding.

AlpacaEval answers are greedy. MT-Bench answers are decoded as FastChat's
gen_model_answer decodes them, so that their grades compare with those its
leaderboard lists: each category at its own temperature (greedy for math,
coding, reasoning and extraction), and turn 2 asked in the same conversation,
after the model's own first answer. A prompt that leaves no room in the
model's context is answered "ERROR" (NO_ROOM, FastChat's mark for a turn it
could not answer) and counted, never an error that stops the evaluation: every
question stays in both files, so each tool scores every question (AlpacaEval
joins two models' outputs on their instructions, and a missing one would
quietly shrink its win rate to the questions answered).
"""
import json
import os
import time

from data import read_jsonl, write_text
from sample import fits, generate
from tokenizer import chat_prompt_ids


def read_eval_prompts(path):
    """AlpacaEval-style prompts: a JSON array (AlpacaEval's own file) or JSON Lines,
    each an object with a string "instruction" that is not empty (it would be
    answered all the same). Errors name the file and record."""
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder: give the eval prompts file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"eval prompts file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4096).decode("utf-8-sig", errors="replace").lstrip()
    if not head.startswith("["):
        return read_jsonl(path, fields=("instruction",), allow_empty=False, check=empty_instruction)  # (line, byte)
    with open(path, encoding="utf-8-sig") as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at byte {e.start}; "
                             f"save the file as UTF-8)") from None
    for i, x in enumerate(records):
        if not isinstance(x, dict) or not isinstance(x.get("instruction"), str):
            raise ValueError(f"{path}: element {i} of the array is not an object with a string 'instruction'")
        if why := empty_instruction(x):
            raise ValueError(f"{path}: element {i} of the array: {why}")
    if not records:
        raise ValueError(f"{path}: no records (the array is empty)")
    return records


def empty_instruction(x):
    """What is wrong with an AlpacaEval record whose instruction is blank, or None."""
    return None if x["instruction"].strip() else "empty instruction: nothing to answer"


def mt_bench_question(q):
    """What is wrong with a line of FastChat's question.jsonl, or None."""
    turns = q.get("turns")
    if "question_id" not in q or not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        return "not an MT-Bench question (needs question_id and turns: a list of strings)"
    if not isinstance(q["question_id"], (int, str)) or isinstance(q["question_id"], bool):
        return "question_id must be a number or a string"
    empty = [k + 1 for k, t in enumerate(turns) if not t.strip()]
    if empty:
        return f"turn {empty[0]} of {len(turns)} is empty: nothing to answer"
    if not isinstance(q.get("category", ""), str):
        return "category must be a string (it sets the answers' temperature, as in FastChat)"
    return None


def read_mt_bench(path):
    """MT-Bench questions (FastChat's question.jsonl): a question_id and a list
    of turns, each id once (FastChat's judge matches answers to questions by it)."""
    seen = set()

    def check(q):
        why = mt_bench_question(q)
        if why is None:
            if q["question_id"] in seen:
                return f"question_id {q['question_id']!r} again: each question needs an id of its own"
            seen.add(q["question_id"])
        return why
    return read_jsonl(path, allow_empty=False, check=check)


def question(record):
    """A benchmark record's question: an AlpacaEval instruction, or an
    MT-Bench question's first turn (the one a training prompt could be)."""
    return record["instruction"] if "instruction" in record else record["turns"][0]


def alpaca_eval_path(eval_dir, model_id):
    return os.path.join(eval_dir, "alpaca_eval", model_id, "model_outputs.json")


def mt_bench_path(eval_dir, model_id):
    return os.path.join(eval_dir, "mt_bench", "model_answer", f"{model_id}.jsonl")


def _answer(model, tokenizer, conversations, max_new_tokens, sample_kw, temperature=0.0, seed=None):
    """Answers to chat conversations (greedy at temperature 0); None for one with no room in the context."""
    ids = [chat_prompt_ids(tokenizer, x) for x in conversations]
    room = [i for i, x in enumerate(ids) if fits(model, x)]
    outs = generate(model, [ids[i] for i in room], max_new_tokens, temperature=temperature, seed=seed,
                    **sample_kw) if room else []
    answers = [None] * len(ids)
    for i, o in zip(room, outs):
        answers[i] = tokenizer.decode(o).strip()
    return answers


# a prompt or turn with no room in the context: FastChat's own mark for a turn it
# could not answer (gen_model_answer writes it), which the judges then score.
# FastChat refuses an answer file that lacks any question, and AlpacaEval scores
# only the instructions both models' files hold, so none is left out.
NO_ROOM = "ERROR"


def answer_alpaca_eval(model, tokenizer, prompts, model_id, max_new_tokens, **sample_kw):
    """AlpacaEval model outputs for the prompts, one each: NO_ROOM for a prompt
    with no room in the context (too long). sample_kw go to sample.generate
    (eos_id, batch_size, progress)."""
    answers = _answer(model, tokenizer, [x["instruction"] for x in prompts], max_new_tokens, sample_kw)
    return [{"instruction": x["instruction"], "output": NO_ROOM if a is None else a, "generator": model_id,
             **({"dataset": x["dataset"]} if "dataset" in x else {})} for x, a in zip(prompts, answers)]


# The temperature FastChat's gen_model_answer samples each MT-Bench category at
# (fastchat.llm_judge.common.temperature_config; 0.7 for a category it does
# not list; below 1e-4 it decodes greedily, as generate() does at 0). It sets
# no top-p (transformers' generate then takes the checkpoint's
# generation_config.json's, 0.9 for Llama 2 chat); here none either (1.0).
MT_BENCH_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                        "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}


def mt_bench_temperature(mt_bench_question):
    return MT_BENCH_TEMPERATURE.get(mt_bench_question.get("category"), 0.7)


def answer_mt_bench(model, tokenizer, questions, model_id, max_new_tokens, seed=0, **sample_kw):
    """MT-Bench answers, every turn of every question, each turn asked after the
    model's own earlier answers, each category at FastChat's temperature (the
    same seed: the same answers). A turn with no room in the context, and
    every turn after it, is NO_ROOM (unanswered counts those questions)."""
    conversations = {i: [] for i in range(len(questions))}  # question index -> messages so far
    answered = {i: [] for i in range(len(questions))}  # question index -> the model's answers
    for k in range(max(len(q["turns"]) for q in questions)):
        asked = [i for i in conversations if k < len(questions[i]["turns"])]
        for i in asked:
            conversations[i].append({"role": "user", "content": questions[i]["turns"][k]})
        answers, temperature = {}, {i: mt_bench_temperature(questions[i]) for i in asked}
        for t in sorted(set(temperature.values())):  # one call per temperature
            group = [i for i in asked if temperature[i] == t]
            said = _answer(model, tokenizer, [conversations[i] for i in group], max_new_tokens, sample_kw,
                           temperature=t, seed=seed + k)
            answers.update(zip(group, said))
        for i in asked:
            a = answers[i]
            if a is None:
                del conversations[i]  # not asked again: its turns so far stay in `answered`
            else:
                conversations[i].append({"role": "assistant", "content": a})
                answered[i].append(a)
    now = time.time()
    records = [{"question_id": q["question_id"], "answer_id": f"{model_id}-{q['question_id']}", "model_id": model_id,
                "choices": [{"index": 0, "turns": answered[i] + [NO_ROOM] * (len(q["turns"]) - len(answered[i]))}],
                "tstamp": now} for i, q in enumerate(questions)]
    return records


def unanswered(mt_bench_records):
    """How many MT-Bench questions have a turn with no room in the context (NO_ROOM)."""
    return sum(NO_ROOM in x["choices"][0]["turns"] for x in mt_bench_records)


def alpaca_unanswered(alpaca_records):
    """How many AlpacaEval prompts had no room in the context (NO_ROOM)."""
    return sum(x["output"] == NO_ROOM for x in alpaca_records)


def write_alpaca_eval(path, records):
    return write_text(path, json.dumps(records, indent=2, ensure_ascii=False))


def read_alpaca_eval(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_mt_bench(path, records):
    # ASCII, as FastChat's own answer files: its load_model_answers opens them in the system's default
    # encoding, which is not UTF-8 everywhere (a C locale, Windows)
    return write_text(path, "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records))


def mean_length(texts):
    """Mean length in characters, or None. (The loop passes the answers a
    model gave: AlpacaEval's own avg_length also counts each "ERROR" written
    for a prompt too long to answer, and rounds down.)"""
    texts = list(texts)
    return sum(map(len, texts)) / len(texts) if texts else None


if __name__ == "__main__":
    import configurator
    configurator.library(__doc__, "evaluation.py",
                         "python selfreward.py writes the answers (--eval_prompts, --mt_bench)")
