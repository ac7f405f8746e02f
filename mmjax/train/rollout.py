"""Rollouts inside the jitted train step (stage kind `grpo`).

  comp = rollout.sample(model, params, batch, rng, group_size=8,
                        max_new_tokens=4, sampling=Sampling(temperature=1.0))
  seqs = rollout.policy_batch(batch, comp, group_size=8)   # [B*G, L + N]

The prompts come as the `shapes` pipeline lays out a training example:
right-padded rows of prompt, gold answer and end of turn, the answer (with
its end of turn) loss-masked in `targets`. So the data, its buckets and its
resumable iterator state are the `shapes` format's, unchanged; the gold
answer travels in the batch as those targets (`gold_answers`).

The KV-cache decode loop (`mmjax.decoding.decode.prefill` / `decode`, the
programs `generate` runs) wants every prompt to end at the same cache slot:
`decode_inputs` left-pads the prompts with a gather per row, in the step.
Everything here is traceable, so sampling happens under the same jit as the
update, from the parameters of that step (docs/rl.md says why).

Row r of a rollout batch is completion r % G of prompt r // G.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from mmjax.decoding import decode as decode_lib
from mmjax.decoding.sampling import Sampling
from mmjax.models.mllm import MLLM
from mmjax.train.stages import lm


class Completions(NamedTuple):
  """G sampled completions per prompt (R = B * G rows, N = max_new_tokens).

  tokens: int32[R, N], the sampled ids, pad after the stop token.
  length: int32[R], tokens up to and including the stop token (N when the
    row never stopped, 0 for a padding row). stopped: bool[R], it ended
    with a stop token.
  stop_id: int32[R], the end-of-turn id of the row's prompt (the last gold
    target). prompt_len: int32[R], prompt tokens of the row.
  """
  tokens: jax.Array
  length: jax.Array
  stopped: jax.Array
  stop_id: jax.Array
  prompt_len: jax.Array


def prompt_lengths(loss_mask: jax.Array) -> jax.Array:
  """int32[B]: prompt tokens per row (up to the first answer token)."""
  return lm.prefix_len_from_loss_mask(loss_mask)


def _gather_time(x: jax.Array, src: jax.Array, keep: jax.Array,
                 fill) -> jax.Array:
  """out[..., b, t] = x[..., b, src[b, t]] where keep[b, t], else fill.

  x: [..., B, L] (M-RoPE positions carry a leading axis of 3); src, keep:
  [B, T].
  """
  idx = jnp.broadcast_to(jnp.clip(src, 0, x.shape[-1] - 1),
                         x.shape[:-2] + src.shape)
  out = jnp.take_along_axis(x, idx, axis=-1)
  return jnp.where(keep, out, jnp.asarray(fill, x.dtype))


def _at(x: jax.Array, index: jax.Array) -> jax.Array:
  """x[..., b, index[b]] of x [..., B, L]: [..., B]."""
  return _gather_time(x, index[:, None], jnp.ones_like(index[:, None], bool),
                      0)[..., 0]


def gold_answers(batch: Mapping[str, jax.Array], max_new_tokens: int
                 ) -> tuple[jax.Array, jax.Array]:
  """The gold answer of each row, as its completion would be written.

  Returns:
    tokens int32[B, N]: the loss-masked targets from the first one (the
    answer, then its end of turn), -1 past them; length int32[B]: how many
    (answer + end of turn; may exceed N, then no completion can match).
  """
  mask = batch["loss_mask"] > 0
  n = prompt_lengths(batch["loss_mask"])
  length = mask.sum(1).astype(jnp.int32)
  steps = jnp.arange(max_new_tokens)[None]
  keep = steps < length[:, None]
  tokens = _gather_time(batch["targets"], n[:, None] - 1 + steps, keep, -1)
  return tokens.astype(jnp.int32), length


def decode_inputs(model: MLLM, params: Any, batch: Mapping[str, jax.Array],
                  group_size: int) -> dict[str, Any]:
  """`decode.prefill`'s batch (as `decode.prepare_batch` lays one out) for
  G copies of each prompt: left-padded to the batch length L, images
  encoded once per prompt and shared by its copies."""
  tokens = batch["tokens"]
  b, length = tokens.shape
  n = prompt_lengths(batch["loss_mask"])
  # Slot j of the left-padded row b holds prompt token j - (L - n_b).
  src = jnp.arange(length)[None] - (length - n)[:, None]
  keep = src >= 0
  out = {"tokens": _gather_time(tokens, src, keep, 0),
         "valid": keep,
         "positions": _gather_time(batch["positions"], src, keep, 0),
         "image_token_mask": _gather_time(batch["image_token_mask"], src,
                                          keep, False),
         "media_locations": _gather_time(batch["media_locations"], src, keep,
                                         False)}
  # The first generated token sits where the first gold answer token does.
  first = _at(batch["positions"], n)
  if model.cfg.positions == "mrope":
    out["start"] = first[0]
    out["rope_delta"] = (first[0] - n).astype(jnp.int32)
  else:
    out["start"] = first
    out["rope_delta"] = jnp.zeros((b,), jnp.int32)
  out["lengths"] = n
  out["media_count"] = out["media_locations"].sum(1).astype(jnp.int32)
  # Padding rows (no prompt) are done before they start.
  out["done"] = ~batch.get("valid", jnp.ones((b,), bool)) | (n == 0)
  out["image_mask"] = batch.get("image_mask")
  if batch.get("images") is not None:
    # Encoded once per prompt; prefill reads `visual` instead of `images`.
    out["visual"] = model.apply({"params": params}, batch["images"],
                                method=MLLM.encode_images)
  # M-RoPE positions are [3, B, L]: their batch axis is the second.
  out = {k: None if v is None else jnp.repeat(
      v, group_size, axis=v.ndim - 2 if k == "positions" else 0)
         for k, v in out.items()}
  out["images"] = None
  out["row_ids"] = jnp.arange(b * group_size, dtype=jnp.int32)
  return out


def sample(model: MLLM, params: Any, batch: Mapping[str, jax.Array],
           rng: jax.Array, *, group_size: int, max_new_tokens: int,
           sampling: Sampling) -> Completions:
  """G completions per prompt from `params` (no gradient flows back).

  The stop token of a row is its prompt's end of turn (the last gold
  target), so no tokenizer is needed in the step. Row r draws from
  fold_in(key(seed), r) with seed from `rng` (the decode loop's per-row
  streams): the same rng gives the same completions.
  """
  params = jax.lax.stop_gradient(params)
  n = prompt_lengths(batch["loss_mask"])
  answer = (batch["loss_mask"] > 0).sum(1)
  # The last gold target; -1 for padding rows (evaluation), which have none.
  stop = jnp.where(answer > 0, _at(batch["targets"], n - 2 + answer), -1)
  stop = stop.astype(jnp.int32)
  real = jnp.repeat(batch.get("valid", jnp.ones(n.shape, bool)) &
                    (answer > 0), group_size)
  inputs = decode_inputs(model, params, batch, group_size)
  # The decode loop stops a row at any id of one set: every row's end of
  # turn (a dataset written with one tokenizer has one).
  stop_ids = jnp.unique(stop, size=8, fill_value=-1)
  seed = jax.random.randint(rng, (), 0, jnp.iinfo(jnp.int32).max)
  state, ctx = decode_lib.prefill(
      model, params, inputs, stop_ids, jnp.int32(0), seed,
      max_new_tokens=max_new_tokens, sampling=sampling)
  state = decode_lib.decode(model, params, ctx, state,
                            jnp.int32(max_new_tokens), sampling=sampling)
  tokens = state.tokens
  is_stop = jnp.isin(tokens, stop_ids)
  stopped = is_stop.any(1) & real
  length = jnp.where(stopped, jnp.argmax(is_stop, 1) + 1, max_new_tokens)
  length = jnp.where(real, length, 0)  # padding rows: nothing to score
  return Completions(
      tokens=tokens, length=length.astype(jnp.int32), stopped=stopped,
      stop_id=jnp.repeat(stop, group_size),
      prompt_len=jnp.repeat(n, group_size))


def policy_batch(batch: Mapping[str, jax.Array], comp: Completions,
                 group_size: int) -> dict[str, jax.Array]:
  """[prompt | completion] rows the policy and the reference are scored on.

  Returns a pipeline-shaped batch (without `images`) of R = B * G rows of
  T = L + N tokens: the prompt as the pipeline laid it out, then the
  completion at the following positions; loss_mask f32[R, T] is 1 where
  the target is a completion token (up to and including its stop token).
  """
  n = comp.prompt_len
  big = lambda x, axis=0: jnp.repeat(x, group_size, axis=axis)
  positions = batch["positions"]
  mrope = positions.ndim == 3
  positions = big(positions, 1 if mrope else 0)
  b_rows, length = comp.tokens.shape[0], batch["tokens"].shape[1]
  total = length + comp.tokens.shape[1]
  t = jnp.arange(total)[None]
  in_prompt = t < n[:, None]
  from_prompt = lambda x, fill: _gather_time(x, jnp.broadcast_to(
      t, (b_rows, total)), in_prompt, fill)
  step = t - n[:, None]          # completion token index at slot t
  in_comp = (step >= 0) & (step < comp.tokens.shape[1])
  completion = _gather_time(comp.tokens, step, in_comp, 0)
  tokens = jnp.where(in_prompt, from_prompt(big(batch["tokens"]), 0),
                     completion)
  first = _at(positions, n)      # where the gold answer started
  gen_pos = first[..., None] + step.astype(first.dtype)
  pos = jnp.where(in_prompt, from_prompt(positions, 0), gen_pos)
  targets = jnp.concatenate([tokens[:, 1:], jnp.zeros((b_rows, 1),
                                                      tokens.dtype)], 1)
  # Slot t predicts token t + 1: completion token s is predicted at
  # slot n - 1 + s.
  mask = (t >= n[:, None] - 1) & (t < n[:, None] - 1 + comp.length[:, None])
  out = {"tokens": tokens, "targets": targets, "positions": pos,
         "loss_mask": mask.astype(jnp.float32),
         "image_token_mask": from_prompt(big(batch["image_token_mask"]),
                                         False),
         "media_locations": from_prompt(big(batch["media_locations"]),
                                        False)}
  # The images stay per prompt (`grpo.policy_logprobs` encodes them once);
  # their mask goes with each row.
  if batch.get("image_mask") is not None:
    out["image_mask"] = big(batch["image_mask"])
  return out
