"""FastV: prune image tokens at prefill by the attention they receive.

FastV (Chen et al. 2024, "An Image is Worth 1/2 Tokens After Layer 2"),
config (K, R): layers 0..K-1 run over the whole prompt; the image tokens are
ranked by the attention the last prompt position paid them in layer K-1
(softmax probabilities, mean over heads); layers K.. run over the top
N * (1 - R) image tokens of each prompt plus all text tokens, which keep
their original position ids. Prefill only.

The KV cache after a pruned prefill holds, in every layer, only the kept
tokens (compacted to slots 0..P'-1; the shallow layers' keys/values of the
dropped tokens are discarded), so the decode loop attends to the pruned
cache everywhere. The FastV reference code keeps the shallow layers' full
cache instead; ours saves their decode attention and memory too.

Not for fusion='cross_attention' (no image tokens in the stream).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models import layers
from mmjax.models import positions as positions_lib
from mmjax.models.decoder import DecoderConfig, init_kv_cache
from mmjax.models.mllm import MLLM, MLLMConfig
from mmjax.models.text_lm import TEXT_ONLY


@dataclasses.dataclass(frozen=True)
class FastVConfig:
  """Prune after layer k - 1, dropping the fraction r of image tokens."""
  k: int = 2
  r: float = 0.5

  def check(self, cfg: MLLMConfig) -> None:
    """ValueError unless this config can prune `cfg`'s model."""
    if cfg.fusion == TEXT_ONLY:
      raise ValueError("FastV prunes image tokens; a text-only LM has none "
                       "(generate without fastv)")
    n = cfg.lm.n_layers
    if not 1 <= self.k < n:
      raise ValueError(f"FastV k={self.k} must lie in [1, {n - 1}] for an LM "
                       f"of {n} layers (layers 0..k-1 see every token)")
    if not 0 <= self.r < 1:
      raise ValueError(f"FastV r={self.r} (fraction of image tokens dropped) "
                       "must lie in [0, 1)")
    if cfg.fusion == "cross_attention":
      raise ValueError("FastV prunes image tokens in the token stream; "
                       "fusion='cross_attention' has none")


def plan(batch: dict[str, np.ndarray], r: float) -> tuple[np.ndarray, int]:
  """Host side: image tokens kept per row and the pruned prompt length.

  Args:
    batch: `decode.prepare_batch` output.
    r: fraction of image tokens dropped.

  Returns:
    (keep_image int32[B] = round(N_b * (1 - r)), pruned prompt length P' =
    the longest row after pruning; a static shape of the program).
  """
  n_image = (batch["image_token_mask"] & batch["valid"]).sum(1)
  keep = np.round(n_image * (1.0 - r)).astype(np.int32)
  pruned = batch["lengths"] - n_image + keep
  return keep, int(max(pruned.max(), 1))


