"""Captioning on the shapes benchmark (evaluator `captions`): greedy captions
scored with BLEU-4 and token F1 against both references of each record."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from mmjax.data import builders
from mmjax.data.tokenizer import Tokenizer
from mmjax.decoding import decode
from mmjax.evals import registry
from mmjax.evals import vqa
from mmjax.evals.caption_metrics import caption_metrics
from mmjax.models.mllm import MLLM, MLLMConfig


def evaluate_shapes_captions(model: MLLM, params: Any, cfg: MLLMConfig,
                             tokenizer: Tokenizer,
                             source: Sequence[Mapping[str, Any]], *,
                             max_examples: int | None = None,
                             batch_size: int = 8, max_new_tokens: int = 48,
                             resize: str = "square", num_samples: int = 4
                             ) -> dict[str, Any]:
  """Greedy captions of shapes records (prompted as the caption stage is),
  scored against both reference captions of each record.

  Returns:
    `caption/bleu4`, `caption/token_f1`, `caption/count` and
    "caption_samples": the first `num_samples` {prediction, references}.
  """
  examples, prompts, pixels = vqa.shapes_examples(cfg, tokenizer, source,
                                               "caption", max_examples, resize)
  refs = [list(r["captions"]) for r, _ in examples]
  out = decode.greedy_generate(model, params, prompts, pixels,
                        image_token_id=tokenizer.image_id,
                        max_new_tokens=max_new_tokens,
                        stop_id=tokenizer.end_of_turn_id, tokenizer=tokenizer,
                        batch_size=batch_size, pad_id=tokenizer.pad_id)
  metrics: dict[str, Any] = {
      f"caption/{k}": v
      for k, v in caption_metrics(out.texts, refs).items()}
  metrics["caption_samples"] = [{"prediction": p, "references": r}
                                for p, r in zip(out.texts[:num_samples], refs)]
  return metrics


def captions_evaluator(ctx: registry.EvalContext) -> dict[str, Any]:
  """`captions` after a stage: config.eval.caption_examples (default 32)
  test images captioned and scored."""
  m = evaluate_shapes_captions(
      ctx.model, ctx.params, ctx.model.cfg, ctx.tokenizer,
      builders.load_source(ctx.dataset, "test"),
      max_examples=ctx.config.eval.get("caption_examples", 32),
      batch_size=ctx.config.eval.batch_size)
  return {f"test/{k}": v for k, v in m.items()}


registry.register("captions", captions_evaluator)
