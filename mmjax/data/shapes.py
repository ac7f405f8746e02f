"""Synthetic visual-reasoning benchmark: coloured shapes, captions, VQA, DPO.

An example is an RGB image (default 64x64) of 1 to 6 filled, non-overlapping
shapes on a plain or low-contrast textured background, two captions, questions
of five types and preference pairs, in `text_corpus`'s words. It is a pure
function of (seed, split, index) via its own `np.random.Generator`s: examples
can be made in any order, in parallel or lazily, byte-identically.

Splits train / validation / test share one distribution without the colour x
shape pairs in `HELDOUT_PAIRS`; every `heldout` image has at least one of them
(compositional generalisation). Geometry is normalised to [0, 1] (x right,
y down); `objects` gives pixel centres and boxes at the drawn size.

Usage:
  ex = shapes.example("train", 12, seed=0)   # ex["image"]: uint8[64, 64, 3]
"""
from __future__ import annotations

import collections
import dataclasses
import io
import math
import re
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from mmjax.data.text_corpus import (COLOURS, COUNT_WORDS, INVERSE_RELATION,
                                     SHAPES, SIZES)

SPLITS = ("train", "validation", "test", "heldout")
QTYPES = ("colour", "shape", "count", "spatial", "existence")
BACKGROUNDS = ("plain", "noise", "stripes", "checker")
COLOUR_RGB = {"red": (220, 40, 40), "green": (30, 160, 60),
              "blue": (40, 80, 220), "yellow": (235, 205, 30),
              "purple": (140, 50, 180), "orange": (245, 135, 25)}
# Chroma (max - min channel, 0..255) that tells an object pixel from the
# background: every palette colour has >= 130, the backgrounds (greys tinted
# by <= 8, textures of contrast <= 15) stay below ~30.
OBJECT_MIN_CHROMA = 60
# Circumradius of each size, as a fraction of the image side.
SIZE_RADIUS = {"small": 0.08, "medium": 0.11, "large": 0.15}
ALL_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES)
# One shape per colour and one colour per shape (6 of 36 pairs, 17%): every
# colour and every shape still occurs in training, only these pairings do not.
HELDOUT_PAIRS = (("red", "star"), ("green", "hexagon"), ("blue", "triangle"),
                 ("yellow", "circle"), ("purple", "diamond"),
                 ("orange", "square"))
TRAIN_PAIRS = tuple(p for p in ALL_PAIRS if p not in HELDOUT_PAIRS)
MAX_OBJECTS = 6  # Count answers are the words one..six.
# Spatial questions compare centres at least this far apart on the asked axis.
SPATIAL_MARGIN = 0.1
_GAP = 0.02  # Free space between objects' bounding circles and to the edge.
_MAX_ROTATION = 12.0  # Degrees; more would turn a square into a diamond.
_BACKGROUND_WORDS = {"plain": "plain", "noise": "noisy",
                     "stripes": "striped", "checker": "checkered"}
_CAPTION_OPENERS = ("", "the image shows ", "this picture contains ",
                    "here we have ")
_PLACES = (("in the top left corner", "at the top", "in the top right corner"),
           ("on the left", "in the centre", "on the right"),
           ("in the bottom left corner", "at the bottom",
            "in the bottom right corner"))
# (vertex count, angle offset in degrees, x scale) of the polygon shapes;
# vertex 0 points up (-90 degrees) before rotation.
_POLYGONS = {"square": (4, 45.0, 1.0), "triangle": (3, 0.0, 1.0),
             "hexagon": (6, 30.0, 1.0), "diamond": (4, 0.0, 0.7),
             "star": (10, 0.0, 1.0)}

