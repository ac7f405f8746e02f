"""SigLIP sigmoid loss over a batch-sharded mesh, without global B x B logits.

The plain loss (`losses.sigmoid_contrastive_loss`) on a batch sharded over n
devices makes each device hold (at least) a [B / n, B] stripe of logits and
its gradient: memory quadratic in the global batch B. Here each device keeps
its b = B / n image embeddings and passes the text embeddings around a ring
(open_clip's `SigLipLoss` with `neighbour_exchange`; big_vision lacks it):

  step 0:      logits of local images vs local texts, [b, b], positives on
               the diagonal;
  step k>0:    receive the previous device's text chunk (`lax.ppermute`) and
               add the negatives-only loss of local images vs that chunk.

After n - 1 exchanges every image has met every text. Each block is
rematerialised (`jax.checkpoint`), so the backward pass keeps only the text
chunks ([B, E] per device over all steps) and one [b, block_size] block of
logits at a time (block_size = b unless set). The summed losses are divided
by the global batch: the value and its gradients equal the plain loss's (the
cotangents of the text chunks travel back round the ring through the
transposed ppermutes).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, Mesh, PartitionSpec as P

from mmjax import parallel
from mmjax.train import losses


def _block(zimg: jax.Array, ztxt: jax.Array, scale: jax.Array,
           bias: jax.Array, offset: jax.Array | int, diagonal: bool
           ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  """Loss sum and metric statistics of one [b, c] block of the logits.

  Args:
    zimg: f32[b, E] this device's images.
    ztxt: f32[c, E] texts: columns offset..offset+c-1 of a device's chunk.
    scale: scalar exp(t').
    bias: scalar b.
    offset: int32 scalar, the block's first column within the chunk.
    diagonal: True for the device's own chunk: image i pairs with text
      column i, i.e. the block's column i - offset.

  Returns:
    (sum of -log_sigmoid(labels * logits) over the block, stats), stats =
    (positive logit per image f32[b] (0 where the pair is elsewhere), max
    negative logit per image f32[b], max negative logit per text f32[c], sum
    of the negative logits).
  """
  logits = jnp.dot(zimg, ztxt.T) * scale + bias
  if diagonal:
    rows = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    pair = rows == cols + offset
  else:
    pair = jnp.zeros(logits.shape, bool)
  loss = -jnp.sum(jax.nn.log_sigmoid(jnp.where(pair, logits, -logits)))
  logits = jax.lax.stop_gradient(logits)
  neg = jnp.where(pair, -jnp.inf, logits)
  stats = (jnp.sum(jnp.where(pair, logits, 0.0), axis=1),
           jnp.max(neg, axis=1), jnp.max(neg, axis=0),
           jnp.sum(jnp.where(pair, 0.0, logits)))
  return loss, stats


def _chunk(zimg: jax.Array, ztxt: jax.Array, scale: jax.Array,
           bias: jax.Array, diagonal: bool, block_size: int
           ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  """`_block` over one device's whole text chunk f32[b, E], in column blocks.

  Scans over b / block_size blocks of texts, each rematerialised, so no more
  than one [b, block_size] block of logits is live, forward or backward.
  Returns the same (loss, stats) as one `_block` over the chunk.
  """
  b, e = ztxt.shape
  k = b // block_size
  block = jax.checkpoint(_block, static_argnums=(5,))
  txt = ztxt.reshape(k, block_size, e)
  loss, (pos, img_max, txt_max, neg_sum) = block(zimg, txt[0], scale, bias, 0,
                                                 diagonal)
  if k == 1:
    return loss, (pos, img_max, txt_max, neg_sum)

  def body(carry, xs):
    j, txt_j = xs
    loss, pos, img_max, neg_sum = carry
    l, (p, i_max, t_max, n_sum) = block(zimg, txt_j, scale, bias,
                                        j * block_size, diagonal)
    return (loss + l, pos + p, jnp.maximum(img_max, i_max),
            neg_sum + n_sum), t_max

  (loss, pos, img_max, neg_sum), txt_maxes = jax.lax.scan(
      body, (loss, pos, img_max, neg_sum),
      (jnp.arange(1, k, dtype=jnp.int32), txt[1:]))
  txt_max = jnp.concatenate([txt_max[None], txt_maxes]).reshape(b)
  return loss, (pos, img_max, txt_max, neg_sum)


def _ring_loss(zimg: jax.Array, ztxt: jax.Array, logit_scale: jax.Array,
               logit_bias: jax.Array, *, axes: tuple[str, ...], n: int,
               block_size: int) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-device body under shard_map: zimg, ztxt f32[b, E]; scalars."""
  scale = jnp.exp(logit_scale)
  chunk = jax.checkpoint(_chunk, static_argnums=(4, 5))
  ring = [(i, (i + 1) % n) for i in range(n)]
  shift = functools.partial(jax.lax.ppermute, axis_name=axes, perm=ring)

  loss, (pos, img_max, txt_max, neg_sum) = chunk(
      zimg, ztxt, scale, logit_bias, True, block_size)

  def step(carry, _):
    txt, txt_max, loss, img_max, neg_sum = carry
    # The text chunk travels with the running max over the images it met.
    txt, txt_max = shift(txt), shift(txt_max)
    l, (_, i_max, t_max, n_sum) = chunk(zimg, txt, scale, logit_bias, False,
                                        block_size)
    return (txt, jnp.maximum(txt_max, t_max), loss + l,
            jnp.maximum(img_max, i_max), neg_sum + n_sum), None

  carry = (ztxt, txt_max, loss, img_max, neg_sum)
  carry, _ = jax.lax.scan(step, carry, length=n - 1)
  _, txt_max, loss, img_max, neg_sum = carry
  # After n - 1 steps each chunk sits one device before its home: send the
  # max back to the device that holds its positive logits.
  txt_max = shift(txt_max)

  total = n * zimg.shape[0]

  def mean(x):
    return jax.lax.psum(jnp.sum(x), axes) / total

  loss = mean(loss)
  return loss, {
      "loss": loss,
      "i2t_accuracy": mean((pos > img_max).astype(jnp.float32)),
      "t2i_accuracy": mean((pos > txt_max).astype(jnp.float32)),
      "pos_logit": mean(pos),
      "neg_logit": (jax.lax.psum(neg_sum, axes)
                    / max(total * (total - 1), 1)),
      "temperature": jax.lax.stop_gradient(scale),
  }


def _batch_axes() -> tuple[str, ...]:
  """Mesh axes of the logical 'batch' axis under the rules in scope."""
  rules = nn.get_logical_axis_rules() or parallel.DEFAULT_RULES
  axes = nn.logical_to_mesh_axes(("batch",), rules)[0]
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def chunked_sigmoid_loss(zimg: jax.Array, ztxt: jax.Array,
                         logit_scale: jax.Array, logit_bias: jax.Array,
                         mesh: Mesh | AbstractMesh | None = None,
                         axes: Sequence[str] | None = None,
                         block_size: int | None = None
                         ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`losses.sigmoid_contrastive_loss` over a sharded batch, ring-exchanged.

  Call inside or outside jit with global arrays; the batch is (re)sharded
  over `axes`. Other mesh axes hold replicas.

  Args:
    zimg: f32[B, E] L2-normalised image embeddings, global batch.
    ztxt: f32[B, E] L2-normalised text embeddings; row i pairs with zimg[i].
    logit_scale: scalar t' (the temperature is exp(t')).
    logit_bias: scalar b.
    mesh: the device mesh; None = the mesh set by `jax.set_mesh` (the
      trainer traces its steps in `parallel.sharding_context`).
    axes: mesh axes the batch is split over; B must be divisible by the
      product n of their sizes. None = the mesh axes of the logical 'batch'
      axis under the logical rules in scope (`nn.logical_axis_rules`), else
      of parallel.DEFAULT_RULES: ('data', 'fsdp').
    block_size: texts per block of logits, dividing b = B / n; None = b.
      Each device holds one [b, block_size] block (and its gradient) at a
      time: set it when b is so large that [b, b] matters (memory then grows
      linearly in B at a fixed n).

  Returns:
    (loss, metrics) with the same keys and values as the plain loss: 'loss',
    'i2t_accuracy', 't2i_accuracy', 'pos_logit', 'neg_logit', 'temperature'.
    Accuracies count the pair as right when its logit beats every other one
    strictly (argmax differs only on exact ties).
  """
  losses._check_embeddings(zimg, ztxt)  # pylint: disable=protected-access
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      raise ValueError("chunked_sigmoid_loss needs a mesh: pass mesh= or "
                       "call it under jax.set_mesh (parallel.sharding_context)")
  if axes is None:
    axes = _batch_axes()
    if not axes:  # rules that do not shard the batch: nothing to exchange
      return losses.sigmoid_contrastive_loss(zimg, ztxt, logit_scale,
                                             logit_bias)
  axes = tuple(axes)
  unknown = [a for a in axes if a not in mesh.shape]
  if unknown:
    raise ValueError(f"axes {unknown} are not mesh axes; the mesh has "
                     f"{list(mesh.shape)}.")
  n = math.prod(mesh.shape[a] for a in axes)
  if zimg.shape[0] % n:
    raise ValueError(f"global batch {zimg.shape[0]} is not divisible by the "
                     f"{n} devices of mesh axes {axes}; use a batch that is "
                     f"a multiple of {n}.")
  b = zimg.shape[0] // n
  block_size = b if block_size is None else int(block_size)
  if block_size <= 0 or b % block_size:
    raise ValueError(f"block_size={block_size} must divide the per-device "
                     f"batch {b} (= {zimg.shape[0]} / {n} devices).")
  body = functools.partial(_ring_loss, axes=axes, n=n, block_size=block_size)
  batch = P(axes, None)
  fn = jax.shard_map(body, mesh=mesh, in_specs=(batch, batch, P(), P()),
                     out_specs=(P(), P()))
  return fn(zimg.astype(jnp.float32), ztxt.astype(jnp.float32),
            jnp.asarray(logit_scale, jnp.float32),
            jnp.asarray(logit_bias, jnp.float32))
