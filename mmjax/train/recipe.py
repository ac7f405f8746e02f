"""Runs every stage of a config in order, resumable; writes report.md.

  done = run_recipe(config, workdir)           # train only
  done = run_recipe(config, workdir, evaluator=ev)   # + evaluations

`python -m mmjax.main` runs `mmjax.evals.train_and_evaluate`, which is this
with the evaluations the config's stages list (`mmjax/evals/after_stage.py`).
"""
from __future__ import annotations

import os
from typing import Any, Protocol

import jax
import ml_collections

from mmjax import config as config_lib
from mmjax import parallel
from mmjax import hf
from mmjax.train import config_checks, groups, report, stages, trainer


def load_init_from(path: str) -> dict[str, Any]:
  """Flat {global path: array} of an external checkpoint (`config.init_from`).

  `path` is what `python -m mmjax.convert` wrote (a directory with
  config.json and params/), or an orbax parameter tree whose top level names
  the groups (llm, vision, connector, ...). Arrays are restored onto one
  device whatever mesh saved them; the stage re-shards them.
  """
  if not path:
    return {}
  path = os.path.abspath(path)
  if os.path.basename(path) == "params" and os.path.exists(
      os.path.join(os.path.dirname(path), "config.json")):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise config_lib.ConfigError(
        f"config.init_from={path!r} is not a directory; give the output of "
        "`python -m mmjax.convert` or an orbax parameter tree")
  if os.path.exists(os.path.join(path, "config.json")):
    converted = hf.load_converted(path)
    family, params = converted.family, converted.params
  else:
    family, params = "", parallel.restore_on_one_device(path)
  to_global = groups.prefix_mapper(groups.FAMILY_PATHS.get(family, {}))
  return {to_global(k): v for k, v in groups.flatten(params).items()}


class Evaluator(Protocol):
  """What runs after each stage (mmjax/evals/after_stage.py)."""

  def __call__(self, name: str, built: stages.BuiltTask,
               result: trainer.StageResult) -> None: ...

  def report(self) -> str:
    """Markdown appended to report.md."""


def run_recipe(config: ml_collections.ConfigDict, workdir: str,
               verbose: bool = True, after_stage=None,
               evaluator: Evaluator | None = None
               ) -> list[tuple[str, Any, dict]]:
  """Validates, then trains (or resumes) each stage; writes report.md.

  Raises:
    ConfigError: a bad config value (before anything compiles).
    IncompatibleCheckpointError: the workdir holds another model's
      checkpoint (nothing in it is touched).
    NonFiniteLossError: the loss became NaN/inf.

  `evaluator(name, built_task, result)` runs after each stage (the main job
  evaluates there) and adds `evaluator.report()` to report.md;
  `after_stage(name, built_task, result)` runs after it.
  """
  workdir = os.path.abspath(workdir)
  config_checks.validate_config(config)
  if config.matmul_precision != "default":
    jax.config.update("jax_default_matmul_precision", config.matmul_precision)
  mesh = parallel.make_mesh(config.mesh.to_dict())
  rules = parallel.logical_rules(config.mesh.get("rules", None))
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  names = config_lib.stage_names(config)
  for name in names:
    if config_lib.stage_batch_size(config, name) % shards:
      raise config_lib.ConfigError(
          f"stage {name}: batch size "
          f"{config_lib.stage_batch_size(config, name)} (config.batch_size "
          f"or config.stages.{name}.batch_size) must be divisible by the "
          f"data x fsdp mesh size {shards}")
  # Refuse an incompatible workdir before writing anything into it.
  for name in names:
    _, init = stages.model_initializer(config, name)
    trainer.check_workdir(workdir, name, trainer.abstract_params(init))

  main_process = jax.process_index() == 0
  if main_process:
    os.makedirs(workdir, exist_ok=True)
    config_lib.write_run_config(workdir, config)
  done = []
  # The global parameter store: each stage starts from what the previous
  # one ended with (or from config.init_from), with a fresh optimizer.
  store = load_init_from(config.get("init_from", ""))
  for name in names:
    built = stages.build_task(config, name, workdir)
    result = trainer.run_stage(config, name, built.task, workdir, mesh, rules,
                               store=store)
    store = result.global_params
    if evaluator is not None:
      evaluator(name, built, result)
    if after_stage is not None:
      after_stage(name, built, result)
    done.append((name, result, built.info))
    finished_before = (result.resumed_from is not None and
                       result.resumed_from >= config.stages[name].steps)
    if finished_before and main_process and verbose:
      print(f"[{name}] already finished ({result.step} steps): "
            f"{result.checkpoint_dir}", flush=True)
  if main_process:
    path = report.write_report(
        workdir, f"mmjax run: {config.family}", done,
        extra=evaluator.report() if evaluator is not None else "")
    if verbose:
      print(f"done. report: {path}  metrics: "
            f"{os.path.join(workdir, 'metrics.jsonl')}", flush=True)
  return done
