"""evaluation.py: answers for external judges, read back by the judges' own loaders
(FastChat's llm_judge for MT-Bench, alpaca_eval for AlpacaEval; test-only installs,
skipped with the reason where absent), both MT-Bench turns, long prompts skipped."""
import json
import os
import types

import pytest
import torch

import evaluation as E
import model as M
from conftest import shared_file
from data import write_jsonl
from tokenizer import Tokenizer, chat_prompt_ids


@pytest.fixture(scope="module")
def tok(toy_tokenizer_path):
    return Tokenizer(toy_tokenizer_path)


def tiny(tok, max_seq_len=512):
    torch.manual_seed(0)
    return M.Transformer(M.preset("toy-tiny", vocab_size=tok.vocab_size, max_seq_len=max_seq_len)).eval()


@pytest.fixture(scope="module")
def mt_bench_run(tmp_path_factory, toy_tokenizer_path):
    """The 80 real MT-Bench questions answered by a small random model, every
    sampler call recorded, written where FastChat reads answers."""
    torch.set_num_threads(1)
    tok = Tokenizer(toy_tokenizer_path)
    questions = E.read_mt_bench(shared_file("mt_bench", "question.jsonl"))
    calls = []

    def recording_generate(model, prompts, max_new_tokens, **kw):
        outs = real_generate(model, prompts, max_new_tokens, **kw)
        calls.append((prompts, outs, kw))
        return outs
    real_generate, E.generate = E.generate, recording_generate
    try:
        recs = E.answer_mt_bench(tiny(tok, 4096), tok, questions, "run-M2", 6, eos_id=tok.eos_id, batch_size=64,
                                 progress=False)
    finally:
        E.generate = real_generate
    eval_dir = tmp_path_factory.mktemp("eval")
    path = E.mt_bench_path(str(eval_dir), "run-M2")
    E.write_mt_bench(path, recs)
    return questions, recs, E.unanswered(recs), calls, path, tok


def test_mt_bench_answers_both_turns_turn_two_after_its_own_first_answer(mt_bench_run):
    questions, recs, skipped, calls, path, tok = mt_bench_run
    assert skipped == 0 and len(recs) == 80 and path.endswith(os.path.join("mt_bench", "model_answer", "run-M2.jsonl"))
    assert [r["question_id"] for r in recs] == [q["question_id"] for q in questions]
    assert all(r["model_id"] == "run-M2" and len(r["choices"]) == 1 and r["choices"][0]["index"] == 0
               and len(r["choices"][0]["turns"]) == 2 and isinstance(r["tstamp"], float) for r in recs)
    assert len({r["answer_id"] for r in recs}) == 80
    # a sampler call per turn and temperature: each question's category at FastChat's own temperature
    common = pytest.importorskip("fastchat.llm_judge.common", reason="FastChat (fschat) not installed")
    assert E.MT_BENCH_TEMPERATURE == common.temperature_config
    asked = {}  # (turn, question index) -> (prompt, answer ids)
    assert len(calls) == 6  # MT-Bench's categories take 3 temperatures: 0 (greedy), 0.1, 0.7
    for turn in (0, 1):
        for (prompts, outs, kw), t in zip(calls[3 * turn:3 * turn + 3], (0.0, 0.1, 0.7)):
            assert kw["temperature"] == t and kw["seed"] is not None and "top_p" not in kw
            group = [i for i, q in enumerate(questions) if common.temperature_config.get(q["category"], 0.7) == t]
            asked.update({(turn, i): (p, o) for i, p, o in zip(group, prompts, outs, strict=True)})
    assert len(asked) == 160
    for i, (q, r) in enumerate(zip(questions, recs)):
        first, second = r["choices"][0]["turns"]
        (p1, o1), (p2, o2) = asked[0, i], asked[1, i]
        assert p1 == chat_prompt_ids(tok, q["turns"][0]) and first == tok.decode(o1).strip()
        # turn 2 is the same conversation continued, after the model's own first answer
        assert p2 == chat_prompt_ids(tok, [{"role": "user", "content": q["turns"][0]},
                                           {"role": "assistant", "content": first},
                                           {"role": "user", "content": q["turns"][1]}])
        assert second == tok.decode(o2).strip()


