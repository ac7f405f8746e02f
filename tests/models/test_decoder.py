"""Tests for mmjax.models.decoder."""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import decoder

jax.config.update("jax_default_matmul_precision", "highest")

_ALLOWED_NAMES = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp"}
_SMALL = dict(vocab_size=96, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
              mlp_dim=96)
GQA = decoder.DecoderConfig(**_SMALL, qkv_bias=True)
GEMMA = decoder.DecoderConfig(**_SMALL, tie_embeddings=True, embed_scale=True,
                              norm_offset_one=True, mlp_activation="gelu_tanh")
B, T = 2, 10


def _tokens(seed=0, length=T, vocab=96):
  return jnp.asarray(
      np.random.default_rng(seed).integers(1, vocab, size=(B, length)),
      jnp.int32)


def _random_params(model, seed):
  """numpy-drawn parameters with the shapes `model.init` gives.

  Compiling the real init costs seconds on this CPU; layer tests cover it.
  Biases and norm scales are made random (init leaves them constant) and q/k
  are sharpened so attention is far from uniform and wiring mistakes show.
  """
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), _tokens()))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    keys = [getattr(p, "key", "") for p in path]
    shape = leaf.shape
    if keys[-1] == "bias":
      std = 0.3
    elif keys[-1] == "scale":
      std = 0.3
    elif keys[-1] == "embedding":
      std = 1.0 / math.sqrt(shape[1])
    elif keys[-2] == "o":
      std = 1.0 / math.sqrt(shape[0] * shape[1])
    else:
      std = (3.0 if keys[-2] in ("q", "k") else 1.0) / math.sqrt(shape[0])
    value = std * rng.normal(size=shape)
    if keys[-1] == "scale" and not model.cfg.norm_offset_one:
      value += 1.0
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.lru_cache(maxsize=None)
def _setup(cfg):
  """(model, jitted apply, params), cached so tests share compilations."""
  model = decoder.DecoderLM(cfg)
  return model, jax.jit(model.apply), _random_params(model, 1)


# ---------------------------------------------------------------- config


def test_from_dict_rejects_unknown_key():
  with pytest.raises(ValueError, match="n_layer_s") as e:
    decoder.DecoderConfig.from_dict({"d_model": 64, "n_layer_s": 3})
  assert "n_layers" in str(e.value)  # The allowed keys are listed.


def test_from_dict_round_trip_and_head_dim():
  cfg = decoder.DecoderConfig.from_dict(dataclasses.asdict(GQA))
  assert cfg == GQA
  assert cfg.resolved_head_dim == 16
  assert decoder.DecoderConfig(head_dim=8).resolved_head_dim == 8


def test_config_validation():
  with pytest.raises(ValueError, match="n_kv_heads"):
    decoder.DecoderConfig(n_heads=4, n_kv_heads=3)
  with pytest.raises(ValueError, match="gelu_tanh"):
    decoder.DecoderConfig(mlp_activation="relu")


# ------------------------------------------------------------ parameters


@pytest.mark.parametrize("cfg", [GQA, GEMMA], ids=["gqa", "gemma"])
def test_params_boxed_with_logical_names(cfg):
  model = decoder.DecoderLM(cfg)
  # eval_shape: no compilation, still yields the boxed metadata.
  variables = jax.eval_shape(model.init, jax.random.key(0), _tokens())
  leaves = jax.tree.leaves(
      variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert len(leaves) == len(jax.tree.leaves(nn.unbox(variables)))
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
    assert set(leaf.names) <= _ALLOWED_NAMES, leaf.names
    assert len(leaf.names) == len(leaf.value.shape)
  params = variables["params"]
  assert set(params) == {"embed", "layers_0", "layers_1", "final_norm"} | (
      set() if cfg.tie_embeddings else {"lm_head"})
  assert set(params["layers_0"]) == {"attn_norm", "attn", "mlp_norm", "mlp"}
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["embed"]["embedding"]) == ("vocab", "embed")
  if not cfg.tie_embeddings:
    assert tuple(specs["lm_head"]["kernel"]) == ("embed", "vocab")
  assert ("bias" in params["layers_0"]["attn"]["q"]) == cfg.qkv_bias


def test_param_count():
  _, _, params = _setup(GQA)
  d, v, m, dh = 64, 96, 96, 16
  attn = d * 4 * dh + 2 * d * 2 * dh + 4 * dh * d + (4 + 2 + 2) * dh
  block = attn + 3 * d * m + 2 * d
  assert decoder.param_count(params) == 2 * v * d + d + 2 * block


# -------------------------------------------------------------- forward


def test_tied_embeddings_logits():
  model, _, params = _setup(GEMMA)
  assert "lm_head" not in params["params"]
  (logits, _), state = jax.jit(functools.partial(
      model.apply,
      capture_intermediates=lambda mdl, _: mdl.name == "final_norm"))(
          params, _tokens())
  hidden = state["intermediates"]["final_norm"]["__call__"][0]
  table = np.asarray(params["params"]["embed"]["embedding"])
  np.testing.assert_allclose(logits, np.asarray(hidden) @ table.T, rtol=1e-5,
                             atol=1e-5)


def test_embed_scale():
  model, _, params = _setup(GEMMA)
  tokens = _tokens()
  got = jax.jit(functools.partial(model.apply, method="embed_tokens"))(
      params, tokens)
  table = np.asarray(params["params"]["embed"]["embedding"])
  np.testing.assert_allclose(got, table[np.asarray(tokens)] * math.sqrt(64),
                             rtol=1e-6)


