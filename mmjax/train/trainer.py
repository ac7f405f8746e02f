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
from jax.sharding import Mesh

from mmjax import config as config_lib
from mmjax import parallel
from mmjax.data.text_pipeline import DataStateError
from mmjax.train import checkpoint as ckpt_lib
from mmjax.train import groups
from mmjax.train import metrics as metrics_lib
from mmjax.train import optim

LOSS_STATE = "loss_state"  # Metrics key of Task.loss_state's new value.
# (params, batch, rng[, ref][, loss_state]) -> (scalar loss, {name: scalar})
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
      JSON get_state() / set_state(); set_state raises
      text_pipeline.DataStateError for a damaged state (the restore then
      uses the previous checkpoint).
    eval_batches: () -> iterable of process-local held-out batches, or None.
    tokens_per_example: for the tokens/s metric.
  """
  init_params: Callable[[jax.Array], Any]
  loss_fn: LossFn
  train_iterator: Any
  eval_batches: Callable[[], Iterable[Mapping[str, np.ndarray]]] | None
  tokens_per_example: int = 0
  # Model path -> path in the recipe's global parameter store.
  to_global: Callable[[str], str] = lambda path: path
  # Preference losses also get the frozen reference parameters (the
  # model's parameters at stage start): loss_fn(params, batch, rng, ref).
  needs_ref: bool = False
  # Extra per-stage numbers for metrics (e.g. skipped records); () -> dict.
  data_stats: Callable[[], Mapping[str, float]] | None = None
  # params -> the model's parameters handed on (LoRA merges its factors).
  export_params: Callable[[Any], Any] | None = None
  # Initial value of a small pytree the loss reads and updates every step
  # (MPO's running reward mean), kept in the train state and checkpointed.
  # When set, loss_fn takes it as its last argument and returns the new value
  # as metrics[LOSS_STATE]; a non-finite step keeps the old one.
  loss_state: Any = None


@dataclasses.dataclass
class StageResult:
  params: Any
  global_params: dict[str, Any]   # flat {global path: array}: next stage's
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
  # Read-only: no barrier, so processes agree whatever directory they see.
  newest = ckpt_lib.StageCheckpointer(directory, read_only=True).newest_meta()
  if newest is None:
    return
  ckpt_lib.check_compatible(newest[1]["param_shapes"],
                            ckpt_lib.param_shapes(abstract),
                            f"{directory}/{newest[0]}")


def _trim_metrics(workdir: str, stage: str, step: int, recompile: bool
                  ) -> None:
  """Makes metrics.jsonl hold each (stage, step, kind) once as this stage
  (re)starts at `step`.

  Drops this stage's records past `step` (they are about to be redone), its
  compile record at `step` when that step compiles again (`recompile`),
  repeats of a (stage, step, kind) (earlier runs' leftovers; the first is
  kept) and lines that do not parse (counted in a warning). Process 0 only.
  """
  if jax.process_index() != 0:
    return
  records, skipped = metrics_lib.parse_metrics(workdir)

  def redone(r):
    if r.get("stage") != stage or not isinstance(r.get("step"), int):
      return False
    kind = metrics_lib.record_kind(r)
    return r["step"] > step or (recompile and r["step"] == step and
                                kind == "compile")

  seen, keep = set(), []
  for r in records:
    key = (r.get("stage"), r.get("step"), metrics_lib.record_kind(r))
    if not redone(r) and key not in seen:
      seen.add(key)
      keep.append(r)
  if skipped:
    metrics_lib.warn_skipped(workdir, skipped)
  if len(keep) != len(records) or skipped:
    import json  # pylint: disable=g-import-not-at-top
    path = os.path.join(workdir, metrics_lib.METRICS_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in keep)
    os.replace(path + ".tmp", path)


def _data_state_restorer(iterator) -> Callable[[Mapping[str, Any]], None]:
  """`iterator.set_state`, for StageCheckpointer.restore_latest.

  A damaged state (DataStateError) propagates as is: its step counts as
  unreadable. Any other ValueError says the state belongs to another data
  pipeline, which every step shares: IncompatibleCheckpointError, so the
  run stops instead of falling back past every checkpoint.
  """

  def restore(data_state: Mapping[str, Any]) -> None:
    try:
      iterator.set_state(data_state)
    except DataStateError:
      raise
    except ValueError as e:
      raise ckpt_lib.IncompatibleCheckpointError(str(e)) from e
  return restore


@dataclasses.dataclass
class TrainStep:
  """A stage's sharded train step, built but not compiled (`build_train_step`).

  Attributes:
    model_flat: {model path: abstract leaf} of the stage's model.
    train: the model paths the stage trains.
    rng: the init key (from config.seed).
    init_state: (rng, given, carry) -> the boxed train state.
    given / carry: store leaves the model takes / carries through.
    abstract: the unboxed abstract train state (ShapeDtypeStructs).
    shardings: its NamedShardings on the mesh.
    batch_sharding: the sharding of a batch-major array.
    make_step: {batch key: sharding} (`parallel.batch_shardings` of a
      batch) -> jit((state, batch) -> (state, metrics)), state donated.
    tx, schedule: the stage's optimizer and learning-rate schedule.
  """
  model_flat: dict[str, Any]
  train: list[str]
  rng: jax.Array
  init_state: Callable[..., Any]
  given: dict[str, Any]
  carry: dict[str, Any]
  abstract: Any
  shardings: Any
  batch_sharding: Any
  make_step: Callable[[Any], Any]
  tx: optax.GradientTransformation
  schedule: optax.Schedule


def build_train_step(config: ml_collections.ConfigDict, stage_name: str,
                     task: Task, mesh: Mesh, rules,
                     store: Mapping[str, Any] | None = None) -> TrainStep:
  """The train state's layout and the jitted step of one stage, as
  `run_stage` trains it; nothing is initialised or compiled (the fit
  planner, mmjax/train/fit_plan.py, lowers the same step)."""
  stage = config.stages[stage_name]
  store = dict(store or {})
  rng = jax.random.key(config.seed)
  model_flat = groups.flatten(nn.unbox(jax.eval_shape(task.init_params, rng)))
  global_of = {p: task.to_global(p) for p in model_flat}
  trained = set(groups.trainable_paths(
      global_of.values(), stage.get("trainable", ("all",)),
      where=f"stages.{stage_name}.trainable"))
  train = [p for p in model_flat if global_of[p] in trained]
  tx, schedule = optim.make_optimizer(
      stage, optim.lr_multipliers(stage, {p: global_of[p] for p in train}))
  # Leaves the model takes from the store (shape-checked) and those it
  # carries through untouched.
  _, taken = groups.overlay(model_flat, store, task.to_global)
  given = {p: store[task.to_global(p)] for p in model_flat
           if task.to_global(p) in store}
  carry = {g: v for g, v in store.items() if g not in set(taken)}

  def init_state(rng, given, carry):
    params = groups.flatten(task.init_params(rng))
    for path, value in given.items():
      box = params[path]
      params[path] = (box.replace_boxed(value)
                      if isinstance(box, nn.LogicallyPartitioned) else value)
    trainable, _ = groups.split(params, train)
    params = groups.unflatten(params)
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": tx.init(groups.unflatten(trainable)),
             "nonfinite_step": jnp.full((), -1, jnp.int32),
             "carry": groups.unflatten(carry)}
    if task.needs_ref:
      state["ref"] = params
    if task.loss_state is not None:
      state[LOSS_STATE] = jax.tree.map(jnp.asarray, task.loss_state)
    return state

  abstract = jax.eval_shape(init_state, rng, given, carry)
  shardings = parallel.logical_shardings(abstract, mesh, rules)
  abstract = nn.unbox(abstract)
  batch_sharding = parallel.batch_sharding(mesh, rules)
  return TrainStep(
      model_flat=model_flat, train=train, rng=rng, init_state=init_state,
      given=given, carry=carry, abstract=abstract, shardings=shardings,
      batch_sharding=batch_sharding,
      make_step=lambda batch_shardings: _make_train_step(
          task, train, tx, schedule, config.seed, shardings, batch_shardings),
      tx=tx, schedule=schedule)


def run_stage(config: ml_collections.ConfigDict, stage_name: str, task: Task,
              workdir: str, mesh: Mesh, rules,
              store: Mapping[str, Any] | None = None) -> StageResult:
  """Trains one stage to config.stages[stage_name].steps, resuming if needed.

  Args:
    store: the global parameter store handed over by the previous stage
      (flat {path: array}); the model takes the leaves it has, initialises
      the rest, and carries the leaves it does not use.
  """
  stage = config.stages[stage_name]
  total = int(stage.steps)
  batch_size = config_lib.stage_batch_size(config, stage_name)
  main_process = jax.process_index() == 0
  built = build_train_step(config, stage_name, task, mesh, rules, store)
  model_flat, train, rng = built.model_flat, built.train, built.rng
  init_state, given, carry = built.init_state, built.given, built.carry
  abstract, shardings = built.abstract, built.shardings
  shapes = ckpt_lib.param_shapes(abstract["params"])
  directory = stage_dir(workdir, stage_name)
  check_workdir(workdir, stage_name, abstract["params"])

  ckpt = ckpt_lib.StageCheckpointer(
      directory, keep=config.checkpoint.keep,
      async_save=config.checkpoint.async_save)
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, shardings)
  # The data state is restored with the step: a damaged one makes the step
  # unreadable, so the previous good step is used.
  restored = ckpt.restore_latest(
      target, restore_data=_data_state_restorer(task.train_iterator),
      data_needed_below=total)
  resumed_from = None
  final_metrics: dict[str, float] = {}
  if restored is None:
    state, _ = parallel.sharded_init(init_state, mesh, rules, rng, given,
                                     carry)
    _trim_metrics(workdir, stage_name, 0, recompile=True)
  else:
    resumed_from, state, _, saved_meta = restored
    final_metrics = dict(saved_meta.get("metrics", {}))
    _trim_metrics(workdir, stage_name, resumed_from,
                  recompile=resumed_from < total)
    if main_process:
      print(f"[{stage_name}] resuming from step {resumed_from} "
            f"({directory})", flush=True)

  if main_process:
    n_params = sum(int(np.prod(a.shape))
                   for a in jax.tree.leaves(abstract["params"]))
    n_train = sum(int(np.prod(model_flat[p].shape)) for p in train)
    mesh_text = " ".join(f"{k}={v}" for k, v in mesh.shape.items())
    print(f"[{stage_name}] {n_params / 1e6:.2f}M params "
          f"({n_train / 1e6:.2f}M trained); mesh {mesh_text} "
          f"over {jax.device_count()} {jax.devices()[0].platform} device(s); "
          f"{total} steps of batch {batch_size}", flush=True)
  compiled_steps, eval_steps = {}, {}

  def train_step(state, batch):
    """Compiles once per batch signature (bucketed lengths) and logs the
    compiled step's FLOPs and memory the first time."""
    key = tuple((k, v.shape, str(v.dtype)) for k, v in sorted(batch.items()))
    if key not in compiled_steps:
      t0 = time.perf_counter()
      jitted = built.make_step(parallel.batch_shardings(batch, mesh, rules))
      with parallel.sharding_context(mesh, rules):  # activation constraints
        compiled = jitted.lower(state, batch).compile()
      compiled_steps[key] = compiled
      writer.write(step, _compiled_stats(compiled, time.perf_counter() - t0))
    return compiled_steps[key](state, batch)

  def eval_step(state, batch):
    """The eval step for the batch's keys (their shardings)."""
    keys = tuple(sorted((k, len(v.shape)) for k, v in batch.items()))
    if keys not in eval_steps:
      eval_steps[keys] = _make_eval_step(
          task, shardings, parallel.batch_shardings(batch, mesh, rules))
    return eval_steps[keys](state, batch)

  writer = metrics_lib.MetricWriter(workdir, stage_name)
  meta = {"stage": stage_name, "total_steps": total, "param_shapes": shapes,
          "family": config.get("family", "")}
  step = int(jax.device_get(state["step"]))

  def evaluate():
    if task.eval_batches is None:
      return {}
    sums, n = {}, 0
    for batch in task.eval_batches():
      with parallel.sharding_context(mesh, rules):
        m = eval_step(state, parallel.shard_batch(batch, mesh, rules))
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

  saved = {"step": resumed_from}

  def save():
    if saved["step"] == step:  # e.g. SIGTERM right after a periodic save
      return
    guard_finite()
    ckpt.save(step, state, task.train_iterator.get_state(),
              dict(meta, finished=step >= total, metrics=final_metrics))
    saved["step"] = step

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
        if task.data_stats is not None:
          logged.update({f"data/{k}": float(v)
                         for k, v in task.data_stats().items()})
        if task.tokens_per_example:
          logged["tokens_per_s"] = (batch_size *
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
  params = (task.export_params(state["params"]) if task.export_params
            else state["params"])
  global_params = {task.to_global(p): v for p, v in
                   groups.flatten(params).items()}
  global_params.update(groups.flatten(state["carry"]))
  return StageResult(params=params, global_params=global_params,
                     step=step,
                     final_metrics=final_metrics, checkpoint_dir=directory,
                     resumed_from=resumed_from)


def apply_if_finite(finite: jax.Array, update: Callable[[Any], Any],
                    operand: Any, backend: str | None = None) -> Any:
  """`update(operand)` when `finite`, else `operand` unchanged.

  On CPU a `lax.cond`: selecting between the new and old values leaf by
  leaf (`jnp.where`) made XLA:CPU copy every donated optimizer-moment
  buffer first (188 copies, ~19 ms of the `small` step's thread time),
  while the conditional updates them in place. Elsewhere the select: a GPU
  conditional reads its predicate on the host, a sync every step.
  """
  if (backend or jax.default_backend()) == "cpu":
    return jax.lax.cond(finite, update, lambda operand: operand, operand)
  return _select(finite, update(operand), operand)


def _select(finite: jax.Array, new: Any, old: Any) -> Any:
  """`new` where `finite`, else `old`, leaf by leaf."""
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def _make_train_step(task: Task, train: list[str],
                     tx: optax.GradientTransformation,
                     schedule: optax.Schedule, seed: int, shardings,
                     batch_sharding):
  """jit((state, batch) -> (state, metrics)), state donated.

  Gradients are taken with respect to the trainable leaves only, so XLA
  computes no weight gradient for a frozen one and the optimizer state
  covers only the trainable leaves.
  """

  # Accepts the grad_norm= the update passes even when tx is a plain
  # GradientTransformation (make_optimizer's chain already does).
  tx = optax.with_extra_args_support(tx)

  def step_fn(state, batch):
    step = state["step"]
    rng = jax.random.fold_in(jax.random.key(seed), step)
    trainable, frozen = groups.split(groups.flatten(state["params"]), train)
    extra = _loss_extra_args(task, state)

    def loss_of(trained):
      params = groups.unflatten({**frozen, **groups.flatten(trained)})
      return task.loss_fn(params, batch, rng, *extra)

    current = groups.unflatten(trainable)
    (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(
        current)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(operand):
      params, opt_state = operand
      # The clip reuses grad_norm (optim.clip_by_global_norm) rather than
      # reducing every leaf again inside this branch.
      updates, opt_state = tx.update(grads, opt_state, params,
                                     grad_norm=grad_norm)
      return optax.apply_updates(params, updates), opt_state
    # A non-finite step leaves the state as it was, so nothing poisoned can
    # reach a checkpoint; the host raises at its next check.
    trained, opt_state = apply_if_finite(finite, update,
                                         (current, state["opt_state"]))
    first_bad = jnp.where((state["nonfinite_step"] < 0) & ~finite, step,
                          state["nonfinite_step"])
    params = groups.unflatten({**frozen, **groups.flatten(trained)})
    new_state = dict(state, step=step + 1, params=params,
                     opt_state=opt_state, nonfinite_step=first_bad)
    if task.loss_state is not None:
      metrics = dict(metrics)
      new_state[LOSS_STATE] = _select(finite, metrics.pop(LOSS_STATE),
                                      state[LOSS_STATE])
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                   lr=schedule(step))
    return new_state, metrics

  return jax.jit(step_fn, in_shardings=(shardings, batch_sharding),
                 out_shardings=(shardings, None), donate_argnums=0)


def _compiled_stats(compiled, seconds: float) -> dict[str, float]:
  """Per-device FLOPs and bytes of a compiled step (XLA's own accounting)."""
  stats = {"compile_time_s": seconds}
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost and "flops" in cost:
    stats["step_flops"] = float(cost["flops"])
  mem = compiled.memory_analysis()
  if mem is not None:
    for name in ("argument_size_in_bytes", "output_size_in_bytes",
                 "temp_size_in_bytes"):
      if hasattr(mem, name):
        stats["step_" + name.replace("_size_in", "")] = float(
            getattr(mem, name))
  return stats


def _loss_extra_args(task: Task, state) -> tuple[Any, ...]:
  """loss_fn's arguments after (params, batch, rng): [ref] [loss_state]."""
  extra = (state["ref"],) if task.needs_ref else ()
  if task.loss_state is not None:
    extra += (state[LOSS_STATE],)
  return extra


def _make_eval_step(task: Task, shardings, batch_sharding):
  def eval_fn(state, batch):
    _, metrics = task.loss_fn(state["params"], batch, jax.random.key(0),
                              *_loss_extra_args(task, state))
    return {k: v for k, v in metrics.items() if k != LOSS_STATE}
  return jax.jit(eval_fn, in_shardings=(shardings, batch_sharding))
