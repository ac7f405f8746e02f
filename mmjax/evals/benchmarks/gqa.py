"""GQA (Hudson & Manning 2019): compositional questions on Visual Genome
images, one answer each, scored by exact match.

Layout (the official balanced question files and the image zip):

  DIR/testdev_balanced_questions.json   (or val_balanced_questions.json)
      {"<question id>": {"imageId", "question", "answer",
                         "types": {"structural", ...}}, ...}
  DIR/images/<imageId>.jpg

Prompt: the question and "Answer the question using a single word or
phrase." Metric: accuracy (x 100) of the normalised prediction equal to the
normalised answer (normalize.py on both sides: case, punctuation, number
words, articles), overall and per structural type (verify, query, choose,
logical, compare).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mmjax.evals.benchmarks import registry
from mmjax.evals.benchmarks.normalize import normalize_answer
from mmjax.evals.benchmarks.question import (BenchmarkDataError, Question,
                                             read_json, require_fields,
                                             with_instruction)
from mmjax.evals.benchmarks.vqav2 import SHORT_ANSWER

SPLITS = ("testdev", "val")
LAYOUT = ("DIR/<split>_balanced_questions.json ({qid: {imageId, question, "
          "answer, types: {structural}}}) and DIR/images/<imageId>.jpg; "
          "split testdev or val")


def read_gqa(data_dir: str, split: str) -> list[Question]:
  """The balanced questions of a split (module docstring)."""
  name = f"{split}_balanced_questions.json"
  data = read_json(f"{data_dir}/{name}", LAYOUT)
  if not isinstance(data, dict):
    raise BenchmarkDataError(f"{name} is no object keyed by question id; "
                             f"expected {LAYOUT}")
  out = []
  for qid, r in data.items():
    require_fields(r, ["imageId", "question", "answer"],
                   f"question {qid} of {name}")
    structural = (r.get("types") or {}).get("structural", "other")
    out.append(Question(str(qid), with_instruction(r["question"], SHORT_ANSWER),
                        f"{data_dir}/images/{r['imageId']}.jpg",
                        {"answer": str(r["answer"]),
                         "structural": structural}))
  return out


def exact_match(prediction: str, answer: str) -> bool:
  """GQA's match: equal after normalize_answer on both sides."""
  return normalize_answer(prediction) == normalize_answer(answer)


def score_gqa(questions: Sequence[Question], predictions: Sequence[str]
              ) -> dict[str, Any]:
  """{"accuracy", "count", "accuracy/<structural type>", "count/<...>"}."""
  hits = [exact_match(p, q.truth["answer"])
          for q, p in zip(questions, predictions, strict=True)]
  out: dict[str, Any] = {"accuracy": 100.0 * float(np.mean(hits))
                         if hits else 0.0, "count": len(hits)}
  for kind in sorted({q.truth["structural"] for q in questions}):
    mine = [h for h, q in zip(hits, questions)
            if q.truth["structural"] == kind]
    out[f"accuracy/{kind}"] = 100.0 * float(np.mean(mine))
    out[f"count/{kind}"] = len(mine)
  return out


registry.register(registry.Benchmark(
    "gqa", splits=SPLITS, layout=LAYOUT, read=read_gqa, score=score_gqa,
    headline="accuracy"))
