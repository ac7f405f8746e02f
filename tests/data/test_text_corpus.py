"""Tests for mmjax.data.text_corpus."""
import math
import re

import numpy as np
import pytest

from mmjax.data import text_corpus
from mmjax.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def corpus():
  return text_corpus.sentences(3000, seed=0)


def test_same_seed_same_list():
  assert text_corpus.sentences(300, seed=7) == text_corpus.sentences(300, 7)


def test_different_seeds_differ():
  a = text_corpus.sentences(1000, seed=0)
  b = text_corpus.sentences(1000, seed=1)
  assert a != b
  # Short sentences recur by chance, but most examples differ.
  assert len(set(a) & set(b)) < 300


def test_length_and_prefix_stability():
  assert text_corpus.sentences(0) == []
  # A longer list extends a shorter one, so corpus sizes nest.
  assert text_corpus.sentences(500)[:100] == text_corpus.sentences(100)
  with pytest.raises(ValueError, match="num"):
    text_corpus.sentences(-1)


def test_diversity_and_coverage(corpus):
  assert len(set(corpus)) > 0.85 * len(corpus)
  words = set(" ".join(corpus).replace(".", " ").replace("?", " ").split())
  for word in (text_corpus.COLOURS + text_corpus.SHAPES + text_corpus.SIZES +
               text_corpus.COUNT_WORDS):
    assert word in words, word
  for marker in ("there are", "is left of", "corner", "q: what colour",
                 "q: what shape", "q: how many", "q: is the", ", so the"):
    assert any(marker in s for s in corpus), marker
  assert all(s == s.strip().lower() and s.endswith(".") for s in corpus)


def test_grammar_agreement(corpus):
  text = "\n".join(corpus)
  assert not re.search(r"\ba [aeiou]", text)  # "an orange", never "a orange".
  assert not re.search(r"\bthere are one\b", text)
  for match in re.finditer(r"there are (\w+) [\w ]*?(\w+)\.", text):
    assert match.group(1) != "one" and match.group(2).endswith("s")


def test_answers_are_grounded_in_the_scene(corpus):
  colour_qa = re.compile(r"^(.*) q: what colour is the (\w+)\? a: (\w+)\.$")
  count_qa = re.compile(r"^there are (\w+) .* q: how many \w+ are there\? "
                        r"a: (\w+)\.$")
  checked = 0
  for s in corpus:
    if m := colour_qa.match(s):
      scene, shape, colour = m.groups()
      assert f"{colour} {shape}" in scene, s
      checked += 1
    elif m := count_qa.match(s):
      assert m.group(1) == m.group(2), s
      checked += 1
  assert checked > 100


def test_yes_no_answers_follow_relations(corpus):
  inverse = text_corpus.INVERSE_RELATION
  rel = "|".join(text_corpus.RELATIONS)
  pattern = re.compile(
      rf"^\w.* an? (\w+ \w+) ({rel}) an? (\w+ \w+)\. q: is the (\w+ \w+) "
      rf"({rel}) the (\w+ \w+)\? a: (yes|no)\.$")
  answers = []
  for s in corpus:
    if m := pattern.match(s):
      a, r, b, qa, qr, qb, answer = m.groups()
      truth = (qa, qr, qb) in ((a, r, b), (b, inverse[r], a))
      assert (answer == "yes") == truth, s
      answers.append(answer)
  assert "yes" in answers and "no" in answers


@pytest.mark.parametrize("k", [1, 2, 7, 50])
def test_unigram_entropy_of_uniform_is_log_k(k):
  ids = np.repeat(np.arange(1, k + 1), 4).reshape(4, k)
  assert text_corpus.unigram_entropy(ids) == pytest.approx(math.log(k))


def test_unigram_entropy_ignores_pad_and_rejects_bad_input():
  ids = np.array([[5, 6, 0, 0, 0], [5, 6, 0, 0, 0]])
  assert text_corpus.unigram_entropy(ids) == pytest.approx(math.log(2))
  skewed = np.array([1, 1, 1, 2])
  expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
  assert text_corpus.unigram_entropy(skewed) == pytest.approx(expected)
  with pytest.raises(ValueError, match="no non-pad"):
    text_corpus.unigram_entropy(np.zeros((2, 3), np.int32))
  with pytest.raises(ValueError, match="integers"):
    text_corpus.unigram_entropy(np.ones(3, np.float32))


def test_tokenized_corpus_has_high_unigram_entropy(corpus):
  tok = Tokenizer.train(corpus, 512)
  ids = np.concatenate([tok.encode(s) for s in corpus])
  entropy = text_corpus.unigram_entropy(ids)
  # Several nats, yet below the uniform bound over the ids actually used.
  assert 3.0 < entropy < math.log(len(np.unique(ids)))
