"""Deterministic synthetic English corpus for from-scratch LM training.

The corpus talks about the same world as the synthetic shapes benchmark
(`mmjax/data/shapes.py`): coloured shapes of a few sizes, counts, corner
positions and spatial relations. An LM pretrained on it therefore already
knows the benchmark's words before any image is seen.

Each example is one line of lowercase text made by a small probabilistic
grammar. Word choice is spread over many templates, colours, shapes and counts,
so the unigram entropy of the tokens is high, while much of each example is
predictable from its context: number agreement ("there is one ..." vs "there
are two ...s"), relations restated with their inverse, and questions whose
answers are copied from the scene described just before them. A model that
learns these structures gets a loss well below the unigram entropy, which
`unigram_entropy` computes so that the trainer can log it as the bar to beat.

Usage:
  texts = text_corpus.sentences(20_000, seed=0)
"""
from __future__ import annotations

import random

import numpy as np

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond")
SIZES = ("small", "medium", "large")
# Number words for counts 1..6 (index 0 is "one").
COUNT_WORDS = ("one", "two", "three", "four", "five", "six")
RELATIONS = ("left of", "right of", "above", "below")
INVERSE_RELATION = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}
PLACES = ("top left corner", "top right corner", "bottom left corner",
          "bottom right corner", "centre")

# Openers and verbs vary the surface form without changing the meaning, which
# raises the unigram entropy but stays predictable within an example.
_SCENE_OPENERS = ("there is", "i see", "the picture shows", "the image has",
                  "we can see")
_CAPTION_OPENERS = ("the image shows", "this picture contains",
                    "here we have", "a drawing of")


def _plural(shape: str) -> str:
  """Returns the plural of a shape name ("circle" -> "circles")."""
  return shape + "es" if shape.endswith(("s", "x", "ch", "sh")) else shape + "s"


def _article(word: str) -> str:
  """Returns "a" or "an" for the word that follows it."""
  return "an" if word[0] in "aeiou" else "a"


