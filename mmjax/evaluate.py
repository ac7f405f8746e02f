"""Evaluation: VQA accuracy by question type, POPE-style yes/no probes and
caption metrics on the shapes benchmark; also a command line. (Image-text
retrieval recall@k: `mmjax.retrieval`.)

  out = greedy_generate(model, params, prompts, images, image_token_id=4,
                        max_new_tokens=4, stop_id=tok.end_of_turn_id)
  metrics = evaluate_shapes_vqa(model, params, cfg, tok, source)
  table = write_results(workdir, "sft", metrics)  # WORKDIR/eval/sft.json

  python -m mmjax.evaluate --workdir=DIR --split=test [--captions=64]

Answers are generated with the KV cache of `mmjax.inference` (prefill, then
a compiled decode loop), greedily; optional FastV pruning.
The command line evaluates a run's final parameters (`mmjax.workdir`), or a
given stage checkpoint, on one split of the shapes benchmark and writes
WORKDIR/eval/final_<split>.json and .md (<stage>_<step>_<split> for a
checkpoint).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from mmjax import caption_metrics
from mmjax import inference
from mmjax.data import formats
from mmjax.data import images as images_lib
from mmjax.data.shapes import QTYPES
from mmjax.data.tokenizer import Tokenizer
from mmjax.fastv import FastVConfig
from mmjax.inference import Generation
from mmjax.models import layout
from mmjax.models.mllm import MLLM, MLLMConfig
from mmjax.models.position_ids import V2PE_DEFAULT_STRIDE

Piece = inference.Piece
SPLITS = ("test", "heldout", "validation")


def greedy_generate(model: MLLM, params: Any,
                    prompts: Sequence[Sequence[Piece]],
                    images: Sequence[np.ndarray] | None = None, *,
                    image_token_id: int, max_new_tokens: int, stop_id: int,
                    tokenizer: Tokenizer | None = None, batch_size: int = 8,
                    pad_id: int = 0, v2pe_stride: int = V2PE_DEFAULT_STRIDE,
                    fastv: FastVConfig | None = None) -> Generation:
  """Batched greedy decoding with a KV cache (`inference.generate`).

  Args:
    model, params: the MLLM (`model.cfg` lays the prompts out).
    prompts: per example, text id lists and `layout.Media` items in order
      (the `<image>` markers already split out, as `layout.assemble` takes).
    images: per example f32[M_i, H, W, C], one image per Media item (already
      preprocessed); None for text-only prompts.
    image_token_id: the `<image>` id of the placeholders.
    max_new_tokens: the most tokens generated per example.
    stop_id: an example stops after generating it (`end_of_turn_id`).
    tokenizer: decodes the outputs into `texts` when given.
    batch_size: rows per program; the last batch is padded to it, so one
      program (per prompt length bucket) serves every batch.
    pad_id: the id in unused slots.
    v2pe_stride: the fixed V2PE inference stride.
    fastv: prune image tokens at prefill.

  Returns:
    A Generation: one token list and text per prompt.
  """
  return inference.generate(
      model, params, prompts, images, image_token_id=image_token_id,
      max_new_tokens=max_new_tokens, stop_ids=[stop_id], tokenizer=tokenizer,
      batch_size=batch_size, pad_id=pad_id, v2pe_stride=v2pe_stride,
      fastv=fastv)


def normalize_answer(text: str) -> str:
  """Lower-case, strip whitespace and a trailing '.'."""
  return text.strip().lower().rstrip(".").strip()


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str],
                 qtypes: Sequence[str]) -> dict[str, float | int]:
  """Exact match after `normalize_answer`, overall and per question type.

  Returns:
    {"acc/all", "count/all", and "acc/<qtype>", "count/<qtype>" for each
    question type present (shapes.QTYPES order, then others sorted)}.
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
  return out


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


def prompt_pieces(cfg: MLLMConfig, tokenizer: Tokenizer,
                  turns: Sequence[Mapping[str, str]]) -> list[Piece]:
  """`tokenizer.prompt_ids(turns)` split at `<image>` markers into pieces,
  one `layout.Media` at the model's image side per marker."""
  ids, pieces, start = tokenizer.prompt_ids(turns), [], 0
  for i, t in enumerate(ids):
    if t == tokenizer.image_id:
      pieces += [ids[start:i], layout.Media(cfg.side, cfg.side, cfg.frames)]
      start = i + 1
  return pieces + [ids[start:]]


def shapes_examples(cfg: MLLMConfig, tokenizer: Tokenizer,
                     source: Sequence[Mapping[str, Any]], fmt: str,
                     max_examples: int | None, resize: str
                     ) -> tuple[list[Any], list[list[Piece]],
                                list[np.ndarray]]:
  """(record, item) pairs of `fmt` in source order, their prompts (the
  training prompt without the answer) and images f32[1, S, S, 3]."""
  kind = images_lib.normalization_kind(cfg)
  examples, pixels = [], []
  for index in range(len(source)):
    if max_examples is not None and len(examples) >= max_examples:
      break
    record = source[index]
    image = images_lib.preprocess(record["image"], cfg.side, resize=resize,
                                  kind=kind)[None]  # Shared, not copied.
    n = formats.num_items(record, fmt) if fmt == "shapes" else 1
    examples += [(record, item) for item in range(n)]
    pixels += [image] * n
  examples, pixels = examples[:max_examples], pixels[:max_examples]
  prompts = [prompt_pieces(cfg, tokenizer, formats.record_example(
      r, i, fmt).turns[:-1]) for r, i in examples]
  return examples, prompts, pixels


