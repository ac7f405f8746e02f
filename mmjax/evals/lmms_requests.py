"""Answering lmms-eval requests with an mmjax run, without importing
lmms-eval (its model class is `mmjax.evals.lmms_model`).

  answerer = LmmsRequests(mmjax.inference.load("runs/llava"), batch_size=8)
  answerer.task_dict = {...}          # lmms-eval sets it: task -> split -> docs
  answerer.generate_until(requests)   # requests: objects with .args

lmms-eval 0.7 request arguments (`Instance.args`):

  generate_until              (context, gen_kwargs, doc_to_visual, doc_id, task, split)
  loglikelihood               (context, doc_to_target, doc_to_visual, doc_id, task, split)
  generate_until_multi_round  (context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)

doc_to_visual(doc) gives the doc's images (a list of PIL images, or None /
[] for text only); the context is the user turn, templated by the run's chat
template with the images before it as the run's training placed them.
Generation is greedy (a gen_kwargs temperature > 0 samples at that
temperature) through `Run.generate`, the compiled KV-cache decode loop,
grouped by gen_kwargs; an answer is cut at the first of gen_kwargs["until"].
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.decoding.sampling import Sampling
from mmjax.models import layout

DEFAULT_MAX_NEW_TOKENS = 32


def cut_at(text: str, until: Sequence[str]) -> str:
  """`text` up to the first stop string of `until` (empty ones ignored)."""
  ends = [text.find(s) for s in until if s and s in text]
  return text[:min(ends)] if ends else text


def _visuals(doc_to_visual: Any, doc: Any) -> list[Any]:
  visuals = doc_to_visual(doc) if doc_to_visual is not None else None
  if visuals is None:
    return []
  return list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]


def _until(gen_kwargs: dict[str, Any]) -> list[str]:
  until = gen_kwargs.get("until") or []
  return [until] if isinstance(until, str) else list(until)


class LmmsRequests:
  """generate_until / loglikelihood / generate_until_multi_round of an
  mmjax `Run` (module docstring)."""

  def __init__(self, run: Any, batch_size: int = 8):
    self.run = run
    self.batch_size = int(batch_size)
    self.task_dict: dict[str, Any] = {}

  def _doc(self, task: str, split: str, doc_id: int) -> Any:
    return self.task_dict[task][split][doc_id]

  def _generate(self, contexts: list[str], visuals: list[list[Any]],
                gen_kwargs: dict[str, Any]) -> list[str]:
    sampling = Sampling(temperature=float(gen_kwargs.get("temperature") or 0))
    texts = self.run.generate(
        contexts, [v or None for v in visuals],
        max_new_tokens=int(gen_kwargs.get("max_new_tokens")
                           or DEFAULT_MAX_NEW_TOKENS),
        sampling=sampling, batch_size=self.batch_size).texts
    return [cut_at(t, _until(gen_kwargs)) for t in texts]

  def generate_until(self, requests: Sequence[Any]) -> list[str]:
    """Answers in request order; requests with the same gen_kwargs are
    batched together."""
    out: list[str | None] = [None] * len(requests)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
      groups.setdefault(repr(sorted(r.args[1].items())), []).append(i)
    for rows in groups.values():
      for start in range(0, len(rows), self.batch_size):
        chunk = rows[start:start + self.batch_size]
        args = [requests[i].args for i in chunk]
        contexts = [a[0] for a in args]
        visuals = [_visuals(a[2], self._doc(a[4], a[5], a[3])) for a in args]
        for i, text in zip(chunk, self._generate(contexts, visuals,
                                                 dict(args[0][1]))):
          out[i] = text
    return out  # type: ignore[return-value]

  def generate_until_multi_round(self, requests: Sequence[Any]
                                 ) -> list[list[str]]:
    """Per request the answers of every round: round 0 asks the context;
    each later round asks what doc_to_text(doc, previous_output=...,
    round_idx=r, previous_round_info=...) returns (visuals, context,
    terminal, round results, info) until it says terminal."""
    out = []
    for r in requests:
      context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = (
          r.args)
      doc = self._doc(task, split, doc_id)
      visuals = _visuals(doc_to_visual, doc)
      rounds: list[str] = []
      info = None
      for round_idx in range(64):  # a task that never ends stops here
        if round_idx:
          visuals, context, terminal, rounds, info = doc_to_text(
              doc, previous_output=list(rounds), round_idx=round_idx,
              previous_round_info=info)
          rounds = list(rounds)
          if terminal:
            break
          visuals = list(visuals or [])
        rounds.append(self._generate([context], [visuals],
                                     dict(gen_kwargs))[0])
      out.append(rounds)
    return out

  def loglikelihood(self, requests: Sequence[Any]
                    ) -> list[tuple[float, bool]]:
    """Per request (log p(continuation | context, images), whether greedy
    decoding would produce the continuation): the continuation is scored
    as the start of the assistant's answer. One program per sequence length
    (no padding): meant for short multiple-choice continuations."""
    out = []
    for r in requests:
      context, doc_to_target, doc_to_visual, doc_id, task, split = r.args
      doc = self._doc(task, split, doc_id)
      continuation = (doc_to_target if isinstance(doc_to_target, str)
                      else doc_to_target(doc))
      out.append(self.score(context, str(continuation),
                            _visuals(doc_to_visual, doc)))
    return out

  def score(self, context: str, continuation: str, visuals: list[Any]
            ) -> tuple[float, bool]:
    """(log-probability, is greedy) of `continuation` after the templated
    `context` about `visuals`."""
    cont = self.run.tokenizer.encode(continuation)
    if not cont:
      raise ValueError(f"the continuation {continuation!r} has no tokens")
    return self.score_ids(context, cont, visuals)

  def score_ids(self, context: str, cont: Sequence[int], visuals: list[Any]
                ) -> tuple[float, bool]:
    """`score` of continuation token ids `cont`."""
    n_cont = len(cont)
    seq, images = layout_for_scoring(self.run, context, cont, visuals)
    logits = np.asarray(_logits(self.run.model, self.run.params, seq, images))
    targets = seq["tokens"][-n_cont:]
    rows = logits[-n_cont - 1:-1]           # position t-1 predicts token t
    logp = rows - _logsumexp(rows)
    total = float(np.sum(logp[np.arange(n_cont), targets]))
    return total, bool(np.all(rows.argmax(-1) == targets))


def layout_for_scoring(run: Any, context: str, cont: Sequence[int],
                       visuals: list[Any]
                       ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
  """(one sequence as `layout.assemble` lays it out, its images
  f32[M, S, S, 3] or None): the templated context, then the continuation's
  token ids `cont` as the answer's start."""
  media = run.prepare_media(visuals or None)
  n_media = 0 if media is None else len(media)
  pieces = list(run.prompt_pieces(context, n_media))
  last = pieces[-1]
  if isinstance(last, layout.Media):
    pieces.append(list(cont))
  else:
    pieces[-1] = list(last) + list(cont)
  seq = layout.assemble(run.cfg, pieces, run.image_token_id)
  return seq, media


def _logsumexp(x: np.ndarray) -> np.ndarray:
  m = x.max(-1, keepdims=True)
  return m + np.log(np.exp(x - m).sum(-1, keepdims=True))


@functools.partial(jax.jit, static_argnames=("model",))
def _logits(model: Any, params: Any, seq: dict[str, Any],
            images: jax.Array | None) -> jax.Array:
  """Logits f32[L, V] of one unpadded sequence (`layout.assemble` output)
  with its images f32[M, S, S, 3] (None: text only)."""
  from mmjax.models.mllm import MLLM  # pylint: disable=g-import-not-at-top
  kwargs = {}
  if images is not None:
    kwargs = dict(
        visual=model.apply({"params": params}, images[None],
                           method=MLLM.encode_images),
        image_mask=jnp.ones((1, images.shape[0]), bool))
  kwargs.update(image_token_mask=seq["image_token_mask"][None],
                media_locations=seq["media_locations"][None])
  out = model.apply({"params": params}, seq["tokens"][None],
                    seq["positions"][..., None, :], **kwargs)
  logits = out[0] if isinstance(out, tuple) else out
  return logits[0]
