"""Rematerialisation (activation checkpointing) policies and layer stacking.

`config.remat` picks what each transformer block keeps for the backward pass;
everything else is recomputed there:

  'none'      keep every intermediate (no remat; fastest, most memory).
  'full'      keep only the block's inputs; recompute the whole block
              (`jax.checkpoint` with no policy; `nothing_saveable` is the same).
  'dots'      keep the outputs of matmuls without batch dimensions (the
              q/k/v/o and MLP projections); recompute norms, activations,
              rotary and attention scores/softmax
              (`dots_with_no_batch_dims_saveable`, MaxText's 'minimal').
  'dots_all'  keep every matmul output, batched ones too: also the [B, H, L, S]
              attention scores and the attention-weighted values
              (`dots_saveable`).

Remat wraps the block class with `nn.remat`, which keeps the block's name and
so the parameter tree (`layers_{i}/...`) unchanged. The values are identical
under every policy; only memory and FLOPs change. Measured here (XLA:CPU): the
saved residuals shrink as documented, but the compiled memory of an unrolled
model does not, because the CPU compiler drops the optimization barriers and
merges the recomputation back into the forward pass; with scan_layers=True
(decoder) the saving does show (full: 3.7x less temp memory). The GPU and TPU
pipelines keep the barriers (not measurable on this machine).

`stack_layer_params` / `unstack_layer_params` convert between that per-layer
tree and the tree of a model that scans its layers (`layers/...`, every leaf
with a leading n_layers axis, logical name 'layers').
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

_POLICIES: dict[str, Callable[..., bool] | None] = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_all": jax.checkpoint_policies.dots_saveable,
}
REMAT_POLICIES = ("none",) + tuple(_POLICIES)

_LAYER_KEY = re.compile(r"^layers_(\d+)$")


def check_remat(policy: str, owner: str) -> None:
  """Raises ValueError naming `owner` unless `policy` is in REMAT_POLICIES."""
  if policy not in REMAT_POLICIES:
    raise ValueError(f"{owner}={policy!r}; allowed: {list(REMAT_POLICIES)} "
                     f"(see mmjax/models/remat.py for what each keeps).")


def remat_block(block_cls: type[nn.Module], policy: str, *,
                prevent_cse: bool = True) -> type[nn.Module]:
  """`block_cls` rematerialised with the named policy ('none': unchanged).

  Args:
    block_cls: a Module class whose __call__ takes only arrays (or None).
    policy: one of REMAT_POLICIES.
    prevent_cse: keep XLA from merging the recomputation with the forward
      pass; True unless the block runs inside a scan (where it is not needed
      and costs speed).

  Returns:
    A Module class with the same fields; instances keep their names, so
    the parameter tree does not change.
  """
  check_remat(policy, "remat")
  if policy == "none":
    return block_cls
  return nn.remat(block_cls, policy=_POLICIES[policy],
                  prevent_cse=prevent_cse)


def stack_layer_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """Per-layer tree -> scanned tree.

  Args:
    params: a module's parameters holding `layers_0` ... `layers_{n-1}`
      (identical structures) next to other entries.

  Returns:
    The same dict with those entries replaced by `layers`, each leaf stacked
    to [n, ...] in layer order. Other entries are passed through.
  """
  indices = sorted(int(m.group(1)) for k in params
                   if (m := _LAYER_KEY.match(k)))
  if indices != list(range(len(indices))) or not indices:
    raise ValueError(f"expected keys layers_0..layers_{{n-1}}, found layer "
                     f"indices {indices}.")
  if "layers" in params:
    raise ValueError("params already hold a stacked 'layers' entry.")
  out = {k: v for k, v in params.items() if not _LAYER_KEY.match(k)}
  out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs),
                               *[params[f"layers_{i}"] for i in indices])
  return out


def unstack_layer_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """Scanned tree -> per-layer tree (inverse of `stack_layer_params`)."""
  if "layers" not in params:
    raise ValueError("params have no stacked 'layers' entry to unstack.")
  stacked = params["layers"]
  n = jax.tree.leaves(stacked)[0].shape[0]
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(n):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return out
