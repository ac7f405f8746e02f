"""Shapes with small digits on non-square canvases: a benchmark where
resolution matters.

Like `mmjax.data.shapes` (same colours, shapes, backgrounds, held-out
colour x shape pairs and question kinds), but each image is one of
`CANVASES` (width x height, mostly non-square and larger than 64 px) and
every object carries a digit 0-9 drawn inside it from a hand-made 3x5 bitmap
font (`FONT`, scaled by `DIGIT_SCALE`: 6x10 px glyphs), so rendering needs no
system font and is byte-identical everywhere. Besides the five shapes
question kinds, `number` questions ask for a digit ("what number is on the
blue square?" -> "7"): the glyph's strokes are 2 px wide, so a model that
sees the image squashed to a small square cannot read it (docs/resolution.md
measures how small; `mmjax.evals.legibility`).

Geometry is in pixels of the canvas: object radii are `SIZE_PX`, whatever the
canvas. An example is a pure function of (seed, split, index).

Usage:
  ex = shapes_detail.example("train", 12, seed=0)  # ex["image"]: uint8[H, W, 3]
"""
from __future__ import annotations

import collections
import dataclasses
import io
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from mmjax.data import shapes
from mmjax.data.text_corpus import SIZES

SPLITS = shapes.SPLITS
NUMBER = "number"
QTYPES = shapes.QTYPES + (NUMBER,)
# (width, height) in pixels; one is drawn per image.
CANVASES = ((192, 128), (128, 192), (256, 128), (160, 160))
# Circumradius in pixels per size: the 6x10 glyph fits inside every shape
# (a triangle's inradius is r / 2; a star's inner pentagon is the tightest).
SIZE_PX = {"small": 15, "medium": 18, "large": 22}
DIGIT_SCALE = 2  # Each font pixel is a DIGIT_SCALE x DIGIT_SCALE block.
NUMBER_QUESTIONS = 2  # At most this many `number` questions per image.
_GAP = 3  # Pixels between objects' bounding circles and to the edge.
# Digit colour: black on light fills (yellow, orange), white on dark ones.
_LIGHT_FILL = 140  # Luma (ITU-R 601) above which a fill counts as light.
_INK = {"dark": (255, 255, 255), "light": (20, 20, 20)}

# A 3-wide, 5-tall font; some pairs differ in one cell (8/0, 8/9, 6/8, 5/6)
# on purpose: those are the details that small inputs lose.
_GLYPHS = {
    0: ("###", "#.#", "#.#", "#.#", "###"),
    1: (".#.", "##.", ".#.", ".#.", "###"),
    2: ("###", "..#", "###", "#..", "###"),
    3: ("###", "..#", "###", "..#", "###"),
    4: ("#.#", "#.#", "###", "..#", "..#"),
    5: ("###", "#..", "###", "..#", "###"),
    6: ("###", "#..", "###", "#.#", "###"),
    7: ("###", "..#", "..#", "..#", "..#"),
    8: ("###", "#.#", "###", "#.#", "###"),
    9: ("###", "#.#", "###", "..#", "###"),
}
# bool[10, 5, 3]: FONT[d] is digit d's cells, row 0 at the top.
FONT = np.array([[[c == "#" for c in row] for row in _GLYPHS[d]]
                 for d in range(10)])


def glyph(digit: int, scale: int = DIGIT_SCALE) -> np.ndarray:
  """bool[5 * scale, 3 * scale]: the digit's pixels."""
  return np.kron(FONT[digit], np.ones((scale, scale), bool))


def ink(colour: str) -> tuple[int, int, int]:
  """The RGB a digit is drawn in on a fill of `colour`."""
  r, g, b = shapes.COLOUR_RGB[colour]
  light = 0.299 * r + 0.587 * g + 0.114 * b > _LIGHT_FILL
  return _INK["light" if light else "dark"]


