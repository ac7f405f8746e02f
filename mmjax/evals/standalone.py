"""Evaluating a finished run on one split of the shapes benchmark (or of
its dataset's questions about clips: tones, shapes_tones): what
`python -m mmjax.evaluate` does.

  metrics, markdown = evaluate_run("runs/shapes", "test", captions=64)

The run's final parameters (`mmjax.inference.load`), or a given stage
checkpoint; results go to WORKDIR/eval/final_<split>.json and .md
(<stage>_<step>_<split> for a checkpoint).
"""
from __future__ import annotations

import os
from typing import Any

from mmjax import config as config_lib
from mmjax.data import builders, datasets
from mmjax.decoding.contrastive import Contrast
from mmjax.decoding.fastv import FastVConfig
from mmjax.evals import audio_vqa
from mmjax.evals import captions as captions_lib
from mmjax.evals import grounded_captions as grounded_lib
from mmjax.evals import grounding as grounding_lib
from mmjax.evals import results, text_to_image, vqa
from mmjax.inference import run as run_lib
from mmjax.inference import text_to_image as t2i_lib

SPLITS = ("test", "heldout", "validation")
DEFAULT_CAPTIONS = 64  # `python -m mmjax.evaluate`'s, on a shapes run.


def _check_counts(**counts: int | None) -> None:
  """InputError for a negative count (it would evaluate nothing)."""
  for name, value in counts.items():
    if (value or 0) < 0:
      raise run_lib.InputError(f"{name}={value} must be >= 0")


def _draws(workdir: str) -> bool:
  config = config_lib.read_run_config(workdir)
  return config is not None and t2i_lib.is_text_to_image(config)


