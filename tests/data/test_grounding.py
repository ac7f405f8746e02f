"""Grounding data: box text, parsing, IoU, the referring questions of a
record, and shapes_chat chats with them (and unchanged without them)."""

import numpy as np
import pytest

from mmjax import config as C
from mmjax import testing
from mmjax.data import builders, formats, grounding, pipeline
from mmjax.train import config_checks
from tests.helpers import tiny_shapes_dataset

MAX_LEN = 320  # every chat with two grounding turns fits: nothing truncated


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
  builder, tok = tiny_shapes_dataset(tmp_path_factory.mktemp("data"),
                                     num_train=24)
  return builders.load_source(builder, "train"), tok


def test_box_text_normalises_to_0_1000():
  assert grounding.box_text([8, 16, 25, 33], 64) == "[125, 250, 391, 516]"
  assert grounding.box_text((0, 0, 64, 64), 64) == "[0, 0, 1000, 1000]"
  # (width, height) for a non-square image; x by width, y by height.
  assert grounding.box_text((10, 10, 20, 20), (100, 50)) == (
      "[100, 200, 200, 400]")
  # Rounded to the nearest integer (1/64 = 15.625 -> 16).
  assert grounding.normalise_box((1, 1, 2, 2), 64) == (16, 16, 31, 31)


def test_parse_box_is_tolerant_and_strict_where_it_matters():
  assert grounding.parse_box("[125, 250, 391, 516]") == (125, 250, 391, 516)
  assert grounding.parse_box("  [125,250 ,391, 516 ]. ") == (125, 250, 391,
                                                             516)
  assert grounding.parse_box("[0, 0, 1000, 1000].") == (0, 0, 1000, 1000)
  for bad in ("", "red", "[1, 2, 3]", "[1, 2, 3, 4, 5]", "1, 2, 3, 4",
              "[1.5, 2, 3, 4]", "[a, b, c, d]", "[1, 2, 3, 4] and more",
              "[5, 0, 4, 10]",        # x1 < x0
              "[0, 0, 1001, 10]",     # past 1000
              "[-1, 0, 4, 10]"):
    assert grounding.parse_box(bad) is None, bad
  # Round trip of every box text.
  box = (3, 970, 512, 1000)
  assert grounding.parse_box(grounding.format_box(box)) == box


def test_iou_by_hand():
  a = (0, 0, 10, 10)
  assert grounding.iou(a, a) == 1.0                       # identical
  assert grounding.iou(a, (20, 20, 30, 30)) == 0.0        # disjoint
  assert grounding.iou(a, (10, 0, 20, 10)) == 0.0         # touching edges
  assert grounding.iou(a, (5, 0, 15, 10)) == pytest.approx(50 / 150)
  assert grounding.iou(a, (0, 0, 5, 5)) == pytest.approx(25 / 100)  # inside
  assert grounding.iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0  # zero area
  assert grounding.iou((5, 5, 5, 9), a) == 0.0             # zero width
  assert grounding.iou(a, (5, 0, 15, 10)) == grounding.iou((5, 0, 15, 10), a)


def test_box_to_pixels_square_and_pad():
  assert grounding.box_to_pixels((125, 250, 500, 1000), 80, 64) == (
      10, 16, 40, 64)
  # pad: an 80x40 image sits in an 80x80 square 20 px down.
  assert grounding.box_to_pixels((0, 250, 500, 750), 80, 40, "pad") == (
      0, 0, 40, 40)
  assert grounding.box_to_pixels((0, 0, 1000, 1000), 80, 40, "pad") == (
      0, 0, 80, 40)


def _obj(colour, shape, bbox):
  return {"colour": colour, "shape": shape, "bbox": list(bbox)}


