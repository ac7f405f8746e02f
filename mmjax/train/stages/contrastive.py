"""Stage kinds `sigmoid_contrastive` (SigLIP) and `softmax_contrastive` (CLIP).

The model is a two-tower one: the MLLM's vision tower (with a MAP head and
all its layers) and a SigLIP text tower from config.model.text; its towers
are the global groups `vision` and `text`, its head `siglip`, so the vision
tower trained here is the one the MLLM stages use. Data: 'contrastive'
(image + caption text).

Option `chunked_loss` (sigmoid only, default False): the ring-exchanged
sigmoid loss (train/sigmoid_ring.py), which never holds the global B x B
logits; same loss and gradients.
"""
from __future__ import annotations

import ml_collections

from mmjax import config as C
from mmjax.models import build
from mmjax.train import groups, losses, sigmoid_ring
from mmjax.train.stages import base


def single_image(images):
  """f32[b, H, W, C], or the first slot of f32[b, M, H, W, C]."""
  return images[:, 0] if images.ndim == 5 else images


def _model(config: ml_collections.ConfigDict, stage_name: str
           ) -> base.StageModel:
  del stage_name
  cfg = build.mllm_config(config)
  model = build.two_tower(config, cfg)
  return base.StageModel(
      model, build.image_text_init(model, cfg, config.model.text.max_len),
      groups.prefix_mapper(groups.TWO_TOWER_PATHS))


def _loss(kind: str):
  def make(model, stage: ml_collections.ConfigDict):
    chunked = stage.get("chunked_loss", False)

    def loss_fn(params, batch, rng):
      del rng
      out = model.apply({"params": params}, single_image(batch["images"]),
                        batch["text_tokens"], batch.get("text_pad_mask"))
      if kind == "softmax":
        return losses.softmax_contrastive_loss(out["zimg"], out["ztxt"],
                                               out["logit_scale"])
      if chunked:  # Ring exchange over the batch-sharded mesh.
        return sigmoid_ring.chunked_sigmoid_loss(
            out["zimg"], out["ztxt"], out["logit_scale"], out["logit_bias"])
      return losses.sigmoid_contrastive_loss(
          out["zimg"], out["ztxt"], out["logit_scale"], out["logit_bias"])
    return loss_fn
  return make


def needs_vision_tower(config, path: str, stage) -> list[C.Check]:
  """A stage that pretrains the vision tower needs a fusion that has one."""
  del stage
  return [C.check_that(
      lambda c: c.model.fusion != "one_backbone",
      lambda c: f"config.{path}: fusion='one_backbone' has no vision "
      "tower to pretrain contrastively")]


def _sigmoid_checks(config, path: str, stage) -> list[C.Check]:
  return needs_vision_tower(config, path, stage) + [C.check_that(
      lambda c: isinstance(stage.get("chunked_loss", False), bool),
      lambda c: f"config.{path}.chunked_loss={stage.get('chunked_loss')!r} "
      "must be True or False")]


SIGMOID = base.register(base.StageKind(
    name="sigmoid_contrastive", families=("mllm",),
    data_formats=("contrastive",), make_model=_model,
    make_loss=_loss("sigmoid"), options={"chunked_loss": False},
    checks=_sigmoid_checks))
SOFTMAX = base.register(base.StageKind(
    name="softmax_contrastive", families=("mllm",),
    data_formats=("contrastive",), make_model=_model,
    make_loss=_loss("softmax"), checks=needs_vision_tower))
