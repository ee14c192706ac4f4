"""A few Forward-Forward steps with `FFTrainer`, for `tests/test_trainer.py::test_ddp_*`.

Run under `torchrun --standalone --nproc_per_node 2 tests/ddp_train.py DATASET_DIR OUT_DIR` (CPU, gloo) or as a plain
`python tests/ddp_train.py DATASET_DIR OUT_DIR` (one process). `DATASET_DIR` is a packed dataset saved with
`Dataset.save_to_disk`. Each rank writes `OUT_DIR/rank{r}.safetensors` (its final parameters) and
`OUT_DIR/rank{r}.json` (world size, its log history).
"""

from __future__ import annotations

import json
import os
import sys

import torch


def main(dataset_dir: str, out_dir: str, steps: int = 6) -> None:
    from datasets import load_from_disk
    from safetensors.torch import save_file

    from hf_ffsleep import FFSleepConfig, FFSleepForCausalLM
    from hf_ffsleep.trainer import FFTrainer, FFTrainingArguments

    torch.set_num_threads(1)
    dataset = load_from_disk(dataset_dir)
    torch.manual_seed(0)
    model = FFSleepForCausalLM(
        FFSleepConfig(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=172, max_position_embeddings=64)
    )
    args = FFTrainingArguments(
        output_dir=os.path.join(out_dir, "trainer"), report_to=[], disable_tqdm=True, use_cpu=True,
        save_strategy="no", dataloader_num_workers=0, per_device_train_batch_size=4, max_steps=steps,
        logging_steps=1, learning_rate=3e-3, max_grad_norm=1.0, seed=0, ddp_backend="gloo" if "RANK" in os.environ else None,
    )
    trainer = FFTrainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    rank, world = trainer.args.process_index, trainer.args.world_size
    state = {name: p.detach().contiguous() for name, p in trainer.model.named_parameters()}
    save_file(state, os.path.join(out_dir, f"rank{rank}.safetensors"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"world_size": world, "log_history": trainer.state.log_history}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
