"""Generation with a KV cache, for every fusion paradigm and position scheme.

  out = decode.generate(model, params, prompts, images,
                        image_token_id=tok.image_id, max_new_tokens=16,
                        stop_ids=[tok.end_of_turn_id],
                        sampling=Sampling(temperature=0.7, top_p=0.9))

A plain decoder LM goes through the same programs wrapped as
`mmjax.models.text_lm.TextLM` (params {"llm": decoder params}), with
text-only prompts.

Host side, `prepare_batch` lays every prompt out with `layout.assemble` (the
code that lays out training sequences) and left-pads the batch, so every
row's prompt ends at the same cache slot. On device, two compiled programs:

  prefill  encode the images, run the LM over the padded prompts into a new
           KV cache (padding slots masked), sample the first token.
           Cross-attention models keep each block's projected media keys and
           values in the cache; FastV (`mmjax.decoding.fastv`) prunes image
           tokens here.
  decode   a `lax.while_loop` feeding one token per step at the next cache
           slot, until `until` tokens exist or every row has hit a stop
           token. Called once per chunk of steps, which is how `generate`
           streams (`on_tokens`).

Positions of generated tokens: the first one sits where a text token after
the prompt would (`layout.assemble` of the prompt plus one text token: rope
`length`, V2PE the last position + 1 (after an image: its ceiling + 1) at
the fixed inference stride), each later one a step further. M-RoPE goes
through the rope delta, as Qwen2-VL does: every axis of generated token s is
`length + s + rope_delta` (= max prompt position + 1 + s).

Sampling is per row: row i of the whole prompt list draws from
`fold_in(fold_in(key(seed), i), step)`, so results do not depend on how the
prompts are batched.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data import naflex as naflex_lib
from mmjax.data import native_resolution as native_lib
from mmjax.decoding import contrastive
from mmjax.decoding import fastv as fastv_lib
from mmjax.decoding.sampling import Sampling, sample_tokens
from mmjax.models import layout
from mmjax.models.decoder import init_kv_cache
from mmjax.models.mllm import MLLM, MLLMConfig
from mmjax.models.text_lm import TEXT_ONLY
from mmjax.models.position_ids import (V2PE_DEFAULT_STRIDE,
                                       mrope_decode_positions)

Piece = Sequence[int] | layout.Media | layout.Audio


class PromptTooLongError(ValueError):
  """A prompt plus the tokens to generate does not fit the context."""


class Generation(NamedTuple):
  """Per prompt: generated ids without the stop id, and their text
  (`tokenizer.decode(...).strip().lower()`, "" without a tokenizer)."""
  tokens: list[list[int]]
  texts: list[str]


class DecodeState(NamedTuple):
  """What the decode loop carries.

  cache: the KV cache (S slots per layer); kv_valid bool[B, S]: slots that
  hold real tokens; tokens int32[B, N]: generated so far (pad after a stop);
  step int32[]: how many; done bool[B].
  """
  cache: Any
  kv_valid: jax.Array
  tokens: jax.Array
  step: jax.Array
  done: jax.Array


class Context(NamedTuple):
  """Constant while decoding (see `prefill`)."""
  slot0: jax.Array        # int32[]: cache slot of generated token 0
  start: jax.Array        # [B]: position of generated token 0
  lengths: jax.Array      # int32[B]: prompt lengths
  rope_delta: jax.Array   # int32[B]: M-RoPE delta (else 0)
  media: Any              # cross-attention latents [B, M, T, D] or None
  image_mask: Any         # bool[B, M] or None
  media_count: jax.Array  # int32[B]: media items in each prompt
  row_keys: jax.Array     # per-row PRNG keys
  stop_ids: jax.Array     # int32[n]
  pad_id: jax.Array       # int32[]


def prepare_batch(cfg: MLLMConfig, prompts: Sequence[Sequence[Piece]],
                  images: Sequence[np.ndarray] | None, rows: Sequence[int],
                  *, image_token_id: int, pad_id: int = 0,
                  v2pe_stride: int = V2PE_DEFAULT_STRIDE, bucket: int = 8,
                  batch_size: int | None = None,
                  audio: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]]
                  | None = None, audio_token_id: int | None = None
                  ) -> dict[str, np.ndarray]:
  """Lays out prompts[rows] as one left-padded batch (host side).

  Args:
    cfg: the model config.
    prompts: per example, text id lists and `layout.Media` items in order.
    images: per example f32[M_i, H, W, C] (or [M_i, F, H, W, C] for video),
      one per Media item, preprocessed; None for text-only prompts. A
      Qwen2-VL model (`native_resolution.takes_native`) takes per example a
      list of items of any sizes (f32[H, W, C] / [F, H, W, C], sides
      multiples of 28), packed into batch["native"]. A NaFlex model takes
      per example its `data.naflex.NaFlexImage` items (an object with
      `.items`, or a list), batched into batch["naflex"].
    rows: which prompts form this batch.
    image_token_id: the `<image>` id of placeholders and markers.
    pad_id: the id in padding slots.
    v2pe_stride: the fixed V2PE inference stride.
    bucket: the prompt length P is rounded up to a multiple of it (fewer
      programs to compile).
    batch_size: pad the batch to this many rows (copies of its first row,
      marked done); default len(rows).
    audio: per example its clips, one per `layout.Audio` piece, as
      `data.audio.log_mel`'s (features f32[T, n_mels], frame mask bool[T]);
      the piece's frames must equal mask.sum(). Stacked into
      batch["audio"] = {"audio": f32[B, A, T, n_mels], "audio_mask":
      bool[B, A, T]} (T the longest clip's).
    audio_token_id: the `<audio>` placeholder id.

  Returns:
    tokens int32[B, P]; positions [B, P] / [3, B, P]; valid bool[B, P];
    image_token_mask, audio_token_mask, media_locations bool[B, P];
    images f32[B, M, ...] and
    image_mask bool[B, M] (None without images); start [B] (position of the
    first generated token); lengths, rope_delta, media_count, row_ids
    int32[B]; done bool[B] (the padding rows).
  """
  rows = list(rows)
  fill = rows + [rows[0]] * ((batch_size or len(rows)) - len(rows))
  seqs = []
  for r in fill:
    pieces = list(prompts[r])
    n_media = sum(isinstance(p, layout.Media) for p in pieces)
    n_images = 0 if images is None else len(images[r])
    if n_media and cfg.fusion == TEXT_ONLY:
      raise ValueError(f"prompt {r} has {n_media} Media item(s); a text-only "
                       "LM takes no images")
    if n_media != n_images:
      raise ValueError(f"prompt {r}: {n_images} image(s) given for its "
                       f"{n_media} Media item(s); they must be equally many")
    _check_clips(r, pieces, None if audio is None else audio[r])
    # One extra text token: where the first generated token sits.
    seq = layout.assemble(cfg, pieces + [[pad_id]], image_token_id,
                          v2pe_stride=v2pe_stride,
                          audio_token_id=audio_token_id)
    seqs.append(seq)
  lengths = np.asarray([len(s["tokens"]) - 1 for s in seqs], np.int32)
  b, p = len(fill), bucket * math.ceil(max(lengths) / bucket)
  pos_dtype = seqs[0]["positions"].dtype
  out = {"tokens": np.full((b, p), pad_id, np.int32),
         "valid": np.zeros((b, p), bool),
         "image_token_mask": np.zeros((b, p), bool),
         "audio_token_mask": np.zeros((b, p), bool),
         "media_locations": np.zeros((b, p), bool),
         "positions": np.zeros(((3,) if cfg.positions == "mrope" else ()) +
                               (b, p), pos_dtype),
         "start": np.zeros(b, pos_dtype), "lengths": lengths,
         "rope_delta": np.asarray([s["rope_delta"] for s in seqs], np.int32),
         "row_ids": np.asarray(fill, np.int32),
         "done": np.arange(b) >= len(rows)}
  for i, (seq, n) in enumerate(zip(seqs, lengths)):
    for key in ("tokens", "image_token_mask", "audio_token_mask",
                "media_locations"):
      out[key][i, p - n:] = seq[key][:n]
    out["valid"][i, p - n:] = True
    out["positions"][..., i, p - n:] = seq["positions"][..., :n]
    out["start"][i] = seq["positions"][..., n].reshape(-1)[0]
  out["media_count"] = out["media_locations"].sum(1).astype(np.int32)
  out["images"] = out["image_mask"] = None
  if audio is not None and any(len(audio[r]) for r in fill):
    out["audio"] = _stack_clips([list(audio[r]) for r in fill])
  counts = [0 if images is None else len(images[r]) for r in fill]
  if max(counts) and native_lib.takes_native(cfg):
    # Native resolution: every item keeps its own size; packed patches.
    out["native"] = native_lib.pack_for(
        cfg.vision, [list(images[r]) for r in fill]).arrays()
    return out
  if max(counts) and naflex_lib.takes_naflex(cfg):
    # NaFlex: one padded patch row per image, aspect ratio kept.
    rows = naflex_lib.batch_rows(
        cfg.vision, [list(getattr(images[r], "items", images[r]))
                     for r in fill], max(counts))
    out["naflex"] = naflex_lib.model_inputs(rows)
    return out
  if max(counts):
    shape = next(images[r] for r in fill if len(images[r])).shape[1:]
    out["images"] = np.zeros((b, max(counts)) + shape, np.float32)
    out["image_mask"] = np.arange(max(counts)) < np.asarray(counts)[:, None]
    for i, r in enumerate(fill):
      out["images"][i, :counts[i]] = images[r]
  return out


def _check_clips(row: int, pieces: Sequence[Piece],
                 clips: Sequence[tuple[np.ndarray, np.ndarray]] | None
                 ) -> None:
  """One clip per Audio piece, with the piece's frame count."""
  wanted = [p.frames for p in pieces if isinstance(p, layout.Audio)]
  clips = list(clips or ())
  if len(wanted) != len(clips):
    raise ValueError(f"prompt {row}: {len(clips)} audio clip(s) given for its "
                     f"{len(wanted)} Audio item(s); they must be equally many")
  for i, (frames, (_, mask)) in enumerate(zip(wanted, clips)):
    if int(np.sum(mask)) != frames:
      raise ValueError(f"prompt {row}: audio clip {i} has {int(np.sum(mask))} "
                       f"valid frames but its Audio item says {frames}")


def _stack_clips(clips: list[list[tuple[np.ndarray, np.ndarray]]]
                 ) -> dict[str, np.ndarray]:
  """Per row (features [T_i, n_mels], mask [T_i]) clips -> audio
  f32[B, A, T, n_mels], audio_mask bool[B, A, T] (zero / False padded)."""
  a = max(len(c) for c in clips)
  t = max(f.shape[0] for c in clips for f, _ in c)
  mels = next(f.shape[1] for c in clips for f, _ in c)
  feats = np.zeros((len(clips), a, t, mels), np.float32)
  masks = np.zeros((len(clips), a, t), bool)
  for i, row in enumerate(clips):
    for j, (f, m) in enumerate(row):
      feats[i, j, :len(f)] = f
      masks[i, j, :len(m)] = m
  return {"audio": feats, "audio_mask": masks}


def _step_keys(row_keys: jax.Array, step: jax.Array) -> jax.Array:
  return jax.vmap(jax.random.fold_in, (0, None))(row_keys, step)


def _finish_step(ctx: Context, state: DecodeState, logits: jax.Array,
                 sampling: Sampling,
                 contrast: contrastive.Contrast | None = None
                 ) -> tuple[jax.Array, jax.Array]:
  """Samples token `state.step` from logits f32[B, V]: (tokens, done).

  With `contrast` the batch is (prompts with images; the same with noised
  images): one token per pair from the contrasted logits, fed to both rows.
  """
  keys = _step_keys(ctx.row_keys, state.step)
  if contrast is None:
    nxt = sample_tokens(logits, keys, sampling)
  else:
    half = logits.shape[0] // 2
    nxt = sample_tokens(contrastive.combine(logits, contrast.alpha,
                                            contrast.beta),
                        keys[:half], sampling)
    nxt = jnp.concatenate([nxt, nxt])
  nxt = jnp.where(state.done, ctx.pad_id, nxt)
  tokens = jax.lax.dynamic_update_slice(state.tokens, nxt[:, None],
                                        (0, state.step))
  return tokens, state.done | jnp.isin(nxt, ctx.stop_ids)


@functools.partial(jax.jit, static_argnames=(
    "model", "max_new_tokens", "sampling", "fastv", "pruned_len", "contrast"))
def prefill(model: MLLM, params: Any, batch: dict[str, Any],
            stop_ids: jax.Array, pad_id: jax.Array, seed: jax.Array, *,
            max_new_tokens: int, sampling: Sampling,
            fastv: fastv_lib.FastVConfig | None = None,
            pruned_len: int | None = None,
            contrast: contrastive.Contrast | None = None
            ) -> tuple[DecodeState, Context]:
  """Runs the prompts into a KV cache and samples the first token.

  Args:
    batch: `prepare_batch` output (FastV adds keep_image int32[B]; an
      optional `visual` [B, M, T, D] replaces encoding `images`, e.g. the
      tokens of tiled images from `models.tiling.encode_tiled`; `audio`,
      when the prompts hold clips, is encoded and scattered at the
      `audio_token_mask` slots).
    stop_ids: int32[n]; pad_id, seed: int32 scalars.
    max_new_tokens: N, the token buffer (the cache holds P + N slots).
    fastv, pruned_len: FastV config and its static pruned prompt length
      (`fastv.pruned_length`).
    contrast: the batch's second half is its first half with noised images
      (`generate` lays it out); tokens come from the contrasted logits.

  Returns:
    (state after one generated token, decoding context).
  """
  cfg = model.cfg
  variables = {"params": params}
  b, p = batch["tokens"].shape
  cache_len = p + max_new_tokens
  visual = batch.get("visual")  # precomputed, e.g. tiled images
  if visual is None and batch["images"] is not None:
    visual = model.apply(variables, batch["images"],
                         method=MLLM.encode_images)
  if batch.get("native") is not None:
    visual = model.apply(variables, **batch["native"],
                         method=MLLM.encode_native)
  if batch.get("naflex") is not None:
    visual = model.apply(variables, **batch["naflex"],
                         method=MLLM.encode_naflex)
  if fastv is not None:
    logits, cache, kv_valid, slot0 = fastv_lib.pruned_prefill(
        model, params, batch, visual, fastv=fastv, pruned_len=pruned_len,
        cache_len=cache_len)
  else:
    kv_valid = jnp.pad(batch["valid"], ((0, 0), (0, cache_len - p)))
    # A prefix-LM (PaliGemma) reads the whole prompt bidirectionally; the
    # generated tokens sit past it, so decode steps stay causal.
    extra = ({"prefix_len": jnp.full((b,), p, jnp.int32)}
             if cfg.lm.prefix_lm else {})
    if batch.get("audio") is not None:  # clips: encoded inside the call
      extra.update(batch["audio"],
                    audio_token_mask=batch["audio_token_mask"])
    logits, cache = model.apply(
        variables, batch["tokens"], batch["positions"], visual=visual,
        image_mask=batch["image_mask"],
        image_token_mask=batch["image_token_mask"],
        media_locations=batch["media_locations"],
        attention_mask=kv_valid[:, None, :],
        cache=init_kv_cache(cfg.lm, b, cache_len), cache_index=0, **extra)
    slot0 = p
  ctx = Context(
      slot0=jnp.int32(slot0), start=batch["start"], lengths=batch["lengths"],
      rope_delta=batch["rope_delta"],
      media=visual if cfg.fusion == "cross_attention" else None,
      image_mask=batch["image_mask"], media_count=batch["media_count"],
      row_keys=jax.vmap(jax.random.fold_in, (None, 0))(
          jax.random.key(seed), batch["row_ids"]),
      stop_ids=jnp.asarray(stop_ids, jnp.int32).reshape(-1),
      pad_id=jnp.asarray(pad_id, jnp.int32))
  state = DecodeState(
      cache=cache, kv_valid=kv_valid,
      tokens=jnp.full((b, max_new_tokens), ctx.pad_id, jnp.int32),
      step=jnp.int32(0), done=batch["done"])
  tokens, done = _finish_step(ctx, state, logits[:, -1], sampling, contrast)
  return state._replace(tokens=tokens, done=done, step=jnp.int32(1)), ctx


def _positions(cfg: MLLMConfig, ctx: Context, s: jax.Array) -> jax.Array:
  """Positions [B, 1] (or [3, B, 1]) of generated token s."""
  if cfg.positions == "mrope":
    return mrope_decode_positions(ctx.lengths + s, ctx.rope_delta)
  return (ctx.start + s.astype(ctx.start.dtype))[:, None]


@functools.partial(jax.jit, static_argnames=("model", "sampling", "contrast"),
                   donate_argnames=("state",))
def decode(model: MLLM, params: Any, ctx: Context, state: DecodeState,
           until: jax.Array, *, sampling: Sampling,
           contrast: contrastive.Contrast | None = None) -> DecodeState:
  """Generates until `until` tokens exist or every row is done (one loop)."""
  cfg = model.cfg
  until = jnp.minimum(until, state.tokens.shape[1])
  slots = jnp.arange(state.kv_valid.shape[1])
  media_kw = {}
  if ctx.media is not None:  # cross-attention: keys/values are cached
    media_kw = dict(visual=ctx.media, image_mask=ctx.image_mask,
                    media_times=ctx.media_count[:, None])

  def cond(state):
    return (state.step < until) & ~jnp.all(state.done)

  def body(state):
    s = state.step - 1  # the token fed in
    slot = ctx.slot0 + s
    kv_valid = state.kv_valid | (slots == slot)[None]
    token = jax.lax.dynamic_slice_in_dim(state.tokens, s, 1, axis=1)
    logits, cache = model.apply(
        {"params": params}, token, _positions(cfg, ctx, s),
        attention_mask=kv_valid[:, None, :], cache=state.cache,
        cache_index=slot, **media_kw)
    state = state._replace(cache=cache, kv_valid=kv_valid)
    tokens, done = _finish_step(ctx, state, logits[:, -1], sampling,
                                contrast)
    return state._replace(tokens=tokens, done=done, step=state.step + 1)

  return jax.lax.while_loop(cond, body, state)


def _cut(tokens: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
  out = []
  for t in tokens:
    if int(t) in stop_ids:
      break
    out.append(int(t))
  return out


def generate(model: MLLM, params: Any, prompts: Sequence[Sequence[Piece]],
             images: Sequence[np.ndarray] | None = None, *,
             image_token_id: int, max_new_tokens: int,
             stop_ids: Sequence[int] = (), sampling: Sampling = Sampling(),
             seed: int = 0, fastv: fastv_lib.FastVConfig | None = None,
             tokenizer=None, batch_size: int = 8, pad_id: int = 0,
             v2pe_stride: int = V2PE_DEFAULT_STRIDE,
             max_len: int | None = None, chunk: int | None = None,
             on_tokens: Callable[[list[list[int]]], None] | None = None,
             audio: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]]
             | None = None, audio_token_id: int | None = None,
             contrast: contrastive.Contrast | None = None) -> Generation:
  """Batched generation with a KV cache (module docstring).

  Args:
    model, params: the MLLM (`model.cfg` lays the prompts out), or a plain
      decoder LM as `mmjax.models.text_lm.TextLM` with params {"llm": ...}.
    prompts: per example, text id lists and `layout.Media` items in order.
    images: per example f32[M_i, H, W, C], one per Media item; None for
      text-only prompts.
    image_token_id: the `<image>` id.
    max_new_tokens: the most tokens generated per example.
    stop_ids: a row stops after generating one of these (not returned).
    sampling: greedy by default.
    seed: PRNG seed of sampling.
    fastv: prune image tokens at prefill (`mmjax.decoding.fastv.FastVConfig`).
    tokenizer: decodes the outputs into `texts` when given.
    batch_size: rows per program; the last batch is padded to it.
    pad_id: the id in padding slots.
    v2pe_stride: the fixed V2PE inference stride.
    max_len: the context; a prompt + max_new_tokens beyond it raises
      PromptTooLongError. None: no limit.
    chunk: decode this many tokens per compiled loop call (streaming);
      None = all at once.
    on_tokens: called after each chunk with the tokens so far of the current
      batch's real rows (stop ids cut off).
    audio, audio_token_id: per example the clips of its `layout.Audio`
      pieces and the `<audio>` id (`prepare_batch`).
    contrast: visual contrastive decoding (`mmjax.decoding.contrastive`):
      each program runs its batch_size prompts twice, the second time with
      noised images, and both copies take the contrasted choice.

  Returns:
    A Generation: one token list and text per prompt.
  """
  if contrast is not None and (images is None or fastv is not None
                               or audio is not None):
    raise ValueError("contrastive decoding contrasts the images with noised "
                     "copies: it needs images, and does not combine with "
                     "FastV or audio clips")
  if max_new_tokens < 1 or batch_size < 1 or (
      images is not None and len(images) != len(prompts)):
    raise ValueError(f"need max_new_tokens={max_new_tokens} >= 1, batch_size="
                     f"{batch_size} >= 1, and one image array per prompt")
  if fastv is not None:
    fastv.check(model.cfg)
    if model.cfg.lm.prefix_lm or audio is not None:
      raise ValueError("FastV does not support a prefix-LM (lm.prefix_lm) "
                       "or audio clips; generate without fastv.")
  params = nn.unbox(params)
  stops = sorted({int(s) for s in stop_ids})
  # Padded with -1 to a multiple of 8: one program for any few stop ids.
  stop_arr = np.full(8 * math.ceil(max(len(stops), 1) / 8), -1, np.int32)
  stop_arr[:len(stops)] = stops
  out: list[list[int]] = []
  for first in range(0, len(prompts), batch_size):
    rows = list(range(first, min(first + batch_size, len(prompts))))
    if contrast is None:
      batch = prepare_batch(model.cfg, prompts, images, rows,
                            image_token_id=image_token_id, pad_id=pad_id,
                            v2pe_stride=v2pe_stride, batch_size=batch_size,
                            audio=audio, audio_token_id=audio_token_id)
    else:
      batch = _contrast_batch(model.cfg, prompts, images, rows, contrast,
                              image_token_id=image_token_id, pad_id=pad_id,
                              v2pe_stride=v2pe_stride, batch_size=batch_size)
    if max_len is not None:
      check_fits(batch["lengths"][:len(rows)], max_new_tokens, max_len, rows)
    pruned_len = None
    if fastv is not None:
      batch["keep_image"], pruned_len = fastv_lib.plan(batch, fastv.r)
    state, ctx = prefill(model, params, batch, stop_arr, np.int32(pad_id),
                         np.int32(seed), max_new_tokens=max_new_tokens,
                         sampling=sampling, fastv=fastv,
                         pruned_len=pruned_len, contrast=contrast)
    step = 1
    while True:
      if on_tokens is not None:
        host = np.asarray(state.tokens)[:len(rows), :step]
        on_tokens([_cut(t, stops) for t in host])
      if step >= max_new_tokens or bool(jnp.all(state.done)):
        break
      step = min(step + (chunk or max_new_tokens), max_new_tokens)
      state = decode(model, params, ctx, state, np.int32(step),
                     sampling=sampling, contrast=contrast)
      step = int(state.step)
    tokens = np.asarray(state.tokens)[:len(rows)]
    out += [_cut(t, stops) for t in tokens]
  texts = ([tokenizer.decode(t).strip().lower() for t in out]
           if tokenizer is not None else [""] * len(out))
  return Generation(out, texts)