def test_llama2_multi_turn_is_metas_layout(llama_tokenizer_path):
    """Meta's chat_completion: each earlier exchange <s>[INST] u [/INST] a </s>, then <s>[INST] u [/INST]."""
    tok = Tokenizer(llama_tokenizer_path)
    conv = [{"role": "user", "content": " Hi there. "}, {"role": "assistant", "content": "Hello! \n"},
            {"role": "user", "content": "Rewrite it."}]
    assert chat_prompt_ids(tok, conv) == (
        [1] + tok.sp.encode("[INST] Hi there. [/INST] Hello! ") + [2] + [1] + tok.sp.encode("[INST] Rewrite it. [/INST]"))
    assert chat_prompt_ids(tok, conv[:1]) == chat_prompt_ids(tok, "Hi there.")
    with pytest.raises(ValueError, match="alternates user and assistant"):
        chat_prompt_ids(tok, conv[:2])


def test_fastchat_reads_the_answers_and_judges_turn_two(mt_bench_run, monkeypatch):
    common = pytest.importorskip("fastchat.llm_judge.common", reason="FastChat (fschat) not installed")
    gen_judgment = pytest.importorskip("fastchat.llm_judge.gen_judgment")
    questions, recs, _, _, path, _ = mt_bench_run
    folder = os.path.dirname(path)
    assert os.listdir(folder) == ["run-M2.jsonl"]  # nothing else sits where FastChat reads every *.jsonl
    qs = common.load_questions(shared_file("mt_bench", "question.jsonl"), None, None)
    answers = common.load_model_answers(folder)
    assert common.get_model_list(folder) == ["run-M2"] and list(answers) == ["run-M2"]  # the name from the file
    common.check_data(qs, answers, None, ["run-M2"], {})  # every question answered
    # a multi-turn judgment, as gen_judgment.py runs it, with the judge model's API stubbed out
    template = {"name": "single-v1-multi-turn", "type": "single", "system_prompt": "Judge the second answer.",
                "prompt_template": "Q1 {question_1}\nA1 {answer_1}\nQ2 {question_2}\nA2 {answer_2}",
                "output_format": "[[rating]]"}
    judge = common.Judge("gpt-4", template, multi_turn=True)
    seen = []
    monkeypatch.setattr(common, "chat_completion_openai",
                        lambda model, conv, temperature, max_tokens: seen.append(conv.messages) or "Rating: [[3]]")
    matches = gen_judgment.make_match_single(qs, ["run-M2"], answers, judge, multi_turn=True)
    assert len(matches) == 80
    result = common.play_a_match_single(matches[0], None)
    assert result["turn"] == 2 and result["score"] == 3
    assert f"A2 {recs[0]['choices'][0]['turns'][1]}" in result["user_prompt"]
    assert f"A1 {recs[0]['choices'][0]['turns'][0]}" in result["user_prompt"]


def test_mt_bench_answers_are_ascii_and_named_as_one_file(tmp_path):
    """FastChat reads answer files in the system's default encoding (ASCII
    under a C locale): ours are ASCII, other characters escaped, and read
    back the same. A run_name with a folder in it gives one file name."""
    import configurator
    import selfreward as S
    recs = [{"question_id": 81, "answer_id": "a", "model_id": "run-M1",
             "choices": [{"index": 0, "turns": ["caf\u00e9 \u672c", "ok"]}], "tstamp": 1.0}]
    path = E.mt_bench_path(str(tmp_path), "run-M1")
    E.write_mt_bench(path, recs)
    with open(path, "rb") as f:
        f.read().decode("ascii")  # (raises where a character is not ASCII)
    assert E.read_jsonl(path) == recs
    name = lambda run_name: S.eval_model_id(configurator.settings(S.DEFAULTS, {"run_name": run_name}), "M1")
    assert (name("toy"), name("exp/1"), name("./exp/")) == ("toy-M1", "exp-1-M1", "exp-M1")


