"""drill.py, the comparison drill: its lines say yes exactly where the word
meets the ask, its evaluation reads the logits at the right places (a model
that peeks at the next token scores 100%, one that always says yes 50%), and
a short run goes end to end."""
import random
import re

import pytest
import torch
import torch.nn as nn

import drill
from configurator import settings


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return drill.drill_tokenizer(str(tmp_path_factory.mktemp("drill")), 0.5)


def test_check_lines_say_yes_where_the_word_meets_the_ask():
    rng = random.Random(1)
    lines = [drill.check_line(rng, 0.3) for _ in range(2000)]
    for prompt, text, met in lines:
        assert prompt is None  # read back off the text, independently of check_line's own flags
        m = re.fullmatch(r"([A-Z]+): starts with (\w), asked (\w): (yes|no); ends with (\w), asked (\w): (yes|no); "
                         r"has (\d) letters, asked (\d): (yes|no)\. (Right|Not right)\.", text)
        assert m, text
        word, *rest, verdict = m.groups()
        asks = [rest[0:3], rest[3:6], rest[6:9]]
        assert (word[0], word[-1], str(len(word))) == tuple(a[0] for a in asks)
        assert [a[1] == a[0] for a in asks] == list(met) == [a[2] == "yes" for a in asks]
        assert (verdict == "Right") == all(met)
    share = sum(map(sum, (met for _, _, met in lines))) / (3 * len(lines))
    assert 0.67 < share < 0.73  # p_no = 0.3: seven asks in ten met


class Peek(nn.Module):
    """A 'model' whose logits at each position put the next token first:
    what a model that compares perfectly would prefer."""
    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, tokens):
        logits = torch.zeros(*tokens.shape, self.vocab_size)
        logits[0, torch.arange(tokens.shape[1] - 1), tokens[0, 1:]] = 1.0
        return logits


class AlwaysYes(Peek):
    def __init__(self, vocab_size, yes):
        super().__init__(vocab_size)
        self.yes = yes

    def forward(self, tokens):
        logits = torch.zeros(*tokens.shape, self.vocab_size)
        logits[..., self.yes] = 1.0
        return logits


def test_evaluation_reads_each_yes_and_no(tok):
    yes, no = drill.yes_no_ids(tok)
    lines = [drill.check_line(random.Random(i), 0.5) for i in range(60)]
    met = {(a, m): sum(line_met[k] == m for _, _, line_met in lines) for k, a in enumerate(drill.ASKS)
           for m in (True, False)}
    peek = drill.score(Peek(tok.vocab_size), tok, lines, yes, no)
    assert peek == {key: [n, n] for key, n in met.items()} and drill.balanced_accuracy(peek) == 1.0
    always = drill.score(AlwaysYes(tok.vocab_size, yes), tok, lines, yes, no)
    assert always == {(a, m): [n if m else 0, n] for (a, m), n in met.items()}
    assert drill.balanced_accuracy(always) == 0.5
    assert min(met.values()) > 0  # both kinds of pair, for every ask


def test_judge_items_are_the_judges_own_records(tok):
    """form='judge': the judge prompt with the bare word as the response and
    the check opening the judgment, as EFT writes them; only the judgment's
    yes/no words are read, though the rubric is read before them."""
    from judge import judge_prompt
    yes, no = drill.yes_no_ids(tok)
    items = [drill.check_line(random.Random(i), 0.5, "judge") for i in range(40)]
    for prompt, text, met in items:
        word = re.search(r"<response>([A-Z]+)</response>", prompt).group(1)
        instruction = re.search(r"User: (.*)\n<response>", prompt).group(1)
        assert prompt == judge_prompt(instruction, word)
        assert re.match(rf"{word}: starts with \w, asked \w: (yes|no); ", text) and re.search(r"\nScore: \d$", text)
        assert [x == "yes" for x in re.findall(r"asked \w: (yes|no)", text)] == list(met)
    # the same draws as the quiz form: the same words and the same met asks
    assert [met for _, _, met in items] == [drill.check_line(random.Random(i), 0.5, "quiz")[2] for i in range(40)]
    # a yes and a no in the instruction are read by the model but not scored: three yes/no words an item
    prompt, text, met = items[0]
    asked = judge_prompt("Say yes or no, then invent a word.", re.search(r"<response>(\w+)<", prompt).group(1))
    assert {yes, no} <= set(tok.encode(asked))
    items.append((asked, text, met))
    peek = drill.score(Peek(tok.vocab_size), tok, items, yes, no)
    assert drill.balanced_accuracy(peek) == 1.0 and sum(of for _, of in peek.values()) == 3 * len(items)
    # a run without judge_compares: its judgments have no verdict after the check
    plain = drill.check_line(random.Random(0), 0.5, "judge", compares=False)
    assert plain[1] != text and plain[1] in (text.replace(" Not right.", "", 1), text.replace(" Right.", "", 1))


