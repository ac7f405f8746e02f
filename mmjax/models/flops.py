"""Model FLOPs of one training step: what MFU is measured against.

  flops.train_flops(cfg, batch=8, seq_len=128)    # {'lm': ..., 'total': ...}

The count the benchmarks report (benchmarks/common.py re-exports it) and the
fit planner prints (`python -m mmjax.plan`). Forward FLOPs are 2 per
multiply-add; a training step is 3x forward (the backward computes input and
weight gradients), except the patch embedding, whose input (pixels) needs no
gradient (2x). It counts every weight as trained (the MFU convention, 6 * N
* tokens plus attention), whatever a stage freezes.
"""
from __future__ import annotations

from typing import Any, Mapping


def vit_blocks_run(cfg: Any) -> int:
  """ViT blocks the MLLM runs: all, or up to its feature layer."""
  v, layer = cfg.vision, cfg.feature_layer
  if layer is None:
    return v.depth
  return layer + (v.depth + 1 if layer < 0 else 0)


def train_flops(cfg: Any, batch: int, seq_len: int,
                group_params: Mapping[str, int] | None = None
                ) -> dict[str, float]:
  """Matmul FLOPs of one training step of an MLLM (`MLLMConfig`).

  With B examples, L tokens in the LM, N patches per image, r ViT blocks run
  (LLaVA's feature layer -2: depth - 1):

    lm         6 * B*L * [n_layers * (d*H*Dh + 2*d*Kh*Dh + H*Dh*d + 3*d*F)
                          + d*V]                  (embedding lookup: 0)
    lm_attn    12 * n_layers * B * L^2 * H*Dh     (full L x L: masked, not
                                                   skipped)
    vit        6 * B*N * r * (4*Dv^2 + 2*Dv*Fv)
    vit_attn   12 * r * B * N^2 * Dv
    patch      4 * B*N * p^2*C * Dv
    projector  6 * B*N * (Dv*d + d*d)   (mlp; linear: Dv*d)

  Other connectors (resampler, Q-Former) and Flamingo's cross-attention
  blocks are counted as 6 * (their parameters) * (the tokens they read):
    connector  6 * B*N * group_params['connector']
    xattn      6 * B*L * group_params['xattn']
  an upper bound for a resampler, whose latents, not the N patches, pass its
  feed-forward layers.

  Norms, softmax, activations, loss and the optimizer are elementwise and
  left out (XLA's cost_analysis counts them; its total is a little higher).

  Args:
    cfg: the MLLMConfig (one image per example).
    batch: B.
    seq_len: L, the LM's sequence length (image tokens included).
    group_params: parameter counts of 'connector' and 'xattn', needed for
      connectors other than the mlp / linear projector.

  Returns:
    {component: FLOPs} and 'total'.
  """
  group_params = dict(group_params or {})
  lm = cfg.lm
  d, dh, h, kh = lm.d_model, lm.resolved_head_dim, lm.n_heads, lm.n_kv_heads
  per_layer = d * h * dh + 2 * d * kh * dh + h * dh * d + 3 * d * lm.mlp_dim
  tokens = batch * seq_len
  out = {
      "lm": 6.0 * tokens * (lm.n_layers * per_layer + d * lm.vocab_size),
      "lm_attn": 12.0 * lm.n_layers * batch * seq_len ** 2 * h * dh,
  }
  if cfg.vision is None:  # one_backbone: the patch projection only
    n = (cfg.image_size // cfg.patch_size) ** 2
    out["patch"] = 4.0 * batch * n * cfg.patch_size ** 2 * cfg.channels * d
  else:
    v = cfg.vision
    n, runs, dv = v.num_patches, vit_blocks_run(cfg), v.width
    out["vit"] = 6.0 * batch * n * runs * (4 * dv * dv + 2 * dv * v.mlp_dim)
    out["vit_attn"] = 12.0 * runs * batch * n * n * dv
    out["patch"] = 4.0 * batch * n * v.patch_size ** 2 * v.channels * dv
    if cfg.fusion == "projection" and cfg.projector in ("mlp", "linear"):
      per_patch = dv * d + (d * d if cfg.projector == "mlp" else 0)
      out["projector"] = 6.0 * batch * n * per_patch
    else:
      if "connector" not in group_params:
        raise ValueError(
            f"fusion={cfg.fusion!r} (projector {cfg.projector!r}): pass "
            "group_params={'connector': its parameter count}")
      out["connector"] = 6.0 * batch * n * group_params["connector"]
  if lm.xattn_every:
    out["xattn"] = 6.0 * tokens * group_params.get("xattn", 0)
  out["total"] = sum(out.values())
  return out


def analytic_train_flops(cfg: Any, batch: int, seq_len: int
                         ) -> dict[str, float]:
  """`train_flops` of a projection model with the mlp projector (the
  benchmarks' models); ValueError for other connectors."""
  if cfg.fusion != "projection" or cfg.projector != "mlp":
    raise ValueError("the analytic count covers fusion='projection' with the "
                     f"mlp projector, not {cfg.fusion!r}/{cfg.projector!r}")
  return train_flops(cfg, batch, seq_len)
