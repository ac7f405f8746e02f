"""The assembled MLLM: every fusion x position scheme, masks and errors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common
from mmjax import testing
from mmjax.data.tokenizer import IMAGE_ID
from mmjax.models import layout
from mmjax.models.decoder import DecoderLM
from mmjax.models.mllm import MLLM, FUSIONS, POSITIONS
from mmjax.models.mllm import image_block_ids, scatter_visual


@functools.lru_cache(maxsize=None)
def _cfg(fusion, positions):
  return testing.tiny_mllm_config(fusion, positions)


def _batch(cfg, seed=0):
  """Two examples: one image, and two images with text between."""
  rng = np.random.default_rng(seed)
  text = lambda n: list(rng.integers(10, 500, n))
  img = layout.Media(64, 64)
  examples = [
      layout.assemble(cfg, [text(3), img, text(5)], IMAGE_ID, v2pe_stride=64),
      layout.assemble(cfg, [text(2), img, text(2), img, text(3)], IMAGE_ID,
                      v2pe_stride=64)]
  length = max(len(e["tokens"]) for e in examples)
  def pad(x, value=0):
    width = [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])]
    return np.pad(x, width, constant_values=value)
  batch = {k: np.stack([pad(e[k]) for e in examples])
           for k in ("tokens", "image_token_mask", "media_locations")}
  pos = np.stack([pad(e["positions"]) for e in examples], axis=-2)
  batch["positions"] = pos
  batch["images"] = rng.uniform(-1, 1, (2, 2, 64, 64, 3)).astype(np.float32)
  batch["image_mask"] = np.array([[True, False], [True, True]])
  return {k: jnp.asarray(v) for k, v in batch.items()}


def _apply(model, params, batch, **overrides):
  b = dict(batch, **overrides)
  return model.apply({"params": params}, b["tokens"], b["positions"],
                     images=b["images"], image_mask=b["image_mask"],
                     image_token_mask=b["image_token_mask"],
                     media_locations=b["media_locations"])[0]


# Eager applies compile every op alone (~1,000 XLA programs in this file,
# most of its time on CPU): tests that only read the logits jit them.
@functools.partial(jax.jit, static_argnums=0)
def _jit_apply(model, params, batch):
  return _apply(model, params, batch)


@functools.lru_cache(maxsize=None)
def _init(fusion, positions):
  cfg = _cfg(fusion, positions)
  model = MLLM(cfg)
  return model, testing.random_params(model, seed=0), _batch(cfg)


def _open_gates(params, value=0.5):
  """Cross-attention gates start at 0; open them so media affects logits."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.full_like(x, value)
      if "alpha" in jax.tree_util.keystr(path) else x, params)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_forward_backward_reaches_connector(fusion, positions):
  model, params, batch = _init(fusion, positions)
  assert set(params) == ({"connector", "llm"} if fusion == "one_backbone"
                         else {"vision", "connector", "llm"})
  if fusion == "cross_attention":
    params = _open_gates(params)

  def loss(p):
    logits = _apply(model, p, batch)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 7])

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert np.isfinite(value)
  norms = {k: float(jnp.sqrt(sum(jnp.sum(g ** 2)
                                 for g in jax.tree.leaves(v))))
           for k, v in grads.items()}
  assert all(n > 0 for n in norms.values()), norms


@pytest.mark.parametrize("fusion", FUSIONS)
def test_different_images_give_different_logits(fusion):
  model, params, batch = _init(fusion, "rope")
  if fusion == "cross_attention":
    params = _open_gates(params)
  a = _jit_apply(model, params, batch)
  b = _jit_apply(model, params,
                 dict(batch, images=batch["images"][:, ::-1]))
  text_only = ~batch["image_token_mask"]
  diff = jnp.abs(a - b).max(-1)
  assert float(jnp.where(text_only, diff, 0).max()) > 1e-4


def test_gated_cross_attention_at_init_equals_text_only_lm():
  model, params, batch = _init("cross_attention", "rope")
  with_media = _jit_apply(model, params, batch)
  lm = DecoderLM(_cfg("cross_attention", "rope").lm)
  text_only, _ = jax.jit(lm.apply)({"params": params["llm"]},
                                   batch["tokens"], batch["positions"])
  np.testing.assert_array_equal(np.asarray(with_media), np.asarray(text_only))


def test_cross_attention_media_masking():
  """Tokens before the first image are untouched; later ones see it."""
  model, params, batch = _init("cross_attention", "rope")
  params = _open_gates(params)
  a = _jit_apply(model, params, batch)
  b = _jit_apply(model, params, dict(batch, images=batch["images"] * 0.0))
  first = int(np.argmax(np.asarray(batch["media_locations"][0])))
  diff = np.abs(np.asarray(a - b)).max(-1)[0]
  assert diff[:first].max() == 0.0
  assert diff[first:].min() > 0.0


def test_scatter_and_block_ids():
  text = jnp.zeros((1, 6, 2))
  visual = jnp.arange(1, 7, dtype=jnp.float32).reshape(1, 3, 2)
  mask = jnp.array([[False, True, True, False, True, False]])
  out = scatter_visual(text, visual, mask)
  np.testing.assert_array_equal(out[0, :, 0], [0, 1, 3, 0, 5, 0])
  np.testing.assert_array_equal(image_block_ids(mask)[0], [0, 1, 1, 0, 2, 0])


