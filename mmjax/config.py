"""Config arguments (big_vision style) and up-front validation.

Every recipe is `configs/<family>.py` with `get_config(arg)`, where `arg` is a
comma-separated list of `key=value` pairs (`size=tiny,steps=20`) or a bare
variant name (`tiny` == `size=tiny`). `parse_arg` turns that string into a
ConfigDict of typed values; `validate` checks a finished config before anything
is compiled and raises `ConfigError` naming the key, the value and what is
allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import sys
import typing
from typing import Any, Callable, Iterable, Mapping, NoReturn, Sequence

import ml_collections


class ConfigError(ValueError):
  """A config key or value a user must fix; the message says how."""


# ------------------------------------------------------- command lines --
# Every CLI (main, generate, evaluate, convert, sweep) reports a user's
# mistake the same way: one line on stderr, exit status 2.
USAGE_ERROR = 2


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
  """Prints `error: MESSAGE` (one line) to stderr and exits with `code`."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr,
        flush=True)
  sys.exit(code)


def absl_flags_parser(argv: list[str]) -> list[str]:
  """absl's flag parsing, a bad flag or value reported by `fail` (absl's own
  handler prints the usage text and exits 1)."""
  from absl import flags  # pylint: disable=g-import-not-at-top  (absl only for CLIs)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).split("\n")[0])


def _coerce(key: str, raw: str, default: Any) -> Any:
  """Parses `raw` into the type of `default`."""
  try:
    if isinstance(default, bool):
      low = raw.lower()
      if low not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(raw)
      return low in ("true", "1", "yes")
    if isinstance(default, int):
      return int(raw)
    if isinstance(default, float):
      return float(raw)
  except ValueError:
    raise ConfigError(
        f"config arg {key}={raw!r}: expected a {type(default).__name__} "
        f"(default {default!r})") from None
  return raw


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `key=value,...` into a ConfigDict with the defaults' types.

  A bare word `w` means `size=w` when `size` is a known key, so
  `configs/lm.py:tiny` works. Unknown keys raise ConfigError listing the
  allowed ones.

  Args:
    arg: the text after `:` in `--config=configs/x.py:ARG` (may be None).
    **defaults: every allowed key with its default value.

  Returns:
    A ConfigDict holding all keys, overridden where `arg` says so.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep:
      if "size" in defaults:
        key, raw = "size", item
      else:
        raise ConfigError(f"config arg {item!r} is not key=value; allowed "
                          f"keys: {', '.join(sorted(defaults))}")
    if key not in defaults:
      raise ConfigError(
          f"unknown config arg {key!r} (in {arg!r}); allowed keys: "
          f"{', '.join(sorted(defaults))}{_did_you_mean(key, defaults)}")
    out[key] = _coerce(key, raw.strip(), defaults[key])
  return out


def _did_you_mean(key: str, candidates: Iterable[str]) -> str:
  close = difflib.get_close_matches(key, list(candidates), n=1)
  return f". Did you mean {close[0]!r}?" if close else ""


def get_path(config: ml_collections.ConfigDict, path: str) -> Any:
  """Returns config value at dotted `path`; ConfigError when absent."""
  node = config
  walked = []
  for part in path.split("."):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      where = ".".join(walked) or "<root>"
      raise ConfigError(
          f"unknown config key {path!r}: {where} has no {part!r}; it has: "
          f"{', '.join(sorted(keys))}{_did_you_mean(part, keys)}")
    node = node[part]
    walked.append(part)
  return node


def dataclass_block(cls: type, values: Mapping[str, Any]
                    ) -> ml_collections.ConfigDict:
  """A config block holding every field of dataclass `cls`.

  Each field takes its value from `values`, else the field's default, so a
  recipe lists what it chooses and a command line can still set any other
  field (`--config.model.lm.query_pre_attn_scalar=64.0`). A None becomes a
  placeholder of the field's type: absl cannot parse an override of a plain
  None (`--config.model.lm.mrope_sections='(4, 6, 6)'`).

    block = dataclass_block(DecoderConfig, dict(d_model=128, n_layers=2))
    block.head_dim       # None, settable as an int

  Raises:
    ConfigError: `values` names a key `cls` lacks, or leaves out a field
      that has no default.
  """
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ConfigError(
        f"unknown {cls.__name__} key(s) {unknown}; allowed: "
        f"{', '.join(fields)}{_did_you_mean(unknown[0], fields)}")
  hints = typing.get_type_hints(cls)
  block = {}
  for name, field in fields.items():
    if name in values:
      value = values[name]
    elif field.default is not dataclasses.MISSING:
      value = field.default
    elif field.default_factory is not dataclasses.MISSING:
      value = field.default_factory()
    else:
      raise ConfigError(f"{cls.__name__} needs {name!r}: it has no default")
    if value is None:
      value = ml_collections.FieldReference(
          None, field_type=_type_besides_none(hints[name]))
    block[name] = value
  return ml_collections.ConfigDict(block)


