"""Convergence maps over (α, β): engine, classification, theory agreement, binary.

The linear maps run the real presets on smaller grids (17 α × 24 β, every cell a
500-step full-batch run); they are computed once per (preset, method) and shared.
"""

import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import QuadMesh
from matplotlib.colors import to_rgb
from absl.testing import absltest, flagsaver, parameterized

from negmeta import _checks, io, maml
from negmeta.convergence import experiment, maps, predict, problems
from negmeta.theory import convergence, hessian

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
from experiments import convergence_map  # noqa: E402

BINARY = os.path.join(os.path.dirname(__file__), os.pardir, "experiments",
                      "convergence_map.py")
LINEAR_CASES = (("takagi_maml", "takagi_linear", "maml"),
                ("takagi_fomaml", "takagi_linear", "fomaml"),
                ("mixed_maml", "mixed_linear", "maml"),
                ("mixed_fomaml", "mixed_linear", "fomaml"))
C, N, D = maps.CONVERGED, maps.NOT_YET_CONVERGED, maps.DIVERGED


@functools.lru_cache(maxsize=None)
def linear_map(preset, method):
  return experiment.run(experiment.preset(preset, method=method, alpha_num=17,
                                          beta_num=24))


def _small_mixed_linear(**kw):
  """Three 4-d regression tasks, separate support (5) and query (6) data."""
  return problems.mixed_linear(jax.random.key(3), p=4, num_tasks=3, n_support=5,
                               n_query=6, sigma=0.3, nu=1.0, w0=0.5, **kw)


def _log_step(beta):
  return math.log(beta[-1] / beta[0]) / (len(beta) - 1)


