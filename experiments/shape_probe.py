"""Is the vision tower the limit? A supervised shape probe on shapes images.

  python experiments/shape_probe.py --image_size=64 --patch=8 --steps=1000

Trains a fresh SigLIP-style ViT (the recipe's tiny tower by default) plus a
linear head on mean-pooled patch tokens to say which of the six shapes occur
in a shapes image (multi-label, sigmoid cross-entropy, AdamW with warmup and
cosine decay), and prints test per-label accuracy, per shape, and the share of
images whose whole shape set is right, every --eval_every steps. This is the
easiest form of the perception the recipe's shape questions need (it gets a
direct label instead of a word at the end of an answer), so where the probe
stays low, no LM-side change will lift shape accuracy. Always-"absent" scores
about 0.62 per label.
"""
import time

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax.data import shapes
from mmjax.data.text_corpus import SHAPES
from mmjax.models.vision import VisionConfig, VisionEncoder

_IMAGE = flags.DEFINE_integer("image_size", 64, "rendered image side (px)")
_PATCH = flags.DEFINE_integer("patch", 8, "ViT patch side (px)")
_WIDTH = flags.DEFINE_integer("width", 64, "ViT width (MLP = 4 x width)")
_DEPTH = flags.DEFINE_integer("depth", 4, "ViT blocks")
_HEADS = flags.DEFINE_integer("heads", 2, "ViT attention heads")
_STEM = flags.DEFINE_enum("stem", "patch", ["patch", "conv"],
                          "how pixels become tokens (VisionConfig.stem)")
_TASK = flags.DEFINE_enum(
    "task", "presence", ["presence", "object"],
    "presence: which shapes occur (mean-pooled, multi-label); object: each "
    "object's shape from the tokens under its box (what a shape question "
    "needs, given where the object is)")
_STEPS = flags.DEFINE_integer("steps", 1000, "training steps")
_BATCH = flags.DEFINE_integer("batch", 64, "images per step")
_LR = flags.DEFINE_float("lr", 1e-3, "peak learning rate")
_TRAIN = flags.DEFINE_integer("num_train", 8000, "training images")
_TEST = flags.DEFINE_integer("num_test", 1000, "test images")
_EVERY = flags.DEFINE_integer("eval_every", 200, "steps between evaluations")


def _box_weights(bbox, image_size: int, patch: int) -> np.ndarray:
  """f32[N]: each patch's share of the box's area (sums to 1)."""
  g = image_size // patch
  x0, y0, x1, y1 = bbox
  edges = np.arange(g + 1) * patch
  wx = np.clip(np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0), 0, None)
  wy = np.clip(np.minimum(edges[1:], y1) - np.maximum(edges[:-1], y0), 0, None)
  w = np.outer(wy, wx).reshape(-1).astype(np.float32)
  return w / max(w.sum(), 1.0)


