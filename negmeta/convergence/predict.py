"""Predicted convergence maps: exact for quadratic problems, Hessian-based otherwise.

Quadratic problems (`problems.QuadraticProblem`). One outer step is the affine map
θ ← θ − β(J(α)θ − b(α)) of `negmeta.theory.convergence`, so theory predicts

  * the asymptotic class of every cell from the spectral radius: converges iff
    0 < β < β_c(α) (ρ(I − βJ) < 1), diverges otherwise;
  * the state after exactly T steps, θ_T = (I − βJ)^T θ_0 + Σ_{k<T}(I − βJ)^k βb,
    and from it the class at the horizon T under the same `maps.Criterion` as the
    experiment (converged / not yet converged / diverged). This is what a finite run
    can show: e.g. exact MAML converges for every 0 < β < β_c(α) near αλ = 1, but
    the mode with meta-Hessian eigenvalue λ(1 − αλ)² → 0 needs more than T steps;
  * Takagi's approximate boundary β_c(α) = min_i 2/(λ_i − αλ_i²) (0 beyond
    α_c = 1/λ_max), with λ_i the eigenvalues of H = mean_i Q_i, the Hessian of the
    α = 0 meta-loss (for one task with the same data, H = S = Q).

Non-quadratic models, at a trained point θ*:
  * the Hessian H of the α = 0 meta-loss, its top-k eigenvalues by Lanczos
    (`negmeta.theory.hessian`), and the one-task same-data formulas applied to
    them: exact MAML β_c = min_i 2/(λ_i(1 − αλ_i)²), first-order MAML / Takagi
    β_c = min_i 2/(λ_i − αλ_i²);
  * for MAML also the local meta-Hessian itself, ∇²_θ L_α(θ*) for every α (the
    Jacobian of the outer step is I − β∇²L_α), its extreme eigenvalues by Lanczos,
    β_c(α) = 2/λ_max(∇²L_α(θ*)). This keeps what the formulas drop: separate
    support/query data, many tasks, and the third-derivative term Tg (θ* is not a
    stationary point of L_α). FOMAML's local Jacobian is not symmetric, so Lanczos
    does not apply to it.
Negative eigenvalues (θ* need not be a minimum) are reported but not used for β_c.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from negmeta import maml
from negmeta.convergence import maps
from negmeta.convergence import problems as cproblems
from negmeta.theory import convergence, hessian


class LinearBoundaries(NamedTuple):
  """Critical meta-rates along an α axis.

  Attributes:
    beta_c: exact β_c(α) of `method` (from the spectrum of J(α)), [A].
    beta_c_takagi: Takagi's β_c(α) from the eigenvalues of H, [A].
    hessian_eigenvalues: eigenvalues of H = mean_i Q_i, ascending, [d].
  """
  beta_c: jax.Array
  beta_c_takagi: jax.Array
  hessian_eigenvalues: jax.Array


@functools.partial(jax.jit, static_argnames="method")
def linear_boundaries(problem: cproblems.QuadraticProblem, alpha: ArrayLike, *,
                      method: str) -> LinearBoundaries:
  """Exact and Takagi critical meta-rates on an α grid.

  Args:
    problem: a QuadraticProblem.
    alpha: inner rates, [A].
    method: "maml" or "fomaml".

  Returns:
    LinearBoundaries.
  """
  S, Q, _, _ = cproblems.hessians(problem)
  eigs = jnp.linalg.eigvalsh(jnp.mean(Q, axis=0))
  return LinearBoundaries(
      beta_c=convergence.critical_beta(alpha, S, Q, method),
      beta_c_takagi=convergence.takagi_beta_critical(alpha, eigs),
      hessian_eigenvalues=eigs)


class LinearPrediction(NamedTuple):
  """Theory for every cell of an [A, B] grid of a quadratic problem.

  Attributes:
    spectral_radius: ρ(I − βJ(α)), [A, B].
    converges: asymptotic prediction, 0 < β < β_c(α), [A, B] bool.
    final_loss: meta-loss at the exact θ_T, [A, B] (non-finite on overflow).
    initial_loss: meta-loss at θ_0, [A, B].
    final_update_norm: ‖J θ_T − b‖, [A, B].
    initial_update_norm: ‖J θ_0 − b‖, [A, B].
    nonfinite: whether θ_T overflowed, [A, B] bool.
    boundaries: LinearBoundaries on the α grid.
  """
  spectral_radius: jax.Array
  converges: jax.Array
  final_loss: jax.Array
  initial_loss: jax.Array
  final_update_norm: jax.Array
  initial_update_norm: jax.Array
  nonfinite: jax.Array
  boundaries: LinearBoundaries

  def quantity(self, name: str) -> tuple[jax.Array, jax.Array]:
    """(q_T, q_0) for a criterion quantity, as `maps.MapRuns.quantity`."""
    if name == maps.LOSS:
      return self.final_loss, self.initial_loss
    return self.final_update_norm, self.initial_update_norm


@functools.partial(jax.jit, static_argnames=("method", "iterations"))
def predict_linear(problem: cproblems.QuadraticProblem, alpha: ArrayLike,
                   beta: ArrayLike, *, method: str, iterations: int
                   ) -> LinearPrediction:
  """Exact asymptotic and finite-horizon predictions on an (α, β) grid.

  Args:
    problem: a QuadraticProblem.
    alpha: inner rates, [A].
    beta: meta rates, [B].
    method: "maml" or "fomaml" (static).
    iterations: the horizon T (static).

  Returns:
    LinearPrediction.
  """
  alpha, beta = jnp.asarray(alpha), jnp.asarray(beta)
  S, Q, s_star, q_star = cproblems.hessians(problem)
  theta0 = problem.theta0
  d = theta0.shape[0]
  J = convergence.meta_hessian(alpha, S, Q, method)                    # [A, d, d]
  # g(θ) = Jθ − b is affine, so b = −g(0)   (theory.convergence.fixed_point)
  b = -jax.vmap(lambda a: convergence.meta_gradient(
      jnp.zeros((d,), J.dtype), a, S, Q, s_star, q_star, method))(alpha)  # [A, d]
  step = (jnp.eye(d, dtype=J.dtype)
          - beta[None, :, None, None] * J[:, None])                    # [A, B, d, d]
  # Affine map as one (d+1)×(d+1) matrix: [θ; 1] ← [[I − βJ, βb], [0, 1]] [θ; 1]
  shift = beta[None, :, None] * b[:, None, :]                          # [A, B, d]
  top = jnp.concatenate([step, shift[..., None]], axis=-1)
  bottom = jnp.broadcast_to(jnp.eye(d + 1, dtype=J.dtype)[-1],
                            top.shape[:-2] + (1, d + 1))
  power = jnp.linalg.matrix_power(jnp.concatenate([top, bottom], -2), iterations)
  theta_T = power[..., :d, :d] @ theta0 + power[..., :d, d]            # [A, B, d]
  nonfinite = ~jnp.all(jnp.isfinite(theta_T), axis=-1)
  # ‖g(θ_T)‖ = ‖Jθ_T − b‖ and ‖g(θ_0)‖
  final_norm = jnp.linalg.norm(
      jnp.einsum("aij,abj->abi", J, theta_T) - b[:, None, :], axis=-1)
  init_norm = jnp.broadcast_to(
      jnp.linalg.norm(J @ theta0 - b, axis=-1)[:, None], final_norm.shape)
  final_loss = cproblems.meta_loss(problem, theta_T, alpha[:, None])
  init_loss = jnp.broadcast_to(
      cproblems.meta_loss(problem, theta0, alpha)[:, None], final_loss.shape)
  return LinearPrediction(
      spectral_radius=convergence.spectral_radius(alpha[:, None], beta[None, :], S, Q,
                                                  method),
      converges=convergence.predicted_class(alpha[:, None], beta[None, :], S, Q,
                                            method),
      final_loss=final_loss, initial_loss=init_loss, final_update_norm=final_norm,
      initial_update_norm=init_norm, nonfinite=nonfinite,
      boundaries=linear_boundaries(problem, alpha, method=method))


def asymptotic_classes(converges: ArrayLike) -> np.ndarray:
  """Two-valued predicted classes (CONVERGED / DIVERGED) from a bool map."""
  return np.where(np.asarray(converges), maps.CONVERGED, maps.DIVERGED).astype(np.int8)


def horizon_classes(prediction: LinearPrediction, criterion: maps.Criterion
                    ) -> np.ndarray:
  """Three-valued predicted classes at the horizon, by the experiment's criterion."""
  final, initial = prediction.quantity(criterion.quantity)
  return maps.classify(final, initial, prediction.nonfinite, criterion)


