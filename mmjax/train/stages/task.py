"""A stage's config -> the `Task` (model, loss, data) the one loop trains.

  built = build_task(config, "sft", workdir)   # BuiltTask: task, info, tokenizer
  model, init, to_global = stage_model(config, "sft")   # no data

The stage's `loss` names its kind (stages/base.py); the kind gives the model
and the loss, and this module gives the data every kind reads the same way:
text windows (`data='text'`, or the corpus of a text-only recipe) or the
grain pipeline of an image-text format. LoRA factors are added on top when
the stage asks for them (train/lora.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from mmjax import config as C
from mmjax import parallel
from mmjax.data import builders, datasets, formats, text_pipeline
from mmjax.data import packing as packing_lib
from mmjax.models import build
from mmjax.train import groups, lora
from mmjax.train.stages import base
from mmjax.train.trainer import Task


@dataclasses.dataclass
class BuiltTask:
  task: Task
  info: dict[str, Any]      # facts for the report (e.g. unigram entropy)
  tokenizer: Any


def stage_kind(config: ml_collections.ConfigDict, stage_name: str
               ) -> base.StageKind:
  return base.get(config.stages[stage_name].loss, config.family,
                  f"stages.{stage_name}.loss")


def stage_model(config: ml_collections.ConfigDict, stage_name: str
                ) -> base.StageModel:
  """(model, rng -> boxed params, to_global) of a stage, without data."""
  return stage_kind(config, stage_name).make_model(config, stage_name)


def model_initializer(config: ml_collections.ConfigDict, stage_name: str):
  """(model, rng -> boxed params) of a stage, with its LoRA factors if any
  (what the loop initialises; shape checks of a workdir)."""
  model, init, to_global = stage_model(config, stage_name)
  return model, lora.wrap_init(init, to_global, config.stages[stage_name])


def build_task(config: ml_collections.ConfigDict, stage_name: str,
               workdir: str) -> BuiltTask:
  """Model, loss and data of a stage (with LoRA factors when it asks)."""
  stage = config.stages[stage_name]
  kind = stage_kind(config, stage_name)
  model, init, to_global = kind.make_model(config, stage_name)
  if config.family == "lm":
    data = _corpus_data(config, stage_name, workdir)
  else:
    data = _mllm_data(config, stage_name)
  loss_kw = {"tokenizer": data.tokenizer} if kind.loss_takes_tokenizer else {}
  task = Task(init_params=init, loss_fn=kind.make_loss(model, stage,
                                                       **loss_kw),
              to_global=to_global, needs_ref=kind.needs_ref,
              loss_state=kind.initial_loss_state(config, stage_name), **data.task_fields)
  return BuiltTask(task=lora.wrap(task, stage), info=data.info,
                   tokenizer=data.tokenizer)


@dataclasses.dataclass
class _StageData:
  task_fields: dict[str, Any]   # Task's train_iterator, eval_batches, ...
  info: dict[str, Any]
  tokenizer: Any


def _windows(config, stage_name: str, data: text_pipeline.LMData,
             seq_len: int) -> dict[str, Any]:
  """Task fields of LM windows: this process's rows of each global batch."""
  pi, pc = jax.process_index(), jax.process_count()
  return dict(
      train_iterator=data.train_iterator(
          C.stage_batch_size(config, stage_name), pi, pc),
      eval_batches=lambda: data.eval_batches(config.batch_size,
                                             config.eval_batches, pi, pc),
      tokens_per_example=seq_len)


def _corpus_data(config, stage_name: str, workdir: str) -> _StageData:
  """A text-only recipe: the synthetic corpus, tokenizer trained into the
  workdir on the first run."""
  tok = parallel.first_process_then_others(
      lambda: text_pipeline.prepare_tokenizer(config, workdir), "tokenizer")
  data = text_pipeline.LMData.from_config(config, tok)
  info = {"unigram_entropy": data.unigram_entropy(),
          "train_windows": len(data.train_windows),
          "eval_windows": len(data.eval_windows),
          "vocab_size": tok.vocab_size}
  return _StageData(_windows(config, stage_name, data, config.data.seq_len),
                    info, tok)


