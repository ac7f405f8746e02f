"""Questions about clips of the tones benchmark: exact match by question type
(evaluator `audio_vqa`).

  metrics = evaluate_tones_vqa(model, params, tok, source, max_examples=2000)

Each (record, question) is one example, prompted as training prompts it
(user `<audio>\\n{question}`, format 'tones'), answered greedily with the
KV cache (`decode.generate`, the clip encoded inside the prefill) and
scored with `vqa.vqa_accuracy` (accuracy, count and standard error per
type: count, pitch, waveform, loudness).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from mmjax.data import audio_batch, builders, formats
from mmjax.decoding import decode
from mmjax.evals import registry, vqa
from mmjax.inference import prompts as prompts_lib
from mmjax.models.mllm import MLLM

SPLIT = "test"


def tones_examples(model: MLLM, tokenizer: Any,
                   source: Sequence[Mapping[str, Any]],
                   max_examples: int | None):
  """(record, item) pairs in source order, their prompts (the training
  prompt without the answer) and clips (`audio_batch.clip_features`)."""
  examples, clips = [], []
  for index in range(len(source)):
    if max_examples is not None and len(examples) >= max_examples:
      break
    record = source[index]
    n = formats.num_items(record, "tones")
    feats = audio_batch.clip_features(
        model.cfg, formats.record_example(record, 0, "tones").audio)
    examples += [(record, item) for item in range(n)]
    clips += [feats] * n
  examples, clips = examples[:max_examples], clips[:max_examples]
  prompts = [prompts_lib.prompt_pieces(
      model.cfg, tokenizer, formats.record_example(r, i, "tones").turns[:-1],
      clips=c) for (r, i), c in zip(examples, clips)]
  return examples, prompts, clips


def evaluate_tones_vqa(model: MLLM, params: Any, tokenizer: Any,
                       source: Sequence[Mapping[str, Any]], *,
                       max_examples: int | None = None, batch_size: int = 32,
                       max_new_tokens: int = 4, num_samples: int = 8
                       ) -> dict[str, Any]:
  """Greedy answers to every question of tones records, scored.

  Returns:
    `vqa.vqa_accuracy` keys ("acc/all", "se/all", "acc/count", ...) and
    "samples": the first `num_samples` {question, answer, prediction, qtype}.
  """
  examples, prompts, clips = tones_examples(model, tokenizer, source,
                                            max_examples)
  questions, answers, qtypes = ([r[key][i] for r, i in examples]
                                for key in ("questions", "answers", "qtypes"))
  preds = decode.generate(
      model, params, prompts, None, image_token_id=tokenizer.image_id,
      max_new_tokens=max_new_tokens, stop_ids=[tokenizer.end_of_turn_id],
      tokenizer=tokenizer, batch_size=batch_size, pad_id=tokenizer.pad_id,
      audio=clips, audio_token_id=tokenizer.audio_id).texts
  metrics: dict[str, Any] = dict(vqa.vqa_accuracy(preds, answers, qtypes))
  metrics["samples"] = [
      {"question": q, "answer": a, "prediction": p, "qtype": t} for q, a, p, t
      in zip(questions[:num_samples], answers, preds, qtypes)]
  return metrics


def audio_vqa_evaluator(ctx: registry.EvalContext) -> dict[str, Any]:
  """`audio_vqa` after a stage: the test split's metrics, keys prefixed
  with the split."""
  config = ctx.config
  m = evaluate_tones_vqa(
      ctx.model, ctx.params, ctx.tokenizer,
      builders.load_source(ctx.dataset, SPLIT),
      max_examples=config.eval.max_examples,
      batch_size=config.eval.batch_size,
      max_new_tokens=config.eval.max_new_tokens)
  return {f"{SPLIT}/{k}": v for k, v in m.items()}


registry.register("audio_vqa", audio_vqa_evaluator)
