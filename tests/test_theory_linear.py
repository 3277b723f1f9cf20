"""Closed forms of the linear theory: against hand values, autodiff and Monte Carlo."""

import jax
import jax.test_util  # noqa: F401  (check_grads)
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from negmeta import _checks, problems
from negmeta.theory import _wishart
from negmeta.theory import linear as theory

FIG2 = dict(p=60, n_t=30, n_v=2, n_r=20, m=3, sigma=1.0, nu=0.5)
FIG3 = dict(p=30, n_t=5, n_v=25, n_r=10, m=40, sigma=1.0, nu=1.0)


class HandValuesTest(absltest.TestCase):
  """Values worked out by hand in the reference (§2.2 hand check, §3.2, §6.3)."""

  def test_theorem1_peak_hand_check(self):
    # h_t(0.5) = 0.25 + 0.25·61/30; L = 0.56 + 0.762/2·(0.25·1.1 + 0.1·1.5/h_t).
    h_t = 0.25 + 0.25 * 61 / 30
    expected = 0.56 + 0.762 / 2 * (0.25 * 1.1 + 0.1 * 1.5 / h_t)
    problem = problems.mixed_linear_regression(**FIG2)
    self.assertAlmostEqual(float(theory.average_test_loss(problem, 0.5, 0.2)),
                           expected, places=12)

  def test_h_values(self):
    self.assertAlmostEqual(float(theory.h(0.2, 60, 20)), 0.762, places=12)
    self.assertAlmostEqual(float(theory.h(0.2, 30, 10)), 0.764, places=12)

  def test_alpha_t_pm_fig2(self):
    plus, minus = theory.alpha_t_stationary(60, 30)
    self.assertAlmostEqual(float(plus), 0.494485, places=6)
    self.assertAlmostEqual(float(minus), -1.011152, places=6)

  def test_underparameterized_at_zero(self):
    # D(0) = (ν²(n_v + p + 1) + σ²p)/(n_v m) exactly for the stand-in (§2.3).
    for sigma, nu in [(1.0, 1.0), (0.3, 2.0)]:
      kw = dict(FIG3, sigma=sigma, nu=nu)
      d0 = theory.distance_underparameterized(0.0, **{k: kw[k] for k in
                                                       ("p", "n_t", "n_v", "m", "sigma", "nu")})
      self.assertAlmostEqual(float(d0), (nu**2 * (25 + 30 + 1) + sigma**2 * 30) / 1000,
                             places=12)


