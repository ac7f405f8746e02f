"""Name and layout mapping from Hugging Face tensors to mmjax parameters.

An importer builds a *plan*: a dict from the "/"-joined path of every mmjax
parameter (`llm/layers_0/attn/q/kernel`) to a `Src`, which names the Hugging
Face tensor(s) it comes from, their expected shapes, and the function that
turns them into the mmjax layout. `materialize` checks the plan against the
checkpoint headers (missing tensors, wrong shapes, tensors nobody uses) and
against the mmjax model's own abstract parameters, all before reading any
data, then loads the parameters one tensor at a time, each placed straight
onto its target sharding when a mesh is given.

Layout conventions (torch Linear weight is [out, in]):
  dense kernel      W.T                                   [in, out]
  HeadsIn kernel    W.T.reshape(D, H, Dh)                 [D, H, Dh]
  HeadsIn bias      b.reshape(H, Dh)                      [H, Dh]
  HeadsOut kernel   W.T.reshape(H, Dh, D)                 [H, Dh, D]
  conv patch        W[D,C,p,p].transpose(2,3,1,0).reshape(p*p*C, D)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from mmjax.hf.safetensors_io import Checkpoint, HFImportError, short_list

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Src:
  """Where one mmjax parameter comes from.

  Attributes:
    keys: Hugging Face tensor names.
    shapes: their expected shapes (checked against the headers).
    fn: arrays (one per key) -> the mmjax array.
  """
  keys: tuple[str, ...]
  shapes: tuple[Shape, ...]
  fn: Callable[..., np.ndarray]


Plan = dict[str, Src]


def raw(key: str, shape: Shape, out_shape: Shape | None = None) -> Src:
  """The tensor as stored (reshaped to `out_shape` if given)."""
  shape = tuple(shape)
  out = tuple(out_shape) if out_shape is not None else shape
  return Src((key,), (shape,), lambda w: w.reshape(out))


def dense(key: str, d_in: int, d_out: int) -> Src:
  """torch Linear weight [d_out, d_in] -> Flax kernel [d_in, d_out]."""
  return Src((key,), ((d_out, d_in),), lambda w: w.T)


def heads_in(key: str, d_in: int, heads: int, head_dim: int) -> Src:
  """[H*Dh, D] -> HeadsIn kernel [D, H, Dh]."""
  return Src((key,), ((heads * head_dim, d_in),),
             lambda w: w.T.reshape(d_in, heads, head_dim))


def heads_out(key: str, heads: int, head_dim: int, d_out: int) -> Src:
  """[D, H*Dh] -> HeadsOut kernel [H, Dh, D]."""
  return Src((key,), ((d_out, heads * head_dim),),
             lambda w: w.T.reshape(heads, head_dim, d_out))


def conv_patch(key: str, d: int, channels: int, patch: int) -> Src:
  """Conv2d weight [D, C, p, p] -> Dense kernel on `patchify` vectors."""
  return Src((key,), ((d, channels, patch, patch),),
             lambda w: w.transpose(2, 3, 1, 0).reshape(
                 patch * patch * channels, d))


def add_norm(plan: Plan, path: str, key: str, dim: int,
             bias: bool = True) -> None:
  """LayerNorm / RMSNorm: HF weight -> scale (and bias)."""
  plan[f"{path}/scale"] = raw(f"{key}.weight", (dim,))
  if bias:
    plan[f"{path}/bias"] = raw(f"{key}.bias", (dim,))


def add_dense(plan: Plan, path: str, key: str, d_in: int, d_out: int,
              bias: bool = True) -> None:
  """nn.Dense: kernel (and bias) from a torch Linear."""
  plan[f"{path}/kernel"] = dense(f"{key}.weight", d_in, d_out)
  if bias:
    plan[f"{path}/bias"] = raw(f"{key}.bias", (d_out,))


def add_attention(plan: Plan, path: str, keys: Mapping[str, str], *,
                  d_q: int, d_kv: int, heads: int, kv_heads: int,
                  head_dim: int, d_out: int, qkv_bias: bool,
                  o_bias: bool) -> None:
  """HeadsIn q/k/v and HeadsOut o from separate torch Linears.

  Args:
    plan: filled in place.
    path: mmjax module path holding q, k, v, o.
    keys: {'q', 'k', 'v', 'o'} -> HF module name (without '.weight').
    d_q: query input width; d_kv: key/value input width.
    heads, kv_heads, head_dim: attention sizes.
    d_out: output width.
    qkv_bias, o_bias: which projections have biases.
  """
  for name, n, d_in in (("q", heads, d_q), ("k", kv_heads, d_kv),
                        ("v", kv_heads, d_kv)):
    plan[f"{path}/{name}/kernel"] = heads_in(f"{keys[name]}.weight", d_in, n,
                                             head_dim)
    if qkv_bias:
      plan[f"{path}/{name}/bias"] = raw(f"{keys[name]}.bias", (n * head_dim,),
                                        (n, head_dim))
  plan[f"{path}/o/kernel"] = heads_out(f"{keys['o']}.weight", heads, head_dim,
                                       d_out)
  if o_bias:
    plan[f"{path}/o/bias"] = raw(f"{keys['o']}.bias", (d_out,))


def path_str(path) -> str:
  """jax key path -> 'a/b/c'."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def leaf_paths(tree: Any) -> dict[str, Any]:
  """'a/b/c' -> leaf of a (possibly boxed) params tree."""
  return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]}


