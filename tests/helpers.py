"""Assertions shared by the model tests."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def assert_all_boxed(variables, allowed_names):
  """Every parameter carries logical axis names, one per dim, all allowed."""
  leaves = jax.tree.leaves(
      variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
    assert set(leaf.names) <= allowed_names, leaf.names
    assert len(leaf.names) == leaf.value.ndim


def random_params(abstract, seed=0):
  """Random parameters for an abstract tree without compiling init (slow on
  CPU): norm scales 1, biases and cross-attention gates 0 (as at init),
  weights ~ N(0, 1/fan_in)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "alpha" in name or name.endswith("['bias']"):
      return jnp.zeros(leaf.shape, leaf.dtype)
    if name.endswith("['scale']"):
      return jnp.ones(leaf.shape, leaf.dtype)
    fan_in = leaf.shape[0] if leaf.ndim > 1 else 1
    return jnp.asarray(rng.normal(0, fan_in ** -0.5, leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, abstract)
