"""FF vs backprop at equal tokens: train one preset under several learning rules and compare bits per byte.

Each variant is a fresh `hf-ffsleep train` process on the same preset, data, tokenizer, seed and token budget; the
only difference is the learning rule / objective. Results (metrics, wall time, tokens/s, sample story, ratio to
backprop) go to `eval/results/ff_vs_backprop.json` and a markdown table `eval/results/ff_vs_backprop.md`.

    python eval/ff_vs_backprop.py --preset tiny --data-dir ../shared/data/tinystories
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "backprop": (["--learning-rule", "backprop"], "end-to-end next-token CE (the baseline)"),
    "forward_forward": ([], "default FF objective: goodness (ff_weight) + local CE per layer"),
    "pure_goodness": (["--local-ce-weight", "0", "--ff-weight", "1"], "goodness only; readout on detached features"),
    "local_ce_only": (["--ff-weight", "0"], "local CE per layer, no goodness term (not FF)"),
    "readout_only": (["--learning-rule", "readout_only"], "control: frozen random blocks, readout trained"),
}
ROOT = Path(__file__).resolve().parent


def run_variant(name, extra, args, tokenizer_dir: Path) -> dict:
    out = Path(args.output_root) / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in tokenizer_dir.iterdir():  # the same tokenizer for every variant
        shutil.copy(f, out / f.name)
    cmd = [sys.executable, "-m", "hf_ffsleep.cli", "train", "--preset", args.preset, "--output-dir", str(out),
           "--data-dir", args.data_dir, "--seed", str(args.seed), *extra]
    if args.max_steps:
        cmd += ["--max-steps", str(args.max_steps)]
    start = time.time()
    with open(out / "train.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - start
    results = json.loads((out / "all_results.json").read_text())
    state = json.loads((out / "trainer_state.json").read_text()) if (out / "trainer_state.json").exists() else {}
    preset = json.loads(subprocess.run(
        [sys.executable, "-c", f"import json; from hf_ffsleep.pretraining import load_preset; print(json.dumps(load_preset({args.preset!r})))"],
        check=True, capture_output=True, text=True).stdout)
    steps = args.max_steps or preset["training"]["max_steps"]
    tokens = steps * preset["training"]["per_device_train_batch_size"] * preset["data"]["block_size"]
    return {
        "variant": name,
        "command": " ".join(cmd[1:]),
        "eval_loss": results["eval_loss"],
        "eval_bits_per_byte": results["eval_bits_per_byte"],
        "train_runtime_s": results.get("train_runtime"),
        "train_tokens": tokens,
        "train_tokens_per_s": tokens / results["train_runtime"] if results.get("train_runtime") else None,
        "wall_s": wall,
        "final_logs": state.get("log_history", [])[-3:] if state else [],
        "sample": (out / "sample_story.txt").read_text().strip(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--data-dir", default=os.environ.get("HF_FFSLEEP_DATA", str(ROOT.parent.parent / "shared/data/tinystories")))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--max-steps", type=int, help="override the preset's steps (default: the preset's)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output-root", default="runs/ff_vs_backprop")
    parser.add_argument("--results", default=str(ROOT / "results" / "ff_vs_backprop"))
    args = parser.parse_args()

    from hf_ffsleep.pretraining import load_preset
    from hf_ffsleep.tokenization import train_tokenizer

    preset = load_preset(args.preset)
    tokenizer_dir = Path(args.output_root) / "tokenizer"
    files = sorted(str(p) for p in Path(args.data_dir).glob("train-*.txt"))
    train_tokenizer(files, preset["tokenizer"]["vocab_size"], output_dir=str(tokenizer_dir))

    rows = []
    for name in args.variants:
        print(f"== {name}: {VARIANTS[name][1]}", flush=True)
        row = run_variant(name, VARIANTS[name][0], args, tokenizer_dir)
        rows.append(row)
        print(f"   bits/byte {row['eval_bits_per_byte']:.4f}, {row['train_tokens_per_s']:.0f} tok/s", flush=True)
    base = next((r for r in rows if r["variant"] == "backprop"), None)
    for row in rows:
        row["ratio_to_backprop"] = row["eval_bits_per_byte"] / base["eval_bits_per_byte"] if base else None
        row["speed_ratio_to_backprop"] = row["train_tokens_per_s"] / base["train_tokens_per_s"] if base else None

    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results + ".json").write_text(json.dumps({"preset": args.preset, "seed": args.seed, "rows": rows}, indent=2))
    lines = ["| variant | what | val loss (nats/token) | bits/byte | ÷ backprop | train tok/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['ratio_to_backprop']:.3f}" if r["ratio_to_backprop"] else "–"
        lines.append(f"| {r['variant']} | {VARIANTS[r['variant']][1]} | {r['eval_loss']:.4f} | "
                     f"{r['eval_bits_per_byte']:.4f} | {ratio} | {r['train_tokens_per_s']:.0f} |")
    table = "\n".join(lines)
    Path(args.results + ".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
