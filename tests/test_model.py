"""Issue #2 acceptance: the model as a transformers citizen (config, Auto classes, attention residuals, generation).

Everything runs on the tiny acceptance config (`tiny_config` in conftest.py) and is parametrised over
`attn_residual in (True, False)` where the architecture matters.
"""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, TextIteratorStreamer, pipeline

from hf_ffsleep import FFSleepConfig, FFSleepForCausalLM
from hf_ffsleep.attention_residual import DepthAttention

pytestmark = pytest.mark.usefixtures("single_thread")

BOTH = pytest.mark.parametrize("attn_residual", [True, False], ids=["attnres", "plain"])
WITH_MEMORY = pytest.mark.parametrize("with_memory", [False, True], ids=["empty-banks", "memories"])


def build(config, seed: int = 0) -> FFSleepForCausalLM:
    torch.manual_seed(seed)
    return FFSleepForCausalLM(config).eval()


def random_ids(n: int, seed: int, batch: int = 1, vocab: int = 512) -> torch.Tensor:
    """Random token ids in 1..vocab-1 (0 is `<|endoftext|>`: eos and pad)."""
    return torch.randint(1, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def fill_memory(model: FFSleepForCausalLM, seed: int = 123, n_seqs: int = 3) -> None:
    """Memorise a few random sequences, one of them with a negative reward, so every bank is non-trivial."""
    for i in range(n_seqs):
        model.memorize(random_ids(48, seed + i), reward=-0.5 if i == 1 else 1.0)
    assert all(bank.num_used > 0 for bank in model.banks.values())


def greedy(model, input_ids, n: int = 12, **kwargs) -> torch.Tensor:
    """Exactly `n` new tokens (eos suppressed), greedy."""
    return model.generate(input_ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, **kwargs)


# ----------------------------------------------------------------------------- config and Auto classes
@BOTH
def test_auto_from_config_builds_ffsleep(tiny_config, attn_residual):
    model = AutoModelForCausalLM.from_config(tiny_config)
    assert type(model) is FFSleepForCausalLM
    assert model.config.attn_residual is attn_residual
    # bank settings at their defaults: every layer banked, default capacity, all empty
    defaults = FFSleepConfig()
    assert sorted(model.banks) == [0, 1, 2]
    for bank in model.banks.values():
        assert bank.slots == defaults.bank_slots
        assert bank.beta == defaults.bank_beta
        assert bank.num_used == 0
    assert model.memory_stats()["slots_used"] == 0
    # the config type itself is registered
    assert type(AutoConfig.for_model("ffsleep", vocab_size=512, hidden_size=64)) is FFSleepConfig
    out = model(random_ids(10, 0))
    assert out.logits.shape == (1, 10, 512)
    assert torch.isfinite(out.logits).all()


def test_config_rejects_bad_bank_layers(make_tiny_config):
    with pytest.raises(ValueError, match=r"bank_layers.*\[3\].*outside 0\.\.2"):
        make_tiny_config(bank_layers=[0, 3])
    with pytest.raises(ValueError, match=r"bank_layers.*\[-1\]"):
        make_tiny_config(bank_layers=[-1])
    with pytest.raises(ValueError, match=r"bank_slots"):
        make_tiny_config(bank_slots=0)
    # valid lists are normalised (sorted, deduplicated)
    assert make_tiny_config(bank_layers=[2, 1, 2]).bank_layers == [1, 2]


def test_config_rejects_hidden_not_divisible_by_heads(make_tiny_config):
    with pytest.raises(ValueError, match=r"hidden_size \(66\).*divisible.*num_attention_heads \(4\)"):
        make_tiny_config(hidden_size=66)


# ----------------------------------------------------------------------------- architecture
def test_attn_residual_false_builds_plain_residual_model(make_tiny_config):
    plain = build(make_tiny_config(attn_residual=False))
    assert not any(isinstance(m, DepthAttention) for m in plain.modules())
    assert all(layer.depth_attn is None for layer in plain.model.layers)
    assert plain.model.depth_out is None
    assert not any("pseudo_query" in name for name, _ in plain.named_parameters())

    res = build(make_tiny_config(attn_residual=True))
    # layer 0 has one predecessor (the embedding) and needs no mix; every later layer and the readout have one
    assert sum(isinstance(m, DepthAttention) for m in res.modules()) == 3
    assert res.model.depth_out is not None
    # Same weights apart from the pseudo-queries: the two models must compute different functions (mean over depth
    # vs. plain residual), so the switch really changes the wiring.
    missing = plain.load_state_dict(res.state_dict(), strict=False)
    assert all("pseudo_query" in k for k in missing.unexpected_keys) and not missing.missing_keys
    ids = random_ids(16, 1)
    assert not torch.allclose(plain(ids).logits, res(ids).logits)


def test_plain_residual_computes_the_ordinary_residual_stream(make_tiny_config):
    """`attn_residual=False`: x_l = v_{l-1} and z = v_L, so the readout is RMSNorm(last hidden state)."""
    model = build(make_tiny_config(attn_residual=False))
    ids = random_ids(12, 2)
    out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == 4  # v_0 .. v_L
    expected = model.lm_head(model.model.norm(out.hidden_states[-1]))
    torch.testing.assert_close(out.logits, expected)


@BOTH
def test_output_depth_weights_rows_sum_to_one_uniform_at_init(tiny_config, attn_residual):
    model = build(tiny_config)
    ids = random_ids(9, 3, batch=2)
    out = model(ids, output_depth_weights=True)
    weights = out.depth_weights
    assert weights is not None and len(weights) == tiny_config.num_hidden_layers + 1
    if not attn_residual:
        assert all(w is None for w in weights)
        return
    assert weights[0] is None  # layer 0 reads only v_0
    for l, w in enumerate(weights[1:], start=1):
        assert w.shape == (2, 9, l + 1)  # layer l mixes v_0..v_{l-1}; the readout (l = L) mixes v_0..v_L
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 9))
        torch.testing.assert_close(w, torch.full_like(w, 1.0 / (l + 1)))  # zero-init pseudo-query: uniform
    # with trained (non-zero) pseudo-queries rows still sum to one, but are no longer uniform
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DepthAttention):
                m.pseudo_query.normal_(0, 1.0)
    w = model(ids, output_depth_weights=True).depth_weights[-1]
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 9))
    assert not torch.allclose(w, torch.full_like(w, 0.25))
    assert model(ids).depth_weights is None  # off by default


