"""The `attention` switch: jax.nn.dot_product_attention against mmjax's einsum.

'xla' runs here and must compute what 'einsum' computes (the parity tests pin
'einsum' to Hugging Face); 'cudnn' is checked on a GPU by
benchmarks/train_throughput.py --attention=cudnn and refuses other backends.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import decoder
from mmjax.models import layers
from mmjax.models import masks
from mmjax.models import vision

_LM = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
           mlp_dim=64)


def _normal(shape, seed, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5),
                                       (jnp.bfloat16, 2e-2)])
def test_kernel_matches_einsum_with_gqa_and_masked_rows(dtype, tol):
  q = _normal((2, 6, 4, 8), 0, dtype)
  k, v = _normal((2, 9, 2, 8), 1, dtype), _normal((2, 9, 2, 8), 2, dtype)
  mask = masks.causal_mask(6, 9, q_offset=3)[None].repeat(2, 0)
  mask = mask.at[1, 2].set(False)  # a row that sees no key at all
  want = layers.dot_product_attention(q, k, v, mask)
  got = layers.dot_product_attention(q, k, v, mask, impl="xla")
  assert got.dtype == want.dtype == dtype
  assert bool(jnp.all(jnp.isfinite(got.astype(jnp.float32))))
  np.testing.assert_allclose(np.asarray(got, np.float32),
                             np.asarray(want, np.float32), atol=tol, rtol=tol)
  # The masked-out row averages every value, as einsum's does.
  np.testing.assert_allclose(
      np.asarray(got[1, 2], np.float32),
      np.asarray(jnp.mean(v[1].astype(jnp.float32), 0).repeat(2, 0),
                 np.float32), atol=tol, rtol=tol)


@pytest.mark.parametrize("impl", ["einsum", "xla"])
@pytest.mark.parametrize("length", [1, 5])
def test_heads_major_kv_matches_sequence_major(impl, length):
  # The KV cache is [B, Kh, S, D]: the same numbers as [B, S, Kh, D] keys,
  # for a decode step (one query) and a multi-token prefill.
  q = _normal((2, length, 4, 8), 7)
  k, v = _normal((2, 9, 2, 8), 8), _normal((2, 9, 2, 8), 9)
  mask = masks.causal_mask(length, 9, q_offset=9 - length)[None].repeat(2, 0)
  mask = mask.at[1, :, :3].set(False)  # left padding in one row
  want = layers.dot_product_attention(q, k, v, mask)
  got = layers.dot_product_attention(q, k.swapaxes(1, 2), v.swapaxes(1, 2),
                                     mask, impl=impl, kv_heads_major=True)
  assert got.shape == want.shape == (2, length, 4, 8)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_even_padding_for_cudnn_changes_nothing():
  q = _normal((2, 5, 4, 8), 4)
  k, v = _normal((2, 7, 2, 8), 5), _normal((2, 7, 2, 8), 6)
  mask = masks.causal_mask(5, 7, q_offset=2)[None, None].repeat(2, 0)
  want = layers.dot_product_attention(q, k, v, mask[:, 0])
  got = layers.fused_attention(q, k, v, mask, scale=None,
                               implementation=None, pad_even=True)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _lm_loss_and_grads(attention, tokens, segment_ids, params):
  model = decoder.DecoderLM(decoder.DecoderConfig(**_LM, attention=attention))

  def loss(p):
    logits, _ = model.apply(p, tokens, segment_ids=segment_ids)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 1])
  return jax.jit(jax.value_and_grad(loss))(params)


def test_decoder_loss_and_grads_match_einsum():
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(1, 64, (2, 10)), jnp.int32)
  segment_ids = jnp.asarray([[1] * 10, [1] * 7 + [0] * 3], jnp.int32)
  model = decoder.DecoderLM(decoder.DecoderConfig(**_LM))
  params = model.init(jax.random.key(0), tokens)
  loss0, grads0 = _lm_loss_and_grads("einsum", tokens, segment_ids, params)
  loss1, grads1 = _lm_loss_and_grads("xla", tokens, segment_ids, params)
  np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads0)) > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               grads1, grads0)


def test_vision_tower_matches_einsum():
  images = _normal((2, 16, 16, 3), 3)
  vcfg = dict(image_size=16, patch_size=4, width=32, depth=2, mlp_dim=64,
              n_heads=2)
  params = vision.VisionEncoder(vision.VisionConfig(**vcfg)).init(
      jax.random.key(1), images)
  outs = {impl: vision.VisionEncoder(vision.VisionConfig(
      **vcfg, attention=impl)).apply(params, images)
          for impl in ("einsum", "xla")}
  np.testing.assert_allclose(outs["xla"].tokens, outs["einsum"].tokens,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(outs["xla"].pooled, outs["einsum"].pooled,
                             rtol=1e-5, atol=1e-5)


def test_bad_values_name_the_allowed_ones():
  with pytest.raises(ValueError, match="DecoderConfig.attention='flash'.*"
                     "einsum"):
    decoder.DecoderConfig(**_LM, attention="flash")
  with pytest.raises(ValueError, match="VisionConfig.attention"):
    vision.VisionConfig(attention="cuDNN")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="CPU/TPU only")
def test_cudnn_refused_off_gpu():
  q = _normal((1, 4, 2, 8), 0, jnp.bfloat16)
  with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
    layers.dot_product_attention(q, q, q, None, impl="cudnn")
  with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
    decoder.DecoderLM(decoder.DecoderConfig(**_LM, attention="cudnn")).init(
        jax.random.key(0), jnp.ones((1, 4), jnp.int32))
