"""Reading a local Hugging Face checkpoint directory, tensor by tensor.

A directory holds `config.json` and either one `*.safetensors` file, several
shards listed in `model.safetensors.index.json`, or several unlisted shards.
Tensors are read with the `safetensors` package's numpy API (bfloat16 and
float8, which numpy lacks, through its flax API), one tensor at a time; the
headers alone give every name, shape and dtype, so a whole checkpoint is
validated before any data is read. Pickle files (`pytorch_model.bin`,
`*.pt`) are never opened: unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import numpy as np
from safetensors import SafetensorError, safe_open

# Formats that numpy cannot hold; read through the flax (jax) API instead.
_NON_NUMPY_DTYPES = ("BF16", "F8_E4M3", "F8_E5M2")
_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
INDEX_FILE = "model.safetensors.index.json"


class HFImportError(ValueError):
  """A checkpoint directory mmjax cannot import; the message says why."""


def short_list(items: Sequence[str], limit: int = 12) -> str:
  items = list(items)
  shown = ", ".join(items[:limit])
  if len(items) > limit:
    shown += f", ... ({len(items) - limit} more)"
  return shown or "(none)"


def _unreadable(file: pathlib.Path, e: Exception) -> HFImportError:
  """The error for a weights file safetensors cannot parse."""
  reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
  return HFImportError(
      f"{file} is not a readable safetensors file ({reason}); it is "
      f"probably truncated (an interrupted download or copy): fetch it "
      f"again.")


def _nonfinite(file: pathlib.Path, key: str, x: np.ndarray) -> HFImportError:
  nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
  return HFImportError(
      f"{file.name}: tensor {key} {list(x.shape)} holds {nan} NaN and {inf} "
      f"inf value(s): the checkpoint is damaged (or was saved after "
      f"training diverged); fetch or export it again, or pass "
      f"--allow_nonfinite (allow_nonfinite=True) to import it as it is.")


class Checkpoint:
  """Lazy view of a Hugging Face model directory.

  Attributes:
    path: the directory.
    config: the parsed `config.json`.
    allow_nonfinite: read tensors holding NaN or inf instead of refusing.
    nonfinite: names of such tensors read so far (with allow_nonfinite).
  """

  def __init__(self, hf_dir: str | pathlib.Path,
               allow_nonfinite: bool = False):
    self.path = pathlib.Path(hf_dir)
    self.allow_nonfinite = allow_nonfinite
    self.nonfinite: list[str] = []
    if not self.path.is_dir():
      raise HFImportError(
          f"{hf_dir} is not a directory; expected a Hugging Face model "
          f"directory holding config.json and *.safetensors weights.")
    config_file = self.path / "config.json"
    if not config_file.is_file():
      raise HFImportError(
          f"{hf_dir} has no config.json; expected config.json and "
          f"*.safetensors. Found: {short_list(self._listing())}.")
    try:
      self.config: dict[str, Any] = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
      raise HFImportError(f"{config_file} is not valid JSON: {e}") from None
    self._meta: dict[str, tuple[pathlib.Path, tuple[int, ...], str]] = {}
    for file in self._weight_files():
      try:
        with safe_open(str(file), framework="numpy") as f:
          for key in f.keys():
            sl = f.get_slice(key)
            self._meta[key] = (file, tuple(sl.get_shape()), sl.get_dtype())
      except (SafetensorError, OSError) as e:
        raise _unreadable(file, e) from None

  def _listing(self) -> list[str]:
    return sorted(p.name for p in self.path.iterdir())

  def _weight_files(self) -> list[pathlib.Path]:
    index = self.path / INDEX_FILE
    if index.is_file():
      weight_map = json.loads(index.read_text()).get("weight_map", {})
      names = sorted(set(weight_map.values()))
      missing = [n for n in names if not (self.path / n).is_file()]
      if missing:
        raise HFImportError(
            f"{index} lists shard(s) that are missing: {short_list(missing)}"
            f"; found: {short_list(self._listing())}.")
      return [self.path / n for n in names]
    files = sorted(self.path.glob("*.safetensors"))
    if files:
      return files
    pickles = sorted({p.name for pat in _PICKLE_PATTERNS
                      for p in self.path.glob(pat)})
    if pickles:
      raise HFImportError(
          f"{self.path} holds only pickle checkpoint(s) ({short_list(pickles)}"
          f"); mmjax reads *.safetensors only and never unpickles (that can "
          f"run arbitrary code). Re-save it with transformers: "
          f"`model.save_pretrained(dir, safe_serialization=True)`.")
    raise HFImportError(
        f"{self.path} has no weights: expected *.safetensors (or {INDEX_FILE}"
        f" with its shards); found: {short_list(self._listing())}.")

  def keys(self) -> list[str]:
    """Every tensor name, sorted."""
    return sorted(self._meta)

  def __contains__(self, key: str) -> bool:
    return key in self._meta

  def shape(self, key: str) -> tuple[int, ...]:
    return self._meta[key][1]

  def dtype(self, key: str) -> str:
    """safetensors dtype name, e.g. 'F32', 'BF16'."""
    return self._meta[key][2]

  def get(self, key: str) -> np.ndarray:
    """Reads one tensor as float32 numpy (integers keep their dtype).

    Raises:
      HFImportError: the file cannot be read, or the tensor holds NaN or
        inf (unless allow_nonfinite).
    """
    file, _, dtype = self._meta[key]
    framework = "flax" if dtype in _NON_NUMPY_DTYPES else "numpy"
    try:
      with safe_open(str(file), framework=framework) as f:
        x = np.asarray(f.get_tensor(key))
    except (SafetensorError, OSError) as e:
      raise _unreadable(file, e) from None
    if not (framework == "flax" or np.issubdtype(x.dtype, np.floating)):
      return x
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
      # A NaN imported silently surfaces steps later as a NaN loss.
      if not self.allow_nonfinite:
        raise _nonfinite(file, key, x)
      self.nonfinite.append(key)
    return x

  def resolve_prefix(self, candidates: Sequence[str], probe: str,
                     what: str) -> str:
    """The first prefix p of `candidates` such that p + probe is a tensor.

    Hugging Face names the same module differently across versions
    (`vision_tower.vision_model.` in 4.x, `model.vision_tower.` in 5.x);
    importers list every spelling they accept.

    Raises:
      HFImportError: none matches; lists what was tried and found.
    """
    for prefix in candidates:
      if prefix + probe in self._meta:
        return prefix
    tried = [p + probe for p in candidates]
    raise HFImportError(
        f"cannot find the {what} in {self.path}: expected one of "
        f"{short_list(tried)}; found tensors: {short_list(self.keys())}.")
