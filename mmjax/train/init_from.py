"""External weights a run starts from: `config.init_from` and its groups.

  config.init_from.all=DIR        one tree: every group it holds
  config.init_from.vision=DIR     the `vision` group from DIR
  config.init_from.llm=DIR        the `llm` group from another DIR
  config.init_from.connector=DIR  ... (groups not given start fresh)

Each DIR is what `python -m mmjax.convert` wrote (config.json + params/; its
`family` says how its parameters map onto the groups: a converted Qwen2 is
the `llm` group, a converted SigLIP two-tower model gives `vision` and
`text`, a converted LLaVA all of vision / connector / llm) or an orbax
parameter tree whose top level names the groups. A group entry takes only
that group's parameters from its DIR, so `init_from.vision` may point at a
whole LLaVA checkpoint.

`load(config, model_shapes)` returns the flat global store the first stage
starts from ({'llm/embed/embedding': array, ...}), after checking it against
the run's models before anything compiles:

- a group the run's models do not have, or a DIR without that group: one
  line naming the groups there are;
- leaves whose shapes differ: every one listed with both shapes, and the
  config keys whose values differ from the checkpoint's own config (what
  to set);
- an LLM checkpoint with fewer vocabulary rows than the model (a tokenizer
  that added `<image>`, or a vocabulary padded to a multiple): the missing
  embedding rows (and LM-head columns) start at the mean of the existing
  ones; a model vocabulary smaller than the checkpoint's is refused.

A bare string `config.init_from=DIR` (configs written before the groups
existed, Python code) means `init_from.all`.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import ml_collections
import numpy as np

from mmjax import config as config_lib
from mmjax import hf
from mmjax import parallel
from mmjax.config import ConfigError
from mmjax.train import groups

ALL = config_lib.INIT_FROM_ALL
# Embedding tables and LM heads whose vocabulary axis may grow (global path
# suffix -> the vocabulary axis).
_VOCAB_LEAVES = {"embed/embedding": 0, "lm_head/kernel": 1}


def _checkpoint_dir(path: str, key: str) -> str:
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.basename(path) == "params" and os.path.exists(
      os.path.join(os.path.dirname(path), "config.json")):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise ConfigError(
        f"config.init_from.{key}={path!r} is not a directory; give the "
        "output of `python -m mmjax.convert` or an orbax parameter tree")
  return path


def read(path: str, key: str = ALL) -> tuple[dict[str, Any], dict[str, Any]]:
  """(flat {global path: array}, {'family', 'model'} or {}) of one DIR.

  For a group `key`, only the top-level entries that map to that group are
  read (a tower taken from a whole LLaVA does not load its 7B LLM). Arrays
  are restored onto one device whatever mesh saved them; the stage
  re-shards them.
  """
  path = _checkpoint_dir(path, key)
  if os.path.exists(os.path.join(path, "config.json")):
    converted = hf.converted_meta(path)
    family, meta = converted["family"], {"family": converted["family"],
                                         "model": converted["model"]}
    params_dir = os.path.join(path, "params")
  else:
    family, meta, params_dir = "", {}, path
  to_global = groups.prefix_mapper(groups.FAMILY_PATHS.get(family, {}))
  keys = None
  if key != ALL:
    keys = [name for name in parallel.checkpoint_keys(params_dir)
            if _group_of(to_global(name)) == key]
  params = parallel.restore_on_one_device(params_dir, keys)
  return {to_global(k): v for k, v in groups.flatten(params).items()}, meta


def held_groups(path: str) -> list[str]:
  """The groups a DIR holds, read from its metadata only."""
  path = _checkpoint_dir(path, ALL)
  family, params_dir = "", path
  if os.path.exists(os.path.join(path, "config.json")):
    family = hf.converted_meta(path)["family"]
    params_dir = os.path.join(path, "params")
  to_global = groups.prefix_mapper(groups.FAMILY_PATHS.get(family, {}))
  return sorted({_group_of(to_global(name))
                 for name in parallel.checkpoint_keys(params_dir)})


def _group_of(path: str) -> str:
  return path.split("/", 1)[0]


def _group_names(paths) -> list[str]:
  return sorted({_group_of(p) for p in paths})


def load(config: ml_collections.ConfigDict,
         model_shapes: Mapping[str, tuple[int, ...]] | None = None
         ) -> dict[str, Any]:
  """The global store the run starts from (module docstring).

  Args:
    config: the run's config.
    model_shapes: {global path: shape} of every parameter the run's stages
      build (None skips the checks against the model).

  Raises:
    ConfigError: a missing DIR, a group the model or the DIR lacks, shapes
      that differ, a model vocabulary smaller than the checkpoint's.
  """
  entries = config_lib.init_from_dirs(config)
  store: dict[str, Any] = {}
  sources: dict[str, tuple[str, str, dict[str, Any]]] = {}
  model_groups = _group_names(model_shapes) if model_shapes else None
  # The whole tree first, so that group entries override its groups.
  for key in sorted(entries, key=lambda k: k != ALL):
    if key != ALL:
      if model_groups is not None and key not in model_groups:
        raise ConfigError(
            f"config.init_from.{key}: the run's models have no '{key}' "
            f"group (they have {', '.join(model_groups)})")
      held = held_groups(entries[key])
      if key not in held:
        raise ConfigError(
            f"config.init_from.{key}={entries[key]} holds no '{key}' "
            f"parameters (it holds {', '.join(held) or 'none'})")
    flat, meta = read(entries[key], key)
    for p in flat:
      sources[p] = (key, entries[key], meta)
    store.update(flat)
  if model_shapes is not None and store:
    store = _fit_vocabulary(config, store, model_shapes, sources)
    _check_shapes(config, store, model_shapes, sources)
  return store


def _vocab_key(config: ml_collections.ConfigDict) -> str:
  return ("model.lm.vocab_size" if config.get("family") == "mllm"
          else "model.vocab_size")


def _fit_vocabulary(config, store, model_shapes, sources) -> dict[str, Any]:
  """Grows vocabulary rows the checkpoint lacks (mean-initialised)."""
  out = dict(store)
  for path, leaf in store.items():
    axis = next((a for s, a in _VOCAB_LEAVES.items() if path.endswith(s)),
                None)
    want = model_shapes.get(path)
    have = tuple(np.shape(leaf))
    if axis is None or want is None or tuple(want) == have:
      continue
    if len(want) != len(have) or any(
        w != h for i, (w, h) in enumerate(zip(want, have)) if i != axis):
      continue  # another width: _check_shapes reports it
    key, where, _ = sources[path]
    if want[axis] < have[axis]:
      raise ConfigError(
          f"config.{_vocab_key(config)}={want[axis]} is smaller than the "
          f"vocabulary of config.init_from.{key}={where} ({have[axis]} rows "
          f"in {path}); set --config.{_vocab_key(config)}={have[axis]} or "
          "larger")
    out[path] = grow_vocabulary(leaf, want[axis], axis)
  return out


def grow_vocabulary(table: Any, size: int, axis: int) -> np.ndarray:
  """`table` with `size` entries along `axis`; the new ones are the mean of
  the existing ones (a new token starts as an average token, not as noise
  that would dominate the softmax)."""
  table = np.asarray(table)
  extra = size - table.shape[axis]
  mean = table.astype(np.float32).mean(axis=axis, keepdims=True)
  reps = [1] * table.ndim
  reps[axis] = extra
  return np.concatenate([table, np.tile(mean, reps).astype(table.dtype)],
                        axis=axis)


# How a converted checkpoint's `model` block lines up with the run's config
# per group: (family, group) -> key path inside the converted model block;
# the run's side is _RUN_MODEL_KEYS.
_CONVERTED_MODEL_KEYS = {
    ("lm", "llm"): "", ("vision", "vision"): "",
    ("two_tower", "vision"): "vision", ("two_tower", "text"): "text",
    ("mllm", "vision"): "vision", ("mllm", "llm"): "lm",
}
_RUN_MODEL_KEYS = {("mllm", "vision"): "model.vision",
                   ("mllm", "llm"): "model.lm", ("lm", "llm"): "model",
                   ("two_tower", "vision"): "model.vision",
                   ("two_tower", "text"): "model.text"}


def _sub(tree: Any, dotted: str) -> Any:
  for part in filter(None, dotted.split(".")):
    if not isinstance(tree, Mapping) or part not in tree:
      return None
    tree = tree[part]
  return tree


def _config_hints(config, group: str, meta: Mapping[str, Any]) -> list[str]:
  """'config.KEY=ours (checkpoint: theirs)' for model keys that differ."""
  if not meta:
    return []
  theirs_key = _CONVERTED_MODEL_KEYS.get((meta["family"], group))
  ours_key = _RUN_MODEL_KEYS.get((config.get("family"), group))
  if theirs_key is None or ours_key is None:
    return []
  theirs = _sub(meta["model"], theirs_key)
  ours = _sub(config_lib.to_plain(config), ours_key)
  if not isinstance(theirs, Mapping) or not isinstance(ours, Mapping):
    return []
  return [f"config.{ours_key}.{k}={ours[k]!r} (checkpoint: {theirs[k]!r})"
          for k in ours if k in theirs and not isinstance(ours[k], Mapping)
          and ours[k] != theirs[k]]


def _check_shapes(config, store, model_shapes, sources) -> None:
  bad = [(p, tuple(np.shape(v)), tuple(model_shapes[p]))
         for p, v in store.items()
         if p in model_shapes and tuple(np.shape(v)) != tuple(model_shapes[p])]
  if not bad:
    return
  listed = "; ".join(f"{p} {h} vs model {w}" for p, h, w in bad[:6])
  more = f"; and {len(bad) - 6} more" if len(bad) > 6 else ""
  hints, seen = [], set()
  for p, _, _ in bad:
    key, _, meta = sources[p]
    group = _group_of(p)
    if (key, group) not in seen:
      seen.add((key, group))
      hints += _config_hints(config, group, meta)
  where = sorted({f"config.init_from.{sources[p][0]}={sources[p][1]}"
                  for p, _, _ in bad})
  fix = (f"; set {', '.join(hints[:8])} to the checkpoint's values" if hints
         else "; the model config must describe the checkpoint's model "
         "(its config.json holds it)")
  raise ConfigError(f"{len(bad)} parameter(s) of {', '.join(where)} differ "
                    f"in shape from the model: {listed}{more}{fix}")
