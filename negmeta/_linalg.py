"""Small dense linear algebra in pure jnp: no LAPACK custom calls.

jaxlib 0.10.2's batched CPU LAPACK kernels (Cholesky, triangular solve, eigh, …)
split their batch into sub-tasks on XLA's intra-op thread pool and block the
calling pool thread until they finish. When as many of them run at once as the
pool has threads, every thread waits and the process hangs (BUILD_NOTES.md §4).
Within one program the linear kernel could order its LAPACK calls, but a run
sharded over several CPU devices runs one program per device concurrently, and
with as many devices as cores it hung. The linear kernel therefore uses these
functions, which lower to ordinary XLA loops, for its small matrices (at most
min(N, p) or min(n_t, p) on a side).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def psd_cholesky(k: jax.Array) -> jax.Array:
  """L lower triangular with L Lᵀ = k for a positive semi-definite k.

  Column-by-column Cholesky with non-positive pivots clamped to zero (those
  columns of L are zero), so a singular k still gives L Lᵀ = k. One `fori_loop`
  over the columns: for J = 13 it compiles in 0.16 s, the unrolled Python loop
  it replaces in 1.35 s (same run time).

  Args:
    k: [..., J, J] symmetric positive semi-definite.

  Returns:
    [..., J, J].
  """
  size = k.shape[-1]
  rows = jnp.arange(size)

  def column(j, chol):
    # v = k[:, j] − L L[j, :]ᵀ; columns ≥ j of L are still zero.
    v = k[..., :, j] - jnp.einsum("...ik,...k->...i", chol, chol[..., j, :])
    pivot = v[..., j, None]
    ok = pivot > 0
    col = jnp.where(ok & (rows >= j), v / jnp.sqrt(jnp.where(ok, pivot, 1)), 0)
    return chol.at[..., :, j].set(col)

  return jax.lax.fori_loop(0, size, column, jnp.zeros_like(k)) if size else k


def _pivot_divide(value: jax.Array, pivot: jax.Array) -> jax.Array:
  """value / pivot, and 0 where the pivot is 0 (a clamped `psd_cholesky` column)."""
  return jnp.where(pivot != 0, value / jnp.where(pivot != 0, pivot, 1), 0)


def forward_substitution(chol: jax.Array, rhs: jax.Array) -> jax.Array:
  """y with L y = rhs for lower-triangular L; y_i = 0 where L_ii = 0.

  Args:
    chol: L, [..., n, n].
    rhs: [..., n, r].

  Returns:
    [..., n, r].
  """
  n = chol.shape[-1]

  def step(i, y):        # y_i = (b_i − L_i,:<i y_:<i) / L_ii; entries ≥ i of y are 0
    value = rhs[..., i, :] - jnp.einsum("...k,...kr->...r", chol[..., i, :], y)
    return y.at[..., i, :].set(_pivot_divide(value, chol[..., i, i, None]))

  return jax.lax.fori_loop(0, n, step, jnp.zeros_like(rhs)) if n else rhs


def cholesky_solve(chol: jax.Array, rhs: jax.Array) -> jax.Array:
  """x with L Lᵀ x = rhs, by forward and back substitution.

  Where a pivot L_ii is zero (a clamped column of `psd_cholesky`), the
  corresponding entries of the intermediate and the solution are set to zero.

  Args:
    chol: L, [..., n, n] lower triangular.
    rhs: [..., n] or [..., n, r].

  Returns:
    The solution, shaped like `rhs`.
  """
  vector = rhs.ndim == chol.ndim - 1
  y = forward_substitution(chol, rhs[..., None] if vector else rhs)
  n = chol.shape[-1]

  def backward(t, x):    # x_i = (y_i − L_:>i,iᵀ x_:>i) / L_ii, i = n−1 … 0
    i = n - 1 - t
    value = y[..., i, :] - jnp.einsum("...k,...kr->...r", chol[..., :, i], x)
    return x.at[..., i, :].set(_pivot_divide(value, chol[..., i, i, None]))

  x = jax.lax.fori_loop(0, n, backward, jnp.zeros_like(y))
  return x[..., 0] if vector else x


def tridiagonalize(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Householder reduction of a symmetric matrix to tridiagonal form.

  A ← H_k A H_k with H_k = I − 2 v vᵀ zeroing column k below the subdiagonal,
  k = 0 … n−3 (Golub & Van Loan, Algorithm 8.3.1); the eigenvalues are kept.

  Args:
    a: [..., n, n] symmetric.

  Returns:
    (diagonal [..., n], off-diagonal [..., n−1]).
  """
  n = a.shape[-1]
  idx = jnp.arange(n)

  def reflect(k, a):
    x = jnp.where(idx > k, a[..., :, k], 0)                               # below diagonal
    head = jnp.sum(jnp.where(idx == k + 1, x, 0), axis=-1)
    norm = jnp.sqrt(jnp.sum(x**2, axis=-1))
    # v ∝ x + sign(x_{k+1})‖x‖e_{k+1}, normalised (zero when x = 0: H = I).
    v = x + (jnp.where(head >= 0, 1.0, -1.0) * norm)[..., None] * (idx == k + 1)
    length = jnp.sqrt(jnp.sum(v**2, axis=-1, keepdims=True))
    v = jnp.where(length > 0, v / jnp.where(length > 0, length, 1), 0)
    p = jnp.einsum("...ij,...j->...i", a, v)
    kk = jnp.sum(v * p, axis=-1)[..., None, None]
    outer = lambda u, w: u[..., :, None] * w[..., None, :]
    return a - 2 * (outer(v, p) + outer(p, v)) + 4 * kk * outer(v, v)

  t = jax.lax.fori_loop(0, max(n - 2, 0), reflect, a)
  return (jnp.diagonal(t, axis1=-2, axis2=-1),
          jnp.diagonal(t, offset=1, axis1=-2, axis2=-1))