class ClosedFormVsAutodiffTest(parameterized.TestCase):

  @parameterized.parameters((60, 30), (100, 10), (1000, 10), (50, 50), (60, 5), (200, 100))
  def test_alpha_t_minus_is_autodiff_argmin(self, p, n_t):
    # Any N < p; the argmin must not depend on σ, ν, m, n_v, n_r, α_r (§3.2).
    plus, minus = theory.alpha_t_stationary(p, n_t)
    for sigma, nu, n_v, m, n_r, alpha_r in [(1.0, 0.5, 2, 3, 20, 0.2),
                                           (0.3, 2.0, 1, 4, 7, -0.4)]:
      problem = problems.mixed_linear_regression(p=p, n_t=n_t, n_v=n_v, n_r=n_r, m=m,
                                                 sigma=sigma, nu=nu)
      opt = theory.optimal_alpha_t(problem, alpha_r, -10.0, 10.0)
      self.assertAlmostEqual(float(opt.x), float(minus), places=7)
      worst = theory.minimize_scalar(
          lambda a: -theory.average_test_loss(problem, a, alpha_r), -10.0, 10.0)
      self.assertAlmostEqual(float(worst.x), float(plus), places=7)
    self.assertLess(float(minus), 0.0)
    self.assertGreater(float(plus), 0.0)
    self.assertLess(float(plus), 1.0)

  @parameterized.parameters((FIG2, 0.2), (FIG2, -1.0), (FIG3, 0.2), (FIG3, -0.3),
                            (dict(FIG2, sigma=0.3), 0.2), (dict(FIG2, sigma=2.0), -1.0),
                            (dict(FIG3, sigma=0.3), -0.3), (dict(FIG3, sigma=2.0), 0.2))
  def test_alpha_r_star_is_autodiff_argmin(self, kw, alpha_t):
    problem = problems.mixed_linear_regression(**kw)
    d = theory.distance(problem, alpha_t)
    closed = theory.alpha_r_optimal(d, sigma=problem.sigma, nu=problem.nu,
                                    p=problem.p, n_r=problem.n_r)
    numeric = theory.optimal_alpha_r(problem, alpha_t)
    self.assertAlmostEqual(float(closed), float(numeric.x), places=8)
    self.assertGreater(float(closed), 0.0)
    self.assertLess(float(closed), 1.0)

  def test_reference_alpha_r_star_values(self):
    p2 = problems.mixed_linear_regression(**FIG2)
    p3 = problems.mixed_linear_regression(**FIG3)
    self.assertAlmostEqual(float(theory.optimal_alpha_r(p2, 0.2).x), 0.0900, places=4)
    self.assertAlmostEqual(float(theory.optimal_alpha_r(p3, 0.2).x), 0.1468, places=4)

  def test_underparameterized_optimum_small_negative(self):
    problem = problems.mixed_linear_regression(**FIG3)
    opt = theory.optimal_alpha_t(problem, 0.2, -1.0, 1.0)
    self.assertAlmostEqual(float(opt.x), -0.0282, places=4)
    # Slope at 0: ∂D/∂α_t = 2pσ²/(n_v m) (§3.3), times h_r/2 for the loss.
    sizes = {k: FIG3[k] for k in ("p", "n_t", "n_v", "m", "sigma", "nu")}
    slope = jax.grad(lambda a: theory.distance_underparameterized(a, **sizes))(0.0)
    self.assertAlmostEqual(float(slope), 2 * 30 * 1.0 / 1000, places=12)

  def test_gradients_match_finite_differences_in_all_parameters(self):
    def loss(x):
      sigma, nu, p, n_t, alpha_t, alpha_r = x
      d = theory.distance_overparameterized(alpha_t, p=p, n_t=n_t, n_v=2, m=3,
                                            sigma=sigma, nu=nu, init_distance=0.7)
      return theory.average_test_loss_from_distance(d, alpha_r, sigma=sigma, nu=nu,
                                                    p=p, n_r=20)
    x = jnp.array([1.0, 0.5, 60.0, 30.0, -0.7, 0.2])
    jax.test_util.check_grads(loss, (x,), order=2, modes=("fwd", "rev"))


class DistanceStructureTest(parameterized.TestCase):
  """Exact structural properties of D(α_t) that hold in both regimes' formulas."""

  @parameterized.parameters(FIG2, FIG3)
  def test_distance_is_affine_in_sigma_squared(self, **sizes):
    # ω* − w_0 is linear in the label noise z (the data enter ω* linearly and z
    # is independent of everything else), so D = A + σ² C exactly in both
    # regimes; the formulas must keep that structure (σ against σ² breaks it).
    alphas = jnp.linspace(-1.5, 0.8, 7)
    sizes = dict(sizes, nu=0.7, omega0=0.1)
    d = {s: theory.distance(problems.mixed_linear_regression(**dict(sizes, sigma=s)),
                            alphas) for s in (0.0, 0.5, 1.0, 2.0)}
    self.assertTrue(np.all(np.asarray(d[1.0] - d[0.0]) > 0))   # σ does enter
    for s in (0.5, 2.0):
      np.testing.assert_allclose(d[s] - d[0.0], s**2 * (d[1.0] - d[0.0]), rtol=1e-12)

  def test_initial_distance_enters_only_when_overparameterized(self):
    # p > N: ω* is the minimiser nearest ω_0, D has (1 − N/p)‖ω_0 − w_0‖²; p < N:
    # ω* is unique and ω_0 does not matter. w_0 is not constant, so a formula
    # that used ‖ω_0‖² or dropped the (1 − N/p) factor fails.
    alphas = jnp.linspace(-1.0, 0.5, 4)
    for sizes, factor in ((FIG2, 1 - 6 / 60), (FIG3, 0.0)):
      w0 = np.linspace(-0.2, 0.3, sizes["p"])
      omega0 = w0 + 0.3 * np.sin(np.arange(sizes["p"]))
      moved = problems.mixed_linear_regression(**sizes, w0=w0, omega0=omega0)
      still = problems.mixed_linear_regression(**sizes, w0=w0, omega0=w0)
      np.testing.assert_allclose(
          theory.distance(moved, alphas) - theory.distance(still, alphas),
          factor * np.sum((omega0 - w0) ** 2), rtol=1e-12, atol=1e-14)

  def test_noise_free_overparameterized_loss_is_flat_in_alpha_t(self):
    problem = problems.mixed_linear_regression(**dict(FIG2, sigma=0.0))
    values = theory.average_test_loss(problem, jnp.linspace(-2, 2, 9), 0.2)
    np.testing.assert_allclose(values, values[0], rtol=1e-14)


