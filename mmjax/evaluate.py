"""Evaluates a trained run on one split of the shapes benchmark, or on an
official benchmark read from its local files.

  python -m mmjax.evaluate --workdir=DIR --split=test [--captions=64]
      [--grounding=200] [--grounded_captions=200]
  python -m mmjax.evaluate --checkpoint=DIR/checkpoints/sft/600 --split=heldout
  python -m mmjax.evaluate --workdir=DIR --benchmark=pope --data=/data/pope
      [--split=adversarial] [--limit=500]

VQA exact match by question type, POPE-style yes/no metrics and the
absent-object yes-rate (and BLEU-4 / token F1 of --captions captions, and
box accuracy at IoU >= 0.5 / mean IoU of --grounding referring questions, and
the objects named and boxed in --grounded_captions grounded captions), with
greedy answers from the KV-cache decode loop; optional FastV pruning and
visual contrastive decoding (--contrast_alpha=1: answers contrasted with
those about a noised image, docs/evaluation.md "Contrastive decoding").
Writes WORKDIR/eval/final_<split>.json and .md (<stage>_<step>_<split> for a
checkpoint; a `_contrast` suffix with --contrast_alpha) and prints the
markdown. The library call is
`mmjax.evals.evaluate_run`.

With --benchmark (vqav2, textvqa, gqa, pope, mmbench, mme: docs/evaluation.md
"Official benchmarks"), --data names the directory of the benchmark's
published layout and --split one of its splits; answers are appended to
WORKDIR/eval/<benchmark>_<split>.answers.jsonl as batches finish (a rerun
answers only the rest) and results go to WORKDIR/eval/<benchmark>_<split>.json
and .md. The library call is `mmjax.evals.evaluate_benchmark`.
Bad input exits with status 2 and one line.
"""
from __future__ import annotations

from typing import Sequence

from absl import app, flags, logging

from mmjax import config as config_lib
from mmjax import contrast_flags

SPLITS = ("test", "heldout", "validation")  # = mmjax.evals.standalone.SPLITS
SHAPES_ONLY = ("max_examples", "captions", "grounding", "grounded_captions",
               *contrast_flags.NAMES)
BENCHMARK_ONLY = ("data", "limit", "max_new_tokens")


def main(argv: Sequence[str]) -> None:
  """`python -m mmjax.evaluate --workdir=DIR --split=test` (module docs)."""
  f = flags.FLAGS
  if len(argv) > 1:
    config_lib.fail(f"unexpected arguments {list(argv[1:])}")
  # Before anything loads: a negative count would evaluate nothing.
  for name, meaning in (("max_examples", "0 = the whole split"),
                        ("batch_size", "0 = config.eval.batch_size"),
                        ("captions", "0 = none"),
                        ("grounding", "0 = none"),
                        ("grounded_captions", "0 = none"),
                        ("limit", "0 = every question"),
                        ("max_new_tokens", "0 = the benchmark's")):
    if (f[name].value or 0) < 0:
      config_lib.fail(f"--{name}={f[name].value} must be >= 0 ({meaning})")
  _check_mode_flags(f)
  if not f["verbosity"].present:
    # orbax warns about each file of a checkpoint it cannot read; the one
    # line that matters is ours.
    logging.set_verbosity(logging.ERROR)
  from mmjax import evals  # pylint: disable=g-import-not-at-top  (after flag checks: a typo fails fast)
  from mmjax import inference  # pylint: disable=g-import-not-at-top
  fastv = inference.FastVConfig(f.fastv_k, f.fastv_r) if f.fastv_k else None
  try:
    contrast = contrast_flags.from_flags(f)
  except ValueError as e:
    config_lib.fail(str(e))
  try:
    if f.benchmark:
      _, markdown = evals.evaluate_benchmark(
          f.workdir, f.benchmark, f.data, split=f.split,
          checkpoint=f.checkpoint, limit=f.limit, batch_size=f.batch_size,
          max_new_tokens=f.max_new_tokens or None, tokenizer=f.tokenizer,
          fastv=fastv)
      print(markdown, flush=True)
      return
    _, markdown = evals.evaluate_run(
        f.workdir, f.split or "test", checkpoint=f.checkpoint,
        max_examples=f.max_examples, batch_size=f.batch_size,
        captions=f.captions, grounding=f.grounding, fastv=fastv,
        tokenizer=f.tokenizer, contrast=contrast,
        grounded_captions=f.grounded_captions)
  except (inference.WorkdirError, config_lib.ConfigError, ValueError) as e:
    config_lib.fail(str(e))
  print(markdown, flush=True)