def test_grounding_qa_asks_only_unique_pairs_deterministically():
  objects = [_obj("red", "circle", (0, 0, 8, 8)),
             _obj("red", "circle", (10, 10, 20, 20)),      # a pair twice
             _obj("blue", "circle", (32, 0, 64, 16)),
             _obj("red", "square", (0, 32, 16, 64))]
  assert grounding.eligible(objects) == [2, 3]
  qa = grounding.grounding_qa(objects, 64, "train-0000007", k=5)
  assert sorted(q for q, _, _ in qa) == ["where is the blue circle?",
                                         "where is the red square?"]
  by_q = {q: (a, box) for q, a, box in qa}
  assert by_q["where is the blue circle?"] == ("[500, 0, 1000, 250]",
                                               (500, 0, 1000, 250))
  # k limits; the same record id picks the same, others differ somewhere.
  one = grounding.grounding_qa(objects, 64, "train-0000007", k=1)
  assert one == grounding.grounding_qa(objects, 64, "train-0000007", k=1)
  assert len(one) == 1 and one[0] in qa
  picks = {grounding.grounding_qa(objects, 64, f"train-{i:07d}", k=1)[0][0]
           for i in range(20)}
  assert len(picks) == 2
  assert grounding.grounding_qa(objects, 64, "x", k=0) == []
  assert grounding.grounding_qa(objects[:2], 64, "x", k=3) == []


def test_record_questions_match_the_objects(shapes):
  source, _ = shapes
  asked = 0
  for i in range(len(source)):
    record = source[i]
    objects = grounding.record_objects(record)
    for question, answer, box in grounding.record_grounding_qa(record, 6):
      colour, shape = question[len("where is the "):-1].split()
      match = [o for o in objects if (o["colour"], o["shape"]) == (colour,
                                                                   shape)]
      assert len(match) == 1
      assert answer == grounding.box_text(match[0]["bbox"], 64)
      assert grounding.parse_box(answer) == box
      asked += 1
  assert asked > len(source)  # most images have several unique objects


def _iterator(source, tok, **kwargs):
  args = dict(fmt="shapes_chat", cfg=testing.tiny_mllm_config(),
              tokenizer=tok, batch_size=8, seed=0, max_len=MAX_LEN)
  args.update(kwargs)
  return pipeline.make_iterator(source, **args)


