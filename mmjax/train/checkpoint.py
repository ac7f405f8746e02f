"""Orbax checkpoints of one stage: train state, data-iterator state, metadata.

Layout: WORKDIR/checkpoints/<stage>/<step>/{state,data,meta}. Saves are async
and atomic (orbax writes to a temporary directory, then renames). Restore
tries the newest step first and falls back to older ones when a step cannot
be read (a truncated or corrupt write, or a data-iterator state the iterator
refuses as damaged), with a warning.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import jax
import jax.experimental.multihost_utils  # pylint: disable=unused-import
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


# Replica-parallel saving splits each replicated shard among its replicas by
# slicing it eagerly: one small XLA compile per distinct slice at the first
# save (hundreds for a model with many small leaves; tens of seconds on CPU).
# That pays only for big arrays; smaller ones are written whole by one replica.
MIN_REPLICA_PARALLEL_SLICE_BYTES = 1 << 20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """orbax's standard array handlers, replica-parallel for big slices only."""
  get = ocp.type_handlers.get_type_handler
  arrays = ocp.type_handlers.ArrayHandler(
      min_slice_bytes_for_replica_parallel=MIN_REPLICA_PARALLEL_SLICE_BYTES,
      # Keep the default handler's per-array metadata store.
      array_metadata_store=getattr(get(jax.Array), "_array_metadata_store",
                                   None))
  registry = ocp.type_handlers.create_type_handler_registry(
      (jax.Array, arrays),
      *[(t, get(t)) for t in (int, float, np.number, np.ndarray)])
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class IncompatibleCheckpointError(ValueError):
  """The workdir holds a checkpoint of a model with other shapes."""


def param_shapes(tree) -> dict[str, list[int]]:
  """{'a/b/kernel': [d0, d1], ...} of a (possibly abstract) param tree."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key(k) for k in path): list(np.shape(leaf))
          for path, leaf in flat}


def _key(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def check_compatible(saved: Mapping[str, list[int]],
                     current: Mapping[str, list[int]], where: str) -> None:
  """Raises IncompatibleCheckpointError listing shape/name differences."""
  problems = []
  for name in sorted(set(saved) | set(current)):
    a, b = saved.get(name), current.get(name)
    if a != b:
      problems.append(f"  {name}: checkpoint {a}, config {b}")
  if problems:
    shown = "\n".join(problems[:8])
    more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
    raise IncompatibleCheckpointError(
        f"{where} holds a checkpoint of a different model "
        f"({len(problems)} parameters differ):\n{shown}{more}\n"
        "Use a new --workdir, or the config that wrote this checkpoint.")


class StageCheckpointer:
  """Saves and restores one stage's checkpoints."""

  def __init__(self, directory: str, *, keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    """A manager of `directory`.

    Args:
      read_only: only read (e.g. inspect a workdir before training): open
        without the cross-process barriers of creating, so in a multi-host
        run processes may open it whether or not they see the directory yet
        (one that another process is creating). Do not save through it.
    """
    self.directory = os.path.abspath(directory)
    # A reader neither creates the directory nor writes root metadata: both
    # end in a barrier of all processes.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only,
        save_root_metadata=not read_only,
        enable_async_checkpointing=async_save)
    handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state_handler = _state_handler()
    handlers.add("state", ocp.args.PyTreeSave, state_handler)
    handlers.add("state", ocp.args.PyTreeRestore, state_handler)
    self._manager = ocp.CheckpointManager(
        self.directory, handler_registry=handlers, options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Mapping[str, Any],
           meta: Mapping[str, Any]) -> None:
    """Starts an async save; blocks only while arrays copy to host memory."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state),
        data=ocp.args.JsonSave(dict(data_state)),
        meta=ocp.args.JsonSave(dict(meta))), force=True)

  def read_meta(self, step: int) -> dict[str, Any]:
    return self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def newest_meta(self) -> tuple[int, dict[str, Any]] | None:
    """(step, meta) of the newest readable step, or None."""
    for step in reversed(self.steps()):
      try:
        return step, self.read_meta(step)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("checkpoint %s/%d: metadata unreadable (%s)",
                        self.directory, step, _short(e))
    return None

  def restore_latest(
      self, abstract_state: Any,
      restore_data: Callable[[dict[str, Any]], None] | None = None,
      data_needed_below: int | None = None
  ) -> tuple[int, Any, dict, dict] | None:
    """Restores the newest good step onto `abstract_state`'s shardings.

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct with `.sharding`.
      restore_data: called with each candidate step's data-iterator state
        (e.g. the iterator's set_state); an error from it makes the step
        unreadable like a corrupt file, except IncompatibleCheckpointError,
        which propagates.
      data_needed_below: a step at or past it is not handed to
        `restore_data`: the stage has no batches left to replay from there
        (its last step), so its data settings may have changed since (a
        later stage's max_len) without refusing the finished stage.

    Returns:
      (step, state, data_state, meta), or None when no step is readable.
    """
    # Every array is read straight into its sharding on the current mesh,
    # whatever mesh wrote it.
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
    unreadable = []
    for step in reversed(self.steps()):
      try:
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                abstract_state, restore_args=restore_args),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        if restore_data is not None and (data_needed_below is None or
                                         step < data_needed_below):
          restore_data(out["data"])
        self._set_aside(unreadable)
        return step, out["state"], out["data"], out["meta"]
      except IncompatibleCheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        unreadable.append(step)
        logging.warning(
            "checkpoint %s/%d cannot be restored (%s); falling back to the "
            "previous step", self.directory, step, _short(e))
        print(f"WARNING: checkpoint step {step} in {self.directory} is "
              f"unreadable ({_short(e)}); trying an older one", flush=True)
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Renames unreadable steps to `corrupt-<step>` (kept for inspection).

    The run redoes those steps and must be able to save them again.
    """
    if not steps:
      return
    if jax.process_index() == 0:
      for step in steps:
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(self.directory, f"corrupt-{step}")
        n = 1
        while os.path.exists(dst):
          dst = os.path.join(self.directory, f"corrupt-{step}.{n}")
          n += 1
        os.rename(src, dst)
        print(f"WARNING: moved unreadable checkpoint {src} to {dst}",
              flush=True)
    jax.experimental.multihost_utils.sync_global_devices("ckpt_set_aside")
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def read_meta(step_dir: str) -> dict[str, Any] | None:
  """A stage step's metadata (STEP/meta/metadata), None if unreadable."""
  try:
    with open(os.path.join(step_dir, "meta", "metadata"),
              encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def finished_steps(workdir: str, stage: str,
                   on_warning: Callable[[str], None] | None = None
                   ) -> list[str]:
  """A stage's finished step directories (WORKDIR/checkpoints/STAGE/N),
  newest first: from its newest step with readable metadata back to its
  first unfinished one (a stage still running has none). A step whose
  metadata cannot be read is skipped (`on_warning` is told)."""
  directory = os.path.join(workdir, "checkpoints", stage)
  steps = sorted((int(s) for s in (os.listdir(directory)
                                   if os.path.isdir(directory) else [])
                  if s.isdigit()), reverse=True)
  found = []
  for step in steps:
    step_dir = os.path.join(directory, str(step))
    meta = read_meta(step_dir)
    if meta is None:
      if on_warning is not None:
        on_warning(f"checkpoint {step_dir} has no readable metadata "
                   "(truncated?); skipped")
      continue
    if not meta.get("finished"):
      break  # this stage did not finish after its newest finished step
    found.append(step_dir)
  return found


def _short(e: Exception) -> str:
  text = f"{type(e).__name__}: {e}"
  return text if len(text) < 300 else text[:300] + "..."