def test_alpaca_eval_prompts_from_json_or_jsonl_and_outputs_its_loader_reads(tmp_path, tok):
    prompts = [{"instruction": "Name a color.", "dataset": "helpful_base", "generator": "gpt4", "output": "x"},
               {"instruction": "Say hi."}]
    (tmp_path / "set.json").write_text(json.dumps(prompts, indent=1))  # AlpacaEval ships a JSON array
    write_jsonl(tmp_path / "set.jsonl", prompts)
    assert E.read_eval_prompts(str(tmp_path / "set.json")) == E.read_eval_prompts(str(tmp_path / "set.jsonl")) \
        == prompts
    (tmp_path / "spaced.json").write_text("\n  " + json.dumps(prompts))  # an array after blank space is an array
    assert E.read_eval_prompts(str(tmp_path / "spaced.json")) == prompts
    recs = E.answer_alpaca_eval(tiny(tok), tok, prompts, "run-M1", 5, eos_id=tok.eos_id, progress=False)
    assert len(recs) == 2
    assert recs[0].keys() == {"instruction", "output", "generator", "dataset"} and recs[0]["dataset"] == "helpful_base"
    assert recs[1].keys() == {"instruction", "output", "generator"}
    path = E.alpaca_eval_path(str(tmp_path / "eval"), "run-M1")
    E.write_alpaca_eval(path, recs)
    assert path.endswith(os.path.join("alpaca_eval", "run-M1", "model_outputs.json"))
    assert json.load(open(path)) == recs
    utils = pytest.importorskip("alpaca_eval.utils", reason="alpaca-eval not installed")
    df = utils.load_or_convert_to_dataframe(path)  # what alpaca_eval --model_outputs=PATH does first
    assert list(df["instruction"]) == [p["instruction"] for p in prompts]
    assert list(df["output"]) == [r["output"] for r in recs]
    assert utils.get_generator_name(None, df) == "run-M1"


