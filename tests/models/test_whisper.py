"""The Whisper encoder module: sizes, logical axes, lengths, bad input.

Parity with transformers is in tests/hf/test_whisper_encoder.py.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mmjax.models import whisper


def test_variants_have_the_published_sizes():
  tiny = whisper.whisper_variant("tiny")
  assert (tiny.width, tiny.depth, tiny.n_heads, tiny.mlp_dim) == (384, 4, 6,
                                                                  1536)
  base = whisper.whisper_variant("base")
  assert (base.width, base.depth, base.n_heads) == (512, 6, 8)
  large = whisper.whisper_variant("large-v3")
  assert (large.width, large.depth, large.n_heads, large.n_mels) == (
      1280, 32, 20, 128)
  assert large.max_frames == 3000
  with pytest.raises(ValueError, match="unknown Whisper variant"):
    whisper.whisper_variant("huge")
  with pytest.raises(ValueError, match="divisible by n_heads"):
    whisper.WhisperEncoderConfig(width=30, n_heads=4)


def test_params_carry_logical_axes_and_k_has_no_bias():
  enc = whisper.WhisperEncoder(whisper.whisper_variant("test"))
  params = jax.eval_shape(enc.init, jax.random.key(0),
                          jnp.zeros((1, 8, 80)))["params"]
  specs = nn.get_partition_spec(params)
  assert specs["conv1"]["kernel"] == jax.sharding.PartitionSpec(
      None, None, "embed")
  attn = specs["layers_0"]["attn"]
  assert attn["q"]["kernel"] == jax.sharding.PartitionSpec(
      "embed", "heads", "head_dim")
  assert "bias" in params["layers_0"]["attn"]["q"]
  assert "bias" not in params["layers_0"]["attn"]["k"]
  assert "positions" not in params  # computed, not trained


@pytest.mark.parametrize("frames", [3000, 40, 7])
def test_any_length_up_to_the_window(frames):
  cfg = whisper.whisper_variant("test")
  enc = whisper.WhisperEncoder(cfg)
  x = jnp.ones((2, frames, 80))
  params = enc.init(jax.random.key(0), x[:, :2])
  out = enc.apply(params, x)
  assert out.shape == (2, (frames + 1) // 2, cfg.width)


def test_bad_input_is_one_line():
  cfg = whisper.whisper_variant("test")
  enc = whisper.WhisperEncoder(cfg)
  params = enc.init(jax.random.key(0), jnp.zeros((1, 2, 80)))
  with pytest.raises(ValueError, match="exceed the encoder's window"):
    enc.apply(params, jnp.zeros((1, 3002, 80)))
  with pytest.raises(ValueError, match="80 mel bins"):
    enc.apply(params, jnp.zeros((1, 10, 128)))


def test_sinusoids():
  table = whisper.sinusoids(1500, 8)
  assert table.shape == (1500, 8)
  assert float(abs(table[0, :4]).max()) == 0.0  # sin(0)
  assert float(table[0, 4:].min()) == 1.0  # cos(0)
