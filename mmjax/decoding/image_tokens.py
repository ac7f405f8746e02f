"""Writing an image's codes: the compiled decode loop of a text-to-image LM,
with classifier-free guidance and sampling over the image codes only.

  codes = generate_codes(model, params, prompts, jax.random.key(0),
                         guidance=3.0, sampling=Sampling(temperature=1.0))
  # prompts int32[B, P] (captions padded with PAD_ID) -> codes int32[B, N]

After the caption and <boi> (one prefill), the loop writes exactly N codes
(models/text_to_image.py) and then <eoi> by rule, so only the K code logits
are ever sampled: temperature, top-k and top-p act on the image vocabulary
alone. Guidance runs each prompt twice, with its caption and with padding
only (the unconditional model the `t2i` stage trains by dropping 10% of
the captions), and samples from u + s (c - u) (c, u: the two rows' code
logits, s = `guidance`; s = 1 is the conditional model alone, no second
row). Both rows share the KV-cache layout: the batch is [cond; uncond].

A model with a layout (models/scene_layout.py) first writes the layout
after the caption, in the same loop kind: L slots, each sampled from the
conditional row's logits over the ids the layout grammar allows there
(`LayoutVocab.allowed`: a colour or <eol>, a shape, then four location
bins; PAD after <eol>), the colour / shape / <eol> slots by one sampling
(`LayoutSampling.what`), the location bins by another (`.where`), and with
`.apart` each box only where it keeps clear of the boxes before it (the
renderer never lets objects touch; drawn, touching boxes merge). The layout is
read back into cells, which every code slot of the conditional row
carries; the unconditional row writes PAD and sees no object (as
training's dropped captions do).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from mmjax.data.tokenizer import PAD_ID
from mmjax.decoding.sampling import Sampling, sample_tokens
from mmjax.models import scene_layout
from mmjax.models.decoder import init_kv_cache
from mmjax.models.text_to_image import TextToImageLM


@dataclasses.dataclass(frozen=True)
class LayoutSampling:
  """How a layout is written: `what` for its colour, shape and <eol>
  slots, `where` for its location bins; `apart`: each box only where it
  keeps clear of the boxes before it (`scene_layout.free_bins`)."""
  what: Sampling = Sampling(temperature=0.0)
  where: Sampling = Sampling(temperature=1.0)
  apart: bool = False


def guided_logits(cond: jax.Array, uncond: jax.Array, scale: float
                  ) -> jax.Array:
  """Classifier-free guidance: uncond + scale * (cond - uncond), f32[B, K]."""
  return uncond + scale * (cond - uncond)


def check_request(model: TextToImageLM, prompt_len: int,
                  guidance: float | None = None) -> None:
  """ValueError (one line) for a request the model cannot serve: a caption
  of prompt_len ids longer than its P, or a guidance scale <= 0 (None: the
  caption alone is checked)."""
  if guidance is not None and not guidance > 0:
    raise ValueError(f"guidance={guidance} must be > 0 (1 = no guidance; "
                     "larger follows the caption more)")
  if prompt_len > model.prompt_len:
    raise ValueError(
        f"the caption is {prompt_len} tokens, but the model reads at most "
        f"{model.prompt_len} before an image ({model.n_codes} codes): "
        "shorten it")


@functools.partial(jax.jit, static_argnames=("model", "guidance", "sampling",
                                             "layout_sampling"))
def _generate(model: TextToImageLM, params, prompts: jax.Array,
              key: jax.Array, guidance: float, sampling: Sampling,
              layout_sampling: LayoutSampling) -> tuple[jax.Array, jax.Array]:
  b, p = prompts.shape
  guided = guidance != 1.0
  rows = jnp.concatenate([prompts, jnp.full_like(prompts, PAD_ID)]) if (
      guided) else prompts
  vocab, n = model.vocab, model.n_codes
  lo, hi = vocab.first_code_id, vocab.first_code_id + vocab.codes
  start = model.boi_slot  # P + L
  cache = init_kv_cache(model.lm, rows.shape[0], start + 1 + n)
  boi = jnp.full((rows.shape[0], 1), vocab.boi_id, jnp.int32)
  cells = None
  layout = jnp.zeros((b, model.layout_len), jnp.int32)
  if model.layout_objects:
    logits, cache = model.apply({"params": params}, rows, cache=cache,
                                cache_index=0)
    layout, cache, logits = _write_layout(model, params, cache, logits[:, -1:],
                                          jax.random.fold_in(key, n), b,  # codes use 0..n-1
                                          layout_sampling)
    plan = scene_layout.cells(*scene_layout.decode(model.layout_vocab,
                                                   layout), model.grid,
                              model.cell_edges)
    cells = tuple(jnp.concatenate([x, jnp.zeros_like(x)]) if guided else x
                  for x in plan)
    logits, cache = model.apply({"params": params}, boi, cells, cache=cache,
                                cache_index=start)
  else:
    logits, cache = model.apply({"params": params},
                                jnp.concatenate([rows, boi], axis=1),
                                cache=cache, cache_index=0)

  def code_logits(logits):  # last position, image codes only: [B, K]
    last = logits[:, -1, lo:hi].astype(jnp.float32)
    return guided_logits(last[:b], last[b:], guidance) if guided else last

  def step(i, carry):
    cache, logits, codes = carry  # logits: the last position's, [R, 1, V]
    keys = jax.random.split(jax.random.fold_in(key, i), b)
    code = sample_tokens(code_logits(logits), keys, sampling)  # int32[B]
    codes = codes.at[:, i].set(code)
    ids = vocab.code_ids(code)
    ids = jnp.concatenate([ids, ids]) if guided else ids
    logits, cache = model.apply({"params": params}, ids[:, None], cells,
                                cache=cache, cache_index=start + 1 + i)
    return cache, logits, codes

  codes = jnp.zeros((b, n), jnp.int32)
  _, _, codes = jax.lax.fori_loop(0, n, step,
                                  (cache, logits[:, -1:], codes))
  return codes, layout


def _write_layout(model: TextToImageLM, params, cache, logits: jax.Array,
                  key: jax.Array, b: int, sampling: LayoutSampling):
  """The layout's L slots after the caption: (tokens int32[b, L], cache,
  the last logits [R, 1, V]). The first b rows sample within the grammar;
  the rest (the unconditional rows) write PAD."""
  lv = model.layout_vocab
  rows = logits.shape[0]
  p = model.prompt_len

  def step(k, carry):
    cache, logits, tokens = carry
    allowed = lv.allowed(k, jnp.any(tokens == lv.eol_id, axis=1),
                         logits.shape[-1], PAD_ID)
    if sampling.apart:  # the bins that keep this box clear of the others
      free = scene_layout.free_bins(lv, tokens, k)
      ids = jnp.arange(logits.shape[-1])
      is_bin = (ids >= lv.first_bin_id) & (ids < lv.eol_id)
      allowed &= ~is_bin[None] | jnp.take(
          free, jnp.clip(ids - lv.first_bin_id, 0, lv.bins - 1), axis=1)
    masked = jnp.where(allowed, logits[:b, -1].astype(jnp.float32), -jnp.inf)
    keys = jax.random.split(jax.random.fold_in(key, k), b)
    where = k % scene_layout.TOKENS_PER_OBJECT >= 2  # a location bin
    token = jnp.where(where, sample_tokens(masked, keys, sampling.where),
                      sample_tokens(masked, keys, sampling.what))
    tokens = tokens.at[:, k].set(token)
    ids = jnp.concatenate([token, jnp.full((rows - b,), PAD_ID, jnp.int32)])
    logits, cache = model.apply({"params": params}, ids[:, None],
                                cache=cache, cache_index=p + k)
    return cache, logits, tokens

  tokens = jnp.zeros((b, lv.length), jnp.int32)
  cache, logits, tokens = jax.lax.fori_loop(0, lv.length, step,
                                            (cache, logits, tokens))
  return tokens, cache, logits


def generate_codes(model: TextToImageLM, params, prompts: jax.Array,
                   key: jax.Array, *, guidance: float = 3.0,
                   sampling: Sampling = Sampling(temperature=1.0),
                   layout_sampling: LayoutSampling = LayoutSampling(),
                   with_layout: bool = False
                   ) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Codes int32[B, N] of one image per caption (with_layout: and the
  layout tokens int32[B, L] the model planned; L = 0 without a layout).

  Args:
    model: the `t2i` stage's model (train/stages/t2i.text_to_image_lm).
    params: its parameters (the `llm` group, under 'llm').
    prompts: int32[B, P'] caption ids padded with PAD_ID, P' <= P; shorter
      ones are padded to P (as training saw them).
    key: the sampling key (one stream per row and step).
    guidance: classifier-free guidance scale s > 0 (1 = off).
    sampling: temperature (0 = greedy), top_k, top_p over the K codes.
    layout_sampling: how a model with a layout writes it (LayoutSampling).

  Raises:
    ValueError: guidance <= 0, or a caption longer than the model's P.
  """
  prompts = jnp.asarray(prompts, jnp.int32)
  check_request(model, prompts.shape[1], guidance)
  pad = model.prompt_len - prompts.shape[1]
  prompts = jnp.pad(prompts, ((0, 0), (0, pad)), constant_values=PAD_ID)
  codes, layout = _generate(model, params, prompts, key, float(guidance),
                            sampling, layout_sampling)
  return (codes, layout) if with_layout else codes
