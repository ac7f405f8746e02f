"""Evaluation: a registry of evaluators by the names a stage's `evals` lists,
what runs after a stage, the report and plots, and standalone evaluation.

  from mmjax import evals
  evals.train_and_evaluate(config, workdir)   # what `python -m mmjax.main` runs
  evals.EVALUATORS                            # {'vqa': ..., 'captions': ..., 'grounding': ..., 'grounded_captions': ..., 'retrieval': ...}
  evals.evaluate_run(workdir, "test")         # what `python -m mmjax.evaluate` runs
  evals.evaluate_benchmark(workdir, "pope", "/data/pope")   # ... --benchmark=pope
  evals.BENCHMARKS                            # official benchmarks (evals/benchmarks/)
"""
from __future__ import annotations

from typing import Any

import ml_collections

from mmjax import config as config_lib
# Each evaluator module registers itself on import.
from mmjax.evals import audio_vqa, captions, grounded_captions, grounding, retrieval, vqa  # pylint: disable=unused-import
from mmjax.evals.after_stage import StageEvaluator
from mmjax.evals import registry
from mmjax.evals.registry import EVALUATORS, EvalContext, register
from mmjax.evals.standalone import evaluate_run
# The official benchmarks; each is also an evaluator a stage's `evals` names.
from mmjax.evals.benchmarks import BENCHMARKS, evaluate_benchmark
from mmjax.train import recipe


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       verbose: bool = True, after_stage=None
                       ) -> list[tuple[str, Any, dict]]:
  """Trains (or resumes) every stage and runs the evaluations each stage's
  `evals` lists after it; writes report.md with them.

  Returns what `mmjax.train.recipe.run_recipe` returns: per stage (name,
  StageResult, info). Raises ConfigError for an `evals` entry that is no
  evaluator, before anything compiles.
  """
  config_lib.validate(config, registry.checks(config))
  evaluator = (StageEvaluator(config, workdir) if config.family == "mllm"
               else None)
  return recipe.run_recipe(config, workdir, verbose=verbose,
                           after_stage=after_stage, evaluator=evaluator)

