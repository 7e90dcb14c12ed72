"""Real data that does not fit, EFT targets from another judge, the report for real data:
the stages on a small random model with a short context, and one end-to-end run of the
loop on real-format seed data (seed -> SFT -> EFT targets from a file -> M1 -> evaluation)."""
import json
import types
import os
import re
import subprocess
import sys

import pytest
import torch

import configurator
import distributed as D
import evaluation as E
import judge as J
import model as M
import report
import selfreward as S
import validate
from checkpoint import save_model
from conftest import ROOT, script_the_prompt_writer, shared_file
from data import read_jsonl, toy, write_jsonl
from judge import eft_targets, judge_prompt, judge_prompt_ids, read_judge_file
from run_folder import Run
from tokenizer import Tokenizer, chat_prompt_ids

SHORT = "Say hi."
LONG = " ".join(["please answer the question"] * 40)  # about 100 tokens with the small tokenizer
CTX = 96  # fits a short chat prompt with room to answer, never LONG; far too short for a judge prompt


@pytest.fixture
def tok(toy_tokenizer_path):
    return Tokenizer(toy_tokenizer_path)


def settings(**overrides):
    small = dict(progress=False, n_prompts=24, shard_size=8, max_response_tokens=4, max_judge_tokens=4,
                 max_prompt_tokens=8, n_judge=2, gen_batch_size=16)
    return configurator.settings(S.DEFAULTS, {**small, **overrides})


def run_folder(tmp_path):
    return Run(str(tmp_path / "run"), settings(), D.Env())


def use_model(monkeypatch, tok, max_seq_len):
    torch.manual_seed(0)
    net = M.Transformer(M.preset("toy-tiny", vocab_size=tok.vocab_size, max_seq_len=max_seq_len)).eval()
    monkeypatch.setattr(S, "load_for_sampling", lambda r, path: (net, tok))
    return net


def two_stop_ids(tok):
    """The toy tokenizer's one stop id (EOS), and a second one as a chat template's end of turn
    (Llama 3's <|eot_id|> beside <|end_of_text|>): a stage that passes EOS alone then shows."""
    from tokenizer import E_INST
    assert tok.stop_ids == [tok.eos_id] and tok.token_id(E_INST) not in tok.ids_starting_with("\n")
    return sorted({tok.eos_id, tok.token_id(E_INST)})


def recorded_stop_ids(monkeypatch, module):
    """module.generate as it is, recording the stop ids (eos_id) of every call."""
    seen, real = [], module.generate
    monkeypatch.setattr(module, "generate", lambda *a, **kw: seen.append(kw.get("eos_id")) or real(*a, **kw))
    return seen


def test_generation_stages_skip_and_count_prompts_longer_than_the_context(tmp_path, monkeypatch, tok, capsys):
    c, r = settings(), run_folder(tmp_path)
    # new prompts: a request holding the long seed prompt has no room; the others are sampled
    use_model(monkeypatch, tok, len(tok.encode(S.fewshot_request([f"{SHORT} 10"] * c.n_shots, False), bos=True)) + 16)
    write_jsonl(r.path("seed", "ift.jsonl"), [{"prompt": f"{SHORT} {i}", "response": "hi"} for i in range(30)]
                + [{"prompt": LONG, "response": "ok"}])
    try:
        said = S.stage_prompts(c, r, 1, "writer")["dropped"]
    except SystemExit:  # a random writer may well write no usable prompt: the stage still ran through
        said = capsys.readouterr().err  # and the message gives the counts of what it dropped
        assert "no usable prompt out of 24 requests" in said
    every = read_jsonl(r.path("iter1", "prompts_generated.jsonl"))
    too_long = sum(x["dropped"] == "request longer than the context" for x in every)
    assert len(every) == 24 and 0 < too_long < 24  # some requests drew the long prompt, some did not
    assert f"'request longer than the context': {too_long}" in str(said)  # counted, in either case
    # every request too long for the writer: said so (the message advised raising n_prompts)
    r2 = run_folder(tmp_path / "all_long")
    write_jsonl(r2.path("seed", "ift.jsonl"), [{"prompt": f"{LONG} {i}", "response": "ok"} for i in range(30)])
    with pytest.raises(SystemExit):
        S.stage_prompts(c, r2, 1, "writer")
    assert "every one of the 24 requests is longer than the prompt writer's context (writer: " in capsys.readouterr().err

    # candidates: the long prompt is skipped and counted
    use_model(monkeypatch, tok, CTX)
    assert len(chat_prompt_ids(tok, SHORT)) < CTX - 8 and len(chat_prompt_ids(tok, LONG)) > CTX
    write_jsonl(r.path("iter1", "prompts.jsonl"), [{"prompt": SHORT}, {"prompt": LONG}, {"prompt": SHORT + "!"}])
    tok.stop_ids, seen = two_stop_ids(tok), recorded_stop_ids(monkeypatch, S)
    info = S.stage_candidates(c, r, 1, "M1")
    assert seen and all(e == tok.stop_ids for e in seen)  # a candidate ends at any id that ends a turn
    recs = read_jsonl(r.path("iter1", "candidates.jsonl"))
    assert info["too_long"] == 1 and [x["prompt"] for x in recs] == [SHORT, SHORT + "!"]
    assert all(len(x["candidates"]) == c.n_candidates for x in recs)
    # a candidate that fills the room its prompt leaves in the context is cut off, though shorter than
    # max_response_tokens (4); one a token shorter ended its turn
    use_model(monkeypatch, tok, len(chat_prompt_ids(tok, SHORT)) + 2)  # room for 2 new tokens
    lengths = [2, 1] + [1] * (c.n_candidates - 2)
    monkeypatch.setattr(S, "generate", lambda net, prompts, *a, n=1, **kw: [[5] * k for _ in prompts for k in lengths])
    write_jsonl(r.path("iter1", "prompts.jsonl"), [{"prompt": SHORT}])
    info = S.stage_candidates(c, r, 1, "M1")
    assert read_jsonl(r.path("iter1", "candidates.jsonl"))[0]["finished"] == [False] + [True] * (c.n_candidates - 1)
    assert info["cut_off"] == 1

    # judgments: a judge prompt that does not fit gets no judgment and no score
    ctx = len(judge_prompt_ids(tok, SHORT, "a")) + 8
    use_model(monkeypatch, tok, ctx)
    write_jsonl(r.path("iter1", "candidates.jsonl"), [{"prompt": SHORT, "candidates": ["a", LONG, "b", "c"]}])
    info = S.stage_judgments(c, r, 1, "M1")
    (rec,) = read_jsonl(r.path("iter1", "judgments.jsonl"))
    assert info["too_long"] == 1 and rec["too_long"] == [False, True, False, False]
    assert rec["judgments"][1] == [] and rec["score"][1] is None and len(rec["judgments"][0]) == c.n_judge
    assert info["judgments"] == 4 * c.n_judge  # every candidate counts n_judge, judged or not


