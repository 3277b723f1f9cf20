"""Extreme Hessian eigenvalues of a scalar loss by Hessian-vector products.

The loss takes a parameter pytree. It is flattened once with `ravel_pytree`, and
every algorithm runs on the flat vector of size n using forward-over-reverse
Hessian-vector products, Hv = jvp(grad f)(x; v). The Hessian is never formed.

All functions are jit-compatible. Pass `loss_fn` and the iteration counts as static,
e.g. jax.jit(functools.partial(lanczos, loss_fn, num_iters=30)). The start vector is
drawn from the explicit PRNG key. Iteration counts are fixed, so every loop is a
`lax.scan` of static length.

These estimates feed the Takagi conditions in `convergence`: α_c = 1/λ_max and
β_c(0) = 2/λ_max at a (near-)minimum of a nonlinear model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any
LossFn = Callable[[PyTree], jax.Array]


def flat_hvp_fn(loss_fn: LossFn, params: PyTree
                ) -> tuple[Callable[[jax.Array], jax.Array], jax.Array]:
  """Returns (v ↦ Hv on flat vectors, flat parameters), with H = ∇²loss(params).

  Args:
    loss_fn: scalar loss of a parameter pytree.
    params: the point at which the Hessian is taken.

  Returns:
    A function mapping [n] → [n] and the flat parameter vector, shape [n].
  """
  flat, unravel = ravel_pytree(params)
  grad_fn = jax.grad(lambda x: loss_fn(unravel(x)))

  def hvp(v: jax.Array) -> jax.Array:
    # Hv = d/dε ∇f(x + εv)|_{ε=0}   (forward-over-reverse)
    return jax.jvp(grad_fn, (flat,), (v,))[1]

  return hvp, flat


def hvp(loss_fn: LossFn, params: PyTree, tangent: PyTree) -> PyTree:
  """Hessian-vector product ∇²loss(params) · tangent on pytrees (forward-over-reverse).

  Args:
    loss_fn: scalar loss of a parameter pytree.
    params: the point at which the Hessian is taken.
    tangent: a pytree with the structure of params.

  Returns:
    H·tangent, a pytree with the structure of params.
  """
  return jax.jvp(jax.grad(loss_fn), (params,), (tangent,))[1]


def _orthogonalize(w: jax.Array, basis: jax.Array) -> jax.Array:
  """w minus its projection on the rows of `basis` (zero rows are ignored), twice."""
  # Classical Gram-Schmidt applied twice ("twice is enough", Kahan-Parlett)
  w = w - basis.T @ (basis @ w)
  return w - basis.T @ (basis @ w)


class LanczosResult(NamedTuple):
  """Output of `lanczos`.

  Attributes:
    lambda_max: largest Ritz value, an estimate (from below) of λ_max(H), [].
    lambda_min: smallest Ritz value, an estimate (from above) of λ_min(H), [].
    top_k: the `top_k` largest Ritz values, descending, [top_k].
    ritz_values: all Ritz values, ascending, [m].
    residuals: ‖Hy − θy‖ for each Ritz pair (θ, y), ascending order of θ, [m].
      Some eigenvalue of H lies within this distance of θ.
    alphas: diagonal of the Lanczos tridiagonal matrix, [m].
    betas: its off-diagonal, betas[j] couples steps j and j+1 (betas[m−1] is the
      final residual norm; 0 marks a restart after an invariant subspace), [m].
  """
  lambda_max: jax.Array
  lambda_min: jax.Array
  top_k: jax.Array
  ritz_values: jax.Array
  residuals: jax.Array
  alphas: jax.Array
  betas: jax.Array


def lanczos_tridiagonal(matvec: Callable[[jax.Array], jax.Array], n: int,
                        key: jax.Array, num_iters: int, dtype=None
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """m = min(num_iters, n) Lanczos steps with full reorthogonalization.

  When the Krylov space becomes invariant (β_j ≈ 0), the iteration restarts with a
  fresh random vector orthogonal to the basis and records β_j = 0. The tridiagonal
  matrix then stays the exact projection VHVᵀ, and no spurious Ritz values appear.
  The start vector and the restart candidates are drawn in a single [m, n] normal
  sample up front, so memory is O(mn) for them plus O(mn) for the basis.

  Args:
    matvec: symmetric linear map [n] → [n].
    n: dimension (static).
    key: PRNG key for the start vector and any restart vectors.
    num_iters: number of steps (static); capped at n.
    dtype: float dtype of the vectors (default: JAX's default float).

  Returns:
    (alphas [m], betas [m], basis V [m, n] with orthonormal rows).
  """
  m = min(int(num_iters), int(n))
  if m < 1:
    raise ValueError(f"num_iters and n must be >= 1, got {num_iters} and {n}")
  dtype = dtype or jnp.zeros(()).dtype
  eps = jnp.finfo(dtype).eps
  # row 0: start vector; row j + 1: restart candidate at step j (independent of V)
  draws = jax.random.normal(key, (m, n), dtype)
  V = jnp.zeros((m + 1, n), dtype).at[0].set(draws[0] / jnp.linalg.norm(draws[0]))

  def step(carry, j):
    V, beta_prev = carry
    v = V[j]
    v_prev = jnp.where(j > 0, V[j - 1], jnp.zeros_like(v))
    hv = matvec(v)
    # α_j = v_jᵀHv_j,  w = Hv_j − α_j v_j − β_{j−1} v_{j−1}   (Lanczos recurrence)
    a = jnp.vdot(v, hv)
    w = _orthogonalize(hv - a * v - beta_prev * v_prev, V)
    b = jnp.linalg.norm(w)
    # Invariant subspace: restart from a random vector orthogonal to the basis
    breakdown = b <= n * eps * jnp.linalg.norm(hv)
    fresh = _orthogonalize(draws[(j + 1) % m], V)
    fresh_norm = jnp.linalg.norm(fresh)  # ≈ 0 only at the last step (v_next unused)
    v_next = jnp.where(breakdown, fresh / jnp.where(fresh_norm > 0, fresh_norm, 1.0),
                       w / jnp.where(breakdown, 1.0, b))
    b = jnp.where(breakdown, 0.0, b)
    V = V.at[j + 1].set(v_next)
    return (V, b), (a, b)

  (V, _), (alphas, betas) = jax.lax.scan(
      step, (V, jnp.zeros((), dtype)), jnp.arange(m))
  return alphas, betas, V[:m]


def lanczos(loss_fn: LossFn, params: PyTree, key: jax.Array, *, num_iters: int = 30,
            top_k: int = 1) -> LanczosResult:
  """Extreme eigenvalues of ∇²loss(params) by Lanczos with full reorthogonalization.

  With num_iters ≥ n (the number of parameters) the Ritz values are all the
  eigenvalues of H (distinct ones, plus repeats found after restarts) to roundoff.
  With fewer steps λ_max is approached from below and λ_min from above.

  Args:
    loss_fn: scalar loss of a parameter pytree (static under jit).
    params: the point at which the Hessian is taken.
    key: PRNG key for the start vector.
    num_iters: Lanczos steps m (static); capped at n.
    top_k: number of largest Ritz values to return (static, ≤ m).

  Returns:
    A `LanczosResult`.
  """
  matvec, flat = flat_hvp_fn(loss_fn, params)
  m = min(int(num_iters), flat.shape[0])
  if not 1 <= top_k <= m:
    raise ValueError(f"top_k must be in [1, min(num_iters, n) = {m}], got {top_k}")
  alphas, betas, _ = lanczos_tridiagonal(matvec, flat.shape[0], key, num_iters,
                                         flat.dtype)
  off = betas[:-1]
  tri = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
  ritz, vecs = jnp.linalg.eigh(tri)
  # ‖Hy_i − θ_i y_i‖ = |β_m s_{m,i}|   (last component of the Ritz vector)
  residuals = jnp.abs(betas[-1] * vecs[-1, :])
  return LanczosResult(lambda_max=ritz[-1], lambda_min=ritz[0],
                       top_k=ritz[::-1][:top_k], ritz_values=ritz,
                       residuals=residuals, alphas=alphas, betas=betas)


class PowerIterationResult(NamedTuple):
  """Output of `power_iteration`.

  Attributes:
    lambda_max: estimate of λ_max(H), [].
    lambda_min: estimate of λ_min(H), [].
    dominant: Rayleigh quotient of the largest-magnitude eigenvalue, [].
    residual_max: ‖Hv − λv‖ of the λ_max estimate, [].
    residual_min: ‖Hv − λv‖ of the λ_min estimate, [].
  """
  lambda_max: jax.Array
  lambda_min: jax.Array
  dominant: jax.Array
  residual_max: jax.Array
  residual_min: jax.Array


def _power(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array,
           num_iters: int) -> tuple[jax.Array, jax.Array]:
  """Power iteration from v0; returns (Rayleigh quotient, residual ‖Av − ρv‖)."""

  def step(v, _):
    w = matvec(v)
    norm = jnp.linalg.norm(w)
    # v ← Av/‖Av‖ (kept unchanged if Av = 0)
    return jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1.0), v), None

  v, _ = jax.lax.scan(step, v0, None, length=num_iters)
  av = matvec(v)
  rho = jnp.vdot(v, av)  # Rayleigh quotient vᵀAv, ‖v‖ = 1
  return rho, jnp.linalg.norm(av - rho * v)


def power_iteration(loss_fn: LossFn, params: PyTree, key: jax.Array, *,
                    num_iters: int = 200) -> PowerIterationResult:
  """λ_max and λ_min of ∇²loss(params) by two power iterations.

  The first run finds the largest-magnitude eigenvalue λ_dom. The second runs on
  H − λ_dom I, whose dominant eigenvalue is (other end) − λ_dom. The error decays
  like |λ_2/λ_1|^(2k), so the method needs a spectral gap at each end. It does not
  converge when ±λ are both extreme with equal magnitude. Check the residuals.

  Args:
    loss_fn: scalar loss of a parameter pytree (static under jit).
    params: the point at which the Hessian is taken.
    key: PRNG key for the start vectors.
    num_iters: iterations per run (static).

  Returns:
    A `PowerIterationResult`.
  """
  matvec, flat = flat_hvp_fn(loss_fn, params)
  starts = jax.random.normal(key, (2, flat.shape[0]), flat.dtype)
  starts = starts / jnp.linalg.norm(starts, axis=1, keepdims=True)
  dom, res_dom = _power(matvec, starts[0], num_iters)
  shifted = lambda v: matvec(v) - dom * v  # H − λ_dom I
  mu, res_other = _power(shifted, starts[1], num_iters)
  other = dom + mu
  dom_is_max = dom >= other
  return PowerIterationResult(
      lambda_max=jnp.where(dom_is_max, dom, other),
      lambda_min=jnp.where(dom_is_max, other, dom),
      dominant=dom,
      residual_max=jnp.where(dom_is_max, res_dom, res_other),
      residual_min=jnp.where(dom_is_max, res_other, res_dom))
