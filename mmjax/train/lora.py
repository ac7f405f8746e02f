"""LoRA: low-rank adapters on frozen kernels, merged into the weights on the fly.

A stage with `lora.rank > 0` trains, for every kernel matching
`lora.targets` (globs over global paths, default the LM's attention and MLP
kernels), two factors under the top-level name `lora`:

  W' = W + (alpha / rank) * reshape(A @ B)     A: f32[in, rank]  B: f32[rank, out]

`in` is the kernel's leading input dimension(s) and `out` the rest, read from
the logical axis names: a kernel whose first axis is 'embed' maps it to the
other axes (q/k/v, gate/up: in = 'embed'); any other one maps all but its last
axis to the last (attention output, MLP down: out = 'embed'). A starts
random (N(0, 1/in)) and B at zero, so the merged model equals the base model at
the stage's start (and a preference stage's reference is the base model).

The merge happens inside the loss, so the base kernels get no gradient and no
optimizer state when `trainable` names only `lora` (plus, e.g., `connector`).
At the end of the stage the merged kernels go to the next stage; the factors
stay in the stage's own checkpoints.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mmjax.config import ConfigError
from mmjax.train import groups

DEFAULT_TARGETS = ("llm/layers_*/attn/*/kernel", "llm/layers_*/mlp/*/kernel")


def lora_config(stage: ml_collections.ConfigDict) -> tuple[int, float, tuple]:
  """(rank, alpha, targets) of a stage; rank 0 = no LoRA."""
  cfg = stage.get("lora", None)
  if not cfg or not cfg.get("rank", 0):
    return 0, 0.0, ()
  return (int(cfg.rank), float(cfg.get("alpha", 2.0 * cfg.rank)),
          tuple(cfg.get("targets", None) or DEFAULT_TARGETS))


def split_dims(names: tuple[str, ...] | None, ndim: int) -> int:
  """How many leading axes of a kernel are its input (see module doc)."""
  if names and names[0] == "embed":
    return 1
  return ndim - 1


def _plan(boxed: Mapping[str, Any], to_global, targets) -> dict[str, tuple]:
  """{model path: (shape, in_dims)} of the kernels LoRA adapts."""
  plan = {}
  for path, leaf in boxed.items():
    names = leaf.names if isinstance(leaf, nn.LogicallyPartitioned) else None
    value = nn.unbox(leaf)
    if value.ndim >= 2 and any(groups.matches(to_global(path), t)
                               for t in targets):
      plan[path] = (tuple(value.shape), split_dims(names, value.ndim))
  if not plan:
    raise ConfigError(f"lora.targets={list(targets)} match no kernel of "
                      "this stage's model (globs over global paths such as "
                      "'llm/layers_0/attn/q/kernel')")
  return plan


def merge(params: Mapping[str, Any], alpha: float, rank: int
          ) -> dict[str, Any]:
  """The model's parameters with every adapted kernel merged; no `lora`."""
  flat = groups.flatten({k: v for k, v in params.items() if k != "lora"})
  factors = groups.flatten(params.get("lora", {}))
  scale = alpha / rank
  for a_path in [p for p in factors if p.endswith("/a")]:
    path = a_path[:-2]
    w = flat[path]
    delta = factors[a_path] @ factors[path + "/b"]
    flat[path] = w + (scale * delta).reshape(w.shape).astype(w.dtype)
  return groups.unflatten(flat)


def wrap_init(init_params, to_global, stage: ml_collections.ConfigDict):
  """rng -> the model's boxed parameters plus a `lora` subtree (rank > 0)."""
  rank, _, targets = lora_config(stage)
  if not rank:
    return init_params
  boxed = groups.flatten(jax.eval_shape(init_params, jax.random.key(0)))
  plan = _plan(boxed, to_global, targets)

  def init(rng):
    params = dict(init_params(rng))
    factors = {}
    for i, (path, (shape, k)) in enumerate(sorted(plan.items())):
      fan_in, fan_out = math.prod(shape[:k]), math.prod(shape[k:])
      key = jax.random.fold_in(jax.random.fold_in(rng, 7919), i)
      factors[path + "/a"] = (jax.random.normal(key, (fan_in, rank)) /
                              math.sqrt(fan_in))
      factors[path + "/b"] = jnp.zeros((rank, fan_out))
    params["lora"] = groups.unflatten(factors)
    return params
  return init


def wrap(task: Any, stage: ml_collections.ConfigDict) -> Any:
  """The task with LoRA factors in its parameters (no-op for rank 0)."""
  rank, alpha, _ = lora_config(stage)
  if not rank:
    return task

  def loss_fn(params, batch, rng, *extra):
    return task.loss_fn(merge(params, alpha, rank), batch, rng,
                        *[merge(e, alpha, rank) for e in extra])

  def to_global(path):
    if path.startswith("lora/"):
      return "lora/" + task.to_global(path[len("lora/"):])
    return task.to_global(path)

  return dataclasses.replace(
      task, init_params=wrap_init(task.init_params, task.to_global, stage),
      loss_fn=loss_fn, to_global=to_global,
      export_params=lambda params: merge(params, alpha, rank))
