"""Tests for mmjax.models.text_tower (SigLIP text tower and TwoTower)."""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import text_tower
from mmjax.models import vision

jax.config.update("jax_default_matmul_precision", "highest")

TINY = text_tower.text_variant("tiny", vocab_size=96, max_len=16)
B, L = 4, 12


def _tokens(seed=0, length=L, batch=B):
  rng = np.random.default_rng(seed)
  return np.asarray(rng.integers(1, 96, size=(batch, length)), np.int32)


def _randomize(shapes, seed, scale=0.2):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: jnp.asarray(scale * rng.normal(size=x.shape), x.dtype), shapes)


@functools.lru_cache(maxsize=None)
def _tower():
  model = text_tower.TextTower(TINY)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                   jnp.asarray(_tokens())))
  return jax.jit(model.apply), _randomize(shapes, 1)


def test_config_and_variants():
  assert TINY.out_dim == 64
  assert text_tower.text_variant("B").out_dim == 768
  assert text_tower.TextTowerConfig(embed_dim=32).out_dim == 32
  with pytest.raises(ValueError, match="'tiny', 'small', 'B'"):
    text_tower.text_variant("L")
  with pytest.raises(ValueError, match="'max_length'.*allowed keys"):
    text_tower.TextTowerConfig.from_dict({"max_length": 3})
  with pytest.raises(ValueError, match="not divisible by n_heads"):
    text_tower.TextTowerConfig(width=64, n_heads=3)
  with pytest.raises(ValueError, match="allowed: gelu"):
    text_tower.TextTowerConfig(activation="swiglu")


def test_param_count_and_names():
  cfg = text_tower.text_variant("B")
  shapes = jax.eval_shape(text_tower.TextTower(cfg).init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 64), jnp.int32))
  leaves = jax.tree.leaves(
      shapes, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  p = nn.unbox(shapes)["params"]
  assert {"token_embedding", "position_embedding", "layers_11",
          "final_layer_norm", "head"} == set(p) - {
              f"layers_{i}" for i in range(11)}
  d, m = 768, 3072
  block = 4 * (d * d + d) + 2 * d * m + m + d + 4 * d
  expected = 32000 * d + 64 * d + 12 * block + 2 * d + d * d + d
  count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(p))
  # SigLIP B/16 text tower: ~110M (HF siglip-base-patch16-224 text model).
  assert count == expected and 109e6 < count < 111e6, count


def test_pools_last_token_bidirectionally():
  apply, params = _tower()
  base = _tokens(0)[0]
  batch = np.stack([base, base, base, base])
  batch[1, -1] = (base[-1] % 95) + 1  # Only the last token differs.
  batch[2, 0] = (base[0] % 95) + 1  # Only the first token differs.
  batch[3, 5] = (base[5] % 95) + 1  # A middle token differs.
  tokens, pooled = apply(params, jnp.asarray(batch))
  assert tokens.shape == (B, L, 64) and pooled.shape == (B, 64)
  p = params["params"]["head"]
  np.testing.assert_allclose(pooled, tokens[:, -1] @ p["kernel"] + p["bias"],
                             rtol=1e-5, atol=1e-5)
  diff = np.abs(np.asarray(pooled) - np.asarray(pooled[0])).max(-1)
  assert np.all(diff[1:] > 1e-3), diff  # Every change reaches the pool...
  # ...and, bidirectional, a change at the end reaches the first position.
  assert np.abs(tokens[1, 0] - tokens[0, 0]).max() > 1e-3


def test_padding_length_changes_the_embedding_as_documented():
  """The same text padded to another length pools another position."""
  apply, params = _tower()
  text = _tokens(3)[:, :8]
  pad12 = np.concatenate([text, np.zeros((B, 4), np.int32)], 1)
  pad16 = np.concatenate([text, np.zeros((B, 8), np.int32)], 1)
  _, p12 = apply(params, jnp.asarray(pad12))
  _, p16 = apply(params, jnp.asarray(pad16))
  assert np.abs(np.asarray(p12) - np.asarray(p16)).max() > 1e-3


