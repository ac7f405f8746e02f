"""Recolouring objects in region training (`regions` option `recolour`):
only the objects' own pixels change, their colour is no longer asked, the
draws repeat on resume, and the loss skips the unasked colours."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import config as C
from mmjax import testing
from mmjax.data import builders, formats, pipeline, recolour
from mmjax.data import shapes as shapes_data
from mmjax.data.shapes import COLOUR_RGB
from mmjax.data.text_corpus import COLOURS
from mmjax.train import config_checks, stages
from tests.helpers import tiny_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
  builder, tok = tiny_shapes_dataset(tmp_path_factory.mktemp("data"),
                                     num_train=24)
  return builders.load_source(builder, "train"), tok


def test_recolour_paints_only_the_objects(shapes):
  source, _ = shapes
  painted = 0
  for j in range(len(source)):
    ex = formats.record_example(source[j], 0, "regions")
    new = recolour.recolour_objects(ex, 1.0, np.random.default_rng(j))
    np.testing.assert_array_equal(new.labels[:, 0], ex.labels[:, 0])  # shape
    np.testing.assert_array_equal(new.boxes, ex.boxes)
    assert (new.labels[:, 1] == recolour.IGNORED).all()
    changed = (new.image != ex.image).any(-1)
    side = ex.image.shape[0]
    inside = np.zeros_like(changed)
    for k, (x0, y0, x1, y1) in enumerate(ex.boxes):
      box = (slice(int(np.floor(y0 * side)), int(np.ceil(y1 * side))),
             slice(int(np.floor(x0 * side)), int(np.ceil(x1 * side))))
      inside[box] = True
      palette = np.asarray(COLOUR_RGB[COLOURS[ex.labels[k, 1]]])
      was = np.all(ex.image[box] == palette, -1)
      # Every pixel of the object's colour in its box is repainted (two
      # objects of one colour whose boxes overlap: each its own colour).
      assert changed[box][was].all()
      painted += 1
    assert not changed[~inside].any()  # the background is untouched
    # One new colour per object: as many colours as objects at most.
    assert len(np.unique(new.image[changed], axis=0)) <= len(ex.boxes)
  assert painted > len(source)
  # Probability 0: the same example.
  ex = formats.record_example(source[0], 0, "regions")
  assert recolour.recolour_objects(ex, 0.0, np.random.default_rng(0)) is ex


def _iterator(source, tok, **kwargs):
  return pipeline.make_iterator(
      source, fmt="regions", cfg=testing.tiny_mllm_config(), tokenizer=tok,
      batch_size=8, seed=0, max_len=32, **kwargs)


def test_pipeline_recolours_the_same_on_resume(shapes):
  source, tok = shapes
  a, b = _iterator(source, tok, recolour=0.5), _iterator(source, tok,
                                                          recolour=0.5)
  first = next(a)
  np.testing.assert_array_equal(first["images"], next(b)["images"])
  colour = first["region_labels"][..., 1][first["region_valid"] > 0]
  assert (colour == recolour.IGNORED).any() and (colour >= 0).any()
  state = a.get_state()
  assert state["recolour"] == 0.5
  again = _iterator(source, tok, recolour=0.5)
  again.set_state(state)
  nxt = next(a)
  np.testing.assert_array_equal(next(again)["images"], nxt["images"])
  plain = next(_iterator(source, tok))
  assert not (plain["region_labels"] == recolour.IGNORED).any()
  with pytest.raises(ValueError, match="recolour"):
    _iterator(source, tok, recolour=0.5, train=False)
  with pytest.raises(ValueError, match="recolour"):
    _iterator(source, tok, recolour=1.5)


def test_loss_skips_unasked_colours(shapes):
  source, tok = shapes
  config = testing.tiny_recipe("projection")
  kind = stages.kinds()["region_classification"]
  model, init, _ = kind.make_model(config, "regions")
  loss_fn = kind.make_loss(model, config.stages.regions)
  params = jax.tree_util.tree_map(
      lambda x: getattr(x, "value", x), init(jax.random.key(0)),
      is_leaf=lambda x: hasattr(x, "value"))
  batch = next(_iterator(source, tok, train=False))
  batch = {k: jnp.asarray(v) for k, v in batch.items() if not k.startswith("_")}
  _, full = loss_fn(params, batch, None)
  # Colour labels of the first half of the objects unasked: the colour
  # accuracy is the one over the rest, shape accuracy unchanged.
  labels = np.asarray(batch["region_labels"]).copy()
  hidden = np.zeros(labels.shape[:2], bool)
  hidden[:4] = True
  labels[..., 1][hidden] = recolour.IGNORED
  _, part = loss_fn(params, dict(batch, region_labels=jnp.asarray(labels)),
                    None)
  np.testing.assert_allclose(part["shape_accuracy"], full["shape_accuracy"])
  logits = model.apply({"params": params}, batch["images"][:, 0],
                       batch["region_weights"])["colour"]
  right = np.asarray(logits.argmax(-1)) == np.asarray(
      batch["region_labels"][..., 1])
  rest = np.asarray(batch["region_valid"]) * ~hidden
  np.testing.assert_allclose(part["colour_accuracy"],
                             (right * rest).sum() / rest.sum(), rtol=1e-6)


def test_bad_recolour_is_one_config_error():
  config = testing.tiny_recipe("projection")
  config.stages.regions.recolour = 2.0
  with pytest.raises(C.ConfigError, match=r"regions.recolour=2.0"):
    config_checks.validate_config(config)


def test_kept_object_pixels_repaint_as_found_afresh():
  """`recolour_objects` with `object_pixels` computed once (what a loader's
  PixelCache keeps per record) paints exactly what it paints without:
  the draws depend on the row, the pixels on the record."""
  cache = recolour.PixelCache(max_bytes=1 << 20)
  for i in range(40):
    ex = formats.record_example(shapes_data.example("train", i), 0,
                                "regions")
    for row in range(3):
      kept = cache.get(i, lambda: recolour.object_pixels(ex))
      a = recolour.recolour_objects(ex, 0.7, np.random.default_rng([1, row]),
                                    kept)
      b = recolour.recolour_objects(ex, 0.7, np.random.default_rng([1, row]))
      np.testing.assert_array_equal(a.image, b.image)
      np.testing.assert_array_equal(a.labels, b.labels)
  assert len(cache) == 40 and cache.cached_bytes <= cache.max_bytes
  small = recolour.PixelCache(max_bytes=1)      # over budget: not kept
  small.get(0, lambda: recolour.object_pixels(ex))
  assert len(small) == 0
