"""Stage kind `qformer`: BLIP-2's stage-1 Q-Former pretraining (ITC + ITM +
ITG) on image + caption ('contrastive' data), for fusion 'qformer'.

The model is the vision tower + Q-Former + the three heads
(`qformer_losses.QFormerPretrainModel`); `qformer_losses.to_global` maps its
parameters onto the MLLM's names, so the MLLM stages start from them.
"""
from __future__ import annotations

import ml_collections

from mmjax import config as C
from mmjax.models import build
from mmjax.train import qformer_losses
from mmjax.train.stages import base
from mmjax.train.stages.contrastive import single_image


def _model(config: ml_collections.ConfigDict, stage_name: str
           ) -> base.StageModel:
  del stage_name
  cfg = build.mllm_config(config)
  model = qformer_losses.QFormerPretrainModel(cfg.vision, cfg.qformer)
  return base.StageModel(
      model, build.image_text_init(model, cfg, config.model.text.max_len),
      qformer_losses.to_global)


def _loss(model, stage: ml_collections.ConfigDict):
  del stage

  def loss_fn(params, batch, rng):
    return qformer_losses.qformer_losses(
        model, params, single_image(batch["images"]), batch["text_tokens"],
        batch.get("text_pad_mask"), rng)
  return loss_fn


def _checks(config, path: str, stage) -> list[C.Check]:
  del stage
  return [C.check_that(
      lambda c: c.model.fusion == "qformer",
      lambda c: f"config.{path}.loss='qformer' needs a Q-Former, but "
      f"config.model.fusion={c.model.fusion!r}; use fusion=qformer or drop "
      "the stage")]


KIND = base.register(base.StageKind(
    name="qformer", families=("mllm",), data_formats=("contrastive",),
    make_model=_model, make_loss=_loss, checks=_checks))
