"""mmjax.testing: every tiny model builds, inits and runs on dummy_batch."""
import functools

import jax
import numpy as np
import pytest

from mmjax import testing
from mmjax.models import layout
from mmjax.models import sizes
from mmjax.models.decoder import DecoderLM
from mmjax.models.mllm import MLLM

# Compiled and run: each fusion and each position scheme once (compiling
# all 15 pairs costs ~40 s of CPU); the other pairs are traced.
RUN_PAIRS = [("projection", "rope"), ("resampler", "mrope"),
             ("qformer", "v2pe"), ("cross_attention", "mrope"),
             ("one_backbone", "v2pe")]


@functools.lru_cache(maxsize=None)
def _params(fusion):
  """Random weights of a fusion's tiny model (the tree does not depend on
  the position scheme); cross-attention gates open so images matter."""
  return testing.random_params(MLLM(testing.tiny_mllm_config(fusion)),
                               gate=0.5)


def _logits(model, params, batch):
  return model.apply({"params": params}, **testing.model_inputs(batch))[0]


def test_run_pairs_cover_every_fusion_and_scheme():
  assert {f for f, _ in RUN_PAIRS} == set(testing.FUSIONS)
  assert {p for _, p in RUN_PAIRS} == set(testing.POSITIONS)


def test_tiny_configs_take_their_dims_from_the_sizes_table():
  cfg = testing.tiny_mllm_config("resampler")
  vision, lm, conn = (sizes.vision("tiny"), sizes.lm("tiny"),
                      sizes.connector("tiny"))
  assert (cfg.vision.width, cfg.vision.depth, cfg.vision.patch_size) == (
      vision["width"], vision["depth"], vision["patch_size"])
  assert (cfg.lm.d_model, cfg.lm.n_layers, cfg.lm.mlp_dim) == (
      lm["d_model"], lm["n_layers"], lm["mlp_dim"])
  assert cfg.resampler.n_latents == conn["latents"]
  decoder = testing.tiny_decoder_config()
  assert (decoder.d_model, decoder.n_layers, decoder.n_kv_heads) == (
      lm["d_model"], lm["n_layers"], lm["n_kv_heads"])
  assert testing.tiny_decoder_config(n_layers=1).n_layers == 1


def test_overrides_replace_only_the_fields_they_name():
  base = testing.tiny_mllm_config("cross_attention", "mrope")
  cfg = testing.tiny_mllm_config("cross_attention", "mrope",
                                 vision=dict(depth=1), lm=dict(n_layers=4),
                                 image_attention="bidirectional")
  assert cfg.vision.depth == 1 and cfg.vision.width == base.vision.width
  assert cfg.lm.n_layers == 4 and cfg.lm.mrope_sections == (
      base.lm.mrope_sections)
  assert cfg.image_attention == "bidirectional"
  with pytest.raises(ValueError, match="widht"):
    testing.tiny_mllm_config(vision=dict(widht=3))
  two_tower = testing.tiny_two_tower(max_len=16)
  assert two_tower.text.max_len == 16 and two_tower.vision.pool == "map"


@pytest.mark.parametrize("positions", testing.POSITIONS)
@pytest.mark.parametrize("fusion", testing.FUSIONS)
def test_dummy_batch_follows_the_pipeline_contract(fusion, positions):
  cfg = testing.tiny_mllm_config(fusion, positions)
  batch = testing.dummy_batch(cfg, batch_size=3, text_len=5, n_images=2)
  b, length = batch["tokens"].shape
  assert b == 3 and batch["tokens"].dtype == np.int32
  want_positions = {"rope": ((3, length), np.int32),
                    "mrope": ((3, 3, length), np.int32),
                    "v2pe": ((3, length), np.float32)}[positions]
  assert (batch["positions"].shape, batch["positions"].dtype) == (
      want_positions)
  assert batch["images"].shape == (3, 2, 64, 64, 3)
  assert batch["image_mask"].all() and batch["valid"].all()
  per_image = layout.placeholder_tokens(cfg, 64, 64)
  slots = (batch["media_locations"] if fusion == "cross_attention"
           else batch["image_token_mask"])
  assert (slots.sum(1) == 2 * per_image).all()
  assert not (batch["image_token_mask"] & batch["media_locations"]).any()
  np.testing.assert_array_equal(batch["targets"][:, :-1],
                                batch["tokens"][:, 1:])
  # The loss covers the answer: the last 5 tokens, each predicted from the
  # slot before it.
  assert (batch["loss_mask"].sum(1) == 5).all()
  assert (batch["loss_mask"][:, -1] == 0).all()
  covered = batch["targets"][batch["loss_mask"] > 0]
  assert (covered >= testing.FIRST_TEXT_ID).all()


def test_dummy_batch_of_video():
  cfg = testing.tiny_mllm_config("projection", "mrope", frames=2)
  batch = testing.dummy_batch(cfg, batch_size=1)
  assert batch["images"].shape == (1, 1, 2, 64, 64, 3)
  assert batch["image_token_mask"].sum() == 2 * 64


@pytest.mark.parametrize("positions", testing.POSITIONS)
@pytest.mark.parametrize("fusion", testing.FUSIONS)
def test_every_pair_builds_inits_and_runs(fusion, positions):
  """Builds, inits (random weights) and runs a forward (RUN_PAIRS; the
  others are traced): logits [B, L, V], finite, and they see the images."""
  cfg = testing.tiny_mllm_config(fusion, positions)
  model = MLLM(cfg)
  batch = testing.dummy_batch(cfg)
  forward = functools.partial(_logits, model)
  want = batch["tokens"].shape + (cfg.lm.vocab_size,)
  if (fusion, positions) not in RUN_PAIRS:
    assert jax.eval_shape(forward, _params(fusion), batch).shape == want
    return
  forward = jax.jit(forward)
  a = np.asarray(forward(_params(fusion), batch))
  assert a.shape == want and np.isfinite(a).all()
  b = np.asarray(forward(_params(fusion),
                         dict(batch, images=-batch["images"])))
  answer = batch["loss_mask"] > 0
  assert np.abs(a - b)[answer].max() > 1e-4


def test_random_params_are_seeded_and_scaled():
  model = DecoderLM(testing.tiny_decoder_config())
  a, b = testing.random_params(model), testing.random_params(model)
  other = testing.random_params(model, seed=1)
  scaled = testing.random_params(model, scale=3.0)
  flat = lambda t: dict(jax.tree_util.tree_leaves_with_path(t))
  a, b, other, scaled = map(flat, (a, b, other, scaled))
  for path, x in a.items():
    name = jax.tree_util.keystr(path)
    np.testing.assert_array_equal(x, b[path])
    if name.endswith("['scale']"):
      assert (x == 1).all() and (scaled[path] == 1).all()
    else:
      assert not np.array_equal(x, other[path]), name
      np.testing.assert_allclose(scaled[path], 3.0 * x, rtol=1e-6)


def test_gates_stay_closed_unless_asked():
  model = MLLM(testing.tiny_mllm_config("cross_attention"))
  gates = lambda p: [x for path, x in jax.tree_util.tree_leaves_with_path(p)
                     if "alpha" in jax.tree_util.keystr(path)]
  closed, opened = gates(testing.random_params(model)), gates(_params(
      "cross_attention"))
  assert closed and all((g == 0).all() for g in closed)
  assert all((g == 0.5).all() for g in opened)
