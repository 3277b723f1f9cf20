"""One-step MAML on linear regression: inner step, exact meta-solution, adaptation.

Bernacchia 2021, Secs. 2-3 (reference §1.2-1.5). Per-sample loss ℓ = ½(y − θᵀx)².

The meta-training loss is quadratic in ω: L_meta(ω) = ‖Zω − u‖²/(2N) with rows
Z_(i,j) = x_jᵀ(I − α_t H_i) and u_(i,j) = y_j − (α_t/n_t) x_jᵀ X_iᵀ y_i over the
query points j of task i (§1.4). Its minimiser nearest to ω_0 (the one gradient
descent from ω_0 reaches) is ω* = ω_0 + Z⁺(u − Zω_0) in both regimes: for p < N
it is the unique minimiser.

Two implementations of ω* are provided: `min_distance_solution` (a direct
least-squares solve, the reference) and `meta_solution_path`, which exploits that
Z and u are *affine in α_t* (Z = Z_0 − α_t Z_1, u = u_0 − α_t u_1), so the normal
equations of a whole α_t grid cost one small Cholesky solve per grid value.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from negmeta import _linalg, _prng, problems
from negmeta.linear._sampler import TaskBatch


def squared_loss(theta: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
  """½ mean_j (y_j − θᵀx_j)². theta: [p], x: [n, p], y: [n] → []."""
  return 0.5 * jnp.mean((y - x @ theta) ** 2)


def inner_step(omega: jax.Array, x: jax.Array, y: jax.Array,
               alpha: ArrayLike) -> jax.Array:
  """θ = ω − (α/n) Σ_j ∂ℓ/∂θ = ω − (α/n) Xᵀ(Xω − y) (§1.2, §1.3).

  Args:
    omega: starting parameters, [p].
    x: inputs, [n, p].
    y: labels, [n].
    alpha: learning rate (any sign), [].

  Returns:
    Adapted parameters θ, [p].
  """
  return omega - alpha / x.shape[0] * (x.T @ (x @ omega - y))


class MetaDesign(NamedTuple):
  """Z(α_t) = z0 − α_t z1 and u(α_t) = u0 − α_t u1 (rows stacked over tasks, §1.4).

  Attributes:
    z0: query inputs X_v, [N, p].
    z1: X_v H_t per task, [N, p].
    u0: query labels y_v, [N].
    u1: X_v X_tᵀ y_t / n_t per task, [N].
  """
  z0: jax.Array
  z1: jax.Array
  u0: jax.Array
  u1: jax.Array

  def at(self, alpha_t: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """(Z, u) at one α_t: [N, p], [N]."""
    return self.z0 - alpha_t * self.z1, self.u0 - alpha_t * self.u1


def meta_design(train: TaskBatch) -> MetaDesign:
  """The α_t-affine meta-regression design of one run's meta-training tasks.

  Args:
    train: m tasks; x_a [m, n_t, p] support, x_b [m, n_v, p] query.

  Returns:
    MetaDesign with N = m·n_v rows.
  """
  _, n_t, p = train.x_a.shape
  # X_v H_t = (X_v X_tᵀ) X_t / n_t: never forms the p×p matrix H_t.
  kernel = jnp.einsum("mvp,mnp->mvn", train.x_b, train.x_a) / n_t       # [m,n_v,n_t]
  z1 = jnp.einsum("mvn,mnp->mvp", kernel, train.x_a)
  u1 = jnp.einsum("mvn,mn->mv", kernel, train.y_a)
  return MetaDesign(z0=train.x_b.reshape(-1, p), z1=z1.reshape(-1, p),
                    u0=train.y_b.reshape(-1), u1=u1.reshape(-1))


def meta_loss(omega: jax.Array, train: TaskBatch, alpha_t: ArrayLike) -> jax.Array:
  """Empirical meta-training loss (1/m) Σ_i ℓ_query(θ_i(ω)) by explicit inner steps."""
  adapted = jax.vmap(inner_step, in_axes=(None, 0, 0, None))(
      omega, train.x_a, train.y_a, alpha_t)
  return jnp.mean(jax.vmap(squared_loss)(adapted, train.x_b, train.y_b))


def min_distance_solution(z: jax.Array, u: jax.Array,
                          omega0: jax.Array) -> jax.Array:
  """ω* = ω_0 + Z⁺(u − Zω_0): the minimiser of ‖Zω − u‖² nearest to ω_0 (§1.4).

  Reference implementation by a direct least-squares solve (SVD-based).

  Args:
    z: [N, p]. u: [N]. omega0: [p].

  Returns:
    ω*, [p].
  """
  delta, *_ = jnp.linalg.lstsq(z, u - z @ omega0)
  return omega0 + delta


class _PathTerms(NamedTuple):
  g0: jax.Array  # Gram coefficient of α⁰
  g1: jax.Array  # of α¹ (with sign folded in)
  g2: jax.Array  # of α²
  r0: jax.Array  # right-hand side coefficients
  r1: jax.Array
  r2: jax.Array


def _path_terms(design: MetaDesign, omega0: jax.Array) -> _PathTerms:
  """α-polynomial coefficients of the normal equations of the smaller side."""
  z0, z1 = design.z0, design.z1
  e0 = design.u0 - z0 @ omega0     # residual r(α) = e0 − α e1 at ω_0
  e1 = design.u1 - z1 @ omega0
  n, p = z0.shape
  if n < p:   # overparameterized: K = ZZᵀ [N, N], solve K v = r, ω* = ω_0 + Zᵀv
    k00, k01, k11 = z0 @ z0.T, z0 @ z1.T, z1 @ z1.T
    zero = jnp.zeros_like(e0)
    return _PathTerms(k00, -(k01 + k01.T), k11, e0, -e1, zero)
  # underparameterized: M = ZᵀZ [p, p], solve M δ = Zᵀr, ω* = ω_0 + δ
  m00, m01, m11 = z0.T @ z0, z0.T @ z1, z1.T @ z1
  return _PathTerms(m00, -(m01 + m01.T), m11,
                    z0.T @ e0, -(z0.T @ e1 + z1.T @ e0), z1.T @ e1)


class MetaSolution(NamedTuple):
  """ω* along an α_t grid.

  Attributes:
    omega: meta-parameters ω*(α_t), [G, p].
    rcond: Cholesky pivot ratio min(L_ii²)/max(L_ii²) of the Gram matrix solved,
      [G]: an upper bound on its reciprocal condition number (cheap, and exact
      enough to flag ill-conditioned meta-regressions); NaN if the Gram matrix is
      numerically singular, in which case ω* is NaN too.
    dual: λ with ω* − ω_0 = Z(α_t)ᵀλ when N < p, [G, N]; [G, 0] otherwise.
  """
  omega: jax.Array
  rcond: jax.Array
  dual: jax.Array


def meta_solution_path(design: MetaDesign, omega0: jax.Array,
                       alpha_t: jax.Array) -> MetaSolution:
  """ω*(α_t) = ω_0 + Z⁺(u − Zω_0) for every α_t of a grid, sharing one design.

  Args:
    design: the run's MetaDesign.
    omega0: [p].
    alpha_t: grid, [G].

  Returns:
    MetaSolution with omega [G, p] and rcond [G].
  """
  terms = _path_terms(design, omega0)
  n, p = design.z0.shape

  def solve(alpha):
    gram = terms.g0 + alpha * terms.g1 + alpha**2 * terms.g2
    rhs = terms.r0 + alpha * terms.r1 + alpha**2 * terms.r2
    chol = _linalg.psd_cholesky(gram)
    pivots = jnp.diagonal(chol) ** 2
    # Numerically singular (a pivot ≤ 0 was clamped): NaN, as LAPACK's potrf.
    singular = jnp.min(pivots) <= 0
    x = jnp.where(singular, jnp.nan, _linalg.cholesky_solve(chol, rhs))
    rcond = jnp.where(singular, jnp.nan, jnp.min(pivots) / jnp.max(pivots))
    dual = x if n < p else x[:0]
    if n < p:
      x = design.z0.T @ x - alpha * (design.z1.T @ x)
    return omega0 + x, rcond, dual

  omega, rcond, dual = jax.vmap(solve)(alpha_t)
  return MetaSolution(omega=omega, rcond=rcond, dual=dual)


def inner_step_gap(train: TaskBatch, alpha_t: jax.Array) -> jax.Array:
  """min over tasks i and eigenvalues λ of H_t^(i) of |1 − α_t λ|, per grid value.

  The inner step I − α_t H_t is singular at α_t = 1/λ(H_t); values near 0 mark
  grid points where the meta-regression loses a direction.

  Args:
    train: meta-training tasks, x_a [m, n_t, p].
    alpha_t: [G].

  Returns:
    [G].
  """
  _, n_t, p = train.x_a.shape
  # H_t = XᵀX/n_t and XXᵀ/n_t share their nonzero eigenvalues: use the smaller.
  gram = (jnp.einsum("mnp,mkp->mnk", train.x_a, train.x_a) if n_t <= p
          else jnp.einsum("mnp,mnq->mpq", train.x_a, train.x_a))
  lam = _linalg.eigvalsh(gram / n_t).reshape(1, -1)
  gap = jnp.min(jnp.abs(1.0 - alpha_t[:, None] * lam), axis=1)
  # If n_t < p, H_t also has zero eigenvalues, where |1 − α_t·0| = 1.
  return jnp.minimum(gap, 1.0) if n_t < p else gap


def expected_distance_given_inputs(train: TaskBatch,
                                   problem: problems.MixedLinearRegression,
                                   alpha_t: jax.Array) -> jax.Array:
  """E[‖ω* − w_0‖² | all inputs X_t, X_v] per grid value, exactly.

  A Rao-Blackwellized estimator of D = E‖ω* − w_0‖²: the task vectors δw_i and the
  label noise are integrated out analytically, so its variance over runs is much
  smaller than that of ‖ω* − w_0‖². With W = Z⁺ and W_i its columns of task i,
  ω* − w_0 = (I − WZ)(ω_0 − w_0) + Σ_i W_i(Z_i δw_i + ζ_i), ζ_i = z^v_i −
  (α_t/n_t) X_v X_tᵀ z^t_i (reference §2.3), hence
    E[·|X] = ‖(I − WZ)(ω_0 − w_0)‖² + Σ_i [ν²/p ‖W_i Z_i‖²_F + σ² tr(W_iᵀW_i C_i)],
  C_i = Cov(ζ_i|X)/σ² = I + (α_t/n_t)² (X_v X_tᵀ)(X_t X_vᵀ).

  Args:
    train: one run's meta-training tasks (x_a [m, n_t, p], x_b [m, n_v, p]).
    problem: the specification (σ, ν, w_0, ω_0).
    alpha_t: [G].

  Returns:
    [G].
  """
  m, n_t, p = train.x_a.shape
  n_v = train.x_b.shape[1]
  design = meta_design(train)
  cross = jnp.einsum("mvp,mnp->mvn", train.x_b, train.x_a)               # X_v X_tᵀ
  cross2 = jnp.einsum("mvn,mun->mvu", cross, cross) / n_t**2
  init = problem.omega0 - problem.w0

  def one(alpha):
    z, _ = design.at(alpha)
    # W = Z⁺ via the explicit inverse of the smaller Gram matrix.
    small = z @ z.T if z.shape[0] < p else z.T @ z
    chol = _linalg.psd_cholesky(small)
    inverse = jnp.where(jnp.min(jnp.diagonal(chol)) > 0, _linalg.cholesky_solve(
        chol, jnp.eye(small.shape[0], dtype=z.dtype)), jnp.nan)
    w = z.T @ inverse if z.shape[0] < p else inverse @ z.T
    w_blocks = w.reshape(p, m, n_v)
    z_blocks = z.reshape(m, n_v, p)
    wz = jnp.einsum("pmv,mvq->mpq", w_blocks, z_blocks)                   # W_i Z_i
    gram = jnp.einsum("pmv,pmu->mvu", w_blocks, w_blocks)                 # W_iᵀW_i
    cov = jnp.eye(n_v, dtype=z.dtype) + alpha**2 * cross2
    residual = init - jnp.sum(wz, axis=0) @ init
    return (jnp.sum(residual**2) + problem.nu**2 / p * jnp.sum(wz**2)
            + problem.sigma**2 * jnp.einsum("mvu,muv->", gram, cov))

  return jax.vmap(one)(alpha_t)


def protocol_test_loss(omega: jax.Array, test: TaskBatch,
                       alpha_r: jax.Array) -> jax.Array:
  """The paper's test protocol: adapt on n_r points, average ½·squared error.

  For each grid value g, adapts ω_g on every test task with rate α_r[g]
  (one inner step on the task's n_r points) and averages ½(y − θᵀx)² over the
  task's test points and over the tasks (§1.5; Figs. 2-3 captions).

  Args:
    omega: meta-parameters, [G, p].
    test: T test tasks; x_a [T, n_r, p] adaptation, x_b [T, n_s, p] test points.
    alpha_r: adaptation rates, [G].

  Returns:
    Mean test loss per grid value, [G].
  """
  num_tasks, n_r, p = test.x_a.shape
  # Layout chosen for large GEMMs: grid values are the trailing (column) axis.
  resid = (test.x_a.reshape(-1, p) @ omega.T).reshape(num_tasks, n_r, -1)
  resid = resid - test.y_a[..., None]                                     # [T,n_r,G]
  grad = jnp.matmul(jnp.swapaxes(test.x_a, 1, 2), resid) / n_r           # [T,p,G]
  theta = omega.T[None] - alpha_r * grad                                  # [T,p,G]
  err = jnp.matmul(test.x_b, theta) - test.y_b[..., None]                 # [T,n_s,G]
  return 0.5 * jnp.mean(err**2, axis=(0, 1))


psd_cholesky = _linalg.psd_cholesky


class ProtocolPlan(NamedTuple):
  """Which rates vary along a grid: decides the reduced protocol's generators.

  Static (hashable) structure, derived from the grid's values by the driver; the
  values themselves stay array arguments.

  Attributes:
    vary_t: α_t differs between grid values (ω* moves along the grid).
    vary_r: α_r differs between grid values.
  """
  vary_t: bool
  vary_r: bool

  def num_generators(self, p: int, num_validation: int) -> int:
    """J, the number of generators of the test-error directions d_{t,g}."""
    k = min(2 * num_validation, p) if self.vary_t else 0
    return 2 + 2 * k if self.vary_r else 1 + k

  def span_dim(self, num_validation: int) -> int:
    """s, the number of p-vectors V = [Q, w_t − ω_ref] the errors are built from."""
    return 1 + (2 * num_validation if self.vary_t else 0)

  def reduces(self, p: int, num_validation: int) -> bool:
    """Whether the reduced protocol applies: V spans fewer than p dimensions.

    Then the adaptation data enter only through (s+1)-sized statistics and the
    test points only through the span of the generators
    (`protocol_test_loss_reduced`).
    """
    return self.span_dim(num_validation) < p


def omega_span(design: MetaDesign, solution: MetaSolution, omega0: jax.Array,
               alpha_t: jax.Array, plan: ProtocolPlan
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """ω*_g = ω_ref + B c_g for every grid value: a point, a basis, coordinates.

  In the overparameterized regime ω*(α_t) − ω_0 = Z(α_t)ᵀλ with Z(α_t) = z0 − α_t z1
  (§1.4), so with B = [z0; z1]ᵀ the coordinates are c = [λ; −α_t λ], exactly, for
  every α_t. With α_t fixed along the grid every ω*_g is the same point and the
  basis is empty.

  Args:
    design: the run's MetaDesign (N rows, N < p when α_t varies).
    solution: `meta_solution_path(design, omega0, alpha_t)`.
    omega0: [p].
    alpha_t: [G].
    plan: the grid's ProtocolPlan.

  Returns:
    (ω_ref [p], B [p, k], c [G, k]) with k = 2N, or k = 0 when α_t is fixed.
  """
  if not plan.vary_t:
    p, g = solution.omega.shape[-1], alpha_t.shape[0]
    return (solution.omega[0], jnp.zeros((p, 0), omega0.dtype),
            jnp.zeros((g, 0), omega0.dtype))
  basis = jnp.concatenate([design.z0, design.z1]).T                       # [p, 2N]
  coords = jnp.concatenate([solution.dual, -alpha_t[:, None] * solution.dual], 1)
  return omega0, basis, coords


def _assemble_generators(w_rel: jax.Array, grad_ref: jax.Array, q: jax.Array,
                         hq: jax.Array, coords: jax.Array, alpha_r: jax.Array,
                         plan: ProtocolPlan) -> tuple[jax.Array, jax.Array]:
  """G_t and its coefficients from w_t − ω_ref, H_rω_ref − b_r, Q and H_rQ.

  The four pieces may be given in any orthonormal coordinates of dimension d
  (p-space itself, or the frame of `adaptation_coordinates`).

  Args:
    w_rel: [T, d]. grad_ref: [T, d]. q: [T, d, k]. hq: [T, d, k].
    coords: [G, k]. alpha_r: [G].
    plan: the grid's ProtocolPlan.

  Returns:
    (G [T, d, J], coefficients [J, G]).
  """
  c = coords
  if plan.vary_r:
    gens = jnp.concatenate([w_rel[..., None], grad_ref[..., None], -q, hq], axis=-1)
    coef = jnp.concatenate([jnp.ones_like(alpha_r)[None], alpha_r[None], c.T,
                            alpha_r[None] * c.T])
  else:
    a = alpha_r[0]
    gens = jnp.concatenate([(w_rel + a * grad_ref)[..., None], a * hq - q], axis=-1)
    coef = jnp.concatenate([jnp.ones_like(alpha_r)[None], c.T])
  return gens, coef


def protocol_generators(omega_ref: jax.Array, basis: jax.Array, coords: jax.Array,
                        adapt: TaskBatch, alpha_r: jax.Array, plan: ProtocolPlan
                        ) -> tuple[jax.Array, jax.Array]:
  """Factorises the test-error directions d_{t,g} = w_t − θ_{t,g} = G_t c_g.

  θ_{t,g} = ω_g − α_{r,g}(H_r ω_g − b_r) with H_r = X_rᵀX_r/n_r, b_r = X_rᵀy_r/n_r
  (the adaptation step, §1.5), and ω_g = ω_ref + Q c_g (`omega_span`). Then
  d_{t,g} = (w_t − ω_ref) + α_{r,g}(H_r ω_ref − b_r) − (I − α_{r,g}H_r) Q c_g,
  i.e. G_t = [w_t − ω_ref, H_r ω_ref − b_r, −Q, H_r Q] with coefficients
  [1, α_{r,g}, c_g, α_{r,g} c_g]; with α_r fixed the first two and the last two
  generators merge: G_t = [w_t − ω_ref + α_r(H_r ω_ref − b_r), −(I − α_r H_r)Q].

  This is the reference form, from explicit adaptation data; the sweep uses the
  same generators in the coordinates of `adaptation_coordinates`.

  Args:
    omega_ref, basis, coords: from `omega_span`, [p], [p, k] and [G, k].
    adapt: T new tasks; w [T, p], x_a [T, n_r, p], y_a [T, n_r].
    alpha_r: adaptation rates, [G].
    plan: the grid's ProtocolPlan.

  Returns:
    (G [T, p, J], coefficients [J, G]), J = plan.num_generators(...).
  """
  n_r = adapt.x_a.shape[1]
  grad_ref = jnp.einsum("tnp,tn->tp", adapt.x_a,
                        adapt.x_a @ omega_ref - adapt.y_a) / n_r          # H_rω_ref − b_r
  hq = jnp.einsum("tnp,tnk->tpk", adapt.x_a, adapt.x_a @ basis) / n_r      # H_r Q
  w_rel = adapt.w - omega_ref
  q = jnp.broadcast_to(basis, (w_rel.shape[0],) + basis.shape)
  return _assemble_generators(w_rel, grad_ref, q, hq, coords, alpha_r, plan)


def append_cholesky(chol_q: jax.Array, qa: jax.Array, aa: jax.Array) -> jax.Array:
  """`psd_cholesky` of [[QᵀQ, Qᵀa], [aᵀQ, aᵀa]] from that of QᵀQ, for many a.

  One forward substitution for all a (`_linalg.forward_substitution`); a zero
  pivot of QᵀQ gives a zero entry, as `psd_cholesky` of the whole matrix would.

  Args:
    chol_q: L_Q with L_Q L_Qᵀ = QᵀQ, [k, k].
    qa: Qᵀa, [..., k].
    aa: aᵀa, [...].

  Returns:
    [..., k+1, k+1].
  """
  k = chol_q.shape[-1]
  # The new row l solves L_Q l = Qᵀa (all a at once, as columns).
  row = (_linalg.forward_substitution(chol_q, qa.reshape(-1, k).T).T.reshape(qa.shape)
         if k else qa)
  corner = jnp.sqrt(jnp.maximum(aa - jnp.sum(row**2, axis=-1), 0))
  top = jnp.broadcast_to(jnp.pad(chol_q, ((0, 0), (0, 1))), qa.shape[:-1] + (k, k + 1))
  bottom = jnp.concatenate([row, corner[..., None]], axis=-1)[..., None, :]
  return jnp.concatenate([top, bottom], axis=-2)


def adaptation_coordinates(chol: jax.Array, f1: jax.Array, f2: jax.Array,
                           sigma: ArrayLike, n_r: int
                           ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """V, H_rV and X_rᵀz/n_r in an orthonormal frame, from the data's statistics.

  Let V be p × s with VᵀV = L Lᵀ, V_o = V L⁻ᵀ orthonormal, W_⊥ an orthonormal
  basis of its complement, and split the adaptation data of a task as
  B = [X_r V_o, z/σ] (n_r × (s+1)) and U = X_r W_⊥ (n_r × (p−s)): all entries
  i.i.d. N(0, 1). With B = O F₁ᵀ (O orthonormal, F₁F₁ᵀ = BᵀB) and
  UᵀO = O₂F₂ᵀ (O₂ orthonormal, F₂F₂ᵀ = OᵀUUᵀO),
    X_rᵀB = V_o (BᵀB)_{[:s]} + W_⊥O₂ (F₁F₂)ᵀ,
  so in the orthonormal frame [V_o, W_⊥O₂] (dimension d = s + r₂)
    V = [Lᵀ; 0],  H_rV = X_rᵀB_{[:, :s]}Lᵀ/n_r,  X_rᵀz/n_r = σX_rᵀB_{[:, s]}/n_r.
  Given B, UᵀO is a matrix of i.i.d. N(0, 1) whatever B is, so F₁ and F₂ are
  independent: F₁ ~ Bartlett Wishart_{s+1}(n_r), F₂ ~ Wishart_{r₁}(p − s),
  r₁ = min(s+1, n_r) (`_prng.wishart_factor`). Test points are rotation
  invariant, so errors computed in this frame have the protocol's exact law.

  Args:
    chol: L, [..., s, s].
    f1: F₁, [..., s+1, r₁].
    f2: F₂, [..., r₁, r₂].
    sigma: label noise σ.
    n_r: adaptation points.

  Returns:
    (V [..., d, s], H_rV [..., d, s], X_rᵀz/n_r [..., d]), d = s + r₂.
  """
  s = chol.shape[-1]
  gram = f1 @ jnp.swapaxes(f1, -1, -2)                                    # BᵀB
  xb = jnp.concatenate([gram[..., :s, :], jnp.swapaxes(f1 @ f2, -1, -2)], -2)
  lt = jnp.swapaxes(chol, -1, -2)
  v = jnp.concatenate([lt, jnp.zeros(lt.shape[:-2] + (f2.shape[-1], s), lt.dtype)], -2)
  hv = xb[..., :s] @ lt / n_r
  return jnp.broadcast_to(v, hv.shape), hv, sigma * xb[..., s] / n_r


def adaptation_specs(s: int, n_r: int, p: int) -> list[tuple[int, int]]:
  """(dim, df) of the Wishart factors F₁, F₂ of `adaptation_coordinates`.

  F₁F₁ᵀ = BᵀB ~ Wishart_{s+1}(n_r) for B = [X_rV_o, z/σ]; F₂F₂ᵀ ~
  Wishart_{r₁}(p − s), r₁ = min(s + 1, n_r), for the complement U = X_rW_⊥.
  """
  return [(s + 1, n_r), (min(s + 1, n_r), p - s)]


def _loss_from_generators(factor: jax.Array, gens: jax.Array, coef: jax.Array,
                          sigma: ArrayLike, test_points: int) -> jax.Array:
  """Mean protocol loss per grid value of errors x_sᵀG_t c_g + z_s, x_s ~ N(0, I_d).

  With K_t = G_tᵀG_t = L_t L_tᵀ (J ≤ d; otherwise L_t = G_t itself), the errors
  are v_sᵀa_g with v_s ~ N(0, I) and a_g = [L_tᵀc_g; σ], so the task's loss is
  ½ a_gᵀ S a_g / n_s with S = F Fᵀ ~ Wishart(n_s, I).

  Args:
    factor: F, a `_prng.wishart_factor` of size min(J, d) + 1 and n_s degrees
      of freedom, [T, min(J, d) + 1, min(J, d) + 1 or n_s].
    gens: G_t, [T, d, J].
    coef: [J, G].
    sigma: label noise σ.
    test_points: n_s.

  Returns:
    [G].
  """
  num_tasks, d, j = gens.shape
  if j <= d:
    chol = psd_cholesky(jnp.matmul(jnp.swapaxes(gens, -1, -2), gens))     # [T, J, J]
    scaled = jnp.matmul(jnp.swapaxes(chol, -1, -2), coef)                 # [T, J, G]
  else:
    scaled = jnp.matmul(gens, coef)                                       # [T, d, G]
  noise_row = jnp.broadcast_to(jnp.asarray(sigma, gens.dtype),
                               (num_tasks, 1, coef.shape[-1]))
  a = jnp.concatenate([scaled, noise_row], axis=1)
  proj = jnp.matmul(jnp.swapaxes(factor, -1, -2), a)                      # Fᵀ a_g
  return 0.5 * jnp.mean(jnp.sum(proj**2, axis=1), axis=0) / test_points


def protocol_test_loss_reduced(key: jax.Array, omega_ref: jax.Array,
                               basis: jax.Array, coords: jax.Array,
                               problem: problems.MixedLinearRegression,
                               alpha_r: jax.Array, test_tasks: int,
                               test_points: int, plan: ProtocolPlan) -> jax.Array:
  """The paper's protocol on `test_tasks` new tasks, drawing sufficient statistics.

  Exactly the law of `protocol_test_loss` on freshly sampled tasks (jointly over
  tasks and grid values, common random numbers kept), with far fewer draws:
  1. w_t ~ N(w_0, ν²/p I) is drawn (p normals per task);
  2. the adaptation data (X_r, z_r) enter d_{t,g} = w_t − θ_{t,g} only through
     V = [Q, w_t − ω_ref] and H_r, X_rᵀz_r; they are drawn as two Wishart
     factors of size s+1 (`adaptation_coordinates`; for Fig. 2b 182 normals and
     28 χ² per task instead of n_r·p = 1200 normals);
  3. the test points enter only through the errors' Gram matrix and are drawn
     as one Wishart factor (`_loss_from_generators`; 91 normals and 14 χ²
     instead of n_s·p = 3000).

  Args:
    key: PRNG key for the new tasks and all their data.
    omega_ref, basis, coords: from `omega_span`, [p], [p, k], [G, k]; k + 1 < p.
    problem: the specification (p, n_r, σ, ν, w_0).
    alpha_r: [G].
    test_tasks: T (static).
    test_points: n_s (static).
    plan: the grid's ProtocolPlan.

  Returns:
    Mean test loss per grid value, [G].
  """
  p, n_r, dtype = problem.p, problem.n_r, omega_ref.dtype
  k = basis.shape[-1]
  s = k + 1
  if s >= p:
    raise ValueError(f"reduced protocol needs k + 1 < p, got k = {k}, p = {p}")
  adapt_specs = adaptation_specs(s, n_r, p)
  d = s + min(adapt_specs[1])                                              # s + r₂
  j = plan.num_generators(p, problem.num_validation)
  # F₁ (adaptation B), F₂ (its complement), F_s (test points): independent.
  specs = adapt_specs + [(min(j, d) + 1, test_points)]
  k_n, k_f = jax.random.split(key)
  dw, off = _prng.normals(k_n, [(test_tasks, p),
                                (test_tasks, _prng.wishart_num_normals(specs))], dtype)
  a = problem.w0 + problem.nu / jnp.sqrt(p) * dw - omega_ref               # w_t − ω_ref
  chol = append_cholesky(psd_cholesky(basis.T @ basis), a @ basis,
                         jnp.sum(a**2, axis=-1))                          # V = [Q, a]
  f1, f2, f_s = _prng.wishart_factors(k_f, specs, (test_tasks,), dtype,
                                      normal_draws=off)
  v, hv, xz = adaptation_coordinates(chol, f1, f2, problem.sigma, n_r)
  gens, coef = _assemble_generators(v[..., k], -hv[..., k] - xz, v[..., :k],
                                    hv[..., :k], coords, alpha_r, plan)
  return _loss_from_generators(f_s, gens, coef, problem.sigma, test_points)


def exact_test_loss(omega: jax.Array, problem: problems.MixedLinearRegression,
                    alpha_r: ArrayLike) -> jax.Array:
  """Test loss of ω exactly in expectation over the new task and its data (§1.5).

  With θ = ω − α_r/n_r X_rᵀ(X_r ω − y_r) and test point (x, y) of a task w':
  E ½(y − θᵀx)² = ½σ² + ½E‖θ − w'‖², θ − w' = (I − α_r H_r)(ω − w') + α_r/n_r X_rᵀz_r,
  and for Wishart H_r, E(I − α_r H_r)² = [(1−α_r)² + α_r²(p+1)/n_r] I,
  E‖X_rᵀz_r‖²/n_r² = σ² p/n_r, E‖ω − w'‖² = ‖ω − w_0‖² + ν².

  Args:
    omega: [..., p].
    problem: the specification (σ, ν, w_0, p, n_r).
    alpha_r: broadcastable with omega[..., 0].

  Returns:
    [...].
  """
  return exact_test_loss_given_distance(
      jnp.sum((omega - problem.w0) ** 2, axis=-1), problem, alpha_r)


def exact_test_loss_given_distance(distance: jax.Array,
                                   problem: problems.MixedLinearRegression,
                                   alpha_r: ArrayLike) -> jax.Array:
  """`exact_test_loss` of any ω with ‖ω − w_0‖² = `distance` (shapes broadcast)."""
  p, n_r = problem.p, problem.n_r
  sq_dist = distance + problem.nu**2
  shrink = (1.0 - alpha_r) ** 2 + alpha_r**2 * (p + 1.0) / n_r
  injected = alpha_r**2 * problem.sigma**2 * p / n_r
  return 0.5 * problem.sigma**2 + 0.5 * (shrink * sq_dist + injected)