def abstract_params(module: nn.Module, *init_args: Any,
                    **init_kwargs: Any) -> Any:
  """Boxed abstract `params` of `module.init(key, *init_args)`."""
  variables = jax.eval_shape(
      lambda r: module.init(r, *init_args, **init_kwargs), jax.random.key(0))
  return variables["params"]


def _check_checkpoint(ckpt: Checkpoint, plan: Plan,
                      ignore: Sequence[str]) -> None:
  needed: dict[str, Shape] = {}
  for src in plan.values():
    for key, shape in zip(src.keys, src.shapes):
      needed[key] = tuple(shape)
  missing = sorted(k for k in needed if k not in ckpt)
  if missing:
    raise HFImportError(
        f"{ckpt.path} is missing {len(missing)} tensor(s) that a "
        f"{ckpt.config.get('model_type', '?')!r} checkpoint with this "
        f"config.json must have: {short_list(missing)}. Found "
        f"{len(ckpt.keys())} tensors: {short_list(ckpt.keys())}.")
  wrong = [f"{k}: expected {list(s)}, found {list(ckpt.shape(k))}"
           for k, s in sorted(needed.items()) if ckpt.shape(k) != s]
  if wrong:
    raise HFImportError(
        f"{ckpt.path}: {len(wrong)} tensor(s) have shapes that do not match "
        f"config.json: {'; '.join(wrong[:8])}"
        f"{' ...' if len(wrong) > 8 else ''}.")
  unused = [k for k in ckpt.keys() if k not in needed and not any(
      fnmatch.fnmatchcase(k, pat) for pat in ignore)]
  if unused:
    raise HFImportError(
        f"{ckpt.path} has {len(unused)} tensor(s) this importer does not "
        f"know where to put (an architecture variant mmjax cannot express?): "
        f"{short_list(unused)}.")


def _check_against_model(plan: Plan, abstract: Any) -> dict[str, Any]:
  leaves = leaf_paths(abstract)
  extra = sorted(set(plan) - set(leaves))
  absent = sorted(set(leaves) - set(plan))
  if extra or absent:
    raise HFImportError(
        f"internal mapping error: the import plan and the mmjax model "
        f"disagree; parameters without a source: {short_list(absent)}; "
        f"sources without a parameter: {short_list(extra)}.")
  return leaves


def materialize(ckpt: Checkpoint, plan: Plan, abstract: Any, *,
                ignore: Sequence[str] = (), mesh: Mesh | None = None,
                rules: Any = None, dtype: Any = np.float32) -> Any:
  """Loads the parameters `plan` describes into the tree of `abstract`.

  Args:
    ckpt: the checkpoint.
    plan: mmjax path -> Src, one entry per parameter of the model.
    abstract: boxed abstract params (`abstract_params`), giving the tree,
      the shapes and, with a mesh, the logical axis names.
    ignore: fnmatch patterns of checkpoint tensors known to be unused.
    mesh: place each parameter with its logical sharding on this mesh;
      None = default device.
    rules: logical axis rules for the mesh (default `parallel.DEFAULT_RULES`).
    dtype: parameter dtype.

  Returns:
    The unboxed params tree of jax arrays.

  Raises:
    HFImportError: a tensor is missing, has the wrong shape or is unused.
  """
  _check_checkpoint(ckpt, plan, ignore)
  leaves = _check_against_model(plan, abstract)
  shardings = None
  if mesh is not None:
    from mmjax import parallel  # pylint: disable=g-import-not-at-top
    rules = parallel.DEFAULT_RULES if rules is None else rules
    flat = parallel.logical_shardings(abstract, mesh, rules)
    shardings = {path_str(p): s for p, s in
                 jax.tree_util.tree_flatten_with_path(flat)[0]}

  def load(path: str, leaf: Any) -> jax.Array:
    src = plan[path]
    value = np.asarray(src.fn(*(ckpt.get(k) for k in src.keys)), dtype)
    shape = tuple(nn.unbox(leaf).shape)
    if value.shape != shape:
      raise HFImportError(f"internal mapping error: {path} came out "
                          f"{value.shape}, the model expects {shape}.")
    if shardings is None:
      return jax.device_put(value)
    return jax.make_array_from_callback(shape, shardings[path],
                                        lambda idx: value[idx])

  out = jax.tree_util.tree_map_with_path(
      lambda p, x: load(path_str(p), x), abstract,
      is_leaf=lambda x: isinstance(x, nn.Partitioned))
  logging.info("imported %d parameters from %s", len(leaves), ckpt.path)
  return out
