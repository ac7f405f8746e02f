"""Audio in the MLLM (no Hugging Face): an image and a clip in one sequence.

A tiny ViT + Whisper-tower MLLM lays out text, an image and a clip with
`layout.assemble`; the clip's tokens go to the `<audio>` placeholders only
(their own mask), a clip's padding frames change nothing, and the new
parameter groups freeze like the others.
"""
import dataclasses
import fnmatch

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import testing
from mmjax.data.tokenizer import IMAGE_ID
from mmjax.models import build
from mmjax.models import layout
from mmjax.models import whisper
from mmjax.models.mllm import MLLM, MLLMConfig
from mmjax.train import groups

AUDIO_ID = 7
FRAMES = 83  # 42 conv outputs -> 21 tokens


@pytest.fixture(scope="module")
def model_and_params():
  cfg = dataclasses.replace(testing.tiny_mllm_config("projection", "rope"),
                            audio=whisper.whisper_variant("test"))
  model = MLLM(cfg)
  seq = layout.assemble(cfg, [[11, 12], layout.Media(64, 64), [13],
                              layout.Audio(FRAMES), [14, 15]], IMAGE_ID,
                        audio_token_id=AUDIO_ID)
  rng = np.random.default_rng(0)
  feats = np.zeros((1, 1, 100, 80), np.float32)
  feats[0, 0, :FRAMES] = rng.normal(size=(FRAMES, 80))
  mask = np.zeros((1, 1, 100), bool)
  mask[0, 0, :FRAMES] = True
  inputs = dict(
      tokens=jnp.asarray(seq["tokens"][None]),
      positions=jnp.asarray(seq["positions"][None]),
      images=jnp.asarray(rng.uniform(-1, 1, (1, 1, 64, 64, 3)), jnp.float32),
      image_token_mask=jnp.asarray(seq["image_token_mask"][None]),
      audio=jnp.asarray(feats), audio_mask=jnp.asarray(mask),
      audio_token_mask=jnp.asarray(seq["audio_token_mask"][None]))
  params = model.init(jax.random.key(0), **inputs)["params"]
  return model, params, seq, inputs


def _logits(model, params, inputs, **overrides):
  inputs = dict(inputs, **overrides)
  tokens, positions = inputs.pop("tokens"), inputs.pop("positions")
  return np.asarray(model.apply({"params": params}, tokens, positions,
                                **inputs)[0])


def test_layout_of_image_and_clip(model_and_params):
  model, _, seq, _ = model_and_params
  n_img = layout.placeholder_tokens(model.cfg, 64, 64)
  assert layout.audio_tokens(model.cfg, FRAMES) == 21
  assert seq["audio_token_mask"].sum() == 21
  assert seq["image_token_mask"].sum() == n_img
  assert not (seq["audio_token_mask"] & seq["image_token_mask"]).any()
  assert (seq["tokens"][seq["audio_token_mask"]] == AUDIO_ID).all()
  np.testing.assert_array_equal(seq["positions"],
                                np.arange(len(seq["tokens"])))


def test_clip_reaches_only_its_slots(model_and_params):
  model, params, seq, inputs = model_and_params
  ref = _logits(model, params, inputs)
  assert np.isfinite(ref).all()
  first = int(np.argmax(seq["audio_token_mask"]))
  louder = _logits(model, params, inputs, audio=inputs["audio"] * 2)
  # Causal LM: only the clip's slots and what follows see it.
  np.testing.assert_allclose(louder[0, :first], ref[0, :first], atol=1e-6)
  assert np.abs(louder[0, first:] - ref[0, first:]).max() > 1e-3
  # Garbage in the padding frames changes nothing (masked encoder).
  noisy = np.asarray(inputs["audio"]).copy()
  noisy[0, 0, FRAMES:] = 5.0
  same = _logits(model, params, inputs, audio=jnp.asarray(noisy))
  np.testing.assert_allclose(same, ref, atol=1e-5)


def test_groups_and_audio_only_config(model_and_params):
  model, params, _, _ = model_and_params
  assert {"audio", "audio_connector", "vision", "connector",
          "llm"} <= set(params)
  paths = list(groups.flatten(params))
  for group, top in (("audio", "audio/"),
                     ("audio_connector", "audio_connector/")):
    hits = [p for p in paths if any(
        fnmatch.fnmatch(p, g) for g in groups.GROUPS[group])]
    assert hits and all(p.startswith(top) for p in hits)
  with pytest.raises(ValueError, match="audio_projector"):
    dataclasses.replace(model.cfg, audio_projector="nope")
  with pytest.raises(ValueError, match="needs a vision tower"):
    dataclasses.replace(model.cfg, vision=None, audio=None)
  audio_only = dataclasses.replace(model.cfg, vision=None)
  assert isinstance(audio_only, MLLMConfig) and not audio_only.has_vision
  with pytest.raises(ValueError, match="no audio tower"):
    layout.audio_tokens(dataclasses.replace(model.cfg, audio=None), FRAMES)


def test_build_initialises_audio_groups():
  """The recipes' init (`build.mllm_init`) creates the audio groups, with
  and without a vision tower."""
  cfg = dataclasses.replace(testing.tiny_mllm_config("projection", "rope"),
                            audio=whisper.whisper_variant("test"))
  for c, want in ((cfg, {"vision", "connector"}),
                  (dataclasses.replace(cfg, vision=None), set())):
    abstract = jax.eval_shape(build.mllm_init(MLLM(c), IMAGE_ID),
                              jax.random.key(0))
    assert set(abstract) == {"audio", "audio_connector", "llm"} | want
