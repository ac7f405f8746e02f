"""Stage kind `t2i`: a decoder LM learns to write an image's VQ codes after
its caption, in one vocabulary of text and image codes (Chameleon, Emu3).

The model is a `DecoderLM` of config.model.lm whose vocabulary is
`image_vocab(config)` (text ids, <boi>, <eoi>, the K codes); its parameters
are the `llm` group. Each training sequence, from a 'contrastive' batch
(an image and its caption, padded to P = config.model.text.max_len):

  inputs   caption (P ids, padding kept) <boi> code_1 ... code_N
  targets                                code_1 ... code_N <eoi>

N = (side / f)^2 codes of the frozen tokenizer (f its downsampling), read
from the finished `vq` run named by the stage option `tokenizer` (a
workdir). The tokenizer (encoder params and codebook) rides along as the
stage's loss state: checkpointed with the LM, never trained, so a `t2i` run
holds everything generation needs. With probability `cfg_dropout` (0.1) a
caption is replaced by padding only: the unconditional model that
classifier-free guidance needs at inference (decoding/image_tokens.py).
With the option `plain_background` (False) every picture's background (its
unsaturated pixels: the shapes backgrounds are greys, the palette colours
are saturated) is flattened to its mean before encoding, so the LM learns
the objects' codes instead of the textures' noise (docs/image-generation.md).

With config.model.scene_layout (False) the LM plans before it draws
(models/scene_layout.py): after the caption it writes the picture's
objects, six tokens each (colour, shape, box corners), and every code slot
carries its cell's share of that layout; the training layouts come from
the records' objects (the 'contrastive' batch's object_boxes /
object_labels), the loss adds `layout_weight` (1.0) times the layout
tokens' mean cross-entropy, and the option `object_weight` (1.0) counts
the codes of cells an object covers that many times. The option
`layout_order` ("caption") lists a training layout's objects as the short
caption names them (`scene_layout.encode`; "left_to_right": the order
before stop 44). A dropped caption
drops its layout too. The layout's parameters are the group
`scene_layout`.

Loss: cross-entropy over the N + 1 targets (the whole vocabulary), plus
the layout's. Metrics: loss, code_accuracy (argmax = the code), and with a
layout layout_loss, layout_accuracy.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from mmjax import config as C
from mmjax.data import formats
from mmjax.data import shapes
from mmjax.data.tokenizer import PAD_ID
from mmjax.models import scene_layout
from mmjax.models import vq_codebook
from mmjax.models.decoder import DecoderConfig
from mmjax.models.image_vocab import ImageVocab
from mmjax.models.text_to_image import CODE_POSITIONS, TextToImageLM
from mmjax.train import groups
from mmjax.train import losses
from mmjax.train import trainer as trainer_lib
from mmjax.train.stages import base
from mmjax.train.stages import vq as vq_stage
from mmjax.train.stages.contrastive import single_image

_OPTIONS = {"tokenizer": "", "cfg_dropout": 0.1, "plain_background": False,
            "layout_weight": 1.0, "object_weight": 1.0,
            "layout_order": "caption", "merge_codes": 0.0}
# A layout's colour and shape ids are the regions format's label ids
# (formats.REGION_ATTRIBUTES: shapes.COLOURS, shapes.SHAPES).
_SHAPE_COLUMN = list(formats.REGION_ATTRIBUTES).index("shape")
_COLOUR_COLUMN = list(formats.REGION_ATTRIBUTES).index("colour")
LAYOUT_BINS = 64
# A pixel is background when max - min over its channels is below the
# shapes renderer's object chroma (the checker's rule too), in the
# pipeline's [-1, 1] units.
_SATURATED = 2 * shapes.OBJECT_MIN_CHROMA / 255


def flatten_background(images: jax.Array) -> jax.Array:
  """images f32[b, S, S, 3] in [-1, 1] -> the same with every unsaturated
  pixel set to the mean of its image's unsaturated pixels."""
  background = (images.max(-1) - images.min(-1) < _SATURATED)[..., None]
  mean = (jnp.sum(images * background, (1, 2), keepdims=True)
          / jnp.maximum(jnp.sum(background, (1, 2), keepdims=True), 1.0))
  return jnp.where(background, mean, images)


def image_vocab(config: ml_collections.ConfigDict) -> ImageVocab:
  """Text ids of config.model.lm, then <boi>, <eoi>, config.model.vq's codes."""
  return ImageVocab(int(config.model.lm.vocab_size),
                    int(config.model.vq.codebook_size))


