"""Attention residuals: each layer reads a per-token softmax mix over depth of all earlier layers' outputs.

Kimi Team, *Attention Residuals* (arXiv 2603.15031). Instead of the fixed residual sum `x_l = v_{l-1} + ...`,

    alpha_{i->l} = softmax_i( w_l . RMSNorm(v_i) )          for i = 0 .. l-1   (per token)
    x_l          = sum_i alpha_{i->l} v_i

with one learned pseudo-query `w_l in R^d` per layer, initialised to zero so that every layer starts from the uniform
mean of its predecessors. The key norm has no gain: a gain would only rescale `w_l`. With `value_scale = s`, the mix
is over normalised states, `x_l = sum_i alpha_i s RMSNorm(v_i)` (Hinton's length normalisation between layers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DepthAttention(nn.Module):
    """Softmax-over-depth mix `x = sum_i softmax_i(w . RMSNorm(v_i)) v_i` with a zero-initialised pseudo-query `w`."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, value_scale: float | None = None):
        super().__init__()
        self.pseudo_query = nn.Parameter(torch.zeros(hidden_size))
        self.eps = eps
        # Mix `value_scale * RMSNorm(v_i)` instead of `v_i`: only the direction of each state passes on.
        self.value_scale = value_scale

    def forward(self, states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix `states` (each `(batch, seq, d)`); returns the mix and the weights `(batch, seq, len(states))`."""
        stacked = torch.stack(states, dim=-2)  # (batch, seq, depth, d)
        keys = F.rms_norm(stacked, (stacked.shape[-1],), eps=self.eps)
        weights = (keys @ self.pseudo_query.to(keys.dtype)).softmax(dim=-1)
        values = stacked if self.value_scale is None else self.value_scale * keys
        mixed = (weights.unsqueeze(-1) * values).sum(dim=-2)
        return mixed, weights


__all__ = ["DepthAttention"]