# ----------------------------------------------------------------------------- KV cache
@BOTH
@WITH_MEMORY
def test_cached_and_uncached_logits_agree(tiny_config, attn_residual, with_memory):
    model = build(tiny_config)
    if with_memory:
        fill_memory(model)
    ids = random_ids(40, 4, batch=2)
    full = model(ids, use_cache=False).logits
    prefix = model(ids[:, :25], use_cache=True)
    assert prefix.past_key_values is not None
    cont = model(ids[:, 25:], past_key_values=prefix.past_key_values, use_cache=True)
    torch.testing.assert_close(prefix.logits, full[:, :25], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cont.logits, full[:, 25:], rtol=1e-4, atol=1e-5)
    # one more token at a time, as generate() does
    step = model(ids[:, :30], use_cache=True)
    cache = step.past_key_values
    for t in range(30, 33):
        step = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        cache = step.past_key_values
        torch.testing.assert_close(step.logits[:, 0], full[:, t], rtol=1e-4, atol=1e-5)


@BOTH
@WITH_MEMORY
def test_greedy_generation_with_and_without_cache_match(tiny_config, attn_residual, with_memory):
    model = build(tiny_config)
    if with_memory:
        seq = random_ids(40, 5)
        model.memorize(seq)
        prompt = seq[:, :6]
    else:
        prompt = random_ids(6, 5)
    cached = greedy(model, prompt, n=24, use_cache=True)
    uncached = greedy(model, prompt, n=24, use_cache=False)
    assert cached.shape == (1, 30)
    assert torch.equal(cached, uncached)
    if with_memory:  # and the memory is actually being recalled while generating
        assert torch.equal(cached[0, 6:30], seq[0, 6:30])


@BOTH
@WITH_MEMORY
def test_left_padded_batch_generation_matches_single_sequences(tiny_config, attn_residual, with_memory):
    model = build(tiny_config)
    prompts = [random_ids(n, 10 + n)[0] for n in (4, 9, 7)]
    if with_memory:
        for i, p in enumerate(prompts):
            model.memorize(torch.cat([p, random_ids(16, 20 + i)[0]])[None])
    width = max(len(p) for p in prompts)
    pad = model.config.pad_token_id
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = p
        attention_mask[i, width - len(p) :] = 1
    batched = greedy(model, input_ids, n=15, attention_mask=attention_mask)
    for i, p in enumerate(prompts):
        single = greedy(model, p[None], n=15)
        assert torch.equal(batched[i, width:], single[0, len(p) :]), f"row {i} differs"
    # the padded positions' logits are the unpadded sequences' logits
    padded = model(input_ids, attention_mask=attention_mask).logits
    for i, p in enumerate(prompts):
        torch.testing.assert_close(padded[i, width - len(p) :], model(p[None]).logits[0], rtol=1e-4, atol=1e-5)