def test_drill_batches_train_on_the_yes_and_no_words_or_on_every_token(tok):
    yes, no = drill.yes_no_ids(tok)
    c = settings(drill.DEFAULTS, {"batch_size": 3, "seq_len": 64, "loss": "yesno"})
    x, y = drill.batch(tok, random.Random(0), c, yes, no)
    assert x.shape == y.shape == (3, 64)
    kept = y[y != -100]
    assert set(kept.tolist()) == {yes, no}  # both answers are trained on, nothing else
    masked = y[:, :-1] != -100
    assert torch.equal(y[:, :-1][masked], x[:, 1:][masked])  # each kept target is the next input token
    c = settings(drill.DEFAULTS, {"batch_size": 3, "seq_len": 64, "loss": "lm"})
    x, y = drill.batch(tok, random.Random(0), c, yes, no)
    assert (y != -100).all() and torch.equal(y[:, :-1], x[:, 1:])


def test_a_short_drill_runs(tok):
    c = settings(drill.DEFAULTS, {"model": "toy-tiny", "steps": 2, "eval_every": 1, "eval_lines": 10,
                                  "batch_size": 2, "seq_len": 64})
    results = drill.drill(c, tok)
    assert [step for step, _ in results] == [1, 2]
    assert all(sum(of for _, of in counts.values()) == 30 for _, counts in results)
    bad = settings(drill.DEFAULTS, {"loss": "all", "p_no": 1.0, "steps": 0, "tokenizer": "no/such.model"})
    assert drill.check(bad).found == ["loss = 'all': must be 'yesno' or 'lm'", "p_no = 1.0: must be in (0, 1)",
                                      "steps = 0: must be >= 1", "tokenizer = 'no/such.model': no such file"]
    assert drill.check(settings(drill.DEFAULTS, {"form": "essay"})).found == [
        "form = 'essay': must be '' (line to train, quiz to evaluate), 'line', 'quiz' or 'judge'"]
    assert drill.check(settings(drill.DEFAULTS, {"form": "judge"})).found == [
        "form = 'judge': 'judge' is for --evaluate only (a judge prompt is longer than a training row)"]
    assert drill.check(settings(drill.DEFAULTS, {"evaluate": "no/such/folder"})).found[0].startswith("evaluate: ")
    assert drill.check(settings(drill.DEFAULTS, {})).found == []


def test_a_checkpoint_is_evaluated_on_quiz_items(tok, tmp_path, monkeypatch):
    from checkpoint import save_model
    from model import Transformer, preset
    torch.manual_seed(0)
    # (max_seq_len: this tokenizer has no rubric pieces, so a judge prompt is about 1,600 tokens)
    save_model(Transformer(preset("toy-tiny", vocab_size=tok.vocab_size, max_seq_len=2048)), str(tmp_path / "M0"),
               tok.model_path)
    c = settings(drill.DEFAULTS, {"evaluate": str(tmp_path / "M0"), "eval_lines": 12})
    firsts = []  # the first token of each item the model reads: BOS, as M0 read each pretraining document
    forward = Transformer.forward
    monkeypatch.setattr(Transformer, "forward", lambda self, ids, *a, **kw: (
        firsts.append(int(ids[0, 0])), forward(self, ids, *a, **kw))[1])
    counts = drill.evaluate_checkpoint(c)
    assert sum(of for _, of in counts.values()) == 36 and firsts == [tok.bos_id] * 12
    _, text, _ = drill.held_out_lines(settings(drill.DEFAULTS, {"form": "quiz", "eval_lines": 1}))[0]
    assert drill.held_out_lines(c)[0][1].startswith("Q: ")  # with evaluate, quiz items unless form says otherwise
    judged = drill.evaluate_checkpoint(settings(drill.DEFAULTS, {**vars(c), "form": "judge"}))
    assert sum(of for _, of in judged.values()) == 36
    assert drill.check(c).found == []  # a checkpoint outside a run: nothing says it never read checks
    # a run's M0 (out/<run>/M0 beside settings.json) must have read checks in this form
    (tmp_path / "settings.json").write_text('{"check_each_ask": false}')
    assert drill.check(c).found == [f"evaluate = {str(tmp_path / 'M0')!r}: comes from a run without "
                                    "--check_each_ask: its M0 never read checks in the form the drill scores"]
    (tmp_path / "settings.json").write_text('{"check_each_ask": true}')
    assert drill.check(c).found == []
    assert re.fullmatch(r"Q: .+\nStudent: ([A-Z]+)\nA: \1: starts with .+\.", text)
    # the judge's records as that run wrote them: in its chat template, with no verdict without judge_compares
    from tokenizer import Tokenizer
    (tmp_path / "settings.json").write_text('{"judge_compares": false, "chat_template": "llama2"}')
    templates, read = [], []
    monkeypatch.setattr(drill, "Tokenizer", lambda path, template="": (
        templates.append(template), Tokenizer(path, template))[1])
    monkeypatch.setattr(drill, "score", lambda model, tok, lines, *a, **kw: read.extend(lines))
    judge = settings(drill.DEFAULTS, {**vars(c), "form": "judge"})
    drill.evaluate_checkpoint(judge)
    assert templates == ["llama2"] and read == drill.held_out_lines(judge, compares=False)
    # a checkpoint outside a run (no settings.json): the judge's records with their verdicts
    (tmp_path / "settings.json").unlink()
    read.clear()
    drill.evaluate_checkpoint(judge)
    assert read == drill.held_out_lines(judge, compares=True) != drill.held_out_lines(judge, compares=False)


