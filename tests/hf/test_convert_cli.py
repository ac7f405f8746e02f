"""`python -m mmjax.convert`: import, sharded placement, export, bad input."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import transformers

import hf_testing
from mmjax import hf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _run(args, devices=1, code=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      f"--xla_force_host_platform_device_count={devices}"))
  cmd = [sys.executable] + (["-c", code] if code else
                            ["-m", "mmjax.convert"]) + args
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  model = hf_testing.perturb(transformers.LlamaForCausalLM(
      transformers.LlamaConfig(vocab_size=64, hidden_size=16,
                               intermediate_size=32, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=2)))
  return hf_testing.save(model, tmp_path_factory.mktemp("llama"))


def test_cli_import_on_a_mesh_then_export(llama_dir, tmp_path):
  out = tmp_path / "mmjax"
  r = _run([f"--hf_dir={llama_dir}", f"--out={out}",
            "--mesh=fsdp:2,tensor:2"], devices=4)
  assert r.returncode == 0, r.stderr
  meta = json.loads((out / "config.json").read_text())
  assert meta["family"] == "lm" and meta["model"]["n_layers"] == 2
  assert meta["hf"]["model_type"] == "llama"
  loaded = hf.load_converted(out)
  direct = hf.import_checkpoint(llama_dir)
  assert jax.tree.structure(loaded.params) == jax.tree.structure(
      direct.params)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(
      loaded.params)[0], jax.tree.leaves(direct.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                  err_msg=jax.tree_util.keystr(path))
  r = _run([f"--mmjax_dir={out}", f"--out={tmp_path / 'hf'}"])
  assert r.returncode == 0, r.stderr
  assert (tmp_path / "hf" / "model.safetensors").exists()


def test_parameters_land_on_their_shardings(llama_dir):
  code = (
      "import sys; from mmjax import hf, parallel\n"
      "mesh = parallel.make_mesh({'data': 1, 'fsdp': 2, 'tensor': 2})\n"
      "conv = hf.import_checkpoint(sys.argv[1], mesh=mesh)\n"
      "q = conv.params['layers_0']['attn']['q']['kernel']\n"
      "e = conv.params['embed']['embedding']\n"
      "print(tuple(q.sharding.spec), q.addressable_shards[0].data.shape,"
      " tuple(e.sharding.spec), e.addressable_shards[0].data.shape)\n")
  r = _run([llama_dir], devices=4, code=code)
  assert r.returncode == 0, r.stderr
  # q kernel [D, H, Dh] = (embed, heads, head_dim) -> (fsdp, tensor, None);
  # embedding [V, D] = (vocab, embed) -> (tensor, fsdp).
  assert r.stdout.strip().splitlines()[-1] == (
      "('fsdp', 'tensor', None) (8, 1, 8) ('tensor', 'fsdp') (32, 8)")


def test_cli_bad_input_exits_nonzero_with_one_line(tmp_path):
  (tmp_path / "config.json").write_text('{"model_type": "llama"}')
  (tmp_path / "pytorch_model.bin").write_bytes(b"not opened")
  r = _run([f"--hf_dir={tmp_path}", f"--out={tmp_path / 'out'}"])
  assert r.returncode == 2
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, r.stderr
  assert lines[0].startswith("error: HFImportError: ")
  assert "pytorch_model.bin" in lines[0]


def test_cli_converted_lm_to_llava_exits_2_with_one_line(llama_dir, tmp_path):
  hf.save_converted(hf.import_checkpoint(llama_dir), tmp_path / "mmjax")
  r = _run([f"--mmjax_dir={tmp_path / 'mmjax'}", "--to=llava",
            f"--out={tmp_path / 'out'}"])
  assert r.returncode == 2
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, r.stderr
  assert "holds a decoder LM (family 'lm')" in lines[0]
  assert "--to=decoder" in lines[0] and not (tmp_path / "out").exists()
  r = _run([f"--mmjax_dir={tmp_path / 'mmjax'}", "--to=gguf",
            f"--out={tmp_path / 'out'}"])
  assert r.returncode == 2 and "allowed: auto, decoder, llava" in r.stderr