@dataclasses.dataclass(frozen=True)
class DetailObject:
  """A filled shape with a digit; `centre` is (x, y) in canvas pixels."""
  colour: str
  shape: str
  size: str
  centre: tuple[float, float]
  digit: int
  rotation: float = 0.0  # Degrees, clockwise; the digit stays upright.

  @property
  def radius(self) -> int:
    return SIZE_PX[self.size]

  def outline(self) -> list[tuple[float, float]]:
    """Polygon vertices in pixels (a circle: its box's two corners), with
    the polygons of `shapes` (same vertex counts, offsets and star)."""
    cx, cy = self.centre
    r = self.radius
    if self.shape == "circle":
      return [(cx - r, cy - r), (cx + r, cy + r)]
    n, offset, x_scale = shapes._POLYGONS[self.shape]  # pylint: disable=protected-access
    out = []
    for k in range(n):
      a = math.radians(-90 + offset + self.rotation + 360 * k / n)
      rk = 0.45 * r if self.shape == "star" and k % 2 else r
      out.append((cx + x_scale * rk * math.cos(a), cy + rk * math.sin(a)))
    return out

  def bbox(self, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): `image[y0:y1, x0:x1]` holds every drawn pixel."""
    xs, ys = zip(*self.outline())
    box = (math.floor(min(xs)), math.floor(min(ys)), math.ceil(max(xs)) + 1,
           math.ceil(max(ys)) + 1)
    limits = (width, height, width, height)
    return tuple(min(max(v, 0), m) for v, m in zip(box, limits))

  def digit_box(self) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the glyph, centred on the object."""
    h, w = 5 * DIGIT_SCALE, 3 * DIGIT_SCALE
    x0, y0 = round(self.centre[0]) - w // 2, round(self.centre[1]) - h // 2
    return (x0, y0, x0 + w, y0 + h)

  def normalised(self, width: int, height: int) -> shapes.SceneObject:
    """The shapes object at the same relative place (for shapes' texts)."""
    return shapes.SceneObject(self.colour, self.shape, self.size,
                              (self.centre[0] / width, self.centre[1] / height),
                              self.rotation)


@dataclasses.dataclass(frozen=True)
class DetailScene:
  objects: tuple[DetailObject, ...]
  width: int
  height: int
  background: shapes.Background = shapes.Background()

  def as_shapes_scene(self) -> shapes.Scene:
    return shapes.Scene(tuple(o.normalised(self.width, self.height)
                              for o in self.objects), self.background)

  def with_digit(self, index: int, digit: int) -> DetailScene:
    """The same scene with object `index` carrying `digit`."""
    objects = list(self.objects)
    objects[index] = dataclasses.replace(objects[index], digit=digit)
    return dataclasses.replace(self, objects=tuple(objects))


def _place(rng: np.random.Generator, pair: tuple[str, str], width: int,
           height: int, placed: list[DetailObject]) -> DetailObject | None:
  """A size, a free position and a digit; shrinks the object when crowded."""
  colour, shape = pair
  rotation = float(rng.uniform(-shapes._MAX_ROTATION, shapes._MAX_ROTATION))  # pylint: disable=protected-access
  digit = int(rng.integers(10))
  for size in reversed(SIZES[:int(rng.integers(len(SIZES))) + 1]):
    r = SIZE_PX[size]
    lo, hi = r + _GAP, np.array([width, height]) - r - _GAP
    for x, y in rng.uniform(lo, hi, size=(40, 2)):
      if all(math.hypot(x - o.centre[0], y - o.centre[1])
             >= r + o.radius + _GAP for o in placed):
        return DetailObject(colour, shape, size, (float(x), float(y)), digit,
                            0.0 if shape == "circle" else rotation)
  return None


def sample_scene(rng: np.random.Generator,
                 allowed_pairs: Sequence[tuple[str, str]] | None = None,
                 required_pairs: Sequence[tuple[str, str]] | None = None
                 ) -> DetailScene:
  """A canvas from CANVASES and 1..shapes.MAX_OBJECTS digit-carrying shapes;
  pairs as in `shapes.sample_scene` (the first object takes a required pair
  when given)."""
  allowed = tuple(shapes.ALL_PAIRS if allowed_pairs is None else allowed_pairs)
  width, height = CANVASES[int(rng.integers(len(CANVASES)))]
  objects: list[DetailObject] = []
  for i in range(int(rng.integers(1, shapes.MAX_OBJECTS + 1))):
    if i == 0 and required_pairs:
      pair = required_pairs[int(rng.integers(len(required_pairs)))]
    elif objects and rng.random() < 0.3:  # Repeated shapes: counts above one.
      shape = objects[int(rng.integers(len(objects)))].shape
      same = [p for p in allowed if p[1] == shape] or list(allowed)
      pair = same[int(rng.integers(len(same)))]
    else:
      pair = allowed[int(rng.integers(len(allowed)))]
    obj = _place(rng, pair, width, height, objects)
    if obj is not None:  # The first object always fits.
      objects.append(obj)
  order = rng.permutation(len(objects))
  grey, tint = int(rng.integers(195, 236)), rng.integers(-8, 9, size=3)
  background = shapes.Background(
      kind=shapes.BACKGROUNDS[int(rng.integers(len(shapes.BACKGROUNDS)))],
      rgb=tuple(int(grey + t) for t in tint),
      contrast=int(rng.integers(6, 16)), period=float(rng.uniform(0.06, 0.16)),
      orientation=int(rng.integers(3)), texture_seed=int(rng.integers(2**31)))
  return DetailScene(tuple(objects[i] for i in order), width, height,
                     background)


