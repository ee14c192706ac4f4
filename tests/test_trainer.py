"""Tests of `FFTrainer` (issue #3): black-box locality, exact resume with banks, DDP, bf16, bits per byte, per-layer
logs, argument validation and the `hf-ffsleep train` command.

Everything runs on CPU with a tiny model on a few hundred packed TinyStories blocks of 64 tokens.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hf_ffsleep import BANKS_FILE, FFSleepConfig, FFSleepForCausalLM
from hf_ffsleep.data import load_tinystories, pack_dataset
from hf_ffsleep.tokenization import token_byte_lengths
from hf_ffsleep.trainer import FFTrainer, FFTrainingArguments, parameter_groups_by_layer

pytestmark = pytest.mark.usefixtures("single_thread")

BLOCK = 64
MODEL_KWARGS = dict(
    vocab_size=1024, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=172,
    max_position_embeddings=BLOCK,
)
READOUT_PREFIXES = ("model.depth_out.", "model.norm.", "lm_head.")


# ----------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def packed(tinystories_dir, tokenizer):
    """`{"train": 256 blocks, "validation": 13 blocks}` of 64 tokens, packed from the first stories of each split."""
    stories = load_tinystories(str(tinystories_dir))
    train = pack_dataset(stories["train"].select(range(400)), tokenizer, BLOCK)
    valid = pack_dataset(stories["validation"].select(range(40)), tokenizer, BLOCK)
    assert len(train) >= 256 and len(valid) >= 13
    return {"train": train.select(range(256)), "validation": valid.select(range(13))}


def make_model(seed: int = 0, **overrides) -> FFSleepForCausalLM:
    torch.manual_seed(seed)
    return FFSleepForCausalLM(FFSleepConfig(**{**MODEL_KWARGS, **overrides}))


def make_args(output_dir, **overrides) -> FFTrainingArguments:
    kwargs = dict(
        output_dir=str(output_dir), report_to=[], disable_tqdm=True, use_cpu=True, save_strategy="no",
        dataloader_num_workers=0, per_device_train_batch_size=8, per_device_eval_batch_size=8, learning_rate=3e-3,
        max_grad_norm=1.0, logging_steps=1, seed=0,
    )
    return FFTrainingArguments(**{**kwargs, **overrides})


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def banks_state(model) -> dict[str, torch.Tensor]:
    return {f"{layer}.{name}": t.clone() for layer, bank in model.banks.items() for name, t in bank.state_tensors().items()}


def is_below_top(name: str, num_layers: int) -> bool:
    return name.startswith("model.embed_tokens.") or any(
        name.startswith(f"model.layers.{i}.") for i in range(num_layers - 1)
    )


def train_losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


# ----------------------------------------------------------------------------- 1. locality
def _train_locality_pair(tmp_path, packed, rule):
    """Two 20-step runs from the same init, data and seed, differing only in the top layer's initial weights."""
    finals, inits, logs = [], [], []
    for run, top_seed in (("a", None), ("b", 1234)):
        model = make_model(0)
        if top_seed is not None:
            generator = torch.Generator().manual_seed(top_seed)
            with torch.no_grad():
                for p in model.model.layers[-1].parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=generator))
        trainer = FFTrainer(
            model=model, args=make_args(tmp_path / f"{rule}-{run}", learning_rule=rule, max_steps=20, negatives="random"),
            train_dataset=packed["train"],
        )
        inits.append(snapshot(model))
        trainer.train()
        finals.append(snapshot(model))
        logs.append([h for h in trainer.state.log_history if "grad_norm" in h])
    return inits, finals, logs