def test_embeddings_path_equals_tokens_path():
  model, apply, params = _setup(GEMMA)
  tokens = _tokens()
  emb = jax.jit(functools.partial(model.apply, method="embed_tokens"))(
      params, tokens)
  want, _ = apply(params, tokens)
  got, _ = apply(params, embeddings=emb)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_exactly_one_input():
  model, _, params = _setup(GQA)
  with pytest.raises(ValueError, match="exactly one"):
    model.apply(params)


def test_logit_softcap():
  _, apply, params = _setup(GQA)
  cap = 0.5
  raw, _ = apply(params, _tokens())
  capped, _ = jax.jit(decoder.DecoderLM(
      dataclasses.replace(GQA, logit_softcap=cap)).apply)(params, _tokens())
  assert np.abs(raw).max() > cap  # Otherwise the cap would be untested.
  assert np.abs(capped).max() < cap
  np.testing.assert_allclose(capped, cap * np.tanh(np.asarray(raw) / cap),
                             rtol=1e-5, atol=1e-6)
  assert capped.dtype == jnp.float32


def test_causal_lm_ignores_future_tokens():
  _, apply, params = _setup(GQA)
  tokens = _tokens()
  changed = tokens.at[:, 6:].set((tokens[:, 6:] + 1) % 96)
  a, _ = apply(params, tokens)
  b, _ = apply(params, changed)
  np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-5)
  assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-3


def test_packed_sequences_equal_separate_runs():
  _, apply, params = _setup(GQA)
  tokens = _tokens(seed=3, length=8)
  seg = jnp.array([[1, 1, 1, 1, 2, 2, 2, 2]] * B, jnp.int32)
  # Positions default to restarting at each segment.
  packed, _ = apply(params, tokens, segment_ids=seg)
  for sl in (slice(0, 4), slice(4, 8)):
    alone, _ = apply(params, tokens[:, sl])
    np.testing.assert_allclose(packed[:, sl], alone, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- KV cache


def _decode_logits(cfg, tokens, prefill, max_len):
  """Prefill `prefill` tokens, then extend one token at a time."""
  _, apply, params = _setup(cfg)
  cache = decoder.init_kv_cache(cfg, B, max_len)
  out, cache = apply(params, tokens[:, :prefill], cache=cache,
                     cache_index=jnp.int32(0))
  outs = [out]
  for t in range(prefill, tokens.shape[1]):
    out, cache = apply(params, tokens[:, t:t + 1], cache=cache,
                       cache_index=jnp.int32(t))
    outs.append(out)
  return jnp.concatenate(outs, axis=1), cache


@pytest.mark.parametrize("cfg", [GQA, GEMMA], ids=["gqa_bias", "gemma"])
def test_prefill_then_extend_matches_full_forward(cfg):
  _, apply, params = _setup(cfg)
  tokens = _tokens(seed=5)
  full, no_cache = apply(params, tokens)
  assert no_cache is None
  decoded, cache = _decode_logits(cfg, tokens, prefill=4, max_len=T + 3)
  assert np.abs(np.asarray(decoded) - np.asarray(full)).max() <= 1e-5
  assert len(cache) == cfg.n_layers
  assert cache[0]["k"].shape == (B, 2, T + 3, 16)
  # Slots past the last token were never written.
  np.testing.assert_array_equal(cache[1]["v"][:, :, T:], 0)


def test_prefill_equals_single_token_steps():
  cfg = GQA
  _, apply, params = _setup(cfg)
  tokens = _tokens(seed=6, length=4)
  max_len = T + 3
  one_call, cache_a = apply(params, tokens,
                            cache=decoder.init_kv_cache(cfg, B, max_len),
                            cache_index=jnp.int32(0))
  steps, cache_b = _decode_logits(cfg, tokens, prefill=1, max_len=max_len)
  np.testing.assert_allclose(one_call, steps, atol=1e-5)
  for layer_a, layer_b in zip(cache_a, cache_b):
    np.testing.assert_allclose(layer_a["k"], layer_b["k"], atol=1e-5)
    np.testing.assert_allclose(layer_a["v"], layer_b["v"], atol=1e-5)


def test_cache_rejects_segment_ids_and_missing_index():
  model, _, params = _setup(GQA)
  cache = decoder.DecoderLM.init_cache(GQA, B, 16)
  with pytest.raises(ValueError, match="cache_index"):
    model.apply(params, _tokens(), cache=cache)
  with pytest.raises(ValueError, match="segment_ids"):
    model.apply(params, _tokens(), cache=cache, cache_index=0,
                segment_ids=jnp.ones((B, T), jnp.int32))


def test_bfloat16_dtypes():
  cfg = dataclasses.replace(GQA, dtype="bfloat16", param_dtype="bfloat16")
  model = decoder.DecoderLM(cfg)
  # eval_shape traces the whole forward without compiling it.
  params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), _tokens()))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("bfloat16")}
  cache = decoder.init_kv_cache(cfg, B, 16)
  assert cache[0]["k"].dtype == jnp.bfloat16
  logits, new_cache = jax.eval_shape(
      functools.partial(model.apply, cache_index=jnp.int32(0)), params,
      _tokens(), cache=cache)
  assert logits.dtype == jnp.float32 and logits.shape == (B, T, 96)
  assert new_cache[1]["v"].dtype == jnp.bfloat16
