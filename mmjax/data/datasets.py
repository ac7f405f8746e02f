"""Where a recipe's datasets and tokenizer live, and building them once.

  builder = datasets.shapes_dataset(config)       # built on first use
  train, held_out = datasets.stage_sources(config, "shapes", builder)
  tok = datasets.tokenizer_for(builder, config)  # config.tokenizer if set

Datasets go to `data_dir(config)`: config.data.data_dir, else
$MMJAX_DATA_DIR, else ~/.cache/mmjax/data. The shapes dataset is keyed by its
options (sizes, image size, seed, vocabulary), so runs with the same data
options share one build, and its sentencepiece tokenizer is stored with it.
config.data.dataset picks the synthetic benchmark (`SYNTHETIC_DATASETS`:
'shapes', 'shapes_detail', digits on non-square canvases, 'tones', the
audio benchmark, or 'shapes_tones', an image and a clip per record).
A config whose `tokenizer` names a Hugging Face tokenizer (directory or
`.model`) tokenises every stage with that one and `config.chat_template`
instead (`configured_tokenizer`; mmjax.data.hf_tokenizer).
A folder dataset (`folder_dataset`) is keyed by its files' locations and
contents, and refused (BadRecordError) when more than
config.data.max_skipped_fraction of its records are bad.
"""
from __future__ import annotations

import os
from typing import Any

import ml_collections

from mmjax.config import ConfigError, get_path
from mmjax.data import (builders, chat_templates, detail_builder,
                        hf_tokenizer, record_cache, shapes, shapes_detail,
                        shapes_tones, shapes_tones_builder, tones,
                        tones_builder)
from mmjax.data.tokenizer import IMAGE_ID, Tokenizer

FOLDER_FORMATS = ("llava_conversations", "image_caption")
# config.data.max_skipped_fraction when a config has no such key.
MAX_SKIPPED_FRACTION = 0.5


def data_dir(config: ml_collections.ConfigDict) -> str:
  """config.data.data_dir, else $MMJAX_DATA_DIR, else ~/.cache/mmjax/data."""
  return (config.data.get("data_dir") or os.environ.get("MMJAX_DATA_DIR") or
          os.path.expanduser("~/.cache/mmjax/data"))


# config.data.dataset -> (builder class, the config.data keys it takes).
# Both draw synthetic examples and store their own tokenizer.
_SHAPES_KEYS = ("num_train", "num_validation", "num_test", "num_heldout",
                "seed", "vocab_size")
SYNTHETIC_DATASETS = {
    "shapes": (builders.ShapesBuilder, _SHAPES_KEYS + ("image_size",)),
    # Digits on non-square canvases (docs/resolution.md).
    "shapes_detail": (detail_builder.ShapesDetailBuilder, _SHAPES_KEYS),
    # Tone sequences in 16 kHz clips (docs/audio.md); no held-out split.
    "tones": (tones_builder.TonesBuilder, ("num_train", "num_validation",
                                           "num_test", "seed", "vocab_size")),
    # A shapes scene and a tones clip per record, questions about both.
    "shapes_tones": (shapes_tones_builder.ShapesTonesBuilder, (
        "num_train", "num_validation", "num_test", "image_size", "seed",
        "vocab_size")),
}
# The captions and Q&A lines of a dataset's train split (the `text`
# stage's corpus): dataset name -> f(num_train, seed) -> texts.
BENCHMARK_TEXTS = {"shapes": shapes.benchmark_texts,
                   "shapes_detail": shapes.benchmark_texts,
                   "tones": tones.benchmark_texts,
                   "shapes_tones": shapes_tones.benchmark_texts}
# Synthetic datasets whose images are not square: no `regions` stage (its
# boxes are fractions of a square image).
NON_SQUARE_DATASETS = ("shapes_detail",)
# (height, width) of every picture a synthetic dataset draws, where they are
# not config.data.image_size squares.
DRAWN_SIZES = {"shapes_detail": tuple((h, w) for w, h in
                                      shapes_detail.CANVASES)}


def drawn_sizes(config: ml_collections.ConfigDict
                ) -> tuple[tuple[int, int], ...]:
  """(height, width) of the pictures config.data.dataset draws."""
  side = int(config.data.get("image_size", 64))
  return DRAWN_SIZES.get(config.data.get("dataset", "shapes"),
                         ((side, side),))


def _synthetic(config: ml_collections.ConfigDict
               ) -> tuple[type[builders.ShapesBuilder], dict[str, Any]]:
  """(builder class, options) of config.data.dataset (default 'shapes')."""
  name = config.data.get("dataset", "shapes") or "shapes"
  if name not in SYNTHETIC_DATASETS:
    raise ConfigError(f"config.data.dataset={name!r} is not a dataset; "
                      f"allowed values: {', '.join(SYNTHETIC_DATASETS)}")
  cls, keys = SYNTHETIC_DATASETS[name]
  return cls, {k: config.data[k] for k in keys}


