"""The text-to-image decode loop: cached greedy decoding equals re-running
the whole sequence, guidance mixes the two rows' code logits, only image
codes are sampled, bad requests are refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.data.tokenizer import PAD_ID
from mmjax.decoding import image_tokens
from mmjax.decoding.sampling import Sampling
from mmjax.models import vq as vq_lib
from mmjax.models.decoder import DecoderConfig
from mmjax.models.image_vocab import ImageVocab
from mmjax.models.text_to_image import TextToImageLM

VOCAB = ImageVocab(text_size=40, codes=16)


@pytest.fixture(scope="module")
def model_and_params():
  lm = DecoderConfig(vocab_size=VOCAB.size, d_model=32, n_layers=2,
                     n_heads=4, n_kv_heads=2, mlp_dim=64)
  model = TextToImageLM(lm=lm, vq=vq_lib.VQConfig(codebook_size=16,
                                                  channels=(8, 8)),
                        vocab=VOCAB, prompt_len=6, side=16)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  # Larger weights: logits far from uniform, so argmax is not a tie.
  params = jax.tree.map(lambda x: x * 3.0, params)["params"]
  return model, params


def _full_logits(model, params, prompts, codes):
  """Code logits at every image position, recomputed without a cache."""
  inputs, _ = model.sequences(prompts, codes)
  logits, _ = model.apply({"params": params}, inputs)
  lo = VOCAB.first_code_id
  return logits[:, model.prompt_len:-1, lo:lo + VOCAB.codes]


def test_vocabulary_layout():
  assert (VOCAB.boi_id, VOCAB.eoi_id, VOCAB.first_code_id, VOCAB.size) == (
      40, 41, 42, 58)
  np.testing.assert_array_equal(VOCAB.codes_of(VOCAB.code_ids([0, 15])),
                                [0, 15])
  with pytest.raises(ValueError, match="codes >= 2"):
    ImageVocab(text_size=10, codes=1)


def test_greedy_equals_rerunning_the_sequence(model_and_params):
  model, params = model_and_params
  prompts = jnp.array([[5, 6, 7, PAD_ID, PAD_ID, PAD_ID],
                       [9, 3, 2, 8, 1, PAD_ID]], jnp.int32)
  codes = image_tokens.generate_codes(model, params, prompts,
                                      jax.random.key(1), guidance=1.0,
                                      sampling=Sampling(temperature=0.0))
  assert codes.shape == (2, model.n_codes) == (2, 16)
  assert len(np.unique(np.asarray(codes))) > 1  # not a constant image
  full = _full_logits(model, params, prompts, codes)
  np.testing.assert_array_equal(np.argmax(full, -1), codes)


def test_code_positions_in_cached_generation_and_in_training_agree(
    model_and_params):
  """With the codes' row and column in their slots (sincos2d) the cached
  decode loop adds them where a full training forward does, and they change
  what is drawn."""
  plain_model, params = model_and_params
  model = plain_model.clone(code_positions="sincos2d")
  prompts = jnp.array([[5, 6, 7, PAD_ID, PAD_ID, PAD_ID]], jnp.int32)
  greedy = dict(guidance=1.0, sampling=Sampling(temperature=0.0))
  codes = image_tokens.generate_codes(model, params, prompts,
                                      jax.random.key(1), **greedy)
  full = _full_logits(model, params, prompts, codes)
  np.testing.assert_array_equal(np.argmax(full, -1), codes)
  assert not np.array_equal(codes, image_tokens.generate_codes(
      plain_model, params, prompts, jax.random.key(1), **greedy))
  grid = np.asarray(model.bind({"params": params}).code_grid(jnp.arange(
      model.seq_len)))
  p, n = model.prompt_len, model.n_codes
  assert not grid[:p].any() and not grid[p + n:].any()
  assert len({tuple(r) for r in grid[p:p + n]}) == n  # one place per code
  with pytest.raises(ValueError, match="code_positions='rope2d'; choose"):
    plain_model.clone(code_positions="rope2d").init(
        jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


def test_guidance_mixes_conditional_and_unconditional(model_and_params):
  model, params = model_and_params
  prompts = jnp.array([[5, 6, 7, 8, 9, 10]], jnp.int32)
  scale = 2.5
  codes = image_tokens.generate_codes(model, params, prompts,
                                      jax.random.key(2), guidance=scale,
                                      sampling=Sampling(temperature=0.0))
  cond = _full_logits(model, params, prompts, codes)
  uncond = _full_logits(model, params, jnp.full_like(prompts, PAD_ID), codes)
  mixed = image_tokens.guided_logits(cond, uncond, scale)
  np.testing.assert_array_equal(np.argmax(mixed, -1), codes)
  # Guidance changes the image (it would not if it were ignored).
  plain = image_tokens.generate_codes(model, params, prompts,
                                      jax.random.key(2), guidance=1.0,
                                      sampling=Sampling(temperature=0.0))
  assert (np.asarray(plain) != np.asarray(codes)).any()


def test_sampling_draws_codes_only_and_follows_the_key(model_and_params):
  model, params = model_and_params
  prompts = jnp.array([[5, 6, PAD_ID, PAD_ID, PAD_ID, PAD_ID]] * 4, jnp.int32)
  sample = lambda k: np.asarray(image_tokens.generate_codes(
      model, params, prompts, jax.random.key(k), guidance=2.0,
      sampling=Sampling(temperature=1.0, top_k=5)))
  a, b = sample(3), sample(3)
  np.testing.assert_array_equal(a, b)
  assert (a != sample(4)).any() and (a[0] != a[1]).any()  # rows differ too
  assert a.min() >= 0 and a.max() < VOCAB.codes


def test_bad_requests(model_and_params):
  model, params = model_and_params
  prompts = jnp.zeros((1, 3), jnp.int32)
  for scale in (0.0, -1.0):
    with pytest.raises(ValueError, match="guidance=.* must be > 0"):
      image_tokens.generate_codes(model, params, prompts, jax.random.key(0),
                                  guidance=scale)
  with pytest.raises(ValueError, match="the model reads at most 6"):
    image_tokens.generate_codes(model, params, jnp.zeros((1, 7), jnp.int32),
                                jax.random.key(0))


def test_a_layout_is_planned_within_its_grammar_and_drawn_as_trained():
  """With a layout the loop writes L grammatical layout tokens, then codes
  whose slots carry the layout's cells exactly as a training forward over
  the same sequence does (greedy picks agree), and the cells matter."""
  from mmjax.models import scene_layout  # pylint: disable=g-import-not-at-top
  model = TextToImageLM(
      lm=DecoderConfig(vocab_size=VOCAB.size + 2 + 3 + 8 + 1, d_model=32,
                       n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64),
      vq=vq_lib.VQConfig(codebook_size=16, channels=(8, 8)), vocab=VOCAB,
      prompt_len=6, side=16, layout_objects=2, layout_colours=2,
      layout_shapes=3, layout_bins=8)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  params = jax.tree.map(lambda x: x * 3.0, params)["params"]
  lv = model.layout_vocab
  prompts = jnp.array([[5, 6, 7, PAD_ID, PAD_ID, PAD_ID],
                       [9, 3, 2, 8, 1, PAD_ID]], jnp.int32)
  codes, layout = image_tokens.generate_codes(
      model, params, prompts, jax.random.key(1), guidance=1.0,
      sampling=Sampling(temperature=0.0), with_layout=True)
  assert layout.shape == (2, lv.length) == (2, 13)
  for row in np.asarray(layout):
    eol = list(row).index(lv.eol_id)
    assert eol % 6 == 0 and not row[eol + 1:].any()
    objects = row[:eol].reshape(-1, 6)
    assert ((objects[:, 0] >= lv.first_id)
            & (objects[:, 0] < lv.first_shape_id)).all()
    assert ((objects[:, 1] >= lv.first_shape_id)
            & (objects[:, 1] < lv.first_bin_id)).all()
    assert ((objects[:, 2:] >= lv.first_bin_id)
            & (objects[:, 2:] < lv.eol_id)).all()
  cells = scene_layout.cells(*scene_layout.decode(lv, layout), model.grid)
  inputs, _ = model.sequences(prompts, codes, layout)
  logits, _ = model.apply({"params": params}, inputs, cells)
  lo = VOCAB.first_code_id
  full = logits[:, model.boi_slot:-1, lo:lo + VOCAB.codes]
  np.testing.assert_array_equal(np.argmax(full, -1), codes)
  # The planning slots pick, within the grammar, what was written.
  planned = np.asarray(logits[:, model.prompt_len - 1:model.boi_slot - 1])
  for k in range(lv.length):
    allowed = np.asarray(lv.allowed(k, jnp.any(layout[:, :k] == lv.eol_id, 1),
                                    planned.shape[-1], PAD_ID))
    pick = np.where(allowed, planned[:, k], -np.inf).argmax(-1)
    np.testing.assert_array_equal(pick, layout[:, k])
  # No object anywhere draws other codes than the planned cells.
  bare, _ = model.apply({"params": params}, inputs)
  assert not np.array_equal(np.argmax(bare[:, model.boi_slot:-1,
                                           lo:lo + VOCAB.codes], -1), codes)
  # Guidance runs an unconditional row beside each caption.
  guided = image_tokens.generate_codes(model, params, prompts,
                                       jax.random.key(1), guidance=3.0)
  assert guided.shape == codes.shape
  # apart: every bin written is one free_bins allowed given what came before.
  _, apart = image_tokens.generate_codes(
      model, params, prompts, jax.random.key(2), guidance=1.0,
      layout_sampling=image_tokens.LayoutSampling(
          where=Sampling(temperature=1.0), apart=True), with_layout=True)
  apart = np.asarray(apart)
  for k in range(lv.length):
    before = np.where(np.arange(lv.length) < k, apart, 0)
    free = np.asarray(scene_layout.free_bins(lv, jnp.asarray(before), k))
    for row in range(2):
      if lv.first_bin_id <= apart[row, k] < lv.eol_id:
        assert free[row, apart[row, k] - lv.first_bin_id], (row, k)
