"""BLIP-2 stage-1 losses (ITC + ITM + ITG) and the hand-over to the MLLM."""
import functools
import math

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import testing
from mmjax.models.mllm import MLLM
from mmjax.models.qformer import QFormerConfig
from mmjax.models.vision import VisionConfig
from mmjax.train import qformer_losses as ql

VISION = VisionConfig(image_size=16, patch_size=8, width=32, depth=1,
                      mlp_dim=64, n_heads=2, pool="none")
QFORMER = QFormerConfig(n_queries=4, width=32, depth=1, n_heads=2, mlp_dim=64,
                        vision_width=32, vocab_size=64, max_text_len=16,
                        proj_dim=16)
B, L = 4, 8
M = ql.QFormerPretrainModel


def _fast_jit(fn, *args):
  """jit compiled at XLA backend optimisation level 0: the same numbers,
  about half the compile time on this CPU."""
  return jax.jit(fn).lower(*args).compile(
      compiler_options={"xla_backend_optimization_level": 0})


def _fill(path, leaf, rng):
  """Random parameters without compiling init: norms 1, biases 0, temp
  0.07 (its init), weights ~ 1/sqrt(fan_in)."""
  name = jax.tree_util.keystr(path)
  if name.endswith("['bias']"):
    return jnp.zeros(leaf.shape, leaf.dtype)
  if name.endswith("['scale']"):
    return jnp.ones(leaf.shape, leaf.dtype)
  if name.endswith("['temp']"):
    return jnp.full(leaf.shape, 0.07, leaf.dtype)
  fan_in = leaf.shape[0] if leaf.ndim > 1 else 1
  return jnp.asarray(rng.normal(0, fan_in ** -0.5, leaf.shape), leaf.dtype)


@functools.lru_cache(maxsize=None)
def _setup():
  rng = np.random.default_rng(0)
  model = M(VISION, QFORMER, feature_layer=None)
  images = jnp.asarray(rng.uniform(-1, 1, (B, 16, 16, 3)), jnp.float32)
  tokens = jnp.asarray(rng.integers(4, 64, (B, L)), jnp.int32).at[:, 0].set(
      ql.BOS_ID)
  pad = jnp.arange(L)[None] < jnp.array([8, 6, 5, 7])[:, None]
  abstract = nn.unbox(jax.eval_shape(
      lambda r: model.init(r, images, tokens, pad), jax.random.key(0)))
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: _fill(p, x, rng), abstract["params"])
  return model, params, images, tokens, pad


@functools.lru_cache(maxsize=None)
def _loss_and_grads():
  model, params, images, tokens, pad = _setup()
  fn = jax.value_and_grad(
      lambda p, k: ql.qformer_losses(model, p, images, tokens, pad, k),
      has_aux=True)
  key = jax.random.key(1)
  return _fast_jit(fn, params, key)(params, key)


@functools.lru_cache(maxsize=None)
def _lm_logits_fn():
  model, params, images, tokens, pad = _setup()
  def lm_logits(p, x, t):
    vision = model.apply({"params": p}, x, method=M.encode_images)
    return model.apply({"params": p}, vision, t, pad, method=M.lm_logits)
  return _fast_jit(lm_logits, params, images, tokens)


def _norm(tree):
  return float(np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2)
                           for g in jax.tree.leaves(tree))))


def test_params_have_the_documented_top_level_names():
  _, params, *_ = _setup()
  assert set(params) == {"vision", "qformer", "heads"}
  assert {"vision_projection", "text_projection", "itm_head", "temp",
          "lm_decoder"} <= set(params["heads"])


def test_loss_is_finite_and_the_sum_of_three_parts():
  (loss, metrics), _ = _loss_and_grads()
  for key in ("itc_loss", "itm_loss", "itg_loss"):
    assert np.isfinite(float(metrics[key])) and float(metrics[key]) > 0
  np.testing.assert_allclose(
      float(loss), float(metrics["itc_loss"] + metrics["itm_loss"]
                         + metrics["itg_loss"]), rtol=1e-6)
  assert float(metrics["loss"]) == float(loss)
  for key in ("itc_accuracy", "itc_i2t_accuracy", "itc_t2i_accuracy",
              "itm_accuracy", "itg_accuracy"):
    assert 0.0 <= float(metrics[key]) <= 1.0
  np.testing.assert_allclose(float(metrics["temp"]), 0.07, rtol=1e-6)


def test_gradient_reaches_qformer_and_heads_not_the_frozen_vision():
  _, grads = _loss_and_grads()
  assert _norm(grads["qformer"]) > 0
  assert _norm(grads["heads"]) > 0
  assert float(grads["heads"]["temp"]) != 0.0
  assert _norm(grads["qformer"]["query_tokens"]) > 0
  assert _norm(grads["vision"]) == 0.0


