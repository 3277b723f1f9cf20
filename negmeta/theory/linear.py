"""Closed-form test loss of one-step MAML on mixed linear regression.

Bernacchia, "Meta-learning with negative learning rates", ICLR 2021. Formulas use
the paper's symbols (p, n_t, n_v, n_r, m, σ, ν, α_t, α_r, ω_0, w_0); equation
references point to ../shared/reference/bernacchia2021.md (the digest), since the
paper's full text was not available. N = n_v·m.

Every function is a pure, differentiable JAX function of all its arguments
(sizes included, as reals), so they can be vmapped over grids and differentiated.

Structure of the results:
  L̄_test = σ²/2 (1 + α_r² p/n_r) + h_r/2 (ν² + D),   D = E‖ω* − w_0‖²  (§1.5, exact)
where all the meta-training dependence sits in D:
  * overparameterized (p > N): Theorem 1 (§2.2), leading order in N/p;
  * underparameterized (p < N): a derived stand-in for the unrecovered Theorem 2
    (§2.3), leading order in p/N (M⁻¹ replaced by (E M)⁻¹; see BUILD_NOTES.md).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from negmeta import problems
from negmeta.theory import _wishart
from negmeta.theory._wishart import h  # noqa: F401  (re-exported: paper's h^t, h^r)


def adaptation_noise(alpha_r: ArrayLike, *, sigma: ArrayLike, p: ArrayLike,
                     n_r: ArrayLike) -> jax.Array:
  """σ²/2 (1 + α_r² p/n_r): label noise plus noise injected by adaptation (§1.5)."""
  return sigma**2 / 2 * (1.0 + alpha_r**2 * p / n_r)


def average_test_loss_from_distance(distance: ArrayLike, alpha_r: ArrayLike, *,
                            sigma: ArrayLike, nu: ArrayLike, p: ArrayLike,
                            n_r: ArrayLike) -> jax.Array:
  """Expected test loss given D = ‖ω − w_0‖² (or its mean), exact (§1.5 boxed).

  Exact in expectation over the new task w', its n_r adaptation points and its
  test points, for any fixed meta-parameter ω with ‖ω − w_0‖² = D.

  Args:
    distance: D, any shape.
    alpha_r: adaptation rate, broadcastable with `distance`.
    sigma, nu, p, n_r: problem parameters.

  Returns:
    L̄_test, the broadcast shape of `distance` and `alpha_r`.
  """
  h_r = _wishart.h(alpha_r, p, n_r)
  return adaptation_noise(alpha_r, sigma=sigma, p=p, n_r=n_r) + h_r / 2 * (
      nu**2 + distance)


def _inner_noise_ratio(alpha_t, p, n_t):
  # f(α_t) = (1 + α_t² p/n_t)/h_t, the α_t dependence of Theorem 1 (§3.2).
  return (1.0 + alpha_t**2 * p / n_t) / _wishart.h(alpha_t, p, n_t)


def distance_overparameterized(alpha_t: ArrayLike, *, p: ArrayLike, n_t: ArrayLike,
                               n_v: ArrayLike, m: ArrayLike, sigma: ArrayLike,
                               nu: ArrayLike, init_distance: ArrayLike
                               ) -> jax.Array:
  """D = E‖ω* − w_0‖² for p > n_v·m, Theorem 1 (§2.2, equivalent form).

  D ≈ (1 − N/p)‖ω_0 − w_0‖² + (N/p)[ν² + σ²(1 + α_t² p/n_t)/h_t].

  Args:
    alpha_t: meta-training inner rate, any shape.
    p, n_t, n_v, m, sigma, nu: problem parameters.
    init_distance: ‖ω_0 − w_0‖².

  Returns:
    D with the shape of `alpha_t`.
  """
  ratio = n_v * m / p
  return (1.0 - ratio) * init_distance + ratio * (
      nu**2 + sigma**2 * _inner_noise_ratio(alpha_t, p, n_t))


def distance_underparameterized(alpha_t: ArrayLike, *, p: ArrayLike, n_t: ArrayLike,
                                n_v: ArrayLike, m: ArrayLike, sigma: ArrayLike,
                                nu: ArrayLike) -> jax.Array:
  """D = E‖ω* − w_0‖² for p < n_v·m: the derived stand-in for Theorem 2 (§2.3 boxed).

  D ≈ {ν²[(n_v+1)γ_4 + pγ_3] + σ² p h_t + σ² α_t² (p/n_t)[(n_v+1)γ_1 + pγ_2]}
      / (n_v m h_t²),
  the exact mean of ‖Σ_i B_iᵀ(B_i δw_i + ζ_i)‖² divided by (N h_t)², i.e. ω* − w_0
  with M⁻¹ replaced by (E M)⁻¹ = (N h_t)⁻¹ I. Relative error O(p/N).

  Args:
    alpha_t: meta-training inner rate, any shape.
    p, n_t, n_v, m, sigma, nu: problem parameters.

  Returns:
    D with the shape of `alpha_t`.
  """
  h_t = _wishart.h(alpha_t, p, n_t)
  g1 = _wishart.gamma1(alpha_t, p, n_t)
  g2 = _wishart.gamma2(alpha_t, p, n_t)
  g3 = _wishart.gamma3(alpha_t, p, n_t)
  g4 = _wishart.gamma4(alpha_t, p, n_t)
  numerator = (nu**2 * ((n_v + 1) * g4 + p * g3) + sigma**2 * p * h_t
               + sigma**2 * alpha_t**2 * p / n_t * ((n_v + 1) * g1 + p * g2))
  return numerator / (n_v * m * h_t**2)


def distance(problem: problems.MixedLinearRegression,
             alpha_t: ArrayLike) -> jax.Array:
  """D(α_t) for `problem`, dispatching on its regime (Theorem 1 or the stand-in)."""
  common = dict(p=problem.p, n_t=problem.n_t, n_v=problem.n_v, m=problem.m,
                sigma=problem.sigma, nu=problem.nu)
  if problem.regime == problems.OVERPARAMETERIZED:
    init = jnp.sum((problem.omega0 - problem.w0) ** 2)
    return distance_overparameterized(alpha_t, init_distance=init, **common)
  return distance_underparameterized(alpha_t, **common)


def average_test_loss(problem: problems.MixedLinearRegression, alpha_t: ArrayLike,
              alpha_r: ArrayLike) -> jax.Array:
  """Theoretical average test loss L̄_test(α_t, α_r) for `problem` (Thm. 1 / stand-in).

  Args:
    problem: the mixed-linear-regression specification.
    alpha_t: meta-training inner rate, any shape.
    alpha_r: adaptation rate, broadcastable with `alpha_t`.

  Returns:
    L̄_test with the broadcast shape of `alpha_t` and `alpha_r`.
  """
  return average_test_loss_from_distance(
      distance(problem, alpha_t), alpha_r, sigma=problem.sigma, nu=problem.nu,
      p=problem.p, n_r=problem.n_r)


def alpha_t_stationary(p: ArrayLike, n_t: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """Stationary points α_t^± of Theorem 1's loss (§3.2 boxed).

  α_t^± = −(n_t+1)/(2p) ± √(((n_t+1)/(2p))² + n_t/p). α_t^- < 0 is the global
  minimum and α_t^+ ∈ (0, 1) the global maximum, for any σ > 0, ν, m, n_v, n_r.

  Returns:
    (α_t^+, α_t^-).
  """
  c = (n_t + 1.0) / (2.0 * p)
  root = jnp.sqrt(c**2 + n_t / p)
  return -c + root, -c - root


def alpha_r_optimal(distance: ArrayLike, *, sigma: ArrayLike, nu: ArrayLike,
                    p: ArrayLike, n_r: ArrayLike) -> jax.Array:
  """α_r* = C n_r / (C (n_r + p + 1) + σ² p), C = ν² + D (§3.1); always in (0, 1)."""
  c = nu**2 + distance
  return c * n_r / (c * (n_r + p + 1.0) + sigma**2 * p)


class ScalarOptimum(NamedTuple):
  """Result of `minimize_scalar`.

  Attributes:
    x: the minimiser, shape [].
    value: f(x), shape [].
    grad: f'(x) at the returned point (≈ 0 at an interior optimum), shape [].
  """
  x: jax.Array
  value: jax.Array
  grad: jax.Array


def minimize_scalar(fn: Callable[[jax.Array], jax.Array], lo: ArrayLike,
                    hi: ArrayLike, *, num_grid: int = 2001,
                    newton_steps: int = 30) -> ScalarOptimum:
  """Global minimum of a smooth scalar function on [lo, hi], by autodiff.

  A dense grid locates the basin; safeguarded Newton steps with jax.grad and its
  derivative then polish the minimiser to machine precision. Regime-agnostic: it
  is used for the α_t optimum in both regimes and to cross-check closed forms.

  Args:
    fn: scalar → scalar, differentiable twice.
    lo, hi: search interval.
    num_grid: grid points (static).
    newton_steps: Newton iterations (static).

  Returns:
    ScalarOptimum(x, f(x), f'(x)).
  """
  grid = jnp.linspace(lo, hi, num_grid)
  values = jax.vmap(fn)(grid)
  i = jnp.argmin(jnp.where(jnp.isfinite(values), values, jnp.inf))
  step = (jnp.asarray(hi) - jnp.asarray(lo)) / (num_grid - 1)
  left, right = grid[i] - step, grid[i] + step
  d1 = jax.grad(fn)
  d2 = jax.grad(d1)

  def newton(x, _):
    g, c = d1(x), d2(x)
    proposal = jnp.where(c > 0, x - g / c, x)
    return jnp.clip(proposal, jnp.maximum(left, lo), jnp.minimum(right, hi)), None

  x, _ = jax.lax.scan(newton, grid[i], None, length=newton_steps)
  better = fn(x) <= values[i]
  x = jnp.where(better, x, grid[i])
  return ScalarOptimum(x=x, value=fn(x), grad=d1(x))


def optimal_alpha_t(problem: problems.MixedLinearRegression, alpha_r: ArrayLike,
                    lo: ArrayLike = -5.0, hi: ArrayLike = 5.0) -> ScalarOptimum:
  """Numerical argmin over α_t ∈ [lo, hi] of the theoretical test loss (any regime)."""
  return minimize_scalar(lambda a: average_test_loss(problem, a, alpha_r), lo, hi)


def optimal_alpha_r(problem: problems.MixedLinearRegression, alpha_t: ArrayLike,
                    lo: ArrayLike = -1.0, hi: ArrayLike = 2.0) -> ScalarOptimum:
  """Numerical argmin over α_r ∈ [lo, hi] of the theoretical test loss (any regime)."""
  return minimize_scalar(lambda a: average_test_loss(problem, alpha_t, a), lo, hi)
