"""Issue #2 acceptance: saving and loading — `save_pretrained` / `from_pretrained`, the banks' side-car file
`hopfield_banks.safetensors`, `trust_remote_code` in a fresh process, bad files, atomic saves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from hf_ffsleep import BANKS_FILE, BankFileError, FFSleepForCausalLM

pytestmark = pytest.mark.usefixtures("single_thread")

BOTH = pytest.mark.parametrize("attn_residual", [True, False], ids=["attnres", "plain"])
WITH_MEMORY = pytest.mark.parametrize("with_memory", [False, True], ids=["empty-banks", "memories"])
CODE_FILES = ("configuration_ffsleep.py", "modeling_ffsleep.py", "attention_residual.py", "hopfield.py")


def build(config, seed: int = 0) -> FFSleepForCausalLM:
    torch.manual_seed(seed)
    return FFSleepForCausalLM(config).eval()


def random_ids(n: int, seed: int, batch: int = 1, vocab: int = 512) -> torch.Tensor:
    return torch.randint(1, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def fill_memory(model, seed: int = 50) -> None:
    model.memorize(random_ids(64, seed), reward=1.0)
    model.memorize(random_ids(40, seed + 1), reward=-0.6)
    model.memorize(random_ids(30, seed + 2), reward=0.4)


def bank_snapshot(model) -> dict:
    return {
        layer: ({k: v.clone() for k, v in bank.state_tensors().items()}, bank.num_used, bank.clock)
        for layer, bank in model.banks.items()
    }


def assert_same_banks(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for layer in a:
        tensors_a, used_a, clock_a = a[layer]
        tensors_b, used_b, clock_b = b[layer]
        assert (used_a, clock_a) == (used_b, clock_b), layer
        for name in tensors_a:
            assert torch.equal(tensors_a[name], tensors_b[name]), f"layer {layer} {name}"


def no_temp_files(directory) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(".") or "tmp" in n.lower()]


# ----------------------------------------------------------------------------- round trip
@BOTH
@WITH_MEMORY
def test_save_and_load_round_trip(tiny_config, attn_residual, with_memory, tmp_path):
    model = build(tiny_config)
    if with_memory:
        fill_memory(model)
    ids = random_ids(48, 7, batch=2)
    logits = model(ids).logits
    model.save_pretrained(tmp_path)

    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", BANKS_FILE, *CODE_FILES} <= files
    assert not no_temp_files(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "ffsleep"
    assert config["attn_residual"] is attn_residual
    assert config["auto_map"]["AutoConfig"] == "configuration_ffsleep.FFSleepConfig"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_ffsleep.FFSleepForCausalLM"
    # the bank state lives only in its side-car file, not among the weights
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        assert not any(".bank." in k for k in f.keys())
    with safe_open(tmp_path / BANKS_FILE, framework="pt") as f:
        meta = f.metadata()
        assert json.loads(meta["layers"]) == [0, 1, 2]
        assert meta["format_version"] and float(meta["beta"]) == tiny_config.bank_beta
        assert json.loads(meta["slots_used"]) == {str(k): b.num_used for k, b in model.banks.items()}

    for loader in (FFSleepForCausalLM, AutoModelForCausalLM):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is FFSleepForCausalLM
        assert loaded.config.attn_residual is attn_residual
        assert_same_banks(bank_snapshot(loaded), bank_snapshot(model))
        assert loaded.memory_stats() == model.memory_stats()
        assert torch.equal(loaded(ids).logits, logits)
    # and the loaded model goes on remembering and forgetting like the original
    if with_memory:
        seq = random_ids(64, 50)
        assert (loaded(seq).logits[0, :-1].argmax(-1) == seq[0, 1:]).float().mean() >= 0.9
        loaded.clear_memory()
        model.clear_memory()
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_missing_banks_file_means_empty_banks(tiny_config, tmp_path):
    model = build(tiny_config)
    ids = random_ids(32, 3)
    bank_free = model(ids).logits
    fill_memory(model)
    model.save_pretrained(tmp_path)
    os.remove(tmp_path / BANKS_FILE)
    loaded = FFSleepForCausalLM.from_pretrained(tmp_path)
    assert loaded.memory_stats()["slots_used"] == 0
    assert torch.equal(loaded(ids).logits, bank_free)


def test_overwriting_a_save_replaces_the_banks(tiny_config, tmp_path):
    model = build(tiny_config)
    fill_memory(model)
    model.save_pretrained(tmp_path)
    model.clear_memory()
    model.memorize(random_ids(20, 9))
    model.save_pretrained(tmp_path)
    assert not no_temp_files(tmp_path)
    loaded = FFSleepForCausalLM.from_pretrained(tmp_path)
    assert_same_banks(bank_snapshot(loaded), bank_snapshot(model))


# ----------------------------------------------------------------------------- trust_remote_code, fresh process
CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoPackage(importlib.abc.MetaPathFinder):
        # Any attempt to import the installed package fails loudly: only the code saved beside the weights may run.
        def find_spec(self, name, path=None, target=None):
            if name == "hf_ffsleep" or name.startswith("hf_ffsleep."):
                raise ImportError(f"{name} must not be imported by a trust_remote_code load")
            return None

    sys.meta_path.insert(0, NoPackage())
    import torch
    from transformers import AutoModelForCausalLM

    report = {}
    for name, directory in json.loads(sys.argv[1]).items():
        model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()
        ref = torch.load(f"{directory}/reference.pt")
        with torch.no_grad():
            logits = model(ref["input_ids"]).logits
        report[name] = {
            "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "slots_used": model.memory_stats()["slots_used"],
            "equal": bool(torch.equal(logits, ref["logits"])),
            "max_diff": float((logits - ref["logits"]).abs().max()),
            "generate_equal": bool(torch.equal(
                model.generate(ref["input_ids"][:, :8], max_new_tokens=10, min_new_tokens=10, do_sample=False),
                ref["generated"],
            )),
        }
    assert "hf_ffsleep" not in sys.modules, sorted(m for m in sys.modules if m.startswith("hf_ffsleep"))
    print("REPORT " + json.dumps(report))
    """
)