def _itc_numpy(image_feats, text_feat, temp, smoothing):
  b = image_feats.shape[0]
  sim = np.zeros((b, b))
  for i in range(b):
    for j in range(b):
      sim[i, j] = max(image_feats[i, q] @ text_feat[j]
                      for q in range(image_feats.shape[1])) / temp
  def ce(logits):  # Rows are examples; target = the diagonal.
    total = 0.0
    for i, row in enumerate(logits):
      logp = row - row.max() - math.log(np.exp(row - row.max()).sum())
      target = np.full(b, smoothing / b)
      target[i] += 1.0 - smoothing
      total += -(target * logp).sum()
    return total / b
  return 0.5 * (ce(sim) + ce(sim.T)), sim


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_itc_matches_a_numpy_reference(smoothing):
  rng = np.random.default_rng(3)
  image = rng.normal(size=(5, 3, 8))
  image /= np.linalg.norm(image, axis=-1, keepdims=True)
  text = rng.normal(size=(5, 8))
  text /= np.linalg.norm(text, axis=-1, keepdims=True)
  loss, metrics, sim = jax.jit(ql.itc_loss, static_argnums=3)(
      jnp.asarray(image, jnp.float32), jnp.asarray(text, jnp.float32),
      jnp.float32(0.1), smoothing)
  want, want_sim = _itc_numpy(image, text, 0.1, smoothing)
  np.testing.assert_allclose(np.asarray(sim), want_sim, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  acc_i2t = np.mean(want_sim.argmax(1) == np.arange(5))
  assert float(metrics["itc_i2t_accuracy"]) == pytest.approx(acc_i2t)


def _negative_probs(sim):
  """LAVIS: softmax over each row + 1e-4, the positive zeroed, renormalised."""
  e = np.exp(sim - sim.max(1, keepdims=True))
  w = e / e.sum(1, keepdims=True) + 1e-4
  np.fill_diagonal(w, 0.0)
  return w / w.sum(1, keepdims=True)


def test_hard_negatives_never_pick_the_positive():
  rng = np.random.default_rng(4)
  sim = rng.normal(size=(5, 5)) + 10.0 * np.eye(5)  # Positives dominate.
  sim[0, 3] = 6.0  # Text 3 is image 0's hardest negative.
  # A loop over seeds compiles faster than vmap on this CPU.
  sample = jax.jit(lambda s, seed: ql.sample_hard_negatives(
      s, jax.random.key(seed)))
  draws = [sample(jnp.asarray(sim, jnp.float32), i) for i in range(1000)]
  neg_text = np.stack([np.asarray(t) for t, _ in draws])
  neg_image = np.stack([np.asarray(i) for _, i in draws])
  rows = np.arange(5)[None]
  assert not (neg_text == rows).any() and not (neg_image == rows).any()
  assert ((neg_text >= 0) & (neg_text < 5)).all()
  # Frequencies follow the similarity-weighted distribution (hard negatives).
  for got, probs in ((neg_text, _negative_probs(sim)),
                     (neg_image, _negative_probs(sim.T))):
    freq = np.stack([np.bincount(got[:, i], minlength=5) / len(got)
                     for i in range(5)])
    np.testing.assert_allclose(freq, probs, atol=0.05)
  assert _negative_probs(sim)[0, 3] > 0.9
  with pytest.raises(ValueError, match="at least 2"):
    ql.sample_hard_negatives(jnp.zeros((1, 1)), jax.random.key(0))


def test_itm_loss_labels_positives_first():
  b = 3
  good = jnp.concatenate([jnp.tile(jnp.array([[-5.0, 5.0]]), (b, 1)),
                          jnp.tile(jnp.array([[5.0, -5.0]]), (2 * b, 1))])
  itm = jax.jit(ql.itm_loss, static_argnums=1)
  loss, metrics = itm(good, b)
  assert float(metrics["itm_accuracy"]) == 1.0 and float(loss) < 1e-3
  loss, metrics = itm(-good, b)
  assert float(metrics["itm_accuracy"]) == 0.0 and float(loss) > 9.0


def test_itg_is_causal_and_text_reads_the_queries():
  _, params, images, tokens, _ = _setup()
  fn = _lm_logits_fn()
  base = np.asarray(fn(params, images, tokens))
  k = 4
  changed = np.asarray(fn(params, images, tokens.at[:, k].set(7)))
  np.testing.assert_array_equal(base[:, :k], changed[:, :k])
  assert np.abs(base[:, k:] - changed[:, k:]).max() > 1e-4
  # Text sees the queries (with depth 1 they carry no image information
  # yet when the text reads them: cross-attention follows self-attention).
  moved = dict(params, qformer=dict(params["qformer"]))
  query = params["qformer"]["query_tokens"]
  noise = np.random.default_rng(5).normal(size=query.shape)
  moved["qformer"]["query_tokens"] = query + jnp.asarray(noise, query.dtype)
  other = np.asarray(fn(moved, images, tokens))
  assert np.abs(base[:, 0] - other[:, 0]).max() > 1e-4


def test_itg_part_is_shifted_next_token_loss_ignoring_padding():
  (_, metrics), _ = _loss_and_grads()
  _, params, images, tokens, pad = _setup()
  logits = _lm_logits_fn()(params, images, tokens)  # tokens[:, 0] is bos.
  loss, _ = ql.itg_loss(logits, tokens, pad)
  np.testing.assert_allclose(float(metrics["itg_loss"]), float(loss),
                             rtol=1e-5)
  # Hand reference, smoothing 0.1, padded targets dropped.
  logp = np.asarray(jax.nn.log_softmax(logits))
  t, m = np.asarray(tokens), np.asarray(pad)
  terms = [-(0.9 * logp[b, i, t[b, i + 1]] + 0.1 * logp[b, i].mean())
           for b in range(B) for i in range(L - 1) if m[b, i + 1]]
  np.testing.assert_allclose(float(loss), np.mean(terms), rtol=1e-5)
  # Logits at padded targets do not matter.
  noisy = jnp.where(jnp.asarray(~m)[:, 1:, None], 1e3, logits[:, :-1])
  noisy = jnp.concatenate([noisy, logits[:, -1:]], axis=1)
  np.testing.assert_allclose(float(ql.itg_loss(noisy, tokens, pad)[0]),
                             float(loss), rtol=1e-6)


def test_config_errors():
  images = jnp.zeros((2, 16, 16, 3))
  tokens = jnp.zeros((2, 4), jnp.int32)
  init = lambda m: jax.eval_shape(lambda r: m.init(r, images, tokens),
                                  jax.random.key(0))
  no_text = QFormerConfig(**{**QFORMER.__dict__, "vocab_size": 0})
  with pytest.raises(ValueError, match="vocab_size"):
    init(M(VISION, no_text))
  wide = QFormerConfig(**{**QFORMER.__dict__, "vision_width": 48})
  with pytest.raises(ValueError, match="vision_width"):
    init(M(VISION, wide))


def _abstract_mllm(cfg):
  n = 16  # Q-Former tokens per image in the tiny config.
  tokens = jnp.zeros((1, n + 4), jnp.int32)
  mask = jnp.arange(n + 4)[None] < n
  return nn.unbox(jax.eval_shape(lambda r: MLLM(cfg).init(
      r, tokens, jnp.arange(n + 4)[None], images=jnp.zeros((1, 1, 64, 64, 3)),
      image_mask=jnp.ones((1, 1), bool), image_token_mask=mask),
                                 jax.random.key(0)))["params"]


def test_stage1_params_map_onto_the_mllm_connector():
  cfg = testing.tiny_mllm_config("qformer")
  mllm = _abstract_mllm(cfg)
  model = M(cfg.vision, cfg.qformer, cfg.feature_layer)
  pre = nn.unbox(jax.eval_shape(lambda r: model.init(
      r, jnp.zeros((2, 64, 64, 3)), jnp.zeros((2, 5), jnp.int32)),
                                jax.random.key(0)))["params"]
  assert (jax.tree_util.tree_structure(pre["qformer"])
          == jax.tree_util.tree_structure(mllm["connector"]["qformer"]))
  original = mllm["connector"]["qformer"]
  marked = jax.tree.map(lambda x: np.full(x.shape, 1.0, np.float32), pre)
  out = ql.qformer_to_mllm_params(marked, mllm, copy_vision=True)
  assert out["connector"]["qformer"] is marked["qformer"]
  assert out["vision"] is marked["vision"]
  assert out["connector"]["language_projection"] is (
      mllm["connector"]["language_projection"])
  assert out["llm"] is mllm["llm"] and "heads" not in out
  assert mllm["connector"]["qformer"] is original  # The input is unchanged.
  deeper = QFormerConfig(**{**cfg.qformer.__dict__, "depth": 3})
  other = nn.unbox(jax.eval_shape(lambda r: M(cfg.vision, deeper).init(
      r, jnp.zeros((2, 64, 64, 3)), jnp.zeros((2, 5), jnp.int32)),
                                  jax.random.key(0)))["params"]
  with pytest.raises(ValueError, match="trees differ"):
    ql.qformer_to_mllm_params(other, mllm)
  # The path mapper of the recipe's hand-over store agrees.
  flat_pre = traverse_util.flatten_dict(pre, sep="/")
  flat_mllm = traverse_util.flatten_dict(mllm, sep="/")
  for path, leaf in flat_pre.items():
    name = ql.to_global(path)
    if path.startswith("heads/"):
      assert name.startswith("qformer_heads/") and name not in flat_mllm
    else:
      assert flat_mllm[name].shape == leaf.shape, path
  assert ql.to_global("qformer/query_tokens") == (
      "connector/qformer/query_tokens")