def object_attributes(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """int32[..., A] region labels -> (colour ids, shape ids), int32[...]."""
  return labels[..., _COLOUR_COLUMN], labels[..., _SHAPE_COLUMN]


def text_to_image_lm(config: ml_collections.ConfigDict) -> TextToImageLM:
  """The stage's model: config.model.lm with the text + image-code (+
  layout) vocabulary, captions of config.model.text.max_len ids, images of
  config.model.vision.image_size pixels; a layout of up to MAX_OBJECTS
  objects when config.model.scene_layout is set."""
  vocab = image_vocab(config)
  objects = (shapes.MAX_OBJECTS if config.model.get("scene_layout", False)
             else 0)
  model = TextToImageLM(
      lm=DecoderConfig.from_dict(config.model.lm.to_dict()),
      vq=vq_stage.vq_config(config), vocab=vocab,
      prompt_len=int(config.model.text.max_len),
      side=int(config.model.vision.image_size),
      code_positions=str(config.model.get("code_positions", "none")),
      layout_objects=objects, layout_colours=len(shapes.COLOURS),
      layout_shapes=len(shapes.SHAPES), layout_bins=LAYOUT_BINS,
      cell_edges=bool(config.model.get("cell_edges", False)))
  lm = dict(config.model.lm.to_dict(), vocab_size=model.total_vocab)
  return model.clone(lm=DecoderConfig.from_dict(lm))


def _model(config: ml_collections.ConfigDict, stage_name: str
           ) -> base.StageModel:
  del stage_name
  model = text_to_image_lm(config)
  tokens = jnp.zeros((1, 8), jnp.int32)
  return base.StageModel(model,
                         lambda rng: model.init(rng, tokens)["params"],
                         groups.prefix_mapper({"llm": "llm"}))


def training_layout(model: TextToImageLM, batch, dropped: jax.Array,
                    order: str = "caption"
                    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array],
                               jax.Array]:
  """(layout tokens int32[b, L], cells, layout loss weights f32[b, L]) of
  a batch's objects; a dropped row (bool[b]) has an all-PAD layout, no
  object in any cell and no layout loss; objects in `order`
  (scene_layout.ORDERS)."""
  if "object_boxes" not in batch:
    raise ValueError("the t2i stage's layout needs each picture's objects "
                     "(object_boxes / object_labels of a 'contrastive' "
                     "batch of shapes records): use the shapes data")
  vocab = model.layout_vocab
  boxes = batch["object_boxes"].astype(jnp.float32)
  colours, kinds = object_attributes(batch["object_labels"])
  valid = batch["object_valid"].astype(bool) & ~dropped[:, None]
  tokens = scene_layout.encode(vocab, boxes, colours, kinds, valid, PAD_ID,
                               order)
  tokens = jnp.where(dropped[:, None], PAD_ID, tokens)
  # The tokens up to <eol> count; the PAD after it does not.
  written = jnp.cumsum(tokens == vocab.eol_id, axis=1) - (
      tokens == vocab.eol_id)
  weights = ((written == 0) & ~dropped[:, None]).astype(jnp.float32)
  cells = scene_layout.cells(boxes, colours, kinds, valid, model.grid,
                             model.cell_edges)
  return tokens, cells, weights


def code_weights(valid: jax.Array, targets: int,
                 cells: tuple[jax.Array, jax.Array] | None,
                 object_weight: float = 1.0) -> jax.Array:
  """f32[b, N + 1] loss weights of the code targets and <eoi>: `valid`
  f32[b, 1] (0 for padding rows), and with cells (labels int32[b, N, 2])
  object_weight for the codes of cells an object covers."""
  w = jnp.broadcast_to(valid, (valid.shape[0], targets))
  if cells is None or object_weight == 1.0:
    return w
  covered = (cells[0][..., 0] > 0).astype(jnp.float32)           # [b, N]
  scale = 1.0 + (object_weight - 1.0) * covered
  return w * jnp.pad(scale, ((0, 0), (0, 1)), constant_values=1.0)


def load_tokenizer(config: ml_collections.ConfigDict, stage_name: str
                   ) -> dict[str, jax.Array]:
  """{'params', 'codebook'} of the stage's `tokenizer` run, checked against
  config.model.vq; with the option `merge_codes` r > 0 the codebook's
  near-duplicates (within r) are merged (vq_codebook.merge_nearby)."""
  workdir = config.stages[stage_name].get("tokenizer", "")
  cfg, params, codebook, used = vq_stage.load_trained(workdir,
                                                      with_usage=True)
  if cfg != vq_stage.vq_config(config):
    raise C.ConfigError(
        f"config.stages.{stage_name}.tokenizer={workdir!r} was trained with "
        f"{cfg}, but config.model.vq is {vq_stage.vq_config(config)}: give "
        "configs/t2i.py the args the tokenizer was trained with (codes, "
        "levels)")
  radius = float(config.stages[stage_name].get("merge_codes", 0.0))
  if radius > 0:
    codebook, _ = vq_codebook.merge_nearby(codebook, used, radius)
  return {"params": params, "codebook": jnp.asarray(codebook)}


