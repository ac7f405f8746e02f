"""The registry of evaluators: the names a stage's `evals` lists.

  register("vqa", vqa_evaluator)   # in the evaluator's own module
  EVALUATORS["vqa"](ctx) -> {"test/acc/all": ..., ...}

An evaluator takes an `EvalContext` (the stage's model and final
parameters, the tokenizer, the recipe's shapes dataset) and returns flat
metrics; `after_stage.StageEvaluator` runs those a stage lists once it
finishes and writes them to WORKDIR/eval/<stage>.json, metrics.jsonl and
report.md.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections

from mmjax import config as C


@dataclasses.dataclass
class EvalContext:
  """What an evaluator after a stage gets.

  Attributes:
    config: the run's config.
    stage: the stage's name.
    model: the stage's model (the MLLM, or the two-tower model of a
      contrastive stage).
    params: its final parameters.
    tokenizer: the recipe's tokenizer.
    dataset: the recipe's shapes TFDS builder (splits train / validation /
      test / heldout).
    workdir: the run's directory (benchmark answers are kept in its eval/).
  """
  config: ml_collections.ConfigDict
  stage: str
  model: Any
  params: Any
  tokenizer: Any
  dataset: Any
  workdir: str = ""


Evaluator = Callable[[EvalContext], dict[str, Any]]
EVALUATORS: dict[str, Evaluator] = {}
# Config checks of evaluators that need settings (a benchmark's data
# directory): run before anything compiles when a stage lists them.
CONFIG_CHECKS: dict[str, C.Check] = {}


def register(name: str, fn: Evaluator, check: C.Check | None = None
             ) -> Evaluator:
  """Adds an evaluator under a name a stage's `evals` can list; `check`
  (config -> None, raises ConfigError) runs when a stage lists it."""
  if name in EVALUATORS:
    raise ValueError(f"evaluator {name!r} is registered twice")
  EVALUATORS[name] = fn
  if check is not None:
    CONFIG_CHECKS[name] = check
  return fn


def stage_evals(stage: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The evaluator names a stage lists. An entry may hold several names
  separated by commas: `--config.stages.sft.evals=vqa,grounding` reaches the
  config as the one-entry tuple ('vqa,grounding',)."""
  return tuple(name.strip() for entry in stage.get("evals", ())
               for name in str(entry).split(",") if name.strip())


def checks(config: ml_collections.ConfigDict) -> list[C.Check]:
  """Each stage's `evals` names registered evaluators, with the settings
  they check (CONFIG_CHECKS)."""
  out = []
  for name in C.stage_names(config):
    for entry in stage_evals(config.stages[name]):
      out.append(C.check_that(
          lambda c, e=entry: e in EVALUATORS,
          lambda c, n=name, e=entry: f"config.stages.{n}.evals names {e!r}, "
          f"which is no evaluator; evaluators: "
          f"{', '.join(map(repr, EVALUATORS))}"))
      if entry in CONFIG_CHECKS:
        out.append(CONFIG_CHECKS[entry])
  return out
