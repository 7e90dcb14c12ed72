"""Shared test setup: import the top-level scripts, find ../shared/data."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Real data lives outside the project (never committed); override with
# SELFREWARD_SHARED_DATA=/path/to/data.
SHARED_DATA = os.environ.get("SELFREWARD_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


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