def test_locality_forward_forward(tmp_path, packed):
    inits, (a, b), (logs, _) = _train_locality_pair(tmp_path, packed, "forward_forward")
    L = MODEL_KWARGS["num_hidden_layers"]
    # The LM head is layer 0's local head under local cross-entropy, so it too sits below the top layer.
    top, below = f"model.layers.{L - 1}.", [n for n in a if is_below_top(n, L) or n.startswith("lm_head.")]
    # The runs really start apart in the top layer, and identical everywhere else.
    assert any(not torch.equal(inits[0][n], inits[1][n]) for n in inits[0] if n.startswith(top))
    assert all(torch.equal(inits[0][n], inits[1][n]) for n in inits[0] if not n.startswith(top))
    # What is checked: embedding, layers 0..L-2 with their local heads and depth pseudo-queries.
    assert "model.embed_tokens.weight" in below
    assert "model.layers.0.local_head.norm.weight" in below and "model.layers.1.depth_attn.pseudo_query" in below
    assert "lm_head.weight" in below
    different = [n for n in below if not torch.equal(a[n], b[n])]
    assert not different, f"the top layer's init leaked into lower parameters: {different}"
    # Everything trained: lower layers, the top layer and the readout all moved from their init...
    unchanged = [n for n in a if torch.equal(a[n], inits[0][n])]
    assert not unchanged, f"parameters that never changed: {unchanged}"
    # ...and the top layer's difference did reach the readout, so the comparison above could have failed.
    assert any(not torch.equal(a[n], b[n]) for n in a if n.startswith(READOUT_PREFIXES))
    # The total gradient norm exceeded max_grad_norm, so a global clip would have coupled the layers here.
    assert len(logs) == 20 and max(h["grad_norm"] for h in logs) > 1.0


def test_locality_backprop_control(tmp_path, packed):
    _, (a, b), _ = _train_locality_pair(tmp_path, packed, "backprop")
    L = MODEL_KWARGS["num_hidden_layers"]
    assert not torch.equal(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"])
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], b["model.layers.0.mlp.up_proj.weight"])
    assert sum(not torch.equal(a[n], b[n]) for n in a if is_below_top(n, L)) > 0.9 * sum(is_below_top(n, L) for n in a)


# ----------------------------------------------------------------------------- 2. exact resume (weights and banks)
RESUME_N = 4  # steps before the stop; 40 blocks / batch 8 = 5 steps per epoch, so the resume is mid-epoch


def _memorizing_model(seed, train_set):
    model = make_model(seed)
    model.memorize(torch.tensor(train_set.select(range(8))["input_ids"]))
    assert all(bank.num_used > 100 for bank in model.banks.values())
    return model


@pytest.mark.parametrize("rule", ["forward_forward", "backprop"])
def test_resume_is_exact(tmp_path, packed, rule):
    train_set, n = packed["train"].select(range(40)), RESUME_N
    args = dict(learning_rule=rule, max_steps=2 * n, save_strategy="steps", save_steps=n, logging_steps=n)

    full_model = _memorizing_model(0, train_set)
    full = FFTrainer(model=full_model, args=make_args(tmp_path / "full", **args), train_dataset=train_set)
    full.train()
    checkpoint = tmp_path / "full" / f"checkpoint-{n}"
    assert (checkpoint / BANKS_FILE).is_file() and (checkpoint / "model.safetensors").is_file()

    def resume(checkpoint_dir, output_dir):
        model = make_model(1)  # other weights, empty banks: everything must come from the checkpoint
        assert not any(bank.num_used for bank in model.banks.values())
        trainer = FFTrainer(model=model, args=make_args(output_dir, **args), train_dataset=train_set)
        trainer.train(resume_from_checkpoint=str(checkpoint_dir))
        return trainer

    resumed = resume(checkpoint, tmp_path / "resumed")
    assert resumed.state.global_step == 2 * n
    expected, got = snapshot(full_model), snapshot(resumed.model)
    assert expected.keys() == got.keys()
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, f"resumed run differs from the uninterrupted one in {different}"
    expected_banks, got_banks = banks_state(full_model), banks_state(resumed.model)
    assert expected_banks.keys() == got_banks.keys()
    assert all(torch.equal(expected_banks[k], got_banks[k]) for k in expected_banks)
    assert [b.num_used for b in full_model.banks.values()] == [b.num_used for b in resumed.model.banks.values()]
    assert train_losses(full)[-1] == train_losses(resumed)[-1]

    if rule == "forward_forward":
        # Control: the banks do matter here, so the check above could fail. Without the banks file a resume starts
        # from empty banks and ends elsewhere.
        no_banks = tmp_path / "no-banks-checkpoint"
        shutil.copytree(checkpoint, no_banks)
        (no_banks / BANKS_FILE).unlink()
        control = resume(no_banks, tmp_path / "control")
        assert not any(bank.num_used for bank in control.model.banks.values())
        assert any(not torch.equal(expected[name], p) for name, p in snapshot(control.model).items())


