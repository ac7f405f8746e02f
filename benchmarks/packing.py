"""Packing efficiency (real tokens / all tokens): bucketed padding vs packing.

  python benchmarks/packing.py                       # the efficiency table
  python benchmarks/packing.py --time                # + tokens/s (quiet machine!)

Examples are drawn from a LLaVA-665K-like length mix (synthetic lengths, no
data is read; DISTRIBUTION says what each class stands for):

  class         share  images  text tokens (lognormal: median, sigma)
  short VQA      70%     1     90, 0.6    VQAv2 / GQA / OCR-VQA / A-OKVQA /
                                          TextCaps / RefCOCO / VG, several
                                          short QAs merged per image
  conversation   24%     1     300, 0.5   LLaVA-Instruct conversations,
                                          detailed descriptions, reasoning
  text only       6%     0     700, 0.8   ShareGPT

Each image takes `--visual_tokens` tokens (576: LLaVA-1.5, 336 px / 14;
144: the same after a 2x2 merge). An example longer than max_len is cut to
max_len when its image still fits, else dropped (as the pipeline does), the
same for both methods. Padding: batches of B examples in stream order, each
padded to the smallest default bucket (`batching.default_buckets`: powers of
two from 64, then max_len) holding its longest example -- what mmjax does
without packing. Packing: what `packing.Packer` does, on the lengths alone:
a window of W = 4 B candidates (the pipeline's default), the previous
window's leftovers first, placed into B rows of max_len tokens and at most
`--pack_images` images by each policy of `packing.POLICIES` (first_fit,
fill), rows padded to the bucket of the longest row; leftovers are carried
into the next window, nothing is dropped.

--time also times a training step (forward + backward) of the tiny decoder
on padded and on packed batches of the same examples and reports real
tokens/s; under load those numbers mean nothing (docs/performance.md).
"""
from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from mmjax.data import batching, packing

_EXAMPLES = flags.DEFINE_integer("examples", 20000, "examples drawn")
_BATCH = flags.DEFINE_integer("batch_size", 32, "global batch size B")
_MAX_LENS = flags.DEFINE_list("max_lens", ["512", "1024", "2048"],
                              "max_len values")
_VISUAL = flags.DEFINE_list("visual_tokens", ["576", "144"],
                            "tokens per image, one table block each")
_WINDOW = flags.DEFINE_integer("window_per_row", 4,
                               "packing window: stream examples per row")
_PACK_IMAGES = flags.DEFINE_integer("pack_images", 4,
                                    "images a packed row holds")
_POLICY = flags.DEFINE_enum("time_policy", "fill", list(packing.POLICIES),
                            "the packing policy --time measures")
_TIME = flags.DEFINE_bool("time", False, "also time tokens/s (quiet machine)")
_SEED = flags.DEFINE_integer("seed", 0, "length draw seed")

# (name, share, images, text median, text sigma).
DISTRIBUTION = (("short VQA", 0.70, 1, 90, 0.6),
                ("conversation", 0.24, 1, 300, 0.5),
                ("text only", 0.06, 0, 700, 0.8))


def draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(text tokens int[n], images int[n]) of n examples from DISTRIBUTION."""
  rng = np.random.default_rng(seed)
  shares = np.array([d[1] for d in DISTRIBUTION])
  kind = rng.choice(len(DISTRIBUTION), n, p=shares / shares.sum())
  median = np.array([d[3] for d in DISTRIBUTION])[kind]
  sigma = np.array([d[4] for d in DISTRIBUTION])[kind]
  text = np.clip(np.round(median * np.exp(sigma * rng.standard_normal(n))),
                 16, 8192).astype(int)
  return text, np.array([d[2] for d in DISTRIBUTION])[kind]


def lengths_at(text, images, visual: int, max_len: int
               ) -> tuple[np.ndarray, np.ndarray, int]:
  """(lengths, images) of the examples kept at max_len, and how many were
  dropped (an image that does not fit; 16 prompt tokens before it)."""
  total = text + images * visual
  keep = images * visual + 16 <= max_len
  return (np.minimum(total, max_len)[keep], images[keep],
          int((~keep).sum()))


def padded_efficiency(lengths, batch: int, max_len: int) -> float:
  buckets = batching.default_buckets(max_len)
  real = slots = 0
  for k in range(len(lengths) // batch):
    rows = lengths[k * batch:(k + 1) * batch]
    real += rows.sum()
    slots += batch * batching.bucket_length(int(rows.max()), buckets)
  return real / slots


def carried_batches(lengths, images, batch: int, max_len: int, window: int,
                    policy: str, max_images: int):
  """Yields the row lengths (a list per row) of each packed batch:
  `packing.Packer`'s carry-over with `packing.POLICIES[policy]`."""
  place = packing.POLICIES[policy]
  pending: list[int] = []
  nxt = 0
  while nxt + window - len(pending) <= len(lengths):
    take = window - len(pending)
    idx = pending + list(range(nxt, nxt + take))
    nxt += take
    rows, overflow = place(
        [int(lengths[i]) for i in idx], [int(images[i]) for i in idx],
        rows=batch, capacity=max_len, max_images=max_images)
    pending = [idx[i] for i in overflow]
    yield [[int(lengths[idx[i]]) for i in r] for r in rows]


