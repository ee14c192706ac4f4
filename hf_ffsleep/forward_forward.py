"""Forward-Forward: goodness, the layer-local losses, and negative data (Hinton 2022, arXiv 2212.13345).

Each layer `l` is trained by its own loss on inputs that arrive detached from the layers below:

    G_l(t)        = mean_j h_l(t)_j^2                          # goodness: the block's SwiGLU hidden activity
    hinton        = softplus(theta - G_pos(t))  (all t)  +  softplus(G_neg(t) - theta)  (corrupted t)
    symba         = softplus(-alpha * (G_pos(t) - G_neg(t)))   (corrupted t)   (Lee & Song 2023, SymBa)
    local CE      = CE(E . P_l RMSNorm_l(v_l(t)), y_{t+1})     # optional, weight `local_ce_weight`
    loss_l        = ff_weight * (hinton | symba) + local_ce_weight * local CE

Positive data is real text; negative data is the same text with a fraction `rho` of positions corrupted
(never position 0), and every position knows whether it is clean:

- `random`: the token is replaced by a draw from the unigram distribution;
- `shuffle`: the sequence's tokens are permuted, and the positions that changed are the corrupted ones;
- `self`: the token is replaced by a sample from the model's own prediction `p(. | x_<t)` (Hinton's "negative phase"
  with the model generating its own hard negatives); samples equal to the real token are not counted as corrupted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEGATIVE_STRATEGIES = ("random", "shuffle", "self")
FF_LOSSES = ("hinton", "symba")


def goodness(hidden: torch.Tensor) -> torch.Tensor:
    """`G(t) = mean_j h(t)_j^2` over the last dimension, in float32: `(batch, seq, n) -> (batch, seq)`."""
    return hidden.float().pow(2).mean(dim=-1)


def ff_loss(
    g_pos: torch.Tensor,
    g_neg: torch.Tensor,
    corrupted: torch.Tensor,
    kind: str = "hinton",
    threshold: float = 2.0,
    alpha: float = 4.0,
) -> torch.Tensor:
    """The FF loss of one layer from positive/negative goodness `(batch, seq)` and the corrupted-position mask."""
    if kind == "hinton":
        positive = F.softplus(threshold - g_pos).mean()
        negative = F.softplus(g_neg - threshold)[corrupted].mean() if corrupted.any() else g_neg.sum() * 0
        return positive + negative
    if kind == "symba":
        if not corrupted.any():
            return (g_pos.sum() + g_neg.sum()) * 0
        return F.softplus(-alpha * (g_pos - g_neg))[corrupted].mean()
    raise ValueError(f"Unknown ff_loss {kind!r}; choose one of {FF_LOSSES}.")


def separation(g_pos: torch.Tensor, g_neg: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """Fraction of corrupted positions where the real token beats its corruption, `G_pos > G_neg` (0.5 = chance)."""
    if not corrupted.any():
        return torch.tensor(float("nan"))
    return (g_pos > g_neg)[corrupted].float().mean()


def corruption_mask(input_ids: torch.Tensor, rate: float) -> torch.Tensor:
    """Bernoulli(`rate`) positions to corrupt, never position 0 (it has no context to be judged against)."""
    mask = torch.rand(input_ids.shape, device=input_ids.device) < rate
    mask[:, 0] = False
    return mask


def make_negatives(
    input_ids: torch.Tensor,
    strategy: str,
    rate: float,
    unigram: torch.Tensor | None = None,
    next_token_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt `input_ids`; returns `(negative_ids, corrupted)` with `corrupted` true where a token changed.

    `unigram (vocab,)` is needed for `random`; `next_token_logits (batch, seq, vocab)` — the model's prediction of
    token `t+1` at position `t`, computed on the clean text — for `self`.
    """
    mask = corruption_mask(input_ids, rate)
    if strategy == "random":
        if unigram is None:
            raise ValueError("`random` negatives need the unigram distribution.")
        draws = torch.multinomial(unigram.float(), input_ids.numel(), replacement=True).view_as(input_ids)
        negative = torch.where(mask, draws.to(input_ids.device), input_ids)
    elif strategy == "shuffle":
        order = torch.rand(input_ids.shape, device=input_ids.device).argsort(dim=-1)
        negative = torch.where(mask, input_ids.gather(1, order), input_ids)
    elif strategy == "self":
        if next_token_logits is None:
            raise ValueError("`self` negatives need the model's next-token logits.")
        probs = next_token_logits[:, :-1].float().softmax(dim=-1)
        draws = torch.multinomial(probs.flatten(0, 1), 1).view(input_ids.shape[0], -1)
        negative = input_ids.clone()
        negative[:, 1:] = torch.where(mask[:, 1:], draws, input_ids[:, 1:])
    else:
        raise ValueError(f"Unknown negatives {strategy!r}; choose one of {NEGATIVE_STRATEGIES}.")
    return negative, negative != input_ids


def depth_entropy(weights: torch.Tensor | None) -> torch.Tensor | None:
    """Mean entropy (nats) of a layer's softmax over depth, `(batch, seq, depth)`; `log(depth)` = uniform."""
    if weights is None:
        return None
    w = weights.float().clamp_min(1e-12)
    return -(w * w.log()).sum(-1).mean()


__all__ = [
    "FF_LOSSES",
    "NEGATIVE_STRATEGIES",
    "corruption_mask",
    "depth_entropy",
    "ff_loss",
    "goodness",
    "make_negatives",
    "separation",
]