# --- Non-quadratic models: the Hessian at a trained point. ------------------------


class HessianSpectrum(NamedTuple):
  """Extreme eigenvalues of the Hessian at a point, by Lanczos.

  Attributes:
    top: the top-k Ritz values, descending, [k].
    lambda_max: largest Ritz value, [].
    lambda_min: smallest Ritz value, [].
    residuals_top: ‖Hy − θy‖ of the top-k Ritz pairs, [k].
  """
  top: jax.Array
  lambda_max: jax.Array
  lambda_min: jax.Array
  residuals_top: jax.Array


def hessian_spectrum(loss_fn: Callable[[Any], jax.Array], params: Any,
                     key: jax.Array, *, num_iters: int, top_k: int
                     ) -> HessianSpectrum:
  """Top-k and smallest Hessian eigenvalues of `loss_fn` at `params` (Lanczos, HVPs).

  Args:
    loss_fn: scalar loss of a parameter pytree.
    params: the point.
    key: PRNG key for the Lanczos start vector.
    num_iters: Lanczos steps (full reorthogonalization).
    top_k: number of largest eigenvalues returned.

  Returns:
    HessianSpectrum.
  """
  res = _lanczos_jit(loss_fn, params, key, num_iters=num_iters, top_k=top_k)
  return HessianSpectrum(top=res.top_k, lambda_max=res.lambda_max,
                         lambda_min=res.lambda_min,
                         residuals_top=res.residuals[::-1][:top_k])


