"""Sampler and linear MAML: closed forms against autodiff, references and Monte Carlo."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from negmeta import _prng, problems
from negmeta.linear import _maml, _sampler
from negmeta.theory import linear as theory

OVER = dict(p=12, n_t=6, n_v=2, n_r=5, m=3, sigma=0.7, nu=1.3, w0=0.4, omega0=-0.2)
WIDE = dict(OVER, p=40)   # J = 2N + 1 = 13 or 4N + 2 = 26 generators < p: reduces
UNDER = dict(p=5, n_t=3, n_v=4, n_r=6, m=7, sigma=0.7, nu=1.3, w0=0.4, omega0=-0.2)


def _problem(**kw):
  return problems.mixed_linear_regression(**kw)


class SamplerTest(absltest.TestCase):

  def test_shapes_dtype_and_determinism(self):
    problem = _problem(**OVER)
    batch = _sampler.sample_tasks(jax.random.key(0), problem, 4, 6, 2)
    chex.assert_shape([batch.w, batch.x_a, batch.y_a, batch.x_b, batch.y_b],
                      [(4, 12), (4, 6, 12), (4, 6), (4, 2, 12), (4, 2)])
    chex.assert_type(batch.x_a, jnp.float64)
    again = _sampler.sample_tasks(jax.random.key(0), problem, 4, 6, 2)
    chex.assert_trees_all_equal(batch, again)
    other = _sampler.sample_tasks(jax.random.key(1), problem, 4, 6, 2)
    self.assertFalse(np.allclose(batch.x_a, other.x_a))

  def test_vmappable_over_runs(self):
    problem = _problem(**OVER)
    keys = jax.random.split(jax.random.key(3), 5)
    batched = jax.vmap(_sampler.sample_meta_training, in_axes=(0, None))(keys, problem)
    single = _sampler.sample_meta_training(keys[2], problem)
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[2], batched), single, rtol=1e-14)

  def test_moments(self):
    # w ~ N(w_0, ν²/p I), x ~ N(0, I), y − wᵀx ~ N(0, σ²): 4-s.e. checks.
    problem = _problem(**OVER)
    t, n = 20_000, 3
    b = _sampler.sample_tasks(jax.random.key(7), problem, t, n, 1)
    dev = np.asarray(b.w - problem.w0)
    checks = {
        "E w - w0": (dev.mean(), dev.std() / np.sqrt(dev.size), 0.0),
        "E|w-w0|^2": ((dev**2).sum(1).mean(), (dev**2).sum(1).std() / np.sqrt(t), 1.3**2),
        "E x^2": ((np.asarray(b.x_a) ** 2).mean(),
                  (np.asarray(b.x_a) ** 2).std() / np.sqrt(b.x_a.size), 1.0),
    }
    noise = np.asarray(b.y_a - jnp.einsum("tnp,tp->tn", b.x_a, b.w))
    checks["E z^2"] = ((noise**2).mean(), (noise**2).std() / np.sqrt(noise.size), 0.49)
    for name, (mean, se, expected) in checks.items():
      self.assertLess(abs(mean - expected), 4 * se, msg=f"{name}: {mean} ± {se}")


class LinearMamlTest(parameterized.TestCase):

  def test_inner_step_is_a_gradient_step_of_the_half_mse(self):
    problem = _problem(**OVER)
    b = _sampler.sample_tasks(jax.random.key(1), problem, 1, 6, 1)
    omega = jax.random.normal(jax.random.key(2), (12,))
    grad = jax.grad(_maml.squared_loss)(omega, b.x_a[0], b.y_a[0])
    for alpha in (-1.3, 0.0, 0.45):
      chex.assert_trees_all_close(_maml.inner_step(omega, b.x_a[0], b.y_a[0], alpha),
                                  omega - alpha * grad, rtol=1e-13)

  @parameterized.named_parameters(("over", OVER), ("under", UNDER))
  def test_meta_design_reproduces_the_meta_loss(self, kw):
    problem = _problem(**kw)
    train = _sampler.sample_meta_training(jax.random.key(4), problem)
    design = _maml.meta_design(train)
    omega = jax.random.normal(jax.random.key(5), (problem.p,))
    for alpha in (-0.8, 0.0, 0.3):
      z, u = design.at(alpha)
      n = z.shape[0]
      self.assertAlmostEqual(float(jnp.sum((z @ omega - u) ** 2) / (2 * n)),
                             float(_maml.meta_loss(omega, train, alpha)), places=11)

  @parameterized.named_parameters(("over", OVER), ("under", UNDER))
  def test_meta_solution_path_is_the_nearest_minimiser(self, kw):
    problem = _problem(**kw)
    train = _sampler.sample_meta_training(jax.random.key(6), problem)
    design = _maml.meta_design(train)
    alphas = jnp.array([-1.5, -0.2, 0.0, 0.25, 0.6])
    path = _maml.meta_solution_path(design, problem.omega0, alphas)
    chex.assert_shape(path.omega, (5, problem.p))
    for alpha, omega in zip(alphas, path.omega):
      z, u = design.at(alpha)
      reference = _maml.min_distance_solution(z, u, problem.omega0)
      chex.assert_trees_all_close(omega, reference, atol=1e-11)
      # Stationary: the autodiff meta-gradient vanishes at ω*.
      grad = jax.grad(_maml.meta_loss)(omega, train, alpha)
      self.assertLess(float(jnp.max(jnp.abs(grad))), 1e-10)
      if problem.regime == problems.OVERPARAMETERIZED:
        # Nearest to ω_0: ω* − ω_0 lies in the row space of Z (orthogonal to its
        # null space), so adding any null-space vector moves away from ω_0.
        _, s, vt = jnp.linalg.svd(z)
        null = vt[z.shape[0]:]
        self.assertLess(float(jnp.max(jnp.abs(null @ (omega - problem.omega0)))), 1e-11)

  @parameterized.parameters(OVER, UNDER)
  def test_singular_meta_regression_is_nan_and_leaves_the_others(self, **kw):
    # Where Z(α_t = 1) loses rank its Gram matrix is singular, so ω* and the
    # pivot ratio are NaN there (marked, not crashed); other grid values solve.
    # Only part of Z(1) vanishes (two rows, or one column), so one pivot is 0
    # and the others are not: "any pivot ≤ 0" is what marks the solve.
    problem = _problem(**kw)
    design = _maml.meta_design(_sampler.sample_meta_training(jax.random.key(7), problem))
    if problem.regime == problems.OVERPARAMETERIZED:
      design = design._replace(z1=design.z1.at[:2].set(design.z0[:2]))
    else:
      design = design._replace(z1=design.z1.at[:, 1].set(design.z0[:, 1]))
    alphas = jnp.array([-0.5, 1.0, 0.3])
    path = _maml.meta_solution_path(design, problem.omega0, alphas)
    self.assertTrue(bool(jnp.all(jnp.isnan(path.omega[1]))))
    self.assertTrue(bool(jnp.isnan(path.rcond[1])))
    for g in (0, 2):
      z, u = design.at(alphas[g])
      chex.assert_trees_all_close(path.omega[g], _maml.min_distance_solution(
          z, u, problem.omega0), atol=1e-10)
      self.assertTrue(0 < float(path.rcond[g]) <= 1)

  def test_underparameterized_solution_ignores_omega0(self):
    train = _sampler.sample_meta_training(jax.random.key(8), _problem(**UNDER))
    design = _maml.meta_design(train)
    a = _maml.meta_solution_path(design, jnp.zeros(5), jnp.array([0.3]))
    b = _maml.meta_solution_path(design, jnp.full(5, 9.0), jnp.array([0.3]))
    chex.assert_trees_all_close(a.omega, b.omega, atol=1e-11)

  def test_protocol_loss_matches_explicit_loops(self):
    problem = _problem(**OVER)
    test = _sampler.sample_meta_test(jax.random.key(9), problem, 4, 7)
    omega = jax.random.normal(jax.random.key(10), (3, 12))
    alpha_r = jnp.array([0.1, -0.3, 0.7])
    got = _maml.protocol_test_loss(omega, test, alpha_r)
    for g in range(3):
      per_task = [_maml.squared_loss(
          _maml.inner_step(omega[g], test.x_a[t], test.y_a[t], alpha_r[g]),
          test.x_b[t], test.y_b[t]) for t in range(4)]
      self.assertAlmostEqual(float(got[g]), float(np.mean(per_task)), places=12)

  @parameterized.named_parameters(
      ("n_t_below_p", OVER),                      # H_t singular: zero eigenvalues
      ("n_t_above_p", dict(UNDER, n_t=9)))        # H_t full rank (p × p branch)
  def test_inner_step_gap(self, kw):
    problem = _problem(**kw)
    train = _sampler.sample_meta_training(jax.random.key(11), problem)
    n_t = kw["n_t"]
    lam = np.concatenate([np.linalg.eigvalsh(np.asarray(x.T @ x) / n_t)
                          for x in train.x_a])
    alphas = jnp.array([-1.0, 0.0, 1.0 / lam.max(), 0.37])
    got = _maml.inner_step_gap(train, alphas)
    expected = [np.min(np.abs(1 - a * lam)) for a in np.asarray(alphas)]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    self.assertLess(float(got[2]), 1e-12)


class ExactTestLossTest(parameterized.TestCase):
  """The §1.5 reduction: exact in expectation over the new task and its data."""

  def test_equals_theory_formula_to_float64_precision(self):
    problem = _problem(**OVER)
    omega = jax.random.normal(jax.random.key(12), (7, 12))
    alpha_r = jnp.linspace(-0.5, 1.5, 7)
    sim = _maml.exact_test_loss(omega, problem, alpha_r)
    d = jnp.sum((omega - problem.w0) ** 2, axis=1)
    th = theory.average_test_loss_from_distance(d, alpha_r, sigma=problem.sigma,
                                                nu=problem.nu, p=12, n_r=5)
    np.testing.assert_allclose(sim, th, rtol=1e-14)

  def test_alpha_r_structure_is_exact(self):
    # L(α_r) − σ²/2(1 + α_r² p/n_r) = h_r(α_r)/2 · C with one C for every α_r.
    problem = _problem(**OVER)
    omega = jax.random.normal(jax.random.key(13), (12,))
    alpha_r = jnp.linspace(-1.0, 2.0, 31)
    loss = _maml.exact_test_loss(jnp.broadcast_to(omega, (31, 12)), problem, alpha_r)
    c = 2 * (loss - theory.adaptation_noise(alpha_r, sigma=0.7, p=12, n_r=5)) / theory.h(
        alpha_r, 12, 5)
    np.testing.assert_allclose(c, 1.3**2 + jnp.sum((omega - 0.4) ** 2), rtol=1e-13)

  @parameterized.parameters(-0.4, 0.2, 0.9)
  def test_matches_the_protocol_estimator_in_expectation(self, alpha_r):
    # Many new tasks evaluated with the paper's protocol: mean within 4 s.e.
    problem = _problem(**OVER)
    omega = jax.random.normal(jax.random.key(14), (1, 12))
    keys = jax.random.split(jax.random.key(15), 400)
    per_batch = jax.vmap(lambda k: _maml.protocol_test_loss(
        omega, _sampler.sample_meta_test(k, problem, 50, 20), jnp.array([alpha_r]))[0])(keys)
    mean, se = float(per_batch.mean()), float(per_batch.std() / np.sqrt(400))
    exact = float(_maml.exact_test_loss(omega[0], problem, alpha_r))
    self.assertLess(abs(mean - exact), 4 * se, msg=f"{mean} ± {se} vs {exact}")
    self.assertLess(se, 0.01 * exact)   # the check has power


class ReducedProtocolTest(parameterized.TestCase):
  """Test points drawn in the span of the error directions: same estimator law."""

  def _setup(self, vary_r, kw=OVER, seed=20):
    problem = _problem(**kw)
    alpha_t = jnp.linspace(-1.5, 1.0, 6)
    alpha_r = jnp.linspace(-0.3, 0.6, 6) if vary_r else jnp.full(6, 0.3)
    plan = _maml.ProtocolPlan(vary_t=True, vary_r=vary_r)
    train = _sampler.sample_meta_training(jax.random.key(seed), problem)
    design = _maml.meta_design(train)
    solution = _maml.meta_solution_path(design, problem.omega0, alpha_t)
    span = _maml.omega_span(design, solution, problem.omega0, alpha_t, plan)
    adapt = _sampler.sample_meta_test(jax.random.key(seed + 1), problem, 9, 0)
    return problem, solution.omega, alpha_r, plan, span, adapt

  @staticmethod
  def _errors(omega, adapt, alpha_r):
    # w_t − θ_{t,g} from the explicit adaptation step, [T, G, p].
    theta = jax.vmap(lambda om, a: jax.vmap(
        lambda x, y: _maml.inner_step(om, x, y, a))(adapt.x_a, adapt.y_a))(omega, alpha_r)
    return adapt.w[:, None, :] - jnp.swapaxes(theta, 0, 1)

  @parameterized.product(vary_r=(False, True), kw=(OVER, WIDE))
  def test_generators_reproduce_every_error_direction(self, vary_r, kw):
    problem, omega, alpha_r, plan, span, adapt = self._setup(vary_r, kw)
    ref, basis, coords = span
    np.testing.assert_allclose(ref + coords @ basis.T, omega, atol=1e-12)
    gens, coef = _maml.protocol_generators(*span, adapt, alpha_r, plan)
    self.assertEqual(gens.shape[-1], plan.num_generators(problem.p, problem.num_validation))
    np.testing.assert_allclose(jnp.einsum("tpj,jg->tgp", gens, coef),
                               self._errors(omega, adapt, alpha_r), atol=1e-12)

  def test_fixed_alpha_t_uses_two_generators(self):
    problem = _problem(**OVER)
    plan = _maml.ProtocolPlan(vary_t=False, vary_r=True)
    omega = jnp.broadcast_to(jax.random.normal(jax.random.key(3), (12,)), (4, 12))
    alpha_r = jnp.linspace(0.0, 0.6, 4)
    solution = _maml.MetaSolution(omega=omega, rcond=jnp.ones(4), dual=jnp.zeros((4, 0)))
    span = _maml.omega_span(None, solution, problem.omega0, jnp.full(4, 0.3), plan)
    adapt = _sampler.sample_meta_test(jax.random.key(4), problem, 5, 0)
    gens, coef = _maml.protocol_generators(*span, adapt, alpha_r, plan)
    self.assertEqual(gens.shape, (5, 12, 2))
    np.testing.assert_allclose(jnp.einsum("tpj,jg->tgp", gens, coef),
                               self._errors(omega, adapt, alpha_r), atol=1e-12)

  @parameterized.parameters((5, 5), (7, 4))
  def test_psd_cholesky(self, size, rank):
    a = jax.random.normal(jax.random.key(size), (3, size, rank))
    k = a @ jnp.swapaxes(a, 1, 2)                       # rank-deficient when rank < size
    chol = _maml.psd_cholesky(k)
    np.testing.assert_allclose(chol @ jnp.swapaxes(chol, 1, 2), k, atol=1e-12)
    np.testing.assert_array_equal(jnp.triu(chol, 1), 0.0)
    if rank == size:
      np.testing.assert_allclose(chol, jnp.linalg.cholesky(k), atol=1e-12)

  def test_adaptation_data_do_not_depend_on_the_test_points(self):
    problem = _problem(**OVER)
    a = _sampler.sample_meta_test(jax.random.key(5), problem, 4, 0)
    b = _sampler.sample_meta_test(jax.random.key(5), problem, 4, 30)
    chex.assert_trees_all_equal((a.w, a.x_a, a.y_a), (b.w, b.x_a, b.y_a))

  @staticmethod
  def _explicit_statistics(v, x_r, z, sigma):
    """L, F₁, F₂ of `adaptation_coordinates` computed from explicit data."""
    p, s = v.shape
    n_r = x_r.shape[0]
    chol = jnp.linalg.cholesky(v.T @ v)
    v_o = v @ jnp.linalg.inv(chol).T                                      # V = V_o Lᵀ
    full, _ = jnp.linalg.qr(jnp.concatenate([v_o, jnp.eye(p)], 1))
    w_perp = full[:, s:p]
    b = jnp.concatenate([x_r @ v_o, z[:, None] / sigma], 1)               # [n_r, s+1]
    if n_r >= s + 1:
      f1 = jnp.linalg.cholesky(b.T @ b)
      o = b @ jnp.linalg.inv(f1).T
    else:
      f1, o = b.T, jnp.eye(n_r)
    c = o.T @ (x_r @ w_perp)                                              # OᵀU
    f2 = jnp.linalg.cholesky(c @ c.T) if p - s >= c.shape[0] else c
    return chol, f1, f2

  @parameterized.parameters((40, 20), (40, 5), (16, 20), (16, 5))
  def test_adaptation_coordinates_match_explicit_data(self, p, n_r):
    # Built from the explicit data's own statistics, the coordinates of V, H_rV
    # and X_rᵀz/n_r have the same Gram matrix as the p-vectors: exactly, for
    # each branch (n_r ≥ or < s+1 = 14, p − s ≥ or < r₁).
    rng = np.random.default_rng(p + n_r)
    s, sigma = 13, 0.7
    v = jnp.asarray(rng.standard_normal((p, s)))
    x_r = jnp.asarray(rng.standard_normal((n_r, p)))
    z = sigma * jnp.asarray(rng.standard_normal(n_r))
    coords = _maml.adaptation_coordinates(
        *self._explicit_statistics(v, x_r, z, sigma), sigma, n_r)
    h = x_r.T @ x_r / n_r
    explicit = jnp.concatenate([v, h @ v, (x_r.T @ z / n_r)[:, None]], 1)
    built = jnp.concatenate([coords[0], coords[1], coords[2][:, None]], 1)
    self.assertEqual(built.shape[0], s + min(min(s + 1, n_r), p - s))
    np.testing.assert_allclose(built.T @ built, explicit.T @ explicit,
                               rtol=1e-10, atol=1e-10)

  @parameterized.parameters((60, 20, 13), (40, 5, 13), (16, 20, 13), (9, 4, 1))
  def test_adaptation_statistics_moments(self, p, n_r, s):
    # The sampled coordinates of V, H_rV and X_rᵀz/n_r have the moments of the
    # real ones: E[(H_rV)ᵀH_rV] = VᵀV (n_r + p + 1)/n_r (Wishart second
    # moment), E[Vᵀ H_rV] = VᵀV, E‖X_rᵀz/n_r‖² = σ²p/n_r, E[(H_rV)ᵀX_rᵀz] = 0.
    # 200k draws: every entry within 4.5 s.e.; a one-off error in F₂'s degrees
    # of freedom moves the first by ≈ 1/(n_r + p + 1) ≈ 15 s.e. here.
    n, sigma = 200_000, 0.7
    rng = np.random.default_rng(p + n_r)
    v_true = jnp.asarray(rng.standard_normal((p, s)))
    q, a = v_true[:, :s - 1], v_true[:, s - 1]
    chol = _maml.append_cholesky(_maml.psd_cholesky(q.T @ q), a @ q, a @ a)
    f1, f2 = jax.jit(lambda k: _prng.wishart_factors(
        k, _maml.adaptation_specs(s, n_r, p), (n,)))(jax.random.key(p))
    v, hv, xz = _maml.adaptation_coordinates(chol, f1, f2, sigma, n_r)
    gram = v_true.T @ v_true
    checks = [(jnp.swapaxes(hv, 1, 2) @ hv, gram * (n_r + p + 1) / n_r),
              (jnp.swapaxes(v, 1, 2) @ hv, gram),
              (jnp.sum(xz**2, -1), sigma**2 * p / n_r),
              (jnp.einsum("tds,td->ts", hv, xz), jnp.zeros(s))]
    for draws, mean in checks:
      se = np.asarray(draws.std(0)) / np.sqrt(n)
      np.testing.assert_array_less(np.abs(np.asarray(draws.mean(0)) - mean),
                                   4.5 * se + 1e-12)

  def test_reduced_protocol_needs_span_below_p(self):
    problem = _problem(**OVER)                                   # s = 2N + 1 = 13 > p
    plan = _maml.ProtocolPlan(vary_t=True, vary_r=False)
    self.assertFalse(plan.reduces(problem.p, problem.num_validation))
    with self.assertRaisesRegex(ValueError, "k \\+ 1 < p"):
      _maml.protocol_test_loss_reduced(
          jax.random.key(0), jnp.zeros(12), jnp.ones((12, 11)), jnp.ones((3, 11)),
          problem, jnp.full(3, 0.2), 2, 5, plan)

  @parameterized.parameters(False, True)
  def test_append_cholesky_matches_psd_cholesky(self, singular):
    q = jax.random.normal(jax.random.key(40), (9, 4))
    if singular:
      q = q.at[:, 2].set(0.0)                             # QᵀQ has an exact zero pivot
    a = jax.random.normal(jax.random.key(41), (5, 9))
    appended = _maml.append_cholesky(_maml.psd_cholesky(q.T @ q), a @ q,
                                     jnp.sum(a**2, -1))
    v = jnp.concatenate([jnp.broadcast_to(q, (5, 9, 4)), a[..., None]], -1)
    gram = jnp.swapaxes(v, 1, 2) @ v
    np.testing.assert_allclose(appended, _maml.psd_cholesky(gram), atol=1e-12)
    np.testing.assert_allclose(appended @ jnp.swapaxes(appended, 1, 2), gram,
                               atol=1e-12)

  def test_append_cholesky_edge_cases(self):
    # a in span(Q): the new pivot is 0 (clamped, not NaN from a rounding-negative
    # square); no Q at all (k = 0): L = [‖a‖].
    q = jax.random.normal(jax.random.key(42), (9, 3))
    a = q @ jnp.array([[0.5, -1.0, 2.0]]).T[:, 0]
    appended = _maml.append_cholesky(_maml.psd_cholesky(q.T @ q), (a @ q)[None],
                                     jnp.sum(a**2)[None])
    self.assertFalse(bool(jnp.any(jnp.isnan(appended))))
    self.assertLess(float(appended[0, 3, 3]), 1e-6)
    v = jnp.concatenate([q, a[:, None]], 1)
    np.testing.assert_allclose(appended[0] @ appended[0].T, v.T @ v, atol=1e-10)
    alone = _maml.append_cholesky(jnp.zeros((0, 0)), jnp.zeros((2, 0)),
                                  jnp.array([4.0, 9.0]))
    np.testing.assert_allclose(alone, [[[2.0]], [[3.0]]])

  @parameterized.parameters(
      dict(vary_t=True, vary_r=False, kw=WIDE),
      dict(vary_t=True, vary_r=True, kw=WIDE),
      dict(vary_t=True, vary_r=False, kw=dict(WIDE, n_r=20)),
      dict(vary_t=True, vary_r=True, kw=dict(WIDE, p=16, n_r=20)),
      dict(vary_t=False, vary_r=True, kw=OVER),
      dict(vary_t=True, vary_r=False, kw=dict(WIDE, n_r=20), points=10))
  def test_same_law_as_the_direct_protocol(self, vary_t, vary_r, kw, points=20):
    # For one run's ω*_g, both estimators average ½(y − θᵀx)² over freshly
    # drawn tasks, adaptation data and test points: both means equal the
    # exact expectation (`exact_test_loss`, within 4 s.e.), and their spreads
    # and the correlation between two grid values agree (within 4 s.e.).
    # 3000 draws of 9 tasks × `points` points each. The cases take every branch
    # of the sufficient statistics: n_r < or ≥ s+1, p − s < or ≥ r₁, J ≤ or
    # > d, α_t fixed (s = 1), and the test points' Wishart factor by Bartlett
    # (min(J, d) + 1 ≤ points: 14, 19, 14, 17, 3 ≤ 20) or point by point
    # (14 > 10, last case). `test_adaptation_statistics_moments` checks the
    # adaptation part alone, with far more power.
    problem, omega, alpha_r, _, span, _ = self._setup(vary_r, kw)
    plan = _maml.ProtocolPlan(vary_t=vary_t, vary_r=vary_r)
    if not vary_t:
      omega = jnp.broadcast_to(omega[2], omega.shape)
      solution = _maml.MetaSolution(omega=omega, rcond=jnp.ones(6),
                                    dual=jnp.zeros((6, 0)))
      span = _maml.omega_span(None, solution, problem.omega0, jnp.full(6, 0.3), plan)
    self.assertTrue(plan.reduces(problem.p, problem.num_validation))
    n, tasks = 3000, 9
    reduced = jax.vmap(lambda k: _maml.protocol_test_loss_reduced(
        k, *span, problem, alpha_r, tasks, points, plan))(
            jax.random.split(jax.random.key(30), n))
    direct = jax.vmap(lambda k: _maml.protocol_test_loss(
        omega, _sampler.sample_meta_test(k, problem, tasks, points), alpha_r))(
            jax.random.split(jax.random.key(31), n))
    expected = _maml.exact_test_loss(omega, problem, alpha_r)
    for draws in (reduced, direct):
      se = draws.std(0) / np.sqrt(n)
      np.testing.assert_array_less(jnp.abs(draws.mean(0) - expected), 4 * se)
    ratio = reduced.std(0) / direct.std(0)
    # s.e. of the ratio of two independent sample s.d.'s ≈ √(2(κ−1)/(4n)); the
    # estimators are averages of many squares, near normal (κ ≈ 3); allow κ ≤ 4.
    np.testing.assert_array_less(jnp.abs(ratio - 1.0), 4 * np.sqrt(2 * 3 / (4 * n)))
    corr = [np.corrcoef(d[:, 0], d[:, -1])[0, 1] for d in (reduced, direct)]
    self.assertLess(abs(corr[0] - corr[1]),
                    4 * np.sqrt(2) * (1 - min(corr) ** 2) / np.sqrt(n) + 1e-12)


if __name__ == "__main__":
  absltest.main()
