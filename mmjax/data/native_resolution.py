"""Qwen2-VL native resolution on the host: resize, patches, packing.

Facts (transformers 4.57.1 `Qwen2VLImageProcessor`, the slow numpy/PIL path):

  smart_resize   both sides become multiples of factor = patch * merge (28),
                 each rounded to the nearest multiple; if the area exceeds
                 max_pixels both shrink by sqrt(area / max_pixels) (floored
                 to the factor, at least one factor); if it is under
                 min_pixels both grow (ceiled). Aspect ratios over 200 are
                 refused. Defaults min 56*56, max 28*28*1280 pixels.
  resize         PIL bicubic on the uint8 image, then x / 255, then CLIP's
                 mean / std (`images.normalize(kind='qwen2vl')`).
  patches        frames [F, C, H, W] (a still image: F = 1) are padded to a
                 multiple of temporal_patch T by repeating the last frame;
                 grid (t, gh, gw) = (F / T, H / p, W / p). Tokens run over t,
                 then merge windows (gh/m, gw/m) row-major, then the m x m
                 window row-major; each vector is ordered (C, T, p, p).
                 So the m*m tokens of a merge window are contiguous.
  rotary ids     per token its (patch row, patch column), in the same order,
                 repeated for every t.

Packing: several media items' patches are concatenated into one flat
sequence [N, C*T*p*p]; `segment_ids` (1, 2, ... per image, and per
temporal slice of a video, as HF's cu_seqlens; 0 = padding) confine
attention to each image / slice, and the merged tokens (N / m^2) come out in
the same order, item by item, so `row_index` can gather each prompt's tokens.
An item puts t * (gh/m) * (gw/m) tokens into the LM sequence
(`layout.Media(h, w, frames)` computes the same count and its M-RoPE grid).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from PIL import Image

from mmjax.data import images as images_lib
from mmjax.models import qwen2vl_vision
from mmjax.models import layout
from mmjax.models.layout import ImageSizeError

MIN_PIXELS = qwen2vl_vision.MIN_PIXELS
MAX_PIXELS = qwen2vl_vision.MAX_PIXELS
MAX_ASPECT = 200


def smart_resize(height: int, width: int, factor: int = 28,
                 min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
                 ) -> tuple[int, int]:
  """(height, width) after Qwen2-VL's resize: multiples of `factor`, area in
  [min_pixels, max_pixels] where possible, aspect ratio kept (module doc).

  Raises:
    ImageSizeError: a side < 1 or an aspect ratio over 200.
  """
  if height < 1 or width < 1:
    raise ImageSizeError(f"image of {height}x{width} px has no pixels; "
                         "remove the record or fix its file")
  if max(height, width) / min(height, width) > MAX_ASPECT:
    raise ImageSizeError(
        f"image of {height}x{width} px has an aspect ratio over {MAX_ASPECT} "
        "(Qwen2-VL's limit); crop or pad it first")
  h = round(height / factor) * factor
  w = round(width / factor) * factor
  if h * w > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h = max(factor, math.floor(height / beta / factor) * factor)
    w = max(factor, math.floor(width / beta / factor) * factor)
  elif h * w < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h = math.ceil(height * beta / factor) * factor
    w = math.ceil(width * beta / factor) * factor
  return h, w


def preprocess(image: np.ndarray, factor: int = 28,
               min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
               ) -> np.ndarray:
  """Any decoded image -> f32[h, w, 3] at `smart_resize`'s size, normalised.

  Args:
    image: [H, W] / [H, W, 1..4] (see `images.to_rgb`).
    factor, min_pixels, max_pixels: as `smart_resize`.
  """
  rgb = images_lib.to_rgb(image)
  h, w = smart_resize(rgb.shape[0], rgb.shape[1], factor, min_pixels,
                      max_pixels)
  if (h, w) != rgb.shape[:2]:
    rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BICUBIC))
  return images_lib.normalize(rgb, "qwen2vl")


def preprocess_video(frames: Sequence[np.ndarray], factor: int = 28,
                     min_pixels: int = MIN_PIXELS,
                     max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Frames (all one size) -> f32[F, h, w, 3], each as `preprocess`."""
  return np.stack([preprocess(f, factor, min_pixels, max_pixels)
                   for f in frames])


