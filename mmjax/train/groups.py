"""Parameter groups: which parameters a stage trains, and hand-over between
stages whose models differ.

Paths are '/'-joined parameter names (`llm/layers_0/attn/q/kernel`). A stage's
`trainable` lists group names or glob patterns over those paths:

  vision     vision/*                  connector  connector/*, image_newline
  llm        llm/* except llm/xattn_*  xattn      llm/xattn_*
  text       text/*                    all        everything
  siglip     siglip/* (the SigLIP head) region_head  region_head/* (stage
             loss region_classification's classifiers)
  vq         vq/* (the VQ image tokenizer's encoder and decoder, stage loss vq)
  scene_layout  scene_layout/* (a t2i LM's layout-to-cells embeddings,
             stage t2i with layout)
  lora       lora/* (LoRA factors of a stage with lora.rank > 0, train/lora.py)
  audio      audio/* (the Whisper tower)  audio_connector  audio_connector/*

Everything else is frozen: no gradient is taken with respect to it and the
optimizer holds no state for it.

Between stages the recipe carries a *global store*: a flat {path: array} over
group names (llm, vision, connector, text, ...). A stage's model reads the
leaves it has from the store (matching path and shape) and initialises the
rest; leaves it does not use are carried through untouched.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax.traverse_util as traverse_util

from mmjax.config import ConfigError

GROUPS: dict[str, tuple[str, ...]] = {
    "vision": ("vision/*",),
    "connector": ("connector/*", "image_newline"),
    "llm": ("llm/*",),
    "xattn": ("llm/xattn_*",),
    "text": ("text/*",),
    "siglip": ("siglip/*",),
    "region_head": ("region_head/*",),
    "vq": ("vq/*",),
    "scene_layout": ("scene_layout/*",),
    "lora": ("lora/*",),
    "audio": ("audio/*",),
    "audio_connector": ("audio_connector/*",),
    "all": ("*",),
}
_EXCLUDE = {"llm": ("llm/xattn_*",)}

# How the parameter paths of models other than the MLLM map onto the global
# store (`prefix_mapper` specs): a text-only decoder is the `llm` group; the
# SigLIP two-tower model's towers are `vision` and `text`, its head `siglip`.
LM_PATHS = {"*": "llm"}
TWO_TOWER_PATHS = {"vision_model": "vision", "text_model": "text",
                   "*": "siglip"}
# By the `family` a converted checkpoint (`python -m mmjax.convert`) records.
FAMILY_PATHS = {"lm": LM_PATHS, "two_tower": TWO_TOWER_PATHS}


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.flatten_dict(dict(tree), sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def matches(path: str, entry: str) -> bool:
  """Whether a global path belongs to a group name or glob."""
  if entry in GROUPS:
    hit = any(fnmatch.fnmatchcase(path, p) for p in GROUPS[entry])
    return hit and not any(fnmatch.fnmatchcase(path, p)
                           for p in _EXCLUDE.get(entry, ()))
  return fnmatch.fnmatchcase(path, entry)


def trainable_paths(paths: Iterable[str], trainable: Sequence[str],
                    where: str = "trainable") -> list[str]:
  """The paths a stage trains; ConfigError for an entry matching nothing."""
  paths = list(paths)
  for entry in trainable:
    if not any(matches(p, entry) for p in paths):
      tops = sorted({p.split("/")[0] for p in paths})
      raise ConfigError(
          f"config.{where}: {entry!r} matches no parameter; groups: "
          f"{', '.join(GROUPS)}; this model's top-level names: "
          f"{', '.join(tops)} (glob patterns such as 'llm/layers_3/*' work "
          "too)")
  return [p for p in paths if any(matches(p, e) for e in trainable)]


def split(flat: Mapping[str, Any], train: Sequence[str]
          ) -> tuple[dict[str, Any], dict[str, Any]]:
  """(trainable, frozen) flat dicts."""
  keep = set(train)
  return ({k: v for k, v in flat.items() if k in keep},
          {k: v for k, v in flat.items() if k not in keep})


def overlay(model_flat: Mapping[str, Any], store: Mapping[str, Any],
            to_global: Callable[[str], str]
            ) -> tuple[dict[str, Any], list[str]]:
  """Takes every model leaf the store has; returns (params, taken paths).

  Raises:
    ConfigError: a stored leaf has another shape than the model's.
  """
  out, taken = dict(model_flat), []
  for path, leaf in model_flat.items():
    g = to_global(path)
    if g in store:
      have = tuple(getattr(store[g], "shape", ()))
      want = tuple(getattr(leaf, "shape", ()))
      if have != want:
        raise ConfigError(
            f"parameter {g} handed over from the previous stage has shape "
            f"{have}, this stage's model wants {want}; the stages' model "
            "configs disagree")
      out[path] = store[g]
      taken.append(g)
  return out, taken


def prefix_mapper(mapping: Mapping[str, str]) -> Callable[[str], str]:
  """Model path -> global path by replacing the first path component.

  `mapping` maps a model's top-level name to a global prefix, e.g.
  {'vision_model': 'vision', 'text_model': 'text', '*': 'siglip'}; '' maps
  to the root (the model's names are already global); '*' covers the rest.
  """
  def to_global(path: str) -> str:
    head, _, rest = path.partition("/")
    prefix = mapping.get(head, mapping.get("*"))
    if prefix is None:
      return path
    if prefix == "":
      return path
    return f"{prefix}/{path}" if head not in mapping else (
        f"{prefix}/{rest}" if rest else prefix)
  return to_global
