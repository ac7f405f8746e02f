"""Tiny models, batches and weights for tests, docs snippets and notebooks.

  from mmjax import testing
  cfg = testing.tiny_mllm_config("resampler", "mrope")   # an MLLMConfig
  model = MLLM(cfg)
  batch = testing.dummy_batch(cfg)                        # pipeline-shaped
  params = testing.random_params(model, scale=3.0)        # no init compile
  logits, _ = model.apply({"params": params}, **testing.model_inputs(batch))

The tiny models are the recipes' own at size=tiny (configs/shapes.py,
configs/lm.py, whose dims come from mmjax/models/sizes.py), so a test and a
tiny training run build the same model; a source checkout is needed (the
recipes live in configs/, beside the package). Overrides change single
fields: tiny_mllm_config(vision=dict(depth=1)) keeps every other field.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax import config as config_lib
from mmjax.data import tokenizer
from mmjax.data.tokenizer import IMAGE_ID
from mmjax.models import build
from mmjax.models import layout
# Re-exported: tests parametrize over every tiny model.
from mmjax.models.choices import FUSIONS, POSITIONS  # pylint: disable=unused-import
from mmjax.models.decoder import DecoderConfig, DecoderLM
from mmjax.models.mllm import MLLM, MLLMConfig, mllm_config_from_dict
from mmjax.models.text_tower import TwoTower

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES_RECIPE = os.path.join(REPO, "configs", "shapes.py")
LM_RECIPE = os.path.join(REPO, "configs", "lm.py")
# Ids below this are the tokenizer's fixed and special pieces (pad, bos,
# <image>, chat markers): random text avoids them, as real text would.
FIRST_TEXT_ID = IMAGE_ID + len(tokenizer.USER_DEFINED_SYMBOLS)
# The keys of a batch that MLLM.__call__ takes.
MODEL_INPUT_KEYS = ("tokens", "positions", "images", "image_mask",
                    "image_token_mask", "media_locations")


def tiny_recipe(fusion: str = "projection", positions: str = "rope", *,
                steps: int = 0, batch: int = 0) -> ml_collections.ConfigDict:
  """configs/shapes.py at size=tiny.

  Args:
    fusion: one of FUSIONS.
    positions: one of POSITIONS.
    steps: caps every stage at this many steps (0 = the recipe's own).
    batch: global batch size (0 = the tiny size's default).
  """
  return config_lib.load_config(
      f"{SHAPES_RECIPE}:size=tiny,fusion={fusion},positions={positions},"
      f"steps={steps},batch={batch}")


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any]
            ) -> dict[str, Any]:
  """base with overrides; a dict override of a dict field merges into it."""
  out = dict(base)
  for key, value in overrides.items():
    if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
      out[key] = _merged(out[key], value)
    else:
      out[key] = value
  return out


def tiny_mllm_config(fusion: str = "projection", positions: str = "rope",
                     **overrides: Any) -> MLLMConfig:
  """The tiny shapes model (`tiny_recipe(fusion, positions).model`).

  Args:
    fusion: one of FUSIONS.
    positions: one of POSITIONS.
    **overrides: MLLMConfig fields; a dict for a nested block (lm, vision,
      resampler, qformer) replaces only the fields it names, e.g.
      vision=dict(depth=1), image_attention="bidirectional".

  Raises:
    ValueError: an override names a field the config does not have.
  """
  model = tiny_recipe(fusion, positions).model.to_dict()
  return mllm_config_from_dict(_merged(model, overrides))


def tiny_decoder_config(**overrides: Any) -> DecoderConfig:
  """The tiny text-only LM (configs/lm.py:tiny's model) with fields
  replaced by overrides."""
  model = config_lib.load_config(f"{LM_RECIPE}:size=tiny").model.to_dict()
  return DecoderConfig.from_dict({**model, **overrides})


def tiny_two_tower(**text_overrides: Any) -> TwoTower:
  """The tiny contrastive (SigLIP) model the recipe's `siglip` stage trains:
  the tiny vision tower with a MAP head, and the recipe's text tower with
  fields replaced by text_overrides (e.g. max_len=16)."""
  config = tiny_recipe()
  config.model.text.update(text_overrides)
  return build.two_tower(config, build.mllm_config(config))


def _text(rng: np.random.Generator, vocab_size: int, n: int) -> list[int]:
  return rng.integers(FIRST_TEXT_ID, vocab_size, n).tolist()


def dummy_batch(cfg: MLLMConfig, batch_size: int = 2, *, text_len: int = 8,
                n_images: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
  """A random batch laid out as the data pipeline lays one out.

  Every row is 2 prompt tokens, then n_images media items (each followed by
  2 text tokens), then an answer of text_len tokens, which the loss covers.
  All rows have the same layout, so there is no padding. Media items have
  cfg.frames frames at the model's image side; V2PE uses the fixed
  inference stride.

  Args:
    cfg: the model config.
    batch_size: B, rows.
    text_len: answer tokens per row.
    n_images: M, media items per row.
    seed: seeds tokens and pixels.

  Returns:
    tokens, targets int32[B, L]; loss_mask f32[B, L]; positions int32[B, L]
    (rope) | int32[3, B, L] (mrope) | f32[B, L] (v2pe); image_token_mask,
    media_locations bool[B, L]; images f32[B, M, S, S, C] (or
    [B, M, F, S, S, C] when cfg.frames > 1); image_mask bool[B, M];
    valid bool[B]. numpy arrays, as the pipeline yields them.
  """
  rng = np.random.default_rng(seed)
  vocab = cfg.lm.vocab_size
  media = layout.Media(cfg.side, cfg.side, cfg.frames)
  rows = []
  for _ in range(batch_size):
    pieces = [_text(rng, vocab, 2)]
    for _ in range(n_images):
      pieces += [media, _text(rng, vocab, 2)]
    pieces.append(_text(rng, vocab, text_len))
    rows.append(layout.assemble(cfg, pieces, IMAGE_ID))
  batch = {k: np.stack([r[k] for r in rows])
           for k in ("tokens", "image_token_mask", "media_locations")}
  # M-RoPE ids are [3, L] per row: rows stack on the second-to-last axis.
  batch["positions"] = np.stack([r["positions"] for r in rows], axis=-2)
  tokens = batch["tokens"]
  length = tokens.shape[1]
  batch["targets"] = np.concatenate(
      [tokens[:, 1:], np.full((batch_size, 1), tokenizer.PAD_ID)],
      axis=1).astype(np.int32)
  # Slot t predicts token t + 1: the answer's tokens are predicted from the
  # slot before the answer up to the second-to-last slot.
  loss_mask = np.zeros(tokens.shape, np.float32)
  loss_mask[:, length - text_len - 1:length - 1] = 1.0
  batch["loss_mask"] = loss_mask
  frames = (cfg.frames,) if cfg.frames > 1 else ()
  batch["images"] = rng.uniform(
      -1, 1, (batch_size, n_images) + frames +
      (cfg.side, cfg.side, cfg.channels)).astype(np.float32)
  batch["image_mask"] = np.ones((batch_size, n_images), bool)
  batch["valid"] = np.ones((batch_size,), bool)
  return batch


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
  """The entries of a batch that MLLM.__call__ takes (as keywords)."""
  return {k: batch[k] for k in MODEL_INPUT_KEYS}


def abstract_params(model: MLLM | DecoderLM | TwoTower) -> Any:
  """The model's unboxed parameter tree as jax.ShapeDtypeStructs (init is
  traced, not compiled)."""
  if isinstance(model, MLLM):
    init = build.mllm_init(model, IMAGE_ID)
  elif isinstance(model, DecoderLM):
    init = build.decoder_init(model)
  elif isinstance(model, TwoTower):
    side = model.vision.image_size
    images = jnp.zeros((1, side, side, model.vision.channels))
    text = jnp.zeros((1, model.text.max_len), jnp.int32)
    init = lambda rng: model.init(rng, images, text)["params"]
  else:
    raise TypeError(f"no init inputs known for {type(model).__name__}; use "
                    "random_params_like on its abstract parameters")
  return nn.unbox(jax.eval_shape(init, jax.random.key(0)))


def random_params_like(abstract: Any, seed: int = 0) -> Any:
  """Random parameters for an abstract tree, without compiling init (slow
  on CPU).

  Norm scales are 1, biases and cross-attention gates ('alpha') 0, as at
  init; every other leaf ~ N(0, 1 / fan_in), fan_in its first dimension
  (1 for vectors). Leaves are drawn in tree order from one generator, so
  the same tree and seed give the same numbers.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "alpha" in name or name.endswith("['bias']"):
      return jnp.zeros(leaf.shape, leaf.dtype)
    if name.endswith("['scale']"):
      return jnp.ones(leaf.shape, leaf.dtype)
    fan_in = leaf.shape[0] if leaf.ndim > 1 else 1
    return jnp.asarray(rng.normal(0, fan_in ** -0.5, leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, abstract)


def random_params(model: MLLM | DecoderLM | TwoTower, seed: int = 0, *,
                  scale: float = 1.0, gate: float | None = None) -> Any:
  """Random parameters of a model (random_params_like of its tree).

  At N(0, 1 / fan_in) attention is nearly uniform and greedy tokens hardly
  depend on positions; scale > 1 makes it peaky, so tests that compare
  token choices see the effect of what they vary.

  Args:
    model: an MLLM, DecoderLM or TwoTower.
    seed: seeds the draws.
    scale: multiplies every weight except norm scales and gates (biases
      stay 0).
    gate: value of the cross-attention gates ('alpha'); None keeps them at
      0, where gated blocks leave the LM's output unchanged.
  """
  params = random_params_like(abstract_params(model), seed)

  def adjust(path, x):
    name = jax.tree_util.keystr(path)
    if "alpha" in name:
      return x if gate is None else jnp.full_like(x, gate)
    if name.endswith("['scale']") or scale == 1.0:
      return x
    return x * scale
  return jax.tree_util.tree_map_with_path(adjust, params)
