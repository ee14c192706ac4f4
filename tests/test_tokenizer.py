"""Tests of `hf_ffsleep.tokenization` and the `hf-ffsleep tokenizer` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from hf_ffsleep.cli import main
from hf_ffsleep.tokenization import EOT, iter_documents, token_byte_lengths, train_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]


def _read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


def _small_corpus(tinystories_dir: Path, directory: Path, num_stories: int = 300) -> Path:
    """Write the first `num_stories` stories of train-001.txt to `directory/train-000.txt` (fast to train on)."""
    documents = iter_documents([tinystories_dir / "train-001.txt"])
    text = "".join(next(documents) + EOT for _ in range(num_stories)) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train-000.txt").write_text(text, encoding="utf-8")
    return directory


@pytest.mark.parametrize("name", ["train-000.txt", "train-001.txt", "valid-000.txt"])
def test_round_trip_and_byte_lengths(tokenizer, tinystories_dir, name):
    text = _read(tinystories_dir / name)
    ids = tokenizer(text, verbose=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    # bits per byte are exact: the tokens' byte lengths add up to the file's size
    assert int(token_byte_lengths(tokenizer)[ids].sum()) == (tinystories_dir / name).stat().st_size


def test_auto_tokenizer_loads_with_special_tokens(tokenizer_dir, tokenizer):
    assert len(tokenizer) == 1024
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == tokenizer.unk_token == EOT
    assert tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids(EOT) == 0
    assert tokenizer.all_special_tokens == [EOT]
    assert tokenizer.model_max_length == 512
    # no special tokens or prefix space added; the separator in text is one token
    ids = tokenizer("Once upon a time\n" + EOT + "\nThe end.")["input_ids"]
    assert ids.count(0) == 1 and ids[0] != 0 and ids[-1] != 0
    assert tokenizer.decode(tokenizer("Hello")["input_ids"]) == "Hello"
    assert not any("endoftext" in t for t in tokenizer.get_vocab() if t != EOT)  # no merges wasted on separators
    assert (tokenizer_dir / "tokenizer.json").is_file()


def test_token_byte_lengths(tokenizer):
    lengths = token_byte_lengths(tokenizer)
    assert lengths.shape == (len(tokenizer),) and lengths.dtype.is_floating_point is False
    assert lengths[tokenizer.eos_token_id] == len(EOT.encode())  # 13: the separator as it stands in the files
    assert int(lengths.min()) >= 1
    assert int(lengths[1:257].max()) == 1  # the 256 single bytes
    the = tokenizer.convert_tokens_to_ids("Ġthe")
    assert lengths[the] == len(" the")


def test_non_ascii_round_trip(tokenizer):
    text = "Zoë's café — naïve 🐻\r\n\ttabs  and  spaces \n\n" + EOT + "\n"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert int(token_byte_lengths(tokenizer)[ids].sum()) == len(text.encode("utf-8"))


def test_atomic_save_replaces_existing(tinystories_dir, tmp_path):
    corpus = _small_corpus(tinystories_dir, tmp_path / "data") / "train-000.txt"
    output = tmp_path / "out" / "tok"
    train_tokenizer([str(corpus)], 300, output_dir=str(output))
    (output / "stale.txt").write_text("old")
    tok = train_tokenizer([str(corpus)], 400, output_dir=str(output))
    assert len(tok) == 400
    assert sorted(p.name for p in output.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert [p.name for p in output.parent.iterdir()] == ["tok"]  # no temporary directories left behind
    assert len(AutoTokenizer.from_pretrained(output)) == 400


def test_bad_inputs(tinystories_dir, tmp_path):
    corpus = str(tinystories_dir / "valid-000.txt")
    with pytest.raises(ValueError, match="No training files"):
        train_tokenizer([], 512)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer([corpus, str(tmp_path / "missing.txt")], 512)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer([str(tmp_path / "empty.txt")], 512)
    (tmp_path / "separators.txt").write_text(f"{EOT}{EOT}")
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer([str(tmp_path / "separators.txt")], 512)
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer([corpus], 256)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError):
        train_tokenizer([corpus], 300, output_dir=str(tmp_path / "a_file"))


def test_cli_train_files(tinystories_dir, tmp_path, capsys):
    corpus = _small_corpus(tinystories_dir, tmp_path / "data") / "train-000.txt"
    output = tmp_path / "tok"
    assert main(["tokenizer", "--train-files", str(corpus), "--vocab-size", "512", "--output", str(output)]) == 0
    summary = capsys.readouterr().out
    assert "vocab size 512" in summary and str(output) in summary
    tok = AutoTokenizer.from_pretrained(output)
    assert len(tok) == 512 and tok.eos_token == EOT


def test_cli_data_dir_from_env(tinystories_dir, tmp_path, monkeypatch, capsys):
    data_dir = _small_corpus(tinystories_dir, tmp_path / "data")
    monkeypatch.setenv("HF_FFSLEEP_DATA", str(data_dir))
    output = tmp_path / "tok"
    assert main(["tokenizer", "--vocab-size", "400", "--output", str(output), "--model-max-length", "256"]) == 0
    assert "1 file(s)" in capsys.readouterr().out
    assert AutoTokenizer.from_pretrained(output).model_max_length == 256


def test_cli_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_FFSLEEP_DATA", raising=False)
    with pytest.raises(SystemExit, match="--train-files or --data-dir"):
        main(["tokenizer", "--vocab-size", "512", "--output", str(tmp_path / "tok")])
    with pytest.raises(SystemExit, match="not found"):
        main(["tokenizer", "--train-files", str(tmp_path / "nope.txt"), "--vocab-size", "512", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="no train-"):
        main(["tokenizer", "--data-dir", str(tmp_path), "--vocab-size", "512", "--output", str(tmp_path / "tok")])
    with pytest.raises(SystemExit) as exit_info:  # argparse: --vocab-size is required
        main(["tokenizer", "--train-files", "x.txt", "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    assert not (tmp_path / "tok").exists()


def test_cli_subprocess(tinystories_dir, tmp_path):
    data_dir = _small_corpus(tinystories_dir, tmp_path / "data")
    output = tmp_path / "tok"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "hf_ffsleep.cli", "tokenizer", "--data-dir", str(data_dir)]
    result = subprocess.run(
        [*command, "--vocab-size", "300", "--output", str(output)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "vocab size 300" in result.stdout
    assert len(AutoTokenizer.from_pretrained(output)) == 300
