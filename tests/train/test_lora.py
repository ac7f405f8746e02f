"""LoRA: adapters train, base kernels stay frozen, the merge is handed on."""
import numpy as np
import pytest

from mmjax.config import ConfigError
from mmjax.train import groups, lora
from mmjax.train import metrics as metrics_lib
from tests.train.test_trainer import _run


def _lora_config(lm_config, steps=6, rank=4):
  config = lm_config(steps=steps)
  config.stages.lm.lora.rank = rank
  config.stages.lm.trainable = ("lora",)
  config.stages.lm.optimizer.lr = 1e-2
  return config


def test_merge_maps_input_axes_to_output_axes():
  w = np.zeros((3, 2, 5), np.float32)   # e.g. attention q: embed, heads, hd
  a = np.arange(6, dtype=np.float32).reshape(3, 2)
  b = np.arange(20, dtype=np.float32).reshape(2, 10)
  params = {"layers_0": {"q": {"kernel": w}},
            "lora": {"layers_0": {"q": {"kernel": {"a": a, "b": b}}}}}
  merged = lora.merge(params, alpha=4.0, rank=2)
  assert set(merged) == {"layers_0"}
  np.testing.assert_allclose(merged["layers_0"]["q"]["kernel"],
                             2.0 * (a @ b).reshape(3, 2, 5))
  assert lora.split_dims(("embed", "heads", "head_dim"), 3) == 1
  assert lora.split_dims(("heads", "head_dim", "embed"), 3) == 2


def test_lora_trains_adapters_only_and_hands_on_the_merge(lm_config,
                                                          tmp_path):
  base = _run(lm_config(steps=1, **{"stages.lm.optimizer.lr": 0.0}),
              tmp_path / "base")
  tuned = _run(_lora_config(lm_config), tmp_path / "lora")
  start = groups.flatten(base.params)
  merged = groups.flatten(tuned.params)
  assert set(merged) == set(start)  # factors merged away
  assert not any(k.startswith("lora/") for k in tuned.global_params)
  for path, value in merged.items():
    adapted = "/attn/" in path or "/mlp/" in path
    assert np.array_equal(np.asarray(value), np.asarray(start[path])) == (
        not adapted), path
  losses = [r["loss"] for r in metrics_lib.read_metrics(tmp_path / "lora")
            if "loss" in r]
  assert losses[-1] < losses[0]
  # No optimizer state for the frozen base: full training carries params +
  # 2 Adam moments, LoRA the params and the small factors' moments.
  stats = [next(r for r in metrics_lib.read_metrics(tmp_path / name)
                if "step_argument_bytes" in r) for name in ("base", "lora")]
  assert stats[1]["step_argument_bytes"] < 0.5 * stats[0][
      "step_argument_bytes"], stats


def test_lora_group_without_rank_is_a_config_error(lm_config, tmp_path):
  from mmjax.train import config_checks  # pylint: disable=g-import-not-at-top
  config = _lora_config(lm_config, rank=0)
  with pytest.raises(ConfigError, match="names 'lora' but .*rank is 0"):
    config_checks.validate_config(config)
  config = _lora_config(lm_config)
  config.stages.lm.lora.targets = ("vision/*",)
  with pytest.raises(ConfigError, match="match no kernel"):
    _run(config, tmp_path)
