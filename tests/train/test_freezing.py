"""Frozen means frozen: no weight gradients, no optimizer state, no change."""
import jax
import numpy as np
import pytest

from mmjax.config import ConfigError
from mmjax.train import groups
from mmjax.train import init_from
from mmjax.train import metrics as metrics_lib
from tests.train.test_trainer import _run


def _compiled(workdir):
  return next(r for r in metrics_lib.read_metrics(workdir)
              if "step_flops" in r)


def test_frozen_layers_cost_nothing_and_do_not_move(lm_config, tmp_path):
  config = lm_config(steps=4)
  _run(config, tmp_path / "all")
  frozen_cfg = lm_config(steps=4)
  frozen_cfg.stages.lm.trainable = ("llm/layers_1/*",)
  part = _run(frozen_cfg, tmp_path / "part")
  a, b = _compiled(tmp_path / "all"), _compiled(tmp_path / "part")
  # No optimizer state (2 Adam moments) for frozen leaves: the step's
  # arguments shrink; no backward pass into the embedding and layer 0:
  # the step's FLOPs drop.
  assert b["step_argument_bytes"] < 0.75 * a["step_argument_bytes"], (a, b)
  assert b["step_flops"] < 0.85 * a["step_flops"], (a, b)
  # Frozen leaves are bit-identical to the initial ones (the same seed
  # initialises both runs); trained leaves moved.
  init = _run(lm_config(steps=1, **{"stages.lm.optimizer.lr": 0.0}),
              tmp_path / "init")
  flat_init = groups.flatten(init.params)
  for path, value in groups.flatten(part.params).items():
    same = np.array_equal(np.asarray(value), np.asarray(flat_init[path]))
    assert same == (not path.startswith("layers_1/")), path
  assert "llm/layers_1/attn/q/kernel" in part.global_params


def test_unknown_group_is_a_config_error(lm_config, tmp_path):
  config = lm_config(steps=2)
  config.stages.lm.trainable = ("projector",)
  with pytest.raises(ConfigError, match="'projector' matches no parameter.*"
                     "groups: vision, connector, llm"):
    _run(config, tmp_path)


def test_handover_takes_matching_leaves_and_carries_the_rest(lm_config,
                                                             tmp_path):
  first = _run(lm_config(steps=4), tmp_path / "a")
  store = dict(first.global_params)
  store["vision/extra/kernel"] = jax.numpy.ones((3, 2))
  config = lm_config(steps=2, **{"stages.lm.optimizer.lr": 0.0})
  from mmjax import parallel  # pylint: disable=g-import-not-at-top
  from mmjax.train import trainer  # pylint: disable=g-import-not-at-top
  from mmjax.train import stages
  built = stages.build_task(config, "lm", str(tmp_path / "b"))
  second = trainer.run_stage(config, "lm", built.task, str(tmp_path / "b"),
                             parallel.make_mesh({"data": -1}),
                             parallel.logical_rules(), store=store)
  for path, value in first.global_params.items():  # lr 0: unchanged
    np.testing.assert_array_equal(np.asarray(second.global_params[path]),
                                  np.asarray(value))
  np.testing.assert_array_equal(second.global_params["vision/extra/kernel"],
                                np.ones((3, 2)))


def test_init_from_external_checkpoint(lm_config, tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from mmjax.train import recipe  # pylint: disable=g-import-not-at-top
  first = _run(lm_config(steps=4), tmp_path / "a")
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(tmp_path / "ext", {"llm": first.params})
  ckptr.wait_until_finished()
  config = lm_config(steps=1, **{"stages.lm.optimizer.lr": 0.0,
                                 "init_from.all": str(tmp_path / "ext")})
  (_, result, _), = recipe.run_recipe(config, tmp_path / "b", verbose=False)
  for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(result.params),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ConfigError, match="init_from.all=.*not a directory"):
    init_from.read(str(tmp_path / "missing"))


def test_lr_mult_scales_a_groups_updates(lm_config, tmp_path):
  """lr_mult.llm=0.5 with plain SGD: every update is exactly half."""
  def sgd(mult, name):
    config = lm_config(steps=1, **{"stages.lm.optimizer.name": "sgd",
                                   "stages.lm.optimizer.grad_clip": 0.0,
                                   "stages.lm.schedule.name": "constant"})
    config.stages.lm.optimizer.lr_mult = {"llm": mult}
    return groups.flatten(_run(config, tmp_path / name).params)
  init = groups.flatten(_run(lm_config(steps=1, **{
      "stages.lm.optimizer.lr": 0.0}), tmp_path / "init").params)
  full, half = sgd(1.0, "full"), sgd(0.5, "half")
  for path, start in init.items():
    step_full = np.asarray(full[path]) - np.asarray(start)
    step_half = np.asarray(half[path]) - np.asarray(start)
    assert np.abs(step_full).max() > 0, path
    np.testing.assert_allclose(step_half, 0.5 * step_full, rtol=1e-4,
                               atol=1e-7, err_msg=path)


def test_lr_mult_names_groups(lm_config):
  from mmjax.train import config_checks  # pylint: disable=g-import-not-at-top
  config = lm_config(steps=1)
  config.stages.lm.optimizer.lr_mult = {"vison": 0.1}
  with pytest.raises(ConfigError, match="lr_mult.vison=0.1: keys must be "
                     "parameter groups"):
    config_checks.validate_config(config)
