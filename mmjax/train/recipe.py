"""Runs every stage of a config in order, resumable; writes report.md.

  done = run_recipe(config, workdir)           # train only
  done = run_recipe(config, workdir, evaluator=ev)   # + evaluations

`python -m mmjax.main` runs `mmjax.evals.train_and_evaluate`, which is this
with the evaluations the config's stages list (`mmjax/evals/after_stage.py`).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any, Protocol

import jax
import ml_collections

from mmjax import config as config_lib
from mmjax import parallel
from mmjax.models.decoder import DecoderConfig
from mmjax.train import (config_checks, groups, init_from, report, stages,
                         trainer, workdir_lock)


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

  The run holds WORKDIR/.lock throughout (`workdir_lock`): one run at a time.

  Raises:
    ConfigError: a bad config value (before anything compiles).
    WorkdirError (a ConfigError): the workdir is a file or not writable,
      another run holds it, or it holds a run trained with another config
      (`check_run_config`; nothing in it is touched).
    IncompatibleCheckpointError: the workdir holds another model's
      checkpoint (nothing in it is touched).
    NonFiniteLossError: the loss became NaN/inf.

  `evaluator(name, built_task, result)` runs after each stage (the main job
  evaluates there) and adds `evaluator.report()` to report.md;
  `after_stage(name, built_task, result)` runs after it.
  """
  workdir = os.path.abspath(workdir)
  config_checks.validate_config(config)
  names = config_lib.stage_names(config)
  lock = workdir_lock.lock_for_run(workdir, names)
  try:
    return _run_locked(config, workdir, names, verbose, after_stage,
                       evaluator)
  finally:
    if lock is not None:
      lock.release()


def _run_locked(config, workdir, names, verbose, after_stage, evaluator
                ) -> list[tuple[str, Any, dict]]:
  """run_recipe in a workdir this run holds."""
  if config.matmul_precision != "default":
    jax.config.update("jax_default_matmul_precision", config.matmul_precision)
  mesh = parallel.make_mesh(config.mesh.to_dict())
  rules = parallel.logical_rules(config.mesh.get("rules", None))
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  for name in names:
    if config_lib.stage_batch_size(config, name) % shards:
      raise config_lib.ConfigError(
          f"stage {name}: batch size "
          f"{config_lib.stage_batch_size(config, name)} (config.batch_size "
          f"or config.stages.{name}.batch_size) must be divisible by the "
          f"data x fsdp mesh size {shards}")
  # Refuse an incompatible workdir before writing anything into it.
  model_shapes: dict[str, tuple[int, ...]] = {}
  for name in names:
    to_global = stages.stage_model(config, name).to_global
    abstract = trainer.abstract_params(
        stages.model_initializer(config, name)[1])
    trainer.check_workdir(workdir, name, abstract)
    # The model's own leaves (LoRA factors are no init_from target).
    model = {k: v for k, v in abstract.items() if k != "lora"}
    for path, leaf in groups.flatten(model).items():
      model_shapes.setdefault(to_global(path), tuple(leaf.shape))

  # The global parameter store: each stage starts from what the previous
  # one ended with (or from config.init_from), with a fresh optimizer. Read
  # and checked before config.json is written: a bad init_from leaves the
  # workdir as it was.
  store = init_from.load(config, model_shapes)
  main_process = jax.process_index() == 0
  check_run_config(config, workdir, write=main_process)
  done = []
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


# Settings a resumed run may change: they do not change what it computes
# (docs/getting-started.md). Dotted config paths; a prefix covers its keys.
RESUME_SETTINGS = ("progress_bar", "log_every", "eval_every", "eval",
                   "checkpoint.every", "checkpoint.keep",
                   "checkpoint.async_save", "mesh", "data.num_workers",
                   "data.data_dir", "data.cache_mb",
                   "model.lm.causal_chunks")
CONFIG_CHANGES_FILE = "config_changes.jsonl"


