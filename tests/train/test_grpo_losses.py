"""GRPO's math and rewards against hand computations and numpy: group
advantages (GRPO, Dr. GRPO), the clipped loss with k3 KL and its gradient at
ratio 1, the rewards registry, dynamic sampling and NaN rewards."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax import testing
from mmjax.models.mllm import MLLM
from mmjax.train import grpo_losses, rewards, rollout
from mmjax.train.stages import grpo


def test_group_advantages_by_hand():
  r = jnp.asarray([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5],
                   [3.0, 0.0, 0.0, 0.0]])
  adv, equal = grpo_losses.group_advantages(r)
  std = np.sqrt(4 * 0.25 / 3)  # Bessel: sum of squares / (G - 1)
  np.testing.assert_allclose(adv[0], np.array([0.5, -0.5, -0.5, 0.5]) /
                             (std + 1e-4), rtol=1e-6)
  np.testing.assert_allclose(adv[1], 0.0)
  std3 = np.sqrt((2.25 ** 2 + 3 * 0.75 ** 2) / 3)
  np.testing.assert_allclose(adv[2], np.array([2.25, -0.75, -0.75, -0.75]) /
                             (std3 + 1e-4), rtol=1e-6)
  assert equal.tolist() == [False, True, False]
  dr, dr_equal = grpo_losses.group_advantages(r, dr_grpo=True)
  np.testing.assert_allclose(dr[2], [2.25, -0.75, -0.75, -0.75])
  np.testing.assert_allclose(dr[0], [0.5, -0.5, -0.5, 0.5])
  assert dr_equal.tolist() == equal.tolist()


def _numpy_loss(logp, old, ref, adv, mask, w, eps, beta, dr, n_new):
  ratio = np.exp(logp - old)
  a = adv[:, None]
  unclipped, clipped = ratio * a, np.clip(ratio, 1 - eps, 1 + eps) * a
  d = ref - logp
  kl = np.exp(d) - d - 1
  tok = -(np.minimum(unclipped, clipped) - beta * kl) * mask
  row = tok.sum(1) / (n_new if dr else np.maximum(mask.sum(1), 1))
  tw = mask * w[:, None]
  return ((row * w).sum() / w.sum(), (kl * tw).sum() / tw.sum(),
          ((clipped < unclipped) * tw).sum() / tw.sum())


@pytest.mark.parametrize("dr_grpo", [False, True])
def test_clipped_loss_and_k3_kl_match_numpy(dr_grpo):
  rng = np.random.default_rng(0)
  r_, t_ = 6, 5
  logp = rng.normal(-2, 0.5, (r_, t_)).astype(np.float32)
  old = (logp + rng.normal(0, 0.3, (r_, t_))).astype(np.float32)  # ratios
  ref = (logp + rng.normal(0, 0.3, (r_, t_))).astype(np.float32)  # off 1
  adv = rng.normal(0, 1, r_).astype(np.float32)
  mask = (rng.uniform(size=(r_, t_)) > 0.3).astype(np.float32)
  w = np.asarray([1, 1, 0, 1, 1, 1], np.float32)
  loss, m = grpo_losses.clipped_loss(
      jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv),
      jnp.asarray(mask), jnp.asarray(w), clip_eps=0.2, beta=0.04,
      dr_grpo=dr_grpo, max_new_tokens=t_)
  want, kl, frac = _numpy_loss(logp, old, ref, adv, mask, w, 0.2, 0.04,
                               dr_grpo, t_)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(m["kl"]), kl, rtol=1e-5)
  np.testing.assert_allclose(float(m["clip_fraction"]), frac, rtol=1e-5)
  assert 0 < frac < 1  # the case exercises clipping both ways round
  assert (np.exp(ref - logp) - (ref - logp) - 1 >= 0).all()


def test_gradient_at_ratio_one_is_the_policy_gradient():
  """pi_old = stop_gradient(pi_theta): the loss is -A (+ KL) in value, and
  d loss / d logp_t = (-A_i + beta (1 - pi_ref/pi_theta)) / |o_i| * w_i / W."""
  rng = np.random.default_rng(1)
  logp = jnp.asarray(rng.normal(-2, 0.5, (3, 4)), jnp.float32)
  ref = logp + jnp.asarray(rng.normal(0, 0.2, (3, 4)), jnp.float32)
  adv = jnp.asarray([1.0, -0.5, 2.0])
  mask = jnp.asarray([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], jnp.float32)
  w = jnp.ones(3)

  def loss(lp):
    return grpo_losses.clipped_loss(lp, jax.lax.stop_gradient(lp), ref, adv,
                                    mask, w, clip_eps=0.2, beta=0.1)[0]
  grad = np.asarray(jax.grad(loss)(logp))
  want = ((-adv[:, None] + 0.1 * (1 - np.exp(ref - logp))) * mask /
          mask.sum(1, keepdims=True) / 3)
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)


def _view(tokens, length, stopped, gold, gold_len, numbers=None):
  v = 16
  table = np.full(v, np.nan, np.float32) if numbers is None else numbers
  return rewards.View(*(jnp.asarray(x) for x in (
      np.asarray(tokens, np.int32), np.asarray(length, np.int32),
      np.asarray(stopped, bool), np.asarray(gold, np.int32),
      np.asarray(gold_len, np.int32), table)))


def test_rewards_by_hand():
  eot = 9
  numbers = np.full(16, np.nan, np.float32)
  numbers[[5, 6, 7]] = [3, 4, 1]  # "three", "4", "one"
  gold = [[5, eot, -1]] * 5 + [[2, 3, eot]]
  view = _view(
      tokens=[[5, eot, 0], [6, eot, 0], [5, 5, 5], [eot, 0, 0], [5, 4, eot],
              [2, 3, eot]],
      length=[2, 2, 3, 1, 3, 3], stopped=[1, 1, 0, 1, 1, 1], gold=gold,
      gold_len=[2, 2, 2, 2, 2, 3], numbers=numbers)
  np.testing.assert_array_equal(rewards.get("exact").fn(view),
                                [1, 0, 0, 0, 0, 1])
  np.testing.assert_allclose(rewards.get("numeric").fn(view),
                             [1, np.exp(-1), 1, 0, 1, 0], rtol=1e-6)
  np.testing.assert_array_equal(rewards.get("format").fn(view),
                                [1, 1, 0, 0, 1, 1])
  np.testing.assert_allclose(rewards.get("length").fn(view),
                             -np.asarray([2, 2, 3, 1, 3, 3]) / 3)
  np.testing.assert_allclose(
      rewards.weighted({"exact": 1.0, "format": 0.5, "length": 0.0}, view),
      [1.5, 0.5, 0, 0, 0.5, 1.5])
  assert "iou" in rewards.names() and rewards.get("iou").unavailable
  with pytest.raises(KeyError, match="unknown reward 'bleu'"):
    rewards.get("bleu")


def test_number_table_reads_the_tokenizer():
  class Tok:
    vocab_size = 6
    pieces = ["<pad>", "▁three", "▁7", "red", "▁one", "ten"]

    def decode(self, ids):
      return self.pieces[ids[0]].replace("▁", " ")
  table = rewards.number_table(Tok(), 8)
  np.testing.assert_array_equal(np.isnan(table),
                                [1, 0, 0, 1, 0, 0, 1, 1])
  np.testing.assert_array_equal(table[[1, 2, 4, 5]], [3, 7, 1, 10])
  assert np.isnan(rewards.number_table(None, 4)).all()


# --------------------------------------- the loss_fn on fixed completions --
G = 4


@pytest.fixture(scope="module")
def tiny():
  cfg = testing.tiny_mllm_config()
  model = MLLM(cfg)
  params = testing.random_params(model)
  batch = {k: jnp.asarray(v) for k, v in
           testing.dummy_batch(cfg, 2, text_len=2).items()}
  return model, params, batch


def _fixed_completions(batch, max_new_tokens=2):
  """Prompt 0: every completion right (equal rewards); prompt 1: two right,
  two wrong."""
  gold, _ = rollout.gold_answers(batch, max_new_tokens)
  gold = np.asarray(gold)
  wrong = (gold + 1) % 500 + 10
  rows = [gold[0]] * G + [gold[1], wrong[1], gold[1], wrong[1]]
  n = np.repeat(np.asarray(rollout.prompt_lengths(batch["loss_mask"])), G)
  return rollout.Completions(
      tokens=jnp.asarray(np.stack(rows), jnp.int32),
      length=jnp.full((2 * G,), 2, jnp.int32),
      stopped=jnp.ones((2 * G,), bool),
      stop_id=jnp.full((2 * G,), int(gold[0, -1]), jnp.int32),
      prompt_len=jnp.asarray(n, jnp.int32))


def _loss_fn(model, batch, monkeypatch, **options):
  stage = ml_collections.ConfigDict(dict(group_size=G, max_new_tokens=2,
                                         beta=0.0, **options))
  comp = _fixed_completions(batch)
  monkeypatch.setattr(grpo.rollout, "sample", lambda *a, **k: comp)
  return grpo._loss(model, stage)  # pylint: disable=protected-access


def test_dynamic_sampling_skips_groups_without_signal(tiny, monkeypatch):
  model, params, batch = tiny
  out = {}
  for dynamic in (False, True):
    fn = _loss_fn(model, batch, monkeypatch, dynamic_sampling=dynamic,
                  rewards={"exact": 1.0})
    args = (params, batch, jax.random.key(0), params)
    grad_fn = jax.jit(jax.grad(fn, has_aux=True)).lower(*args).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    out[dynamic] = grad_fn(*args)
  (g0, m0), (g1, m1) = out[False], out[True]
  np.testing.assert_allclose(m0["reward/exact_mean"], 6 / 8)
  assert float(m0["equal_reward_groups"]) == float(
      m1["equal_reward_groups"]) == 0.5
  assert float(m0["skipped_groups"]) == 0 and float(m1["skipped_groups"]) == 0.5
  # Group 0's advantages are 0: skipping it only halves the normaliser.
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(2 * np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-9)
  assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g0)) > 0


def test_nan_rewards_are_counted_and_zeroed(tiny, monkeypatch):
  model, params, batch = tiny
  nan_odd = lambda v: jnp.where(jnp.arange(v.length.shape[0]) % 2 == 1,
                                jnp.nan, 1.0)
  monkeypatch.setitem(rewards._REWARDS, "nan_odd",  # pylint: disable=protected-access
                      rewards.Reward("nan_odd", nan_odd))
  fn = _loss_fn(model, batch, monkeypatch, rewards={"exact": 1.0,
                                                    "nan_odd": 1.0})
  loss, m = jax.jit(fn)(params, batch, jax.random.key(0), params)
  assert float(m["nan_rewards"]) == 4
  assert np.isfinite(float(loss)) and np.isfinite(float(m["reward/total_mean"]))
  np.testing.assert_allclose(m["reward/nan_odd_mean"], 0.5)
