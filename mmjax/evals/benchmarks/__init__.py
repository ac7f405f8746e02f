"""Official benchmarks read from their published local layouts, answered
greedily and scored as the papers do.

  from mmjax.evals import benchmarks
  benchmarks.BENCHMARKS          # vqav2, textvqa, gqa, pope, mmbench, mme
  benchmarks.evaluate_benchmark("runs/llava", "pope", "/data/pope")

Modules: normalize (the official VQA answer normalisation), question (the
question record, reading files with one-line errors), registry (benchmarks
by name), one module per benchmark (reader + metric), answers (the
resumable answers file), runner (sharded, batched answering and scoring),
standalone (`python -m mmjax.evaluate --benchmark`), stage (the benchmarks
as a stage's `evals`).
"""
# Each benchmark module registers itself on import (in this order: the
# order lists and docs give).
# pylint: disable=unused-import
from mmjax.evals.benchmarks import vqav2
from mmjax.evals.benchmarks import textvqa
from mmjax.evals.benchmarks import gqa
from mmjax.evals.benchmarks import pope
from mmjax.evals.benchmarks import mmbench
from mmjax.evals.benchmarks import mme
# pylint: enable=unused-import
from mmjax.evals.benchmarks.question import BenchmarkDataError, Question
from mmjax.evals.benchmarks.registry import BENCHMARKS, Benchmark, get
from mmjax.evals.benchmarks.runner import run_benchmark
from mmjax.evals.benchmarks.stage import register_stage_evaluators
from mmjax.evals.benchmarks.standalone import evaluate_benchmark

register_stage_evaluators()
