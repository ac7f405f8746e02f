"""The high-level generation API for plain decoder LMs: TextLM through the
shared decode loop, and `inference.load` of a converted LM and of a text LM
recipe's workdir (`ask`, `generate`, the CLI, clear errors)."""
import dataclasses
import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax import testing
from mmjax import hf, inference
from mmjax.config import load_config
from mmjax.decoding import decode
from mmjax.models import layout
from mmjax.models.decoder import DecoderConfig, DecoderLM
from mmjax.models.text_lm import TextLM, TextLMConfig
from mmjax.train.recipe import run_recipe
from tests.conftest import REPO

# One length for every reference forward: one compiled program per config.
REF_LEN = 32


def lm_cfg(mrope: bool) -> DecoderConfig:
  """The tiny default decoder (= configs/lm.py:tiny); head_dim 32, so
  M-RoPE sections sum to 16."""
  return DecoderConfig(mrope_sections=(4, 6, 6) if mrope else None)


@functools.lru_cache(maxsize=None)
def decoder_params(cfg: DecoderConfig):
  """Random weights scaled up: peaky logits, so greedy tokens vary and
  depend on positions (DESIGN.md section 7)."""
  abstract = nn.unbox(jax.eval_shape(
      lambda r: DecoderLM(cfg).init(r, np.zeros((1, 4), np.int32)),
      jax.random.key(0)))["params"]
  return jax.tree.map(lambda x: x * 3.0, testing.random_params_like(abstract))


@functools.partial(jax.jit, static_argnames=("model",))
def _logits(model, params, tokens):
  return model.apply({"params": params}, tokens)[0]


def reference_greedy(cfg, params, prompt, n, stop_ids=()):
  """Greedy tokens from full forwards over the growing sequence (right
  padded: causal attention keeps the padding out of earlier positions)."""
  seq, model = list(prompt), DecoderLM(cfg)
  for _ in range(n):
    tokens = np.zeros((1, REF_LEN), np.int32)
    tokens[0, :len(seq)] = seq
    nxt = int(np.argmax(_logits(model, params, tokens)[0, len(seq) - 1]))
    if nxt in stop_ids:
      break
    seq.append(nxt)
  return seq[len(prompt):]


@pytest.mark.parametrize("mrope", [False, True], ids=["rope", "mrope"])
def test_text_lm_decode_loop_equals_full_forward_greedy(mrope):
  cfg = lm_cfg(mrope)
  model = TextLM(TextLMConfig(cfg))
  assert model.cfg.positions == ("mrope" if mrope else "rope")
  params = decoder_params(cfg)
  prompts = [[2, 9, 10, 11, 12, 13], [2, 17]]  # left padding in the batch
  out = decode.generate(model, {"llm": params}, [[p] for p in prompts],
                        image_token_id=4, max_new_tokens=6, batch_size=2)
  for prompt, got in zip(prompts, out.tokens):
    assert got == reference_greedy(cfg, params, prompt, 6)
  assert len({t for row in out.tokens for t in row}) > 2  # not degenerate


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
  """What `python -m mmjax.convert` writes for a LLaMA-style LM."""
  cfg = lm_cfg(False)
  conv = hf.Converted("lm", dataclasses.asdict(cfg), decoder_params(cfg),
                      {"model_type": "llama", "notes": [],
                       "architectures": ["LlamaForCausalLM"]})
  return str(hf.save_converted(conv, tmp_path_factory.mktemp("conv") / "out"))


def test_load_converted_lm_generates_token_ids(converted_dir):
  run = inference.load(converted_dir)
  assert run.text_only and run.tokenizer is None and run.stop_ids == ()
  out = run.generate([[2, 5, 6]], max_new_tokens=4)
  want = reference_greedy(lm_cfg(False), decoder_params(lm_cfg(False)),
                          [2, 5, 6], 4)
  assert out.tokens == [want] and out.texts == [""]
  # A stop id cuts the answer before it.
  cut = run.generate([[2, 5, 6]], max_new_tokens=4, stop_ids=[want[2]])
  assert cut.tokens == [want[:want.index(want[2])]]


