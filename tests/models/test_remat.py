"""Tests for remat policies and scanned layers (mmjax.models.remat).

Memory is checked two ways. The residuals JAX saves for the backward pass
(`jax.vjp` closure, backend independent) must shrink with every policy.
Compiled temp bytes are checked on the scanned model: XLA:CPU drops the
optimization barriers that keep an unrolled remat from being merged back into
the forward pass (CSE), so on this CPU an unrolled model's compiled memory does
not move with the policy (GPU and TPU keep the barriers); inside a scan the
recomputation stays separate and the saving shows.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import decoder
from mmjax.models import remat
from mmjax.models import vision

_SMALL = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
              mlp_dim=64)
# Long-ish sequences, where activations dominate the parameters.
_LONG = dict(vocab_size=512, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
             mlp_dim=512)
_LONG_SHAPE = (2, 256)


def _tokens(shape, vocab, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(1, vocab, shape),
                     jnp.int32)


def _random_like(tree, seed=0):
  """numpy-drawn values for a tree of abstract arrays (no init compile)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: jnp.asarray(rng.normal(size=x.shape) / math.sqrt(
          x.shape[0] if x.ndim > 1 else 4.0) + (x.ndim == 1), x.dtype), tree)


def _lm_loss(model, params, tokens):
  logits, _ = model.apply(params, tokens)
  return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])


def _abstract_params(model, *inputs):
  return jax.eval_shape(model.init, jax.random.key(0), *inputs)


def _residual_bytes(fn, *args) -> int:
  """Bytes of what `jax.vjp(fn)` keeps for the backward pass."""
  vjp_fn = jax.eval_shape(lambda *a: jax.vjp(fn, *a)[1], *args)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(vjp_fn))


@pytest.mark.parametrize("policy", remat.REMAT_POLICIES)
def test_param_tree_unchanged(policy):
  tokens = _tokens((2, 8), 64)
  base = _abstract_params(decoder.DecoderLM(decoder.DecoderConfig(**_SMALL)),
                          tokens)
  ours = _abstract_params(decoder.DecoderLM(
      decoder.DecoderConfig(**_SMALL, remat=policy)), tokens)
  assert jax.tree.structure(ours) == jax.tree.structure(base)
  assert nn.get_partition_spec(ours) == nn.get_partition_spec(base)
  assert jax.tree.map(lambda x: x.shape, nn.unbox(ours)) == jax.tree.map(
      lambda x: x.shape, nn.unbox(base))
  images = jnp.zeros((1, 32, 32, 3))
  vcfg = dict(image_size=32, width=32, depth=2, mlp_dim=64)
  vbase = _abstract_params(
      vision.VisionEncoder(vision.VisionConfig(**vcfg)), images)
  vours = _abstract_params(vision.VisionEncoder(
      vision.VisionConfig(**vcfg, remat=policy)), images)
  assert jax.tree.structure(vours) == jax.tree.structure(vbase)
  assert nn.get_partition_spec(vours) == nn.get_partition_spec(vbase)


def _value_and_grads(make_loss, params):
  """{policy: (loss, grads)} for every policy, from one compiled program."""
  def all_policies(p):
    return {policy: jax.value_and_grad(make_loss(policy))(p)
            for policy in remat.REMAT_POLICIES}
  return jax.jit(all_policies)(params)


def _assert_all_match(results):
  loss0, grads0 = results["none"]
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads0)) > 0
  for policy, (loss, grads) in results.items():
    np.testing.assert_allclose(loss, loss0, rtol=1e-6, err_msg=policy)
    jax.tree.map(lambda a, b, p=policy: np.testing.assert_allclose(
        a, b, rtol=1e-5, atol=1e-6, err_msg=p), grads, grads0)


@pytest.fixture(scope="module")
def small_lm():
  """Tokens, random params and {policy: (loss, grads)} of a 2-layer LM."""
  tokens = _tokens((2, 12), 64)
  params = _random_like(nn.unbox(_abstract_params(
      decoder.DecoderLM(decoder.DecoderConfig(**_SMALL)), tokens)))

  def make_loss(policy):
    model = decoder.DecoderLM(decoder.DecoderConfig(**_SMALL, remat=policy))
    return lambda p: _lm_loss(model, p, tokens)
  return tokens, params, _value_and_grads(make_loss, params)


def test_decoder_loss_and_grads_match_for_every_policy(small_lm):
  _assert_all_match(small_lm[2])


