"""What a shapes picture holds, judged without the model that drew it.

  checker = ShapeChecker.fit_on_renders(n_images=1500)   # the renderer's labels
  checker.objects(image)     # uint8[H, W, 3] -> [("red", "circle"), ...]
  asked = shapes.parse_caption("two red circles and a blue square.")
  # Counter({("red", "circle"): 2, ("blue", "square"): 1})

Colour is read from the pixels: a pixel belongs to an object when its
nearest colour of `shapes.COLOUR_RGB` is within `MAX_COLOUR_DISTANCE` and
it is saturated (`MIN_CHROMA`: the backgrounds are greys); each connected
region of one colour (8-neighbours, at least `MIN_AREA` pixels) is one
object. Shape is a k-nearest-neighbour vote over regions of pictures the
shapes renderer drew (`fit_on_renders`: its own object labels, matched to
the regions by their boxes; each render also Gaussian-blurred, as a drawn
picture's edges are soft), each region cropped to its box, padded square
and resized to `MASK_SIDE`^2: nothing the checker knows comes from a
trained MLLM or image generator. Its accuracy on renders and on the VQ
tokenizer's reconstructions of them is measured beside every generation
result (evals/text_to_image.py).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from mmjax.data import shapes
from mmjax.data.text_corpus import COLOURS, SHAPES

MAX_COLOUR_DISTANCE = 90.0  # RGB distance to the nearest palette colour
MIN_CHROMA = shapes.OBJECT_MIN_CHROMA  # max - min channel: backgrounds stay below ~30
MIN_AREA = 5                # pixels; smaller regions are specks
MASK_SIDE = 16
K_NEIGHBOURS = 5
# Each render is fitted as drawn and Gaussian-blurred at these radii (px):
# a generated picture's edges are soft. Measured on 300 test pictures: the
# VQ tokenizer's reconstructions are read right 0.77 (sharp renders only)
# -> 0.92 (these), the renders themselves 0.997 either way.
BLUR_RADII = (0.0, 0.7, 1.0)

_PALETTE = np.array([shapes.COLOUR_RGB[c] for c in COLOURS], np.float32)


def colour_map(image: np.ndarray) -> np.ndarray:
  """int[H, W]: the index in COLOURS of each object pixel, -1 elsewhere."""
  rgb = np.asarray(image, np.float32)[..., :3]
  dist = np.linalg.norm(rgb[..., None, :] - _PALETTE, axis=-1)  # [H, W, 6]
  nearest = dist.argmin(-1)
  chroma = rgb.max(-1) - rgb.min(-1)
  ok = (dist.min(-1) < MAX_COLOUR_DISTANCE) & (chroma >= MIN_CHROMA)
  return np.where(ok, nearest, -1)


def regions(image: np.ndarray) -> list[tuple[str, np.ndarray]]:
  """(colour, bool mask [H, W]) of every coloured region, largest first."""
  colours = colour_map(image)
  out = []
  for c, name in enumerate(COLOURS):
    labels, n = ndimage.label(colours == c, structure=np.ones((3, 3)))
    for k in range(1, n + 1):
      mask = labels == k
      if mask.sum() >= MIN_AREA:
        out.append((name, mask))
  return sorted(out, key=lambda r: -int(r[1].sum()))


def mask_features(mask: np.ndarray) -> np.ndarray:
  """f32[MASK_SIDE^2]: the region cropped to its box, centred on a square,
  resized (the shape without its size or place)."""
  ys, xs = np.nonzero(mask)
  crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
  side = max(crop.shape)
  square = np.zeros((side, side), np.float32)
  top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
  square[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
  small = Image.fromarray((square * 255).astype(np.uint8)).resize(
      (MASK_SIDE, MASK_SIDE), Image.BILINEAR)
  return np.asarray(small, np.float32).reshape(-1) / 255.0


@dataclasses.dataclass
class ShapeChecker:
  """k-NN over region masks of rendered objects.

  Attributes:
    features: f32[n, MASK_SIDE^2] of the fitted regions.
    labels: int[n], indices into SHAPES.
  """
  features: np.ndarray
  labels: np.ndarray

  @classmethod
  def fit_on_renders(cls, n_images: int = 1500, split: str = "train",
                     seed: int = 0, image_size: int = 64,
                     blur_radii: Sequence[float] = BLUR_RADII
                     ) -> ShapeChecker:
    """Fits on the regions of `n_images` shapes renders of a split (each
    also blurred at `blur_radii`), each labelled with the renderer's object
    whose box holds its centre."""
    features, labels = [], []
    for i in range(n_images):
      ex = shapes.example(split, i, seed=seed, image_size=image_size)
      objects = shapes_objects(ex)
      for radius in blur_radii:
        image = ex["image"] if radius == 0 else np.asarray(
            Image.fromarray(ex["image"]).filter(
                ImageFilter.GaussianBlur(radius)))
        for colour, mask in regions(image):
          shape = _label_of(colour, mask, objects)
          if shape is not None:
            features.append(mask_features(mask))
            labels.append(SHAPES.index(shape))
    return cls(np.stack(features), np.asarray(labels))

  def shapes_of(self, masks: Sequence[np.ndarray]) -> list[str]:
    """The shape name of each region mask (majority of K_NEIGHBOURS)."""
    if not masks:
      return []
    x = np.stack([mask_features(m) for m in masks])
    d = ((x ** 2).sum(1)[:, None] - 2 * x @ self.features.T +
         (self.features ** 2).sum(1)[None])
    near = np.argsort(d, axis=1)[:, :K_NEIGHBOURS]
    votes = self.labels[near]
    return [SHAPES[np.bincount(v, minlength=len(SHAPES)).argmax()]
            for v in votes]

  def objects(self, image: np.ndarray) -> list[tuple[str, str]]:
    """(colour, shape) of every object the picture shows."""
    found = regions(image)
    return list(zip([c for c, _ in found],
                    self.shapes_of([m for _, m in found])))


def shapes_objects(example) -> list[dict]:
  """The renderer's objects of a `shapes.example` (colour, shape, bbox)."""
  import json  # pylint: disable=g-import-not-at-top
  objects = example["objects"]
  return json.loads(objects) if isinstance(objects, (str, bytes)) else objects


def _label_of(colour: str, mask: np.ndarray, objects) -> str | None:
  ys, xs = np.nonzero(mask)
  cy, cx = ys.mean(), xs.mean()
  for o in objects:
    x0, y0, x1, y1 = o["bbox"]
    if o["colour"] == colour and x0 <= cx < x1 and y0 <= cy < y1:
      return o["shape"]
  return None


def agreement(asked: collections.Counter, found: Iterable[tuple[str, str]]
              ) -> dict[str, bool]:
  """Whether a picture has what a caption asked, four ways:
  pairs (the same set of colour x shape pairs), colours, shapes (the same
  sets), counts (the same pairs, each as many times)."""
  found = collections.Counter(found)
  return {"pairs": set(asked) == set(found),
          "colours": {c for c, _ in asked} == {c for c, _ in found},
          "shapes": {s for _, s in asked} == {s for _, s in found},
          "counts": asked == found}
