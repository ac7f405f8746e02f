"""TFDS builders that write array_record without TensorFlow.

`shapes`: `mmjax.data.shapes` (train, validation, test, heldout) plus its
sentencepiece model, `<dataset dir>/tokenizer.model`. `llava_conversations` (a
LLaVA-Instruct JSON list) and `image_caption` (a JSONL of {"image",
"caption"}), each with an image folder. The options that change the data name
the config, so `<data_dir>/<name>/<config>/<version>/` (`builder.data_dir`)
holds one build, which `build` with the same arguments reuses and
`tfds.data_source("<name>/<config>", data_dir=..., download=False)` reads.
Records keep generation order (record i of a shapes split is
`shapes.example(split, i)`); folder builds keep the file's bytes (JPEG stays
JPEG), decoded to RGB by `load_source` as LLaVA does. A folder build's config
name also hashes the annotation file's bytes and the image folder's listing
(paths, sizes, mtimes), so an edited file or a replaced image makes a new
build instead of silently reusing the old one. Bad folder records (missing /
zero-size / undecodable image, an image path that resolves outside the image
folder, several images in one record, invalid UTF-8, empty conversation,
turn or caption, `<image>` count != image count) are skipped, logged and
listed in `<dataset dir>/skipped.json` ([{"index", "id", "reason"}]), or
raise BadRecordError if `on_bad_record="raise"`. A file that is not valid
JSON, holds no records or only bad ones raises BadRecordError, and so does
`build(..., max_skipped_fraction=f)` when more than that share was skipped.

Usage:
  builder = builders.build(builders.ShapesBuilder, "/data", num_train=40)
  train = builders.load_source(builder, "train")   # train[0]["image"]: uint8
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import io
import json
import multiprocessing
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from mmjax.data import shapes
from mmjax.data.tokenizer import IMAGE_TOKEN, Tokenizer

ON_BAD_RECORD = ("skip", "raise")
SKIPPED_FILE = "skipped.json"
TOKENIZER_FILE = "tokenizer.model"
_TEXTS = tfds.features.Sequence(tfds.features.Text())
_BYTES = tfds.features.Tensor(shape=(), dtype=np.object_)  # Raw file bytes.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError,
                  Image.DecompressionBombError)
# Shapes record field -> (list in shapes.example, key of its items).
_COLUMNS = {"questions": ("qa", "question"), "answers": ("qa", "answer"),
            "qtypes": ("qa", "qtype"),
            "pref_questions": ("preference", "question"),
            "chosen": ("preference", "chosen"),
            "rejected": ("preference", "rejected")}


def _not_custom_config_notice(record) -> bool:
  # tfds warns "Using custom data configuration" for every builder named by
  # its options, i.e. all of ours: noise on stderr at every run.
  return not str(record.msg).startswith("Using custom data configuration")


logging.get_absl_logger().addFilter(_not_custom_config_notice)


class BadRecordError(ValueError):
  """A source record cannot be used; the message names it and the problem."""


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """Split sizes, image size, seed and tokenizer size of a shapes build."""
  num_train: int = 10_000
  num_validation: int = 500
  num_test: int = 1_000
  num_heldout: int = 1_000
  image_size: int = 64
  seed: int = 0
  vocab_size: int = 512


def named_config(cls: type, what: str, name_format: str, description: str,
                 **options: int) -> tfds.core.BuilderConfig:
  """A `cls` BuilderConfig from keyword options, named by its values.

  Args:
    cls: a BuilderConfig dataclass whose own fields are ints (split sizes,
      seed, ...).
    what: the dataset's name, for error messages.
    name_format: the config's name, a str.format of the fields, e.g.
      "t{num_train}_s{seed}".
    description: the config's description.
    **options: field values; the others keep their defaults.

  Raises:
    ValueError: an unknown option, or a value that is no int > 0 (seed:
      >= 0).
  """
  base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  values = {f.name: options.pop(f.name, f.default)
            for f in dataclasses.fields(cls) if f.name not in base}
  if options:
    raise ValueError(f"Unknown {what} options {sorted(options)}; allowed: "
                     f"{sorted(values)}.")
  bad = {k: v for k, v in values.items() if type(v) is not int or v < 0
         or v == 0 and k != "seed"}
  if bad:
    raise ValueError(f"{what} options must be ints > 0 (seed >= 0): {bad}.")
  return cls(name=name_format.format(**values), description=description,
             **values)


def shapes_config(**options: int) -> ShapesConfig:
  """A ShapesConfig named by its values, e.g. t40_v8_e8_h8_px64_s0_vocab512."""
  return named_config(
      ShapesConfig, "shapes",
      "t{num_train}_v{num_validation}_e{num_test}_h{num_heldout}"
      "_px{image_size}_s{seed}_vocab{vocab_size}", "Synthetic shapes.",
      **options)


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose source-file lookup works inside an installed package."""
  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds's own lookup touches `importlib_resources` (a dependency only on
    # Python < 3.9) for builders in packages; this is its fallback branch.
    return epath.Path(inspect.getfile(cls))

  def _info_of(self, description: str, **features) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=description,
        features=tfds.features.FeaturesDict(
            {"id": tfds.features.Text(), **features}),
        disable_shuffling=True)  # Records stay in generation order.


