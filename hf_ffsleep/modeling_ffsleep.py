"""The FFSleep model: a Llama-style decoder with attention residuals over depth and a Hopfield bank per layer.

    v_0 = Embed(tokens)                                   # RoPE inside attention, no learned positions
    for l in 1..L:
        x_l = AttnRes_l(v_0 .. v_{l-1})                   # attention over depth (attention_residual.py)
        a_l = x_l + SelfAttn_l(RMSNorm(x_l))              # causal, RoPE, KV cache
        u_l = a_l + MLP_l(RMSNorm(a_l))                   # SwiGLU
        v_l = u_l + g * rms(u_l) * Bank_l.read(q(u_l))    # only where layer l has a bank (hopfield.py)
    z      = AttnRes_out(v_0 .. v_L)
    logits = LMHead(RMSNorm(z))

With `attn_residual=False`, `x_l = v_{l-1}` and `z = v_L`: the ordinary residual stream.

This file, `configuration_ffsleep.py`, `attention_residual.py` and `hopfield.py` are what `save_pretrained` copies for
`trust_remote_code`; they import nothing else from the package.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .attention_residual import DepthAttention
from .configuration_ffsleep import FFSleepConfig
from .hopfield import BANKS_FILE, BankFileError, HopfieldBank, read_bank_file, save_banks


# ----------------------------------------------------------------------------- building blocks
class FFSleepRMSNorm(nn.Module):
    """`x / rms(x) * weight`."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def rotary_embedding(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE `cos, sin` of shape `(batch, seq, head_dim)` for integer positions (computed in float32, no buffers)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim)
    angles = position_ids.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x (batch, heads, seq, head_dim)` by the position angles."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class FFSleepAttention(nn.Module):
    """Causal multi-head self-attention with RoPE, through `scaled_dot_product_attention`, with a KV cache."""

    def __init__(self, config: FFSleepConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        d = config.hidden_size
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.o_proj.is_residual_output = True  # scaled init, see `_init_weights`

    def forward(self, x, position_embeddings, attention_mask=None, cache: Cache | None = None) -> torch.Tensor:
        batch, seq, _ = x.shape

        def heads(t):
            return t.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)

        cos, sin = position_embeddings
        q = apply_rotary(heads(self.q_proj(x)), cos, sin)
        k = apply_rotary(heads(self.k_proj(x)), cos, sin)
        v = heads(self.v_proj(x))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if attention_mask is None:  # no padding, no past: the plain causal kernel
            out = F.scaled_dot_product_attention(q, k, v, is_causal=seq > 1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class FFSleepMLP(nn.Module):
    """SwiGLU: `down(silu(gate(x)) * up(x))`; the hidden `h = silu(gate(x)) * up(x)` can be returned for goodness."""

    def __init__(self, config: FFSleepConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.down_proj.is_residual_output = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.silu(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(hidden), hidden


class FFSleepLocalHead(nn.Module):
    """Layer `l`'s next-token readout for layer-local cross-entropy: `logits = W_head RMSNorm_l(v_l)`.

    Only the norm is the layer's own; `W_head` is the model's LM head, passed in by the trainer (attached for layer 0,
    which owns it, detached above), so every layer learns to speak the head's language at `d` extra parameters.
    """

    def __init__(self, config: FFSleepConfig):
        super().__init__()
        self.norm = FFSleepRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, head_weight: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(hidden), head_weight.to(hidden.dtype))


@dataclass
class MemoryWrite:
    """What `memorize` asks every banked layer to store: unit `values (batch, seq, d)` at the `mask`ed positions.

    `paired`: the forward runs the batch twice, `[before; after]`. The *before* half reads every bank as it was before
    this write (the stream the stored slots were keyed on, so its queries find the slots to merge into); the *after*
    half reads each bank with the write applied (the stream a later read sees, so its queries key the new slots).
    """

    values: torch.Tensor
    mask: torch.Tensor
    reward: float
    paired: bool = False


@dataclass
class LayerOutput:
    """One block's result: its output `v_l`, its depth weights over `v_0..v_{l-1}`, its MLP hidden activations."""

    hidden: torch.Tensor
    depth_weights: torch.Tensor | None
    mlp_hidden: torch.Tensor


class FFSleepDecoderLayer(nn.Module):
    """Block `l`: depth attention over earlier outputs, self-attention, SwiGLU MLP, then the bank read."""

    def __init__(self, config: FFSleepConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        # Layer 0 has a single predecessor (the embedding): a mix over one state needs no pseudo-query.
        self.state_scale = config.state_scale if config.attn_residual and config.normalize_states else None
        self.depth_attn = DepthAttention(config.hidden_size, config.rms_norm_eps, self.state_scale) if (
            config.attn_residual and layer_idx > 0
        ) else None
        self.eps = config.rms_norm_eps
        self.input_layernorm = FFSleepRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = FFSleepAttention(config, layer_idx)
        self.post_attention_layernorm = FFSleepRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = FFSleepMLP(config)
        self.local_head = FFSleepLocalHead(config) if config.local_heads else None
        self.bank_read_gate = config.bank_read_gate
        self.bank = (
            HopfieldBank(
                config.hidden_size,
                config.bank_slots,
                beta=config.bank_beta,
                null_cos=config.bank_null_cos,
                merge_threshold=config.bank_merge_threshold,
                write_rate=config.bank_write_rate,
                max_strength=config.bank_max_strength,
            )
            if layer_idx in config.banked_layers
            else None
        )

    def forward(
        self,
        states: list[torch.Tensor],
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        memory_write: MemoryWrite | None = None,
    ) -> LayerOutput:
        """`states` are `v_0 .. v_{l-1}`; in Forward-Forward training the caller passes them detached."""
        if self.depth_attn is not None:
            x, depth_weights = self.depth_attn(states)
        else:
            x, depth_weights = states[-1], None
            if self.state_scale is not None:  # layer 0 reads the embedding normalised too
                x = self.state_scale * F.rms_norm(x, (x.shape[-1],), eps=self.eps)
        a = x + self.self_attn(self.input_layernorm(x), position_embeddings, attention_mask, cache)
        mlp_out, mlp_hidden = self.mlp(self.post_attention_layernorm(a))
        u = a + mlp_out
        return LayerOutput(self.read_memory(u, memory_write), depth_weights, mlp_hidden)

    def read_memory(self, u: torch.Tensor, memory_write: MemoryWrite | None = None) -> torch.Tensor:
        """`v = u + g * rms(u) * read(q(u))`; a pending `memorize` writes first, so its own read already sees it."""
        if self.bank is None:
            return u
        if memory_write is not None or self.bank.num_used:
            with torch.autocast(u.device.type, enabled=False):
                query = self.bank.query(u)
                if memory_write is not None and memory_write.paired:
                    before, after = query.chunk(2)
                    recalled_before = self.bank.read(before)  # the bank as it was: read before writing
                    mask = memory_write.mask
                    self.bank.write(after[mask], memory_write.values[mask], memory_write.reward, match_keys=before[mask])
                    recalled_after = self.bank.read(after)
                    recalled = None
                    if recalled_before is not None or recalled_after is not None:
                        zeros = torch.zeros_like(before)
                        recalled = torch.cat([
                            zeros if recalled_before is None else recalled_before,
                            zeros if recalled_after is None else recalled_after,
                        ])
                else:
                    if memory_write is not None:
                        mask = memory_write.mask
                        self.bank.write(query[mask], memory_write.values[mask], memory_write.reward)
                    recalled = self.bank.read(query)
            if recalled is not None:
                scale = u.detach().float().pow(2).mean(-1, keepdim=True).sqrt()
                return u + (self.bank_read_gate * scale * recalled).to(u.dtype)
        return u


# ----------------------------------------------------------------------------- outputs
@dataclass
class FFSleepModelOutput(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus `depth_weights`: per layer `(batch, seq, l)`, then the readout's `(.., L+1)`."""

    depth_weights: tuple[torch.Tensor, ...] | None = None


@dataclass
class FFSleepCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus `depth_weights` (see `FFSleepModelOutput`)."""

    depth_weights: tuple[torch.Tensor, ...] | None = None


# ----------------------------------------------------------------------------- models
class FFSleepPreTrainedModel(PreTrainedModel):
    """Weight init, and the banks' side-car file `hopfield_banks.safetensors` in `save_pretrained`/`from_pretrained`."""

    config_class = FFSleepConfig
    config: FFSleepConfig
    base_model_prefix = "model"
    _no_split_modules = ["FFSleepDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_output", False):  # GPT-2 style: keep the residual stream's scale
                std = std / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, FFSleepRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, DepthAttention):
            init.zeros_(module.pseudo_query)  # uniform mix over depth at start
        elif isinstance(module, HopfieldBank):
            with torch.no_grad():  # banks are state, not weights: a new model starts with empty ones
                module.center.zero_()
                module.clear()

    # -- banks
    @property
    def banks(self) -> dict[int, HopfieldBank]:
        """`{layer index: HopfieldBank}` for every banked layer."""
        return {i: layer.bank for i, layer in enumerate(self.base_model.layers) if layer.bank is not None}

    def enable_local_heads(self) -> None:
        """Add a `FFSleepLocalHead` to every layer that lacks one (and record it in the config)."""
        self.config.local_heads = True
        for layer in self.base_model.layers:
            if layer.local_head is None:
                layer.local_head = FFSleepLocalHead(self.config).to(self.device)

    def clear_memory(self) -> None:
        """Empty every bank; the model then computes exactly its bank-free function."""
        for bank in self.banks.values():
            bank.clear()

    def memory_stats(self) -> dict:
        """Slots used per layer, mean strength, negatives and writes; plus totals."""
        layers = {layer: bank.stats() for layer, bank in self.banks.items()}
        return {
            "layers": layers,
            "slots_used": sum(s["used"] for s in layers.values()),
            "capacity": sum(s["slots"] for s in layers.values()),
        }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the banks in `hopfield_banks.safetensors` beside the weights."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True) and self.banks:
            save_banks(self.banks, save_directory, beta=self.config.bank_beta)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then the banks from `hopfield_banks.safetensors` (none: empty banks)."""
        hub_kwargs = {
            k: kwargs[k]
            for k in ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
            if k in kwargs
        }
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        path = _resolve_banks_file(pretrained_model_name_or_path, **hub_kwargs)
        if path is not None and model.banks:
            model.load_banks(path)
        return loaded

    def load_banks(self, path: str | os.PathLike) -> None:
        """Load banks from a file; a file that does not fit raises `BankFileError` and leaves every bank as it was."""
        banks = self.banks
        state = read_bank_file(path, banks)  # validates everything before any bank is touched
        for layer, bank in banks.items():
            bank.load_state_tensors(state[layer])


def _resolve_banks_file(name_or_path, subfolder: str = "", **hub_kwargs) -> str | None:
    """Local path of `hopfield_banks.safetensors` for a local folder or a Hub repo; `None` when there is none."""
    local = os.path.join(str(name_or_path), subfolder or "", BANKS_FILE)
    if os.path.isdir(str(name_or_path)):
        return local if os.path.isfile(local) else None
    from transformers.utils import cached_file

    return cached_file(
        name_or_path,
        BANKS_FILE,
        subfolder=subfolder,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )


class FFSleepModel(FFSleepPreTrainedModel):
    """The decoder without the LM head: embedding, blocks, readout depth attention and final norm."""

    def __init__(self, config: FFSleepConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(FFSleepDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.depth_out = (
            DepthAttention(
                config.hidden_size, config.rms_norm_eps, config.state_scale if config.normalize_states else None
            )
            if config.attn_residual
            else None
        )
        self.norm = FFSleepRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def position_embeddings(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rotary_embedding(position_ids, self.config.head_dim, self.config.rope_theta)

    def readout(self, states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`RMSNorm(AttnRes_out(v_0 .. v_L))` (or `RMSNorm(v_L)` without attention residuals), and the depth weights."""
        if self.depth_out is None:
            return self.norm(states[-1]), None
        z, weights = self.depth_out(states)
        return self.norm(z), weights

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_depth_weights: bool = False,
        memory_write: MemoryWrite | None = None,
        **kwargs,
    ) -> FFSleepModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        cache = kwargs.pop("past_key_values", cache)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        batch, seq = inputs_embeds.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is not None and attention_mask.ndim != 2:
            raise ValueError(f"`attention_mask` must be 2-D (batch, past + seq), got shape {tuple(attention_mask.shape)}.")
        if position_ids is None:
            if attention_mask is not None:  # left padding: count only real tokens
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -seq:]
            else:
                position_ids = torch.arange(past, past + seq, device=inputs_embeds.device)[None].expand(batch, -1)
        mask = _causal_mask(attention_mask, seq, past, inputs_embeds.device)
        position_embeddings = self.position_embeddings(position_ids)

        states = [inputs_embeds]
        depth_weights = []
        for layer in self.layers:
            out = layer(states, position_embeddings, mask, cache, memory_write)
            states.append(out.hidden)
            depth_weights.append(out.depth_weights)
        hidden, out_weights = self.readout(states)
        depth_weights.append(out_weights)
        return FFSleepModelOutput(
            last_hidden_state=hidden,
            cache=cache if use_cache else None,
            hidden_states=tuple(states) if output_hidden_states else None,
            depth_weights=tuple(depth_weights) if output_depth_weights else None,
        )


def _causal_mask(attention_mask: torch.Tensor | None, seq: int, past: int, device) -> torch.Tensor | None:
    """Boolean `(batch, 1, seq, past + seq)` mask (True = may attend), or `None` for the plain causal case.

    A padded query still sees itself, so fully padded rows never produce NaN.
    """
    if attention_mask is None and (past == 0 or seq == 1):
        return None
    total = past + seq
    query_pos = torch.arange(past, total, device=device)[:, None]
    key_pos = torch.arange(total, device=device)[None, :]
    allowed = (key_pos <= query_pos)[None, None]
    if attention_mask is not None:
        if attention_mask.shape[-1] != total:
            raise ValueError(f"`attention_mask` covers {attention_mask.shape[-1]} positions; expected past + seq = {total}.")
        allowed = (allowed & attention_mask[:, None, None, :].bool()) | (key_pos == query_pos)[None, None]
    return allowed


class FFSleepForCausalLM(FFSleepPreTrainedModel, GenerationMixin):
    """FFSleep with its LM head: `generate()`, one-shot Hebbian `memorize()`, `clear_memory()`, `memory_stats()`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # The loss is a per-token mean already: the Trainer must not rescale it by items or by world size.
    accepts_loss_kwargs = False

    def __init__(self, config: FFSleepConfig):
        super().__init__(config)
        self.model = FFSleepModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._value_table_cache = None
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_depth_weights: bool = False,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> FFSleepCausalLMOutput:
        """Causal LM forward; `labels` (with -100 ignored) give the shifted next-token cross-entropy in `loss`."""
        kwargs.pop("return_dict", None)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_depth_weights=output_depth_weights,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
            )
        return FFSleepCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            depth_weights=outputs.depth_weights,
        )

    # ------------------------------------------------------------------ memory
    @torch.no_grad()
    def value_table(self) -> torch.Tensor:
        """Unit vectors `c_y (vocab, d)` that make token `y` the readout's argmax: the whitened head rows.

        With `H = W_head diag(g_norm)`, `c_y = normalize((H^T H)^{-1} h_y)`: the least-squares direction whose logits
        `H c_y` concentrate on `y`. The raw row `h_y` is a poor memory value (its logits spread over similar rows).
        Cached, and recomputed whenever the head or the final norm changes (their in-place version counters move).
        """
        head, gain = self.lm_head.weight, self.model.norm.weight
        key = (head.data_ptr(), head._version, gain.data_ptr(), gain._version, head.device)
        if self._value_table_cache is None or self._value_table_cache[0] != key:
            h = head.float() * gain.float()[None, :]
            gram = h.T @ h
            ridge = 1e-6 * gram.diagonal().mean() * torch.eye(len(gram), device=gram.device)
            table = F.normalize(torch.linalg.solve(gram + ridge, h.T).T, dim=-1)
            self._value_table_cache = (key, table)
        return self._value_table_cache[1]

    @torch.no_grad()
    def memorize(
        self, input_ids: torch.LongTensor, reward: float = 1.0, attention_mask: torch.Tensor | None = None
    ) -> int:
        """Write a sequence's next-token associations into every bank (reward-modulated Hebbian, no gradients).

        For each position `t` with a real successor: key = the layer's query at `t` (computed with the lower banks
        already written, in one forward pass), value = the readout direction of token `t+1`, reward `r in [-1, 1]`:
        `r > 0` makes that continuation more likely in that context, `r < 0` suppresses it. Existing slots are found
        by the query as the banks were before this write, so an opposite reward on the same text cancels its memory
        in every layer.
        Returns the number of associations written per bank (the same for every bank).
        """
        reward = float(reward)
        if not math.isfinite(reward) or not -1.0 <= reward <= 1.0:
            raise ValueError(f"`reward` must be a finite number in [-1, 1], got {reward}.")
        if not self.banks:
            raise ValueError("This model has no Hopfield banks (config.bank_layers is empty); nothing to memorize.")
        input_ids = torch.as_tensor(input_ids, device=self.device)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
            attention_mask = None if attention_mask is None else torch.as_tensor(attention_mask)[None]
        if input_ids.shape[1] < 2:
            return 0
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        real = real.to(input_ids.device)
        mask = torch.zeros_like(real)
        mask[:, :-1] = real[:, :-1] & real[:, 1:]
        values = torch.zeros(*input_ids.shape, self.config.hidden_size, device=input_ids.device)
        values[:, :-1] = self.value_table()[input_ids[:, 1:]]
        # With memories present, a layer's existing slots were keyed on the stream as the lower banks were before
        # this write; a second copy of the batch keeps that stream for finding them (see `MemoryWrite.paired`).
        paired = any(bank.num_used for bank in self.banks.values())
        if paired:
            input_ids = torch.cat([input_ids, input_ids])
            attention_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
        self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            memory_write=MemoryWrite(values=values, mask=mask, reward=reward, paired=paired),
        )
        return int(mask.sum())


__all__ = ["FFSleepPreTrainedModel", "FFSleepModel", "FFSleepForCausalLM", "BankFileError"]
