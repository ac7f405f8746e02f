"""How much each answer token weighs in the next-token loss.

A chat's loss averages over its answer tokens, so a long answer outweighs
a short one by its length: on the shapes chats with box questions, three
box answers (`[125, 250, 391, 516]`: 21 tokens each) carry about twice the
loss of the thirteen one-word answers beside them. InternVL 2.5's "square
averaging" weighs each token by 1 / sqrt(its answer's length), between
token averaging (every token 1, long answers dominate) and sample
averaging (every answer 1, long answers' tokens starve). Here an answer
is one assistant turn: a run of loss positions in a laid-out chat.

  weights = answer_loss_weights(loss_mask, "square")  # f32[L]

The loss divides by the sum of the weights (`losses.lm_loss`), so only
the answers' shares change, not the loss's scale.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def answer_runs(loss_mask: np.ndarray) -> list[tuple[int, int]]:
  """[start, end) of every run of loss positions (one assistant answer)."""
  on = np.concatenate([[0], (np.asarray(loss_mask) > 0).astype(np.int8), [0]])
  edges = np.flatnonzero(np.diff(on))
  return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


# scheme -> (answer length -> the weight of each of its tokens).
SCHEMES: dict[str, Callable[[int], float]] = {
    "token": lambda n: 1.0,           # every answer token alike (default)
    "square": lambda n: n ** -0.5,    # InternVL 2.5's square averaging
    "sample": lambda n: 1.0 / n,      # every answer alike (sample averaging)
}


def answer_loss_weights(loss_mask: np.ndarray, scheme: str) -> np.ndarray:
  """f32[L]: `loss_mask` with each answer's tokens weighed by `scheme`.

  Raises:
    ValueError: an unknown scheme.
  """
  if scheme not in SCHEMES:
    raise ValueError(f"loss weighting {scheme!r} is not one of "
                     f"{tuple(SCHEMES)}")
  out = np.asarray(loss_mask, np.float32).copy()
  weight = SCHEMES[scheme]
  for start, stop in answer_runs(out):
    out[start:stop] *= weight(stop - start)
  return out
