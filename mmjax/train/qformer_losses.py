"""BLIP-2 stage 1: Q-Former representation learning (ITC + ITM + ITG).

`QFormerPretrainModel` is a frozen vision tower, the Q-Former and its stage-1
heads; `qformer_losses` is LAVIS `Blip2Qformer.forward` (DESIGN.md section 5,
"Q-Former (BLIP-2)") on one device, where its all-gathers are no-ops:

  ITC  query features (B, Q, P) vs the text's first-position feature (B, P);
       sim = max over queries / temp; symmetric cross-entropy, the diagonal
       pairs positive, label smoothing 0.1 as in LAVIS.
  ITM  bidirectional ('itm' mask) pass on 3B pairs: the positives, each text
       with a hard-negative image and each image with a hard-negative text,
       both drawn from softmax(sim) + 1e-4 with the positive excluded;
       logits = ITM head averaged over query positions; cross-entropy with
       labels 1 (positives) / 0 (negatives).
  ITG  'itg' mask (queries see queries; text sees every query and earlier
       text); the first text token is replaced by a decoder start id and each
       position predicts the next token; padding masked; label smoothing 0.1
       (LAVIS `BertLMHeadModel`).
  loss = ITC + ITM + ITG.

Text convention. BLIP-2's BERT tokenizer starts every caption with [CLS]
(the ITC/ITM feature) and ITG overwrites it with a separate [DEC] token. Our
sentencepiece vocabulary has neither: captions should start with bos (id 2,
`add_bos=True`), whose output feature is the [CLS] feature, and ITG writes
`dec_token_id` (default: bos again) into position 0. With the default the
same id plays both roles and only the attention mask tells the modes apart;
pass an otherwise unused id to get BLIP-2's separate decoder token.

Parameters and the hand-over to stage 2 (`MLLM` with fusion='qformer', whose
connector is `QFormerConnector` = `qformer` + `language_projection`):

  QFormerPretrainModel          MLLM
  vision/...                    vision/...  (same tree when vision_cfg and
                                feature_layer equal the MLLM's; frozen in both)
  qformer/...                   connector/qformer/...  (identical tree, text
                                path included: the MLLM builds it too when
                                vocab_size > 0 and ignores it)
  heads/...                     dropped (ITC projections, ITM head, temp, LM
                                head are stage-1 only)
  (none)                        connector/language_projection: new, trained
                                in stage 2
  (none)                        llm/...: the frozen LM

`to_global` maps stage-1 parameter paths to these global (MLLM) names for
the recipe's hand-over store (`heads` go to `qformer_heads/...`, which no
MLLM parameter takes); `qformer_to_mllm_params` does the same copy on two
parameter trees. The trainer freezes `vision`;
`qformer_losses` also stops the gradient at the vision features by default
(BLIP-2 keeps the ViT frozen), which skips the ViT backward pass.
"""
from __future__ import annotations

import functools
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax.models.qformer import QFormer, QFormerConfig, QFormerPretrainHeads
from mmjax.models.vision import VisionConfig, VisionEncoder
from mmjax.train import groups

BOS_ID = 2  # mmjax.data.tokenizer.BOS_ID; the default ITG start token.
LABEL_SMOOTHING = 0.1  # LAVIS, for ITC and ITG (not ITM).

# Stage-1 path ('qformer/layer_0/...') -> global store path (the MLLM's).
to_global = groups.prefix_mapper({"vision": "vision",
                                  "qformer": "connector/qformer",
                                  "heads": "qformer_heads"})


