"""More questions per training chat (`config.data.extra_questions`): every
question an image allows, answered right, none repeated, balanced answers;
the chats and the pipeline state with and without them."""
import collections

import numpy as np
import pytest

from mmjax import config as C
from mmjax import testing
from mmjax.data import builders, formats, pipeline, shapes
from mmjax.train import config_checks
from tests.helpers import tiny_shapes_dataset

MAX_LEN = 288  # every chat with eight more questions fits


@pytest.fixture(scope="module")
def shapes_source(tmp_path_factory):
  builder, tok = tiny_shapes_dataset(tmp_path_factory.mktemp("data"),
                                     num_train=24)
  return builders.load_source(builder, "train"), tok


def _truth(scene, qa):
  """The answer to a question, read off the scene's objects by hand."""
  objects = scene.objects
  words = qa.question[:-1].split()
  if qa.qtype == "colour":    # what colour is the <shape>?
    return [o.colour for o in objects if o.shape == words[-1]][0]
  if qa.qtype == "shape":     # what shape is the <colour> object?
    return [o.shape for o in objects if o.colour == words[4]][0]
  if qa.qtype == "existence":  # is there a(n) <colour> <shape>?
    hit = any((o.colour, o.shape) == (words[3], words[4]) for o in objects)
    return "yes" if hit else "no"
  if qa.qtype == "count":
    if words[2] == "objects":
      n = len(objects)
    elif words[3] == "objects":  # how many <colour> objects are there?
      n = sum(o.colour == words[2] for o in objects)
    else:                        # how many <shape>s are there?
      n = sum(o.shape + "s" == words[2] for o in objects)
    return shapes.COUNT_WORDS[n - 1]
  # is the <c> <s> <relation> the <c> <s>?
  a = [o for o in objects if (o.colour, o.shape) == (words[2], words[3])][0]
  b = [o for o in objects if (o.colour, o.shape) == (words[-2], words[-1])][0]
  relation = " ".join(words[4:-3])
  holds = {"left of": a.centre[0] < b.centre[0],
           "right of": a.centre[0] > b.centre[0],
           "above": a.centre[1] < b.centre[1],
           "below": a.centre[1] > b.centre[1]}[relation]
  return "yes" if holds else "no"


def test_extra_questions_are_right_new_and_balanced():
  kinds, answers = collections.Counter(), collections.Counter()
  for i in range(300):
    scene, _, qa, _ = shapes._scene_and_text("train", i, 0)
    pool = [q for items in shapes.question_pool(scene).values()
            for q in items]
    # The pool holds the record's own questions, with their answers.
    assert {(q.question, q.answer) for q in qa} <= {
        (q.question, q.answer) for q in pool}
    asked = [q.question for q in qa]
    extra = shapes.extra_questions(scene, asked, 6,
                                   np.random.default_rng(i))
    assert len(extra) <= 6
    # Scenes with several objects have questions to spare.
    assert len(extra) >= min(2, len(scene.objects) - 1)
    questions = asked + [q.question for q in extra]
    assert len(set(questions)) == len(questions)  # none asked twice
    for q in extra:
      assert q.answer == _truth(scene, q), q
      kinds[q.qtype] += 1
      if q.qtype in ("existence", "spatial"):
        answers[q.qtype, q.answer] += 1
  assert set(kinds) == set(shapes.QTYPES)
  # Existence questions come as a present and an absent pair.
  assert answers["existence", "yes"] == answers["existence", "no"]
  yes, no = answers["spatial", "yes"], answers["spatial", "no"]
  assert abs(yes - no) < 0.2 * (yes + no)


def test_scene_from_objects_gives_right_answers():
  # A record stores pixel centres; questions about the rebuilt scene are
  # answered as about the drawn one.
  for i in range(200):
    ex = shapes.example("test", i)
    scene = shapes._scene_and_text("test", i, 0)[0]
    rebuilt = shapes.scene_from_objects(ex["objects"], 64)
    for items in shapes.question_pool(rebuilt).values():
      for q in items:
        assert q.answer == _truth(scene, q), (i, q)


def _iterator(source, tok, **kwargs):
  cfg = testing.tiny_mllm_config("projection", "rope")
  return pipeline.make_iterator(source, fmt="shapes_chat", cfg=cfg,
                                tokenizer=tok, batch_size=8, seed=0,
                                max_len=MAX_LEN, train=False, **kwargs)


def test_chats_carry_extra_questions(shapes_source):
  source, tok = shapes_source
  it = _iterator(source, tok, extra_questions=4)
  batch = next(it)
  assert it.stats()["truncated"] == 0
  added = 0
  for i in range(8):
    record = source[i]
    chat = formats.record_example(record, 0, "shapes_chat",
                                  extra_questions=4)
    assert chat.turns == formats.record_example(
        record, 0, "shapes_chat", extra_questions=4).turns  # pure
    questions = [t["content"].split("\n")[-1] for t in chat.turns[::2]]
    gold = [t["content"] for t in chat.turns[1::2]]
    assert set(record["questions"]) <= set(questions)
    added += len(questions) - len(record["questions"])
    mask = batch["loss_mask"][i] == 1
    said = [a.strip() for a in tok.decode(
        batch["targets"][i][mask]).split("<|end|>")[:-1]]
    assert said == gold
  assert added > 8
  assert it.get_state()["extra_questions"] == 4


def test_zero_extra_questions_change_nothing(shapes_source):
  source, tok = shapes_source
  for j in range(len(source)):
    assert formats.record_example(
        source[j], 0, "shapes_chat", extra_questions=0).turns == (
            formats.record_example(source[j], 0, "shapes_chat").turns)
  default, zero = _iterator(source, tok), _iterator(source, tok,
                                                     extra_questions=0)
  a, b = next(default), next(zero)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert zero.get_state() == default.get_state()  # old states restore


def test_bad_extra_questions_refused(shapes_source):
  source, tok = shapes_source
  with pytest.raises(ValueError, match="extra_questions"):
    _iterator(source, tok, extra_questions=-1)
  config = testing.tiny_recipe()
  config.data.extra_questions = True
  with pytest.raises(C.ConfigError, match=r"data.extra_questions=True"):
    config_checks.validate_config(config)
