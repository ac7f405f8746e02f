"""MME (Fu et al. 2023): 14 subtasks (10 perception, 4 cognition), two
yes/no questions about each image, one right answer "yes" and one "no".

Layout (MME_Benchmark_release_version as the authors ship it; a subtask
folder takes either form):

  DIR/<subtask>/images/<name>.png|.jpg + DIR/<subtask>/questions_answers_YN/<name>.txt
  DIR/<subtask>/<name>.png|.jpg        + DIR/<subtask>/<name>.txt
      each .txt: one question a line, "<question>\\t<Yes|No>"

Subtasks are the folders named as in PERCEPTION and COGNITION (others are
ignored). Prompt: the question as written (it ends with "Please answer yes
or no."). Parsing (MME's calculation.py): lower case; "yes" or "no" as is,
else "yes" / "no" if within the first four characters, else "other"
(wrong). Metrics per subtask: acc (% of questions right), acc_plus (% of
images with both right), score = acc + acc_plus (at most 200); totals: the
sum of the scores of the perception (at most 2000) and of the cognition
(at most 800) subtasks present.
"""
from __future__ import annotations

import collections
import os
from typing import Any, Sequence

import numpy as np

from mmjax.evals.benchmarks import registry
from mmjax.evals.benchmarks.pope import YES_OR_NO
from mmjax.evals.benchmarks.question import (BenchmarkDataError, Question,
                                             require_dir, with_instruction)

PERCEPTION = ("existence", "count", "position", "color", "posters",
              "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation",
             "text_translation", "code_reasoning")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
LAYOUT = ("DIR/<subtask>/images/<name>.png|jpg with DIR/<subtask>/"
          "questions_answers_YN/<name>.txt (or both flat in DIR/<subtask>/), "
          "each .txt holding lines '<question>\\t<Yes|No>'; subtasks: "
          + ", ".join(PERCEPTION + COGNITION))


def parse_yes_no(text: str) -> str:
  """'yes', 'no' or 'other', as MME's calculation.py reads an answer."""
  text = text.lower()
  if text in ("yes", "no"):
    return text
  prefix = text[:4]
  return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def _folders(data_dir: str, subtask: str) -> tuple[str, str]:
  """(image folder, question folder) of a subtask, whichever form it has."""
  root = os.path.join(data_dir, subtask)
  split_form = (os.path.join(root, "images"),
                os.path.join(root, "questions_answers_YN"))
  if os.path.isdir(split_form[1]):
    return split_form
  return root, root


def _image(folder: str, name: str, txt: str) -> str:
  for ext in IMAGE_EXTENSIONS:
    path = os.path.join(folder, name + ext)
    if os.path.isfile(path):
      return path
  raise BenchmarkDataError(f"{txt} has no image {name}.png or {name}.jpg in "
                           f"{folder}; expected {LAYOUT}")


def _subtask_questions(data_dir: str, subtask: str) -> list[Question]:
  image_dir, qa_dir = _folders(data_dir, subtask)
  out = []
  for txt in sorted(f for f in os.listdir(qa_dir) if f.endswith(".txt")):
    name = txt[:-len(".txt")]
    path = os.path.join(qa_dir, txt)
    with open(path, encoding="utf-8") as f:
      lines = [l.rstrip("\r\n") for l in f if l.strip()]
    image = _image(image_dir, name, path)
    for k, line in enumerate(lines):
      question, sep, answer = line.rpartition("\t")
      answer = answer.strip().lower()
      if not sep or answer not in ("yes", "no"):
        raise BenchmarkDataError(
            f"{path} line {k + 1} is not '<question>\\t<Yes|No>': {line!r}")
      out.append(Question(
          f"{subtask}/{name}/{k}", with_instruction(question, YES_OR_NO),
          image, {"group": f"{subtask}/{name}", "subtask": subtask,
                  "answer": answer}))
  return out


def read_mme(data_dir: str, split: str) -> list[Question]:
  """Every question of every subtask folder present (module docstring)."""
  del split
  require_dir(data_dir, LAYOUT)
  present = [s for s in PERCEPTION + COGNITION
             if os.path.isdir(os.path.join(data_dir, s))]
  if not present:
    raise BenchmarkDataError(f"{data_dir} holds no MME subtask folder; "
                             f"expected {LAYOUT}")
  out = []
  for subtask in present:
    out += _subtask_questions(data_dir, subtask)
  return out


def score_mme(questions: Sequence[Question], predictions: Sequence[str]
              ) -> dict[str, Any]:
  """Per subtask acc / acc_plus / score, perception and cognition totals."""
  right_by_image: dict[str, list[bool]] = collections.defaultdict(list)
  subtask_of = {}
  for q, p in zip(questions, predictions, strict=True):
    right_by_image[q.truth["group"]].append(parse_yes_no(p) ==
                                            q.truth["answer"])
    subtask_of[q.truth["group"]] = q.truth["subtask"]
  out: dict[str, Any] = {"perception": 0.0, "cognition": 0.0,
                         "count": len(questions)}
  for subtask in PERCEPTION + COGNITION:
    images = [v for g, v in right_by_image.items()
              if subtask_of[g] == subtask]
    if not images:
      continue
    acc = 100.0 * float(np.mean([ok for v in images for ok in v]))
    acc_plus = 100.0 * float(np.mean([all(v) for v in images]))
    out[f"{subtask}/acc"] = acc
    out[f"{subtask}/acc_plus"] = acc_plus
    out[f"{subtask}/score"] = acc + acc_plus
    out["perception" if subtask in PERCEPTION else "cognition"] += (
        acc + acc_plus)
  return out


registry.register(registry.Benchmark(
    "mme", splits=("test",), layout=LAYOUT, read=read_mme, score=score_mme,
    headline="perception", max_new_tokens=8))
