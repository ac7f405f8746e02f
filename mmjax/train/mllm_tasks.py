"""Tasks of the multimodal recipe (`config.family == 'mllm'`).

Which model a stage trains follows from its loss:

  lm (data 'text')        MLLM on text only (the LM of the MLLM)
  lm (any image format)   MLLM on image-text conversations
  sigmoid_contrastive,    TwoTower: the MLLM's vision tower + a SigLIP text
  softmax_contrastive     tower (global groups vision / text / siglip)
  dpo, mpo                MLLM, with the stage-start parameters as reference
  qformer                 vision tower + Q-Former + ITC/ITM/ITG heads

Every model reads and writes the recipe's global parameter store through
`Task.to_global`, so the vision tower a contrastive stage trains is the one
the MLLM stages use.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mmjax import parallel
from mmjax.config import ConfigError, stage_batch_size
# builders (tfds) and pipeline / text_pipeline (grain) are imported where
# they are used, so model-only users (benchmarks, a bare GPU image, notebooks)
# import this module without the data stack.
from mmjax.data import shapes
from mmjax.data.tokenizer import Tokenizer
from mmjax.models import layout
from mmjax.models.mllm import MLLM, MLLMConfig, mllm_config_from_dict
from mmjax.models.text_tower import TextTowerConfig, TwoTower
from mmjax.train import groups, losses, sigmoid_ring
from mmjax.train import trainer as trainer_lib
from mmjax.train.trainer import Task

MLLM_LOSSES = ("lm", "sigmoid_contrastive", "softmax_contrastive", "dpo",
               "mpo", "qformer")
DATA_FORMATS = ("text", "shapes", "shapes_chat", "caption", "preference",
                "contrastive", "llava_conversations", "image_caption")


def data_dir(config: ml_collections.ConfigDict) -> str:
  """config.data.data_dir, else $MMJAX_DATA_DIR, else ~/.cache/mmjax/data."""
  return (config.data.get("data_dir") or os.environ.get("MMJAX_DATA_DIR") or
          os.path.expanduser("~/.cache/mmjax/data"))


def shapes_dataset(config: ml_collections.ConfigDict):
  """Builds (once; later calls reuse it) the shapes TFDS dataset."""
  from mmjax.data import builders  # pylint: disable=g-import-not-at-top
  d = config.data
  return builders.build(
      builders.ShapesBuilder, data_dir(config), num_train=d.num_train,
      num_validation=d.num_validation, num_test=d.num_test,
      num_heldout=d.num_heldout, image_size=d.image_size, seed=d.seed,
      vocab_size=d.vocab_size)


def stage_sources(config: ml_collections.ConfigDict, fmt: str, shapes_builder
                  ) -> tuple[Any, Any]:
  """(train, held-out) sources of a stage's data format.

  Shapes formats read the shapes dataset; `llava_conversations` and
  `image_caption` read a folder named by config.data.folder_json (the JSON /
  JSONL file) and config.data.folder_images, built once into the data dir.
  Folders have one split; the held-out batches are its first records.
  """
  from mmjax.data import builders  # pylint: disable=g-import-not-at-top
  if fmt in ("llava_conversations", "image_caption"):
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
  from mmjax.data import builders  # pylint: disable=g-import-not-at-top
  return Tokenizer.load(os.path.join(builder.data_dir,
                                     builders.TOKENIZER_FILE))


def model_config(config: ml_collections.ConfigDict) -> MLLMConfig:
  return mllm_config_from_dict(config.model.to_dict())


def dummy_inputs(cfg: MLLMConfig, image_id: int) -> dict[str, jax.Array]:  # pylint: disable=missing-function-docstring
  """One tiny example with one image: enough to initialise the MLLM."""
  side = cfg.side
  ex = layout.assemble(cfg, [[5, 6], layout.Media(side, side, cfg.frames),
                             [7]], image_id, v2pe_stride=256)
  shape = (1, 1) + ((cfg.frames,) if cfg.frames > 1 else ()) + (
      side, side, cfg.channels)
  return {"tokens": jnp.asarray(ex["tokens"])[None],
          "positions": jnp.asarray(ex["positions"])[..., None, :],
          "images": jnp.zeros(shape, jnp.float32),
          "image_mask": jnp.ones((1, 1), bool),
          "image_token_mask": jnp.asarray(ex["image_token_mask"])[None],
          "media_locations": jnp.asarray(ex["media_locations"])[None]}


def mllm_apply(model: MLLM, params, batch, prefix: str = "",
               logits: bool = True):
  """Logits of the MLLM on a pipeline batch (keys optionally prefixed);
  logits=False: the LM's final-normed hidden states instead."""
  get = lambda k: batch.get(prefix + k, batch.get(k))
  return model.apply(
      {"params": params}, get("tokens"), get("positions"),
      images=batch.get("images"), image_mask=batch.get("image_mask"),
      image_token_mask=get("image_token_mask"),
      media_locations=get("media_locations"), logits=logits)[0]


