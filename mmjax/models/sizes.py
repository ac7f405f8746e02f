"""Named model sizes: the one table recipes, benchmarks and tests read.

Each size gives the vision tower, the decoder LM and the connector widths
of a LLaVA-style model (SigLIP tower + connector + LLaMA-style LM):

  from mmjax.models import sizes
  sizes.vision("tiny")      # {'width': 64, 'depth': 4, ...}
  sizes.lm("small")         # {'d_model': 256, 'n_layers': 4, ...}
  sizes.connector("tiny")   # {'latents': 16, 'resampler_depth': 2, ...}

`tiny` and `small` are the shapes recipe's models (configs/shapes.py; the
text LM recipe configs/lm.py uses their LMs); `bench` and `1b` exist for
the benchmarks (benchmarks/common.py), `1b` (~0.95B parameters: SigLIP B/16
at 224 px and a 0.86B LLaMA) for a GPU run in bfloat16.

Entries are plain data. Recipes whose data fixes the vocabulary (the
synthetic corpus and the shapes tokenizer: 512 pieces) set their own
`vocab_size` instead of the size's.
"""
from __future__ import annotations

import copy
from typing import Any

# vision: ViT width, blocks, heads, MLP (4x width, the SigLIP convention),
#   native image side and patch size in pixels.
# lm: decoder width, blocks, query / key-value heads, MLP, vocabulary.
# connector: latents (resampler) and queries (Q-Former) in the stream by
#   default, resampler and Q-Former blocks, resampler head width.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": dict(
        vision=dict(width=64, depth=4, n_heads=2, mlp_dim=256,
                    image_size=64, patch_size=8),
        lm=dict(d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
                mlp_dim=256, vocab_size=512),
        connector=dict(latents=16, resampler_depth=2, qformer_depth=2,
                       resampler_head_dim=32)),
    "small": dict(
        vision=dict(width=192, depth=4, n_heads=3, mlp_dim=768,
                    image_size=64, patch_size=8),
        lm=dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2,
                mlp_dim=768, vocab_size=1024),
        connector=dict(latents=32, resampler_depth=2, qformer_depth=4,
                       resampler_head_dim=32)),
    "bench": dict(
        vision=dict(width=512, depth=6, n_heads=8, mlp_dim=2048,
                    image_size=128, patch_size=16),
        lm=dict(d_model=1024, n_layers=8, n_heads=16, n_kv_heads=4,
                mlp_dim=2816, vocab_size=8192),
        connector=dict(latents=64, resampler_depth=2, qformer_depth=2,
                       resampler_head_dim=64)),
    "1b": dict(
        vision=dict(width=768, depth=12, n_heads=12, mlp_dim=3072,
                    image_size=224, patch_size=16),
        lm=dict(d_model=2048, n_layers=16, n_heads=16, n_kv_heads=4,
                mlp_dim=5632, vocab_size=32000),
        connector=dict(latents=64, resampler_depth=2, qformer_depth=2,
                       resampler_head_dim=64)),
}


def names() -> tuple[str, ...]:
  """The size names, smallest first."""
  return tuple(SIZES)


def get(size: str) -> dict[str, dict[str, Any]]:
  """A copy of one size's entry: {'vision': ..., 'lm': ..., 'connector': ...}.

  Raises:
    ValueError: `size` is not a name of the table (the message lists them).
  """
  if size not in SIZES:
    raise ValueError(f"size={size!r} is not allowed; allowed values: "
                     f"{', '.join(SIZES)}")
  # A copy: callers edit what they get (pop keys, add dtypes), never the table.
  return copy.deepcopy(SIZES[size])


def vision(size: str) -> dict[str, Any]:
  """VisionConfig fields of a size: width, depth, n_heads, mlp_dim,
  image_size, patch_size."""
  return get(size)["vision"]


def lm(size: str) -> dict[str, Any]:
  """DecoderConfig fields of a size: d_model, n_layers, n_heads, n_kv_heads,
  mlp_dim, vocab_size."""
  return get(size)["lm"]


def connector(size: str) -> dict[str, Any]:
  """Connector widths of a size: latents, resampler_depth, qformer_depth,
  resampler_head_dim."""
  return get(size)["connector"]
