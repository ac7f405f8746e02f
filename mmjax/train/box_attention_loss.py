"""Attention supervision for box answers: a head taught to look at the box.

The `lm` stage option `box_attention_weight` (> 0) adds to the next-token
loss, at that weight, the mean over the positions that write a box answer
(`box_query` > 0, `mmjax/data/box_attention.py`) of

  -log(sum of one head's attention probabilities on the image tokens under
       the box)

for the head `box_attention_head` of the decoder layer
`box_attention_layer` (default: head 0 of the last layer; head -1: every
head of the layer, the mean of their terms); the other heads stay free.
It is the attention mass a head puts on the named object (as in
supervised-attention grounding work), computed from the layer's own
rotated q and k (`layers.Attention` sows them), so it is exactly that
head's softmax: the same score scale and soft-cap, over the causal prefix.
The answer follows its image, so no other mask matters at these positions;
packed rows are refused by the pipeline. What it buys on the shapes
benchmark is measured in docs/evaluation.md (box attention).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mmjax.models import masks

# A finite "minus infinity": a row with nothing to sum must keep finite
# gradients (its value is multiplied by 0, but -inf would make NaN).
_NEG = -1e30


def head_log_probs(q: jax.Array, k: jax.Array, head: int, *,
                   scale: float, softcap: float = 0.0) -> jax.Array:
  """Causal attention log-probabilities f32[B, L, L] of one query head.

  q: [B, L, H, Dh]; k: [B, L, Kh, Dh] (rotated, as the layer uses them);
  query head `head` reads KV head head // (H // Kh) (GQA).
  """
  group = q.shape[2] // k.shape[2]
  scores = jnp.einsum("bqd,bkd->bqk", q[:, :, head].astype(jnp.float32),
                      k[:, :, head // group].astype(jnp.float32)) * scale
  if softcap > 0:
    scores = softcap * jnp.tanh(scores / softcap)
  length = scores.shape[1]
  causal = masks.causal_mask(length, length)[None]
  return jax.nn.log_softmax(jnp.where(causal, scores, _NEG), axis=-1)


def box_attention_loss(log_probs: jax.Array, box_query: jax.Array,
                       box_keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(loss, mean attention mass on the box) of one head's log-probabilities.

  Args:
    log_probs: f32[B, L, L] (`head_log_probs`).
    box_query: int32[B, L], k >= 1 where the position writes box k.
    box_keys: int32[B, L], bit k - 1 set on the image tokens under box k.

  Returns:
    the mean over box-writing positions of -log(mass on the box), and the
    mean mass itself (a metric: 1 = all of that head's attention on the
    box); both 0 in a batch without a box answer.
  """
  length = log_probs.shape[1]
  bit = jnp.maximum(box_query - 1, 0)
  under = ((box_keys[:, None, :] >> bit[:, :, None]) & 1).astype(bool)
  under &= masks.causal_mask(length, length)[None]
  log_mass = jax.nn.logsumexp(jnp.where(under, log_probs, _NEG), axis=-1)
  on = box_query > 0
  count = jnp.maximum(on.sum(), 1)
  loss = -jnp.where(on, log_mass, 0.0).sum() / count
  mass = jnp.where(on, jnp.exp(log_mass), 0.0).sum() / count
  return loss, mass


def layer_query_keys(intermediates: Mapping[str, Any], layer: int,
                     n_layers: int) -> tuple[jax.Array, jax.Array]:
  """The (q, k) that decoder layer `layer` (negative: from the end) sowed."""
  index = layer % n_layers
  try:
    sown = intermediates["llm"][f"layers_{index}"]["attn"]["query_keys"]
  except KeyError as e:
    raise ValueError(
        f"no attention of decoder layer {index} was recorded: "
        "box_attention_weight needs the decoder's layers unscanned "
        "(scan_layers=False) and image tokens in the LM's sequence") from e
  return sown[0]
