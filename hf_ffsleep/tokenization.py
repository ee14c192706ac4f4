"""Byte-level BPE tokenizer for TinyStories, and the byte lengths that turn token losses into bits per byte.

What: `train_tokenizer` learns a GPT-2-style byte-level BPE with 🤗 tokenizers and wraps it in a transformers
fast tokenizer that `AutoTokenizer.from_pretrained` can load. `token_byte_lengths` gives, for every token id, the
number of UTF-8 bytes it decodes to.

Why byte-level: every string is encoded losslessly (no unknown tokens, no normalisation, no added prefix space), so
`decode(encode(text)) == text` holds exactly, and the bytes of a token sequence are the sum of its tokens' byte
lengths. That is what makes bits per byte exact:

    bpb = sum_t nll_t / (ln 2 * sum_t bytes(x_t))

where `nll_t` is the loss (in nats) of token `x_t`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy imports stay lazy: the CLI imports this module to parse arguments only
    import torch
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOT = "<|endoftext|>"
"""The only special token: TinyStories' own story separator, used as bos, eos, pad and unk."""

NUM_BYTES = 256
"""Size of the byte alphabet every byte-level BPE starts from."""

DEFAULT_MODEL_MAX_LENGTH = 512
"""Default `model_max_length`: TinyStories stories are a few hundred tokens, and the model's default context is 512."""


def iter_documents(files: Iterable[str | os.PathLike], separator: str = EOT) -> Iterator[str]:
    """Stream the documents of text files in which `separator` ends each document.

    The text between two separators is yielded verbatim (newlines around the separator included), so concatenating
    the documents with the separator gives back the files exactly. Files are read line by line; a document may
    span files only if a file does not end with a separator. Empty pieces are skipped.
    """
    buffer: list[str] = []
    for path in files:
        with open(path, encoding="utf-8", newline="") as handle:  # newline="": keep "\r\n" as it is
            for line in handle:
                head, *rest = line.split(separator)
                buffer.append(head)
                for piece in rest:
                    document = "".join(buffer)
                    if document:
                        yield document
                    buffer = [piece]
    document = "".join(buffer)
    if document:
        yield document


def _check_files(files: Iterable[str | os.PathLike]) -> list[Path]:
    """Return `files` as paths; raise if the list is empty, a file is missing, or all files are empty."""
    paths = [Path(f) for f in files]
    if not paths:
        raise ValueError("No training files given.")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Training file(s) not found: {', '.join(missing)}")
    if sum(p.stat().st_size for p in paths) == 0:
        raise ValueError(f"Training files are empty: {', '.join(map(str, paths))}")
    return paths


def _save_atomically(tokenizer: PreTrainedTokenizerBase, output_dir: str | os.PathLike) -> None:
    """`save_pretrained` into a temporary sibling directory, then swap it in for `output_dir`.

    A reader never sees a half-written tokenizer: either the old directory or the complete new one. A directory
    swap is two renames (old -> backup, new -> output), which are atomic each on one file system.
    """
    output = Path(output_dir).resolve()
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"Output path exists and is not a directory: {output}")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    backup = None
    try:
        tokenizer.save_pretrained(staging)
        if output.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
            os.replace(output, backup / output.name)
        os.replace(staging, output)
    except BaseException:
        if backup is not None and not output.exists():
            os.replace(backup / output.name, output)  # put the old tokenizer back
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)


def train_tokenizer(
    files: list[str],
    vocab_size: int,
    output_dir: str | None = None,
    min_frequency: int = 2,
    *,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on text files and (optionally) save it for `AutoTokenizer`.

    The pipeline is GPT-2's, with nothing that alters text: no normaliser, a `ByteLevel` pre-tokenizer with
    `add_prefix_space=False` (GPT-2 regex split, then bytes mapped to printable characters), BPE merges learned
    from the 256-byte alphabet, a `ByteLevel` decoder, and `clean_up_tokenization_spaces=False`. `<|endoftext|>` is the only special token (id 0) and
    serves as bos, eos, pad and unk; no token is added automatically when encoding. Hence
    `tok.decode(tok(text)["input_ids"]) == text` for any text, separators and newlines included.

    The separators in the files are cut out before training (see `iter_documents`), so no merges are wasted on
    pieces of `<|endoftext|>`; the text around them, newlines included, is learned from.

    Args:
        files: UTF-8 text files, documents separated by `<|endoftext|>`.
        vocab_size: Size of the final vocabulary, special token included; at least 257 (256 bytes + 1 special).
            BPE stops early when no pair occurs `min_frequency` times, so the result may be smaller.
        output_dir: If given, the tokenizer is saved there with `save_pretrained`, atomically (written to a
            temporary sibling directory, then renamed into place; an existing directory is replaced).
        min_frequency: Minimum count of a pair for it to be merged.
        model_max_length: Longest sequence the model is meant to take (used by transformers for truncation
            and warnings).

    Returns:
        A `PreTrainedTokenizerFast` (in transformers 5, `TokenizersBackend`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    paths = _check_files(files)
    if vocab_size < NUM_BYTES + 1:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least {NUM_BYTES + 1} "
            f"tokens ({NUM_BYTES} bytes + {EOT})."
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if next(iter_documents(paths), None) is None:  # reads only up to the first document
        raise ValueError(f"Training files hold no text besides {EOT} separators: {', '.join(map(str, paths))}")
    backend.train_from_iterator(iter_documents(paths), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        unk_token=EOT,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # would rewrite " ." to "." and break the exact round trip
    )
    if output_dir is not None:
        _save_atomically(tokenizer, output_dir)
    return tokenizer


def token_byte_lengths(tokenizer: PreTrainedTokenizerBase) -> torch.LongTensor:
    """Number of UTF-8 bytes each token id decodes to, as a `LongTensor` of shape `[len(tokenizer)]`.

    A byte-level token is a string over a 256-character alphabet, one character per byte, so its byte length is
    its number of characters. An added (special) token decodes to its own content, so it counts the UTF-8 bytes
    of that content: `<|endoftext|>` counts 13 bytes, exactly the separator as it stands in the data files (the
    newlines around it are ordinary tokens). Hence for any text the tokenizer round-trips,

        sum(lengths[tok(text)["input_ids"]]) == len(text.encode("utf-8")),

    and bits per byte are `sum(nll) / ln(2) / sum(lengths[ids])` with no approximation. For packed data the same
    holds for the decoded stream `story<|endoftext|>story<|endoftext|>...`.

    Raises:
        ValueError: if a vocabulary token is not byte-level (then characters are not bytes).
    """
    import torch
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = set(ByteLevel.alphabet())
    added = {i: token.content for i, token in tokenizer.added_tokens_decoder.items()}
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    lengths = []
    for index, token in enumerate(tokens):
        if index in added:
            lengths.append(len(added[index].encode("utf-8")))
        elif token is not None and set(token) <= alphabet:
            lengths.append(len(token))
        else:
            raise ValueError(f"Token {index} ({token!r}) is not a byte-level token; byte lengths are undefined.")
    return torch.tensor(lengths, dtype=torch.long)