def mllm_lm_loss(model: MLLM, params, batch, loss_chunk: int = 0):
  """Next-token loss on a pipeline batch (or a text batch: tokens only).

  loss_chunk > 0 runs the LM head and cross-entropy that many positions at
  a time and skips the chunks without a loss token (`losses.chunked_lm_loss`);
  0 computes the full [B, L, V] logits. Same loss either way.
  """
  if not loss_chunk:
    return losses.lm_loss(mllm_apply(model, params, batch), batch["targets"],
                          batch["loss_mask"])
  hidden = mllm_apply(model, params, batch, logits=False)
  head = functools.partial(_head_fn(model), params)
  return losses.chunked_lm_loss(hidden, head, batch["targets"],
                                batch["loss_mask"], loss_chunk)


def two_tower(config: ml_collections.ConfigDict, cfg: MLLMConfig) -> TwoTower:
  """The contrastive model: the MLLM's vision tower (with a MAP head and all
  its layers) and a SigLIP text tower from config.model.text."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  vision = dataclasses.replace(cfg.vision, pool="map")
  text = TextTowerConfig.from_dict(config.model.text.to_dict())
  return TwoTower(vision, text, embed_dim=config.model.text.embed_dim)


def _logits_fn(model: MLLM):
  """(params, *inputs, **kw) -> logits, the form preference_loss takes."""
  return lambda p, *a, **k: model.apply({"params": p}, *a, **k)[0]


def _head_fn(model: MLLM):
  """(params, hidden [B, L, D]) -> logits f32[B, L, V]: the LM head alone."""
  return lambda p, h: model.apply({"params": p}, h, method=MLLM.head)


def _chunked_head(model: MLLM, stage) -> dict[str, Any]:
  """preference_loss's head_apply / loss_chunk from the stage config."""
  return {"loss_chunk": stage.get("loss_chunk", 0),
          "head_apply": _head_fn(model)}


def _single_image(images):
  """[b, H, W, C], or the first slot of [b, M, H, W, C]."""
  return images[:, 0] if images.ndim == 5 else images


IMAGE_ID = 4  # tokenizer.IMAGE_TOKEN's fixed id (after pad/unk/bos/eos)


def stage_model(config: ml_collections.ConfigDict, stage_name: str):
  """(model, init rng -> boxed params, to_global) of a stage; no data."""
  stage = config.stages[stage_name]
  cfg = model_config(config)
  side, text_len = cfg.side, config.model.text.max_len
  dummy_img = jnp.zeros((1, side, side, cfg.channels))
  dummy_txt = jnp.zeros((1, text_len), jnp.int32)
  if stage.loss in ("sigmoid_contrastive", "softmax_contrastive"):
    model = two_tower(config, cfg)
    return (model, lambda rng: model.init(rng, dummy_img, dummy_txt)["params"],
            groups.prefix_mapper({"vision_model": "vision",
                                  "text_model": "text", "*": "siglip"}))
  if stage.loss == "qformer":
    from mmjax.train import qformer_losses  # pylint: disable=g-import-not-at-top
    model = qformer_losses.QFormerPretrainModel(cfg.vision, cfg.qformer)
    return (model, lambda rng: model.init(rng, dummy_img, dummy_txt)["params"],
            qformer_losses.to_global)
  model = MLLM(cfg)
  dummy = dummy_inputs(cfg, IMAGE_ID)
  return (model, lambda rng: model.init(rng, **dummy)["params"],
          lambda path: path)


def _iterator(config, stage_name, source, fmt, cfg, tok, train,
              seed_offset=0):
  from mmjax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.make_iterator(
      source, fmt=fmt, cfg=cfg, tokenizer=tok,
      batch_size=stage_batch_size(config, stage_name),
      seed=config.data.seed + seed_offset,
      # Contrastive text is padded to the text tower's fixed length.
      max_len=(config.model.text.max_len if fmt == "contrastive"
               else config.data.max_len),
      max_images=1, train=train, process_index=jax.process_index(),
      process_count=jax.process_count(),
      num_workers=config.data.num_workers if train else 0)


