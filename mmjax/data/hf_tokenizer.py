"""Tokenizers of real LLMs: a Hugging Face tokenizer directory or a `.model`.

  tok = HFTokenizer.load("qwen2-1.5b/", chat_template="chatml")
  ids, mask = tok.encode_chat([{"role": "user", "content": "<image>\\nhi"},
                               {"role": "assistant", "content": "hello"}])

A directory holds `tokenizer.json` (read with the `tokenizers` package;
Qwen2 ships only this) or else `tokenizer.model` (sentencepiece; LLaMA,
Vicuna), plus `tokenizer_config.json` / `special_tokens_map.json` /
`added_tokens.json` naming the bos, eos, unk and pad tokens and the added
tokens. A bare sentencepiece `.model` file works too (its control pieces
are the special tokens). `tokenizer_backends` has how each is read.

The interface is `mmjax.data.tokenizer.Tokenizer`'s, so the data pipeline,
generation and evals take either: `vocab_size`, `pad_id`, `bos_id`,
`eos_id`, `image_id`, `end_of_turn_id`, `encode`, `decode`, `encode_chat`,
`prompt_ids`; instances pickle (grain sends them to worker processes).

- Image placeholder: `<image>` in text is always one id. A vocabulary without
  it gets it added as a special token with id `base_vocab_size` (the size
  before, added tokens included), so the LM's embedding table must grow by
  one row; `added_tokens` lists what was added. LLaVA-hf tokenizers have it
  already (id 32000).
- pad: the pad token, else unk, else eos (LLaMA has no pad token). Padding
  carries no loss, so any id works; `pad_fallback` says which one was taken.
- bos: None when the tokenizer has none (Qwen2); `encode(add_bos=True)` then
  adds nothing. A tokenizer without an eos token is refused.
- The chat template (`chat_templates`, by name) is fixed at load time;
  `end_of_turn_id` is its end marker (`</s>`, `<|im_end|>`, `<end_of_turn>`).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from mmjax.config import ConfigError
from mmjax.data import chat_templates
from mmjax.data.tokenizer import IMAGE_TOKEN, Tokenizer
from mmjax.data.tokenizer_backends import (JsonBackend, SentencePieceBackend,
                                           backend_from_state)

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_MODEL = "tokenizer.model"
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _read_json(path: str) -> Any:
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read {path} ({e}); fix or remove the "
                      "file") from None


def _content(value: Any) -> str | None:
  """A special token as tokenizer_config.json writes it: str or
  {"content": str, ...} (a serialized AddedToken)."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) and value else None


