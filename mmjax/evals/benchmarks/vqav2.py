"""VQAv2 (Goyal et al. 2017): open-ended questions on COCO images, ten human
answers each, scored by the official soft accuracy.

Layout (the official download, unzipped into one directory):

  DIR/v2_OpenEnded_mscoco_val2014_questions.json
      {"questions": [{"question_id", "image_id", "question"}, ...]}
  DIR/v2_mscoco_val2014_annotations.json
      {"annotations": [{"question_id", "answer_type", "answers":
                        [{"answer", "answer_confidence", "answer_id"} x 10]}]}
  DIR/val2014/COCO_val2014_<image_id as 12 digits>.jpg

Metric: `soft_accuracy` of the normalised prediction (normalize.py),
averaged over questions: overall and per answer type (yes/no, number,
other), x 100 as the papers report it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mmjax.evals.benchmarks import registry
from mmjax.evals.benchmarks.normalize import normalize_answer
from mmjax.evals.benchmarks.question import (BenchmarkDataError, Question,
                                             read_json, require_fields,
                                             with_instruction)

SHORT_ANSWER = "Answer the question using a single word or phrase."
QUESTIONS = "v2_OpenEnded_mscoco_val2014_questions.json"
ANNOTATIONS = "v2_mscoco_val2014_annotations.json"
LAYOUT = (f"DIR/{QUESTIONS} ({{'questions': [{{question_id, image_id, "
          f"question}}]}}), DIR/{ANNOTATIONS} ({{'annotations': "
          "[{question_id, answer_type, answers: [{answer} x 10]}]}), "
          "DIR/val2014/COCO_val2014_<image_id:012d>.jpg")


def soft_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
  """The official VQA accuracy of one prediction against the human answers
  (ten in VQAv2 and TextVQA).

  For each human answer left out in turn, the prediction scores
  min(#other humans who gave it / 3, 1); the score is the mean over the
  leave-one-out subsets (so with ten answers: 3 matching humans -> 0.9,
  4 or more -> 1.0). Both sides are normalised (normalize.py).
  """
  if not human_answers:
    raise ValueError("soft_accuracy needs at least one human answer")
  pred = normalize_answer(prediction)
  matches = [normalize_answer(a) == pred for a in human_answers]
  total = sum(matches)
  return float(np.mean([min((total - m) / 3.0, 1.0) for m in matches]))


def soft_accuracy_metrics(questions: Sequence[Question],
                          predictions: Sequence[str],
                          group_key: str | None = None) -> dict[str, Any]:
  """{"accuracy": 100 x mean soft accuracy, "count", and per value of
  truth[group_key] "accuracy/<value>", "count/<value>"}."""
  scores = [soft_accuracy(p, q.truth["answers"])
            for q, p in zip(questions, predictions, strict=True)]
  out: dict[str, Any] = {"accuracy": 100.0 * float(np.mean(scores))
                         if scores else 0.0, "count": len(scores)}
  if group_key:
    groups = sorted({str(q.truth[group_key]) for q in questions})
    for g in groups:
      mine = [s for s, q in zip(scores, questions)
              if str(q.truth[group_key]) == g]
      out[f"accuracy/{g}"] = 100.0 * float(np.mean(mine))
      out[f"count/{g}"] = len(mine)
  return out


def read_vqav2(data_dir: str, split: str) -> list[Question]:
  """The val2014 questions with their ten answers (module docstring)."""
  del split  # only val2014 has public answers
  questions = read_json(f"{data_dir}/{QUESTIONS}", LAYOUT)
  annotations = read_json(f"{data_dir}/{ANNOTATIONS}", LAYOUT)
  require_fields(questions, ["questions"], QUESTIONS)
  require_fields(annotations, ["annotations"], ANNOTATIONS)
  by_id = {}
  for a in annotations["annotations"]:
    require_fields(a, ["question_id", "answers"],
                   f"an annotation of {ANNOTATIONS}")
    answers = [x.get("answer") if isinstance(x, dict) else x
               for x in a["answers"]]
    if not answers or not all(isinstance(x, str) for x in answers):
      raise BenchmarkDataError(
          f"annotation of question {a['question_id']} in {ANNOTATIONS} has "
          "no answers; each needs answers: [{answer: str} x 10]")
    by_id[a["question_id"]] = (answers, a.get("answer_type", "other"))
  out = []
  for q in questions["questions"]:
    require_fields(q, ["question_id", "image_id", "question"],
                   f"a question of {QUESTIONS}")
    if q["question_id"] not in by_id:
      raise BenchmarkDataError(
          f"question {q['question_id']} of {QUESTIONS} has no annotation in "
          f"{ANNOTATIONS}; expected {LAYOUT}")
    answers, answer_type = by_id[q["question_id"]]
    image = f"{data_dir}/val2014/COCO_val2014_{int(q['image_id']):012d}.jpg"
    out.append(Question(str(q["question_id"]),
                        with_instruction(q["question"], SHORT_ANSWER), image,
                        {"answers": answers, "answer_type": answer_type}))
  return out


def score_vqav2(questions: Sequence[Question], predictions: Sequence[str]
                ) -> dict[str, Any]:
  return soft_accuracy_metrics(questions, predictions, "answer_type")


registry.register(registry.Benchmark(
    "vqav2", splits=("val",), layout=LAYOUT, read=read_vqav2,
    score=score_vqav2, headline="accuracy"))