def eigvalsh(a: jax.Array, iterations: int = 64) -> jax.Array:
  """Eigenvalues of symmetric matrices, ascending, without LAPACK.

  Householder tridiagonalization, then every eigenvalue by bisection on the
  Sturm count (the number of negative pivots of T − xI, which is the number
  of eigenvalues below x; Golub & Van Loan §8.4.1, with LAPACK dstebz's pivot
  safeguard), starting from the Gershgorin interval. `iterations` halvings of
  that interval (64 by default) resolve each eigenvalue to rounding level.

  Args:
    a: [..., n, n] symmetric.
    iterations: bisection steps (static).

  Returns:
    [..., n].
  """
  n = a.shape[-1]
  d, e = tridiagonalize(a)
  e2 = e**2
  tiny = np.finfo(np.dtype(a.dtype)).tiny
  pivmin = tiny * jnp.maximum(1.0, jnp.max(e2, axis=-1, initial=0.0))[..., None]
  radius = (jnp.pad(jnp.abs(e), [(0, 0)] * (e.ndim - 1) + [(1, 0)])
            + jnp.pad(jnp.abs(e), [(0, 0)] * (e.ndim - 1) + [(0, 1)]))
  lo = jnp.min(d - radius, axis=-1, keepdims=True)
  hi = jnp.max(d + radius, axis=-1, keepdims=True)
  pad = 2 * np.finfo(np.dtype(a.dtype)).eps * jnp.maximum(jnp.abs(lo), jnp.abs(hi)) + pivmin
  lo, hi = lo - pad, hi + pad
  index = jnp.arange(n)
  e2_before = jnp.pad(e2, [(0, 0)] * (e2.ndim - 1) + [(1, 0)])           # e_{i−1}², e_{−1} = 0

  def count_below(x):                                       # x [..., n] → [..., n]
    def pivot(i, carry):
      q, count = carry
      q = d[..., i, None] - x - e2_before[..., i, None] / q
      q = jnp.where(jnp.abs(q) < pivmin, -pivmin, q)
      return q, count + (q < 0)
    ones = jnp.ones_like(x)
    return jax.lax.fori_loop(0, n, pivot, (ones, jnp.zeros(x.shape, jnp.int32)))[1]

  def halve(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    left = count_below(mid) > index                         # λ_index < mid
    return jnp.where(left, lo, mid), jnp.where(left, mid, hi)

  lo = jnp.broadcast_to(lo, d.shape)
  hi = jnp.broadcast_to(hi, d.shape)
  lo, hi = jax.lax.fori_loop(0, iterations, halve, (lo, hi))
  return 0.5 * (lo + hi)
