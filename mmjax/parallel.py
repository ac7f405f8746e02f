"""Device mesh, the logical-axis rule table, sharded init, multi-host helpers.

Parameters and activations carry logical axis names ('embed', 'heads', ...);
one rule table maps them to mesh axes ('data', 'fsdp', 'tensor'). Init runs
under jit with out_shardings from `jax.eval_shape`, so no device or host ever
materialises the whole model.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmjax.config import MESH_AXES, ConfigError

T = TypeVar("T")

# Logical axis -> mesh axes. The one place this table lives; a config may
# override rows through `config.mesh.rules` ({'mlp': 'tensor', ...}).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("length", None),
    ("layers", None),
)


def logical_rules(overrides: Mapping[str, Any] | None = None
                  ) -> tuple[tuple[str, Any], ...]:
  """DEFAULT_RULES with rows replaced (or added) by `overrides`."""
  rules = dict(DEFAULT_RULES)
  for name, target in (overrides or {}).items():
    if isinstance(target, list):
      target = tuple(target)
    rules[name] = target
  return tuple(rules.items())


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves {'data': -1, 'fsdp': 2, 'tensor': 1} against the device count."""
  shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
  if sum(s == -1 for s in shape) > 1:
    raise ConfigError(f"config.mesh={dict(sizes)}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in shape):
    raise ConfigError(
        f"config.mesh={dict(sizes)}: sizes must be positive or -1 (the rest)")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(
          f"config.mesh={dict(sizes)}: {num_devices} devices are not "
          f"divisible by the fixed axes' product {known}")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ConfigError(
        f"config.mesh={dict(sizes)} needs {math.prod(shape)} devices but "
        f"{num_devices} are available; use -1 for one axis to take the rest")
  return tuple(shape)


def make_mesh(sizes: Mapping[str, int],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all devices)."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(sizes, len(devices))
  try:
    grid = mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # pylint: disable=broad-except
    # Simulated CPU devices have no physical topology to optimise for.
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Sharding of a [B, ...] batch array: batch axis over data x fsdp."""
  spec = nn.logical_to_mesh_axes(("batch",), rules)
  return NamedSharding(mesh, spec)


def batch_shardings(batch: Mapping[str, Any], mesh: Mesh, rules
                    ) -> dict[str, NamedSharding]:
  """{key: sharding} of a batch: the batch axis first (`batch_sharding`),
  except M-RoPE positions ([3, B, L], keys ending in 'positions' with three
  axes), whose batch axis is the second."""
  spec = nn.logical_to_mesh_axes(("batch",), rules)
  second = NamedSharding(mesh, P(None, *spec))
  first = NamedSharding(mesh, spec)
  return {k: second if k.endswith("positions") and len(v.shape) == 3
          else first for k, v in batch.items()}


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, rules
                ) -> dict[str, jax.Array]:
  """Places a process-local numpy batch as global arrays sharded on batch
  (`batch_shardings`).

  Each process passes only its own slice; `make_array_from_process_local_data`
  assembles the global array (single-process: the whole batch).
  """
  shardings = batch_shardings(batch, mesh, rules)
  if jax.process_count() == 1:  # one transfer, no per-shard bookkeeping
    return jax.device_put(dict(batch), shardings)
  return {k: jax.make_array_from_process_local_data(shardings[k],
                                                    np.asarray(v))
          for k, v in batch.items()}


def logical_shardings(abstract_tree, mesh: Mesh, rules):
  """NamedShardings for a tree of (possibly boxed) abstract arrays."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules) -> Iterator[None]:
  """Trace models inside this: binds their activation constraints to `mesh`.

  `nn.with_logical_constraint` is a no-op unless logical rules and a mesh
  are set while the function is traced, so every jit of a model (init, train
  and eval steps) must be traced (lowered, or first called) in here.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def sharded_init(init_fn: Callable[..., Any], mesh: Mesh, rules, *args
                 ) -> tuple[Any, Any]:
  """Runs `init_fn(*args)` under jit with logical out_shardings.

  Args:
    init_fn: returns a pytree of arrays boxed with logical names
      (`nn.LogicallyPartitioned`), e.g. a train-state factory.
    mesh: the device mesh.
    rules: logical axis rules.
    *args: passed to init_fn (e.g. a PRNG key).

  Returns:
    (unboxed sharded pytree, its NamedShardings)
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = logical_shardings(abstract, mesh, rules)
  unboxed_init = lambda *a: nn.unbox(init_fn(*a))
  with sharding_context(mesh, rules):
    tree = jax.jit(unboxed_init, out_shardings=shardings)(*args)
  return tree, shardings


def first_process_then_others(fn: Callable[[], T], name: str) -> T:
  """Runs `fn` on process 0, then (after a barrier) on every other process.

  For work that writes a file every process then reads (a trained tokenizer,
  a built dataset) and that reuses the file when it exists: process 0 writes
  it once instead of all processes racing to write the same path. Without a
  shared filesystem each host simply does the work itself.
  """
  if jax.process_count() == 1:
    return fn()
  result, error = None, None
  if jax.process_index() == 0:
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-except
      error = e  # raised after the barrier: the others must not wait forever
  multihost_utils.sync_global_devices(f"mmjax:{name}")
  if error is not None:
    raise error
  return result if jax.process_index() == 0 else fn()


def _checkpoint_tree(path: str) -> Any:
  """The metadata tree of an orbax pytree checkpoint (no arrays read)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (heavy; only restores need it)
  tree = ocp.PyTreeCheckpointer().metadata(path)
  tree = getattr(tree, "item_metadata", tree)
  return getattr(tree, "tree", tree)


def checkpoint_keys(path: str) -> list[str]:
  """The top-level entries of an orbax pytree checkpoint, from its
  metadata (no arrays read)."""
  return list(_checkpoint_tree(path))


def restore_on_one_device(path: str, keys: Sequence[str] | None = None
                          ) -> Any:
  """An orbax pytree checkpoint with every array on the first local device,
  whatever mesh saved it (converted weights, `init_from`, a stage's params).

  Args:
    path: the checkpoint item directory.
    keys: restore only these top-level entries (those the tree has); None =
      all of it.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (heavy; only restores need it)
  ckptr = ocp.PyTreeCheckpointer()
  tree = _checkpoint_tree(path)
  if keys is not None:
    tree = {k: tree[k] for k in keys if k in tree}
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  return ckptr.restore(path, args=ocp.args.PyTreeRestore(
      item=target,
      restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=keys is not None))