class WishartMomentsTest(parameterized.TestCase):
  """γ_k, μ_k against float64 Monte Carlo (4 standard errors)."""

  @parameterized.parameters((7, 5, -0.5), (30, 5, 0.3), (12, 40, 0.8))
  def test_moments_monte_carlo(self, p, n, alpha):
    draws = 40_000
    x = jax.random.normal(jax.random.key(p * 1000 + n), (draws, n, p))
    hmat = jnp.einsum("bnp,bnq->bpq", x, x) / n
    a = jnp.eye(p) - alpha * hmat
    a2 = a @ a
    tr = lambda m: jnp.trace(m, axis1=-2, axis2=-1)  # noqa: E731
    samples = {
        "mu2": tr(hmat @ hmat) / p,
        "mu3": tr(hmat @ hmat @ hmat) / p,
        "gamma1": tr(a2 @ hmat) / p,
        "gamma2": tr(hmat) * tr(a2) / p**2,
        "gamma3": tr(a2) ** 2 / p**2,
        "gamma4": tr(a2 @ a2) / p,
        "h": tr(a2) / p,
    }
    formulas = {
        "mu2": _wishart.mu2(p, n), "mu3": _wishart.mu3(p, n),
        "gamma1": _wishart.gamma1(alpha, p, n), "gamma2": _wishart.gamma2(alpha, p, n),
        "gamma3": _wishart.gamma3(alpha, p, n), "gamma4": _wishart.gamma4(alpha, p, n),
        "h": _wishart.h(alpha, p, n),
    }
    for name, s in samples.items():
      mean, se = float(jnp.mean(s)), float(jnp.std(s) / np.sqrt(draws))
      self.assertLess(abs(mean - float(formulas[name])), 4 * se + 1e-12,
                      msg=f"{name}: MC {mean} ± {se}, formula {float(formulas[name])}")


def _chi2_moments(k: int, dof: int) -> list[float]:
  """E[r^j], j = 0..k, for r ~ χ²(dof): dof(dof + 2)…(dof + 2j − 2)."""
  return [float(np.prod([dof + 2 * i for i in range(j)])) for j in range(k + 1)]


def _expect(poly: np.polynomial.Polynomial, moments: list[float]) -> float:
  """E[poly(r)] from the moments of r."""
  return float(sum(c * moments[j] for j, c in enumerate(poly.coef)))


