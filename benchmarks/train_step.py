"""mmjax's trainer step on a synthetic batch: build, compile, time, measure.

Shared by benchmarks/train_throughput.py and benchmarks/scaling.py. The
step is the trainer's own (`trainer._make_train_step`): value and grad of
the LM loss over all parameters, global-norm clipping, AdamW, the
non-finite guard, state donated.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import common
from mmjax import parallel
from mmjax.models.mllm import MLLM, MLLMConfig, mllm_config_from_dict
from mmjax.train import groups, optim, trainer
from mmjax.train.stages import lm as stage_lm
from mmjax.models import build


@dataclasses.dataclass
class StepSetup:
  """What `build_step` returns.

  Attributes:
    step: the jitted (state, batch) -> (state, metrics).
    state: the initial train state (abstract ShapeDtypeStructs with
      shardings when built with abstract=True).
    batch: the synthetic batch on the mesh (or abstract).
    cfg: the model config.
    mesh: the device mesh.
    rules: the logical axis rules.
  """
  step: Any
  state: Any
  batch: Mapping[str, Any]
  cfg: MLLMConfig
  mesh: Any
  rules: Any

  @contextlib.contextmanager
  def context(self):
    """Where to trace the step: activation sharding constraints bind to the
    mesh, as in the trainer."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield


def random_state(shapes: Any, seed: int = 0) -> Any:
  """A train state filled on the host, without compiling the model's init.

  Weights ~ N(0, 1/fan_in), norm scales 1, biases, gates and optimizer
  moments 0, `nonfinite_step` -1. Timing does not depend on the values; a
  compiled init would cost as much compile time as the step itself.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "nonfinite_step" in name:
      return np.full(leaf.shape, -1, leaf.dtype)
    if ("opt_state" in name or "bias" in name or "alpha" in name
        or leaf.ndim < 1 or not jnp.issubdtype(leaf.dtype, jnp.floating)):
      return np.zeros(leaf.shape, leaf.dtype)
    if "scale" in name:
      return np.ones(leaf.shape, leaf.dtype)
    # Scanned blocks stack their leaves on a leading [n_layers] axis.
    first = 1 if "['layers']" in name and leaf.ndim > 2 else 0
    fan_in = leaf.shape[first] if leaf.ndim > 1 else leaf.shape[-1]
    return rng.normal(0, fan_in ** -0.5, leaf.shape).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def build_step(size: str, fusion: str, *, batch: int = common.BATCH,
               text_len: int = common.TEXT_LEN, dtype: str = "float32",
               remat: str = "none", image_size: int | None = None,
               latents: int = 64, scan_layers: bool = False,
               attention: str = "einsum",
               mesh_sizes: Mapping[str, int] | None = None, devices=None,
               abstract: bool = False, seed: int = 0,
               loss_chunk: int = 0) -> StepSetup:
  """The trainer's jitted step, its initial state and a synthetic batch.

  Args:
    size, fusion, dtype, remat, image_size, latents, scan_layers, attention:
      see common.model_config_dict.
    batch, text_len: examples per step, text tokens per example.
    loss_chunk: > 0 runs the LM head and loss that many positions at a time,
      skipping chunks without a loss token (`stage_lm.mllm_lm_loss`).
    mesh_sizes: {'data', 'fsdp', 'tensor'} (default: all devices on data).
    devices: the devices of the mesh (default all).
    abstract: state and batch are ShapeDtypeStructs carrying shardings,
      enough to lower and compile (memory studies); otherwise the state is
      `random_state` placed with the trainer's shardings.
  """
  cfg = mllm_config_from_dict(common.model_config_dict(
      size, fusion, dtype=dtype, image_size=image_size, latents=latents,
      remat=remat, scan_layers=scan_layers, attention=attention))
  model = MLLM(cfg)
  dummy = build.dummy_inputs(cfg, common.IMAGE_ID)
  init = lambda rng: model.init(rng, **dummy)["params"]

  def loss_fn(params, batch, rng):
    del rng
    return stage_lm.mllm_lm_loss(model, params, batch, loss_chunk)

  task = trainer.Task(init_params=init, loss_fn=loss_fn,
                      train_iterator=None, eval_batches=None)
  stage = ml_collections.ConfigDict(dict(
      steps=10 ** 6,
      optimizer=dict(name="adamw", lr=1e-4, b1=0.9, b2=0.95, eps=1e-8,
                     weight_decay=0.01, grad_clip=1.0),
      schedule=dict(name="constant")))
  tx, schedule = optim.make_optimizer(stage)

  def init_state(rng):
    params = init(rng)
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": tx.init(params),
            "nonfinite_step": jnp.full((), -1, jnp.int32)}

  mesh = parallel.make_mesh(
      mesh_sizes or {"data": -1, "fsdp": 1, "tensor": 1}, devices)
  rules = parallel.logical_rules()
  batch_np = common.synthetic_batch(cfg, batch, text_len, seed)
  batch_shardings = parallel.batch_shardings(batch_np, mesh, rules)
  boxed = jax.eval_shape(init_state, jax.random.key(seed))
  shardings = parallel.logical_shardings(boxed, mesh, rules)
  shapes = nn.unbox(boxed)
  if abstract:
    state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        shapes, shardings)
    device_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                            sharding=batch_shardings[k])
                    for k, v in batch_np.items()}
  else:
    state = jax.device_put(random_state(shapes, seed), shardings)
    device_batch = parallel.shard_batch(batch_np, mesh, rules)
  train = list(groups.flatten(state["params"]))
  step = trainer._make_train_step(  # pylint: disable=protected-access
      task, train, tx, schedule, seed, shardings, batch_shardings)
  return StepSetup(step, state, device_batch, cfg, mesh, rules)


def compiled_memory(compiled) -> dict[str, float]:
  """Bytes XLA reserves for one step, per device ('mem_peak': arguments +
  outputs - aliased (donated) + temporaries)."""
  mem = compiled.memory_analysis()
  if mem is None:
    return {}
  out = {name: float(getattr(mem, name + "_size_in_bytes", 0)) for name in
         ("argument", "output", "alias", "temp")}
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return {"mem_" + k: v for k, v in out.items()}


def xla_flops(compiled) -> float:
  """XLA's own FLOP count of a compiled program (per device)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0))


