"""Answer loss weights: each answer's tokens weighed by its length."""

import numpy as np
import pytest

from mmjax import config as C
from mmjax import testing
from mmjax.data import answer_weights, builders, pipeline
from mmjax.train import config_checks, losses
from tests.helpers import tiny_shapes_dataset


def test_schemes_weigh_each_answer_by_its_length():
  mask = np.array([0, 1, 1, 1, 1, 0, 0, 1, 0, 1, 1], np.float32)
  assert answer_weights.answer_runs(mask) == [(1, 5), (7, 8), (9, 11)]
  square = answer_weights.answer_loss_weights(mask, "square")
  np.testing.assert_allclose(
      square, [0, .5, .5, .5, .5, 0, 0, 1, 0, 2 ** -.5, 2 ** -.5], rtol=1e-6)
  np.testing.assert_array_equal(
      answer_weights.answer_loss_weights(mask, "token"), mask)
  sample = answer_weights.answer_loss_weights(mask, "sample")
  np.testing.assert_allclose(  # every answer weighs 1 in all
      sample, [0, .25, .25, .25, .25, 0, 0, 1, 0, .5, .5], rtol=1e-6)
  with pytest.raises(ValueError, match="not one of"):
    answer_weights.answer_loss_weights(mask, "length")


def test_weighted_loss_is_the_weighted_mean():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 6, 5)).astype(np.float32)
  targets = rng.integers(0, 5, (2, 6)).astype(np.int32)
  weights = np.array([[0, .5, .5, .5, .5, 0], [0, 0, 1, 0, .7, .7]],
                     np.float32)
  loss, metrics = losses.lm_loss(logits, targets, weights)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, (ce * weights).sum() / weights.sum(),
                             rtol=1e-5)
  assert float(metrics["tokens"]) == 7  # a count, whatever the weights


def test_pipeline_weighs_shapes_chat_answers(tmp_path):
  builder, tok = tiny_shapes_dataset(tmp_path, num_train=8)
  source = builders.load_source(builder, "train")
  args = dict(fmt="shapes_chat", cfg=testing.tiny_mllm_config(),
              tokenizer=tok, batch_size=4, seed=0, max_len=320, train=False,
              grounding_questions=2)
  plain = next(pipeline.make_iterator(source, **args))
  square = next(pipeline.make_iterator(source, loss_weighting="square",
                                       **args))
  for key in plain:  # only the loss mask changes
    if key not in ("loss_mask", "_stats"):
      np.testing.assert_array_equal(plain[key], square[key], err_msg=key)
  for row in range(4):
    runs = answer_weights.answer_runs(plain["loss_mask"][row])
    lengths = sorted({b - a for a, b in runs})
    assert len(lengths) > 1  # one-word answers and box answers
    for a, b in runs:
      np.testing.assert_allclose(square["loss_mask"][row][a:b],
                                 (b - a) ** -0.5, rtol=1e-6)
  with pytest.raises(ValueError, match="chat formats"):
    pipeline.make_iterator(source, **dict(args, fmt="regions",
                                          grounding_questions=0),
                           loss_weighting="square")


def test_config_key_is_checked():
  config = testing.tiny_recipe()
  config.data.loss_weighting = "square"
  config_checks.validate_config(config)
  config.data.loss_weighting = "length"
  with pytest.raises(C.ConfigError, match="loss_weighting"):
    config_checks.validate_config(config)