class WishartExactCasesTest(parameterized.TestCase):
  """Every moment formula, noise-free: where H has a closed law, and by exact
  Gaussian quadrature on small matrices.

  p = 1: H = χ²(n)/n (a scalar h, A = 1 − αh). n = 1: H = xxᵀ, one eigenvalue
  r = ‖x‖² ~ χ²(p) and p − 1 zeros, so tr A² = (1 − αr)² + p − 1.
  """

  @parameterized.parameters((1, 5, -0.7), (1, 2, 0.3), (1, 40, 1.1))
  def test_p_equals_one(self, p, n, alpha):
    P = np.polynomial.Polynomial
    m = [v / n**j for j, v in enumerate(_chi2_moments(4, n))]   # E h^j
    a = P([1.0, -alpha])                                        # A = 1 − αh
    hh = P([0.0, 1.0])
    expected = {
        "mu2": _expect(hh**2, m), "mu3": _expect(hh**3, m), "mu4": _expect(hh**4, m),
        "h": _expect(a**2, m), "gamma1": _expect(a**2 * hh, m),
        "gamma2": _expect(hh * a**2, m), "gamma3": _expect(a**4, m),
        "gamma4": _expect(a**4, m),
    }
    self._check(expected, p, n, alpha)

  @parameterized.parameters((7, 1, -0.5), (30, 1, 0.2), (2, 1, 0.9))
  def test_n_equals_one(self, p, n, alpha):
    P = np.polynomial.Polynomial
    m = _chi2_moments(4, p)                                     # E r^j
    r = P([0.0, 1.0])
    tr_a2 = P([1.0, -alpha]) ** 2 + (p - 1)
    expected = {
        "mu2": _expect(r**2, m) / p, "mu3": _expect(r**3, m) / p,
        "mu4": _expect(r**4, m) / p, "h": _expect(tr_a2, m) / p,
        "gamma1": _expect(P([1.0, -alpha]) ** 2 * r, m) / p,
        "gamma2": _expect(r * tr_a2, m) / p**2,
        "gamma3": _expect(tr_a2**2, m) / p**2,
        "gamma4": _expect(P([1.0, -alpha]) ** 4 + (p - 1), m) / p,
    }
    self._check(expected, p, n, alpha)

  @parameterized.parameters((2, 2, -0.7), (3, 2, 0.4), (2, 3, 1.3), (4, 2, -0.3),
                            (2, 4, 0.8))
  def test_small_matrices_by_exact_gaussian_quadrature(self, p, n, alpha):
    # Every moment is a polynomial of degree ≤ 8 in each entry of X, so a
    # 5-node Gauss–Hermite rule per entry (exact to degree 9) gives its exact
    # expectation. With n, p ≥ 2 this pins the (n − 1)(p − 1) cross terms that
    # the p = 1 and n = 1 cases cannot see.
    nodes, weights = np.polynomial.hermite_e.hermegauss(5)
    weights = weights / np.sqrt(2 * np.pi)
    idx = np.indices((5,) * (n * p)).reshape(n * p, -1).T    # every node tuple
    x = nodes[idx].reshape(-1, n, p)
    weight = np.prod(weights[idx], axis=1)
    hm = np.einsum("bnp,bnq->bpq", x, x) / n
    a2 = (np.eye(p) - alpha * hm) @ (np.eye(p) - alpha * hm)
    tr = lambda m: np.trace(m, axis1=-2, axis2=-1)  # noqa: E731
    h2 = hm @ hm
    samples = {
        "mu2": tr(h2) / p, "mu3": tr(h2 @ hm) / p, "mu4": tr(h2 @ h2) / p,
        "h": tr(a2) / p, "gamma1": tr(a2 @ hm) / p, "gamma2": tr(hm) * tr(a2) / p**2,
        "gamma3": tr(a2) ** 2 / p**2, "gamma4": tr(a2 @ a2) / p,
    }
    self._check({k: float(weight @ v) for k, v in samples.items()}, p, n, alpha)

  def _check(self, expected, p, n, alpha):
    for name, value in expected.items():
      fn = getattr(_wishart, name)
      got = fn(p, n) if name.startswith("mu") else fn(alpha, p, n)
      np.testing.assert_allclose(float(got), value, rtol=1e-12, err_msg=name)


