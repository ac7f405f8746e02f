"""Stage kind `grpo`: RL with verifiable rewards on the shapes questions
(GRPO, DeepSeekMath; options for Dr. GRPO and DAPO's dynamic sampling).

Data: the `shapes` format (one question per row); the prompt is the user
turn, the gold answer rides along as the row's loss-masked targets.

One step of the one training loop, all inside its jit (docs/rl.md):
  1. sample G completions per prompt from the step's parameters with the
     KV-cache decode loop (`train/rollout.py`; no gradient), the rng the
     loop folds from (seed, step): a resumed run samples the same;
  2. score them with rule-based rewards on token ids (`train/rewards.py`),
     weighted as `rewards` says;
  3. group-normalised advantages, the clipped ratio loss over completion
     tokens and the k3 KL to the stage-start parameters (`needs_ref`)
     (`train/grpo_losses.py`), then the loop's usual gradient step.

Options (neutral values = defaults): group_size G (8), max_new_tokens (4),
temperature (1.0), top_p (1.0), beta (0.04; 0 skips the reference pass),
clip_eps (0.2), dr_grpo (False), dynamic_sampling (False), rewards
({'exact': 1.0, 'format': 0.1}).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mmjax import config as C
from mmjax.data import batching
from mmjax.data import native_resolution as native_lib
from mmjax.decoding.sampling import Sampling
from mmjax.models import build, layout
from mmjax.models.mllm import MLLM
from mmjax.train import grpo_losses, rewards, rollout
from mmjax.train.stages import base, lm

OPTIONS = {"group_size": 8, "max_new_tokens": 4, "temperature": 1.0,
           "top_p": 1.0, "beta": 0.04, "clip_eps": 0.2, "dr_grpo": False,
           "dynamic_sampling": False,
           "rewards": ml_collections.ConfigDict({"exact": 1.0,
                                                 "format": 0.1}),
           # Row lengths of the stage's batches (() = the pipeline's powers
           # of two): every prompt is prefilled at its batch's row length,
           # so a finer bucket prefills fewer padding slots.
           "buckets": ()}


def option(stage: ml_collections.ConfigDict, name: str) -> Any:
  value = stage.get(name, OPTIONS[name])
  return value.to_dict() if isinstance(value, ml_collections.ConfigDict) \
      else value


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """f32[R, T]: log-prob of each target under logits f32[R, T, V]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def policy_logprobs(model: MLLM, params: Any, batch, seqs, *,
                    group_size: int, temperature: float) -> jax.Array:
  """f32[R, T]: log-prob of each target of `rollout.policy_batch` rows
  under `params`, at the sampling temperature (as TRL scores: the
  distribution the tokens were drawn from). The images of a prompt (in
  `batch`) are encoded once and shared by its G rows."""
  visual = None
  if batch.get("images") is not None:
    visual = jnp.repeat(model.apply({"params": params}, batch["images"],
                                    method=MLLM.encode_images), group_size,
                        axis=0)
  kwargs = {}
  if getattr(model.cfg.lm, "prefix_lm", False):  # as lm.mllm_apply
    kwargs["prefix_len"] = lm.prefix_len_from_loss_mask(seqs["loss_mask"])
  logits = model.apply(
      {"params": params}, seqs["tokens"], seqs["positions"], visual=visual,
      image_mask=seqs.get("image_mask"),
      image_token_mask=seqs["image_token_mask"],
      media_locations=seqs["media_locations"], **kwargs)[0]
  return token_logprobs(logits / temperature, seqs["targets"])


