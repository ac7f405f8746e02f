"""Config args, validation messages, and command-line overrides."""
import json
import os
import subprocess
import sys

import pytest

from mmjax import config as C
from mmjax.models.choices import FUSIONS, POSITIONS
from mmjax.train import config_checks
from tests.conftest import REPO


def test_parse_arg_types_and_bare_size():
  args = C.parse_arg("tiny,steps=5,lr=0.5,flag=true", size="small", steps=0,
                     lr=1.0, flag=False)
  assert args.size == "tiny" and args.steps == 5
  assert args.lr == 0.5 and args.flag is True


def test_parse_arg_unknown_key_names_allowed_keys():
  with pytest.raises(C.ConfigError) as e:
    C.parse_arg("stpes=3", size="small", steps=0)
  msg = str(e.value)
  assert "'stpes'" in msg and "size, steps" in msg and "Did you mean 'steps'" in msg


def test_parse_arg_bad_type():
  with pytest.raises(C.ConfigError, match="steps='many'.*expected a int"):
    C.parse_arg("steps=many", steps=0)


def test_lm_config_sizes_and_bad_size():
  tiny = C.load_config(os.path.join(REPO, "configs/lm.py:tiny"))
  small = C.load_config(os.path.join(REPO, "configs/lm.py"))
  assert tiny.model.d_model < small.model.d_model
  config_checks.validate_config(tiny)
  config_checks.validate_config(small)
  with pytest.raises(C.ConfigError, match="size='huge'.*allowed values: tiny, small"):
    C.load_config(os.path.join(REPO, "configs/lm.py:huge"))


@pytest.mark.parametrize("path,value,pattern", [
    ("model.mlp_activation", "relu", r"model.mlp_activation='relu'.*allowed values: 'silu', 'gelu_tanh'"),
    ("model.n_kv_heads", 3, r"n_heads=4 must be a multiple of config.model.n_kv_heads=3"),
    ("stages.lm.optimizer.name", "lion", r"optimizer.name='lion'.*'adamw', 'sgd'"),
    ("stages.lm.steps", 0, r"stages.lm.steps=0 must be >= 1"),
    ("stages.lm.optimizer.b2", 1.5, r"optimizer.b2=1.5 must lie in"),
    ("tokenizer.vocab_size", 4096, r"tokenizer.vocab_size=4096 exceeds config.model.vocab_size=512"),
    ("mesh.fsdp", 0, r"mesh.fsdp=0 must be a positive integer or -1"),
    ("stage_order", ("lm", "sft"), r"names stage 'sft', which config.stages lacks"),
    ("family", "vlm", r"family='vlm'.*allowed values: 'lm'"),
])
def test_validation_names_key_value_and_allowed(lm_config, path, value, pattern):
  config = lm_config(**{path: value})
  with pytest.raises(C.ConfigError, match=pattern):
    config_checks.validate_config(config)


def test_unknown_model_key_is_rejected(lm_config):
  config = lm_config()
  config.unlock()
  config.model.n_experts = 8
  with pytest.raises(C.ConfigError, match="n_experts"):
    config_checks.validate_config(config)


def test_get_path_unknown_key_lists_siblings(lm_config):
  with pytest.raises(C.ConfigError, match="model has no 'widht'"):
    C.get_path(lm_config(), "model.widht")


