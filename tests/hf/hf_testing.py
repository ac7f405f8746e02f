"""Shared helpers of the Hugging Face parity tests (torch, transformers, CPU).

Random Hugging Face init makes weak references (near-uniform attention, tiny
activations), so `perturb` scales every matrix up and jitters every vector
(norm weights, biases) before a model is saved; see DESIGN.md section 7.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # pylint: disable=g-import-not-at-top
import torch  # pylint: disable=g-import-not-at-top

torch.set_grad_enabled(False)
# Hugging Face models draw their init from torch's global generator.
torch.manual_seed(0)

# Parity bound for float32 logits / hidden states (max abs diff), also used
# relative to the reference's magnitude for large outputs.
TOL = 1e-4


def perturb(model, seed: int = 0, scale: float = 3.0, noise: float = 0.1):
  """Scales matrices by `scale`, adds N(0, noise) to vectors; eval mode."""
  gen = torch.Generator().manual_seed(seed)
  for p in model.parameters():
    if p.ndim >= 2:
      p.mul_(scale)
    else:
      p.add_(noise * torch.randn(p.shape, generator=gen))
  return model.eval()


def save(model, path) -> str:
  model.save_pretrained(str(path), safe_serialization=True)
  return str(path)


def assert_parity(name: str, ours, ref, tol: float = TOL) -> float:
  """max |ours - ref| <= tol * max(1, |ref|) elementwise; returns the max."""
  ours = np.asarray(ours, np.float64)
  ref = np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
  diff = np.abs(ours - ref)
  print(f"[parity] {name}: max abs diff {diff.max():.2e} "
        f"(max |ref| {np.abs(ref).max():.2f})")
  bound = tol * np.maximum(1.0, np.abs(ref))
  assert (diff <= bound).all(), (
      f"{name}: max abs diff {diff.max():.3e} exceeds {tol} "
      f"(worst at {np.unravel_index(np.argmax(diff - bound), diff.shape)})")
  return float(diff.max())