def test_a_new_task_ends_at_a_line_break_or_the_end_of_text_and_not_where_the_context_does(
        tmp_path, monkeypatch, tok):
    """The writer stops at the end of text as at a line break (a writer may end its list; sampling
    on would glue what follows onto the task). A task cut off because the request and it filled the
    context did not end: it is dropped as unfinished, even within max_prompt_tokens."""
    c, r = settings(n_prompts=2, shard_size=2, max_prompt_tokens=16), run_folder(tmp_path)
    tok.stop_ids = two_stop_ids(tok)  # (so that the writer's check of its stop ids below can fail)
    write_jsonl(r.path("seed", "ift.jsonl"), [{"prompt": f"Say hi to {x}.", "response": "hi"} for x in "ABCDEFGHIJ"])
    longest = max(len(tok.encode(S.fewshot_request([f"Say hi to {x}."] * c.n_shots, False), bos=True)) for x in "AJ")
    net = use_model(monkeypatch, tok, longest + 12)
    task = tok.encode("please sort the letters of the word fox and count the numbers over a lazy dog")
    ended = "please sort the word"  # fewer tokens than any request's room

    def writer(model, prompts, max_new_tokens, eos_id, **kw):
        assert set(tok.stop_ids) <= set(eos_id) and set(tok.ids_starting_with("\n")) <= set(eos_id)
        room = [min(max_new_tokens, net.args.max_seq_len - len(p)) for p in prompts]
        assert all(n < c.max_prompt_tokens for n in room) and all(n < len(task) for n in room)
        # the first request fills the context with the task (cut); the second ends its task at the end of text
        assert all(len(tok.encode(ended)) < n for n in room)
        return [task[:room[0]], tok.encode(ended)]
    monkeypatch.setattr(S, "generate", writer)
    S.stage_prompts(c, r, 1, "writer")
    every = read_jsonl(r.path("iter1", "prompts_generated.jsonl"))
    assert [x["dropped"] for x in every] == ["unfinished (no end of line within max_prompt_tokens or the context)", None]
    assert read_jsonl(r.path("iter1", "prompts.jsonl")) == [{"prompt": ended}]


def test_a_real_writer_is_asked_in_self_instructs_template_and_its_filters_apply(tmp_path, monkeypatch, tok):
    """On real seed data the writer continues Self-Instruct's numbered list
    (a seed prompt of several lines on one line of it), and what it writes
    passes Self-Instruct's filters (here its keywords)."""
    c = settings(n_prompts=2, shard_size=2, max_prompt_tokens=32)
    r = run_folder(tmp_path)
    write_jsonl(r.path("seed", "ift.jsonl"), [{"prompt": f"Say hi to {x}.", "response": "hi"} for x in "ABCDEFG"]
                + [{"prompt": "Explain this:\n\nsay   hi", "response": "ok"}])
    use_model(monkeypatch, tok, 256)  # the model the stage loads (its context); generate is stubbed below
    asked = []

    def writer(model, prompts, max_new_tokens, **kw):
        asked.extend(tok.decode(p) for p in prompts)
        return [tok.encode(" please sort the word fox\n"), tok.encode(" please draw the word fox\n")]
    monkeypatch.setattr(S, "generate", writer)
    S.stage_prompts(c, r, 1, "writer")
    for request in asked:  # all 8 seed prompts, in some order, numbered, and the 9th left open
        lines = request.split("\n")
        assert lines[0] == "Come up with a series of tasks:" and lines[-1] == "9." and len(lines) == 10
        assert sorted(x.split(". ", 1)[1] for x in lines[1:9]) == sorted(
            [f"Say hi to {x}." for x in "ABCDEFG"] + ["Explain this: say hi"])
    every = read_jsonl(r.path("iter1", "prompts_generated.jsonl"))
    assert [x["dropped"] for x in every] == [None, "not a task for text (Self-Instruct's keywords)"]


def test_a_writer_whose_tasks_never_end_is_told_which_setting_to_raise(tmp_path, monkeypatch, tok, capsys):
    """Every new task cut at max_prompt_tokens: the error names that setting."""
    c, r = settings(n_prompts=2, shard_size=2, max_prompt_tokens=4), run_folder(tmp_path)
    write_jsonl(r.path("seed", "ift.jsonl"), [{"prompt": f"Say hi to {x}.", "response": "hi"} for x in "ABCDEFGH"])
    use_model(monkeypatch, tok, 256)
    monkeypatch.setattr(S, "generate", lambda model, prompts, n, **kw: [tok.encode(" please sort the word fox")[:n]
                                                                        for _ in prompts])
    with pytest.raises(SystemExit):
        S.stage_prompts(c, r, 1, "writer")
    assert "or raise max_prompt_tokens (4)." in capsys.readouterr().err


def test_every_model_is_evaluated_with_the_same_random_numbers(tmp_path, monkeypatch, tok):
    """The judge's samples and the MT-Bench answers draw the same numbers for
    every model (common random numbers): a difference between two models'
    figures is then the models', not their draws' (with a seed a model, M1's
    judge accuracy moved up to 2 points across the draws of M1, M2 and M3)."""
    use_model(monkeypatch, tok, 256)
    r = run_folder(tmp_path)
    write_jsonl(r.path("seed", "eft_eval.jsonl"), [{"prompt": SHORT, "responses": ["a", "b"], "ranks": [0, 1]}])
    write_jsonl(r.path("seed", "ift.jsonl"), [{"prompt": "Name a fruit.", "response": "Apple."}])
    write_jsonl(r.path("seed", "eft_train.jsonl"), [{"prompt": "say  HI.", "responses": ["a", "b"], "ranks": [0, 1]}])
    write_jsonl(tmp_path / "mt.jsonl", [{"question_id": 1, "turns": [SHORT, "Again."]}])
    seeds = {}
    real_judge, real_mt = S.J.judge, S.E.answer_mt_bench
    monkeypatch.setattr(S.J, "judge", lambda *a, **kw: seeds.setdefault("judge", []).append(kw["seed"]) or
                        real_judge(*a, **kw))
    monkeypatch.setattr(S.E, "answer_mt_bench", lambda *a, **kw: seeds.setdefault("mt", []).append(kw["seed"]) or
                        real_mt(*a, **kw))
    c = settings(mt_bench=str(tmp_path / "mt.jsonl"), run_name="crn")
    for name in ("SFT", "M1"):
        S.stage_eval(c, r, name, name)
    assert len(seeds["judge"]) == len(seeds["mt"]) == 2
    assert len(set(seeds["judge"])) == len(set(seeds["mt"])) == 1 and seeds["judge"] != seeds["mt"]
    # M1's own seed from when each model had one: M1's figures of runs made before this hold
    assert (seeds["judge"][0], seeds["mt"][0]) == (S.sub_seed(c.seed, "eval judge", "M1"),
                                                   S.sub_seed(c.seed, "mt_bench", "M1"))


