"""Where a recipe's datasets and tokenizer live, and building them once.

  builder = datasets.shapes_dataset(config)       # built on first use
  train, held_out = datasets.stage_sources(config, "shapes", builder)
  tok = datasets.tokenizer_for(builder)

Datasets go to `data_dir(config)`: config.data.data_dir, else
$MMJAX_DATA_DIR, else ~/.cache/mmjax/data. The shapes dataset is keyed by its
options (sizes, image size, seed, vocabulary), so runs with the same data
options share one build, and its sentencepiece tokenizer is stored with it.
A folder dataset (`folder_dataset`) is keyed by its files' locations and
contents, and refused (BadRecordError) when more than
config.data.max_skipped_fraction of its records are bad.
"""
from __future__ import annotations

import os
from typing import Any

import ml_collections

from mmjax.config import ConfigError, get_path
from mmjax.data import builders
from mmjax.data.tokenizer import IMAGE_ID, Tokenizer

FOLDER_FORMATS = ("llava_conversations", "image_caption")
# config.data.max_skipped_fraction when a config has no such key.
MAX_SKIPPED_FRACTION = 0.5


def data_dir(config: ml_collections.ConfigDict) -> str:
  """config.data.data_dir, else $MMJAX_DATA_DIR, else ~/.cache/mmjax/data."""
  return (config.data.get("data_dir") or os.environ.get("MMJAX_DATA_DIR") or
          os.path.expanduser("~/.cache/mmjax/data"))


def _shapes_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  d = config.data
  return dict(num_train=d.num_train, num_validation=d.num_validation,
              num_test=d.num_test, num_heldout=d.num_heldout,
              image_size=d.image_size, seed=d.seed, vocab_size=d.vocab_size)


def shapes_builder(config: ml_collections.ConfigDict
                   ) -> builders.ShapesBuilder:
  """The shapes builder of config.data, without building anything."""
  return builders.ShapesBuilder(data_dir=data_dir(config),
                                **_shapes_options(config))


def shapes_dataset(config: ml_collections.ConfigDict
                   ) -> builders.ShapesBuilder:
  """Builds (once; later calls reuse it) the shapes TFDS dataset."""
  return builders.build(builders.ShapesBuilder, data_dir(config),
                        **_shapes_options(config))


def max_skipped_fraction(config: ml_collections.ConfigDict) -> float:
  """config.data.max_skipped_fraction, checked to lie in [0, 1]."""
  value = config.data.get("max_skipped_fraction", MAX_SKIPPED_FRACTION)
  if (isinstance(value, bool) or not isinstance(value, (int, float))
      or not 0 <= value <= 1):
    raise ConfigError(
        f"config.data.max_skipped_fraction={value!r} must be a number in "
        "[0, 1]: the largest share of a folder dataset's records that may be "
        "skipped as bad (0.5: fail when more than half are)")
  return float(value)


def check_folder_config(config: ml_collections.ConfigDict, fmt: str) -> None:
  """The folder keys a stage reading `fmt` needs, before anything is built."""
  json_path = config.data.get("folder_json", "")
  image_dir = config.data.get("folder_images", "")
  if not json_path or not os.path.isfile(json_path):
    raise ConfigError(
        f"data={fmt!r} needs config.data.folder_json (a {fmt} JSON file) "
        f"and config.data.folder_images; got {json_path!r}")
  if not image_dir or not os.path.isdir(image_dir):
    raise ConfigError(
        f"config.data.folder_images={image_dir!r} is not a directory; set it "
        f"to the folder the image paths in {json_path} are relative to")
  max_skipped_fraction(config)


def folder_dataset(config: ml_collections.ConfigDict, fmt: str
                   ) -> (builders.LlavaConversationsBuilder |
                         builders.ImageCaptionBuilder):
  """Builds (once per content of the files; later calls reuse it) the folder
  dataset of a stage reading `fmt`.

  Raises:
    ConfigError: config.data.folder_json / folder_images /
      max_skipped_fraction is unusable.
    BadRecordError: the file is not JSON, holds no usable records, or more
      than max_skipped_fraction of them are bad.
  """
  check_folder_config(config, fmt)
  cls = (builders.LlavaConversationsBuilder if fmt == "llava_conversations"
         else builders.ImageCaptionBuilder)
  return builders.build(cls, data_dir(config),
                        max_skipped_fraction=max_skipped_fraction(config),
                        json_path=config.data.folder_json,
                        image_dir=config.data.folder_images)


def stage_sources(config: ml_collections.ConfigDict, fmt: str, shapes_builder
                  ) -> tuple[Any, Any]:
  """(train, held-out) sources of a stage's data format.

  Shapes formats read the shapes dataset; `llava_conversations` and
  `image_caption` read a folder named by config.data.folder_json (the JSON /
  JSONL file) and config.data.folder_images (`folder_dataset`).
  Folders have one split; the held-out batches are its first records.
  """
  if fmt in FOLDER_FORMATS:
    source = builders.load_source(folder_dataset(config, fmt), "train")
    return source, source
  return (builders.load_source(shapes_builder, "train"),
          builders.load_source(shapes_builder, "validation"))


def tokenizer_for(builder, config: ml_collections.ConfigDict | None = None
                  ) -> Tokenizer:
  """The tokenizer stored with a built dataset; its `<image>` id is checked
  against the id every mmjax model is laid out with, and (given the config)
  its size against the model's vocabulary."""
  path = os.path.join(builder.data_dir, builders.TOKENIZER_FILE)
  tok = Tokenizer.load(path)
  if tok.image_id != IMAGE_ID:
    raise ConfigError(f"tokenizer at {builder.data_dir} has <image> id "
                      f"{tok.image_id}, expected {IMAGE_ID}")
  if config is not None:
    check_vocab(tok, config, path)
  return tok


def check_vocab(tok: Tokenizer, config: ml_collections.ConfigDict,
                path: str) -> None:
  """ConfigError when the tokenizer has ids the model has no embedding for
  (they would index past the embedding table: NaN at the first step)."""
  key = "model.lm.vocab_size" if config.family == "mllm" else (
      "model.vocab_size")
  model_vocab = get_path(config, key)
  if tok.vocab_size > model_vocab:
    raise ConfigError(
        f"the tokenizer at {path} has {tok.vocab_size} pieces but "
        f"config.{key}={model_vocab}: the model needs an embedding row for "
        f"every piece; set --config.{key}={tok.vocab_size} (or larger), or "
        f"use a tokenizer of at most {model_vocab} pieces (config.data."
        "vocab_size for the shapes dataset)")