# The loss function is a static argument: JAX's own jit cache keeps one compiled
# Lanczos per loss function (e.g. at the trained and at the initial point).
_lanczos_jit = jax.jit(hessian.lanczos, static_argnums=0,
                       static_argnames=("num_iters", "top_k"))


def eigenvalue_boundaries(alpha: ArrayLike, eigenvalues: ArrayLike, *, method: str
                          ) -> tuple[jax.Array, jax.Array]:
  """β_c(α) of `method` and of Takagi from Hessian eigenvalues (positive ones only).

  Args:
    alpha: inner rates, [A].
    eigenvalues: Hessian eigenvalues, [k].
    method: "maml" (exact one-task same-data formula) or "fomaml" (= Takagi).

  Returns:
    (β_c of the method [A], Takagi's β_c [A]).
  """
  eigs = np.asarray(eigenvalues, np.float64)
  eigs = jnp.asarray(eigs[eigs > 0])
  alpha = jnp.asarray(alpha, eigs.dtype)
  if method == maps.MAML:
    # β_c = min_i 2/(λ_i(1 − αλ_i)²)   (exact MAML on a quadratic, reference §A.2)
    exact = convergence.maml_beta_critical_eigs(alpha, eigs)
  else:
    # β_c = min_i 2/(λ_i − αλ_i²)   (FOMAML on a quadratic = Takagi's eq. 15)
    exact = convergence.fomaml_beta_critical_eigs(alpha, eigs)
  return exact, convergence.takagi_beta_critical(alpha, eigs)


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_iters"))
def meta_hessian_extremes(apply_fn: Callable[[Any, jax.Array], jax.Array],
                          params: Any, batch: maml.TaskBatch, alpha: ArrayLike,
                          key: jax.Array, *, num_iters: int
                          ) -> tuple[jax.Array, jax.Array]:
  """Extreme eigenvalues of the MAML meta-Hessian ∇²_θ L_α(θ) at `params`, per α.

  L_α(θ) = mean_i L_i^Q(θ − α∇L_i^S(θ)) (one inner step, exact second order), so
  one outer step θ ← θ − β∇L_α(θ) has the local Jacobian I − β∇²L_α(θ).

  Args:
    apply_fn: model (static).
    params: the point θ*.
    batch: the task set.
    alpha: inner rates, [A] (vmapped).
    key: PRNG key for the Lanczos start vector (the same for every α).
    num_iters: Lanczos steps (static).

  Returns:
    (λ_max [A], λ_min [A]).
  """

  def one(a):
    loss = lambda p: maml.meta_loss(apply_fn, p, a, batch, steps=1)
    res = hessian.lanczos(loss, params, key, num_iters=num_iters, top_k=1)
    return res.lambda_max, res.lambda_min

  return jax.vmap(one)(jnp.asarray(alpha))
