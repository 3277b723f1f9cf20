"""Convergence maps of one-step MAML and FOMAML on quadratics (Takagi et al. 2019).

Every task i has a quadratic support (inner) loss and query (outer) loss,

  L_i^S(θ) = ½(θ − s_i*)ᵀ S_i (θ − s_i*),    L_i^Q(θ) = ½(θ − q_i*)ᵀ Q_i (θ − q_i*),

with symmetric Hessians S_i, Q_i (same data: S_i = Q_i, s_i* = q_i*). One outer step is

  θ'_i = θ − α ∇L_i^S(θ),    θ ← θ − β mean_i g_i(θ),

with g_i = ∇_θ L_i^Q(θ'_i) for exact (second-order) MAML and g_i = ∇L_i^Q(θ'_i) taken
with respect to θ'_i for first-order MAML (FOMAML). On quadratics the step is affine,
θ ← (I − βJ)θ + βb, with the meta-Hessian

  MAML:    J(α) = mean_i (I − αS_i)ᵀ Q_i (I − αS_i)    (symmetric),
  FOMAML:  J(α) = mean_i Q_i (I − αS_i)                (non-symmetric unless the
                                                        S_i, Q_i commute),

so the step converges iff ρ(I − βJ) < 1. α and β are signed and are array arguments
(broadcast, vmap and differentiate freely); only `method` and tolerances are static.

Critical meta-rate convention. β_c(α) = sup{β > 0 : every eigenvalue μ of J with
μ ≠ 0 has |1 − βμ| < 1}, i.e. per eigenvalue

  μ = 0           → no bound (+inf): a marginal direction, |1 − βμ| = 1 for all β;
  Re μ ≤ 0, μ ≠ 0 → 0: no β > 0 converges (e.g. J has a negative eigenvalue);
  Re μ > 0        → 2 Re μ / |μ|²  (= 2/μ for real μ),

and β_c is the minimum over the spectrum (+inf if J = 0). Eigenvalues with
|μ| ≤ rtol·scale are treated as exact zeros, so α exactly at a singular point
(αλ = 1) gives +inf for that direction instead of 0 or 2/roundoff. This matches
Takagi's convention 1/0 = ∞ and his inclusive α ≤ 1/λ. For exact MAML a marginal
direction is a flat direction of the meta-loss (which is bounded below), so the loss
still converges. For FOMAML a zero eigenvalue can hide a Jordan block or a constant
drift, and that case is not detected.

References:
  Takagi, Nagano, Yoshida, Okada, "On the conditions of MAML convergence",
  MetaLearn 2019 (§3, eqs. 9–15); ../shared/reference/maml_variants.md §A.2 (the
  "surrogate versus exact one-step MAML" remark) and §G.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from negmeta import _checks

MAML = "maml"
FOMAML = "fomaml"
METHODS = (MAML, FOMAML)

# Default relative tolerance, in units of the dtype's machine epsilon, below which an
# eigenvalue of J counts as an exact zero (a marginal direction).
_ZERO_TOL_EPS = 8.0


def _float(x: ArrayLike) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    x = x.astype(jnp.result_type(float))
  return x


def _check_hessians(S: jax.Array, Q: jax.Array) -> None:
  for name, m in (("S", S), ("Q", Q)):
    if m.ndim < 3 or m.shape[-1] != m.shape[-2]:
      raise ValueError(f"{name} must have shape [T, d, d] (a stack of per-task "
                       f"Hessians; pass H[None] for one task), got {m.shape}")
  if S.shape[-1] != Q.shape[-1]:
    raise ValueError(f"S and Q must have the same d, got {S.shape} and {Q.shape}")


def _prepare(alpha: ArrayLike, S: ArrayLike, Q: ArrayLike
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
  alpha, S, Q = _float(alpha), _float(S), _float(Q)
  _check_hessians(S, Q)
  return alpha, S, Q


def _inner_jacobian(alpha: jax.Array, S: jax.Array) -> jax.Array:
  """I − αS_i, shape alpha.shape + [T, d, d] (inner step θ' = θ − αS(θ − s*))."""
  eye = jnp.eye(S.shape[-1], dtype=S.dtype)
  return eye - alpha[..., None, None, None] * S


def _is_symmetric(method: str, symmetric: bool | None) -> bool:
  _checks.choice("method", method, METHODS)
  return method == MAML if symmetric is None else bool(symmetric)


@functools.partial(jax.jit, static_argnames="method")
def meta_hessian(alpha: ArrayLike, S: ArrayLike, Q: ArrayLike,
                 method: str = MAML) -> jax.Array:
  """The matrix J(α) with outer-step iteration matrix T = I − βJ.

  Args:
    alpha: inner learning rate α (any sign), shape [...].
    S: support (inner-loss) Hessians S_i, shape [T, d, d], symmetric.
    Q: query (outer-loss) Hessians Q_i, shape [T, d, d], symmetric (Q = S for the
      same data in the inner and outer loss).
    method: "maml" (exact second-order) or "fomaml" (first-order).

  Returns:
    J, shape [..., d, d]; symmetric for MAML, generally not for FOMAML.
  """
  alpha, S, Q = _prepare(alpha, S, Q)
  A = _inner_jacobian(alpha, S)
  if _checks.choice("method", method, METHODS) == MAML:
    # MAML: J = mean_i (I − αS_i)ᵀ Q_i (I − αS_i)   (chain rule through θ'_i)
    per_task = jnp.swapaxes(A, -1, -2) @ Q @ A
  else:
    # FOMAML: J = mean_i Q_i (I − αS_i)   (∇L^Q at θ'_i, dθ'/dθ dropped)
    per_task = Q @ A
  return jnp.mean(per_task, axis=-3)


@functools.partial(jax.jit, static_argnames="method")
def outer_iteration_matrix(alpha: ArrayLike, beta: ArrayLike, S: ArrayLike,
                           Q: ArrayLike, method: str = MAML) -> jax.Array:
  """Exact linear map of one outer step, T(α, β) = I − βJ(α) = ∂θ_new/∂θ.

  Args:
    alpha: inner learning rate α, shape [...] (broadcast with beta).
    beta: meta learning rate β, shape [...].
    S, Q: support and query Hessians, each [T, d, d].
    method: "maml" or "fomaml".

  Returns:
    T, shape broadcast(alpha.shape, beta.shape) + [d, d].
  """
  J = meta_hessian(alpha, S, Q, method)
  beta = _float(beta)
  # T = I − βJ   (θ ← θ − β(Jθ − b))
  return jnp.eye(J.shape[-1], dtype=J.dtype) - beta[..., None, None] * J


@functools.partial(jax.jit, static_argnames="method")
def meta_gradient(theta: ArrayLike, alpha: ArrayLike, S: ArrayLike, Q: ArrayLike,
                  s_star: ArrayLike, q_star: ArrayLike,
                  method: str = MAML) -> jax.Array:
  """Closed-form meta-gradient mean_i g_i(θ) = Jθ − b of one outer step.

  Args:
    theta: meta-parameters θ, shape [d].
    alpha: inner learning rate α, shape [].
    S, Q: support and query Hessians, each [T, d, d].
    s_star, q_star: support and query minimisers s_i*, q_i*, each [T, d].
    method: "maml" or "fomaml".

  Returns:
    The meta-gradient, shape [d].
  """
  alpha, S, Q = _prepare(alpha, S, Q)
  A = _inner_jacobian(alpha, S)
  # θ'_i − q_i* = (I − αS_i)θ + αS_i s_i* − q_i*   (one inner step)
  residual = (jnp.einsum("...tij,j->...ti", A, theta)
              + alpha[..., None, None] * jnp.einsum("tij,tj->ti", S, s_star) - q_star)
  outer = jnp.einsum("tij,...tj->...ti", Q, residual)  # ∇L_i^Q(θ'_i)
  if _checks.choice("method", method, METHODS) == MAML:
    # MAML: g_i = (I − αS_i)ᵀ ∇L_i^Q(θ'_i)
    outer = jnp.einsum("...tji,...tj->...ti", A, outer)
  return jnp.mean(outer, axis=-2)


@functools.partial(jax.jit, static_argnames="method")
def fixed_point(alpha: ArrayLike, S: ArrayLike, Q: ArrayLike, s_star: ArrayLike,
                q_star: ArrayLike, method: str = MAML) -> jax.Array:
  """The fixed point θ̄ = J⁻¹b of the outer step (where the meta-gradient vanishes).

  Args:
    alpha: inner learning rate α, shape [].
    S, Q: support and query Hessians, each [T, d, d].
    s_star, q_star: support and query minimisers, each [T, d].
    method: "maml" or "fomaml".

  Returns:
    θ̄, shape [d]. Not finite where J is singular.
  """
  J = meta_hessian(alpha, S, Q, method)
  d = J.shape[-1]
  # meta-gradient is affine: g(θ) = Jθ − b, so b = −g(0)
  b = -meta_gradient(jnp.zeros((d,), J.dtype), alpha, S, Q, s_star, q_star, method)
  return jnp.linalg.solve(J, b[..., None])[..., 0]


@functools.partial(jax.jit, static_argnames=("method", "symmetric"))
def meta_hessian_eigenvalues(alpha: ArrayLike, S: ArrayLike, Q: ArrayLike,
                             method: str = MAML, *,
                             symmetric: bool | None = None) -> jax.Array:
  """Eigenvalues μ of J(α).

  Args:
    alpha: inner learning rate α, shape [...].
    S, Q: support and query Hessians, each [T, d, d].
    method: "maml" or "fomaml".
    symmetric: use the symmetric eigensolver (real, ascending eigenvalues of
      (J + Jᵀ)/2). Default: True for MAML, False for FOMAML. Pass True for FOMAML
      only when every S_i commutes with its Q_i (e.g. same data).

  Returns:
    μ, shape [..., d]: real if symmetric, else complex (unordered; the general
    eigensolver runs on CPU).
  """
  J = meta_hessian(alpha, S, Q, method)
  if _is_symmetric(method, symmetric):
    return jnp.linalg.eigvalsh(0.5 * (J + jnp.swapaxes(J, -1, -2)))
  return jnp.linalg.eigvals(J)


@functools.partial(jax.jit, static_argnames=("method", "symmetric"))
def spectral_radius(alpha: ArrayLike, beta: ArrayLike, S: ArrayLike, Q: ArrayLike,
                    method: str = MAML, *,
                    symmetric: bool | None = None) -> jax.Array:
  """ρ(I − βJ(α)) = max_μ |1 − βμ|, the asymptotic contraction factor per outer step.

  Args:
    alpha: inner learning rate α, shape [...] (broadcast with beta).
    beta: meta learning rate β (any sign), shape [...].
    S, Q: support and query Hessians, each [T, d, d].
    method: "maml" or "fomaml".
    symmetric: see `meta_hessian_eigenvalues`.

  Returns:
    ρ, shape broadcast(alpha.shape, beta.shape).
  """
  mu = meta_hessian_eigenvalues(alpha, S, Q, method, symmetric=symmetric)
  beta = _float(beta)
  # eigenvalues of I − βJ are 1 − βμ
  return jnp.max(jnp.abs(1.0 - beta[..., None] * mu), axis=-1)


@jax.jit
def beta_critical_from_spectrum(mu: ArrayLike, zero_tol: ArrayLike = 0.0) -> jax.Array:
  """β_c = sup{β > 0 : |1 − βμ| < 1 for all μ ≠ 0} from the eigenvalues μ of J.

  Per eigenvalue: |μ| ≤ zero_tol → +inf (marginal); Re μ ≤ 0 → 0; otherwise
  2 Re μ/|μ|². The result is the minimum over the last axis.

  Args:
    mu: eigenvalues of J, real or complex, shape [..., d].
    zero_tol: eigenvalues with |μ| ≤ zero_tol count as exact zeros, shape
      broadcastable to [...] (or to [..., d]).

  Returns:
    β_c, shape [...], in [0, +inf].
  """
  mu = _float(mu)
  re, im = jnp.real(mu), jnp.imag(mu)
  abs2 = re**2 + im**2
  zero_tol = jax.lax.stop_gradient(jnp.asarray(zero_tol, re.dtype))
  if zero_tol.ndim and zero_tol.ndim < mu.ndim:
    zero_tol = zero_tol[..., None]
  is_zero = abs2 <= zero_tol**2
  stable = (re > 0) & ~is_zero
  # |1 − βμ|² < 1 ⇔ β|μ|² < 2 Re μ ⇔ β < 2 Re μ/|μ|²   (needs Re μ > 0)
  bound = 2.0 * re / jnp.where(stable, abs2, 1.0)
  per_mode = jnp.where(is_zero, jnp.inf, jnp.where(stable, bound, 0.0))
  return jnp.min(per_mode, axis=-1)


def _matrix_zero_tol(alpha: jax.Array, S: jax.Array, Q: jax.Array, method: str,
                     rtol: float | None) -> jax.Array:
  """rtol·max_i rms(Q_i)·rms(I − αS_i)^k, k = 2 (MAML) or 1 (FOMAML).

  rms(M) = ‖M‖_F/√d is the root-mean-square singular value: the scale of the terms
  summed into J, hence of the roundoff in its eigenvalues.
  """
  d = S.shape[-1]
  if rtol is None:
    rtol = _ZERO_TOL_EPS * d * float(jnp.finfo(S.dtype).eps)
  rms = lambda m: jnp.sqrt(jnp.mean(m**2, axis=(-2, -1)) * d)
  power = 2 if method == MAML else 1
  scale = rms(Q) * rms(_inner_jacobian(alpha, S)) ** power
  return rtol * jnp.max(scale, axis=-1)


@functools.partial(jax.jit, static_argnames=("method", "symmetric", "rtol"))
def critical_beta(alpha: ArrayLike, S: ArrayLike, Q: ArrayLike, method: str = MAML,
                  *, symmetric: bool | None = None,
                  rtol: float | None = None) -> jax.Array:
  """Critical meta-rate β_c(α) = sup{β > 0 : ρ(I − βJ(α)) < 1} (module convention).

  Symmetric J: β_c = 2/λ_max(J) if λ_min(J) > 0, 0 if J has a negative eigenvalue
  (zero eigenvalues impose no bound). Non-symmetric J (FOMAML with non-commuting
  S_i, Q_i): β_c = min_μ 2 Re μ/|μ|², and 0 if some Re μ ≤ 0.

  Args:
    alpha: inner learning rate α (any sign), shape [...].
    S, Q: support and query Hessians, each [T, d, d].
    method: "maml" or "fomaml".
    symmetric: see `meta_hessian_eigenvalues`.
    rtol: eigenvalues with |μ| ≤ rtol·max_i rms(Q_i)·rms(I − αS_i)^k count as exact
      zeros, where rms(M) = ‖M‖_F/√d and k = 2 (MAML) or 1 (FOMAML); default
      8·d·eps of the dtype.

  Returns:
    β_c, shape alpha.shape, in [0, +inf].
  """
  alpha, S, Q = _prepare(alpha, S, Q)
  mu = meta_hessian_eigenvalues(alpha, S, Q, method, symmetric=symmetric)
  return beta_critical_from_spectrum(mu, _matrix_zero_tol(alpha, S, Q, method, rtol))


@functools.partial(jax.jit, static_argnames=("method", "symmetric", "rtol"))
def predicted_class(alpha: ArrayLike, beta: ArrayLike, S: ArrayLike, Q: ArrayLike,
                    method: str = MAML, *, symmetric: bool | None = None,
                    rtol: float | None = None) -> jax.Array:
  """Predicted outcome of the outer iteration at (α, β): True = converges.

  True iff 0 < β < β_c(α) (see `critical_beta` for marginal directions). For a grid
  pass alpha[:, None] and beta[None, :].

  Args:
    alpha: inner learning rate α, shape [...] (broadcast with beta).
    beta: meta learning rate β, shape [...].
    S, Q: support and query Hessians, each [T, d, d].
    method: "maml" or "fomaml".
    symmetric, rtol: see `critical_beta`.

  Returns:
    Boolean array, shape broadcast(alpha.shape, beta.shape).
  """
  beta_c = critical_beta(alpha, S, Q, method, symmetric=symmetric, rtol=rtol)
  beta = _float(beta)
  return (beta > 0) & (beta < beta_c)


# --- Single quadratic with the same data (S = Q = H), in H's eigenvalues λ_i. --------
#
# alpha has shape [...] and eigs shape [n] (or [..., n]); results have shape [...].


def _eig_zero_tol(alpha: jax.Array, eigs: jax.Array, power: int,
                  rtol: float | None) -> jax.Array:
  """rtol·|λ|·(1 + |αλ|)^k, the roundoff scale of λ(1 − αλ)^k."""
  if rtol is None:
    rtol = _ZERO_TOL_EPS * float(jnp.finfo(eigs.dtype).eps)
  return rtol * jnp.abs(eigs) * (1.0 + jnp.abs(alpha * eigs)) ** power


def _prepare_eigs(alpha: ArrayLike, eigs: ArrayLike) -> tuple[jax.Array, jax.Array]:
  alpha, eigs = _float(alpha), _float(eigs)
  if eigs.ndim < 1:
    raise ValueError(f"eigs must have shape [n], got {eigs.shape}")
  return alpha[..., None], eigs


@functools.partial(jax.jit, static_argnames="rtol")
def maml_beta_critical_eigs(alpha: ArrayLike, eigs: ArrayLike, *,
                            rtol: float | None = None) -> jax.Array:
  """Exact one-step MAML, one task, same data: β_c = min_i 2/(λ_i(1 − αλ_i)²).

  A direction with αλ_i = 1 (or λ_i = 0) imposes no bound (+inf); λ_i < 0 gives 0.

  Args:
    alpha: inner learning rate α, shape [...].
    eigs: Hessian eigenvalues λ_i, shape [n].
    rtol: relative tolerance for the singular points (default 8·eps).

  Returns:
    β_c, shape [...].
  """
  alpha, eigs = _prepare_eigs(alpha, eigs)
  # μ_i = λ_i(1 − αλ_i)², eigenvalues of (I − αH)H(I − αH)   (reference §A.2 remark)
  mu = eigs * (1.0 - alpha * eigs) ** 2
  return beta_critical_from_spectrum(mu, _eig_zero_tol(alpha, eigs, 2, rtol))


@functools.partial(jax.jit, static_argnames="rtol")
def fomaml_beta_critical_eigs(alpha: ArrayLike, eigs: ArrayLike, *,
                              rtol: float | None = None) -> jax.Array:
  """FOMAML, one task, same data: β_c = min_i 2/(λ_i − αλ_i²) (0 if any αλ_i > 1).

  Args:
    alpha: inner learning rate α, shape [...].
    eigs: Hessian eigenvalues λ_i, shape [n].
    rtol: relative tolerance for the singular points (default 8·eps).

  Returns:
    β_c, shape [...]; equals `takagi_beta_critical`.
  """
  alpha, eigs = _prepare_eigs(alpha, eigs)
  # μ_i = λ_i(1 − αλ_i), eigenvalues of H(I − αH)   (reference §A.2 remark)
  mu = eigs * (1.0 - alpha * eigs)
  return beta_critical_from_spectrum(mu, _eig_zero_tol(alpha, eigs, 1, rtol))


@jax.jit
def takagi_alpha_critical(eigs: ArrayLike) -> jax.Array:
  """Takagi's α_c = min_i 1/λ_i with 1/0 = ∞ (= 1/λ_max when all λ_i > 0).

  The condition ∀i α ≤ 1/λ_i is λ_i − αλ_i² ≥ 0 for every i, also for λ_i < 0.

  Args:
    eigs: Hessian eigenvalues λ_i, shape [..., n].

  Returns:
    α_c, shape [...].
  """
  eigs = _float(eigs)
  nonzero = eigs != 0
  # ∀i: α ≤ 1/λ(H)_i   (Takagi et al. 2019, eqs. 9–11; 1/0 = ∞)
  inv = jnp.where(nonzero, 1.0 / jnp.where(nonzero, eigs, 1.0), jnp.inf)
  return jnp.min(inv, axis=-1)


@functools.partial(jax.jit, static_argnames="rtol")
def takagi_beta_curves(alpha: ArrayLike, eigs: ArrayLike, *,
                       rtol: float | None = None) -> jax.Array:
  """Per-eigenvalue Takagi bounds β_c,i(α) = 2/(λ_i − αλ_i²), e.g. the curves of Fig. 3.

  Conventions per direction: λ_i − αλ_i² = 0 → +inf (1/0 = ∞); < 0 (that
  direction's α-condition fails) → 0.

  Args:
    alpha: inner learning rate α, shape [...].
    eigs: Hessian eigenvalues λ_i, shape [n].
    rtol: relative tolerance for λ_i − αλ_i² = 0 (default 8·eps).

  Returns:
    β_c,i, shape [..., n].
  """
  alpha, eigs = _prepare_eigs(alpha, eigs)
  # λ(H̃)_i = λ_i − αλ_i²   (Takagi et al. 2019, §3, H̃ ≈ H − αH²)
  curv = eigs - alpha * eigs**2
  zero_tol = jax.lax.stop_gradient(_eig_zero_tol(alpha, eigs, 1, rtol))
  is_zero = jnp.abs(curv) <= zero_tol
  positive = (curv > 0) & ~is_zero
  # β < 2/(λ_i − αλ_i²)   (Takagi et al. 2019, eqs. 12–14)
  bound = 2.0 / jnp.where(positive, curv, 1.0)
  return jnp.where(is_zero, jnp.inf, jnp.where(positive, bound, 0.0))


@functools.partial(jax.jit, static_argnames="rtol")
def takagi_beta_critical(alpha: ArrayLike, eigs: ArrayLike, *,
                         rtol: float | None = None) -> jax.Array:
  """Takagi's β_c(α) = min_i 2/(λ_i − αλ_i²) for α ≤ α_c, and 0 for α > α_c (eq. 15).

  Equals FOMAML's exact boundary on a single quadratic with the same data, and at
  α = 0 equals 2/λ_max.

  Args:
    alpha: inner learning rate α, shape [...].
    eigs: Hessian eigenvalues λ_i, shape [n].
    rtol: relative tolerance for λ_i − αλ_i² = 0 (default 8·eps).

  Returns:
    β_c, shape [...].
  """
  # ∀i: α ≤ 1/λ_i ∧ β < 2/(λ_i − αλ_i²)   (Takagi et al. 2019, eq. 15); a curve is
  # 0 exactly where its α-condition fails (λ_i − αλ_i² < 0), so the min encodes both.
  return jnp.min(takagi_beta_curves(alpha, eigs, rtol=rtol), axis=-1)


@functools.partial(jax.jit, static_argnames=("method", "rtol"))
def predicted_class_eigs(alpha: ArrayLike, beta: ArrayLike, eigs: ArrayLike,
                         method: str = MAML, *,
                         rtol: float | None = None) -> jax.Array:
  """Eigenvalue form of `predicted_class` for one task with the same data.

  Args:
    alpha: inner learning rate α, shape [...] (broadcast with beta).
    beta: meta learning rate β, shape [...].
    eigs: Hessian eigenvalues λ_i, shape [n].
    method: "maml" or "fomaml" (FOMAML = Takagi's surrogate).
    rtol: see `maml_beta_critical_eigs`.

  Returns:
    Boolean array (True = converges), shape broadcast(alpha.shape, beta.shape).
  """
  if _checks.choice("method", method, METHODS) == MAML:
    beta_c = maml_beta_critical_eigs(alpha, eigs, rtol=rtol)
  else:
    beta_c = fomaml_beta_critical_eigs(alpha, eigs, rtol=rtol)
  beta = _float(beta)
  return (beta > 0) & (beta < beta_c)
