"""Is a shapes_detail digit still there after the resize? A best-case reader.

For each object of an example, the reader knows everything but the digit: it
redraws the scene with each of the ten digits (`shapes_detail.FONT`),
resizes every candidate exactly as the pipeline does (`images.resize_square`,
bicubic, to side x side) and answers the candidate nearest (sum of squared
differences) to the resized image it is shown. No model can beat it, so its
accuracy bounds what a model reading a `side`-pixel square can score on
`number` questions.

Per side:
  exact       the resized image as is; a tie between candidates counts
              wrong. Bicubic resizing keeps some trace of every stroke, so
              this reader reads almost everything: an upper bound only.
  noisy       plus Gaussian noise of each `noise` level (grey levels per
              pixel and channel; deterministic): differences below the
              clutter a model sees (background textures are 6-15 grey
              levels) stop counting.
  rival gap   the largest per-pixel difference (grey levels, median over
              digits) between the image and its closest rival digit's.

  python -m mmjax.evals.legibility --sides=32,48,64,96,128,160 --examples=100

prints a markdown table (docs/resolution.md shows one).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np

from mmjax.data import images, shapes_detail

DEFAULT_SIDES = (32, 48, 64, 96, 128, 160)
DEFAULT_NOISES = (16.0, 48.0)


def _view(image: np.ndarray, side: int | None, mode: str) -> np.ndarray:
  """float32 image as the model would get it (None: native canvas)."""
  if side is not None:
    image = images.resize_square(image, side, mode)
  return image.astype(np.float32)


def read_digits(scene: shapes_detail.DetailScene, side: int | None,
                noises: Sequence[float], rng: np.random.Generator,
                mode: str = "square") -> list[dict]:
  """Per object: {"digit", "exact" (the exact reading; -1 when several
  candidates tie), "noisy" (per noise level: read right?), "separation"
  (the largest per-pixel grey-level difference between the seen image and
  the closest rival digit's: how strongly the detail survives)}."""
  out = []
  for i, obj in enumerate(scene.objects):
    candidates = np.stack([_view(shapes_detail.draw(scene.with_digit(i, d)),
                                 side, mode) for d in range(10)])
    seen = candidates[obj.digit]
    dist = ((candidates - seen) ** 2).sum(axis=(1, 2, 3))  # [10]
    best = np.flatnonzero(dist == dist.min())
    rivals = np.delete(candidates, obj.digit, axis=0)
    noisy = []
    for noise in noises:
      shown = seen + rng.normal(0.0, noise, seen.shape).astype(np.float32)
      noisy.append(int(np.argmin(((candidates - shown) ** 2).sum(
          axis=(1, 2, 3)))) == obj.digit)
    closest = rivals[np.argmin(((rivals - seen) ** 2).sum(axis=(1, 2, 3)))]
    out.append({"digit": obj.digit,
                "exact": int(best[0]) if len(best) == 1 else -1,
                "noisy": noisy,
                "separation": float(np.abs(closest - seen).max())})
  return out


def _glyph_size(scene: shapes_detail.DetailScene, side: int | None,
                mode: str) -> tuple[float, float]:
  """(width, height) in pixels of a glyph after the resize."""
  w, h = 3 * shapes_detail.DIGIT_SCALE, 5 * shapes_detail.DIGIT_SCALE
  if side is None:
    return (w, h)
  if mode == "pad":  # One scale: the longer side becomes `side`.
    scale = side / max(scene.width, scene.height)
    return (w * scale, h * scale)
  return (w * side / scene.width, h * side / scene.height)


def legibility(sides: Sequence[int | None], num_examples: int = 100,
               noises: Sequence[float] = DEFAULT_NOISES, split: str = "test",
               seed: int = 0, mode: str = "square") -> list[dict]:
  """Per side: {"side", "objects", "exact", "noisy" (one share per noise
  level), "separation" (median over digits), "glyph_px"}.

  exact / noisy are the shares of digits read right (above); glyph_px is
  the mean (width, height) of the 3x5 glyph after the resize, in pixels.
  Examples are `split` 0..num_examples-1.
  """
  scenes = [shapes_detail.scene_of(split, i, seed) for i in range(num_examples)]
  rows = []
  for side in sides:
    rng = np.random.default_rng(0)
    reads = [r for s in scenes
             for r in read_digits(s, side, noises, rng, mode)]
    glyph = np.mean([_glyph_size(s, side, mode) for s in scenes], axis=0)
    rows.append({
        "side": side, "objects": len(reads),
        "exact": float(np.mean([r["digit"] == r["exact"] for r in reads])),
        "noisy": [float(np.mean([r["noisy"][k] for r in reads]))
                  for k in range(len(noises))],
        "separation": float(np.median([r["separation"] for r in reads])),
        "glyph_px": (float(glyph[0]), float(glyph[1]))})
  return rows


def table(rows: Sequence[dict], noises: Sequence[float]) -> str:
  """The rows as a markdown table."""
  head = " | ".join(f"reader + noise {n:g}" for n in noises)
  lines = [f"| input side | glyph w x h (px) | rival gap (grey levels) | "
           f"exact reader | {head} | digits |",
           "|---|---|---|---|" + "---|" * len(noises) + "---|"]
  for r in rows:
    side = "native" if r["side"] is None else f"{r['side']}x{r['side']}"
    w, h = r["glyph_px"]
    noisy = " | ".join(f"{v:.3f}" for v in r["noisy"])
    lines.append(f"| {side} | {w:.1f} x {h:.1f} | {r['separation']:.0f} | "
                 f"{r['exact']:.3f} | {noisy} | {r['objects']} |")
  return "\n".join(lines)


def _sides(text: str) -> list[int | None]:
  out = []
  for part in text.split(","):
    if part.strip() == "native":
      out.append(None)
    elif part.strip().isdigit() and int(part) >= 8:
      out.append(int(part))
    else:
      raise ValueError(f"--sides={text!r}: give comma-separated sides >= 8 "
                       "or 'native', e.g. --sides=32,64,native")
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sides", default=",".join(map(str, DEFAULT_SIDES)) +
                      ",native")
  parser.add_argument("--examples", type=int, default=100)
  parser.add_argument("--noise", default=",".join(
      f"{n:g}" for n in DEFAULT_NOISES), help="comma-separated grey levels")
  parser.add_argument("--resize", default="square",
                      choices=images.RESIZE_MODES)
  args = parser.parse_args(argv)
  try:
    sides = _sides(args.sides)
    noises = [float(n) for n in args.noise.split(",")]
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.examples < 1 or min(noises) < 0:
    print("error: --examples must be >= 1 and every --noise >= 0",
          file=sys.stderr)
    return 2
  rows = legibility(sides, args.examples, noises, mode=args.resize)
  print(table(rows, noises))
  return 0


if __name__ == "__main__":
  sys.exit(main())
