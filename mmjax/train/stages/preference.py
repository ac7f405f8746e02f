"""Stage kinds `dpo` and `mpo`: preference tuning on chosen / rejected pairs
('preference' data), against the stage-start parameters as the frozen
reference.

  dpo  Direct Preference Optimization (Rafailov et al. 2023).
  mpo  Mixed Preference Optimization (InternVL): DPO + BCO + SFT on the
       chosen answer; BCO's reward shift is the running mean of every reward
       seen so far (TRL's RunningMoments), kept in the train state, so a
       resumed stage continues exactly.

Options: `beta` (default 0.1), `loss_chunk` (as stage kind `lm`: the LM head
a chunk of positions at a time, chunks without a completion token skipped).
"""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from mmjax.train import losses
from mmjax.train import trainer as trainer_lib
from mmjax.train.stages import base
from mmjax.train.stages import lm


def _loss(kind: str):
  def make(model, stage: ml_collections.ConfigDict):
    # (params, *inputs, **kw) -> logits: the form preference_loss takes.
    logits_fn = lambda p, *a, **k: model.apply({"params": p}, *a, **k)[0]
    kw = dict(kind=kind, beta=stage.get("beta", 0.1),
              loss_chunk=stage.get("loss_chunk", 0),
              head_apply=lm.head_fn(model))
    if kind == "dpo":
      def loss_fn(params, batch, rng, ref):
        del rng
        return losses.preference_loss(logits_fn, params, ref, batch, **kw)
      return loss_fn

    def loss_fn_with_state(params, batch, rng, ref, reward_state):
      del rng
      loss, metrics = losses.preference_loss(
          logits_fn, params, ref, batch, reward_state=reward_state, **kw)
      metrics[trainer_lib.LOSS_STATE] = (metrics["reward_mean"],
                                         metrics["reward_count"])
      return loss, metrics
    return loss_fn_with_state
  return make


def _reward_moments(config, stage_name):
  """(running reward mean, count), both 0 at stage start."""
  del config, stage_name
  return (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))


_OPTIONS = {"beta": 0.1, "loss_chunk": 0}
DPO = base.register(base.StageKind(
    name="dpo", families=("mllm",), data_formats=("preference",),
    make_model=lm.mllm_model, make_loss=_loss("dpo"), needs_ref=True,
    options=_OPTIONS, checks=lm.loss_chunk_checks))
MPO = base.register(base.StageKind(
    name="mpo", families=("mllm",), data_formats=("preference",),
    make_model=lm.mllm_model, make_loss=_loss("mpo"), needs_ref=True,
    initial_loss_state=_reward_moments, options=_OPTIONS,
    checks=lm.loss_chunk_checks))
