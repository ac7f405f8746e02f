"""Recolouring objects of a regions example: shape without its colour.

The shapes training split never shows some colour x shape pairs (the
held-out ones), so a tower trained to name each object's shape learns that
a red object is never a star: measured, its shape head named only 0.34 of
held-out-pair objects right against 0.92 of the others. Painting some
objects in a random colour (and not asking their colour) breaks that
shortcut: shape must be read from the outline.

  ex = recolour_objects(ex, probability=0.5, rng=np.random.default_rng(0))

Finding each object's pixels depends on the record alone, the draws on the
row: `object_pixels(ex)` computes the first once, and a training loader
keeps it per record (`PixelCache`), so later epochs only draw and paint
(measured: 0.68 ms a row otherwise, most of a `regions` row's time).

Works on images drawn without anti-aliasing (the shapes renders): an
object's pixels are the ones inside its box with exactly its palette colour.
The random colours are any RGB far enough from the background to stay
visible; some of them fall near palette colours, so a recoloured object
may look like a pair the split holds out. Its colour label is then -1
(not asked), never that pair's name.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Hashable

import numpy as np

from mmjax.data import formats
from mmjax.data.shapes import COLOUR_RGB
from mmjax.data.text_corpus import COLOURS

IGNORED = -1  # A label the loss skips (the object's colour after recolouring).
# Smallest RGB distance between a new colour and the image's median colour
# (the background), so that the object stays visible.
_MIN_CONTRAST = 100.0
_TRIES = 20
# What a loader keeps of `object_pixels` (~1.1 KB a 64-px shapes record:
# 10,000 records take 11 MB).
CACHE_BYTES = 64 << 20


def _new_colour(background: np.ndarray, rng: np.random.Generator
                ) -> np.ndarray:
  for _ in range(_TRIES):
    rgb = rng.integers(0, 256, size=3)
    if np.linalg.norm(rgb - background) >= _MIN_CONTRAST:
      return rgb.astype(np.uint8)
  return (255 - background).astype(np.uint8)  # the opposite: always far


@dataclasses.dataclass(frozen=True)
class ObjectPixels:
  """Where each object of an example can be repainted.

  Attributes:
    background: f64[3], the image's median colour.
    windows: per object, (rows, cols, mask): the object's box window (two
      slices) and bool[h, w] its pixels in it; None when the object has no
      colour label or no pixel of its palette colour (another renderer).
  """
  background: np.ndarray
  windows: tuple[Any, ...]

  @property
  def nbytes(self) -> int:
    return 64 + sum(w[2].nbytes + 64 for w in self.windows if w is not None)


def object_pixels(example: formats.RegionTargets) -> ObjectPixels:
  """Each object's pixels: the ones inside its box with exactly its palette
  colour, a pixel in the boxes of two objects of one colour going to the
  object whose box centre is nearer (the first of them on a tie)."""
  image = np.asarray(example.image)
  column = list(formats.REGION_ATTRIBUTES).index("colour")
  height, width = image.shape[:2]
  background = np.median(image.reshape(-1, 3), axis=0)
  ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
  centres = np.stack([(example.boxes[:, 0] + example.boxes[:, 2]) * width,
                      (example.boxes[:, 1] + example.boxes[:, 3]) * height],
                     -1) / 2
  colours = example.labels[:, column]

  def in_box(j, rows, cols):
    x0, y0, x1, y1 = example.boxes[j]
    x, y = xs[rows, cols], ys[rows, cols]
    return ((x >= np.floor(x0 * width)) & (x < np.ceil(x1 * width))
            & (y >= np.floor(y0 * height)) & (y < np.ceil(y1 * height)))

  windows = []
  for k in range(len(example.boxes)):
    if colours[k] < 0:
      windows.append(None)
      continue
    # Only pixels whose centres pass in_box(k) can be k's: its window.
    x0, y0, x1, y1 = example.boxes[k]
    rows = slice(max(0, int(np.floor(y0 * height))),
                 max(0, min(height, int(np.ceil(y1 * height)))))
    cols = slice(max(0, int(np.floor(x0 * width))),
                 max(0, min(width, int(np.ceil(x1 * width)))))
    palette = np.asarray(COLOUR_RGB[COLOURS[colours[k]]], np.uint8)
    mask = (np.all(image[rows, cols] == palette, axis=-1)
            & in_box(k, rows, cols))
    if mask.any():
      same = np.flatnonzero(colours == colours[k])
      dist = [np.where(in_box(j, rows, cols),
                       np.hypot(xs[rows, cols] - centres[j, 0],
                                ys[rows, cols] - centres[j, 1]), np.inf)
              for j in same]
      mask &= np.argmin(dist, axis=0) == list(same).index(k)
    windows.append((rows, cols, mask) if mask.any() else None)
  return ObjectPixels(background, tuple(windows))


def recolour_objects(example: formats.RegionTargets, probability: float,
                     rng: np.random.Generator,
                     pixels: ObjectPixels | None = None
                     ) -> formats.RegionTargets:
  """Each object, with `probability`, painted a random colour.

  Args:
    example: a regions example (uint8[H, W, 3] image, boxes as fractions,
      labels int32[K, A] in `formats.REGION_ATTRIBUTES` order).
    probability: chance per object, in [0, 1].
    rng: the draws (the caller seeds it per row: exact resume): one
      uniform per object, then a colour for each object repainted.
    pixels: `object_pixels(example)`, if the caller kept it.

  Returns:
    A new example: recoloured pixels, those objects' colour labels IGNORED.
    Objects whose palette pixels are not found (another renderer) are left
    as they are.
  """
  if probability <= 0:
    return example
  pixels = pixels if pixels is not None else object_pixels(example)
  image = np.array(example.image, np.uint8, copy=True)
  labels = np.array(example.labels, copy=True)
  column = list(formats.REGION_ATTRIBUTES).index("colour")
  for k, window in enumerate(pixels.windows):
    if rng.random() >= probability or labels[k, column] < 0:
      continue
    if window is None:
      continue
    rows, cols, mask = window
    image[rows, cols][mask] = _new_colour(pixels.background, rng)
    labels[k, column] = IGNORED
  return dataclasses.replace(example, image=image, labels=labels)


class PixelCache:
  """`object_pixels` per record key, kept up to `max_bytes` (then computed
  on each call, as without it). Thread-safe; a pickled cache (a loader
  worker's) starts empty."""

  def __init__(self, max_bytes: int):
    self.max_bytes, self.cached_bytes = int(max_bytes), 0
    self._pixels: dict[Hashable, ObjectPixels] = {}
    self._lock = threading.Lock()

  def get(self, key: Hashable, compute: Callable[[], ObjectPixels]
          ) -> ObjectPixels:
    pixels = self._pixels.get(key)
    if pixels is None:
      pixels = compute()
      with self._lock:
        if (key not in self._pixels and
            self.cached_bytes + pixels.nbytes <= self.max_bytes):
          self._pixels[key] = pixels
          self.cached_bytes += pixels.nbytes
    return pixels

  def __len__(self) -> int:
    return len(self._pixels)

  def __getstate__(self) -> dict[str, Any]:
    return {"max_bytes": self.max_bytes}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(state["max_bytes"])
