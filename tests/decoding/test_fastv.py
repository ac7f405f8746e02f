"""FastV pruning (mmjax.decoding.fastv): selection, pruned prefill, FLOPs,
errors."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.decoding import decode
from mmjax.decoding import fastv
from mmjax.models import positions as positions_lib
from mmjax.models.decoder import init_kv_cache
from mmjax.models.mllm import MLLM
from tests.inference.test_inference import (IMAGE_ID, generate, make_model,
                                            model_config, prompts_and_images)


def _batch(model, r):
  prompts, images = prompts_and_images()
  batch = decode.prepare_batch(model.cfg, prompts, images, [0, 1],
                                  image_token_id=IMAGE_ID)
  batch["keep_image"], pruned_len = fastv.plan(batch, r)
  return batch, pruned_len


def _llm(module, **kw):
  return module.llm(**kw)


@functools.partial(jax.jit, static_argnames=("model",))
def _shallow(model, params, batch):
  """Layer 0 (k = 1) output and the attention the last query paid each slot
  in it, written independently: from the hidden states, not the cache."""
  v = {"params": params}
  cfg = model.cfg.lm
  valid, pos = batch["valid"], batch["positions"]
  visual = model.apply(v, batch["images"], method=MLLM.encode_images)
  x, _ = model.apply(v, batch["tokens"], visual, batch["image_token_mask"],
                     method=MLLM.embed_inputs)
  p = v["params"]["llm"]["layers_0"]
  h = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + cfg.norm_eps)
  h = h * p["attn_norm"]["scale"]
  q = jnp.einsum("bld,dhk->blhk", h, p["attn"]["q"]["kernel"])
  kk = jnp.einsum("bld,dhk->blhk", h, p["attn"]["k"]["kernel"])
  rot = lambda t: positions_lib.apply_positions(t, pos, cfg.rope_theta,
                                                cfg.mrope_sections)
  q, kk = rot(q), rot(kk)
  kk = jnp.repeat(kk, cfg.n_heads // cfg.n_kv_heads, axis=2)  # HF repeat_kv
  s = jnp.einsum("bhk,bshk->bhs", q[:, -1], kk) / math.sqrt(q.shape[-1])
  s = jnp.where(valid[:, None], s, -jnp.inf)
  att = jax.nn.softmax(s, -1).mean(1)
  x = model.apply(v, method=_llm, embeddings=x, positions=pos,
                  attention_mask=valid[:, None, :], layer_range=(0, 1))[0]
  return x, att


@functools.partial(jax.jit, static_argnames=("model",))
def _deep(model, params, x, positions, mask):
  """Layer 1 over every token under mask bool[B, L, L]: last logits."""
  return model.apply({"params": params}, method=_llm, embeddings=x,
                         positions=positions, attention_mask=mask,
                         layer_range=(1, 2))[0][:, -1]


def _masked_reference(model, params, batch, r, least=False):
  """FastV k=1 by masking instead of pruning: layer 1 runs over every token
  with the dropped ones masked. least: keep the least attended instead."""
  x, att = _shallow(model, params, batch)
  att = np.asarray(att)
  valid = batch["valid"]
  keep = valid & ~batch["image_token_mask"]
  for b in range(len(att)):
    img = np.flatnonzero(batch["image_token_mask"][b] & valid[b])
    n = int(round(len(img) * (1 - r)))
    order = np.argsort(att[b, img] if least else -att[b, img], kind="stable")
    keep[b, img[order[:n]]] = True
  causal = np.tril(np.ones((valid.shape[1],) * 2, bool))
  mask = keep[:, None, :] & causal | np.eye(valid.shape[1], dtype=bool)
  return _deep(model, params, x, batch["positions"], mask), keep


@functools.partial(jax.jit, static_argnames=("model",))
def _layer0_cache(model, params, batch):
  """Layer 0's KV cache of the unpruned prompt: k, v [B, Kh, P, Dh]."""
  v = {"params": params}
  visual = model.apply(v, batch["images"], method=MLLM.encode_images)
  x, _ = model.apply(v, batch["tokens"], visual, batch["image_token_mask"],
                     method=MLLM.embed_inputs)
  b, p = batch["tokens"].shape
  _, cache = model.apply(v, method=_llm, embeddings=x,
                         positions=batch["positions"],
                         attention_mask=batch["valid"][:, None, :],
                         cache=init_kv_cache(model.cfg.lm, b, p)[:1],
                         cache_index=0, layer_range=(0, 1))
  return cache[0]