def _contrast_batch(cfg: MLLMConfig, prompts: Sequence[Sequence[Piece]],
                    images: Sequence[np.ndarray], rows: list[int],
                    contrast: contrastive.Contrast, *, batch_size: int,
                    **layout_kw) -> dict[str, Any]:
  """prompts[rows] padded to batch_size rows, then the same rows with noised
  images: 2 * batch_size rows, row i and row batch_size + i one pair."""
  fill = rows + [rows[0]] * (batch_size - len(rows))
  twice = [prompts[i] for i in fill] * 2
  media = [images[i] for i in fill]
  media += contrastive.noised(media, contrast.keep, contrast.seed, fill)
  batch = prepare_batch(cfg, twice, media, range(2 * batch_size),
                        batch_size=2 * batch_size, **layout_kw)
  batch["row_ids"] = np.asarray(fill * 2, np.int32)
  batch["done"] = np.tile(np.arange(batch_size) >= len(rows), 2)
  return batch


def check_fits(lengths: Sequence[int], max_new_tokens: int, max_len: int,
               rows: Sequence[int] | None = None) -> None:
  """Raises PromptTooLongError when a prompt + max_new_tokens > max_len."""
  for i, n in enumerate(lengths):
    if n + max_new_tokens > max_len:
      which = rows[i] if rows is not None else i
      raise PromptTooLongError(
          f"prompt {which} is {int(n)} tokens (image placeholders included); "
          f"with max_new_tokens={max_new_tokens} that exceeds the context of "
          f"{max_len} tokens: shorten the prompt, use fewer images, or lower "
          "max_new_tokens")


