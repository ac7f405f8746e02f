"""Caption metrics: corpus BLEU-4 and token F1 against several references.

Words are lower-cased, with punctuation split off (`words`). BLEU-4 follows
Papineni et al. 2002 as sacrebleu's corpus BLEU does without smoothing:
clipped n-gram precisions for n = 1..4 summed over the corpus, their
geometric mean, times the brevity penalty exp(1 - r / c) when the candidate
length c is below the closest reference length r. Token F1 is SQuAD-style
bag-of-words F1 against each reference, the best reference per caption,
averaged.
"""
from __future__ import annotations

import collections
import math
import re
from typing import Sequence

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
  """Lower-cased words and punctuation marks of a caption."""
  return _WORD.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> collections.Counter:
  return collections.Counter(tuple(tokens[i:i + n])
                             for i in range(len(tokens) - n + 1))


def bleu4(predictions: Sequence[str],
          references: Sequence[Sequence[str]]) -> float:
  """Corpus BLEU-4 in [0, 1]; 0 when some n-gram order has no match."""
  matched, total = [0] * 4, [0] * 4
  cand_len = ref_len = 0
  for pred, refs in zip(predictions, references, strict=True):
    cand, refs = words(pred), [words(r) for r in refs]
    cand_len += len(cand)
    # The reference length closest to the candidate's (shorter on ties).
    ref_len += min((abs(len(r) - len(cand)), len(r)) for r in refs)[1]
    for n in range(1, 5):
      counts = _ngrams(cand, n)
      best = collections.Counter()
      for r in refs:
        best |= _ngrams(r, n)
      matched[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
      total[n - 1] += max(len(cand) - n + 1, 0)
  if min(matched) == 0:
    return 0.0
  log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / 4
  brevity = 1.0 if cand_len > ref_len else math.exp(
      1 - ref_len / max(cand_len, 1))
  return brevity * math.exp(log_precision)


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
