"""`FFTrainer`: a `transformers.Trainer` whose training step is Forward-Forward, layer by layer, instead of backprop.

Under `learning_rule="forward_forward"` one training step is

    v_0 = Embed(x),  n_0 = Embed(x_neg)
    for l in 1..L:                                         # inputs from below arrive detached
        v_l, n_l = Block_l(v_0..v_{l-1}), Block_l(n_0..n_{l-1})     # backpropagated one pass after the other
        loss_l   = ff_weight * FF(G(v_l), G(n_l)) + local_ce_weight * CE(W_head RMSNorm_l(v_l), x_{t+1})
        backward(loss_l); free the graph; keep v_l, n_l detached
    readout: backward(CE(W_head RMSNorm(AttnRes_out(v_0..v_L)), x_{t+1}))      # on detached features
    optimizer step (the Trainer's own), per-layer gradient clipping

so no gradient crosses a layer boundary and peak activation memory is one layer's. The LM head `W_head` is layer 0's
local head: only layer 0's loss trains it, and every layer above it (and the readout) reads it detached. Sharing it
this way makes every layer's output decodable by the same head, so the readout's depth mix works from the first step,
while no lower layer ever depends on an upper one. (A head per layer, or one trained by every layer, measured worse
or breaks locality; see `trainer/README.md`.) `learning_rule="backprop"` trains
the same model end to end with next-token cross-entropy (the plain `Trainer` step): the baseline of every comparison.
`learning_rule="readout_only"` freezes the embedding and blocks at their initial weights and trains only the readout:
the "learned nothing" control.

Everything else is the `Trainer`'s: gradient accumulation, LR schedule, bf16 autocast, logging, callbacks,
checkpoints (which also hold the banks in `hopfield_banks.safetensors`) and exact resume, DDP through Accelerate.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

from .forward_forward import FF_LOSSES, NEGATIVE_STRATEGIES, depth_entropy, ff_loss, goodness, make_negatives, separation

LEARNING_RULES = ("forward_forward", "backprop", "readout_only")


@dataclass
class FFTrainingArguments(TrainingArguments):
    r"""`TrainingArguments` plus the learning rule and the Forward-Forward objective.

    Args:
        learning_rule (`str`, defaults to `"forward_forward"`):
            `"forward_forward"`: every layer learns from its own local loss on detached inputs.
            `"backprop"`: end-to-end next-token cross-entropy (the baseline).
            `"readout_only"`: embedding and blocks frozen at init, only the readout learns (the control).
        ff_loss (`str`, defaults to `"symba"`):
            `"symba"`: `softplus(-alpha (G_pos - G_neg))` at the corrupted positions (pairwise; it cannot be met by
            shrinking all activity); `"hinton"`: `softplus(theta - G_pos) + softplus(G_neg - theta)`.
        ff_weight (`float`, defaults to 0.05):
            Weight of the goodness term in each layer's loss. Must be > 0 for the objective to be Forward-Forward.
        ff_threshold (`float`, defaults to 2.0):
            `theta` of the Hinton loss, in units of mean squared activation.
        ff_alpha (`float`, defaults to 4.0):
            `alpha` of the SymBa loss.
        negatives (`str`, defaults to `"random"`):
            How negative data is made: `"random"` (unigram tokens), `"shuffle"` (permuted within the sequence) or
            `"self"` (samples from the model's own prediction; couples layers through the data, not the gradients).
        negative_rate (`float`, defaults to 0.2):
            Fraction `rho` of positions corrupted in the negative sequence.
        local_ce_weight (`float`, defaults to 1.0):
            Weight of each layer's next-token cross-entropy through its own local head (0 = pure goodness).
        local_ce_fraction (`float`, defaults to 0.25):
            Fraction of positions (drawn at random each step, the same for layers 1..L-1) on which the layers above
            layer 0 compute their local cross-entropy; layer 0, which trains the LM head, always uses all of them.
            A vocabulary-sized softmax per layer dominates the cost of a local step.
    """

    learning_rule: str = field(default="forward_forward", metadata={"help": f"One of {LEARNING_RULES}."})
    ff_loss: str = field(default="symba", metadata={"help": f"One of {FF_LOSSES}."})
    ff_weight: float = field(default=0.05, metadata={"help": "Weight of the goodness (FF) term per layer."})
    ff_threshold: float = field(default=2.0, metadata={"help": "Threshold theta of the Hinton FF loss."})
    ff_alpha: float = field(default=4.0, metadata={"help": "Scale alpha of the SymBa FF loss."})
    negatives: str = field(default="random", metadata={"help": f"Negative data, one of {NEGATIVE_STRATEGIES}."})
    negative_rate: float = field(default=0.2, metadata={"help": "Fraction of positions corrupted in negatives."})
    local_ce_weight: float = field(default=1.0, metadata={"help": "Weight of the per-layer local cross-entropy."})
    local_ce_fraction: float = field(default=0.25, metadata={"help": "Fraction of positions with a local CE term."})

    def __post_init__(self):
        super().__post_init__()
        for name, value, choices in (
            ("learning_rule", self.learning_rule, LEARNING_RULES),
            ("ff_loss", self.ff_loss, FF_LOSSES),
            ("negatives", self.negatives, NEGATIVE_STRATEGIES),
        ):
            if value not in choices:
                raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
        if not 0.0 < self.local_ce_fraction <= 1.0:
            raise ValueError(f"`local_ce_fraction` must be in (0, 1], got {self.local_ce_fraction}.")
        if not 0.0 < self.negative_rate <= 1.0:
            raise ValueError(f"`negative_rate` must be in (0, 1], got {self.negative_rate}.")
        if self.ff_weight < 0 or self.local_ce_weight < 0:
            raise ValueError("`ff_weight` and `local_ce_weight` must be >= 0.")
        if self.learning_rule == "forward_forward" and self.ff_weight == 0 and self.local_ce_weight == 0:
            raise ValueError("`forward_forward` needs `ff_weight > 0` or `local_ce_weight > 0`: nothing would train the layers.")


def causal_lm_collator(features: list[dict]) -> dict[str, torch.Tensor]:
    """Stack packed blocks into `input_ids`, with `labels = input_ids` (the model shifts them)."""
    input_ids = torch.stack([torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features])
    return {"input_ids": input_ids, "labels": input_ids.clone()}


class FFTrainer(Trainer):
    """A `Trainer` for `FFSleepForCausalLM` that replaces backprop with per-layer Forward-Forward steps.

    Overrides only what differs: `training_step` (the layer-by-layer local updates), `_clip_grad_norm` (per layer),
    `evaluation_loop` (adds `eval_bits_per_byte`), `_load_from_checkpoint` (restores the banks) and `log` (adds the
    per-layer FF metrics).
    """

    def __init__(self, model=None, args: FFTrainingArguments | None = None, data_collator=None, **kwargs):
        args = args if args is not None else FFTrainingArguments(output_dir="ffsleep-output")
        if not isinstance(args, FFTrainingArguments):
            raise TypeError("FFTrainer needs FFTrainingArguments.")
        if args.learning_rule != "backprop" and args.fp16:
            raise ValueError(f"`{args.learning_rule}` supports bf16 mixed precision, not fp16 (its loss scaling).")
        if args.learning_rule != "backprop" and model.config.tie_word_embeddings:
            raise ValueError(f"`{args.learning_rule}` needs tie_word_embeddings=False: tying couples the bottom layer and the readout.")
        if args.learning_rule == "forward_forward" and args.local_ce_weight > 0:
            model.enable_local_heads()
        if args.learning_rule == "readout_only":
            for module in (model.model.embed_tokens, model.model.layers):
                module.requires_grad_(False)
        super().__init__(model=model, args=args, data_collator=data_collator or causal_lm_collator, **kwargs)
        self._head_owned_by_layer_0 = _head_owned_by_layer_0(args)
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._unigram: torch.Tensor | None = None
        self._byte_lengths: torch.Tensor | None = None
        self._bytes_per_token: dict[int, float] = {}

    # ------------------------------------------------------------------ training
    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.args.learning_rule == "backprop":
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        unwrapped = self.accelerator.unwrap_model(model)
        with self.compute_loss_context_manager():
            loss = self._local_step(unwrapped, inputs["input_ids"], inputs.get("labels"))
        if self.accelerator.num_processes > 1 and self.accelerator.sync_gradients:
            self._all_reduce_gradients(unwrapped)
        return loss

    def _local_step(self, model, input_ids: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """One Forward-Forward (or readout-only) step on a batch; returns the readout loss, scaled for accumulation."""
        args, core = self.args, model.model
        scale = 1.0 / self.current_gradient_accumulation_steps
        targets = (labels if labels is not None else input_ids)[:, 1:]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand_as(input_ids)
        position_embeddings = core.position_embeddings(positions)
        train_layers = args.learning_rule == "forward_forward"
        use_ff = train_layers and args.ff_weight > 0

        # The layers are called on the unwrapped model, so Accelerate's autocast (which wraps the prepared model's
        # `forward`) never applies here: every forward runs under it explicitly, every backward outside it.
        autocast = self.accelerator.autocast

        corrupted = None
        ce_positions = self._local_ce_positions(targets) if train_layers and args.local_ce_weight > 0 else None
        with autocast():
            streams = {"pos": [core.embed_tokens(input_ids)]}
            if use_ff:
                negative_ids, corrupted = self._negatives(model, input_ids)
                streams["neg"] = [core.embed_tokens(negative_ids)]

        for index, layer in enumerate(core.layers):
            if not train_layers:  # readout_only: frozen blocks, no graph
                with torch.no_grad(), autocast():
                    streams["pos"].append(layer(streams["pos"], position_embeddings).hidden)
                continue
            # Layer 0 owns the embedding, so it alone sees it attached; every other input arrives detached.
            inputs = {name: states if index == 0 else [s.detach() for s in states] for name, states in streams.items()}
            # Positive and negative passes are backpropagated one after the other, so only one graph is alive at a
            # time: each sees the other's goodness as a constant, which gives the same gradients as one joint loss.
            g_neg = None
            if use_ff:
                with torch.no_grad(), autocast():
                    g_neg = goodness(layer(inputs["neg"], position_embeddings).mlp_hidden)
            with autocast():
                positive = layer(inputs["pos"], position_embeddings)
                loss, local_ce_input, g_pos = self._layer_loss(index, layer, model, positive, g_neg, ce_positions, corrupted)
            local_ce = self._backward(loss * scale, local_ce_input, args.local_ce_weight * scale)
            self._record(f"layer_{index}/local_ce", local_ce)
            streams["pos"].append(positive.hidden.detach())
            if use_ff:
                with autocast():
                    negative = layer(inputs["neg"], position_embeddings)
                    g_neg = goodness(negative.mlp_hidden)
                    term = ff_loss(g_pos, g_neg, corrupted, args.ff_loss, args.ff_threshold, args.ff_alpha)
                self.accelerator.backward(args.ff_weight * term * scale)
                streams["neg"].append(negative.hidden.detach())
                self._record_goodness(f"layer_{index}/", term, g_pos, g_neg.detach(), corrupted)

        with autocast():
            hidden, weights = core.readout([s.detach() for s in streams["pos"]])
        # With local heads, the LM head belongs to layer 0 (see `parameter_groups_by_layer`): the readout reads it detached.
        head = model.lm_head.weight.detach() if self._head_owned_by_layer_0 else model.lm_head.weight
        features = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        readout_ce = self._backward(None, (features, head, targets.reshape(-1)), scale)
        self._record("readout_ce", readout_ce)
        self._record("readout_depth_entropy", depth_entropy(weights))
        return readout_ce.detach() * scale

    def _local_ce_positions(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat indices of the `(batch, seq-1)` positions that get a local CE term this step, and their targets.

        Layer 0 owns the LM head and always uses every position (kept in `_all_positions`); the layers above use a
        random `local_ce_fraction` of them.
        """
        flat = targets.reshape(-1)
        keep = torch.nonzero(flat != -100).flatten()
        self._all_positions = keep, flat[keep]
        if self.args.local_ce_fraction < 1.0:
            count = max(1, round(self.args.local_ce_fraction * len(keep)))
            keep = keep[torch.randperm(len(keep), device=keep.device)[:count]]
        return keep, flat[keep]

    def _layer_loss(self, index, layer, model, positive, g_neg, ce_positions, corrupted):
        """The positive pass's part of one layer's loss.

        Returns `ff_weight * FF(G_pos, G_neg)` with `G_neg` held constant (0 without negatives), the
        `(features, head, targets)` of the local cross-entropy (left to `_backward`, which never builds the full
        `positions x vocab` logits; None without local CE), and `G_pos` detached for the negative pass.
        """
        args = self.args
        loss = torch.zeros((), device=positive.hidden.device)
        local_ce_input = None
        if ce_positions is not None:
            head = model.lm_head.weight if index == 0 else model.lm_head.weight.detach()
            index_, target = ce_positions if index > 0 else self._all_positions
            hidden = positive.hidden[:, :-1].reshape(-1, positive.hidden.shape[-1])[index_]
            local_ce_input = (layer.local_head.norm(hidden), head, target)
        g_pos = None
        if g_neg is not None:
            g_pos = goodness(positive.mlp_hidden)
            loss = loss + args.ff_weight * ff_loss(g_pos, g_neg, corrupted, args.ff_loss, args.ff_threshold, args.ff_alpha)
            g_pos = g_pos.detach()
        self._record(f"layer_{index}/depth_entropy", depth_entropy(positive.depth_weights))
        return loss, local_ce_input, g_pos

    def _record_goodness(self, prefix, term, g_pos, g_neg, corrupted) -> None:
        self._record(prefix + "ff_loss", term)
        self._record(prefix + "goodness_pos", g_pos.mean())
        self._record(prefix + "goodness_neg", g_neg[corrupted].mean() if corrupted.any() else None)
        self._record(prefix + "separation", separation(g_pos, g_neg, corrupted))

    def _backward(self, loss, ce_input, ce_weight: float, chunk: int = 2048):
        """Backward of `loss + ce_weight * CE(F.linear(features, head), targets)`; returns the CE (mean, detached).

        The cross-entropy runs chunk by chunk on a detached copy of `features` (each chunk's logits freed after its
        backward), then one backward carries `loss` and the features' gradient into the layer: the same gradients as
        the plain sum, but peak memory holds one chunk of logits instead of all `positions x vocab` of them.
        """
        if ce_input is None:
            self.accelerator.backward(loss)
            return None
        features, head, targets = ce_input
        leaf = features.detach().requires_grad_()
        count = max(int((targets != -100).sum()), 1)
        total = torch.zeros((), device=features.device)
        for start in range(0, len(targets), chunk):
            with self.accelerator.autocast():
                logits = F.linear(leaf[start : start + chunk], head.to(leaf.dtype))
            part = F.cross_entropy(logits.float(), targets[start : start + chunk], ignore_index=-100, reduction="sum")
            self.accelerator.backward(part * (ce_weight / count))
            total += part.detach()
        surrogate = (features * leaf.grad.to(features.dtype)).sum()  # d(surrogate)/d(features) = leaf.grad
        self.accelerator.backward(surrogate if loss is None else loss + surrogate)
        return total / count

    @torch.no_grad()
    def _negatives(self, model, input_ids):
        """Negative data per `args.negatives`; the unigram table is counted once from the training set."""
        args = self.args
        if args.negatives == "random" and self._unigram is None:
            self._unigram = self._count_unigram(model.config.vocab_size).to(input_ids.device)
        logits = None
        if args.negatives == "self":
            logits = model(input_ids=input_ids, use_cache=False).logits
        return make_negatives(input_ids, args.negatives, args.negative_rate, self._unigram, logits)

    def _count_unigram(self, vocab_size: int, max_blocks: int = 4096) -> torch.Tensor:
        """Token frequencies of (up to `max_blocks` blocks of) the training set, add-one smoothed."""
        dataset = self.train_dataset
        rows = dataset.select(range(min(len(dataset), max_blocks))) if hasattr(dataset, "select") else dataset
        counts = torch.ones(vocab_size, dtype=torch.float64)
        for row in rows:
            ids = torch.as_tensor(row["input_ids"]).flatten()
            counts += torch.bincount(ids, minlength=vocab_size)[:vocab_size].double()
        return (counts / counts.sum()).float()

    def _all_reduce_gradients(self, model) -> None:
        """Average gradients over processes (DDP's job, done by hand: the local steps bypass DDP's forward)."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch._utils._flatten_dense_tensors(grads)
        torch.distributed.all_reduce(flat)
        flat /= self.accelerator.num_processes
        for grad, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            grad.copy_(synced)

    def _clip_grad_norm(self, model):
        """Per-layer clipping under local rules (a global norm would let one layer's gradient scale another's).

        Returns the norm over all parameters before clipping, as the `Trainer` logs it.
        """
        if self.args.learning_rule == "backprop":
            return super()._clip_grad_norm(model)
        norms = []
        for group in parameter_groups_by_layer(self.accelerator.unwrap_model(model), self._head_owned_by_layer_0):
            params = [p for p in group if p.grad is not None]
            if params:
                norms.append(torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm))
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())

    # ------------------------------------------------------------------ logging
    def _record(self, name: str, value) -> None:
        if value is not None and self.model.training:
            value = float(value.detach()) if torch.is_tensor(value) else float(value)
            if math.isfinite(value):
                self._metrics[name].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each per-layer FF metric since the last log to the training logs."""
        if self._metrics and not any(key.startswith("eval_") for key in logs):
            logs = {**logs, **{name: round(sum(v) / len(v), 5) for name, v in self._metrics.items() if v}}
            self._metrics.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ evaluation
    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        """The `Trainer`'s loop, plus `{prefix}_bits_per_byte = loss per token * tokens / (ln 2 * bytes)`."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        loss = output.metrics.get(f"{metric_key_prefix}_loss")
        bytes_per_token = self._eval_bytes_per_token(dataloader.dataset)
        if loss is not None and bytes_per_token:
            output.metrics[f"{metric_key_prefix}_bits_per_byte"] = loss / math.log(2) / bytes_per_token
        return output

    def _eval_bytes_per_token(self, dataset) -> float | None:
        """Mean UTF-8 bytes of the predicted tokens (every token but each block's first) of an eval set."""
        if self.processing_class is None or not hasattr(dataset, "with_format"):
            return None
        key = id(dataset)
        if key not in self._bytes_per_token:
            from .tokenization import token_byte_lengths

            if self._byte_lengths is None:
                self._byte_lengths = token_byte_lengths(self.processing_class)
            ids = dataset.with_format("torch")[:]["input_ids"][:, 1:]
            self._bytes_per_token[key] = float(self._byte_lengths[ids].double().mean())
        return self._bytes_per_token[key]

    # ------------------------------------------------------------------ checkpoints
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Load the weights as the `Trainer` does, then the banks saved beside them."""
        import os

        from .hopfield import BANKS_FILE

        super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        path = os.path.join(resume_from_checkpoint, BANKS_FILE)
        if target.banks:
            if os.path.isfile(path):
                target.load_banks(path)
            else:
                target.clear_memory()


def _head_owned_by_layer_0(args: FFTrainingArguments) -> bool:
    """Whether the LM head is trained by layer 0's local cross-entropy (and used detached above it)."""
    return args.learning_rule == "forward_forward" and args.local_ce_weight > 0


def parameter_groups_by_layer(model, head_owned_by_layer_0: bool = True) -> list[list[torch.nn.Parameter]]:
    """Parameters grouped by the local loss that trains them: [embedding + layer 0 (+ LM head)], layer 1, ..., readout.

    With local cross-entropy the LM head is layer 0's local head (upper layers and the readout read it detached);
    without it (pure goodness) the head belongs to the readout.
    """
    core = model.model
    head = list(model.lm_head.parameters())
    groups = [list(core.embed_tokens.parameters()) + list(core.layers[0].parameters())]
    groups += [list(layer.parameters()) for layer in core.layers[1:]]
    readout = [p for m in (core.depth_out, core.norm) if m is not None for p in m.parameters()]
    if head_owned_by_layer_0:
        groups[0] += head
    else:
        readout += head
    return groups + [readout]


__all__ = ["FFTrainer", "FFTrainingArguments", "LEARNING_RULES", "causal_lm_collator", "parameter_groups_by_layer"]