# ----------------------------------------------------------------------------- 3. DDP
def _run_ddp_script(command, out_dir, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out_dir


def test_ddp_two_processes(tmp_path, packed):
    from safetensors.torch import load_file

    dataset_dir = tmp_path / "dataset"
    packed["train"].select(range(128)).save_to_disk(str(dataset_dir))
    script = str(Path(__file__).with_name("ddp_train.py"))
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    ddp.mkdir(), single.mkdir()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _run_ddp_script(torchrun + [script, str(dataset_dir), str(ddp), "6"], ddp)
    _run_ddp_script([sys.executable, script, str(dataset_dir), str(single), "6"], single)

    logs = {name: json.loads((d / "rank0.json").read_text()) for name, d in (("ddp", ddp), ("single", single))}
    assert logs["ddp"]["world_size"] == 2 and logs["single"]["world_size"] == 1
    rank0, rank1 = load_file(ddp / "rank0.safetensors"), load_file(ddp / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and "model.layers.0.local_head.norm.weight" in rank0
    different = [name for name in rank0 if not torch.equal(rank0[name], rank1[name])]
    assert not different, f"ranks diverged in {different}"
    # Both ranks trained on different shards, so the shared result is not a single rank's: it differs from the
    # one-process run with the same per-device batch.
    single_params = load_file(single / "rank0.safetensors")
    assert any(not torch.equal(rank0[name], single_params[name]) for name in rank0)

    losses = {name: [h["loss"] for h in log["log_history"] if "loss" in h] for name, log in logs.items()}
    assert len(losses["ddp"]) == len(losses["single"]) == 6
    assert all(math.isfinite(x) for x in losses["ddp"] + losses["single"])
    ratio = (sum(losses["ddp"]) / 6) / (sum(losses["single"]) / 6)
    assert abs(ratio - 1) < 0.2, f"DDP loss {losses['ddp']} vs one process {losses['single']}"


# ----------------------------------------------------------------------------- 4. bf16 autocast on CPU
@pytest.mark.parametrize("rule", ["forward_forward", "backprop"])
def test_bf16_autocast_cpu(tmp_path, packed, rule):
    model = make_model(0)
    dtypes = []
    model.model.layers[1].mlp.gate_proj.register_forward_hook(
        lambda module, args, out: dtypes.append(out.dtype) if module.training else None
    )
    trainer = FFTrainer(
        model=model, args=make_args(tmp_path, learning_rule=rule, bf16=True, max_steps=3, per_device_train_batch_size=4),
        train_dataset=packed["train"],
    )
    trainer.train()
    assert trainer.accelerator.mixed_precision == "bf16"
    assert dtypes and set(dtypes) == {torch.bfloat16}, f"training forward ran in {set(dtypes)}, not under bf16 autocast"
    losses = train_losses(trainer)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())  # fp32 master weights


# ----------------------------------------------------------------------------- 5. eval loss and bits per byte
def test_evaluate_bits_per_byte(tmp_path, packed, tokenizer):
    eval_set = packed["validation"]  # 13 blocks: the last eval batch (of 8) is partial
    model = make_model(0)
    trainer = FFTrainer(
        model=model, args=make_args(tmp_path, max_steps=2), train_dataset=packed["train"], eval_dataset=eval_set,
        processing_class=tokenizer,
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_bits_per_byte"} <= metrics.keys()

    ids = torch.tensor(eval_set["input_ids"])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum").item()
    n_predicted = ids[:, 1:].numel()
    n_bytes = int(token_byte_lengths(tokenizer)[ids[:, 1:]].sum())
    assert n_bytes > 2 * n_predicted  # real text: a token is more than a byte or two
    assert metrics["eval_loss"] == pytest.approx(nll / n_predicted, rel=1e-5)
    expected_bpb = metrics["eval_loss"] * n_predicted / (math.log(2) * n_bytes)
    assert metrics["eval_bits_per_byte"] == pytest.approx(expected_bpb, rel=1e-9)
    assert metrics["eval_bits_per_byte"] == pytest.approx(nll / (math.log(2) * n_bytes), rel=1e-5)


# ----------------------------------------------------------------------------- 6. per-layer logs
def test_per_layer_logs(tmp_path, packed):
    trainer = FFTrainer(model=make_model(0), args=make_args(tmp_path, max_steps=2), train_dataset=packed["train"])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for entry in logs:
        for layer in range(MODEL_KWARGS["num_hidden_layers"]):
            names = ["goodness_pos", "goodness_neg", "ff_loss", "local_ce"] + (["depth_entropy"] if layer else [])
            for name in names:
                key = f"layer_{layer}/{name}"
                assert key in entry and math.isfinite(entry[key]), (key, entry)
            assert 0 < entry[f"layer_{layer}/ff_loss"] and 0 < entry[f"layer_{layer}/local_ce"]
        assert 0 < entry["layer_1/depth_entropy"] <= math.log(2) + 1e-4
        assert 0 < entry["layer_2/depth_entropy"] <= math.log(3) + 1e-4
        # The logged loss is the readout's cross-entropy.
        assert entry["readout_ce"] == pytest.approx(entry["loss"], abs=1e-4)


# ----------------------------------------------------------------------------- 7. arguments and variants
@pytest.mark.parametrize(
    "bad",
    [
        dict(learning_rule="feedback_alignment_typo"),
        dict(negatives="noise"),
        dict(ff_loss="contrastive"),
        dict(negative_rate=0.0),
        dict(ff_weight=0.0, local_ce_weight=0.0),
        dict(ff_weight=-1.0),
        dict(local_ce_fraction=0.0),
        dict(local_ce_fraction=1.5),
    ],
)
def test_arguments_are_validated(tmp_path, bad):
    with pytest.raises(ValueError):
        make_args(tmp_path, **bad)


def test_parameter_groups_follow_the_local_losses():
    """Per-layer clipping groups: every parameter in exactly one group; the LM head is layer 0's under local CE."""
    model = make_model(0)
    model.enable_local_heads()
    for owned_by_layer_0 in (True, False):
        groups = parameter_groups_by_layer(model, owned_by_layer_0)
        assert len(groups) == MODEL_KWARGS["num_hidden_layers"] + 1
        ids = [id(p) for group in groups for p in group]
        assert sorted(ids) == sorted(id(p) for p in model.parameters())
        head_group = 0 if owned_by_layer_0 else -1
        assert any(p is model.lm_head.weight for p in groups[head_group])


def test_local_ce_fraction_subsamples_upper_layers(tmp_path, packed):
    """Layers above 0 see a `local_ce_fraction` of the positions; layer 0 (the head's owner) sees all of them."""
    trainer = FFTrainer(model=make_model(0), args=make_args(tmp_path, local_ce_fraction=0.25, max_steps=1),
                        train_dataset=packed["train"])
    targets = torch.arange(4 * (BLOCK - 1)).view(4, BLOCK - 1)
    some, _ = trainer._local_ce_positions(targets)
    everything, _ = trainer._all_positions
    assert len(everything) == targets.numel() and len(some) == round(0.25 * targets.numel())
    assert set(some.tolist()) <= set(everything.tolist())


def test_tied_embeddings_rejected_for_local_rules(tmp_path):
    for rule in ("forward_forward", "readout_only"):
        with pytest.raises(ValueError, match="tie_word_embeddings"):
            FFTrainer(model=make_model(0, tie_word_embeddings=True), args=make_args(tmp_path, learning_rule=rule))


@pytest.mark.parametrize("negatives", ["shuffle", "self"])
def test_negative_strategies_run(tmp_path, packed, negatives):
    model = make_model(0)
    trainer = FFTrainer(model=model, args=make_args(tmp_path, negatives=negatives, max_steps=2), train_dataset=packed["train"])
    init = snapshot(model)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) and math.isfinite(h["layer_0/goodness_neg"]) for h in logs)
    assert not torch.equal(init["model.layers.1.mlp.up_proj.weight"], model.model.layers[1].mlp.up_proj.weight)


