"""The VQ image tokenizer: shapes, nearest code, straight-through gradient,
EMA update and dead-code restarts against numpy, usage statistics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import vq as vq_lib
from mmjax.models import vq_codebook as cb


@pytest.mark.parametrize("channels,grid", [((8, 16), 16), ((8, 8, 16), 8)])
def test_shapes_follow_the_downsampling(channels, grid):
  cfg = vq_lib.VQConfig(codebook_size=16, code_dim=4, channels=channels,
                        res_blocks=1)
  model = vq_lib.VQVAE(cfg)
  images = jnp.zeros((2, 64, 64, 3))
  params = model.init(jax.random.key(0), images)["params"]
  z = model.apply({"params": params}, images, method=vq_lib.VQVAE.encode)
  assert z.shape == (2, grid, grid, 4) and cfg.grid(64) == grid
  out = model.apply({"params": params}, z, method=vq_lib.VQVAE.decode)
  assert out.shape == (2, 64, 64, 3)


def test_upsample_is_the_transposed_convolution_it_replaces():
  # Same parameters (names, shapes) and the same sums as the stride-2 4x4
  # ConvTranspose it stands in for, on a non-square input, and the same
  # gradients.
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (2, 5, 7, 6))
  reference = nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding="SAME")
  params = reference.init(jax.random.key(1), x)["params"]
  params = jax.tree.map(lambda a: a + jax.random.normal(
      jax.random.key(2), a.shape), params)
  mine = vq_lib.Upsample(4)
  ours = jax.tree.map(jnp.shape, nn.unbox(
      mine.init(jax.random.key(1), x)["params"]))
  assert ours == jax.tree.map(jnp.shape, params)
  want = reference.apply({"params": params}, x)
  got = mine.apply({"params": params}, x)
  assert got.shape == (2, 10, 14, 4)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  grads = [jax.grad(lambda p, m=m: jnp.sum(m.apply({"params": p}, x) ** 3))(
      params) for m in (reference, mine)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-3)


def test_nearest_is_the_l2_argmin():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(3, 5, 6)).astype(np.float32)
  book = rng.normal(size=(11, 6)).astype(np.float32)
  want = np.argmin(((z[..., None, :] - book) ** 2).sum(-1), -1)
  got = cb.nearest(jnp.asarray(z), jnp.asarray(book))
  np.testing.assert_array_equal(np.asarray(got), want)
  q = cb.quantize(jnp.asarray(z), jnp.asarray(book))
  np.testing.assert_allclose(np.asarray(q.z_q), book[want])
  np.testing.assert_allclose(np.asarray(q.z_st), book[want], atol=1e-6)


def test_straight_through_gradient_passes_to_the_encoder_output():
  rng = np.random.default_rng(1)
  z = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  book = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  c = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  grad_z, grad_book = jax.grad(
      lambda z, b: (cb.quantize(z, b).z_st * c).sum(), (0, 1))(z, book)
  # d(z_st)/dz is the identity; the codebook gets no gradient (EMA only).
  np.testing.assert_allclose(np.asarray(grad_z), np.asarray(c))
  assert not np.asarray(grad_book).any()


def _numpy_ema(state, z, codes, decay, eps=1e-5):
  k = state.codebook.shape[0]
  counts = np.bincount(codes, minlength=k).astype(np.float64)
  sums = np.zeros_like(np.asarray(state.embed_sum), np.float64)
  np.add.at(sums, codes, z)
  size = decay * np.asarray(state.cluster_size) + (1 - decay) * counts
  embed_sum = decay * np.asarray(state.embed_sum) + (1 - decay) * sums
  total = size.sum()
  smoothed = (size + eps) / (total + k * eps) * total
  return size, embed_sum, embed_sum / smoothed[:, None]


def test_ema_update_matches_numpy_when_no_code_is_dead():
  rng = np.random.default_rng(2)
  k, d, n = 6, 3, 40
  state = cb.CodebookState(
      jnp.asarray(rng.normal(size=(k, d)), jnp.float32),
      jnp.asarray(rng.uniform(2, 5, size=k), jnp.float32),
      jnp.asarray(rng.normal(size=(k, d)), jnp.float32))
  z = rng.normal(size=(n, d)).astype(np.float32)
  codes = rng.integers(0, k, n)
  new, restarted = cb.ema_update(state, jnp.asarray(z), jnp.asarray(codes),
                                 jax.random.key(0), decay=0.99,
                                 threshold=1.0)
  size, embed_sum, book = _numpy_ema(state, z, codes, 0.99)
  assert int(restarted) == 0
  np.testing.assert_allclose(np.asarray(new.cluster_size), size, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new.embed_sum), embed_sum,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(new.codebook), book, rtol=1e-4,
                             atol=1e-6)


def test_dead_codes_restart_at_real_encoder_outputs():
  rng = np.random.default_rng(3)
  k, d, n = 8, 3, 20
  state = cb.CodebookState(
      jnp.asarray(rng.normal(size=(k, d)), jnp.float32),
      jnp.asarray([5.0] * 4 + [0.5] * 4, jnp.float32),  # last 4: dying
      jnp.asarray(rng.normal(size=(k, d)), jnp.float32))
  z = rng.normal(size=(n, d)).astype(np.float32)
  codes = np.arange(n) % 4  # only the first four codes are used
  weights = (np.arange(n) < 12).astype(np.float32)  # rows 12.. are padding
  new, restarted = cb.ema_update(
      state, jnp.asarray(z), jnp.asarray(codes), jax.random.key(1),
      jnp.asarray(weights), decay=0.99, threshold=1.0)
  size, embed_sum, book = _numpy_ema(state, z[:12], codes[:12], 0.99)
  assert int(restarted) == 4
  np.testing.assert_allclose(np.asarray(new.codebook)[:4], book[:4],
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(new.cluster_size),
                             list(size[:4]) + [1.0] * 4, rtol=1e-5)
  for row in np.asarray(new.codebook)[4:]:  # a real row of the batch each
    hits = np.flatnonzero(np.abs(z[:12] - row).max(-1) < 1e-6)
    assert hits.size == 1
  np.testing.assert_allclose(np.asarray(new.embed_sum)[4:],
                             np.asarray(new.codebook)[4:])


def test_a_fresh_codebook_starts_from_the_first_batch():
  z = jnp.asarray(np.random.default_rng(4).normal(size=(30, 2)), jnp.float32)
  state = cb.initial_state(5, 2)
  codes = cb.nearest(z, state.codebook)
  new, restarted = cb.ema_update(state, z, codes, jax.random.key(2))
  assert int(restarted) == 5
  for row in np.asarray(new.codebook):
    assert np.abs(np.asarray(z) - row).max(-1).min() < 1e-6


def test_usage_and_perplexity_by_hand():
  codes = jnp.asarray([0, 0, 1, 1, 2, 2, 3, 3])
  used, perplexity = cb.usage(codes, 8)
  assert float(used) == pytest.approx(0.5)
  assert float(perplexity) == pytest.approx(4.0, rel=1e-5)  # 4 equal codes
  used, perplexity = cb.usage(codes, 8, jnp.asarray([1.0] * 2 + [0.0] * 6))
  assert float(used) == pytest.approx(1 / 8)
  assert float(perplexity) == pytest.approx(1.0)


def test_restarts_draw_the_real_rows_uniformly():
  k, n = 600, 12
  state = cb.CodebookState(jnp.zeros((k, 1)), jnp.zeros((k,)),
                           jnp.zeros((k, 1)))
  z = jnp.arange(n, dtype=jnp.float32)[:, None]
  weights = jnp.asarray(np.arange(n) % 2, jnp.float32)  # odd rows are real
  new, restarted = cb.ema_update(state, z, jnp.zeros((n,), jnp.int32),
                                 jax.random.key(5), weights, threshold=1.0)
  assert int(restarted) == k
  drawn = np.bincount(np.asarray(new.codebook)[:, 0].astype(int),
                      minlength=n)
  assert not drawn[::2].any()
  assert drawn[1::2].min() > 60 and drawn[1::2].max() < 140  # 100 expected


def test_merge_nearby_keeps_the_more_used_of_near_duplicates():
  rng = np.random.default_rng(0)
  a, b, c = (rng.normal(size=8).astype(np.float32) * 3 for _ in range(3))
  book = np.stack([a, a + 0.01, b + 0.02, c, b])  # rows 0/1, 2/4 near
  used = np.array([1.0, 5.0, 2.0, 0.5, 3.0], np.float32)
  merged, kept = cb.merge_nearby(book, used, radius=0.2)
  assert kept == 3
  np.testing.assert_array_equal(merged[0], book[1])  # the more used vector
  np.testing.assert_array_equal(merged[1], book[1])
  np.testing.assert_array_equal(merged[2], book[4])
  np.testing.assert_array_equal(merged[[3, 4]], book[[3, 4]])
  # A group's lowest index is the code every member's neighbourhood gets.
  z = jnp.asarray(np.stack([a + 0.005, b, c - 0.01, a]))
  assert np.asarray(cb.nearest(z, jnp.asarray(merged))).tolist() == [0, 2, 3,
                                                                       0]
  # A radius below every distance changes nothing.
  same, kept = cb.merge_nearby(book, used, radius=1e-4)
  assert kept == 5 and np.array_equal(same, book)
