"""Does a trained shapes model see shapes, or the renderer's pixels?

  python experiments/hand_drawn.py --workdir=runs/shapes_tiny --n=300

Draws --n pictures with PIL alone (not `mmjax.data.shapes`): 4x supersampled
and downsampled with a Lanczos filter (anti-aliased edges), each colour a
random shade around its own RGB (never the benchmark's exact values), light
gradient backgrounds the benchmark never uses, 1 to 4 objects of the
training colour x shape pairs. It asks the benchmark's colour, shape and
existence questions (same wording: the model knows no other) through
`mmjax.inference` and prints accuracy per type with standard errors next to
the run's own test accuracy (WORKDIR/eval/<last stage>.json).
"""
from __future__ import annotations

import json
import math
import os

from absl import app, flags
import numpy as np
from PIL import Image, ImageDraw

from mmjax.data.text_corpus import COLOURS, SHAPES

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained shapes run.")
_N = flags.DEFINE_integer("n", 300, "Pictures to draw (each gives 2-4 "
                          "questions).")
_SEED = flags.DEFINE_integer("seed", 0, "Drawing seed.")
_SIDE = flags.DEFINE_integer("side", 64, "Picture side in pixels.")

# Base RGB of each colour word: other values than the benchmark's palette.
BASE_RGB = {"red": (205, 30, 60), "green": (40, 175, 90),
            "blue": (30, 110, 235), "yellow": (250, 220, 60),
            "purple": (120, 40, 160), "orange": (250, 150, 50)}
# Pairs the benchmark holds out of training (colour, shape): not drawn, so
# the comparison is with the run's `test` split.
_HELDOUT = {("red", "star"), ("green", "hexagon"), ("blue", "triangle"),
            ("yellow", "circle"), ("purple", "diamond"),
            ("orange", "square")}
_SUPER = 4  # Supersampling factor of the anti-aliasing.


def _outline(shape: str, cx: float, cy: float, r: float, turn: float):
  """Polygon points (or the circle's box) of a shape of circumradius r."""
  if shape == "circle":
    return [(cx - r, cy - r), (cx + r, cy + r)]
  n, start, inner, squash = {
      "square": (4, 45, None, 1.0), "triangle": (3, -90, None, 1.0),
      "hexagon": (6, 0, None, 1.0), "diamond": (4, -90, None, 0.65),
      "star": (10, -90, 0.42, 1.0)}[shape]
  points = []
  for k in range(n):
    a = math.radians(start + turn + 360.0 * k / n)
    rk = r * inner if inner is not None and k % 2 else r
    points.append((cx + squash * rk * math.cos(a), cy + rk * math.sin(a)))
  return points


def draw_picture(rng: np.random.Generator, side: int = 64):
  """(uint8[side, side, 3], [(colour, shape), ...]) of one hand-drawn scene."""
  big = side * _SUPER
  top = rng.integers(200, 256, size=3)
  bottom = rng.integers(200, 256, size=3)
  ramp = np.linspace(0.0, 1.0, big)[:, None, None]
  background = (top * (1 - ramp) + bottom * ramp) * np.ones((1, big, 1))
  image = Image.fromarray(background.astype(np.uint8), "RGB")
  pen = ImageDraw.Draw(image)
  pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in _HELDOUT]
  placed, objects = [], []
  for _ in range(int(rng.integers(1, 5))):
    colour, shape = pairs[int(rng.integers(len(pairs)))]
    r = float(rng.uniform(0.09, 0.15)) * big
    for _ in range(50):
      cx, cy = rng.uniform(r + 2, big - r - 2, size=2)
      if all(math.hypot(cx - x, cy - y) > r + q + 0.03 * big
             for x, y, q in placed):
        break
    else:
      continue
    rgb = tuple(int(np.clip(v + rng.integers(-18, 19), 0, 255))
                for v in BASE_RGB[colour])
    outline = _outline(shape, cx, cy, r, float(rng.uniform(-10, 10)))
    (pen.ellipse if shape == "circle" else pen.polygon)(outline, fill=rgb)
    placed.append((cx, cy, r))
    objects.append((colour, shape))
  small = image.resize((side, side), Image.LANCZOS)
  return np.asarray(small), objects


def questions(objects, rng: np.random.Generator):
  """(question, answer, type) in the benchmark's wording."""
  out = []
  shapes = [s for _, s in objects]
  colours = [c for c, _ in objects]
  for colour, shape in objects:
    if shapes.count(shape) == 1:
      out.append((f"what colour is the {shape}?", colour, "colour"))
      break
  for colour, shape in objects:
    if colours.count(colour) == 1:
      out.append((f"what shape is the {colour} object?", shape, "shape"))
      break
  colour, shape = objects[int(rng.integers(len(objects)))]
  article = "an" if colour[0] in "aeiou" else "a"
  out.append((f"is there {article} {colour} {shape}?", "yes", "existence"))
  absent = [(c, s) for c in COLOURS for s in SHAPES
            if (c, s) not in objects and (c, s) not in _HELDOUT]
  colour, shape = absent[int(rng.integers(len(absent)))]
  article = "an" if colour[0] in "aeiou" else "a"
  out.append((f"is there {article} {colour} {shape}?", "no", "existence"))
  return out


def _own_accuracy(workdir: str) -> dict[str, float]:
  """The run's test accuracy per type after its last evaluated stage."""
  folder = os.path.join(workdir, "eval")
  best = {}
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
    with open(os.path.join(folder, name)) as f:
      metrics = json.load(f)
    if "test/acc/all" in metrics:
      best = metrics  # The stages' files; the last one with VQA wins below.
      best["_stage"] = name[:-5]
  return best


def main(argv):
  del argv
  from mmjax import inference  # pylint: disable=g-import-not-at-top
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (a trained shapes run).")
  if _N.value <= 0:
    raise app.UsageError(f"--n must be positive, got {_N.value}.")
  rng = np.random.default_rng(_SEED.value)
  images, prompts, answers, types = [], [], [], []
  for _ in range(_N.value):
    picture, objects = draw_picture(rng, _SIDE.value)
    for q, a, t in questions(objects, rng):
      images.append(picture)
      prompts.append(q)
      answers.append(a)
      types.append(t)
  run = inference.load(_WORKDIR.value)
  out = run.generate(prompts, images, max_new_tokens=4, batch_size=32)
  right = np.asarray([p.strip().lower().rstrip(".") == a
                      for p, a in zip(out.texts, answers)])
  own = _own_accuracy(_WORKDIR.value)
  print(f"hand-drawn pictures: {_N.value}, questions: {len(right)}; own "
        f"renders: the run's test split after {own.get('_stage', '?')}")
  print("| type | hand-drawn | n | own test renders |")
  print("|---|---|---|---|")
  for qtype in ("colour", "shape", "existence", "all"):
    mask = np.ones_like(right) if qtype == "all" else (
        np.asarray(types) == qtype)
    acc = float(right[mask].mean())
    se = math.sqrt(acc * (1 - acc) / mask.sum())
    mine = own.get(f"test/acc/{qtype}")
    print(f"| {qtype} | {acc:.3f} +- {se:.3f} | {int(mask.sum())} | "
          f"{'-' if mine is None else f'{mine:.3f}'} |")


if __name__ == "__main__":
  app.run(main)