def carried_efficiency(lengths, images, batch: int, max_len: int,
                       window: int, policy: str, max_images: int) -> float:
  """Real / all tokens of the packed batches (`carried_batches`)."""
  buckets = batching.default_buckets(max_len)
  real = slots = 0
  for rows in carried_batches(lengths, images, batch, max_len, window, policy,
                              max_images):
    filled = [sum(r) for r in rows]
    real += sum(filled)
    slots += batch * batching.bucket_length(max(filled), buckets)
  return real / slots


def table(examples: int, batch: int, max_lens, visual_tokens,
          window_per_row: int, seed: int = 0, pack_images: int = 4
          ) -> list[dict[str, float]]:
  """One dict per (visual tokens, max_len): padded and per-policy
  efficiencies, the share dropped as too long."""
  text, images = draw(examples, seed)
  out = []
  for visual in visual_tokens:
    for max_len in max_lens:
      lengths, imgs, too_long = lengths_at(text, images, visual, max_len)
      if len(lengths) < batch * window_per_row:
        continue
      row = dict(visual_tokens=visual, max_len=max_len,
                 mean_length=float(lengths.mean()),
                 too_long=too_long / examples,
                 padded=padded_efficiency(lengths, batch, max_len))
      for policy in packing.POLICIES:
        row[policy] = carried_efficiency(lengths, imgs, batch, max_len,
                                         batch * window_per_row, policy,
                                         pack_images)
      out.append(row)
  return out


def tokens_per_s(lengths, images, batch: int, max_len: int, window: int,
                 policy: str = "fill", max_images: int = 4,
                 steps: int = 10) -> tuple[float, float]:
  """Real tokens/s of a tiny-decoder training step, (padded, packed)."""
  import jax  # pylint: disable=g-import-not-at-top  (only with --time)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mmjax import testing  # pylint: disable=g-import-not-at-top
  from mmjax.models.decoder import DecoderLM  # pylint: disable=g-import-not-at-top
  model = DecoderLM(testing.tiny_decoder_config())
  params = testing.random_params(model)

  @jax.jit
  def step(p, tokens, segments):
    def loss(p):
      logits, _ = model.apply({"params": p}, tokens, segment_ids=segments)
      return jnp.mean(jax.nn.logsumexp(logits, -1) * (segments > 0))
    return jax.grad(loss)(p)

  def timed(batches):
    for tokens, segments in {b[0].shape: b for b in batches}.values():
      jax.block_until_ready(step(params, tokens, segments))  # compile each
    real, start = 0, time.perf_counter()
    for tokens, segments in batches[:steps]:
      jax.block_until_ready(step(params, tokens, segments))
      real += int((segments > 0).sum())
    return real / (time.perf_counter() - start)

  buckets = batching.default_buckets(max_len)
  padded = []
  for k in range(steps):
    rows = lengths[k * batch:(k + 1) * batch]
    width = batching.bucket_length(int(rows.max()), buckets)
    seg = (np.arange(width)[None] < rows[:, None]).astype(np.int32)
    padded.append((jnp.ones((batch, width), jnp.int32), jnp.asarray(seg)))
  packed = []
  for rows in carried_batches(lengths, images, batch, max_len, window,
                              policy, max_images):
    seg = np.zeros((batch, max_len), np.int32)
    for r, row in enumerate(rows):
      seg[r, :sum(row)] = np.repeat(np.arange(1, len(row) + 1), row)
    packed.append((jnp.ones((batch, max_len), jnp.int32), jnp.asarray(seg)))
    if len(packed) == steps:
      break
  return timed(padded), timed(packed)


def main(argv):
  del argv
  max_lens = [int(v) for v in _MAX_LENS.value]
  visual = [int(v) for v in _VISUAL.value]
  policies = list(packing.POLICIES)
  print(f"{_EXAMPLES.value} examples, batch {_BATCH.value}, window "
        f"{_WINDOW.value} per row, <= {_PACK_IMAGES.value} images a row, "
        f"seed {_SEED.value}")
  print("| visual tokens | max_len | mean length | dropped (image too long) "
        "| padded (buckets) | " + " | ".join(f"packed: {p}" for p in policies)
        + " |")
  print("|---|---|---|---|---|" + "---|" * len(policies))
  for r in table(_EXAMPLES.value, _BATCH.value, max_lens, visual,
                 _WINDOW.value, _SEED.value, _PACK_IMAGES.value):
    print(f"| {r['visual_tokens']} | {r['max_len']} | {r['mean_length']:.0f} "
          f"| {r['too_long']:.1%} | {r['padded']:.1%} | "
          + " | ".join(f"{r[p]:.1%}" for p in policies) + " |")
  if _TIME.value:
    text, images = draw(_EXAMPLES.value, _SEED.value)
    for max_len in max_lens:
      lengths, imgs, _ = lengths_at(text, images, visual[0], max_len)
      pad, pack = tokens_per_s(lengths, imgs, _BATCH.value, max_len,
                               _BATCH.value * _WINDOW.value, _POLICY.value,
                               _PACK_IMAGES.value)
      print(f"max_len {max_len}, {visual[0]} visual tokens: real tokens/s "
            f"padded {pad:,.0f}, packed ({_POLICY.value}) {pack:,.0f} "
            f"({pack / pad:.2f}x)")


if __name__ == "__main__":
  app.run(main)
