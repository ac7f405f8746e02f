"""Validation of a training config, run before anything compiles.

`validate_config` raises `ConfigError` naming the key, the value and what is
allowed; main.py turns that into one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import ml_collections

from mmjax import config as C
from mmjax import parallel
from mmjax.data import answer_weights, datasets
from mmjax.data import naflex as naflex_lib
from mmjax.data import native_resolution as native_lib
from mmjax.data import tiling as tiling_lib
from mmjax.models import build, decoder, layout, qwen2vl_vision
from mmjax.models import naflex as naflex_model
from mmjax.models.decoder import DecoderConfig
from mmjax.train import groups, optim, stages

DTYPES = ("float32", "bfloat16")
MATMUL_PRECISIONS = ("default", "high", "highest")


def _model_checks(config):
  def model_keys(c):
    try:
      DecoderConfig.from_dict(c.model.to_dict())
    except (TypeError, ValueError) as e:
      raise C.ConfigError(f"config.model: {e}") from None

  heads = lambda c: c.model.n_heads
  return [
      C.check_choice("family", build.FAMILIES),
      *[C.check_int(f"model.{k}", 1) for k in (
          "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
          "mlp_dim")],
      C.check_number("model.rope_theta", 1.0),
      C.check_number("model.norm_eps", 0.0, 1.0),
      C.check_number("model.logit_softcap", 0.0),
      C.check_choice("model.mlp_activation", decoder.MLP_ACTIVATIONS),
      C.check_choice("model.dtype", DTYPES),
      C.check_choice("model.param_dtype", DTYPES),
      C.check_that(
          lambda c: heads(c) % c.model.n_kv_heads == 0,
          lambda c: f"config.model.n_heads={heads(c)} must be a multiple of "
          f"config.model.n_kv_heads={c.model.n_kv_heads} (grouped-query "
          "attention shares each KV head among n_heads/n_kv_heads heads)"),
      C.check_that(
          lambda c: c.model.get("head_dim") or c.model.d_model % heads(c) == 0,
          lambda c: f"config.model.d_model={c.model.d_model} is not divisible"
          f" by config.model.n_heads={heads(c)}; set config.model.head_dim"),
      model_keys,  # last: unknown keys and anything DecoderConfig rejects
  ]


def _data_checks(config):
  return [
      C.check_choice("data.source", ("text_corpus",)),
      C.check_int("data.seq_len", 2),
      C.check_int("data.num_sentences", 20),
      C.check_number("data.eval_fraction", 0.001, 0.5),
      C.check_int("tokenizer.vocab_size", 64),
      C.check_that(
          lambda c: c.tokenizer.vocab_size <= c.model.vocab_size,
          lambda c: f"config.tokenizer.vocab_size={c.tokenizer.vocab_size} "
          f"exceeds config.model.vocab_size={c.model.vocab_size}; the model "
          "needs an embedding row for every piece"),
      C.check_int("batch_size", 1),
  ]


# Stage data formats without images in the LM's token stream: the text
# stage reads data.text_seq_len windows, contrastive stages the text tower's
# fixed length.
_NO_IMAGE_FORMATS = ("text", "contrastive", "regions", "tones",
                     "tones_chat", "audio_caption")
# Tokens beside one image that the shortest chat needs: <bos>, <|user|>, the
# newline after the image, a few question words, <|end|>, <|assistant|> and
# at least one answer token.
MIN_TEXT_TOKENS = 16


def _mllm_data_checks(config):
  """What only the multimodal recipe's data needs."""
  del config
  return [C.check_int("data.max_len", 8), C.check_int("data.num_train", 1),
          C.check_int("data.text_seq_len", 2),
          C.check_int("data.num_workers", 0),
          C.check_int("batch_size", 1), _check_added_questions,
          _check_packing, _check_native_formats,
          _check_vocab_fits_model, _check_max_len_fits_an_image,
          _check_dataset]


def _check_dataset(config):
  """data.dataset (optional, default 'shapes') names a synthetic dataset;
  non-square images (shapes_detail's) cannot feed a `regions` stage."""
  name = config.data.get("dataset", "shapes") or "shapes"
  if name not in datasets.SYNTHETIC_DATASETS:
    raise C.ConfigError(
        f"config.data.dataset={name!r} is not a dataset; allowed values: "
        f"{', '.join(datasets.SYNTHETIC_DATASETS)}")
  regions = [n for n in config.get("stage_order", ())
             if config.stages[n].get("data") == "regions"]
  if name in datasets.NON_SQUARE_DATASETS and regions:
    raise C.ConfigError(
        f"stage {regions[0]!r} reads data='regions', which needs square "
        f"images, but config.data.dataset={name!r} draws non-square ones; "
        "drop the stage (configs/shapes_detail.py does)")


