"""What a sweep file says: a base config and the variants to run.

A sweep file (`experiments/NAME.py`) defines `SWEEP`:

  from mmjax.sweeps import spec as S

  SWEEP = S.Sweep(
      config="configs/shapes.py", args={"size": "small"},
      variants=S.grid(fusion=["projection", "resampler"]),
      common={"eval.max_examples": 200},           # every variant
      sizes={"tiny": {"stages.align.evals": ()}},  # only with --size=tiny
      stage_steps={"tiny": {"sft": 400}})          # only stages a variant has

A variant is a dict of overrides. A bare name that is not a top-level key of
the config is a config arg (`fusion=resampler` as in
`configs/shapes.py:fusion=resampler`); a dotted path or a top-level key is a
`--config.KEY=VALUE` override (`model.projector`, `batch_size`).
"""
from __future__ import annotations

import builtins
import dataclasses
import itertools
import re
from typing import Any, Mapping, Sequence

Variant = dict[str, Any]


def grid(**axes: Sequence[Any]) -> list[Variant]:
  """Every combination of the axes' values, the last axis varying fastest.

  grid(a=[1, 2], b=["x", "y"]) ->
    [{a: 1, b: x}, {a: 1, b: y}, {a: 2, b: x}, {a: 2, b: y}]
  Dotted keys need the dict form: grid(**{"model.projector": [...]}).
  """
  for key, values in axes.items():
    _check_axis(key, values)
  keys = list(axes)
  return [dict(builtins.zip(keys, combo))
          for combo in itertools.product(*(axes[k] for k in keys))]


# pylint: disable-next=redefined-builtin
def zip(**axes: Sequence[Any]) -> list[Variant]:
  """The i-th variant takes the i-th value of every axis (equal lengths).

  zip(a=[1, 2], b=["x", "y"]) -> [{a: 1, b: x}, {a: 2, b: y}]
  """
  for key, values in axes.items():
    _check_axis(key, values)
  lengths = {k: len(v) for k, v in axes.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"zip needs axes of equal length; got {lengths}")
  keys = list(axes)
  return [dict(builtins.zip(keys, values))
          for values in builtins.zip(*(axes[k] for k in keys))]


def _check_axis(key: str, values: Any) -> None:
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
    raise ValueError(f"axis {key!r} needs a list of values, got {values!r}")
  if not values:
    raise ValueError(f"axis {key!r} has no values")


@dataclasses.dataclass
class Sweep:
  """A base config and its variants.

  Attributes:
    config: the recipe file (`configs/shapes.py`); a relative path is
      looked up from the current directory, then from the repository that
      holds the sweep file.
    variants: one overrides dict per run (`grid`, `zip`, or by hand; lists
      concatenate).
    args: config args of every variant (`{"size": "small"}`); `--size`
      replaces args["size"].
    common: overrides of every variant (applied before the variant's).
    sizes: {size: overrides} added when that size is run.
    stage_steps: {size: {stage: steps}}: the steps of each named stage a
      variant has (others keep the recipe's), warm-up shortened to at most
      a fifth of them. This is how short modes set step counts without
      touching the recipe.
    description: one line for results.md.
  """
  config: str
  variants: list[Variant]
  args: dict[str, Any] = dataclasses.field(default_factory=dict)
  common: dict[str, Any] = dataclasses.field(default_factory=dict)
  sizes: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  stage_steps: dict[str, dict[str, int]] = dataclasses.field(
      default_factory=dict)
  description: str = ""

  def __post_init__(self):
    if not self.variants:
      raise ValueError("a sweep needs at least one variant")
    for i, v in enumerate(self.variants):
      if not isinstance(v, Mapping):
        raise ValueError(f"variant #{i} is {v!r}, not a dict of overrides")


def variant_name(variant: Mapping[str, Any], short: bool = True) -> str:
  """A directory name from the overrides: `fusion=qformer-n_latents=8`.

  With `short`, a dotted key is named by its last part.
  """
  if not variant:
    return "base"
  parts = []
  for key, value in variant.items():
    key = key.removeprefix("config.")
    label = key.rsplit(".", 1)[-1] if short else key
    parts.append(f"{label}={_value_text(value)}")
  return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", "-".join(parts))[:200]


def _value_text(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return "+".join(_value_text(v) for v in value) or "none"
  return str(value)


def variant_names(variants: Sequence[Mapping[str, Any]]) -> list[str]:
  """Unique names: short ones where they are unique, full keys otherwise,
  a `#i` suffix as the last resort."""
  names = [variant_name(v) for v in variants]
  if len(set(names)) < len(names):
    names = [variant_name(v, short=False) for v in variants]
  seen: dict[str, int] = {}
  out = []
  for name in names:
    seen[name] = seen.get(name, 0) + 1
    out.append(name if names.count(name) == 1 else f"{name}_{seen[name]}")
  return out