def evaluate_run(workdir: str | None, split: str, *,
                 checkpoint: str | None = None, max_examples: int | None = None,
                 batch_size: int | None = None, captions: int | None = 0,
                 grounding: int = 0, fastv: FastVConfig | None = None,
                 tokenizer: str | None = None,
                 contrast: Contrast | None = None,
                 grounded_captions: int = 0
                 ) -> tuple[dict[str, Any], str]:
  """Evaluates a run's final parameters on one shapes split.

  A run on a dataset of clips (`audio_vqa.DATASET_FORMATS`: tones,
  shapes_tones) answers every question of the split with its clip (and
  image), scored by type as the `audio_vqa` evaluator scores them; captions,
  grounding, grounded captions and FastV are shapes-only there.

  Args:
    workdir / checkpoint: the run (`mmjax.inference.run.load_run`).
    split: one of SPLITS.
    max_examples: VQA examples (None: config.eval.max_examples; 0: all).
    batch_size: rows per program (None: config.eval.batch_size).
    captions: also caption this many records (0: no caption metrics;
      None: `DEFAULT_CAPTIONS` on a shapes run, 0 on a run of clips).
    grounding: also ask this many referring questions, one per record,
      answered by a box (0: no grounding metrics; evaluator `grounding`).
    grounded_captions: also ask this many records for a grounded caption,
      "describe the image with boxes." (0: none; evaluator
      `grounded_captions`).
    fastv: prune image tokens at prefill.
    tokenizer: an explicit tokenizer path.
    contrast: visual contrastive decoding of the VQA answers
      (`mmjax.decoding.contrastive`; shapes questions only).

  Raises:
    InputError: a negative count, or nothing to evaluate (then nothing is
      written: a previous result stays).
    WorkdirError: no run there, or no checkpoint that can be read.

  Returns:
    (metrics, markdown); both are also written to WORKDIR/eval/NAME.json
    and .md, NAME = final_<split>, or <stage>_<step>_<split> for an
    explicit checkpoint.
  """
  if split not in SPLITS:
    raise run_lib.WorkdirError(f"--split={split!r}; allowed: "
                                   f"{', '.join(SPLITS)}")
  _check_counts(max_examples=max_examples, batch_size=batch_size,
                captions=captions, grounding=grounding,
                grounded_captions=grounded_captions)
  if workdir and checkpoint is None and _draws(workdir):
    # A configs/t2i.py run: its pictures, judged by the shapes checker.
    if (captions or grounding or grounded_captions or fastv is not None
        or contrast is not None):
      raise run_lib.InputError(
          "a text-to-image run is scored on the pictures it draws; "
          "--captions, --grounding, --grounded_captions, FastV and "
          "contrastive decoding do not apply")
    return text_to_image.evaluate_text_to_image(
        workdir, split, n=200 if max_examples is None else max_examples,
        batch_size=batch_size or 50)
  run = run_lib.load_run(workdir, checkpoint=checkpoint,
                             tokenizer=tokenizer)
  if run.text_only:
    raise run_lib.WorkdirError(f"{run.workdir} holds a text-only LM; the "
                               "shapes evaluation needs a multimodal run")
  config = run.config
  if fastv is not None:
    fastv.check(run.cfg)
  builder = datasets.shapes_dataset(config)
  if split not in builder.info.splits:
    raise run_lib.InputError(
        f"--split={split!r}: the run's dataset "
        f"{config.data.get('dataset', 'shapes')!r} has the splits "
        f"{', '.join(builder.info.splits)}")
  source = builders.load_source(builder, split)
  if len(source) == 0:  # a grain data source: no truth value
    raise run_lib.InputError(
        f"the {split} split of the run's dataset holds no records: nothing "
        "evaluated, no result written; pick another --split")
  if max_examples is None:
    max_examples = config.eval.max_examples
  batch_size = batch_size or config.eval.batch_size
  clip_format = audio_vqa.DATASET_FORMATS.get(config.data.get("dataset"))
  if captions is None:
    captions = 0 if clip_format else DEFAULT_CAPTIONS
  if clip_format is not None:
    shapes_only = {"captions": captions, "grounding": grounding,
                   "grounded_captions": grounded_captions, "fastv": fastv,
                   "contrast": contrast}
    asked = [k for k, v in shapes_only.items() if v]
    if asked:
      raise run_lib.InputError(
          f"{', '.join(asked)}: shapes-only; this run's dataset "
          f"{config.data.dataset!r} is scored by its questions alone")
    metrics = audio_vqa.evaluate_clip_vqa(
        run.model, run.params, run.tokenizer, source, clip_format,
        max_examples=max_examples or None, batch_size=batch_size,
        max_new_tokens=config.eval.max_new_tokens)
  else:
    metrics = vqa.evaluate_shapes_vqa(
        run.model, run.params, run.cfg, run.tokenizer, source,
        max_examples=max_examples or None, batch_size=batch_size,
        max_new_tokens=config.eval.max_new_tokens, fastv=fastv,
        contrast=contrast)
  if not metrics.get("count/all"):
    # A result over no examples would replace a real one with nothing.
    raise run_lib.InputError(
        f"no {split} example was evaluated (max_examples={max_examples}): "
        "no result written, a previous one is kept")
  if captions:
    metrics.update(captions_lib.evaluate_shapes_captions(
        run.model, run.params, run.cfg, run.tokenizer, source,
        max_examples=captions, batch_size=batch_size))
  if grounding:
    metrics.update(grounding_lib.evaluate_shapes_grounding(
        run.model, run.params, run.cfg, run.tokenizer, source,
        max_examples=grounding, batch_size=batch_size, fastv=fastv))
  if grounded_captions:
    metrics.update(grounded_lib.evaluate_grounded_captions(
        run.model, run.params, run.cfg, run.tokenizer, source,
        max_examples=grounded_captions, batch_size=batch_size))
  metrics["checkpoint"] = run.checkpoint
  if fastv is not None:
    metrics["fastv"] = f"k={fastv.k} r={fastv.r}"
  if contrast is not None:
    metrics["contrast"] = (f"alpha={contrast.alpha} beta={contrast.beta} "
                           f"keep={contrast.keep}")
  name = f"final_{split}"
  if checkpoint is not None:
    stage_dir, step = os.path.split(run.checkpoint)
    name = f"{os.path.basename(stage_dir)}_{step}_{split}"
  if contrast is not None:  # beside the plain result, not over it
    name += "_contrast"
  markdown = results.write_results(run.workdir, name, metrics)
  with open(os.path.join(run.workdir, "eval", f"{name}.md"), "w",
            encoding="utf-8") as f:
    f.write(markdown)
  return metrics, markdown