def _type_besides_none(hint: Any) -> type:
  """int for `int | None`, tuple for `tuple[int, ...] | None`; object (any
  Python literal) when the hint names several types."""
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  if len(args) != 1:
    return object
  return typing.get_origin(args[0]) or args[0]


# ----------------------------------------------------------------- checks --
# A check takes (config) and raises ConfigError. `validate` runs them all and
# reports the first problem: one clear message beats a list of cascades.
Check = Callable[[ml_collections.ConfigDict], None]


def check_choice(path: str, allowed: Sequence[Any]) -> Check:
  def check(config):
    value = get_path(config, path)
    if value not in allowed:
      raise ConfigError(
          f"config.{path}={value!r} is not allowed; allowed values: "
          f"{', '.join(map(repr, allowed))}")
  return check


def check_int(path: str, minimum: int | None = None) -> Check:
  def check(config):
    value = get_path(config, path)
    if isinstance(value, bool) or not isinstance(value, int):
      raise ConfigError(f"config.{path}={value!r} must be an integer")
    if minimum is not None and value < minimum:
      raise ConfigError(f"config.{path}={value!r} must be >= {minimum}")
  return check


def check_number(path: str, low: float | None = None,
                 high: float | None = None) -> Check:
  def check(config):
    value = get_path(config, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"config.{path}={value!r} must be a number")
    if (low is not None and value < low) or (high is not None and value > high):
      raise ConfigError(
          f"config.{path}={value!r} must lie in [{low}, {high}]")
  return check


def check_that(condition: Callable[[ml_collections.ConfigDict], bool],
               message: Callable[[ml_collections.ConfigDict], str]) -> Check:
  """A consistency check across keys; `message` explains the fix."""
  def check(config):
    if not condition(config):
      raise ConfigError(message(config))
  return check


def validate(config: ml_collections.ConfigDict, checks: Iterable[Check]) -> None:
  """Runs every check; raises ConfigError at the first problem."""
  for check in checks:
    check(config)


def stage_batch_size(config: ml_collections.ConfigDict, name: str) -> int:
  """A stage's global batch: its own `batch_size` if > 0, else the run's."""
  return int(config.stages[name].get("batch_size", 0) or config.batch_size)


def data_order_seed(config: ml_collections.ConfigDict) -> int:
  """The seed of a run's training-data order: `data.seed` (which also
  builds the dataset) plus the run's `seed`, so `--config.seed=1` reruns a
  recipe with another init and another batch order over the same data (0:
  the order `data.seed` alone gives)."""
  return int(config.data.seed) + int(config.get("seed", 0))


def stage_names(config: ml_collections.ConfigDict) -> list[str]:
  """The stages to run, in order, each checked to exist in config.stages."""
  order = list(get_path(config, "stage_order"))
  if not order:
    raise ConfigError("config.stage_order is empty: name at least one stage")
  available = list(config.stages.keys())
  for name in order:
    if name not in available:
      raise ConfigError(
          f"config.stage_order names stage {name!r}, which config.stages "
          f"lacks; stages defined: {', '.join(available)}")
  if len(set(order)) != len(order):
    raise ConfigError(f"config.stage_order={order} repeats a stage")
  return order


def to_plain(value: Any) -> Any:
  """ConfigDict/FrozenConfigDict -> nested plain dicts/lists (for JSON)."""
  if isinstance(value, (ml_collections.ConfigDict,
                        ml_collections.FrozenConfigDict, Mapping)):
    return {k: to_plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_plain(v) for v in value]
  return value


