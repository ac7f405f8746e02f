"""SALMONN's window-level Q-Former: one query reads each window of encoder
outputs, so a clip of any length gives one token per window.

  tokens, _ = WindowQFormer(out_dim=D, window=17, cfg=qformer_cfg)(hidden)
  # hidden [N, K', Da] -> tokens [N, K' // 17, D]

SALMONN (Tang et al., 2024) splits the Whisper encoder's outputs (50 per
second) into windows of 17 (0.34 s), runs a BLIP-2 Q-Former with a single
query over each window (the windows batched, no attention across them),
then a Linear to the LM width. Its speech features pass a LayerNorm
(`ln_speech`) first. A trailing partial window is dropped here (SALMONN
pads it), so the token count is `K' // window`, the rule every audio
connector follows (`audio_fusion.tokens_per_clip`): a token is real when
its whole window is.

Parameters: `ln_speech` (LayerNorm), `qformer` (`qformer.QFormerConnector`
with n_queries = 1: its `qformer` and `language_projection`).
"""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import vision
from mmjax.models.qformer import QFormerConfig, QFormerConnector

SALMONN_WINDOW = 17  # Whisper outputs (20 ms each) per window: 0.34 s.


class WindowQFormer(nn.Module):
  """One Q-Former query per window of `window` encoder outputs."""
  out_dim: int
  window: int
  cfg: QFormerConfig  # n_queries must be 1; vision_width = the tower's.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array | None]:
    """x: f32[N, K', Da], mask: bool[N, K'] or None ->
    (f32[N, K' // window, out_dim], bool[N, K' // window] or None)."""
    chex.assert_rank(x, 3)
    if self.cfg.n_queries != 1:
      raise ValueError(f"a window Q-Former has one query per window; "
                       f"n_queries={self.cfg.n_queries}.")
    n, k, d = x.shape
    w = k // self.window
    if w == 0:
      raise ValueError(f"{k} encoder output(s) make no window of "
                       f"{self.window}; the clip is too short.")
    x = vision.layer_norm(1e-5, self.dtype, self.param_dtype,
                          "ln_speech")(x)
    windows = x[:, :w * self.window].reshape(n * w, self.window, d)
    tokens = QFormerConnector(self.cfg, self.out_dim, name="qformer")(
        windows)
    tokens = nn.with_logical_constraint(tokens.reshape(n, w, self.out_dim),
                                        ("batch", "length", "embed"))
    if mask is None:
      return tokens, None
    return tokens, mask[:, :w * self.window].reshape(n, w, self.window).all(
        -1)
