"""Tests for V2PE position ids (mmjax.models.position_ids)."""

import numpy as np
import pytest

from mmjax.models import position_ids as pid

T = pid.TextSegment
V = pid.VisionSegment

# <img> is ordinary text: 2 text + <img>, 4 visual tokens, </img> + 1 text.
_LAYOUT = [T(3), V(1, 2, 2), T(2)]


def test_stride_256_is_arange():
  layout = [T(2), V(1, 4, 8), T(3), V(3, 2, 2), T(1)]
  got = pid.v2pe_positions(layout, [pid.v2pe_delta(256)] * 2)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, np.arange(pid.sequence_length(layout)))


def test_stride_64_hand_computed():
  got = pid.v2pe_positions(_LAYOUT, [pid.v2pe_delta(64)])
  # <img> at 2; visual 2 + k/4; ceil(3.0) = 3 -> </img> at 4.
  np.testing.assert_array_equal(got, [0, 1, 2, 2.25, 2.5, 2.75, 3, 4, 5])


def test_text_after_image_continues_at_ceil_plus_one():
  # 6 tokens at delta 0.25 end at 3.5 -> ceil 4 -> next text at 5.
  got = pid.v2pe_positions([T(3), V(1, 2, 3), T(2)], [0.25])
  np.testing.assert_array_equal(
      got, [0, 1, 2, 2.25, 2.5, 2.75, 3, 3.25, 3.5, 5, 6])


def test_two_images_with_their_own_deltas():
  got = pid.v2pe_positions([T(1), V(1, 1, 3), T(1), V(1, 1, 2), T(1)],
                           [pid.v2pe_delta(1), pid.v2pe_delta(128)])
  # 0; 1/256, 2/256, 3/256 -> ceil 1; 2; 2.5, 3.0 -> ceil 3; 4.
  np.testing.assert_allclose(
      got, [0, 1 / 256, 2 / 256, 3 / 256, 2, 2.5, 3.0, 4], rtol=0, atol=0)


def test_vision_block_first():
  got = pid.v2pe_positions([V(1, 1, 2), T(1)], [0.5])
  np.testing.assert_array_equal(got, [-0.5, 0.0, 1.0])


def test_delta_values_and_invalid_strides():
  assert pid.v2pe_delta(64) == 0.25
  assert pid.v2pe_delta(256) == 1.0
  assert pid.v2pe_delta(1) == 1 / 256
  assert pid.v2pe_delta(8, tokens_per_tile=64) == 0.125
  for bad in (0, 3, 96, 512, -2, True):
    with pytest.raises(ValueError, match="stride must be one of"):
      pid.v2pe_delta(bad)
  with pytest.raises(ValueError, match="tokens_per_tile"):
    pid.v2pe_delta(4, tokens_per_tile=0)


def test_delta_count_and_sign_checked():
  with pytest.raises(ValueError, match="one delta per vision block"):
    pid.v2pe_positions(_LAYOUT, [0.25, 0.5])
  with pytest.raises(ValueError, match="> 0"):
    pid.v2pe_positions(_LAYOUT, [0.0])


def test_sampled_strides_in_set_and_deterministic():
  draws = [pid.sample_v2pe_stride(np.random.default_rng(7)) for _ in range(3)]
  assert len(set(draws)) == 1  # same seed, same stride
  rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
  seq_a = [pid.sample_v2pe_stride(rng_a) for _ in range(300)]
  seq_b = [pid.sample_v2pe_stride(rng_b) for _ in range(300)]
  assert seq_a == seq_b
  assert set(seq_a) == set(pid.V2PE_STRIDES)  # uniform over all nine
  assert all(isinstance(s, int) for s in seq_a)
  assert pid.V2PE_STRIDES == (1, 2, 4, 8, 16, 32, 64, 128, 256)
  assert pid.V2PE_DEFAULT_STRIDE == 64
