"""Mesh from config, the logical-axis rule table, and their validation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mmjax import parallel
from mmjax import testing
from mmjax.config import ConfigError
from mmjax.train import config_checks


@pytest.mark.parametrize("sizes,shape", [
    ({"data": -1}, (8, 1, 1)),
    ({"data": 2, "fsdp": -1}, (2, 4, 1)),
    ({"data": 2, "fsdp": 2, "tensor": 2}, (2, 2, 2)),
    ({"data": 1, "fsdp": 1, "tensor": -1}, (1, 1, 8)),
])
def test_mesh_shape_resolves_minus_one(sizes, shape):
  assert parallel.mesh_shape(sizes, 8) == shape


@pytest.mark.parametrize("sizes,message", [
    ({"data": -1, "fsdp": -1}, "at most one axis may be -1"),
    ({"data": 0}, "positive or -1"),
    ({"data": 3, "fsdp": -1}, "not divisible"),
    ({"data": 2, "fsdp": 2}, "needs 4 devices but 8 are available"),
])
def test_mesh_shape_errors_say_what_to_fix(sizes, message):
  with pytest.raises(ConfigError, match=message):
    parallel.mesh_shape(sizes, 8)


def test_make_mesh_names_the_three_axes():
  mesh = parallel.make_mesh({"data": -1}, jax.devices()[:1])
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}


def test_rule_overrides_replace_and_add_rows():
  rules = dict(parallel.logical_rules({"mlp": ["fsdp", "tensor"],
                                       "experts": "data"}))
  assert rules["mlp"] == ("fsdp", "tensor")  # lists become tuples
  assert rules["experts"] == "data"
  assert rules["embed"] == "fsdp" and rules["batch"] == ("data", "fsdp")
  assert dict(parallel.logical_rules(None)) == dict(parallel.DEFAULT_RULES)


def test_batch_axis_spans_data_and_fsdp_and_embed_does_not_repeat_it():
  rules = parallel.DEFAULT_RULES
  assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == P(
      ("data", "fsdp"), None, None)
  assert nn.logical_to_mesh_axes(("embed", "mlp"), rules) == P("fsdp",
                                                              "tensor")


def test_constraints_bind_only_inside_the_sharding_context():
  mesh = parallel.make_mesh({"data": -1}, jax.devices()[:1])

  def count(fn):
    eqns = jax.make_jaxpr(fn)(jnp.ones((2, 3, 4))).jaxpr.eqns
    return sum(e.primitive.name == "sharding_constraint" for e in eqns)
  constrained = lambda x: nn.with_logical_constraint(
      x, ("batch", "length", "embed"))
  assert count(constrained) == 0  # no rules: a silent no-op
  with parallel.sharding_context(mesh, parallel.DEFAULT_RULES):
    assert count(constrained) == 1


def test_shard_batch_and_sharded_init_on_one_process():
  mesh = parallel.make_mesh({"data": -1}, jax.devices()[:1])
  batch = parallel.shard_batch({"x": np.arange(6).reshape(2, 3)}, mesh,
                               parallel.DEFAULT_RULES)
  assert batch["x"].sharding.spec == P(("data", "fsdp"))
  init = lambda rng: {"w": nn.LogicallyPartitioned(
      jax.random.normal(rng, (4, 6)), ("embed", "mlp"))}
  tree, shardings = parallel.sharded_init(init, mesh, parallel.DEFAULT_RULES,
                                          jax.random.key(0))
  assert tree["w"].shape == (4, 6)
  assert shardings["w"].spec == P("fsdp", "tensor")
  assert tree["w"].sharding.spec == P("fsdp", "tensor")


def test_first_process_then_others_runs_once_in_one_process():
  calls = []
  assert parallel.first_process_then_others(
      lambda: calls.append(1) or "done", "test") == "done"
  assert calls == [1]


def test_config_checks_reject_bad_rules_and_chunked_loss():
  config = testing.tiny_recipe()
  config_checks.validate_config(config)
  config.mesh.rules = {"mlp": "model"}
  with pytest.raises(ConfigError, match=r"mesh.rules.mlp='model'"):
    config_checks.validate_config(config)
  config.mesh.rules = {"mlp": ("fsdp", "tensor"), "heads": None}
  config.stages.siglip.chunked_loss = True
  config_checks.validate_config(config)
  config.stages.sft.chunked_loss = True
  with pytest.raises(ConfigError, match=r"sft.chunked_loss=True.*'lm'"):
    config_checks.validate_config(config)
