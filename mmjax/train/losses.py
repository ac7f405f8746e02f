"""Training losses. Each takes model outputs and a batch, returns a scalar."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mmjax.data import naflex as naflex_lib
from mmjax.data import native_resolution as native_lib


def token_losses(logits: jax.Array, targets: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """(cross-entropy, correct) f32[...] per token of logits f32[..., V] and
  targets int32[...].

  One max over the vocabulary serves the log-sum-exp and the accuracy: a
  token is correct when its target's logit is the maximum (an exact tie of
  two top logits counts as correct). On XLA:CPU `jnp.argmax` is a variadic
  (value, index) reduce that cost 2% of the tiny train step on its own.
  """
  top = jax.lax.stop_gradient(jnp.max(logits, -1))
  target_logit = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
  log_z = jnp.log(jnp.sum(jnp.exp(logits - top[..., None]), -1)) + top
  return log_z - target_logit, (target_logit >= top).astype(jnp.float32)


def _token_sums(logits: jax.Array, targets: jax.Array, mask: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """(sum of cross-entropy, sum of correct) over the masked tokens."""
  ce, correct = token_losses(logits, targets)
  return (ce * mask).sum(), (correct * mask).sum()


def _lm_metrics(ce_sum: jax.Array, correct_sum: jax.Array, mask: jax.Array
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  n = jnp.maximum(mask.sum(), 1.0)
  loss = ce_sum / n
  return loss, {"loss": loss, "accuracy": correct_sum / n,
                "tokens": (mask > 0).sum().astype(jnp.float32)}


def lm_loss(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Next-token cross-entropy averaged over the tokens the mask selects.

  Args:
    logits: f32[B, L, V].
    targets: int32[B, L], the token each position should predict.
    loss_mask: f32[B, L], 1 where the position counts (answers, real text);
      other weights > 0 weigh the average (`data/answer_weights.py`).

  Returns:
    (mean loss in nats, {'loss', 'accuracy', 'tokens'}).
  """
  mask = loss_mask.astype(jnp.float32)
  return _lm_metrics(*_token_sums(logits.astype(jnp.float32), targets, mask),
                     mask)


def _sum_over_loss_chunks(hidden: jax.Array, head: Callable[[jax.Array],
                                                           jax.Array],
                          targets: jax.Array, mask: jax.Array, chunk: int,
                          reduce: Callable[..., Any], zeros: Any) -> Any:
  """Sum over `chunk`-position slices of reduce(head(h), targets, mask).

  A chunk where `mask` is all zero skips the head and `reduce` (`lax.cond`,
  in the backward pass too) and adds `zeros` (reduce's output structure).
  """
  if chunk < 1:
    raise ValueError(f"chunk={chunk} must be >= 1 positions")
  run = lambda h, t, m: reduce(head(h).astype(jnp.float32), t, m)
  skip = lambda h, t, m: zeros
  total = zeros
  for start in range(0, hidden.shape[1], chunk):
    part = slice(start, start + chunk)
    m = mask[:, part]
    out = jax.lax.cond(jnp.any(m > 0), run, skip, hidden[:, part],
                       targets[:, part], m)
    total = jax.tree.map(jnp.add, total, out)
  return total


