"""The two vocabularies a Hugging Face tokenizer directory can hold.

`JsonBackend` reads `tokenizer.json` with the `tokenizers` package (the Rust
library transformers' fast tokenizers are); `SentencePieceBackend` reads a
`tokenizer.model` as transformers' LLaMA / Gemma tokenizers do. Both give
ids with character offsets, match special and added tokens in raw text as
one id each, and can add a special token at the end of the vocabulary.

SentencePiece text between special tokens is encoded on its own, with the
whitespace prefix ("▁") that transformers puts there: before every piece in
legacy mode (`legacy` unset or true in tokenizer_config.json, the default),
only at the very start of the text with `legacy: false`, never when
`add_prefix_space` is false or the model itself adds no dummy prefix
(Gemma). A bare `.model` file behaves as sentencepiece does: its own
user-defined pieces are matched by sentencepiece, and only control pieces
(`<s>`, `</s>`, ...) and tokens added here are split out.
"""
from __future__ import annotations

import bisect
import re
from typing import Any, Sequence

import sentencepiece as spm
import tokenizers
from sentencepiece import sentencepiece_model_pb2

Offsets = list[tuple[int, int]]
_PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece


class JsonBackend:
  """A `tokenizer.json` (byte-level BPE, WordPiece, converted sentencepiece)."""

  def __init__(self, json_text: str):
    self._tok = tokenizers.Tokenizer.from_str(json_text)
    # A saved tokenizer.json may carry padding / truncation settings;
    # encoding must give the text's tokens only.
    self._tok.no_padding()
    self._tok.no_truncation()

  def state(self) -> tuple[str, Any]:
    return ("json", self._tok.to_str())

  def size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def token_id(self, text: str) -> int | None:
    return self._tok.token_to_id(text)

  def special_tokens(self) -> list[str]:
    return [t.content for t in self._tok.get_added_tokens_decoder().values()
            if t.special]

  def add_special(self, text: str) -> None:
    self._tok.add_special_tokens([tokenizers.AddedToken(
        text, special=True, normalized=False, lstrip=False, rstrip=False,
        single_word=False)])

  def encode(self, text: str) -> tuple[list[int], Offsets]:
    encoding = self._tok.encode(text, add_special_tokens=False)
    return list(encoding.ids), [tuple(o) for o in encoding.offsets]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode(list(ids), skip_special_tokens=False)


class SentencePieceBackend:
  """A sentencepiece `tokenizer.model` plus tokens matched before it.

  Args:
    proto: the bytes of the `.model` file.
    added: token text -> id of tokens split out of the text before
      sentencepiece sees it (special tokens, added tokens); ids may lie past
      the model's pieces.
    add_prefix_space: put "▁" before encoded text (None: as the model's own
      add_dummy_prefix).
    legacy: "▁" before every stretch of text between special tokens (True),
      or only at the start of the text (False).
  """

  def __init__(self, proto: bytes, added: dict[str, int],
               add_prefix_space: bool | None = None, legacy: bool = True):
    self._proto, self._added = bytes(proto), dict(added)
    self._legacy = bool(legacy)
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(self._proto)
    native = model.normalizer_spec.add_dummy_prefix
    self._prefix = native if add_prefix_space is None else add_prefix_space
    self._add_prefix_space = add_prefix_space
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    # The same model without its dummy prefix: text that gets no "▁".
    model.normalizer_spec.add_dummy_prefix = False
    self._bare = spm.SentencePieceProcessor(
        model_proto=model.SerializeToString())
    self._native = native
    self._pieces = {p.piece: i for i, p in enumerate(model.pieces)
                    if p.type in (_PIECE.CONTROL, _PIECE.UNKNOWN,
                                  _PIECE.USER_DEFINED)}
    self._by_id = {i: t for t, i in self._added.items()}
    self._split = None
    self._rebuild_split()

  def _rebuild_split(self) -> None:
    if not self._added:
      self._split = None
      return
    # Longest first: "<image_end>" before "<image>" at the same position.
    alternatives = sorted(self._added, key=len, reverse=True)
    self._split = re.compile("|".join(map(re.escape, alternatives)))

  def state(self) -> tuple[str, Any]:
    return ("sp", (self._proto, self._added, self._add_prefix_space,
                   self._legacy))

  def size(self) -> int:
    return max([self._sp.get_piece_size()] +
               [i + 1 for i in self._added.values()])

  def token_id(self, text: str) -> int | None:
    if text in self._added:
      return self._added[text]
    return self._pieces.get(text)

  def special_tokens(self) -> list[str]:
    return list(self._added) + [p for p in self._pieces
                                if p not in self._added]

  def add_special(self, text: str) -> None:
    self._added[text] = self.size()
    self._by_id[self._added[text]] = text
    self._rebuild_split()

  def encode(self, text: str) -> tuple[list[int], Offsets]:
    ids: list[int] = []
    offsets: Offsets = []
    start = 0
    matches = self._split.finditer(text) if self._split else ()
    for match in matches:
      self._encode_text(text, start, match.start(), ids, offsets)
      ids.append(self._added[match.group()])
      offsets.append((match.start(), match.end()))
      start = match.end()
    self._encode_text(text, start, len(text), ids, offsets)
    return ids, offsets

  def _encode_text(self, text: str, start: int, end: int, ids: list[int],
                   offsets: Offsets) -> None:
    """Appends the pieces of text[start:end] (no special tokens in it)."""
    if start == end:
      return
    piece = text[start:end]
    prefix = self._prefix and (self._legacy or start == 0)
    shift = 0
    if prefix and self._native:
      sp = self._sp
    elif prefix:
      sp, piece, shift = self._sp, " " + piece, 1
    else:
      sp = self._bare if self._native else self._sp
    proto = sp.encode(piece, out_type="proto")
    # Offsets are in bytes of the encoded string: to characters of text.
    bounds = [0]
    for ch in piece:
      bounds.append(bounds[-1] + len(ch.encode("utf-8")))
    char = lambda b: bisect.bisect_right(bounds, b) - 1
    for p in proto.pieces:
      ids.append(p.id)
      offsets.append((start + max(char(p.begin) - shift, 0),
                      start + max(char(p.end) - shift, 0)))

  def decode(self, ids: Sequence[int]) -> str:
    """Pieces decoded by sentencepiece; special and added tokens as text.

    The "▁" that encoding put before a stretch of text is dropped again.
    """
    out, run = [], []

    def flush():
      if run:
        text = self._bare.decode(run) if self._native else self._sp.decode(
            run)
        starts = not out  # the text began with this stretch
        if self._prefix and (self._legacy or starts) and text[:1] == " ":
          text = text[1:]
        out.append(text)
        run.clear()

    for i in ids:
      text = self._by_id.get(int(i))
      if text is None and self._sp.is_control(int(i)):
        text = self._sp.id_to_piece(int(i))
      if text is None:
        run.append(int(i))
      else:
        flush()
        out.append(text)
    flush()
    return "".join(out)


def backend_from_state(state: tuple[str, Any]
                       ) -> JsonBackend | SentencePieceBackend:
  """Rebuilds a backend from its `state()` (pickling)."""
  kind, value = state
  if kind == "json":
    return JsonBackend(value)
  proto, added, add_prefix_space, legacy = value
  return SentencePieceBackend(proto, added, add_prefix_space, legacy)
