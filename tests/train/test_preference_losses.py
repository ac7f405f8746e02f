"""Preference losses: sequence log-probs, DPO, MPO and the paired forward."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import testing
from mmjax.data.tokenizer import IMAGE_ID
from mmjax.models import layout
from mmjax.models.mllm import MLLM
from mmjax.train import losses


def _fast_jit(fn, *args):
  """jit compiled at XLA backend optimisation level 0: the same numbers,
  about half the compile time on this CPU."""
  return jax.jit(fn).lower(*args).compile(
      compiler_options={"xla_backend_optimization_level": 0})


def _numpy(tree):
  return jax.tree.map(np.asarray, tree)


def _logsigmoid(x):
  return -np.log1p(np.exp(-x))


def _logps():
  rng = np.random.default_rng(0)
  return [jnp.asarray(rng.normal(-20, 3, 4), jnp.float32) for _ in range(4)]


def test_sequence_logprobs_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, (2, 5))
  mask = (rng.uniform(size=(2, 5)) > 0.4).astype(np.float32)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = [sum(logp[b, i, targets[b, i]] for i in range(5) if mask[b, i])
          for b in range(2)]
  got = losses.sequence_logprobs(jnp.asarray(logits), jnp.asarray(targets),
                                 jnp.asarray(mask))
  assert got.shape == (2,)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_dpo_matches_a_hand_computation():
  pc, pr, rc, rr = _logps()
  loss, metrics = losses.dpo_loss(pc, pr, rc, rr, beta=0.2)
  p = [np.asarray(x, np.float64) for x in (pc, pr, rc, rr)]
  chosen, rejected = 0.2 * (p[0] - p[2]), 0.2 * (p[1] - p[3])
  np.testing.assert_allclose(float(loss),
                             np.mean(-_logsigmoid(chosen - rejected)),
                             rtol=1e-5)
  np.testing.assert_allclose(float(metrics["rewards_chosen"]), chosen.mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(float(metrics["rewards_rejected"]),
                             rejected.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["reward_margin"]),
                             (chosen - rejected).mean(), rtol=1e-4,
                             atol=1e-6)
  assert float(metrics["reward_accuracy"]) == np.mean(chosen > rejected)


def test_dpo_is_log2_when_policy_equals_reference():
  pc, pr, _, _ = _logps()
  loss, metrics = losses.dpo_loss(pc, pr, pc, pr)
  np.testing.assert_allclose(float(loss), math.log(2.0), rtol=1e-6)
  assert float(metrics["reward_margin"]) == 0.0


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
  pc, pr, rc, rr = _logps()
  g_chosen, g_rejected = jax.grad(
      lambda a, b: losses.dpo_loss(a, b, rc, rr)[0], argnums=(0, 1))(pc, pr)
  assert (np.asarray(g_chosen) < 0).all()  # Descent raises log p(chosen).
  assert (np.asarray(g_rejected) > 0).all()


def _mpo_numpy(p, nll, beta, weights, delta):
  chosen, rejected = beta * (p[0] - p[2]), beta * (p[1] - p[3])
  dpo = np.mean(-_logsigmoid(chosen - rejected))
  bco = np.mean(-_logsigmoid(chosen - delta) - _logsigmoid(-(rejected - delta)))
  return weights[0] * dpo + weights[1] * bco + weights[2] * np.mean(nll), bco


def test_mpo_combines_the_three_parts_with_their_weights():
  pc, pr, rc, rr = _logps()
  p = [np.asarray(x, np.float64) for x in (pc, pr, rc, rr)]
  nll = jnp.asarray([1.5, 2.0, 0.5, 1.0])
  loss, metrics = losses.mpo_loss(pc, pr, rc, rr, nll, beta=0.1, delta=0.3)
  want, bco = _mpo_numpy(p, np.asarray(nll), 0.1, (0.8, 0.2, 1.0), 0.3)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["bco_loss"]), bco, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["nll_loss"]), 1.25, rtol=1e-6)
  dpo, _ = losses.dpo_loss(pc, pr, rc, rr)
  only_dpo, _ = losses.mpo_loss(pc, pr, rc, rr, nll, weights=(1.0, 0.0, 0.0),
                                delta=0.3)
  np.testing.assert_allclose(float(only_dpo), float(dpo), rtol=1e-6)


def test_mpo_fallback_delta_is_the_stop_gradient_batch_mean():
  pc, pr, rc, rr = _logps()
  p = [np.asarray(x, np.float64) for x in (pc, pr, rc, rr)]
  batch_mean = np.mean(np.concatenate([0.1 * (p[0] - p[2]),
                                       0.1 * (p[1] - p[3])]))
  nll = jnp.float32(2.0)
  loss, metrics = losses.mpo_loss(pc, pr, rc, rr, nll)
  want, _ = _mpo_numpy(p, 2.0, 0.1, (0.8, 0.2, 1.0), batch_mean)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["bco_delta"]), batch_mean,
                             rtol=1e-5)
  # No gradient flows through the fallback delta: same as a fixed delta.
  fallback = jax.grad(lambda a: losses.mpo_loss(a, pr, rc, rr, nll)[0])(pc)
  fixed = jax.grad(lambda a: losses.mpo_loss(
      a, pr, rc, rr, nll, delta=jnp.float32(batch_mean))[0])(pc)
  np.testing.assert_allclose(np.asarray(fallback), np.asarray(fixed),
                             rtol=1e-5)


def test_update_reward_mean_is_the_mean_of_every_reward():
  rng = np.random.default_rng(2)
  batches = [(rng.normal(size=3), rng.normal(size=3)) for _ in range(4)]
  mean, count = jnp.float32(0.0), jnp.float32(0.0)
  for r_c, r_r in batches:
    mean, count = losses.update_reward_mean(mean, count, jnp.asarray(r_c),
                                            jnp.asarray(r_r))
  everything = np.concatenate([np.concatenate(b) for b in batches])
  np.testing.assert_allclose(float(mean), everything.mean(), rtol=1e-5)
  assert float(count) == 24.0
  first, _ = losses.update_reward_mean(0.0, 0.0, jnp.asarray(batches[0][0]),
                                       jnp.asarray(batches[0][1]))
  np.testing.assert_allclose(float(first), np.concatenate(batches[0]).mean(),
                             rtol=1e-5)


# A position-wise stand-in for the MLLM: cheap, and sensitive to tokens,
# positions (1-D or M-RoPE) and the images of its own row.
def _fake_apply(params, tokens, positions, *, images=None, image_mask=None,
                image_token_mask=None, media_locations=None):
  del image_mask, media_locations
  pos = positions.sum(0) if positions.ndim == 3 else positions
  logits = params["emb"][tokens] + 0.1 * pos[..., None] * params["pos"]
  if images is not None:
    per_row = images.reshape(images.shape[0], -1).mean(-1)
    logits += per_row[:, None, None] * params["img"]
  if image_token_mask is not None:
    logits += image_token_mask[..., None] * params["img"]
  return logits


def _fake_params(seed, vocab=11):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in
          (("emb", (vocab, vocab)), ("pos", (vocab,)), ("img", (vocab,)))}


def _side(rng, b, length, mrope):
  tokens = rng.integers(0, 11, (b, length))
  positions = np.broadcast_to(np.arange(length), (b, length))
  if mrope:
    positions = np.stack([positions, positions + 1, positions * 2])
  mask = np.zeros((b, length), np.float32)
  mask[:, length // 2:] = 1.0
  return {"tokens": tokens, "targets": rng.integers(0, 11, (b, length)),
          "loss_mask": mask, "positions": positions,
          "image_token_mask": np.arange(length)[None].repeat(b, 0) == 1}


def _separate_logps(apply, params, batch, side):
  logits = apply(params, batch[side + "_tokens"], batch[side + "_positions"],
                 images=batch["images"], image_mask=batch["image_mask"],
                 image_token_mask=batch[side + "_image_token_mask"],
                 media_locations=batch.get(side + "_media_locations"))
  return losses.sequence_logprobs(logits, batch[side + "_targets"],
                                  batch[side + "_loss_mask"])


def _fake_run(params, ref, batch, state):
  """Everything the fake-model test checks, in one compiled program."""
  logps = [_separate_logps(_fake_apply, p, batch, s)
           for p in (params, ref) for s in ("chosen", "rejected")]
  dpo = losses.preference_loss(_fake_apply, params, ref, batch, "dpo",
                               beta=0.1)
  mpo = losses.preference_loss(_fake_apply, params, ref, batch, "mpo",
                               beta=0.1, reward_state=state)
  grads = jax.grad(lambda p, r: losses.preference_loss(
      _fake_apply, p, r, batch, "mpo")[0], argnums=(0, 1))(params, ref)
  return logps, dpo, mpo, grads


@pytest.mark.parametrize("mrope", [False, True])
def test_preference_loss_pads_concatenates_and_stops_the_reference(mrope):
  rng = np.random.default_rng(3)
  batch = {"images": rng.normal(size=(3, 1, 4, 4, 3)).astype(np.float32),
           "image_mask": np.ones((3, 1), bool)}
  for side, length in (("chosen", 5), ("rejected", 8)):
    batch.update({f"{side}_{k}": v
                  for k, v in _side(rng, 3, length, mrope).items()})
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  params, ref = _fake_params(0), _fake_params(1)
  state = (jnp.float32(0.2), jnp.float32(12.0))
  run = _fast_jit(_fake_run, params, ref, batch, state)
  logps, (loss, metrics), mpo, (g_policy, g_ref) = run(params, ref, batch,
                                                       state)
  want, _ = losses.dpo_loss(*logps, beta=0.1)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["logps_chosen"]),
                             float(jnp.mean(logps[0])), rtol=1e-5)
  # MPO with a running reward state: the batch is folded in first.
  loss, metrics = mpo
  r_c, r_r = 0.1 * (logps[0] - logps[2]), 0.1 * (logps[1] - logps[3])
  mean, count = losses.update_reward_mean(*state, r_c, r_r)
  nll = -jnp.sum(logps[0]) / jnp.sum(batch["chosen_loss_mask"])
  want, _ = losses.mpo_loss(*logps, nll, beta=0.1, delta=mean)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["reward_mean"]), float(mean),
                             rtol=1e-6)
  assert float(metrics["reward_count"]) == float(count) == 18.0
  assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(_numpy(g_policy)))
  assert all(np.abs(g).max() == 0 for g in jax.tree.leaves(_numpy(g_ref)))


def test_preference_loss_errors():
  rng = np.random.default_rng(4)
  batch = {f"{s}_{k}": jnp.asarray(v) for s in ("chosen", "rejected")
           for k, v in _side(rng, 2, 4, False).items()}
  with pytest.raises(ValueError, match="not allowed"):
    losses.preference_loss(_fake_apply, _fake_params(0), _fake_params(1),
                           batch, "ipo")
  del batch["rejected_image_token_mask"]
  with pytest.raises(ValueError, match="only one of"):
    losses.preference_loss(_fake_apply, _fake_params(0), _fake_params(1),
                           batch)


@functools.lru_cache(maxsize=None)
def _tiny_mllm():
  """The tiny shapes model, and a chosen/rejected batch of two pairs
  sharing one image each (same lengths; padding is tested above)."""
  cfg = testing.tiny_mllm_config()
  rng = np.random.default_rng(5)
  img = layout.Media(64, 64)
  batch = {"images": jnp.asarray(rng.uniform(-1, 1, (2, 1, 64, 64, 3)),
                                 jnp.float32),
           "image_mask": jnp.ones((2, 1), bool)}
  for side in ("chosen", "rejected"):
    rows = [layout.assemble(cfg, [list(rng.integers(10, 500, 3)), img,
                                  list(rng.integers(10, 500, 6))], IMAGE_ID)
            for _ in range(2)]
    tokens = np.stack([r["tokens"] for r in rows])
    targets = np.concatenate([tokens[:, 1:], np.zeros((2, 1), int)], 1)
    mask = np.zeros(tokens.shape, np.float32)
    mask[:, -6:-1] = 1.0  # The answer: the last text tokens.
    batch.update({f"{side}_tokens": tokens, f"{side}_targets": targets,
                  f"{side}_loss_mask": mask,
                  f"{side}_positions": np.stack([r["positions"] for r in rows]),
                  f"{side}_image_token_mask": np.stack(
                      [r["image_token_mask"] for r in rows])})
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  model = MLLM(cfg)
  abstract = testing.abstract_params(model)
  fill = lambda seed: testing.random_params_like(abstract, seed)
  apply = lambda p, *a, **k: model.apply({"params": p}, *a, **k)[0]
  head = lambda p, h: model.apply({"params": p}, h, method=MLLM.head)
  return apply, fill(0), fill(1), batch, head


def test_preference_loss_with_a_tiny_mllm_equals_separate_runs():
  apply, params, ref, batch, _ = _tiny_mllm()
  def separate(p, b):
    return [_separate_logps(apply, p, b, s) for s in ("chosen", "rejected")]
  def paired(p, r, b):
    return losses.preference_loss(apply, p, r, b, "dpo", beta=0.1)
  logps = _fast_jit(separate, params, batch)
  pol, ref_logps = logps(params, batch), logps(ref, batch)
  loss, metrics = _fast_jit(paired, params, ref, batch)(params, ref, batch)
  want, want_metrics = losses.dpo_loss(*pol, *ref_logps, beta=0.1)
  assert abs(float(want) - math.log(2.0)) > 1e-3  # Policy != reference.
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["reward_margin"]),
                             float(want_metrics["reward_margin"]),
                             rtol=1e-3, atol=1e-4)
  ref_grads = _fast_jit(jax.grad(lambda r, p, b: paired(p, r, b)[0]),
                        ref, params, batch)(ref, params, batch)
  assert all(np.abs(g).max() == 0 for g in jax.tree.leaves(_numpy(ref_grads)))


@pytest.mark.parametrize("kind", ["dpo", "mpo"])
def test_preference_loss_chunked_head_equals_full_logits(kind):
  """loss_chunk=8 over 73 positions: the image chunks take no completion
  token and are skipped; loss, metrics and gradients are unchanged."""
  apply, params, ref, batch, head = _tiny_mllm()
  state = (jnp.asarray(0.3), jnp.asarray(4.0))
  def loss(p, chunk):
    return losses.preference_loss(
        apply, p, ref, batch, kind, beta=0.1, head_apply=head,
        loss_chunk=chunk, reward_state=state if kind == "mpo" else None)
  grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (want, want_m), want_g = grad(params, 0)
  (got, got_m), got_g = grad(params, 8)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  for key in want_m:
    np.testing.assert_allclose(got_m[key], want_m[key], rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda g, h: np.testing.assert_allclose(
      g, h, rtol=1e-4, atol=3e-5), got_g, want_g)
  with pytest.raises(ValueError, match="needs head_apply"):
    losses.preference_loss(apply, params, ref, batch, kind, loss_chunk=8)