def evaluate_shapes_vqa(model: MLLM, params: Any, cfg: MLLMConfig,
                        tokenizer: Tokenizer,
                        source: Sequence[Mapping[str, Any]], *,
                        max_examples: int | None = None, batch_size: int = 8,
                        max_new_tokens: int = 4, resize: str = "square",
                        num_samples: int = 8,
                        fastv: FastVConfig | None = None) -> dict[str, Any]:
  """Greedy answers to every question of shapes records, scored.

  Each (record, question) is one example, prompted as training prompts it
  (user `<image>\\n{question}`, formats 'shapes'), up to `max_examples`
  examples in source order.

  Returns:
    `vqa_accuracy` keys; `pope/<key>` = `yes_no_metrics` on existence
    questions; `absent_yes_rate` = yes-rate on existence questions about
    absent objects (answer "no"); "samples": the first `num_samples`
    {question, answer, prediction, qtype} dicts.
  """
  examples, prompts, pixels = shapes_examples(cfg, tokenizer, source,
                                               "shapes", max_examples, resize)
  questions, answers, qtypes = ([r[key][i] for r, i in examples]
                                for key in ("questions", "answers", "qtypes"))
  out = greedy_generate(model, params, prompts, pixels,
                        image_token_id=tokenizer.image_id,
                        max_new_tokens=max_new_tokens,
                        stop_id=tokenizer.end_of_turn_id, tokenizer=tokenizer,
                        batch_size=batch_size, pad_id=tokenizer.pad_id,
                        fastv=fastv)
  preds = out.texts
  metrics: dict[str, Any] = dict(vqa_accuracy(preds, answers, qtypes))
  exist = [i for i, q in enumerate(qtypes) if q == "existence"]
  pope = yes_no_metrics([preds[i] for i in exist], [answers[i] for i in exist])
  metrics.update({f"pope/{k}": v for k, v in pope.items()})
  absent = [i for i in exist if normalize_answer(answers[i]) == "no"]
  metrics["absent_yes_rate"] = yes_no_metrics(
      [preds[i] for i in absent], [answers[i] for i in absent])["yes_rate"]
  metrics["samples"] = [
      {"question": q, "answer": a, "prediction": p, "qtype": t} for q, a, p, t
      in zip(questions[:num_samples], answers, preds, qtypes)]
  return metrics


def evaluate_shapes_captions(model: MLLM, params: Any, cfg: MLLMConfig,
                             tokenizer: Tokenizer,
                             source: Sequence[Mapping[str, Any]], *,
                             max_examples: int | None = None,
                             batch_size: int = 8, max_new_tokens: int = 48,
                             resize: str = "square", num_samples: int = 4
                             ) -> dict[str, Any]:
  """Greedy captions of shapes records (prompted as the caption stage is),
  scored against both reference captions of each record.

  Returns:
    `caption/bleu4`, `caption/token_f1`, `caption/count` and
    "caption_samples": the first `num_samples` {prediction, references}.
  """
  examples, prompts, pixels = shapes_examples(cfg, tokenizer, source,
                                               "caption", max_examples, resize)
  refs = [list(r["captions"]) for r, _ in examples]
  out = greedy_generate(model, params, prompts, pixels,
                        image_token_id=tokenizer.image_id,
                        max_new_tokens=max_new_tokens,
                        stop_id=tokenizer.end_of_turn_id, tokenizer=tokenizer,
                        batch_size=batch_size, pad_id=tokenizer.pad_id)
  metrics: dict[str, Any] = {
      f"caption/{k}": v
      for k, v in caption_metrics.caption_metrics(out.texts, refs).items()}
  metrics["caption_samples"] = [{"prediction": p, "references": r}
                                for p, r in zip(out.texts[:num_samples], refs)]
  return metrics


def _cell(value: Any) -> str:
  text = f"{value:.4f}" if isinstance(value, float) else str(value)
  return text.replace("|", "\\|").replace("\n", " ")


def results_markdown(stage: str, metrics: Mapping[str, Any]) -> str:
  """A markdown section: scalar metrics, then the sample answers if any."""
  lines = [f"### Evaluation of stage `{stage}`", "", "| metric | value |",
           "|---|---|"]
  lines += [f"| {k} | {_cell(v)} |" for k, v in metrics.items()
            if isinstance(v, (int, float, str))]
  samples = metrics.get("samples") or []
  if samples:
    lines += ["", "| question | answer | prediction |", "|---|---|---|"]
    lines += [f"| {_cell(s['question'])} | {_cell(s['answer'])} | "
              f"{_cell(s['prediction'])} |" for s in samples]
  return "\n".join(lines) + "\n"