def _differences(old: Any, new: Any, prefix: str = ""
                 ) -> dict[str, tuple[Any, Any]]:
  """{dotted path: (old, new)} of the leaves where two JSON trees differ."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = {}
    for key in list(old) + [k for k in new if k not in old]:
      out.update(_differences(old.get(key, _ABSENT), new.get(key, _ABSENT),
                              f"{prefix}{key}."))
    return out
  return {} if old == new else {prefix[:-1]: (old, new)}


_ABSENT = object()  # a key one of the configs lacks


def _decoder_defaults(old: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """`upgrade_legacy`'s block_defaults for a config.json: DecoderConfig's
  defaults for its LM block (a run written before the recipes listed every
  field was built with them)."""
  defaults = json.loads(json.dumps(
      {f.name: f.default for f in dataclasses.fields(DecoderConfig)
       if f.default is not dataclasses.MISSING}))
  # configs/lm.py's model is the LM; the MLLM recipes' is model.lm.
  return {"model" if old.get("family") == "lm" else "model.lm": defaults}


def _json(value: Any) -> Any:
  return "(absent)" if value is _ABSENT else value


def _resume_setting(path: str) -> bool:
  return any(path == s or path.startswith(s + ".") for s in RESUME_SETTINGS)


def _has_checkpoint(workdir: str) -> bool:
  """Whether any stage of the workdir saved a step."""
  root = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(root):
    return False
  return any(step.isdigit()
             for stage in os.scandir(root) if stage.is_dir()
             for step in os.listdir(stage.path))


def _show(changes: dict[str, tuple[Any, Any]], limit: int) -> str:
  shown = "; ".join(f"{k}: {json.dumps(_json(a))} -> {json.dumps(_json(b))}"
                    for k, (a, b) in list(changes.items())[:limit])
  more = len(changes) - limit
  return shown + (f"; and {more} more" if more > 0 else "")


def check_run_config(config: ml_collections.ConfigDict, workdir: str,
                     write: bool = True) -> None:
  """Keeps WORKDIR/config.json the config of the run that trained.

  A workdir holding a checkpoint refuses a config that differs from its
  config.json except in RESUME_SETTINGS; those changes (and any change
  before a first checkpoint) are printed in one line, appended to
  WORKDIR/config_changes.jsonl and written to config.json. With `write`
  False (processes other than 0) it only checks.

  Raises:
    WorkdirError: the config differs in a setting that changes results.
  """
  path = os.path.join(workdir, config_lib.RUN_CONFIG_FILE)
  new = json.loads(json.dumps(config_lib.to_plain(config)))
  old = None
  if os.path.exists(path):
    try:
      with open(path, encoding="utf-8") as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      if write:
        print(f"WARNING: {path} is unreadable ({e}); writing this run's "
              "config", flush=True)
  if isinstance(old, dict):
    old = config_lib.upgrade_legacy(old, new, _decoder_defaults(old))
  changes = _differences(old, new) if isinstance(old, dict) else {}
  if isinstance(old, dict) and not changes:
    return
  refused = {k: v for k, v in changes.items() if not _resume_setting(k)}
  if refused and _has_checkpoint(workdir):
    raise workdir_lock.WorkdirError(
        f"--workdir={workdir} holds a run trained with another config "
        f"({_show(refused, 5)}). To resume it, rerun with the config in "
        f"{path}; to train with these settings, pass a new --workdir")
  if not write:
    return
  if changes:
    print(f"config changed since the last run in {workdir}: "
          f"{_show(changes, 8)} (logged in {CONFIG_CHANGES_FILE})", flush=True)
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    record = {"time": now, "changes": {
        k: [_json(a), _json(b)] for k, (a, b) in changes.items()}}
    with open(os.path.join(workdir, CONFIG_CHANGES_FILE), "a",
              encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
  config_lib.write_run_config(workdir, config)