def benchmark_texts(config: ml_collections.ConfigDict) -> list[str]:
  """The train split's captions and Q&A lines of config.data.dataset."""
  name = config.data.get("dataset", "shapes") or "shapes"
  return BENCHMARK_TEXTS[name](config.data.num_train, seed=config.data.seed)


def shapes_builder(config: ml_collections.ConfigDict
                   ) -> builders.ShapesBuilder:
  """The shapes builder of config.data (config.data.dataset picks the
  variant), without building anything."""
  cls, options = _synthetic(config)
  return cls(data_dir=data_dir(config), **options)


def shapes_dataset(config: ml_collections.ConfigDict
                   ) -> builders.ShapesBuilder:
  """Builds (once; later calls reuse it) the shapes TFDS dataset of
  config.data.dataset (`SYNTHETIC_DATASETS`)."""
  cls, options = _synthetic(config)
  return builders.build(cls, data_dir(config), **options)


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


def folder_paths(config: ml_collections.ConfigDict,
                 stage_name: str | None = None) -> tuple[str, str]:
  """(JSON file, image folder) a stage reads: the stage's own
  `folder_json` / `folder_images` when it sets them (LLaVA's pretraining and
  instruction stages read different data), else config.data's."""
  stage = (config.stages[stage_name] if stage_name is not None
           and "stages" in config and stage_name in config.stages else {})
  return (stage.get("folder_json") or config.data.get("folder_json", ""),
          stage.get("folder_images") or config.data.get("folder_images", ""))


def _folder_keys(config: ml_collections.ConfigDict,
                 stage_name: str | None) -> tuple[str, str]:
  """The config keys that named a stage's folder (for messages)."""
  stage = (config.stages[stage_name] if stage_name is not None
           and "stages" in config and stage_name in config.stages else {})
  return tuple(f"config.stages.{stage_name}.{key}" if stage.get(key)
               else f"config.data.{key}"
               for key in ("folder_json", "folder_images"))


def check_folder_config(config: ml_collections.ConfigDict, fmt: str,
                        stage_name: str | None = None) -> None:
  """The folder keys a stage reading `fmt` needs, before anything is built."""
  json_path, image_dir = folder_paths(config, stage_name)
  json_key, image_key = _folder_keys(config, stage_name)
  if not json_path or not os.path.isfile(json_path):
    raise ConfigError(
        f"data={fmt!r} needs {json_key} (a {fmt} JSON file) and "
        f"{image_key}; got {json_path!r}")
  if not image_dir or not os.path.isdir(image_dir):
    raise ConfigError(
        f"{image_key}={image_dir!r} is not a directory; set it to the folder "
        f"the image paths in {json_path} are relative to")
  max_skipped_fraction(config)


def folder_dataset(config: ml_collections.ConfigDict, fmt: str,
                   stage_name: str | None = None
                   ) -> (builders.LlavaConversationsBuilder |
                         builders.ImageCaptionBuilder):
  """Builds (once per content of the files; later calls reuse it) the folder
  dataset of a stage reading `fmt` (`folder_paths`).

  Raises:
    ConfigError: the folder keys or max_skipped_fraction are unusable.
    BadRecordError: the file is not JSON, holds no usable records, or more
      than max_skipped_fraction of them are bad.
  """
  check_folder_config(config, fmt, stage_name)
  json_path, image_dir = folder_paths(config, stage_name)
  cls = (builders.LlavaConversationsBuilder if fmt == "llava_conversations"
         else builders.ImageCaptionBuilder)
  return builders.build(cls, data_dir(config),
                        max_skipped_fraction=max_skipped_fraction(config),
                        json_path=json_path, image_dir=image_dir)


def stage_sources(config: ml_collections.ConfigDict, fmt: str, shapes_builder,
                  stage_name: str | None = None) -> tuple[Any, Any]:
  """(train, held-out) sources of a stage's data format.

  Shapes formats read the shapes dataset; `llava_conversations` and
  `image_caption` read a folder named by config.data.folder_json (the JSON /
  JSONL file) and config.data.folder_images (`folder_dataset`).
  Folders have one split; the held-out batches are its first records.
  """
  if fmt in FOLDER_FORMATS:
    source = builders.load_source(
        folder_dataset(config, fmt, stage_name), "train")
    return source, source
  # Training reads the split once per epoch: its decoded records are kept
  # (config.data.cache_mb, record_cache.py); held-out batches are read once.
  return (cached(config, builders.load_source(shapes_builder, "train")),
          builders.load_source(shapes_builder, "validation"))


def cache_bytes(config: ml_collections.ConfigDict) -> int:
  """config.data.cache_mb in bytes (0 when absent), checked to be >= 0."""
  megabytes = config.data.get("cache_mb", 0)
  if (isinstance(megabytes, bool) or not isinstance(megabytes, (int, float))
      or megabytes < 0):
    raise ConfigError(
        f"config.data.cache_mb={megabytes!r} must be a number >= 0: megabytes "
        "of decoded training records kept in memory (0: decode every read)")
  return int(megabytes * (1 << 20))


