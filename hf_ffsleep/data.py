"""TinyStories as 🤗 datasets: one story per row, then packed into fixed-length token blocks for causal LM training.

`load_tinystories` reads local `<|endoftext|>`-separated text files (or the Hub dataset `roneneldan/TinyStories`)
into a `DatasetDict` with `train` and `validation` splits and a `text` column, cached on disk as Arrow.

`pack_dataset` is transformers' `run_clm` recipe: tokenise every story, append `<|endoftext|>`, concatenate, and
cut into blocks of `block_size` tokens. Each block also records `num_bytes`, the UTF-8 bytes its tokens decode to,
so that bits per byte over any set of blocks is exact:

    bpb = sum(token losses in nats) / (ln 2 * sum(num_bytes)).
"""

from __future__ import annotations

import os
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .tokenization import EOT, iter_documents

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedTokenizerBase

DATA_ENV_VAR = "HF_FFSLEEP_DATA"
"""Environment variable naming a local TinyStories directory; used when no directory or files are passed."""

HUB_DATASET = "roneneldan/TinyStories"
"""Hub dataset used when no local data is configured (splits `train` and `validation`, column `text`)."""

SPLIT_PATTERNS = {"train": "train-*.txt", "validation": "valid-*.txt"}
"""File name patterns of each split in a local data directory."""


def _generate_stories(files: list[str]):
    """Yield `{"text": story}` for every story in `files`: separators cut out, surrounding newlines stripped."""
    for document in iter_documents(files, EOT):
        text = document.strip("\r\n")
        if text:
            yield {"text": text}


