"""Shared pytest fixtures: offline Hugging Face, an isolated datasets cache, the TinyStories files, and a small
tokenizer trained once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests never touch the network. Set before huggingface_hub / datasets are imported (they read these at import).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]
TINYSTORIES_DIR = REPO_ROOT.parent / "shared" / "data" / "tinystories"
TOKENIZER_VOCAB_SIZE = 1024


@pytest.fixture(scope="session", autouse=True)
def _isolated_datasets_cache(tmp_path_factory):
    """Point the 🤗 datasets cache at a per-session temporary directory (also for subprocesses)."""
    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DATASETS_CACHE", str(cache))
        if "datasets" in sys.modules:  # imported already: its config read the old environment
            patch.setattr(sys.modules["datasets"].config, "HF_DATASETS_CACHE", cache)
        yield cache


@pytest.fixture(scope="session")
def tinystories_dir() -> Path:
    """The shared, read-only TinyStories text files (`train-*.txt`, `valid-*.txt`)."""
    if not (TINYSTORIES_DIR / "train-000.txt").is_file():
        pytest.fail(f"TinyStories data not found in {TINYSTORIES_DIR}: the tests need ../shared beside the repo")
    return TINYSTORIES_DIR


@pytest.fixture(scope="session")
def tokenizer_dir(tinystories_dir, tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer (vocab 1024) trained once on train-000.txt, saved with `save_pretrained`."""
    from hf_ffsleep.tokenization import train_tokenizer

    output = tmp_path_factory.mktemp("tokenizer") / "tinystories-bpe-1024"
    train_tokenizer([str(tinystories_dir / "train-000.txt")], TOKENIZER_VOCAB_SIZE, output_dir=str(output))
    return output


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    """The session tokenizer, loaded back with `AutoTokenizer.from_pretrained`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


# ----------------------------------------------------------------------------- model fixtures (issue #2)
TINY_CONFIG_KWARGS = dict(
    vocab_size=512,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=172,
    max_position_embeddings=256,
)
"""The acceptance config of issue #2: bank settings at their defaults."""

TINY_TOKENIZER_VOCAB_SIZE = 512  # matches TINY_CONFIG_KWARGS["vocab_size"]


@pytest.fixture
def attn_residual() -> bool:
    """Default for `tiny_config`; tests override it with `@pytest.mark.parametrize("attn_residual", [True, False])`."""
    return True


@pytest.fixture
def make_tiny_config(attn_residual):
    """Factory: the tiny acceptance config (with the test's `attn_residual`), plus any overrides."""
    from hf_ffsleep import FFSleepConfig

    def make(**overrides):
        return FFSleepConfig(**{**TINY_CONFIG_KWARGS, "attn_residual": attn_residual, **overrides})

    return make


@pytest.fixture
def tiny_config(make_tiny_config):
    """`FFSleepConfig(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
    intermediate_size=172, max_position_embeddings=256)`, bank settings at defaults."""
    return make_tiny_config()


@pytest.fixture(scope="session")
def tokenizer512_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer with vocab 512 (the tiny config's), trained once on all shared train-*.txt files.

    Uses the shared data directly (no skip): the data is part of the project's test environment.
    """
    from hf_ffsleep.tokenization import train_tokenizer

    files = sorted(str(f) for f in TINYSTORIES_DIR.glob("train-*.txt"))
    assert files, f"no train-*.txt in {TINYSTORIES_DIR}"
    output = tmp_path_factory.mktemp("tokenizer") / "tinystories-bpe-512"
    train_tokenizer(files, TINY_TOKENIZER_VOCAB_SIZE, output_dir=str(output))
    return output


@pytest.fixture(scope="session")
def tokenizer512(tokenizer512_dir):
    """The vocab-512 tokenizer, loaded back with `AutoTokenizer.from_pretrained`."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer512_dir)
    assert len(tok) == TINY_TOKENIZER_VOCAB_SIZE
    return tok


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's torch work on one thread: the tiny models gain nothing from more, and on a shared 2-core
    machine two spinning OpenMP threads are up to 30x slower when a neighbour holds a core."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
