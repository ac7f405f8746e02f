"""Batching: bucket lengths, padding sequences, collating rows into a batch.

`Collate` is the pipeline's grain `batch_fn`. It receives all B rows of a
global batch (prepared by every process), picks the bucket from the longest
valid row so that every process pads to the same L, and builds this
process's rows: padded sequences (`pad_sequences`) and resized, normalised
images. Pad rows (`valid` False) carry pad tokens, loss 0 and no images.
Bad-example counts of all rows travel in the batch under `_stats`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from mmjax.data import audio_batch, box_attention, formats
from mmjax.data import images as images_lib
from mmjax.data import naflex as naflex_lib
from mmjax.data import native_resolution as native_lib
from mmjax.data import tiling as tiling_lib
from mmjax.models.mllm import MLLMConfig

# Counters the pipeline keeps: examples cut to max_len, skips per kind.
STAT_KEYS = ("truncated",) + tuple(f"skipped_{k}" for k in formats.BAD_KINDS)
# Token counts of the sequence batches (packing efficiency = real / batch,
# `packing.efficiency`) and packing candidates carried to a later batch.
STAT_KEYS += ("real_tokens", "batch_tokens", "pack_overflow")
# Images a native-resolution model read smaller than they are (over its
# max_pixels budget: resized down, never cropped).
STAT_KEYS += ("downscaled",)
# Per-sequence batch keys (preference batches prefix them chosen_/rejected_).
SEQUENCE_KEYS = ("tokens", "targets", "loss_mask", "positions",
                 "image_token_mask", "media_locations")


def default_buckets(max_len: int, smallest: int = 64) -> tuple[int, ...]:
  """Powers of two from `smallest` below max_len, then max_len."""
  out, n = [], smallest
  while n < max_len:
    out.append(n)
    n *= 2
  return tuple(out) + (max_len,)


def check_buckets(buckets: Sequence[int] | None, max_len: int
                  ) -> tuple[int, ...]:
  """Sorted bucket lengths, max_len last (every example fits one)."""
  if buckets is None:
    return default_buckets(max_len)
  if not all(isinstance(b, int) and 0 < b <= max_len for b in buckets):
    raise ValueError(f"buckets={list(buckets)} must be ints in [1, "
                     f"max_len={max_len}]")
  return tuple(sorted(set(buckets) | {max_len}))


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length."""
  for b in buckets:
    if b >= length:
      return b
  raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


def pad_sequences(seqs: Sequence[Mapping[str, np.ndarray] | None], length: int,
                  positions: str, pad_id: int) -> dict[str, np.ndarray]:
  """Stacks `formats.chat_sequence` outputs into padded [b, length] arrays.

  Args:
    seqs: one sequence per row, None for a pad row.
    length: the bucket length L (>= every sequence's length).
    positions: the model's scheme, 'rope' | 'mrope' | 'v2pe'.
    pad_id: the tokenizer's pad id.

  Returns:
    SEQUENCE_KEYS: tokens, targets int32[b, L] (pad_id after the sequence);
    loss_mask f32[b, L] (0 after); image_token_mask, media_locations bool[b, L]
    (False after); positions int32[b, L] / f32[b, L] continuing last + 1,
    last + 2, ... (pad rows: 0, 1, ...) or, for mrope, int32[3, b, L] with 1
    after the sequence, as Hugging Face's Qwen2-VL pads. When a sequence
    has audio_token_mask, also audio_token_mask bool[b, L]; box_query and
    box_keys int32[b, L] likewise (`box_attention`).
  """
  b = len(seqs)
  out = {"tokens": np.full((b, length), pad_id, np.int32),
         "targets": np.full((b, length), pad_id, np.int32),
         "loss_mask": np.zeros((b, length), np.float32),
         "image_token_mask": np.zeros((b, length), bool),
         "media_locations": np.zeros((b, length), bool)}
  if any(seq is not None and "audio_token_mask" in seq for seq in seqs):
    out["audio_token_mask"] = np.zeros((b, length), bool)
  for key in box_attention.KEYS:  # 0 after: no box there
    if any(seq is not None and key in seq for seq in seqs):
      out[key] = np.zeros((b, length), np.int32)
  ramp = np.arange(length)
  if positions == "mrope":
    pos = np.ones((3, b, length), np.int32)  # HF fills padding with 1.
  else:
    dtype = np.float32 if positions == "v2pe" else np.int32
    pos = np.broadcast_to(ramp, (b, length)).astype(dtype)
  for i, seq in enumerate(seqs):
    if seq is None:
      continue
    n = len(seq["tokens"])
    for key in out:  # Positions (other shapes) follow.
      if key in seq:
        out[key][i, :n] = seq[key]
    if positions == "mrope":
      pos[:, i, :n] = seq["positions"]
    else:
      pos[i, :n] = seq["positions"]
      pos[i, n:] = seq["positions"][n - 1] + 1 + ramp[:length - n]
  out["positions"] = pos
  return out


