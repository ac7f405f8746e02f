"""POPE (Li et al. 2023): "Is there a <object> in the image?" about COCO
val2014 images, half the objects absent, sampled three ways (random,
popular, adversarial); measures object hallucination.

Layout (the files of AoiDragon/POPE output/coco/, JSON lines):

  DIR/coco_pope_random.json, coco_pope_popular.json,
  DIR/coco_pope_adversarial.json
      one object a line: {"question_id", "image", "text", "label": yes|no}
  DIR/val2014/<image>     (COCO_val2014_*.jpg, as the lines name them)

The question files may also sit in DIR/coco/ (LLaVA's eval layout:
playground/data/eval/pope/{coco/,val2014/}).

Split `all` (the default) reads the three files. Prompt: the question and
"Please answer yes or no." Parsing (`parse_yes_no`, as POPE's evaluate.py):
the first sentence is kept, commas dropped; a word "no", "No" or "not"
makes it "no", anything else "yes". Metrics per split (percentages, as the
papers' tables give them; "yes" is the positive class): accuracy,
precision, recall, F1, yes_ratio (the share of "yes" answers), count; and
their mean over the splits present.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from mmjax.evals.benchmarks import registry
from mmjax.evals.benchmarks.question import (BenchmarkDataError, Question,
                                             read_json_lines, require_fields,
                                             with_instruction)

YES_OR_NO = "Please answer yes or no."
SAMPLINGS = ("random", "popular", "adversarial")
LAYOUT = ("DIR/coco_pope_{random,popular,adversarial}.json (or in DIR/coco/; "
          "JSON lines {question_id, image, text, label: yes|no}) and "
          "DIR/val2014/<image>")


def parse_yes_no(text: str) -> str:
  """'yes' or 'no' as POPE's evaluate.py reads an answer (module doc)."""
  first = text.split(".")[0].replace(",", "")
  words = first.split(" ")
  return "no" if {"no", "No", "not"} & set(words) else "yes"


def yes_no_metrics(predicted: Sequence[str], labels: Sequence[str]
                   ) -> dict[str, float | int]:
  """POPE's numbers (x 100) for parsed answers vs 'yes'/'no' labels ('yes'
  is positive); precision / recall / F1 are 0 where undefined."""
  pred = np.array([p == "yes" for p in predicted])
  gold = np.array([g == "yes" for g in labels])
  tp = int(np.sum(pred & gold))
  fp = int(np.sum(pred & ~gold))
  fn = int(np.sum(~pred & gold))
  n = len(pred)
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = (2 * precision * recall / (precision + recall)
        if precision + recall else 0.0)
  fractions = {"accuracy": float(np.mean(pred == gold)) if n else 0.0,
               "precision": precision, "recall": recall, "f1": f1,
               "yes_ratio": float(np.mean(pred)) if n else 0.0}
  return {**{k: 100.0 * v for k, v in fractions.items()}, "count": n}


def read_pope(data_dir: str, split: str) -> list[Question]:
  """The questions of one sampling, or of all three (module docstring)."""
  out = []
  for sampling in SAMPLINGS if split == "all" else (split,):
    name = f"coco_pope_{sampling}.json"
    path = f"{data_dir}/{name}"
    if not os.path.exists(path) and os.path.exists(f"{data_dir}/coco/{name}"):
      path = f"{data_dir}/coco/{name}"
    for r in read_json_lines(path, LAYOUT):
      require_fields(r, ["question_id", "image", "text", "label"],
                     f"a line of {name}")
      label = str(r["label"]).strip().lower()
      if label not in ("yes", "no"):
        raise BenchmarkDataError(
            f"question {r['question_id']} of {name} has label {r['label']!r}; "
            "a label is yes or no")
      out.append(Question(f"{sampling}/{r['question_id']}",
                          with_instruction(r["text"], YES_OR_NO),
                          f"{data_dir}/val2014/{r['image']}",
                          {"label": label, "sampling": sampling}))
  return out


def score_pope(questions: Sequence[Question], predictions: Sequence[str]
               ) -> dict[str, Any]:
  """`<sampling>/<metric>` for each sampling present; with more than one,
  also their mean as `<metric>` (module docstring)."""
  parsed = [parse_yes_no(p) for p in predictions]
  out: dict[str, Any] = {}
  per = {}
  for sampling in SAMPLINGS:
    rows = [i for i, q in enumerate(questions)
            if q.truth["sampling"] == sampling]
    if rows:
      per[sampling] = yes_no_metrics([parsed[i] for i in rows],
                                     [questions[i].truth["label"] for i in rows])
  for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
    out[key] = float(np.mean([m[key] for m in per.values()])) if per else 0.0
  out["count"] = len(questions)
  for sampling, m in per.items():
    out.update({f"{sampling}/{k}": v for k, v in m.items()})
  return out


registry.register(registry.Benchmark(
    "pope", splits=("all",) + SAMPLINGS, layout=LAYOUT, read=read_pope,
    score=score_pope, headline="f1", max_new_tokens=8))
