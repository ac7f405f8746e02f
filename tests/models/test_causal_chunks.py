"""DecoderConfig.causal_chunks: the shapes recipe's LM scores its queries in
chunks (models/attention_core.py); the model computes what it computed
before, and non-causal masks never take the shortcut."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import testing
from mmjax.models.decoder import DecoderConfig, DecoderLM
from mmjax.models.mllm import MLLM
from mmjax.train.stages import lm as stage_lm


def _loss_and_grads(model, params, batch):
  return jax.value_and_grad(
      lambda p: stage_lm.mllm_lm_loss(model, p, batch)[0])(params)


@pytest.mark.parametrize("image_attention", ["causal", "bidirectional"])
def test_the_recipes_chunks_change_nothing(image_attention):
  """The tiny recipe (causal_chunks=4) against the full square: the same
  loss and gradients, with causal and with bidirectional image blocks
  (where MLLM gives its LM causal_chunks=0)."""
  cfg = testing.tiny_mllm_config(image_attention=image_attention)
  assert cfg.lm.causal_chunks == 4
  full_cfg = testing.tiny_mllm_config(image_attention=image_attention,
                                      lm=dict(causal_chunks=0))
  params = testing.random_params(MLLM(cfg), scale=3.0)
  batch = testing.dummy_batch(cfg, 2, text_len=12)
  chunked = _loss_and_grads(MLLM(cfg), params, batch)
  full = _loss_and_grads(MLLM(full_cfg), params, batch)
  # The shortcut is taken (fewer FLOPs) only where the mask is causal.
  flops = [jax.jit(lambda p, m=MLLM(c): _loss_and_grads(m, p, batch)).lower(
      params).compile().cost_analysis() for c in (cfg, full_cfg)]
  flops = [(f[0] if isinstance(f, (list, tuple)) else f)["flops"]
           for f in flops]
  assert (flops[0] < flops[1]) == (image_attention == "causal")
  # Float32 sums in another order: the whole gradient within 1e-5 of its
  # norm (single leaves that should be 0, a key bias's, carry 1e-7 noise).
  np.testing.assert_allclose(chunked[0], full[0], rtol=1e-6)
  a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g[1])])
          for g in (chunked, full))
  assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b)


def test_bidirectional_blocks_refuse_chunks_and_bad_values_fail():
  cfg = testing.tiny_decoder_config(causal_chunks=4)
  model = DecoderLM(cfg)
  tokens = jnp.ones((1, 8), jnp.int32)
  params = testing.random_params(model)
  with pytest.raises(ValueError, match="causal_chunks=4 assumes a causal"):
    model.apply({"params": params}, tokens,
                block_ids=jnp.ones((1, 8), jnp.int32))
  for bad in (-1, 2.0, True):
    with pytest.raises(ValueError, match="causal_chunks must be an int"):
      testing.tiny_decoder_config(causal_chunks=bad)
  assert isinstance(cfg, DecoderConfig)
