"""Pretraining from a preset: data, tokenizer, model, `FFTrainer`, evaluation and a sample story, in one call.

`hf-ffsleep train --preset tiny --output-dir DIR` runs `pretrain(...)`. A preset is a JSON file (the package ships
`tiny`, `small` and `100m` in `hf_ffsleep/presets/`) with four sections: `tokenizer` (vocab size), `data` (block
size), `model` (`FFSleepConfig` fields) and `training` (`FFTrainingArguments` fields).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from importlib import resources
from pathlib import Path

PRESETS = ("tiny", "small", "100m")
SAMPLE_PROMPT = "Once upon a time"
TOKENIZER_MAX_STORIES = 200_000  # stories used to train the tokenizer when the data comes from the Hub


def load_preset(name_or_path: str) -> dict:
    """A shipped preset by name (`tiny`, `small`, `100m`) or any preset JSON file by path."""
    if name_or_path in PRESETS:
        text = resources.files("hf_ffsleep").joinpath(f"presets/{name_or_path}.json").read_text()
    elif os.path.isfile(name_or_path):
        text = Path(name_or_path).read_text()
    else:
        raise ValueError(f"Unknown preset {name_or_path!r}: use one of {PRESETS} or a path to a preset JSON file.")
    preset = json.loads(text)
    missing = {"tokenizer", "data", "model", "training"} - set(preset)
    if missing:
        raise ValueError(f"Preset {name_or_path!r} lacks the section(s) {sorted(missing)}.")
    return preset


def prepare_tokenizer(output_dir: str, dataset, vocab_size: int, train_files: list[str] | None):
    """The tokenizer saved in `output_dir`, or a new byte-level BPE trained on the training text and saved there."""
    from transformers import AutoTokenizer

    from .tokenization import train_tokenizer

    if os.path.isfile(os.path.join(output_dir, "tokenizer.json")):
        return AutoTokenizer.from_pretrained(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    if train_files:
        return train_tokenizer(train_files, vocab_size, output_dir=output_dir)
    # Hub data has no files: write a sample of stories to a temporary file, separated as in the local files.
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=output_dir, delete=False, encoding="utf-8") as f:
        sample = dataset["train"].select(range(min(TOKENIZER_MAX_STORIES, len(dataset["train"]))))
        for text in sample["text"]:
            f.write(text + "\n<|endoftext|>\n")
    try:
        return train_tokenizer([f.name], vocab_size, output_dir=output_dir)
    finally:
        os.remove(f.name)


def pretrain(
    preset: str,
    output_dir: str,
    data_dir: str | None = None,
    overrides: dict | None = None,
    resume_from_checkpoint: str | bool | None = None,
    eval_blocks: int | None = None,
    sample_tokens: int = 120,
) -> dict:
    """Train an `FFSleepForCausalLM` from a preset; save model, banks and tokenizer; evaluate; print a story.

    Args:
        preset: `tiny`, `small`, `100m` or a preset JSON path.
        output_dir: where checkpoints, the final model, tokenizer and `eval_results.json` go.
        data_dir: local TinyStories directory (`train-*.txt`, `valid-*.txt`); default `$HF_FFSLEEP_DATA`, else the Hub.
        overrides: `FFTrainingArguments` fields that replace the preset's (e.g. `learning_rule`, `max_steps`).
        resume_from_checkpoint: passed to `Trainer.train`.
        eval_blocks: evaluate on the first N validation blocks only (default: the whole validation split).
        sample_tokens: length of the sample story.

    Returns the evaluation metrics plus `sample`.
    """
    import torch

    from .configuration_ffsleep import FFSleepConfig
    from .data import DATA_ENV_VAR, SPLIT_PATTERNS, load_tinystories, pack_dataset
    from .modeling_ffsleep import FFSleepForCausalLM
    from .trainer import FFTrainer, FFTrainingArguments

    config = load_preset(preset)
    data_dir = data_dir or os.environ.get(DATA_ENV_VAR)
    dataset = load_tinystories(data_dir)
    train_files = sorted(str(p) for p in Path(data_dir).glob(SPLIT_PATTERNS["train"])) if data_dir else None
    tokenizer = prepare_tokenizer(output_dir, dataset, config["tokenizer"]["vocab_size"], train_files)
    packed = pack_dataset(dataset, tokenizer, config["data"]["block_size"])
    eval_set = packed["validation"]
    if eval_blocks is not None:
        eval_set = eval_set.select(range(min(eval_blocks, len(eval_set))))

    training = {**config["training"], **(overrides or {})}
    args = FFTrainingArguments(output_dir=output_dir, report_to=training.pop("report_to", []), **training)
    torch.manual_seed(args.seed)
    model = FFSleepForCausalLM(FFSleepConfig(vocab_size=len(tokenizer), **config["model"]))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"FFSleep preset {preset!r}: {n_params / 1e6:.2f} M parameters, rule {args.learning_rule!r}, "
          f"{len(packed['train'])} training blocks of {config['data']['block_size']} tokens")

    trainer = FFTrainer(
        model=model, args=args, train_dataset=packed["train"], eval_dataset=eval_set, processing_class=tokenizer
    )
    train_output = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_metrics("train", train_output.metrics)
    trainer.save_model(output_dir)  # model.safetensors, hopfield_banks.safetensors, code files, tokenizer
    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)

    sample = ""
    if trainer.is_world_process_zero():
        sample = sample_story(trainer.model, tokenizer, sample_tokens, seed=args.seed)
        Path(output_dir, "sample_story.txt").write_text(sample + "\n", encoding="utf-8")
        bpb = metrics.get("eval_bits_per_byte", math.nan)
        print(f"\nvalidation: loss {metrics['eval_loss']:.4f} nats/token, {bpb:.4f} bits/byte")
        print(f"\nsample story:\n{sample}\n")
    return {**metrics, "sample": sample}


def sample_story(model, tokenizer, max_new_tokens: int = 120, seed: int = 0, prompt: str = SAMPLE_PROMPT) -> str:
    """A sampled continuation of `prompt` (temperature 0.8, top-k 50), decoded."""
    import torch

    torch.manual_seed(seed)
    model.eval()
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_k=50,
            pad_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0], skip_special_tokens=False)