def test_bad_eval_prompt_files_name_the_record(tmp_path):
    (tmp_path / "a.json").write_text('[{"instruction": "ok"}, {"prompt": "no"}]')
    with pytest.raises(ValueError, match=r"a.json: element 1 of the array"):
        E.read_eval_prompts(str(tmp_path / "a.json"))
    with pytest.raises(ValueError, match=r"is a folder: give the eval prompts file"):  # (it said "not found")
        E.read_eval_prompts(str(tmp_path))
    for text in ("", "\n \n"):  # an empty file holds no prompt to evaluate on (nor MT-Bench question)
        (tmp_path / "none.jsonl").write_text(text)
        with pytest.raises(ValueError, match=r"none.jsonl: no records"):
            E.read_eval_prompts(str(tmp_path / "none.jsonl"))
        with pytest.raises(ValueError, match=r"none.jsonl: no records"):
            E.read_mt_bench(str(tmp_path / "none.jsonl"))
    (tmp_path / "b.jsonl").write_text('{"instruction": "ok"}\n{"prompt": "no"}\n')
    with pytest.raises(ValueError, match=r"b.jsonl:2: missing or non-string field\(s\): instruction"):
        E.read_eval_prompts(str(tmp_path / "b.jsonl"))
    # a BOM (Windows editors write one) is read past; a byte that is not UTF-8 is named with the file
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([{"instruction": "hi"}]).encode())
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"instruction": "hi"}).encode() + b"\n")
    assert E.read_eval_prompts(str(tmp_path / "bom.json")) == E.read_eval_prompts(str(tmp_path / "bom.jsonl")) == \
        [{"instruction": "hi"}]
    (tmp_path / "latin.json").write_bytes(b'[{"instruction": "caf\xe9"}]')
    with pytest.raises(ValueError, match=r"latin.json: not UTF-8 text \(byte 0xe9"):
        E.read_eval_prompts(str(tmp_path / "latin.json"))
    (tmp_path / "comma.json").write_text('[{"instruction": "a"}, {"instruction": "b"},]')  # on one line: a column
    with pytest.raises(ValueError, match=r"comma.json: malformed JSON \(Expecting value at line 1, column 45\)"):
        E.read_eval_prompts(str(tmp_path / "comma.json"))
    # an empty instruction or turn asks nothing (it was answered all the same)
    (tmp_path / "blank.json").write_text('[{"instruction": "ok"}, {"instruction": " "}]')
    with pytest.raises(ValueError, match=r"blank.json: element 1 of the array: empty instruction"):
        E.read_eval_prompts(str(tmp_path / "blank.json"))
    (tmp_path / "blank.jsonl").write_text('{"instruction": "ok"}\n{"instruction": ""}\n')
    with pytest.raises(ValueError, match=r"blank.jsonl:2: empty instruction"):
        E.read_eval_prompts(str(tmp_path / "blank.jsonl"))
    assert E.mt_bench_question({"question_id": 1, "turns": ["a", " "]}) == "turn 2 of 2 is empty: nothing to answer"
    (tmp_path / "c.json").write_text("[]")
    with pytest.raises(ValueError, match="empty"):
        E.read_eval_prompts(str(tmp_path / "c.json"))
    # the line in the file, blank lines counted
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "turns": ["a", "b"]}\n\n{"question_id": 2, "turns": "a"}\n')
    with pytest.raises(ValueError, match="q.jsonl:3: not an MT-Bench question"):
        E.read_mt_bench(str(tmp_path / "q.jsonl"))
    # FastChat matches answers to questions by id: each id once, a number or a string
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "turns": ["a"]}\n{"question_id": 1, "turns": ["b"]}\n')
    with pytest.raises(ValueError, match="q.jsonl:2: question_id 1 again"):
        E.read_mt_bench(str(tmp_path / "q.jsonl"))
    (tmp_path / "q.jsonl").write_text('{"question_id": [1], "turns": ["a"]}\n')
    with pytest.raises(ValueError, match="q.jsonl:1: question_id must be a number or a string"):
        E.read_mt_bench(str(tmp_path / "q.jsonl"))
    # no turns is no question; true is a JSON number to Python (an int), not an id
    assert E.mt_bench_question({"question_id": 1, "turns": []}).startswith("not an MT-Bench question")
    assert E.mt_bench_question({"question_id": True, "turns": ["a"]}) == "question_id must be a number or a string"
    assert E.mt_bench_question({"question_id": "q1", "turns": ["a"]}) is None
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "turns": ["a"], "category": ["writing"]}\n')
    with pytest.raises(ValueError, match="q.jsonl:1: category must be a string"):  # it sets the temperature
        E.read_mt_bench(str(tmp_path / "q.jsonl"))
    with pytest.raises(FileNotFoundError):
        E.read_eval_prompts(str(tmp_path / "none.json"))


def test_prompts_longer_than_the_context_are_answered_error_and_counted(tok, tmp_path):
    short, long = "Say hi.", " ".join(["please answer the question"] * 40)
    ctx = 64
    assert len(chat_prompt_ids(tok, short)) + 8 < ctx < len(chat_prompt_ids(tok, long))
    net = tiny(tok, ctx)
    recs = E.answer_alpaca_eval(net, tok, [{"instruction": long}, {"instruction": short}], "m", 4,
                                eos_id=tok.eos_id, progress=False)
    # every prompt is in the file (AlpacaEval scores only the instructions both models' files hold): the long
    # one answered as FastChat marks a turn it could not answer, and counted
    assert [(r["instruction"], r["output"] == E.NO_ROOM) for r in recs] == [(long, True), (short, False)]
    assert E.alpaca_unanswered(recs) == 1
    # an answer that only starts with the mark, or holds it, was given
    assert E.alpaca_unanswered([{"output": "ERROR: the file is missing"}, {"output": E.NO_ROOM}]) == 1
    questions = [{"question_id": 1, "turns": [short, "Again."]}, {"question_id": 2, "turns": [long, "Again."]},
                 {"question_id": 3, "turns": [short, long]}]  # 3: turn 2 does not fit
    recs = E.answer_mt_bench(net, tok, questions, "m", 4, eos_id=tok.eos_id, progress=False)
    # FastChat refuses a file without every question: a turn with no room is answered as FastChat marks one
    # it could not answer, and so is every turn after it
    assert E.unanswered(recs) == 2 and [r["question_id"] for r in recs] == [1, 2, 3]
    turns = [r["choices"][0]["turns"] for r in recs]
    assert E.NO_ROOM == "ERROR" and turns[1] == ["ERROR", "ERROR"] and turns[2][1] == "ERROR"
    assert "ERROR" not in turns[0] + turns[2][:1] and len(turns[0]) == 2
    common = pytest.importorskip("fastchat.llm_judge.common", reason="FastChat (fschat) not installed")
    E.write_mt_bench(str(tmp_path / "m.jsonl"), recs)
    common.check_data(questions, common.load_model_answers(str(tmp_path)), None, ["m"], {})  # FastChat takes it


