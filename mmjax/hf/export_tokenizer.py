"""Tokenizer files of an exported model, so `AutoTokenizer` loads them.

Two sources:

  mmjax sentencepiece    `tokenizer.model` (the shapes recipe's), written as
  (a .model file)        a slow `LlamaTokenizer` with `legacy: true`: then
                         `AutoTokenizer.from_pretrained(DIR, use_fast=False)`
                         gives exactly mmjax's ids for plain text
                         (`Tokenizer.encode(text, add_bos=True)`), `<image>`,
                         `<|user|>`, ... included. The fast tokenizer
                         transformers converts from it loads too, but puts a
                         "▁" after the chat markers and `<image>`, so its ids
                         differ there. No chat template is written:
                         mmjax tokenises each chat segment on its own, which
                         one rendered string cannot reproduce.
  Hugging Face directory the files a run's `config.tokenizer` names, copied;
                         when its vocabulary lacks `<image>` (mmjax then adds
                         it with id = the base vocabulary size), it is added
                         as a special token with that id, to tokenizer.json's
                         added_tokens and tokenizer_config.json's
                         added_tokens_decoder.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

from mmjax.data import tokenizer as tokenizer_lib
from mmjax.hf.export import HFExportError

IMAGE_TOKEN = tokenizer_lib.IMAGE_TOKEN
HF_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
            "special_tokens_map.json", "added_tokens.json", "vocab.json",
            "merges.txt", "chat_template.jinja", "chat_template.json")


def write_tokenizer(source: str | pathlib.Path, out: pathlib.Path,
                    image_token_id: int) -> dict[str, Any]:
  """Writes the tokenizer files of `source` into `out`.

  Args:
    source: an mmjax `tokenizer.model` file or a Hugging Face tokenizer
      directory.
    out: the export directory.
    image_token_id: the model's `<image>` id; the tokenizer must give it.

  Returns:
    bos_token_id / eos_token_id / pad_token_id where the source says them
    (an mmjax tokenizer: eos = [`<|end|>`, `</s>`], generation stops at
    either), else {}.

  Raises:
    HFExportError: no tokenizer there, or its `<image>` id differs.
  """
  source = pathlib.Path(source)
  if source.is_file():
    return _write_sentencepiece(source, out, image_token_id)
  if source.is_dir() and any((source / f).is_file() for f in HF_FILES[:2]):
    _write_hf_dir(source, out, image_token_id)
    return {}
  raise HFExportError(f"tokenizer {source} is neither an mmjax "
                      f"tokenizer.model nor a directory with tokenizer.json "
                      f"or tokenizer.model.")


def _write_sentencepiece(source: pathlib.Path, out: pathlib.Path,
                         image_token_id: int) -> dict[str, Any]:
  try:
    tok = tokenizer_lib.Tokenizer.load(source)
  except (OSError, ValueError) as e:
    raise HFExportError(f"tokenizer {source}: {e}") from None
  if tok.image_id != image_token_id:
    raise HFExportError(f"tokenizer {source} has <image> at id "
                        f"{tok.image_id}, the model uses {image_token_id}; "
                        f"pass the run's own tokenizer.")
  shutil.copyfile(source, out / "tokenizer.model")
  special = {"bos_token": tokenizer_lib.BOS_TOKEN,
             "eos_token": tokenizer_lib.EOS_TOKEN,
             "unk_token": tokenizer_lib.UNK_TOKEN,
             "pad_token": tokenizer_lib.PAD_TOKEN}
  config = {
      "tokenizer_class": "LlamaTokenizer", **special,
      # legacy: sentencepiece's own encoding of the whole text, dummy-prefix
      # whitespace included, which is how mmjax encodes.
      "legacy": True, "add_bos_token": True, "add_eos_token": False,
      "clean_up_tokenization_spaces": False, "sp_model_kwargs": {},
      "image_token": IMAGE_TOKEN}
  (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
  (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
  return {"bos_token_id": tok.bos_id,
          "eos_token_id": [tok.end_of_turn_id, tok.eos_id],
          "pad_token_id": tok.pad_id}


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise HFExportError(f"cannot read {path}: {e}") from None


def _known_ids(source: pathlib.Path) -> tuple[dict[str, int], int]:
  """({token: id} of the vocabulary and added tokens, base size)."""
  ids: dict[str, int] = {}
  if (source / "tokenizer.json").is_file():
    tok = _read_json(source / "tokenizer.json")
    vocab = (tok.get("model") or {}).get("vocab") or {}
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
      vocab = {piece: i for i, (piece, _) in enumerate(vocab)}
    ids.update(vocab)
    ids.update({a["content"]: int(a["id"]) for a in tok.get(
        "added_tokens", [])})
  elif (source / "tokenizer.model").is_file():
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    sp = spm.SentencePieceProcessor(model_file=str(source /
                                                   "tokenizer.model"))
    ids.update({sp.id_to_piece(i): i for i in range(sp.get_piece_size())})
  config = source / "tokenizer_config.json"
  if config.is_file():
    decoder = _read_json(config).get("added_tokens_decoder") or {}
    ids.update({v["content"]: int(k) for k, v in decoder.items()})
  return ids, max(ids.values(), default=-1) + 1


def image_token_id(source: str | pathlib.Path) -> int:
  """The `<image>` id a Hugging Face tokenizer directory gives: its own, or
  the base vocabulary size when mmjax adds it."""
  ids, size = _known_ids(pathlib.Path(source))
  return ids.get(IMAGE_TOKEN, size)


def _write_hf_dir(source: pathlib.Path, out: pathlib.Path,
                  image_token_id: int) -> None:
  ids, size = _known_ids(source)
  have = ids.get(IMAGE_TOKEN)
  want = size if have is None else have  # as `image_token_id`
  if want != image_token_id:
    raise HFExportError(
        f"tokenizer {source} gives <image> the id {want} ("
        f"{'its own' if have is not None else 'added after its vocabulary'})"
        f", the model uses {image_token_id}; pass the run's tokenizer.")
  for name in HF_FILES:
    if (source / name).is_file():
      shutil.copyfile(source / name, out / name)
  if have is not None:
    return
  added = {"content": IMAGE_TOKEN, "single_word": False, "lstrip": False,
           "rstrip": False, "normalized": False, "special": True}
  if (out / "tokenizer.json").is_file():
    tok = _read_json(out / "tokenizer.json")
    tok.setdefault("added_tokens", []).append({"id": size, **added})
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
  config_path = out / "tokenizer_config.json"
  config = _read_json(config_path) if config_path.is_file() else {}
  config.setdefault("added_tokens_decoder", {})[str(size)] = added
  extra = list(config.get("additional_special_tokens") or [])
  config["additional_special_tokens"] = extra + [IMAGE_TOKEN]
  config["image_token"] = IMAGE_TOKEN
  config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))
