"""Hugging Face tokenizers: loading, `<image>`, pad fallback, pickling, bad
input, and their use by the data pipeline, dataset lookup and generation."""
import json
import os
import pickle
import types

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmjax import testing
from mmjax.config import ConfigError
from mmjax.data import builders, datasets, pipeline
from mmjax.data.hf_tokenizer import HFTokenizer, load_any
from mmjax.data.tokenizer import Tokenizer
from mmjax.inference import workdir as workdir_lib
from mmjax.models import layout
from tests.data import hf_tokenizers

TEXTS = ["the red circle is above the blue square.", " leading space",
         "a <image> in the middle", "<image>\nfirst", "naïve € 1234\n\n",
         "trailing  "]
CHAT = [{"from": "human", "value": "<image>\nwhat colour is the circle?"},
        {"from": "gpt", "value": "it is red."}]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("tokenizers")
  return {"qwen": hf_tokenizers.qwen_dir(root / "qwen"),
          "llama": hf_tokenizers.llama_dir(root / "llama", legacy=False),
          "gemma": hf_tokenizers.gemma_dir(root / "gemma")}


@pytest.fixture(scope="module")
def qwen(dirs):
  return HFTokenizer.load(dirs["qwen"], "chatml")


def test_image_token_is_added_when_missing(qwen):
  # Trained with 400 pieces, no <image>: it gets the next id.
  assert qwen.base_vocab_size == 400 and qwen.vocab_size == 401
  assert qwen.image_id == 400 and qwen.added_tokens == ("<image>",)
  ids = qwen.encode("a<image>b <image>\n")
  assert ids.count(qwen.image_id) == 2
  assert qwen.decode(ids) == "a<image>b <image>\n"


def test_existing_image_token_is_kept(dirs):
  tok = HFTokenizer.load(dirs["llama"], "vicuna_v1")  # llava-hf style
  assert tok.image_id == 400 and tok.vocab_size == tok.base_vocab_size == 401
  assert tok.added_tokens == ()


def test_special_ids_and_pad_fallback(dirs, qwen):
  assert qwen.bos_id is None and qwen.encode("hi", add_bos=True) == (
      qwen.encode("hi"))
  assert qwen.eos_id == qwen.pad_id == qwen.token_id("<|endoftext|>")
  assert qwen.end_of_turn_id == qwen.token_id("<|im_end|>")
  llama = HFTokenizer.load(dirs["llama"], "vicuna_v1")
  # LLaMA has no pad token: unk (id 0) pads.
  assert (llama.unk_id, llama.bos_id, llama.eos_id) == (0, 1, 2)
  assert llama.pad_fallback == "unk_token" and llama.pad_id == 0
  assert llama.end_of_turn_id == llama.eos_id
  assert llama.encode("hi", add_bos=True, add_eos=True)[::len(
      llama.encode("hi")) + 1] == [1, 2]
  gemma = HFTokenizer.load(dirs["gemma"], "gemma")
  assert (gemma.pad_id, gemma.eos_id, gemma.bos_id) == (0, 1, 2)
  assert gemma.end_of_turn_id == gemma.token_id("<end_of_turn>")


@pytest.mark.parametrize("kind,template", [("qwen", "chatml"),
                                           ("llama", "vicuna_v1"),
                                           ("gemma", "gemma")])
def test_decode_inverts_encode_and_pickles(dirs, kind, template):
  tok = HFTokenizer.load(dirs[kind], template)
  for text in TEXTS:
    assert tok.decode(tok.encode(text)) == text
  copy = pickle.loads(pickle.dumps(tok))
  assert copy.encode_chat(CHAT) == tok.encode_chat(CHAT)
  assert (copy.vocab_size, copy.image_id, copy.pad_id, copy.added_tokens,
          copy.base_vocab_size, copy.template.name) == (
              tok.vocab_size, tok.image_id, tok.pad_id, tok.added_tokens,
              tok.base_vocab_size, tok.template.name)
  assert [copy.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]


def test_bare_model_files(dirs, tmp_path):
  # An mmjax model: the mmjax template gives Tokenizer's ids.
  texts = hf_tokenizers.SENTENCES + ["what colour is the circle?"]
  mmjax_tok = Tokenizer.train(texts, 340, model_path=tmp_path / "m.model")
  assert isinstance(load_any(tmp_path / "m.model"), Tokenizer)
  bare = HFTokenizer.load(tmp_path / "m.model", "mmjax")
  assert bare.encode_chat(CHAT) == mmjax_tok.encode_chat(CHAT)
  assert bare.prompt_ids(CHAT[:1]) == mmjax_tok.prompt_ids(CHAT[:1])
  assert bare.image_id == 4 and bare.added_tokens == ()
  # LLaMA's tokenizer.model alone: `<image>` is added after its pieces.
  llama = HFTokenizer.load(os.path.join(dirs["llama"], "tokenizer.model"),
                           "vicuna_v1")
  assert llama.image_id == 400 and llama.added_tokens == ("<image>",)
  ids, mask = llama.encode_chat(CHAT)
  assert ids[0] == llama.bos_id and ids[-1] == llama.eos_id and mask[-1]


