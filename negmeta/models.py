"""Small models as pure functions over explicit parameter pytrees.

`mlp_init`/`mlp_apply` reproduce the fully connected network of cbfinn/maml
(`construct_fc_weights`/`forward_fc`): weights truncated normal with std 0.01
(truncated at ±2 std, as TF's `truncated_normal`), biases zero, ReLU between
layers and a linear output. The sinusoid network is 1-40-40-1.
`LinenMLP` is the same network as a flax linen module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

MLPParams = tuple[dict[str, jax.Array], ...]

SINUSOID_SIZES = (1, 40, 40, 1)
INIT_STDDEV = 0.01


def mlp_init(key: jax.Array, sizes: Sequence[int] = SINUSOID_SIZES, *,
             stddev: float = INIT_STDDEV, dtype: DTypeLike | None = None
             ) -> MLPParams:
  """Initializes an MLP as in cbfinn/maml.

  Args:
    key: PRNG key.
    sizes: layer widths, input first, e.g. (1, 40, 40, 1) (static).
    stddev: std of the (untruncated) normal of the weights, truncated at ±2.
    dtype: float dtype (default: JAX's default float).

  Returns:
    A tuple with one ``{"w": [d_in, d_out], "b": [d_out]}`` dict per layer.
  """
  dtype = jnp.zeros((), dtype).dtype
  keys = jax.random.split(key, len(sizes) - 1)
  return tuple(
      {"w": stddev * jax.random.truncated_normal(k, -2.0, 2.0, (d_in, d_out),
                                                 dtype),
       "b": jnp.zeros((d_out,), dtype)}
      for k, d_in, d_out in zip(keys, sizes[:-1], sizes[1:]))


def mlp_apply(params: MLPParams, x: ArrayLike, *,
              activation: Callable[[jax.Array], jax.Array] = jax.nn.relu
              ) -> jax.Array:
  """Applies the MLP: activation after every layer but the last.

  Args:
    params: output of `mlp_init`.
    x: inputs, [..., d_in].
    activation: hidden nonlinearity (ReLU in cbfinn/maml).

  Returns:
    Outputs, [..., d_out].
  """
  h = jnp.asarray(x)
  for i, layer in enumerate(params):
    h = h @ layer["w"] + layer["b"]
    if i < len(params) - 1:
      h = activation(h)
  return h


class LinenMLP(nn.Module):
  """The same MLP as a flax linen module (use ``lambda p, x: m.apply(p, x)``).

  Attributes:
    features: output widths of the layers, e.g. (40, 40, 1).
    stddev: weight init std (truncated normal at ±2 std); biases start at 0.
    param_dtype: dtype of the parameters.
  """
  features: Sequence[int] = SINUSOID_SIZES[1:]
  stddev: float = INIT_STDDEV
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.truncated_normal(self.stddev, lower=-2.0, upper=2.0)
    for i, width in enumerate(self.features):
      x = nn.Dense(width, kernel_init=init, param_dtype=self.param_dtype,
                   name=f"dense_{i}")(x)
      if i < len(self.features) - 1:
        x = nn.relu(x)
    return x
