"""TextVQA (Singh et al. 2019): questions that need reading the text in an
image; ten human answers each, scored with VQAv2's soft accuracy.

Layout (the official v0.5.1 download):

  DIR/TextVQA_0.5.1_val.json
      {"data": [{"question_id", "image_id", "question", "answers": [x 10]}]}
  DIR/train_images/<image_id>.jpg   (the val images ship in train_images/)

Prompt: the question and "Answer the question using a single word or
phrase." (no OCR tokens: the layout has none). Metric: soft accuracy x 100.
"""
from __future__ import annotations

from typing import Any, Sequence

from mmjax.evals.benchmarks import registry
from mmjax.evals.benchmarks.question import (BenchmarkDataError, Question,
                                             read_json, require_fields,
                                             with_instruction)
from mmjax.evals.benchmarks.vqav2 import SHORT_ANSWER, soft_accuracy_metrics

ANNOTATIONS = "TextVQA_0.5.1_val.json"
LAYOUT = (f"DIR/{ANNOTATIONS} ({{'data': [{{question_id, image_id, question, "
          "answers: [str x 10]}]}) and DIR/train_images/<image_id>.jpg")


def read_textvqa(data_dir: str, split: str) -> list[Question]:
  """The val questions (module docstring)."""
  del split
  data = read_json(f"{data_dir}/{ANNOTATIONS}", LAYOUT)
  require_fields(data, ["data"], ANNOTATIONS)
  out = []
  for r in data["data"]:
    require_fields(r, ["question_id", "image_id", "question", "answers"],
                   f"a record of {ANNOTATIONS}")
    if not r["answers"] or not all(isinstance(a, str) for a in r["answers"]):
      raise BenchmarkDataError(
          f"question {r['question_id']} of {ANNOTATIONS} has no answers; each "
          "record needs answers: [str x 10]")
    out.append(Question(
        str(r["question_id"]), with_instruction(r["question"], SHORT_ANSWER),
        f"{data_dir}/train_images/{r['image_id']}.jpg",
        {"answers": list(r["answers"])}))
  return out


def score_textvqa(questions: Sequence[Question], predictions: Sequence[str]
                  ) -> dict[str, Any]:
  return soft_accuracy_metrics(questions, predictions)


registry.register(registry.Benchmark(
    "textvqa", splits=("val",), layout=LAYOUT, read=read_textvqa,
    score=score_textvqa, headline="accuracy"))