def chunked_lm_loss(hidden: jax.Array, head: Callable[[jax.Array], jax.Array],
                    targets: jax.Array, loss_mask: jax.Array, chunk: int
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`lm_loss(head(hidden), ...)`, computed `chunk` positions at a time.

  A chunk where no row takes a loss (image tokens and prompts in front of
  the answers) skips the head and softmax altogether (`lax.cond`, in the
  backward pass too). Not a memory saving: the computed chunks' logits are
  kept for the backward pass as before.

  Args:
    hidden: [B, L, D] final-normed hidden states.
    head: [B, c, D] -> logits f32[B, c, V] (e.g. `MLLM.head` under apply).
    targets: int32[B, L]; loss_mask: [B, L], as in `lm_loss`.
    chunk: positions per chunk (the last one may be shorter).

  Returns:
    The same (loss, metrics) as `lm_loss` on the full logits.
  """
  mask = loss_mask.astype(jnp.float32)
  zero = jnp.zeros((), jnp.float32)
  sums = _sum_over_loss_chunks(hidden, head, targets, mask, chunk,
                               _token_sums, (zero, zero))
  return _lm_metrics(*sums, mask)


def _check_embeddings(zimg: jax.Array, ztxt: jax.Array) -> None:
  if zimg.ndim != 2 or zimg.shape != ztxt.shape:
    raise ValueError(f"zimg and ztxt must both be [B, E] with the same shape "
                     f"(row i of each is pair i); got {zimg.shape} and "
                     f"{ztxt.shape}.")


def _retrieval_accuracy(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Top-1 image->text and text->image accuracy of a [B, B] logit matrix."""
  target = jnp.arange(logits.shape[0])
  i2t = jnp.mean((jnp.argmax(logits, axis=1) == target).astype(jnp.float32))
  t2i = jnp.mean((jnp.argmax(logits, axis=0) == target).astype(jnp.float32))
  return i2t, t2i


def sigmoid_contrastive_loss(zimg: jax.Array, ztxt: jax.Array,
                             logit_scale: jax.Array, logit_bias: jax.Array
                             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SigLIP pairwise sigmoid loss over a local batch.

  `logits = zimg @ ztxt.T * exp(t') + b`; labels +1 on the diagonal (matching
  pairs) and -1 elsewhere; `loss = mean_i(-sum_j log_sigmoid(labels *
  logits))`, i.e. summed over texts, averaged over images.

  Args:
    zimg: f32[B, E] L2-normalised image embeddings.
    ztxt: f32[B, E] L2-normalised text embeddings; row i pairs with zimg[i].
    logit_scale: scalar t' (raw; the temperature is exp(t')).
    logit_bias: scalar b.

  Returns:
    (loss, {'loss', 'i2t_accuracy', 't2i_accuracy', 'pos_logit',
    'neg_logit', 'temperature'}); the logit metrics are means.
  """
  _check_embeddings(zimg, ztxt)
  n = zimg.shape[0]
  logits = (jnp.dot(zimg.astype(jnp.float32), ztxt.astype(jnp.float32).T)
            * jnp.exp(jnp.asarray(logit_scale, jnp.float32))
            + jnp.asarray(logit_bias, jnp.float32))
  eye = jnp.eye(n, dtype=jnp.float32)
  labels = 2.0 * eye - 1.0
  loss = jnp.mean(-jnp.sum(jax.nn.log_sigmoid(labels * logits), axis=-1))
  i2t, t2i = _retrieval_accuracy(logits)
  n_neg = max(n * (n - 1), 1)
  return loss, {"loss": loss, "i2t_accuracy": i2t, "t2i_accuracy": t2i,
                "pos_logit": jnp.sum(logits * eye) / n,
                "neg_logit": jnp.sum(logits * (1.0 - eye)) / n_neg,
                "temperature": jnp.exp(jnp.asarray(logit_scale, jnp.float32))}


def softmax_contrastive_loss(zimg: jax.Array, ztxt: jax.Array,
                             logit_scale: jax.Array
                             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CLIP loss: symmetric cross-entropy with the matching pair as the target.

  `logits = zimg @ ztxt.T * exp(t')`; loss = (CE over each image's row +
  CE over each text's column) / 2, each averaged over the batch.

  Args:
    zimg: f32[B, E] L2-normalised image embeddings.
    ztxt: f32[B, E] L2-normalised text embeddings; row i pairs with zimg[i].
    logit_scale: scalar t' (raw; the temperature is exp(t')).

  Returns:
    (loss, {'loss', 'i2t_loss', 't2i_loss', 'i2t_accuracy', 't2i_accuracy',
    'temperature'}).
  """
  _check_embeddings(zimg, ztxt)
  logits = (jnp.dot(zimg.astype(jnp.float32), ztxt.astype(jnp.float32).T)
            * jnp.exp(jnp.asarray(logit_scale, jnp.float32)))
  target = jnp.arange(zimg.shape[0])
  i2t_loss = jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, target))
  t2i_loss = jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits.T, target))
  loss = 0.5 * (i2t_loss + t2i_loss)
  i2t, t2i = _retrieval_accuracy(logits)
  return loss, {"loss": loss, "i2t_loss": i2t_loss, "t2i_loss": t2i_loss,
                "i2t_accuracy": i2t, "t2i_accuracy": t2i,
                "temperature": jnp.exp(jnp.asarray(logit_scale, jnp.float32))}


# ---------------------------------------------------------------------------
# Preference tuning (DPO, MPO). DESIGN.md section 5, "Preference tuning".
# ---------------------------------------------------------------------------

PREFERENCE_KINDS = ("dpo", "mpo")
MPO_WEIGHTS = (0.8, 0.2, 1.0)  # (DPO, BCO pair, NLL of chosen), InternVL MPO.


