"""Qwen2-Audio's connector: average pool over frames, then one Linear.

  proj = AudioProjector(out_dim=lm_width, stride=2)
  tokens, mask = proj.apply(p, hidden, frame_mask)   # [B, N, Da] -> [B, N/2, D]

Qwen2-Audio (HF `Qwen2AudioForConditionalGeneration`) pools pairs of
Whisper-large-v3 outputs (40 ms per token) and maps them to the LM width
with `multi_modal_projector.linear` (with bias). Its pool sits inside the
encoder, before the encoder's final LayerNorm: to reproduce Qwen2-Audio
exactly, build the tower with `WhisperEncoderConfig(pool=2)` and this
projector with `stride=1`; over a plain Whisper tower use `stride=2` (the
pool then follows the final LayerNorm).

Masks: a pooled token is valid when every frame of its window is (the
trailing partial window is dropped, as torch's AvgPool1d does), so padded
frames never leak into a valid token.

Module tree: `linear` (kernel [Da, D], bias [D]; logical ('embed', 'mlp')
like the vision projectors).
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models.whisper import pool_frames, pool_mask

_logical = layers._logical  # pylint: disable=protected-access


class AudioProjector(nn.Module):
  """Average pool (stride) + Linear to the LM width.

  Attributes:
    out_dim: LM width D.
    stride: frames per token (2: Qwen2-Audio over a plain Whisper tower;
      1: a tower that pools itself).
  """
  out_dim: int
  stride: int = 2
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array | None]:
    """x: f32[B, N, Da], mask: bool[B, N] or None ->
    (f32[B, N // stride, D], bool[B, N // stride] or None)."""
    chex.assert_rank(x, 3)
    if self.stride < 1:
      raise ValueError(f"AudioProjector.stride must be >= 1, got "
                       f"{self.stride}.")
    if x.shape[1] < self.stride:
      raise ValueError(f"{x.shape[1]} audio frame(s) make no token at "
                       f"stride {self.stride}; the clip is too short.")
    y = pool_frames(x, self.stride)
    y = nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="linear",
                 kernel_init=_logical(nn.initializers.lecun_normal(),
                                      ("embed", "mlp")),
                 bias_init=_logical(nn.initializers.zeros, ("mlp",)))(y)
    y = nn.with_logical_constraint(y, ("batch", "length", "embed"))
    return y, None if mask is None else pool_mask(mask, self.stride)