def test_mt_bench_answers_sampled_at_a_temperature_are_the_same_for_the_same_seed(tok):
    """Writing is sampled at 0.7 (FastChat's temperature): the same seed gives
    the same answers, another seed others."""
    net = tiny(tok, 256)
    questions = [{"question_id": i, "category": "writing", "turns": [f"Write a poem about {w}.", "Shorter."]}
                 for i, w in enumerate(["cats", "rain", "salt"])]
    answer = lambda seed: [r["choices"][0]["turns"] for r in E.answer_mt_bench(
        net, tok, questions, "m", 8, seed=seed, eos_id=tok.eos_id, progress=False)]
    assert answer(5) == answer(5) != answer(6)


def test_mt_bench_temperature_for_a_category_fastchat_does_not_list():
    """FastChat samples a category it does not list (or none) at 0.7, not greedily."""
    assert E.mt_bench_temperature({"question_id": 1, "turns": ["a"]}) == 0.7
    assert E.mt_bench_temperature({"question_id": 1, "turns": ["a"], "category": "poetry"}) == 0.7
    assert E.mt_bench_temperature({"question_id": 1, "turns": ["a"], "category": "math"}) == 0.0


def test_mt_bench_turns_are_sampled_with_seeds_of_their_own(tok, monkeypatch):
    """Turn k's calls get seed + k: with one seed for both, turn 2 would draw
    the same random numbers as turn 1."""
    seeds = []

    def stub_generate(model, prompts, max_new_tokens, temperature=0.0, seed=None, **kw):
        seeds.append((temperature, seed))
        return [tok.encode("ok") for _ in prompts]
    monkeypatch.setattr(E, "generate", stub_generate)
    model = types.SimpleNamespace(args=types.SimpleNamespace(max_seq_len=10_000))  # (fits() reads its context)
    questions = [{"question_id": 1, "category": "math", "turns": ["1 + 1?", "And 2 + 2?"]},
                 {"question_id": 2, "category": "writing", "turns": ["A poem.", "Shorter."]}]
    E.answer_mt_bench(model, tok, questions, "m", 4, seed=0)
    assert seeds == [(0.0, 0), (0.7, 0), (0.0, 1), (0.7, 1)]  # per turn, one call per temperature
    # questions of one and of two turns together: every turn of the longer one answered (MT-Bench's are two
    # turns each; a question file may hold others), the shorter one's single turn alone
    questions = [{"question_id": 1, "category": "math", "turns": ["1 + 1?"]},
                 {"question_id": 2, "category": "math", "turns": ["2 + 2?", "And 3 + 3?"]}]
    recs = E.answer_mt_bench(model, tok, questions, "m", 4, seed=0)
    assert [r["choices"][0]["turns"] for r in recs] == [["ok"], ["ok", "ok"]] and E.unanswered(recs) == 0


def test_mean_length_by_hand():
    assert E.mean_length(["ab", "abcd"]) == 3 and E.mean_length(x for x in ["abc"]) == 3
    assert E.mean_length([]) is None  # no answers: no length, not 0
    assert E.mean_length(["a", "ab"]) == 1.5  # not rounded down