def _same(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_shapes_chat_with_grounding_questions(shapes):
  source, tok = shapes
  it = _iterator(source, tok, train=False, grounding_questions=2)
  batch = next(it)
  assert it.stats()["truncated"] == 0
  extra = 0
  for i in range(8):  # In order: records 0..7, one chat each.
    record = source[i]
    qa = grounding.record_grounding_qa(record, 2)
    assert 1 <= len(qa) <= 2
    extra += len(qa)
    mask = batch["loss_mask"][i] == 1
    answers = [a.strip() for a in tok.decode(
        batch["targets"][i][mask]).split("<|end|>")[:-1]]
    prompt = tok.decode(batch["tokens"][i][~batch["image_token_mask"][i]])
    questions = list(record["questions"]) + [q for q, _, _ in qa]
    gold = list(record["answers"]) + [a for _, a, _ in qa]
    # Every question once, each followed by its own answer.
    order = sorted(range(len(questions)),
                   key=lambda q: prompt.index(questions[q]))
    assert answers == [gold[q] for q in order]
    assert all(grounding.parse_box(a) for _, a, _ in qa)
  assert extra > 8
  # Shuffled in: some chats ask a grounding question first.
  firsts = [formats.record_example(source[j], 0, "shapes_chat",
                                   grounding_questions=2).turns[0]["content"]
            for j in range(len(source))]
  assert any("where is the" in f for f in firsts)
  assert not all("where is the" in f for f in firsts)
  assert it.get_state()["grounding_questions"] == 2


def test_shapes_chat_without_grounding_is_unchanged(shapes):
  source, tok = shapes
  for j in range(len(source)):
    record = source[j]
    legacy = formats.shapes_chat_turns(str(record["id"]), record["questions"],
                                       record["answers"])
    for k in (None, 0):
      kwargs = {} if k is None else {"grounding_questions": k}
      assert formats.record_example(record, 0, "shapes_chat",
                                    **kwargs).turns == legacy
  default = _iterator(source, tok)
  zero = _iterator(source, tok, grounding_questions=0)
  for _ in range(3):
    _same(next(default), next(zero))
  # The state has no new key at 0: states saved before grounding restore.
  assert zero.get_state() == default.get_state()
  assert "grounding_questions" not in zero.get_state()
  fresh = _iterator(source, tok, grounding_questions=0)
  fresh.set_state(default.get_state())
  _same(next(fresh), next(default))
  # A state saved with grounding is another pipeline's.
  with pytest.raises(ValueError, match="another pipeline"):
    _iterator(source, tok, grounding_questions=2).set_state(
        default.get_state())
  with pytest.raises(ValueError, match="grounding_questions=-1"):
    _iterator(source, tok, grounding_questions=-1)


@pytest.mark.parametrize("value", [-1, 1.5, "2", True])
def test_bad_grounding_questions_config(value):
  config = testing.tiny_recipe()
  config.data.grounding_questions = 2
  config_checks.validate_config(config)
  if not isinstance(value, int) or isinstance(value, bool):
    config.data.unlock()  # a wrong type, as a JSON config could hold
    del config.data["grounding_questions"]
    config.data.grounding_questions = value
  else:
    config.data.grounding_questions = value
  with pytest.raises(C.ConfigError) as e:
    config_checks.validate_config(config)
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(
      f"config.data.grounding_questions={value!r} must be an integer >= 0")
  # A config without the key (written before it existed) is fine.
  del config.data["grounding_questions"]
  config_checks.validate_config(config)


def test_grounded_caption_reads_in_order_and_parses_back():
  objects = [_obj("blue", "star", [40, 40, 60, 60]),
             _obj("orange", "circle", [8, 16, 25, 33]),
             _obj("red", "square", [0, 41, 20, 61])]
  text = grounding.grounded_caption(objects, 64)
  # Top band first; in one band (centres 50 and 51 px down) left to right.
  assert text == ("an orange circle [125, 250, 391, 516], a red square "
                  "[0, 641, 312, 953] and a blue star [625, 625, 938, 938].")
  assert grounding.parse_mentions(text) == [
      ("orange", "circle", (125, 250, 391, 516)),
      ("red", "square", (0, 641, 312, 953)),
      ("blue", "star", (625, 625, 938, 938))]
  assert grounding.grounded_caption(objects[:1], 64) == (
      "a blue star [625, 625, 938, 938].")
  assert grounding.grounded_caption([], 64) == ""
  # Boxes out of order or range, and unknown words, are no mentions.
  assert grounding.parse_mentions(
      "a red circle [5, 0, 1, 9], a red circle [0, 0, 1001, 9], a pink "
      "circle [0, 0, 9, 9], green star [1,2,3,4]") == [
          ("green", "star", (1, 2, 3, 4))]


def test_shapes_chat_with_a_grounded_caption(shapes):
  source, tok = shapes
  record = source[0]
  plain = formats.record_example(record, 0, "shapes_chat")
  chat = formats.record_example(record, 0, "shapes_chat",
                                grounded_captions=True)
  asked = [t["content"].split("\n")[-1] for t in chat.turns[::2]]
  assert len(chat.turns) == len(plain.turns) + 2
  i = asked.index(grounding.GROUNDED_CAPTION_PROMPT)
  answer = chat.turns[2 * i + 1]["content"]
  assert answer == grounding.record_grounded_caption(record)
  assert len(grounding.parse_mentions(answer)) == len(
      grounding.record_objects(record))
  # Training rows carry it (as the last answer of record 0's chat or
  # before); the iterator's state records the option.
  it = _iterator(source, tok, train=False, grounded_captions=True,
                 max_len=448)
  batch = next(it)
  assert it.stats()["truncated"] == 0
  mask = batch["loss_mask"][0] == 1
  assert answer in tok.decode(batch["targets"][0][mask])
  assert it.get_state()["grounded_captions"] is True
  with pytest.raises(ValueError, match="grounded_captions=1 must be True"):
    _iterator(source, tok, grounded_captions=1)


def test_bad_grounded_captions_config():
  config = testing.tiny_recipe()
  config.data.grounded_captions = True
  config_checks.validate_config(config)
  config.data.unlock()  # a wrong type, as a JSON config could hold
  del config.data["grounded_captions"]
  config.data.grounded_captions = 1
  with pytest.raises(C.ConfigError, match=r"config.data.grounded_captions=1 "
                     "must be True or False"):
    config_checks.validate_config(config)