def last_query_attention(block_params: Any, cfg: DecoderConfig,
                         x_last: jax.Array, positions_last: jax.Array,
                         keys: jax.Array, kv_valid: jax.Array) -> jax.Array:
  """Attention the last query of a decoder block pays each key slot.

  Args:
    block_params: the block's parameters (`params['llm']['layers_<i>']`).
    cfg: the LM config.
    x_last: [B, 1, D], the block's input at the last position.
    positions_last: [B, 1] (or [3, B, 1]) its position ids.
    keys: [B, S, Kh, Dh] the block's rotated keys (its KV cache).
    kv_valid: bool[B, S], slots the query may attend to.

  Returns:
    f32[B, S]: softmax probabilities, mean over heads.
  """
  dtype = jnp.dtype(cfg.dtype)
  h = layers.RMSNorm(eps=cfg.norm_eps, offset_one=cfg.norm_offset_one,
                     dtype=dtype).apply(
                         {"params": block_params["attn_norm"]}, x_last)
  q = layers.HeadsIn(cfg.n_heads, cfg.resolved_head_dim, cfg.qkv_bias,
                     dtype=dtype).apply(
                         {"params": block_params["attn"]["q"]}, h)
  q = positions_lib.apply_positions(q, positions_last, cfg.rope_theta,
                                    cfg.mrope_sections)
  b, _, n_heads, head_dim = q.shape
  n_kv = keys.shape[2]
  q = q.reshape(b, n_kv, n_heads // n_kv, head_dim)
  scores = jnp.einsum("bkgd,bskd->bkgs", q, keys.astype(q.dtype),
                      preferred_element_type=jnp.float32)
  scores = scores / math.sqrt(head_dim)
  scores = jnp.where(kv_valid[:, None, None], scores, -jnp.inf)
  return jnp.mean(jax.nn.softmax(scores, axis=-1), axis=(1, 2))


def select_tokens(scores: jax.Array, image_mask: jax.Array, valid: jax.Array,
                  keep_image: jax.Array, length: int
                  ) -> tuple[jax.Array, jax.Array]:
  """Slots each row keeps, in order, left-padded to `length`.

  Args:
    scores: f32[B, P] importance of each slot (only image slots are ranked).
    image_mask: bool[B, P] image-token slots.
    valid: bool[B, P] real (non-padding) slots.
    keep_image: int32[B] image tokens kept per row (the highest scores; ties
      go to the earlier slot).
    length: P' >= the kept count of every row (static).

  Returns:
    (slots int32[B, P'], kept bool[B, P']): the kept slots in their original
    order at the right end, padding slots (kept False) on the left.
  """
  p = scores.shape[1]
  image = image_mask & valid
  order = jnp.argsort(jnp.where(image, -scores, jnp.inf), axis=1,
                      stable=True)
  rank = jnp.argsort(order, axis=1)  # 0 = the most attended image token
  keep = (valid & ~image) | (image & (rank < keep_image[:, None]))
  idx = jnp.arange(p)
  slots = jnp.argsort(jnp.where(keep, idx + p, idx), axis=1)[:, p - length:]
  return slots, jnp.take_along_axis(keep, slots, axis=1)


def _run_llm(module: MLLM, **kwargs):
  return module.llm(**kwargs)


def _gather(x: jax.Array, slots: jax.Array) -> jax.Array:
  """x [B, P, ...] at slots int32[B, P'] -> [B, P', ...]."""
  idx = slots.reshape(slots.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def _gather_positions(positions: jax.Array, slots: jax.Array) -> jax.Array:
  """[B, P] or M-RoPE [3, B, P] positions at slots int32[B, P']."""
  if positions.ndim == 3:
    return jnp.take_along_axis(positions, slots[None], axis=-1)
  return _gather(positions, slots)


def pruned_prefill(model: MLLM, params: Any, batch: dict[str, Any],
                   visual: jax.Array | None, *, fastv: FastVConfig,
                   pruned_len: int, cache_len: int
                   ) -> tuple[jax.Array, list, jax.Array, int]:
  """The prefill of `decode.prefill` with FastV pruning (jit-traced).

  Args:
    batch: `decode.prepare_batch` output with keep_image int32[B].
    visual: [B, M, T, D] encoded images, or None.
    fastv: the (k, r) config; pruned_len: P' from `plan`.
    cache_len: S, slots per layer of the new cache.

  Returns:
    (logits f32[B, P', V], cache with the kept tokens at slots 0..P'-1,
    kv_valid bool[B, S], P' = the cache slot of the first generated token).
  """
  cfg = model.cfg.lm
  variables = {"params": params}
  k = fastv.k
  tokens, positions, valid = batch["tokens"], batch["positions"], batch["valid"]
  b, p = tokens.shape
  x, block_ids = model.apply(variables, tokens, visual,
                             batch["image_token_mask"],
                             method=MLLM.embed_inputs)
  kv_valid = jnp.pad(valid, ((0, 0), (0, cache_len - p)))
  empty = init_kv_cache(cfg, b, cache_len)

  def run(h, pos, mask, blocks, cache, first, last):
    return model.apply(variables, method=_run_llm, embeddings=h,
                       positions=pos, attention_mask=mask[:, None, :],
                       block_ids=blocks, cache=cache, cache_index=0,
                       layer_range=(first, last))
  shallow = []
  if k > 1:
    x, shallow = run(x, positions, kv_valid, block_ids, empty[:k - 1], 0,
                     k - 1)
  x_in = x
  x, cache_k = run(x, positions, kv_valid, block_ids, empty[k - 1:k], k - 1,
                   k)
  shallow = shallow + cache_k
  scores = last_query_attention(
      params["llm"][f"layers_{k - 1}"], cfg, x_in[:, -1:],
      positions[..., -1:], cache_k[0]["k"][:, :, :p].swapaxes(1, 2), valid)
  slots, kept = select_tokens(scores, batch["image_token_mask"], valid,
                              batch["keep_image"], pruned_len)
  kv_valid = jnp.pad(kept, ((0, 0), (0, cache_len - pruned_len)))
  # Shallow caches: the kept tokens' keys/values, compacted to the front.
  shallow = [{name: jax.lax.dynamic_update_slice(
      jnp.zeros_like(layer[name]),
      jnp.take_along_axis(layer[name][:, :, :p], slots[:, None, :, None],
                          axis=2),  # heads-major [B, Kh, P', Dh]
      (0, 0, 0, 0)) for name in ("k", "v")} for layer in shallow]
  logits, deep = run(
      _gather(x, slots), _gather_positions(positions, slots), kv_valid,
      None if block_ids is None else _gather(block_ids, slots), empty[k:], k,
      cfg.n_layers)
  return logits, shallow + deep, kv_valid, pruned_len
