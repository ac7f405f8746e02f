"""Runs every stage of a config in order; what `python -m mmjax.main` does.

Callable in-process too (tests, notebooks, sweeps): `run_recipe(config, W)`.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections

from mmjax import config as config_lib
from mmjax import parallel
from mmjax.train import config_checks, report, tasks, trainer


def run_recipe(config: ml_collections.ConfigDict, workdir: str,
               verbose: bool = True) -> list[tuple[str, Any, dict]]:
  """Validates, then trains (or resumes) each stage; writes report.md.

  Raises:
    ConfigError: a bad config value (before anything compiles).
    IncompatibleCheckpointError: the workdir holds another model's
      checkpoint (nothing in it is touched).
    NonFiniteLossError: the loss became NaN/inf.
  """
  workdir = os.path.abspath(workdir)
  config_checks.validate_config(config)
  if config.matmul_precision != "default":
    jax.config.update("jax_default_matmul_precision", config.matmul_precision)
  mesh = parallel.make_mesh(config.mesh.to_dict())
  rules = parallel.logical_rules(config.mesh.get("rules", None))
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.batch_size % shards:
    raise config_lib.ConfigError(
        f"config.batch_size={config.batch_size} must be divisible by the "
        f"data x fsdp mesh size {shards}")
  stages = config_lib.stage_names(config)
  # Refuse an incompatible workdir before writing anything into it.
  for name in stages:
    _, init = tasks.model_initializer(config)
    trainer.check_workdir(workdir, name, trainer.abstract_params(init))

  main_process = jax.process_index() == 0
  if main_process:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w",
              encoding="utf-8") as f:
      json.dump(config_lib.to_plain(config), f, indent=2)
  done = []
  for name in stages:
    built = tasks.build_task(config, name, workdir)
    result = trainer.run_stage(config, name, built.task, workdir, mesh, rules)
    done.append((name, result, built.info))
    finished_before = (result.resumed_from is not None and
                       result.resumed_from >= config.stages[name].steps)
    if finished_before and main_process and verbose:
      print(f"[{name}] already finished ({result.step} steps): "
            f"{result.checkpoint_dir}", flush=True)
  if main_process:
    path = report.write_report(workdir, f"mmjax run: {config.family}", done)
    if verbose:
      print(f"done. report: {path}  metrics: "
            f"{os.path.join(workdir, 'metrics.jsonl')}", flush=True)
  return done