class _Grammar:
  """Samples sentences; all randomness comes from one `random.Random`."""

  def __init__(self, seed: int):
    # `random.Random` with an int seed gives the same stream on every platform
    # and Python 3 version we support, so the corpus is reproducible.
    self._rng = random.Random(seed)

  def _noun_phrase(self, colour: str, shape: str, count: int = 1) -> str:
    """E.g. "small red circle" or "three blue squares" (no article)."""
    words = []
    if self._rng.random() < 0.5:
      words.append(self._rng.choice(SIZES))
    words += [colour, shape if count == 1 else _plural(shape)]
    return " ".join(words)

  def _with_article(self, phrase: str, count: int = 1) -> str:
    if count == 1:
      return f"{_article(phrase)} {phrase}"
    return f"{COUNT_WORDS[count - 1]} {phrase}"

  def _objects(self, n: int) -> list[tuple[str, str]]:
    """Draws n objects with distinct shapes, so questions have one answer."""
    shapes = self._rng.sample(SHAPES, n)
    return [(self._rng.choice(COLOURS), s) for s in shapes]

  def count(self) -> str:
    """E.g. "there are three small red circles."."""
    n = self._rng.randint(1, len(COUNT_WORDS))
    colour, shape = self._objects(1)[0]
    phrase = self._noun_phrase(colour, shape, n)
    if n == 1:
      quantity = self._rng.choice(("one", _article(phrase)))
      return f"there is {quantity} {phrase}."
    return f"there are {COUNT_WORDS[n - 1]} {phrase}."

  def relation(self) -> str:
    """E.g. "the blue square is left of the green triangle."."""
    (c1, s1), (c2, s2) = self._objects(2)
    rel = self._rng.choice(RELATIONS)
    text = f"the {c1} {s1} is {rel} the {c2} {s2}"
    if self._rng.random() < 0.4:
      # The inverse restatement is fully determined by the first clause.
      text += f", so the {c2} {s2} is {INVERSE_RELATION[rel]} the {c1} {s1}"
    return text + "."

  def place(self) -> str:
    """E.g. "a large green hexagon is in the top left corner."."""
    colour, shape = self._objects(1)[0]
    phrase = self._noun_phrase(colour, shape)
    return f"{_article(phrase)} {phrase} is in the {self._rng.choice(PLACES)}."

  def caption(self) -> str:
    """E.g. "the image shows two small purple diamonds and a green star."."""
    objects = self._objects(self._rng.randint(2, 3))
    phrases = []
    for colour, shape in objects:
      n = self._rng.randint(1, 4)
      phrases.append(self._with_article(self._noun_phrase(colour, shape, n), n))
    listed = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{self._rng.choice(_CAPTION_OPENERS)} {listed}."

  def scene_question(self) -> str:
    """A short scene then a question answered from it.

    E.g. "there is a red circle above a blue star. q: what colour is the
    star? a: blue."
    """
    (c1, s1), (c2, s2) = self._objects(2)
    rel = self._rng.choice(RELATIONS)
    opener = self._rng.choice(_SCENE_OPENERS)
    scene = (f"{opener} {_article(c1)} {c1} {s1} {rel} "
             f"{_article(c2)} {c2} {s2}.")
    kind = self._rng.randrange(4)
    if kind == 0:
      colour, shape = self._rng.choice(((c1, s1), (c2, s2)))
      qa = f"q: what colour is the {shape}? a: {colour}."
    elif kind == 1:
      colour, shape = self._rng.choice(((c1, s1), (c2, s2)))
      if c1 == c2:  # The colour alone would not pick out one object.
        qa = f"q: what shape is {rel} the {c2} {s2}? a: {_article(s1)} {s1}."
      else:
        qa = (f"q: what shape is the {colour} object? "
              f"a: {_article(shape)} {shape}.")
    elif kind == 2:
      # Ask about the stated relation, its inverse, or a false one.
      asked = self._rng.choice(RELATIONS)
      if self._rng.random() < 0.5:
        first, second, truth = (c1, s1), (c2, s2), asked == rel
      else:
        first, second = (c2, s2), (c1, s1)
        truth = asked == INVERSE_RELATION[rel]
      answer = "yes" if truth else "no"
      qa = (f"q: is the {first[0]} {first[1]} {asked} the {second[0]} "
            f"{second[1]}? a: {answer}.")
    else:
      n = self._rng.randint(2, len(COUNT_WORDS))
      colour, shape = self._objects(1)[0]
      scene = (f"there are {COUNT_WORDS[n - 1]} "
               f"{self._noun_phrase(colour, shape, n)}.")
      qa = f"q: how many {_plural(shape)} are there? a: {COUNT_WORDS[n - 1]}."
    return f"{scene} {qa}"

  def sample(self) -> str:
    """Draws one example from the mixture of templates."""
    makers = (self.count, self.relation, self.place, self.caption,
              self.scene_question)
    weights = (0.2, 0.2, 0.1, 0.15, 0.35)
    return self._rng.choices(makers, weights)[0]()


def sentences(num: int, seed: int = 0) -> list[str]:
  """Returns `num` synthetic examples; the same seed gives the same list.

  Args:
    num: number of examples (each one line, lowercase, ends with ".").
    seed: different seeds give different lists.

  Returns:
    A list of `num` strings.
  """
  if num < 0:
    raise ValueError(f"num must be >= 0, got {num}.")
  grammar = _Grammar(seed)
  return [grammar.sample() for _ in range(num)]


def unigram_entropy(token_ids: np.ndarray) -> float:
  """Entropy in nats of the empirical token distribution, pad (0) ignored.

  This is the loss of the best model that ignores context, so an LM whose
  loss is not below it has learned nothing but token frequencies.

  Args:
    token_ids: int[...] token ids of any shape (e.g. a batch int32[B, L]).

  Returns:
    -sum_t p(t) log p(t) over the non-pad tokens.
  """
  ids = np.asarray(token_ids).reshape(-1)
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"token_ids must be integers, got dtype {ids.dtype}.")
  ids = ids[ids != 0]
  if ids.size == 0:
    raise ValueError("token_ids holds no non-pad tokens; the entropy of an "
                     "empty distribution is undefined.")
  if ids.min() < 0:
    raise ValueError(f"token_ids must be >= 0, got {ids.min()}.")
  counts = np.bincount(ids)
  p = counts[counts > 0] / ids.size
  return float(-(p * np.log(p)).sum())