class HFTokenizer:
  """A Hugging Face tokenizer with a chat template (module docstring).

  Build one with `HFTokenizer.load(path, chat_template)`.
  """

  def __init__(self, backend: JsonBackend | SentencePieceBackend,
               specials: Mapping[str, str | None],
               chat_template: str | None, name: str = ""):
    """Wraps a backend; adds `<image>` when it lacks one.

    Args:
      backend: the vocabulary (`tokenizer_backends`).
      specials: bos_token / eos_token / unk_token / pad_token texts (None:
        absent).
      chat_template: a name in `chat_templates.TEMPLATES`; None: the first
        one the vocabulary can write (`chat_templates.guess`).
      name: where it came from (messages).

    Raises:
      ConfigError: no eos token, a special token missing from the
        vocabulary, an unknown template, or a template whose markers the
        vocabulary lacks.
    """
    self._backend, self.name = backend, name
    self._specials = {k: specials.get(k) for k in _SPECIAL_KEYS}
    self.base_vocab_size = backend.size()
    self.added_tokens: tuple[str, ...] = ()
    if not self._atomic(IMAGE_TOKEN):
      backend.add_special(IMAGE_TOKEN)
      if self.base_vocab_size < backend.size():
        self.added_tokens = (IMAGE_TOKEN,)
    self._finish(chat_template)

  def _atomic(self, text: str) -> bool:
    """Whether `text` is one id when it appears inside other text."""
    token_id = self._backend.token_id(text)
    return token_id is not None and token_id in self._backend.encode(
        f"a {text} b")[0]

  def _finish(self, chat_template: str) -> None:
    self._ids = {}
    for key, text in self._specials.items():
      token_id = self._backend.token_id(text) if text else None
      if text and token_id is None:
        raise ConfigError(f"tokenizer {self.name}: its {key} {text!r} is not "
                          "in the vocabulary; fix tokenizer_config.json")
      self._ids[key] = token_id
    if self._ids["eos_token"] is None:
      raise ConfigError(f"tokenizer {self.name} has no eos token; set "
                        "eos_token in its tokenizer_config.json")
    self.pad_fallback = next(k for k in ("pad_token", "unk_token", "eos_token")
                             if self._ids[k] is not None)
    if chat_template is None:
      self.template = chat_templates.guess(self)
    else:
      self.template = chat_templates.get(chat_template)
      self.template.check(self)
    self._end_of_turn_id = self.template.end_of_turn_id(self)

  @classmethod
  def load(cls, path: str | os.PathLike[str],
           chat_template: str | None = "mmjax") -> HFTokenizer:
    """A tokenizer directory or a sentencepiece `.model` file.

    Raises:
      ConfigError: nothing usable at `path` (the message says what to give).
    """
    path = os.fspath(path)
    if os.path.isfile(path):
      return cls._from_model_file(path, chat_template)
    if not os.path.isdir(path):
      raise ConfigError(f"tokenizer {path!r} does not exist; give a Hugging "
                        "Face tokenizer directory or a sentencepiece .model "
                        "file")
    config = _read_json(os.path.join(path, "tokenizer_config.json")) or {}
    specials_map = _read_json(os.path.join(path,
                                           "special_tokens_map.json")) or {}
    specials = {k: _content(config.get(k)) or _content(specials_map.get(k))
                for k in _SPECIAL_KEYS}
    json_path = os.path.join(path, TOKENIZER_JSON)
    model_path = os.path.join(path, TOKENIZER_MODEL)
    if os.path.isfile(json_path):
      with open(json_path, encoding="utf-8") as f:
        backend = JsonBackend(f.read())
    elif os.path.isfile(model_path):
      backend = _sentencepiece_dir(path, model_path, config, specials)
    else:
      raise ConfigError(
          f"tokenizer directory {path} has neither {TOKENIZER_JSON} nor "
          f"{TOKENIZER_MODEL}; give the directory a Hugging Face model "
          "ships its tokenizer in, or a sentencepiece .model file")
    return cls(backend, specials, chat_template, name=path)

  @classmethod
  def _from_model_file(cls, path: str, chat_template: str | None
                       ) -> HFTokenizer:
    with open(path, "rb") as f:
      proto = f.read()
    try:
      backend = SentencePieceBackend(proto, {})
    except Exception as e:  # pylint: disable=broad-except  (protobuf, sp)
      raise ConfigError(f"tokenizer {path} is not a sentencepiece model "
                        f"({type(e).__name__}); give a .model file or a "
                        "Hugging Face tokenizer directory") from None
    sp = backend._sp  # pylint: disable=protected-access
    specials, control = {}, {}
    for key, token_id in (("bos_token", sp.bos_id()), ("eos_token",
                                                       sp.eos_id()),
                          ("unk_token", sp.unk_id()),
                          ("pad_token", sp.pad_id())):
      if 0 <= token_id < sp.get_piece_size():
        specials[key] = sp.id_to_piece(token_id)
        control[specials[key]] = token_id
    backend = SentencePieceBackend(proto, control)
    return cls(backend, specials, chat_template, name=path)

  # ------------------------------------------------------------ pickling --
  def __getstate__(self) -> dict[str, Any]:
    return {"backend": self._backend.state(), "specials": self._specials,
            "template": self.template.name, "name": self.name,
            "base_vocab_size": self.base_vocab_size,
            "added_tokens": self.added_tokens}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self._backend = backend_from_state(state["backend"])
    self._specials, self.name = state["specials"], state["name"]
    self.base_vocab_size = state["base_vocab_size"]
    self.added_tokens = state["added_tokens"]
    self._finish(state["template"])

  def __repr__(self) -> str:
    return (f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size}, "
            f"chat_template={self.template.name!r})")

  # ----------------------------------------------------------- interface --
  @property
  def vocab_size(self) -> int:
    return self._backend.size()

  @property
  def bos_id(self) -> int | None:
    return self._ids["bos_token"]

  @property
  def eos_id(self) -> int:
    return self._ids["eos_token"]

  @property
  def unk_id(self) -> int | None:
    return self._ids["unk_token"]

  @property
  def pad_id(self) -> int:
    return self._ids[self.pad_fallback]

  @property
  def image_id(self) -> int:
    return self._backend.token_id(IMAGE_TOKEN)

  @property
  def end_of_turn_id(self) -> int:
    return self._end_of_turn_id

  @property
  def bos_token(self) -> str | None:
    return self._specials["bos_token"]

  @property
  def eos_token(self) -> str:
    return self._specials["eos_token"]

  @property
  def image_token(self) -> str:
    return IMAGE_TOKEN

  @property
  def special_tokens(self) -> list[str]:
    """Texts matched as one special id (`<image>` included)."""
    return self._backend.special_tokens()

  def token_id(self, text: str) -> int | None:
    """The id of a token written as text (`<|im_end|>`), None if absent."""
    return self._backend.token_id(text)

  def id_to_piece(self, token_id: int) -> str:
    """The text of one id (for debugging)."""
    return self._backend.decode([int(token_id)])

  def encode(self, text: str, *, add_bos: bool = False,
             add_eos: bool = False) -> list[int]:
    """Tokenises text; special tokens in it (e.g. `<image>`) are one id."""
    if not isinstance(text, str):
      raise TypeError(f"text must be a str, got {type(text).__name__}.")
    ids = self._backend.encode(text)[0]
    bos = [self.bos_id] if add_bos and self.bos_id is not None else []
    return bos + ids + ([self.eos_id] if add_eos else [])

  def encode_with_offsets(self, text: str
                          ) -> tuple[list[int], list[tuple[int, int]]]:
    """ids and the [start, end) characters of `text` each one covers."""
    return self._backend.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    """Detokenises ids; special tokens read as their text, pad ids
    (`pad_id`, whichever token that is) are dropped."""
    ids = [int(i) for i in ids if int(i) != self.pad_id]
    bad = [i for i in ids if not 0 <= i < self.vocab_size]
    if bad:
      raise ValueError(f"Token ids {bad[:5]} are outside the vocabulary "
                       f"[0, {self.vocab_size}).")
    return self._backend.decode(ids)

  def encode_chat(self, turns: Sequence[Mapping[str, str]], *,
                  add_bos: bool = True) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a conversation in the chat template."""
    return self.template.encode_chat(self, turns, add_bos=add_bos)

  def prompt_ids(self, turns: Sequence[Mapping[str, str]], *,
                 add_bos: bool = True) -> list[int]:
    """The prompt that generates the next assistant turn."""
    return self.template.prompt_ids(self, turns, add_bos=add_bos)


def load_any(path: str | os.PathLike[str],
             chat_template: str | None = "mmjax"
             ) -> Tokenizer | HFTokenizer:
  """The tokenizer at `path` with a chat template: an mmjax `tokenizer.model`
  with the mmjax template (or None) is an mmjax `Tokenizer`, anything else
  an `HFTokenizer` (None: the template `chat_templates.guess` picks).

  Raises:
    ConfigError: nothing usable at `path`, an unknown template, or a
      template the tokenizer cannot write.
  """
  path = os.fspath(path)
  if chat_template is not None:
    chat_templates.get(chat_template)
  if chat_template in (None, chat_templates.MMJAX.name) and os.path.isfile(
      path):
    try:
      return Tokenizer.load(path)
    except ValueError:
      pass  # another kind of sentencepiece model
  return HFTokenizer.load(path, chat_template)


def _sentencepiece_dir(path: str, model_path: str, config: Mapping[str, Any],
                       specials: Mapping[str, str | None]
                       ) -> SentencePieceBackend:
  """A directory's `tokenizer.model` with its special and added tokens
  matched as transformers' LLaMA / Gemma tokenizers match them."""
  with open(model_path, "rb") as f:
    proto = f.read()
  try:
    plain = SentencePieceBackend(proto, {})
  except Exception as e:  # pylint: disable=broad-except  (protobuf, sp)
    raise ConfigError(f"{model_path} is not a sentencepiece model "
                      f"({type(e).__name__}); fix or replace it") from None
  added = {}
  # The model's control / user-defined pieces (`<s>`, `<unk>`, ...).
  for text in plain.special_tokens():
    added[text] = plain.token_id(text)
  for token_id, token in (config.get("added_tokens_decoder") or {}).items():
    if _content(token):
      added[_content(token)] = int(token_id)
  extra = _read_json(os.path.join(path, "added_tokens.json")) or {}
  added.update({k: int(v) for k, v in extra.items()})
  for text in specials.values():
    if text and text not in added and plain.token_id(text) is not None:
      added[text] = plain.token_id(text)
  return SentencePieceBackend(proto, added, config.get("add_prefix_space"),
                              legacy=config.get("legacy") is not False)