# Stage data formats that need every image at one square side.
_SQUARE_FORMATS = ("contrastive", "regions")


def _check_native_formats(config):
  """A native-resolution tower reads each image at its own size, InternVL
  tiling as several tiles: stages whose losses need one square image
  (contrastive, regions) can use neither."""
  kind = (config.model.get("vision") or {}).get("kind")
  if kind in (qwen2vl_vision.KIND, naflex_model.KIND):
    what = (f"config.model.vision.kind={kind!r} reads each image at its "
            "own size; drop the stage or use a ViT tower")
  elif config.model.get("tiling", "none") == "internvl":
    what = ("config.model.tiling='internvl' cuts each image into tiles; "
            "drop the stage or set config.model.tiling='none'")
  else:
    return
  for name in C.stage_names(config):
    fmt = config.stages[name].get("data")
    if fmt in _SQUARE_FORMATS:
      raise C.ConfigError(f"config.stages.{name}.data={fmt!r} needs one "
                          f"square image, but {what}")


def _check_added_questions(config):
  """data.grounding_questions and data.extra_questions (optional): turns
  added to each shapes_chat chat, ints >= 0."""
  for key, what in (("grounding_questions", "referring questions"),
                    ("extra_questions", "more questions")):
    value = config.data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise C.ConfigError(
          f"config.data.{key}={value!r} must be an integer >= 0 ({what} per "
          "shapes_chat image; 0 = off)")
  value = config.data.get("grounded_captions", False)
  if not isinstance(value, bool):
    raise C.ConfigError(
        f"config.data.grounded_captions={value!r} must be True or False "
        "(whether each shapes_chat chat also asks for every object's box)")
  value = config.data.get("name_heldout", True)
  if not isinstance(value, bool):
    raise C.ConfigError(
        f"config.data.name_heldout={value!r} must be True or False (whether "
        "training questions may name held-out colour x shape pairs)")
  value = config.data.get("loss_weighting", "token")
  if value not in answer_weights.SCHEMES:
    raise C.ConfigError(
        f"config.data.loss_weighting={value!r} must be one of "
        f"{tuple(answer_weights.SCHEMES)} (what each answer token of a chat "
        "weighs in the loss: 'token' 1, 'square' 1 / sqrt(answer length))")


# Why a model cannot train on packed rows (data.packing): its attention
# cannot be limited to each example by segment ids.
_UNPACKABLE = {
    "cross_attention": "fusion='cross_attention' counts media items along "
                       "the whole row, so a packed example would read the "
                       "images of the examples before it",
    "prefix_lm": "a prefix-LM has one bidirectional prefix per row, not "
                 "one per packed example",
    "native": "a native-resolution (Qwen2-VL) tower already packs each "
              "row's images at their own sizes; packing its rows of text "
              "too is not built",
    "naflex": "a NaFlex tower reads one padded patch row per image; "
              "packing rows of several examples is not built for it",
    "tiles": "InternVL tiling turns an image into a varying number of "
             "tiles, which the packer's per-row image budget does not "
             "count"}


def _check_packing(config):
  """data.packing (optional, bool): only models whose attention segment ids
  confine to each example."""
  value = config.data.get("packing", False)
  if not isinstance(value, bool):
    raise C.ConfigError(f"config.data.packing={value!r} must be True or "
                        "False")
  if not value:
    return
  cfg = build.mllm_config(config)
  reason = ("cross_attention" if cfg.fusion == "cross_attention" else
            "prefix_lm" if cfg.lm.prefix_lm else
            "native" if native_lib.takes_native(cfg) else
            "naflex" if naflex_lib.takes_naflex(cfg) else
            "tiles" if tiling_lib.takes_tiles(cfg) else None)
  if reason:
    raise C.ConfigError(
        f"config.data.packing=True cannot pack this model: "
        f"{_UNPACKABLE[reason]}; set config.data.packing=False")