def _mllm_data(config, stage_name: str) -> _StageData:
  """The multimodal recipe: the shapes dataset (and its tokenizer), or a
  folder dataset for the folder formats."""
  fmt = config.stages[stage_name].data
  datasets.max_skipped_fraction(config)  # bad values fail before any build
  datasets.cache_bytes(config)
  if fmt in datasets.FOLDER_FORMATS:
    datasets.check_folder_config(config, fmt, stage_name)
  builder = None
  if fmt not in datasets.FOLDER_FORMATS or not datasets.tokenizer_path(
      config):
    # The shapes data, or its tokenizer (stored with the build).
    builder = parallel.first_process_then_others(
        lambda: datasets.shapes_dataset(config), "shapes_dataset")
  tok = datasets.tokenizer_for(builder, config)
  info: dict[str, Any] = {"data": fmt}
  seed = (C.data_order_seed(config)
          + 1000 * list(config.stage_order).index(stage_name))
  if fmt == base.TEXT_FORMAT:
    texts = datasets.benchmark_texts(config)
    cut = max(1, len(texts) // 20)
    data = text_pipeline.LMData(texts[cut:], texts[:cut], tok,
                                config.data.text_seq_len, seed)
    info["unigram_entropy"] = data.unigram_entropy()
    return _StageData(
        _windows(config, stage_name, data, config.data.text_seq_len), info,
        tok)
  if fmt in datasets.FOLDER_FORMATS:
    train_src = val_src = _folder_source(config, stage_name, fmt, info)
  else:
    train_src, val_src = datasets.stage_sources(config, fmt, builder)
  cfg = build.mllm_config(config)
  train_it = _iterator(config, stage_name, train_src, fmt, cfg, tok, True,
                       seed)

  def eval_batches():
    it = _iterator(config, stage_name, val_src, fmt, cfg, tok, False)
    for _, batch in zip(range(config.eval_batches), it):
      yield batch
  return _StageData(dict(train_iterator=train_it, eval_batches=eval_batches,
                         data_stats=train_it.log_stats), info, tok)


def _folder_source(config, stage_name: str, fmt: str, info: dict[str, Any]):
  """The folder dataset's records; says (process 0) which build the stage
  reads and what it skipped, and puts the counts in `info` (the report)."""
  folder = parallel.first_process_then_others(
      lambda: datasets.folder_dataset(config, fmt, stage_name),
      "folder_dataset")
  info["dataset"] = folder.data_dir
  info.update(builders.skip_info(folder))
  if jax.process_index() == 0:
    kept = info["records"] - info["skipped_records"]
    json_path, _ = datasets.folder_paths(config, stage_name)
    print(f"[{stage_name}] {fmt}: {kept} records of {json_path}, build "
          f"{folder.data_dir}", flush=True)
    skipped = builders.skip_line(folder)
    if skipped:
      print(f"[{stage_name}] {skipped}", flush=True)
  return builders.load_source(folder, "train")


def _iterator(config, stage_name, source, fmt, cfg, tok, train,
              seed_offset=0):
  from mmjax.data import pipeline  # pylint: disable=g-import-not-at-top  (grain: only stages that read images)
  return pipeline.make_iterator(
      source, fmt=fmt, cfg=cfg, tokenizer=tok,
      batch_size=C.stage_batch_size(config, stage_name),
      seed=C.data_order_seed(config) + seed_offset,
      # Contrastive text is padded to the text tower's fixed length.
      max_len=(config.model.text.max_len if fmt == "contrastive"
               else config.data.max_len),
      max_images=1, train=train, process_index=jax.process_index(),
      process_count=jax.process_count(),
      num_workers=config.data.num_workers if train else 0,
      # Referring questions answered by a box (0 = none: the chats as
      # before); only shapes_chat chats take them.
      grounding_questions=(int(config.data.get("grounding_questions", 0))
                           if fmt == "shapes_chat" else 0),
      # One more turn per chat: every object named and boxed.
      grounded_captions=(bool(config.data.get("grounded_captions", False))
                         and fmt == "shapes_chat"),
      # More questions per training chat (denser supervision; evaluation
      # asks the records' own questions only).
      extra_questions=(int(config.data.get("extra_questions", 0))
                       if fmt == "shapes_chat" and train else 0),
      # False: training chats never name a held-out pair (the absent-object
      # questions about one are swapped for another absent pair).
      name_heldout=(bool(config.data.get("name_heldout", True))
                    if fmt in ("shapes_chat", "preference") and train
                    else True),
      # Objects painted a random colour in region training (option of the
      # region_classification kind).
      recolour=(float(config.stages[stage_name].get("recolour", 0.0))
                if fmt == "regions" and train else 0.0),
      # Several examples per row: training of 'lm' stages only (other
      # kinds and evaluation stay padded).
      packing=(train and bool(config.data.get("packing", False)) and
               config.stages[stage_name].loss == "lm"),
      # How rows are filled (`packing.POLICIES`); runs written before the
      # key packed first-fit (config.ADDED_KEYS).
      pack_policy=str(config.data.get("pack_policy",
                                      packing_lib.DEFAULT_POLICY)),
      # Clips padded to one frame count: one program for every batch.
      audio_frames=int(config.data.get("audio_frames", 0)),
      # Row lengths (a stage option, e.g. grpo's); None = powers of two.
      buckets=tuple(config.stages[stage_name].get("buckets", ())) or None,
      # Where box answers should look (the lm kind's box_attention_weight
      # and _target), in validation batches too: the validation loss is
      # the same loss.
      box_attention=_box_attention(config.stages[stage_name], fmt),
      # What each answer token weighs in the loss (chats of 'lm' stages;
      # runs written before the key: "token", config.ADDED_KEYS).
      loss_weighting=(str(config.data.get("loss_weighting", "token"))
                      if fmt in formats.CHAT_FORMATS and
                      config.stages[stage_name].loss == "lm" else "token"))


def _box_attention(stage: ml_collections.ConfigDict, fmt: str) -> str:
  """The pipeline's box_attention: "" (off) or what box answers look at."""
  if fmt not in formats.CHAT_FORMATS or float(
      stage.get("box_attention_weight", 0.0)) <= 0:
    return ""
  return str(stage.get("box_attention_target", "box"))


# ------------------------------------------------------------------ checks --
def stage_checks(config: ml_collections.ConfigDict) -> list[C.Check]:
  """Every stage's loss, data format, options, trainable groups and length,
  and the checks of its kind."""
  checks: list[C.Check] = []
  owners = base.option_owners()
  for name in C.stage_names(config):
    p = f"stages.{name}"
    stage = config.stages[name]
    checks.append(lambda c, n=name: stage_kind(c, n))
    kind = base.kinds().get(stage.loss)
    if kind is None or config.family not in kind.families:
      continue  # the check above says what is allowed
    if config.family == "mllm":  # a text-only recipe reads its corpus
      checks.append(C.check_choice(f"{p}.data", kind.data_formats))
    for option, kinds in owners.items():
      if option in stage and option not in kind.options:
        # Kinds sharing a key may differ in its neutral value (`beta`: dpo
        # 0.1, grpo 0.04): any of them is neutral.
        neutrals = [base.kinds()[k].options[option] for k in kinds]
        neutral = base.kinds()[kinds[-1]].options[option]
        checks.append(C.check_that(
            lambda c, s=stage, o=option, n=neutrals: s[o] in n,
            lambda c, s=stage, p=p, o=option, k=kinds, v=neutral: (
                f"config.{p}.{o}={s[o]!r}: only stages with loss "
                f"{', '.join(map(repr, k))} take it; this stage's loss is "
                f"{s.loss!r}, set it to {v!r} or remove it")))
    checks += kind.checks(config, p, stage)
    for entry in stage.get("trainable", ("all",)):
      checks.append(C.check_that(
          lambda c, e=entry: e in groups.GROUPS or any(
              ch in e for ch in "*?[/"),
          lambda c, p=p, e=entry: f"config.{p}.trainable names {e!r}, "
          f"which is no parameter group; groups: "
          f"{', '.join(groups.GROUPS)} (or a glob like 'llm/layers_3/*')"))
    checks.append(C.check_int(f"{p}.steps", 1))
    if "batch_size" in stage:
      checks.append(C.check_int(f"{p}.batch_size", 0))
  return checks
