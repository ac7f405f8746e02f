"""Recolouring objects of a regions example: shape without its colour.

The shapes training split never shows some colour x shape pairs (the
held-out ones), so a tower trained to name each object's shape learns that
a red object is never a star: measured, its shape head named only 0.34 of
held-out-pair objects right against 0.92 of the others. Painting some
objects in a random colour (and not asking their colour) breaks that
shortcut: shape must be read from the outline.

  ex = recolour_objects(ex, probability=0.5, rng=np.random.default_rng(0))

Works on images drawn without anti-aliasing (the shapes renders): an
object's pixels are the ones inside its box with exactly its palette colour.
The random colours are any RGB far enough from the background to stay
visible; some of them fall near palette colours, so a recoloured object
may look like a pair the split holds out. Its colour label is then -1
(not asked), never that pair's name.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mmjax.data import formats
from mmjax.data.shapes import COLOUR_RGB
from mmjax.data.text_corpus import COLOURS

IGNORED = -1  # A label the loss skips (the object's colour after recolouring).
# Smallest RGB distance between a new colour and the image's median colour
# (the background), so that the object stays visible.
_MIN_CONTRAST = 100.0
_TRIES = 20


def _new_colour(background: np.ndarray, rng: np.random.Generator
                ) -> np.ndarray:
  for _ in range(_TRIES):
    rgb = rng.integers(0, 256, size=3)
    if np.linalg.norm(rgb - background) >= _MIN_CONTRAST:
      return rgb.astype(np.uint8)
  return (255 - background).astype(np.uint8)  # the opposite: always far


def recolour_objects(example: formats.RegionTargets, probability: float,
                     rng: np.random.Generator) -> formats.RegionTargets:
  """Each object, with `probability`, painted a random colour.

  Args:
    example: a regions example (uint8[H, W, 3] image, boxes as fractions,
      labels int32[K, A] in `formats.REGION_ATTRIBUTES` order).
    probability: chance per object, in [0, 1].
    rng: the draws (the caller seeds it per row: exact resume).

  Returns:
    A new example: recoloured pixels, those objects' colour labels IGNORED.
    Objects whose palette pixels are not found (another renderer) are left
    as they are.
  """
  if probability <= 0:
    return example
  image = np.array(example.image, np.uint8, copy=True)
  labels = np.array(example.labels, copy=True)
  column = list(formats.REGION_ATTRIBUTES).index("colour")
  height, width = image.shape[:2]
  background = np.median(image.reshape(-1, 3), axis=0)
  ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
  # Box centres in pixels: a pixel in two boxes of one colour belongs to
  # the nearer object.
  centres = np.stack([(example.boxes[:, 0] + example.boxes[:, 2]) * width,
                      (example.boxes[:, 1] + example.boxes[:, 3]) * height],
                     -1) / 2
  colours = example.labels[:, column]

  def in_box(j, rows, cols):
    x0, y0, x1, y1 = example.boxes[j]
    x, y = xs[rows, cols], ys[rows, cols]
    return ((x >= np.floor(x0 * width)) & (x < np.ceil(x1 * width))
            & (y >= np.floor(y0 * height)) & (y < np.ceil(y1 * height)))

  for k in range(len(example.boxes)):
    if rng.random() >= probability or colours[k] < 0:
      continue
    # Only pixels of object k's box can change: work on that window (the
    # pixels whose centres pass in_box(k)), not the whole image.
    x0, y0, x1, y1 = example.boxes[k]
    rows = slice(max(0, int(np.floor(y0 * height))),
                 max(0, min(height, int(np.ceil(y1 * height)))))
    cols = slice(max(0, int(np.floor(x0 * width))),
                 max(0, min(width, int(np.ceil(x1 * width)))))
    palette = np.asarray(COLOUR_RGB[COLOURS[colours[k]]], np.uint8)
    mask = (np.all(example.image[rows, cols] == palette, axis=-1)
            & in_box(k, rows, cols))
    if not mask.any():
      continue
    same = np.flatnonzero(colours == colours[k])
    dist = [np.where(in_box(j, rows, cols),
                     np.hypot(xs[rows, cols] - centres[j, 0],
                              ys[rows, cols] - centres[j, 1]), np.inf)
            for j in same]
    mask &= np.argmin(dist, axis=0) == list(same).index(k)
    if not mask.any():
      continue
    image[rows, cols][mask] = _new_colour(background, rng)
    labels[k, column] = IGNORED
  return dataclasses.replace(example, image=image, labels=labels)
