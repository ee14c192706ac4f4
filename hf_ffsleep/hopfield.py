"""`HopfieldBank`: a per-layer episodic memory with a modern-Hopfield read and reward-modulated Hebbian writes.

A bank holds `S` slots: unit keys `K` (S x d), unit values `V` (S x d) and signed strengths `s` (S), plus bookkeeping
(`used`, `last_write`, `write_count`). Its association matrix is `W = sum_i s_i V_i K_i^T`.

Read (Ramsauer et al., "Hopfield Networks is All You Need", arXiv 2008.02217, one update step):

    q       = normalize(u - c)                                 # centred unit query; c defaults to 0
    p       = softmax([beta * K q ; b_0])                      # used slots plus a null slot, b_0 = beta * null_cos
    read(q) = sum_i p_i s_i V_i                                # ~0 when no stored key is close to q

Write (Hebbian outer product, no autograd): a write of key `k`, value `v`, reward `r in [-1, 1]` is
`Delta W = eta * r * v k^T`, realised as: merge `s_i V_i += eta r v` into the slot with `cos(k, K_i) > tau`; otherwise
take a free slot; otherwise evict the weakest `|s_i|` (oldest first on ties). A merge that cancels a slot
(a 👎 on a 👍 memory) frees it instead of leaving a near-zero slot. `|s_i| <= max_strength` always, and non-finite
keys or values are dropped, so NaN and Inf never enter the bank.

The bank's state is a set of non-persistent buffers: it moves with `.to()`, but it is not part of `model.safetensors`;
`save_banks` / `load_banks` keep it in its own side-car file `hopfield_banks.safetensors`.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

BANKS_FILE = "hopfield_banks.safetensors"
BANKS_FORMAT_VERSION = "1"
# Dtypes of the per-slot tensors in the file; everything a bank needs to be restored exactly.
_BANK_TENSORS = ("keys", "values", "strengths", "used", "last_write", "write_count", "center")


class HopfieldBank(nn.Module):
    """One layer's memory bank; see the module docstring for the read and write equations.

    Args:
        hidden_size: width `d` of keys and values.
        slots: capacity `S`.
        beta: inverse temperature of the read.
        null_cos: cosine at which a stored key ties with the null slot.
        merge_threshold: cosine `tau` above which a write merges into an existing slot.
        write_rate: Hebbian rate `eta`.
        max_strength: bound on `|s_i|`.
    """

    def __init__(
        self,
        hidden_size: int,
        slots: int,
        beta: float = 300.0,
        null_cos: float = 0.96,
        merge_threshold: float = 0.999,
        write_rate: float = 1.0,
        max_strength: float = 1.0,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.slots = slots
        self.beta = beta
        self.null_cos = null_cos
        self.merge_threshold = merge_threshold
        self.write_rate = write_rate
        self.max_strength = max_strength
        self.register_buffer("keys", torch.zeros(slots, hidden_size), persistent=False)
        self.register_buffer("values", torch.zeros(slots, hidden_size), persistent=False)
        self.register_buffer("strengths", torch.zeros(slots), persistent=False)
        self.register_buffer("used", torch.zeros(slots, dtype=torch.bool), persistent=False)
        self.register_buffer("last_write", torch.zeros(slots, dtype=torch.long), persistent=False)
        self.register_buffer("write_count", torch.zeros(slots, dtype=torch.long), persistent=False)
        # Mean of the layer's activity, subtracted from queries (centring separates contexts better); 0 by default.
        self.register_buffer("center", torch.zeros(hidden_size), persistent=False)
        # Python-side counters, kept in sync with the buffers, so the hot path never syncs with the device.
        self.num_used = 0
        self.clock = 0

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, slots={self.slots}, beta={self.beta}, used={self.num_used}"

    # ------------------------------------------------------------------ state
    @torch.no_grad()
    def clear(self) -> None:
        """Forget everything (the centre is a calibration, not a memory, and is kept)."""
        for name in ("keys", "values", "strengths", "used", "last_write", "write_count"):
            getattr(self, name).zero_()
        self.num_used = 0
        self.clock = 0

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The bank's whole state as plain tensors (what `hopfield_banks.safetensors` stores)."""
        return {name: getattr(self, name) for name in _BANK_TENSORS}

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy a validated state in (shapes are checked by the caller, before any bank is touched)."""
        for name in _BANK_TENSORS:
            getattr(self, name).copy_(tensors[name])
        self.num_used = int(self.used.sum())
        self.clock = int(self.last_write.max()) if self.num_used else 0

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(getattr(self, name).shape) for name in _BANK_TENSORS}

    # ------------------------------------------------------------------ read
    def query(self, hidden: torch.Tensor) -> torch.Tensor:
        """Centred unit query `normalize(u - c)`, computed in float32 (beta amplifies rounding error)."""
        return F.normalize(hidden.float() - self.center.float(), dim=-1)

    def read(self, query: torch.Tensor) -> torch.Tensor | None:
        """`sum_i p_i s_i V_i` for unit queries `(..., d)`; `None` when the bank is empty (nothing to add)."""
        if self.num_used == 0:
            return None
        logits = self.beta * (query @ self.keys.float().T)
        logits = logits.masked_fill(~self.used, float("-inf"))
        null = torch.full_like(logits[..., :1], self.beta * self.null_cos)
        p = torch.cat([logits, null], dim=-1).softmax(dim=-1)[..., :-1]
        return p @ (self.strengths.float()[:, None] * self.values.float())

    # ------------------------------------------------------------------ write
    @torch.no_grad()
    def write(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        reward: float | torch.Tensor,
        match_keys: torch.Tensor | None = None,
    ) -> int:
        """Hebbian write of `n` associations: unit `keys (n, d)`, unit `values (n, d)`, reward scalar or `(n,)`.

        `match_keys (n, d)` (default: `keys`) are the keys that find an existing slot to merge into; `keys` are what
        a new slot stores. They differ in `memorize`, where a later layer's slots were keyed on the stream as the
        lower banks were *then*: a 👎 must find its 👍 by the stream before this write, even though the lower banks'
        own 👍 slots cancel within it. One write event moves a slot by at most `max_strength`, so an opposite write
        of the same text cancels exactly even where the first one saturated.

        Returns how many associations were stored (merged or given a slot).
        """
        keys = keys.detach().float().reshape(-1, self.hidden_size)
        values = values.detach().float().reshape(-1, self.hidden_size)
        match = keys if match_keys is None else match_keys.detach().float().reshape(-1, self.hidden_size)
        rate = self.write_rate * torch.as_tensor(reward, dtype=torch.float32, device=keys.device).expand(len(keys))
        finite = torch.isfinite(keys).all(-1) & torch.isfinite(values).all(-1) & torch.isfinite(rate) & (rate != 0)
        finite &= torch.isfinite(match).all(-1)
        keys, values, rate = F.normalize(keys[finite], dim=-1), values[finite], rate[finite]
        match = F.normalize(match[finite], dim=-1)
        if len(keys) == 0:
            return 0
        self.clock += 1

        # 1. Associations whose (match) key is close to a stored key merge into that slot.
        if self.num_used:
            cos = (match @ self.keys.T).masked_fill(~self.used, -2.0)
            best_cos, best_slot = cos.max(dim=-1)
            merge = best_cos > self.merge_threshold
        else:
            merge = torch.zeros(len(keys), dtype=torch.bool, device=keys.device)
        touched = torch.zeros(self.slots, dtype=torch.bool, device=keys.device)
        if merge.any():
            slots = best_slot[merge]
            slot_delta = torch.zeros(self.slots, self.hidden_size, device=keys.device)
            slot_delta.index_add_(0, slots, rate[merge, None] * values[merge])  # summed eta * r * v per slot
            touched[slots] = True
            self._merge(touched, self._bounded(slot_delta[touched]))

        # 2. The rest are grouped among themselves: each joins the first earlier one it matches (cos > tau).
        rest = ~merge
        keys, values, rate = keys[rest], values[rest], rate[rest]
        n_stored = int(merge.sum())
        if len(keys):
            same = (keys @ keys.T) > self.merge_threshold
            first = torch.tril(same).float().argmax(dim=-1)  # index of the first match (itself if none earlier)
            leaders = torch.unique(first)
            group = torch.searchsorted(leaders, first)
            delta = torch.zeros(len(leaders), self.hidden_size, device=keys.device)
            delta.index_add_(0, group, rate[:, None] * values)  # summed eta * r * v of each group
            delta = self._bounded(delta)
            sign = torch.zeros(len(leaders), device=keys.device).index_add_(0, group, rate).sign()
            group_keys = keys[leaders]

            # 3. Each group takes a free slot, then evicts the weakest untouched ones (oldest first on ties).
            strength_rank = torch.where(self.used, self.strengths.abs(), -1.0)  # free slots first
            order = torch.argsort(self.last_write, stable=True)
            order = order[torch.argsort(strength_rank[order], stable=True)]
            order = order[~touched[order]]
            n_new = min(len(leaders), len(order))
            slots = order[:n_new]
            d, s = delta[:n_new], sign[:n_new]
            s = torch.where(s == 0, torch.ones_like(s), s)
            norm = d.norm(dim=-1)
            self.keys[slots] = group_keys[:n_new]
            self.values[slots] = s[:, None] * d / norm.clamp_min(1e-12)[:, None]
            self.strengths[slots] = s * norm.clamp(max=self.max_strength)
            self.used[slots] = norm > 1e-6
            self.write_count[slots] = 0
            touched[slots] = True
            n_stored += int((group < n_new).sum())
        self.last_write[touched] = self.clock
        self.write_count[touched] += 1
        self.num_used = int(self.used.sum())
        return n_stored

    def _bounded(self, delta: torch.Tensor) -> torch.Tensor:
        """Rows of `delta` scaled down to norm <= `max_strength` (one write event moves a slot at most that far)."""
        norm = delta.norm(dim=-1, keepdim=True)
        return delta * (norm.clamp(max=self.max_strength) / norm.clamp_min(1e-12))

    def _merge(self, slots: torch.Tensor, delta: torch.Tensor) -> None:
        """`s_i V_i += delta_i` for the masked slots, keeping `V_i` unit and pointing the way it did."""
        old = self.strengths[slots][:, None] * self.values[slots]
        m = old + delta
        norm = m.norm(dim=-1)
        direction = torch.where((m * self.values[slots]).sum(-1, keepdim=True) < 0, -1.0, 1.0)
        keep = norm > 1e-6  # a 👎 that meets its 👍 cancels the slot
        self.values[slots] = torch.where(keep[:, None], direction * m / norm.clamp_min(1e-12)[:, None], 0.0)
        self.strengths[slots] = torch.where(keep, direction[:, 0] * norm.clamp(max=self.max_strength), 0.0)
        self.used[slots] = keep
        self.keys[slots] = torch.where(keep[:, None], self.keys[slots], 0.0)

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict[str, float | int]:
        used = self.used
        s = self.strengths[used]
        return {
            "slots": self.slots,
            "used": self.num_used,
            "mean_strength": float(s.mean()) if self.num_used else 0.0,
            "mean_abs_strength": float(s.abs().mean()) if self.num_used else 0.0,
            "negative": int((s < 0).sum()),
            "writes": int(self.write_count[used].sum()),
        }


# ---------------------------------------------------------------------- file
def save_banks(banks: dict[int, HopfieldBank], save_directory: str | os.PathLike, beta: float) -> str:
    """Write every bank to `save_directory/hopfield_banks.safetensors`, atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    tensors = {
        f"layers.{layer}.{name}": tensor.detach().cpu().contiguous()
        for layer, bank in banks.items()
        for name, tensor in bank.state_tensors().items()
    }
    metadata = {
        "format": "pt",
        "format_version": BANKS_FORMAT_VERSION,
        "layers": json.dumps(sorted(banks)),
        "slots_used": json.dumps({str(layer): bank.num_used for layer, bank in banks.items()}),
        "beta": str(beta),
    }
    path = os.path.join(save_directory, BANKS_FILE)
    fd, tmp = tempfile.mkstemp(prefix=".hopfield_banks.", suffix=".tmp", dir=save_directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


class BankFileError(ValueError):
    """`hopfield_banks.safetensors` is corrupt, truncated or does not fit the model."""


def read_bank_file(path: str | os.PathLike, banks: dict[int, HopfieldBank]) -> dict[int, dict[str, torch.Tensor]]:
    """Read and validate a banks file against `banks`; returns per-layer tensors, touching no bank.

    Raises `BankFileError` naming the file and, for a mismatch, the expected and found shapes.
    """
    from safetensors import safe_open

    name = os.path.basename(path)
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            found = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error types for truncated or garbled headers
        raise BankFileError(f"{name} at {path} is corrupt or truncated and cannot be read: {err}") from err

    version = metadata.get("format_version")
    if version != BANKS_FORMAT_VERSION:
        raise BankFileError(f"{name} at {path} has format_version {version!r}; expected {BANKS_FORMAT_VERSION!r}.")
    expected_keys = {f"layers.{layer}.{t}": shape for layer, b in banks.items() for t, shape in b.expected_shapes().items()}
    problems = []
    for key, shape in expected_keys.items():
        if key not in found:
            problems.append(f"{key}: expected shape {list(shape)}, found nothing")
        elif tuple(found[key].shape) != shape:
            problems.append(f"{key}: expected shape {list(shape)}, found {list(found[key].shape)}")
    for key in sorted(set(found) - set(expected_keys)):
        problems.append(f"{key}: not expected by this model, found shape {list(found[key].shape)}")
    if problems:
        raise BankFileError(
            f"{name} at {path} does not fit this model (bank layers {sorted(banks)}): " + "; ".join(problems)
        )
    for key, tensor in found.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise BankFileError(f"{name} at {path}: {key} holds NaN or Inf values.")
    return {layer: {t: found[f"layers.{layer}.{t}"] for t in _BANK_TENSORS} for layer in banks}