QA = collections.namedtuple("QA", "question answer qtype")
# A question, its correct answer (chosen) and a plausible wrong one.
Preference = collections.namedtuple("Preference", "question chosen rejected "
                                    "qtype")


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One filled shape; `centre` is normalised (x, y) in [0, 1], y down."""
  colour: str
  shape: str
  size: str
  centre: tuple[float, float]
  rotation: float = 0.0  # Degrees, clockwise.

  @property
  def radius(self) -> float:
    return SIZE_RADIUS[self.size]

  def pixel_centre(self, image_size: int) -> tuple[int, int]:
    return (int(self.centre[0] * image_size), int(self.centre[1] * image_size))

  def vertices(self, image_size: int) -> list[tuple[float, float]]:
    """Polygon vertices in pixels (a circle: its box's two corners)."""
    cx, cy = self.pixel_centre(image_size)
    r = self.radius * image_size
    if self.shape == "circle":
      return [(cx - r, cy - r), (cx + r, cy + r)]
    n, offset, x_scale = _POLYGONS[self.shape]
    angles = [math.radians(-90 + offset + self.rotation + 360 * k / n)
              for k in range(n)]
    # A star's inner vertices at 0.45 r keep its centre pixel solid.
    radii = [0.45 * r if self.shape == "star" and k % 2 else r
             for k in range(n)]
    return [(cx + x_scale * rk * math.cos(a), cy + rk * math.sin(a))
            for rk, a in zip(radii, angles)]

  def bbox(self, image_size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): `image[y0:y1, x0:x1]` holds every drawn pixel."""
    xs, ys = zip(*self.vertices(image_size))
    box = (math.floor(min(xs)), math.floor(min(ys)), math.ceil(max(xs)) + 1,
           math.ceil(max(ys)) + 1)
    return tuple(min(max(v, 0), image_size) for v in box)


@dataclasses.dataclass(frozen=True)
class Background:
  """Base colour plus an optional low-contrast texture (one of BACKGROUNDS)."""
  kind: str = "plain"
  rgb: tuple[int, int, int] = (220, 220, 220)
  contrast: int = 0  # Texture amplitude in grey levels.
  period: float = 0.1  # Stripe / checker period, fraction of the side.
  orientation: int = 0  # Stripes: 0 horizontal, 1 vertical, 2 diagonal.
  texture_seed: int = 0  # Noise texture.


@dataclasses.dataclass(frozen=True)
class Scene:
  objects: tuple[SceneObject, ...]
  background: Background = Background()


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
  return items[rng.integers(len(items))]


def _check_pairs(pairs: Sequence[tuple[str, str]], what: str) -> tuple:
  pairs = tuple(tuple(p) for p in pairs)
  if not pairs or not set(pairs) <= set(ALL_PAIRS):
    raise ValueError(f"{what} must be a non-empty list of (colour, shape) "
                     f"pairs from colours {COLOURS} and shapes {SHAPES}.")
  return pairs


def _place(rng: np.random.Generator, pair: tuple[str, str],
           placed: list[SceneObject]) -> SceneObject | None:
  """Draws a size and a free position; shrinks the object when crowded."""
  colour, shape = pair
  rotation = float(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
  for size in reversed(SIZES[:int(rng.integers(len(SIZES))) + 1]):
    r = SIZE_RADIUS[size]
    # One call for all tries: numpy's per-call overhead dominates here.
    for x, y in rng.uniform(r + _GAP, 1.0 - r - _GAP, size=(40, 2)):
      if all(math.hypot(x - o.centre[0], y - o.centre[1])
             >= r + o.radius + _GAP for o in placed):
        return SceneObject(colour, shape, size, (float(x), float(y)),
                           0.0 if shape == "circle" else rotation)
  return None


def sample_scene(rng: np.random.Generator,
                 allowed_pairs: Sequence[tuple[str, str]] | None = None,
                 required_pairs: Sequence[tuple[str, str]] | None = None
                 ) -> Scene:
  """Samples 1..MAX_OBJECTS non-overlapping shapes and a background.

  Objects take (colour, shape) pairs from `allowed_pairs` (default all),
  except the first one when `required_pairs` is given, which takes one of
  those. A crowded scene may hold fewer objects than drawn, never 0.
  """
  allowed = _check_pairs(ALL_PAIRS if allowed_pairs is None else allowed_pairs,
                         "allowed_pairs")
  required = (None if required_pairs is None
              else _check_pairs(required_pairs, "required_pairs"))
  objects: list[SceneObject] = []
  for i in range(int(rng.integers(1, MAX_OBJECTS + 1))):
    if i == 0 and required:
      pair = _pick(rng, required)
    elif objects and rng.random() < 0.3:
      # Repeating a shape makes counts above one common.
      shape = _pick(rng, objects).shape
      pair = _pick(rng, [p for p in allowed if p[1] == shape] or allowed)
    else:
      pair = _pick(rng, allowed)
    obj = _place(rng, pair, objects)
    if obj is not None:  # The first object always fits.
      objects.append(obj)
  order = rng.permutation(len(objects))
  grey, tint = int(rng.integers(195, 236)), rng.integers(-8, 9, size=3)
  background = Background(
      kind=_pick(rng, BACKGROUNDS), rgb=tuple(int(grey + t) for t in tint),
      contrast=int(rng.integers(6, 16)), period=float(rng.uniform(0.06, 0.16)),
      orientation=int(rng.integers(3)), texture_seed=int(rng.integers(2**31)))
  return Scene(tuple(objects[i] for i in order), background)


def _background(bg: Background, size: int) -> np.ndarray:
  """The background as uint8[size, size, 3]."""
  y, x = np.ogrid[0:size, 0:size]  # int[size, 1], int[1, size].
  period = max(2, round(bg.period * size))
  if bg.kind == "plain":
    offset = np.zeros((), np.int16)
  elif bg.kind == "noise":
    offset = np.random.default_rng(bg.texture_seed).integers(
        -bg.contrast, bg.contrast + 1, size=(size, size), dtype=np.int16)
  elif bg.kind == "stripes":
    coord = (y, x, x + y)[bg.orientation]
    offset = ((coord * 2 // period) % 2 * 2 - 1) * bg.contrast
  elif bg.kind == "checker":
    offset = ((x // period + y // period) % 2 * 2 - 1) * bg.contrast
  else:
    raise ValueError(f"Background kind {bg.kind!r} not in {BACKGROUNDS}.")
  offset = np.broadcast_to(offset, (size, size))
  pixels = offset[..., None] + np.asarray(bg.rgb, np.int16)
  return np.clip(pixels, 0, 255).astype(np.uint8)


def draw(scene: Scene, image_size: int = 64) -> np.ndarray:
  """Renders the scene: uint8[image_size, image_size, 3], no anti-aliasing."""
  if image_size < 16:
    raise ValueError(f"image_size must be >= 16, got {image_size}.")
  image = Image.fromarray(_background(scene.background, image_size), "RGB")
  pen = ImageDraw.Draw(image)
  for obj in scene.objects:
    paint = pen.ellipse if obj.shape == "circle" else pen.polygon
    paint(obj.vertices(image_size), fill=COLOUR_RGB[obj.colour])
  return np.asarray(image)


def _article(phrase: str) -> str:
  return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(phrases: list[str]) -> str:
  head = ", ".join(phrases[:-1])
  return f"{head} and {phrases[-1]}" if head else phrases[-1]


def captions(scene: Scene, rng: np.random.Generator) -> list[str]:
  """[short, detailed] captions naming every object, left to right.

  E.g. "two red circles and a blue square." and "the image shows a large red
  circle in the top left corner, a small red circle on the right and a medium
  blue square in the centre, on a striped background.".
  """
  objects = sorted(scene.objects, key=lambda o: o.centre)
  groups = collections.Counter((o.colour, o.shape) for o in objects)
  # Every shape name takes a plain plural "s".
  short = _join([_article(f"{c} {s}") if n == 1 else
                 f"{COUNT_WORDS[n - 1]} {c} {s}s"
                 for (c, s), n in groups.items()])
  details = []
  for o in objects:
    col, row = (min(int(v * 3), 2) for v in o.centre)  # 3x3 grid cell.
    details.append(f"{_article(f'{o.size} {o.colour} {o.shape}')} "
                   f"{_PLACES[row][col]}")
  background = _article(_BACKGROUND_WORDS[scene.background.kind])
  return [f"{short}.", f"{_pick(rng, _CAPTION_OPENERS)}{_join(details)}, on "
          f"{background} background."]

_CAPTION_COUNTS = {**{w: i + 1 for i, w in enumerate(COUNT_WORDS)},
                   "a": 1, "an": 1}
# "two red circles", "a blue square": a count word or a/an, a colour, a
# shape with its plural "s".
_CAPTION_ITEM = re.compile(r"^(\w+) (\w+) (\w+?)s?$")


def parse_caption(caption: str) -> collections.Counter | None:
  """The objects a short caption (`captions(...)[0]`) names: "two red
  circles and a blue square." -> Counter({("red", "circle"): 2, ("blue",
  "square"): 1}); None when the text is not of that form."""
  text = caption.strip().rstrip(".").replace(" and ", ", ")
  asked = collections.Counter()
  for item in (p.strip() for p in text.split(",") if p.strip()):
    match = _CAPTION_ITEM.match(item)
    if match is None:
      return None
    count, colour, shape = match.groups()
    if (count not in _CAPTION_COUNTS or colour not in COLOURS or
        shape not in SHAPES):
      return None
    asked[(colour, shape)] += _CAPTION_COUNTS[count]
  return asked or None


# The question templates: `questions` asks one of each type per image,
# `question_pool` every one an image allows.
COLOUR_QUESTION = "what colour is the {}?"       # a shape occurring once
SHAPE_QUESTION = "what shape is the {} object?"  # a colour occurring once
COUNT_SHAPE_QUESTION = "how many {}s are there?"
COUNT_COLOUR_QUESTION = "how many {} objects are there?"
COUNT_ALL_QUESTION = "how many objects are there?"


def _existence_question(colour: str, shape: str) -> str:
  return f"is there {_article(colour)} {shape}?"


def _spatial_question(a: SceneObject, relation: str, b: SceneObject) -> str:
  return f"is the {a.colour} {a.shape} {relation} the {b.colour} {b.shape}?"


def _spatial_candidates(objects: Sequence[SceneObject], pair_counts: dict
                        ) -> list[tuple[SceneObject, SceneObject, int]]:
  """(a, b, axis) of objects named unambiguously (their colour x shape pair
  occurs once) whose centres are SPATIAL_MARGIN apart on the axis."""
  named = [o for o in objects if pair_counts[(o.colour, o.shape)] == 1]
  return [(a, b, axis) for a in named for b in named if a is not b
          for axis in (0, 1)
          if abs(a.centre[axis] - b.centre[axis]) >= SPATIAL_MARGIN]


def _true_relation(a: SceneObject, b: SceneObject, axis: int) -> str:
  """How a lies to b on the axis (0: x, 1: y down)."""
  first_smaller = a.centre[axis] < b.centre[axis]
  return (("right of", "left of"), ("below", "above"))[axis][first_smaller]


def _spatial_qa(objects: Sequence[SceneObject], pair_counts: dict,
                rng: np.random.Generator) -> QA | None:
  """"is the A left of / right of / above / below the B?", yes half the time."""
  candidates = _spatial_candidates(objects, pair_counts)
  if not candidates:
    return None
  a, b, axis = _pick(rng, candidates)
  true_rel = _true_relation(a, b, axis)
  yes = bool(rng.random() < 0.5)
  rel = true_rel if yes else INVERSE_RELATION[true_rel]
  return QA(_spatial_question(a, rel, b), "yes" if yes else "no", "spatial")


def questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
  """Up to six questions with one-word answers, each answerable from the image.

  One each of colour (of a shape that occurs once), shape (of a colour that
  occurs once), count (a number word) and spatial when the scene allows, and
  always two existence questions: a present and an absent pair (half of the
  time a near miss that shares a colour or shape with the scene).
  """
  objects = scene.objects
  shape_counts = collections.Counter(o.shape for o in objects)
  colour_counts = collections.Counter(o.colour for o in objects)
  pair_counts = collections.Counter((o.colour, o.shape) for o in objects)
  qa = []
  # Colour of a shape that occurs once, shape of a colour that occurs once.
  for asked, key, counts, template in (
      ("colour", "shape", shape_counts, COLOUR_QUESTION),
      ("shape", "colour", colour_counts, SHAPE_QUESTION)):
    single = [o for o in objects if counts[getattr(o, key)] == 1]
    if single:
      obj = _pick(rng, single)
      qa.append(QA(template.format(getattr(obj, key)), getattr(obj, asked),
                   asked))
  obj = _pick(rng, objects)
  question, n = _pick(rng, (
      (COUNT_SHAPE_QUESTION.format(obj.shape), shape_counts[obj.shape]),
      (COUNT_COLOUR_QUESTION.format(obj.colour), colour_counts[obj.colour]),
      (COUNT_ALL_QUESTION, len(objects))))
  qa.append(QA(question, COUNT_WORDS[n - 1], "count"))
  spatial = _spatial_qa(objects, pair_counts, rng)
  if spatial is not None:
    qa.append(spatial)
  present = _pick(rng, objects)
  absent = [p for p in ALL_PAIRS if p not in pair_counts]
  near = [p for p in absent if p[0] in colour_counts or p[1] in shape_counts]
  if near and rng.random() < 0.5:
    absent = near  # POPE's adversarial probe: a near miss of the scene.
  colour, shape = _pick(rng, absent)
  existence = [QA(_existence_question(present.colour, present.shape), "yes",
                  "existence"),
               QA(_existence_question(colour, shape), "no", "existence")]
  return qa + [existence[i] for i in rng.permutation(2)]


def question_pool(scene: Scene, name_heldout: bool = True
                  ) -> dict[str, list[QA]]:
  """Every question `questions` could ask about the scene, by kind.

  Kinds: the five QTYPES, with existence split into "existence_yes" (each
  present pair) and "existence_no" (each absent pair, near misses of the
  scene first), and spatial questions in both directions (yes and no).
  name_heldout=False leaves the HELDOUT_PAIRS out of "existence_no".
  """
  objects = scene.objects
  shape_counts = collections.Counter(o.shape for o in objects)
  colour_counts = collections.Counter(o.colour for o in objects)
  pair_counts = collections.Counter((o.colour, o.shape) for o in objects)
  pool = {
      "colour": [QA(COLOUR_QUESTION.format(o.shape), o.colour, "colour")
                 for o in objects if shape_counts[o.shape] == 1],
      "shape": [QA(SHAPE_QUESTION.format(o.colour), o.shape, "shape")
                for o in objects if colour_counts[o.colour] == 1],
      "count": ([QA(COUNT_SHAPE_QUESTION.format(s), COUNT_WORDS[n - 1],
                    "count") for s, n in shape_counts.items()] +
                [QA(COUNT_COLOUR_QUESTION.format(c), COUNT_WORDS[n - 1],
                    "count") for c, n in colour_counts.items()] +
                [QA(COUNT_ALL_QUESTION, COUNT_WORDS[len(objects) - 1],
                    "count")]),
      "spatial": [],
      "existence_yes": [QA(_existence_question(c, s), "yes", "existence")
                        for c, s in pair_counts],
      "existence_no": [],
  }
  for a, b, axis in _spatial_candidates(objects, pair_counts):
    rel = _true_relation(a, b, axis)
    pool["spatial"] += [
        QA(_spatial_question(a, rel, b), "yes", "spatial"),
        QA(_spatial_question(a, INVERSE_RELATION[rel], b), "no", "spatial")]
  absent = [p for p in ALL_PAIRS if p not in pair_counts and (
      name_heldout or p not in HELDOUT_PAIRS)]
  near = [p for p in absent if p[0] in colour_counts or p[1] in shape_counts]
  pool["existence_no"] = [QA(_existence_question(c, s), "no", "existence")
                          for c, s in near + [p for p in absent
                                              if p not in near]]
  return pool


def extra_questions(scene: Scene, asked: Sequence[str], k: int,
                    rng: np.random.Generator, name_heldout: bool = True
                    ) -> list[QA]:
  """Up to k more questions about the scene, none of them in `asked`.

  Each draw picks a kind uniformly among those with questions left, then a
  question of it uniformly; existence questions come in pairs, a present
  pair and an absent one (a near miss of the scene half of the time when it
  has them), so answers stay as balanced as `questions`' are. Denser
  supervision per image: the image tokens are paid for once and every
  question teaches.
  """
  seen = set(asked)
  pool = {kind: [q for q in items if q.question not in seen]
          for kind, items in question_pool(scene, name_heldout).items()}
  absent = pool.pop("existence_no")
  words = {w for o in scene.objects for w in (o.colour, o.shape)}
  near = [q for q in absent if words & set(q.question[:-1].split())]
  far = [q for q in absent if q not in near]
  out = []
  while len(out) < k:
    kinds = [kind for kind, items in pool.items() if items and (
        kind != "existence_yes" or (near or far) and len(out) + 2 <= k)]
    if not kinds:
      break
    kind = _pick(rng, kinds)
    out.append(pool[kind].pop(int(rng.integers(len(pool[kind])))))
    if kind == "existence_yes":
      misses = near if near and (not far or rng.random() < 0.5) else far
      out.append(misses.pop(int(rng.integers(len(misses)))))
  return out


def without_heldout_names(scene: Scene, qa: Sequence[tuple[str, str]],
                          rng: np.random.Generator
                          ) -> list[tuple[str, str]]:
  """qa with each question naming a held-out pair swapped for another.

  The only questions of a training scene that can name a held-out colour x
  shape pair are existence questions about an absent object ("is there a
  red star?" -> "no", always). Each becomes the same question about another
  absent pair (a near miss of the scene when the original was one, so the
  POPE-style balance stays), none already in qa. Then training never shows
  a held-out pair, in pictures or in words: without this the LM learns that
  those five words always answer "no", which is exactly what the heldout
  split asks about (docs/recipes.md "What makes the model see").
  """
  heldout = {_existence_question(c, s): (c, s) for c, s in HELDOUT_PAIRS}
  if not any(q in heldout for q, _ in qa):
    return list(qa)
  asked = {q for q, _ in qa}
  words = {w for o in scene.objects for w in (o.colour, o.shape)}
  no = [q.question for q in question_pool(scene, name_heldout=False)
        ["existence_no"] if q.question not in asked]
  out = []
  for q, a in qa:
    if q in heldout and a == "no" and no:
      was_near = bool(words & set(heldout[q]))
      near = [x for x in no if bool(words & set(x[:-1].split())) == was_near]
      q = (near or no)[int(rng.integers(len(near or no)))]
      no.remove(q)
    out.append((q, a))
  return out


def scene_from_objects(objects: Sequence[dict[str, Any]], image_size: int
                       ) -> Scene:
  """The scene of a record's `objects_json` (what questions need: colours,
  shapes, sizes and centres; rotation and background are not stored)."""
  return Scene(tuple(
      SceneObject(o["colour"], o["shape"], o["size"],
                  ((o["centre"][0] + 0.5) / image_size,
                   (o["centre"][1] + 0.5) / image_size)) for o in objects))


def _wrong_answer(scene: Scene, qa: QA, rng: np.random.Generator) -> str:
  """A plausible wrong answer of the same type, preferring the scene's words."""
  if qa.qtype in ("spatial", "existence"):
    return "no" if qa.answer == "yes" else "yes"
  if qa.qtype == "count":
    n = COUNT_WORDS.index(qa.answer)
    return _pick(rng, [COUNT_WORDS[m] for m in (n - 1, n + 1)
                       if 0 <= m < len(COUNT_WORDS)])
  words = COLOURS if qa.qtype == "colour" else SHAPES
  seen = {getattr(o, qa.qtype) for o in scene.objects} - {qa.answer}
  return _pick(rng, sorted(seen) or [w for w in words if w != qa.answer])