def test_evaluation_counts_long_inputs_and_keeps_every_benchmark_question(tmp_path, monkeypatch, tok):
    ctx = len(judge_prompt_ids(tok, SHORT, "a")) + 8
    use_model(monkeypatch, tok, ctx)
    r = run_folder(tmp_path)
    write_jsonl(r.path("seed", "eft_eval.jsonl"), [{"prompt": SHORT, "responses": ["a", LONG], "ranks": [0, 1]}])
    write_jsonl(r.path("seed", "ift.jsonl"), [{"prompt": "Name a fruit.", "response": "Apple."}])
    write_jsonl(r.path("seed", "eft_train.jsonl"), [{"prompt": "say  HI.", "responses": ["a", "b"], "ranks": [0, 1]}])
    (tmp_path / "alpaca.json").write_text(json.dumps([{"instruction": SHORT}, {"instruction": LONG * 20}]))
    write_jsonl(tmp_path / "mt.jsonl", [{"question_id": 1, "turns": [SHORT, "Again."]},
                                        {"question_id": 2, "turns": [LONG * 20, "Again."]}])
    c = settings(eval_prompts=str(tmp_path / "alpaca.json"), mt_bench=str(tmp_path / "mt.jsonl"), run_name="real")
    tok.stop_ids, seen = two_stop_ids(tok), recorded_stop_ids(monkeypatch, E)
    info = S.stage_eval(c, r, "M1", "M1")
    assert len(seen) >= 2 and all(e == tok.stop_ids for e in seen)  # the benchmarks' answers end at any of them
    assert info["judge"]["too_long"] == 1 and info["judge"]["judgments"] == 2 * c.n_judge
    assert info["alpaca_eval"]["answered"] == 1 and info["alpaca_eval"]["too_long"] == 1
    assert info["mt_bench"]["answered"] == 1 and info["mt_bench"]["too_long"] == 1
    assert info["alpaca_eval"]["path"] == E.alpaca_eval_path(r.path("eval"), "real-M1")
    alpaca = json.load(open(info["alpaca_eval"]["path"]))  # every prompt (AlpacaEval joins on them): the long one
    assert [(x["instruction"], x["output"] == "ERROR") for x in alpaca] == [(SHORT, False), (LONG * 20, True)]
    assert info["alpaca_eval"]["avg_length"] == len(alpaca[0]["output"])  # of answered ones
    mt = read_jsonl(info["mt_bench"]["path"])  # every question (FastChat needs each): the long one as "ERROR"
    assert [x["question_id"] for x in mt] == [1, 2] and mt[1]["choices"][0]["turns"] == ["ERROR", "ERROR"]
    assert info["mt_bench"]["avg_length"] == E.mean_length(mt[0]["choices"][0]["turns"])  # of answered ones
    assert os.listdir(os.path.dirname(info["mt_bench"]["path"])) == ["real-M1.jsonl"]
    # M1 was trained on the EFT group "say  HI." (in its judge prompts): the benchmarks' "Say hi." counts,
    # the long question does not
    for b in ("alpaca_eval", "mt_bench"):
        assert info[b]["trained_on"] == {"questions": 2, "seen": 1, "examples": [SHORT], "by_source": {
            "seed IFT": 0, "EFT training": 1, "written by the loop": 0}}
    # M2 also on iteration 1's DPO pairs: their prompt counts; a prompt kept but in no pair does not
    write_jsonl(r.path("iter1", "prompts.jsonl"), [{"prompt": LONG * 20}, {"prompt": "Name a color."}])
    write_jsonl(r.path("iter1", "pairs.jsonl"), [{"prompt": "Name a color.", "chosen": "Red.", "rejected": "7."}])
    assert S.stage_eval(c, r, "M2", "M2")["alpaca_eval"]["trained_on"]["seen"] == 1
    write_jsonl(r.path("iter1", "pairs.jsonl"), [{"prompt": LONG * 20, "chosen": "a", "rejected": "b"}])
    assert S.stage_eval(c, r, "M2", "M2")["mt_bench"]["trained_on"] == {"questions": 2, "seen": 2, "examples": [
        SHORT, LONG * 20], "by_source": {"seed IFT": 0, "EFT training": 1, "written by the loop": 1}}


def test_the_benchmarks_figures_with_the_answers_stubbed(tmp_path, monkeypatch):
    """AlpacaEval's average length is over the answered prompts only (a
    prompt with no room is written as "ERROR", which is no answer of 5
    characters); MT-Bench alone, without eval_prompts, counts the questions
    the model was trained on too."""
    monkeypatch.setattr(S, "load_for_sampling", lambda r, path: (None, types.SimpleNamespace(stop_ids=[2])))
    monkeypatch.setattr(E, "answer_alpaca_eval", lambda net, tok, prompts, model_id, *a, **kw: [
        {"instruction": p["instruction"], "output": "Hello there." if i == 0 else E.NO_ROOM, "generator": model_id}
        for i, p in enumerate(prompts)])
    monkeypatch.setattr(E, "answer_mt_bench", lambda net, tok, questions, model_id, *a, **kw: [
        {"question_id": q["question_id"], "model_id": model_id, "choices": [{"index": 0, "turns": ["Hi.", "Hi."]}]}
        for q in questions])
    r = run_folder(tmp_path)
    write_jsonl(r.path("seed", "ift.jsonl"), [{"prompt": "Say hi.", "response": "Hi."}])
    write_jsonl(r.path("seed", "eft_train.jsonl"), [{"prompt": "Name a tree.", "responses": ["Oak.", "7"],
                                                      "ranks": [0, 1]}])
    (tmp_path / "alpaca.json").write_text(json.dumps([{"instruction": "Say hi."}, {"instruction": "Long."}]))
    write_jsonl(tmp_path / "mt.jsonl", [{"question_id": 1, "turns": ["Say hi.", "Again."]}])
    c = settings(eval_judge=False, eval_prompts=str(tmp_path / "alpaca.json"), run_name="x")
    alpaca = S.stage_eval(c, r, "M1", "M1")["alpaca_eval"]
    assert (alpaca["answered"], alpaca["too_long"], alpaca["avg_length"]) == (1, 1, len("Hello there."))
    c = settings(eval_judge=False, mt_bench=str(tmp_path / "mt.jsonl"), run_name="y")
    assert S.stage_eval(c, r, "M1", "M1")["mt_bench"]["trained_on"] == {
        "questions": 1, "seen": 1, "examples": ["Say hi."],
        "by_source": {"seed IFT": 1, "EFT training": 0, "written by the loop": 0}}


