"""The train loop compiles once per batch signature and never between steps."""
import logging

import jax
from jax import monitoring

from mmjax import parallel
from mmjax.train import metrics as metrics_lib
from mmjax.train import trainer
from mmjax.train import stages

# Recorded once per lowering to an XLA module (also when the persistent
# compilation cache then supplies the executable).
_LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"


class Counting:
  """Wraps the data iterator: counts batches drawn; batch `short_at` (1-based)
  loses its last 8 positions (a new batch signature). From batch 2 until the
  last batch is drawn, implicit host <-> device transfers raise."""

  def __init__(self, it, short_at, last):
    self.it, self.drawn, self.short_at, self.last = it, 0, short_at, last

  def __next__(self):
    batch = dict(next(self.it))
    self.drawn += 1
    if self.drawn == self.short_at:
      batch = {k: v[:, :-8] for k, v in batch.items()}
    guard = "disallow" if 2 <= self.drawn < self.last else "allow"
    jax.config.update("jax_transfer_guard", guard)
    return batch

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


class _CompileLog(logging.Handler):
  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages = []

  def emit(self, record):
    if record.getMessage().startswith("Compiling"):
      self.messages.append(record.getMessage()[:120])


def test_one_compile_per_batch_signature(lm_config, tmp_path):
  """Steps 2.. neither recompile (unless the batch shape changes, once) nor
  move data implicitly: the batch goes in by an explicit device_put and the
  logged metrics come out by an explicit device_get."""
  steps, short_at = 9, 6
  config = lm_config(steps=steps)
  config.checkpoint.every = 100  # no save inside the window
  config.log_every = 2           # host reads of metrics inside the window
  built = stages.build_task(config, "lm", str(tmp_path))
  data = Counting(built.task.train_iterator, short_at, steps)
  built.task.train_iterator = data
  built.task.eval_batches = None
  lowered_at = []  # batches drawn when each lowering happened
  monitoring.register_event_duration_secs_listener(
      lambda event, _, **kw: lowered_at.append(data.drawn)
      if event == _LOWER_EVENT else None)
  log = _CompileLog()
  logging.getLogger("jax").addHandler(log)
  jax.config.update("jax_log_compiles", True)
  try:
    mesh = parallel.make_mesh(config.mesh.to_dict())
    trainer.run_stage(config, "lm", built.task, str(tmp_path), mesh,
                      parallel.logical_rules())
  finally:
    jax.config.update("jax_transfer_guard", "allow")
    jax.config.update("jax_log_compiles", False)
    logging.getLogger("jax").removeHandler(log)
    monitoring.clear_event_listeners()
  assert data.drawn == steps
  # Steps 2..5 (and their metric logging at steps 2 and 4) compile nothing
  # (nor, under the transfer guard, move anything implicitly);
  # the shorter batch 6 compiles its step exactly once; batch 7 is back to
  # the first signature and reuses its executable; so do 8 and 9.
  assert 1 in lowered_at  # the first step compiled (the counter works)
  window = [n for n in lowered_at if 2 <= n < steps]
  assert window == [short_at], (window, log.messages)
  compiles = [r["step"] for r in metrics_lib.read_metrics(tmp_path)
              if "compile_time_s" in r]
  assert compiles == [0, short_at - 1]
  assert any("Compiling" in m for m in log.messages)