def test_readout_only_freezes_the_body(tmp_path, packed):
    model = make_model(0)
    trainer = FFTrainer(model=model, args=make_args(tmp_path, learning_rule="readout_only", max_steps=3),
                        train_dataset=packed["train"])
    init = snapshot(model)
    trainer.train()
    final = snapshot(model)
    body = [n for n in init if n.startswith(("model.embed_tokens.", "model.layers."))]
    readout = [n for n in init if n.startswith(READOUT_PREFIXES)]
    assert body and readout and len(body) + len(readout) == len(init)
    assert all(torch.equal(init[n], final[n]) for n in body)
    assert all(not torch.equal(init[n], final[n]) for n in readout)
    assert all(math.isfinite(x) for x in train_losses(trainer))


def test_pure_goodness(tmp_path, packed):
    model = make_model(0)
    trainer = FFTrainer(model=model, args=make_args(tmp_path, local_ce_weight=0.0, max_steps=2), train_dataset=packed["train"])
    init = snapshot(model)
    trainer.train()
    assert all(layer.local_head is None for layer in model.model.layers)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and "layer_0/ff_loss" in logs[0] and not any(k.endswith("local_ce") for k in logs[0])
    for layer in range(MODEL_KWARGS["num_hidden_layers"]):
        name = f"model.layers.{layer}.mlp.gate_proj.weight"
        assert not torch.equal(init[name], model.get_parameter(name)), name