class QFormerPretrainModel(nn.Module):
  """Vision tower (`vision`) + Q-Former (`qformer`) + stage-1 heads (`heads`).

  Attributes:
    vision_cfg: the (frozen) vision tower.
    qformer_cfg: the Q-Former; vocab_size > 0 (stage 1 needs text) and
      vision_width == vision_cfg.width.
    feature_layer: the ViT hidden state fed to the Q-Former, as
      `MLLMConfig.feature_layer` (-2: second-to-last, BLIP-2 also drops the
      ViT's last layer; None: the final post-LN output). Keep it equal to the
      MLLM's so the vision trees and features match in stage 2.
  """
  vision_cfg: VisionConfig
  qformer_cfg: QFormerConfig
  feature_layer: int | None = -2

  def setup(self):
    if not self.qformer_cfg.vocab_size:
      raise ValueError("QFormerPretrainModel needs the Q-Former text path: "
                       "set QFormerConfig.vocab_size > 0.")
    if self.qformer_cfg.vision_width != self.vision_cfg.width:
      raise ValueError(
          f"QFormerConfig.vision_width={self.qformer_cfg.vision_width} must "
          f"equal the vision tower width {self.vision_cfg.width}.")
    self.vision = VisionEncoder(self.vision_cfg)
    self.qformer = QFormer(self.qformer_cfg)
    self.heads = QFormerPretrainHeads(self.qformer_cfg)

  def encode_images(self, images: jax.Array) -> jax.Array:
    """images: f32[B, H, W, C] -> vision features f32[B, N, Dv]."""
    return self.vision(images, feature_layer=self.feature_layer).tokens

  def itc_features(self, vision: jax.Array, text_tokens: jax.Array,
                   text_pad_mask: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Uni-modal ('itc' mask) pass.

    Args:
      vision: f32[B, N, Dv]; text_tokens: int[B, Lt]; text_pad_mask:
        bool[B, Lt] (True = real token) or None.

    Returns:
      (image_feats f32[B, Q, P], text_feat f32[B, P], both L2-normalised;
      temp, the learnable temperature scalar).
    """
    out = self.qformer(vision, text_tokens, mode="itc",
                       text_pad_mask=text_pad_mask)
    image_feats, text_feat = self.heads.itc_features(out["query"],
                                                     out["text"])
    return image_feats, text_feat, self.heads.temp

  def itm_logits(self, vision: jax.Array, text_tokens: jax.Array,
                 text_pad_mask: jax.Array | None = None) -> jax.Array:
    """Bidirectional ('itm') pass -> match logits f32[B, 2] (1 = match)."""
    out = self.qformer(vision, text_tokens, mode="itm",
                       text_pad_mask=text_pad_mask)
    return self.heads.itm_logits(out["query"])

  def lm_logits(self, vision: jax.Array, text_tokens: jax.Array,
                text_pad_mask: jax.Array | None = None) -> jax.Array:
    """Causal ('itg') pass -> f32[B, Lt, V]; position i predicts token i+1."""
    out = self.qformer(vision, text_tokens, mode="itg",
                       text_pad_mask=text_pad_mask)
    return self.heads.lm_logits(out["text"])

  def __call__(self, images: jax.Array, text_tokens: jax.Array,
               text_pad_mask: jax.Array | None = None
               ) -> dict[str, jax.Array]:
    """Runs every part once (use for `init`); returns the heads' outputs."""
    vision = self.encode_images(images)
    out = self.qformer(vision, text_tokens, mode="itm",
                       text_pad_mask=text_pad_mask)
    return self.heads(out["query"], out["text"])


def _smoothed_ce(logits: jax.Array, labels: jax.Array,
                 label_smoothing: float) -> jax.Array:
  """Cross-entropy, torch-style label smoothing: [..., K], [...] -> [...]."""
  k = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, k), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def itc_loss(image_feats: jax.Array, text_feat: jax.Array, temp: jax.Array,
             label_smoothing: float = LABEL_SMOOTHING
             ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
  """BLIP-2 image-text contrastive loss on one device.

  Args:
    image_feats: f32[B, Q, P] normalised query features; row i pairs with
      text i.
    text_feat: f32[B, P] normalised text ([CLS]) features.
    temp: scalar temperature (LAVIS init 0.07, learnable, not clamped).
    label_smoothing: LAVIS uses 0.1.

  Returns:
    (loss, {'itc_loss', 'itc_i2t_accuracy', 'itc_t2i_accuracy',
    'itc_accuracy', 'temp'}, sim_i2t f32[B, B]) with
    sim_i2t[i, j] = max_q image_feats[i, q] . text_feat[j] / temp; the
    text-to-image similarity is its transpose.
  """
  chex.assert_rank(image_feats, 3)
  chex.assert_equal_shape_prefix((image_feats, text_feat), 1)
  sim = jnp.einsum("iqp,jp->ijq", image_feats.astype(jnp.float32),
                   text_feat.astype(jnp.float32))
  sim_i2t = jnp.max(sim, axis=-1) / temp
  target = jnp.arange(sim_i2t.shape[0])
  i2t = jnp.mean(_smoothed_ce(sim_i2t, target, label_smoothing))
  t2i = jnp.mean(_smoothed_ce(sim_i2t.T, target, label_smoothing))
  loss = 0.5 * (i2t + t2i)
  acc_i2t = jnp.mean((jnp.argmax(sim_i2t, 1) == target).astype(jnp.float32))
  acc_t2i = jnp.mean((jnp.argmax(sim_i2t, 0) == target).astype(jnp.float32))
  return loss, {"itc_loss": loss, "itc_i2t_accuracy": acc_i2t,
                "itc_t2i_accuracy": acc_t2i,
                "itc_accuracy": 0.5 * (acc_i2t + acc_t2i),
                "temp": jnp.asarray(temp, jnp.float32)}, sim_i2t


def sample_hard_negatives(sim_i2t: jax.Array, rng: jax.Array
                          ) -> tuple[jax.Array, jax.Array]:
  """Draws one hard negative per image and per text (no gradient).

  Each row samples from softmax(similarities) + 1e-4 with its own positive
  (the diagonal) given probability 0, as LAVIS does.

  Args:
    sim_i2t: f32[B, B] image-to-text similarities (B >= 2).
    rng: PRNG key.

  Returns:
    (neg_text int32[B]: a text index for each image, neg_image int32[B]: an
    image index for each text); never the positive index.
  """
  sim = jax.lax.stop_gradient(sim_i2t)
  n = sim.shape[0]
  if n < 2:
    raise ValueError(f"ITM hard negatives need a batch of at least 2 pairs; "
                     f"got {n}.")
  eye = jnp.eye(n, dtype=bool)
  def logits(s):
    return jnp.where(eye, -jnp.inf, jnp.log(jax.nn.softmax(s, axis=1) + 1e-4))
  k_text, k_image = jax.random.split(rng)
  neg_text = jax.random.categorical(k_text, logits(sim), axis=-1)
  neg_image = jax.random.categorical(k_image, logits(sim.T), axis=-1)
  return neg_text.astype(jnp.int32), neg_image.astype(jnp.int32)


def itm_loss(logits: jax.Array, n_pos: int
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """logits: f32[3B, 2] for (positives, neg images, neg texts), n_pos = B."""
  labels = (jnp.arange(logits.shape[0]) < n_pos).astype(jnp.int32)
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels))
  acc = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  return loss, {"itm_loss": loss, "itm_accuracy": acc}


