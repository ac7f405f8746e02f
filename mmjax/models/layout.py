"""Placeholder arithmetic: how a media item sits in the token stream.

The data pipeline asks these functions (never hard-codes) how many
placeholder tokens an image of a given size, or a video of F frames, needs
under a model config, and what (t, h, w) grid those tokens form for M-RoPE.
All checks here run on the host, before anything is compiled.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mmjax.models import audio_fusion
from mmjax.models import position_ids
from mmjax.models.mllm import MLLMConfig
from mmjax.models.position_ids import PlaceholderMismatchError  # pylint: disable=unused-import


class ImageSizeError(ValueError):
  """An image size the model config cannot take."""


def patch_grid(cfg: MLLMConfig, height: int, width: int) -> tuple[int, int]:
  """(rows, cols) of patches of an image; ImageSizeError when it does not fit.

  Args:
    cfg: the model config.
    height, width: image size in pixels.
  """
  p = cfg.patch
  native = height == width == cfg.side
  # At its native size a tower drops the remainder like a valid conv does
  # (So400m/14 at 384 px: 27x27 patches); other sizes must divide.
  if height <= 0 or width <= 0 or (not native and (height % p or width % p)):
    raise ImageSizeError(
        f"image of {height}x{width} px cannot be cut into {p}x{p} patches; "
        f"resize it to a multiple of {p} (the config's image size is "
        f"{cfg.side}x{cfg.side})")
  gh, gw = height // p, width // p
  if cfg.fusion == "projection" and cfg.projector in ("pixel_shuffle",
                                                       "patch_merger"):
    if gh % 2 or gw % 2:
      raise ImageSizeError(
          f"image of {height}x{width} px gives a {gh}x{gw} patch grid; the "
          f"{cfg.projector} projector merges 2x2 patches and needs even "
          f"sides: use a multiple of {2 * p} px")
  return gh, gw


def media_grid(cfg: MLLMConfig, height: int, width: int, frames: int = 1
               ) -> tuple[int, int, int]:
  """(t, h, w) layout of the visual tokens of one media item in the stream.

  M-RoPE gives these tokens temporal/height/width ids from this grid.
  Compressing connectors (resampler, Q-Former) have no spatial layout:
  their latents form a (1, 1, n) row. one_backbone counts the newline
  vector as an extra column.
  """
  gh, gw = patch_grid(cfg, height, width)
  # Qwen2-VL folds temporal_patch_size frames into one token (the last frame
  # repeated up to a multiple, as its processor does).
  tp = getattr(cfg.vision, "temporal_patch_size", 1)
  frames = -(-frames // tp)
  if cfg.fusion == "projection":
    if cfg.projector in ("pixel_shuffle", "patch_merger"):
      gh, gw = gh // 2, gw // 2
    return frames, gh, gw
  if cfg.fusion == "resampler":
    return 1, 1, cfg.resampler.n_latents
  if cfg.fusion == "qformer":
    return 1, 1, cfg.qformer.n_queries
  if cfg.fusion == "one_backbone":
    return frames, gh, gw + 1
  return 0, 0, 0  # cross_attention: nothing in the stream


def visual_tokens(cfg: MLLMConfig, height: int, width: int,
                  frames: int = 1) -> int:
  """Visual tokens one media item puts into the token stream."""
  t, h, w = media_grid(cfg, height, width, frames)
  return t * h * w


def placeholder_tokens(cfg: MLLMConfig, height: int, width: int,
                       frames: int = 1) -> int:
  """Tokens the pipeline writes into the text for one media item.

  Early fusion: one `<image>` placeholder per visual token (replaced by the
  visual embeddings). Cross-attention: a single `<image>` marker that stays a
  text token and tells the gated blocks where the image appeared.
  """
  if cfg.fusion == "cross_attention":
    patch_grid(cfg, height, width)  # still reject sizes the ViT cannot take
    return 1
  return visual_tokens(cfg, height, width, frames)


def check_placeholders(placeholder_runs: list[int], media_sizes: list[tuple[
    int, int, int]], cfg: MLLMConfig, example: str = "example") -> None:
  """Checks one example's placeholder runs against its media items.

  Args:
    placeholder_runs: lengths of the consecutive `<image>` runs in the
      token stream, in order.
    media_sizes: (height, width, frames) of each media item, in order.
    cfg: the model config.
    example: a name for the error message (record id).

  Raises:
    PlaceholderMismatchError: counts differ; the message says which item.
  """
  if len(placeholder_runs) != len(media_sizes):
    raise PlaceholderMismatchError(
        f"{example}: the text has {len(placeholder_runs)} image placeholder "
        f"block(s) but {len(media_sizes)} image(s) were given; put exactly "
        "one <image> per image in the text")
  for i, (run, (h, w, f)) in enumerate(zip(placeholder_runs, media_sizes)):
    want = placeholder_tokens(cfg, h, w, f)
    if run != want:
      raise PlaceholderMismatchError(
          f"{example}: image {i} ({h}x{w} px, {f} frame(s)) needs {want} "
          f"placeholder tokens under fusion={cfg.fusion!r}, the text has "
          f"{run}; expand placeholders with layout.placeholder_tokens, and "
          "never truncate inside an image block")


@dataclasses.dataclass(frozen=True)
class Media:
  """A media item in a sequence being assembled: its pixel size and frames."""
  height: int
  width: int
  frames: int = 1


@dataclasses.dataclass(frozen=True)
class Audio:
  """An audio clip in a sequence being assembled: its valid log-mel frames
  (10 ms each; `mask.sum()` of `data.audio.log_mel`)."""
  frames: int


def audio_tokens(cfg: MLLMConfig, frames: int) -> int:
  """Placeholders of a clip of `frames` log-mel frames (ValueError for a
  model without audio, or a clip too short or too long)."""
  if cfg.audio is None:
    raise ValueError("the prompt holds an audio clip but the model has no "
                     "audio tower (MLLMConfig.audio)")
  return audio_fusion.tokens_per_clip(cfg.audio, cfg.audio_projector, frames)


def assemble(cfg: MLLMConfig, pieces: Sequence[Sequence[int] | Media | Audio],
             image_token_id: int, *, v2pe_stride: int | None = None,
             rng: np.random.Generator | None = None,
             audio_token_id: int | None = None) -> dict[str, np.ndarray]:
  """Lays out one example's token stream and its positions (host side).

  Args:
    cfg: the model config.
    pieces: text token-id lists, `Media` and `Audio` items, in order.
    image_token_id: the `<image>` id used for placeholders and markers.
    v2pe_stride: V2PE stride (1..256); None draws one per image from `rng`
      (training) or uses the fixed inference stride when rng is None.
    rng: random generator for V2PE training strides.
    audio_token_id: the `<audio>` placeholder id (needed with `Audio`).

  Returns:
    tokens int32[L]; image_token_mask bool[L] (early fusion: visual slots);
    audio_token_mask bool[L] (audio slots);
    media_locations bool[L] (cross-attention: marker slots); positions
    int32[L] (rope), int32[3, L] (mrope) or float32[L] (v2pe); rope_delta
    (mrope, else 0).
  """
  tokens, visual, markers, segments, heard = [], [], [], [], []
  for piece in pieces:
    if isinstance(piece, Audio):
      if audio_token_id is None:
        raise ValueError("an Audio piece needs audio_token_id (the <audio> "
                         "placeholder id)")
      n = audio_tokens(cfg, piece.frames)
      tokens += [audio_token_id] * n
      visual += [False] * n
      markers += [False] * n
      heard += [False] * (len(tokens) - n - len(heard)) + [True] * n
      # 1-D positions like text: Qwen2-Audio's LM uses plain RoPE.
      segments.append(position_ids.TextSegment(n))
    elif isinstance(piece, Media):
      n = placeholder_tokens(cfg, piece.height, piece.width, piece.frames)
      tokens += [image_token_id] * n
      if cfg.fusion == "cross_attention":
        visual += [False] * n
        markers += [True] * n
        segments.append(position_ids.TextSegment(n))
      else:
        visual += [True] * n
        markers += [False] * n
        segments.append(position_ids.VisionSegment(
            *media_grid(cfg, piece.height, piece.width, piece.frames)))
    else:
      piece = list(piece)
      tokens += piece
      visual += [False] * len(piece)
      markers += [False] * len(piece)
      if piece:
        segments.append(position_ids.TextSegment(len(piece)))
  delta = 0
  if cfg.positions == "rope":
    positions = position_ids.rope_positions(segments)
  elif cfg.positions == "mrope":
    positions, delta = position_ids.mrope_positions(segments)
  else:
    n_vision = sum(isinstance(s, position_ids.VisionSegment) for s in segments)
    if v2pe_stride is not None:
      strides = [v2pe_stride] * n_vision
    elif rng is not None:
      strides = [position_ids.sample_v2pe_stride(rng) for _ in range(n_vision)]
    else:
      strides = [position_ids.V2PE_DEFAULT_STRIDE] * n_vision
    positions = position_ids.v2pe_positions(
        segments, [position_ids.v2pe_delta(s) for s in strides])
  heard += [False] * (len(tokens) - len(heard))
  return {"tokens": np.asarray(tokens, np.int32),
          "image_token_mask": np.asarray(visual, bool),
          "audio_token_mask": np.asarray(heard, bool),
          "media_locations": np.asarray(markers, bool),
          "positions": positions, "rope_delta": np.int32(delta)}
