"""Grounded captions on the shapes benchmark (evaluator `grounded_captions`):
asked "describe the image with boxes.", does the model name every object
and put each name's box on an object of that colour and shape?

  metrics = evaluate_grounded_captions(model, params, cfg, tok, source)
  metrics["grounded_captions/recall@0.5"]

A caption is read as its mentions "<colour> <shape> [x0, y0, x1, y1]"
(`grounding.parse_mentions`); each mention is matched to at most one object
of the image with the same colour and shape and IoU >= 0.5 (the best IoU
first), so two mentions cannot claim one object. Greedy answers from the
batched KV-cache decode `vqa` uses (`vqa.greedy_answers`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence


from mmjax.data import grounding
from mmjax.data.text_corpus import COLOURS, SHAPES
from mmjax.data.tokenizer import Tokenizer
from mmjax.evals import registry, vqa
from mmjax.inference import prompts as prompts_lib
from mmjax.models.mllm import MLLM, MLLMConfig

THRESHOLD = 0.5  # IoU at which a mention's box is on its object
MAX_OBJECTS = 6  # the shapes renderer's most objects per image


def match_mentions(mentions: Sequence[tuple[str, str, Sequence[int]]],
                   objects: Sequence[tuple[str, str, Sequence[int]]],
                   threshold: float = THRESHOLD) -> int:
  """How many mentions land on a distinct object of their colour and shape
  (IoU >= threshold), pairs taken greedily by IoU, best first."""
  pairs = []
  for i, (colour, shape, box) in enumerate(mentions):
    for j, (o_colour, o_shape, o_box) in enumerate(objects):
      if (colour, shape) == (o_colour, o_shape):
        overlap = grounding.iou(box, o_box)
        if overlap >= threshold:
          pairs.append((overlap, i, j))
  used_m, used_o = set(), set()
  for _, i, j in sorted(pairs, reverse=True):
    if i not in used_m and j not in used_o:
      used_m.add(i)
      used_o.add(j)
  return len(used_m)


def grounded_caption_metrics(
    predictions: Sequence[str],
    image_objects: Sequence[Sequence[tuple[str, str, Sequence[int]]]],
    threshold: float = THRESHOLD) -> dict[str, float | int]:
  """Scores grounded captions against each image's (colour, shape, box)
  objects (boxes in 0..1000).

  Returns:
    "precision@0.5": matched mentions / mentions; "recall@0.5": matched
    objects / objects, with "se@0.5" its binomial standard error over the
    objects; "exact@0.5": share of images whose every object is matched and
    which have no other mention; "mentions" and "objects": per image;
    "count": images.
  """
  if len(predictions) != len(image_objects):
    raise ValueError(f"{len(predictions)} captions for {len(image_objects)} "
                     "images")
  n_mentions = n_objects = n_matched = n_exact = 0
  for text, objects in zip(predictions, image_objects):
    mentions = grounding.parse_mentions(text)
    matched = match_mentions(mentions, objects, threshold)
    n_mentions += len(mentions)
    n_objects += len(objects)
    n_matched += matched
    n_exact += int(matched == len(objects) == len(mentions))
  n = len(predictions)
  recall = n_matched / n_objects if n_objects else 0.0
  t = f"{threshold:g}"
  return {f"precision@{t}": n_matched / n_mentions if n_mentions else 0.0,
          f"recall@{t}": recall,
          f"se@{t}": vqa.standard_error(recall, n_objects),
          f"exact@{t}": n_exact / n if n else 0.0,
          "mentions": n_mentions / n if n else 0.0,
          "objects": n_objects / n if n else 0.0,
          "count": n}


def answer_tokens(tokenizer: Tokenizer) -> int:
  """New tokens the longest grounded caption needs, with the end of turn:
  MAX_OBJECTS objects of the longest names with 4-digit coordinates."""
  colour = max(COLOURS, key=lambda c: len(tokenizer.encode(c)))
  shape = max(SHAPES, key=lambda s: len(tokenizer.encode(s)))
  objects = [{"colour": colour, "shape": shape, "bbox": (64, 64, 64, 64)}
             ] * MAX_OBJECTS
  return len(tokenizer.encode(grounding.grounded_caption(objects, 64))) + 1


def evaluate_grounded_captions(model: MLLM, params: Any, cfg: MLLMConfig,
                               tokenizer: Tokenizer,
                               source: Sequence[Mapping[str, Any]], *,
                               max_examples: int | None = None,
                               batch_size: int = 8, resize: str = "square",
                               num_samples: int = 4) -> dict[str, Any]:
  """Greedy grounded captions of the first `max_examples` records, scored.

  Returns:
    `grounded_caption_metrics` keys prefixed "grounded_captions/", and
    "grounded_captions/samples": the first `num_samples` {answer,
    prediction, matched}.
  """
  records = [source[i] for i in range(
      len(source) if max_examples is None else min(max_examples,
                                                    len(source)))]
  pixels = [vqa.record_pixels(cfg, r, resize) for r in records]
  prompt = [{"role": "user", "content": prompts_lib.user_turn(
      grounding.GROUNDED_CAPTION_PROMPT, 1)}]
  prompts = [prompts_lib.prompt_pieces(cfg, tokenizer, prompt)
             for _ in records]
  prompts, pixels = vqa.fit_prompts(prompts, pixels)
  preds = vqa.greedy_answers(
      model, params, tokenizer, prompts, pixels, batch_size=batch_size,
      max_new_tokens=answer_tokens(tokenizer)) if records else []
  objects = [grounding.record_boxes(r) for r in records]
  metrics: dict[str, Any] = {
      f"grounded_captions/{k}": v
      for k, v in grounded_caption_metrics(preds, objects).items()}
  metrics["grounded_captions/samples"] = [
      {"answer": grounding.record_grounded_caption(r), "prediction": p,
       "matched": match_mentions(grounding.parse_mentions(p), o)}
      for r, p, o in list(zip(records, preds, objects))[:num_samples]]
  return metrics


def grounded_captions_evaluator(ctx: registry.EvalContext) -> dict[str, Any]:
  """`grounded_captions` after a stage: config.eval.max_examples images of
  the test and held-out splits, keys prefixed with the split."""
  return vqa.over_splits(ctx, evaluate_grounded_captions)


registry.register("grounded_captions", grounded_captions_evaluator)