def test_trust_remote_code_in_fresh_process(make_tiny_config, tmp_path):
    dirs, expected_slots = {}, {}
    for attn_residual in (True, False):
        for with_memory in (False, True):
            name = f"{'attnres' if attn_residual else 'plain'}-{'memories' if with_memory else 'empty'}"
            model = build(make_tiny_config(attn_residual=attn_residual), seed=len(dirs))
            if with_memory:
                fill_memory(model)
            directory = tmp_path / name
            model.save_pretrained(directory)
            ids = random_ids(40, 8)
            with torch.no_grad():
                torch.save(
                    {
                        "input_ids": ids,
                        "logits": model(ids).logits,
                        "generated": model.generate(ids[:, :8], max_new_tokens=10, min_new_tokens=10, do_sample=False),
                    },
                    directory / "reference.pt",
                )
            dirs[name] = str(directory)
            expected_slots[name] = model.memory_stats()["slots_used"]
    assert expected_slots["attnres-memories"] > 0 and expected_slots["plain-memories"] > 0

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(dirs)],
        cwd=tmp_path,  # not the repository: the package is not importable from the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("REPORT "))
    report = json.loads(line[len("REPORT ") :])
    assert set(report) == set(dirs)
    for name, r in report.items():
        assert r["class"].startswith("transformers_modules.") and r["class"].endswith("FFSleepForCausalLM"), r
        assert r["slots_used"] == expected_slots[name], (name, r)
        assert r["equal"], (name, r)
        assert r["generate_equal"], (name, r)


# ----------------------------------------------------------------------------- bad files
@pytest.fixture
def saved_with_memories(tiny_config, tmp_path):
    model = build(tiny_config, seed=1)
    fill_memory(model, seed=60)
    directory = tmp_path / "good"
    model.save_pretrained(directory)
    return directory


def _model_with_other_memories(config):
    model = build(config, seed=2)
    fill_memory(model, seed=70)
    return model


def test_truncated_banks_file(tiny_config, saved_with_memories, tmp_path):
    path = saved_with_memories / BANKS_FILE
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, 5):
        bad = tmp_path / f"cut{cut}" / BANKS_FILE
        bad.parent.mkdir()
        bad.write_bytes(data[:cut])
        model = _model_with_other_memories(tiny_config)
        before = bank_snapshot(model)
        with pytest.raises(BankFileError, match=r"hopfield_banks\.safetensors.*(corrupt|truncated)"):
            model.load_banks(bad)
        assert_same_banks(bank_snapshot(model), before)  # nothing half-loaded
    # from_pretrained raises too
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BankFileError, match=r"hopfield_banks\.safetensors"):
        FFSleepForCausalLM.from_pretrained(saved_with_memories)
    assert issubclass(BankFileError, ValueError)