def test_converted_lm_without_tokenizer_refuses_text(converted_dir):
  run = inference.load(converted_dir)
  with pytest.raises(inference.InputError, match="tokenizer=PATH"):
    run.generate(["hello"])
  with pytest.raises(inference.InputError, match="tokenizer=PATH"):
    run.ask(None, "hello")
  with pytest.raises(inference.InputError, match=r"ids in \[0, 512\)"):
    run.generate([[2, 512]])


@pytest.fixture(scope="module")
def lm_workdir(tmp_path_factory):
  """configs/lm.py:tiny trained for 3 steps on a small corpus."""
  config = load_config(os.path.join(REPO, "configs/lm.py:size=tiny,steps=3"))
  config.data.num_sentences = 800  # the tokenizer trains in a second
  config.batch_size = 8
  config.eval_every = 0
  config.eval_batches = 1
  config.progress_bar = False
  config.checkpoint.async_save = False
  workdir = str(tmp_path_factory.mktemp("lm_run"))
  run_recipe(config, workdir, verbose=False)
  return workdir


@pytest.fixture(scope="module")
def lm_run(lm_workdir):
  return inference.load(lm_workdir)


def test_text_lm_workdir_asks_and_generates(lm_run):
  run = lm_run
  assert run.text_only and run.checkpoint.endswith(os.path.join("lm", "3"))
  assert run.stop_ids == (run.tokenizer.eos_id,) and run.max_len == 64
  answer = run.ask(None, "the", max_new_tokens=8)
  assert isinstance(answer, str)
  out = run.generate(["the", "a"], max_new_tokens=8)
  assert len(out.tokens) == len(out.texts) == 2
  assert out.texts[0] == answer
  # Plain text after BOS, greedy, stopping at EOS.
  prompt = run.tokenizer.encode("the", add_bos=True)
  assert prompt[0] == run.tokenizer.bos_id
  assert out.tokens[0] == reference_greedy(
      run.cfg.lm, run.params["llm"], prompt, 8, (run.tokenizer.eos_id,))
  # Token ids are taken as they are.
  assert run.generate([prompt], max_new_tokens=8).tokens == out.tokens[:1]


def test_text_lm_refuses_images_and_fastv(lm_run):
  image = np.zeros((8, 8, 3), np.uint8)
  with pytest.raises(inference.InputError, match="takes no images"):
    lm_run.ask(image, "what is this?")
  with pytest.raises(inference.InputError, match="takes no images"):
    lm_run.generate(["a", "b"], [None, image])
  fastv = inference.FastVConfig(k=1, r=0.5)
  with pytest.raises(ValueError, match="text-only LM has none"):
    lm_run.ask(None, "the", fastv=fastv)
  with pytest.raises(ValueError, match="text-only LM has none"):
    decode.generate(lm_run.model, lm_run.params, [[[2, 5]]],
                    image_token_id=4, max_new_tokens=2, fastv=fastv)
  with pytest.raises(ValueError, match="text-only LM takes no images"):
    decode.generate(lm_run.model, lm_run.params,
                    [[[2], layout.Media(64, 64), [5]]],
                    [np.zeros((1, 64, 64, 3), np.float32)],
                    image_token_id=4, max_new_tokens=2)


def test_converted_lm_with_a_tokenizer_takes_text(converted_dir, lm_workdir):
  run = inference.load(converted_dir,
                       tokenizer=os.path.join(lm_workdir, "tokenizer.model"))
  assert run.stop_ids == (run.tokenizer.eos_id,)
  assert isinstance(run.ask(None, "the", max_new_tokens=3), str)


def test_generate_cli_continues_a_text_lm_prompt(lm_workdir, lm_run):
  proc = subprocess.run(
      [sys.executable, "-m", "mmjax.generate", f"--workdir={lm_workdir}",
       "--prompt=the", "--max_new_tokens=8"], cwd=REPO, capture_output=True,
      text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == lm_run.ask(None, "the", max_new_tokens=8)
