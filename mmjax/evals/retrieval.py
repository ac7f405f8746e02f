"""Image-text retrieval: recall@k of a two-tower (SigLIP) model."""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from mmjax.data import builders, formats
from mmjax.data import images as images_lib
from mmjax.data.tokenizer import Tokenizer
from mmjax.evals import registry
from mmjax.models.text_tower import TwoTower


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


def retrieval_evaluator(ctx: registry.EvalContext) -> dict[str, Any]:
  """`retrieval` after a contrastive stage: recall@1/@5 on the test split,
  among config.eval.retrieval_examples images (else max_examples)."""
  config = ctx.config
  return evaluate_retrieval(
      ctx.model, ctx.params, ctx.tokenizer,
      builders.load_source(ctx.dataset, "test"), config.model.text.max_len,
      max_examples=config.eval.get("retrieval_examples",
                                   config.eval.max_examples),
      batch_size=config.eval.batch_size)


registry.register("retrieval", retrieval_evaluator)
