"""Sinusoid regression tasks of Finn et al. (2017), Sec. 5.1.

A task is y = A sin(x − φ) with A ~ U[0.1, 5], φ ~ U[0, π] and inputs
x ~ U[−5, 5] (cbfinn/maml `data_generator.py`: ``amp * np.sin(x - phase)``).

References:
  Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
  Networks", ICML 2017, Sec. 5.1 and Appendix B.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from negmeta.maml import TaskBatch

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)


def _dtype(dtype: DTypeLike | None):
  return jnp.zeros((), dtype).dtype  # None -> JAX's default float.


def sample_sinusoid_params(key: jax.Array, num_tasks: int, *,
                           amplitude_range: tuple[float, float] = AMPLITUDE_RANGE,
                           phase_range: tuple[float, float] = PHASE_RANGE,
                           dtype: DTypeLike | None = None
                           ) -> tuple[jax.Array, jax.Array]:
  """Draws task parameters A ~ U[amplitude_range], φ ~ U[phase_range].

  Args:
    key: PRNG key.
    num_tasks: number of tasks B (static).
    amplitude_range: (low, high) of the amplitude A.
    phase_range: (low, high) of the phase φ.
    dtype: float dtype (default: JAX's default float).

  Returns:
    (amplitude [B], phase [B]).
  """
  dtype = _dtype(dtype)
  k_amp, k_phase = jax.random.split(key)
  amplitude = jax.random.uniform(k_amp, (num_tasks,), dtype, *amplitude_range)
  phase = jax.random.uniform(k_phase, (num_tasks,), dtype, *phase_range)
  return amplitude, phase


def sinusoid_batch(key: jax.Array, amplitude: ArrayLike, phase: ArrayLike,
                   k_support: int, k_query: int, *,
                   input_range: tuple[float, float] = INPUT_RANGE
                   ) -> TaskBatch:
  """Samples support and query points of given sinusoid tasks.

  Support and query inputs are independent draws from U[input_range].

  Args:
    key: PRNG key.
    amplitude: amplitudes A, [B].
    phase: phases φ, [B].
    k_support: support points per task (static).
    k_query: query points per task (static).
    input_range: (low, high) of the inputs x.

  Returns:
    A `TaskBatch` with x_support, y_support [B, k_support, 1] and x_query,
    y_query [B, k_query, 1], in the dtype of `amplitude`.
  """
  amplitude = jnp.asarray(amplitude)
  phase = jnp.asarray(phase, amplitude.dtype)
  num_tasks = amplitude.shape[0]
  x = jax.random.uniform(key, (num_tasks, k_support + k_query, 1),
                         amplitude.dtype, *input_range)
  y = amplitude[:, None, None] * jnp.sin(x - phase[:, None, None])
  return TaskBatch(x[:, :k_support], y[:, :k_support], x[:, k_support:],
                   y[:, k_support:])


def sample_sinusoid_batch(key: jax.Array, meta_batch: int, k_support: int,
                          k_query: int, *, dtype: DTypeLike | None = None
                          ) -> TaskBatch:
  """Samples `meta_batch` sinusoid tasks with support and query points.

  A ~ U[0.1, 5], φ ~ U[0, π] per task and x ~ U[−5, 5] per point, all from one
  `jax.random.uniform` call (one PRNG kernel per meta-step keeps compiled
  meta-training loops small and fast).

  Args:
    key: PRNG key.
    meta_batch: number of tasks B (static).
    k_support: support points per task K (static); 10 in Finn et al.
    k_query: query points per task (static); 10 in cbfinn/maml.
    dtype: float dtype (default: JAX's default float).

  Returns:
    A `TaskBatch`: x_support, y_support [B, k_support, 1]; x_query, y_query
    [B, k_query, 1].

  Examples:
    >>> batch = sample_sinusoid_batch(jax.random.key(0), 25, 10, 10)
    >>> batch.x_support.shape, batch.y_query.shape
    ((25, 10, 1), (25, 10, 1))
  """
  dtype = _dtype(dtype)
  u = jax.random.uniform(key, (meta_batch, 2 + k_support + k_query, 1), dtype)
  scale = lambda v, bounds: bounds[0] + (bounds[1] - bounds[0]) * v
  amplitude = scale(u[:, :1], AMPLITUDE_RANGE)
  phase = scale(u[:, 1:2], PHASE_RANGE)
  x = scale(u[:, 2:], INPUT_RANGE)
  y = amplitude * jnp.sin(x - phase)
  return TaskBatch(x[:, :k_support], y[:, :k_support], x[:, k_support:],
                   y[:, k_support:])
