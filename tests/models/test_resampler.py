"""Tests for mmjax.models.resampler."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import resampler
from tests import helpers

jax.config.update("jax_default_matmul_precision", "highest")

_ALLOWED_NAMES = {"embed", "heads", "kv_heads", "head_dim", "mlp", "vocab",
                  None}
B, T, F, V = 2, 2, 2, 5

_FLAMINGO = resampler.ResamplerConfig(
    style="flamingo", n_latents=4, depth=2, n_heads=2, head_dim=8,
    max_frames=3, max_media=2)
_IDEFICS2 = resampler.ResamplerConfig(
    style="idefics2", n_latents=4, depth=2, n_heads=4, head_dim=8,
    n_kv_heads=2, width=32, projection_mlp_dim=40)
_D_FLAMINGO, _D_VISION = 16, 24


def _normal(seed, shape, scale=1.0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(scale * rng.normal(size=shape), jnp.float32)


def _assert_all_boxed(variables):
  helpers.assert_all_boxed(variables, _ALLOWED_NAMES)


@functools.lru_cache(maxsize=None)
def _setup(cfg, dv):
  """(boxed init variables, noisy params, jitted apply, media)."""
  mod = resampler.PerceiverResampler(cfg)
  media = _normal(0, (B, T, F, V, dv))
  # Only shapes come from init (compiling a random init costs seconds here).
  variables = jax.eval_shape(mod.init, jax.random.key(0), media)
  rng = np.random.default_rng(1)
  # Noise on every leaf (zero biases included): attention is far from
  # uniform, so wiring mistakes show.
  params = jax.tree.map(
      lambda v: jnp.asarray(0.5 * rng.normal(size=v.shape), v.dtype),
      nn.unbox(variables))
  return variables, params, jax.jit(mod.apply), media


def _changed(a, b):
  return float(jnp.abs(a - b).max()) > 1e-5


def test_flamingo_shape_and_param_tree():
  variables, params, apply, media = _setup(_FLAMINGO, _D_FLAMINGO)
  _assert_all_boxed(variables)
  p = params["params"]
  assert set(p) == {"latents", "frame_embs", "media_time_embs", "layers_0",
                    "layers_1", "norm"}
  assert p["frame_embs"].shape == (3, _D_FLAMINGO)
  assert p["media_time_embs"].shape == (2, 1, _D_FLAMINGO)
  layer = p["layers_0"]
  assert set(layer) == {"norm_media", "norm_latents", "attn", "ff_norm", "ff"}
  assert set(layer["attn"]) == {"q", "k", "v", "o"}
  for sub in ("q", "k", "v", "o"):
    assert set(layer["attn"][sub]) == {"kernel"}  # No biases.
  assert set(layer["ff"]["fc1"]) == {"kernel"}
  assert layer["ff"]["fc1"]["kernel"].shape == (_D_FLAMINGO, 4 * _D_FLAMINGO)
  assert set(layer["norm_media"]) == {"scale", "bias"}
  out = apply(params, media)
  assert out.shape == (B, T, 4, _D_FLAMINGO)


def test_flamingo_latents_read_media_per_item():
  _, params, apply, media = _setup(_FLAMINGO, _D_FLAMINGO)
  out = apply(params, media)
  out2 = apply(params, media.at[:, 1].add(_normal(2, media[:, 1].shape)))
  assert _changed(out[:, 1], out2[:, 1])
  # Media items are resampled independently.
  np.testing.assert_allclose(out[:, 0], out2[:, 0], atol=1e-6)


@pytest.mark.parametrize("name", ["frame_embs", "media_time_embs"])
def test_flamingo_time_embeddings_change_output(name):
  _, params, apply, media = _setup(_FLAMINGO, _D_FLAMINGO)
  p = jax.tree.map(lambda x: x, params)
  p["params"] = dict(p["params"])
  p["params"][name] = jnp.zeros_like(p["params"][name])
  assert _changed(apply(params, media), apply(p, media))


def test_flamingo_frame_embedding_is_per_frame():
  _, params, apply, media = _setup(_FLAMINGO, _D_FLAMINGO)
  # Swapping two frames' contents changes nothing only without frame embs:
  # the latents see a set. With distinct frame embeddings it must differ.
  swapped = media[:, :, ::-1]
  assert _changed(apply(params, media), apply(params, swapped))
  p = dict(params["params"])
  p["frame_embs"] = jnp.zeros_like(p["frame_embs"])
  np.testing.assert_allclose(apply({"params": p}, media),
                             apply({"params": p}, swapped), atol=1e-5)


def test_flamingo_rejects_too_many_frames():
  _, params, apply, _ = _setup(_FLAMINGO, _D_FLAMINGO)
  with pytest.raises(ValueError, match="max_frames"):
    apply(params, jnp.zeros((1, 1, 4, V, _D_FLAMINGO)))


def test_idefics2_gqa_and_param_tree():
  variables, params, apply, media = _setup(_IDEFICS2, _D_VISION)
  _assert_all_boxed(variables)
  p = params["params"]
  assert set(p) == {"modality_projection", "latents", "layers_0", "layers_1",
                    "norm"}
  proj = p["modality_projection"]
  assert proj["gate"]["kernel"].shape == (_D_VISION, 40)
  assert proj["down"]["kernel"].shape == (40, 32)
  layer = p["layers_0"]
  assert set(layer) == {"input_latents_norm", "input_context_norm",
                        "self_attn", "post_attention_layernorm", "mlp"}
  assert layer["self_attn"]["q"]["kernel"].shape == (32, 4, 8)
  assert layer["self_attn"]["k"]["kernel"].shape == (32, 2, 8)  # GQA.
  assert set(layer["mlp"]) == {"gate", "up", "down"}
  assert apply(params, media).shape == (B, T, 4, 32)


def test_idefics2_padding_mask():
  _, params, apply, media = _setup(_IDEFICS2, _D_VISION)
  mask = np.ones((B, T, F, V), bool)
  mask[0, 0, 1, 2:] = False
  mask[1, 1, :, 3:] = False
  mask = jnp.asarray(mask)
  out = apply(params, media, mask)
  noise = _normal(3, media.shape, 5.0)
  padded_only = jnp.where(mask[..., None], media, media + noise)
  np.testing.assert_allclose(apply(params, padded_only, mask), out,
                             atol=1e-5)
  real_too = media.at[0, 0, 0, 0].add(3.0)
  assert _changed(apply(params, real_too, mask)[0, 0], out[0, 0])
  # The mask matters: without it the padded noise leaks in.
  assert _changed(apply(params, padded_only), out)


def test_rank3_input_and_out_dim():
  cfg = resampler.ResamplerConfig(style="idefics2", n_latents=3, depth=1,
                                  n_heads=2, head_dim=4, width=8, out_dim=12)
  mod = resampler.PerceiverResampler(cfg)
  x = _normal(4, (B, 6, 10))
  variables = jax.eval_shape(mod.init, jax.random.key(0), x)
  _assert_all_boxed(variables)
  out = jax.eval_shape(mod.apply, nn.unbox(variables), x)
  assert out.shape == (B, 3, 12)


def test_config_validation():
  cfg = resampler.ResamplerConfig.from_dict({"style": "idefics2",
                                             "n_kv_heads": 2})
  assert cfg.resolved_eps == 1e-6 and cfg.resolved_kv_heads == 2
  assert resampler.ResamplerConfig().resolved_eps == 1e-5
  with pytest.raises(ValueError, match="allowed keys"):
    resampler.ResamplerConfig.from_dict({"latents": 3})
  with pytest.raises(ValueError, match="flamingo"):
    resampler.ResamplerConfig(style="blip")
  with pytest.raises(ValueError, match="multiple"):
    resampler.ResamplerConfig(n_heads=4, n_kv_heads=3)
  with pytest.raises(ValueError, match="max_frames"):
    resampler.ResamplerConfig(style="idefics2", max_frames=2)
