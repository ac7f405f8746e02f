"""The contrastive-decoding flags that `mmjax.generate` and `mmjax.evaluate`
share, and the `Contrast` they ask for (mmjax/decoding/contrastive.py).

  define_flags()                 # --contrast_alpha / _beta / _keep
  contrast = from_flags(FLAGS)   # None when --contrast_alpha=0

Light on purpose: the CLIs define their flags before JAX is imported;
`from_flags` imports the decoding module only when contrast is on.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from absl import flags

if TYPE_CHECKING:
  from mmjax.decoding.contrastive import Contrast

NAMES = ("contrast_alpha", "contrast_beta", "contrast_keep")


def define_flags() -> None:
  flags.DEFINE_float("contrast_alpha", 0.0, "Visual contrastive decoding: "
                     "weight of the contrast with a noised image (0 = off; "
                     "VCD's default 1).")
  flags.DEFINE_float("contrast_beta", 0.1, "Contrastive decoding: "
                     "plausibility cut in (0, 1].")
  flags.DEFINE_float("contrast_keep", 0.3, "Contrastive decoding: share of "
                     "the image left under the noise, in [0, 1).")


def from_flags(f: flags.FlagValues) -> Contrast | None:
  """The flags' Contrast (None when off). ValueError, worded as the flag:
  `--contrast_alpha=-1.0 must be > 0 (...)`."""
  if not f.contrast_alpha:
    return None
  from mmjax.decoding.contrastive import Contrast  # pylint: disable=g-import-not-at-top  (JAX only when asked)
  try:
    return Contrast(f.contrast_alpha, f.contrast_beta, f.contrast_keep)
  except ValueError as e:
    raise ValueError(f"--{e}".replace("contrast ", "contrast_")) from None