def shape_sets(split: str, n: int, image_size: int, patch: int):
  """images f32[n, S, S, 3] in [-1, 1], presence f32[n, 6], and per object
  (up to 6): box weights f32[n, 6, N], shape ids i32[n, 6], valid f32[n, 6]."""
  n_obj, n_tok = shapes.MAX_OBJECTS, (image_size // patch) ** 2
  images, presence = [], np.zeros((n, len(SHAPES)), np.float32)
  weights = np.zeros((n, n_obj, n_tok), np.float32)
  ids = np.zeros((n, n_obj), np.int32)
  valid = np.zeros((n, n_obj), np.float32)
  for i in range(n):
    ex = shapes.example(split, i, image_size=image_size)
    images.append(ex["image"])
    for k, obj in enumerate(ex["objects"]):
      presence[i, SHAPES.index(obj["shape"])] = 1.0
      weights[i, k] = _box_weights(obj["bbox"], image_size, patch)
      ids[i, k], valid[i, k] = SHAPES.index(obj["shape"]), 1.0
  x = np.stack(images).astype(np.float32) / 127.5 - 1.0
  return x, presence, weights, ids, valid


class ShapeProbe(nn.Module):
  """ViT -> (mean of patch tokens | box-weighted tokens per object) -> 6."""
  cfg: VisionConfig

  @nn.compact
  def __call__(self, images, box_weights=None):
    tokens = VisionEncoder(self.cfg)(images).tokens  # [B, N, D]
    if box_weights is None:
      return nn.Dense(len(SHAPES))(tokens.mean(axis=1))  # [B, 6]
    pooled = jnp.einsum("bkn,bnd->bkd", box_weights, tokens)
    return nn.Dense(len(SHAPES))(pooled)  # [B, K, 6]


def main(argv):
  del argv
  for name, flag in (("steps", _STEPS), ("batch", _BATCH), ("num_train",
                     _TRAIN), ("num_test", _TEST), ("eval_every", _EVERY)):
    if flag.value <= 0:
      raise app.UsageError(f"--{name} must be positive, got {flag.value}.")
  start = time.time()
  patch = _PATCH.value
  train = shape_sets("train", _TRAIN.value, _IMAGE.value, patch)
  test = shape_sets("test", _TEST.value, _IMAGE.value, patch)
  print(f"data: {_TRAIN.value} train / {_TEST.value} test images in "
        f"{time.time() - start:.0f}s; always-absent per-label accuracy "
        f"{1 - test[1].mean():.3f}; most common shape per object "
        f"{np.bincount(test[3][test[4] > 0]).max() / test[4].sum():.3f}",
        flush=True)
  cfg = VisionConfig(image_size=_IMAGE.value, patch_size=patch,
                     width=_WIDTH.value, depth=_DEPTH.value,
                     mlp_dim=4 * _WIDTH.value, n_heads=_HEADS.value,
                     pool="none", stem=_STEM.value)
  model = ShapeProbe(cfg)
  per_object = _TASK.value == "object"

  def inputs(data, idx):  # (images, box weights or None), targets
    x, presence, weights, ids, valid = (a[idx] for a in data)
    return (x, weights if per_object else None), (
        (ids, valid) if per_object else presence)

  params = model.init(jax.random.key(0), *inputs(train, slice(0, 1))[0])
  warmup = min(50, _STEPS.value // 5 + 1)
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(
      0.0, _LR.value, warmup, max(_STEPS.value, warmup + 1),
      _LR.value / 10))
  opt_state = tx.init(params)

  def loss_fn(p, x, y):
    logits = model.apply(p, *x)
    if not per_object:
      return optax.sigmoid_binary_cross_entropy(logits, y).mean()
    ids, valid = y
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids)
    return (ce * valid).sum() / valid.sum()

  @jax.jit
  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def predict(p, x):
    logits = model.apply(p, *x)
    return logits.argmax(-1) if per_object else logits > 0

  def evaluate(p):
    right, total = [], 0
    for i in range(0, _TEST.value, 250):
      x, y = inputs(test, slice(i, i + 250))
      pred = np.asarray(predict(p, x))
      right.append(pred == y[0] if per_object else pred == y)
    right = np.concatenate(right)
    if per_object:
      valid = test[4] > 0
      ids = test[3][valid]
      per_shape = " ".join(f"{s} {right[valid][ids == k].mean():.2f}"
                           for k, s in enumerate(SHAPES))
      return f"per-object shape accuracy {right[valid].mean():.3f} ({per_shape})"
    per_shape = " ".join(f"{s} {a:.2f}" for s, a in zip(SHAPES, right.mean(0)))
    return (f"per-label accuracy {right.mean():.3f} ({per_shape}), whole set "
            f"right {right.all(1).mean():.3f}")

  rng = np.random.default_rng(0)
  start = time.time()
  print(f"ViT {cfg.image_size}px / patch {cfg.patch_size} "
        f"({cfg.num_patches} tokens, {cfg.stem} stem), width {cfg.width}, "
        f"depth {cfg.depth}, task {_TASK.value}, {jax.devices()[0].platform}",
        flush=True)
  for step in range(1, _STEPS.value + 1):
    x, y = inputs(train, rng.integers(0, _TRAIN.value, _BATCH.value))
    params, opt_state, loss = train_step(params, opt_state, x, y)
    if step % _EVERY.value == 0 or step == _STEPS.value:
      print(f"step {step}: loss {float(loss):.3f}, {evaluate(params)}, "
            f"{time.time() - start:.0f}s", flush=True)

if __name__ == "__main__":
  app.run(main)