def draw(scene: DetailScene) -> np.ndarray:
  """Renders the scene: uint8[height, width, 3], no anti-aliasing."""
  side = max(scene.width, scene.height)
  # shapes' square texture, cropped: periods scale with the longer side.
  back = shapes._background(scene.background, side)  # pylint: disable=protected-access
  image = Image.fromarray(
      np.ascontiguousarray(back[:scene.height, :scene.width]), "RGB")
  pen = ImageDraw.Draw(image)
  for obj in scene.objects:
    paint = pen.ellipse if obj.shape == "circle" else pen.polygon
    paint(obj.outline(), fill=shapes.COLOUR_RGB[obj.colour])
  pixels = np.array(image)
  for obj in scene.objects:
    x0, y0, x1, y1 = obj.digit_box()
    pixels[y0:y1, x0:x1][glyph(obj.digit)] = ink(obj.colour)
  return pixels


def number_questions(scene: DetailScene, rng: np.random.Generator
                     ) -> list[shapes.QA]:
  """Up to NUMBER_QUESTIONS "what number is on the <colour> <shape>?" ->
  "<digit>", about objects whose colour and shape name them uniquely."""
  pairs = collections.Counter((o.colour, o.shape) for o in scene.objects)
  named = [o for o in scene.objects if pairs[(o.colour, o.shape)] == 1]
  picked = [named[i] for i in rng.permutation(len(named))[:NUMBER_QUESTIONS]]
  return [shapes.QA(f"what number is on the {o.colour} {o.shape}?",
                    str(o.digit), NUMBER) for o in picked]


def _wrong_digit(scene: DetailScene, qa: shapes.QA,
                 rng: np.random.Generator) -> str:
  """Another digit of the scene if any, else any other digit."""
  seen = sorted({str(o.digit) for o in scene.objects} - {qa.answer})
  pool = seen or [str(d) for d in range(10) if str(d) != qa.answer]
  return pool[int(rng.integers(len(pool)))]


def _scene_and_text(split: str, index: int, seed: int):
  """(scene, captions, qa, preferences) of one example."""
  if split not in SPLITS or int(index) < 0 or int(seed) < 0:
    raise ValueError(f"Need split in {SPLITS}, index >= 0 and seed >= 0; got "
                     f"{split!r}, {index}, {seed}.")
  # A stream of its own (4th entry 1): never the shapes example's numbers.
  streams = np.random.SeedSequence(
      [int(seed), SPLITS.index(split), int(index), 1]).spawn(2)
  scene_rng, text_rng = (np.random.default_rng(s) for s in streams)
  heldout = split == "heldout"
  scene = sample_scene(scene_rng,
                       None if heldout else shapes.TRAIN_PAIRS,
                       shapes.HELDOUT_PAIRS if heldout else None)
  flat = scene.as_shapes_scene()
  caps = shapes.captions(flat, text_rng)
  base = shapes.questions(flat, text_rng)
  numbers = number_questions(scene, text_rng)
  prefs = shapes.preference_pairs(flat, text_rng, base) + [
      shapes.Preference(q.question, q.answer, _wrong_digit(scene, q, text_rng),
                        q.qtype) for q in numbers]
  return scene, caps, base + numbers, prefs


def objects_json(scene: DetailScene) -> list[dict[str, Any]]:
  """The objects with pixel `centre` [x, y], `bbox` and `digit_box`
  [x0, y0, x1, y1] and `digit`."""
  return [{"colour": o.colour, "shape": o.shape, "size": o.size,
           "digit": o.digit,
           "centre": [int(o.centre[0]), int(o.centre[1])],
           "bbox": list(o.bbox(scene.width, scene.height)),
           "digit_box": list(o.digit_box()),
           "rgb": list(shapes.COLOUR_RGB[o.colour])} for o in scene.objects]


def example(split: str, index: int, seed: int = 0, png: bool = False
            ) -> dict[str, Any]:
  """Example `index` of a split, as `shapes.example` (same keys), with an
  image uint8[H, W, 3] at its canvas size and `number` questions."""
  scene, caps, qa, prefs = _scene_and_text(split, index, seed)
  image = draw(scene)
  if png:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    image = buffer.getvalue()
  return {"id": f"{split}-{int(index):07d}", "image": image, "captions": caps,
          "qa": [q._asdict() for q in qa],
          "preference": [p._asdict() for p in prefs],
          "objects": objects_json(scene)}


def scene_of(split: str, index: int, seed: int = 0) -> DetailScene:
  """The scene of example `index` (for readers that redraw it)."""
  return _scene_and_text(split, index, seed)[0]