class ProblemsTest(absltest.TestCase):
  """The problem constructors draw the documented data (recomputed in NumPy)."""

  def assertMean(self, sample, expected, name):
    """The sample mean is within 4 standard errors of `expected`."""
    sample = np.ravel(np.asarray(sample, np.float64))
    se = sample.std() / np.sqrt(sample.size)
    self.assertLess(abs(sample.mean() - expected), 4 * se + 1e-12,
                    msg=f"{name}: {sample.mean()} ± {se}, expected {expected}")

  def assertUncorrelated(self, a, b, name):
    """|corr(a, b)| < 4/√n: e.g. support and query draws use different keys."""
    a, b = np.ravel(np.asarray(a)), np.ravel(np.asarray(b))
    r = np.corrcoef(a, b)[0, 1]
    self.assertLess(abs(r), 4 / np.sqrt(a.size), msg=f"{name}: corr {r}")

  def test_takagi_features_targets_and_inputs(self):
    # Features (x, 1), y = a·x + b exactly, one set for support and query, θ_0 = 0:
    # the minimiser is θ = (a, b); x ~ U[−5, 5] (mean 0, E x² = 25/3).
    n = 4000
    for a, b in ((2.0, 3.0), (-0.7, 1.5)):
      prob = problems.takagi_linear(jax.random.key(1), slope=a, intercept=b,
                                    num_points=n)
      batch = prob.batch
      chex.assert_shape([batch.x_support, batch.y_support], [(1, n, 2), (1, n)])
      x = np.asarray(batch.x_support[0, :, 0])
      np.testing.assert_array_equal(batch.x_support[0, :, 1], np.ones(n))
      np.testing.assert_allclose(batch.y_support[0], a * x + b, rtol=1e-14)
      np.testing.assert_array_equal(batch.x_query, batch.x_support)
      np.testing.assert_array_equal(batch.y_query, batch.y_support)
      np.testing.assert_array_equal(prob.theta0, np.zeros(2))
      np.testing.assert_allclose(problems.hessians(prob)[2][0], [a, b], rtol=1e-10)
    self.assertTrue(-5.0 <= x.min() < -4.95 and 4.95 < x.max() < 5.0,
                    msg=(x.min(), x.max()))   # P(miss) = 2·0.995^4000 ≈ 4e-9
    self.assertMean(x, 0.0, "E x")
    self.assertMean(x**2, 25 / 3, "E x^2")
    # The defaults are the takagi_linear preset's problem.
    chex.assert_trees_all_equal(
        problems.takagi_linear(jax.random.key(2)),
        problems.takagi_linear(jax.random.key(2),
                               **experiment.PRESETS["takagi_linear"]["problem"]))

  def test_mixed_linear_tasks_and_inputs(self):
    # σ = 0 and N_s = N_q > p: each task's w_i is the exact least-squares solution
    # of either split; w_i ~ N(w_0, ν²/p I_p), x ~ N(0, I_p) independently per split.
    p, t, n, nu, w0 = 4, 3000, 6, 1.5, 0.5
    prob = problems.mixed_linear(jax.random.key(4), p=p, num_tasks=t, n_support=n,
                                 n_query=n, sigma=0.0, nu=nu, w0=w0, omega0=-0.25)
    b = jax.tree.map(np.asarray, prob.batch)
    chex.assert_shape([b.x_support, b.y_support, b.x_query, b.y_query],
                      [(t, n, p), (t, n), (t, n, p), (t, n)])
    w = np.stack([np.linalg.lstsq(xs, ys, rcond=None)[0]
                  for xs, ys in zip(b.x_support, b.y_support)])
    np.testing.assert_allclose(np.einsum("tnp,tp->tn", b.x_query, w), b.y_query,
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(prob.theta0, np.full(p, -0.25))
    self.assertMean(w - w0, 0.0, "E w - w0")
    self.assertMean(np.sum((w - w0)**2, axis=1), nu**2, "E|w - w0|^2")
    self.assertMean(b.x_support**2, 1.0, "E x_s^2")
    self.assertMean(b.x_query**2, 1.0, "E x_q^2")
    self.assertUncorrelated(b.x_support, b.x_query, "x_s, x_q")

  def test_mixed_linear_noise(self):
    # ν = 0: every task is w_0, so y − x·w_0 is the noise: N(0, σ²), independent
    # between the splits.
    t, n, sigma = 3000, 5, 0.7
    prob = problems.mixed_linear(jax.random.key(5), p=3, num_tasks=t, n_support=n,
                                 n_query=n, sigma=sigma, nu=0.0, w0=0.5)
    b = jax.tree.map(np.asarray, prob.batch)
    z_s = b.y_support - b.x_support.sum(-1) * 0.5
    z_q = b.y_query - b.x_query.sum(-1) * 0.5
    for name, z in (("z_s", z_s), ("z_q", z_q)):
      self.assertMean(z, 0.0, f"E {name}")
      self.assertMean(z**2, sigma**2, f"E {name}^2")
    self.assertUncorrelated(z_s, z_q, "z_s, z_q")

  def test_dtype_and_sinusoid_pool_shapes(self):
    prob = problems.mixed_linear(jax.random.key(6), p=3, num_tasks=2, n_support=4,
                                 n_query=5, sigma=0.1, nu=1.0, omega0=0.2,
                                 dtype=jnp.float32)
    for leaf in jax.tree.leaves(prob):
      self.assertEqual(leaf.dtype, jnp.float32)
    pool = problems.sinusoid_pool(jax.random.key(7), num_tasks=3, k_support=4,
                                  k_query=6)
    chex.assert_shape([pool.x_support, pool.y_support, pool.x_query, pool.y_query],
                      [(3, 4, 1), (3, 4, 1), (3, 6, 1), (3, 6, 1)])


class ClassificationTest(absltest.TestCase):

  def test_classify_loss_absolute_and_relative(self):
    final = np.array([1e-3, 0.7, 2.0, np.nan, 0.009, 0.011])
    initial = np.array([1.0, 1.0, 1.0, 1.0, 0.001, 1.0])
    nonfinite = np.array([False, False, False, True, False, False])
    absolute = maps.classify(final, initial, nonfinite, maps.Criterion("loss", 1e-2))
    # 0.009 < 1e-2 but grew from 0.001: diverged wins over the threshold.
    np.testing.assert_array_equal(absolute, [C, N, D, D, D, N])
    relative = maps.classify(final, initial, nonfinite,
                             maps.Criterion("loss", 0.6, relative=True))
    np.testing.assert_array_equal(relative, [C, N, D, D, D, C])

  def test_relative_threshold_is_scale_free_and_absolute_is_not_relative(self):
    """Relative: classes are invariant under q → c·q. Absolute: q_0 sets no bar."""
    rng = np.random.default_rng(0)
    initial = rng.uniform(0.1, 10.0, 200)
    final = initial * rng.uniform(0.0, 1.0, 200) ** 3      # none grew
    nonfinite = np.zeros(200, bool)
    relative = maps.Criterion("loss", 0.05, relative=True)
    base = maps.classify(final, initial, nonfinite, relative)
    np.testing.assert_array_equal(base == C, final < 0.05 * initial)
    for scale in (1e-4, 1e4):
      np.testing.assert_array_equal(
          maps.classify(scale * final, scale * initial, nonfinite, relative), base)
    absolute = maps.Criterion("loss", 0.05)
    fixed_bar = maps.classify(final, initial, nonfinite, absolute)
    # A larger q_0 changes nothing while nothing grows: the bar is 0.05 itself.
    np.testing.assert_array_equal(
        maps.classify(final, 10.0 * initial, nonfinite, absolute), fixed_bar)
    for classes in (base, fixed_bar):  # both outcomes occur: not vacuous
      self.assertGreater(np.sum(classes == C), 10)
      self.assertGreater(np.sum(classes == N), 10)

  def test_classify_unchanged_exact_threshold_and_unflagged_nan(self):
    """q_T = q_0 has not grown; q_T = threshold is not below it; NaN q_T diverged.

    The first cell is a run started at the fixed point (‖g‖ = 0 throughout): it
    converged. The last is a NaN quantity whose run was not flagged non-finite.
    """
    final = np.array([0.0, 0.3, 1e-2, np.nan])
    initial = np.array([0.0, 0.3, 1.0, 1.0])
    classes = maps.classify(final, initial, np.zeros(4, bool),
                            maps.Criterion("update_norm", 1e-2))
    np.testing.assert_array_equal(classes, [C, N, N, D])

  def test_away_from_boundary_and_agreement(self):
    pred = np.full((6, 7), C, np.int8)
    pred[:, 4:] = D
    away = maps.away_from_boundary(pred)
    np.testing.assert_array_equal(away.any(axis=0),
                                  [True, True, True, False, False, True, True])
    emp = pred.copy()
    emp[0, 3] = N          # next to the boundary: not counted
    emp[2, 0] = D          # away from it: counted, wrong
    emp[5, 6] = N          # away, not yet converged: counted, wrong, undecided
    a = maps.agreement(emp, pred)
    self.assertEqual(a.counted, 6 * 5)
    self.assertEqual((a.disagreeing, a.not_yet_counted), (2, 1))
    self.assertAlmostEqual(a.share, 1 - 2 / 30)
    self.assertAlmostEqual(a.decided_share, 1 - 1 / 29)

  def test_empirical_boundary(self):
    beta = np.array([0.1, 0.2, 0.4, 0.8])
    cls = np.array([[C, C, D, D], [C, N, N, N], [D, D, D, D], [C, D, C, D]])
    eb = maps.empirical_boundary(cls, beta)
    np.testing.assert_array_equal(eb.beta_c, [0.4, np.nan, 0.1, 0.2])
    np.testing.assert_array_equal(eb.beta_below, [0.2, np.nan, np.nan, 0.1])
    np.testing.assert_array_equal(eb.monotone, [True, True, True, False])


class EngineTest(absltest.TestCase):

  def _takagi(self, seed=0, num_points=20):
    return problems.takagi_linear(jax.random.key(seed), num_points=num_points)

  def test_one_trace_for_new_grid_values_and_data(self):
    kernel = jax.jit(chex.assert_max_traces(maps.map_kernel, n=1),
                     static_argnames=("apply_fn", "method", "iterations"))
    run = functools.partial(kernel, problems.linear_apply, method="maml",
                            iterations=5)
    p1, p2 = self._takagi(0), self._takagi(1)
    out1 = run(p1.theta0, p1.batch, jnp.linspace(-0.1, 0.1, 3),
               jnp.geomspace(0.01, 1, 4))
    out2 = run(p2.theta0 + 1.0, p2.batch, jnp.linspace(-0.3, 0.2, 3),
               jnp.geomspace(0.02, 5, 4))
    self.assertFalse(np.allclose(out1.final_loss, out2.final_loss))
    # The counter is live: a new grid shape must trace again.
    with self.assertRaises(AssertionError):
      run(p1.theta0, p1.batch, jnp.linspace(-0.1, 0.1, 4), jnp.geomspace(0.01, 1, 4))

  def test_chunked_map_equals_one_call_and_resumes(self):
    prob = self._takagi()
    alpha = jnp.linspace(-0.08, 0.06, 7)        # 3 chunks of 3 rows, the last padded
    beta = jnp.array([0.01, 0.05, 0.3, 1e8])     # the last column diverges
    args = (problems.linear_apply, prob.theta0, prob.batch, alpha, beta)
    static = dict(method="maml", iterations=30)
    whole = jax.tree.map(np.asarray, maps.run_map(*args, **static))
    kernel = jax.jit(chex.assert_max_traces(maps.map_kernel, n=1),
                     static_argnames=("apply_fn", "method", "iterations", "loss_fn",
                                      "mesh"))
    calls = []

    def interrupted(*a, **k):
      if not isinstance(a[3], jax.core.Tracer):     # a real chunk, not eval_shape
        calls.append(a[3].shape)
        if len(calls) == 2:
          raise KeyboardInterrupt
      return kernel(*a, **k)

    with tempfile.TemporaryDirectory() as d:
      store = lambda: io.ChunkStore(d, "map-under-test")
      with mock.patch.object(maps, "run_map", interrupted):
        with self.assertRaises(KeyboardInterrupt):
          maps.run_map_chunks(*args, **static, chunk_alphas=3, store=store())
        self.assertEqual(os.listdir(d), ["chunk_00000.npz"])
        seen = []
        out = maps.run_map_chunks(
            *args, **static, chunk_alphas=3, store=store(),
            on_chunk=lambda i, n, was_loaded: seen.append((i, n, was_loaded)))
      # Same fingerprint, other chunking: shapes differ, nothing is mixed in.
      other = maps.run_map_chunks(*args, **static, chunk_alphas=2, store=store())
    self.assertEqual(out.loaded, 1)
    self.assertEqual(other.loaded, 0)
    self.assertEqual(seen, [(0, 3, True), (1, 3, False), (2, 3, False)])
    self.assertEqual(calls, [(3,)] * 4)          # one shape: one trace (the kernel)
    self.assertTrue(whole.nonfinite[:, 3].all())
    # Independent cells: equal up to round-off (a batch of 12 cells instead of
    # 28 may change XLA's reduction order), also where the runs blow up.
    for runs in (out.runs, other.runs):
      for name in maps.MapRuns._fields:
        got, want = getattr(runs, name), getattr(whole, name)
        self.assertEqual(got.dtype, want.dtype, msg=name)   # loaded leaves too
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=0, err_msg=name)

  def test_experiment_resumes_only_the_same_map(self):
    cfg = experiment.preset("takagi_linear", alpha_num=5, beta_num=4, iterations=20,
                            chunk_alphas=2)
    with tempfile.TemporaryDirectory() as d:
      first = experiment.run(cfg, store_dir=d)
      again = experiment.run(cfg, store_dir=d)
      other_seed = experiment.run(dataclasses.replace(cfg, seed=1), store_dir=d)
      other_chunks = experiment.run(dataclasses.replace(cfg, chunk_alphas=3),
                                    store_dir=d)
    self.assertEqual((first.resumed_chunks, again.resumed_chunks), (0, 3))
    self.assertEqual((other_seed.resumed_chunks, other_chunks.resumed_chunks), (0, 0))
    # A loaded chunk counts the time it took when it was computed.
    self.assertEqual(again.seconds["map"], first.seconds["map"])
    for key, value in first.arrays.items():
      np.testing.assert_array_equal(again.arrays[key], value, err_msg=key)

  def test_diverging_cells_do_not_change_other_cells(self):
    prob = self._takagi()
    alpha = jnp.array([-0.05, 0.0, 0.04])

    def run(last_beta):
      beta = jnp.array([0.01, 0.05, last_beta, 0.08])
      return jax.tree.map(np.asarray, maps.run_map(
          problems.linear_apply, prob.theta0, prob.batch, alpha, beta,
          method="maml", iterations=200))

    safe, wild = run(0.02), run(1e8)
    self.assertFalse(safe.nonfinite.any())
    self.assertTrue(wild.nonfinite[:, 2].all())       # overflowed, did not crash
    self.assertTrue(np.isnan(wild.final_loss[:, 2]).all())
    self.assertTrue((wild.nonfinite_step[:, 2] >= 0).all())
    keep = np.array([0, 1, 3])
    for name in ("final_loss", "initial_loss", "final_update_norm",
                 "initial_update_norm", "nonfinite", "nonfinite_step"):
      np.testing.assert_array_equal(getattr(wild, name)[:, keep],
                                    getattr(safe, name)[:, keep], err_msg=name)
    np.testing.assert_array_equal(wild.final_params[:, keep],
                                  safe.final_params[:, keep])

  def test_quadratic_problem_matches_engine_loss_and_gradients(self):
    prob = _small_mixed_linear()
    theta = jnp.array([0.3, -0.2, 0.1, 0.7])

    @jax.jit
    def both(prob, theta):
      S, Q, s_star, q_star = problems.hessians(prob)
      loss = lambda t: maml.meta_loss(problems.linear_apply, t, 0.2, prob.batch,
                                      steps=1)
      closed = (problems.meta_loss(prob, theta, 0.2),
                convergence.meta_gradient(theta, 0.2, S, Q, s_star, q_star, "maml"),
                convergence.meta_gradient(theta, 0.2, S, Q, s_star, q_star, "fomaml"))
      fomaml = lambda t: maml.meta_loss(problems.linear_apply, t, 0.2, prob.batch,
                                        steps=1, first_order=True)
      return closed, (loss(theta), jax.grad(loss)(theta), jax.grad(fomaml)(theta))

    closed, autodiff = both(prob, theta)
    for c, a in zip(closed, autodiff):
      np.testing.assert_allclose(c, a, rtol=1e-11, atol=1e-13)


