"""Prefix-LM attention (PaliGemma): mask, decoder, KV-cache decode, the
training prefix length, and Gemma 2's sliding-window / soft-capping switches
on their own."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import testing
from mmjax.models import masks
from mmjax.models.decoder import DecoderConfig, DecoderLM
from mmjax.train.stages import lm as lm_stage


def test_prefix_mask_equals_hand_built():
  prefix = np.array([3, 0, 6])
  got = np.asarray(masks.causal_mask(6, 6)[None] |
                   masks.prefix_mask(jnp.asarray(prefix), 6, 6))
  for b, p in enumerate(prefix):
    want = np.zeros((6, 6), bool)
    for q in range(6):
      for k in range(6):
        want[q, k] = k <= q or (q < p and k < p)
    np.testing.assert_array_equal(got[b], want)
  # Queries at cache slots 4, 5 (decode with an offset): only causal there.
  dec = np.asarray(masks.prefix_mask(jnp.asarray([4]), 2, 8, q_offset=4))
  assert not dec.any()


def test_sliding_window_mask_equals_hand_built():
  got = np.asarray(masks.causal_mask(3, 8, 5) &
                   masks.sliding_window_mask(3, 8, 3, 5))
  for t in range(3):
    q = 5 + t
    np.testing.assert_array_equal(
        got[t], [(q - 3 < k <= q) for k in range(8)])


@pytest.fixture(scope="module")
def lm():
  cfg = testing.tiny_decoder_config(prefix_lm=True)
  params = testing.random_params(DecoderLM(cfg), scale=3.0)
  return cfg, params


def test_prefix_lm_logits(lm):
  cfg, params = lm
  model = DecoderLM(cfg)
  tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (2, 10))
  prefix = np.array([4, 7], np.int32)
  ours, _ = model.apply({"params": params}, tokens, prefix_len=prefix)
  causal, _ = model.apply({"params": params}, tokens)
  # Same mask through block ids (a bidirectional block over the prefix).
  blocks = (np.arange(10)[None] < prefix[:, None]).astype(np.int32)
  via_blocks, _ = model.apply({"params": params}, tokens, block_ids=blocks)
  np.testing.assert_allclose(ours, via_blocks, atol=1e-5)
  ours, causal = np.asarray(ours), np.asarray(causal)
  for b, p in enumerate(prefix):
    assert np.abs(ours[b, :p - 1] - causal[b, :p - 1]).max() > 1e-3
  # A changed prefix token changes earlier prefix positions (bidirectional).
  changed = tokens.copy()
  changed[:, 3] = (changed[:, 3] + 1) % cfg.vocab_size
  other, _ = model.apply({"params": params}, changed, prefix_len=prefix)
  assert np.abs(np.asarray(other)[:, 0] - ours[:, 0]).max() > 1e-3


def test_prefix_len_needs_the_switch(lm):
  cfg, params = lm
  off = DecoderLM(dataclasses.replace(cfg, prefix_lm=False))
  with pytest.raises(ValueError, match="prefix_lm"):
    off.apply({"params": params}, np.zeros((1, 4), np.int32),
              prefix_len=np.array([2]))


@pytest.mark.parametrize("gemma2", [False, True], ids=["prefix", "gemma2"])
def test_cached_decode_equals_full_forward(gemma2):
  """Prefill the prompt (prefix = prompt) then decode token by token: the
  logits equal one full forward with the same prefix (and, for the Gemma 2
  switches, a sliding window shorter than the sequence)."""
  extra = dict(sliding_window=3, sliding_layers=(0,), attn_logit_softcap=5.0,
               query_pre_attn_scalar=20.0, post_norms=True,
               logit_softcap=8.0) if gemma2 else {}
  cfg = testing.tiny_decoder_config(prefix_lm=True, **extra)
  model = DecoderLM(cfg)
  params = testing.random_params(model, scale=3.0, seed=1)
  tokens = np.random.default_rng(1).integers(3, cfg.vocab_size, (2, 9))
  p = 5
  prefix = np.full((2,), p, np.int32)
  full, _ = model.apply({"params": params}, tokens, prefix_len=prefix)
  cache = DecoderLM.init_cache(cfg, 2, 12)
  logits, cache = model.apply({"params": params}, tokens[:, :p],
                              prefix_len=prefix, cache=cache, cache_index=0)
  steps = [logits]
  for t in range(p, 9):
    logits, cache = model.apply({"params": params}, tokens[:, t:t + 1],
                                cache=cache, cache_index=t)
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=2e-5)


def test_gemma2_switches_change_the_output():
  base = testing.tiny_decoder_config()
  tokens = np.random.default_rng(2).integers(3, base.vocab_size, (1, 12))
  params = testing.random_params(DecoderLM(base), scale=3.0)
  ref, _ = DecoderLM(base).apply({"params": params}, tokens)
  for change in (dict(sliding_window=4), dict(attn_logit_softcap=1.0),
                 dict(query_pre_attn_scalar=7.0)):
    out, _ = DecoderLM(dataclasses.replace(base, **change)).apply(
        {"params": params}, tokens)
    assert np.abs(np.asarray(out) - np.asarray(ref)).max() > 1e-3, change


def test_old_config_dicts_still_load():
  old = dataclasses.asdict(DecoderConfig())
  for key in ("attn_logit_softcap", "query_pre_attn_scalar", "post_norms",
              "sliding_window", "sliding_layers", "prefix_lm"):
    old.pop(key)
  assert DecoderConfig.from_dict(old) == DecoderConfig()


def test_bad_switches_are_refused():
  with pytest.raises(ValueError, match="sliding_layers"):
    DecoderConfig(sliding_window=4, sliding_layers=(5,))
  with pytest.raises(ValueError, match="scan_layers"):
    DecoderConfig(sliding_window=4, sliding_layers=(0,), scan_layers=True)
  with pytest.raises(ValueError, match="einsum"):
    DecoderConfig(attn_logit_softcap=2.0, attention="xla")


def test_training_prefix_len_from_loss_mask():
  loss_mask = np.array([[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0],
                        [1, 1, 1, 1, 1, 1]], np.float32)
  # Position 2 predicts the first answer token: the prompt is tokens 0..2.
  np.testing.assert_array_equal(
      lm_stage.prefix_len_from_loss_mask(jnp.asarray(loss_mask)), [4, 0, 1])


def test_training_apply_passes_the_prefix():
  """lm stage's mllm_apply gives a prefix-LM MLLM prefix_len = prompt
  length (image + prompt, up to the answer)."""
  from mmjax.models.mllm import MLLM  # pylint: disable=g-import-not-at-top
  cfg = testing.tiny_mllm_config(lm=dict(prefix_lm=True))
  model = MLLM(cfg)
  params = testing.random_params(model, scale=3.0)
  batch = testing.dummy_batch(cfg, text_len=4)
  prompt = batch["tokens"].shape[1] - 4  # the answer fills the last 4 slots
  got = lm_stage.mllm_apply(model, params, batch)
  inputs = testing.model_inputs(batch)
  want, _ = model.apply({"params": params}, **inputs,
                        prefix_len=np.full((2,), prompt, np.int32))
  np.testing.assert_allclose(got, want, atol=1e-5)
  causal, _ = model.apply({"params": params}, **inputs)
  assert np.abs(np.asarray(causal) - np.asarray(got)).max() > 1e-3
