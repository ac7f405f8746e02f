"""Questions about clips (the tones benchmark) and about an image and a clip
together (shapes_tones): exact match by question type (evaluator
`audio_vqa`).

  metrics = evaluate_clip_vqa(model, params, tok, source, "tones")

Each (record, question) is one example, prompted as training prompts it
(format 'tones': user `<audio>\\n{question}`; format 'joint': user
`<image>\\n<audio>\\n{question}` for every question of a shapes_tones
record: the joint ones, the image's and the clip's, each with both media),
answered greedily with the KV cache (`decode.generate`, the clip and the
image encoded inside the prefill) and scored with `vqa.vqa_accuracy`
(accuracy, count and standard error per type: tones' count, pitch,
waveform, loudness; shapes_tones' same_count, the five shapes types and
tone_count, tone_pitch, ...).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from mmjax.data import audio_batch, builders, formats
from mmjax.decoding import decode
from mmjax.evals import registry, vqa
from mmjax.inference import prompts as prompts_lib
from mmjax.models.mllm import MLLM

SPLIT = "test"
# config.data.dataset -> the format its questions are asked in.
DATASET_FORMATS = {"tones": "tones", "shapes_tones": "joint"}


def clip_examples(model: MLLM, tokenizer: Any,
                  source: Sequence[Mapping[str, Any]], fmt: str,
                  max_examples: int | None):
  """(record, item) pairs in source order, their prompts (the training
  prompt without the answer), clips (`audio_batch.clip_features`) and,
  for 'joint', images as the model takes them (else None)."""
  examples, clips, pixels = [], [], []
  for index in range(len(source)):
    if max_examples is not None and len(examples) >= max_examples:
      break
    record = source[index]
    n = formats.num_items(record, fmt)
    first = formats.record_example(record, 0, fmt)
    feats = audio_batch.clip_features(model.cfg, first.audio)
    image = (vqa.record_pixels(model.cfg, record, "square") if first.images
             else None)
    examples += [(record, item) for item in range(n)]
    clips += [feats] * n
    pixels += [image] * n
  examples, clips = examples[:max_examples], clips[:max_examples]
  pixels = pixels[:max_examples]
  prompts = [prompts_lib.prompt_pieces(
      model.cfg, tokenizer, formats.record_example(r, i, fmt).turns[:-1],
      clips=c) for (r, i), c in zip(examples, clips)]
  if any(p is not None for p in pixels):
    prompts, pixels = vqa.fit_prompts(prompts, pixels)
    return examples, prompts, clips, pixels
  return examples, prompts, clips, None


def evaluate_clip_vqa(model: MLLM, params: Any, tokenizer: Any,
                      source: Sequence[Mapping[str, Any]], fmt: str = "tones",
                      *, max_examples: int | None = None,
                      batch_size: int = 32, max_new_tokens: int = 4,
                      num_samples: int = 8) -> dict[str, Any]:
  """Greedy answers to every question of the records under `fmt` ('tones'
  or 'joint'), scored.

  Returns:
    `vqa.vqa_accuracy` keys ("acc/all", "se/all", "acc/count", ...) and
    "samples": the first `num_samples` {question, answer, prediction, qtype}.
  """
  examples, prompts, clips, pixels = clip_examples(model, tokenizer, source,
                                                   fmt, max_examples)
  qa = [formats.clip_qa(r, fmt)[i] for r, i in examples]
  questions, answers, qtypes = ([x[k] for x in qa] for k in range(3))
  preds = decode.generate(
      model, params, prompts, pixels, image_token_id=tokenizer.image_id,
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
  with the split; the questions of config.data.dataset
  (`DATASET_FORMATS`)."""
  config = ctx.config
  dataset = config.data.get("dataset", "tones")
  if dataset not in DATASET_FORMATS:
    raise ValueError(f"the audio_vqa evaluator asks about clips; "
                     f"config.data.dataset={dataset!r} has none (use one "
                     f"of {', '.join(DATASET_FORMATS)}).")
  m = evaluate_clip_vqa(
      ctx.model, ctx.params, ctx.tokenizer,
      builders.load_source(ctx.dataset, SPLIT), DATASET_FORMATS[dataset],
      max_examples=config.eval.max_examples,
      batch_size=config.eval.batch_size,
      max_new_tokens=config.eval.max_new_tokens)
  return {f"{SPLIT}/{k}": v for k, v in m.items()}


registry.register("audio_vqa", audio_vqa_evaluator)