def preference_pairs(scene: Scene, rng: np.random.Generator,
                     qa: Sequence[QA] | None = None) -> list[Preference]:
  """A Preference per question of qa (new questions if None).

  Rejected answers are hard negatives: another colour / shape in the image, a
  count off by one, the flipped yes/no ("yes" for an absent object).
  """
  qa = questions(scene, rng) if qa is None else qa
  return [Preference(q.question, q.answer, _wrong_answer(scene, q, rng),
                     q.qtype) for q in qa]


def _scene_and_text(split: str, index: int, seed: int):
  """(scene, captions, qa, preferences) of one example."""
  if split not in SPLITS or int(index) < 0 or int(seed) < 0:
    raise ValueError(f"Need split in {SPLITS}, index >= 0 and seed >= 0; got "
                     f"{split!r}, {index}, {seed}.")
  # Separate streams: changing the text templates leaves the images alone.
  streams = np.random.SeedSequence(
      [int(seed), SPLITS.index(split), int(index)]).spawn(2)
  scene_rng, text_rng = (np.random.default_rng(s) for s in streams)
  heldout = split == "heldout"
  scene = sample_scene(scene_rng, None if heldout else TRAIN_PAIRS,
                       HELDOUT_PAIRS if heldout else None)
  caps = captions(scene, text_rng)
  qa = questions(scene, text_rng)
  return scene, caps, qa, preference_pairs(scene, text_rng, qa)


