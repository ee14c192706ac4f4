"""`FFSleepConfig`: every size and switch of the FFSleep model, in one place."""

from transformers import PreTrainedConfig


class FFSleepConfig(PreTrainedConfig):
    r"""
    Configuration of an [`FFSleepForCausalLM`]: a Llama-style decoder (RoPE, RMSNorm, SwiGLU) whose layers
    read earlier layers through *attention residuals* and carry *Hopfield memory banks*.

    Args:
        vocab_size (`int`, defaults to 4096):
            Number of tokens in the vocabulary.
        hidden_size (`int`, defaults to 128):
            Width `d` of the residual stream.
        num_hidden_layers (`int`, defaults to 4):
            Number of transformer blocks `L`.
        num_attention_heads (`int`, defaults to 4):
            Attention heads per block; `hidden_size` must be divisible by it.
        intermediate_size (`int`, defaults to 512):
            Hidden width of the SwiGLU MLP.
        max_position_embeddings (`int`, defaults to 512):
            Longest sequence the model is meant for (RoPE itself has no hard limit).
        rope_theta (`float`, defaults to 10000.0):
            Base of the rotary position embedding.
        rms_norm_eps (`float`, defaults to 1e-5):
            Epsilon of every RMSNorm.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of linear and embedding weights.
        tie_word_embeddings (`bool`, defaults to `False`):
            Tie the LM head to the input embedding. Off by default: tying would let the readout's loss write into
            the bottom layer's embedding and break Forward-Forward locality.
        attn_residual (`bool`, defaults to `True`):
            Use attention residuals (each layer takes a per-token softmax mix over all earlier layers' outputs, with
            a zero-initialised pseudo-query). `False` gives the ordinary residual stream, for ablations.
        normalize_states (`bool`, defaults to `True`):
            With attention residuals, mix the *normalised* earlier outputs, `x_l = sum_i alpha_i s RMSNorm(v_i)`:
            activity passes between layers by its direction only (Hinton's length normalisation), so a layer cannot
            read its predecessor's goodness from the norm, and no layer's scale drowns the others in a mix.
        state_scale (`float`, defaults to 0.02):
            The length `s` (per-coordinate RMS) at which normalised states are passed on: the embedding's initial
            scale, so that at initialisation a block's own output is comparable to its input and carries context.
        bank_layers (`list[int]`, *optional*):
            Indices (0-based) of the layers that carry a Hopfield bank. `None` means every layer; `[]` means none.
        bank_slots (`int`, defaults to 1024):
            Capacity `S` of each bank (key/value slots).
        bank_beta (`float`, defaults to 300.0):
            Inverse temperature of the modern-Hopfield read, `softmax(beta * K q)`. High, so that a slot answers only
            to a near-exact context.
        bank_null_cos (`float`, defaults to 0.96):
            Cosine at which a stored key ties with the null slot (null logit `b_0 = bank_beta * bank_null_cos`).
            Contexts less similar than this to every key read (almost) nothing.
        bank_merge_threshold (`float`, defaults to 0.999):
            A write whose key has cosine above this with a stored key merges into that slot instead of taking a new
            one.
        bank_write_rate (`float`, defaults to 1.0):
            Hebbian rate `eta`: a write with reward `r` adds `eta * r` of strength.
        bank_max_strength (`float`, defaults to 1.0):
            Bound on `|s_i|` of every slot (saturating Hebbian writes keep the norms bounded).
        bank_read_gate (`float`, defaults to 8.0):
            Gate `g` of the read: `v_l = u_l + g * rms(u_l) * read(q)`, i.e. measured in units of the residual
            stream's own scale.
        local_heads (`bool`, defaults to `False`):
            Give every layer its own norm for a next-token readout through the shared LM head
            (`W_head RMSNorm_l(v_l)`), used by the layer-local cross-entropy of Forward-Forward training.
            `FFTrainer` switches it on when it needs it.
        bos_token_id, eos_token_id, pad_token_id (`int`, *optional*):
            Special token ids (the tokenizer's `<|endoftext|>` plays all three roles).
    """

    model_type = "ffsleep"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 4096
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    attn_residual: bool = True
    normalize_states: bool = True
    state_scale: float = 0.02
    bank_layers: list[int] | None = None
    bank_slots: int = 1024
    bank_beta: float = 300.0
    bank_null_cos: float = 0.96
    bank_merge_threshold: float = 0.999
    bank_write_rate: float = 1.0
    bank_max_strength: float = 1.0
    bank_read_gate: float = 8.0
    local_heads: bool = False
    use_cache: bool = True
    bos_token_id: int | None = 0
    eos_token_id: int | None = 0
    pad_token_id: int | None = 0

    def __post_init__(self, **kwargs):
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.bank_layers is not None:
            self.bank_layers = sorted({int(i) for i in self.bank_layers})
            bad = [i for i in self.bank_layers if not 0 <= i < self.num_hidden_layers]
            if bad:
                raise ValueError(f"bank_layers {bad} are outside 0..{self.num_hidden_layers - 1}.")
        if self.bank_slots < 1:
            raise ValueError(f"bank_slots must be >= 1, got {self.bank_slots}.")
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def banked_layers(self) -> list[int]:
        """The layer indices that carry a bank (`bank_layers`, with `None` resolved to every layer)."""
        if self.bank_layers is None:
            return list(range(self.num_hidden_layers))
        return list(self.bank_layers)


__all__ = ["FFSleepConfig"]
