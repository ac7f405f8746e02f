"""KV-cache generation (mmjax.inference) against step-by-step full forwards."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import testing
from mmjax.data.tokenizer import IMAGE_ID
from mmjax.decoding import decode
from mmjax.models import layout
from mmjax.models.choices import FUSIONS, POSITIONS
from mmjax.models.mllm import MLLM

MAX_NEW = 5


def model_config(fusion, positions, image_attention="causal"):
  # One layer per tower: half the compile time; the LM keeps two layers.
  one = dict(depth=1)
  return testing.tiny_mllm_config(fusion, positions,
                                  image_attention=image_attention,
                                  vision=one, resampler=one, qformer=one)


@functools.lru_cache(maxsize=None)
def _params(fusion):
  """Random weights scaled up (peaky attention, so greedy tokens depend on
  positions; DESIGN.md section 7), open cross-attention gates. The tree
  does not depend on the position scheme."""
  return testing.random_params(MLLM(model_config(fusion, "rope")), scale=3.0,
                                gate=1.0)


def make_model(fusion, positions, image_attention="causal"):
  """A tiny shapes model (towers of one layer) and its random weights."""
  return (MLLM(model_config(fusion, positions, image_attention)),
          _params(fusion))


def prompts_and_images(n_images=(1, 1)):
  """Two prompts of different lengths (the batch needs left padding)."""
  rng = np.random.default_rng(1)
  texts = [([2, 9, 10, 11], [12, 13, 14, 15, 16, 8]), ([2, 9], [17, 8])]
  prompts, images = [], []
  for (head, tail), n in zip(texts, n_images):
    prompts.append([head] + [layout.Media(64, 64)] * n + [tail])
    images.append(rng.uniform(-1, 1, (n, 64, 64, 3)).astype(np.float32))
  return prompts, images


@functools.partial(jax.jit, static_argnames=("model",))
def _forward(model, params, batch):
  return model.apply({"params": params}, batch["tokens"], batch["positions"],
                     images=batch["images"], image_mask=batch["image_mask"],
                     image_token_mask=batch["image_token_mask"],
                     media_locations=batch["media_locations"])[0]


def reference(model, params, prompts, images, generated, shift=0):
  """Greedy next tokens of every unpadded sequence prompt + generated[:k].

  `shift` moves the generated tokens' positions (a wrong layout).
  """
  return [[int(t) for t in jnp.argmax(row, -1)] for row in reference_logits(
      model, params, prompts, images, generated, shift)]


def reference_logits(model, params, prompts, images, generated, shift=0):
  """Per sequence, the logits f32[len(g), V] before each generated token.

  One full forward (no cache) over each sequence, right-padded into one
  batch: under the causal mask the logits at the slot before generated
  token k are those of the sequence prompt + generated[:k] at its last slot.
  """
  seqs = [layout.assemble(model.cfg, list(p) + [g], IMAGE_ID, v2pe_stride=64)
          for p, g in zip(prompts, generated)]
  length = max(len(s["tokens"]) for s in seqs)
  batch = {k: [] for k in ("tokens", "positions", "image_token_mask",
                           "media_locations")}
  for s, g in zip(seqs, generated):
    s["positions"][..., len(s["tokens"]) - len(g):] += shift
    pad = length - len(s["tokens"])
    for key in batch:
      v = s[key]
      batch[key].append(np.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, pad)]))
  batch = {k: np.stack(v, axis=-2) for k, v in batch.items()}
  batch["images"] = np.stack(images)
  batch["image_mask"] = np.ones(batch["images"].shape[:2], bool)
  logits = _forward(model, params, batch)
  out = []
  for i, (s, g) in enumerate(zip(seqs, generated)):
    n = len(s["tokens"])
    out.append(logits[i, n - len(g) - 1:n - 1])
  return out


def generate(model, params, prompts, images, **kw):
  kw.setdefault("max_new_tokens", MAX_NEW)
  return decode.generate(model, params, prompts, images,
                            image_token_id=IMAGE_ID, **kw).tokens


# Every paradigm and every position scheme, without the whole 5 x 3 product
# (compiling it costs ~2 min of CPU; it passed when run once): all schemes
# with image tokens on a spatial grid (projection); M-RoPE over a latent row
# (resampler) and a grid with newline columns (one_backbone); V2PE with 32
# latents (qformer) and 72 patch tokens (one_backbone); cross-attention with
# integer and float positions (its stream holds text only).
COMBOS = [("projection", "rope"), ("projection", "mrope"),
          ("projection", "v2pe"), ("resampler", "mrope"), ("qformer", "v2pe"),
          ("one_backbone", "mrope"), ("one_backbone", "v2pe"),
          ("cross_attention", "rope"), ("cross_attention", "v2pe")]


def test_combos_cover_every_paradigm_and_scheme():
  assert {f for f, _ in COMBOS} == set(FUSIONS)
  assert {p for _, p in COMBOS} == set(POSITIONS)


@pytest.mark.parametrize("fusion,positions", COMBOS)
def test_cached_generation_equals_full_forward_greedy(fusion, positions):
  model, params = make_model(fusion, positions)
  prompts, images = prompts_and_images()
  out = generate(model, params, prompts, images, batch_size=2)
  assert [len(t) for t in out] == [MAX_NEW] * 2
  assert len(set(out[0] + out[1])) > 2  # not one token repeated
  assert out == reference(model, params, prompts, images, out)
  if fusion == "projection" and positions != "rope":
    # The check can fail: generated tokens one position off give others.
    assert out != reference(model, params, prompts, images, out, shift=1)


def test_bidirectional_image_attention_and_several_images():
  model, params = make_model("projection", "mrope", "bidirectional")
  prompts, images = prompts_and_images(n_images=(2, 2))
  out = generate(model, params, prompts, images, batch_size=2)
  assert out == reference(model, params, prompts, images, out)


def test_batched_equals_one_by_one():
  model, params = make_model("projection", "mrope")
  prompts, images = prompts_and_images()
  one = [generate(model, params, [p], [im], batch_size=1)[0]
         for p, im in zip(prompts, images)]
  assert generate(model, params, prompts, images, batch_size=2) == one


def test_stop_tokens_and_streaming_chunks():
  model, params = make_model("projection", "rope")
  prompts, images = prompts_and_images()
  full = generate(model, params, prompts, images, batch_size=2)
  stop = full[0][2]
  seen = []
  out = generate(model, params, prompts, images, batch_size=2,
                 stop_ids=[stop, 500], chunk=2, on_tokens=seen.append)
  want = [t[:t.index(stop)] if stop in t else t for t in full]
  assert out == want and len(out[0]) <= 2
  # Streamed: the first token right after prefill, then two per chunk.
  assert seen[0] == [t[:1] for t in want] and seen[-1] == want
  assert len(seen) >= 2 and seen[1][1] == want[1][:3]
  for earlier, later in zip(seen, seen[1:]):
    assert all(later[i][:len(e)] == e for i, e in enumerate(earlier))


def test_sampling_is_deterministic_from_the_seed():
  model, params = make_model("projection", "rope")
  prompts, images = prompts_and_images()
  kw = dict(sampling=decode.Sampling(temperature=1.5, top_k=50,
                                        top_p=0.95), batch_size=2)
  a = generate(model, params, prompts, images, seed=3, **kw)
  assert a == generate(model, params, prompts, images, seed=3, **kw)
  assert a != generate(model, params, prompts, images, seed=4, **kw)
  assert a != generate(model, params, prompts, images, batch_size=2)
  # Row i's draws do not depend on the batch it was in.
  kw["batch_size"] = 1
  assert generate(model, params, prompts, images, seed=3, **kw) == a


def test_sample_tokens_top_k_and_top_p_support():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
  keys = jax.random.split(jax.random.key(0), 4000)
  top_k = decode.sample_tokens(logits, keys,
                                  decode.Sampling(1.0, top_k=2))
  assert set(np.unique(top_k)) == {0, 1}
  top_p = decode.sample_tokens(logits, keys,
                                  decode.Sampling(1.0, top_p=0.7))
  assert set(np.unique(top_p)) == {0, 1}  # 0.5 < 0.7 <= 0.8
  freq = np.mean(np.asarray(top_p) == 0)
  assert abs(freq - 0.5 / 0.8) < 0.03
  greedy = decode.sample_tokens(logits[:8] * 0.1, keys[:8],
                                   decode.Sampling(5.0, top_k=1))
  assert set(np.unique(greedy)) == {0}  # top_k=1 is greedy at any temperature
  with pytest.raises(ValueError, match="top_p"):
    decode.Sampling(top_p=0.0)


def test_prompt_longer_than_context_is_refused():
  model, params = make_model("projection", "rope")
  prompts, images = prompts_and_images()
  with pytest.raises(decode.PromptTooLongError, match="context of 70"):
    generate(model, params, prompts, images, max_len=70)
