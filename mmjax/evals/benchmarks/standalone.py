"""Evaluating a finished run on an official benchmark: what
`python -m mmjax.evaluate --benchmark=NAME --data=DIR` runs.

  metrics, markdown = evaluate_benchmark("runs/llava", "pope", "/data/pope",
                                         split="adversarial", limit=500)

Results: WORKDIR/eval/<benchmark>_<split>.json and .md (prefixed
<stage>_<step>_ for an explicit checkpoint), answers beside them in
<name>.answers.jsonl (runner.py).
"""
from __future__ import annotations

import os
from typing import Any

from mmjax.decoding.fastv import FastVConfig
from mmjax.evals.benchmarks import registry
from mmjax.evals.benchmarks.question import BenchmarkDataError
from mmjax.evals.benchmarks.runner import run_benchmark, select_questions
from mmjax.inference import run as run_lib


def result_name(benchmark: str, split: str, checkpoint: str | None) -> str:
  """<benchmark>_<split>, or <stage>_<step>_<benchmark>_<split> for an
  explicit stage checkpoint."""
  name = f"{benchmark}_{split}"
  if checkpoint is None:
    return name
  stage_dir, step = os.path.split(os.path.abspath(checkpoint.rstrip("/")))
  return f"{os.path.basename(stage_dir)}_{step}_{name}"


def evaluate_benchmark(workdir: str | None, benchmark: str, data: str, *,
                       split: str | None = None,
                       checkpoint: str | None = None, limit: int = 0,
                       batch_size: int | None = None,
                       max_new_tokens: int | None = None,
                       tokenizer: str | None = None,
                       fastv: FastVConfig | None = None
                       ) -> tuple[dict[str, Any], str]:
  """Answers and scores one benchmark with a run's final parameters (or a
  stage checkpoint).

  Args:
    workdir / checkpoint / tokenizer: the run (`mmjax.inference.load`).
    benchmark: a registered name (registry.BENCHMARKS).
    data: the directory holding the benchmark's published layout.
    split: one of the benchmark's splits (None: its default).
    limit: the first N questions (0: all).
    batch_size: rows per program (None: config.eval.batch_size).
    max_new_tokens: None: the benchmark's answer budget.
    fastv: prune image tokens at prefill.

  Raises:
    BenchmarkDataError: an unknown benchmark or split, a negative count, a
      layout that is not there (checked before the model loads).
    WorkdirError: no run there.
  """
  bench = registry.get(benchmark)
  split = bench.check_split(split)
  for flag, value in (("limit", limit), ("batch_size", batch_size),
                      ("max_new_tokens", max_new_tokens)):
    if (value or 0) < 0:
      raise BenchmarkDataError(f"--{flag}={value} must be >= 0")
  questions = select_questions(bench, data, split, limit)
  run = run_lib.load_run(workdir, checkpoint=checkpoint, tokenizer=tokenizer)
  if run.text_only:
    raise run_lib.WorkdirError(f"{run.workdir} holds a text-only LM; "
                               f"{benchmark} asks about images")
  if fastv is not None:
    fastv.check(run.cfg)
  return run_benchmark(
      run, bench, data, split, out_dir=os.path.join(run.workdir, "eval"),
      name=result_name(benchmark, split, checkpoint), limit=limit,
      batch_size=batch_size or int(run.config.eval.batch_size),
      max_new_tokens=max_new_tokens, fastv=fastv, questions=questions)
