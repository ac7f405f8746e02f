"""Clear HFImportError messages for directories mmjax cannot import."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import hf_testing
from mmjax import hf
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
      num_attention_heads=2, num_key_value_heads=1))
  return hf_testing.save(model, tmp_path_factory.mktemp("llama"))


@pytest.fixture
def copy(llama_dir, tmp_path):
  path = tmp_path / "ckpt"
  shutil.copytree(llama_dir, path)
  return path


def _edit_config(path, **changes):
  config = json.loads((path / "config.json").read_text())
  config.update(changes)
  (path / "config.json").write_text(json.dumps(config))


def _edit_tensors(path, drop=(), add=None):
  tensors = load_file(str(path / "model.safetensors"))
  for key in drop:
    del tensors[key]
  tensors.update(add or {})
  save_file(tensors, str(path / "model.safetensors"))


def test_unsupported_architecture(copy):
  _edit_config(copy, model_type="gpt2", architectures=["GPT2LMHeadModel"])
  with pytest.raises(hf.HFImportError, match=r"GPT2LMHeadModel.*'gpt2'.*"
                     r"supported model types: llama, mistral"):
    hf.import_checkpoint(copy)


def test_missing_tensors_are_listed(copy):
  _edit_tensors(copy, drop=["model.layers.0.self_attn.q_proj.weight",
                            "model.norm.weight"])
  with pytest.raises(hf.HFImportError, match=r"missing 2 tensor\(s\).*"
                     r"model.layers.0.self_attn.q_proj.weight, "
                     r"model.norm.weight\. Found 10 tensors: lm_head"):
    hf.import_checkpoint(copy)


def test_wrong_shapes_say_expected_and_found(copy):
  _edit_config(copy, intermediate_size=48)
  with pytest.raises(hf.HFImportError, match=r"3 tensor\(s\) have shapes.*"
                     r"mlp.down_proj.weight: expected \[16, 48\], found "
                     r"\[16, 32\]"):
    hf.import_checkpoint(copy)


def test_unknown_tensors_are_rejected(copy):
  import numpy as np  # pylint: disable=g-import-not-at-top
  _edit_tensors(copy, add={"model.layers.0.self_attn.o_proj.bias":
                           np.zeros(16, np.float32)})
  with pytest.raises(hf.HFImportError, match=r"1 tensor\(s\) this importer "
                     r"does not know.*o_proj.bias"):
    hf.import_checkpoint(copy)


def test_unsupported_feature_in_config(copy):
  _edit_config(copy, rope_scaling={"rope_type": "llama3", "factor": 8.0})
  with pytest.raises(hf.HFImportError, match="rope_scaling.*not supported"):
    hf.import_checkpoint(copy)


def test_pickle_only_directory_is_never_unpickled(tmp_path, llama_dir):
  shutil.copy(f"{llama_dir}/config.json", tmp_path)
  torch.save({"model.norm.weight": torch.ones(16)},
             tmp_path / "pytorch_model.bin")
  with pytest.raises(hf.HFImportError, match=r"only pickle checkpoint\(s\) "
                     r"\(pytorch_model.bin\).*safe_serialization=True"):
    hf.import_checkpoint(tmp_path)


def test_not_a_model_directory(tmp_path):
  with pytest.raises(hf.HFImportError, match="is not a directory"):
    hf.import_checkpoint(tmp_path / "absent")
  (tmp_path / "README.md").write_text("hi")
  with pytest.raises(hf.HFImportError, match="no config.json.*README.md"):
    hf.import_checkpoint(tmp_path)
  (tmp_path / "config.json").write_text('{"model_type": "llama"}')
  with pytest.raises(hf.HFImportError, match="has no weights"):
    hf.import_checkpoint(tmp_path)


def test_index_with_a_missing_shard(copy):
  (copy / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}
      }))
  with pytest.raises(hf.HFImportError, match="missing: model-00002-of-00002"):
    hf.import_checkpoint(copy)


def _convert(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "mmjax.convert", *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300, check=False)


def test_nonfinite_weights_are_refused_unless_allowed(copy):
  norm = np.ones(16, np.float32)
  norm[[3, 5]] = np.nan
  norm[7] = np.inf
  _edit_tensors(copy, add={"model.norm.weight": norm})
  with pytest.raises(hf.HFImportError, match=(
      r"model.safetensors: tensor model.norm.weight \[16\] holds 2 NaN and 1 "
      r"inf value\(s\).*--allow_nonfinite")):
    hf.import_checkpoint(copy)
  conv = hf.import_checkpoint(copy, allow_nonfinite=True)
  assert np.isnan(np.asarray(conv.params["final_norm"]["scale"])).sum() == 2
  assert any("1 tensor(s) hold NaN or inf values" in note and
             "model.norm.weight" in note for note in conv.hf["notes"])


@pytest.mark.slow
def test_cli_refuses_nonfinite_weights_unless_allowed(copy, tmp_path):
  _edit_tensors(copy, add={"model.norm.weight": np.full(16, np.nan,
                                                          np.float32)})
  line = helpers.one_error_line(_convert(f"--hf_dir={copy}",
                                  f"--out={tmp_path / 'out'}"))
  assert "tensor model.norm.weight [16] holds 16 NaN" in line
  assert not (tmp_path / "out").exists()
  r = _convert(f"--hf_dir={copy}", f"--out={tmp_path / 'out'}",
               "--allow_nonfinite")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "note: 1 tensor(s) hold NaN or inf values" in r.stdout


def test_truncated_safetensors_file_is_named(copy, tmp_path):
  weights = copy / "model.safetensors"
  data = weights.read_bytes()
  weights.write_bytes(data[:len(data) // 2])
  with pytest.raises(hf.HFImportError, match=(
      rf"{weights} is not a readable safetensors file \(.*\); it is probably "
      r"truncated")):
    hf.import_checkpoint(copy)
  line = helpers.one_error_line(_convert(f"--hf_dir={copy}",
                                  f"--out={tmp_path / 'out'}"))
  assert line.startswith(f"error: HFImportError: {weights} is not a "
                         "readable safetensors file")


def test_hugging_face_directory_given_as_mmjax_dir(llama_dir, tmp_path):
  with pytest.raises(hf.HFImportError, match=(
      "is not an mmjax.convert output .no config.json with a 'family'.*to "
      "import one use --hf_dir")):
    hf.load_converted(llama_dir)
  line = helpers.one_error_line(_convert(f"--mmjax_dir={llama_dir}",
                                  f"--out={tmp_path / 'out'}"))
  assert f"{llama_dir} is not an mmjax.convert output" in line
  assert line.endswith("to import one use --hf_dir "
                       "(mmjax.hf.import_checkpoint).")