def build_mllm_task(config: ml_collections.ConfigDict, stage_name: str,
                    workdir: str):
  """The BuiltTask of one stage of the multimodal recipe."""
  from mmjax.train.tasks import BuiltTask  # pylint: disable=g-import-not-at-top
  del workdir  # the dataset lives in the shared data dir
  stage = config.stages[stage_name]
  if stage.loss not in MLLM_LOSSES:
    raise ConfigError(f"config.stages.{stage_name}.loss={stage.loss!r}; "
                      f"allowed values: {', '.join(map(repr, MLLM_LOSSES))}")
  builder = parallel.first_process_then_others(
      lambda: shapes_dataset(config), "shapes_dataset")
  tok = tokenizer_for(builder)
  if tok.image_id != IMAGE_ID:
    raise ConfigError(f"tokenizer at {builder.data_dir} has <image> id "
                      f"{tok.image_id}, expected {IMAGE_ID}")
  cfg = model_config(config)
  model, init, to_global = stage_model(config, stage_name)
  fmt = stage.data
  info: dict[str, Any] = {"data": fmt}
  seed = config.data.seed + 1000 * list(config.stage_order).index(stage_name)

  if fmt == "text":
    from mmjax.data import text_pipeline  # pylint: disable=g-import-not-at-top
    texts = shapes.benchmark_texts(config.data.num_train, seed=config.data.seed)
    cut = max(1, len(texts) // 20)
    data = text_pipeline.LMData(texts[cut:], texts[:cut], tok,
                                config.data.text_seq_len, seed)

    def text_loss(params, batch, rng):
      del rng
      return mllm_lm_loss(model, params, batch, stage.get("loss_chunk", 0))
    task = Task(init_params=init, loss_fn=text_loss,
                train_iterator=data.train_iterator(
                    stage_batch_size(config, stage_name), jax.process_index(),
                    jax.process_count()),
                eval_batches=lambda: data.eval_batches(
                    config.batch_size, config.eval_batches,
                    jax.process_index(), jax.process_count()),
                tokens_per_example=config.data.text_seq_len,
                to_global=to_global)
    info["unigram_entropy"] = data.unigram_entropy()
    return BuiltTask(task=task, info=info, tokenizer=tok)

  train_src, val_src = stage_sources(config, fmt, builder)
  loss_state = None
  train_it = _iterator(config, stage_name, train_src, fmt, cfg, tok, True,
                       seed)

  def eval_batches():
    it = _iterator(config, stage_name, val_src, fmt, cfg, tok, False)
    for _, batch in zip(range(config.eval_batches), it):
      yield batch

  if stage.loss in ("sigmoid_contrastive", "softmax_contrastive"):
    def loss_fn(params, batch, rng):
      del rng
      out = model.apply({"params": params}, _single_image(batch["images"]),
                        batch["text_tokens"], batch.get("text_pad_mask"))
      if stage.loss == "sigmoid_contrastive" and stage.get("chunked_loss",
                                                           False):
        # Ring exchange over the batch-sharded mesh: no global B x B logits.
        return sigmoid_ring.chunked_sigmoid_loss(
            out["zimg"], out["ztxt"], out["logit_scale"], out["logit_bias"])
      if stage.loss == "sigmoid_contrastive":
        return losses.sigmoid_contrastive_loss(
            out["zimg"], out["ztxt"], out["logit_scale"], out["logit_bias"])
      return losses.softmax_contrastive_loss(out["zimg"], out["ztxt"],
                                             out["logit_scale"])
  elif stage.loss == "qformer":
    from mmjax.train import qformer_losses  # pylint: disable=g-import-not-at-top

    def loss_fn(params, batch, rng):
      return qformer_losses.qformer_losses(
          model, params, _single_image(batch["images"]), batch["text_tokens"],
          batch.get("text_pad_mask"), rng)
  elif stage.loss == "dpo":
    def loss_fn(params, batch, rng, ref):
      del rng
      return losses.preference_loss(_logits_fn(model), params, ref, batch,
                                    kind="dpo", beta=stage.get("beta", 0.1),
                                    **_chunked_head(model, stage))
  elif stage.loss == "mpo":
    # BCO's shift delta is the running mean of every reward seen so far
    # (TRL's RunningMoments), kept in the train state: resumes exactly.
    loss_state = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))

    def loss_fn(params, batch, rng, ref, reward_state):
      del rng
      loss, metrics = losses.preference_loss(
          _logits_fn(model), params, ref, batch, kind="mpo",
          beta=stage.get("beta", 0.1), reward_state=reward_state,
          **_chunked_head(model, stage))
      metrics[trainer_lib.LOSS_STATE] = (metrics["reward_mean"],
                                         metrics["reward_count"])
      return loss, metrics
  else:
    def loss_fn(params, batch, rng):
      del rng
      return mllm_lm_loss(model, params, batch, stage.get("loss_chunk", 0))
  task = Task(init_params=init, loss_fn=loss_fn, train_iterator=train_it,
              eval_batches=eval_batches, to_global=to_global,
              needs_ref=stage.loss in ("dpo", "mpo"),
              data_stats=train_it.stats, loss_state=loss_state)
  return BuiltTask(task=task, info=info, tokenizer=tok)