def sequence_logprobs(logits: jax.Array, targets: jax.Array, mask: jax.Array
                      ) -> jax.Array:
  """Log-probability of each sequence's completion.

  Args:
    logits: f32[B, L, V] next-token logits.
    targets: int[B, L], the token each position predicts.
    mask: f32[B, L], 1 on the completion positions that count.

  Returns:
    f32[B]: sum over masked positions of log p(target).
  """
  token_logp = -optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), targets)
  return jnp.sum(token_logp * mask.astype(jnp.float32), axis=-1)


def chunked_sequence_logprobs(hidden: jax.Array,
                              head: Callable[[jax.Array], jax.Array],
                              targets: jax.Array, mask: jax.Array, chunk: int
                              ) -> jax.Array:
  """`sequence_logprobs(head(hidden), ...)`, `chunk` positions at a time,
  skipping chunks without a completion token (as `chunked_lm_loss`).

  hidden: [B, L, D] final-normed; head: [B, c, D] -> f32[B, c, V]. -> f32[B].
  """
  return _sum_over_loss_chunks(
      hidden, head, targets, mask.astype(jnp.float32), chunk,
      sequence_logprobs, jnp.zeros(hidden.shape[:1], jnp.float32))


def _rewards(pol_chosen, pol_rejected, ref_chosen, ref_rejected, beta):
  """Implicit rewards beta * (log pi - log pi_ref), each f32[B]."""
  return beta * (pol_chosen - ref_chosen), beta * (pol_rejected - ref_rejected)