def greedy_generate(model: MLLM, params: Any,
                    prompts: Sequence[Sequence[Piece]],
                    images: Sequence[np.ndarray] | None = None, *,
                    image_token_id: int, max_new_tokens: int, stop_id: int,
                    tokenizer: Any = None, batch_size: int = 8,
                    pad_id: int = 0, v2pe_stride: int = V2PE_DEFAULT_STRIDE,
                    fastv: fastv_lib.FastVConfig | None = None,
                    contrast: contrastive.Contrast | None = None
                    ) -> Generation:
  """Batched greedy decoding with a KV cache (`generate`), one stop id.

  Args:
    model, params: the MLLM (`model.cfg` lays the prompts out).
    prompts: per example, text id lists and `layout.Media` items in order
      (the `<image>` markers already split out, as `layout.assemble` takes).
    images: per example f32[M_i, H, W, C], one image per Media item (already
      preprocessed); None for text-only prompts.
    image_token_id: the `<image>` id of the placeholders.
    max_new_tokens: the most tokens generated per example.
    stop_id: an example stops after generating it (`end_of_turn_id`).
    tokenizer: decodes the outputs into `texts` when given.
    batch_size: rows per program; the last batch is padded to it, so one
      program (per prompt length bucket) serves every batch.
    pad_id: the id in unused slots.
    v2pe_stride: the fixed V2PE inference stride.
    fastv: prune image tokens at prefill.
    contrast: visual contrastive decoding (`generate`).

  Returns:
    A Generation: one token list and text per prompt.
  """
  return generate(
      model, params, prompts, images, image_token_id=image_token_id,
      max_new_tokens=max_new_tokens, stop_ids=[stop_id], tokenizer=tokenizer,
      batch_size=batch_size, pad_id=pad_id, v2pe_stride=v2pe_stride,
      fastv=fastv, contrast=contrast)


def prefill_flops(model: MLLM, params: Any, batch: dict[str, Any], *,
                  max_new_tokens: int, fastv: fastv_lib.FastVConfig | None) -> float:
  """FLOPs of the compiled prefill (XLA cost analysis) for one batch."""
  batch = dict(batch)
  pruned_len = None
  if fastv is not None:
    fastv.check(model.cfg)
    batch["keep_image"], pruned_len = fastv_lib.plan(batch, fastv.r)
  compiled = prefill.lower(
      model, params, batch, np.zeros(1, np.int32), np.int32(0), np.int32(0),
      max_new_tokens=max_new_tokens, sampling=Sampling(),
      fastv=fastv, pruned_len=pruned_len).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])