def patchify(media: np.ndarray, patch: int = 14, temporal: int = 2,
             merge: int = 2) -> tuple[np.ndarray, tuple[int, int, int]]:
  """One image f32[H, W, C] or video f32[F, H, W, C] -> HF's pixel_values.

  Returns:
    (patches f32[t*gh*gw, C*T*p*p] in Qwen2-VL's order (module doc),
     grid (t, gh, gw)).

  Raises:
    ImageSizeError: sides not multiples of patch * merge.
  """
  x = np.asarray(media, np.float32)
  if x.ndim == 3:
    x = x[None]
  if x.ndim != 4 or x.shape[0] < 1:
    raise ImageSizeError(f"media of shape {x.shape}: give an image [H, W, C] "
                         "or a video [F, H, W, C] with F >= 1")
  f, h, w, c = x.shape
  unit = patch * merge
  if h % unit or w % unit:
    raise ImageSizeError(
        f"image of {h}x{w} px: Qwen2-VL needs sides that are multiples of "
        f"{unit}; preprocess it with native_resolution.preprocess")
  if f % temporal:  # HF repeats the last frame up to a multiple of T.
    x = np.concatenate([x, np.repeat(x[-1:], temporal - f % temporal, 0)])
  t, gh, gw = x.shape[0] // temporal, h // patch, w // patch
  x = x.reshape(t, temporal, gh // merge, merge, patch, gw // merge, merge,
                patch, c)
  # -> (t, gh/m, gw/m, m, m, C, T, p, p)
  x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
  return (np.ascontiguousarray(x.reshape(t * gh * gw, c * temporal * patch
                                         * patch)), (t, gh, gw))


def rope_ids(grid: tuple[int, int, int], merge: int = 2) -> np.ndarray:
  """int32[t*gh*gw, 2]: each patch's (row, col), in `patchify`'s order."""
  t, gh, gw = grid
  rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
  order = lambda a: a.reshape(gh // merge, merge, gw // merge, merge
                              ).transpose(0, 2, 1, 3).reshape(-1)
  ids = np.stack([order(rows), order(cols)], -1)
  return np.tile(ids, (t, 1)).astype(np.int32)