def _check_vocab_fits_model(config):
  """Every embedding table that reads the tokenizer's ids has a row for
  each: an id past the table is clamped silently by JAX, not refused."""
  tables = ["lm"]
  image_text = [n for n in C.stage_names(config)
                if config.stages[n].get("data") == "contrastive"]
  if image_text and "text" in config.model:
    tables.append("text")
  if config.model.get("fusion") == "qformer" and (
      config.model.qformer.get("vocab_size", 0) > 0):
    tables.append("qformer")
  # The shapes dataset's tokenizer (config.data.vocab_size pieces); a
  # config.tokenizer replaces it and is checked when it loads
  # (datasets.check_vocab).
  vocab = None if datasets.tokenizer_path(config) else config.data.get(
      "vocab_size")
  for table in tables if vocab is not None else ():
    rows = config.model[table].vocab_size
    if vocab > rows:
      raise C.ConfigError(
          f"config.data.vocab_size={vocab} exceeds config.model.{table}."
          f"vocab_size={rows}: token ids {rows}..{vocab - 1} would have no "
          "embedding row (JAX clamps them silently); raise config.model."
          f"{table}.vocab_size to >= {vocab} or lower config.data.vocab_size")


def _check_max_len_fits_an_image(config):
  """data.max_len holds one image's tokens and a short chat around them
  (else every example is dropped as too long, after the model is built)."""
  if all(config.stages[n].get("data") in _NO_IMAGE_FORMATS
         for n in C.stage_names(config)):
    return
  cfg = build.mllm_config(config)
  image = layout.placeholder_tokens(cfg, cfg.side, cfg.side, cfg.frames)
  need = image + MIN_TEXT_TOKENS
  max_len = config.data.max_len
  if max_len < need:
    frames = f", {cfg.frames} frames" if cfg.frames > 1 else ""
    raise C.ConfigError(
        f"config.data.max_len={max_len} cannot hold an image and its text: "
        f"one image takes {image} tokens (fusion={cfg.fusion!r}, "
        f"{cfg.side}x{cfg.side} px{frames}) and a question with its answer "
        f"at least {MIN_TEXT_TOKENS} more; raise config.data.max_len to >= "
        f"{need}, or use fewer tokens per image")


def _mllm_model_checks(config, cfg):
  """Image geometry that builds a model but not the one the config says."""
  model = config.model
  vision = model.get("vision")
  used = "vision." if cfg.vision is not None else ""
  # model.image_size / patch_size are one_backbone's; the tower's own
  # fields are everyone else's. Both in config.json must say the same.
  for key in ("image_size", "patch_size"):
    if vision is not None and key in vision and key in model and (
        vision[key] != model[key]):
      value = vision[key] if used else model[key]
      raise C.ConfigError(
          f"config.model.{key}={model[key]} and config.model.vision.{key}="
          f"{vision[key]} differ; fusion={cfg.fusion!r} uses config.model."
          f"{used}{key} ({value}) and ignores the other: set both to the "
          "value you want")
  side, patch = cfg.side, cfg.patch
  # An imported tower keeps its native geometry (SigLIP So400m/14 at 384
  # px drops 6 px, as its reference conv does); from scratch that is a
  # mistake.
  if side % patch and not C.init_from_dirs(config):
    sizes = [s for s in (side - side % patch, side - side % patch + patch)
             if s > 0]
    raise C.ConfigError(
        f"config.model.{used}image_size={side} is not a multiple of "
        f"config.model.{used}patch_size={patch}: the last {side % patch} px "
        f"of every row and column would be dropped; use "
        f"{' or '.join(map(str, sizes))}")
  grid = side // patch
  if cfg.fusion == "projection" and cfg.projector in (
      "pixel_shuffle", "patch_merger") and grid % 2:
    raise C.ConfigError(
        f"config.model.projector={cfg.projector!r} merges 2x2 patches and "
        f"needs an even patch grid, but config.model.{used}image_size={side}"
        f" with patch_size={patch} gives {grid}x{grid}: use an image size "
        f"that is a multiple of {2 * patch} (e.g. {(grid + 1) * patch}), or "
        "projector='mlp'")


