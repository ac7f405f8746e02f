"""SentencePiece tokenizer with mmjax's special pieces and chat template.

Fixed ids: pad=0 `<pad>`, unk=1 `<unk>`, bos=2 `<s>`, eos=3 `</s>`. Six
user-defined symbols follow (ids 4..9 in a model trained here); sentencepiece
matches them in raw text, so each is always exactly one piece:

  `<image>`        image placeholder (the pipeline expands it per fusion mode)
  `<img>` `</img>` image start / end
  `<|user|>` `<|assistant|>` `<|end|>`   chat role markers and end of turn

Models are trained with byte fallback, identity normalisation and no
whitespace collapsing, so `decode(encode(text)) == text` for any text.

Chat template (no newline between a role marker and its content):

  <s><|user|>{user content}<|end|><|assistant|>{assistant content}<|end|>...

The template is `mmjax.data.chat_templates.MMJAX` (`encode_chat` and
`prompt_ids` delegate to it). Every segment (role marker, content, end
marker) is tokenised on its own and the ids concatenated, so the loss mask
has exact boundaries. Each content therefore starts with sentencepiece's
dummy-prefix whitespace piece, exactly as a plain `encode(content)` would; decoding a whole conversation reads
`<|user|> content<|end|>`. Generation is prompted with `prompt_ids`, which
ends with `<|assistant|>`, and stops at `<|end|>` (`end_of_turn_id`).
"""
from __future__ import annotations

import io
import os
import re
from typing import Iterable, Iterator, Mapping, Sequence

import sentencepiece as spm

from mmjax.data import chat_templates
from mmjax.data.chat_templates import (ASSISTANT_TOKEN, END_OF_TURN_TOKEN,
                                       USER_TOKEN)

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
IMAGE_TOKEN = "<image>"
IMAGE_START_TOKEN = "<img>"
IMAGE_END_TOKEN = "</img>"
# Audio placeholder: not one of the six symbols every mmjax tokenizer has
# (that would move no ids but refuse every tokenizer trained before it); a
# tokenizer trained with `extra_symbols=(AUDIO_TOKEN,)` (the tones
# benchmark's) has it right after them, and `audio_id` is None otherwise.
AUDIO_TOKEN = "<audio>"

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
# The first user-defined symbol (USER_DEFINED_SYMBOLS[0] = <image>) follows the
# four fixed pieces: every mmjax tokenizer gives `<image>` this id.
IMAGE_ID = 4

USER_DEFINED_SYMBOLS = (IMAGE_TOKEN, IMAGE_START_TOKEN, IMAGE_END_TOKEN,
                        USER_TOKEN, ASSISTANT_TOKEN, END_OF_TURN_TOKEN)
MODEL_TYPES = ("bpe", "unigram")

_FIXED = ((PAD_TOKEN, PAD_ID), (UNK_TOKEN, UNK_ID), (BOS_TOKEN, BOS_ID),
          (EOS_TOKEN, EOS_ID))
_DUMMY_PREFIX = "\u2581"  # sentencepiece's whitespace piece "▁".


