"""The one training loop: every stage of every recipe runs through `run_stage`.

A stage is a `Task` (model, loss, data) plus the stage's config (optimizer,
schedule, length). The loop owns everything else: sharded init, the jitted
step with buffer donation, metrics, progress, evaluation, checkpoints,
resume to the exact batch, preemption (SIGTERM) and the non-finite guard.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from absl import logging
from jax.sharding import Mesh

from mmjax import parallel
from mmjax.train import checkpoint as ckpt_lib
from mmjax.train import metrics as metrics_lib
from mmjax.train import optim

# (params, batch, rng) -> (scalar loss, {name: scalar})
LossFn = Callable[[Any, Mapping[str, jax.Array], jax.Array],
                  tuple[jax.Array, dict[str, jax.Array]]]


class NonFiniteLossError(RuntimeError):
  """The loss or gradient became NaN/inf; no checkpoint was written after."""


class Preempted(SystemExit):
  """SIGTERM arrived; a checkpoint of the current step was written."""


@dataclasses.dataclass
class Task:
  """What a stage trains: everything the loop does not own.

  Attributes:
    init_params: rng -> params boxed with logical axis names (model.init).
    loss_fn: (params, batch, rng) -> (loss, metrics), batch process-global.
    train_iterator: endless iterator of process-local numpy batches with
      get_state()/set_state() (a grain DatasetIterator).
    eval_batches: () -> iterable of process-local held-out batches, or None.
    tokens_per_example: for the tokens/s metric.
  """
  init_params: Callable[[jax.Array], Any]
  loss_fn: LossFn
  train_iterator: Any
  eval_batches: Callable[[], Iterable[Mapping[str, np.ndarray]]] | None
  tokens_per_example: int = 0


@dataclasses.dataclass
class StageResult:
  params: Any
  step: int
  final_metrics: dict[str, float]
  checkpoint_dir: str
  resumed_from: int | None


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(workdir, "checkpoints", stage)


def abstract_params(init_params: Callable[[jax.Array], Any]) -> Any:
  return nn.unbox(jax.eval_shape(init_params, jax.random.key(0)))


def check_workdir(workdir: str, stage: str, abstract: Any) -> None:
  """Refuses (before anything is written) a checkpoint of other shapes."""
  directory = stage_dir(workdir, stage)
  if not os.path.isdir(directory):
    return
  newest = ckpt_lib.StageCheckpointer(directory).newest_meta()
  if newest is None:
    return
  ckpt_lib.check_compatible(newest[1]["param_shapes"],
                            ckpt_lib.param_shapes(abstract),
                            f"{directory}/{newest[0]}")


def _trim_metrics(workdir: str, stage: str, step: int) -> None:
  """Drops this stage's records past `step` (they are about to be redone)."""
  records = metrics_lib.read_metrics(workdir)
  keep = [r for r in records if r.get("stage") != stage or r["step"] <= step]
  if jax.process_index() == 0 and len(keep) != len(records):
    import json  # pylint: disable=g-import-not-at-top
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in keep)
    os.replace(path + ".tmp", path)


