"""Problems for convergence maps: fixed task sets, full batch, so each map is exact GD.

Every problem is a fixed `maml.TaskBatch` (the whole training set, used at every
outer step) plus an initial point θ_0. The two linear problems are exact quadratics in
θ under the un-halved MSE mean((Xθ − y)²) of `maml.mse`, so the exact outer-step maps
of `negmeta.theory.convergence` apply with

  S_i = 2 X_sᵀX_s / N_s,  Q_i = 2 X_qᵀX_q / N_q,  S_i s_i* = 2 X_sᵀy_s / N_s,
  Q_i q_i* = 2 X_qᵀy_q / N_q                (∇ mean((Xθ − y)²) = Q(θ − q*)).

Problems:
  takagi_linear: Takagi et al. (MetaLearn 2019, App. C): one task y = a·x + b,
    x ~ U[−5, 5], model ŷ = w·x + c, the same points for the inner and outer step.
  mixed_linear: Bernacchia's mixed linear regression, a fixed
    set of m tasks with separate support and query points.
  sinusoid_pool: a fixed pool of sinusoid tasks (Finn et al. 2017) for the
    1-40-40-1 MLP; not quadratic.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from negmeta import maml
from negmeta.tasks import sample_sinusoid_batch

TAKAGI_INPUT_RANGE = (-5.0, 5.0)


class QuadraticProblem(NamedTuple):
  """A fixed set of linear-regression tasks; the meta-loss is exactly quadratic.

  Attributes:
    batch: x_support [T, N_s, d], y_support [T, N_s], x_query [T, N_q, d],
      y_query [T, N_q].
    theta0: initial meta-parameters θ_0, [d].
  """
  batch: maml.TaskBatch
  theta0: jax.Array


def linear_apply(theta: jax.Array, x: jax.Array) -> jax.Array:
  """The linear model ŷ = xθ.

  Args:
    theta: parameters, [d].
    x: inputs (features), [N, d].

  Returns:
    Predictions, [N].
  """
  return x @ theta


def takagi_linear(key: jax.Array, *, slope: float = 2.0, intercept: float = 3.0,
                  num_points: int = 100, dtype: DTypeLike | None = None
                  ) -> QuadraticProblem:
  """Takagi's single-task linear regression y = a·x + b with features (x, 1).

  The same `num_points` points x ~ U[−5, 5] are the support and the query set
  (Takagi's "data are not resampled", same data inner and outer). θ_0 = 0.

  Args:
    key: PRNG key for the inputs.
    slope, intercept: a and b (Takagi draws them from [0, 5]).
    num_points: N (static).
    dtype: float dtype (default: JAX's default float).

  Returns:
    A QuadraticProblem with T = 1, d = 2.
  """
  dtype = jnp.zeros((), dtype).dtype
  x = jax.random.uniform(key, (num_points,), dtype, *TAKAGI_INPUT_RANGE)
  features = jnp.stack([x, jnp.ones_like(x)], axis=-1)
  y = slope * x + intercept
  batch = maml.TaskBatch(features[None], y[None], features[None], y[None])
  return QuadraticProblem(batch, jnp.zeros((2,), dtype))


def mixed_linear(key: jax.Array, *, p: int, num_tasks: int, n_support: int,
                 n_query: int, sigma: float, nu: float, w0: float = 0.0,
                 omega0: float = 0.0, dtype: DTypeLike | None = None
                 ) -> QuadraticProblem:
  """A fixed draw of m mixed-linear-regression tasks with separate support/query.

  Bernacchia's model (`negmeta.problems.MixedLinearRegression`): x ~ N(0, I_p),
  w_i ~ N(w_0, ν²/p I_p), y = w_iᵀx + z, z ~ N(0, σ²). Drawn here (not by
  `negmeta.linear`'s sampler) so that a map's data depend only on this function
  and the seed. θ_0 = ω_0.

  Args:
    key: PRNG key for the tasks.
    p: dimension (static).
    num_tasks: m (static).
    n_support, n_query: points per task in the two splits (static).
    sigma, nu: label noise σ and task variability ν.
    w0, omega0: every component of the task mean and of θ_0.
    dtype: float dtype (default: JAX's default float).

  Returns:
    A QuadraticProblem with T = m, d = p.
  """
  dtype = jnp.zeros((), dtype).dtype
  k_w, k_xs, k_zs, k_xq, k_zq = jax.random.split(key, 5)
  normal = lambda k, shape: jax.random.normal(k, shape, dtype)  # noqa: E731
  # w_i = w_0 + ν/√p · N(0, I_p)   (E‖w_i − w_0‖² = ν²)
  w = w0 + nu / jnp.sqrt(jnp.asarray(p, dtype)) * normal(k_w, (num_tasks, p))
  x_s = normal(k_xs, (num_tasks, n_support, p))
  x_q = normal(k_xq, (num_tasks, n_query, p))
  y_s = jnp.einsum("tnp,tp->tn", x_s, w) + sigma * normal(k_zs, (num_tasks, n_support))
  y_q = jnp.einsum("tnp,tp->tn", x_q, w) + sigma * normal(k_zq, (num_tasks, n_query))
  return QuadraticProblem(maml.TaskBatch(x_s, y_s, x_q, y_q),
                          jnp.full((p,), omega0, dtype))


def sinusoid_pool(key: jax.Array, *, num_tasks: int, k_support: int, k_query: int,
                  dtype: DTypeLike | None = None) -> maml.TaskBatch:
  """A fixed pool of sinusoid tasks (A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5]).

  Args:
    key: PRNG key.
    num_tasks: tasks in the pool (static).
    k_support, k_query: points per task (static).
    dtype: float dtype.

  Returns:
    A TaskBatch: x, y of shape [num_tasks, k, 1].
  """
  return sample_sinusoid_batch(key, num_tasks, k_support, k_query, dtype=dtype)


def _gram(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  n = x.shape[-2]
  # ∇ mean((Xθ − y)²) = (2/N)XᵀX θ − (2/N)Xᵀy   (un-halved MSE)
  return (2.0 / n) * jnp.swapaxes(x, -1, -2) @ x, (2.0 / n) * jnp.einsum(
      "tni,tn->ti", x, y)


def _minimisers(hess: jax.Array, rhs: jax.Array) -> jax.Array:
  # any solution of H_i m_i = r_i (normal equations; least squares if singular)
  return jax.vmap(lambda h, r: jnp.linalg.lstsq(h, r)[0])(hess, rhs)


def hessians(problem: QuadraticProblem
             ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Support/query Hessians and minimisers in the form of `theory.convergence`.

  Args:
    problem: a QuadraticProblem.

  Returns:
    (S [T, d, d], Q [T, d, d], s* [T, d], q* [T, d]) with ∇L_i^S(θ) = S_i(θ − s_i*)
    and ∇L_i^Q(θ) = Q_i(θ − q_i*) exactly (un-halved MSE).
  """
  b = problem.batch
  S, rs = _gram(b.x_support, b.y_support)
  Q, rq = _gram(b.x_query, b.y_query)
  return S, Q, _minimisers(S, rs), _minimisers(Q, rq)


def meta_loss(problem: QuadraticProblem, theta: ArrayLike, alpha: ArrayLike
              ) -> jax.Array:
  """Closed-form one-step meta-loss mean_i mean((X_q θ'_i − y_q)²).

  Args:
    problem: a QuadraticProblem.
    theta: meta-parameters, [..., d].
    alpha: inner rate, shape broadcastable with theta.shape[:-1].

  Returns:
    The meta-loss, shape [...].
  """
  b = problem.batch
  theta = jnp.asarray(theta)
  alpha = jnp.asarray(alpha, theta.dtype)[..., None, None]
  ns = b.x_support.shape[-2]
  # θ'_i = θ − α (2/N_s) X_sᵀ(X_s θ − y_s)   (one inner step)
  resid_s = jnp.einsum("tni,...i->...tn", b.x_support, theta) - b.y_support
  adapted = theta[..., None, :] - alpha * (2.0 / ns) * jnp.einsum(
      "tni,...tn->...ti", b.x_support, resid_s)
  resid_q = jnp.einsum("tni,...ti->...tn", b.x_query, adapted) - b.y_query
  return jnp.mean(jnp.square(resid_q), axis=(-2, -1))