def test_bidirectional_image_blocks():
  """An early image token sees a later one of the same image only when
  image_attention='bidirectional'."""
  cfg = _cfg("projection", "rope")
  model, params, batch = _init("projection", "rope")
  bidir = MLLM(cfg.__class__(**{**cfg.__dict__,
                                "image_attention": "bidirectional"}))
  first = int(np.argmax(np.asarray(batch["image_token_mask"][0])))
  visual = jax.jit(functools.partial(model.apply, method=MLLM.encode_images))(
      {"params": params}, batch["images"])
  changed = visual.at[0, 0, -1].set(0.0)  # only the image's last token
  @functools.partial(jax.jit, static_argnums=0)
  def first_token_logits(m, v):
    return m.apply({"params": params}, batch["tokens"], batch["positions"],
                   visual=v, image_mask=batch["image_mask"],
                   image_token_mask=batch["image_token_mask"])[0][0, first]
  np.testing.assert_array_equal(first_token_logits(model, visual),
                                first_token_logits(model, changed))
  assert not np.allclose(first_token_logits(bidir, visual),
                         first_token_logits(bidir, changed), atol=1e-4)


def test_placeholder_arithmetic():
  assert layout.placeholder_tokens(_cfg("projection", "rope"), 64, 64) == 64
  assert layout.placeholder_tokens(_cfg("resampler", "rope"), 64, 64) == 16
  assert layout.placeholder_tokens(_cfg("qformer", "rope"), 64, 64) == 16
  assert layout.placeholder_tokens(_cfg("cross_attention", "rope"), 64,
                                   64) == 1
  assert layout.placeholder_tokens(_cfg("one_backbone", "rope"), 48, 64) == 6 * 9
  assert layout.media_grid(_cfg("projection", "mrope"), 48, 64, 2) == (2, 6, 8)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_layout_token_count_matches_the_model(fusion):
  """The placeholder arithmetic agrees with what encode_images emits."""
  model, params, batch = _init(fusion, "rope")
  visual = jax.eval_shape(lambda p, x: model.apply(
      {"params": p}, x, method=MLLM.encode_images), params, batch["images"])
  cfg = _cfg(fusion, "rope")
  if fusion == "cross_attention":
    assert visual.shape[2] == cfg.resampler.n_latents
  else:
    assert visual.shape[2] == layout.visual_tokens(cfg, 64, 64)
    n = int(np.asarray(batch["image_token_mask"][1]).sum())
    assert n == 2 * visual.shape[2]


def test_bad_image_size_and_placeholder_count():
  cfg = _cfg("projection", "rope")
  with pytest.raises(layout.ImageSizeError, match="60x64 px.*multiple of 8"):
    layout.placeholder_tokens(cfg, 60, 64)
  with pytest.raises(layout.PlaceholderMismatchError, match="2 image"):
    layout.check_placeholders([64], [(64, 64, 1)] * 2, cfg, "rec7")
  with pytest.raises(layout.PlaceholderMismatchError,
                     match="rec7: image 0 .* needs 64 .* has 60"):
    layout.check_placeholders([60], [(64, 64, 1)], cfg, "rec7")


def test_mrope_layout_positions():
  cfg = _cfg("projection", "mrope")
  ex = layout.assemble(cfg, [[9, 9], layout.Media(16, 24), [9]], IMAGE_ID)
  # 2 text, a 2x3 patch grid (16x24 px, patch 8), 1 text.
  np.testing.assert_array_equal(ex["positions"], [
      [0, 1, 2, 2, 2, 2, 2, 2, 5],
      [0, 1, 2, 2, 2, 3, 3, 3, 5],
      [0, 1, 2, 3, 4, 2, 3, 4, 5]])


@pytest.mark.parametrize("fusion,positions", [
    ("resampler", "rope"), ("cross_attention", "rope"),
    ("projection", "mrope")])
def test_video_frames(fusion, positions):
  """Two frames per media item: the second frame matters, and M-RoPE gives
  the frames different temporal ids."""
  cfg = _cfg(fusion, positions)
  model, params, _ = _init(fusion, positions)
  if fusion == "cross_attention":
    params = _open_gates(params)
  ex = layout.assemble(cfg, [[11, 12], layout.Media(64, 64, frames=2),
                             [13, 14]], IMAGE_ID)
  rng = np.random.default_rng(1)
  video = jnp.asarray(rng.uniform(-1, 1, (1, 1, 2, 64, 64, 3)), jnp.float32)
  @jax.jit
  def logits(v):
    return model.apply(
        {"params": params}, jnp.asarray(ex["tokens"])[None],
        jnp.asarray(ex["positions"])[..., None, :], images=v,
        image_mask=jnp.ones((1, 1), bool),
        image_token_mask=jnp.asarray(ex["image_token_mask"])[None],
        media_locations=jnp.asarray(ex["media_locations"])[None])[0]
  a, b = logits(video), logits(video.at[:, :, 1].set(0.0))
  assert float(jnp.abs(a - b)[0, -1].max()) > 1e-4
  if positions == "mrope":
    t_ids = ex["positions"][0][ex["image_token_mask"]]
    assert sorted(set(t_ids.tolist())) == [2, 3]


def test_bfloat16_model_runs_every_matmul_in_bfloat16():
  """lm.dtype / vision.dtype reach every module, the projector included."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  model, params, batch = _init("projection", "rope")
  cfg = model.cfg
  bf16 = dataclasses.replace(
      cfg, lm=dataclasses.replace(cfg.lm, dtype="bfloat16"),
      vision=dataclasses.replace(cfg.vision, dtype="bfloat16"))
  jaxpr = jax.make_jaxpr(functools.partial(_apply, MLLM(bf16)))(params, batch)
  # Every matmul, inside custom_vjp calls too (models/linear.py).
  operand_dtypes = [tuple(str(v.aval.dtype) for v in eqn.invars)
                    for eqn, _ in common.dot_generals(jaxpr.jaxpr)]
  assert len(operand_dtypes) > 10
  assert all(d == ("bfloat16", "bfloat16") for d in operand_dtypes), (
      operand_dtypes)