class ShapesBuilder(_Builder):
  """The shapes benchmark; options are ShapesConfig's fields as keywords.

  num_workers processes draw the examples (None: 2 for >= 2000 examples, else
  0), spawned as callers may hold JAX threads: scripts need a __main__ guard.
  """
  name = "shapes"
  BUILDER_CONFIGS = [shapes_config()]
  # Hooks of the variants (detail_builder.py, tones_builder.py): the config
  # made from keyword options, and the splits the config sizes.
  make_config = staticmethod(shapes_config)
  SPLITS = shapes.SPLITS

  def __init__(self, *, data_dir: str | None = None,
               config: str | tfds.core.BuilderConfig | None = None,
               version=None, num_workers: int | None = None,
               **options: int):
    if options:
      if config is not None:
        raise ValueError(f"Pass either config or {self.name} options, not "
                         "both.")
      config = self.make_config(**options)
      if config.name in self.builder_configs:
        config = config.name  # tfds rejects a copy of a predefined config.
    super().__init__(data_dir=data_dir, config=config, version=version)
    self._num_workers, self._pool, self._texts = num_workers, None, []
    self._sizes = {split: getattr(self.builder_config, f"num_{split}")
                   for split in self.SPLITS}

  def _info(self) -> tfds.core.DatasetInfo:
    return self._info_of(
        self._source_module().__doc__.split("\n")[0],
        objects=tfds.features.Text(),
        image=tfds.features.Image(shape=self._image_shape(),
                                  encoding_format="png"),
        **dict.fromkeys(("captions", *_COLUMNS), _TEXTS))

  # Hooks for variants of the benchmark (mmjax/data/detail_builder.py).
  def _source_module(self):
    """The module that draws the examples (its docstring describes them)."""
    return shapes

  def _image_shape(self) -> tuple[int | None, int | None, int]:
    size = self.builder_config.image_size
    return (size, size, 3)

  def _example_fn(self, split: str):
    """A picklable f(index) -> the example dict of `shapes.example`."""
    config = self.builder_config
    return functools.partial(shapes.example, split, seed=config.seed,
                             image_size=config.image_size, png=True)

  def _download_and_prepare(self, dl_manager, download_config) -> None:
    workers = self._num_workers
    if workers is None:  # tfds writes from one process; spawning costs ~1 s.
      workers = 2 if sum(self._sizes.values()) >= 2000 else 0
    self._texts = []
    with (multiprocessing.get_context("spawn").Pool(workers) if workers > 1
          else contextlib.nullcontext()) as self._pool:
      super()._download_and_prepare(dl_manager, download_config)
    self._pool = None
    # Still in the temporary folder that tfds renames to the dataset folder.
    # The texts collected while writing equal benchmark_texts(num_train).
    Tokenizer.train(self._texts, self.builder_config.vocab_size,
                    seed=self.builder_config.seed,
                    extra_symbols=self._extra_symbols(),
                    model_path=os.path.join(self.data_dir, TOKENIZER_FILE))

  def _extra_symbols(self) -> tuple[str, ...]:
    """Special pieces the stored tokenizer adds to mmjax's own (the audio
    benchmark's `<audio>`)."""
    return ()

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split, n)
            for split, n in self._sizes.items()}

  def _generate_examples(self, split: str, num: int):
    make = self._example_fn(split)
    examples = (map(make, range(num)) if self._pool is None
                else self._pool.imap(make, range(num), chunksize=64))
    for index, ex in enumerate(examples):
      if split == "train":
        self._texts += self._texts_of(ex)
      yield index, self._record(ex)

  # Hooks of the variants: what an example adds to the tokenizer's training
  # text, and its record.
  def _texts_of(self, ex: dict[str, Any]) -> list[str]:
    return ex["captions"] + [shapes.qa_text(q["question"], q["answer"])
                             for q in ex["qa"]]

  def _record(self, ex: dict[str, Any]) -> dict[str, Any]:
    columns = {name: [item[key] for item in ex[part]]
               for name, (part, key) in _COLUMNS.items()}
    return {"id": ex["id"], "image": ex["image"], "captions": ex["captions"],
            **columns, "objects": json.dumps(ex["objects"], sort_keys=True)}


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """An annotation file and the folder its image paths are relative to."""
  annotations: str = ""
  image_dir: str = ""
  on_bad_record: str = "skip"