def merged_tokens(grid: tuple[int, int, int], merge: int = 2) -> int:
  """LM tokens of one media item: t * (gh/m) * (gw/m)."""
  t, gh, gw = grid
  return t * (gh // merge) * (gw // merge)


@dataclasses.dataclass
class Packed:
  """Several media items' patches in one flat sequence.

  Attributes:
    patches: f32[N, C*T*p*p], N padded to a multiple of `bucket`.
    rope_ids: int32[N, 2] (row, col) per patch (0 in padding).
    segment_ids: int32[N]: 1, 2, ... per image and per temporal slice of a
      video (attention stays inside one); 0 = padding.
    row_index: int32[B, K]: for prompt b, the indices of its merged tokens
      in the flat merged output (N / m^2 tokens), in order; 0 where unused.
    grids: (t, gh, gw) per item, prompts in order.
  """
  patches: np.ndarray
  rope_ids: np.ndarray
  segment_ids: np.ndarray
  row_index: np.ndarray
  grids: list[tuple[int, int, int]]

  def arrays(self) -> dict[str, np.ndarray]:
    """The device inputs of `MLLM.encode_native`."""
    return {"patches": self.patches, "rope_ids": self.rope_ids,
            "segment_ids": self.segment_ids, "row_index": self.row_index}


def pack(rows: Sequence[Sequence[np.ndarray]], patch: int = 14,
         temporal: int = 2, merge: int = 2, bucket: int = 64) -> Packed:
  """Packs the media of a batch of prompts.

  Args:
    rows: per prompt its media items, each f32[H, W, C] or [F, H, W, C]
      (preprocessed; sizes may all differ).
    patch, temporal, merge: the tower's p, T, m.
    bucket: N is padded to a multiple of it (and of m^2), so that few
      distinct shapes get compiled.
  """
  chunks, ids, segs, grids, index = [], [], [], [], []
  n_merged, seg = 0, 0
  for items in rows:
    row = []
    for item in items:
      patches, grid = patchify(item, patch, temporal, merge)
      chunks.append(patches)
      ids.append(rope_ids(grid, merge))
      # One segment per temporal slice: HF's cu_seqlens split a video's
      # attention into its t slices of gh*gw patches.
      slices = np.arange(seg + 1, seg + 1 + grid[0], dtype=np.int32)
      segs.append(np.repeat(slices, grid[1] * grid[2]))
      seg += grid[0]
      grids.append(grid)
      k = merged_tokens(grid, merge)
      row += range(n_merged, n_merged + k)
      n_merged += k
    index.append(row)
  unit = math.lcm(bucket, merge * merge)
  n = sum(len(c) for c in chunks)
  pad = -n % unit if n else unit
  width = chunks[0].shape[1] if chunks else 3 * temporal * patch * patch
  out_index = np.zeros((len(rows), max([1] + [len(r) for r in index])),
                       np.int32)
  for b, row in enumerate(index):
    out_index[b, :len(row)] = row
  return Packed(
      patches=np.concatenate(chunks + [np.zeros((pad, width), np.float32)]),
      rope_ids=np.concatenate(ids + [np.zeros((pad, 2), np.int32)]),
      segment_ids=np.concatenate(segs + [np.zeros(pad, np.int32)]),
      row_index=out_index, grids=grids)


def takes_native(cfg) -> bool:
  """Whether an MLLMConfig's tower reads packed native-resolution media."""
  return getattr(cfg.vision, "kind", None) == qwen2vl_vision.KIND


def pack_for(vision, rows: Sequence[Sequence[np.ndarray]],
             bucket: int = 64) -> Packed:
  """`pack` with a Qwen2VLVisionConfig's patch, temporal patch and merge."""
  return pack(rows, vision.patch_size, vision.temporal_patch_size,
              vision.spatial_merge, bucket)


def sized_pieces(pieces: Sequence, media) -> list:
  """Prompt pieces with each `layout.Media` given its item's real size.

  Args:
    pieces: text id lists and `layout.Media` items (at the config's square
      side, as `inference.prompts` writes them).
    media: a list of native items (f32[h, w, 3] / [F, h, w, 3]) for a
      native-resolution model; anything else (a stacked array, None) leaves
      the pieces as they are.
  """
  if not isinstance(media, list):
    return list(pieces)
  items = iter(media)
  out = []
  for piece in pieces:
    if isinstance(piece, layout.Media):
      item = next(items)
      piece = (layout.Media(item.shape[0], item.shape[1]) if item.ndim == 3
               else layout.Media(item.shape[1], item.shape[2], item.shape[0]))
    out.append(piece)
  return out


# ------------------------------------------------------------- training --
# A training batch of a native-resolution model carries, instead of
# `images`, one packed sequence per row under these keys ("native_" + the
# arguments of `MLLM.encode_native`): every array has the batch axis first,
# so it shards over the mesh like the rest of the batch.
BATCH_KEYS = ("native_patches", "native_rope_ids", "native_segment_ids",
              "native_row_index")
_SMALLEST_ROW = 64  # patches; rows are padded to a power of two above it


def size_for(vision, height: int, width: int) -> tuple[int, int]:
  """`smart_resize` with a Qwen2VLVisionConfig's unit and pixel budget."""
  return smart_resize(height, width, vision.unit, vision.min_pixels,
                      vision.max_pixels)


def preprocess_for(vision, image: np.ndarray) -> np.ndarray:
  """`preprocess` with a Qwen2VLVisionConfig's unit and pixel budget."""
  return preprocess(image, vision.unit, vision.min_pixels, vision.max_pixels)


def still_patches(vision, sizes: Sequence[tuple[int, int]]) -> int:
  """Patches of still images of these (resized) sizes (t = 1 each)."""
  p = vision.patch_size
  return sum((h // p) * (w // p) for h, w in sizes)


def row_length(n_patches: int, merge: int) -> int:
  """Patches per row of a batch whose longest row holds n_patches: the
  next power of two from 64 (a multiple of merge^2), so that few distinct
  shapes get compiled."""
  n = max(_SMALLEST_ROW, math.lcm(_SMALLEST_ROW, merge * merge))
  while n < n_patches:
    n *= 2
  return n


def pack_rows(vision, rows: Sequence[Sequence[np.ndarray]], n_patches: int
              ) -> dict[str, np.ndarray]:
  """One packed sequence per row (training batches): BATCH_KEYS ->
  native_patches f32[b, N, C*T*p*p], native_rope_ids int32[b, N, 2],
  native_segment_ids int32[b, N], native_row_index int32[b, N / m^2].

  Args:
    vision: the Qwen2VLVisionConfig.
    rows: per row its preprocessed images (`preprocess_for`); [] for a pad
      row (all padding).
    n_patches: N, at least every row's patches (`row_length`).
  """
  p, t, m = vision.patch_size, vision.temporal_patch_size, vision.spatial_merge
  width = vision.channels * t * p * p
  b = len(rows)
  out = {"native_patches": np.zeros((b, n_patches, width), np.float32),
         "native_rope_ids": np.zeros((b, n_patches, 2), np.int32),
         "native_segment_ids": np.zeros((b, n_patches), np.int32),
         "native_row_index": np.zeros((b, n_patches // (m * m)), np.int32)}
  for i, items in enumerate(rows):
    if not items:
      continue
    packed = pack([items], p, t, m, bucket=n_patches)
    if len(packed.patches) != n_patches:
      raise ValueError(f"row {i} holds {len(packed.patches)} patches, more "
                       f"than the batch's {n_patches}")
    out["native_patches"][i] = packed.patches
    out["native_rope_ids"][i] = packed.rope_ids
    out["native_segment_ids"][i] = packed.segment_ids
    index = packed.row_index[0]
    out["native_row_index"][i, :len(index)] = index
  return out


def model_inputs(batch) -> dict | None:
  """The `native` argument of `MLLM.__call__` from a batch with BATCH_KEYS
  (None without them)."""
  if batch.get(BATCH_KEYS[0]) is None:
    return None
  return {key[len("native_"):]: batch[key] for key in BATCH_KEYS}
