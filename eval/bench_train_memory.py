"""Peak memory of one training step, Forward-Forward vs backprop, on an 8-layer config (CPU, real FFTrainer steps).

Each learning rule runs in a fresh process: two warm-up steps (AdamW allocates its state), then for step 3 the
process's peak RSS is reset (`/proc/self/clear_refs`) and read back after the step (`VmHWM`). The figure is
`peak during step 3 - RSS at its start`: the step's activations, gradients and temporaries. Prints the ratio and
writes `eval/results/bench_train_memory.json`.

The children run with `MALLOC_MMAP_THRESHOLD_=65536`: glibc then gives every block of 64 KiB or more its own mapping
and returns it to the system when freed, so resident memory follows the live tensors. With the default allocator,
memory freed by the warm-up steps stays resident and is reused, and `peak - start` undercounts whatever the warm-up
already reached (measured that way, backprop's step looked like 415–478 MB instead of ~1.4 GB).

    python eval/bench_train_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CONFIG = dict(vocab_size=4096, hidden_size=256, num_hidden_layers=8, num_attention_heads=8, intermediate_size=688,
              max_position_embeddings=256)
BATCH, BLOCK = 16, 256


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(rule: str) -> dict:
    """Run in a child process: one real FFTrainer step's peak memory above its starting RSS, in MB."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from hf_ffsleep import FFSleepConfig, FFSleepForCausalLM
    from hf_ffsleep.trainer import FFTrainer, FFTrainingArguments

    torch.manual_seed(0)
    torch.set_num_threads(2)
    data = Dataset.from_dict({"input_ids": torch.randint(0, CONFIG["vocab_size"], (BATCH * 4, BLOCK)).tolist()})
    model = FFSleepForCausalLM(FFSleepConfig(**CONFIG))
    result = {}

    class PeakOfStep3(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
                result["start_mb"] = _status_kb("VmRSS") / 1024

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                result["peak_mb"] = _status_kb("VmHWM") / 1024

    args = FFTrainingArguments(
        output_dir="/tmp/bench_train_memory", learning_rule=rule, max_steps=3, per_device_train_batch_size=BATCH,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=100,
    )
    FFTrainer(model=model, args=args, train_dataset=data, callbacks=[PeakOfStep3()]).train()
    result["step_mb"] = result["peak_mb"] - result["start_mb"]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=("forward_forward", "backprop"), help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "bench_train_memory.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    rows = {}
    for rule in ("backprop", "forward_forward"):
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run(
            [sys.executable, __file__, "--child", rule], check=True, capture_output=True, text=True, env=env
        )
        rows[rule] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{rule:16s} step peak above start: {rows[rule]['step_mb']:8.1f} MB", flush=True)
    ratio = rows["forward_forward"]["step_mb"] / rows["backprop"]["step_mb"]
    print(f"forward_forward / backprop peak step memory: {ratio:.3f}  (config {CONFIG}, batch {BATCH}x{BLOCK})")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"config": CONFIG, "batch": [BATCH, BLOCK], "rows": rows, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