def write_results(workdir: str, stage: str, metrics: Mapping[str, Any]) -> str:
  """Writes WORKDIR/eval/<stage>.json (atomically); returns the markdown."""
  directory = os.path.join(workdir, "eval")
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"{stage}.json")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(json.dumps(dict(metrics), indent=2,
                       default=lambda v: np.asarray(v).tolist()))
  os.replace(path + ".tmp", path)
  return results_markdown(stage, metrics)


def evaluate_run(workdir: str | None, split: str, *,
                 checkpoint: str | None = None, max_examples: int | None = None,
                 batch_size: int | None = None, captions: int = 0,
                 fastv: FastVConfig | None = None,
                 tokenizer: str | None = None) -> tuple[dict[str, Any], str]:
  """Evaluates a run's final parameters on one shapes split.

  Args:
    workdir / checkpoint: the run (`mmjax.workdir.load_run`).
    split: one of SPLITS.
    max_examples: VQA examples (None: config.eval.max_examples; 0: all).
    batch_size: rows per program (None: config.eval.batch_size).
    captions: also caption this many records (0: no caption metrics).
    fastv: prune image tokens at prefill.
    tokenizer: an explicit tokenizer path.

  Returns:
    (metrics, markdown); both are also written to WORKDIR/eval/NAME.json
    and .md, NAME = final_<split>, or <stage>_<step>_<split> for an
    explicit checkpoint.
  """
  from mmjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from mmjax.data import builders  # pylint: disable=g-import-not-at-top
  from mmjax.train import mllm_tasks  # pylint: disable=g-import-not-at-top
  if split not in SPLITS:
    raise workdir_lib.WorkdirError(f"--split={split!r}; allowed: "
                                   f"{', '.join(SPLITS)}")
  run = workdir_lib.load_run(workdir, checkpoint=checkpoint,
                             tokenizer=tokenizer)
  config = run.config
  if fastv is not None:
    fastv.check(run.cfg)
  source = builders.load_source(mllm_tasks.shapes_dataset(config), split)
  if max_examples is None:
    max_examples = config.eval.max_examples
  batch_size = batch_size or config.eval.batch_size
  metrics = evaluate_shapes_vqa(
      run.model, run.params, run.cfg, run.tokenizer, source,
      max_examples=max_examples or None, batch_size=batch_size,
      max_new_tokens=config.eval.max_new_tokens, fastv=fastv)
  if captions:
    metrics.update(evaluate_shapes_captions(
        run.model, run.params, run.cfg, run.tokenizer, source,
        max_examples=captions, batch_size=batch_size))
  metrics["checkpoint"] = run.checkpoint
  if fastv is not None:
    metrics["fastv"] = f"k={fastv.k} r={fastv.r}"
  name = f"final_{split}"
  if checkpoint is not None:
    stage_dir, step = os.path.split(run.checkpoint)
    name = f"{os.path.basename(stage_dir)}_{step}_{split}"
  markdown = write_results(run.workdir, name, metrics)
  with open(os.path.join(run.workdir, "eval", f"{name}.md"), "w",
            encoding="utf-8") as f:
    f.write(markdown)
  return metrics, markdown


def main(argv: Sequence[str]) -> None:
  """`python -m mmjax.evaluate --workdir=DIR --split=test` (module docs)."""
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  from mmjax import config as config_lib  # pylint: disable=g-import-not-at-top
  from mmjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  fastv = FastVConfig(f.fastv_k, f.fastv_r) if f.fastv_k else None
  try:
    _, markdown = evaluate_run(
        f.workdir, f.split, checkpoint=f.checkpoint,
        max_examples=f.max_examples, batch_size=f.batch_size,
        captions=f.captions, fastv=fastv, tokenizer=f.tokenizer)
  except (workdir_lib.WorkdirError, config_lib.ConfigError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  print(markdown, flush=True)


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "The run (python -m mmjax.main).")
  flags.DEFINE_string("checkpoint", None, "A stage checkpoint step directory "
                      "instead of the workdir's final parameters.")
  flags.DEFINE_enum("split", "test", SPLITS, "Shapes split to evaluate.")
  flags.DEFINE_integer("max_examples", None, "VQA examples (default: "
                       "config.eval.max_examples; 0 = the whole split).")
  flags.DEFINE_integer("batch_size", None, "Rows per program (default: "
                       "config.eval.batch_size).")
  flags.DEFINE_integer("captions", 64, "Records to caption for BLEU-4 / "
                       "token F1 (0 = none).")
  flags.DEFINE_integer("fastv_k", 0, "FastV: prune after layer k-1 (0 = off).")
  flags.DEFINE_float("fastv_r", 0.5, "FastV: fraction of image tokens "
                     "dropped.")
  flags.DEFINE_string("tokenizer", None, "tokenizer.model (default: the "
                      "workdir's, else the dataset's).")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
