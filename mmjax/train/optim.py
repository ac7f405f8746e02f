"""Optimizers and learning-rate schedules, built from a stage's config."""
from __future__ import annotations

import ml_collections
import optax

from mmjax.config import ConfigError

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


def make_optimizer(stage: ml_collections.ConfigDict
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(gradient transformation incl. clipping, lr schedule) for a stage."""
  opt = stage.optimizer
  schedule = make_schedule(stage)
  chain = []
  if opt.get("grad_clip", 0.0):
    chain.append(optax.clip_by_global_norm(opt.grad_clip))
  if opt.name == "adamw":
    chain.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                             weight_decay=opt.weight_decay))
  elif opt.name == "sgd":
    chain.append(optax.sgd(schedule, momentum=opt.get("momentum", None)))
  else:
    raise ConfigError(f"optimizer.name={opt.name!r}; allowed: {OPTIMIZERS}")
  return optax.chain(*chain), schedule
