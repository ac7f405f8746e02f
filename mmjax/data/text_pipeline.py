"""Text-only LM data: tokenizer preparation and packed next-token windows.

The corpus is tokenised once into one stream (`<s> sentence </s> ...`), cut
into windows of seq_len + 1 tokens, and served by grain: shuffled per epoch
from a seed, batched, with iterator state that orbax checkpoints, so a
resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import grain
import ml_collections
import numpy as np
from absl import logging

from mmjax.config import ConfigError, data_order_seed
from mmjax.data import hf_tokenizer, text_corpus
from mmjax.data.tokenizer import Tokenizer


class DataStateError(ValueError):
  """A saved data-iterator state that is damaged: a key missing or a value
  of the wrong type (a checkpoint restore then uses the previous step)."""


def corpus_split(config: ml_collections.ConfigDict
                 ) -> tuple[list[str], list[str]]:
  """(train sentences, held-out sentences) of the configured corpus."""
  data = config.data
  if data.source != "text_corpus":
    raise ConfigError(f"config.data.source={data.source!r}; allowed values: "
                      "'text_corpus'")
  sentences = text_corpus.sentences(data.num_sentences, seed=data.seed)
  n_eval = max(1, int(len(sentences) * data.eval_fraction))
  return sentences[:-n_eval], sentences[-n_eval:]


def prepare_tokenizer(config: ml_collections.ConfigDict, workdir: str
                      ) -> Tokenizer:
  """Loads config.tokenizer.path, or WORKDIR/tokenizer.model, or trains one.

  A trained tokenizer is saved to the workdir so a resumed run (and later
  generation) tokenises identically.
  """
  path = config.tokenizer.path
  if path:  # mmjax's own .model, or a Hugging Face tokenizer
    tok = hf_tokenizer.load_any(path, config.get("chat_template") or None)
  else:
    path = os.path.join(workdir, "tokenizer.model")
    if os.path.exists(path):
      tok = Tokenizer.load(path)
    else:
      train, _ = corpus_split(config)
      logging.info("training a %d-piece sentencepiece model on %d sentences",
                   config.tokenizer.vocab_size, len(train))
      tok = Tokenizer.train(train, config.tokenizer.vocab_size,
                            model_path=path, seed=config.data.seed)
  if tok.vocab_size > config.model.vocab_size:
    raise ConfigError(
        f"tokenizer at {path} has {tok.vocab_size} pieces but "
        f"config.model.vocab_size={config.model.vocab_size}; set "
        f"--config.model.vocab_size={tok.vocab_size} or larger")
  return tok


def token_stream(sentences: list[str], tok: Tokenizer) -> np.ndarray:
  """int32[T]: `<s> ids </s>` for each sentence, concatenated."""
  ids = [tok.encode(s, add_bos=True, add_eos=True) for s in sentences]
  return np.concatenate([np.asarray(x, np.int32) for x in ids])


def windows(stream: np.ndarray, seq_len: int) -> np.ndarray:
  """int32[N, seq_len + 1] non-overlapping windows (the tail is dropped)."""
  n = (len(stream) - 1) // seq_len
  if n < 1:
    raise ConfigError(f"corpus has {len(stream)} tokens, fewer than "
                      f"config.data.seq_len + 1 = {seq_len + 1}")
  idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
  return stream[idx]


def lm_batch(w: np.ndarray) -> dict[str, np.ndarray]:
  """int32[B, L+1] windows -> tokens/targets int32[B, L], loss_mask f32[B, L]."""
  return {"tokens": w[:, :-1], "targets": w[:, 1:],
          "loss_mask": np.ones((w.shape[0], w.shape[1] - 1), np.float32)}


class WindowIterator:
  """grain's iterator of LM batches; `set_state` checks a state first."""

  def __init__(self, it: grain.DatasetIterator):
    self._it = it
    self._fresh = it.get_state()  # what a state looks like

  def __iter__(self) -> WindowIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._it)

  def get_state(self) -> dict[str, Any]:
    return self._it.get_state()

  def set_state(self, state: Any) -> None:
    """Continues where `state` (from get_state, JSON round trip fine) was.

    Raises:
      DataStateError: `state` lacks a key of grain's state, or has a value of
        another type or a negative count (a damaged checkpoint).
    """

    def problem(value, like, where):
      if isinstance(like, dict):
        if not isinstance(value, dict):
          return f"{where or 'the state'} is not a dict"
        for key, sub in like.items():
          if key not in value:
            return f"{where}{key} is missing"
          found = problem(value[key], sub, f"{where}{key}.")
          if found:
            return found
        return None
      # Exact types: a bool is an int, a JSON round trip keeps them.
      if type(value) is not type(like):  # pylint: disable=unidiomatic-typecheck
        return f"{where[:-1]}={value!r} is not a {type(like).__name__}"
      if isinstance(value, int) and value < 0:
        return f"{where[:-1]}={value} is negative"
      return None

    found = problem(state, self._fresh, "")
    if found:
      raise DataStateError(
          f"damaged data-iterator state ({found}; a state looks like "
          f"{self._fresh})")
    self._it.set_state(state)


class LMData:
  """Train and held-out windows of the text corpus."""

  def __init__(self, train: list[str], held_out: list[str], tok: Tokenizer,
               seq_len: int, seed: int):
    self.train_tokens = token_stream(train, tok)
    self.train_windows = windows(self.train_tokens, seq_len)
    self.eval_windows = windows(token_stream(held_out, tok), seq_len)
    self.seed = seed

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, tok: Tokenizer
                  ) -> "LMData":
    """The text corpus of an LM recipe (configs/lm.py)."""
    train, held_out = corpus_split(config)
    return cls(train, held_out, tok, config.data.seq_len,
               data_order_seed(config))

  def unigram_entropy(self) -> float:
    """Entropy (nats) of the training tokens: the loss a bag-of-words gets."""
    return text_corpus.unigram_entropy(self.train_tokens)

  def train_iterator(self, batch_size: int, process_index: int = 0,
                     process_count: int = 1) -> WindowIterator:
    """Endless, per-epoch reshuffled batches; this process's rows only.

    Every process walks the same global order and keeps its slice, so the
    data a step sees does not depend on how many processes there are.
    """
    if batch_size % process_count:
      raise ConfigError(f"config.batch_size={batch_size} is not divisible "
                        f"by the {process_count} processes")
    local = batch_size // process_count
    lo = process_index * local
    ds = (grain.MapDataset.source(self.train_windows)
          .shuffle(seed=self.seed).repeat()
          .batch(batch_size, drop_remainder=True)
          .map(lambda w: lm_batch(w[lo:lo + local])))
    return WindowIterator(iter(ds))

  def eval_batches(self, batch_size: int, num_batches: int,
                   process_index: int = 0, process_count: int = 1
                   ) -> Iterator[dict[str, Any]]:
    """The first `num_batches` held-out batches (fixed: comparable evals)."""
    local = batch_size // process_count
    lo = process_index * local
    n = len(self.eval_windows)
    for b in range(num_batches):
      rows = np.arange(b * batch_size, (b + 1) * batch_size) % n
      yield lm_batch(self.eval_windows[rows][lo:lo + local])