def dpo_loss(pol_chosen: jax.Array, pol_rejected: jax.Array,
             ref_chosen: jax.Array, ref_rejected: jax.Array,
             beta: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DPO (sigmoid) loss: `-log sigmoid(beta*((pc - rc) - (pr - rr)))`.

  Args:
    pol_chosen, pol_rejected: f32[B] policy log-probs of the chosen and
      rejected completions (`sequence_logprobs`).
    ref_chosen, ref_rejected: f32[B] reference-model log-probs.
    beta: inverse temperature of the implicit reward (DPO paper: 0.1).

  Returns:
    (mean loss, {'loss', 'rewards_chosen', 'rewards_rejected',
    'reward_margin', 'reward_accuracy'}); the reward metrics are batch means
    of beta * (policy - reference) (TRL's rewards/chosen, .../margins, ...).
  """
  r_c, r_r = _rewards(pol_chosen, pol_rejected, ref_chosen, ref_rejected,
                      beta)
  loss = jnp.mean(-jax.nn.log_sigmoid(r_c - r_r))
  r_c, r_r = jax.lax.stop_gradient(r_c), jax.lax.stop_gradient(r_r)
  return loss, {"loss": loss, "rewards_chosen": jnp.mean(r_c),
                "rewards_rejected": jnp.mean(r_r),
                "reward_margin": jnp.mean(r_c - r_r),
                "reward_accuracy": jnp.mean((r_c > r_r).astype(jnp.float32))}


def update_reward_mean(old_mean: jax.Array, old_count: jax.Array,
                       r_c: jax.Array, r_r: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """Folds a batch of BCO rewards into the running mean (MPO's delta).

  Every reward counts once, so with a constant batch size this equals TRL's
  `RunningMoments` fed one batch mean per step. Start from (0.0, 0.0); TRL
  updates *before* computing the loss, so the current batch is part of delta
  (`preference_loss(..., reward_state=...)` does the same).

  Args:
    old_mean: scalar running mean of rewards seen so far.
    old_count: scalar number of rewards seen so far (float; 0 at start).
    r_c, r_r: f32[B] chosen and rejected rewards beta * (policy - ref).

  Returns:
    (new_mean, new_count), both f32 scalars; no gradient flows through them.
  """
  rewards = jax.lax.stop_gradient(
      jnp.concatenate([jnp.ravel(r_c), jnp.ravel(r_r)]).astype(jnp.float32))
  n = jnp.float32(rewards.size)
  new_count = jnp.asarray(old_count, jnp.float32) + n
  old_mean = jnp.asarray(old_mean, jnp.float32)
  new_mean = old_mean + (jnp.mean(rewards) - old_mean) * n / new_count
  return new_mean, new_count


def mpo_loss(pol_chosen: jax.Array, pol_rejected: jax.Array,
             ref_chosen: jax.Array, ref_rejected: jax.Array,
             nll_chosen: jax.Array, beta: float = 0.1,
             weights: tuple[float, float, float] = MPO_WEIGHTS,
             delta: jax.Array | float | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mixed Preference Optimisation (InternVL): DPO + BCO pair + NLL.

  `loss = w_p * DPO + w_q * BCO + w_g * NLL` with (w_p, w_q, w_g) = weights
  (0.8, 0.2, 1.0 in InternVL 2.5/3, TRL `loss_type=['sigmoid', 'bco_pair',
  'sft']`). With r_c = beta*(pc - rc), r_r = beta*(pr - rr):
  `BCO = mean(-log sigmoid(r_c - delta) - log sigmoid(-(r_r - delta)))`.

  Args:
    pol_chosen, pol_rejected, ref_chosen, ref_rejected: f32[B] summed
      completion log-probs, as for `dpo_loss`.
    nll_chosen: the generation (SFT) loss of the chosen completions: a scalar
      or f32[B] (averaged). `preference_loss` passes TRL's normalisation,
      the NLL summed over every chosen completion token of the batch divided
      by the number of those tokens; pass f32[B] per-sequence token means for
      a per-example normalisation instead.
    beta: reward inverse temperature.
    weights: (DPO, BCO, NLL) weights.
    delta: BCO reward shift, the running mean of past rewards (keep it with
      `update_reward_mean`). None falls back to the mean of this batch's
      2B rewards; that fallback sees only one batch, so it is noisier than
      the running mean. Gradients never flow through delta.

  Returns:
    (loss, metrics): the `dpo_loss` metrics plus 'dpo_loss', 'bco_loss',
    'nll_loss', 'bco_delta' and 'loss'.
  """
  w_p, w_q, w_g = weights
  dpo, metrics = dpo_loss(pol_chosen, pol_rejected, ref_chosen, ref_rejected,
                          beta)
  r_c, r_r = _rewards(pol_chosen, pol_rejected, ref_chosen, ref_rejected,
                      beta)
  if delta is None:
    delta = jnp.mean(jnp.concatenate([r_c, r_r]))
  delta = jax.lax.stop_gradient(jnp.asarray(delta, jnp.float32))
  bco = jnp.mean(-jax.nn.log_sigmoid(r_c - delta)
                 - jax.nn.log_sigmoid(-(r_r - delta)))
  nll = jnp.mean(nll_chosen)
  loss = w_p * dpo + w_q * bco + w_g * nll
  metrics.update(loss=loss, dpo_loss=dpo, bco_loss=bco, nll_loss=nll,
                 bco_delta=delta)
  return loss, metrics


_PAIR_KEYS = ("tokens", "targets", "loss_mask", "positions",
              "image_token_mask", "media_locations")


def _pad_to(x: jax.Array, length: int, axis: int) -> jax.Array:
  """Right-pads `x` with zeros along `axis` up to `length`."""
  width = [(0, 0)] * x.ndim
  width[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, width)


def concat_preference_pair(batch: dict[str, jax.Array]
                           ) -> dict[str, jax.Array | None]:
  """Stacks `chosen_*` over `rejected_*` into one batch of 2B rows.

  Rows 0..B-1 are the chosen sequences, B..2B-1 the rejected ones. The two
  sides may differ in length: the shorter is right-padded with zeros (pad
  token, mask 0), which a causal LM never reads from earlier positions.
  Positions concatenate on axis 0 ([B, L], int or V2PE float) or axis 1
  ([3, B, L], M-RoPE). `images`/`image_mask` (or a native-resolution
  batch's `native_*` packed patches) are shared and repeated.

  Returns:
    {'tokens', 'targets', 'loss_mask', 'positions', 'image_token_mask',
    'media_locations', 'images', 'image_mask'}; optional keys are None when
    the batch lacks them.
  """
  length = max(batch["chosen_tokens"].shape[-1],
               batch["rejected_tokens"].shape[-1])
  out = {}
  for key in _PAIR_KEYS:
    chosen, rejected = batch.get("chosen_" + key), batch.get("rejected_" + key)
    if chosen is None or rejected is None:
      if (chosen is None) != (rejected is None):
        raise ValueError(f"preference batch has only one of chosen_{key} and "
                         f"rejected_{key}; give both or neither.")
      out[key] = None
      continue
    axis = 1 if chosen.ndim == 3 else 0  # M-RoPE positions are [3, B, L].
    out[key] = jnp.concatenate([_pad_to(chosen, length, chosen.ndim - 1),
                                _pad_to(rejected, length, rejected.ndim - 1)],
                               axis=axis)
  for key in (("images", "image_mask") + native_lib.BATCH_KEYS +
              naflex_lib.BATCH_KEYS):
    value = batch.get(key)
    out[key] = None if value is None else jnp.concatenate([value, value], 0)
  return out


def preference_loss(model_apply: Callable[..., jax.Array], params: Any,
                    ref_params: Any, batch: dict[str, jax.Array],
                    kind: str = "dpo", beta: float = 0.1, *,
                    mpo_weights: tuple[float, float, float] = MPO_WEIGHTS,
                    reward_state: tuple[jax.Array, jax.Array] | None = None,
                    head_apply: Callable[[Any, jax.Array], jax.Array] | None
                    = None, loss_chunk: int = 0
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DPO or MPO loss of a policy against a frozen reference model.

  Each model runs ONCE on the chosen and rejected sequences stacked along
  the batch axis (`concat_preference_pair`); the reference is wrapped in
  `jax.lax.stop_gradient` (its parameters and its logits), so it never
  receives a gradient.

  Args:
    model_apply: `(params, tokens, positions, images=, image_mask=,
      image_token_mask=, media_locations=) -> logits f32[N, L, V]`, e.g.
      `lambda p, *a, **k: MLLM(cfg).apply({'params': p}, *a, **k)[0]`.
    params: policy parameters (differentiated).
    ref_params: reference parameters (the SFT model).
    batch: `chosen_{tokens,targets,loss_mask,positions,image_token_mask,
      media_locations}`, the same `rejected_*`, and the shared `images`
      f32[B, M, H, W, C] and `image_mask` bool[B, M]; loss_mask marks the
      completion tokens whose log-probs are summed.
    kind: 'dpo' or 'mpo'.
    beta: reward inverse temperature.
    mpo_weights: (DPO, BCO, NLL) weights for kind='mpo'.
    reward_state: MPO only: (running mean, count) of past rewards. When
      given, this batch is folded in first (as TRL does), the updated mean is
      delta, and metrics carry the new state as 'reward_mean' and
      'reward_count' for the caller to keep. None uses the batch-mean
      fallback of `mpo_loss`.
    head_apply, loss_chunk: with loss_chunk > 0, model_apply is called with
      `logits=False` (final-normed hidden states) and `head_apply(params,
      hidden)` maps `loss_chunk` positions at a time to logits, skipping
      chunks without a completion token (`chunked_sequence_logprobs`).

  Returns:
    (loss, metrics) of `dpo_loss` / `mpo_loss`, plus 'logps_chosen' and
    'logps_rejected' (policy batch means).
  """
  if kind not in PREFERENCE_KINDS:
    raise ValueError(f"preference kind {kind!r} is not allowed; allowed: "
                     f"{', '.join(PREFERENCE_KINDS)}.")
  pair = concat_preference_pair(batch)
  n = batch["chosen_tokens"].shape[0]

  if loss_chunk and head_apply is None:
    raise ValueError("loss_chunk > 0 needs head_apply (hidden -> logits)")
  mask = pair["loss_mask"].astype(jnp.float32)

  def logps_of(p):
    kw = {"logits": False} if loss_chunk else {}
    native = native_lib.model_inputs(pair)
    if native is not None:  # a Qwen2-VL tower's packed patches per row
      kw["native"] = native
    naflex = naflex_lib.model_inputs(pair)
    if naflex is not None:  # a NaFlex tower's patch rows
      kw["naflex"] = naflex
    out = model_apply(p, pair["tokens"], pair["positions"],
                      images=pair["images"], image_mask=pair["image_mask"],
                      image_token_mask=pair["image_token_mask"],
                      media_locations=pair["media_locations"], **kw)
    if not loss_chunk:
      return sequence_logprobs(out, pair["targets"], mask)
    return chunked_sequence_logprobs(out, lambda h: head_apply(p, h),
                                     pair["targets"], mask, loss_chunk)

  logps = logps_of(params)
  ref_logps = jax.lax.stop_gradient(logps_of(
      jax.lax.stop_gradient(ref_params)))
  pc, pr, rc, rr = logps[:n], logps[n:], ref_logps[:n], ref_logps[n:]
  if kind == "dpo":
    loss, metrics = dpo_loss(pc, pr, rc, rr, beta)
  else:
    nll = -jnp.sum(pc) / jnp.maximum(jnp.sum(mask[:n]), 1.0)
    delta = None
    if reward_state is not None:
      r_c, r_r = _rewards(pc, pr, rc, rr, beta)
      delta, count = update_reward_mean(*reward_state, r_c, r_r)
    loss, metrics = mpo_loss(pc, pr, rc, rr, nll, beta, mpo_weights, delta)
    if reward_state is not None:
      metrics.update(reward_mean=delta, reward_count=count)
  metrics.update(logps_chosen=jnp.mean(jax.lax.stop_gradient(pc)),
                 logps_rejected=jnp.mean(jax.lax.stop_gradient(pr)))
  return loss, metrics
