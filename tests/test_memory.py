"""Issue #2 acceptance: one-shot Hopfield memory (`memorize`, `clear_memory`, `memory_stats`) on a random-init model.

Bank settings are the defaults of `FFSleepConfig` unless a test says otherwise; every behaviour is checked with and
without attention residuals.
"""

from __future__ import annotations

import math

import pytest
import torch

from hf_ffsleep import FFSleepForCausalLM, HopfieldBank

pytestmark = pytest.mark.usefixtures("single_thread")

BOTH = pytest.mark.parametrize("attn_residual", [True, False], ids=["attnres", "plain"])
SEEDS = pytest.mark.parametrize("seed", [0, 1, 2])

VALID_FILE = "valid-000.txt"


def build(config, seed: int = 0) -> FFSleepForCausalLM:
    torch.manual_seed(seed)
    return FFSleepForCausalLM(config).eval()


def random_ids(n: int, seed: int, batch: int = 1, vocab: int = 512) -> torch.Tensor:
    return torch.randint(1, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def next_token_probs(model, seq: torch.Tensor) -> torch.Tensor:
    """p(seq[t+1] | seq[:t+1]) for every t."""
    probs = model(seq).logits[0, :-1].float().softmax(-1)
    return probs.gather(-1, seq[0, 1:, None])[:, 0]


def assert_banks_healthy(model) -> None:
    for layer, bank in model.banks.items():
        used = bank.used
        assert bank.num_used == int(used.sum()) <= bank.slots, layer
        for name, tensor in bank.state_tensors().items():
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all(), f"layer {layer} {name} holds NaN/Inf"
        assert (bank.strengths.abs() <= bank.max_strength + 1e-6).all(), f"layer {layer}: |strength| > max"
        assert (bank.strengths[~used] == 0).all()
        if bank.num_used:
            torch.testing.assert_close(bank.keys[used].norm(dim=-1), torch.ones(bank.num_used))
            torch.testing.assert_close(bank.values[used].norm(dim=-1), torch.ones(bank.num_used))


# ----------------------------------------------------------------------------- one-shot recall
@BOTH
@SEEDS
def test_one_shot_memory_recall_and_clear(tiny_config, attn_residual, seed):
    model = build(tiny_config, seed)
    seq = random_ids(64, 1000 + seed)
    bank_free = model(seq).logits
    bank_free_gen = model.generate(seq[:, :8], max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert (bank_free[0, :-1].argmax(-1) == seq[0, 1:]).float().mean() < 0.1  # it did not know seq before

    n = model.memorize(seq, reward=1.0)
    assert n == 63  # one association per position with a successor

    logits = model(seq).logits
    accuracy = (logits[0, :-1].argmax(-1) == seq[0, 1:]).float().mean().item()
    assert accuracy >= 0.90, f"teacher-forced recall {accuracy:.3f} < 0.90"

    out = model.generate(seq[:, :8], max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert torch.equal(out[0, 8:28], seq[0, 8:28]), f"greedy recall {out[0, 8:28].tolist()} != {seq[0, 8:28].tolist()}"

    model.clear_memory()
    assert model.memory_stats()["slots_used"] == 0
    assert torch.equal(model(seq).logits, bank_free)
    assert torch.equal(
        model.generate(seq[:, :8], max_new_tokens=20, min_new_tokens=20, do_sample=False), bank_free_gen
    )


@BOTH
@SEEDS
def test_negative_reward_suppresses(tiny_config, attn_residual, seed):
    model = build(tiny_config, seed)
    seq = random_ids(64, 2000 + seed)
    # first a positive memory, then clear: the negative write must act on a fresh (cleared) model
    model.memorize(seq, reward=1.0)
    model.clear_memory()
    before = next_token_probs(model, seq)
    assert model.memorize(seq, reward=-1.0) == 63
    after = next_token_probs(model, seq)
    assert after.mean() < before.mean(), f"mean p(next) {after.mean():.5f} not below bank-free {before.mean():.5f}"
    assert (after < before).float().mean() >= 0.9  # nearly every position is suppressed
    stats = model.memory_stats()
    assert all(s["negative"] == s["used"] > 0 for s in stats["layers"].values())
    assert_banks_healthy(model)


def _assert_cancelled(model, seq, bank_free):
    for layer, bank in model.banks.items():
        live = bank.strengths[bank.used].abs()
        assert live.numel() == 0 or live.max() < 1e-4, (
            f"layer {layer}: {bank.num_used} slots still hold |strength| up to {live.max():.3g}"
        )
    torch.testing.assert_close(model(seq).logits, bank_free, rtol=1e-4, atol=1e-4)


@BOTH
@SEEDS
@pytest.mark.parametrize("order", [(1.0, -1.0), (-1.0, 1.0)], ids=["up-then-down", "down-then-up"])
def test_opposite_rewards_cancel(tiny_config, attn_residual, seed, order):
    """A 👎 that meets a 👍 on the same text cancels it (and vice versa), in every banked layer."""
    model = build(tiny_config, seed)
    seq = random_ids(64, 3000 + seed)
    bank_free = model(seq).logits
    model.memorize(seq, reward=order[0])
    assert model.memory_stats()["slots_used"] > 0
    model.memorize(seq, reward=order[1])
    _assert_cancelled(model, seq, bank_free)


@BOTH
def test_repeated_positive_then_negative_saturation_cancels(tiny_config, attn_residual):
    """Sequences with repeated contexts (merged slots) and repeated writes stay bounded and still cancel."""
    model = build(tiny_config, 7)
    motif = random_ids(8, 7)
    seq = torch.cat([motif, motif, random_ids(16, 8), motif], dim=1)  # repeated contexts merge into shared slots
    bank_free = model(seq).logits
    model.memorize(seq, reward=1.0)
    assert_banks_healthy(model)
    model.memorize(seq, reward=-1.0)
    _assert_cancelled(model, seq, bank_free)


# ----------------------------------------------------------------------------- bookkeeping and bounds
@BOTH
def test_memory_stats_and_return_value(tiny_config, attn_residual):
    model = build(tiny_config)
    stats = model.memory_stats()
    assert set(stats["layers"]) == {0, 1, 2}
    assert stats["slots_used"] == 0 and stats["capacity"] == 3 * tiny_config.bank_slots
    assert all(s["used"] == 0 and s["slots"] == tiny_config.bank_slots for s in stats["layers"].values())

    assert model.memorize(random_ids(64, 1), reward=1.0) == 63
    assert model.memorize(random_ids(32, 2)[0], reward=0.5) == 31  # 1-D input
    assert model.memorize(random_ids(1, 3), reward=1.0) == 0  # nothing follows a single token
    # a padded batch: only real (token, successor) pairs are associations
    ids = random_ids(20, 4, batch=2)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding on row 1
    assert model.memorize(ids, reward=1.0, attention_mask=mask) == 19 + 14

    stats = model.memory_stats()
    per_layer = [stats["layers"][layer]["used"] for layer in (0, 1, 2)]
    assert stats["slots_used"] == sum(per_layer)
    assert all(63 <= used <= 63 + 31 + 19 + 14 for used in per_layer), per_layer
    assert per_layer == [bank.num_used for bank in model.banks.values()]
    assert all(s["negative"] == 0 and s["writes"] >= s["used"] for s in stats["layers"].values())
    assert_banks_healthy(model)


@BOTH
def test_many_writes_with_eviction_stay_bounded_and_finite(make_tiny_config, attn_residual):
    config = make_tiny_config(bank_slots=40)
    model = build(config)
    gen = torch.Generator().manual_seed(0)
    for i in range(25):
        seq = random_ids(int(torch.randint(2, 60, (1,), generator=gen)), 100 + i)
        reward = [1.0, -1.0, 0.3, -0.7, 1.0][i % 5]
        model.memorize(seq, reward=reward)
        assert_banks_healthy(model)
        assert all(bank.num_used <= 40 for bank in model.banks.values())
    # the same text written many times saturates, never grows past max_strength
    seq = random_ids(30, 999)
    for _ in range(6):
        model.memorize(seq, reward=1.0)
    assert_banks_healthy(model)
    assert all(bank.num_used == 40 for bank in model.banks.values())  # full: later writes evicted older slots
    # the most recent memory survives eviction
    accuracy = (model(seq).logits[0, :-1].argmax(-1) == seq[0, 1:]).float().mean()
    assert accuracy >= 0.9
    logits = model(random_ids(64, 5)).logits
    assert torch.isfinite(logits).all()


def test_bank_never_stores_nan_or_inf():
    bank = HopfieldBank(hidden_size=8, slots=4)
    keys, values = torch.randn(3, 8), torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    keys[1, 0] = float("nan")
    values[2, 3] = float("inf")
    assert bank.write(keys, values, 1.0) == 1
    assert bank.num_used == 1
    assert bank.write(torch.randn(2, 8), values[:2], float("nan")) == 0
    for tensor in bank.state_tensors().values():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all()
    assert torch.isfinite(bank.read(torch.nn.functional.normalize(torch.randn(5, 8), dim=-1))).all()


@pytest.mark.parametrize("reward", [1.5, -1.01, float("nan"), float("inf"), -float("inf")])
def test_reward_out_of_range_raises(tiny_config, reward):
    model = build(tiny_config)
    with pytest.raises(ValueError, match=r"reward.*\[-1, 1\]"):
        model.memorize(random_ids(16, 0), reward=reward)
    assert model.memory_stats()["slots_used"] == 0  # nothing written


def test_model_without_banks(make_tiny_config, tmp_path):
    model = build(make_tiny_config(bank_layers=[]))
    assert model.banks == {}
    with pytest.raises(ValueError, match=r"no Hopfield banks.*bank_layers"):
        model.memorize(random_ids(16, 0))
    model.clear_memory()  # a no-op, not an error
    assert model.memory_stats()["slots_used"] == 0
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not (tmp_path / "hopfield_banks.safetensors").exists()
    again = FFSleepForCausalLM.from_pretrained(tmp_path)
    ids = random_ids(10, 1)
    assert torch.equal(again(ids).logits, model(ids).logits)


@BOTH
def test_partial_bank_layers(make_tiny_config, attn_residual):
    model = build(make_tiny_config(bank_layers=[1, 2]))
    assert sorted(model.banks) == [1, 2] and model.model.layers[0].bank is None
    seq = random_ids(64, 11)
    bank_free = (model(seq).logits[0, :-1].argmax(-1) == seq[0, 1:]).float().mean()
    assert model.memorize(seq) == 63
    assert model.memory_stats()["layers"][1]["used"] > 0
    accuracy = (model(seq).logits[0, :-1].argmax(-1) == seq[0, 1:]).float().mean()
    # Measured: plain residual 0.98-1.0; attention residuals ~0.5 with normalised states (0.79-0.83 before them):
    # the readout's uniform depth mix at init dilutes the upper layers' reads; all three layers banked, as by
    # default, gives 0.92-1.0. A known weakness of banks on upper layers only, at initialisation.
    assert accuracy >= (0.9 if not attn_residual else 0.4)
    assert accuracy > bank_free + 0.3


# ----------------------------------------------------------------------------- specificity
@pytest.fixture(scope="module")
def text_blocks(tokenizer512) -> torch.Tensor:
    """20 blocks of 128 tokens from the start of valid-000.txt (tokenised with the vocab-512 tokenizer)."""
    from conftest import TINYSTORIES_DIR  # noqa: PLC0415 (pytest puts tests/ on sys.path)

    with open(TINYSTORIES_DIR / VALID_FILE, encoding="utf-8") as f:
        text = f.read(60_000)
    ids = tokenizer512(text, add_special_tokens=False, verbose=False)["input_ids"]
    assert len(ids) >= 20 * 128
    return torch.tensor(ids[: 20 * 128]).view(20, 128)


@BOTH
def test_specificity_unrelated_text_loss_barely_moves(make_tiny_config, attn_residual, text_blocks):
    # Room for all 50 memories (50 x 63 associations per layer), so none is evicted.
    model = build(make_tiny_config(bank_slots=4096))
    with torch.no_grad():
        before = model(text_blocks, labels=text_blocks).loss.item()
    total = 0
    for i in range(50):
        total += model.memorize(random_ids(64, 5000 + i), reward=1.0)
    assert total == 50 * 63
    used = [bank.num_used for bank in model.banks.values()]
    assert all(u >= 0.95 * 50 * 63 for u in used), used  # (merges of near-identical contexts aside) all stored
    with torch.no_grad():
        after = model(text_blocks, labels=text_blocks).loss.item()
    relative = abs(after - before) / before
    assert relative <= 0.02, f"LM loss on unrelated text moved {relative:.2%} ({before:.4f} -> {after:.4f})"
    # and the memories are really there: the last one is recalled
    last = random_ids(64, 5000 + 49)
    assert (model(last).logits[0, :-1].argmax(-1) == last[0, 1:]).float().mean() >= 0.9
    assert math.isfinite(after)
