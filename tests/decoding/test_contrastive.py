"""Visual contrastive decoding (mmjax.decoding.contrastive): the rule each
generated token follows, batching, the plausibility cut, bad settings."""
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.decoding import contrastive
from mmjax.decoding.fastv import FastVConfig
from tests.inference.test_inference import (generate, make_model,
                                            prompts_and_images,
                                            reference_logits)

CONTRAST = contrastive.Contrast(alpha=1.0, beta=0.1, keep=0.3, seed=3)


def test_each_token_is_the_contrasted_choice_of_full_forwards():
  """Without a cache: the logits with the images and with the noised images
  (the same noise), combined, pick every generated token."""
  model, params = make_model("projection", "rope")
  prompts, images = prompts_and_images()
  out = generate(model, params, prompts, images, batch_size=2,
                 contrast=CONTRAST)
  noisy = contrastive.noised(images, CONTRAST.keep, CONTRAST.seed, [0, 1])
  with_image = reference_logits(model, params, prompts, images, out)
  blind = reference_logits(model, params, prompts, noisy, out)
  for tokens, plain, noised in zip(out, with_image, blind):
    mixed = contrastive.combine(jnp.concatenate([plain, noised]),
                                CONTRAST.alpha, CONTRAST.beta)
    assert [int(t) for t in jnp.argmax(mixed, -1)] == tokens
  # The noise matters: the plain greedy answer differs somewhere.
  assert out != generate(model, params, prompts, images, batch_size=2)


def test_batching_and_padding_do_not_change_the_answers():
  """Prompt i's noise is drawn from (seed, i) and its pair stays together
  in every batching, padded batches included."""
  model, params = make_model("projection", "rope")
  prompts, images = prompts_and_images()
  one = generate(model, params, prompts, images, batch_size=1,
                 contrast=CONTRAST)
  assert generate(model, params, prompts, images, batch_size=2,
                  contrast=CONTRAST) == one
  assert generate(model, params, prompts, images, batch_size=3,
                  contrast=CONTRAST) == one


def test_noise_keeps_the_asked_share_of_the_image():
  image = np.full((1, 8, 8, 3), 0.5, np.float32)
  out, = contrastive.noised([image], keep=0.6, seed=0, ids=[0])
  assert out.shape == image.shape and out.dtype == np.float32
  np.testing.assert_allclose(out.mean(), 0.3, atol=0.15)
  again, = contrastive.noised([image], keep=0.6, seed=0, ids=[0])
  np.testing.assert_array_equal(out, again)


def test_plausibility_cut_and_the_contrast_flip():
  plain = jnp.array([[2.0, 1.0, -5.0]])
  blind = jnp.array([[3.0, 0.0, -10.0]])
  both = jnp.concatenate([plain, blind])
  # 2 * plain - blind = [1, 2, 0]; token 2 is below 0.1 of the best.
  mixed = contrastive.combine(both, alpha=1.0, beta=0.1)
  np.testing.assert_allclose(mixed[0, :2], [1.0, 2.0])
  assert mixed[0, 2] == -jnp.inf and int(jnp.argmax(mixed[0])) == 1
  # beta = 1 keeps only the plain model's choice.
  assert int(jnp.argmax(contrastive.combine(both, 1.0, 1.0)[0])) == 0


@pytest.mark.parametrize("kw, message", [
    (dict(alpha=0.0), "alpha=0.0 must be > 0"),
    (dict(beta=0.0), r"beta=0.0 must lie in \(0, 1\]"),
    (dict(keep=1.0), r"keep=1.0 must lie in \[0, 1\)")])
def test_bad_settings_are_refused(kw, message):
  with pytest.raises(ValueError, match=message):
    contrastive.Contrast(**kw)


def test_contrast_needs_images_and_no_fastv():
  model, params = make_model("projection", "rope")
  prompts, images = prompts_and_images()
  with pytest.raises(ValueError, match="needs images, and does not combine "
                     "with FastV"):
    generate(model, params, prompts, images, contrast=CONTRAST,
             fastv=FastVConfig(k=1, r=0.5))
  with pytest.raises(ValueError, match="needs images"):
    generate(model, params, prompts, None, contrast=CONTRAST)
