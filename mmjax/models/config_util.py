"""Helpers shared by the frozen dataclass configs of the model modules."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

import jax.numpy as jnp

T = TypeVar("T")


def from_dict(cls: type[T], d: Mapping[str, Any]) -> T:
  """Builds dataclass `cls` from a mapping, rejecting keys it does not know."""
  allowed = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(d) - set(allowed))
  if unknown:
    raise ValueError(f"Unknown {cls.__name__} key(s) {unknown}; allowed "
                     f"keys: {allowed}.")
  return cls(**dict(d))


def check_dtypes(config: Any, names: tuple[str, ...] = ("dtype",
                                                        "param_dtype")):
  """ValueError when a dtype field does not name a dtype."""
  for name in names:
    try:
      jnp.dtype(getattr(config, name))
    except TypeError as e:
      raise ValueError(f"{name}={getattr(config, name)!r} is not a dtype name "
                       "(use e.g. 'float32' or 'bfloat16').") from e
