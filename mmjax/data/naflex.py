"""NaFlex preprocessing (SigLIP2): aspect-kept resize, patchify, pad, mask.

One image becomes a fixed-size row of patches whatever its shape, so images
of different aspect ratios batch together without cropping or letterboxing:

  `naflex_size` -> PIL bilinear resize -> x/255, (x - mean) / std ->
  patches [h*w, p*p*C] row-major, each (dy, dx, c) like `vision.patchify` ->
  zero rows up to `max_num_patches`, mask 1 on real rows.

Arithmetic of transformers 4.57.1 `Siglip2ImageProcessor` (the slow path,
which resizes with PIL): the scale is a bisection on `patches <= max`, each
side rounded UP to a multiple of the patch, at least one patch.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from mmjax.data import images as images_lib
from mmjax.models import naflex as naflex_model


def naflex_size(height: int, width: int, patch: int, max_patches: int,
                eps: float = 1e-5) -> tuple[int, int]:
  """(H', W') in pixels, multiples of `patch`, with (H'/p)(W'/p) <= max.

  Bisects the largest scale s in [eps/10, 100] with ceil(s*H/p) * ceil(s*W/p)
  <= max_patches (sides at least one patch), to a tolerance `eps`, so the
  aspect ratio is kept up to the rounding of each side to whole patches.
  """
  if height <= 0 or width <= 0:
    raise ValueError(f"image size {height}x{width} (HxW) is empty; give a "
                     f"decoded image with at least one pixel.")
  if max_patches < 1:
    raise ValueError(f"max_num_patches={max_patches} must be >= 1.")

  def side(scale: float, size: int) -> int:
    return max(patch, math.ceil(size * scale / patch) * patch)

  lo, hi = eps / 10, 100.0
  while hi - lo >= eps:
    mid = (lo + hi) / 2
    if side(mid, height) * side(mid, width) <= max_patches * patch * patch:
      lo = mid
    else:
      hi = mid
  return side(lo, height), side(lo, width)


@dataclasses.dataclass(frozen=True)
class NaFlexImage:
  """One preprocessed image.

  Attributes:
    patches: f32[max_num_patches, p*p*C], zero rows after the real ones.
    mask: int32[max_num_patches], 1 for real patches.
    spatial_shape: (h, w) patch rows and columns; h * w real patches.
  """
  patches: np.ndarray
  mask: np.ndarray
  spatial_shape: tuple[int, int]


def preprocess(image: np.ndarray, *, patch: int = 16,
               max_num_patches: int = 256,
               kind: str = "siglip") -> NaFlexImage:
  """uint8[H, W, C] (any C `images.to_rgb` takes) -> NaFlexImage.

  `kind` names the normalisation (`images.NORMALIZATION`; SigLIP2: 'siglip',
  mean = std = 0.5).
  """
  rgb = images_lib.to_rgb(image)
  th, tw = naflex_size(rgb.shape[0], rgb.shape[1], patch, max_num_patches)
  if (th, tw) != rgb.shape[:2]:
    rgb = np.asarray(Image.fromarray(rgb).resize(
        (tw, th), Image.Resampling.BILINEAR))
  x = images_lib.normalize(rgb, kind)
  h, w = th // patch, tw // patch
  c = x.shape[-1]
  rows = x.reshape(h, patch, w, patch, c).transpose(0, 2, 1, 3, 4)
  patches = np.zeros((max_num_patches, patch * patch * c), np.float32)
  patches[:h * w] = rows.reshape(h * w, -1)
  mask = np.zeros((max_num_patches,), np.int32)
  mask[:h * w] = 1
  return NaFlexImage(patches, mask, (h, w))


def batch(images: list[np.ndarray], **kw) -> dict[str, np.ndarray]:
  """Preprocesses and stacks: {'patches' f32[B, N, p*p*C], 'mask' int32[B, N],
  'spatial_shapes' int32[B, 2]} with N = max_num_patches (kw of
  `preprocess`)."""
  out = [preprocess(im, **kw) for im in images]
  return {"patches": np.stack([o.patches for o in out]),
          "mask": np.stack([o.mask for o in out]),
          "spatial_shapes": np.asarray([o.spatial_shape for o in out],
                                       np.int32)}


# ------------------------------------------------ an MLLM's batches (train) --
# A training batch of an MLLM with a NaFlex tower carries, instead of
# `images`, each image as its padded patch row under these keys ("naflex_" +
# the arguments of `MLLM.encode_naflex`), the batch axis first.
BATCH_KEYS = ("naflex_patches", "naflex_mask", "naflex_spatial_shapes")


def takes_naflex(cfg) -> bool:
  """Whether an MLLMConfig's tower is a NaFlex one."""
  return getattr(getattr(cfg, "vision", None), "kind",
                 None) == naflex_model.KIND


def size_for(vision, height: int, width: int) -> tuple[int, int]:
  """(H', W') an image is resized to under a NaFlexConfig's budget."""
  return naflex_size(height, width, vision.patch_size,
                     vision.max_num_patches)


def preprocess_for(vision, image: np.ndarray) -> NaFlexImage:
  """`preprocess` with a NaFlexConfig's patch and budget (SigLIP's mean /
  std)."""
  return preprocess(image, patch=vision.patch_size,
                    max_num_patches=vision.max_num_patches, kind="naflex")


def batch_rows(vision, rows: list[list[NaFlexImage]], slots: int
               ) -> dict[str, np.ndarray]:
  """BATCH_KEYS of a batch: naflex_patches f32[b, M, N, p*p*C],
  naflex_mask int32[b, M, N], naflex_spatial_shapes int32[b, M, 2]
  (M = slots; an empty slot is a 1x1 grid with no valid patch)."""
  n, b = vision.max_num_patches, len(rows)
  out = {"naflex_patches": np.zeros((b, slots, n, vision.patch_dim),
                                    np.float32),
         "naflex_mask": np.zeros((b, slots, n), np.int32),
         "naflex_spatial_shapes": np.ones((b, slots, 2), np.int32)}
  for i, items in enumerate(rows):
    for j, item in enumerate(items):
      out["naflex_patches"][i, j] = item.patches
      out["naflex_mask"][i, j] = item.mask
      out["naflex_spatial_shapes"][i, j] = item.spatial_shape
  return out


def model_inputs(batch) -> dict | None:
  """The `naflex` argument of `MLLM.__call__` from a batch with BATCH_KEYS
  (None without them)."""
  if batch.get(BATCH_KEYS[0]) is None:
    return None
  return {key[len("naflex_"):]: batch[key] for key in BATCH_KEYS}