def test_pad_mask_hides_padding_keys():
  apply, params = _tower()
  tokens = _tokens(4)
  tokens[:, 8:] = 0
  tokens[2:] = tokens[:2]
  tokens[2:, 8:] = 7  # Rows 2, 3: rows 0, 1 with other padding ids.
  mask = np.zeros((B, L), bool)
  mask[:, :8] = True
  out, _ = apply(params, jnp.asarray(tokens), pad_mask=jnp.asarray(mask))
  np.testing.assert_allclose(out[:2, :8], out[2:, :8], rtol=1e-5, atol=1e-5)
  unmasked, _ = apply(params, jnp.asarray(tokens))  # Padding is seen.
  assert np.abs(unmasked[:2, :8] - unmasked[2:, :8]).max() > 1e-3


def test_too_long_text_raises():
  apply, params = _tower()
  with pytest.raises(ValueError, match="17 tokens .* max_len=16"):
    apply(params, jnp.zeros((1, 17), jnp.int32))


# ------------------------------------------------------------ TwoTower

VISION = vision.vision_variant("tiny", width=32, mlp_dim=64, depth=1,
                               image_size=32)


def _two_tower(embed_dim=48):
  return text_tower.TwoTower(VISION, dataclasses.replace(TINY, depth=1),
                             embed_dim)


def test_two_tower_init_values():
  model = _two_tower()
  # Only the two scalars: submodules made in setup create params lazily.
  init = jax.jit(functools.partial(
      model.init, method=lambda m: (m.logit_scale, m.logit_bias)))
  scalars = nn.unbox(init(jax.random.key(0)))["params"]
  np.testing.assert_allclose(scalars["logit_scale"], math.log(10.0),
                             rtol=1e-6)
  np.testing.assert_allclose(scalars["logit_bias"], -10.0)


def test_two_tower_forward_unit_norm_and_methods():
  model = _two_tower()
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)),
                       jnp.float32)
  tokens = jnp.asarray(_tokens(5, batch=2))
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), images,
                                   tokens))
  p = shapes["params"]
  assert set(p) == {"vision_model", "text_model", "img_head", "logit_scale",
                    "logit_bias"}
  assert p["text_model"]["head"]["kernel"].shape == (64, 48)
  assert p["img_head"]["kernel"].shape == (32, 48)
  params = _randomize(shapes, 2)

  @jax.jit
  def run(params):
    return (model.apply(params, images, tokens),
            model.apply(params, tokens, method="encode_text"),
            model.apply(params, images, method="encode_image"))

  out, ztxt, zimg = run(params)
  assert out["zimg"].shape == (2, 48) and out["ztxt"].shape == (2, 48)
  np.testing.assert_allclose(np.linalg.norm(out["zimg"], axis=-1), 1.0,
                             rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(out["ztxt"], axis=-1), 1.0,
                             rtol=1e-5)
  assert out["logit_scale"] == params["params"]["logit_scale"]
  assert out["logit_bias"] == params["params"]["logit_bias"]
  np.testing.assert_allclose(ztxt, out["ztxt"], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(zimg, out["zimg"], rtol=1e-6, atol=1e-6)
  assert np.abs(out["zimg"][0] - out["zimg"][1]).max() > 1e-3


def test_two_tower_no_img_head_when_widths_match_and_rejects_mismatch():
  model = _two_tower(embed_dim=32)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 4),
                                                               jnp.int32))
  assert "img_head" not in shapes["params"]
  bad = text_tower.TwoTower(VISION, text_tower.text_variant("tiny",
                                                           embed_dim=16), 32)
  with pytest.raises(ValueError, match="text.embed_dim=16 differs"):
    jax.eval_shape(bad.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                   jnp.zeros((1, 4), jnp.int32))
