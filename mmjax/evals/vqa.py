"""VQA on the shapes benchmark: exact match by question type and POPE-style
yes/no probes (evaluator `vqa`).

  metrics = evaluate_shapes_vqa(model, params, cfg, tok, source)

Answers are generated greedily with the KV cache of `mmjax.inference`
(prefill, then a compiled decode loop); optional FastV pruning.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from mmjax.data import builders, formats
from mmjax.data import images as images_lib
from mmjax.data import native_resolution as native_lib
from mmjax.data.shapes import QTYPES
from mmjax.data.tokenizer import Tokenizer
from mmjax.decoding import decode
from mmjax.decoding.contrastive import Contrast
from mmjax.decoding.fastv import FastVConfig
from mmjax.evals import registry
from mmjax.inference import media as media_lib
from mmjax.inference import prompts as prompts_lib
from mmjax.models.mllm import MLLM, MLLMConfig

Piece = decode.Piece
SPLITS = ("test", "heldout")  # what the `vqa` evaluator after a stage scores


def normalize_answer(text: str) -> str:
  """Lower-case, strip whitespace and a trailing '.'."""
  return text.strip().lower().rstrip(".").strip()


def standard_error(accuracy: float, count: int) -> float:
  """Binomial standard error sqrt(p (1 - p) / n) of an accuracy over n
  questions. Questions about one image are not independent, so the true
  error is somewhat larger: read it as a lower bound."""
  return float(np.sqrt(accuracy * (1.0 - accuracy) / count)) if count else 0.0


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str],
                 qtypes: Sequence[str]) -> dict[str, float | int]:
  """Exact match after `normalize_answer`, overall and per question type.

  Returns:
    {"acc/all", "count/all", "se/all", and "acc/<qtype>", "count/<qtype>",
    "se/<qtype>" (`standard_error`) for each question type present
    (shapes.QTYPES order, then others sorted)}.
  """
  if not len(predictions) == len(answers) == len(qtypes):
    raise ValueError(f"{len(predictions)} predictions, {len(answers)} answers "
                     f"and {len(qtypes)} qtypes must be equally many")
  hits = [normalize_answer(p) == normalize_answer(a)
          for p, a in zip(predictions, answers)]
  present = set(qtypes)
  order = [q for q in QTYPES if q in present] + sorted(present - set(QTYPES))
  out: dict[str, float | int] = {}
  for name in order + ["all"]:
    mine = [h for h, q in zip(hits, qtypes) if name in ("all", q)]
    out[f"acc/{name}"] = float(np.mean(mine)) if mine else 0.0
    out[f"count/{name}"] = len(mine)
    out[f"se/{name}"] = standard_error(out[f"acc/{name}"], len(mine))
  return out


OTHER = "(other)"  # a confusion-matrix column: answers outside the labels


def answer_confusion(predictions: Sequence[str], answers: Sequence[str],
                     qtypes: Sequence[str], qtype: str
                     ) -> dict[str, list[Any]]:
  """Counts of (gold answer, predicted answer) for one question type.

  Returns:
    {"labels": the gold answers sorted, "predicted": labels + [OTHER],
    "matrix": int counts [len(labels)][len(labels) + 1], rows gold,
    columns predicted (any answer that is no label counts as OTHER)}.
  """
  pairs = [(normalize_answer(a), normalize_answer(p))
           for p, a, q in zip(predictions, answers, qtypes) if q == qtype]
  labels = sorted({gold for gold, _ in pairs})
  column = {label: i for i, label in enumerate(labels)}
  matrix = [[0] * (len(labels) + 1) for _ in labels]
  for gold, pred in pairs:
    matrix[column[gold]][column.get(pred, len(labels))] += 1
  return {"labels": labels, "predicted": labels + [OTHER], "matrix": matrix}


def yes_no_metrics(predictions: Sequence[str], answers: Sequence[str]
                   ) -> dict[str, float | int]:
  """POPE-style yes/no metrics with "yes" as the positive class.

  Returns:
    accuracy, precision, recall, f1 (0 where undefined), yes_rate (the
    fraction of predictions that are "yes"; a model that hallucinates says
    yes too often) and count.
  """
  if len(predictions) != len(answers):
    raise ValueError(f"{len(predictions)} predictions for {len(answers)} "
                     "answers")
  pred = np.asarray([normalize_answer(p) == "yes" for p in predictions], bool)
  gold = np.asarray([normalize_answer(a) == "yes" for a in answers], bool)
  n, tp = len(answers), int(np.sum(pred & gold))
  precision, recall = tp / max(pred.sum(), 1), tp / max(gold.sum(), 1)
  f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
  accuracy = np.mean([normalize_answer(p) == normalize_answer(a)
                      for p, a in zip(predictions, answers)]) if n else 0.0
  return {"accuracy": float(accuracy),
          "precision": float(precision), "recall": float(recall),
          "f1": float(f1),
          "yes_rate": float(pred.mean()) if n else 0.0, "count": n}


def record_pixels(cfg: MLLMConfig, record: Mapping[str, Any], resize: str,
                  kind: str | None = None) -> Any:
  """A record's image as the model takes it (`media.media_arrays`):
  f32[1, S, S, 3] (resized to the side), a Qwen2-VL model's [item at its own
  size], a NaFlex model's `NaFlexMedia`, an InternVL-tiled model's
  `TiledMedia`. Pass prompts through `fit_prompts` with it."""
  del kind  # the config names it
  return media_lib.media_arrays(cfg, [record["image"]], None, resize, 1)


def fit_prompts(prompts: Sequence[Sequence[Piece]], media: Sequence[Any]
                ) -> tuple[list[list[Piece]], list[Any]]:
  """(prompts, media) as the decode loop takes them: each prompt's
  `layout.Media` sized to its image (native resolution, NaFlex) or repeated
  per tile (InternVL), and the media as arrays / item lists."""
  fitted = [media_lib.expand_tiles(native_lib.sized_pieces(p, m), m)
            for p, m in zip(prompts, media)]
  return fitted, [media_lib.model_media(m) for m in media]


def greedy_answers(model: MLLM, params: Any, tokenizer: Tokenizer,
                   prompts: Sequence[Sequence[Piece]],
                   pixels: Sequence[np.ndarray], *, batch_size: int,
                   max_new_tokens: int, fastv: FastVConfig | None = None,
                   contrast: Contrast | None = None) -> list[str]:
  """Greedy answers (KV cache, batched, stopping at the end of turn) of
  prompts about images: what every shapes evaluator decodes with."""
  return decode.greedy_generate(
      model, params, prompts, pixels, image_token_id=tokenizer.image_id,
      max_new_tokens=max_new_tokens, stop_id=tokenizer.end_of_turn_id,
      tokenizer=tokenizer, batch_size=batch_size, pad_id=tokenizer.pad_id,
      fastv=fastv, contrast=contrast).texts


def shapes_examples(cfg: MLLMConfig, tokenizer: Tokenizer,
                     source: Sequence[Mapping[str, Any]], fmt: str,
                     max_examples: int | None, resize: str
                     ) -> tuple[list[Any], list[list[Piece]],
                                list[np.ndarray]]:
  """(record, item) pairs of `fmt` in source order, their prompts (the
  training prompt without the answer) and images as the model takes them
  (`record_pixels`, `fit_prompts`)."""
  kind = images_lib.normalization_kind(cfg)
  examples, pixels = [], []
  for index in range(len(source)):
    if max_examples is not None and len(examples) >= max_examples:
      break
    record = source[index]
    image = record_pixels(cfg, record, resize, kind)  # Shared, not copied.
    n = formats.num_items(record, fmt) if fmt == "shapes" else 1
    examples += [(record, item) for item in range(n)]
    pixels += [image] * n
  examples, pixels = examples[:max_examples], pixels[:max_examples]
  prompts = [prompts_lib.prompt_pieces(cfg, tokenizer, formats.record_example(
      r, i, fmt).turns[:-1]) for r, i in examples]
  prompts, pixels = fit_prompts(prompts, pixels)
  return examples, prompts, pixels


def evaluate_shapes_vqa(model: MLLM, params: Any, cfg: MLLMConfig,
                        tokenizer: Tokenizer,
                        source: Sequence[Mapping[str, Any]], *,
                        max_examples: int | None = None, batch_size: int = 8,
                        max_new_tokens: int = 4, resize: str = "square",
                        num_samples: int = 8,
                        fastv: FastVConfig | None = None,
                        contrast: Contrast | None = None) -> dict[str, Any]:
  """Greedy answers to every question of shapes records, scored.

  Each (record, question) is one example, prompted as training prompts it
  (user `<image>\\n{question}`, formats 'shapes'), up to `max_examples`
  examples in source order.

  Returns:
    `vqa_accuracy` keys; `pope/<key>` = `yes_no_metrics` on existence
    questions; `absent_yes_rate` = yes-rate on existence questions about
    absent objects (answer "no"); "confusion/shape": `answer_confusion`
    of the shape questions; "samples": the first `num_samples`
    {question, answer, prediction, qtype} dicts.
  """
  examples, prompts, pixels = shapes_examples(cfg, tokenizer, source,
                                               "shapes", max_examples, resize)
  questions, answers, qtypes = ([r[key][i] for r, i in examples]
                                for key in ("questions", "answers", "qtypes"))
  preds = greedy_answers(model, params, tokenizer, prompts, pixels,
                         batch_size=batch_size, max_new_tokens=max_new_tokens,
                         fastv=fastv, contrast=contrast)
  metrics: dict[str, Any] = dict(vqa_accuracy(preds, answers, qtypes))
  exist = [i for i, q in enumerate(qtypes) if q == "existence"]
  pope = yes_no_metrics([preds[i] for i in exist], [answers[i] for i in exist])
  metrics.update({f"pope/{k}": v for k, v in pope.items()})
  absent = [i for i in exist if normalize_answer(answers[i]) == "no"]
  metrics["absent_yes_rate"] = yes_no_metrics(
      [preds[i] for i in absent], [answers[i] for i in absent])["yes_rate"]
  # What shape answers are mistaken for: the plot beside report.md.
  metrics["confusion/shape"] = answer_confusion(preds, answers, qtypes,
                                                "shape")
  metrics["samples"] = [
      {"question": q, "answer": a, "prediction": p, "qtype": t} for q, a, p, t
      in zip(questions[:num_samples], answers, preds, qtypes)]
  return metrics


def over_splits(ctx: registry.EvalContext, evaluate, **kwargs
                ) -> dict[str, Any]:
  """An after-stage evaluator's metrics on the test and held-out splits,
  keys prefixed with the split: `evaluate(model, params, cfg, tokenizer,
  source, max_examples=config.eval.max_examples,
  batch_size=config.eval.batch_size, **kwargs)` per split."""
  out = {}
  for split in SPLITS:
    m = evaluate(ctx.model, ctx.params, ctx.model.cfg, ctx.tokenizer,
                 builders.load_source(ctx.dataset, split),
                 max_examples=ctx.config.eval.max_examples,
                 batch_size=ctx.config.eval.batch_size, **kwargs)
    out.update({f"{split}/{k}": v for k, v in m.items()})
  return out


def vqa_evaluator(ctx: registry.EvalContext) -> dict[str, Any]:
  """`vqa` after a stage: every VQA metric on the test and held-out splits,
  keys prefixed with the split."""
  return over_splits(ctx, evaluate_shapes_vqa,
                     max_new_tokens=ctx.config.eval.max_new_tokens)


registry.register("vqa", vqa_evaluator)