class Collate:
  """Global rows -> this process's padded batch (grain batch_fn)."""

  def __init__(self, *, fmt: str, cfg: MLLMConfig, pad_id: int,
               buckets: tuple[int, ...], max_len: int, max_images: int,
               lo: int, local: int, resize: str, audio_frames: int = 0):
    self.fmt, self.cfg, self.pad_id, self.buckets = fmt, cfg, pad_id, buckets
    self.max_len, self.max_images, self.lo, self.local = (max_len, max_images,
                                                          lo, local)
    self.resize, self.kind = resize, images_lib.normalization_kind(cfg)
    self.fill = images_lib.pad_colour(self.kind)
    self.audio_frames = audio_frames

  def _pixels(self, image: np.ndarray) -> np.ndarray:
    side = self.cfg.side
    square = images_lib.resize_square(image, side, self.resize, self.fill)
    return images_lib.normalize(square, self.kind)

  def _images(self, mine: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """images f32[b, M, S, S, 3] (resized to the side) and image_mask.
    InternVL tiling: every image's tiles in order, M = max_images x the
    most tiles an image can take (`tiling.tile_slots`)."""
    side, b = self.cfg.side, len(mine)
    tiled = tiling_lib.takes_tiles(self.cfg)
    slots = self.max_images * (tiling_lib.tile_slots(self.cfg) if tiled
                               else 1)
    batch = {"images": np.zeros((b, slots, side, side, 3), np.float32),
             "image_mask": np.zeros((b, slots), bool)}
    for i, row in enumerate(mine):
      items = [tile for image in row.get("images", []) for tile in (
          tiling_lib.image_tiles(self.cfg, image) if tiled else [image])]
      for j, image in enumerate(items):
        batch["images"][i, j] = self._pixels(image)
        batch["image_mask"][i, j] = True
    return batch

  def _native(self, rows: Sequence[dict[str, Any]],
              mine: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Native resolution: each row's images packed at their own sizes
    (`native_resolution.pack_rows`) and image_mask. The row length comes
    from all global rows, so every process agrees on it."""
    vision = self.cfg.vision
    longest = max([native_lib.still_patches(vision, row["media_sizes"])
                   for row in rows if row["valid"]], default=0)
    n = native_lib.row_length(longest, vision.spatial_merge)
    items = [[native_lib.preprocess_for(vision, im)
              for im in row.get("images", [])] if row["valid"] else []
             for row in mine]
    batch = native_lib.pack_rows(vision, items, n)
    batch["image_mask"] = np.zeros((len(mine), self.max_images), bool)
    for i, row in enumerate(items):
      batch["image_mask"][i, :len(row)] = True
    return batch

  def _naflex(self, mine: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """NaFlex: each image one padded patch row at its own aspect ratio
    (`data.naflex.batch_rows`) and image_mask."""
    vision = self.cfg.vision
    items = [[naflex_lib.preprocess_for(vision, im)
              for im in row.get("images", [])] if row["valid"] else []
             for row in mine]
    batch = naflex_lib.batch_rows(vision, items, self.max_images)
    batch["image_mask"] = np.zeros((len(mine), self.max_images), bool)
    for i, row in enumerate(items):
      batch["image_mask"][i, :len(row)] = True
    return batch

  def _regions(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """region_weights / region_labels / region_valid of a regions batch."""
    vision = self.cfg.vision
    grid = (self.cfg.side // vision.patch_size,) * 2
    k, a = formats.MAX_REGIONS, len(formats.REGION_ATTRIBUTES)
    out = {"region_weights": np.zeros((len(rows), k, grid[0] * grid[1]),
                                      np.float32),
           "region_labels": np.zeros((len(rows), k, a), np.int32),
           "region_valid": np.zeros((len(rows), k), np.float32)}
    for i, row in enumerate(rows):
      if row["valid"]:
        n = len(row["boxes"])
        out["region_weights"][i, :n] = formats.box_token_weights(
            row["boxes"], grid)
        out["region_labels"][i, :n] = row["labels"]
        out["region_valid"][i, :n] = 1.0
    return out

  @staticmethod
  def _objects(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """object_boxes f32[b, K, 4] (fractions), object_labels int32[b, K, A]
    (formats.REGION_ATTRIBUTES) and object_valid f32[b, K] of a caption
    batch: each picture's objects where its record lists them, else none."""
    k, a = formats.MAX_REGIONS, len(formats.REGION_ATTRIBUTES)
    out = {"object_boxes": np.zeros((len(rows), k, 4), np.float32),
           "object_labels": np.zeros((len(rows), k, a), np.int32),
           "object_valid": np.zeros((len(rows), k), np.float32)}
    for i, row in enumerate(rows):
      if row["valid"] and "boxes" in row:
        n = len(row["boxes"])
        out["object_boxes"][i, :n] = row["boxes"]
        out["object_labels"][i, :n] = row["labels"]
        out["object_valid"][i, :n] = 1.0
    return out

  def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    counts = dict.fromkeys(STAT_KEYS, 0)
    for row in rows:  # Every process sees every row: global counts.
      for key, n in row["counts"].items():
        counts[key] += n
    mine = rows[self.lo:self.lo + self.local]
    valid = np.asarray([row["valid"] for row in mine], bool)
    b = len(mine)
    if native_lib.takes_native(self.cfg):
      batch = self._native(rows, mine)
    elif naflex_lib.takes_naflex(self.cfg):
      batch = self._naflex(mine)
    elif self.cfg.has_vision:
      batch = self._images(mine)
    else:  # an audio-only model: no image arrays at all
      batch = {}
    if self.fmt in formats.AUDIO_FORMATS and self.cfg.audio is not None:
      batch.update(audio_batch.collate_audio(
          rows, mine, self.audio_frames, self.cfg.audio.n_mels))
    if self.fmt == "contrastive":
      batch["text_tokens"] = np.full((b, self.max_len), self.pad_id, np.int32)
      batch["text_pad_mask"] = np.zeros((b, self.max_len), bool)
      for i, row in enumerate(mine):
        if row["valid"]:
          batch["text_tokens"][i] = row["text_tokens"]
          batch["text_pad_mask"][i] = row["text_pad_mask"]
      return {**batch, **self._objects(mine), "valid": valid,
              "_stats": counts}
    if self.fmt == "regions":
      return {**batch, **self._regions(mine), "valid": valid,
              "_stats": counts}
    names = ("chosen", "rejected") if self.fmt == "preference" else ("seq",)
    # The bucket comes from all global rows, so every process agrees on L.
    longest = max([len(row[name]["tokens"]) for row in rows if row["valid"]
                   for name in names], default=1)
    length = bucket_length(longest, self.buckets)
    for name in names:
      padded = pad_sequences([row[name] if row["valid"] else None
                              for row in mine], length, self.cfg.positions,
                             self.pad_id)
      prefix = "" if name == "seq" else f"{name}_"
      batch.update({prefix + k: v for k, v in padded.items()})
      counts["real_tokens"] += sum(len(row[name]["tokens"]) for row in rows
                                   if row["valid"])
      counts["batch_tokens"] += len(rows) * length
    return {**batch, "valid": valid, "_stats": counts}
