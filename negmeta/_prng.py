"""Random draws shaped for fast compilation.

`jax.random.normal(key, (a, b, c))` with a multi-dimensional shape lowers (with the
default partitionable threefry) to an HLO graph that XLA:CPU compiles 4-5 times
slower than the same number of draws in one flat vector, and every separate call
compiles its own copy. Samplers therefore draw all the normals they need in *one*
flat vector and cut it into the arrays they want (BUILD_NOTES.md §4: this took
the paper-scale sweep's compile time from tens of seconds to a few).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def normals(key: jax.Array, shapes: Sequence[tuple[int, ...]],
            dtype=jnp.float64) -> list[jax.Array]:
  """Independent standard normal arrays of the given shapes from one flat draw.

  Args:
    key: PRNG key.
    shapes: the wanted shapes (static).
    dtype: float dtype.

  Returns:
    One array per shape, jointly i.i.d. N(0, 1).
  """
  sizes = [math.prod(s) for s in shapes]
  flat = jax.random.normal(key, (sum(sizes),), dtype)
  out, start = [], 0
  for shape, size in zip(shapes, sizes):
    out.append(flat[start:start + size].reshape(shape))
    start += size
  return out


def _symmetric_uniforms(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
  """U(−1, 1) draws (−1 excluded), flat then reshaped: what `jax.random.normal` uses."""
  lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype))
  return jax.random.uniform(key, (math.prod(shape),), dtype, minval=lo,
                            maxval=1.0).reshape(shape)


def chi_square(key: jax.Array, df: jax.Array, shape: tuple[int, ...],
               dtype=jnp.float64) -> jax.Array:
  """Exact χ²(df) draws: 2·Gamma(df/2) by Marsaglia and Tsang's method.

  Marsaglia & Tsang, "A simple method for generating gamma variables", ACM TOMS
  26 (2000): for a ≥ 1, d = a − 1/3, c = 1/√(9d), propose v = (1 + c·x)³ with
  x ~ N(0, 1) and accept d·v when v > 0 and log u < x²/2 + d − d·v + d·log v,
  u ~ U(0, 1); for a < 1, Gamma(a) = Gamma(a + 1)·u^(1/a). Every element keeps
  proposing until accepted (a `while_loop` over bulk flat draws), so the draws
  are exact. Each round's x and u come from one uniform draw (x = √2·erf⁻¹(v),
  as `jax.random.normal` computes it; u = (v' + 1)/2), and the first round and
  the boost uniforms from one more: two threefry graphs in all, each of which
  costs XLA:CPU ≈ 0.35 s to compile. (`jax.random.gamma` splits a key per
  element; this is ~30× faster for the sizes used here.)

  Args:
    key: PRNG key.
    df: degrees of freedom > 0, broadcastable to `shape`.
    shape: output shape (static).
    dtype: float dtype.

  Returns:
    [*shape] i.i.d. across elements, element i ~ χ²(df_i).
  """
  a = jnp.broadcast_to(jnp.asarray(df, dtype) / 2, shape)
  small = a < 1
  d = jnp.where(small, a + 1, a) - 1.0 / 3.0
  c = 1.0 / jnp.sqrt(9.0 * d)

  def propose(v):
    x = np.sqrt(2.0).astype(dtype) * jax.lax.erf_inv(v[0])
    u = (v[1] + 1.0) / 2.0
    cube = (1.0 + c * x) ** 3
    positive = cube > 0
    log_cube = jnp.log(jnp.where(positive, cube, 1.0))
    ok = positive & (jnp.log(u) < 0.5 * x**2 + d - d * cube + d * log_cube)
    return d * cube, ok

  def body(state):
    k, value, done = state
    k, sub = jax.random.split(k)
    proposal, ok = propose(_symmetric_uniforms(sub, (2,) + shape, dtype))
    return k, jnp.where(done, value, proposal), done | ok

  k_first, k_loop = jax.random.split(key)
  first = _symmetric_uniforms(k_first, (3,) + shape, dtype)
  value, ok = propose(first[:2])
  _, gamma, _ = jax.lax.while_loop(lambda s: ~jnp.all(s[2]), body,
                                   (k_loop, jnp.where(ok, value, 0), ok))
  boost = ((first[2] + 1.0) / 2.0) ** (1.0 / jnp.where(small, a, 1.0))
  return 2.0 * gamma * jnp.where(small, boost, 1.0)


def wishart_factor(key: jax.Array, dim: int, df: int,
                   batch_shape: tuple[int, ...] = (), dtype=jnp.float64) -> jax.Array:
  """F with F Fᵀ ~ Wishart_dim(df, I), the Gram matrix of df standard normal vectors.

  For df ≥ dim, the Bartlett decomposition: F lower triangular with
  F_ii² ~ χ²(df − i) (i = 0..dim−1) and F_ij ~ N(0, 1) below the diagonal, all
  independent (dim(dim−1)/2 normals and dim χ² draws instead of dim·df
  normals). For df < dim, F is a [dim, df] matrix of normals.

  Args:
    key: PRNG key.
    dim: matrix size (static).
    df: degrees of freedom, the number of vectors summed (static).
    batch_shape: leading batch shape (static).
    dtype: float dtype.

  Returns:
    [*batch_shape, dim, min(dim, df)].
  """
  return wishart_factors(key, [(dim, df)], batch_shape, dtype)[0]


def _factor_normals(dim: int, df: int) -> int:
  """Normals in one factor: below-diagonal (Bartlett) or all dim·df entries."""
  return dim * df if df < dim else dim * (dim - 1) // 2


def wishart_num_normals(specs: Sequence[tuple[int, int]]) -> int:
  """The number of standard normals `wishart_factors(…, specs)` uses per batch element."""
  return sum(_factor_normals(dim, df) for dim, df in specs)


def wishart_factors(key: jax.Array, specs: Sequence[tuple[int, int]],
                    batch_shape: tuple[int, ...] = (), dtype=jnp.float64,
                    normal_draws: jax.Array | None = None) -> list[jax.Array]:
  """Independent `wishart_factor`s, one per (dim, df) in `specs`, from two draws.

  All their normals come from one flat draw and all their χ² from one
  `chi_square` call, so several factors cost one threefry graph for the
  normals and the χ² sampler's two to compile (see the module docstring). A
  caller that draws other normals too can pass this function's share of its
  own flat draw as `normal_draws`.

  Args:
    key: PRNG key (for the normals unless `normal_draws` is given, and the χ²).
    specs: static (dim, df) pairs.
    batch_shape: leading batch shape (static).
    dtype: float dtype.
    normal_draws: optional i.i.d. N(0, 1) draws independent of `key`,
      [*batch_shape, wishart_num_normals(specs)].

  Returns:
    One [*batch_shape, dim, min(dim, df)] array per spec.
  """
  k_off, k_diag = jax.random.split(key)
  sizes = [_factor_normals(dim, df) for dim, df in specs]
  if normal_draws is None:
    normal_draws, = normals(k_off, [batch_shape + (sum(sizes),)], dtype)
  flat = normal_draws
  dfs = np.concatenate([np.zeros(0)] + [df - np.arange(dim) for dim, df in specs
                                        if df >= dim])
  if dfs.size:
    diag_all = jnp.sqrt(chi_square(k_diag, jnp.asarray(dfs, dtype),
                                   batch_shape + (dfs.size,), dtype))
  out, start, diag_start = [], 0, 0
  for (dim, df), size in zip(specs, sizes):
    draws = flat[..., start:start + size]
    start += size
    if df < dim:
      out.append(draws.reshape(batch_shape + (dim, df)))
      continue
    diag = diag_all[..., diag_start:diag_start + dim]
    diag_start += dim
    # Place the normals below the diagonal by a gather (a scatter is slow on CPU).
    index = np.zeros((dim, dim), np.int32)
    index[np.tril_indices(dim, -1)] = np.arange(dim * (dim - 1) // 2)
    below = np.tril(np.ones((dim, dim), bool), -1)
    factor = jnp.where(below, draws[..., index], 0) if dim > 1 else jnp.zeros(
        batch_shape + (1, 1), dtype)
    out.append(factor + diag[..., None] * jnp.eye(dim, dtype=dtype))
  return out
