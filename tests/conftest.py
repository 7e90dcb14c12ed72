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