class LinearPredictionTest(absltest.TestCase):

  def test_exact_t_step_map_reproduces_engine_runs(self):
    # Theory vs simulation on every cell: the closed-form θ_T and the quantities
    # at θ_0 and θ_T of `predict_linear` against the engine's outer-loop runs
    # (separate support/query data, three tasks, both signs of α).
    prob = _small_mixed_linear(omega0=0.2)
    alpha = jnp.array([-0.2, 0.0, 0.15])
    beta = jnp.array([0.02, 0.08, 0.2])
    for method in ("maml", "fomaml"):
      with self.subTest(method=method):
        runs = maps.run_map(problems.linear_apply, prob.theta0, prob.batch, alpha,
                            beta, method=method, iterations=12)
        pred = predict.predict_linear(prob, alpha, beta, method=method,
                                      iterations=12)
        self.assertFalse(np.any(runs.nonfinite))
        for name in ("loss", "update_norm"):
          for got, want in zip(pred.quantity(name), runs.quantity(name)):
            np.testing.assert_allclose(got, want, rtol=1e-9, err_msg=name)
        # Not vacuous: q_0 depends on α, and every run moved (MAML's cell at
        # α = −0.2, β = 0.2 > β_c(α) grows: the map reproduces divergence too).
        initial_loss = np.asarray(runs.initial_loss)[:, 0]
        self.assertGreater(np.ptp(initial_loss), 1e-2 * np.max(initial_loss))
        self.assertTrue(np.all(np.abs(np.log(np.asarray(runs.final_loss)
                                             / np.asarray(runs.initial_loss))) > 0.1))


