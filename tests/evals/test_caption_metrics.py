"""Tests for mmjax.evals.caption_metrics: sacrebleu's BLEU-4 against the
definition it replaced, written out here as the reference."""
import collections
import math

import numpy as np
import pytest

from mmjax.data import shapes
from mmjax.evals import caption_metrics

# The captions of tests/test_evaluate.py::test_caption_metrics_match_sacrebleu.
TEST_PREDICTIONS = ["two red circles and a blue square.",
                    "a big green triangle on the left.",
                    "a blue square above a red circle ."]
TEST_REFERENCES = [
    ["two red circles and a blue square.", "the image shows two circles."],
    ["a large green triangle on the left.", "a green triangle."],
    ["a blue square and a red circle.",
     "the image shows a small blue square at the top and a red circle."]]
VOCAB = ["a", "the", "red", "blue", "green", "circle", "square", "triangle",
         "two", "left", "right", "on", "of", ".", ",", "Big", "SMALL"]


def reference_bleu4(predictions, references):
  """Corpus BLEU-4 as mmjax computed it by hand before using sacrebleu."""
  def ngrams(tokens, n):
    return collections.Counter(tuple(tokens[i:i + n])
                               for i in range(len(tokens) - n + 1))

  matched, total = [0] * 4, [0] * 4
  cand_len = ref_len = 0
  for pred, refs in zip(predictions, references, strict=True):
    cand = caption_metrics.words(pred)
    refs = [caption_metrics.words(r) for r in refs]
    cand_len += len(cand)
    # The reference length closest to the candidate's, the shorter on ties.
    ref_len += min((abs(len(r) - len(cand)), len(r)) for r in refs)[1]
    for n in range(1, 5):
      clip = collections.Counter()
      for r in refs:
        clip |= ngrams(r, n)
      matched[n - 1] += sum(min(c, clip[g])
                            for g, c in ngrams(cand, n).items())
      total[n - 1] += max(len(cand) - n + 1, 0)
  if min(matched) == 0:
    return 0.0
  log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / 4
  brevity = 1.0 if cand_len > ref_len else math.exp(1 - ref_len / cand_len)
  return brevity * math.exp(log_precision)


def _random_caption(rng, max_words):
  return " ".join(rng.choice(VOCAB, size=int(rng.integers(0, max_words + 1))))


def _shapes_caption_set(rng, size):
  """Shapes captions as references; predictions mix in another scene's."""
  preds, refs = [], []
  for _ in range(size):
    caps = shapes.captions(shapes.sample_scene(rng), rng)
    other = shapes.captions(shapes.sample_scene(rng), rng)
    preds.append(str(rng.choice(caps + other + [caps[0][:10], ""])))
    refs.append(caps[:int(rng.integers(1, 3))])
  return preds, refs


def _random_caption_set(rng, size):
  """Words drawn from a small vocabulary: empty, short and long captions."""
  preds = [_random_caption(rng, int(rng.choice([3, 8, 20])))
           for _ in range(size)]
  refs = [[_random_caption(rng, 12) or "a"
           for _ in range(int(rng.integers(1, 5)))] for _ in range(size)]
  return preds, refs


def _caption_sets():
  rng = np.random.default_rng(0)
  sets = [(TEST_PREDICTIONS, TEST_REFERENCES),
          (["a b c d"], [["a b c d"]]),
          (["x y z w"], [["a b c d"]]),
          ([""], [["a b c d"]]),
          (["a b c"], [["a b c"]]),  # No 4-grams at all.
          (["A, b c d e f."], [["a , b c d", "a b c d e f g h"]]),
          (["x a b c d"], [["a b c d x"]])]  # Every order but 4 matches.
  for i in range(300):
    make = _shapes_caption_set if i % 2 else _random_caption_set
    sets.append(make(rng, int(rng.integers(1, 9))))
  return sets


def test_bleu4_equals_reference_definition():
  differences, zeros = [], 0
  for preds, refs in _caption_sets():
    expected = reference_bleu4(preds, refs)
    got = caption_metrics.bleu4(preds, refs)
    assert 0.0 <= got <= 1.0
    assert (got == 0.0) == (expected == 0.0), (preds, refs)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15), (preds, refs)
    differences.append(abs(got - expected))
    zeros += expected == 0.0
  assert max(differences) < 1e-14
  assert 20 < zeros < len(differences) - 20  # Both kinds well covered.


def test_bleu4_on_the_evaluate_captions():
  got = caption_metrics.bleu4(TEST_PREDICTIONS, TEST_REFERENCES)
  assert got == pytest.approx(reference_bleu4(TEST_PREDICTIONS,
                                              TEST_REFERENCES), abs=1e-15)
  assert got == pytest.approx(0.7530360902481641, abs=1e-12)
  assert caption_metrics.bleu4(["a b c d"], [["a b c d"]]) == 1.0


def test_bleu4_edge_cases():
  assert caption_metrics.bleu4([], []) == 0.0
  assert caption_metrics.caption_metrics([], [])["bleu4"] == 0.0
  # The references of one caption are compared with that caption only.
  assert caption_metrics.bleu4(["a b c d", "e f g h"],
                               [["e f g h"], ["a b c d"]]) == 0.0
  with pytest.raises(ValueError, match="at least one reference"):
    caption_metrics.bleu4(["a b c d"], [[]])
  with pytest.raises(ValueError, match="2 captions for 1"):
    caption_metrics.bleu4(["a", "b"], [["a"]])
