"""Caption metrics: corpus BLEU-4 and token F1 against several references.

Words are lower-cased, with punctuation split off (`words`). BLEU-4 is
sacrebleu's corpus BLEU (Papineni et al. 2002) on those words: no further
tokenisation, no smoothing, all four n-gram orders, each caption's references
(as many as it has), scaled to [0, 1]. That is, the clipped n-gram precisions
for n = 1..4 summed over the corpus, their geometric mean, times the brevity
penalty exp(1 - r / c) when the candidate length c is below r, the sum of the
reference lengths closest to each candidate's (the shorter on ties); 0 when
some n-gram order has no match. Token F1 is SQuAD-style bag-of-words F1
against each reference, the best reference per caption, averaged.
"""
from __future__ import annotations

import collections
import re
from typing import Sequence

import sacrebleu

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
  """Lower-cased words and punctuation marks of a caption."""
  return _WORD.findall(text.lower())


def _joined(text: str) -> str:
  """`words` of a caption joined by single spaces, as sacrebleu splits them."""
  return " ".join(words(text))


def bleu4(predictions: Sequence[str],
          references: Sequence[Sequence[str]]) -> float:
  """Corpus BLEU-4 in [0, 1]; 0 when some n-gram order has no match.

  Args:
    predictions: one caption per example.
    references: the reference captions of each example, at least one each;
      examples may have different numbers of references.

  Returns:
    sacrebleu's corpus BLEU of the `words` of the captions, divided by 100.
  """
  predictions, references = list(predictions), list(references)
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} captions for {len(references)} "
                     "reference lists")
  if not predictions:
    return 0.0
  if not all(references):
    raise ValueError("every caption needs at least one reference")
  # sacrebleu takes one stream per reference index, each as long as the
  # predictions; None marks a caption with fewer references than the most.
  num_refs = max(len(refs) for refs in references)
  streams = [[_joined(refs[i]) if i < len(refs) else None
              for refs in references] for i in range(num_refs)]
  metric = sacrebleu.metrics.BLEU(tokenize="none", lowercase=False,
                                  force=True, smooth_method="none",
                                  effective_order=False, max_ngram_order=4)
  score = metric.corpus_score([_joined(p) for p in predictions], streams)
  # sacrebleu gives a percentage, which rounding can push just past 100.
  return min(score.score / 100, 1.0)


def token_f1(prediction: str, references: Sequence[str]) -> float:
  """Best bag-of-words F1 of one caption over its references."""
  pred = collections.Counter(words(prediction))
  best = 0.0
  for ref in references:
    gold = collections.Counter(words(ref))
    common = sum((pred & gold).values())
    if common:
      p, r = common / sum(pred.values()), common / sum(gold.values())
      best = max(best, 2 * p * r / (p + r))
  return best


def caption_metrics(predictions: Sequence[str],
                    references: Sequence[Sequence[str]]) -> dict[str, float]:
  """{"bleu4", "token_f1", "count"} of captions against their references."""
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} captions for {len(references)} "
                     "reference lists")
  f1 = [token_f1(p, r) for p, r in zip(predictions, references)]
  return {"bleu4": bleu4(predictions, references) if predictions else 0.0,
          "token_f1": sum(f1) / len(f1) if f1 else 0.0,
          "count": len(predictions)}