class HessianPredictionTest(absltest.TestCase):
  """The Hessian-based predictions of `predict`, checked where they are exact."""

  def test_meta_hessian_extremes_equal_closed_form_on_quadratic(self):
    # On a quadratic problem the one-step MAML meta-loss is exactly quadratic
    # with Hessian J(α) = mean_i (I − αS_i)ᵀQ_i(I − αS_i) (separate support and
    # query data, three tasks); Lanczos with as many steps as parameters is exact.
    prob = _small_mixed_linear()
    S, Q, _, _ = problems.hessians(prob)
    alpha = jnp.array([-0.3, 0.0, 0.15])
    theta = jnp.array([0.3, -0.2, 0.1, 0.7])
    lam_max, lam_min = predict.meta_hessian_extremes(
        problems.linear_apply, theta, prob.batch, alpha, jax.random.key(0),
        num_iters=4)
    eigs = np.linalg.eigvalsh(np.asarray(convergence.meta_hessian(alpha, S, Q)))
    scale = float(np.max(np.abs(eigs)))
    np.testing.assert_allclose(lam_max, eigs[:, -1], rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(lam_min, eigs[:, 0], rtol=0, atol=1e-10 * scale)
    # α really changes the meta-Hessian (negative α sharpens it).
    self.assertGreater(eigs[0, -1], 1.2 * eigs[1, -1])

  def test_hessian_spectrum_pairs_each_top_value_with_its_residual(self):
    # A partial run (8 steps, n = 12): the residuals differ per Ritz pair.
    rng = np.random.default_rng(1)
    U = np.linalg.qr(rng.standard_normal((12, 12)))[0]
    A = jnp.asarray(U @ np.diag(np.linspace(-1.0, 5.0, 12)) @ U.T)
    loss = lambda p: 0.5 * p["x"] @ A @ p["x"]
    params, key = {"x": jnp.zeros(12)}, jax.random.key(2)
    spec = predict.hessian_spectrum(loss, params, key, num_iters=8, top_k=3)
    res = hessian.lanczos(loss, params, key, num_iters=8, top_k=3)
    ritz = np.asarray(res.ritz_values)
    for value, residual in zip(np.asarray(spec.top), np.asarray(spec.residuals_top)):
      paired = res.residuals[np.argmin(np.abs(ritz - value))]
      np.testing.assert_allclose(residual, paired, rtol=1e-12)
    np.testing.assert_array_equal(spec.top, np.sort(ritz)[::-1][:3])
    # Rayleigh–Ritz: an eigenvalue of H lies within each residual of its value.
    eigs = np.linspace(-1.0, 5.0, 12)
    for value, residual in zip(np.asarray(spec.top), np.asarray(spec.residuals_top)):
      self.assertLessEqual(np.min(np.abs(eigs - value)), residual + 1e-12)
    # Not vacuous: the other Ritz pairs have other residuals.
    self.assertGreater(float(np.max(np.abs(np.asarray(spec.residuals_top)
                                           - np.asarray(res.residuals[:3])))), 1e-2)

  def test_eigenvalue_boundaries_use_positive_eigenvalues_only(self):
    # At a saddle the Lanczos spectrum has λ ≤ 0; those are reported but impose
    # no β bound (they would force β_c = 0): adding them changes nothing.
    alpha = jnp.array([-0.2, 0.0, 0.1])
    positive = jnp.array([0.5, 2.0])
    with_saddle = jnp.array([-1.0, 0.0, 0.5, 2.0])
    for method in ("maml", "fomaml"):
      with self.subTest(method=method):
        got = predict.eigenvalue_boundaries(alpha, with_saddle, method=method)
        want = predict.eigenvalue_boundaries(alpha, positive, method=method)
        np.testing.assert_allclose(got, want, rtol=1e-15)
        self.assertTrue(np.all(np.asarray(got) > 0))
        # At α = 0 both are gradient descent on H: 2/λ_max.
        np.testing.assert_allclose(np.asarray(got)[:, 1], 2 / 2.0, rtol=1e-15)


class LinearMapTest(parameterized.TestCase):

  @parameterized.named_parameters(*LINEAR_CASES)
  def test_agreement_away_from_boundary(self, preset, method):
    res = linear_map(preset, method)
    cells = res.config.alpha_num * res.config.beta_num
    horizon = res.summary["agreement"]["exact_at_horizon"]
    self.assertGreaterEqual(horizon["share"], 0.99, msg=horizon)
    self.assertGreater(horizon["cells_counted"], 0.6 * cells)
    # The counted cells hold both outcomes, so the share is not vacuous.
    counted = res.arrays["away_from_boundary"]
    emp = res.arrays["empirical_class"]
    self.assertGreater(np.sum(counted & (emp == C)), 0.15 * cells)
    self.assertGreater(np.sum(counted & (emp == D)), 0.15 * cells)
    # Against the spectral radius alone: no decided run contradicts it; cells not
    # yet converged after 500 steps are all on its converging side.
    asym = res.summary["agreement"]["exact_asymptotic"]
    self.assertGreaterEqual(asym["share_of_decided_cells"], 0.99, msg=asym)
    pred = res.arrays["predicted_class_asymptotic"]
    self.assertTrue(np.all(pred[counted & (emp == N)] == C))
    # The exact T-step map reproduces the runs' final losses.
    self.assertLess(res.summary["max_abs_final_loss_gap_converged_cells"], 1e-8)

  @parameterized.named_parameters(*LINEAR_CASES)
  def test_beta_c_at_alpha_zero_is_two_over_lambda_max(self, preset, method):
    res = linear_map(preset, method)
    b0 = res.summary["beta_c_at_alpha0"]
    self.assertEqual(b0["alpha"], 0.0)
    self.assertTrue(b0["within_one_grid_step"], msg=b0)
    ratio = b0["empirical_beta_c"] / b0["two_over_lambda_max"]
    self.assertLessEqual(abs(math.log(ratio)), _log_step(res.arrays["beta"]) + 1e-12)
    # At α = 0 both methods are gradient descent on mean_i L_i^Q: J = H exactly.
    self.assertAlmostEqual(b0["predicted_beta_c_at_alpha"] / b0["two_over_lambda_max"],
                           1.0, places=10)

  @parameterized.named_parameters(*LINEAR_CASES)
  def test_boundary_tightens_for_negative_alpha_as_predicted(self, preset, method):
    res = linear_map(preset, method)
    alpha, beta = res.arrays["alpha"], res.arrays["beta"]
    neg = alpha <= 0
    exact = res.arrays["beta_c_predicted"][neg]
    self.assertTrue(np.all(np.diff(exact) > 0), msg=exact)   # theory: tightens
    emp = res.arrays["empirical_beta_c"][neg]
    np.testing.assert_array_less(np.abs(np.log(emp / exact)), _log_step(beta) + 1e-12)
    tight = res.summary["negative_alpha"]
    self.assertLess(tight["empirical_beta_c_ratio"], 0.8)
    self.assertLess(abs(math.log(tight["empirical_beta_c_ratio"]
                                 / tight["predicted_beta_c_ratio"])),
                    2 * _log_step(beta))

  def test_takagi_formula_misses_maml_tightening(self):
    # One task, same data: Takagi's boundary is FOMAML's exactly, while exact MAML
    # diverges between λ(1 − αλ)² and λ(1 − αλ) at α < 0.
    maml_res = linear_map("takagi_linear", "maml")
    fo_res = linear_map("takagi_linear", "fomaml")
    np.testing.assert_allclose(fo_res.arrays["beta_c_predicted"],
                               fo_res.arrays["beta_c_takagi"], rtol=1e-10)
    fo_takagi = fo_res.summary["agreement"]["takagi_asymptotic"]
    self.assertGreaterEqual(fo_takagi["share_of_decided_cells"], 0.99)
    beta = maml_res.arrays["beta"]
    exact = maml_res.arrays["beta_c_predicted"]
    takagi = maml_res.arrays["beta_c_takagi"]
    between = ((maml_res.arrays["alpha"] < 0)[:, None]
               & (beta[None, :] > exact[:, None] * math.exp(_log_step(beta)))
               & (beta[None, :] < takagi[:, None]))
    self.assertGreaterEqual(between.sum(), 5)
    self.assertTrue(np.all(maml_res.arrays["empirical_class"][between] == D))
    self.assertLess(
        maml_res.summary["agreement"]["takagi_asymptotic"]["share"], 0.95)


# A tiny Takagi map (5 α × 8 β, 60 steps, ~1 s) holding all three classes.
TINY_TAKAGI = dict(alpha_num=5, beta_num=8, iterations=60)


@functools.lru_cache(maxsize=None)
def tiny_takagi_map(**overrides):
  return experiment.run(experiment.preset("takagi_linear", **overrides))


def _first_diverged(classes, beta):
  """Per row: β of the first diverged cell, the β below it, diverged cells a suffix."""
  beta_c, below, monotone = [], [], []
  for row in classes:
    k = np.flatnonzero(row == D)
    beta_c.append(beta[k[0]] if k.size else np.nan)
    below.append(beta[k[0] - 1] if k.size and k[0] > 0 else np.nan)
    monotone.append(bool(np.all(row[k[0]:] == D)) if k.size else True)
  return np.array(beta_c), np.array(below), np.array(monotone)


def _expected_counts(a, converged_below):
  """Class counts recomputed from a map's arrays: diverged if non-finite or the
  loss grew, converged if the final loss is below `converged_below` [α, β]."""
  diverged = a["nonfinite"] | ~(a["final_loss"] <= a["initial_loss"])
  converged = ~diverged & (a["final_loss"] < converged_below)
  counts = {"converged": int(converged.sum()),
            "not_yet_converged": int(np.sum(~diverged & ~converged)),
            "diverged": int(diverged.sum())}
  return counts, converged


class ReportedNumbersTest(absltest.TestCase):
  """The record's and the table's numbers, recomputed from the per-cell runs."""

  def setUp(self):
    super().setUp()
    self.res = tiny_takagi_map(**TINY_TAKAGI)
    self.alpha, self.beta = self.res.arrays["alpha"], self.res.arrays["beta"]
    self.i0 = int(np.flatnonzero(self.alpha == 0.0)[0])

  def _takagi_hessian_eigenvalues(self):
    # H = 2 XᵀX / N for the features (x, 1) of the preset's 100 points.
    with jax.enable_x64(True):
      prob = problems.takagi_linear(jax.random.key(self.res.config.seed),
                                    num_points=100, dtype=jnp.float64)
      x = np.asarray(prob.batch.x_query[0], np.float64)
    return np.linalg.eigvalsh(2.0 * x.T @ x / x.shape[0])

  def test_counts_are_the_criterion_applied_to_the_runs(self):
    a = self.res.arrays
    want, converged = _expected_counts(a, 1e-2)    # Takagi: absolute, 1e-2
    self.assertEqual(self.res.summary["counts"], want)
    self.assertTrue(all(v > 0 for v in want.values()), msg=want)   # not vacuous
    # The exact T-step map's loss gap, over the converged cells only.
    gap = np.abs(a["final_loss"] - a["predicted_final_loss"])
    self.assertEqual(self.res.summary["max_abs_final_loss_gap_converged_cells"],
                     np.max(gap[converged]))

  def test_beta_c_at_alpha_zero_record(self):
    b0 = self.res.summary["beta_c_at_alpha0"]
    beta_c, below, _ = _first_diverged(self.res.arrays["empirical_class"], self.beta)
    self.assertEqual(b0["alpha"], 0.0)
    self.assertEqual(b0["empirical_beta_c"], beta_c[self.i0])
    self.assertEqual(b0["empirical_bracket"], [below[self.i0], beta_c[self.i0]])
    self.assertLess(below[self.i0], beta_c[self.i0])
    step = math.log(9.0 / 5e-3) / (8 - 1)
    self.assertAlmostEqual(b0["log_grid_step"], step, places=12)
    lam = self._takagi_hessian_eigenvalues()
    np.testing.assert_allclose(self.res.summary["hessian_eigenvalues"]["values"], lam,
                               rtol=1e-10)
    self.assertAlmostEqual(b0["two_over_lambda_max"] * lam[-1], 2.0, places=10)
    self.assertAlmostEqual(self.res.summary["takagi_alpha_c"] * lam[-1], 1.0,
                           places=10)
    self.assertEqual(b0["within_one_grid_step"],
                     abs(math.log(beta_c[self.i0] * lam[-1] / 2.0)) <= step)

  def test_boundary_table_rows(self):
    a = self.res.arrays
    beta_c, below, monotone = _first_diverged(a["empirical_class"], self.beta)
    rows = self.res.summary["boundary"]
    self.assertLen(rows, self.alpha.size)
    for i, row in enumerate(rows):
      self.assertEqual(row["alpha"], self.alpha[i])
      np.testing.assert_array_equal(
          [row["empirical_beta_c"], row["empirical_beta_below"]],
          [beta_c[i], below[i]], err_msg=str(i))
      self.assertEqual(row["diverged_set_monotone"], monotone[i])
      self.assertEqual(row["predicted_beta_c"], a["beta_c_predicted"][i])
      self.assertEqual(row["takagi_beta_c"], a["beta_c_takagi"][i])
    # Exact MAML is tighter than Takagi's formula at α < 0: the columns differ.
    self.assertLess(rows[0]["predicted_beta_c"], 0.5 * rows[0]["takagi_beta_c"])

  def test_boundary_table_flags_a_non_monotone_row(self):
    beta = np.array([0.1, 0.2, 0.4, 0.8])
    cls = np.array([[C, C, D, D], [C, N, N, N], [C, D, C, D]])
    eb = maps.empirical_boundary(cls, beta)
    rows = experiment._boundary_table(np.array([-0.1, 0.0, 0.1]), eb,
                                      np.array([1.0, 2.0, 3.0]),
                                      np.array([4.0, 5.0, 6.0]))
    self.assertEqual([r["diverged_set_monotone"] for r in rows], [True, True, False])
    self.assertEqual([r["empirical_beta_below"] for r in rows][::2], [0.2, 0.1])
    self.assertEqual([r["takagi_beta_c"] for r in rows], [4.0, 5.0, 6.0])

  def test_negative_alpha_ratios(self):
    a = self.res.arrays
    beta_c, _, _ = _first_diverged(a["empirical_class"], self.beta)
    tight = self.res.summary["negative_alpha"]
    i0 = self.i0
    self.assertEqual((tight["alpha_min"], tight["alpha_ref"]), (-0.1, 0.0))
    for name, values in (("empirical", beta_c), ("predicted", a["beta_c_predicted"]),
                         ("takagi", a["beta_c_takagi"])):
      self.assertAlmostEqual(tight[f"{name}_beta_c_ratio"], values[0] / values[i0],
                             places=12, msg=name)
      self.assertEqual(tight[f"{name}_beta_c_at_alpha_min"], values[0], msg=name)
    # Three different ratios: a field taken from another curve would show.
    ratios = [tight[f"{n}_beta_c_ratio"] for n in ("empirical", "predicted", "takagi")]
    self.assertLen(set(np.round(ratios, 6)), 3)
    # No negative α on the grid: nothing to report.
    res = tiny_takagi_map(alpha_num=3, beta_num=4, iterations=20, alpha_min=0.0)
    self.assertIsNone(res.summary["negative_alpha"])

  def test_map_without_divergence(self):
    # β too small to diverge at 20 steps: no empirical β_c anywhere.
    res = tiny_takagi_map(alpha_num=3, beta_num=4, iterations=20, beta_max=0.01)
    self.assertFalse(np.any(res.arrays["empirical_class"] == D))
    self.assertEqual(res.summary["counts"]["diverged"], 0)
    self.assertEqual(sum(res.summary["counts"].values()), 12)
    b0 = res.summary["beta_c_at_alpha0"]
    self.assertTrue(math.isnan(b0["empirical_beta_c"]))
    self.assertFalse(b0["within_one_grid_step"])
    self.assertIn("empirical — (bracket —–—)", experiment.summary_table(res))

  def test_record_and_table(self):
    res = self.res
    rec = experiment.record(res)
    np.testing.assert_allclose(rec["grid"]["alpha_values"], np.linspace(-0.1, 0.1, 5))
    np.testing.assert_allclose(rec["grid"]["beta_values"], np.geomspace(5e-3, 9.0, 8))
    horizon = maps.agreement(res.arrays["empirical_class"],
                             res.arrays["predicted_class"])
    self.assertEqual(rec["agreement_share"], horizon.share)
    # The asymptotic prediction differs here: the headline is the horizon's.
    self.assertNotEqual(res.summary["agreement"]["exact_asymptotic"]["share"],
                        horizon.share)
    beta_c, below, _ = _first_diverged(res.arrays["empirical_class"], self.beta)
    lines = experiment.summary_table(res).splitlines()
    self.assertIn(f"β_c at α = 0: empirical {beta_c[self.i0]:.4g} (bracket "
                  f"{below[self.i0]:.4g}–{beta_c[self.i0]:.4g})", "\n".join(lines))
    self.assertIn(f"{100 * horizon.share:.2f}% of {horizon.counted} cells",
                  "\n".join(lines))
    table = [line.split() for line in lines[lines.index(
        next(x for x in lines if x.lstrip().startswith("α "))) + 1:]]
    self.assertLen(table, 5)
    for i, cols in enumerate(table):
      self.assertEqual(float(cols[0]), round(self.alpha[i], 4))
      np.testing.assert_allclose(
          [float(c) for c in cols[1:]],
          [beta_c[i], res.arrays["beta_c_predicted"][i], res.arrays["beta_c_takagi"][i]],
          rtol=5e-4, err_msg=str(i))


@functools.lru_cache(maxsize=None)
def small_sinusoid_map():
  # α <= 0 only: for α > 0 the one-task formula overstates stability near
  # α = 1/λ_max (BUILD_NOTES §5, sinusoid).
  return experiment.run(experiment.preset("sinusoid", alpha_num=3, beta_num=8,
                                          iterations=40, alpha_min=-0.2,
                                          alpha_max=0.0, beta_min=0.03))


class SinusoidMapTest(absltest.TestCase):

  def test_small_sinusoid_map(self):
    res = small_sinusoid_map()
    s = res.summary
    eig = s["hessian_eigenvalues"]
    self.assertGreater(eig["lambda_max"], 0)
    self.assertEqual(eig["top"][0], eig["lambda_max"])
    self.assertTrue(np.all(np.diff(eig["top"]) <= 0))
    i0 = int(np.argmin(np.abs(res.arrays["alpha"])))
    self.assertEqual(res.arrays["alpha"][i0], 0.0)
    self.assertAlmostEqual(res.arrays["beta_c_formula"][i0] * eig["lambda_max"], 2.0,
                           places=9)
    # At every α, the exact MAML formula over the positive top eigenvalues
    # (at α = 0 all formulas agree, so this is what tells them apart) ...
    lam = np.asarray(eig["top"])
    lam = lam[lam > 0][None, :]
    alpha = res.arrays["alpha"][:, None]
    np.testing.assert_allclose(res.arrays["beta_c_formula"],
                               np.min(2.0 / (lam * (1.0 - alpha * lam) ** 2), axis=1),
                               rtol=1e-10)
    np.testing.assert_allclose(res.arrays["beta_c_takagi"],
                               np.min(2.0 / (lam - alpha * lam**2), axis=1), rtol=1e-10)
    # ... which for α < 0 is tighter than Takagi's.
    neg = res.arrays["alpha"] < 0
    self.assertTrue(np.all(res.arrays["beta_c_formula"][neg]
                           < res.arrays["beta_c_takagi"][neg]))
    # At α = 0 the MAML meta-Hessian is H itself.
    np.testing.assert_allclose(res.arrays["meta_hessian_lambda_max"][i0],
                               eig["lambda_max"], rtol=1e-6)
    # Negative α sharpens the meta-Hessian: the predicted boundary tightens.
    self.assertTrue(np.all(np.diff(res.arrays["beta_c_predicted"]) > 0))
    self.assertEqual(res.arrays["final_loss"].shape, (3, 8))
    emp = res.arrays["empirical_class"]
    self.assertTrue(np.isnan(res.arrays["final_loss"][emp == D][
        res.arrays["nonfinite"][emp == D]]).all())
    div = s["diverged_on_predicted_side"]
    self.assertGreater(div["diverged_cells"], 0)
    self.assertEqual(div["on_predicted_convergent_side"], 0, msg=div)

  def test_small_sinusoid_map_record(self):
    """Trained point, side counts and α = 0 numbers, recomputed from the arrays."""
    res = small_sinusoid_map()
    s, a = res.summary, res.arrays
    alpha, beta = a["alpha"], a["beta"]
    i0 = int(np.flatnonzero(alpha == 0.0)[0])
    emp = a["empirical_class"]
    # Counts: relative criterion, converged iff the loss fell below half its start.
    self.assertEqual(s["counts"], _expected_counts(a, 0.5 * a["initial_loss"])[0])
    # Trained point: the α = 0 cell that did not diverge with the lowest final loss.
    ok = emp[i0] != D
    self.assertTrue(ok.any() and not ok.all())     # a diverged cell to skip
    ib = int(np.flatnonzero(ok)[np.argmin(a["final_loss"][i0][ok])])
    tp = s["trained_point"]
    self.assertEqual((tp["alpha"], tp["beta"]), (0.0, beta[ib]))
    self.assertEqual(tp["final_loss"], a["final_loss"][i0, ib])
    self.assertEqual(tp["initial_loss"], a["initial_loss"][i0, ib])
    self.assertLess(tp["final_loss"], tp["initial_loss"])
    eig = s["hessian_eigenvalues"]
    self.assertAlmostEqual(s["takagi_alpha_c"] * eig["lambda_max"], 1.0, places=12)
    self.assertLess(eig["lambda_min"], 0.0)         # a saddle: min ≠ max in sign
    # The α = 0 record at θ_0 uses θ_0's spectrum, not the trained point's.
    init = s["beta_c_at_alpha0_initial_point"]
    self.assertAlmostEqual(init["two_over_lambda_max"]
                           * eig["at_initial_point"]["lambda_max"], 2.0, places=12)
    self.assertNotAlmostEqual(eig["at_initial_point"]["lambda_max"],
                              eig["lambda_max"], places=3)
    # Diverged cells on either side of each prediction.
    diverged = emp == D
    for name, key in (("predicted", "predicted_class"),
                      ("hessian_formula", "predicted_class_formula"),
                      ("takagi", "predicted_class_takagi")):
      below = diverged & (a[key] == C)
      got = s["diverged_on_side_of"][name]
      self.assertEqual(got["diverged_cells"], int(diverged.sum()), msg=name)
      self.assertEqual(got["on_predicted_divergent_side"],
                       int(diverged.sum() - below.sum()), msg=name)
      self.assertEqual(got["on_predicted_convergent_side"], int(below.sum()), msg=name)
      self.assertEqual(got["share"], 1.0 - below.sum() / diverged.sum(), msg=name)
      self.assertEqual(got["on_convergent_side_within_one_step"],
                       int(np.sum(below & ~maps.away_from_boundary(a[key]))), msg=name)
      self.assertEqual(got["on_convergent_side_alpha_le_0"],
                       int(np.sum(below[alpha <= 0])), msg=name)
    self.assertEqual(s["diverged_on_predicted_side"], s["diverged_on_side_of"]["predicted"])
    d = s["diverged_on_predicted_side"]
    self.assertLess(d["diverged_cells"], emp.size)  # not every cell: counts differ
    self.assertIn(f"diverged cells on the predicted side: "
                  f"{d['diverged_cells'] - d['on_predicted_convergent_side']}/"
                  f"{int(diverged.sum())}; trained point α = 0, β = {beta[ib]:.3g}",
                  experiment.summary_table(res))

  def test_all_diverged_map_takes_the_hessian_at_the_initial_point(self):
    # Before: the "trained point" was a diverged cell (λ_max ≈ 1e123).
    res = experiment.run(experiment.preset(
        "sinusoid", alpha_num=2, beta_num=2, iterations=2, alpha_min=-1e6,
        alpha_max=1e6, beta_min=1e5, beta_max=1e6))
    s = res.summary
    self.assertEqual(s["counts"]["diverged"], 4)
    tp = s["trained_point"]
    self.assertIsNone(tp["alpha"])
    self.assertIn("every cell diverged", tp["choice"])
    eig = s["hessian_eigenvalues"]
    self.assertEqual(eig["lambda_max"], eig["at_initial_point"]["lambda_max"])
    self.assertLess(eig["lambda_max"], 100.0)
    self.assertIn("no trained point (all diverged)", experiment.summary_table(res))
    with tempfile.TemporaryDirectory() as d:
      paths = experiment.save(res, d)
      self.assertTrue(os.path.exists(paths["png"]))



class MapFigureTest(absltest.TestCase):
  """`figure.map_figure` shows the map's arrays where its axes and legend say."""

  def _check(self, res, predicted_label, predicted_y, formula):
    from negmeta.convergence import figure
    a, s = res.arrays, res.summary
    alpha, beta = a["alpha"], a["beta"]
    fig = figure.map_figure(res)
    self.addCleanup(plt.close, fig)
    loss_ax, class_ax = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    # Cells: α on x, β on y, cell centres at the grid values (β geometric).
    for ax in (loss_ax, class_ax):
      (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
      xy = mesh.get_coordinates()                               # [β + 1, α + 1, 2]
      np.testing.assert_allclose(0.5 * (xy[0, 1:, 0] + xy[0, :-1, 0]), alpha, atol=1e-12)
      np.testing.assert_allclose(np.sqrt(xy[1:, 0, 1] * xy[:-1, 0, 1]), beta, rtol=1e-12)
    diverged = a["empirical_class"] == D
    self.assertTrue(diverged.any() and (~diverged).any())
    (mesh,) = [c for c in loss_ax.collections if isinstance(c, QuadMesh)]
    z = mesh.get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(z), diverged.T)
    np.testing.assert_allclose(z[~diverged.T], np.log10(a["final_loss"]).T[~diverged.T],
                               rtol=1e-12)
    (mesh,) = [c for c in class_ax.collections if isinstance(c, QuadMesh)]
    np.testing.assert_array_equal(mesh.get_array(), a["empirical_class"].T)
    colors = mesh.cmap(mesh.norm(np.array([C, N, D])))[:, :3]
    np.testing.assert_allclose(colors, [to_rgb("#1b4f72"), to_rgb("#aab7b8"),
                                        to_rgb("#fdfefe")])
    self.assertIn("(dark: converged, grey: not yet, white: diverged)", class_ax.get_title())
    lo, hi = class_ax.get_ylim()
    clip = lambda v: np.clip(np.where(np.isfinite(v), v, 10 * hi), lo / 10, 10 * hi)
    for ax in (loss_ax, class_ax):
      lines = {line.get_label(): line for line in ax.get_lines()}
      np.testing.assert_allclose(lines[predicted_label].get_ydata(), clip(predicted_y),
                                 rtol=1e-12)
      takagi = lines["Takagi β_c(α) = min 2/(λ − αλ²)"]
      np.testing.assert_allclose(takagi.get_xydata(), np.stack(
          [a["dense_alpha"], clip(a["dense_beta_c_takagi"])], 1), rtol=1e-12)
      if formula:
        np.testing.assert_allclose(
            lines["min 2/(λ(1 − αλ)²), top eigenvalues of H"].get_xydata(),
            np.stack([a["dense_alpha"], clip(a["dense_beta_c_formula"])], 1), rtol=1e-12)
      else:
        self.assertNotIn("min 2/(λ(1 − αλ)²), top eigenvalues of H", lines)
      if "Takagi α_c = 1/λ_max" in lines:
        np.testing.assert_allclose(lines["Takagi α_c = 1/λ_max"].get_xdata(),
                                   [s["takagi_alpha_c"]] * 2)
        self.assertBetween(s["takagi_alpha_c"], alpha[0], alpha[-1])
      else:
        self.assertFalse(alpha[0] <= s["takagi_alpha_c"] <= alpha[-1])
      tp = s.get("trained_point")
      if tp and tp["alpha"] is not None:
        np.testing.assert_array_equal(lines["trained point (Hessian)"].get_xydata(),
                                      [[tp["alpha"], tp["beta"]]])
      self.assertEqual(ax.get_yscale(), "log")
      self.assertEqual(ax.get_xscale(), "linear")
      self.assertEqual(ax.get_xlabel(), "inner learning rate α")
      np.testing.assert_allclose(ax.get_ylim(), [beta[0] ** 1.5 / beta[1] ** 0.5,
                                                 beta[-1] ** 1.5 / beta[-2] ** 0.5],
                                 rtol=1e-9)
    self.assertEqual(loss_ax.get_ylabel(), "meta learning rate β")
    return lines

  def test_linear_map(self):
    res = tiny_takagi_map(**TINY_TAKAGI)
    a = res.arrays
    # The exact β_c differs from Takagi's wherever α ≠ 0: a swap would show.
    self.assertFalse(np.allclose(a["dense_beta_c_predicted"], a["dense_beta_c_takagi"]))
    lines = self._check(res, f"exact β_c(α), {res.config.method}",
                        a["dense_beta_c_predicted"], formula=False)
    np.testing.assert_array_equal(lines[f"exact β_c(α), {res.config.method}"].get_xdata(),
                                  a["dense_alpha"])

  def test_infinite_beta_c_leaves_the_map_at_the_top(self):
    from negmeta.convergence import figure
    res = tiny_takagi_map(**TINY_TAKAGI)
    curve = np.array(res.arrays["dense_beta_c_predicted"])
    curve[:100] = np.inf                      # β_c = ∞: converges at every β
    planted = dataclasses.replace(res, arrays={**res.arrays,
                                               "dense_beta_c_predicted": curve})
    fig = figure.map_figure(planted)
    self.addCleanup(plt.close, fig)
    for ax in [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]:
      (line,) = [l for l in ax.get_lines() if l.get_label().startswith("exact β_c(α)")]
      y = line.get_ydata()
      self.assertTrue(np.all(y[:100] > ax.get_ylim()[1]))
      np.testing.assert_allclose(y[100:], np.clip(curve[100:], None, 10 * ax.get_ylim()[1]))

  def test_sinusoid_map(self):
    res = small_sinusoid_map()
    a = res.arrays
    self.assertEqual(res.config.method, "maml")
    label = "2/λ_max of the MAML meta-Hessian ∇²L_α at the trained point"
    self.assertFalse(np.allclose(a["beta_c_predicted"], a["beta_c_formula"]))
    lines = self._check(res, label, a["beta_c_predicted"], formula=True)
    np.testing.assert_array_equal(lines[label].get_xdata(), a["alpha"])


class DivergedSidesTest(absltest.TestCase):
  """`_diverged_sides` on a planted map, counted by hand."""

  def test_planted_map(self):
    alpha = np.array([-0.5, 0.0, 0.5, 1.0])
    # Predicted boundary between columns 2 and 3 in every row: columns 2 and 3
    # are within one grid step of it.
    pred = np.full((4, 6), D)
    pred[:, :3] = C
    emp = np.full((4, 6), N)
    emp[:, 0] = C
    for cell in ((1, 0), (0, 2), (3, 1), (2, 4), (1, 5)):
      emp[cell] = D
    got = experiment._diverged_sides(emp, pred, alpha=alpha)
    # (1, 0): α = 0, far side; (0, 2): α < 0, next to the boundary; (3, 1): α > 0.
    self.assertEqual(got, {"diverged_cells": 5, "on_predicted_divergent_side": 2,
                           "on_predicted_convergent_side": 3,
                           "on_convergent_side_within_one_step": 1,
                           "on_convergent_side_alpha_le_0": 2, "share": 2 / 5})

  def test_nothing_diverged(self):
    pred = np.array([[C, D], [C, D]])
    got = experiment._diverged_sides(np.full((2, 2), N), pred,
                                     alpha=np.array([0.0, 1.0]))
    self.assertIsNone(got["share"])
    self.assertEqual(sum(v for k, v in got.items() if k != "share"), 0)


def _run_binary(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, BINARY, *args], capture_output=True,
                        text=True, timeout=timeout, env=env)