# -------------------------------------------------------------- meshes --
# The device mesh's axes, in order (mmjax/parallel.py builds the mesh).
MESH_AXES = ("data", "fsdp", "tensor")


def parse_mesh_spec(text: str, flag: str = "--mesh",
                    allow_rest: bool = False) -> dict[str, int]:
  """'fsdp:8,tensor:2' -> {'fsdp': 8, 'tensor': 2} (the axes named only).

  JAX-free, so a CLI can size simulated devices before JAX starts.

  Args:
    text: comma-separated AXIS:SIZE items.
    flag: the flag named in messages.
    allow_rest: a size may be -1 (the remaining devices).

  Raises:
    ConfigError: an empty spec, an unknown or repeated axis, a size that is
      not a positive integer (or -1 with allow_rest).
  """
  sizes: dict[str, int] = {}
  for item in filter(None, (s.strip() for s in (text or "").split(","))):
    axis, sep, raw = item.partition(":")
    if not sep or axis not in MESH_AXES:
      raise ConfigError(
          f"{flag}={text}: {item!r} is not AXIS:SIZE with AXIS one of "
          f"{', '.join(MESH_AXES)} (e.g. {flag}=fsdp:8 or "
          f"{flag}=fsdp:4,tensor:2)")
    if axis in sizes:
      raise ConfigError(f"{flag}={text} names axis {axis!r} twice")
    try:
      size = int(raw)
    except ValueError:
      size = 0
    if size < 1 and not (allow_rest and size == -1):
      raise ConfigError(
          f"{flag}={text}: {axis} size {raw!r} must be a positive integer"
          + (" or -1 (the rest)" if allow_rest else ""))
    sizes[axis] = size
  if not sizes:
    raise ConfigError(f"{flag} is empty; give e.g. {flag}=fsdp:8")
  return sizes


# ---------------------------------------------------- external weights --
INIT_FROM_ALL = "all"  # the key of a whole tree; the others are groups


def init_from_groups(*group_names: str) -> ml_collections.ConfigDict:
  """A recipe's `config.init_from`: `all` (one tree) plus one DIR per group
  (mmjax/train/init_from.py); '' = nothing to load."""
  return ml_collections.ConfigDict(
      {INIT_FROM_ALL: "", **{name: "" for name in group_names}})


# The official benchmarks a stage's `evals` may name (their readers are
# mmjax/evals/benchmarks/; a test keeps the two lists equal).
BENCHMARK_NAMES = ("vqav2", "textvqa", "gqa", "pope", "mmbench", "mme")


def benchmark_slots() -> ml_collections.ConfigDict:
  """A recipe's `config.eval.benchmarks`: per benchmark the directory of its
  files (`data`, '' = not set), its `split` ('' = its default) and `limit`
  (the first N questions, 0 = all)."""
  return ml_collections.ConfigDict(
      {name: {"data": "", "split": "", "limit": 0}
       for name in BENCHMARK_NAMES})


def init_from_dirs(config: ml_collections.ConfigDict) -> dict[str, str]:
  """{group or 'all': DIR} of the non-empty entries of config.init_from (a
  bare string, as configs wrote it before the groups, means 'all')."""
  value = config.get("init_from", "")
  if not value:
    return {}
  if isinstance(value, str):
    return {INIT_FROM_ALL: value}
  return {k: str(v) for k, v in value.items() if v}


# Keys that became a group of keys; the old spelling still works:
# `--config.init_from=DIR` (and a sweep's {"init_from": DIR}) is
# `init_from.all`.
LEGACY_KEYS = {"init_from": "init_from.all"}


def current_key(config: ml_collections.ConfigDict, key: str) -> str:
  """An override's key as `config` names it now (LEGACY_KEYS)."""
  new = LEGACY_KEYS.get(key)
  if new and isinstance(config.get(key), ml_collections.ConfigDict):
    return new
  return key


# Keys added since runs were first written (dotted paths), with the values
# that compute what a run without the key computed.
# data.pack_policy: both are neutral here because unpacked runs ignore it;
# a packed run written before it packed first-fit, and resuming it with
# 'fill' is refused by its data state (pack_policy in the fingerprint).
ADDED_KEYS = {"tokenizer": ("",), "chat_template": ("", "mmjax"),
              # Any value: the cache does not change the batches.
              "data.cache_mb": (0, 256),
              "data.packing": (False,),
              "data.pack_policy": ("first_fit", "fill"),
              "data.loss_weighting": ("token",),
              "stages.sft.box_attention_weight": (0.0,),
              "stages.sft.box_attention_layer": (-1,),
              "stages.sft.box_attention_head": (0,),
              "stages.sft.box_attention_target": ("box",)}