@pytest.mark.parametrize(
    "other",
    [
        dict(bank_slots=16),  # a model with a smaller bank
        dict(hidden_size=32),  # a narrower model
    ],
    ids=["bank_slots", "hidden_size"],
)
def test_incompatible_config_banks_file(make_tiny_config, tmp_path, other):
    writer = build(make_tiny_config(**other))
    fill_memory(writer)
    writer.save_pretrained(tmp_path / "other")
    bad = tmp_path / "other" / BANKS_FILE

    model = _model_with_other_memories(make_tiny_config())
    before = bank_snapshot(model)
    with pytest.raises(BankFileError) as info:
        model.load_banks(bad)
    message = str(info.value)
    assert BANKS_FILE in message
    expected_keys, found_keys = (1024, 64), (other.get("bank_slots", 1024), other.get("hidden_size", 64))
    assert f"expected shape {list(expected_keys)}, found {list(found_keys)}" in message, message
    assert_same_banks(bank_snapshot(model), before)

    # into a saved model's folder: from_pretrained raises (and names the file and shapes)
    model.save_pretrained(tmp_path / "mixed")
    os.replace(bad, tmp_path / "mixed" / BANKS_FILE)
    with pytest.raises(BankFileError, match=r"hopfield_banks\.safetensors.*expected shape \[1024, 64\], found"):
        FFSleepForCausalLM.from_pretrained(tmp_path / "mixed")


def test_bad_last_layer_loads_nothing(tiny_config, saved_with_memories, tmp_path):
    """Layers 0 and 1 of the file are fine, layer 2 is not: no bank may be loaded, not even the first ones."""
    path = saved_with_memories / BANKS_FILE
    with safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()

    cases = {
        "shape": {**tensors, "layers.2.keys": tensors["layers.2.keys"][:-1]},
        "missing": {k: v for k, v in tensors.items() if k != "layers.2.values"},
        "extra": {**tensors, "layers.7.keys": tensors["layers.2.keys"].clone()},
        "nan": {**tensors, "layers.2.values": torch.full_like(tensors["layers.2.values"], float("nan"))},
    }
    patterns = {
        "shape": r"layers\.2\.keys: expected shape \[1024, 64\], found \[1023, 64\]",
        "missing": r"layers\.2\.values: expected shape \[1024, 64\], found nothing",
        "extra": r"layers\.7\.keys: not expected",
        "nan": r"layers\.2\.values.*NaN",
    }
    for case, content in cases.items():
        bad = tmp_path / case / BANKS_FILE
        bad.parent.mkdir()
        save_file(content, bad, metadata=metadata)
        model = _model_with_other_memories(tiny_config)
        before = bank_snapshot(model)
        ids = random_ids(30, 4)
        logits = model(ids).logits
        with pytest.raises(BankFileError, match=r"hopfield_banks\.safetensors") as info:
            model.load_banks(bad)
        assert re.search(patterns[case], str(info.value)), (case, str(info.value))
        assert_same_banks(bank_snapshot(model), before)
        assert torch.equal(model(ids).logits, logits)


def test_wrong_format_version(tiny_config, saved_with_memories, tmp_path):
    path = saved_with_memories / BANKS_FILE
    with safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    save_file(tensors, tmp_path / BANKS_FILE, metadata={**metadata, "format_version": "99"})
    model = _model_with_other_memories(tiny_config)
    before = bank_snapshot(model)
    with pytest.raises(BankFileError, match=r"hopfield_banks\.safetensors.*format_version"):
        model.load_banks(tmp_path / BANKS_FILE)
    assert_same_banks(bank_snapshot(model), before)


# ----------------------------------------------------------------------------- atomic saves
def test_failed_banks_save_leaves_old_file_and_no_temp_files(tiny_config, tmp_path, monkeypatch):
    import safetensors.torch

    model = build(tiny_config)
    fill_memory(model)
    model.save_pretrained(tmp_path)
    good = (tmp_path / BANKS_FILE).read_bytes()
    real_save_file = safetensors.torch.save_file

    def half_then_crash(tensors, filename, metadata=None):
        if os.path.basename(str(filename)) != "model.safetensors":  # the banks' write: die half-way
            real_save_file(dict(list(tensors.items())[:3]), filename, metadata=metadata)
            raise OSError("disk full")
        return real_save_file(tensors, filename, metadata=metadata)

    model.memorize(random_ids(20, 99))
    monkeypatch.setattr(safetensors.torch, "save_file", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / BANKS_FILE).read_bytes() == good  # the old banks are intact
    assert not no_temp_files(tmp_path), os.listdir(tmp_path)
    FFSleepForCausalLM.from_pretrained(tmp_path)  # and still load
