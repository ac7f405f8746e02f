"""A sweep file -> one validated run per variant (config, command, workdir).

  sweep = load_sweep("experiments/fusion_ablation.py")
  plans = build_plans(sweep, "experiments/fusion_ablation.py", "runs/fusion",
                      size="tiny")
  plans[0].command()  # [python, -m, mmjax.main, --config=..., --workdir=...]

Every variant's config is built and validated here, before anything runs:
a key the config does not have, or a bad value, raises `SweepError` naming
the variant and the key.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from typing import Any, Mapping

import ml_collections

from mmjax import config as config_lib
from mmjax.sweeps import spec as sweep_spec


class SweepError(config_lib.ConfigError):
  """A sweep file or one of its variants is wrong; the message says which."""


@dataclasses.dataclass
class VariantPlan:
  """One run of a sweep.

  Attributes:
    name: the sub-workdir's name (from the variant's overrides).
    variant: the variant's own overrides (the results table's columns).
    spec: `--config=` value: the recipe file and its args.
    overrides: every `--config.KEY` override, in order.
    config: the config as it will run (validated).
    workdir: DIR/name.
  """
  name: str
  variant: dict[str, Any]
  spec: str
  overrides: dict[str, Any]
  config: ml_collections.ConfigDict
  workdir: str

  def command(self, python: str = sys.executable) -> list[str]:
    """The `python -m mmjax.main` command of this run (--config first:
    absl applies the --config.KEY overrides after it)."""
    return [python, "-m", "mmjax.main", f"--config={self.spec}",
            f"--workdir={self.workdir}",
            *(f"--config.{k}={flag_value(v)}"
              for k, v in self.overrides.items())]


def load_sweep(path: str) -> sweep_spec.Sweep:
  """Runs a sweep file and returns its `SWEEP`."""
  try:
    config_lib.check_python_file(path, "sweep file",
                                 "experiments/fusion_ablation.py")
  except config_lib.ConfigError as e:
    raise SweepError(str(e)) from None
  module_spec = importlib.util.spec_from_file_location(
      f"mmjax_sweep_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(module_spec)
  # Sweep files may import their neighbours (experiments/shapes_tiny.py).
  sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
  try:
    module_spec.loader.exec_module(module)
  except (ValueError, TypeError) as e:  # grid/zip/Sweep arguments
    raise SweepError(f"sweep file {path}: {e}") from None
  finally:
    sys.path.pop(0)
  sweep = getattr(module, "SWEEP", None)
  if not isinstance(sweep, sweep_spec.Sweep):
    raise SweepError(f"sweep file {path} must define SWEEP = "
                     "mmjax.sweeps.spec.Sweep(...)")
  return sweep


def flag_value(value: Any) -> str:
  """VALUE of `--config.KEY=VALUE` as ml_collections' config flags parse it
  for a field of that type."""
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  if isinstance(value, str):
    return value
  return repr(value)


def resolve_config_path(config: str, sweep_path: str | None) -> str:
  """The recipe file: as given, else relative to the sweep file's repo
  (the directory above `experiments/`)."""
  if os.path.isabs(config) or os.path.exists(config) or not sweep_path:
    return os.path.abspath(config)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(sweep_path)))
  candidate = os.path.join(repo, config)
  return candidate if os.path.exists(candidate) else os.path.abspath(config)


def _is_arg(key: str, base: ml_collections.ConfigDict) -> bool:
  return "." not in key and key not in base


def _split(variant: Mapping[str, Any], base: ml_collections.ConfigDict
           ) -> tuple[dict[str, Any], dict[str, Any]]:
  """(config args, --config overrides) of an overrides dict."""
  args, overrides = {}, {}
  for key, value in variant.items():
    key = config_lib.current_key(base, key.removeprefix("config."))
    (args if _is_arg(key, base) else overrides)[key] = value
  return args, overrides


def _arg_text(args: Mapping[str, Any]) -> str:
  return ",".join(f"{k}={v}" for k, v in args.items())


def set_path(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """config.KEY = value for an existing dotted KEY; ConfigError otherwise."""
  parent_path, _, leaf = key.rpartition(".")
  parent = config_lib.get_path(config, parent_path) if parent_path else config
  config_lib.get_path(config, key)  # the leaf must exist (did-you-mean)
  old = parent[leaf]
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  try:
    parent[leaf] = value
  except (TypeError, ValueError) as e:
    raise config_lib.ConfigError(
        f"config.{key}={value!r} does not fit the field's value {old!r}: {e}"
    ) from None


def _stage_steps(config: ml_collections.ConfigDict, steps: Mapping[str, int],
                 cap: int) -> dict[str, Any]:
  """Overrides setting stage steps (and a warm-up of at most a fifth)."""
  out = {}
  stages = config.get("stages") or {}
  for name in stages.keys():
    stage = stages[name]
    n = int(steps.get(name, stage.steps))
    if cap:
      n = min(n, cap)
    if n == stage.steps:
      continue
    out[f"stages.{name}.steps"] = n
    warmup = stage.get("schedule", {}).get("warmup_steps")
    if warmup is not None and warmup > max(1, n // 5):
      out[f"stages.{name}.schedule.warmup_steps"] = max(1, n // 5)
  return out


def plan_variant(sweep: sweep_spec.Sweep, variant: Mapping[str, Any],
                 name: str, config_path: str, workdir: str,
                 size: str | None = None, steps_cap: int = 0) -> VariantPlan:
  """Builds and validates one variant's run; ConfigError when it is bad."""
  from mmjax.train import config_checks  # pylint: disable=g-import-not-at-top
  base = config_lib.load_config(
      f"{config_path}:{_arg_text(sweep.args)}" if sweep.args else config_path)
  size = size or sweep.args.get("size")
  layers = [sweep.common, sweep.sizes.get(size, {}) if size else {}, variant]
  args = dict(sweep.args, **({"size": size} if size else {}))
  overrides: dict[str, Any] = {}
  for layer in layers:
    a, o = _split(layer, base)
    args.update(a)
    overrides.update(o)
  spec = f"{config_path}:{_arg_text(args)}" if args else config_path
  config = config_lib.load_config(spec)
  for key, value in overrides.items():
    set_path(config, key, value)
  # Steps set explicitly (common, size or variant) win over the size's
  # step table; the cap applies to every stage.
  table = {k: v for k, v in (sweep.stage_steps.get(size, {}) if size
                             else {}).items()
           if f"stages.{k}.steps" not in overrides}
  steps = _stage_steps(config, table, steps_cap)
  for key, value in steps.items():
    set_path(config, key, value)
  overrides.update(steps)
  if "progress_bar" in config and "progress_bar" not in overrides:
    overrides["progress_bar"] = False  # the sweep shows its own progress
    config.progress_bar = False
  config_checks.validate_config(config)
  return VariantPlan(name=name, variant=dict(variant), spec=spec,
                     overrides=overrides, config=config,
                     workdir=os.path.join(os.path.abspath(workdir), name))