def _optimizer_checks(config):
  checks = []
  for name in C.stage_names(config):
    p = f"stages.{name}"
    stage = config.stages[name]
    if "lora" in stage:
      checks.append(C.check_int(f"{p}.lora.rank", 0))
    checks.append(C.check_that(
        lambda c, s=stage: "lora" not in s.get("trainable", ()) or (
            "lora" in s and s.lora.rank > 0),
        lambda c, p=p: f"config.{p}.trainable names 'lora' but "
        f"config.{p}.lora.rank is 0: set a rank (e.g. 8) or train 'llm'"))
    checks += [
        C.check_choice(f"{p}.optimizer.name", optim.OPTIMIZERS),
        C.check_number(f"{p}.optimizer.lr", 0.0),
        C.check_number(f"{p}.optimizer.grad_clip", 0.0),
        C.check_choice(f"{p}.schedule.name", optim.SCHEDULES),
        C.check_int(f"{p}.schedule.warmup_steps", 0),
    ]
    for group, factor in dict(config.stages[name].optimizer.get(
        "lr_mult", None) or {}).items():
      checks.append(C.check_that(
          lambda c, g=group, f=factor: g in groups.GROUPS and isinstance(
              f, (int, float)) and f >= 0,
          lambda c, p=p, g=group, f=factor: f"config.{p}.optimizer.lr_mult."
          f"{g}={f!r}: keys must be parameter groups "
          f"({', '.join(groups.GROUPS)}) and factors numbers >= 0"))
    if config.stages[name].optimizer.name == "adamw":
      checks += [C.check_number(f"{p}.optimizer.b1", 0.0, 0.999999),
                 C.check_number(f"{p}.optimizer.b2", 0.0, 0.999999),
                 C.check_number(f"{p}.optimizer.weight_decay", 0.0)]
  return checks


def _check_mesh_rules(config):
  """config.mesh.rules: {logical axis: None | mesh axis | (mesh axes)}."""
  rules = config.mesh.get("rules", None)
  for name, target in dict(rules or {}).items():
    axes = tuple(target) if isinstance(target, (list, tuple)) else (target,)
    if target is not None and (len(set(axes)) != len(axes) or
                               not all(a in parallel.MESH_AXES for a in axes)):
      raise C.ConfigError(
          f"config.mesh.rules.{name}={target!r}: map a logical axis to None "
          f"(replicated), a mesh axis or a tuple of distinct mesh axes, from "
          f"{', '.join(parallel.MESH_AXES)}")


def _run_checks(config):
  mesh_axes = [C.check_that(
      lambda c, a=a: isinstance(c.mesh[a], int) and (c.mesh[a] == -1 or
                                                     c.mesh[a] >= 1),
      lambda c, a=a: f"config.mesh.{a}={c.mesh[a]!r} must be a positive "
      "integer or -1 (the remaining devices)") for a in ("data", "fsdp",
                                                           "tensor")]
  return [
      C.check_int("log_every", 1),
      C.check_int("eval_every", 0),
      C.check_int("eval_batches", 1),
      C.check_int("checkpoint.every", 1),
      C.check_int("checkpoint.keep", 1),
      C.check_choice("matmul_precision", MATMUL_PRECISIONS),
      *mesh_axes,
      _check_mesh_rules,
  ]


def validate_model(config: ml_collections.ConfigDict) -> None:
  """Checks config.model for its family; ConfigError naming what is wrong."""
  if config.get("family") == "mllm":
    try:
      cfg = build.mllm_config(config)
    except (TypeError, ValueError) as e:
      raise C.ConfigError(f"config.model: {e}") from None
    _mllm_model_checks(config, cfg)
    return
  C.validate(config, _model_checks(config))


def _check_tiling_trains(config):
  """The grain pipeline cuts InternVL tiles (data/tiling.py); AnyRes's
  per-image unpadding and newlines are import-and-generate only, so an
  AnyRes model would train without its tiles."""
  tiling = config.model.get("tiling", "none")
  if tiling not in tiling_lib.TRAINED_TILINGS:
    raise C.ConfigError(
        f"config.model.tiling={tiling!r}: the training data pipeline does "
        f"not cut {tiling} tiles (docs/models.md, Tiling); train with "
        f"config.model.tiling in {tiling_lib.TRAINED_TILINGS}")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError at the first bad or inconsistent value."""
  validate_model(config)
  if config.get("family") == "mllm":
    _check_tiling_trains(config)
  data = (_mllm_data_checks(config) if config.get("family") == "mllm"
          else _data_checks(config))
  C.validate(config, data + stages.stage_checks(config) +
             _optimizer_checks(config) + _run_checks(config))
  # The tokenizer and chat template load in milliseconds: a missing file or
  # a template the tokenizer cannot write is reported before any data is
  # built or anything compiles.
  datasets.configured_tokenizer(config)