def test_bad_tokenizer_paths(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "tokenizer_config.json").write_text("{}")
  with pytest.raises(ConfigError, match=r"empty has neither tokenizer.json "
                     r"nor tokenizer.model; give the directory"):
    HFTokenizer.load(tmp_path / "empty")
  with pytest.raises(ConfigError, match="does not exist"):
    HFTokenizer.load(tmp_path / "nowhere")
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(ConfigError, match="is not a sentencepiece model"):
    load_any(tmp_path / "junk.model")


def _config(path="", template="mmjax", vocab=512):
  config = testing.tiny_recipe()
  config.tokenizer, config.chat_template = str(path), template
  config.model.lm.vocab_size = vocab
  return config


def test_config_picks_the_tokenizer_and_checks_the_vocab(dirs):
  builder = None  # never read when config.tokenizer is set
  tok = datasets.tokenizer_for(builder, _config(dirs["qwen"], "chatml"))
  assert isinstance(tok, HFTokenizer) and tok.template.name == "chatml"
  with pytest.raises(ConfigError, match=r"has 401 pieces \(400 of its own "
                     r"plus <image>, which mmjax added at id 400.*"
                     r"config.model.lm.vocab_size=400"):
    datasets.tokenizer_for(builder, _config(dirs["qwen"], "chatml", 400))
  with pytest.raises(ConfigError, match=r"'mmjax' needs the user token"):
    datasets.tokenizer_for(builder, _config(dirs["qwen"], "mmjax"))
  with pytest.raises(ConfigError, match=r"chat_template='qwen'.*allowed "
                     r"values: mmjax, chatml, gemma, vicuna_v1"):
    datasets.tokenizer_for(builder, _config(dirs["qwen"], "qwen"))


def test_the_datasets_tokenizer_writes_vicuna_v1(tmp_path):
  """Without config.tokenizer (llava.py's tiny twins) the shapes dataset's
  model is read; it has `</s>` but no ChatML markers."""
  Tokenizer.train(hf_tokenizers.SENTENCES, 340,
                  model_path=tmp_path / builders.TOKENIZER_FILE)
  builder = types.SimpleNamespace(data_dir=str(tmp_path))
  tok = datasets.tokenizer_for(builder, _config("", "vicuna_v1"))
  assert tok.template.name == "vicuna_v1" and tok.image_id == 4
  ids, mask = tok.encode_chat(CHAT)
  assert ids[0] == tok.bos_id == 2 and ids[-1] == tok.eos_id == 3
  assert tok.decode([i for i, m in zip(ids, mask) if m]) == "it is red.</s>"
  with pytest.raises(ConfigError, match=r"config.chat_template='chatml' "
                     r"needs config.tokenizer.*writes only the 'mmjax' and "
                     r"'vicuna_v1' templates"):
    datasets.tokenizer_for(builder, _config("", "chatml"))
  assert isinstance(datasets.tokenizer_for(builder, _config()), Tokenizer)


def test_llava_folder_with_a_hf_tokenizer(qwen, tmp_path):
  (tmp_path / "img").mkdir()
  Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "img/0.png")
  records = [{"id": "a", "image": "0.png", "conversations": [
      {"from": "human", "value": "what colour? <image>"},
      {"from": "gpt", "value": "red"},
      {"from": "human", "value": "sure?"},
      {"from": "gpt", "value": "yes"}]}]
  (tmp_path / "data.json").write_text(json.dumps(records))
  builder = builders.build(builders.LlavaConversationsBuilder,
                           str(tmp_path / "tfds"),
                           json_path=str(tmp_path / "data.json"),
                           image_dir=str(tmp_path / "img"))
  cfg = testing.tiny_mllm_config("projection")
  batch = next(pipeline.make_iterator(
      builders.load_source(builder, "train"), fmt="llava_conversations",
      cfg=cfg, tokenizer=qwen, batch_size=1, seed=0, max_len=256,
      train=False))
  tokens, image = batch["tokens"][0], batch["image_token_mask"][0]
  n = layout.placeholder_tokens(cfg, cfg.side, cfg.side, cfg.frames)
  ids, _ = qwen.encode_chat(records[0]["conversations"])
  at = ids.index(qwen.image_id)  # the marker's place in the chat
  np.testing.assert_array_equal(np.flatnonzero(image), np.arange(at, at + n))
  assert (tokens[image] == qwen.image_id).all()
  # The text around the image block is the ChatML conversation (inputs:
  # all but its last token).
  real = tokens[:len(ids) - 1 + n - 1]
  assert np.array_equal(real[:at], ids[:at])
  assert np.array_equal(real[at + n:], ids[at + 1:len(ids) - 1])
  mask = batch["loss_mask"][0] == 1
  assert qwen.decode(batch["targets"][0][mask]) == "red<|im_end|>yes<|im_end|>"