def cached(config: ml_collections.ConfigDict, source: Any) -> Any:
  """`source` with its decoded records kept in memory up to
  config.data.cache_mb megabytes (0 or absent: `source` itself)."""
  budget = cache_bytes(config)
  if not budget:
    return source
  return record_cache.CachedSource(source, budget)


def tokenizer_path(config: ml_collections.ConfigDict) -> str:
  """The tokenizer a config names ('' = none): config.tokenizer (the
  multimodal recipes' string) or config.tokenizer.path (the text LM's)."""
  value = config.get("tokenizer", "")
  if isinstance(value, ml_collections.ConfigDict):
    value = value.get("path", "")
  return value or ""


def configured_tokenizer(config: ml_collections.ConfigDict
                         ) -> Tokenizer | hf_tokenizer.HFTokenizer | None:
  """config.tokenizer loaded with config.chat_template (None when the
  config names no tokenizer; a template '' is the one the tokenizer's
  markers suggest, `chat_templates.guess`).

  Raises:
    ConfigError: the tokenizer or the template cannot be used.
  """
  template = config.get("chat_template", chat_templates.MMJAX.name) or None
  if template is not None:
    chat_templates.get(template)
  path = tokenizer_path(config)
  if not path:
    return None
  return hf_tokenizer.load_any(path, template)


def tokenizer_for(builder, config: ml_collections.ConfigDict | None = None
                  ) -> Tokenizer | hf_tokenizer.HFTokenizer:
  """The run's tokenizer: config.tokenizer (a Hugging Face tokenizer, with
  config.chat_template) when set, else the one stored with a built dataset
  (with a template other than 'mmjax': read as a `.model` file by
  `HFTokenizer`), whose `<image>` id is checked against the id every mmjax
  model is laid out with. Given the config, its size is checked against the
  model's vocabulary."""
  if config is not None:
    tok = configured_tokenizer(config)
    if tok is not None:
      check_vocab(tok, config, tokenizer_path(config))
      return tok
  path = os.path.join(builder.data_dir, builders.TOKENIZER_FILE)
  template = config.get("chat_template") if config is not None else None
  if template not in (None, "", chat_templates.MMJAX.name):
    tok = _dataset_tokenizer_with_template(path, template)
  else:
    tok = Tokenizer.load(path)
  if tok.image_id != IMAGE_ID:
    raise ConfigError(f"tokenizer at {builder.data_dir} has <image> id "
                      f"{tok.image_id}, expected {IMAGE_ID}")
  if config is not None:
    check_vocab(tok, config, path)
  return tok


def _dataset_tokenizer_with_template(path: str, template: str
                                     ) -> hf_tokenizer.HFTokenizer:
  """The dataset's sentencepiece model writing a Hugging Face template: it
  has `</s>` for vicuna_v1, but none of the other templates' markers."""
  try:
    return hf_tokenizer.HFTokenizer.load(path, template)
  except ConfigError:
    raise ConfigError(
        f"config.chat_template={template!r} needs config.tokenizer (a "
        "Hugging Face tokenizer directory or .model file): the dataset's "
        f"own tokenizer writes only the {chat_templates.MMJAX.name!r} and "
        "'vicuna_v1' templates") from None


def _vocab_tables(config: ml_collections.ConfigDict) -> list[str]:
  """Config keys of the embedding tables that read the tokenizer's ids."""
  if config.family != "mllm":
    return ["model.vocab_size"]
  keys = ["model.lm.vocab_size"]
  stages = config.get("stages") or {}
  if "text" in config.model and any(
      stages[n].get("data") == "contrastive" for n in stages):
    keys.append("model.text.vocab_size")  # the SigLIP text tower
  qformer = config.model.get("qformer") or {}
  if config.model.get("fusion") == "qformer" and qformer.get("vocab_size"):
    keys.append("model.qformer.vocab_size")
  return keys


def check_vocab(tok: Tokenizer | hf_tokenizer.HFTokenizer,
                config: ml_collections.ConfigDict, path: str) -> None:
  """ConfigError when the tokenizer has ids a model has no embedding for
  (they would index past the embedding table: NaN at the first step, or
  silently clamped ids)."""
  for key in _vocab_tables(config):
    model_vocab = get_path(config, key)
    if tok.vocab_size <= model_vocab:
      continue
    added = getattr(tok, "added_tokens", ())
    why = ""
    if added and tok.base_vocab_size <= model_vocab:
      why = (f" ({tok.base_vocab_size} of its own plus {', '.join(added)}, "
             f"which mmjax added at id {tok.base_vocab_size} because the "
             "vocabulary has no image token: the embedding needs "
             f"{len(added)} more row(s))")
    raise ConfigError(
        f"the tokenizer at {path} has {tok.vocab_size} pieces{why} but "
        f"config.{key}={model_vocab}: the model needs an embedding row for "
        f"every piece; set --config.{key}={tok.vocab_size} (or larger), or "
        f"use a tokenizer of at most {model_vocab} pieces (config.data."
        "vocab_size for the shapes dataset)")
