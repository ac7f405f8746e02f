"""Qwen2-Audio's connector: average pool + Linear, with frame masks."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import whisper
from mmjax.models.audio_projector import AudioProjector


def test_pool_then_linear_equals_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 6)).astype(np.float32)  # odd: last frame dropped
  proj = AudioProjector(out_dim=5, stride=2)
  params = proj.init(jax.random.key(0), jnp.asarray(x))
  y, mask = proj.apply(params, jnp.asarray(x))
  assert mask is None and y.shape == (2, 3, 5)
  p = params["params"]["linear"]
  pooled = x[:, :6].reshape(2, 3, 2, 6).mean(2)
  ref = pooled @ np.asarray(nn.unbox(p["kernel"])) + np.asarray(
      nn.unbox(p["bias"]))
  np.testing.assert_allclose(np.asarray(y), ref, atol=1e-5)
  assert nn.get_partition_spec(params)["params"]["linear"]["kernel"] == (
      jax.sharding.PartitionSpec("embed", "mlp"))


def test_masked_windows_and_padding_do_not_leak():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 8, 4)).astype(np.float32)
  mask = np.array([[True] * 5 + [False] * 3])  # windows: TT TT TF FF
  proj = AudioProjector(out_dim=3)
  params = proj.init(jax.random.key(0), jnp.asarray(x))
  y, out_mask = proj.apply(params, jnp.asarray(x), jnp.asarray(mask))
  assert out_mask.tolist() == [[True, True, False, False]]
  x2 = x.copy()
  x2[:, 5:] = 100.0  # garbage in padding frames
  y2, _ = proj.apply(params, jnp.asarray(x2), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(y2[:, :2]), np.asarray(y[:, :2]),
                             atol=1e-6)


def test_stride_one_is_a_linear_and_short_input_is_refused():
  x = jnp.ones((1, 1, 4))
  proj = AudioProjector(out_dim=2, stride=1)
  params = proj.init(jax.random.key(0), x)
  assert proj.apply(params, x)[0].shape == (1, 1, 2)
  with pytest.raises(ValueError, match="make no token at stride 2"):
    AudioProjector(out_dim=2).init(jax.random.key(0), x)


def test_encoder_pool_and_output_mask():
  cfg = whisper.whisper_variant("test", pool=2)
  enc = whisper.WhisperEncoder(cfg)
  x = jnp.ones((1, 14, 80))  # 7 conv outputs -> 3 pooled
  params = enc.init(jax.random.key(0), x)
  assert enc.apply(params, x).shape == (1, 3, cfg.width)
  mask = jnp.asarray([[True] * 9 + [False] * 5])  # 5 conv outputs valid
  assert whisper.output_mask(mask, 2).tolist() == [[True, True, False]]
