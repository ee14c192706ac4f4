"""`hf-ffsleep` command line: one subcommand per task, e.g. `hf-ffsleep tokenizer --data-dir DIR --vocab-size 4096
--output tok/`.

Each subcommand is a function `add_<name>_parser(subparsers)` that adds its parser and sets `handler` to the
function that runs it (`handler(args) -> int`, the exit code). `SUBCOMMANDS` lists them; to add one (say `train`,
in its own module), define `add_train_parser` there and list it in `SUBCOMMANDS` (or call `register_subcommand`
before `main`). Only `argparse` is imported up front; handlers import torch, transformers and datasets lazily, so
`--help` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

AddParser = Callable[[argparse._SubParsersAction], None]


def _train_files(args: argparse.Namespace) -> list[str]:
    """Training files: `--train-files`, else `train-*.txt` in `--data-dir` or `$HF_FFSLEEP_DATA`."""
    from .data import DATA_ENV_VAR, SPLIT_PATTERNS

    if args.train_files:
        return list(args.train_files)
    data_dir = args.data_dir or os.environ.get(DATA_ENV_VAR)
    if not data_dir:
        raise SystemExit(f"error: give --train-files or --data-dir (or set {DATA_ENV_VAR})")
    files = sorted(Path(data_dir).glob(SPLIT_PATTERNS["train"]))
    if not files:
        raise SystemExit(f"error: no {SPLIT_PATTERNS['train']} files in {data_dir}")
    return [str(f) for f in files]


def run_tokenizer(args: argparse.Namespace) -> int:
    """Train a byte-level BPE tokenizer (see `hf_ffsleep.tokenization.train_tokenizer`) and save it."""
    from .tokenization import train_tokenizer

    files = _train_files(args)
    try:
        tokenizer = train_tokenizer(
            files,
            args.vocab_size,
            output_dir=args.output,
            min_frequency=args.min_frequency,
            model_max_length=args.model_max_length,
        )
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from error
    num_bytes = sum(Path(f).stat().st_size for f in files)
    print(
        f"Trained byte-level BPE tokenizer: vocab size {len(tokenizer)} (asked for {args.vocab_size}), "
        f"eos/bos/pad/unk {tokenizer.eos_token!r}, trained on {len(files)} file(s), {num_bytes:,} bytes.\n"
        f"Saved to {Path(args.output).resolve()}"
    )
    return 0


def add_tokenizer_parser(subparsers: argparse._SubParsersAction) -> None:
    """`hf-ffsleep tokenizer`: train and save the tokenizer."""
    from .tokenization import DEFAULT_MODEL_MAX_LENGTH

    parser = subparsers.add_parser(
        "tokenizer",
        help="train a byte-level BPE tokenizer on <|endoftext|>-separated text files",
        description="Train a byte-level BPE tokenizer (<|endoftext|> is bos/eos/pad/unk) and save it with "
        "save_pretrained, so AutoTokenizer.from_pretrained(OUTPUT) loads it.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--train-files", nargs="+", metavar="FILE", help="text files to train on")
    source.add_argument(
        "--data-dir", metavar="DIR", help="train on DIR/train-*.txt (default: $HF_FFSLEEP_DATA if --train-files is not given)"
    )
    parser.add_argument("--vocab-size", type=int, required=True, metavar="N", help="vocabulary size, special token included")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory to save the tokenizer to (replaced atomically)")
    parser.add_argument("--min-frequency", type=int, default=2, metavar="N", help="minimum pair count to merge (default: 2)")
    parser.add_argument(
        "--model-max-length",
        type=int,
        default=DEFAULT_MODEL_MAX_LENGTH,
        metavar="N",
        help=f"model_max_length stored in the tokenizer (default: {DEFAULT_MODEL_MAX_LENGTH})",
    )
    parser.set_defaults(handler=run_tokenizer)


def run_train(args: argparse.Namespace) -> int:
    """Pretrain from a preset (see `hf_ffsleep.pretraining.pretrain`)."""
    from .pretraining import pretrain

    overrides = {
        name: value
        for name, value in (
            ("learning_rule", args.learning_rule),
            ("max_steps", args.max_steps),
            ("seed", args.seed),
            ("ff_loss", args.ff_loss),
            ("ff_weight", args.ff_weight),
            ("ff_threshold", args.ff_threshold),
            ("negatives", args.negatives),
            ("negative_rate", args.negative_rate),
            ("local_ce_weight", args.local_ce_weight),
            ("local_ce_fraction", args.local_ce_fraction),
            ("learning_rate", args.learning_rate),
            ("per_device_train_batch_size", args.batch_size),
        )
        if value is not None
    }
    if args.bf16:
        overrides["bf16"] = True
    try:
        pretrain(
            args.preset,
            args.output_dir,
            data_dir=args.data_dir,
            overrides=overrides,
            resume_from_checkpoint=args.resume_from_checkpoint,
            eval_blocks=args.eval_blocks,
        )
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from error
    return 0


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """`hf-ffsleep train`: pretrain a model from a preset with FFTrainer."""
    from .pretraining import PRESETS

    parser = subparsers.add_parser(
        "train",
        help="pretrain an FFSleep model on TinyStories (Forward-Forward by default)",
        description="Pretrain an FFSleepForCausalLM from a preset with FFTrainer; trains the tokenizer if the output "
        "directory has none; saves model, banks and tokenizer; prints validation bits per byte and a sample story.",
    )
    parser.add_argument("--preset", default="tiny", help=f"one of {', '.join(PRESETS)}, or a preset JSON file (default: tiny)")
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="where the model, tokenizer and checkpoints go")
    parser.add_argument("--data-dir", metavar="DIR", help="local TinyStories dir (default: $HF_FFSLEEP_DATA, else the Hub)")
    parser.add_argument("--learning-rule", choices=("forward_forward", "backprop", "readout_only"))
    parser.add_argument("--max-steps", type=int, metavar="N")
    parser.add_argument("--batch-size", type=int, metavar="N", help="per-device training batch size")
    parser.add_argument("--learning-rate", type=float, metavar="LR")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--ff-loss", choices=("hinton", "symba"))
    parser.add_argument("--ff-weight", type=float, metavar="W", help="weight of the goodness term")
    parser.add_argument("--ff-threshold", type=float, metavar="THETA")
    parser.add_argument("--negatives", choices=("random", "shuffle", "self"))
    parser.add_argument("--negative-rate", type=float, metavar="RHO")
    parser.add_argument("--local-ce-weight", type=float, metavar="W")
    parser.add_argument("--local-ce-fraction", type=float, metavar="F", help="fraction of positions with local CE")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--eval-blocks", type=int, metavar="N", help="evaluate on the first N validation blocks only")
    parser.add_argument("--resume-from-checkpoint", metavar="DIR", help="checkpoint directory to resume from")
    parser.set_defaults(handler=run_train)


SUBCOMMANDS: list[AddParser] = [add_tokenizer_parser, add_train_parser]
"""Functions that each add one subcommand parser; `build_parser` calls them in order."""


def register_subcommand(add_parser: AddParser) -> AddParser:
    """Add a subcommand (usable as a decorator on an `add_<name>_parser` function)."""
    if add_parser not in SUBCOMMANDS:
        SUBCOMMANDS.append(add_parser)
    return add_parser


def build_parser() -> argparse.ArgumentParser:
    """The `hf-ffsleep` parser, with one subparser per entry of `SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="hf-ffsleep", description="FFSleep causal LM tools: tokenizer training and pretraining."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hf-ffsleep` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
