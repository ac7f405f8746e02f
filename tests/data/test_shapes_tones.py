"""The joint image + audio benchmark (mmjax/data/shapes_tones.py): examples,
the joint answer against both media, balance, its builder, the `joint` /
`joint_chat` formats and a pipeline batch holding an image and a clip."""
import collections
import dataclasses

import numpy as np
import pytest

from mmjax import testing
from mmjax.data import (builders, datasets, formats, pipeline, shapes,
                        shapes_tones, shapes_tones_builder, tones)
from mmjax.data.text_corpus import COUNT_WORDS
from mmjax.data.tokenizer import AUDIO_TOKEN, IMAGE_TOKEN, Tokenizer
from mmjax.models import whisper
from tests.data.test_tones import count_by_envelope


def test_examples_keep_the_shapes_scene_and_are_pure():
  a = shapes_tones.example("test", 5, seed=2)
  b = shapes_tones.example("test", 5, seed=2)
  assert np.array_equal(a["audio"], b["audio"]) and a["joint_qa"] == b[
      "joint_qa"]
  scene = shapes.example("test", 5, seed=2)
  assert np.array_equal(a["image"], scene["image"])
  assert a["qa"] == scene["qa"] and a["captions"] == scene["captions"]
  assert not np.array_equal(a["audio"],
                            shapes_tones.example("test", 6, 2)["audio"])
  with pytest.raises(ValueError, match="split"):
    shapes_tones.example("heldout", 0)
  with pytest.raises(ValueError, match="n_tones=6"):
    tones.sample_clip(np.random.default_rng(0), n_tones=6)


@pytest.mark.parametrize("index", range(12))
def test_the_joint_answer_is_what_the_image_and_the_clip_hold(index):
  ex = shapes_tones.example("validation", index)
  heard = count_by_envelope(tones.from_int16(ex["audio"]))
  assert heard == len(ex["tones"])
  (joint,) = ex["joint_qa"]
  assert joint["question"] == shapes_tones.SAME_COUNT_QUESTION
  assert joint["answer"] == ("yes" if heard == len(ex["objects"]) else "no")
  by_type = {q["qtype"]: q["answer"] for q in ex["audio_qa"]}
  assert by_type["tone_count"] == COUNT_WORDS[heard - 1]


def test_joint_answers_are_balanced_and_not_given_by_one_medium():
  exs = [shapes_tones.example("train", i) for i in range(400)]
  yes = [e["joint_qa"][0]["answer"] == "yes" for e in exs]
  assert 0.35 < np.mean(yes) < 0.5  # six-object scenes are always "no"
  # Neither count alone says the answer: every count of objects (1..5) and
  # of tones comes with both answers.
  for key in ("objects", "tones"):
    seen = collections.defaultdict(set)
    for e, y in zip(exs, yes):
      seen[len(e[key])].add(y)
    assert all(seen[n] == {True, False} for n in range(1, 6)), (key, seen)


def record(i, split="train"):
  """A shapes_tones record as the builder stores it (no PNG round trip)."""
  ex = shapes_tones.example(split, i)
  out = {"id": ex["id"], "image": ex["image"], "captions": ex["captions"],
         "audio": ex["audio"], "audio_captions": ex["audio_captions"],
         "objects": ex["objects"]}
  for prefix, part in (("", "qa"), ("audio_", "audio_qa"),
                       ("joint_", "joint_qa")):
    for name, key in (("questions", "question"), ("answers", "answer"),
                      ("qtypes", "qtype")):
      out[prefix + name] = [q[key] for q in ex[part]]
  return out


def test_formats_read_each_part_of_a_joint_record():
  rec = record(3)
  qa = formats.joint_qa(rec)
  assert qa[0] == (shapes_tones.SAME_COUNT_QUESTION, rec["joint_answers"][0],
                   "same_count")
  assert len(qa) == formats.num_items(rec, "joint") == (
      1 + len(rec["questions"]) + len(rec["audio_questions"]))
  both = f"{IMAGE_TOKEN}\n{AUDIO_TOKEN}\n"
  for item in (0, len(qa) - 1):
    chat = formats.record_example(rec, item, "joint")
    assert chat.turns[0]["content"] == both + qa[item][0]
    assert chat.turns[1]["content"] == qa[item][1]
    assert len(chat.images) == 1 and len(chat.audio) == 1
  chat = formats.record_example(rec, 0, "joint_chat")
  users = [t["content"] for t in chat.turns if t["role"] == "user"]
  assert users[0] == both + shapes_tones.SAME_COUNT_QUESTION
  assert sorted(users[1:]) == sorted(q for q, _, _ in qa[1:])
  assert not any(IMAGE_TOKEN in u or AUDIO_TOKEN in u for u in users[1:])
  # The audio formats read the clip's fields, the image formats the scene's.
  tone = formats.record_example(rec, 0, "tones")
  assert tone.turns[0]["content"].endswith(rec["audio_questions"][0])
  caption = formats.record_example(rec, 1, "audio_caption")
  assert caption.turns[1]["content"] == rec["audio_captions"][1]
  assert formats.record_example(rec, 0, "caption").turns[1]["content"] == (
      rec["captions"][0])


def test_a_joint_chat_batch_holds_an_image_and_a_clip():
  tok = Tokenizer.train(shapes_tones.benchmark_texts(40), 400,
                        extra_symbols=(AUDIO_TOKEN,))
  cfg = dataclasses.replace(testing.tiny_mllm_config(),
                            audio=whisper.whisper_variant("test"))
  source = [record(i) for i in range(5)]
  batch = next(pipeline.make_iterator(
      source, fmt="joint_chat", cfg=cfg, tokenizer=tok, batch_size=4, seed=0,
      max_len=320, audio_frames=tones.CLIP_SAMPLES // 160))
  assert batch["valid"].all()
  assert batch["images"].shape[:2] == (4, 1) and batch["image_mask"].all()
  assert (batch["audio_token_mask"].sum(1) == 40).all()
  assert (batch["image_token_mask"].sum(1) ==
          batch["image_token_mask"][0].sum()).all()
  assert not (batch["audio_token_mask"] & batch["image_token_mask"]).any()


def test_builder_stores_both_parts_and_registers(tmp_path):
  builder = builders.build(shapes_tones_builder.ShapesTonesBuilder,
                           str(tmp_path), num_train=4, num_validation=2,
                           num_test=2)
  source = builders.load_source(builder, "test")
  want = record(1, "test")
  got = source[1]
  assert np.array_equal(got["image"], want["image"])
  assert np.array_equal(got["audio"], want["audio"])
  for key in ("questions", "audio_questions", "audio_qtypes",
              "joint_answers", "audio_captions"):
    assert list(got[key]) == want[key], key
  tok = Tokenizer.load(f"{builder.data_dir}/{builders.TOKENIZER_FILE}")
  assert tok.audio_id is not None
  assert datasets.SYNTHETIC_DATASETS["shapes_tones"][0] is (
      shapes_tones_builder.ShapesTonesBuilder)