class Tokenizer:
  """A sentencepiece model with mmjax's special pieces.

  Build one with `Tokenizer.train`, `Tokenizer.load` or
  `Tokenizer.from_serialized`. Instances pickle (as the serialized model), so
  they can be sent to data-loader worker processes.
  """

  def __init__(self, model_proto: bytes):
    """Wraps a serialized sentencepiece ModelProto.

    Args:
      model_proto: the bytes of a `.model` file.

    Raises:
      ValueError: the bytes are not a sentencepiece model, or the model lacks
        the fixed special pieces / user-defined symbols listed above.
    """
    if not isinstance(model_proto, (bytes, bytearray)):
      raise TypeError("model_proto must be bytes, got "
                      f"{type(model_proto).__name__}.")
    self._proto = bytes(model_proto)
    try:
      self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    except (RuntimeError, OSError) as e:
      raise ValueError("Not a sentencepiece model: could not parse the bytes "
                       f"as a ModelProto ({e}).") from e
    self._ids = self._check_special_pieces()

  def _check_special_pieces(self) -> dict[str, int]:
    """Returns the user-defined symbol ids; raises if any piece is missing."""
    size = self._sp.get_piece_size()
    hint = "Train a compatible model with mmjax.data.tokenizer.Tokenizer.train."
    for piece, want in _FIXED:
      got = self._sp.id_to_piece(want) if want < size else None
      if got != piece:
        raise ValueError(f"The sentencepiece model must have {piece!r} at id "
                         f"{want}, but that id holds {got!r}. {hint}")
    ids = {}
    for symbol in USER_DEFINED_SYMBOLS:
      # Must be a user-defined piece: then it is matched whole in raw text.
      pieces = [p for p in self._sp.encode(symbol, out_type=str)
                if p != _DUMMY_PREFIX]
      if pieces != [symbol]:
        raise ValueError("The sentencepiece model lacks the user-defined "
                         f"symbol {symbol!r} (it encodes as {pieces}). {hint}")
      ids[symbol] = self._sp.piece_to_id(symbol)
    pieces = [p for p in self._sp.encode(AUDIO_TOKEN, out_type=str)
              if p != _DUMMY_PREFIX]
    if pieces == [AUDIO_TOKEN]:  # Optional: the audio benchmark's.
      ids[AUDIO_TOKEN] = self._sp.piece_to_id(AUDIO_TOKEN)
    return ids

  @classmethod
  def train(cls,
            texts: Iterable[str],
            vocab_size: int,
            *,
            model_type: str = "bpe",
            model_path: str | os.PathLike[str] | None = None,
            seed: int = 0,
            extra_symbols: Sequence[str] = ()) -> Tokenizer:
    """Trains a model in memory; the same texts give a byte-identical model.

    Args:
      texts: training texts, one example each (texts over 64 KiB are skipped
        by sentencepiece).
      vocab_size: exact number of pieces, specials and 256 byte pieces
        included; the model config's vocab size is `tokenizer.vocab_size`.
      model_type: one of `MODEL_TYPES`.
      model_path: if given, the `.model` file is written there as well.
      seed: seed of sentencepiece's random generator.
      extra_symbols: more user-defined pieces after mmjax's six (e.g.
        `AUDIO_TOKEN`), each always one piece.

    Returns:
      The trained tokenizer.

    Raises:
      ValueError: `vocab_size` is too small for the required pieces, or too
        large for the text (the message gives the largest possible value).
    """
    if model_type not in MODEL_TYPES:
      raise ValueError(f"Unknown model_type {model_type!r}; allowed: "
                       f"{', '.join(MODEL_TYPES)}.")
    if isinstance(texts, (str, bytes)):
      raise TypeError("texts must be an iterable of strings, not one string.")
    if not isinstance(vocab_size, int) or vocab_size <= 0:
      raise ValueError(f"vocab_size must be a positive int, got {vocab_size}.")
    seen = {"count": 0, "bad_type": None}

    def checked(items: Iterable[str]) -> Iterator[str]:
      for item in items:
        if not isinstance(item, str):
          # sentencepiece turns exceptions raised here into RuntimeErrors;
          # remember the cause to raise a TypeError below.
          seen["bad_type"] = type(item).__name__
          raise TypeError(seen["bad_type"])
        seen["count"] += 1
        yield item

    writer = io.BytesIO()
    # The generator is global state in sentencepiece; set it right before use.
    spm.set_random_generator_seed(seed)
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=checked(texts),
          model_writer=writer,
          model_type=model_type,
          vocab_size=vocab_size,
          pad_id=PAD_ID, pad_piece=PAD_TOKEN,
          unk_id=UNK_ID, unk_piece=UNK_TOKEN,
          bos_id=BOS_ID, bos_piece=BOS_TOKEN,
          eos_id=EOS_ID, eos_piece=EOS_TOKEN,
          user_defined_symbols=list(USER_DEFINED_SYMBOLS) + [
              s for s in extra_symbols if s not in USER_DEFINED_SYMBOLS],
          byte_fallback=True,  # Any text is encodable without <unk>.
          # Identity + no whitespace collapsing: decode(encode(t)) == t.
          normalization_rule_name="identity",
          remove_extra_whitespaces=False,
          split_digits=True,
          max_sentence_length=1 << 16,
          hard_vocab_limit=True,  # vocab_size is exact or training fails.
          num_threads=1,  # Multi-threaded training is not deterministic.
          input_sentence_size=0,
          shuffle_input_sentence=False,
          minloglevel=1)
    except RuntimeError as e:
      if seen["bad_type"] is not None:
        raise TypeError("texts must hold strings, got "
                        f"{seen['bad_type']}.") from e
      clearer = _vocab_error(e, vocab_size, seen["count"])
      if clearer is None:
        raise
      raise clearer from e
    tokenizer = cls(writer.getvalue())
    if model_path is not None:
      tokenizer.save(model_path)
    return tokenizer

  @classmethod
  def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
    """Loads a `.model` file written by `save` (or by `train`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"No sentencepiece model file at {path!r}.")
    with open(path, "rb") as f:
      data = f.read()
    try:
      return cls(data)
    except ValueError as e:
      raise ValueError(f"Cannot use {path!r} as a tokenizer: {e}") from e

  @classmethod
  def from_serialized(cls, model_proto: bytes) -> Tokenizer:
    """Builds a tokenizer from the bytes of a `.model` file."""
    return cls(model_proto)

  @property
  def serialized(self) -> bytes:
    """The serialized ModelProto (the content of a `.model` file)."""
    return self._proto

  def save(self, path: str | os.PathLike[str]) -> None:
    """Writes the `.model` file atomically (temporary file, then rename)."""
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
      os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
      with open(tmp, "wb") as f:
        f.write(self._proto)
      os.replace(tmp, path)  # Readers never see a half-written model.
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)

  def __reduce__(self):
    # SentencePieceProcessor does not pickle; rebuild from the bytes.
    return (type(self).from_serialized, (self._proto,))

  def __repr__(self) -> str:
    return f"Tokenizer(vocab_size={self.vocab_size})"

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def unk_id(self) -> int:
    return UNK_ID

  @property
  def bos_id(self) -> int:
    return BOS_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def image_id(self) -> int:
    return self._ids[IMAGE_TOKEN]

  @property
  def audio_id(self) -> int | None:
    """The `<audio>` id, None when the model was trained without it."""
    return self._ids.get(AUDIO_TOKEN)

  @property
  def image_start_id(self) -> int:
    return self._ids[IMAGE_START_TOKEN]

  @property
  def image_end_id(self) -> int:
    return self._ids[IMAGE_END_TOKEN]

  @property
  def user_id(self) -> int:
    return self._ids[USER_TOKEN]

  @property
  def assistant_id(self) -> int:
    return self._ids[ASSISTANT_TOKEN]

  @property
  def end_of_turn_id(self) -> int:
    return self._ids[END_OF_TURN_TOKEN]

  def id_to_piece(self, token_id: int) -> str:
    """Returns the piece string of one id (for debugging)."""
    self._check_ids([token_id])
    return self._sp.id_to_piece(int(token_id))

  def encode(self, text: str, *, add_bos: bool = False,
             add_eos: bool = False) -> list[int]:
    """Tokenises text; special pieces in it (e.g. `<image>`) are one id."""
    if not isinstance(text, str):
      raise TypeError(f"text must be a str, got {type(text).__name__}.")
    return self._sp.encode(text, add_bos=add_bos, add_eos=add_eos)

  def decode(self, ids: Sequence[int]) -> str:
    """Detokenises ids (a list or 1-D array).

    Pad ids are dropped; bos/eos are control pieces and decode to nothing;
    the user-defined symbols decode to their text (`<image>`, `<|end|>`...).
    """
    ids = [int(i) for i in ids if int(i) != PAD_ID]
    self._check_ids(ids)
    return self._sp.decode(ids)

  def _check_ids(self, ids: Sequence[int]) -> None:
    bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
    if bad:
      raise ValueError(f"Token ids {bad[:5]} are outside the vocabulary "
                       f"[0, {self.vocab_size}).")

  def token_id(self, text: str) -> int | None:
    """The id of a special piece written as text, None if absent."""
    return self._ids.get(text)

  def encode_chat(self, turns: Sequence[Mapping[str, str]], *,
                  add_bos: bool = True) -> tuple[list[int], list[int]]:
    """Tokenises a conversation with the chat template (module docstring).

    Args:
      turns: `{'role': 'user'|'assistant', 'content': str}` dicts, or LLaVA's
        `{'from': 'human'|'gpt', 'value': str}`.
      add_bos: start with the bos id.

    Returns:
      (ids, loss_mask), two lists of the same length; the mask is 1 exactly on
      assistant content tokens and the assistant's `<|end|>`, 0 elsewhere.
    """
    return chat_templates.MMJAX.encode_chat(self, turns, add_bos=add_bos)

  def prompt_ids(self, turns: Sequence[Mapping[str, str]], *,
                 add_bos: bool = True) -> list[int]:
    """The prompt to generate the next assistant turn.

    `encode_chat(turns)` ids followed by `<|assistant|>`, so that for a
    conversation ending with an assistant turn, `prompt_ids(turns[:-1])` is
    a prefix of `encode_chat(turns)[0]`.

    Raises:
      ValueError: the last turn is already an assistant turn.
    """
    return chat_templates.MMJAX.prompt_ids(self, turns, add_bos=add_bos)


def _vocab_error(error: RuntimeError, vocab_size: int,
                 num_texts: int) -> ValueError | None:
  """Turns sentencepiece's cryptic errors into actionable ValueErrors."""
  message = str(error)
  too_high = re.search(r"Please set it to a value <= (\d+)", message)
  if too_high:
    most = too_high.group(1)
    return ValueError(
        f"vocab_size={vocab_size} is too large for these {num_texts} texts: "
        f"sentencepiece can make at most {most} pieces from them. Use "
        f"vocab_size <= {most}, or train on more varied text.")
  too_low = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
  if too_low:
    return ValueError(
        f"vocab_size={vocab_size} is too small: the special pieces, the 256 "
        "byte-fallback pieces and the characters of the text need "
        f"{too_low.group(1)}. Use vocab_size >= {too_low.group(1)}.")
  if num_texts == 0:
    return ValueError("No training texts: texts was empty.")
  return None