def _weighted_mean(x: jax.Array, weights: jax.Array) -> jax.Array:
  return (x * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def _loss(model: TextToImageLM, stage: ml_collections.ConfigDict):
  dropout = float(stage.get("cfg_dropout", 0.1))
  plain = bool(stage.get("plain_background", False))
  layout_weight = float(stage.get("layout_weight", 1.0))
  object_weight = float(stage.get("object_weight", 1.0))
  order = str(stage.get("layout_order", "caption"))

  def loss_fn(params, batch, rng, tokenizer):
    images = single_image(batch["images"]).astype(jnp.float32)
    if plain:
      images = flatten_background(images)
    codes = model.encode_codes(tokenizer, images)
    prompts = batch["text_tokens"].astype(jnp.int32)
    # The unconditional model of classifier-free guidance: no caption.
    dropped = jax.random.bernoulli(rng, dropout, (prompts.shape[0],))
    prompts = jnp.where(dropped[:, None], PAD_ID, prompts)
    valid = batch["valid"].astype(jnp.float32)[:, None]
    layout = cells = None
    if model.layout_objects:
      layout, cells, layout_w = training_layout(model, batch, dropped, order)
    inputs, targets = model.sequences(prompts, codes, layout)
    hidden, _ = model.apply({"params": params}, inputs, cells,
                            logits=False)
    # Logits only where a target is (the caption's slots need none), a
    # head call per part: slicing one logits array would copy it.
    def head(start: int, stop: int | None = None) -> jax.Array:
      return model.apply({"params": params}, hidden[:, start:stop],
                         method=TextToImageLM.head)

    ce, hit = losses.token_losses(head(model.boi_slot), targets)
    w = code_weights(valid, targets.shape[1], cells, object_weight)
    loss = _weighted_mean(ce, w)
    metrics = {"code_accuracy": _weighted_mean(hit[:, :-1], w[:, :-1])}
    if layout is not None:
      # The layout's tokens are predicted from slots P - 1 .. P + L - 2.
      ce, hit = losses.token_losses(
          head(model.prompt_len - 1, model.boi_slot - 1), layout)
      w = layout_w * valid
      layout_loss = _weighted_mean(ce, w)
      metrics.update(layout_loss=layout_loss,
                     layout_accuracy=_weighted_mean(hit, w))
      loss = loss + layout_weight * layout_loss
    return loss, {"loss": loss, **metrics, trainer_lib.LOSS_STATE: tokenizer}
  return loss_fn


def _checks(config, path: str, stage) -> list[C.Check]:
  del config
  name = path.split(".", 1)[1]
  return [
      C.check_that(
          lambda c: "vq" in c.model and "text" in c.model,
          lambda c: f"config.{path}.loss='t2i' needs config.model.vq (the "
          "tokenizer's sizes) and config.model.text.max_len (the caption "
          "length): use configs/t2i.py"),
      C.check_that(
          lambda c: bool(c.stages[name].get("tokenizer")),
          lambda c: f"config.{path}.tokenizer is empty: give the workdir of a "
          "finished configs/vq.py run (e.g. runs/vq)"),
      C.check_that(
          lambda c: C.read_run_config(c.stages[name].tokenizer) is not None,
          lambda c: f"config.{path}.tokenizer={c.stages[name].tokenizer!r} "
          "holds no run (no config.json): train the tokenizer first, python "
          "-m mmjax.main --config=configs/vq.py --workdir="
          f"{c.stages[name].tokenizer}"),
      C.check_that(
          lambda c: c.model.get("code_positions", "none") in CODE_POSITIONS,
          lambda c: f"config.model.code_positions="
          f"{c.model.get('code_positions')!r}: choose one of "
          f"{', '.join(CODE_POSITIONS)}"),
      C.check_that(
          lambda c: isinstance(c.model.get("scene_layout", False), bool),
          lambda c: f"config.model.scene_layout="
          f"{c.model.get('scene_layout')!r} must be True or False"),
  ] + ([C.check_number(f"{path}.cfg_dropout", 0.0, 1.0)]
         if "cfg_dropout" in stage else []) + (
             [C.check_number(f"{path}.layout_weight", 0.0, None)]
             if "layout_weight" in stage else []) + (
                 [C.check_number(f"{path}.object_weight", 0.0, None)]
                 if "object_weight" in stage else []) + (
                     [C.check_number(f"{path}.merge_codes", 0.0, None)]
                     if "merge_codes" in stage else []) + [
                     C.check_that(
                         lambda c: c.stages[name].get(
                             "layout_order", "caption") in scene_layout.ORDERS,
                         lambda c: f"config.{path}.layout_order="
                         f"{c.stages[name].get('layout_order')!r}: choose one "
                         f"of {', '.join(scene_layout.ORDERS)}")]


KIND = base.register(base.StageKind(
    name="t2i", families=("mllm",), data_formats=("contrastive",),
    make_model=_model, make_loss=_loss, initial_loss_state=load_tokenizer,
    options=_OPTIONS, checks=_checks))
