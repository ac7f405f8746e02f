"""Stage kind `grpo` in the one training loop: rollouts agree with the
policy pass, the stage trains and logs its metrics, kill/resume is
bit-identical, bad configs fail before anything compiles."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax import config as C
from mmjax import parallel, testing
from mmjax.decoding.sampling import Sampling
from mmjax.models.mllm import MLLM
from mmjax.train import config_checks, metrics as metrics_lib, rollout
from mmjax.train import stages, trainer
from mmjax.train.stages import grpo
from tests.train.test_trainer import CrashAfter, _assert_trees_equal


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def _config(data_dir, steps=4, **grpo_options):
  config = testing.tiny_recipe(steps=steps, batch=4)
  config.data.update(dict(data_dir=data_dir, num_train=32, num_validation=4,
                          num_test=4, num_heldout=4))
  config.stage_order = ("grpo",)
  stage = config.stages.grpo
  stage.evals = ()
  stage.optimizer.lr = 1e-3  # large: params must visibly move in 4 steps
  stage.update(dict(group_size=4, max_new_tokens=4, **grpo_options))
  config.log_every = 2
  config.eval_batches = 1
  config.checkpoint.every = 2
  config.checkpoint.async_save = False
  config.progress_bar = False
  return config


def _fast_jit(fn, *args):
  """jit compiled at XLA backend optimisation level 0: the same numbers,
  about half the compile time on this CPU."""
  return jax.jit(fn).lower(*args).compile(
      compiler_options={"xla_backend_optimization_level": 0})


def _run(config, workdir, crash_after=None):
  built = stages.build_task(config, "grpo", str(workdir))
  # No evaluation pass: its compile would double the test's time (the eval
  # step is the same loss without the gradient).
  built.task.eval_batches = None
  if crash_after is not None:
    built.task.train_iterator = CrashAfter(built.task.train_iterator,
                                           crash_after)
  return built, trainer.run_stage(
      config, "grpo", built.task, str(workdir),
      parallel.make_mesh(config.mesh.to_dict()), parallel.logical_rules())


@pytest.mark.parametrize("fusion, positions", [
    ("projection", "rope"), ("projection", "mrope"),
    ("cross_attention", "rope")])
def test_rollout_tokens_are_what_the_policy_pass_scores(fusion, positions):
  """At a tiny temperature the decode loop samples the argmax; the policy
  pass over [prompt | completion] must give those tokens probability ~1:
  prompts, positions and completions are laid out as the decode saw them."""
  cfg = testing.tiny_mllm_config(fusion, positions)
  model = MLLM(cfg)
  params = testing.random_params(model, scale=3.0, gate=1.0)
  batch = testing.dummy_batch(cfg, 3, text_len=3)
  # Rows of different prompt lengths: row 1's answer starts a slot earlier.
  batch["loss_mask"][1] = np.roll(batch["loss_mask"][1], -1)
  # Row 2 is padding, as the last evaluation batch has.
  batch["valid"][2], batch["loss_mask"][2] = False, 0.0

  def run(params, batch):
    comp = rollout.sample(model, params, batch, jax.random.key(1),
                          group_size=3, max_new_tokens=4,
                          sampling=Sampling(temperature=1e-3))
    seqs = rollout.policy_batch(batch, comp, 3)
    logp = grpo.policy_logprobs(model, params, batch, seqs, group_size=3,
                                temperature=1e-3)
    return comp, seqs, logp

  comp, seqs, logp = jax.device_get(_fast_jit(run, params, batch)(params,
                                                                   batch))
  assert comp.tokens.shape == (9, 4)
  assert (comp.length[6:] == 0).all() and not comp.stopped[6:].any()
  assert np.isfinite(logp).all()
  np.testing.assert_array_equal(comp.prompt_len, np.repeat(
      np.asarray(rollout.prompt_lengths(jnp.asarray(batch["loss_mask"]))), 3))
  mask = seqs["loss_mask"] > 0
  np.testing.assert_array_equal(mask.sum(1), comp.length)
  assert comp.length[:6].min() >= 1
  # The completion tokens sit right after each row's prompt.
  for r in range(6):
    n = comp.prompt_len[r]
    np.testing.assert_array_equal(seqs["tokens"][r, n:n + comp.length[r]],
                                  comp.tokens[r, :comp.length[r]])
    np.testing.assert_array_equal(seqs["tokens"][r, :n],
                                  batch["tokens"][r // 3, :n])
  assert np.exp(logp[mask]).min() > 0.99, np.exp(logp[mask])
  # Copies of one prompt at this temperature agree.
  assert (comp.tokens[0] == comp.tokens[1]).all()


def test_grpo_stage_trains_in_the_loop_and_logs(data_dir, tmp_path):
  config = _config(data_dir, steps=4)
  config_checks.validate_config(config)
  built, result = _run(config, tmp_path)
  records = [r for r in metrics_lib.read_metrics(tmp_path) if "loss" in r]
  assert [r["step"] for r in records] == [2, 4]
  for key in ("reward/exact_mean", "reward/format_std", "reward/total_mean",
              "kl", "clip_fraction", "response_length", "skipped_groups",
              "equal_reward_groups", "nan_rewards", "grad_norm"):
    assert key in records[-1], key
  assert 1 <= records[-1]["response_length"] <= 4
  assert records[-1]["nan_rewards"] == 0
  start = built.task.init_params(jax.random.key(config.seed))
  moved = [float(np.abs(np.asarray(a) - np.asarray(b.value if hasattr(
      b, "value") else b)).max()) for a, b in zip(
          jax.tree.leaves(result.params),
          jax.tree.leaves(start, is_leaf=lambda x: hasattr(x, "value")))]
  assert max(moved) > 0


@pytest.mark.slow
def test_grpo_kill_and_resume_is_bit_identical(data_dir, tmp_path):
  config = _config(data_dir, steps=4)
  _, straight = _run(config, tmp_path / "a")
  with pytest.raises(KeyboardInterrupt):
    _run(config, tmp_path / "b", crash_after=3)  # checkpoint at 2
  _, resumed = _run(config, tmp_path / "b")
  assert resumed.resumed_from == 2
  _assert_trees_equal(straight.params, resumed.params)


@pytest.mark.parametrize("override, message", [
    ({"group_size": 1}, "group_size=1: GRPO compares"),
    ({"rewards": {"exact": 1.0, "bleu": 1.0}}, "names 'bleu', which is no "
     "reward"),
    ({"rewards": {"iou": 1.0}}, "'iou', which is unavailable"),
    ({"rewards": {"exact": 0.0}}, "only zero weights"),
    ({"temperature": 0.0}, "temperature=0.0 must be > 0"),
    ({"max_new_tokens": 200}, "max_new_tokens=200 leaves no room"),
    ({"top_p": 1.5}, r"top_p=1.5 must lie in \(0, 1\]"),
    ({"beta": -1.0}, "beta=-1.0 must be a number >= 0"),
    ({"buckets": (96, 999)}, r"buckets=\(96, 999\) must be positive"),
])
def test_bad_grpo_configs_fail_before_anything_builds(override, message):
  config = testing.tiny_recipe()
  config.stage_order = ("grpo",)
  for key, value in override.items():
    if key == "rewards":
      config.stages.grpo[key] = ml_collections.ConfigDict(value)
    else:
      config.stages.grpo[key] = value
  with pytest.raises(C.ConfigError, match=message):
    config_checks.validate_config(config)


def test_stage_buckets_set_the_prompt_rows(data_dir, tmp_path):
  # The recipe's grpo buckets: shapes prompts + answers (80-90 tokens) come
  # in 96-slot rows, not the default bucket's 128.
  config = _config(data_dir)
  assert tuple(config.stages.grpo.buckets)[:2] == (64, 96)
  built = stages.build_task(config, "grpo", str(tmp_path / "a"))
  assert next(built.task.train_iterator)["tokens"].shape[1] == 96
  config.stages.grpo.buckets = ()
  built = stages.build_task(config, "grpo", str(tmp_path / "b"))
  assert next(built.task.train_iterator)["tokens"].shape[1] == 128


def test_optional_stage_is_off_by_default():
  assert "grpo" not in testing.tiny_recipe().stage_order
  config = C.load_config(f"{testing.SHAPES_RECIPE}:size=tiny,grpo=1")
  assert config.stage_order[-2:] == ("dpo", "grpo")
  config_checks.validate_config(config)
