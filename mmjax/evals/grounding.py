"""Grounding on the shapes benchmark (evaluator `grounding`): referring
questions answered by a box, scored by IoU (RefCOCO's accuracy at 0.5).

  metrics = evaluate_shapes_grounding(model, params, cfg, tok, source)
  metrics["grounding/acc@0.5"], metrics["grounding/miou"]

One question per image (`data.grounding.grounding_qa` with k=1: an object
whose colour and shape pair is unique, picked by the record id), asked as
training asks it (user `<image>\\nwhere is the red circle?`) and answered
greedily with the same batched KV-cache decode as `vqa`
(`vqa.greedy_answers`). An answer that does not parse as a box
(`grounding.parse_box`) scores IoU 0.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from mmjax.data import grounding
from mmjax.data.tokenizer import Tokenizer
from mmjax.decoding.fastv import FastVConfig
from mmjax.evals import registry, vqa
from mmjax.inference import prompts as prompts_lib
from mmjax.models.mllm import MLLM, MLLMConfig

THRESHOLD = 0.5  # IoU at which a box counts as found (RefCOCO).
SPLITS = vqa.SPLITS  # what the `grounding` evaluator after a stage scores


def grounding_metrics(predictions: Sequence[str],
                      boxes: Sequence[Sequence[int]],
                      threshold: float = THRESHOLD,
                      image_boxes: Sequence[Sequence[Sequence[int]]] | None
                      = None) -> dict[str, float | int]:
  """Scores answer texts against gold boxes (both in 0..1000).

  Args:
    image_boxes: optional, per question every object's box in its image
      (the named one among them): adds "any_object@0.5".

  Returns:
    {"acc@0.5": share with IoU >= threshold, "se@0.5": its binomial
    standard error (`vqa.standard_error`), "miou": mean IoU (unparsed
    answers count 0), "parsed": share of answers that are a box, "count"}
    (the "0.5" in the names is the threshold's); with image_boxes also
    "any_object@0.5": the share whose box is on *some* object of the image
    (IoU >= threshold with any): far above acc, the model finds objects but
    not the one named; near it, it does not put boxes on objects at all.
  """
  if len(predictions) != len(boxes):
    raise ValueError(f"{len(predictions)} predictions for {len(boxes)} boxes")
  parsed = [grounding.parse_box(p) for p in predictions]
  ious = np.asarray([0.0 if p is None else grounding.iou(p, b)
                     for p, b in zip(parsed, boxes)], np.float64)
  n = len(ious)
  acc = float(np.mean(ious >= threshold)) if n else 0.0
  out = {f"acc@{threshold:g}": acc,
         f"se@{threshold:g}": vqa.standard_error(acc, n),
         "miou": float(ious.mean()) if n else 0.0,
         "parsed": float(np.mean([p is not None for p in parsed]))
                   if n else 0.0,
         "count": n}
  if image_boxes is not None:
    if len(image_boxes) != n:
      raise ValueError(f"{len(image_boxes)} images' boxes for {n} answers")
    on_any = [p is not None and any(grounding.iou(p, b) >= threshold
                                    for b in others)
              for p, others in zip(parsed, image_boxes)]
    out[f"any_object@{threshold:g}"] = float(np.mean(on_any)) if n else 0.0
  return out


# Where a box answer lands (`where_box_lands`), in the order reports list.
LANDINGS = ("named object", "same colour, other shape",
            "same shape, other colour", "neither colour nor shape",
            "on no object", "no box")


def where_box_lands(answer: str, colour: str, shape: str,
                    objects: Sequence[tuple[str, str, Sequence[int]]],
                    threshold: float = THRESHOLD) -> str:
  """Which of LANDINGS one box answer about the named colour and shape is,
  by the object of the image's (colour, shape, box) objects it covers best
  (IoU >= threshold; `experiments/grounding_errors.py`)."""
  box = grounding.parse_box(answer)
  if box is None:
    return "no box"
  best = max(objects, key=lambda o: grounding.iou(box, o[2]))
  if grounding.iou(box, best[2]) < threshold:
    return "on no object"
  return {(True, True): "named object",
          (True, False): "same colour, other shape",
          (False, True): "same shape, other colour",
          (False, False): "neither colour nor shape"}[
              best[0] == colour, best[1] == shape]


def question_sensitivity(
    asked: Sequence[Sequence[tuple[str, Sequence[int]]]],
    threshold: float = THRESHOLD) -> dict[str, float]:
  """Whether a model's boxes follow the question: each image asked about
  every object it can be asked about (`experiments/grounding_errors.py`).

  Args:
    asked: per image, (answer text, the named object's box) for each
      object asked about; images with fewer than two are skipped.

  Returns:
    images, answers; identical: the share of images whose answers are all
    the same text; answer_iou: the mean IoU between the boxes answered
    for two different objects of one image (1.0: the same box whatever is
    asked; an answer that is no box counts as IoU 0 with everything);
    gold_iou: the same mean over the named objects' own boxes (what a
    model that finds every object scores); acc@<threshold>.
  """
  images = [a for a in asked if len(a) >= 2]
  answered, gold, identical = [], [], 0
  for answers in images:
    boxes = [grounding.parse_box(text) for text, _ in answers]
    identical += len({text.strip() for text, _ in answers}) == 1
    for i in range(len(answers)):
      for j in range(i + 1, len(answers)):
        answered.append(0.0 if boxes[i] is None or boxes[j] is None
                        else grounding.iou(boxes[i], boxes[j]))
        gold.append(grounding.iou(answers[i][1], answers[j][1]))
  flat = [x for answers in images for x in answers]
  scored = grounding_metrics([t for t, _ in flat], [b for _, b in flat],
                             threshold)
  n = len(images)
  return {"images": n, "answers": len(flat),
          "identical": identical / n if n else 0.0,
          "answer_iou": float(np.mean(answered)) if answered else 0.0,
          "gold_iou": float(np.mean(gold)) if gold else 0.0,
          f"acc@{threshold:g}": scored[f"acc@{threshold:g}"]}


def grounding_examples(source: Sequence[Mapping[str, Any]],
                       max_examples: int | None
                       ) -> list[tuple[Mapping[str, Any], str, str, tuple]]:
  """(record, question, answer, box) of the first `max_examples` records
  (in source order) with an object that can be asked about, one each."""
  out = []
  for index in range(len(source)):
    if max_examples is not None and len(out) >= max_examples:
      break
    record = source[index]
    for question, answer, box in grounding.record_grounding_qa(record, 1):
      out.append((record, question, answer, box))
  return out


def answer_tokens(tokenizer: Tokenizer) -> int:
  """New tokens the longest box answer needs, with the end of turn."""
  return len(tokenizer.encode(grounding.format_box((grounding.SCALE,) * 4))
             ) + 1


def evaluate_shapes_grounding(model: MLLM, params: Any, cfg: MLLMConfig,
                              tokenizer: Tokenizer,
                              source: Sequence[Mapping[str, Any]], *,
                              max_examples: int | None = None,
                              batch_size: int = 8,
                              max_new_tokens: int | None = None,
                              resize: str = "square", num_samples: int = 4,
                              fastv: FastVConfig | None = None
                              ) -> dict[str, Any]:
  """Greedy boxes for one referring question per shapes record, scored.

  Args:
    max_new_tokens: None = what the longest box needs (`answer_tokens`).

  Returns:
    `grounding_metrics` keys prefixed "grounding/", and
    "grounding/samples": the first `num_samples` {question, answer,
    prediction, iou}.
  """
  examples = grounding_examples(source, max_examples)
  pixels = [vqa.record_pixels(cfg, r, resize) for r, *_ in examples]
  prompts = [prompts_lib.prompt_pieces(
      cfg, tokenizer, [{"role": "user",
                        "content": prompts_lib.user_turn(q, 1)}])
             for _, q, _, _ in examples]
  prompts, pixels = vqa.fit_prompts(prompts, pixels)
  preds = vqa.greedy_answers(
      model, params, tokenizer, prompts, pixels, batch_size=batch_size,
      max_new_tokens=max_new_tokens or answer_tokens(tokenizer),
      fastv=fastv) if examples else []
  boxes = [box for *_, box in examples]
  image_boxes = [[box for *_, box in grounding.record_boxes(r)]
                 for r, *_ in examples]
  metrics: dict[str, Any] = {
      f"grounding/{k}": v for k, v in grounding_metrics(
          preds, boxes, image_boxes=image_boxes).items()}
  samples = []
  for (_, q, a, box), p in list(zip(examples, preds))[:num_samples]:
    found = grounding.parse_box(p)
    samples.append({"question": q, "answer": a, "prediction": p,
                    "iou": 0.0 if found is None else grounding.iou(found,
                                                                   box)})
  metrics["grounding/samples"] = samples
  return metrics


def grounding_evaluator(ctx: registry.EvalContext) -> dict[str, Any]:
  """`grounding` after a stage: config.eval.max_examples questions (one per
  image) of the test and held-out splits, keys prefixed with the split."""
  return vqa.over_splits(ctx, evaluate_shapes_grounding)


registry.register("grounding", grounding_evaluator)