def run_stage(config: ml_collections.ConfigDict, stage_name: str, task: Task,
              workdir: str, mesh: Mesh, rules) -> StageResult:
  """Trains one stage to config.stages[stage_name].steps, resuming if needed."""
  stage = config.stages[stage_name]
  total = int(stage.steps)
  tx, schedule = optim.make_optimizer(stage)
  main_process = jax.process_index() == 0

  def init_state(rng):
    params = task.init_params(rng)
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": tx.init(params),
            "nonfinite_step": jnp.full((), -1, jnp.int32)}

  rng = jax.random.key(config.seed)
  abstract = jax.eval_shape(init_state, rng)
  shardings = parallel.logical_shardings(abstract, mesh, rules)
  abstract = nn.unbox(abstract)
  shapes = ckpt_lib.param_shapes(abstract["params"])
  directory = stage_dir(workdir, stage_name)
  check_workdir(workdir, stage_name, abstract["params"])

  ckpt = ckpt_lib.StageCheckpointer(
      directory, keep=config.checkpoint.keep,
      async_save=config.checkpoint.async_save)
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, shardings)
  restored = ckpt.restore_latest(target)
  resumed_from = None
  final_metrics: dict[str, float] = {}
  if restored is None:
    state, _ = parallel.sharded_init(init_state, mesh, rules, rng)
  else:
    resumed_from, state, data_state, saved_meta = restored
    task.train_iterator.set_state(data_state)
    final_metrics = dict(saved_meta.get("metrics", {}))
    _trim_metrics(workdir, stage_name, resumed_from)
    if main_process:
      print(f"[{stage_name}] resuming from step {resumed_from} "
            f"({directory})", flush=True)

  if main_process:
    n_params = sum(int(np.prod(a.shape))
                   for a in jax.tree.leaves(abstract["params"]))
    mesh_text = " ".join(f"{k}={v}" for k, v in mesh.shape.items())
    print(f"[{stage_name}] {n_params / 1e6:.2f}M params; mesh {mesh_text} "
          f"over {jax.device_count()} {jax.devices()[0].platform} device(s); "
          f"{total} steps of batch {config.batch_size}", flush=True)
  batch_sharding = parallel.batch_sharding(mesh, rules)
  train_step = _make_train_step(task.loss_fn, tx, schedule, config.seed,
                                shardings, batch_sharding)
  eval_step = _make_eval_step(task.loss_fn, shardings["params"],
                              batch_sharding)

  writer = metrics_lib.MetricWriter(workdir, stage_name)
  meta = {"stage": stage_name, "total_steps": total, "param_shapes": shapes,
          "family": config.get("family", "")}
  step = int(jax.device_get(state["step"]))

  def evaluate():
    if task.eval_batches is None:
      return {}
    sums, n = {}, 0
    for batch in task.eval_batches():
      m = eval_step(state["params"], parallel.shard_batch(batch, mesh, rules))
      for k, v in jax.device_get(m).items():
        sums[k] = sums.get(k, 0.0) + float(v)
      n += 1
    return {f"eval_{k}": v / max(n, 1) for k, v in sums.items()}

  def guard_finite():
    bad = int(jax.device_get(state["nonfinite_step"]))
    if bad >= 0:
      ckpt.wait()
      raise NonFiniteLossError(
          f"stage {stage_name!r}: the loss or gradient became non-finite at "
          f"step {bad}; stopped without checkpointing past it. Lower the "
          f"learning rate (config.stages.{stage_name}.optimizer.lr="
          f"{stage.optimizer.lr}) or check the data of that step.")

  def save():
    guard_finite()
    ckpt.save(step, state, task.train_iterator.get_state(),
              dict(meta, finished=step >= total, metrics=final_metrics))

  # SIGTERM (preemption): finish the current step, checkpoint, exit.
  preempt = {"flag": False}
  previous_handler = signal.getsignal(signal.SIGTERM)
  signal.signal(signal.SIGTERM,
                lambda *_: preempt.__setitem__("flag", True))

  bar = tqdm.tqdm(total=total, initial=step, desc=stage_name, unit="step",
                  disable=not (main_process and config.get("progress_bar",
                                                           True)),
                  mininterval=1.0, dynamic_ncols=True)
  pending: list[dict[str, jax.Array]] = []
  last_log_time, last_log_step = time.perf_counter(), step
  try:
    while step < total:
      batch = parallel.shard_batch(next(task.train_iterator), mesh, rules)
      state, step_metrics = train_step(state, batch)
      step += 1
      pending.append(step_metrics)
      bar.update(1)
      if step % config.log_every == 0 or step == total:
        guard_finite()
        now = time.perf_counter()
        host = jax.device_get(pending)
        logged = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        dt = (now - last_log_time) / max(step - last_log_step, 1)
        logged["step_time_s"] = dt
        if task.tokens_per_example:
          logged["tokens_per_s"] = (config.batch_size *
                                    task.tokens_per_example / dt)
        pending, last_log_time, last_log_step = [], now, step
        final_metrics.update(logged)
        bar.set_postfix(loss=f"{logged['loss']:.4f}", refresh=False)
        writer.write(step, logged)
      if config.eval_every and step % config.eval_every == 0 and step < total:
        ev = evaluate()
        if ev:
          writer.write(step, ev)
          final_metrics.update(ev)
      if step % config.checkpoint.every == 0 and step < total:
        save()
      if preempt["flag"]:
        save()
        raise Preempted(
            f"[{stage_name}] SIGTERM: saved step {step} to {directory}; "
            "run the same command again to resume")
    if resumed_from is None or resumed_from < total:
      ev = evaluate()
      if ev:
        writer.write(step, ev)
        final_metrics.update(ev)
      save()
  finally:
    # On any exit, let in-flight async saves land: a crash loses nothing
    # that was already being written.
    ckpt.close()
    bar.close()
    writer.close()
    signal.signal(signal.SIGTERM, previous_handler)
  return StageResult(params=state["params"], step=step,
                     final_metrics=final_metrics, checkpoint_dir=directory,
                     resumed_from=resumed_from)


def _make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation,
                     schedule: optax.Schedule, seed: int, shardings,
                     batch_sharding):
  """jit((state, batch) -> (state, metrics)), state donated."""

  def step_fn(state, batch):
    step = state["step"]
    rng = jax.random.fold_in(jax.random.key(seed), step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, metrics), grads = grad_fn(state["params"], batch, rng)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # A non-finite step leaves the state as it was, so nothing poisoned can
    # reach a checkpoint; the host raises at its next check.
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(finite, n, o), new, old)
    first_bad = jnp.where((state["nonfinite_step"] < 0) & ~finite, step,
                          state["nonfinite_step"])
    new_state = {"step": step + 1,
                 "params": keep(params, state["params"]),
                 "opt_state": keep(opt_state, state["opt_state"]),
                 "nonfinite_step": first_bad}
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                   lr=schedule(step))
    return new_state, metrics

  return jax.jit(step_fn, in_shardings=(shardings, batch_sharding),
                 out_shardings=(shardings, None), donate_argnums=0)


def _make_eval_step(loss_fn: LossFn, param_shardings, batch_sharding):
  def eval_fn(params, batch):
    _, metrics = loss_fn(params, batch, jax.random.key(0))
    return metrics
  return jax.jit(eval_fn, in_shardings=(param_shardings, batch_sharding))
