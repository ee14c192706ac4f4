"""Benchmark: milliseconds of one `model.memorize` of a 256-token sequence on the tiny acceptance config (issue #2).

    python eval/bench_memorize.py [--repeats 30] [--warmup 5] [--threads 2] [--output eval/results/bench_memorize.json]

Two cases, each timed `--repeats` times after `--warmup` untimed calls (banks reset, untimed, before every call):

- `empty_banks`: a write into empty banks (one forward pass with the write);
- `used_banks`: a write into banks that already hold another 256-token memory (the write then also runs the
  "before" stream that finds existing slots to merge into, see `MemoryWrite.paired`).

Prints median and min per case and writes them, with the settings and the machine's load average, to the JSON file.
The minimum is the figure to compare across runs on a shared machine; the median shows the contention.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from hf_ffsleep import FFSleepConfig, FFSleepForCausalLM

TINY_CONFIG = dict(
    vocab_size=512,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=172,
    max_position_embeddings=256,
)
SEQ_LEN = 256
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench_memorize.json"


def _time_memorize(model, seq, prepare, repeats: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + repeats):
        prepare()
        start = time.perf_counter()
        n = model.memorize(seq, reward=1.0)
        elapsed = (time.perf_counter() - start) * 1000.0
        assert n == SEQ_LEN - 1, n
        if i >= warmup:
            times.append(elapsed)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = FFSleepConfig(**TINY_CONFIG)
    model = FFSleepForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(args.seed)
    seq = torch.randint(1, config.vocab_size, (1, SEQ_LEN), generator=gen)
    other = torch.randint(1, config.vocab_size, (1, SEQ_LEN), generator=gen)

    def empty():
        model.clear_memory()

    def used():
        model.clear_memory()
        model.memorize(other, reward=1.0)

    results = {}
    for case, prepare in (("empty_banks", empty), ("used_banks", used)):
        times = _time_memorize(model, seq, prepare, args.repeats, args.warmup)
        results[case] = {
            "median_ms": round(statistics.median(times), 3),
            "min_ms": round(min(times), 3),
            "max_ms": round(max(times), 3),
            "repeats": len(times),
        }
        print(
            f"memorize({SEQ_LEN} tokens), {case:11s}: median {results[case]['median_ms']:8.2f} ms   "
            f"min {results[case]['min_ms']:8.2f} ms   ({len(times)} runs, {args.threads} threads)"
        )

    report = {
        "benchmark": "memorize",
        "seq_len": SEQ_LEN,
        "associations": SEQ_LEN - 1,
        "config": {**TINY_CONFIG, "bank_slots": config.bank_slots, "banked_layers": config.banked_layers},
        "threads": args.threads,
        "warmup": args.warmup,
        **results,
        "median_ms": results["empty_banks"]["median_ms"],
        "min_ms": results["empty_banks"]["min_ms"],
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
