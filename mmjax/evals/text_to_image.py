"""Does a text-to-image run draw what its captions ask? Judged by the
independent checker (evals/shape_checker.py), never by the model.

  metrics, markdown = evaluate_text_to_image("runs/t2i", "test", n=200)
  python -m mmjax.evaluate --workdir=runs/t2i --split=test --max_examples=200

Prompts are the short captions ("two red circles and a blue square.") of
the split's first n records: `test` pairs colours and shapes as training
did (held-in prompts, unseen pictures), `heldout` names the colour x shape
pairs training never showed. One picture per caption (seed, guidance,
sampling as given); per picture the checker's agreements
(`shape_checker.agreement`: pairs, colours, shapes, counts; and
colours_and_shapes: both the asked colours and the asked shapes, what
issue 27's target counts), averaged with their standard errors. Beside them, the same checker on the records' own
renders and on the tokenizer's reconstructions of them: the checker's
accuracy, and the best a generator could score through this tokenizer;
for a run that plans a layout first (models/scene_layout.py), its plans
too (`layouts/...`: the objects it meant to draw, against the caption).
A grid of the first pictures (caption, render, generated) is written to
WORKDIR/eval/t2i_<split>.png.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from mmjax.data import builders, datasets, shapes
from mmjax.data import images as images_lib
from mmjax.decoding.sampling import Sampling
from mmjax.evals import shape_checker
from mmjax.inference import text_to_image as t2i_lib
from mmjax.models import build

KEYS = ("colours_and_shapes", "pairs", "colours", "shapes", "counts")
GRID_PICTURES = 16


def _rate(values) -> tuple[float, float]:
  """(mean, standard error) of 0/1 values."""
  n = len(values)
  p = float(np.mean(values)) if n else 0.0
  return p, math.sqrt(p * (1 - p) / n) if n else 0.0


def _scores(asked, found) -> dict[str, list[bool]]:
  """Per picture, the agreements of what was asked and what was found
  ((colour, shape) per object)."""
  out = {k: [] for k in KEYS}
  for want, objects in zip(asked, found):
    a = shape_checker.agreement(want, objects)
    a["colours_and_shapes"] = a["colours"] and a["shapes"]
    for k, v in a.items():
      out[k].append(v)
  return out


def evaluate_text_to_image(workdir: str, split: str = "test", *,
                           n: int = 200, batch_size: int = 50,
                           guidance: float | None = None,
                           sampling: Sampling | None = None,
                           layout_sampling: t2i_lib.LayoutSampling | None
                           = None,
                           seed: int = 0, checker_images: int = 1500
                           ) -> tuple[dict[str, Any], str]:
  """Generates one picture per caption of the split's first n records and
  scores them (module doc); writes WORKDIR/eval/t2i_<split>.{json,md,png}.
  guidance / sampling / layout_sampling None: the run's own
  (config.drawing, `text_to_image.drawing_settings`)."""
  run = t2i_lib.load_text_to_image(workdir)
  guidance, sampling, layout_sampling = run.settings(guidance, sampling,
                                                     layout_sampling)
  source = builders.load_source(datasets.shapes_dataset(run.config), split)
  n = min(n or len(source), len(source))
  records = [source[i] for i in range(n)]
  captions = [str(r["captions"][0]) for r in records]
  asked = [shapes.parse_caption(c) for c in captions]
  checker = shape_checker.ShapeChecker.fit_on_renders(checker_images)
  drawn, recon, plans = [], [], []
  kind = images_lib.normalization_kind(build.mllm_config(run.config))
  for lo in range(0, n, batch_size):
    part = captions[lo:lo + batch_size]
    images, layouts = run.draw(part, seed=seed + lo, guidance=guidance,
                               sampling=sampling,
                               layout_sampling=layout_sampling,
                               with_layout=True)
    drawn.append(images)
    plans += [[(c, s) for c, s, _ in layout] for layout in layouts]
    pixels = np.stack([images_lib.preprocess(r["image"], run.model.side,
                                             kind=kind)
                       for r in records[lo:lo + batch_size]])
    codes = run.model.encode_codes(run.vq, pixels)
    recon.append(images_lib.to_uint8(run.model.decode_codes(run.vq, codes)))
  drawn, recon = np.concatenate(drawn), np.concatenate(recon)
  renders = [np.asarray(r["image"]) for r in records]
  metrics: dict[str, Any] = {"split": split, "pictures": n,
                             "guidance": guidance,
                             "temperature": sampling.temperature,
                             "top_k": sampling.top_k, "top_p": sampling.top_p,
                             "seed": seed}
  if run.model.layout_objects:
    metrics.update(plan_temperature=layout_sampling.what.temperature,
                   place_temperature=layout_sampling.where.temperature,
                   apart=layout_sampling.apart)
  found = {name: [checker.objects(im) for im in images]
           for name, images in (("generated", drawn), ("renders", renders),
                                ("reconstructions", recon))}
  if run.model.layout_objects:  # what the model planned, before drawing
    found["layouts"] = plans
  for name, objects in found.items():
    for k, v in _scores(asked, objects).items():
      mean, se = _rate(v)
      metrics[f"{name}/{k}"], metrics[f"{name}/{k}_se"] = mean, se
  out = os.path.join(workdir, "eval")
  os.makedirs(out, exist_ok=True)
  grid = write_grid(os.path.join(out, f"t2i_{split}.png"),
                    renders[:GRID_PICTURES], drawn[:GRID_PICTURES])
  metrics["grid"] = grid
  markdown = _markdown(metrics, captions[:GRID_PICTURES])
  with open(os.path.join(out, f"t2i_{split}.json"), "w",
            encoding="utf-8") as f:
    json.dump(metrics, f, indent=2)
  with open(os.path.join(out, f"t2i_{split}.md"), "w", encoding="utf-8") as f:
    f.write(markdown)
  return metrics, markdown


def write_grid(path: str, renders, drawn, scale: int = 2) -> str:
  """PNG: each caption's render (top row of a pair) above the generated
  picture (bottom), 8 pairs a row."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  side = drawn[0].shape[0]
  cols = min(8, len(drawn))
  rows = math.ceil(len(drawn) / cols)
  canvas = np.full((rows * (2 * side + 4), cols * (side + 2), 3), 255,
                   np.uint8)
  for i, (a, b) in enumerate(zip(renders, drawn)):
    r, c = divmod(i, cols)
    y, x = r * (2 * side + 4), c * (side + 2)
    canvas[y:y + side, x:x + side] = np.asarray(
        a if a.shape[0] == side else Image.fromarray(a).resize((side, side)))
    canvas[y + side:y + 2 * side, x:x + side] = b
  Image.fromarray(canvas).resize(
      (canvas.shape[1] * scale, canvas.shape[0] * scale),
      Image.NEAREST).save(path)
  return path


def _markdown(m: dict[str, Any], captions) -> str:
  lines = [f"# Text to image: {m['split']} captions ({m['pictures']} "
           f"pictures, guidance {m['guidance']}, temperature "
           f"{m['temperature']})", "",
           "| pictures | colours and shapes | pairs | colours | shapes | "
           "counts |", "|---|---|---|---|---|---|"]
  for name in ("generated", "layouts", "renders", "reconstructions"):
    if f"{name}/pairs" not in m:
      continue
    cells = " | ".join(f"{m[f'{name}/{k}']:.3f} +- {m[f'{name}/{k}_se']:.3f}"
                       for k in KEYS)
    lines.append(f"| {name} | {cells} |")
  lines += ["", f"Grid ({m['grid']}), renders above what was drawn:", ""]
  lines += [f"{i + 1}. {c}" for i, c in enumerate(captions)]
  return "\n".join(lines) + "\n"
