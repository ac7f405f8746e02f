"""config.init_from and its groups (mmjax/train/init_from.py)."""
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mmjax import config as config_lib
from mmjax import hf
from mmjax.config import ConfigError
from mmjax.train import groups
from mmjax.train import init_from
from mmjax.train import recipe
from tests.helpers import one_error_line, run_cli


def _tree(path, tree):
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, tree)
  ckptr.wait_until_finished()
  return str(path)


def _mllm_config(**dirs):
  config = config_lib.load_config("configs/shapes.py:size=tiny")
  for group, path in dirs.items():
    config.init_from[group] = path
  return config


_SHAPES = {"vision/proj/kernel": (2, 3), "llm/embed/embedding": (6, 2),
           "llm/lm_head/kernel": (2, 6), "connector/w": (3, 2)}


def _arrays(seed, vocab=6):
  rng = np.random.default_rng(seed)
  def normal(*shape):
    return rng.normal(size=shape).astype(np.float32)
  return {"vision": {"proj": {"kernel": normal(2, 3)}},
          "llm": {"embed": {"embedding": normal(vocab, 2)},
                  "lm_head": {"kernel": normal(2, vocab)}}}


def test_groups_come_from_their_own_checkpoints(tmp_path):
  a, b = _arrays(0), _arrays(1)
  config = _mllm_config(vision=_tree(tmp_path / "a", a),
                        llm=_tree(tmp_path / "b", b))
  store = init_from.load(config, _SHAPES)
  assert sorted(store) == ["llm/embed/embedding", "llm/lm_head/kernel",
                           "vision/proj/kernel"]  # connector starts fresh
  # A group entry reads only its group's entries of the tree.
  flat, _ = init_from.read(str(tmp_path / "a"), "vision")
  assert list(flat) == ["vision/proj/kernel"]
  assert init_from.held_groups(str(tmp_path / "a")) == ["llm", "vision"]
  np.testing.assert_array_equal(store["vision/proj/kernel"],
                                a["vision"]["proj"]["kernel"])
  np.testing.assert_array_equal(store["llm/embed/embedding"],
                                b["llm"]["embed"]["embedding"])
  # A group entry overrides the same group of the whole tree.
  config.init_from.all = str(tmp_path / "a")
  config.init_from.vision = ""
  store = init_from.load(config, _SHAPES)
  np.testing.assert_array_equal(store["llm/embed/embedding"],
                                b["llm"]["embed"]["embedding"])
  np.testing.assert_array_equal(store["vision/proj/kernel"],
                                a["vision"]["proj"]["kernel"])


def test_a_converted_lm_is_the_llm_group(tmp_path):
  params = {"embed": {"embedding": np.ones((6, 2), np.float32)}}
  hf.save_converted(hf.Converted("lm", {"vocab_size": 6, "d_model": 2},
                                 params, {"notes": []}), tmp_path / "lm")
  store = init_from.load(_mllm_config(llm=str(tmp_path / "lm")), _SHAPES)
  assert list(store) == ["llm/embed/embedding"]


def test_missing_groups_are_one_line(tmp_path):
  path = _tree(tmp_path / "a", _arrays(0))
  with pytest.raises(ConfigError, match=(
      r"config.init_from.text: the run's models have no 'text' group \(they "
      r"have connector, llm, vision\)")):
    init_from.load(_mllm_config(text=path), _SHAPES)
  only_llm = _tree(tmp_path / "llm", {"llm": _arrays(0)["llm"]})
  with pytest.raises(ConfigError, match=(
      r"config.init_from.vision=.*llm holds no 'vision' parameters \(it "
      r"holds llm\)")):
    init_from.load(_mllm_config(vision=only_llm), _SHAPES)