def compile_step(setup: StepSetup) -> tuple[Any, float]:
  """(compiled step, seconds to lower and compile)."""
  t0 = time.perf_counter()
  with setup.context():
    compiled = setup.step.lower(setup.state, setup.batch).compile()
  return compiled, time.perf_counter() - t0


def measure(size: str, fusion: str, steps: int, warmup: int,
            count_flops: bool = True, **kwargs) -> dict[str, Any]:
  """Compiles and times one configuration; returns a result row.

  Args:
    size, fusion: the model.
    steps, warmup: timed and untimed steps.
    count_flops: also trace the step once more to count its matmuls.
    **kwargs: passed to build_step.
  """
  setup = build_step(size, fusion, **kwargs)
  compiled, compile_s = compile_step(setup)
  holder = {"state": setup.state}
  losses_seen = []

  def one_step():
    holder["state"], metrics = compiled(holder["state"], setup.batch)
    # Blocks until the step is done; a logger reads the loss too.
    losses_seen.append(float(metrics["loss"]))
  times, cpu = common.time_steps_cpu(one_step, steps, warmup)
  b, seq_len = setup.batch["tokens"].shape
  row = dict(size=size, fusion=fusion, batch=b, seq_len=seq_len,
             compile_s=compile_s, devices=setup.mesh.size,
             # cost_analysis is per device; every device runs the whole
             # model on its slice of the batch.
             xla_flops=xla_flops(compiled) * setup.mesh.size,
             first_loss=losses_seen[0], last_loss=losses_seen[-1],
             params=sum(x.size for x in jax.tree.leaves(
                 holder["state"]["params"])),
             **common.summarize_times(times, cpu), **compiled_memory(compiled),
             **common.rss_bytes())
  if count_flops:
    with setup.context():
      jaxpr = jax.make_jaxpr(setup.step)(holder["state"], setup.batch)
    row["jaxpr_flops"] = common.dot_flops(jaxpr.jaxpr)
  cfg = setup.cfg
  if fusion == "projection" and cfg.projector == "mlp":
    row["analytic"] = common.analytic_train_flops(cfg, b, seq_len)
    row["model_flops"] = row["analytic"]["total"]
    row["flops_source"] = "analytic"
  elif "jaxpr_flops" in row:  # no closed form here: the step's matmuls
    row["model_flops"] = row["jaxpr_flops"]
    row["flops_source"] = "jaxpr"
  else:
    row["model_flops"] = row["xla_flops"]
    row["flops_source"] = "xla"
  row["examples_per_s"] = b / row["step_s"]
  row["tokens_per_s"] = b * seq_len / row["step_s"]
  row["gflops"] = row["model_flops"] / row["step_s"] / 1e9
  return row
