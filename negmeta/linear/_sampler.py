"""Task sampler for mixed linear regression (Bernacchia 2021, Sec. 3; reference §1.3).

x ~ N(0, I_p), w ~ N(w_0, ν²/p I_p) per task, y = wᵀx + z, z ~ N(0, σ²).
Every function takes an explicit PRNG key and is vmappable over keys (runs).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from negmeta import problems


class TaskBatch(NamedTuple):
  """A batch of linear-regression tasks, each with two data splits.

  Attributes:
    w: generating parameters, [T, p].
    x_a: inputs of the first split (support / adaptation), [T, n_a, p].
    y_a: labels of the first split, [T, n_a].
    x_b: inputs of the second split (query / test), [T, n_b, p].
    y_b: labels of the second split, [T, n_b].
  """
  w: jax.Array
  x_a: jax.Array
  y_a: jax.Array
  x_b: jax.Array
  y_b: jax.Array


def sample_tasks(key: jax.Array, problem: problems.MixedLinearRegression,
                 num_tasks: int, n_a: int, n_b: int) -> TaskBatch:
  """Draws `num_tasks` tasks with `n_a` + `n_b` points each.

  Args:
    key: PRNG key.
    problem: the specification (its sizes p; σ, ν, w_0 are used).
    num_tasks: T (static).
    n_a, n_b: points in the two splits (static).

  Returns:
    A TaskBatch with the shapes documented there, in the dtype of `problem.w0`.
  """
  k_w, k_xa, k_za, k_xb, k_zb = jax.random.split(key, 5)
  p, dtype = problem.p, problem.w0.dtype
  normal = lambda k, shape: jax.random.normal(k, shape, dtype)  # noqa: E731
  w = problem.w0 + problem.nu / jnp.sqrt(p) * normal(k_w, (num_tasks, p))
  x_a = normal(k_xa, (num_tasks, n_a, p))
  x_b = normal(k_xb, (num_tasks, n_b, p))
  y_a = jnp.einsum("tnp,tp->tn", x_a, w) + problem.sigma * normal(k_za, (num_tasks, n_a))
  y_b = jnp.einsum("tnp,tp->tn", x_b, w) + problem.sigma * normal(k_zb, (num_tasks, n_b))
  return TaskBatch(w=w, x_a=x_a, y_a=y_a, x_b=x_b, y_b=y_b)


def sample_meta_training(key: jax.Array, problem: problems.MixedLinearRegression
                         ) -> TaskBatch:
  """The m meta-training tasks of one run: n_t support and n_v query points each."""
  return sample_tasks(key, problem, problem.m, problem.n_t, problem.n_v)


def sample_meta_test(key: jax.Array, problem: problems.MixedLinearRegression,
                     num_tasks: int, num_test_points: int) -> TaskBatch:
  """New tasks for evaluation: n_r adaptation points and `num_test_points` test points."""
  return sample_tasks(key, problem, num_tasks, problem.n_r, num_test_points)