def itg_loss(lm_logits: jax.Array, text_tokens: jax.Array,
             text_pad_mask: jax.Array,
             label_smoothing: float = LABEL_SMOOTHING
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Next-token loss: lm_logits[:, i] predicts text_tokens[:, i + 1].

  Args:
    lm_logits: f32[B, Lt, V] from the 'itg' pass.
    text_tokens: int[B, Lt] the original caption (targets; position 0, the
      overwritten start token, is never a target).
    text_pad_mask: bool[B, Lt], True = real token; padded targets don't count.
    label_smoothing: LAVIS uses 0.1.

  Returns:
    (mean over real target tokens, {'itg_loss', 'itg_accuracy'}).
  """
  logits, targets = lm_logits[:, :-1], text_tokens[:, 1:]
  mask = text_pad_mask[:, 1:].astype(jnp.float32)
  n = jnp.maximum(mask.sum(), 1.0)
  loss = jnp.sum(_smoothed_ce(logits, targets, label_smoothing) * mask) / n
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return loss, {"itg_loss": loss, "itg_accuracy": jnp.sum(correct * mask) / n}


def qformer_losses(model: QFormerPretrainModel, params: Any,
                   images: jax.Array, text_tokens: jax.Array,
                   text_pad_mask: jax.Array | None, rng: jax.Array, *,
                   label_smoothing: float = LABEL_SMOOTHING,
                   dec_token_id: int = BOS_ID, freeze_vision: bool = True
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """BLIP-2 stage-1 loss ITC + ITM + ITG (see the module docstring).

  Args:
    model: the QFormerPretrainModel.
    params: its 'params' collection ({'vision', 'qformer', 'heads'}).
    images: f32[B, H, W, C], image i captioned by text i (B >= 2).
    text_tokens: int[B, Lt], each caption starting with bos (the [CLS]).
    text_pad_mask: bool[B, Lt], True = real token; None = no padding.
    rng: PRNG key for the ITM hard-negative draws.
    label_smoothing: for ITC and ITG (LAVIS: 0.1; 0 = plain cross-entropy).
    dec_token_id: written into text position 0 for ITG (BLIP-2's [DEC]).
    freeze_vision: stop the gradient at the vision features.

  Returns:
    (loss, {'loss', 'itc_loss', 'itm_loss', 'itg_loss', 'itc_accuracy',
    'itc_i2t_accuracy', 'itc_t2i_accuracy', 'itm_accuracy', 'itg_accuracy',
    'temp'}).
  """
  chex.assert_rank(images, 4)
  chex.assert_rank(text_tokens, 2)
  b = images.shape[0]
  if text_tokens.shape[0] != b:
    raise ValueError(f"{b} images but {text_tokens.shape[0]} captions; "
                     "stage 1 needs one caption per image.")
  if text_pad_mask is None:
    text_pad_mask = jnp.ones(text_tokens.shape, bool)
  text_pad_mask = text_pad_mask.astype(bool)
  apply = functools.partial(model.apply, {"params": params})
  vision = apply(images, method=QFormerPretrainModel.encode_images)
  if freeze_vision:
    vision = jax.lax.stop_gradient(vision)

  image_feats, text_feat, temp = apply(
      vision, text_tokens, text_pad_mask,
      method=QFormerPretrainModel.itc_features)
  itc, metrics, sim_i2t = itc_loss(image_feats, text_feat, temp,
                                   label_smoothing)

  neg_text, neg_image = sample_hard_negatives(sim_i2t, rng)
  # Pairs: (image i, text i), (hard-negative image, text i),
  # (image i, hard-negative text), as LAVIS orders them.
  itm_vision = jnp.concatenate([vision, vision[neg_image], vision])
  itm_text = jnp.concatenate([text_tokens, text_tokens,
                              text_tokens[neg_text]])
  itm_pad = jnp.concatenate([text_pad_mask, text_pad_mask,
                             text_pad_mask[neg_text]])
  itm_logits = apply(itm_vision, itm_text, itm_pad,
                     method=QFormerPretrainModel.itm_logits)
  itm, itm_metrics = itm_loss(itm_logits, b)

  decoder_tokens = text_tokens.at[:, 0].set(dec_token_id)
  lm_logits = apply(vision, decoder_tokens, text_pad_mask,
                    method=QFormerPretrainModel.lm_logits)
  itg, itg_metrics = itg_loss(lm_logits, text_tokens, text_pad_mask,
                              label_smoothing)

  loss = itc + itm + itg
  metrics.update(itm_metrics, **itg_metrics, loss=loss)
  return loss, metrics


def qformer_to_mllm_params(pretrain_params: Any, mllm_params: Any, *,
                           copy_vision: bool = False) -> dict[str, Any]:
  """Stage-1 weights into an MLLM (fusion='qformer') parameter tree.

  `pretrain_params['qformer']` replaces `mllm_params['connector']['qformer']`
  (the trees must match exactly); `heads` are dropped;
  `connector/language_projection` and `llm` keep their values. With
  copy_vision, `vision` is copied too (only if the trees match).

  Returns:
    A new MLLM params dict (inputs are not modified).
  """
  def check(a, b, what):
    sa = jax.tree_util.tree_structure(a)
    sb = jax.tree_util.tree_structure(b)
    shapes_a = [jnp.shape(x) for x in jax.tree.leaves(a)]
    shapes_b = [jnp.shape(x) for x in jax.tree.leaves(b)]
    if sa != sb or shapes_a != shapes_b:
      raise ValueError(f"{what}: the stage-1 and MLLM trees differ; build "
                       "both from the same QFormerConfig/VisionConfig and "
                       "feature_layer.")
  connector = dict(mllm_params["connector"])
  check(pretrain_params["qformer"], connector["qformer"], "qformer")
  connector["qformer"] = pretrain_params["qformer"]
  out = dict(mllm_params, connector=connector)
  if copy_vision:
    check(pretrain_params["vision"], mllm_params["vision"], "vision")
    out["vision"] = pretrain_params["vision"]
  return out