class BinaryTest(parameterized.TestCase):

  def test_tiny_map_end_to_end(self):
    with tempfile.TemporaryDirectory() as d:
      workdir = os.path.join(d, "out")
      proc = _run_binary(f"--workdir={workdir}", "--method=fomaml", "--alpha_num=5",
                         "--beta_num=6", "--iterations=50", "--seed=3",
                         "--chunk_alphas=2")
      self.assertEqual(proc.returncode, 0, msg=proc.stderr[-3000:])
      self.assertIn("agreement vs exact at horizon", proc.stdout)
      self.assertIn("2/λ_max", proc.stdout)
      self.assertEqual(sorted(os.listdir(workdir)),
                       ["map.npz", "results.json", "takagi_linear_fomaml_map.png"])
      with open(os.path.join(workdir, "results.json")) as f:
        rec = json.load(f)
      self.assertEqual((rec["config"]["method"], rec["config"]["seed"]), ("fomaml", 3))
      self.assertEqual((rec["config"]["chunk_alphas"], rec["resumed_chunks"]), (2, 0))
      self.assertIn("map chunk 3/3 done", proc.stdout)   # chunks/ removed after save
      self.assertIn("jax", rec["runtime"]["versions"])
      self.assertIn("converged", rec["criterion"])
      for key in ("agreement_share", "hessian_eigenvalues", "beta_c_at_alpha0",
                  "boundary", "counts"):
        self.assertIn(key, rec)
      self.assertEqual(len(rec["hessian_eigenvalues"]["values"]), 2)
      self.assertEqual(sum(rec["counts"].values()), 30)
      data = np.load(os.path.join(workdir, "map.npz"))
      self.assertEqual(data["empirical_class"].shape, (5, 6))
      self.assertEqual(data["predicted_class"].shape, (5, 6))
      np.testing.assert_allclose(data["alpha"], np.linspace(-0.1, 0.1, 5))
      np.testing.assert_allclose(data["beta"], np.geomspace(5e-3, 9.0, 6))
      agree = maps.agreement(data["empirical_class"], data["predicted_class"])
      self.assertAlmostEqual(agree.share, rec["agreement_share"])
      with open(os.path.join(workdir, "takagi_linear_fomaml_map.png"), "rb") as f:
        self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

  @parameterized.named_parameters(
      ("grid_too_small", ["--alpha_num=1"], "--alpha_num: must be an integer in [2,"),
      ("non_positive_beta", ["--beta_min=0"],
       "--beta_min: must be a finite real number > 0"),
      ("reversed_alpha", ["--alpha_min=0.2", "--alpha_max=0.1"],
       "--alpha_max: must be > --alpha_min=0.2"),
      ("bad_method", ["--method=sgd"], "--method: must be one of maml, fomaml"),
      ("not_a_number", ["--iterations=many"], "--iterations: must be an integer"),
      ("bad_preset", ["--preset=omniglot"], "--preset: must be one of"),
      ("no_workdir", [], "--workdir: is required"),
      ("chunk_beyond_grid", ["--alpha_num=5", "--chunk_alphas=6"],
       "--chunk_alphas: must be an integer in [0, 5] (got 6)"),
      ("negative_chunk", ["--chunk_alphas=-1"], "--chunk_alphas: must be an integer"),
  )
  def test_bad_input_in_process(self, flag_args, message):
    # The binary's main, in this process (no JAX start-up per case).
    with tempfile.TemporaryDirectory() as d:
      workdir = os.path.join(d, "out")
      args = flag_args + ([f"--workdir={workdir}"] if flag_args else [])
      with flagsaver.flagsaver():
        convergence_map.flags.FLAGS.unparse_flags()
        convergence_map.flags.FLAGS(["convergence_map", *args])
        with self.assertRaises(SystemExit) as ctx:
          convergence_map.main(["convergence_map"])
      text = str(ctx.exception.code)
      self.assertEqual(len(text.splitlines()), 1, msg=text)
      self.assertTrue(text.startswith("convergence_map: error: --"), msg=text)
      self.assertIn(message, text)
      self.assertFalse(os.path.exists(workdir))

  def test_integer_flags_read_like_the_other_binaries(self):
    # The other binaries' DEFINE_integer flags accept 0x/0o prefixes and spaces.
    with flagsaver.flagsaver():
      convergence_map.flags.FLAGS.unparse_flags()
      convergence_map.flags.FLAGS(["convergence_map", "--iterations=0x10",
                                   "--alpha_num=0o7", "--seed= 5"])
      config = convergence_map.config_from_flags()
    self.assertEqual((config.iterations, config.alpha_num, config.seed), (16, 7, 5))

  def test_binary_saves_chunks_and_resumes(self):
    args = ["--alpha_num=5", "--beta_num=4", "--iterations=20", "--chunk_alphas=2"]
    with tempfile.TemporaryDirectory() as d:
      workdir = os.path.join(d, "out")
      with flagsaver.flagsaver():
        convergence_map.flags.FLAGS.unparse_flags()
        convergence_map.flags.FLAGS(["convergence_map", *args, f"--workdir={workdir}"])
        # Interrupted after the map, before the results were saved.
        with mock.patch.object(convergence_map.experiment, "save",
                               side_effect=KeyboardInterrupt):
          with self.assertRaises(KeyboardInterrupt):
            convergence_map.main(["convergence_map"])
        self.assertLen(os.listdir(os.path.join(workdir, "chunks")), 3)
        with mock.patch("builtins.print") as printed:
          convergence_map.main(["convergence_map"])
      lines = [str(c.args[0]) for c in printed.call_args_list if c.args]
      self.assertLen([x for x in lines if "loaded from a previous run" in x], 3)
      self.assertFalse(os.path.exists(os.path.join(workdir, "chunks")))  # removed
      with open(os.path.join(workdir, "results.json")) as f:
        self.assertEqual(json.load(f)["resumed_chunks"], 3)

  def test_bad_input_subprocess(self):
    with tempfile.TemporaryDirectory() as d:
      workdir = os.path.join(d, "out")
      proc = _run_binary(f"--workdir={workdir}", "--beta_max=1e-4")
      self.assertEqual(proc.returncode, 1)
      self.assertEqual(proc.stderr.strip().splitlines(), [
          "convergence_map: error: --beta_max: must be > --beta_min=0.005 "
          "(got 0.0001)"])
      self.assertFalse(os.path.exists(workdir))

  def test_library_rejects_contradicting_the_preset(self):
    with self.assertRaisesRegex(_checks.ConfigError, "^criterion: is fixed by"):
      experiment.preset("takagi_linear", criterion=maps.Criterion("loss", 0.5))

  def test_library_validation_names_the_field(self):
    cases = [
        (dict(alpha_min=0.1, alpha_max=0.1), "alpha_max", "must be > --alpha_min"),
        (dict(criterion=maps.Criterion("loss", 0.0)), "criterion.threshold", "> 0"),
        (dict(problem=dict(slope=2.0, intercept=3.0)), "problem", "needs exactly"),
        (dict(preset="sinusoid", problem=dict(num_tasks=3, n_support=10, n_query=10,
                                              lanczos_iters=1, top_k=8)),
         "lanczos_iters", "must be an integer >= 2"),
    ]
    for fields, name, detail in cases:
      with self.subTest(name=name):
        with self.assertRaises(_checks.ConfigError) as cm:
          experiment.validate(experiment.ConvergenceMapConfig(**fields))
        self.assertEqual(cm.exception.name, name)
        self.assertIn(detail, cm.exception.detail)
    # Restating a value the preset fixes is not a contradiction.
    self.assertEqual(experiment.preset("takagi_linear", dtype="float64").dtype,
                     "float64")

  def test_alpha_grid_holds_an_exact_zero(self):
    # linspace(−0.3, 0.1, 5)[3] is 5.6e-17 in floating point: α = 0 is made exact,
    # the other values are linspace's.
    config = experiment.preset("takagi_linear", alpha_min=-0.3, alpha_max=0.1,
                               alpha_num=5, beta_num=3)
    alpha, beta = experiment.grids(config)
    self.assertEqual(alpha[3], 0.0)
    np.testing.assert_array_equal(np.delete(alpha, 3),
                                  np.delete(np.linspace(-0.3, 0.1, 5), 3))
    np.testing.assert_allclose(beta, [5e-3, np.sqrt(5e-3 * 9.0), 9.0], rtol=1e-14)


if __name__ == "__main__":
  absltest.main()
