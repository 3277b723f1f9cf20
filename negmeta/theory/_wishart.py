"""Exact moments of the Wishart matrix H = XᵀX/n, X ∈ R^{n×p} standard Gaussian.

These are the auxiliary quantities of Bernacchia (2021): h (the paper's h^t, h^r)
and the moments used by the underparameterized stand-in (reference §2.3 table,
γ_k is the reference's notation, not the paper's). All are polynomials in α, p, n,
so they are differentiable JAX functions of every argument.
"""

from __future__ import annotations

import jax
from jax.typing import ArrayLike


def h(alpha: ArrayLike, p: ArrayLike, n: ArrayLike) -> jax.Array:
  """h = E tr(I − αH)²/p = (1 − α)² + α²(p + 1)/n (Bernacchia Thm. 1, h^t and h^r)."""
  return (1.0 - alpha) ** 2 + alpha**2 * (p + 1.0) / n


def mu2(p: ArrayLike, n: ArrayLike) -> jax.Array:
  """μ_2 = E tr H²/p = (n + p + 1)/n (reference §2.3)."""
  return (n + p + 1.0) / n


def mu3(p: ArrayLike, n: ArrayLike) -> jax.Array:
  """μ_3 = E tr H³/p (reference §2.3)."""
  return (n**2 + 3 * n * p + 3 * n + p**2 + 3 * p + 4.0) / n**2


def mu4(p: ArrayLike, n: ArrayLike) -> jax.Array:
  """μ_4 = E tr H⁴/p (reference §2.3)."""
  return (n**3 + 6 * n**2 * p + 6 * n**2 + 6 * n * p**2 + 17 * n * p + 21 * n
          + p**3 + 6 * p**2 + 21 * p + 20.0) / n**3


def gamma1(alpha: ArrayLike, p: ArrayLike, n: ArrayLike) -> jax.Array:
  """γ_1 = E tr(A²H)/p with A = I − αH (reference §2.3)."""
  return 1.0 - 2 * alpha * mu2(p, n) + alpha**2 * mu3(p, n)


def gamma2(alpha: ArrayLike, p: ArrayLike, n: ArrayLike) -> jax.Array:
  """γ_2 = E[tr H · tr A²]/p² (reference §2.3)."""
  return h(alpha, p, n) + 4 * alpha * (alpha * n + alpha * p + alpha - n) / (n**2 * p)


def gamma3(alpha: ArrayLike, p: ArrayLike, n: ArrayLike) -> jax.Array:
  """γ_3 = E[(tr A²)²]/p² (reference §2.3)."""
  poly = (alpha**2 * (2 * n**2 + 5 * n * p + 5 * n + 2 * p**2 + 5 * p + 5)
          - 4 * alpha * n * (n + p + 1) + 2 * n**2)
  return h(alpha, p, n) ** 2 + 4 * alpha**2 / (n**3 * p) * poly


def gamma4(alpha: ArrayLike, p: ArrayLike, n: ArrayLike) -> jax.Array:
  """γ_4 = E tr A⁴/p (reference §2.3)."""
  return (1.0 - 4 * alpha + 6 * alpha**2 * mu2(p, n) - 4 * alpha**3 * mu3(p, n)
          + alpha**4 * mu4(p, n))
