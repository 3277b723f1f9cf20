"""Quadratic regression tasks y = (wᵀx + b)² + z (Bernacchia 2021, Sec. 4).

The paper states the task family and that (w, b) are task-specific; every
distribution below is our choice (reference §4 lists them as unknown). They
mirror the linear study (reference §1.3): inputs x ~ N(0, I_d); a task's
(w, b) scatter around a common mean like w ~ N(w_0, ν²/p I) there,

  w = w̄ + (ν_w/√d) ξ,  ξ ~ N(0, I_d);   b = b̄ + ν_b ζ,  ζ ~ N(0, 1);
  z ~ N(0, σ²) independent label noise per point,

with w̄ = ‖w̄‖ (1, …, 1)/√d, so every task is a perturbation of the common
quadratic (w̄ᵀx + b̄)² and ν_w, ν_b set how far tasks differ. Every function
takes an explicit PRNG key and is vmappable over keys (runs).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from negmeta.maml import TaskBatch


class QuadraticProblem(NamedTuple):
  """Distribution parameters of the quadratic task family (array leaves).

  Attributes:
    w_mean: w̄, [d].
    b_mean: b̄, [].
    nu_w: spread of w: w − w̄ ~ N(0, ν_w²/d I_d), [].
    nu_b: spread of b: b − b̄ ~ N(0, ν_b²), [].
    sigma: label noise σ, [].
  """
  w_mean: jax.Array
  b_mean: jax.Array
  nu_w: jax.Array
  nu_b: jax.Array
  sigma: jax.Array

  @property
  def d(self) -> int:
    return self.w_mean.shape[-1]


def quadratic_problem(d: int, *, w_norm: float, b_mean: float, nu_w: float,
                      nu_b: float, sigma: float, dtype: DTypeLike | None = None
                      ) -> QuadraticProblem:
  """A `QuadraticProblem` with w̄ = w_norm·(1, …, 1)/√d.

  Args:
    d: input dimension.
    w_norm: ‖w̄‖.
    b_mean: b̄.
    nu_w, nu_b: task spreads of w and b.
    sigma: label noise σ.
    dtype: float dtype (default: JAX's default float).

  Returns:
    The problem, every leaf in `dtype`.
  """
  dtype = jnp.zeros((), dtype).dtype
  scalar = lambda v: jnp.asarray(v, dtype)  # noqa: E731
  return QuadraticProblem(
      w_mean=jnp.full((d,), w_norm / math.sqrt(d), dtype), b_mean=scalar(b_mean),
      nu_w=scalar(nu_w), nu_b=scalar(nu_b), sigma=scalar(sigma))


def sample_task_params(key: jax.Array, problem: QuadraticProblem,
                       num_tasks: int) -> tuple[jax.Array, jax.Array]:
  """Draws task parameters (w [T, d], b [T]) around (w̄, b̄)."""
  k_w, k_b = jax.random.split(key)
  d, dtype = problem.d, problem.w_mean.dtype
  w = problem.w_mean + problem.nu_w / math.sqrt(d) * jax.random.normal(
      k_w, (num_tasks, d), dtype)
  b = problem.b_mean + problem.nu_b * jax.random.normal(k_b, (num_tasks,), dtype)
  return w, b


def quadratic_targets(x: ArrayLike, w: ArrayLike, b: ArrayLike) -> jax.Array:
  """Noise-free targets (wᵀx + b)² of one task per leading index.

  Args:
    x: inputs, [T, n, d].
    w: [T, d].
    b: [T].

  Returns:
    [T, n].
  """
  return (jnp.einsum("tnd,td->tn", x, w) + jnp.asarray(b)[:, None]) ** 2


def sample_tasks(key: jax.Array, problem: QuadraticProblem, num_tasks: int,
                 n_support: int, n_query: int) -> TaskBatch:
  """Draws `num_tasks` tasks with independent support and query points.

  Args:
    key: PRNG key.
    problem: the task distribution.
    num_tasks: T (static).
    n_support: support (inner-loop / adaptation) points per task (static).
    n_query: query (outer-loss / test) points per task (static).

  Returns:
    A maml `TaskBatch`: x_support [T, n_support, d], y_support [T, n_support],
    x_query [T, n_query, d], y_query [T, n_query], in the problem's dtype.
  """
  k_task, k_x, k_z = jax.random.split(key, 3)
  w, b = sample_task_params(k_task, problem, num_tasks)
  n, dtype = n_support + n_query, problem.w_mean.dtype
  x = jax.random.normal(k_x, (num_tasks, n, problem.d), dtype)
  y = quadratic_targets(x, w, b) + problem.sigma * jax.random.normal(
      k_z, (num_tasks, n), dtype)
  return TaskBatch(x[:, :n_support], y[:, :n_support], x[:, n_support:],
                   y[:, n_support:])