def _check_mode_flags(f: flags.FlagValues) -> None:
  """The shapes flags without --benchmark, the benchmark flags with it."""
  if not f.benchmark:
    given = [n for n in BENCHMARK_ONLY if f[n].present]
    if given:
      config_lib.fail(f"--{given[0]} goes with --benchmark=NAME "
                      "(vqav2, textvqa, gqa, pope, mmbench, mme)")
    if f.split is not None and f.split not in SPLITS:
      config_lib.fail(f"--split={f.split!r}: the shapes splits are "
                      f"{', '.join(SPLITS)}; a benchmark's splits (e.g. POPE's "
                      "random, popular, adversarial) go with --benchmark=NAME")
    return
  given = [n for n in SHAPES_ONLY if f[n].present]
  if given:
    config_lib.fail(f"--{given[0]} is for the shapes benchmark; with "
                    f"--benchmark={f.benchmark} use --limit=N")
  if not f.data:
    config_lib.fail(f"--benchmark={f.benchmark} needs --data=DIR, the "
                    "directory of its files (docs/evaluation.md, Official "
                    "benchmarks)")


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The run (python -m mmjax.main).")
  flags.DEFINE_string("checkpoint", None, "A stage checkpoint step directory "
                      "instead of the workdir's final parameters.")
  flags.DEFINE_string("split", None, "Shapes split to evaluate: test "
                      "(default), heldout, validation; with --benchmark one "
                      "of its splits (default: its first).")
  flags.DEFINE_string("benchmark", None, "An official benchmark: vqav2, "
                      "textvqa, gqa, pope, mmbench, mme (needs --data).")
  flags.DEFINE_string("data", None, "With --benchmark: the directory "
                      "holding its published files.")
  flags.DEFINE_integer("limit", 0, "With --benchmark: the first N "
                       "questions (0 = all).")
  flags.DEFINE_integer("max_new_tokens", 0, "With --benchmark: answer "
                       "tokens (0 = the benchmark's budget).")
  flags.DEFINE_integer("max_examples", None, "VQA examples (default: "
                       "config.eval.max_examples; 0 = the whole split).")
  flags.DEFINE_integer("batch_size", None, "Rows per program (default: "
                       "config.eval.batch_size).")
  flags.DEFINE_integer("captions", None, "Records to caption for BLEU-4 / "
                       "token F1 (0 = none; default: 64 on a shapes run, "
                       "none on a run of clips).")
  flags.DEFINE_integer("grounding", 0, "Referring questions (one per record)"
                       " answered by a box, scored by IoU (0 = none).")
  flags.DEFINE_integer("grounded_captions", 0, "Records asked 'describe the "
                       "image with boxes.', scored by the objects named and "
                       "boxed at IoU >= 0.5 (0 = none).")
  flags.DEFINE_integer("fastv_k", 0, "FastV: prune after layer k-1 (0 = off).")
  flags.DEFINE_float("fastv_r", 0.5, "FastV: fraction of image tokens "
                     "dropped.")
  contrast_flags.define_flags()
  flags.DEFINE_string("tokenizer", None, "A tokenizer.model or a Hugging "
                      "Face tokenizer dir (default: the workdir's, else the "
                      "dataset's).")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=config_lib.absl_flags_parser)