def test_vision_output_and_grads_match_for_every_policy():
  images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 3)),
                       jnp.float32)
  vcfg = dict(image_size=16, width=32, depth=1, mlp_dim=64)
  params = _random_like(nn.unbox(_abstract_params(
      vision.VisionEncoder(vision.VisionConfig(**vcfg)), images)), seed=2)

  def make_loss(policy):
    model = vision.VisionEncoder(vision.VisionConfig(**vcfg, remat=policy))
    return lambda p: jnp.sum(jnp.tanh(model.apply(p, images).pooled))
  _assert_all_match(_value_and_grads(make_loss, params))


def test_saved_residuals_shrink_with_each_policy():
  tokens = _tokens(_LONG_SHAPE, 512)
  params = nn.unbox(_abstract_params(
      decoder.DecoderLM(decoder.DecoderConfig(**_LONG)), tokens))
  saved = {}
  for policy in remat.REMAT_POLICIES:
    model = decoder.DecoderLM(decoder.DecoderConfig(**_LONG, remat=policy))
    saved[policy] = _residual_bytes(
        lambda p, m=model: _lm_loss(m, p, jnp.zeros(_LONG_SHAPE, jnp.int32)),
        params)
  print("\nsaved residual bytes, L=256, 4 layers, d 128:", saved)
  assert saved["none"] > saved["dots_all"] > saved["dots"] > saved["full"]
  assert saved["full"] * 4 < saved["none"]


@pytest.mark.slow
def test_compiled_temp_bytes_lower_with_full_remat():
  tokens = jax.ShapeDtypeStruct(_LONG_SHAPE, jnp.int32)
  temp = {}
  for policy in ("none", "full"):
    model = decoder.DecoderLM(
        decoder.DecoderConfig(**_LONG, remat=policy, scan_layers=True))
    params = nn.unbox(_abstract_params(model, tokens))
    grad = jax.grad(lambda p, t, m=model: _lm_loss(m, p, t))
    compiled = jax.jit(grad).lower(params, tokens).compile()
    temp[policy] = compiled.memory_analysis().temp_size_in_bytes
  print("\ncompiled temp bytes, scanned, L=256, 4 layers, d 128:", temp)
  assert temp["full"] * 2 < temp["none"]


def test_scanned_decoder_matches_unrolled(small_lm):
  tokens, params, results = small_lm
  scfg = decoder.DecoderConfig(**_SMALL, scan_layers=True, remat="dots")
  abstract = _abstract_params(decoder.DecoderLM(scfg), tokens)
  spec = nn.get_partition_spec(abstract)["params"]["layers"]
  assert spec["attn"]["q"]["kernel"] == jax.sharding.PartitionSpec(
      "layers", "embed", "heads", "head_dim")
  stacked = {"params": remat.stack_layer_params(params["params"])}
  assert jax.tree.structure(stacked) == jax.tree.structure(nn.unbox(abstract))
  assert stacked["params"]["layers"]["mlp"]["up"]["kernel"].shape == (
      2, 32, 64)
  model = decoder.DecoderLM(scfg)
  loss, grads = jax.jit(jax.value_and_grad(
      lambda p: _lm_loss(model, p, tokens)))(stacked)
  loss0, grads0 = results["none"]
  np.testing.assert_allclose(loss, loss0, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               remat.unstack_layer_params(grads["params"]), grads0["params"])
  back = remat.unstack_layer_params(stacked["params"])
  jax.tree.map(np.testing.assert_array_equal, back, params["params"])


def test_errors_list_allowed_values():
  with pytest.raises(ValueError, match=r"DecoderConfig.remat='dot'.*'dots'"):
    decoder.DecoderConfig(remat="dot")
  with pytest.raises(ValueError, match=r"VisionConfig.remat='yes'.*'full'"):
    vision.VisionConfig(remat="yes")
  with pytest.raises(ValueError, match="xattn_every"):
    decoder.DecoderConfig(n_layers=2, xattn_every=1, scan_layers=True)
  cfg = decoder.DecoderConfig(**_SMALL, scan_layers=True)
  model = decoder.DecoderLM(cfg)
  tokens = _tokens((1, 4), 64)
  params = nn.unbox(_abstract_params(model, tokens))
  with pytest.raises(ValueError, match="no KV cache"):
    jax.eval_shape(lambda p: model.apply(
        p, tokens, cache=decoder.init_kv_cache(cfg, 1, 8), cache_index=0),
                   params)
  with pytest.raises(ValueError, match="layers_0"):
    remat.stack_layer_params({"embed": {}})