def _masked_stats(x: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
  n = jnp.maximum(w.sum(), 1.0)
  mean = (x * w).sum() / n
  return mean, jnp.sqrt(((x - mean) ** 2 * w).sum() / n)


def _loss(model, stage: ml_collections.ConfigDict, tokenizer=None):
  g, n_new = int(option(stage, "group_size")), int(
      option(stage, "max_new_tokens"))
  temperature, beta = float(option(stage, "temperature")), float(
      option(stage, "beta"))
  clip_eps, dr_grpo = float(option(stage, "clip_eps")), bool(
      option(stage, "dr_grpo"))
  dynamic = bool(option(stage, "dynamic_sampling"))
  weights = {k: float(v) for k, v in option(stage, "rewards").items()}
  sampling = Sampling(temperature=temperature,
                      top_p=float(option(stage, "top_p")))
  # The number each token spells (numeric reward): a constant of the step.
  numbers = rewards.number_table(tokenizer, model.cfg.lm.vocab_size)

  def logprobs(params, batch, seqs):
    return policy_logprobs(model, params, batch, seqs, group_size=g,
                           temperature=temperature)

  def loss_fn(params, batch, rng, ref):
    b = batch["tokens"].shape[0]
    comp = rollout.sample(model, params, batch, rng, group_size=g,
                          max_new_tokens=n_new, sampling=sampling)
    gold, gold_len = rollout.gold_answers(batch, n_new)
    view = rewards.View(comp.tokens, comp.length, comp.stopped,
                        jnp.repeat(gold, g, 0), jnp.repeat(gold_len, g),
                        jnp.asarray(numbers))
    valid = jnp.repeat(batch.get("valid", jnp.ones((b,), bool)), g)
    valid_w = valid.astype(jnp.float32)
    per_kind = rewards.all_rewards(weights, view)
    total = jnp.zeros((b * g,), jnp.float32)
    metrics, nan_count = {}, jnp.zeros((), jnp.float32)
    for name, r in per_kind.items():
      bad = jnp.isnan(r)
      nan_count += (bad * valid_w).sum()
      r = jnp.where(bad, 0.0, r)  # counted and zeroed, never propagated
      metrics[f"reward/{name}_mean"], metrics[f"reward/{name}_std"] = (
          _masked_stats(r, valid_w))
      total = total + weights[name] * r
    adv, equal = grpo_losses.group_advantages(total.reshape(b, g),
                                              dr_grpo=dr_grpo)
    row_w = valid_w
    if dynamic:  # DAPO: groups without signal leave the mean
      row_w = row_w * jnp.repeat(~equal, g)
    seqs = rollout.policy_batch(batch, comp, g)
    logp = logprobs(params, batch, seqs)
    ref_logp = (jax.lax.stop_gradient(logprobs(ref, batch, seqs))
                if beta > 0 else None)
    # One gradient step per rollout batch: pi_old is the sampling policy,
    # pi_theta itself in value (ratio 1, its gradient is not zero).
    loss, token_metrics = grpo_losses.clipped_loss(
        logp, jax.lax.stop_gradient(logp), ref_logp, adv.reshape(-1),
        seqs["loss_mask"], row_w, clip_eps=clip_eps, beta=beta,
        dr_grpo=dr_grpo, max_new_tokens=n_new)
    groups_valid = batch.get("valid", jnp.ones((b,), bool)).astype(
        jnp.float32)
    metrics.update(token_metrics)
    metrics["reward/total_mean"], metrics["reward/total_std"] = (
        _masked_stats(total, valid_w))
    metrics["response_length"] = _masked_stats(
        comp.length.astype(jnp.float32), valid_w)[0]
    metrics["equal_reward_groups"] = (equal * groups_valid).sum() / (
        jnp.maximum(groups_valid.sum(), 1.0))
    metrics["skipped_groups"] = (metrics["equal_reward_groups"] if dynamic
                                 else jnp.zeros((), jnp.float32))
    metrics["nan_rewards"] = nan_count
    return loss, jax.lax.stop_gradient(metrics)
  return loss_fn


# ------------------------------------------------------------------ checks --
def _prompt_floor(config) -> int:
  """Fewest prompt tokens a shapes question can have: its image's
  placeholders and the chat markers around it (user, newline, assistant)."""
  cfg = build.mllm_config(config)
  return layout.placeholder_tokens(cfg, cfg.side, cfg.side, cfg.frames) + 3


def _rewards_ok(value) -> str | None:
  """Why a `rewards` value is refused, or None."""
  if not isinstance(value, (dict, ml_collections.ConfigDict)) or not value:
    return "must be a non-empty dict {reward name: weight}"
  for name, weight in dict(value).items():
    if name not in rewards.names():
      usable = [n for n in rewards.names() if not rewards.get(n).unavailable]
      return (f"names {name!r}, which is no reward; rewards: "
              f"{', '.join(usable)}")
    if rewards.get(name).unavailable:
      return f"names {name!r}, which is unavailable: " + (
          rewards.get(name).unavailable)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or (
        not math.isfinite(weight)):
      return f"gives {name!r} the weight {weight!r}; weights are finite numbers"
  if not any(dict(value).values()):
    return "has only zero weights: no reward to learn from"
  return None


def _buckets_ok(buckets, max_len: int) -> bool:
  """What the pipeline will accept (`batching.check_buckets`)."""
  try:
    batching.check_buckets(tuple(buckets) or None, max_len)
  except ValueError:
    return False
  return True


def _checks(config, path: str, stage) -> list[C.Check]:
  get = lambda name: option(stage, name)
  checks = [
      C.check_that(lambda c: _is_int(get("group_size"), 2), lambda c: (
          f"config.{path}.group_size={get('group_size')!r}: GRPO compares "
          "completions within a group; give an integer >= 2")),
      C.check_that(lambda c: _is_int(get("max_new_tokens"), 1), lambda c: (
          f"config.{path}.max_new_tokens={get('max_new_tokens')!r} must be "
          "an integer >= 1")),
      C.check_that(lambda c: _is_num(get("temperature"), 0, None, True),
                   lambda c: (
          f"config.{path}.temperature={get('temperature')!r} must be > 0: "
          "greedy completions of a prompt are all the same")),
      C.check_that(lambda c: _is_num(get("top_p"), 0, 1, True), lambda c: (
          f"config.{path}.top_p={get('top_p')!r} must lie in (0, 1]")),
      C.check_that(lambda c: _is_num(get("beta"), 0, None), lambda c: (
          f"config.{path}.beta={get('beta')!r} must be a number >= 0 "
          "(0 = no KL)")),
      C.check_that(lambda c: _is_num(get("clip_eps"), 0, 1, True), lambda c: (
          f"config.{path}.clip_eps={get('clip_eps')!r} must lie in (0, 1]")),
      C.check_that(lambda c: _rewards_ok(get("rewards")) is None, lambda c: (
          f"config.{path}.rewards {_rewards_ok(get('rewards'))}")),
      C.check_that(lambda c: not native_lib.takes_native(
          build.mllm_config(c)), lambda c: (
          f"config.{path}.loss='grpo' samples from square image batches; a "
          "native-resolution tower is not supported: use another "
          "vision.kind")),
  ]
  checks.append(C.check_that(
      lambda c: _buckets_ok(get("buckets"), c.data.max_len), lambda c: (
          f"config.{path}.buckets={tuple(get('buckets'))!r} must be "
          "positive integers <= config.data.max_len "
          f"({c.data.max_len}); () = the pipeline's default")))
  for name in ("dr_grpo", "dynamic_sampling"):
    checks.append(C.check_that(
        lambda c, n=name: isinstance(get(n), bool),
        lambda c, n=name: f"config.{path}.{n}={get(n)!r} must be True or "
        "False"))
  checks.append(C.check_that(
      lambda c: not _is_int(get("max_new_tokens"), 1) or (
          _prompt_floor(c) + get("max_new_tokens") <= c.data.max_len),
      lambda c: (
          f"config.{path}.max_new_tokens={get('max_new_tokens')} leaves no "
          f"room: a prompt is at least {_prompt_floor(c)} tokens (image "
          f"placeholders included) and config.data.max_len="
          f"{c.data.max_len}; raise data.max_len or lower max_new_tokens")))
  return checks


def _is_int(value, low: int) -> bool:
  return (isinstance(value, int) and not isinstance(value, bool)
          and value >= low)


def _is_num(value, low, high, open_low: bool = False) -> bool:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      not math.isfinite(value)):
    return False
  above = value > low if open_low else value >= low
  return above and (high is None or value <= high)


KIND = base.register(base.StageKind(
    name="grpo", families=("mllm",), data_formats=("shapes",),
    make_model=lm.mllm_model, make_loss=_loss,
    needs_ref=True, options=OPTIONS, checks=_checks, loss_takes_tokenizer=True))
