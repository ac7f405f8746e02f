"""Evaluation: greedy VQA decoding, accuracy by question type, POPE-style
yes/no probes, and image-text retrieval recall@k.

  out = greedy_generate(model, params, prompts, images, image_token_id=4,
                        max_new_tokens=4, stop_id=tok.end_of_turn_id)
  metrics = evaluate_shapes_vqa(model, params, cfg, tok, source)
  table = write_results(workdir, "sft", metrics)  # WORKDIR/eval/sft.json

Decoding here has no KV cache: every step runs the full forward over a fixed
[B, L] buffer in which each prompt is left-aligned and followed by
`max_new_tokens` pad slots. The slots are laid out by `layout.assemble` with
the prompt, so generated tokens get the positions a training sequence would
give them (rope, mrope, v2pe at a fixed stride). Under the causal mask, the
slots after an example's current length do not change its next-token logits.
"""
from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data import formats
from mmjax.data import images as images_lib
from mmjax.data.shapes import QTYPES
from mmjax.data.tokenizer import Tokenizer
from mmjax.models import layout
from mmjax.models.mllm import MLLM, MLLMConfig
from mmjax.models.position_ids import V2PE_DEFAULT_STRIDE
from mmjax.models.text_tower import TwoTower

Piece = Sequence[int] | layout.Media


class Generation(NamedTuple):
  """Per prompt: generated ids without the stop id, and their text
  (`tokenizer.decode(...).strip().lower()`, "" without a tokenizer)."""
  tokens: list[list[int]]
  texts: list[str]


