"""Region-level supervision: the `regions` format, its batches, the
RegionClassifier's pooling and the `region_classification` stage's loss."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import testing
from mmjax.data import builders, formats, pipeline
from mmjax.data.text_corpus import COLOURS, SHAPES
from mmjax.models import vision as vision_lib
from mmjax.models.region_head import RegionClassifier, RegionHead
from mmjax.train import stages
from tests.helpers import tiny_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
  builder, tok = tiny_shapes_dataset(tmp_path_factory.mktemp("data"))
  return builders.load_source(builder, "train"), tok


def test_box_token_weights_by_hand():
  boxes = np.asarray([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75],
                      [0.5, 0.0, 1.0, 0.25]], np.float32)
  w = formats.box_token_weights(boxes, (2, 2))  # tokens: TL, TR, BL, BR
  np.testing.assert_allclose(w[0], [1, 0, 0, 0])
  np.testing.assert_allclose(w[1], [0.25] * 4)
  np.testing.assert_allclose(w[2], [0, 1, 0, 0])


def test_regions_batch_matches_the_records_objects(shapes):
  source, tok = shapes
  cfg = testing.tiny_mllm_config()
  batch = next(pipeline.make_iterator(
      source, fmt="regions", cfg=cfg, tokenizer=tok, batch_size=8, seed=0,
      max_len=32, train=False))
  grid = cfg.side // cfg.vision.patch_size
  assert batch["region_weights"].shape == (8, formats.MAX_REGIONS, grid ** 2)
  assert batch["region_labels"].shape == (
      8, formats.MAX_REGIONS, len(formats.REGION_ATTRIBUTES))
  # Every real object: weights sum to 1 and cover the patch of its centre;
  # the labels are its shape and colour. Padding rows are all zero.
  seen = 0
  for i in range(8):
    n = int(batch["region_valid"][i].sum())
    assert 1 <= n <= 6
    np.testing.assert_allclose(batch["region_weights"][i, :n].sum(-1), 1,
                               rtol=1e-5)
    assert not batch["region_weights"][i, n:].any()
    assert not batch["region_valid"][i, n:].any()
    seen += n
  labels = batch["region_labels"][batch["region_valid"] > 0]
  assert labels[:, 0].max() < len(SHAPES) and labels[:, 1].max() < len(COLOURS)
  assert seen >= 8


def test_region_targets_follow_the_objects(shapes):
  source, _ = shapes
  record = source[0]
  objects = record["objects"]
  objects = json.loads(objects) if isinstance(objects, (str, bytes)) else (
      objects)
  ex = formats.record_example(record, 0, "regions")
  side = np.shape(record["image"])[0]
  np.testing.assert_allclose(ex.boxes * side,
                             [o["bbox"] for o in objects], atol=1e-4)
  assert [SHAPES[s] for s in ex.labels[:, 0]] == [o["shape"] for o in objects]
  assert [COLOURS[c] for c in ex.labels[:, 1]] == [o["colour"]
                                                   for o in objects]
  for (x, y), place in zip([o["centre"] for o in objects], ex.labels[:, 2]):
    row, col = divmod(int(place), 3)  # centre pixel vs box centre: +-1 px
    assert abs(x / side * 3 - (col + 0.5)) <= 0.5 + 3 / side
    assert abs(y / side * 3 - (row + 0.5)) <= 0.5 + 3 / side
  # Each box edge's bin holds the edge: bin i covers i/32 .. (i+1)/32 of the
  # side, and an edge on the image's far side (x1 = side) is the last bin.
  columns = list(formats.REGION_ATTRIBUTES)
  assert columns[3:] == ["left", "top", "right", "bottom"]
  bins = formats.EDGE_BINS
  for obj, labels in zip(objects, ex.labels):
    for v, b in zip(obj["bbox"], labels[3:]):
      assert b == min(int(v / side * bins), bins - 1)
      assert b / bins <= v / side <= (b + 1) / bins


def test_bad_region_records_are_named():
  square = np.zeros((8, 8, 3), np.uint8)
  obj = {"bbox": [0, 0, 4, 4], "shape": "circle", "colour": "red"}
  with pytest.raises(formats.BadExample, match="square image") as e:
    formats.record_example({"image": np.zeros((8, 6, 3), np.uint8),
                            "objects": [obj]}, 0, "regions")
  assert e.value.kind == "image_size"
  with pytest.raises(formats.BadExample, match="'objects' list"):
    formats.record_example({"image": square}, 0, "regions")
  with pytest.raises(formats.BadExample, match="pixel 'bbox'"):
    formats.record_example({"image": square, "objects": [
        dict(obj, shape="blob")]}, 0, "regions")


def test_classifier_pools_the_tokens_under_each_box():
  cfg = testing.tiny_mllm_config().vision
  model = RegionClassifier(cfg, (("shape", 6),), feature_layer=-1)
  images = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3))
  n = cfg.num_patches
  onehot = jnp.zeros((2, 1, n)).at[:, 0, 5].set(1.0)
  params = model.init(jax.random.key(1), images, onehot)["params"]
  logits = model.apply({"params": params}, images, onehot)["shape"]
  tokens = vision_lib.VisionEncoder(cfg).apply(
      {"params": params["vision"]}, images, feature_layer=-1).tokens
  head = RegionHead((("shape", 6),))
  want = head.apply({"params": params["region_head"]}, tokens[:, 5:6])
  np.testing.assert_allclose(logits, want["shape"], atol=1e-5)


def test_stage_loss_learns_the_objects_of_a_batch(shapes):
  """The stage's loss through its model: 40 Adam steps on one batch take
  shape and colour accuracy on it from chance to (nearly) all right."""
  source, tok = shapes
  config = testing.tiny_recipe("projection")
  assert config.stages.regions.loss == "region_classification"
  kind = stages.kinds()["region_classification"]
  model, init, to_global = kind.make_model(config, "regions")
  assert to_global("vision/layers_0/mlp/fc1/kernel") == (
      "vision/layers_0/mlp/fc1/kernel")
  loss_fn = kind.make_loss(model, config.stages.regions)
  batch = next(pipeline.make_iterator(
      source, fmt="regions", cfg=testing.tiny_mllm_config(), tokenizer=tok,
      batch_size=16, seed=0, max_len=32, train=False))
  batch = {k: jnp.asarray(v) for k, v in batch.items() if not k.startswith("_")}
  params = jax.tree_util.tree_map(
      lambda x: getattr(x, "value", x), init(jax.random.key(0)),
      is_leaf=lambda x: hasattr(x, "value"))
  tx = optax.adam(3e-3)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: loss_fn(p, batch, None), has_aux=True)(params)
    updates, state = tx.update(grads, state)
    return optax.apply_updates(params, updates), state, metrics

  _, _, first = step(params, state)
  for _ in range(40):
    params, state, metrics = step(params, state)
  assert first["shape_accuracy"] < 0.6
  assert metrics["shape_accuracy"] > 0.9 and metrics["colour_accuracy"] > 0.9
  assert "place_accuracy" not in metrics  # Not in the default attributes.
  assert metrics["loss"] < 0.5 * first["loss"]


def test_unknown_attribute_is_one_config_error():
  from mmjax.config import ConfigError  # pylint: disable=g-import-not-at-top
  from mmjax.train import config_checks  # pylint: disable=g-import-not-at-top
  config = testing.tiny_recipe("projection")
  config.stages.regions.attributes = ("size",)
  with pytest.raises(ConfigError, match="give a non-empty tuple of shape, "
                     "colour, place, left, top, right, bottom"):
    config_checks.validate_config(config)


def test_per_token_loss_makes_every_token_say_the_class(shapes):
  """Option per_token: each token's cross-entropy, weighted by its share of
  the box. With one token per box it equals the box-average loss; with
  boxes over several tokens it is never below it (cross-entropy is convex
  in the logits), and it is the weighted sum by hand."""
  source, tok = shapes
  config = testing.tiny_recipe("projection")
  kind = stages.kinds()["region_classification"]
  model, init, _ = kind.make_model(config, "regions")
  params = jax.tree_util.tree_map(
      lambda x: getattr(x, "value", x), init(jax.random.key(0)),
      is_leaf=lambda x: hasattr(x, "value"))
  batch = next(pipeline.make_iterator(
      source, fmt="regions", cfg=testing.tiny_mllm_config(), tokenizer=tok,
      batch_size=8, seed=0, max_len=32, train=False))
  batch = {k: jnp.asarray(v) for k, v in batch.items() if not k.startswith("_")}
  stage = config.stages.regions
  pooled = kind.make_loss(model, stage)
  stage_tok = config.stages.regions.copy_and_resolve_references()
  stage_tok.per_token = True
  per_token = kind.make_loss(model, stage_tok)
  loss_box, _ = pooled(params, batch, None)
  loss_tok, metrics = per_token(params, batch, None)
  assert float(loss_tok) >= float(loss_box) - 1e-6
  assert 0 <= float(metrics["shape_accuracy"]) <= 1
  # By hand: the mean over real objects of sum_n w[k, n] * CE(token n).
  images = batch["images"][:, 0]
  logits = model.apply({"params": params}, images, batch["region_weights"],
                       per_token=True)
  valid = np.asarray(batch["region_valid"] * batch["valid"][:, None])
  total = 0.0
  for a, name in enumerate(("shape", "colour")):
    logp = np.asarray(jax.nn.log_softmax(logits[name]))        # [B, N, C]
    labels = np.asarray(batch["region_labels"][..., a])         # [B, K]
    w = np.asarray(batch["region_weights"])                     # [B, K, N]
    # token n's log-probability of object k's class: [B, K, N]
    token_logp = np.stack([logp[b][:, labels[b]].T for b in range(len(w))])
    ce = -np.einsum("bkn,bkn->bk", w, token_logp)
    total += (ce * valid).sum() / valid.sum()
  np.testing.assert_allclose(float(loss_tok), total / 2, rtol=1e-5)
  # One token per box: both losses agree.
  onehot = jnp.zeros_like(batch["region_weights"]).at[..., 5].set(1.0)
  one = dict(batch, region_weights=onehot)
  np.testing.assert_allclose(float(per_token(params, one, None)[0]),
                             float(pooled(params, one, None)[0]), rtol=1e-5)


def _stage_loss(shapes, config):
  """loss(**stage options) -> the regions loss of a fresh tiny tower on one
  batch of 8 images (the same tower and batch every call)."""
  source, tok = shapes
  kind = stages.kinds()["region_classification"]
  model, init, _ = kind.make_model(config, "regions")
  params = jax.tree_util.tree_map(
      lambda x: getattr(x, "value", x), init(jax.random.key(0)),
      is_leaf=lambda x: hasattr(x, "value"))
  batch = next(pipeline.make_iterator(
      source, fmt="regions", cfg=testing.tiny_mllm_config(), tokenizer=tok,
      batch_size=8, seed=0, max_len=32, train=False))
  batch = {k: jnp.asarray(v) for k, v in batch.items() if not k.startswith("_")}

  def loss(**options):
    stage = config.stages.regions.copy_and_resolve_references()
    stage.update(options)
    return float(kind.make_loss(model, stage)(params, batch, None)[0])
  return loss


def test_token_attributes_train_only_those_per_token(shapes):
  """Option token_attributes: the named attributes per token, the others
  from the box average: the loss is the mean of the two kinds' terms."""
  config = testing.tiny_recipe("projection")
  loss = _stage_loss(shapes, config)
  mixed = loss(token_attributes=("colour",))
  all_tokens = loss(per_token=True)
  shape_only_tokens = loss(token_attributes=("shape",))
  # mixed + shape_only_tokens = pooled + all per token (each term once).
  np.testing.assert_allclose(mixed + shape_only_tokens, loss() + all_tokens,
                             rtol=1e-5)
  assert mixed != loss() and mixed != all_tokens
  from mmjax.config import ConfigError  # pylint: disable=g-import-not-at-top
  from mmjax.train import config_checks  # pylint: disable=g-import-not-at-top
  config.stages.regions.token_attributes = ("left",)
  with pytest.raises(ConfigError, match="token_attributes=\\('left',\\): "
                     "give a tuple of the stage's attributes"):
    config_checks.validate_config(config)


def test_attribute_weights_weight_the_mean(shapes):
  """Option attribute_weights: the loss is the weighted mean of the
  attributes' terms; bad weights are one config error."""
  config = testing.tiny_recipe("projection")
  loss = _stage_loss(shapes, config)
  shape = loss(attribute_weights=(1.0, 0.0))
  colour = loss(attribute_weights=(0.0, 1.0))
  np.testing.assert_allclose(loss(), (shape + colour) / 2, rtol=1e-5)
  np.testing.assert_allclose(loss(attribute_weights=(3.0, 1.0)),
                             (3 * shape + colour) / 4, rtol=1e-5)
  from mmjax.config import ConfigError  # pylint: disable=g-import-not-at-top
  from mmjax.train import config_checks  # pylint: disable=g-import-not-at-top
  for bad in ((1.0,), (1.0, -1.0), (0.0, 0.0)):
    config.stages.regions.attribute_weights = bad
    with pytest.raises(ConfigError, match="give \\(\\) or one weight >= 0 "
                       "per attribute"):
      config_checks.validate_config(config)
