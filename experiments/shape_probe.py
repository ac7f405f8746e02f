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
_STEPS = flags.DEFINE_integer("steps", 1000, "training steps")
_BATCH = flags.DEFINE_integer("batch", 64, "images per step")
_LR = flags.DEFINE_float("lr", 1e-3, "peak learning rate")
_TRAIN = flags.DEFINE_integer("num_train", 8000, "training images")
_TEST = flags.DEFINE_integer("num_test", 1000, "test images")
_EVERY = flags.DEFINE_integer("eval_every", 200, "steps between evaluations")


def shape_sets(split: str, n: int, image_size: int):
  """(images f32[n, S, S, 3] in [-1, 1], labels f32[n, 6] shape presence)."""
  images, labels = [], []
  for i in range(n):
    ex = shapes.example(split, i, image_size=image_size)
    images.append(ex["image"])
    label = np.zeros(len(SHAPES), np.float32)
    for obj in ex["objects"]:
      label[SHAPES.index(obj["shape"])] = 1.0
    labels.append(label)
  return np.stack(images).astype(np.float32) / 127.5 - 1.0, np.stack(labels)


class ShapeProbe(nn.Module):
  """ViT -> mean of patch tokens -> 6 logits."""
  cfg: VisionConfig

  @nn.compact
  def __call__(self, images):
    tokens = VisionEncoder(self.cfg)(images).tokens  # [B, N, D]
    return nn.Dense(len(SHAPES))(tokens.mean(axis=1))


def main(argv):
  del argv
  for name, flag in (("steps", _STEPS), ("batch", _BATCH), ("num_train",
                     _TRAIN), ("num_test", _TEST), ("eval_every", _EVERY)):
    if flag.value <= 0:
      raise app.UsageError(f"--{name} must be positive, got {flag.value}.")
  start = time.time()
  x_train, y_train = shape_sets("train", _TRAIN.value, _IMAGE.value)
  x_test, y_test = shape_sets("test", _TEST.value, _IMAGE.value)
  print(f"data: {_TRAIN.value} train / {_TEST.value} test images in "
        f"{time.time() - start:.0f}s; always-absent per-label accuracy "
        f"{1 - y_test.mean():.3f}", flush=True)
  cfg = VisionConfig(image_size=_IMAGE.value, patch_size=_PATCH.value,
                     width=_WIDTH.value, depth=_DEPTH.value,
                     mlp_dim=4 * _WIDTH.value, n_heads=_HEADS.value,
                     pool="none")
  model = ShapeProbe(cfg)
  params = model.init(jax.random.key(0), x_train[:1])
  warmup = min(50, _STEPS.value // 5 + 1)
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(
      0.0, _LR.value, warmup, max(_STEPS.value, warmup + 1),
      _LR.value / 10))
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, x, y):
    def loss_fn(p):
      return optax.sigmoid_binary_cross_entropy(model.apply(p, x), y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  predict = jax.jit(lambda p, x: model.apply(p, x) > 0)
  rng = np.random.default_rng(0)
  start = time.time()
  print(f"ViT {cfg.image_size}px / patch {cfg.patch_size} "
        f"({cfg.num_patches} tokens), width {cfg.width}, depth {cfg.depth}, "
        f"{jax.devices()[0].platform}", flush=True)
  for step in range(1, _STEPS.value + 1):
    idx = rng.integers(0, len(x_train), _BATCH.value)
    params, opt_state, loss = train_step(params, opt_state, x_train[idx],
                                         y_train[idx])
    if step % _EVERY.value == 0 or step == _STEPS.value:
      right = np.concatenate([
          np.asarray(predict(params, x_test[i:i + 250])) == y_test[i:i + 250]
          for i in range(0, len(x_test), 250)])
      per_shape = " ".join(f"{s} {a:.2f}" for s, a in
                           zip(SHAPES, right.mean(0)))
      print(f"step {step}: loss {float(loss):.3f}, per-label accuracy "
            f"{right.mean():.3f} ({per_shape}), whole set right "
            f"{right.all(1).mean():.3f}, {time.time() - start:.0f}s",
            flush=True)


if __name__ == "__main__":
  app.run(main)