def _main(*args, workdir):
  return subprocess.run(
      [sys.executable, "-m", "mmjax.main", f"--workdir={workdir}", *args],
      cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_rejects_bad_values_before_compiling(tmp_path):
  w = tmp_path / "w"
  r = _main("--config=configs/lm.py:tiny", "--config.model.dtype=float8",
            workdir=w)
  assert r.returncode == 2
  assert "config.model.dtype='float8'" in r.stderr
  assert "'float32', 'bfloat16'" in r.stderr
  assert not w.exists()  # nothing written
  r = _main("--config=configs/lm.py:tiny", "--config.model.widht=3", workdir=w)
  assert r.returncode == 2 and "model has no 'widht'" in r.stderr
  r = _main("--config=configs/lm.py:tiny,stpes=3", workdir=w)
  assert r.returncode == 2 and "'stpes'" in r.stderr
  assert "Traceback" not in r.stderr


def test_cli_override_reaches_config(tmp_path):
  r = subprocess.run(
      [sys.executable, "-c",
       "from absl import flags; import sys; from mmjax import main;"
       "main.parse_flags(sys.argv); v = main._CONFIG.value;"
       "print(v.stages.lm.optimizer.lr, v.model.d_model)",
       "--config=configs/lm.py:tiny", "--config.stages.lm.optimizer.lr=0.125",
       "--config.model.d_model=96"],
      cwd=REPO, capture_output=True, text=True, timeout=60)
  assert r.stdout.split() == ["0.125", "96"], r.stderr


def test_every_decoder_field_can_be_set_from_the_command_line():
  # query_pre_attn_scalar was not in the recipe's LM block (unknown key);
  # mrope_sections was a plain None (absl refused to parse an override).
  r = subprocess.run(
      [sys.executable, "-c",
       "from absl import flags; import sys; from mmjax import main;"
       "main.parse_flags(sys.argv); lm = main._CONFIG.value.model.lm;"
       "print(lm.query_pre_attn_scalar, lm.mrope_sections, lm.head_dim,"
       " lm.sliding_window)",
       "--config=configs/shapes.py:size=tiny,positions=mrope",
       "--config.model.lm.query_pre_attn_scalar=8.0",
       "--config.model.lm.mrope_sections=(2, 7, 7)"],
      cwd=REPO, capture_output=True, text=True, timeout=60)
  assert r.stdout.split() == ["8.0", "(2,", "7,", "7)", "None", "0"], r.stderr
  r = subprocess.run(
      [sys.executable, "-m", "mmjax.main", "--workdir=unused",
       "--config=configs/shapes.py:size=tiny",
       "--config.model.lm.query_pre_attn_scalar=sharp"],
      cwd=REPO, capture_output=True, text=True, timeout=60)
  assert r.returncode == 2, r.stderr
  assert "query_pre_attn_scalar=sharp" in r.stderr
  assert "Traceback" not in r.stderr


def test_dataclass_block_fills_defaults_and_refuses_unknown_keys():
  from mmjax.models.decoder import DecoderConfig  # pylint: disable=g-import-not-at-top
  block = C.dataclass_block(DecoderConfig, {"d_model": 96, "n_heads": 2})
  assert block.d_model == 96 and block.n_layers == DecoderConfig.n_layers
  assert block.head_dim is None
  block.head_dim = 32            # a None field takes its type's values ...
  with pytest.raises(TypeError):
    block.sliding_window = "wide"   # ... and a typed field only its own
  assert DecoderConfig.from_dict(block.to_dict()).head_dim == 32
  with pytest.raises(C.ConfigError, match="'d_modle'.*Did you mean 'd_model'"):
    C.dataclass_block(DecoderConfig, {"d_modle": 96})


def test_a_run_config_with_fewer_decoder_fields_resumes(tmp_path):
  from mmjax import testing  # pylint: disable=g-import-not-at-top
  from mmjax.train import recipe  # pylint: disable=g-import-not-at-top
  config = testing.tiny_recipe()
  new = C.to_plain(config)
  assert "query_pre_attn_scalar" in new["model"]["lm"]
  # config.json as the recipe wrote it before its LM block listed every
  # DecoderConfig field, in a workdir with a checkpoint.
  lm = {k: v for k, v in new["model"]["lm"].items()
        if k not in ("query_pre_attn_scalar", "head_dim", "sliding_window")}
  old = dict(new, model=dict(new["model"], lm=lm))
  (tmp_path / "checkpoints" / "sft" / "10").mkdir(parents=True)
  (tmp_path / "config.json").write_text(json.dumps(old))
  recipe.check_run_config(config, str(tmp_path), write=False)   # resumes
  config.model.lm.query_pre_attn_scalar = 8.0   # another model: refused
  with pytest.raises(C.ConfigError, match="query_pre_attn_scalar: null -> 8.0"):
    recipe.check_run_config(config, str(tmp_path), write=False)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("positions", POSITIONS)
def test_shapes_config_validates_every_paradigm(fusion, positions):
  config = C.load_config(os.path.join(
      REPO, f"configs/shapes.py:size=tiny,fusion={fusion},positions={positions}"))
  config_checks.validate_model(config)
  assert config.model.fusion == fusion


def test_shapes_config_errors():
  with pytest.raises(C.ConfigError, match="fusion='early'.*projection, resampler"):
    C.load_config(os.path.join(REPO, "configs/shapes.py:fusion=early"))
  config = C.load_config(os.path.join(REPO, "configs/shapes.py:size=tiny"))
  config.model.projector = "conv"
  with pytest.raises(C.ConfigError, match="projector='conv'.*'linear', 'mlp'"):
    config_checks.validate_model(config)
  config = C.load_config(os.path.join(REPO, "configs/shapes.py:size=tiny"))
  config.model.lm.mrope_sections = (4, 6, 6)
  with pytest.raises(C.ConfigError, match="mrope_sections must be set exactly when"):
    config_checks.validate_model(config)
