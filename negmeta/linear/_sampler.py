"""Task sampler for mixed linear regression (Bernacchia 2021, Sec. 3; reference §1.3).

x ~ N(0, I_p), w ~ N(w_0, ν²/p I_p) per task, y = wᵀx + z, z ~ N(0, σ²).
Every function takes an explicit PRNG key and is vmappable over keys (runs).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from negmeta import _prng, problems


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
                 num_tasks: int, n_a: int, n_b: int, *,
                 split_draws: bool = True) -> TaskBatch:
  """Draws `num_tasks` tasks with `n_a` + `n_b` points each.

  Args:
    key: PRNG key.
    problem: the specification (its sizes p; σ, ν, w_0 are used).
    num_tasks: T (static).
    n_a, n_b: points in the two splits (static).
    split_draws: draw the two splits from separate keys, so that the first
      split's data do not depend on n_b (static). False: one flat draw, one
      threefry graph less to compile (≈ 0.35 s on XLA:CPU).

  Returns:
    A TaskBatch with the shapes documented there, in the dtype of `problem.w0`.
  """
  # Flat draws (negmeta._prng), one per split unless split_draws is False.
  k_a, k_b = jax.random.split(key)
  p, dtype = problem.p, problem.w0.dtype
  shapes_a = [(num_tasks, p), (num_tasks, n_a, p), (num_tasks, n_a)]
  shapes_b = [(num_tasks, n_b, p), (num_tasks, n_b)]
  if not split_draws:
    dw, x_a, z_a, x_b, z_b = _prng.normals(k_a, shapes_a + shapes_b, dtype)
  elif n_b:
    dw, x_a, z_a = _prng.normals(k_a, shapes_a, dtype)
    x_b, z_b = _prng.normals(k_b, shapes_b, dtype)
  else:
    dw, x_a, z_a = _prng.normals(k_a, shapes_a, dtype)
    x_b, z_b = jnp.zeros((num_tasks, 0, p), dtype), jnp.zeros((num_tasks, 0), dtype)
  w = problem.w0 + problem.nu / jnp.sqrt(p) * dw
  y_a = jnp.einsum("tnp,tp->tn", x_a, w) + problem.sigma * z_a
  y_b = jnp.einsum("tnp,tp->tn", x_b, w) + problem.sigma * z_b
  return TaskBatch(w=w, x_a=x_a, y_a=y_a, x_b=x_b, y_b=y_b)


def sample_meta_training(key: jax.Array, problem: problems.MixedLinearRegression
                         ) -> TaskBatch:
  """The m meta-training tasks of one run: n_t support and n_v query points each."""
  return sample_tasks(key, problem, problem.m, problem.n_t, problem.n_v,
                      split_draws=False)


def sample_meta_test(key: jax.Array, problem: problems.MixedLinearRegression,
                     num_tasks: int, num_test_points: int) -> TaskBatch:
  """New tasks for evaluation: n_r adaptation points and `num_test_points` test points."""
  return sample_tasks(key, problem, num_tasks, problem.n_r, num_test_points)
