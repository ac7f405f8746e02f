"""Rule-based rewards of sampled completions, by name (stage kind `grpo`).

  view = rewards.View(tokens, length, stopped, gold, gold_len, numbers)
  r = rewards.weighted({"exact": 1.0, "format": 0.1}, view)   # f32[R]
  rewards.names()       # ('exact', 'numeric', 'format', 'length', 'iou')

Rewards run inside the jitted train step, so they compare token ids, not
strings: a completion is scored against the gold answer's tokens (as the
`shapes` pipeline wrote them, end of turn included). Each reward is a
function View -> f32[R]; adding one is one `register` call.

  exact    1 if the completion is the gold answer token for token, ended
           by the end of turn (the tokenised form of the VQA evaluator's
           exact match; stricter only where two spellings tokenise
           differently, which the shapes vocabulary does not have)
  numeric  count answers: exp(-|predicted - gold|) when the gold answer is
           one number token ("three" or "3") and the completion's first
           token is one; 0 otherwise (no credit on other questions)
  format   1 if the completion is a non-empty answer ended by the end of
           turn within max_new_tokens (a parsable one-word answer)
  length   -(completion tokens) / max_new_tokens: a length penalty
  iou      box answers (grounding): not available, the `shapes` prompts
           carry none; naming it is a config error
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Number words a count answer may be written as (shapes counts are
# "one".."six"); digits are numbers too.
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six",
                "seven", "eight", "nine", "ten")


class View(NamedTuple):
  """What a reward sees (R rollout rows, N = max_new_tokens).

  tokens: int32[R, N] sampled ids (pad after the stop token); length:
  int32[R], tokens up to and including the stop (N if none); stopped:
  bool[R]; gold: int32[R, N] the gold answer tokens then its end of turn,
  -1 after; gold_len: int32[R] (may exceed N); numbers: f32[V], the number
  a token id spells (NaN: none).
  """
  tokens: jax.Array
  length: jax.Array
  stopped: jax.Array
  gold: jax.Array
  gold_len: jax.Array
  numbers: jax.Array


@dataclasses.dataclass(frozen=True)
class Reward:
  name: str
  # None for a reward that is only named, so the config check can say why
  # it cannot be used (`unavailable`) instead of calling it "unknown".
  fn: Callable[[View], jax.Array] | None
  # None: usable; else why a config naming it is refused.
  unavailable: str | None = None


_REWARDS: dict[str, Reward] = {}


def register(reward: Reward) -> Reward:
  if reward.name in _REWARDS:
    raise ValueError(f"reward {reward.name!r} is registered twice")
  _REWARDS[reward.name] = reward
  return reward


def names() -> tuple[str, ...]:
  return tuple(_REWARDS)


def get(name: str) -> Reward:
  if name not in _REWARDS:
    raise KeyError(f"unknown reward {name!r}; rewards: "
                   f"{', '.join(names())}")
  return _REWARDS[name]


def _exact(v: View) -> jax.Array:
  n = v.tokens.shape[1]
  upto = jnp.arange(n)[None] < v.gold_len[:, None]
  same = jnp.all(jnp.where(upto, v.tokens == v.gold, True), axis=1)
  return (same & v.stopped & (v.length == v.gold_len)).astype(jnp.float32)


def _numeric(v: View) -> jax.Array:
  table = v.numbers
  gold = jnp.where(v.gold_len == 2, table[jnp.maximum(v.gold[:, 0], 0)],
                   jnp.nan)
  pred = table[v.tokens[:, 0]]
  score = jnp.exp(-jnp.abs(pred - gold))
  return jnp.where(jnp.isnan(score), 0.0, score).astype(jnp.float32)


def _format(v: View) -> jax.Array:
  return (v.stopped & (v.length >= 2)).astype(jnp.float32)


def _length(v: View) -> jax.Array:
  return -v.length.astype(jnp.float32) / v.tokens.shape[1]


register(Reward("exact", _exact))
register(Reward("numeric", _numeric))
register(Reward("format", _format))
register(Reward("length", _length))
register(Reward("iou", None, unavailable=(
    "box answers are not in the 'shapes' prompts the grpo stage reads "
    "(only shapes_chat chats with data.grounding_questions > 0 have them)")))


def number_table(tokenizer, vocab_size: int) -> np.ndarray:
  """f32[V]: the number each token id spells ("three", "▁3"), NaN if none.

  tokenizer None (fit planning): all NaN.
  """
  table = np.full((vocab_size,), np.nan, np.float32)
  if tokenizer is None:
    return table
  for i in range(min(vocab_size, tokenizer.vocab_size)):
    text = tokenizer.decode([i]).strip().lower()
    if text in NUMBER_WORDS:
      table[i] = NUMBER_WORDS.index(text)
    elif text.isdigit() and len(text) <= 4:
      table[i] = float(text)
  return table


def all_rewards(weights: Mapping[str, float], view: View
                ) -> dict[str, jax.Array]:
  """{name: f32[R]} of every reward named in `weights`, NaN kept
  (the stage's config check has refused unavailable ones)."""
  out = {}
  for name in weights:
    reward = get(name)
    if reward.fn is None:
      raise ValueError(f"reward {name!r} is unavailable: {reward.unavailable}")
    out[name] = reward.fn(view)
  return out


def weighted(weights: Mapping[str, float], view: View) -> jax.Array:
  """f32[R]: sum of weight * reward over `weights` (zero weights skipped)."""
  total = jnp.zeros(view.length.shape, jnp.float32)
  for name, r in all_rewards(weights, view).items():
    if weights[name]:
      total = total + float(weights[name]) * r
  return total
