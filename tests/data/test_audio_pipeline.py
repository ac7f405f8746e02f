"""Audio through the grain pipeline: `<audio>` expanded into the clip's
placeholders, log-mel features with frame masks in the batch, and bad clips
counted as skips."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import testing
from mmjax.data import audio as audio_lib
from mmjax.data import formats, pipeline, tones
from mmjax.data.builders import BadRecordError
from mmjax.data.tokenizer import AUDIO_TOKEN, Tokenizer
from mmjax.models import build, whisper
from mmjax.models.mllm import MLLM
from mmjax.train.stages import lm as lm_stage

FRAMES = tones.CLIP_SAMPLES // 160  # 160 log-mel frames per clip
TOKENS = FRAMES // 2 // 2  # conv stride 2, then Qwen2-Audio's pool 2


@pytest.fixture(scope="module")
def tok():
  return Tokenizer.train(tones.benchmark_texts(60), 320,
                         extra_symbols=(AUDIO_TOKEN,))


@pytest.fixture(scope="module")
def cfg():
  return dataclasses.replace(testing.tiny_mllm_config(), vision=None,
                             audio=whisper.whisper_variant("test"))


def record(i, split="train"):
  ex = tones.example(split, i)
  return {"id": ex["id"], "image": None, "audio": ex["audio"],
          "captions": ex["captions"],
          "questions": [q["question"] for q in ex["qa"]],
          "answers": [q["answer"] for q in ex["qa"]],
          "qtypes": [q["qtype"] for q in ex["qa"]]}


def iterator(source, cfg, tok, fmt="tones_chat", **kw):
  return pipeline.make_iterator(source, fmt=fmt, cfg=cfg, tokenizer=tok,
                                batch_size=4, seed=0, max_len=96,
                                audio_frames=FRAMES, **kw)


def test_chat_batches_hold_clips_masks_and_placeholders(cfg, tok):
  source = [record(i) for i in range(6)]
  batch = next(iterator(source, cfg, tok))
  assert batch["audio"].shape == (4, 1, FRAMES, 80)
  assert batch["audio_mask"].shape == (4, 1, FRAMES)
  assert batch["audio_mask"].all() and "images" not in batch
  # Each row: one clip's placeholders, right after the first user marker.
  assert (batch["audio_token_mask"].sum(1) == TOKENS).all()
  assert (batch["tokens"][batch["audio_token_mask"]] == tok.audio_id).all()
  assert not (batch["loss_mask"] * batch["audio_token_mask"]).any()
  # The features are the clip's log-mel (rows are a shuffled epoch).
  ids = [np.flatnonzero(np.isin(batch["tokens"][r], tok.end_of_turn_id))
         for r in range(4)]
  assert all(len(i) >= 4 for i in ids)
  wants = [audio_lib.log_mel(tones.from_int16(r["audio"]), pad=False)[0]
           for r in source]
  assert all(any(np.allclose(batch["audio"][r, 0], w) for w in wants)
             for r in range(4))
  # The LM stage's loss runs on it (the MLLM reads audio and its masks).
  model = MLLM(cfg)
  params = build.mllm_init(model, tok.image_id)(jax.random.key(0))
  loss, _ = lm_stage.mllm_lm_loss(
      model, params, jax.tree.map(jnp.asarray, batch))
  assert np.isfinite(float(loss))


def test_question_and_caption_formats(cfg, tok):
  source = [record(i) for i in range(3)]
  n = sum(len(r["questions"]) for r in source)
  assert len(formats.example_index(source, "tones")) == n
  assert len(formats.example_index(source, "audio_caption")) == 6
  chat = formats.record_example(source[0], 1, "tones")
  assert chat.turns[0]["content"] == (f"{AUDIO_TOKEN}\n"
                                      f"{source[0]['questions'][1]}")
  assert chat.audio[0].dtype == np.float32 and len(chat.audio) == 1
  caption = formats.record_example(source[0], 0, "audio_caption")
  assert caption.turns[1]["content"] == source[0]["captions"][0]
  batch = next(iterator(source, cfg, tok, fmt="audio_caption"))
  assert (batch["audio_token_mask"].sum(1) == TOKENS).all()


def test_bad_clips_are_counted_skips(cfg, tok):
  empty = dict(record(1), id="empty", audio=np.zeros(0, np.int16))
  long = dict(record(2), id="long",
              audio=np.zeros(tones.CLIP_SAMPLES * 2, np.int16))
  twice = dict(record(3), id="twice",
               questions=[f"{AUDIO_TOKEN} two clips?"] +
               record(3)["questions"][1:])
  short = dict(record(4), id="short", audio=np.ones(100, np.int16))
  source = [record(0), empty, long, twice, short]
  it = iterator(source, cfg, tok)
  for _ in range(4):
    batch = next(it)
    assert batch["valid"].all()
  stats = it.stats()
  assert stats["skipped_bad_audio"] > 0, stats
  assert stats["skipped_placeholder_mismatch"] > 0, stats
  for bad, why in ((empty, "non-empty mono clip"), (long, "audio_frames=160"),
                   (short, "gives no audio token")):
    with pytest.raises(BadRecordError, match=f"bad_audio: .*{why}"):
      next(iterator([bad], cfg, tok, on_bad_record="raise"))