def test_a_killed_evaluation_redoes_only_the_part_it_was_in(tmp_path, monkeypatch, tok):
    """The evaluation of a model writes its files one after another (the
    judge's judgments, AlpacaEval's and MT-Bench's answers: hours at 70B);
    killed in MT-Bench, it is run again without judging or answering
    AlpacaEval again, and gives what a run never killed gives."""
    use_model(monkeypatch, tok, 256)
    (tmp_path / "alpaca.json").write_text(json.dumps([{"instruction": SHORT}, {"instruction": "Name a tree."}]))
    write_jsonl(tmp_path / "mt.jsonl", [{"question_id": 1, "turns": [SHORT, "Again."]}])
    c = settings(eval_prompts=str(tmp_path / "alpaca.json"), mt_bench=str(tmp_path / "mt.jsonl"), run_name="real")
    calls = []

    def counted(module, name, kill=False):
        def wrapped(*a, _real=getattr(module, name), **kw):
            calls.append(name)
            if kill:
                raise KeyboardInterrupt
            return _real(*a, **kw)
        monkeypatch.setattr(module, name, wrapped)
    real_mt_bench = S.E.answer_mt_bench
    counted(S.J, "judge")
    counted(S.E, "answer_alpaca_eval")
    counted(S.E, "answer_mt_bench")

    def run(name):
        calls.clear()
        r = Run(str(tmp_path / name), c, D.Env())
        write_jsonl(r.path("seed", "eft_eval.jsonl"), [{"prompt": SHORT, "responses": ["a", "b"], "ranks": [0, 1]}])
        write_jsonl(r.path("seed", "eft_train.jsonl"), [{"prompt": "Hi.", "responses": ["a", "b"], "ranks": [0, 1]}])
        write_jsonl(r.path("seed", "ift.jsonl"), [{"prompt": "Name a fruit.", "response": "Apple."}])
        return r
    r = run("whole")
    whole = S.stage_eval(c, r, "M1", "M1")
    assert calls == ["judge", "answer_alpaca_eval", "answer_mt_bench"]
    r = run("killed")
    monkeypatch.setattr(S.E, "answer_mt_bench", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        S.stage_eval(c, r, "M1", "M1")
    assert calls == ["judge", "answer_alpaca_eval"] and os.path.exists(r.path("eval", "M1.parts"))
    monkeypatch.setattr(S.E, "answer_mt_bench", real_mt_bench)
    counted(S.E, "answer_mt_bench")
    calls.clear()
    killed = S.stage_eval(c, r, "M1", "M1")
    assert calls == ["answer_mt_bench"]
    for b in ("alpaca_eval", "mt_bench"):  # (paths aside: another folder)
        whole[b]["path"] = killed[b]["path"] = None
    assert killed == whole and whole["judge"]["judgments"] == 2 * c.n_judge
    for f in ("eval/M1_judgments.jsonl", "eval/alpaca_eval/real-M1/model_outputs.json"):
        assert open(tmp_path / "killed" / f).read() == open(tmp_path / "whole" / f).read()


def test_sft_baselines_judgments_are_kept_when_no_eft_target_agrees(tmp_path, monkeypatch, tok, capsys):
    ctx = len(judge_prompt_ids(tok, SHORT, "a")) + 8
    use_model(monkeypatch, tok, ctx)  # a random model: no judgment carries a score
    r = run_folder(tmp_path)
    groups = [{"prompt": SHORT, "responses": ["a", "b"], "ranks": [0, 1]},
              {"prompt": SHORT, "responses": ["a", LONG], "ranks": [1, 0]}]
    write_jsonl(r.path("seed", "eft_train.jsonl"), groups)
    raw = r.path("seed", "eft_train_sft_judgments.jsonl")
    with pytest.raises(SystemExit):
        S.stage_eft_targets(settings(), r)
    assert re.search(rf"0 of 8 judgments had a score, 1 responses too long to judge.*Its judgments are in {raw}.*"
                     rf"--eft_judgments=FILE", capsys.readouterr().err)
    kept = read_jsonl(raw)
    assert [g["responses"] for g in kept] == [g["responses"] for g in groups]
    assert kept[1]["too_long"] == [False, True] and len(kept[0]["judgments"][0]) == 2  # n_judge attempts


def test_sft_baselines_eft_judging_resumes_from_its_last_shard(tmp_path, monkeypatch, tok):
    """The EFT targets stage judges in shards, as the loop's own judging does:
    a run killed in its second shard judges only that one again, and the
    targets are those of a run never killed."""
    use_model(monkeypatch, tok, 64)
    groups = [{"prompt": f"q{i}", "responses": ["a", "b"], "ranks": [0, 1]} for i in range(3)]
    calls = []

    def judge_eft_groups(net, tok, chunk, seed, **kw):  # the first response better: agrees with the humans
        calls.append([g["prompt"] for g in chunk])
        if len(calls) == 2 and kill:
            raise KeyboardInterrupt
        return [{**g, "judgments": [[f"Good {seed}.\nScore: 5"], ["Bad.\nScore: 2"]], "scores": [[5], [2]],
                 "too_long": [False, False]} for g in chunk]
    monkeypatch.setattr(S.J, "judge_eft_groups", judge_eft_groups)
    finished = {}
    for name, kill in (("whole", False), ("killed", True), ("killed", False)):
        r = Run(str(tmp_path / name), settings(shard_size=1), D.Env())
        write_jsonl(r.path("seed", "eft_train.jsonl"), groups)
        calls.clear()
        try:
            S.stage_eft_targets(settings(shard_size=1), r)
        except KeyboardInterrupt:
            assert calls == [["q0"], ["q1"]]
            continue
        finished[name] = read_jsonl(r.path("seed", "eft_train_targets.jsonl"))
        assert calls == ([["q0"], ["q1"], ["q2"]] if name == "whole" else [["q1"], ["q2"]])
        assert read_jsonl(r.path("seed", "eft_train_sft_judgments.jsonl"))[2]["prompt"] == "q2"
    assert finished["killed"] == finished["whole"] and len(finished["whole"]) == 6


def test_eft_targets_from_a_stronger_judges_file(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "load_for_sampling", lambda r, path: pytest.fail("no model judges when a file does"))
    r = run_folder(tmp_path)
    write_jsonl(r.path("seed", "eft_train.jsonl"), [
        {"prompt": "Name a fruit.", "responses": ["Apple.", "A car."], "ranks": [0, 1]},
        {"prompt": "Name a color.", "responses": ["Red.", "Seven."], "ranks": [0, 1]}])
    write_jsonl(r.path("seed", "eft_eval.jsonl"), [{"prompt": "Held out?", "responses": ["x", "y"], "ranks": [0, 1]}])
    write_jsonl(r.path("seed", "ift.jsonl"), [{"prompt": "Say  hi.", "response": "Hello."},
                                              {"prompt": "Name a tree.", "response": "Oak."}])
    judged = tmp_path / "judge.jsonl"
    write_jsonl(judged, [
        # human-ranked responses (whitespace aside): kept only where the scores agree
        {"prompt": "Name a  fruit.", "completion": {"0": {"content": "Apple. ", "reasoning": "Right.\nScore: 5"},
                                                    "1": {"content": "A car.", "reasoning": "Wrong.\nScore: 1"}}},
        {"prompt": "Name a color.", "completion": {"0": {"content": "Red.", "reasoning": "Score: 2"},
                                                   "1": {"content": "Seven.", "reasoning": "Score: 4"}}},
        # the EFT eval set's prompt: dropped (it would leak into M1's judge evaluation); an IFT prompt too
        {"prompt": "Held out?", "completion": {"0": {"content": "x", "reasoning": "Score: 3"}}},
        {"prompt": "Say hi.", "completion": {"0": {"content": "Hi.", "reasoning": "Score: 5"}}},
        {"prompt": "Name a tree.", "completion": {"0": {"content": "Oak.", "reasoning": "Score: 5"}}},
        # nobody ranked these: every judgment with a score is material
        {"prompt": "Write a haiku.", "completion": {"0": {"content": "h1", "reasoning": "Nice.\n**Score: 3**"},
                                                    "1": {"content": "h2", "reasoning": "no score here"}}}])
    c = settings(eft_judgments=str(judged))
    info = S.stage_eft_targets(c, r)
    targets = read_jsonl(r.path("seed", "eft_train_targets.jsonl"))
    assert sorted((t["prompt"], t["response"]) for t in targets) == sorted([
        (judge_prompt("Name a  fruit.", "Apple. "), "Right.\nScore: 5"),
        (judge_prompt("Name a  fruit.", "A car."), "Wrong.\nScore: 1"),
        (judge_prompt("Write a haiku.", "h1"), "Nice.\nScore: 3")])
    assert info["prompts"] == 6 and info["prompts_with_human_ranks"] == 2 and info["targets"] == 3
    assert info["dropped"] == {"prompt of the EFT eval set": 1, "prompt of the IFT set": 2}
    assert info["judgments_with_score"] == 5
    assert S.eft_train_file(r) == r.path("seed", "eft_train_targets.jsonl")  # M1 trains on these
    # so M1 was trained on their questions, not on every seed group's (the benchmark count's source)
    assert S.trained_prompts(r.path("seed"), "M1")["EFT training"] == ["Name a  fruit.", "Write a haiku."]


def test_report_for_real_data_has_no_toy_columns(tmp_path):
    r = run_folder(tmp_path)
    names = ["SFT", "M1", "M2"]
    judge = {"pairwise_accuracy": 0.5, "five_best": None, "exact_match": 0.25, "spearman": 0.1, "kendall_tau": 0.05,
             "response_coverage": 0.5, "judgments": 12, "judgments_with_score": 3, "too_long": 1, "n_prompts": 4,
             "n_undefined_correlation": 2}
    infos = {n: {"judge": judge, "alpaca_eval": {"path": f"out/x/eval/alpaca_eval/x-{n}/model_outputs.json",
                                                 "answered": 5, "too_long": 1, "avg_length": 123.4},
                 "mt_bench": {"path": f"out/x/eval/mt_bench/model_answer/x-{n}.jsonl", "answered": 80,
                              "too_long": 0, "avg_length": 456.0}} for n in names}
    infos["M2"]["mt_bench"] = {**infos["M2"]["mt_bench"], "answered": 78, "too_long": 2}
    infos["M2"]["alpaca_eval"]["trained_on"] = {"questions": 805, "seen": 3, "examples": ["Hi?"], "by_source": {
        "seed IFT": 0, "EFT training": 1, "written by the loop": 2}}
    for name, info in {"eft_targets": {"file": "judge.jsonl", "targets": 40, "judgments": 800,
                                       "judgments_with_score": 798, "dropped": {"prompt of the EFT eval set": 2}},
                       "iter1_prompts": {"requested": 10, "kept": 6, "dropped": {"exact duplicate": 4}},
                       "iter1_candidates": {"too_long": 2},
                       "iter1_judgments": {"judgments": 24, "judgments_with_score": 20, "too_long": 1},
                       "iter1_pairs": {"pairs": 2, "dropped": {"all scores tie": 2, "fewer than 2 scored": 0}}}.items():
        r.mark(name, {**info, "seconds": 60})
    write_jsonl(r.path("iter1", "pairs.jsonl"), [{"prompt": "p", "chosen": "x" * 30, "rejected": "y" * 10},
                                                 {"prompt": "q", "chosen": "x" * 50, "rejected": "y" * 20}])
    # M1's judgments of the EFT eval set: prompt 1 ordered as the humans did, prompt 2 the other way
    write_jsonl(r.path("seed", "eft_eval.jsonl"), [{"prompt": p, "responses": ["a", "b"], "ranks": [0, 1]}
                                                   for p in ("p1", "p2")])
    write_jsonl(r.path("eval", "M1_judgments.jsonl"), [{"score": s, "scores": [s]} for s in (5.0, 1.0, 1.0, 4.0)])
    report.write_report(r, names, infos, "x", 2)
    text = open(r.path("report.md")).read()
    # the judge's figures with their intervals over the EFT eval prompts, on real data too (2 prompts: wide)
    assert "The same figures with 95% percentile-bootstrap intervals over the EFT eval prompts (" in text
    assert "| judge pairwise acc % | - | 50.0 [0.0, 100.0] | - |" in text and "mean grade" not in text
    assert not os.path.exists(r.path("report.svg"))  # the figure draws mean grade: the toy world's
    # a finished stage whose output is gone is named, with what the report leaves out for it
    assert ("**Left out**: files that finished stages wrote are not found, so this report lacks what they feed: "
            "`iter1/judgments.jsonl` (iteration 1: the diagnostics of its judgments).") in text
    assert not re.search(r"\bnan\b", text) and "mean grade" not in text and "avg response length" not in text
    assert "| M1 | 25.0 | 50.0 | - | 25.0 | 0.100 | 0.050 | 1 | 5 (1) | 123.4 | 80 (0) | 456.0 |" in text
    assert "EFT targets from judge.jsonl: 40 kept; 798 of 800 judgments had a score" in text
    assert ("iteration 1: 6 new prompts kept of 10 requested, 2 preference pairs; prompts dropped: "
            "{'exact duplicate': 4}; 2 prompts too long to answer; 20 of 24 judgments with a score, 1 candidates "
            "too long to judge; pairs dropped:") in text
    assert "chosen 40 vs rejected 15 chars on average" in text
    assert "iteration 2: ? new prompts" in text
    assert ("- AlpacaEval: `out/x/eval/alpaca_eval/x-M2/model_outputs.json` (`alpaca_eval --model_outputs="
            "out/x/eval/alpaca_eval/x-M2/model_outputs.json`); trained on 3 of its 805 questions (EFT training 1, "
            "written by the loop 2); 1 prompts too long for the context, answered \"ERROR\" (scored as answers)\n"
            ) in text
    assert "- MT-Bench: `out/x/eval/mt_bench/model_answer/x-M1.jsonl`\n" in text  # not counted: no clause
    assert ("- MT-Bench: `out/x/eval/mt_bench/model_answer/x-M2.jsonl`; 2 questions with a turn too long for the "
            "context, answered \"ERROR\" there") in text
    # how prompts without a correlation count, on real data as on the toy world's
    assert "it counts as 0 in their means" in text and "(prompts without one: SFT 2, M1 2, M2 2)" in text
    assert "`out/x/eval/mt_bench/model_answer/x-SFT.jsonl`" in text and "--model-list x-SFT x-M1 x-M2" in text
    assert "stage time in all: 5.0 min" in text
    # a run name with a space: the commands to paste quote the paths and model names (FastChat read two models)
    spaced = "\n".join(report.external_judges({"M1": {
        "alpaca_eval": {"path": "out/my run/eval/alpaca_eval/my run-M1/model_outputs.json", "answered": 1, "too_long": 0},
        "mt_bench": {"path": "out/my run/eval/mt_bench/model_answer/my run-M1.jsonl", "answered": 1, "too_long": 0}}}))
    assert "`alpaca_eval --model_outputs='out/my run/eval/alpaca_eval/my run-M1/model_outputs.json'`" in spaced
    assert "--model-list 'my run-M1'`" in spaced
    records = [json.loads(line)["eval"] for line in open(r.path("metrics.jsonl")) if '"eval"' in line]
    assert [m["model"] for m in records] == names and records[0]["alpaca_eval"]["answered"] == 5


# --- the loop end to end on real-format seed data (no toy grader, no toy M0) ---------

def test_loop_on_real_format_seed_data_with_eft_from_a_file(tmp_path, tok, toy_tokenizer_path):
    torch.manual_seed(0)
    m0 = tmp_path / "M0"
    save_model(M.Transformer(M.preset("toy-tiny", vocab_size=tok.vocab_size)), str(m0), toy_tokenizer_path)
    sets, seed = toy.build(seed=1, n_ift=16, n_eft_train=12, n_eft_eval=8, n_test=0), tmp_path / "seed"
    write_jsonl(seed / "ift.jsonl", sets["ift"])
    write_jsonl(seed / "eft_train.jsonl", [{k: g[k] for k in ("prompt", "responses", "ranks")}
                                           for g in sets["eft_train_groups"]])
    write_jsonl(seed / "eft_eval.jsonl", sets["eft_eval"])
    judged = tmp_path / "judge.jsonl"  # a "stronger judge" that scores by the human ranks
    write_jsonl(judged, [{"prompt": g["prompt"], "responses": g["responses"],
                          "judgments": [[f"Fine.\nScore: {5 - k}"] for k in g["ranks"]]}
                         for g in sets["eft_train_groups"]])
    # one AlpacaEval question is a seed IFT prompt: the run warns at the start, and the report counts it
    (tmp_path / "alpaca.json").write_text(json.dumps([{"instruction": "Say hi.", "dataset": "oasst"},
                                                      {"instruction": sets["ift"][0]["prompt"], "dataset": "x"}]))
    questions = shared_file("mt_bench", "question.jsonl")
    write_jsonl(tmp_path / "mt.jsonl", read_jsonl(questions)[:2])
    args = dict(seed_data=str(seed), init_from=str(m0), eft_judgments=str(judged), iterations=0,
                eval_prompts=str(tmp_path / "alpaca.json"), mt_bench=str(tmp_path / "mt.jsonl"),
                out_root=str(tmp_path / "out"), run_name="real", sft_epochs=1, max_response_tokens=4,
                max_judge_tokens=4, micro_batch_size=8, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "selfreward.py", *(f"--{k}={v}" for k, v in args.items())], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = tmp_path / "out" / "real"
    done = json.load(open(run / "done" / "eft_targets"))
    assert done["file"] == str(judged) and done["prompts_with_human_ranks"] == len(sets["eft_train_groups"])
    assert done["targets"] == len(read_jsonl(run / "seed" / "eft_train_targets.jsonl")) > 0
    assert sorted(os.listdir(run / "eval" / "mt_bench" / "model_answer")) == ["real-M1.jsonl", "real-SFT.jsonl"]
    answers = read_jsonl(run / "eval" / "mt_bench" / "model_answer" / "real-M1.jsonl")
    assert len(answers) == 2 and all(len(a["choices"][0]["turns"]) == 2 for a in answers)
    outputs = json.load(open(run / "eval" / "alpaca_eval" / "real-SFT" / "model_outputs.json"))
    assert outputs[0].keys() == {"instruction", "output", "generator", "dataset"}
    text = open(run / "report.md").read()
    assert not re.search(r"\bnan\b", text) and "mean grade" not in text and "judge coverage %" in text
    assert "alpaca_eval --model_outputs=" in text and "EFT targets from" in text
    assert "warning: eval_prompts: 1 of its 2 questions are training prompts of the seed data" in p.stdout
    assert text.count("; trained on 1 of its 2 questions (seed IFT 1)\n") == 2  # the SFT baseline and M1
    assert text.count("; trained on 0 of its 2 questions\n") == 2  # MT-Bench


def test_a_run_warns_at_the_start_when_alpaca_evals_oasst_prompts_are_seed_training_prompts(tmp_path, capsys):
    # oasst1's validation root prompts are AlpacaEval's 188 oasst instructions (shared/data/README.md):
    # prepared without --eval_files, most of them become IFT or EFT training prompts
    val = shared_file("oasst1", "en-validation.jsonl")
    roots = [m["text"] for m in read_jsonl(val) if m["parent_id"] is None and m["role"] == "prompter"]
    (tmp_path / "alpaca.json").write_text(json.dumps([{"instruction": x, "dataset": "oasst"} for x in roots]))
    for name, extra in (("shared", []), ("held_out", ["--eval_files", val])):
        p = subprocess.run([sys.executable, "-m", "data.prepare_oasst", val, "--out", str(tmp_path / name), *extra],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
    trained = {x["prompt"] for f in ("ift", "eft_train") for x in read_jsonl(tmp_path / "shared" / f"{f}.jsonl")}
    n = len(set(roots) & trained)
    assert len(roots) == 188 and 100 < n < 188
    capsys.readouterr()
    S.warn_of_benchmarks_in_seed(settings(seed_data=str(tmp_path / "shared"), eval_prompts=str(tmp_path / "alpaca.json")))
    said = capsys.readouterr().out
    assert re.search(rf"warning: eval_prompts: {n} of its 188 questions are training prompts of the seed data "
                     rf"\(.*shared: seed IFT \d+, EFT training \d+;", said), said
    assert "--eval_files=<the validation split>" in said
    # prepared as the README says, the validation prompts are the EFT eval set: nothing to warn of
    S.warn_of_benchmarks_in_seed(settings(seed_data=str(tmp_path / "held_out"),
                                          eval_prompts=str(tmp_path / "alpaca.json")))
    assert capsys.readouterr().out == ""


def test_prepare_oasst_warns_when_a_set_comes_out_empty(tmp_path):
    val = shared_file("oasst1", "en-validation.jsonl")
    cmd = [sys.executable, "-m", "data.prepare_oasst", val, "--out", str(tmp_path / "a")]
    p = subprocess.run(cmd + ["--eval_files", val], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0
    warnings = [line for line in p.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "ift.jsonl will be empty" in warnings[0] and "eft_train.jsonl" in warnings[1]
    assert "add the train split" in warnings[0]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)  # the default split: all three
    assert p.returncode == 0 and "warning" not in p.stderr


def test_eft_judgments_setting_errors(tmp_path):
    def fails(*args):
        p = subprocess.run([sys.executable, "selfreward.py", f"--out_root={tmp_path}", "--progress=False", *args],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and p.stderr.startswith("error: the run cannot start;"), p.stderr[-2000:]
        return p.stderr.strip().splitlines()[1:]  # one line per problem
    assert fails("--run_name=a", f"--eft_judgments={tmp_path / 'none.jsonl'}") == [
        f"  - eft_judgments: data file not found: {tmp_path / 'none.jsonl'}",
        f"  - eft_judgments = '{tmp_path / 'none.jsonl'}': supplies judgments for EFT groups (real seed data); "
        "the toy seed's EFT training records are already targets"]
    write_jsonl(tmp_path / "j.jsonl", [{"prompt": "p", "responses": ["a"], "judgments": [["Score: 1"]]}])
    assert fails("--run_name=b", f"--eft_judgments={tmp_path / 'j.jsonl'}")[0].startswith(
        f"  - eft_judgments = '{tmp_path / 'j.jsonl'}': supplies judgments for EFT groups (real seed data)")
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_smollm2_cpu_config_applies_and_its_data_steps_give_what_it_names(tmp_path):
    """The real-model CPU config: every key a loop setting of its type, and the
    preparation its header gives yields the seed sets and judge file it names."""
    path = os.path.join(ROOT, "config", "smollm2_oasst_cpu.py")
    c = configurator.settings(S.DEFAULTS, configurator.apply(dict(S.DEFAULTS), [path]))
    assert c.seed_data == "data/oasst_val" and c.eft_judgments == "data/judge_gemini20.jsonl" and c.iterations == 1
    header = open(path).read()
    assert "python -m data.prepare_oasst ../shared/data/oasst1/en-validation.jsonl --out=data/oasst_val" in header
    assert "head -n 20 ../shared/data/judge_outputs/scores_gemini200.jsonl > data/judge_gemini20.jsonl" in header
    val = shared_file("oasst1", "en-validation.jsonl")
    from data import prepare_oasst
    sets, _, _ = prepare_oasst.prepare([val])
    assert (len(sets["ift"]), len(sets["eft_train"]), len(sets["eft_eval"])) == (109, 55, 22)  # as the config says
    lines = open(shared_file("judge_outputs", "scores_gemini200.jsonl")).readlines()[:20]
    (tmp_path / "j.jsonl").write_text("".join(lines))
    groups, judged = read_judge_file(str(tmp_path / "j.jsonl"))
    held_out = {" ".join(g["prompt"].split()).lower() for g in sets["eft_eval"]}
    assert len(groups) == 20 and not {" ".join(g["prompt"].split()).lower() for g in groups} & held_out
    assert 40 <= len(eft_targets(groups, judged)) <= 80


def loop_settings(**kw):
    """The loop's defaults, progress off (the tests below need no small sizes)."""
    return configurator.settings(S.DEFAULTS, {"progress": False, **kw})


def test_a_judge_files_own_ranks_are_kept_where_the_seed_ranks_only_part_of_the_group():
    """Mutant: judge_file_targets attaches the seed's ranks whenever the seed has the
    prompt (drops `g["ranks"] is None and`). The file ranks a above z and scores z higher:
    it disagrees with its own ranks, so nothing is kept. The seed ranks a and b (not z):
    with the file's ranks thrown away the group counts as unranked and both are kept."""
    groups = [{"prompt": "Q", "responses": ["a", "z"], "ranks": [0, 1]}]
    judged = [[{"response": "a", "judgments": ["Score: 1"], "scores": [1]},
               {"response": "z", "judgments": ["Score: 5"], "scores": [5]}]]
    seed = [{"prompt": "Q", "responses": ["a", "b"], "ranks": [0, 1]}]
    targets, kept, _ = J.judge_file_targets(groups, judged, seed, [], [])
    assert kept[0][0]["ranks"] == [0, 1] and targets == []



def test_the_judge_metrics_of_an_evaluation_are_against_each_groups_human_ranks(tmp_path, monkeypatch):
    """Mutant: stage_eval passes the ranks sorted (or regroups wrongly). Group p ranks
    b > c > a and the judge scores b 5, c 3, a 1; group q ranks e > d and it scores
    e 4, d 2: all 4 pairs right. Against sorted ranks 1 of 4 would be."""
    r = Run(str(tmp_path / "run"), loop_settings(), D.Env())
    write_jsonl(r.path("seed", "eft_eval.jsonl"), [{"prompt": "p", "responses": ["a", "b", "c"], "ranks": [2, 0, 1]},
                                                   {"prompt": "q", "responses": ["d", "e"], "ranks": [1, 0]}])
    monkeypatch.setattr(S, "load_for_sampling", lambda r, path: (None, types.SimpleNamespace(stop_ids=[2])))
    score = {"a": 1, "b": 5, "c": 3, "d": 2, "e": 4}

    def judge(net, tok, prompts, responses, **kw):
        assert prompts == ["p", "p", "p", "q", "q"] and responses == list("abcde")
        return [{"prompt": p, "response": x, "judgments": [f"Score: {score[x]}"], "scores": [score[x]],
                 "score": float(score[x]), "too_long": False} for p, x in zip(prompts, responses)]
    monkeypatch.setattr(S.J, "judge", judge)
    j = S.stage_eval(loop_settings(), r, "M1", "M1")["judge"]
    assert (j["pairwise_accuracy"], j["exact_match"], j["n_pairs"], j["n_prompts"]) == (1.0, 1.0, 4, 2)


def test_eval_outputs_on_real_data_list_no_test_answers(tmp_path):
    """Mutant: eval_outputs lists {name}_test.jsonl whatever the seed data. On real data
    stage_eval writes no test answers: a listed file that never exists counts as gone,
    and the evaluation would be made again whenever the report runs."""
    r = types.SimpleNamespace(path=lambda *p: str(tmp_path.joinpath(*p)))
    c = loop_settings(seed_data=str(tmp_path / "oasst"), eval_prompts="alpaca.json", run_name="x")
    assert S.eval_outputs(c, r, "M1") == [str(tmp_path / "eval" / "M1_judgments.jsonl"),
                                          S.E.alpaca_eval_path(str(tmp_path / "eval"), "x-M1")]


def test_a_models_evaluation_makes_its_eft_targets_again_before_counting_benchmark_questions(tmp_path, monkeypatch):
    """Mutant: stage_eval no longer calls remake_if_gone("eft_targets"): with
    eft_train_targets.jsonl deleted, trained_prompts would fall back to every seed EFT
    group (not the targets M1 learned) and count the wrong questions."""
    r = Run(str(tmp_path / "run"), loop_settings(), D.Env())
    write_jsonl(r.path("seed", "ift.jsonl"), [{"prompt": "Name a fruit.", "response": "Apple."}])
    write_jsonl(r.path("iter1", "pairs.jsonl"), [{"prompt": "Name a tree.", "chosen": "Oak.", "rejected": "7"}])
    (tmp_path / "alpaca.json").write_text(json.dumps([{"instruction": "Say hi."}]))
    calls = []
    monkeypatch.setattr(r, "remake_if_gone", lambda name, reader: calls.append((name, reader)))
    monkeypatch.setattr(S, "load_for_sampling", lambda r, path: (None, types.SimpleNamespace(stop_ids=[2])))
    monkeypatch.setattr(S.E, "answer_alpaca_eval", lambda net, tok, prompts, model_id, *a, **kw: [
        {"instruction": x["instruction"], "output": "Hi.", "generator": model_id} for x in prompts])
    S.stage_eval(loop_settings(eval_judge=False, eval_prompts=str(tmp_path / "alpaca.json")), r, "M2", "M2")
    assert calls == [("eft_targets", "eval_M2"), ("iter1_pairs", "eval_M2")]


def test_ready_eft_targets_without_a_question_add_no_trained_prompt(tmp_path):
    """Mutant: trained_prompts drops `if "instruction" in x or "responses" in x`. A real
    seed's eft_train.jsonl of ready targets: a record naming its question counts by that
    question; one without (its prompt is a whole judge prompt) counts nothing."""
    write_jsonl(tmp_path / "ift.jsonl", [{"prompt": "Name a fruit.", "response": "Apple."}])
    write_jsonl(tmp_path / "eft_train.jsonl", [
        {"prompt": J.judge_prompt("Name a tree.", "Oak."), "response": "Right.\nScore: 5", "instruction": "Name a tree."},
        {"prompt": J.judge_prompt("Name a city.", "Rome."), "response": "Right.\nScore: 4"}])
    assert S.trained_prompts(str(tmp_path), "M1")["EFT training"] == ["Name a tree."]


def test_a_written_prompt_that_is_a_seed_prompt_is_an_exact_duplicate(tmp_path, monkeypatch):
    """Mutant: `seen` leaves out the seed prompts (the near-duplicate filter then drops the
    copy under another reason, or keeps it above a threshold of 1). The writer writes a
    seed prompt in other capitals and spacing, then a new prompt."""
    write_jsonl(tmp_path / "seed" / "ift.jsonl", [{"prompt": f"Say hi to {x}.", "response": "hi"} for x in "ABCDEFGH"])
    written = ["say  HI to c.", "Explain how a rainbow forms."]
    script_the_prompt_writer(monkeypatch, S, written)
    r = types.SimpleNamespace(path=lambda *p: str(tmp_path.joinpath(*p)), fingerprints={}, current=None, env=D.Env())
    c = types.SimpleNamespace(**{**S.DEFAULTS, "n_prompts": 2, "progress": False})
    info = S.stage_prompts(c, r, 1, "writer")
    assert info["dropped"] == {"exact duplicate": 1} and info["kept"] == 1



def test_a_judge_file_still_needs_judge_room_when_the_loop_iterates(toy_tokenizer_path):
    """Mutant: judge_room skips whenever eft_judgments is set. The file spares only the EFT
    targets' judging; with iterations the loop's model judges its candidates, so a context
    with no room for the judge prompt and max_judge_tokens is refused; with iterations=0 not."""
    tok = Tokenizer(toy_tokenizer_path)
    own = len(J.judge_prompt_ids(tok, "", ""))
    args = M.preset("toy-tiny", vocab_size=tok.vocab_size, max_seq_len=own + 8)
    # (without the file the SFT baseline judges the EFT targets itself: refused with iterations=0 too)
    for iterations, judged, refused in ((1, "judged.jsonl", True), (0, "judged.jsonl", False), (0, "", True)):
        c = loop_settings(eft_judgments=judged, iterations=iterations, max_judge_tokens=8)
        p = validate.Problems(c)
        validate.judge_room(p, c, args, tok)
        assert [x.startswith(f"max_judge_tokens = 8: with the judge prompt's own {own} tokens") for x in p.found] \
            == ([True] if refused else []), p.found


def test_a_prompt_writer_needs_no_chat_template(tmp_path):
    """Mutant: check_loop checks prompt_writer as a chat model (chats=True). The writer
    continues a plain-text list: a checkpoint whose chat template is none of the formats
    this project writes (it could not be init_from) is fine as the writer."""
    from tokenizers import Tokenizer as HFTok, models, pre_tokenizers

    from checkpoint import save_model
    tk = HFTok(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens(["<s>", "</s>"])
    (tmp_path / "tk").mkdir()
    tk.save(str(tmp_path / "tk" / "tokenizer.json"))
    (tmp_path / "tk" / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>",  # Zephyr's format: none this project writes
        "chat_template": "{% for m in messages %}<|{{ m['role'] }}|>\\n{{ m['content'] }}</s>{% endfor %}"}))
    tok = Tokenizer(tmp_path / "tk")
    assert tok.template_problem  # (a chat could not be written in it)
    save_model(M.Transformer(M.preset("toy-tiny", vocab_size=tok.vocab_size)), str(tmp_path / "writer"),
               tokenizer_path=str(tmp_path / "tk"))
    assert validate.check_loop(loop_settings(prompt_writer=str(tmp_path / "writer")), 1).found == []



def test_the_sft_baselines_eft_targets_line(tmp_path):
    """Mutants: the source said as 'from None' for the SFT baseline's own judging, and
    the count of responses too long to judge left out."""
    r = types.SimpleNamespace(path=lambda *p: str(tmp_path.joinpath(*p)))
    stages = {"eft_targets": {"groups": 10, "targets": 6, "judgments": 90, "judgments_with_score": 40, "too_long": 3}}
    assert report.iteration_lines(r, stages, 0) == [
        "- EFT targets written by the SFT baseline: 6 kept; 40 of 90 judgments had a score; "
        "3 responses too long to judge"]


def test_a_real_data_row_without_judge_figures_shows_dashes():
    """Mutant: the 'too long to judge' cell shows 0, not '-', for a model that was not judged."""
    rows, _ = report.real_rows(["M1"], {"M1": {"alpaca_eval": {"answered": 5, "too_long": 1, "avg_length": 12.0}}})
    assert rows[2] == "| M1 | - | - | - | - | - | - | - | 5 (1) | 12.0 | - | - |"