def test_shape_mismatch_lists_parameters_and_config_keys(tmp_path):
  params = {"embed": {"embedding": np.ones((6, 4), np.float32)}}
  model = {"vocab_size": 6, "d_model": 4, "n_layers": 2}
  hf.save_converted(hf.Converted("lm", model, params, {"notes": []}),
                    tmp_path / "lm")
  config = _mllm_config(llm=str(tmp_path / "lm"))
  with pytest.raises(ConfigError) as e:
    init_from.load(config, _SHAPES)
  message = str(e.value)
  assert "llm/embed/embedding (6, 4) vs model (6, 2)" in message
  assert (f"config.model.lm.d_model={config.model.lm.d_model} "
          "(checkpoint: 4)") in message
  assert "config.model.lm.n_layers" not in message  # equal: not a hint


def test_vocabulary_grows_with_mean_rows_and_never_shrinks(tmp_path):
  small = _arrays(0, vocab=5)
  config = _mllm_config(llm=_tree(tmp_path / "a", small))
  store = init_from.load(config, _SHAPES)
  embed = small["llm"]["embed"]["embedding"]
  np.testing.assert_array_equal(store["llm/embed/embedding"][:5], embed)
  np.testing.assert_allclose(store["llm/embed/embedding"][5],
                             embed.mean(0), rtol=1e-6)
  head = small["llm"]["lm_head"]["kernel"]
  np.testing.assert_allclose(store["llm/lm_head/kernel"][:, 5], head.mean(1),
                             rtol=1e-6)
  big = _tree(tmp_path / "b", _arrays(0, vocab=7))
  with pytest.raises(ConfigError, match=(
      r"config.model.lm.vocab_size=6 is smaller than the vocabulary of "
      r"config.init_from.llm=.* \(7 rows in llm/embed/embedding\); set "
      r"--config.model.lm.vocab_size=7 or larger")):
    init_from.load(_mllm_config(llm=big), _SHAPES)


def test_a_run_takes_the_llm_group_and_grows_its_vocabulary(lm_config,
                                                            tmp_path):
  config = lm_config(steps=1, **{"stages.lm.optimizer.lr": 0.0})
  (_, first, _), = recipe.run_recipe(config, tmp_path / "a", verbose=False)
  flat = groups.flatten(jax.tree.map(np.asarray, first.params))
  vocab = config.model.vocab_size
  # What a tokenizer that added one token (<image>) leaves: one row short.
  flat["embed/embedding"] = flat["embed/embedding"][:vocab - 1]
  if "lm_head/kernel" in flat:
    flat["lm_head/kernel"] = flat["lm_head/kernel"][:, :vocab - 1]
  path = _tree(tmp_path / "ext", {"llm": groups.unflatten(flat)})
  config = lm_config(steps=1, **{"stages.lm.optimizer.lr": 0.0,
                                 "init_from.llm": path})
  (_, result, _), = recipe.run_recipe(config, tmp_path / "b", verbose=False)
  out = groups.flatten(result.params)
  np.testing.assert_array_equal(out["embed/embedding"][:vocab - 1],
                                flat["embed/embedding"])
  np.testing.assert_allclose(out["embed/embedding"][vocab - 1],
                             flat["embed/embedding"].mean(0), rtol=1e-5)


def test_old_spelling_of_init_from_on_the_command_line(tmp_path):
  missing = str(tmp_path / "missing")
  line = one_error_line(run_cli(
      "mmjax.main", "--config=configs/lm.py:tiny,steps=1",
      f"--workdir={tmp_path / 'w'}", f"--config.init_from={missing}"))
  assert f"config.init_from.all={missing!r} is not a directory" in line
  workdir = tmp_path / "w"  # nothing written: no config, no checkpoint
  assert not (workdir / "config.json").exists()
  assert not (workdir / "checkpoints").exists()


def test_a_run_config_from_before_the_groups_resumes(lm_config):
  config = lm_config(steps=1)
  new = config_lib.to_plain(config)
  old = dict(new, init_from="")
  del old["chat_template"]  # added since, with a neutral value
  assert config_lib.upgrade_legacy(old, new) == new
  old["chat_template"] = "chatml"  # a real change stays one
  assert config_lib.upgrade_legacy(old, new) != new
  assert config_lib.init_from_dirs(config) == {}
  config.init_from.llm = "/x"
  assert config_lib.init_from_dirs(config) == {"llm": "/x"}
