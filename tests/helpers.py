"""Assertions shared by the model tests.

Tiny configs, dummy batches and random parameters are in mmjax/testing.py.
"""
import flax.linen as nn
import jax


def assert_all_boxed(variables, allowed_names):
  """Every parameter carries logical axis names, one per dim, all allowed."""
  leaves = jax.tree.leaves(
      variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
    assert set(leaf.names) <= allowed_names, leaf.names
    assert len(leaf.names) == leaf.value.ndim
