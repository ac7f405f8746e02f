"""Optimizers and learning-rate schedules, built from a stage's config."""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mmjax.config import ConfigError
from mmjax.train import groups

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("warmup_cosine", "warmup_linear", "constant")


def make_schedule(stage: ml_collections.ConfigDict) -> optax.Schedule:
  """Learning rate as a function of the stage-local step."""
  lr = stage.optimizer.lr
  sched = stage.schedule
  steps = stage.steps
  warmup = min(sched.get("warmup_steps", 0), steps)
  end = lr * sched.get("end_lr_fraction", 0.0)
  if sched.name == "constant":
    return optax.constant_schedule(lr)
  if sched.name == "warmup_linear":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup, 1)),
         optax.linear_schedule(lr, end, max(steps - warmup, 1))], [warmup])
  if sched.name == "warmup_cosine":
    # optax counts decay_steps from 0 and includes the warmup.
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=warmup, decay_steps=max(steps, warmup + 1),
        end_value=end)
  raise ConfigError(f"schedule.name={sched.name!r}; allowed: {SCHEDULES}")


def lr_multipliers(stage: ml_collections.ConfigDict,
                   global_of: Mapping[str, str]) -> dict[str, float]:
  """{model path: lr multiplier} from `optimizer.lr_mult` ({group: factor}).

  E.g. lr_mult.vision=0.1 trains the ViT at a tenth of the stage's rate (as
  InternVL and LLaVA-OneVision do when they unfreeze the vision tower).
  """
  mults = dict(stage.optimizer.get("lr_mult", None) or {})
  out = {}
  for path, g in global_of.items():
    for group, factor in mults.items():
      if groups.matches(g, group):
        out[path] = float(factor)
  return out


def _scale_by_path(scales: Mapping[str, float]
                   ) -> optax.GradientTransformation:
  """Multiplies the update of each listed '/'-path leaf by its factor."""
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    flat = groups.flatten(updates)
    return groups.unflatten({k: v * scales[k] if k in scales else v
                             for k, v in flat.items()}), state
  return optax.GradientTransformation(init, update)


def clip_by_global_norm(max_norm: float
                        ) -> optax.GradientTransformationExtraArgs:
  """optax.clip_by_global_norm that can be handed the norm it clips by.

  The train step computes the gradient's global norm anyway (for the
  non-finite guard and its metrics) and passes it as `tx.update(...,
  grad_norm=norm)`; optax's own transformation would compute it a second
  time inside the guarded update, where XLA cannot reuse the first: one more
  reduction per parameter leaf every step (about 90 kernels at `small`).
  Without `grad_norm` it computes the norm itself, as optax does. Updates
  are multiplied by the scalar max_norm / norm when norm >= max_norm (as
  torch's `clip_grad_norm_` does), not divided by the norm per element as
  in optax: XLA:CPU writes a divided gradient to memory before the Adam
  moments read it (one kernel per leaf, ~80 at `tiny`), while a product
  with a scalar fuses into them. It differs from optax's result by at most
  an ulp or two.
  """
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None, *, grad_norm=None, **extra_args):
    del params, extra_args
    norm = optax.tree.norm(updates) if grad_norm is None else grad_norm
    keep = jnp.squeeze(norm < max_norm)
    factor = max_norm / norm
    clipped = jax.tree.map(
        lambda t: jax.lax.select(keep, t, t * factor.astype(t.dtype)),
        updates)
    return clipped, state
  return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(stage: ml_collections.ConfigDict,
                   scales: Mapping[str, float] | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(gradient transformation incl. clipping, lr schedule) for a stage.

  `scales` ({path: factor}, from `lr_multipliers`) scales the final updates
  of those leaves: their learning rate (and decoupled weight decay) times
  the factor.
  """
  opt = stage.optimizer
  schedule = make_schedule(stage)
  chain = []
  if opt.get("grad_clip", 0.0):
    chain.append(clip_by_global_norm(opt.grad_clip))
  if opt.name == "adamw":
    chain.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                             weight_decay=opt.weight_decay))
  elif opt.name == "sgd":
    chain.append(optax.sgd(schedule, momentum=opt.get("momentum", None)))
  else:
    raise ConfigError(f"optimizer.name={opt.name!r}; allowed: {OPTIMIZERS}")
  if scales:
    chain.append(_scale_by_path(scales))
  return optax.chain(*chain), schedule