def _file_stamp(path: Path) -> tuple[str, int, int]:
    """(absolute path, size, mtime in ns): cheap identity of a file's content, for the cache fingerprint."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _resolve_split_files(
    data_dir: str | os.PathLike | None, data_files: dict[str, Any] | None
) -> dict[str, list[Path]]:
    """Map `train` / `validation` to sorted file lists, from explicit `data_files` or the patterns in `data_dir`."""
    if data_files is not None:
        aliases = {"valid": "validation"}
        base = Path(data_dir) if data_dir is not None else Path()
        splits = {}
        for split, files in data_files.items():
            files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
            splits[aliases.get(split, split)] = [base / f for f in files]
    else:
        directory = Path(data_dir)
        if not directory.is_dir():
            raise FileNotFoundError(f"TinyStories data directory not found: {directory}")
        splits = {split: sorted(directory.glob(pattern)) for split, pattern in SPLIT_PATTERNS.items()}
        lacking = [f"{SPLIT_PATTERNS[s]} ({s})" for s, files in splits.items() if not files]
        if lacking:
            raise FileNotFoundError(f"TinyStories data directory {directory} has no {' and no '.join(lacking)} files.")
    for split in SPLIT_PATTERNS:
        if not splits.get(split):
            raise ValueError(f"data_files needs a non-empty '{split}' entry, got keys {sorted(splits)}")
    missing = [str(f) for files in splits.values() for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"TinyStories file(s) not found: {', '.join(missing)}")
    return splits


def _load_local_split(files: list[Path], split: str, cache_dir: str | None) -> Dataset:
    """Build one split with `Dataset.from_generator`, cached as Arrow under `cache_dir`.

    The fingerprint (which names the cache) hashes the generator's code and every file's path, size and mtime,
    so editing a file or the parsing code rebuilds the cache, and anything else reuses it.
    """
    from datasets import Dataset, Features, NamedSplit, Value
    from datasets.fingerprint import Hasher

    stamps = [_file_stamp(f) for f in files]
    fingerprint = Hasher.hash({"generator": _generate_stories, "files": stamps, "split": split})
    return Dataset.from_generator(
        _generate_stories,
        features=Features({"text": Value("string")}),
        cache_dir=cache_dir,
        gen_kwargs={"files": [str(f) for f in files]},
        split=NamedSplit(split),
        fingerprint=fingerprint,
    )


def load_tinystories(
    data_dir: str | None = None, data_files: dict | None = None, *, cache_dir: str | None = None
) -> DatasetDict:
    """Load TinyStories as a `DatasetDict` with splits `train` and `validation`, one story per row (column `text`).

    Where the data comes from, first match wins:

    1. `data_files` (`{"train": [...], "validation": [...]}`, paths relative to `data_dir` if that is given too),
       or `data_dir`, holding `train-*.txt` and `valid-*.txt` (each split's files are read in sorted order);
    2. the directory in the environment variable `HF_FFSLEEP_DATA`;
    3. the Hub dataset `roneneldan/TinyStories`.

    Local files hold stories separated by `<|endoftext|>` (the dataset's own separator); each story is stripped of
    the newlines around it and empty stories are dropped. Local splits are built with `Dataset.from_generator`
    and cached as Arrow files in `cache_dir` (default: the 🤗 datasets cache), so later calls only memory-map them.

    Raises:
        FileNotFoundError: the directory or a file is missing, or the directory lacks train or valid files.
        ConnectionError: no local data is configured and the Hub cannot be reached.
    """
    if data_dir is None and data_files is None:
        data_dir = os.environ.get(DATA_ENV_VAR) or None
    if data_dir is None and data_files is None:
        return _load_from_hub(cache_dir)

    from datasets import DatasetDict

    splits = _resolve_split_files(data_dir, data_files)
    return DatasetDict({split: _load_local_split(files, split, cache_dir) for split, files in splits.items()})


def _load_from_hub(cache_dir: str | None) -> DatasetDict:
    """`load_dataset("roneneldan/TinyStories")`, with a hint towards local data when the Hub is out of reach."""
    from datasets import load_dataset

    try:
        return load_dataset(HUB_DATASET, cache_dir=cache_dir)
    except ConnectionError as error:
        raise ConnectionError(
            f"Could not load {HUB_DATASET} from the Hub ({error}). Pass data_dir=... or set {DATA_ENV_VAR} to a "
            f"directory holding train-*.txt and valid-*.txt."
        ) from error


def _tokenize_batch(batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, eos_token_id: int) -> dict:
    """Tokenise a batch of stories with no automatic special tokens, and end each story with eos."""
    encoded = tokenizer(batch["text"], add_special_tokens=False, verbose=False)
    return {"input_ids": [ids + [eos_token_id] for ids in encoded["input_ids"]]}


def _group_batch(batch: dict[str, list], block_size: int, byte_lengths: np.ndarray) -> dict:
    """`run_clm`'s `group_texts`: concatenate the batch and cut it into `block_size` blocks, dropping the tail.

    `num_bytes` of a block is `sum_t byte_lengths[x_t]` over its tokens.
    """
    import numpy as np

    stream = np.fromiter(chain.from_iterable(batch["input_ids"]), dtype=np.int64)
    blocks = stream[: len(stream) // block_size * block_size].reshape(-1, block_size)
    return {"input_ids": blocks, "num_bytes": byte_lengths[blocks].sum(axis=1)}


def pack_dataset(
    dataset: Dataset | DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    num_proc: int | None = None,
    *,
    batch_size: int = 1000,
) -> Dataset | DatasetDict:
    """Tokenise the `text` column and pack it into blocks of exactly `block_size` tokens.

    Steps (two batched `Dataset.map` calls, each cached by 🤗 datasets' fingerprinting):

    1. every story becomes `tokenizer(text) + [eos]` (`<|endoftext|>`), so stories stay separated as in the files;
    2. as in transformers' `run_clm` `group_texts`, each batch of `batch_size` stories is concatenated and cut into
       blocks of `block_size` tokens; the remainder of each batch (< `block_size` tokens) is dropped.

    Output columns: `input_ids` (`block_size` token ids) and `num_bytes` (UTF-8 bytes the block decodes to, from
    `token_byte_lengths`; eos counts the 13 bytes of `<|endoftext|>`). Blocks cover the decoded stream
    `story<|endoftext|>story<|endoftext|>...`, so bits per byte = `sum(nll) / ln 2 / sum(num_bytes)`.

    Args:
        dataset: A `Dataset` or `DatasetDict` with a `text` column (e.g. from `load_tinystories`).
        tokenizer: A byte-level tokenizer with an eos token (e.g. from `train_tokenizer`).
        block_size: Tokens per block (the training context length).
        num_proc: Processes for `map`.
        batch_size: Stories concatenated per `group_texts` batch.
    """
    from datasets import DatasetDict

    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token to separate stories.")
    if isinstance(dataset, DatasetDict):
        return DatasetDict(
            {split: pack_dataset(ds, tokenizer, block_size, num_proc, batch_size=batch_size) for split, ds in dataset.items()}
        )

    from .tokenization import token_byte_lengths

    tokenized = dataset.map(
        _tokenize_batch,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        fn_kwargs={"tokenizer": tokenizer, "eos_token_id": tokenizer.eos_token_id},
        desc="Tokenizing",
    )
    return tokenized.map(
        _group_batch,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=tokenized.column_names,
        fn_kwargs={"block_size": block_size, "byte_lengths": token_byte_lengths(tokenizer).numpy()},
        desc=f"Packing into blocks of {block_size}",
    )