class RegimeTest(absltest.TestCase):

  def test_interpolation_threshold_is_rejected_with_the_flag_name(self):
    with self.assertRaisesRegex(_checks.ConfigError, r"^p: must differ from n_v\*m = 6"):
      problems.mixed_linear_regression(p=6, n_t=3, n_v=2, n_r=4, m=3, sigma=1.0, nu=1.0)

  def test_regimes(self):
    self.assertEqual(problems.mixed_linear_regression(**FIG2).regime,
                     problems.OVERPARAMETERIZED)
    self.assertEqual(problems.mixed_linear_regression(**FIG3).regime,
                     problems.UNDERPARAMETERIZED)


class SpecificationTest(parameterized.TestCase):
  """mixed_linear_regression stores what it is given, in its dtype, or names the flag."""

  # n_v·m = 14 < p = 20 < n_t·m = 28: the regime and N must come from n_v, not n_t.
  SIZES = dict(p=20, n_t=4, n_v=2, n_r=5, m=7, sigma=0.25, nu=1.5)

  def test_fields_regime_and_vectors(self):
    w0 = [0.1 * (i - 7) for i in range(20)]
    spec = problems.mixed_linear_regression(**self.SIZES, w0=w0, omega0=-0.7)
    self.assertEqual((spec.p, spec.n_t, spec.n_v, spec.n_r, spec.m), (20, 4, 2, 5, 7))
    self.assertEqual(spec.num_validation, 14)
    self.assertEqual(spec.regime, problems.OVERPARAMETERIZED)
    self.assertEqual((float(spec.sigma), float(spec.nu)), (0.25, 1.5))
    # A vector is kept exactly (float64), a scalar fills every component, sign kept.
    np.testing.assert_array_equal(spec.w0, np.array(w0, np.float64))
    np.testing.assert_array_equal(spec.omega0, np.full(20, -0.7))
    for leaf in (spec.sigma, spec.nu, spec.w0, spec.omega0):
      self.assertEqual(leaf.dtype, np.float64)
    # σ = ν = 0 (noise-free, a single task) is allowed.
    problems.mixed_linear_regression(**dict(self.SIZES, sigma=0.0, nu=0.0))

  def test_dtype_applies_to_every_leaf(self):
    spec = problems.mixed_linear_regression(**self.SIZES, w0=0.3, omega0=[0.5] * 20,
                                            dtype=jnp.float32)
    for leaf in (spec.sigma, spec.nu, spec.w0, spec.omega0):
      self.assertEqual(leaf.dtype, np.float32)

  @parameterized.named_parameters(
      ("p", dict(p=0), "p", "must be an integer >= 1 (got 0)"),
      ("n_t", dict(n_t=0), "n_t", "must be an integer >= 1 (got 0)"),
      ("n_v", dict(n_v=0), "n_v", "must be an integer >= 1 (got 0)"),
      ("n_r", dict(n_r=0), "n_r", "must be an integer >= 1 (got 0)"),
      ("m", dict(m=0), "m", "must be an integer >= 1 (got 0)"),
      ("sigma", dict(sigma=-0.1), "sigma", "must be a finite real number >= 0 (got -0.1)"),
      ("nu", dict(nu=-0.1), "nu", "must be a finite real number >= 0 (got -0.1)"),
      ("w0_length", dict(w0=[1.0, 2.0]), "w0",
       "must be a scalar or a vector of length p=20 (got shape (2,))"),
      ("w0_length_one", dict(w0=[1.0]), "w0",
       "must be a scalar or a vector of length p=20 (got shape (1,))"),
      ("omega0_length", dict(omega0=np.zeros((20, 1))), "omega0",
       "must be a scalar or a vector of length p=20 (got shape (20, 1))"),
      ("omega0_nan", dict(omega0=[0.0] * 19 + [np.nan]), "omega0",
       "must contain only finite values"),
      ("w0_inf", dict(w0=np.inf), "w0", "must contain only finite values"),
  )
  def test_invalid_value_names_the_flag_and_range(self, override, name, detail):
    with self.assertRaises(_checks.ConfigError) as cm:
      problems.mixed_linear_regression(**dict(self.SIZES, **override))
    self.assertEqual(str(cm.exception), f"{name}: {detail}")


if __name__ == "__main__":
  absltest.main()
