"""The feature-axis matmul of every projection, with a backward pass that
suits XLA:CPU, and the `Dense` layer built on it.

`linear(x, kernel)` is `x @ kernel` over x's last axis. Its gradient is the
same math as autodiff's; only the operand order of the weight gradient
differs, and on XLA:CPU that order decides which array gets transposed:

  autodiff:  dW = dot(dy, x), contracting the token axis, dy on the left.
  here:      dW = dot(x, dy), x on the left.

XLA:CPU's matmul (YNNPACK) wants the contracted axis of its left operand
minor, so the left operand of a weight gradient is copied into [K, N]
layout. With dy there, XLA fuses the whole elementwise chain that produced
dy into that strided, transposing loop: the SwiGLU backward (four [N, M]
inputs) took 4.6-9.4 ms per layer at the `small` size against 0.6 ms for a
plain transpose of the same shape (`python benchmarks/step_profile.py
--sizes=small`). With x on the left, XLA transposes the layer input instead:
a plain copy, narrower for up projections ([N, d_model] vs [N, mlp_dim]),
and one copy serves every kernel that reads the same input (q, k and v;
gate and up). Measured on the train step (docs/performance.md, "What bought
it"). GPU matmuls (cuBLAS, cuDNN) take transposed operands for free, so
the order costs nothing there.

Activation checkpointing is unchanged: `jax.checkpoint`'s dot policies see
the dot inside the custom_vjp and keep its output (tests/models/test_linear.py).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


@jax.custom_vjp
def linear(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [..., K] @ kernel [K, M] -> [..., M] (in the operands' dtype)."""
  return _matmul(x, kernel)


def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _linear_fwd(x, kernel):
  return _matmul(x, kernel), (x, kernel)


def _linear_bwd(residuals, dy):
  x, kernel = residuals
  k, m = kernel.shape
  # dx = dy @ kernel^T: dy's contracted axis (M) is already minor.
  dx = jax.lax.dot_general(dy, kernel, (((dy.ndim - 1,), (1,)), ((), ())))
  # dW = x^T @ dy with x on the left (see the module docstring).
  dw = jax.lax.dot_general(x.reshape(-1, k), dy.reshape(-1, m),
                           (((0,), (0,)), ((), ())))
  return dx.astype(x.dtype), dw.astype(kernel.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


class Dense(nn.Module):
  """`nn.Dense` computed with `linear`: same parameters ('kernel' [K, M],
  'bias' [M]), initializers and dtype promotion, so checkpoints and the
  Hugging Face importers see no difference.

  Attributes:
    features: output width M.
    use_bias: add a bias.
    dtype: compute dtype (None: promoted from the input and parameters).
    param_dtype: parameter dtype.
    kernel_init, bias_init: initializers (logically partitioned or not).
  """
  features: int
  use_bias: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., K] -> [..., features]."""
    kernel = self.param("kernel", self.kernel_init,
                        (x.shape[-1], self.features), self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,),
                       self.param_dtype) if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    y = linear(x, kernel)
    return y if bias is None else y + bias