@BOTH
def test_sampling_and_beam_search(tiny_config, attn_residual):
    model = build(tiny_config)
    fill_memory(model)
    prompt = random_ids(5, 6, batch=2)

    torch.manual_seed(0)
    a = model.generate(prompt, do_sample=True, top_k=8, max_new_tokens=10, min_new_tokens=10)
    torch.manual_seed(0)
    b = model.generate(prompt, do_sample=True, top_k=8, max_new_tokens=10, min_new_tokens=10)
    assert a.shape == (2, 15) and torch.equal(a, b)  # seeded sampling is reproducible
    assert torch.equal(a[:, :5], prompt)
    # top_k=1 sampling is greedy
    torch.manual_seed(1)
    top1 = model.generate(prompt, do_sample=True, top_k=1, max_new_tokens=10, min_new_tokens=10)
    assert torch.equal(top1, greedy(model, prompt, n=10))
    # top-k really restricts: every sampled token is among the 8 most likely given its prefix
    logits = model(a).logits
    for t in range(5, 15):
        top = logits[:, t - 1].topk(8).indices
        assert (top == a[:, t : t + 1]).any(-1).all()

    beams = model.generate(prompt, num_beams=3, do_sample=False, max_new_tokens=10, min_new_tokens=10)
    assert beams.shape == (2, 15) and torch.equal(beams[:, :5], prompt)
    beams_nc = model.generate(
        prompt, num_beams=3, do_sample=False, max_new_tokens=10, min_new_tokens=10, use_cache=False
    )
    assert torch.equal(beams, beams_nc)
    # beam search finds a continuation at least as likely as greedy's
    def logprob(seqs):
        lp = model(seqs).logits[:, 4:-1].log_softmax(-1)
        return lp.gather(-1, seqs[:, 5:, None]).sum((1, 2))

    assert (logprob(beams) >= logprob(greedy(model, prompt, n=10)) - 1e-4).all()


@BOTH
def test_text_iterator_streamer(tiny_config, attn_residual, tokenizer512):
    model = build(tiny_config)
    prompt = tokenizer512("Once upon a time, there was a little", return_tensors="pt")
    model.memorize(tokenizer512("Once upon a time, there was a little dog named Max.", return_tensors="pt").input_ids)
    streamer = TextIteratorStreamer(tokenizer512, skip_prompt=True, timeout=60)
    kwargs = dict(**prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    thread = threading.Thread(target=model.generate, kwargs={**kwargs, "streamer": streamer})
    thread.start()
    pieces = list(streamer)
    thread.join(timeout=60)
    assert not thread.is_alive()
    expected = greedy(model, prompt.input_ids, n=12, attention_mask=prompt.attention_mask)
    new_text = tokenizer512.decode(expected[0, prompt.input_ids.shape[1] :])
    assert "".join(pieces) == new_text
    assert new_text.startswith(" dog named Max.")  # the memory drives the stream


@BOTH
def test_text_generation_pipeline(tiny_config, attn_residual, tokenizer512):
    model = build(tiny_config)
    story = "The cat sat on the mat and looked at the big red ball."
    model.memorize(tokenizer512(story, return_tensors="pt").input_ids)
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer512)
    prompt = "The cat sat on"
    result = pipe(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    assert isinstance(result, list) and len(result) == 1
    text = result[0]["generated_text"]
    ids = tokenizer512(prompt, return_tensors="pt").input_ids
    out = greedy(model, ids, n=10)
    assert text == prompt + tokenizer512.decode(out[0, ids.shape[1] :])
    assert text.startswith(story[:30])
    # sampling through the pipeline, batched prompts
    sampled = pipe([prompt, "Once upon a time"], max_new_tokens=5, do_sample=True, top_k=5)
    assert [r[0]["generated_text"][:4] for r in sampled] == ["The ", "Once"]
