"""Problem specifications shared by the theory and the simulation.

A specification only *describes* a problem (sizes and distribution parameters); it
holds no data and no algorithm, so `negmeta.theory` and the samplers/learners can
both read it without depending on each other.

References:
  Bernacchia, "Meta-learning with negative learning rates", ICLR 2021, Sec. 3
  (mixed linear regression; notation of ../shared/reference/bernacchia2021.md §1.1).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from negmeta import _checks

OVERPARAMETERIZED = "overparameterized"
UNDERPARAMETERIZED = "underparameterized"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MixedLinearRegression:
  """Mixed linear regression y = wᵀx + z (Bernacchia 2021, Sec. 3).

  x ~ N(0, I_p), z ~ N(0, σ²), and each task draws w ~ N(w_0, ν²/p I_p).

  Sizes are static (they set array shapes); the distribution parameters are array
  leaves, so they can be traced, vmapped and differentiated.

  Attributes:
    p: input dimension = number of parameters.
    n_t: support points per meta-training task (inner loop).
    n_v: query points per meta-training task (outer loss).
    n_r: points of a new task used for adaptation at meta-test time.
    m: number of meta-training tasks.
    sigma: label-noise standard deviation σ, shape [].
    nu: task variability ν (E‖w − w_0‖² = ν²), shape [].
    w0: task mean w_0, shape [p].
    omega0: initial meta-parameter ω_0, shape [p].
  """

  p: int = dataclasses.field(metadata=dict(static=True))
  n_t: int = dataclasses.field(metadata=dict(static=True))
  n_v: int = dataclasses.field(metadata=dict(static=True))
  n_r: int = dataclasses.field(metadata=dict(static=True))
  m: int = dataclasses.field(metadata=dict(static=True))
  sigma: jax.Array
  nu: jax.Array
  w0: jax.Array
  omega0: jax.Array

  @property
  def num_validation(self) -> int:
    """N = n_v·m, the number of rows of the meta-training regression."""
    return self.n_v * self.m

  @property
  def regime(self) -> str:
    """'overparameterized' if p > n_v·m, 'underparameterized' if p < n_v·m."""
    return regime_of(self.p, self.n_v, self.m)


def regime_of(p: int, n_v: int, m: int) -> str:
  """Names the regime of Bernacchia's Theorems 1/2, or raises ConfigError at p = n_v·m."""
  n = n_v * m
  if p > n:
    return OVERPARAMETERIZED
  if p < n:
    return UNDERPARAMETERIZED
  raise _checks.ConfigError(
      "p", f"must differ from n_v*m = {n} (p = n_v*m is the interpolation threshold, "
      "where neither Theorem 1 (p > n_v*m) nor Theorem 2 (p < n_v*m) applies and the "
      "expected test loss is infinite)")


def _vector(name: str, value, p: int, dtype) -> jax.Array:
  arr = np.asarray(value, dtype=np.float64)
  if arr.ndim == 0:
    arr = np.full((p,), float(arr))
  if arr.shape != (p,):
    raise _checks.ConfigError(name, f"must be a scalar or a vector of length p={p} "
                              f"(got shape {arr.shape})")
  if not np.all(np.isfinite(arr)):
    raise _checks.ConfigError(name, "must contain only finite values")
  return jnp.asarray(arr, dtype=dtype)


def mixed_linear_regression(*, p: int, n_t: int, n_v: int, n_r: int, m: int,
                            sigma: float, nu: float, w0=0.0, omega0=0.0,
                            dtype=None) -> MixedLinearRegression:
  """Builds a validated `MixedLinearRegression`.

  Args:
    p, n_t, n_v, n_r, m: sizes (integers >= 1; p must differ from n_v·m).
    sigma: label noise σ >= 0.
    nu: task variability ν >= 0.
    w0: task mean, a scalar (every component equal) or a vector [p].
    omega0: initial meta-parameter, a scalar or a vector [p].
    dtype: float dtype of the array leaves (default: JAX's default float).

  Returns:
    The problem specification.

  Raises:
    ConfigError: naming the offending parameter and its allowed range.
  """
  p = _checks.integer("p", p)
  n_t = _checks.integer("n_t", n_t)
  n_v = _checks.integer("n_v", n_v)
  n_r = _checks.integer("n_r", n_r)
  m = _checks.integer("m", m)
  sigma = _checks.real("sigma", sigma, lo=0.0)
  nu = _checks.real("nu", nu, lo=0.0)
  regime_of(p, n_v, m)
  dtype = dtype or jnp.zeros(()).dtype
  return MixedLinearRegression(
      p=p, n_t=n_t, n_v=n_v, n_r=n_r, m=m,
      sigma=jnp.asarray(sigma, dtype), nu=jnp.asarray(nu, dtype),
      w0=_vector("w0", w0, p, dtype), omega0=_vector("omega0", omega0, p, dtype))
