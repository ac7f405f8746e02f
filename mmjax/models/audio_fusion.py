"""Audio in the MLLM: the connector registry of `MLLMConfig.audio` and how
audio tokens reach the token stream.

  MLLM(cfg).encode_audio(features, frame_mask)   # [B, A, T, n_mels] ->
                                                 #   [B, A, K, D]
  MLLM(cfg)(tokens, positions, audio=features, audio_mask=frame_mask,
            audio_token_mask=tokens == audio_id)

A clip of `frames` valid log-mel frames (10 ms each) puts
`tokens_per_clip(cfg, frames)` placeholders into the text: the encoder's
stride-2 conv keeps ceil(frames / 2) outputs, the connector's pooling
(`stride` below, 2 for Qwen2-Audio) keeps whole windows of them, as HF's
`_get_feat_extract_output_lengths` computes. Audio tokens take 1-D
positions like text (Qwen2-Audio's LM uses plain RoPE), and their own
placeholder mask, so images and clips mix in one sequence.

Parameter groups: `audio` (the Whisper tower), `audio_connector`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import naflex as naflex_lib
from mmjax.models import whisper
from mmjax.models import window_qformer
from mmjax.models.audio_projector import AudioProjector
from mmjax.models.qformer import QFormerConfig


@dataclasses.dataclass(frozen=True)
class AudioConnector:
  """A connector choice: its module builder and its total pooling.

  build(out_dim, tower_cfg, dtype, param_dtype) -> module mapping the
  tower's outputs [N, K', Da] to (tokens [N, K, D], mask); stride: encoder
  outputs per token, counting a pool inside the tower.
  """
  build: Callable[..., nn.Module]
  stride: int


def _qwen2_audio(out_dim: int, tower: whisper.WhisperEncoderConfig,
                 dtype: Any, param_dtype: Any) -> nn.Module:
  # Two encoder outputs per token in all: a tower that pools itself
  # (Qwen2-Audio's, pool=2) leaves the projector only its Linear.
  if tower.pool not in (1, 2):
    raise ValueError(f"audio_projector='qwen2_audio' pools 2 encoder outputs "
                     f"per token; the tower's pool={tower.pool} must be 1 or "
                     f"2.")
  return AudioProjector(out_dim, stride=2 // tower.pool, dtype=dtype,
                        param_dtype=param_dtype)


def _salmonn(out_dim: int, tower: whisper.WhisperEncoderConfig, dtype: Any,
             param_dtype: Any) -> nn.Module:
  # SALMONN's windows count Whisper's own outputs (50 per second).
  if tower.pool != 1:
    raise ValueError(f"audio_projector='salmonn' reads windows of "
                     f"{window_qformer.SALMONN_WINDOW} unpooled encoder "
                     f"outputs; the tower's pool={tower.pool} must be 1.")
  # SALMONN's speech Q-Former: BERT-style, 2 layers, cross-attention in
  # each, one query; here at the tower's width and head count.
  cfg = QFormerConfig(
      n_queries=1, width=tower.width, depth=2, n_heads=tower.n_heads,
      mlp_dim=4 * tower.width, cross_attention_freq=1,
      vision_width=tower.width, vocab_size=0, dtype=jnp.dtype(dtype).name,
      param_dtype=jnp.dtype(param_dtype).name)
  return window_qformer.WindowQFormer(
      out_dim, window_qformer.SALMONN_WINDOW, cfg, dtype=dtype,
      param_dtype=param_dtype)


CONNECTORS: dict[str, AudioConnector] = {
    "qwen2_audio": AudioConnector(_qwen2_audio, stride=2),
    # One token per 0.34 s window (module window_qformer).
    "salmonn": AudioConnector(_salmonn,
                              stride=window_qformer.SALMONN_WINDOW),
}


def make_connector(name: str, out_dim: int,
                   tower: whisper.WhisperEncoderConfig, dtype: Any,
                   param_dtype: Any) -> nn.Module:
  return CONNECTORS[name].build(out_dim, tower, dtype, param_dtype)


def one_token_frames(projector: str) -> int:
  """The fewest log-mel frames that give one audio token."""
  return 2 * CONNECTORS[projector].stride - 1


def tokens_per_clip(tower: whisper.WhisperEncoderConfig, projector: str,
                    frames: int) -> int:
  """Placeholders of a clip of `frames` valid log-mel frames (host side).

  HF: conv lengths (frames - 1) // 2 + 1, then (n - 2) // 2 + 1 per pair,
  i.e. ceil(frames / 2) // 2 for Qwen2-Audio.
  """
  if not 0 < frames <= tower.max_frames:
    raise ValueError(f"an audio clip of {frames} frames is outside 1.."
                     f"{tower.max_frames} (the encoder's 30 s window); cut "
                     f"or drop it.")
  n = (frames + 1) // 2 // CONNECTORS[projector].stride
  if n == 0:
    raise ValueError(f"an audio clip of {frames} frame(s) gives no audio "
                     f"token; it needs at least "
                     f"{one_token_frames(projector)} frames.")
  return n


def token_mask(frame_mask: jax.Array, projector: str) -> jax.Array:
  """bool[..., T] frame mask -> bool[..., K]: which of `encode_audio`'s K
  tokens of each clip are real (a token is real when its whole window is)."""
  lead, t = frame_mask.shape[:-1], frame_mask.shape[-1]
  m = whisper.output_mask(frame_mask.reshape(-1, t),
                          CONNECTORS[projector].stride)
  return m.reshape(lead + m.shape[-1:])


def valid_tokens(tokens: jax.Array, frame_mask: jax.Array | None,
                 projector: str) -> jax.Array:
  """Each row's real audio tokens first, clip by clip, in order.

  tokens: [B, A, K, D] from `encode_audio`; frame_mask: bool[B, A, T] or
  None (every frame real). Returns [B, A*K, D] for `mllm.scatter_visual`
  with the audio placeholder mask (padding after the real tokens).
  """
  b, a, k, d = tokens.shape
  flat = tokens.reshape(b, a * k, d)
  if frame_mask is None:
    return flat
  mask = token_mask(frame_mask, projector)
  if mask.shape[-1] != k:
    raise ValueError(f"audio frame mask of shape {frame_mask.shape} does not "
                     f"match {k} tokens per clip.")
  return naflex_lib.valid_first(flat, mask.reshape(b, a * k))