# ----------------------------------------------------------------------------- 8. the command line
def test_cli_train_end_to_end(tmp_path, tinystories_dir, capsys):
    from transformers import AutoModelForCausalLM

    from hf_ffsleep.cli import main

    preset = {
        "description": "test preset: a tiny model for a few steps",
        "tokenizer": {"vocab_size": 512},
        "data": {"block_size": BLOCK},
        "model": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 172,
                  "max_position_embeddings": BLOCK},
        "training": {"max_steps": 1000, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
                     "learning_rate": 3e-3, "logging_steps": 1, "save_steps": 1000, "use_cpu": True,
                     "dataloader_num_workers": 0, "disable_tqdm": True, "seed": 0},
    }
    preset_path, out = tmp_path / "preset.json", tmp_path / "out"
    preset_path.write_text(json.dumps(preset))
    code = main(["train", "--preset", str(preset_path), "--output-dir", str(out), "--data-dir", str(tinystories_dir),
                 "--max-steps", "3", "--eval-blocks", "8"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "bits/byte" in printed and "sample story:" in printed
    assert printed.split("sample story:")[1].strip().startswith("Once upon a time")
    for name in ("model.safetensors", BANKS_FILE, "tokenizer.json", "config.json"):
        assert (out / name).is_file(), name

    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(loaded, FFSleepForCausalLM) and loaded.config.vocab_size == 512
    assert loaded.config.num_hidden_layers == 2
    results = json.loads((out / "eval_results.json").read_text())
    assert math.isfinite(results["eval_bits_per_byte"]) and 0 < results["eval_bits_per_byte"] < 10
    with torch.no_grad():
        logits = loaded(input_ids=torch.arange(10)[None]).logits
    assert logits.shape == (1, 10, 512) and torch.isfinite(logits).all()


def test_chunked_cross_entropy_matches_the_plain_sum(tmp_path):
    """`FFTrainer._backward` (chunked CE) gives the gradients of `loss + w * CE(F.linear(features, head))`."""
    trainer = FFTrainer(model=make_model(0), args=make_args(tmp_path, max_steps=1))
    torch.manual_seed(0)
    weight = torch.randn(64, 32)
    head = torch.randn(50, 32, requires_grad=True)
    x = torch.randn(37, 64)
    targets = torch.randint(0, 50, (37,))
    targets[3] = -100

    def inputs():
        w = weight.clone().requires_grad_()
        features = x @ w
        return w, features, (features ** 2).mean()

    w, features, extra = inputs()
    (extra + 0.7 * F.cross_entropy(F.linear(features, head), targets, ignore_index=-100)).backward()
    expected_w, expected_head = w.grad.clone(), head.grad.clone()
    head.grad = None
    w, features, extra = inputs()
    ce = trainer._backward(extra, (features, head, targets), 0.7, chunk=5)
    assert torch.allclose(w.grad, expected_w, atol=1e-5) and torch.allclose(head.grad, expected_head, atol=1e-5)
    assert ce == pytest.approx(F.cross_entropy(F.linear(x @ weight, head), targets, ignore_index=-100).item(), rel=1e-5)