def test_find_tokenizer_uses_the_runs_tokenizer(dirs, tmp_path):
  config = _config(dirs["gemma"], "gemma")
  tok = workdir_lib.find_tokenizer(str(tmp_path), config)
  assert isinstance(tok, HFTokenizer) and tok.template.name == "gemma"
  lm = ml_collections.ConfigDict({"family": "lm", "chat_template": "mmjax",
                                  "tokenizer": {"path": dirs["gemma"]}})
  with pytest.raises(workdir_lib.WorkdirError, match="'mmjax' needs"):
    workdir_lib.find_tokenizer(str(tmp_path), lm)
  lm.chat_template = ""  # configs/lm.py: the template the markers suggest
  assert workdir_lib.find_tokenizer(str(tmp_path), lm).template.name == (
      "gemma")
  # An explicit Hugging Face directory: the template its markers suggest.
  assert workdir_lib.load_tokenizer(dirs["qwen"]).template.name == "chatml"


def test_text_lm_recipe_takes_a_hf_tokenizer(dirs, lm_config, tmp_path):
  from mmjax.data import text_pipeline  # pylint: disable=g-import-not-at-top
  config = lm_config()
  config.tokenizer.path = dirs["llama"]
  tok = text_pipeline.prepare_tokenizer(config, str(tmp_path))
  assert isinstance(tok, HFTokenizer) and tok.vocab_size == 401
  stream = text_pipeline.token_stream(["the red circle."], tok)
  assert stream[0] == tok.bos_id and stream[-1] == tok.eos_id


def test_text_tower_vocab_is_checked_too(dirs):
  config = _config(dirs["gemma"], "gemma")  # 401 pieces; the LM has 512
  config.model.text.vocab_size = 400        # read by the contrastive stage
  with pytest.raises(ConfigError, match=r"config.model.text.vocab_size=400"):
    datasets.tokenizer_for(None, config)


def _hf_run(path, tokenizer, template):
  """A run as `python -m mmjax.main` leaves it (config.json and a finished
  'dpo' checkpoint of random weights) that trained with a HF tokenizer."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from mmjax import config as config_lib  # pylint: disable=g-import-not-at-top
  from mmjax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from mmjax.train import stages  # pylint: disable=g-import-not-at-top
  config = _config(tokenizer, template)
  config.data.data_dir = str(path / "data")  # nothing is built there
  os.makedirs(path / "run")
  (path / "run" / "config.json").write_text(json.dumps(
      config_lib.to_plain(config)))
  _, init, _ = stages.stage_model(config, "dpo")
  params = testing.random_params_like(
      nn.unbox(jax.eval_shape(init, jax.random.key(0))))
  ckpt = ckpt_lib.StageCheckpointer(str(path / "run" / "checkpoints" / "dpo"),
                                    async_save=False)
  ckpt.save(2, {"step": np.int32(2), "params": params}, {},
            {"stage": "dpo", "finished": True})
  ckpt.close()
  return str(path / "run")


@pytest.mark.slow
def test_generate_from_a_run_with_a_hf_tokenizer(dirs, tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from mmjax.inference import run as run_lib  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO  # pylint: disable=g-import-not-at-top
  workdir = _hf_run(tmp_path, dirs["qwen"], "chatml")
  run = run_lib.load_run(workdir)
  assert isinstance(run.tokenizer, HFTokenizer)
  assert run.tokenizer.template.name == "chatml"
  assert run.tokenizer.end_of_turn_id in run.stop_ids
  png = tmp_path / "red.png"
  Image.new("RGB", (64, 64), (200, 30, 30)).save(png)
  answer = run.ask(str(png), "what colour?", max_new_tokens=3)
  assert isinstance(answer, str)
  proc = subprocess.run(
      [sys.executable, "-m", "mmjax.generate", f"--workdir={workdir}",
       f"--image={png}", "--prompt=what colour?", "--max_new_tokens=3"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == answer