def test_rows_longer_than_the_context_and_unreadable_tokenizers_are_refused_up_front(tok, tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_text("not a model")
    found = drill.check(settings(drill.DEFAULTS, {"seq_len": 100000, "tokenizer": str(bad)})).found
    assert found[0] == "seq_len = 100000: must be <= 1024, the context of toy-small"
    assert found[1].startswith(f"tokenizer = {str(bad)!r}: {bad}: cannot read it as a SentencePiece model")
    assert len(found) == 2
    assert drill.check(settings(drill.DEFAULTS, {"model": "toy-tiny", "seq_len": 513})).found == [
        "seq_len = 513: must be <= 512, the context of toy-tiny"]
    assert drill.check(settings(drill.DEFAULTS, {"seq_len": 1024, "tokenizer": tok.model_path})).found == []


def test_batch_rows_are_check_lines_one_after_another(tok):
    """A row is the drill's check lines (drawn with its p_no, from the rng it
    is given), each ended by a newline, until seq_len + 1 tokens: a row whose
    lines end exactly at seq_len takes one token of the next line as its last
    target."""
    rng = random.Random(5)
    texts = [drill.check_line(rng, 0.1)[1] + "\n" for _ in range(3)]
    first, second, third = (tok.encode(t) for t in texts)
    c = settings(drill.DEFAULTS, {"batch_size": 1, "seq_len": len(first) + len(second), "loss": "lm", "p_no": 0.1})
    x, y = drill.batch(tok, random.Random(5), c, *drill.yes_no_ids(tok))
    assert x[0].tolist() == first + second and y[0, -1].item() == third[0]


def test_yes_and_no_must_be_pieces_of_their_own():
    """A tokenizer that writes 'yes' and 'no' in pieces (here one a
    character) is refused: the drill reads one logit for each."""
    class Characters:
        encode = staticmethod(lambda text: [ord(ch) for ch in text])
        decode = staticmethod(lambda ids: "".join(map(chr, ids)))
    with pytest.raises(ValueError, match="in two pieces of their own"):
        drill.yes_no_ids(Characters())


class Zeros(Peek):
    """Every logit equal: "yes" is never the higher one."""
    def forward(self, tokens):
        return torch.zeros(*tokens.shape, self.vocab_size)


def test_scoring_counts_a_tie_as_no_leaves_the_mode_as_it_was_and_wants_three_answers(tok):
    """A yes only where its logit is higher (a tie is a no); the model goes
    back to training after the scoring (the drill scores mid-training) or
    stays in eval mode; a check without three yes/no words is an error; with
    no differing pair at all, balanced accuracy is half the share right on
    the equal ones."""
    yes, no = drill.yes_no_ids(tok)
    lines = [drill.check_line(random.Random(i), 0.5) for i in range(20)]
    met = {m: sum(line_met.count(m) for _, _, line_met in lines) for m in (True, False)}
    model = Zeros(tok.vocab_size).train()
    counts = drill.score(model, tok, lines, yes, no)
    assert model.training
    assert sum(counts[(a, True)][0] for a in drill.ASKS) == 0
    assert sum(counts[(a, False)][0] for a in drill.ASKS) == met[False] > 0
    drill.score(model.eval(), tok, lines, yes, no)
    assert not model.training
    prompt, text, line_met = lines[0]
    with pytest.raises(ValueError, match="expected three yes/no words in .*, found 2"):
        drill.score(model, tok, [(prompt, text.rsplit(";", 1)[0] + ".", line_met)], yes, no)
    all_met = {(a, m): [3, 4] if m else [0, 0] for a in drill.ASKS for m in (True, False)}
    assert drill.balanced_accuracy(all_met) == 0.375


def test_held_out_lines_have_a_seed_of_their_own(tok):
    """The held-out lines do not change with the training seed, and are not
    the lines the training draws."""
    c = settings(drill.DEFAULTS, {"eval_lines": 5})
    held_out = drill.held_out_lines(c)
    assert drill.held_out_lines(settings(drill.DEFAULTS, {"eval_lines": 5, "seed": 7})) == held_out
    rng = random.Random(c.seed)  # the training lines' first draws
    assert [drill.check_line(rng, c.p_no)[1] for _ in range(5)] != [text for _, text, _ in held_out]


def test_a_short_drill_warms_up_evaluates_at_the_end_and_is_seeded(tok, monkeypatch, capsys):
    """The learning rate rises linearly over warmup steps and then holds at
    lr; there is an evaluation every eval_every steps and at the last; the
    same seed trains the same model whatever torch's random state."""
    lrs = []
    adamw_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **kw: (
        lrs.append(self.param_groups[0]["lr"]), adamw_step(self, *a, **kw))[1])
    c = settings(drill.DEFAULTS, {"model": "toy-tiny", "steps": 3, "eval_every": 2, "eval_lines": 2, "batch_size": 1,
                                  "seq_len": 32, "lr": 1e-3, "warmup": 2})
    losses = []
    for torch_seed in (1, 2):
        torch.manual_seed(torch_seed)
        assert [step for step, _ in drill.drill(c, tok)] == [2, 3]
        losses.append(re.findall(r"loss (\S+)", capsys.readouterr().out))
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3] * 2)
    assert losses[0] == losses[1] and len(losses[0]) == 2