@functools.partial(jax.jit, static_argnames=("model",))
def _decode(model: MLLM, params: Any, batch: dict[str, jax.Array],
            lengths: jax.Array, done: jax.Array, max_new_tokens: jax.Array,
            stop_id: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Greedy steps over a fixed buffer, one program per (B, L) shape.

  batch: tokens int32[B, L] (prompts left-aligned), positions, masks, images
  f32[B, M, H, W, C] / image_mask bool[B, M] (or None); lengths int32[B]: each
  prompt's length; done bool[B]: rows not to generate for (batch padding).
  Returns (tokens int32[B, L], lengths int32[B] after generation).
  """
  visual = None
  if batch["images"] is not None:  # Encoded once, reused by every step.
    visual = model.apply({"params": params}, batch["images"],
                         method=MLLM.encode_images)
  rows = jnp.arange(lengths.shape[0])

  def cond(state):
    step, _, _, done = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(state):
    step, tokens, cur, done = state
    logits, _ = model.apply(
        {"params": params}, tokens, batch["positions"], visual=visual,
        image_mask=batch["image_mask"],
        image_token_mask=batch["image_token_mask"],
        media_locations=batch["media_locations"])
    nxt = jnp.argmax(logits[rows, cur - 1], axis=-1).astype(tokens.dtype)
    nxt = jnp.where(done, tokens[rows, cur], nxt)
    tokens = tokens.at[rows, cur].set(nxt)
    cur = cur + (~done).astype(cur.dtype)
    return step + 1, tokens, cur, done | (nxt == stop_id)

  _, tokens, cur, _ = jax.lax.while_loop(
      cond, body, (jnp.int32(0), batch["tokens"], lengths, done))
  return tokens, cur


def _stack_batch(cfg: MLLMConfig, seqs: list[dict[str, np.ndarray]],
                 images: list[np.ndarray] | None, length: int, pad_id: int
                 ) -> dict[str, np.ndarray | None]:
  """Laid-out sequences (and [M_i, H, W, C] images) -> [B, length] arrays."""
  b = len(seqs)
  out = {"tokens": np.full((b, length), pad_id, np.int32),
         "image_token_mask": np.zeros((b, length), bool),
         "media_locations": np.zeros((b, length), bool)}
  pos = np.zeros(((3,) if cfg.positions == "mrope" else ()) + (b, length),
                 seqs[0]["positions"].dtype)
  for i, seq in enumerate(seqs):
    n = len(seq["tokens"])
    for key in ("tokens", "image_token_mask", "media_locations"):
      out[key][i, :n] = seq[key]
    pos[..., i, :n] = seq["positions"]
  out["positions"], out["images"], out["image_mask"] = pos, None, None
  counts = np.asarray([len(im) for im in images or []], np.int32)
  if counts.any():
    shape = next(im for im in images if len(im)).shape[1:]
    out["images"] = np.zeros((b, counts.max()) + shape, np.float32)
    out["image_mask"] = np.arange(counts.max()) < counts[:, None]
    for i, im in enumerate(images):
      out["images"][i, :len(im)] = im
  return out


def greedy_generate(model: MLLM, params: Any,
                    prompts: Sequence[Sequence[Piece]],
                    images: Sequence[np.ndarray] | None = None, *,
                    image_token_id: int, max_new_tokens: int, stop_id: int,
                    tokenizer: Tokenizer | None = None, batch_size: int = 8,
                    pad_id: int = 0, v2pe_stride: int = V2PE_DEFAULT_STRIDE,
                    length: int | None = None) -> Generation:
  """Batched greedy decoding without a KV cache (module docstring).

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
    batch_size: rows per forward; the last batch is padded to it, so one
      program (per buffer length) serves every batch.
    pad_id: the id in unused slots.
    v2pe_stride: the fixed V2PE inference stride.
    length: buffer length L (default: the longest prompt + max_new_tokens,
      rounded up to a multiple of 8).

  Returns:
    A Generation: one token list and text per prompt.
  """
  if max_new_tokens < 1 or batch_size < 1 or (
      images is not None and len(images) != len(prompts)):
    raise ValueError(f"need max_new_tokens={max_new_tokens} >= 1, batch_size="
                     f"{batch_size} >= 1, and one image array per prompt")
  seqs, lengths = [], []
  for i, pieces in enumerate(prompts):
    n_images = 0 if images is None else len(images[i])
    if sum(isinstance(p, layout.Media) for p in pieces) != n_images:
      raise ValueError(f"prompt {i}: {n_images} image(s) given; its Media "
                       "item(s) and images must be equally many")
    slots = [[pad_id] * max_new_tokens]  # A text piece: same position code.
    seqs.append(layout.assemble(model.cfg, list(pieces) + slots,
                                image_token_id, v2pe_stride=v2pe_stride))
    lengths.append(len(seqs[-1]["tokens"]) - max_new_tokens)
  longest = max(lengths, default=0) + max_new_tokens
  length = length or 8 * math.ceil(longest / 8)
  if length < longest:
    raise ValueError(f"length={length} < longest prompt + max_new_tokens = "
                     f"{longest}")
  tokens_out: list[list[int]] = []
  for start in range(0, len(seqs), batch_size):
    rows = list(range(start, min(start + batch_size, len(seqs))))
    fill = rows + [rows[0]] * (batch_size - len(rows))  # Fixed batch shape.
    batch = _stack_batch(model.cfg, [seqs[r] for r in fill],
                         None if images is None else [images[r] for r in fill],
                         length, pad_id)
    lens = np.asarray([lengths[r] for r in fill], np.int32)
    done = np.arange(batch_size) >= len(rows)
    tokens, cur = jax.device_get(_decode(
        model, params, batch, lens, done, np.int32(max_new_tokens),
        np.int32(stop_id)))
    for i in range(len(rows)):
      new = [int(t) for t in tokens[i, lens[i]:cur[i]]]
      tokens_out.append(new[:-1] if new and new[-1] == stop_id else new)
  texts = ([tokenizer.decode(t).strip().lower() for t in tokens_out]
           if tokenizer is not None else [""] * len(tokens_out))
  return Generation(tokens_out, texts)


def normalize_answer(text: str) -> str:
  """Lower-case, strip whitespace and a trailing '.'."""
  return text.strip().lower().rstrip(".").strip()


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str],
                 qtypes: Sequence[str]) -> dict[str, float | int]:
  """Exact match after `normalize_answer`, overall and per question type.

  Returns:
    {"acc/all", "count/all", and "acc/<qtype>", "count/<qtype>" for each
    question type present (shapes.QTYPES order, then others sorted)}.
  """
  if not len(predictions) == len(answers) == len(qtypes):
    raise ValueError(f"{len(predictions)} predictions, {len(answers)} answers "
                     f"and {len(qtypes)} qtypes must be equally many")
  hits = [normalize_answer(p) == normalize_answer(a)
          for p, a in zip(predictions, answers)]
  present = set(qtypes)
  order = [q for q in QTYPES if q in present] + sorted(present - set(QTYPES))
  out: dict[str, float | int] = {}
  for name in order + ["all"]:
    mine = [h for h, q in zip(hits, qtypes) if name in ("all", q)]
    out[f"acc/{name}"] = float(np.mean(mine)) if mine else 0.0
    out[f"count/{name}"] = len(mine)
  return out


def yes_no_metrics(predictions: Sequence[str], answers: Sequence[str]
                   ) -> dict[str, float | int]:
  """POPE-style yes/no metrics with "yes" as the positive class.

  Returns:
    accuracy, precision, recall, f1 (0 where undefined), yes_rate (the
    fraction of predictions that are "yes"; a model that hallucinates says
    yes too often) and count.
  """
  if len(predictions) != len(answers):
    raise ValueError(f"{len(predictions)} predictions for {len(answers)} "
                     "answers")
  pred = np.asarray([normalize_answer(p) == "yes" for p in predictions], bool)
  gold = np.asarray([normalize_answer(a) == "yes" for a in answers], bool)
  n, tp = len(answers), int(np.sum(pred & gold))
  precision, recall = tp / max(pred.sum(), 1), tp / max(gold.sum(), 1)
  f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
  accuracy = np.mean([normalize_answer(p) == normalize_answer(a)
                      for p, a in zip(predictions, answers)]) if n else 0.0
  return {"accuracy": float(accuracy),
          "precision": float(precision), "recall": float(recall),
          "f1": float(f1),
          "yes_rate": float(pred.mean()) if n else 0.0, "count": n}


def retrieval_recall(zimg: np.ndarray, ztxt: np.ndarray,
                     ks: Sequence[int] = (1, 5)) -> dict[str, float]:
  """Image->text and text->image recall@k; pair i is the positive of i.

  Args:
    zimg: f32[N, E] image embeddings; ztxt: f32[N, E] text embeddings
      (similarity is the dot product: pass unit-norm vectors for cosine).
    ks: the k values.

  Returns:
    {"i2t/recall@k", "t2i/recall@k"} for each k; a tie with the positive
    counts against it (collapsed embeddings score recall 0, not 1).
  """
  zimg, ztxt = np.asarray(zimg, np.float32), np.asarray(ztxt, np.float32)
  if zimg.ndim != 2 or zimg.shape != ztxt.shape:
    raise ValueError(f"zimg {zimg.shape} and ztxt {ztxt.shape} must both be "
                     "[N, E]")
  sims = zimg @ ztxt.T  # [N images, N texts]
  out = {}
  for name, s in (("i2t", sims), ("t2i", sims.T)):
    positive = np.diag(s)[:, None]
    others = ~np.eye(len(s), dtype=bool)
    rank = np.sum((s >= positive) & others, axis=1)  # 0 = the best.
    for k in ks:
      out[f"{name}/recall@{k}"] = float(np.mean(rank < k))
  return out


def prompt_pieces(cfg: MLLMConfig, tokenizer: Tokenizer,
                  turns: Sequence[Mapping[str, str]]) -> list[Piece]:
  """`tokenizer.prompt_ids(turns)` split at `<image>` markers into pieces,
  one `layout.Media` at the model's image side per marker."""
  ids, pieces, start = tokenizer.prompt_ids(turns), [], 0
  for i, t in enumerate(ids):
    if t == tokenizer.image_id:
      pieces += [ids[start:i], layout.Media(cfg.side, cfg.side, cfg.frames)]
      start = i + 1
  return pieces + [ids[start:]]


def evaluate_shapes_vqa(model: MLLM, params: Any, cfg: MLLMConfig,
                        tokenizer: Tokenizer,
                        source: Sequence[Mapping[str, Any]], *,
                        max_examples: int | None = None, batch_size: int = 8,
                        max_new_tokens: int = 4, resize: str = "square",
                        num_samples: int = 8) -> dict[str, Any]:
  """Greedy answers to every question of shapes records, scored.

  Each (record, question) is one example, prompted as training prompts it
  (user `<image>\\n{question}`, formats 'shapes'), up to `max_examples`
  examples in source order.

  Returns:
    `vqa_accuracy` keys; `pope/<key>` = `yes_no_metrics` on existence
    questions; `absent_yes_rate` = yes-rate on existence questions about
    absent objects (answer "no"); "samples": the first `num_samples`
    {question, answer, prediction, qtype} dicts.
  """
  kind = images_lib.normalization_kind(cfg)
  examples = []  # (record, question index, f32[1, S, S, 3] image)
  for index in range(len(source)):
    if max_examples is not None and len(examples) >= max_examples:
      break
    record = source[index]
    image = images_lib.preprocess(record["image"], cfg.side, resize=resize,
                                  kind=kind)[None]  # Shared, not copied.
    examples += [(record, item, image)
                 for item in range(formats.num_items(record, "shapes"))]
  examples = examples[:max_examples]
  prompts = [prompt_pieces(cfg, tokenizer, formats.record_example(
      r, i, "shapes").turns[:-1]) for r, i, _ in examples]
  pixels = [image for _, _, image in examples]
  questions, answers, qtypes = ([r[key][i] for r, i, _ in examples]
                                for key in ("questions", "answers", "qtypes"))
  out = greedy_generate(model, params, prompts, pixels,
                        image_token_id=tokenizer.image_id,
                        max_new_tokens=max_new_tokens,
                        stop_id=tokenizer.end_of_turn_id, tokenizer=tokenizer,
                        batch_size=batch_size, pad_id=tokenizer.pad_id)
  preds = out.texts
  metrics: dict[str, Any] = dict(vqa_accuracy(preds, answers, qtypes))
  exist = [i for i, q in enumerate(qtypes) if q == "existence"]
  pope = yes_no_metrics([preds[i] for i in exist], [answers[i] for i in exist])
  metrics.update({f"pope/{k}": v for k, v in pope.items()})
  absent = [i for i in exist if normalize_answer(answers[i]) == "no"]
  metrics["absent_yes_rate"] = yes_no_metrics(
      [preds[i] for i in absent], [answers[i] for i in absent])["yes_rate"]
  metrics["samples"] = [
      {"question": q, "answer": a, "prediction": p, "qtype": t} for q, a, p, t
      in zip(questions[:num_samples], answers, preds, qtypes)]
  return metrics


@functools.partial(jax.jit, static_argnames=("model",))
def _encode_pairs(model: TwoTower, params: Any, images: jax.Array,
                  tokens: jax.Array, pad_mask: jax.Array | None
                  ) -> dict[str, jax.Array]:
  """images f32[B, S, S, C], tokens int32[B, T] -> zimg, ztxt f32[B, E]."""
  return model.apply({"params": params}, images, tokens, pad_mask)


def evaluate_retrieval(model: TwoTower, params: Any, tokenizer: Tokenizer,
                       source: Sequence[Mapping[str, Any]], text_len: int, *,
                       max_examples: int | None = None, batch_size: int = 32,
                       ks: Sequence[int] = (1, 5), resize: str = "square",
                       use_pad_mask: bool = True) -> dict[str, float]:
  """Image<->caption recall@k of a two-tower model over a source.

  Each record gives its image and first caption (formats 'contrastive'),
  padded the SigLIP way to `text_len` (`formats.caption_tokens`); with
  `use_pad_mask` the mask is passed as in training. Batches are padded to
  `batch_size` so one program serves all of them.

  Returns:
    `retrieval_recall` keys and "count" (N).
  """
  n = len(source) if max_examples is None else min(len(source), max_examples)
  if n < 1:
    raise ValueError("evaluate_retrieval needs at least one record")
  side, kind = model.vision.image_size, model.vision.kind
  zimg, ztxt = [], []
  for start in range(0, n, batch_size):
    count = min(batch_size, n - start)
    rows = list(range(start, start + count)) + [start] * (batch_size - count)
    examples = [formats.record_example(source[r], 0, "contrastive")
                for r in rows]
    pixels = np.stack([images_lib.preprocess(e.image, side, resize=resize,
                                             kind=kind) for e in examples])
    tokens, masks = (np.stack(a) for a in zip(*[
        formats.caption_tokens(tokenizer, e.text, text_len) for e in examples]))
    z = jax.device_get(_encode_pairs(model, params, pixels, tokens,
                                     masks if use_pad_mask else None))
    zimg.append(z["zimg"][:count])
    ztxt.append(z["ztxt"][:count])
  out = retrieval_recall(np.concatenate(zimg), np.concatenate(ztxt), ks)
  return {**out, "count": n}


def _cell(value: Any) -> str:
  text = f"{value:.4f}" if isinstance(value, float) else str(value)
  return text.replace("|", "\\|").replace("\n", " ")


def results_markdown(stage: str, metrics: Mapping[str, Any]) -> str:
  """A markdown section: scalar metrics, then the sample answers if any."""
  lines = [f"### Evaluation of stage `{stage}`", "", "| metric | value |",
           "|---|---|"]
  lines += [f"| {k} | {_cell(v)} |" for k, v in metrics.items()
            if isinstance(v, (int, float, str))]
  samples = metrics.get("samples") or []
  if samples:
    lines += ["", "| question | answer | prediction |", "|---|---|---|"]
    lines += [f"| {_cell(s['question'])} | {_cell(s['answer'])} | "
              f"{_cell(s['prediction'])} |" for s in samples]
  return "\n".join(lines) + "\n"


def write_results(workdir: str, stage: str, metrics: Mapping[str, Any]) -> str:
  """Writes WORKDIR/eval/<stage>.json (atomically); returns the markdown."""
  directory = os.path.join(workdir, "eval")
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"{stage}.json")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(json.dumps(dict(metrics), indent=2,
                       default=lambda v: np.asarray(v).tolist()))
  os.replace(path + ".tmp", path)
  return results_markdown(stage, metrics)