def upgrade_legacy(old: dict[str, Any], new: dict[str, Any],
                   block_defaults: Mapping[str, Mapping[str, Any]] | None = None
                   ) -> dict[str, Any]:
  """A config.json tree written before LEGACY_KEYS / ADDED_KEYS, in `new`'s
  shape (so a run started then resumes without a 'changed config').

  block_defaults: {dotted path of a block: {field: default}}; a block of
  `old` at that path gets the fields it lacks at these values (those its run
  was built with). The caller passes them because they belong to the model
  code, which builds on this module: e.g. DecoderConfig's defaults for a
  run written before the recipes listed every LM field.
  """
  old = dict(old)
  for path, defaults in (block_defaults or {}).items():
    *groups, leaf = path.split(".")
    node = old
    for group in groups:
      if not isinstance(node.get(group), dict):
        break
      node[group] = node = dict(node[group])
    else:
      if isinstance(node.get(leaf), dict):
        node[leaf] = {**defaults, **node[leaf]}
  for key, new_key in LEGACY_KEYS.items():
    group, _, leaf = new_key.partition(".")
    if isinstance(old.get(key), str) and isinstance(new.get(group), dict):
      old[group] = {**{k: "" for k in new[group]}, leaf: old[key]}
  for key, neutral in ADDED_KEYS.items():
    *groups, leaf = key.split(".")
    old_node, new_node = old, new
    for group in groups:
      if not (isinstance(old_node.get(group), dict) and
              isinstance(new_node.get(group), dict)):
        break
      old_node[group] = old_node = dict(old_node[group])
      new_node = new_node[group]
    else:
      if (leaf not in old_node and leaf in new_node and
          new_node[leaf] in neutral):
        old_node[leaf] = new_node[leaf]
  return old


RUN_CONFIG_FILE = "config.json"  # WORKDIR/config.json: the config as run


def write_run_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Writes WORKDIR/config.json (atomically); returns its path."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, RUN_CONFIG_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(to_plain(config), f, indent=2)
  os.replace(path + ".tmp", path)
  return path


def read_run_config(workdir: str) -> ml_collections.ConfigDict | None:
  """WORKDIR/config.json as a ConfigDict, None when the run has none."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, RUN_CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def check_python_file(path: str, what: str = "config file",
                      example: str = "configs/lm.py:tiny") -> None:
  """ConfigError when `path` is no readable Python file or does not parse.

  Run before absl or importlib execute the file: their own errors are long
  tracebacks (or, for a missing --config file, a deferred IOError).

  Args:
    path: the file (a recipe or a sweep file).
    what: what the file is, for the message.
    example: a valid value, for the message.
  """
  import os  # pylint: disable=g-import-not-at-top
  if not path or not os.path.isfile(path):
    relative = "" if os.path.isabs(path) else f" (relative to {os.getcwd()})"
    raise ConfigError(f"{what} {path!r} does not exist{relative}; give the "
                      f"path of a .py file, e.g. {example}")
  try:
    with open(path, "rb") as f:
      compile(f.read(), path, "exec")
  except SyntaxError as e:
    raise ConfigError(
        f"{what} {path} has a syntax error at line {e.lineno}: {e.msg}; fix "
        "the file") from None
  except (OSError, ValueError) as e:  # unreadable, or NUL bytes
    raise ConfigError(f"{what} {path} cannot be read as Python: {e}") from None


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`configs/lm.py:tiny` -> that file's get_config('tiny') (as absl does).

  For notebooks, sweeps and tests, which have no --config flag.

  Raises:
    ConfigError: the file is missing, does not parse or has no get_config,
      or get_config rejects the args.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(":")
  check_python_file(path)
  module_spec = importlib.util.spec_from_file_location(
      f"mmjax_config_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"config file {path} defines no get_config(arg); a "
                      "recipe returns its ConfigDict from get_config")
  return module.get_config(arg or None)
