"""Tests of `hf_ffsleep.data`: loading TinyStories as a `DatasetDict` and packing it into token blocks."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict

from hf_ffsleep.data import load_tinystories, pack_dataset
from hf_ffsleep.tokenization import EOT, token_byte_lengths

BLOCK_SIZE = 128


@pytest.fixture(scope="module")
def stories(tinystories_dir) -> DatasetDict:
    return load_tinystories(str(tinystories_dir))


def _write_split_files(directory, train="One.\n<|endoftext|>\nTwo.\n<|endoftext|>\n", valid="Three.\n<|endoftext|>\n"):
    directory.mkdir(parents=True, exist_ok=True)
    if train is not None:
        (directory / "train-000.txt").write_text(train, encoding="utf-8")
    if valid is not None:
        (directory / "valid-000.txt").write_text(valid, encoding="utf-8")
    return directory


def test_load_local_dir(stories):
    assert isinstance(stories, DatasetDict) and set(stories) == {"train", "validation"}
    assert stories["train"].column_names == ["text"]
    assert stories["train"].num_rows > 1000 and stories["validation"].num_rows > 500
    for split in stories.values():
        texts = split["text"]
        assert all(text and EOT not in text for text in texts)
        assert not any(text.startswith("\n") or text.endswith("\n") for text in texts)
        assert split.cache_files  # Arrow on disk, not an in-memory table
    assert stories["validation"][0]["text"].startswith("Spot. Spot saw the shiny car")


def test_env_var_and_data_files(stories, tinystories_dir, monkeypatch):
    monkeypatch.setenv("HF_FFSLEEP_DATA", str(tinystories_dir))
    from_env = load_tinystories()
    assert from_env["train"].num_rows == stories["train"].num_rows
    assert from_env["validation"]["text"] == stories["validation"]["text"]
    explicit = load_tinystories(data_files={"train": str(tinystories_dir / "train-001.txt"), "valid": ["valid-000.txt"]}, data_dir=str(tinystories_dir))
    assert explicit["validation"].num_rows == stories["validation"].num_rows
    assert 1000 < explicit["train"].num_rows < stories["train"].num_rows


def test_cache_follows_file_contents(tmp_path):
    data_dir = _write_split_files(tmp_path / "data")
    first = load_tinystories(str(data_dir))
    assert first["train"]["text"] == ["One.", "Two."] and first["validation"]["text"] == ["Three."]
    assert load_tinystories(str(data_dir))["train"].cache_files == first["train"].cache_files  # reused
    _write_split_files(data_dir, train="One.\n<|endoftext|>\n\n<|endoftext|>\nTwo, again.\n<|endoftext|>\n", valid=None)
    assert load_tinystories(str(data_dir))["train"]["text"] == ["One.", "Two, again."]  # rebuilt; empty story dropped


def test_missing_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="valid-"):
        load_tinystories(str(_write_split_files(tmp_path / "no_valid", valid=None)))
    with pytest.raises(FileNotFoundError, match="train-"):
        load_tinystories(str(_write_split_files(tmp_path / "no_train", train=None)))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tinystories(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_tinystories(data_files={"train": str(tmp_path / "missing.txt"), "validation": str(tmp_path / "missing.txt")})
    with pytest.raises(ValueError, match="validation"):
        load_tinystories(data_files={"train": str(tmp_path / "no_train" / "valid-000.txt")})
    monkeypatch.setenv("HF_FFSLEEP_DATA", str(tmp_path / "no_valid"))
    with pytest.raises(FileNotFoundError, match="valid-"):
        load_tinystories()


def test_hub_fallback_offline_error(monkeypatch):
    monkeypatch.delenv("HF_FFSLEEP_DATA", raising=False)
    with pytest.raises(ConnectionError, match="HF_FFSLEEP_DATA"):
        load_tinystories()


def test_pack_blocks_and_bytes(stories, tokenizer):
    validation = stories["validation"]
    packed = pack_dataset(validation, tokenizer, BLOCK_SIZE, batch_size=10_000)  # one batch: one continuous stream
    assert packed.column_names == ["input_ids", "num_bytes"]
    blocks = packed["input_ids"]
    assert all(len(block) == BLOCK_SIZE for block in blocks)

    stream = [i for block in blocks for i in block]
    full = [i for text in validation["text"] for i in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
    assert len(full) - BLOCK_SIZE < len(stream) <= len(full) and stream == full[: len(stream)]  # only the tail dropped
    assert stream.count(tokenizer.eos_token_id) >= validation.num_rows - 1  # stories separated by eos

    lengths = token_byte_lengths(tokenizer)
    assert packed["num_bytes"] == [int(lengths[block].sum()) for block in blocks]
    # The blocks are a prefix of story<|endoftext|>story<|endoftext|>..., and num_bytes counts its bytes exactly.
    decoded = tokenizer.decode(stream)
    assert "".join(text + EOT for text in validation["text"]).startswith(decoded)
    assert sum(packed["num_bytes"]) == len(decoded.encode("utf-8"))


def test_pack_dataset_dict_is_cached(stories, tokenizer):
    small = DatasetDict({split: ds.select(range(200)) for split, ds in stories.items()})
    packed = pack_dataset(small, tokenizer, BLOCK_SIZE)
    assert set(packed) == {"train", "validation"}
    assert all(len(ids) == BLOCK_SIZE for ids in packed["train"]["input_ids"])
    again = pack_dataset(small, tokenizer, BLOCK_SIZE)
    for split in packed:
        assert packed[split].cache_files  # written to the datasets cache
        assert again[split].cache_files == packed[split].cache_files  # and reused on the second call
        assert again[split]._fingerprint == packed[split]._fingerprint
    assert pack_dataset(small, tokenizer, 64)["train"].cache_files != packed["train"].cache_files


def test_pack_in_memory_and_errors(tokenizer):
    dataset = Dataset.from_dict({"text": ["Once upon a time there was a cat.", "The end."]})
    packed = pack_dataset(dataset, tokenizer, 4)
    assert packed.num_rows > 0 and all(len(ids) == 4 for ids in packed["input_ids"])
    assert pack_dataset(dataset, tokenizer, 10_000).num_rows == 0  # shorter than one block: all dropped
    with pytest.raises(ValueError, match="block_size"):
        pack_dataset(dataset, tokenizer, 0)