def test_pruned_prefill_equals_masked_reference():
  model, params = make_model("projection", "mrope")
  batch, pruned_len = _batch(model, 0.5)
  assert list(batch["keep_image"]) == [32, 32]
  assert pruned_len == max(batch["lengths"]) - 32
  cache_len = batch["tokens"].shape[1] + 4

  @jax.jit
  def pruned(params, batch):
    visual = model.apply({"params": params}, batch["images"],
                         method=MLLM.encode_images)
    return fastv.pruned_prefill(model, params, batch, visual,
                                fastv=fastv.FastVConfig(1, 0.5),
                                pruned_len=pruned_len, cache_len=cache_len)
  logits, cache, kv_valid, slot0 = pruned(params, batch)
  assert slot0 == pruned_len and logits.shape[1] == pruned_len
  assert len(cache) == 2 and cache[0]["k"].shape[2] == cache_len
  # Every row keeps its text and half of its image tokens.
  text = (batch["valid"] & ~batch["image_token_mask"]).sum(1)
  np.testing.assert_array_equal(np.asarray(kv_valid).sum(1), text + 32)
  want, keep = _masked_reference(model, params, batch, 0.5)
  assert keep.sum() == kv_valid.sum()
  np.testing.assert_allclose(logits[:, -1], want, rtol=2e-4, atol=2e-4)
  # The shallow layer's cache holds the kept tokens' keys and values, in
  # order, compacted to the valid slots before the first generated token.
  full = _layer0_cache(model, params, batch)
  for name in ("k", "v"):
    for row in range(len(keep)):
      slots = np.flatnonzero(np.asarray(kv_valid[row]))
      np.testing.assert_allclose(
          cache[0][name][row][:, slots],
          full[name][row][:, np.flatnonzero(keep[row])], rtol=1e-5, atol=1e-5)
  # The check can fail: keeping the least attended half instead differs.
  other, _ = _masked_reference(model, params, batch, 0.5, least=True)
  assert not np.allclose(other, want, atol=1e-3)


def test_r0_generation_equals_unpruned_and_pruned_generation_runs():
  model, params = make_model("projection", "rope")
  prompts, images = prompts_and_images()
  plain = generate(model, params, prompts, images, batch_size=2)
  same = generate(model, params, prompts, images, batch_size=2,
                  fastv=fastv.FastVConfig(k=1, r=0.0))
  assert same == plain
  pruned = generate(model, params, prompts, images, batch_size=2,
                    fastv=fastv.FastVConfig(k=1, r=0.5))
  assert [len(t) for t in pruned] == [len(t) for t in plain]


def test_fastv_lowers_prefill_flops():
  model, params = make_model("projection", "rope")
  batch, _ = _batch(model, 0.5)
  del batch["keep_image"]
  kw = dict(max_new_tokens=4)
  plain = decode.prefill_flops(model, params, batch, fastv=None, **kw)
  pruned = decode.prefill_flops(model, params, batch,
                               fastv=fastv.FastVConfig(1, 0.5), **kw)
  assert 0 < pruned < 0.95 * plain


def test_select_tokens_keeps_order_and_pads_left():
  scores = jnp.asarray([[0.0, 0.1, 0.5, 0.2, 0.3, 0.0],
                        [0.0, 0.0, 0.9, 0.1, 0.4, 0.0]])
  image = jnp.asarray([[0, 0, 1, 1, 1, 0]] * 2, bool)
  valid = jnp.asarray([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], bool)
  slots, kept = fastv.select_tokens(scores, image, valid,
                                    jnp.asarray([2, 0]), 4)
  assert slots.tolist()[0] == [1, 2, 4, 5]
  assert kept.tolist()[0] == [True] * 4
  assert slots.tolist()[1][1:] == [0, 1, 5] and kept.tolist()[1] == [
      False, True, True, True]


def test_fastv_config_errors():
  with pytest.raises(ValueError, match="cross_attention"):
    fastv.FastVConfig(1, 0.5).check(model_config("cross_attention", "rope"))
  cfg = model_config("projection", "rope")
  with pytest.raises(ValueError, match=r"\[1, 1\]"):
    fastv.FastVConfig(2, 0.5).check(cfg)
  with pytest.raises(ValueError, match="r=1"):
    fastv.FastVConfig(1, 1.0).check(cfg)
