"""Every model part constrains its activations to the logical-axis rules.

The model is traced (not compiled) under `parallel.sharding_context` on a
one-device mesh; each `sharding_constraint` in the jaxpr carries the Flax
module path that emitted it. Every top-level part, every block, every
attention and every MLP module of every fusion paradigm must emit at least one.
"""
import re

import flax.linen as nn
import jax
import jax.extend.core as jex
import pytest

from mmjax import parallel
from mmjax import testing
from mmjax.models import connectors
from mmjax.models.choices import FUSIONS
from mmjax.models.mllm import MLLM
from mmjax.train import groups
from mmjax.models import build
from mmjax.data import tokenizer

_BLOCK = re.compile(r"^(layers|layer|xattn)_\d+$")


def _constrained_modules(fn, *args) -> dict[str, list]:
  """{module path: [PartitionSpec, ...]} of the constraints `fn` emits."""
  mesh = parallel.make_mesh({"data": -1}, jax.devices()[:1])
  with parallel.sharding_context(mesh, parallel.DEFAULT_RULES):
    closed = jax.make_jaxpr(fn)(*args)
  found: dict[str, list] = {}

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "sharding_constraint":
        # 'MLLM/MLLM.encode_images/vision/layers_0' -> 'vision/layers_0':
        # drop the root module and method-call scopes.
        parts = str(eqn.source_info.name_stack).split("/")[1:]
        path = "/".join(p for p in parts if "." not in p)
        found.setdefault(path, []).append(eqn.params["sharding"].spec)
      for value in eqn.params.values():
        if isinstance(value, jex.ClosedJaxpr):
          walk(value.jaxpr)
        elif isinstance(value, jex.Jaxpr):
          walk(value)
  walk(closed.jaxpr)
  return found


def _modules_needing_constraints(params) -> set[str]:
  """Top-level parts, blocks, and modules owning attention or an MLP."""
  needed = set()
  for path in groups.flatten(params):
    names = path.split("/")
    needed.add(names[0])
    for i, name in enumerate(names[:-1]):
      if _BLOCK.match(name):
        needed.add("/".join(names[:i + 1]))
      if name in ("q", "fc1", "gate") and names[i + 1] == "kernel":
        needed.add("/".join(names[:i]))
  return needed


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_part_of_the_mllm_is_constrained(fusion):
  config = testing.tiny_recipe(fusion)
  config.model.feature_layer = -1  # run every vision block
  cfg = build.mllm_config(config)
  model = MLLM(cfg)
  inputs = build.dummy_inputs(cfg, tokenizer.IMAGE_ID)
  params = nn.unbox(jax.eval_shape(
      lambda rng: model.init(rng, **inputs)["params"], jax.random.key(0)))
  found = _constrained_modules(
      lambda p: model.apply({"params": p}, **inputs)[0], params)
  needed = _modules_needing_constraints(params)
  assert {"llm/layers_0/attn", "llm/layers_0/mlp"} <= needed  # sanity
  missing = sorted(needed - set(found))
  assert not missing, f"modules without activation constraints: {missing}"
  # The LM's logits are sharded over the batch and the vocabulary.
  batch_axes = ("data", "fsdp")
  assert jax.sharding.PartitionSpec(batch_axes, None, "tensor") in found["llm"]


@pytest.mark.parametrize("kind", ["linear", "mlp", "pixel_shuffle",
                                  "patch_merger"])
def test_every_projector_constrains_its_output(kind):
  projector = connectors.make_projector(kind, 32)
  x = jax.ShapeDtypeStruct((2, 16, 8), jax.numpy.float32)
  params = nn.unbox(jax.eval_shape(
      lambda rng, x: projector.init(rng, x, (4, 4))["params"],
      jax.random.key(0), x))
  found = _constrained_modules(lambda p, x: projector.apply(
      {"params": p}, x, (4, 4)), params, x)
  # The module's own output (root path '') is [batch, length, embed].
  assert jax.sharding.PartitionSpec(("data", "fsdp"), None, None) in found[""]
