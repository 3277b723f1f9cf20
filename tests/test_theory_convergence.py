"""Tests for negmeta.theory.convergence (Takagi et al. 2019 convergence maps).

The closed-form iteration matrices are checked against outer steps implemented
independently by autodiff of the MAML objective: second-order through the inner step,
and first-order with stop_gradient on the inner gradient. The critical meta-rates
are checked against spectral radii on both sides of the boundary, and Takagi's
linear-regression numbers are computed from sampled data.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from negmeta.theory import convergence

SIGNED_ALPHAS = (-0.7, -0.2, -0.01, 0.0, 0.05, 0.2, 0.45)


# Test data comes from NumPy: compiling JAX's threefry sampler for every shape would
# dominate the run time.


def _orthogonal(rng, *shape):
  return np.linalg.qr(rng.standard_normal(shape))[0]


def _random_spd(rng, num_tasks, d, lo, hi):
  """Random symmetric positive-definite matrices [T, d, d], eigenvalues in [lo, hi]."""
  U = _orthogonal(rng, num_tasks, d, d)
  lam = rng.uniform(lo, hi, (num_tasks, d))
  return jnp.asarray(np.einsum("tij,tj,tkj->tik", U, lam, U))


def _problem(seed, num_tasks, d, same_data):
  """(S, Q, s*, q*) of a random quadratic meta-learning problem."""
  rng = np.random.default_rng(seed)
  S = _random_spd(rng, num_tasks, d, 0.3, 3.0)
  s_star = jnp.asarray(rng.standard_normal((num_tasks, d)))
  if same_data:
    return S, S, s_star, s_star
  Q = _random_spd(rng, num_tasks, d, 0.3, 3.0)
  return S, Q, s_star, jnp.asarray(rng.standard_normal((num_tasks, d)))


# --- Independent autodiff implementation of one outer step. ---------------------------


def _quad(theta, H, star):
  return 0.5 * (theta - star) @ H @ (theta - star)


def _inner(theta, S, s_star, alpha):
  return theta - alpha * jax.grad(_quad)(theta, S, s_star)


def _maml_step(theta, alpha, beta, S, Q, s_star, q_star):
  """Exact MAML: jax.grad of mean_i L_i^Q(θ'_i(θ)), differentiating through θ'_i."""

  def meta_loss(t):
    per_task = jax.vmap(lambda Si, Qi, si, qi: _quad(_inner(t, Si, si, alpha), Qi, qi))
    return jnp.mean(per_task(S, Q, s_star, q_star))

  return theta - beta * jax.grad(meta_loss)(theta)


def _fomaml_step_stop_gradient(theta, alpha, beta, S, Q, s_star, q_star):
  """FOMAML as usually coded: stop_gradient on the inner gradient (dθ'/dθ := I)."""

  def meta_loss(t):

    def task(Si, Qi, si, qi):
      adapted = t - alpha * jax.lax.stop_gradient(jax.grad(_quad)(t, Si, si))
      return _quad(adapted, Qi, qi)

    return jnp.mean(jax.vmap(task)(S, Q, s_star, q_star))

  return theta - beta * jax.grad(meta_loss)(theta)


def _fomaml_step_adapted_grad(theta, alpha, beta, S, Q, s_star, q_star):
  """FOMAML as the query gradient taken at the adapted parameters."""
  grads = jax.vmap(lambda Si, Qi, si, qi: jax.grad(_quad)(_inner(theta, Si, si, alpha),
                                                          Qi, qi))
  return theta - beta * jnp.mean(grads(S, Q, s_star, q_star), axis=0)


_maml_jacobian = jax.jit(jax.jacobian(_maml_step))
_fomaml_jacobian = jax.jit(jax.jacobian(_fomaml_step_adapted_grad))
_maml_step_jit = jax.jit(_maml_step)
_fomaml_step_stop_gradient_jit = jax.jit(_fomaml_step_stop_gradient)


def _affine_jacobian(step, theta0):
  """Linear part of an affine map from its values: column j = step(θ0 + e_j) − step(θ0).

  stop_gradient also blocks jax.jacobian, so this is how the Jacobian of the
  stop_gradient implementation is read off. The map is exactly affine on
  quadratics, so the differences are exact up to roundoff.
  """
  base = step(theta0)
  eye = jnp.eye(theta0.shape[0], dtype=theta0.dtype)
  return jnp.stack([step(theta0 + e) - base for e in eye], axis=1)


def _rho(matrix):
  return float(np.max(np.abs(np.linalg.eigvals(np.asarray(matrix)))))


class IterationMatrixTest(parameterized.TestCase):

  @parameterized.parameters((1, True), (1, False), (3, True), (3, False))
  def test_matches_jacobian_of_autodiff_step(self, num_tasks, same_data):
    for alpha in (-0.35, 0.0, 0.15, 0.4):
      with self.subTest(alpha=alpha):
        self._check_against_autodiff(num_tasks, same_data, alpha)

  def _check_against_autodiff(self, num_tasks, same_data, alpha):
    d, beta = 3, 0.37
    S, Q, s_star, q_star = _problem(7 + num_tasks, num_tasks, d, same_data)
    theta0 = jnp.asarray(np.random.default_rng(99).standard_normal(d))
    args = (jnp.asarray(alpha), jnp.asarray(beta), S, Q, s_star, q_star)

    maml = _maml_jacobian(theta0, *args)
    fomaml = _fomaml_jacobian(theta0, *args)
    fomaml_sg = _affine_jacobian(
        lambda t: _fomaml_step_stop_gradient_jit(t, *args), theta0)
    maml_affine = _affine_jacobian(lambda t: _maml_step_jit(t, *args), theta0)

    T_maml = convergence.outer_iteration_matrix(alpha, beta, S, Q, "maml")
    T_fomaml = convergence.outer_iteration_matrix(alpha, beta, S, Q, "fomaml")
    np.testing.assert_allclose(T_maml, maml, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(T_maml, maml_affine, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(T_fomaml, fomaml, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(T_fomaml, fomaml_sg, rtol=1e-10, atol=1e-12)
    if alpha != 0.0:  # the two methods really differ
      self.assertGreater(float(jnp.max(jnp.abs(T_maml - T_fomaml))), 1e-3)

  def test_single_task_same_data_closed_forms(self):
    """MAML: I − β(I − αH)H(I − αH); FOMAML: I − βH(I − αH)."""
    S, _, _, _ = _problem(3, 1, 3, True)
    H, eye = S[0], jnp.eye(3)
    alpha, beta = -0.3, 0.2
    A = eye - alpha * H
    np.testing.assert_allclose(
        convergence.outer_iteration_matrix(alpha, beta, S, S, "maml"),
        eye - beta * A @ H @ A, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(
        convergence.outer_iteration_matrix(alpha, beta, S, S, "fomaml"),
        eye - beta * H @ A, rtol=1e-13, atol=1e-13)

  @parameterized.product(method=("maml", "fomaml"), same_data=(True, False))
  def test_meta_gradient_and_fixed_point(self, method, same_data):
    S, Q, s_star, q_star = _problem(11, 3, 3, same_data)
    alpha, beta = 0.2, 1.0
    step = _maml_step_jit if method == "maml" else _fomaml_step_stop_gradient_jit
    theta = jnp.asarray(np.random.default_rng(5).standard_normal(3))
    autodiff_grad = (theta - step(theta, alpha, beta, S, Q, s_star, q_star)) / beta
    np.testing.assert_allclose(
        convergence.meta_gradient(theta, alpha, S, Q, s_star, q_star, method),
        autodiff_grad, rtol=1e-12, atol=1e-12)
    fixed = convergence.fixed_point(alpha, S, Q, s_star, q_star, method)
    np.testing.assert_allclose(step(fixed, alpha, beta, S, Q, s_star, q_star), fixed,
                               rtol=1e-12, atol=1e-12)

  def test_broadcasts_over_alpha_and_beta(self):
    S, Q, _, _ = _problem(2, 3, 3, False)
    alphas, betas = jnp.array([-0.2, 0.1]), jnp.array([0.3, 0.5, 0.9])
    T = convergence.outer_iteration_matrix(alphas[:, None], betas[None, :], S, Q,
                                           "fomaml")
    self.assertEqual(T.shape, (2, 3, 3, 3))
    np.testing.assert_allclose(
        T[1, 2], convergence.outer_iteration_matrix(0.1, 0.9, S, Q, "fomaml"),
        rtol=1e-14)

  def test_rejects_bad_shapes_and_methods(self):
    H = jnp.eye(2)
    with self.assertRaisesRegex(ValueError, r"\[T, d, d\]"):
      convergence.meta_hessian(0.1, H, H)
    with self.assertRaisesRegex(ValueError, "method"):
      convergence.meta_hessian(0.1, H[None], H[None], "reptile")


class CriticalBetaTest(parameterized.TestCase):

  @parameterized.product(
      case=[(1, True), (1, False), (3, True), (3, False)],
      method=("maml", "fomaml"),
      alpha=SIGNED_ALPHAS,
  )
  def test_spectral_radius_crosses_one_at_beta_c(self, case, method, alpha):
    num_tasks, same_data = case
    S, Q, _, _ = _problem(21 + num_tasks, num_tasks, 3, same_data)
    beta_c = float(convergence.critical_beta(alpha, S, Q, method))
    self.assertTrue(np.isfinite(beta_c), beta_c)
    if beta_c == 0.0:  # only FOMAML past α_c: J has an eigenvalue with Re μ < 0
      self.assertEqual(method, "fomaml")
      mu = np.linalg.eigvals(np.asarray(convergence.meta_hessian(alpha, S, Q, method)))
      self.assertLess(mu.real.min(), 0.0)
      for beta in (1e-8, 1e-3, 1.0):
        self.assertGreater(_rho(convergence.outer_iteration_matrix(alpha, beta, S, Q,
                                                                   method)), 1.0)
      return
    for beta, below in ((beta_c * (1 - 1e-6), True), (beta_c * (1 + 1e-6), False)):
      T = convergence.outer_iteration_matrix(alpha, beta, S, Q, method)
      rho = _rho(T)
      self.assertEqual(rho < 1.0, below, (beta, rho))
      np.testing.assert_allclose(
          convergence.spectral_radius(alpha, beta, S, Q, method), rho, rtol=1e-12)
    at = _rho(convergence.outer_iteration_matrix(alpha, beta_c, S, Q, method))
    np.testing.assert_allclose(at, 1.0, rtol=1e-10)

  def test_non_symmetric_fomaml_with_complex_eigenvalues(self):
    """Two non-commuting tasks whose FOMAML meta-Hessian is a rotation-scaling.

    Q_1 = diag(1, δ), S_1 = [[a, c], [c, b]]; Q_2 = diag(δ, 1), S_2 = [[b, −c], [−c, a]]
    give J = ½[[u, −v], [v, u]] with u = 1 − αa + δ(1 − αb), v = αc(1 − δ), hence
    μ = (u ± iv)/2 and β_c = 2 Re μ/|μ|² = 4u/(u² + v²), which is not 2/λ_max of
    any symmetric part.
    """
    a, b, c, delta, alpha = 1.0, 4.0, 1.9, 0.1, 0.5
    U = jnp.asarray(_orthogonal(np.random.default_rng(0), 2, 2))
    rot = lambda m: U @ jnp.asarray(m) @ U.T
    S = jnp.stack([rot([[a, c], [c, b]]), rot([[b, -c], [-c, a]])])
    Q = jnp.stack([rot([[1.0, 0.0], [0.0, delta]]), rot([[delta, 0.0], [0.0, 1.0]])])
    u, v = 1 - alpha * a + delta * (1 - alpha * b), alpha * c * (1 - delta)
    mu = convergence.meta_hessian_eigenvalues(alpha, S, Q, "fomaml")
    np.testing.assert_allclose(np.sort_complex(np.asarray(mu)),
                               [(u - 1j * v) / 2, (u + 1j * v) / 2], rtol=1e-12)
    beta_c = convergence.critical_beta(alpha, S, Q, "fomaml")
    np.testing.assert_allclose(beta_c, 4 * u / (u**2 + v**2), rtol=1e-12)
    J = convergence.meta_hessian(alpha, S, Q, "fomaml")
    sym_lam_max = float(jnp.linalg.eigvalsh((J + J.T) / 2)[-1])
    self.assertGreater(abs(float(beta_c) - 2 / sym_lam_max), 0.5)
    for beta, below in ((beta_c * (1 - 1e-6), True), (beta_c * (1 + 1e-6), False)):
      T = convergence.outer_iteration_matrix(alpha, beta, S, Q, "fomaml")
      self.assertEqual(_rho(T) < 1.0, below)

  @parameterized.parameters(0.34, 0.6, 1.0)
  def test_zero_when_meta_hessian_has_negative_eigenvalue(self, alpha):
    """FOMAML past α_c = 1/λ_max: λ(1 − αλ) < 0, so every β > 0 diverges."""
    U = jnp.asarray(_orthogonal(np.random.default_rng(4), 3, 3))
    S = (U @ jnp.diag(jnp.array([0.5, 1.5, 3.0])) @ U.T)[None]
    self.assertGreater(alpha * 3.0, 1.0)
    self.assertEqual(float(convergence.critical_beta(alpha, S, S, "fomaml")), 0.0)
    for beta in (1e-6, 1e-2, 1.0):
      self.assertGreater(_rho(convergence.outer_iteration_matrix(alpha, beta, S, S,
                                                                 "fomaml")), 1.0)
    self.assertFalse(bool(convergence.predicted_class(alpha, 1e-3, S, S, "fomaml")))

  @parameterized.parameters("maml", "fomaml")
  def test_non_positive_beta_is_never_predicted_to_converge(self, method):
    """β ≤ 0 cannot contract: |1 − βμ| ≥ 1 for every μ with Re μ ≥ 0.

    So `predicted_class` and `predicted_class_eigs` must say "diverges" at β ≤ 0
    even though β < β_c(α) there, at negative, zero and positive α alike.
    """
    S, Q, _, _ = _problem(31, 3, 3, False)
    lam = jnp.linalg.eigvalsh(S[0])
    alphas = jnp.array([-0.5, 0.0, 0.2])
    betas = jnp.array([-1.0, -1e-3, 0.0])
    for S_, Q_ in ((S, Q), (S[:1], S[:1])):
      rho = np.asarray(convergence.spectral_radius(alphas[:, None], betas[None, :],
                                                   S_, Q_, method))
      self.assertTrue(np.all(rho >= 1.0 - 1e-12), rho)
      # Not vacuous: every β here is below a positive β_c(α).
      self.assertTrue(np.all(np.asarray(
          convergence.critical_beta(alphas, S_, Q_, method)) > 0.1))
      self.assertFalse(np.any(np.asarray(convergence.predicted_class(
          alphas[:, None], betas[None, :], S_, Q_, method))))
    self.assertFalse(np.any(np.asarray(convergence.predicted_class_eigs(
        alphas[:, None], betas[None, :], lam, method))))

  @parameterized.parameters(*SIGNED_ALPHAS, 0.5, 0.9)
  def test_takagi_equals_fomaml_exact_boundary_single_task(self, alpha):
    S, _, _, _ = _problem(5, 1, 3, True)
    lam = jnp.linalg.eigvalsh(S[0])
    takagi = convergence.takagi_beta_critical(alpha, lam)
    # Takagi eq. 15 evaluated directly in NumPy
    lam_np = np.asarray(lam)
    if alpha <= 1 / lam_np.max():
      expected = np.min(2 / (lam_np - alpha * lam_np**2))
    else:
      expected = 0.0
    np.testing.assert_allclose(takagi, expected, rtol=1e-12)
    np.testing.assert_allclose(convergence.critical_beta(alpha, S, S, "fomaml"), takagi,
                               rtol=1e-10)
    np.testing.assert_allclose(
        convergence.critical_beta(alpha, S, S, "fomaml", symmetric=True), takagi,
        rtol=1e-12)
    np.testing.assert_allclose(convergence.fomaml_beta_critical_eigs(alpha, lam),
                               takagi, rtol=1e-12)

  @parameterized.parameters(*SIGNED_ALPHAS, 0.5, 0.9)
  def test_exact_maml_boundary_single_task(self, alpha):
    S, _, _, _ = _problem(5, 1, 3, True)
    lam = np.asarray(jnp.linalg.eigvalsh(S[0]))
    expected = np.min(2 / (lam * (1 - alpha * lam) ** 2))
    np.testing.assert_allclose(convergence.critical_beta(alpha, S, S, "maml"), expected,
                               rtol=1e-10)
    np.testing.assert_allclose(convergence.maml_beta_critical_eigs(alpha, lam),
                               expected, rtol=1e-12)
    if alpha != 0.0:  # differs from Takagi's surrogate / FOMAML
      takagi = float(convergence.takagi_beta_critical(alpha, lam))
      self.assertGreater(abs(expected - takagi), 1e-3 * expected)

  def test_alpha_zero_all_boundaries_are_two_over_lambda_max(self):
    for num_tasks, same_data in ((1, True), (3, False)):
      S, Q, _, _ = _problem(8, num_tasks, 3, same_data)
      lam_max = float(jnp.linalg.eigvalsh(jnp.mean(Q, axis=0))[-1])
      for method in ("maml", "fomaml"):
        np.testing.assert_allclose(convergence.critical_beta(0.0, S, Q, method),
                                   2 / lam_max, rtol=1e-12)
    lam = jnp.array([0.3, 1.7, 4.0])
    for fn in (convergence.takagi_beta_critical, convergence.maml_beta_critical_eigs,
               convergence.fomaml_beta_critical_eigs):
      np.testing.assert_allclose(fn(0.0, lam), 2 / 4.0, rtol=1e-15)

  def test_negative_alpha_tightens_the_boundary(self):
    S, _, _, _ = _problem(9, 1, 3, True)
    lam = jnp.linalg.eigvalsh(S[0])
    gd = 2 / float(lam[-1])
    alphas = jnp.array([-1e-3, -0.05, -0.3, -1.0])
    for beta_c in (convergence.critical_beta(alphas, S, S, "maml"),
                   convergence.critical_beta(alphas, S, S, "fomaml"),
                   convergence.takagi_beta_critical(alphas, lam),
                   convergence.maml_beta_critical_eigs(alphas, lam)):
      beta_c = np.asarray(beta_c)
      self.assertTrue(np.all(beta_c < gd), (beta_c, gd))
      self.assertTrue(np.all(np.diff(beta_c) < 0), beta_c)  # monotone in |α|

  def test_singular_points(self):
    lam = jnp.array([0.5, 2.0, 5.0])
    # exact MAML at αλ = 1: that direction has no bound; the others decide
    alpha = 1 / 5.0
    rest = np.array([0.5, 2.0])
    others = np.min(2 / (rest * (1 - alpha * rest) ** 2))
    np.testing.assert_allclose(convergence.maml_beta_critical_eigs(alpha, lam), others,
                               rtol=1e-12)
    H = jnp.diag(lam)[None]
    np.testing.assert_allclose(convergence.critical_beta(alpha, H, H, "maml"), others,
                               rtol=1e-12)
    self.assertEqual(float(convergence.maml_beta_critical_eigs(0.5, jnp.array([2.0]))),
                     np.inf)
    H1 = 2.0 * jnp.ones((1, 1, 1))
    self.assertEqual(float(convergence.critical_beta(0.5, H1, H1)), np.inf)
    # Takagi / FOMAML at α = α_c exactly: inclusive (1/0 = ∞), the others decide
    alpha_c = convergence.takagi_alpha_critical(lam)
    np.testing.assert_allclose(alpha_c, 1 / 5.0, rtol=1e-15)
    others = np.min(2 / (rest * (1 - 0.2 * rest)))
    for value in (convergence.takagi_beta_critical(alpha_c, lam),
                  convergence.fomaml_beta_critical_eigs(alpha_c, lam),
                  convergence.critical_beta(alpha_c, H, H, "fomaml")):
      np.testing.assert_allclose(value, others, rtol=1e-12)
    # gradients are finite at the singular point and correct elsewhere
    grad = jax.grad(convergence.maml_beta_critical_eigs)(0.5, jnp.array([2.0]))
    self.assertTrue(np.isfinite(float(grad)))
    self.assertEqual(float(convergence.takagi_alpha_critical(jnp.array([0.0, 0.0]))),
                     np.inf)

  def test_takagi_alpha_critical_negative_eigenvalue(self):
    """∀i α ≤ 1/λ_i is λ_i − αλ_i² ≥ 0, also for λ_i < 0 (needs α ≤ 1/λ_i < 0)."""
    lam = jnp.array([-1.0, 2.0])
    self.assertEqual(float(convergence.takagi_alpha_critical(lam)), -1.0)
    self.assertEqual(float(convergence.takagi_beta_critical(-0.5, lam)), 0.0)
    np.testing.assert_allclose(convergence.takagi_beta_critical(-2.0, lam),
                               min(2 / (-1 - (-2.0)), 2 / (2 + 2.0 * 4)), rtol=1e-15)

  def test_gradients_match_closed_form(self):
    """d/dα of 2/(λ(1 − αλ)²) is 4/(1 − αλ)³; of 2/(λ − αλ²) is 2λ²/(λ − αλ²)²."""
    lm = 16.7
    lam = jnp.array([1.0, lm])
    H = jnp.diag(lam)[None]
    alphas = jnp.array([-0.05, 0.01, 0.03])
    grad_over = lambda f: jax.jit(jax.vmap(jax.grad(f)))(alphas)
    maml = 4 / (1 - alphas * lm) ** 3
    fomaml = 2 * lm**2 / (lm - alphas * lm**2) ** 2
    np.testing.assert_allclose(
        grad_over(lambda a: convergence.critical_beta(a, H, H, "maml")), maml,
        rtol=1e-10)
    np.testing.assert_allclose(
        grad_over(lambda a: convergence.maml_beta_critical_eigs(a, lam)), maml,
        rtol=1e-12)
    np.testing.assert_allclose(
        grad_over(lambda a: convergence.critical_beta(a, H, H, "fomaml")), fomaml,
        rtol=1e-10)
    np.testing.assert_allclose(
        grad_over(lambda a: convergence.takagi_beta_critical(a, lam)), fomaml,
        rtol=1e-12)
    S, Q, _, _ = _problem(3, 3, 3, False)
    dS = jax.grad(convergence.critical_beta, argnums=1)(0.1, S, Q, "fomaml")
    self.assertTrue(bool(jnp.all(jnp.isfinite(dS))))

  @parameterized.parameters("maml", "fomaml")
  def test_predicted_class_agrees_with_spectral_radius_on_grid(self, method):
    S, Q, _, _ = _problem(31, 3, 3, False)
    alphas = jnp.linspace(-0.8, 0.8, 17)
    betas = jnp.geomspace(1e-2, 5.0, 23)
    predicted = np.asarray(convergence.predicted_class(alphas[:, None], betas[None, :],
                                                       S, Q, method))
    rho = np.array([[_rho(convergence.outer_iteration_matrix(a, b, S, Q, method))
                     for b in betas] for a in alphas])
    decided = np.abs(rho - 1) > 1e-9
    np.testing.assert_array_equal(predicted[decided], (rho < 1)[decided])
    self.assertGreater(predicted.sum(), 20)
    self.assertGreater((~predicted).sum(), 20)


class TakagiLinearRegressionTest(absltest.TestCase):
  """Takagi App. C: y = a x + b, x ~ U[−5, 5], un-halved MSE, one task, same data."""

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(2019)
    self.x = jnp.asarray(rng.uniform(-5.0, 5.0, 20_000))
    a, b = rng.uniform(0.0, 5.0, 2)
    self.y = a * self.x + b

  def loss(self, theta):
    w, c = theta
    return jnp.mean((w * self.x + c - self.y) ** 2)  # un-halved MSE

  def test_thresholds_from_sampled_data(self):
    H = jax.hessian(self.loss)(jnp.zeros(2))
    lam = jnp.linalg.eigvalsh(H)
    # population: H = 2 E[[x², x], [x, 1]] = diag(50/3, 2); 20k samples give E x² to
    # ±0.9% (1σ), so 3% is a > 3σ band around the population values
    np.testing.assert_allclose(lam, [2.0, 50 / 3], rtol=0.03)
    np.testing.assert_allclose(convergence.takagi_alpha_critical(lam), 0.06, rtol=0.03)
    np.testing.assert_allclose(convergence.takagi_beta_critical(0.0, lam), 0.12,
                               rtol=0.03)
    # Fig. 3's λ₁ curve (β_c ≈ 1 at small α, diverging at α ≈ 0.5)
    curves = convergence.takagi_beta_curves(1e-5, lam)
    np.testing.assert_allclose(curves[0], 1.0, rtol=0.03)
    np.testing.assert_allclose(1 / lam[0], 0.5, rtol=0.03)
    # reference worked example: β_c(α = 0.05) ≈ 0.72, (0.05, 0.7) just inside
    np.testing.assert_allclose(convergence.takagi_beta_critical(0.05, lam), 0.72,
                               rtol=0.05)
    self.assertTrue(bool(convergence.predicted_class_eigs(0.05, 0.7, lam, "fomaml")))

  def test_simulated_training_matches_prediction(self):
    """500 full-batch outer steps from θ = 0; 'converged' = loss < 1e-2 (Fig. 3)."""
    x, y = self.x[:1000], self.y[:1000]  # a smaller data set keeps the sweep fast
    loss = lambda theta: jnp.mean((theta[0] * x + theta[1] - y) ** 2)
    H = jax.hessian(loss)(jnp.zeros(2))
    lam = jnp.linalg.eigvalsh(H)
    alphas = jnp.array([1e-3, 0.03, 0.05, 0.062, 0.07])
    betas = jnp.array([0.05, 0.2, 0.6, 0.9, 2.0])

    def train(alpha, beta):
      """Final training loss of (exact MAML, FOMAML)."""

      def meta_loss(theta, first_order):
        g = jax.grad(loss)(theta)
        if first_order:
          g = jax.lax.stop_gradient(g)
        return loss(theta - alpha * g)

      def step(thetas, _):
        maml, fomaml = thetas
        return (maml - beta * jax.grad(meta_loss)(maml, False),
                fomaml - beta * jax.grad(meta_loss)(fomaml, True)), None

      thetas, _ = jax.lax.scan(step, (jnp.zeros(2), jnp.zeros(2)), None, length=500)
      return {"maml": loss(thetas[0]), "fomaml": loss(thetas[1])}

    final = jax.jit(jax.vmap(jax.vmap(train, (None, 0)), (0, None)))(alphas, betas)
    for method in ("maml", "fomaml"):
      converged = np.asarray(final[method]) < 1e-2
      predicted = np.asarray(convergence.predicted_class_eigs(
          alphas[:, None], betas[None, :], lam, method))
      np.testing.assert_array_equal(
          predicted, np.asarray(convergence.predicted_class(
              alphas[:, None], betas[None, :], H[None], H[None], method)))
      rho = np.asarray(convergence.spectral_radius(alphas[:, None], betas[None, :],
                                                   H[None], H[None], method))
      decided = np.abs(rho - 1) > 0.02  # 500 steps decide these cells
      self.assertGreater(decided.sum(), 15)
      np.testing.assert_array_equal(converged[decided], predicted[decided], method)
    # FOMAML's region ends at α_c ≈ 0.06; exact MAML converges just beyond it
    self.assertFalse(bool(convergence.predicted_class_eigs(0.07, 0.05, lam, "fomaml")))
    self.assertTrue(bool(convergence.predicted_class_eigs(0.07, 0.05, lam, "maml")))


class TracingTest(absltest.TestCase):

  def test_vmapped_critical_beta_traces_once(self):
    S, Q, _, _ = _problem(1, 3, 3, False)

    for method in ("maml", "fomaml"):
      chex.clear_trace_counter()

      @jax.jit
      @chex.assert_max_traces(n=1)
      def sweep(alphas, S, Q, method=method):
        return jax.vmap(lambda a: convergence.critical_beta(a, S, Q, method))(alphas)

      first = sweep(jnp.linspace(-0.5, 0.5, 11), S, Q)
      second = sweep(jnp.linspace(0.0, 0.9, 11), S, Q)
      np.testing.assert_allclose(
          second, convergence.critical_beta(jnp.linspace(0.0, 0.9, 11), S, Q, method),
          rtol=1e-12)
      np.testing.assert_allclose(
          first, convergence.critical_beta(jnp.linspace(-0.5, 0.5, 11), S, Q, method),
          rtol=1e-12)

  def test_beta_grid_vmaps(self):
    S, Q, _, _ = _problem(1, 3, 3, False)
    alphas, betas = jnp.array([-0.1, 0.2]), jnp.array([0.1, 0.5, 1.0])
    rho_fn = lambda a, b: convergence.spectral_radius(a, b, S, Q, "fomaml")
    rho = jax.jit(jax.vmap(jax.vmap(rho_fn, (None, 0)), (0, None)))(alphas, betas)
    np.testing.assert_allclose(rho, rho_fn(alphas[:, None], betas[None, :]),
                               rtol=1e-12)


if __name__ == "__main__":
  absltest.main()
