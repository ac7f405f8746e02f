"""Stage kind `region_classification`: region-level supervision of the
vision tower on 'regions' data (an image, each object's box and classes).

The model is the MLLM's vision tower plus a linear head per attribute on
each box's token average (`models/region_head.py`); the tower is the global
`vision` group, the head `region_head` (used by no other stage). Contrastive
captions let a tower tell images apart by colour and position alone; this
loss makes every object's tokens say what the object is (option
`attributes`, any of `formats.REGION_ATTRIBUTES`: shape, colour, the 3 x
3 place of its box centre, and each edge of its box (left, top, right,
bottom: one of `formats.EDGE_BINS` bins of the side); default shape and
colour; docs/recipes.md "What makes the model see", docs/evaluation.md
"Grounding").

Loss: the mean over attributes of the cross-entropy over real objects
(option `attribute_weights`, one weight per attribute in `attributes`'
order: the weighted mean; () = all 1); metrics `<attribute>_accuracy`.
Option `per_token` (default False): every
token under a box must say the object's class on its own (the
cross-entropy of each token's logits, weighted by the token's share of the
box), not only the box's average. An LM finds the object a question names
by matching single tokens (attention keys), so each token should carry what
the object is; accuracy is still read from the box average (the token
log-probabilities averaged with the same weights). Option
`token_attributes` (default ()): only these attributes per token, the
others from the box average, e.g. the box edges, so that any one token of
an object knows its box while shape and colour are learnt as before.
Option `recolour` (default 0): in training, the chance that each object is
painted a random colour and its colour not asked (`data/recolour.py`), so
that shape is read from the outline, not guessed from the colour.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mmjax import config as C
from mmjax.data import formats
from mmjax.models import build
from mmjax.models.region_head import RegionClassifier
from mmjax.train.stages import base
from mmjax.train.stages.contrastive import needs_vision_tower, single_image

# What the head learns by default (option `attributes`): shape and colour.
# Adding 'place' (each box centre's 3 x 3 cell) was measured not to help
# spatial answers and to cost shape (docs/recipes.md).
DEFAULT_ATTRIBUTES = ("shape", "colour")


def classes(stage: ml_collections.ConfigDict) -> tuple[tuple[str, int], ...]:
  """(attribute, number of classes) of the attributes a stage trains."""
  return tuple((name, len(formats.REGION_ATTRIBUTES[name]))
               for name in stage.get("attributes", DEFAULT_ATTRIBUTES))


def _model(config: ml_collections.ConfigDict, stage_name: str
           ) -> base.StageModel:
  cfg = build.mllm_config(config)
  model = RegionClassifier(cfg.vision, classes(config.stages[stage_name]),
                           cfg.feature_layer)
  n_tokens = cfg.vision.num_patches
  images = jnp.zeros((1, cfg.side, cfg.side, cfg.channels))
  weights = jnp.full((1, formats.MAX_REGIONS, n_tokens), 1.0 / n_tokens)
  return base.StageModel(
      model, lambda rng: model.init(rng, images, weights)["params"],
      lambda path: path)  # Its names are the global ones.


def _loss(model, stage: ml_collections.ConfigDict):
  trained = classes(stage)
  columns = list(formats.REGION_ATTRIBUTES)

  per_token = token_attributes(stage)
  weights_by_name = dict(zip([name for name, _ in trained],
                             stage.get("attribute_weights", ()) or
                             [1.0] * len(trained)))

  def loss_fn(params, batch, rng):
    del rng
    weights = batch["region_weights"]  # [B, K, N]
    pooled, tokens = model.apply({"params": params},
                                 single_image(batch["images"]), weights,
                                 both=True)
    valid = batch["region_valid"] * batch["valid"][:, None]
    total, metrics = 0.0, {}
    for name, _ in trained:
      logits = tokens if name in per_token else pooled
      labels = batch["region_labels"][..., columns.index(name)]
      # A recoloured object's colour is not asked (label -1).
      known = valid * (labels >= 0)
      n = jnp.maximum(known.sum(), 1.0)
      labels = jnp.maximum(labels, 0)
      if name in per_token:  # [B, N, C] -> each box's weighted log-probs
        logp = jax.nn.log_softmax(logits[name].astype(jnp.float32))
        box_logp = jnp.einsum("bkn,bnc->bkc", weights, logp)  # [B, K, C]
        ce = -jnp.take_along_axis(box_logp, labels[..., None], -1)[..., 0]
        logits = {**logits, name: box_logp}
      else:
        ce = optax.softmax_cross_entropy_with_integer_labels(
            logits[name].astype(jnp.float32), labels)
      total = total + weights_by_name[name] * (ce * known).sum() / n
      right = (logits[name].argmax(-1) == labels) * known
      metrics[f"{name}_accuracy"] = right.sum() / n
    loss = total / sum(weights_by_name.values())
    return loss, {"loss": loss, **metrics}
  return loss_fn


def token_attributes(stage: ml_collections.ConfigDict) -> frozenset[str]:
  """The attributes the stage trains on every token: all with `per_token`,
  else those `token_attributes` names."""
  if stage.get("per_token", False):
    return frozenset(name for name, _ in classes(stage))
  return frozenset(stage.get("token_attributes", ()))


def _checks(config, path: str, stage) -> list[C.Check]:
  allowed = tuple(formats.REGION_ATTRIBUTES)
  return needs_vision_tower(config, path, stage) + [C.check_that(
      lambda c: (isinstance(stage.get("attributes", ()), (tuple, list))
                 and len(stage.get("attributes", DEFAULT_ATTRIBUTES)) > 0
                 and set(stage.get("attributes", ())) <= set(allowed)),
      lambda c: f"config.{path}.attributes={stage.get('attributes')!r}: "
      f"give a non-empty tuple of {', '.join(allowed)}"), C.check_that(
      lambda c: c.model.vision.get("kind", "siglip") in ("siglip", "clip"),
      lambda c: f"config.{path}.loss='region_classification' pools a ViT's "
      f"patch grid; config.model.vision.kind={c.model.vision.kind!r} has "
      "none: use a siglip or clip tower or drop the stage"), C.check_that(
      lambda c: (not isinstance(stage.get("recolour", 0.0), bool)
                 and isinstance(stage.get("recolour", 0.0), (int, float))
                 and 0.0 <= stage.get("recolour", 0.0) <= 1.0),
      lambda c: f"config.{path}.recolour={stage.get('recolour')!r}: give "
      "the chance per object, a number in [0, 1] (0 = off)"), C.check_that(
      lambda c: isinstance(stage.get("per_token", False), bool),
      lambda c: f"config.{path}.per_token={stage.get('per_token')!r}: give "
      "True or False"), C.check_that(
      lambda c: isinstance(stage.get("token_attributes", ()), (tuple, list))
      and set(stage.get("token_attributes", ())) <= set(
          stage.get("attributes", DEFAULT_ATTRIBUTES)),
      lambda c: f"config.{path}.token_attributes="
      f"{stage.get('token_attributes')!r}: give a tuple of the stage's "
      "attributes (those trained on every token), attributes="
      f"{tuple(stage.get('attributes', DEFAULT_ATTRIBUTES))!r}"), C.check_that(
      lambda c: _weights_fit(stage),
      lambda c: f"config.{path}.attribute_weights="
      f"{stage.get('attribute_weights')!r}: give () or one weight >= 0 per "
      f"attribute of {tuple(stage.get('attributes', DEFAULT_ATTRIBUTES))!r}, "
      "not all 0")]


def _weights_fit(stage) -> bool:
  weights = stage.get("attribute_weights", ())
  if not isinstance(weights, (tuple, list)):
    return False
  if not weights:
    return True
  return (len(weights) == len(stage.get("attributes", DEFAULT_ATTRIBUTES))
          and all(isinstance(w, (int, float)) and not isinstance(w, bool)
                  and w >= 0 for w in weights) and sum(weights) > 0)


KIND = base.register(base.StageKind(
    name="region_classification", families=("mllm",),
    data_formats=("regions",), make_model=_model, make_loss=_loss,
    options={"attributes": DEFAULT_ATTRIBUTES, "per_token": False,
             "token_attributes": (), "attribute_weights": (),
             "recolour": 0.0},
    checks=_checks))
