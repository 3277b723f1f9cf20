"""A wide 2-layer ReLU network in NTK parameterization, antisymmetric at init.

  f(x; θ) = aᵀ relu(Wᵀx/√d + b₁)/√h + b₂,   θ = (W [d, h], b₁ [h], a [h], b₂ []),

all of W, b₁, a drawn N(0, 1) and b₂ = 0 (Jacot et al. 2018's NTK
parameterization, bias scale 1). With this scaling the neural tangent kernel
Θ(x, x') = ∇_θf(x)ᵀ∇_θf(x') has a width-independent limit, so learning rates in
units of its curvature mean the same at every width, and training becomes lazy
(linear in θ) as h → ∞.

Antisymmetric initialization (Zhang et al. 2019, "A type of generalization error
induced by initialization in deep neural networks"): hidden units come in pairs
with equal (W, b₁) and opposite output weights a, so f(·; θ₀) ≡ 0 while the
tangent kernel is that of the random width-h network. Without it the random
initial function (variance O(1) per input, independent of width) would be a
large, seed-dependent part of every test loss; with it the meta-parameters
start at the zero function, the analogue of ω₀ = 0 in the linear study.

References:
  Jacot, Gabriel, Hongler, "Neural Tangent Kernel", NeurIPS 2018.
  Bernacchia, "Meta-learning with negative learning rates", ICLR 2021, Sec. 4.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

Params = Any


class TwoLayerReLU(nn.Module):
  """Scalar-output 2-layer ReLU network in NTK parameterization (flax linen).

  Attributes:
    width: hidden units h (even when used with `antisymmetric_init`).
    param_dtype: dtype of the parameters.
  """
  width: int
  param_dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., d] → f(x): [...]."""
    d = x.shape[-1]
    normal = nn.initializers.normal(1.0)
    w1 = self.param("w1", normal, (d, self.width), self.param_dtype)
    b1 = self.param("b1", normal, (self.width,), self.param_dtype)
    w2 = self.param("w2", normal, (self.width,), self.param_dtype)
    b2 = self.param("b2", nn.initializers.zeros, (), self.param_dtype)
    hidden = jax.nn.relu(x @ w1 / math.sqrt(d) + b1)
    return hidden @ w2 / math.sqrt(self.width) + b2


def antisymmetric_init(module: TwoLayerReLU, key: jax.Array, d: int,
                       antisymmetric: bool = True) -> Params:
  """Initial parameters θ₀, by default with f(·; θ₀) ≡ 0 (paired hidden units).

  Units h/2..h−1 copy the input weights and biases of units 0..h/2−1 and negate
  their output weights.

  Args:
    module: the network (`width` must be even if `antisymmetric`).
    key: PRNG key.
    d: input dimension.
    antisymmetric: pair the units (False: the plain random initialization).

  Returns:
    The flax parameter pytree ``{"params": {...}}``.
  """
  params = module.init(key, jnp.zeros((1, d), module.param_dtype))
  if not antisymmetric:
    return params
  if module.width % 2:
    raise ValueError(f"width must be even for an antisymmetric init (got {module.width})")
  half = module.width // 2
  p = dict(params["params"])
  p["w1"] = jnp.concatenate([p["w1"][:, :half]] * 2, axis=1)
  p["b1"] = jnp.concatenate([p["b1"][:half]] * 2)
  p["w2"] = jnp.concatenate([p["w2"][:half], -p["w2"][:half]])
  return {"params": p}
