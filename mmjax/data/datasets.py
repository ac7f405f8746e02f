"""Where a recipe's datasets and tokenizer live, and building them once.

  builder = datasets.shapes_dataset(config)       # built on first use
  train, held_out = datasets.stage_sources(config, "shapes", builder)
  tok = datasets.tokenizer_for(builder)

Datasets go to `data_dir(config)`: config.data.data_dir, else
$MMJAX_DATA_DIR, else ~/.cache/mmjax/data. The shapes dataset is keyed by its
options (sizes, image size, seed, vocabulary), so runs with the same data
options share one build, and its sentencepiece tokenizer is stored with it.
"""
from __future__ import annotations

import os
from typing import Any

import ml_collections

from mmjax.config import ConfigError
from mmjax.data import builders
from mmjax.data.tokenizer import IMAGE_ID, Tokenizer

FOLDER_FORMATS = ("llava_conversations", "image_caption")


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


def stage_sources(config: ml_collections.ConfigDict, fmt: str, shapes_builder
                  ) -> tuple[Any, Any]:
  """(train, held-out) sources of a stage's data format.

  Shapes formats read the shapes dataset; `llava_conversations` and
  `image_caption` read a folder named by config.data.folder_json (the JSON /
  JSONL file) and config.data.folder_images, built once into the data dir.
  Folders have one split; the held-out batches are its first records.
  """
  if fmt in FOLDER_FORMATS:
    json_path = config.data.get("folder_json", "")
    image_dir = config.data.get("folder_images", "")
    if not json_path or not os.path.exists(json_path):
      raise ConfigError(
          f"data={fmt!r} needs config.data.folder_json (a {fmt} JSON file) "
          f"and config.data.folder_images; got {json_path!r}")
    cls = (builders.LlavaConversationsBuilder if fmt == "llava_conversations"
           else builders.ImageCaptionBuilder)
    builder = builders.build(cls, data_dir(config), json_path=json_path,
                             image_dir=image_dir)
    source = builders.load_source(builder, "train")
    return source, source
  return (builders.load_source(shapes_builder, "train"),
          builders.load_source(shapes_builder, "validation"))


def tokenizer_for(builder) -> Tokenizer:
  """The tokenizer stored with a built dataset; its `<image>` id is checked
  against the id every mmjax model is laid out with."""
  tok = Tokenizer.load(os.path.join(builder.data_dir,
                                    builders.TOKENIZER_FILE))
  if tok.image_id != IMAGE_ID:
    raise ConfigError(f"tokenizer at {builder.data_dir} has <image> id "
                      f"{tok.image_id}, expected {IMAGE_ID}")
  return tok