def example_scene(split: str, index: int, seed: int = 0) -> Scene:
  """The scene of example `index` of a split (no image drawn)."""
  return _scene_and_text(split, index, seed)[0]


def objects_json(scene: Scene, image_size: int) -> list[dict[str, Any]]:
  """The objects with pixel `centre` [x, y] and `bbox` [x0, y0, x1, y1]."""
  return [{"colour": o.colour, "shape": o.shape, "size": o.size,
           "centre": list(o.pixel_centre(image_size)), "bbox": list(
               o.bbox(image_size)), "rgb": list(COLOUR_RGB[o.colour])}
          for o in scene.objects]


def example(split: str, index: int, seed: int = 0, image_size: int = 64,
            png: bool = False) -> dict[str, Any]:
  """Example `index` (any index >= 0) of a split; a pure function of its args.

  Returns {"id": "train-0000012", "image": uint8[S, S, 3] (lossless PNG bytes
  if png: cheap to send between processes), "captions": [short, detailed],
  "qa": [{"question", "answer", "qtype"}], "preference": [{"question",
  "chosen", "rejected", "qtype"}], "objects": objects_json(...)}.
  """
  scene, caps, qa, prefs = _scene_and_text(split, index, seed)
  image = draw(scene, image_size)
  if png:  # Level 1 is as lossless as any and several times faster than 6.
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    image = buffer.getvalue()
  return {"id": f"{split}-{int(index):07d}", "image": image, "captions": caps,
          "qa": [q._asdict() for q in qa],
          "preference": [p._asdict() for p in prefs],
          "objects": objects_json(scene, image_size)}


def qa_text(question: str, answer: str) -> str:
  """One Q/A as LM text, in text_corpus's style: "q: ... a: ...."."""
  return f"q: {question} a: {answer}."


def benchmark_texts(n: int, seed: int = 0) -> list[str]:
  """Captions and `qa_text` lines of train examples 0..n-1, no image drawn."""
  texts = []
  for index in range(n):
    _, caps, qa, _ = _scene_and_text("train", index, seed)
    texts += caps + [qa_text(q.question, q.answer) for q in qa]
  return texts