def test_each_drill_step_steps_on_its_own_clipped_gradient(tok, monkeypatch):
    """Each step's gradient is its own batch's (zeroed before backward, not
    added to the steps before), clipped to norm 1 before AdamW steps: step
    3's gradient recomputed from that step's weights and batch (toy-tiny has
    no dropout) equals the one the drill had; its norm before clipping is
    well above 1, so the clip is at work."""
    models, batches, before_clip, norms = [], [], [], []
    real_model, real_batch, real_clip = drill.Transformer, drill.batch, torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(drill, "Transformer", lambda args: models.append(real_model(args)) or models[-1])
    monkeypatch.setattr(drill, "batch", lambda *a: batches.append(real_batch(*a)) or batches[-1])

    def clip(params, max_norm):
        params = list(params)
        before_clip.append(([p.detach().clone() for p in params], [p.grad.clone() for p in params]))
        return real_clip(params, max_norm)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    adamw_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **kw: (norms.append(torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for g in self.param_groups for p in g["params"]])).item()),
        adamw_step(self, *a, **kw))[1])
    c = settings(drill.DEFAULTS, {"model": "toy-tiny", "steps": 3, "eval_every": 3, "eval_lines": 2, "batch_size": 2,
                                  "seq_len": 32})
    drill.drill(c, tok)
    assert len(norms) == 3 and max(norms) <= 1 + 1e-5
    weights, grads = before_clip[2]
    fresh = real_model(models[0].args)
    with torch.no_grad():
        for p, w in zip(fresh.parameters(), weights):
            p.copy_(w)
    fresh(*batches[2])[1].backward()
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) > 2
    for p, g in zip(fresh.parameters(), grads):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-7)


def test_warmup_may_be_zero_and_evaluations_need_a_line():
    """warmup may be 0 but not negative; eval_every and eval_lines must be at
    least 1."""
    check = lambda **kw: drill.check(settings(drill.DEFAULTS, kw)).found
    assert check(warmup=0) == []
    assert check(warmup=-1, eval_every=0, eval_lines=0) == [
        "eval_every = 0: must be >= 1", "eval_lines = 0: must be >= 1", "warmup = -1: must be >= 0"]


def test_balanced_accuracy_pools_the_three_asks():
    """Shares pooled over first, last and n: right on met asks 2+2+0 of
    2+2+4 = 0.5, on missed ones 0+2+4 of 2+2+4 = 0.75; their mean 0.625."""
    counts = {("first", True): [2, 2], ("first", False): [0, 2], ("last", True): [2, 2], ("last", False): [2, 2],
              ("n", True): [0, 4], ("n", False): [4, 4]}
    assert drill.balanced_accuracy(counts) == pytest.approx(0.625)