def check_only(names: list[str], only: list[str] | None) -> None:
  """SweepError when `only` names a variant the sweep lacks."""
  unknown = sorted(set(only or ()) - set(names))
  if unknown:
    raise SweepError(f"--only names {unknown}, which the sweep lacks; "
                     f"variants: {', '.join(names)}")


def build_plans(sweep: sweep_spec.Sweep, sweep_path: str | None, workdir: str,
                size: str | None = None, steps_cap: int = 0,
                only: list[str] | None = None) -> list[VariantPlan]:
  """One validated VariantPlan per variant (all, or those named in `only`).

  Raises:
    SweepError: naming the first variant that is wrong and why.
  """
  config_path = resolve_config_path(sweep.config, sweep_path)
  names = sweep_spec.variant_names(sweep.variants)
  check_only(names, only)
  plans = []
  for i, (name, variant) in enumerate(zip(names, sweep.variants)):
    if only and name not in only:
      continue
    try:
      plans.append(plan_variant(sweep, variant, name, config_path, workdir,
                                size=size, steps_cap=steps_cap))
    except config_lib.ConfigError as e:
      raise SweepError(f"variant #{i} {name!r}: {e}") from None
  # A shared step table may name stages these variants lack (a typo too).
  stages = set().union(*(p.config.get("stages", {}).keys() for p in plans))
  table = sweep.stage_steps.get(size or sweep.args.get("size"), {})
  unknown = sorted(set(table) - stages)
  if unknown:
    print(f"note: stage_steps names stage(s) {unknown} that no variant has "
          f"(ignored); stages: {', '.join(sorted(stages))}", file=sys.stderr)
  return plans