class _FolderBuilder(_Builder, skip_registration=True):
  """Reads a JSON list or JSON lines; checks records; reports skips.

  Subclasses set _TEXT_FIELD (their text feature) and define `_encode(record)
  -> features`, raising ValueError("kind: detail") for a bad record.
  """

  def __init__(self, *, data_dir: str | None = None,
               config: FolderConfig | None = None, version=None,
               json_path: str | None = None, image_dir: str | None = None,
               on_bad_record: str = "skip"):
    if config is None:
      if json_path is None or image_dir is None:
        raise TypeError(f"{type(self).__name__} needs json_path, image_dir.")
      if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f"on_bad_record={on_bad_record!r}; allowed: "
                         f"{ON_BAD_RECORD}.")
      path, image_dir = os.path.abspath(json_path), os.path.abspath(image_dir)
      # The inputs' locations and contents name the build: the same files
      # reuse it, an edited annotation file or a replaced image rebuilds.
      key = content_key(path, image_dir, skip=data_dir)
      digest = hashlib.sha1(
          f"{path}\0{image_dir}\0{key}".encode()).hexdigest()[:10]
      slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(path).lower())
      config = FolderConfig(name=f"{slug.strip('_')[:40]}_{digest}",
                            annotations=path, image_dir=image_dir,
                            on_bad_record=on_bad_record)
    super().__init__(data_dir=data_dir, config=config, version=version)
    self.skipped: list[dict[str, Any]] = []

  def _info(self) -> tfds.core.DatasetInfo:
    return self._info_of(self.__doc__.split("\n")[0], image=_BYTES,
                         **{self._TEXT_FIELD: tfds.features.Text()})

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    return {"train": self._generate_examples()}

  def _records(self) -> list[tuple[int, Any]]:
    """(index, parsed record or the reason it cannot be parsed) pairs."""
    path = self.builder_config.annotations
    # surrogateescape: invalid bytes fail one record (_check_text), not all.
    text = epath.Path(path).read_bytes().decode("utf-8", "surrogateescape")
    if text.lstrip().startswith("["):  # A JSON list, else JSON lines.
      try:
        records = json.loads(text)
      except json.JSONDecodeError as e:
        # One syntax error loses every record: not a skip, a file to fix.
        raise BadRecordError(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno} column "
            f"{e.colno}; fix the file (a JSON list of records, or one JSON "
            "object per line)") from None
      return list(enumerate(records))
    return [(i, _parse_line(line, i + 1))
            for i, line in enumerate(text.split("\n")) if line.strip()]

  def _generate_examples(self):
    self.skipped = []
    records = self._records()
    path = self.builder_config.annotations
    if not records:
      raise BadRecordError(
          f"{path} holds no records; give a JSON list of records or one "
          "JSON object per line")
    for index, record in records:
      record_id = str(index)
      try:
        if not isinstance(record, dict):  # A str is the parse error.
          raise ValueError(record if isinstance(record, str) else
                           "bad record: not a JSON object")
        record_id = _check_text(str(record.get("id", index)), "id")
        yield index, {"id": record_id, **self._encode(record)}
      except ValueError as e:
        if self.builder_config.on_bad_record == "raise":
          raise BadRecordError(
              f"Record {record_id!r} (index {index}) of "
              f"{self.builder_config.annotations}: {e}. Fix or remove it, or "
              "build with on_bad_record='skip'.") from e
        self.skipped.append({"index": index, "id": record_id,
                             "reason": str(e)})
    logging.info("%s: skipped %d bad records %s", self.name, len(self.skipped),
                 dict(_reason_counts(self.skipped)))
    if len(self.skipped) == len(records):  # tfds refuses an empty split.
      first = self.skipped[0]
      raise BadRecordError(
          f"every record of {path} is bad: skipped {len(records)} of "
          f"{len(records)} (reasons: {_reasons_text(self.skipped)}); the "
          f"first, record {first['id']!r}: {first['reason']}")

  def _download_and_prepare(self, dl_manager, download_config) -> None:
    super()._download_and_prepare(dl_manager, download_config)
    # Still the temporary build folder: the report moves with the records.
    (epath.Path(self.data_dir) / SKIPPED_FILE).write_text(
        json.dumps(self.skipped, indent=1))

  def _image_bytes(self, relative: Any) -> bytes:
    """The file's bytes, once they are known to decode to a non-empty image."""
    if not isinstance(relative, str) or not relative:
      raise ValueError(f"missing image file: the image field is {relative!r}")
    # Resolved (symlinks too) so that "../x", "/etc/passwd" or a link out of
    # the folder cannot make anything outside it training data.
    root = os.path.realpath(self.builder_config.image_dir)
    path = os.path.realpath(os.path.join(root, relative))
    if os.path.commonpath((root, path)) != root:
      raise ValueError(f"image outside folder: {relative!r} resolves to "
                       f"{path}, outside the image folder {root}")
    if not os.path.isfile(path):
      raise ValueError(f"missing image file: {path}")
    data = epath.Path(path).read_bytes()
    if not data:
      raise ValueError(f"zero-size image: {path} is an empty file")
    try:
      with Image.open(io.BytesIO(data)) as image:
        width, height = image.size  # PIL rejects 0-pixel images itself.
        # JPEGs decode at 1/8 scale: cheap, yet truncation still shows.
        image.draft("RGB", (max(width // 8, 1), max(height // 8, 1)))
        image.load()
    except _DECODE_ERRORS as e:
      raise ValueError(f"undecodable image: {path} ({type(e).__name__})") from e
    return data


def _parse_line(line: str, number: int) -> Any:
  """The JSON value of line `number` (1-based), or why it is not JSON."""
  try:
    return json.loads(line)
  except json.JSONDecodeError as e:
    return f"invalid JSON: {e.msg} on line {number} column {e.colno}"


def _one_image(value: Any) -> Any:
  """A record's image field as one path: a 1-item list is its item."""
  if not isinstance(value, list):
    return value
  if len(value) > 1:
    raise ValueError(
        f"several images: the record lists {len(value)} images; records "
        "take one image each (the pipeline's max_images is 1), so split it "
        "into one record per image")
  return value[0] if value else None


def content_key(json_path: str, image_dir: str, skip: str | None = None
                ) -> str:
  """A hash of the annotation file's bytes and of the image folder's
  listing (relative path, size and mtime of every file; no image is read).

  Files under `skip` (a data dir inside the image folder) do not count.
  """
  digest = hashlib.sha1()
  try:
    with open(json_path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
  except OSError as e:
    raise BadRecordError(f"cannot read the annotation file {json_path}: "
                         f"{e.strerror}") from None
  skip = os.path.realpath(skip) if skip else None
  for folder, dirs, files in os.walk(image_dir):
    dirs[:] = sorted(d for d in dirs
                     if os.path.realpath(os.path.join(folder, d)) != skip)
    for name in sorted(files):
      path = os.path.join(folder, name)
      try:
        stat = os.stat(path)
      except OSError:  # A dangling link: a record naming it is skipped.
        continue
      line = (f"{os.path.relpath(path, image_dir)}\0{stat.st_size}\0"
              f"{stat.st_mtime_ns}\n")
      digest.update(line.encode("utf-8", "surrogateescape"))
  return digest.hexdigest()


def _check_text(text: Any, what: str) -> str:
  """Rejects non-strings and lone surrogates (invalid UTF-8 in the file)."""
  if not isinstance(text, str):
    raise ValueError(f"bad field: {what} is {type(text).__name__}, not text")
  if not text.isascii() and re.search("[\ud800-\udfff]", text):
    raise ValueError(f"invalid UTF-8: in {what}")
  return text


class LlavaConversationsBuilder(_FolderBuilder):
  """LLaVA-Instruct conversations (json_path, image_dir, on_bad_record).

  Records: id, image (file bytes; b"" if text-only), conversations (JSON).
  """
  name = "llava_conversations"
  _TEXT_FIELD = "conversations"

  def _encode(self, record):
    turns = record.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict)
                                              for t in turns):
      raise ValueError("bad field: conversations must be a list of turns")
    turns = [{"from": _check_text(t.get("from"), f"turn {i} from"),
              "value": _check_text(t.get("value"), f"turn {i} value")}
             for i, t in enumerate(turns)]
    if not any(t["value"].strip() for t in turns):
      raise ValueError("empty conversation")
    blank = [i for i, t in enumerate(turns) if not t["value"].strip()]
    if blank:  # A blank answer would teach the model to answer nothing.
      raise ValueError(f"empty turn: turn {blank[0]} "
                       f"({turns[blank[0]]['from']}) has no text")
    num_images = int("image" in record)
    relative = _one_image(record["image"]) if num_images else None
    num_tokens = sum(t["value"].count(IMAGE_TOKEN) for t in turns)
    if num_tokens != num_images:
      raise ValueError(f"image token mismatch: {num_tokens} {IMAGE_TOKEN} "
                       f"tokens for {num_images} image(s)")
    image = self._image_bytes(relative) if num_images else b""
    return {"image": image, "conversations": json.dumps(turns)}


class ImageCaptionBuilder(_FolderBuilder):
  """Image-caption pairs (json_path, image_dir, on_bad_record).

  Records: id ("id" field, else the line number), image (file bytes), caption.
  """
  name = "image_caption"
  _TEXT_FIELD = "caption"

  def _encode(self, record):
    caption = _check_text(record.get("caption"), "caption")
    if not caption.strip():
      raise ValueError("empty caption")
    return {"image": self._image_bytes(_one_image(record.get("image"))),
            "caption": caption}


def build(builder_cls: type[tfds.core.DatasetBuilder], data_dir: str, *,
          max_skipped_fraction: float | None = None,
          **kwargs: Any) -> tfds.core.DatasetBuilder:
  """Prepares `builder_cls(data_dir=data_dir, **kwargs)` once and returns it.

  Later calls with the same arguments (and, for folders, the same files) do
  no work. `builder.data_dir` is the dataset folder. With
  on_bad_record="raise", a bad record raises BadRecordError, also when an
  existing ("skip") build skipped records; with max_skipped_fraction, so does
  a build that skipped more than that share of its records.
  """
  if max_skipped_fraction is not None and not (
      isinstance(max_skipped_fraction, (int, float))
      and 0 <= max_skipped_fraction <= 1):
    raise ValueError(f"max_skipped_fraction={max_skipped_fraction!r} must be "
                     "a number in [0, 1]")
  builder = builder_cls(data_dir=data_dir, **kwargs)
  builder.download_and_prepare(file_format="array_record", download_config=(
      tfds.download.DownloadConfig(try_download_gcs=False)))  # No network.
  config, skipped = builder.builder_config, skipped_records(builder)
  if getattr(config, "on_bad_record", None) == "raise" and skipped:
    raise BadRecordError(
        f"Record {skipped[0]['id']!r} (index {skipped[0]['index']}) of "
        f"{config.annotations}: {skipped[0]['reason']}; the existing build "
        f"at {builder.data_dir} skipped {len(skipped)} records.")
  if max_skipped_fraction is not None and skipped:
    total = num_records(builder)
    if len(skipped) > max_skipped_fraction * total:
      raise BadRecordError(
          f"too many bad records in {config.annotations}: "
          f"{skip_line(builder)}; that is {len(skipped) / total:.0%}, above "
          f"max_skipped_fraction={max_skipped_fraction} "
          "(config.data.max_skipped_fraction): fix the records or the image "
          "folder, or raise the limit")
  return builder


def skipped_records(builder: tfds.core.DatasetBuilder) -> list[dict[str, Any]]:
  """The bad records a folder build skipped ([] for shapes)."""
  path = epath.Path(builder.data_dir) / SKIPPED_FILE
  return json.loads(path.read_text()) if path.exists() else []


def num_records(builder: tfds.core.DatasetBuilder) -> int:
  """Records of a folder build's source file: kept ones plus skipped ones."""
  return (builder.info.splits["train"].num_examples +
          len(skipped_records(builder)))


def _reason_counts(skipped: list[dict[str, Any]]) -> collections.Counter:
  """Skipped records per kind of reason (the text before the first ':')."""
  return collections.Counter(s["reason"].split(":")[0] for s in skipped)


def _reasons_text(skipped: list[dict[str, Any]]) -> str:
  return ", ".join(f"{kind} {n}"
                   for kind, n in _reason_counts(skipped).most_common())


def skip_line(builder: tfds.core.DatasetBuilder) -> str | None:
  """'skipped N of M records (reasons: ...), see <dir>/skipped.json', or
  None when a build skipped nothing."""
  skipped = skipped_records(builder)
  if not skipped:
    return None
  return (f"skipped {len(skipped)} of {num_records(builder)} records "
          f"(reasons: {_reasons_text(skipped)}), see "
          f"{os.path.join(builder.data_dir, SKIPPED_FILE)}")


def skip_info(builder: tfds.core.DatasetBuilder) -> dict[str, Any]:
  """A folder build's record counts, for a stage's report."""
  skipped = skipped_records(builder)
  info = {"records": num_records(builder), "skipped_records": len(skipped)}
  if skipped:
    info["skipped_reasons"] = _reasons_text(skipped)
  return info


def _python(value: Any) -> Any:
  """bytes -> str, also inside lists; other values (arrays) unchanged."""
  if isinstance(value, (list, tuple)):
    return [_python(v) for v in value]
  return value.decode("utf-8") if isinstance(value, bytes) else value


class DecodedSource:
  """Random access (len, [i]) to decoded records of one split.

  Images: uint8[H, W, 3] RGB (None if text-only or audio); audio (tones
  records): int16[L] as stored; text: str (JSON fields too).
  """

  def __init__(self, source: Any):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = dict(self._source[index])
    image = record.pop("image", None)  # Audio records (tones) have none.
    if isinstance(image, bytes) and image:  # Folder builds: the file's bytes.
      with Image.open(io.BytesIO(image)) as decoded:
        image = np.asarray(decoded.convert("RGB"))
    return {"image": None if isinstance(image, bytes) else image,
            **{k: _python(v) for k, v in record.items()}}


def load_source(builder: tfds.core.DatasetBuilder, split: str
                ) -> DecodedSource:
  """A decoded random-access source of one split of a prepared build."""
  return DecodedSource(builder.as_data_source(split=split))
