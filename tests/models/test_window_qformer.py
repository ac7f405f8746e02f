"""SALMONN's window-level Q-Former (mmjax/models/window_qformer.py) and its
place among the audio connectors (`audio_projector='salmonn'`).

No Hugging Face reference exists for SALMONN; its Q-Former is BLIP-2's,
whose parity tests/hf covers. Here: one token per whole window, windows
independent of each other, the token count the layout reserves, and a
clip's padding changes nothing in the MLLM.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import testing
from mmjax.data.tokenizer import IMAGE_ID
from mmjax.models import (audio_fusion, build, layout, whisper,
                          window_qformer)
from mmjax.models.mllm import MLLM
from mmjax.models.qformer import QFormerConfig

W = window_qformer.SALMONN_WINDOW
AUDIO_ID = 7


def _connector(d=16):
  cfg = QFormerConfig(n_queries=1, width=d, depth=2, n_heads=2, mlp_dim=32,
                      cross_attention_freq=1, vision_width=d)
  return window_qformer.WindowQFormer(out_dim=24, window=W, cfg=cfg)


def test_one_token_per_whole_window_and_windows_are_independent():
  conn = _connector()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 3 * W + 5, 16)), jnp.float32)
  params = conn.init(jax.random.key(0), x)
  out, mask = conn.apply(params, x)
  assert out.shape == (2, 3, 24) and mask is None
  # Changing window 1's frames moves token 1 only; the dropped tail none.
  # (New values, not a rescale: ln_speech normalises each frame.)
  other = jnp.asarray(rng.normal(size=(2, W, 16)), jnp.float32)
  moved = x.at[:, W:2 * W].set(other).at[:, 3 * W:].set(9.0)
  out2, _ = conn.apply(params, moved)
  diff = np.abs(np.asarray(out2 - out)).max(axis=(0, 2))
  assert diff[1] > 1e-3 and diff[0] == 0 and diff[2] == 0
  # Each window alone gives its token.
  alone, _ = conn.apply(params, x[:, 2 * W:3 * W])
  np.testing.assert_allclose(alone[:, 0], out[:, 2], atol=1e-6)
  frame_mask = jnp.arange(x.shape[1])[None] < jnp.asarray([[3 * W], [W + 1]])
  _, token_mask = conn.apply(params, x, frame_mask)
  np.testing.assert_array_equal(token_mask, [[1, 1, 1], [1, 0, 0]])
  with pytest.raises(ValueError, match="no window"):
    conn.apply(params, x[:, :W - 1])


@pytest.fixture(scope="module")
def salmonn_mllm():
  cfg = dataclasses.replace(testing.tiny_mllm_config("projection", "rope"),
                            audio=whisper.whisper_variant("test"),
                            audio_projector="salmonn")
  return MLLM(cfg)


def test_salmonn_in_the_mllm_pads_nothing_into_its_tokens(salmonn_mllm):
  model = salmonn_mllm
  frames = 151  # 76 encoder outputs: 4 windows of 17, 8 outputs dropped
  assert layout.audio_tokens(model.cfg, frames) == 76 // W == 4
  seq = layout.assemble(model.cfg, [[11, 12], layout.Audio(frames), [13]],
                        IMAGE_ID, audio_token_id=AUDIO_ID)
  assert seq["audio_token_mask"].sum() == 4
  rng = np.random.default_rng(1)
  feats = np.zeros((1, 1, 200, 80), np.float32)
  feats[0, 0, :frames] = rng.normal(size=(frames, 80))
  mask = np.zeros((1, 1, 200), bool)
  mask[0, 0, :frames] = True
  inputs = dict(audio=jnp.asarray(feats), audio_mask=jnp.asarray(mask),
                audio_token_mask=jnp.asarray(seq["audio_token_mask"][None]),
                images=jnp.zeros((1, 1, 64, 64, 3)),
                image_token_mask=jnp.zeros((1, len(seq["tokens"])), bool))
  tokens = jnp.asarray(seq["tokens"][None])
  positions = jnp.asarray(seq["positions"][None])
  params = model.init(jax.random.key(0), tokens, positions, **inputs)
  assert "ln_speech" in params["params"]["audio_connector"]
  logits = lambda **kw: np.asarray(model.apply(
      params, tokens, positions, **dict(inputs, **kw))[0])
  ref = logits()
  assert np.isfinite(ref).all()
  noisy = feats.copy()
  noisy[0, 0, frames:] = 5.0
  np.testing.assert_allclose(logits(audio=jnp.asarray(noisy)), ref,
                             atol=1e-5)
  louder = logits(audio=jnp.asarray(feats + mask[..., None]))
  first = int(np.argmax(seq["audio_token_mask"]))
  assert np.abs(louder[0, first:] - ref[0, first:]).max() > 1e-3


def test_the_recipes_init_builds_a_salmonn_model(salmonn_mllm):
  abstract = jax.eval_shape(build.mllm_init(salmonn_mllm, IMAGE_ID),
                            jax.random.key(0))
  assert "ln_speech" in abstract["audio_connector"]


def test_salmonn_needs_an_unpooled_tower():
  tower = dataclasses.replace(whisper.whisper_variant("test"), pool=2)
  with pytest.raises(ValueError, match="pool=2 must be 1"):
    audio_fusion.make_connector("salmonn", 32, tower, jnp.float32,
                                jnp.float32)
