"""Nonlinear (quadratic) regression study: NTK linearization, its exact meta-solution,
lazy-limit agreement with the trained network, one trace per sweep, the binary."""

import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from absl.testing import absltest, parameterized

from negmeta import _checks, io, linear, maml
from negmeta.nonlinear import _study, experiment, ntk
from negmeta import nonlinear as nl

BINARY = os.path.join(os.path.dirname(__file__), os.pardir, "experiments",
                      "nonlinear_sweep.py")
TINY = ["--d=3", "--width=8", "--m=2", "--n_t=3", "--n_v=2", "--n_r=3", "--seeds=2",
        "--test_tasks=4", "--test_points=3", "--grid=-1,1", "--num_steps=5",
        "--alpha_r=0.5,1"]


def _problem(d=3, **kw):
  args = dict(w_norm=0.5, b_mean=0.5, nu_w=0.3, nu_b=0.3, sigma=0.3)
  args.update(kw)
  return nl.quadratic_problem(d, dtype=jnp.float64, **args)


def _net(width, d, key=0, antisymmetric=True):
  module = nl.TwoLayerReLU(width, param_dtype=jnp.float64)
  params = nl.antisymmetric_init(module, jax.random.key(key), d,
                                 antisymmetric=antisymmetric)
  return (lambda p, x: module.apply(p, x)), params


class TasksAndModelTest(absltest.TestCase):

  def test_sampler_shapes_and_mean(self):
    prob = _problem(d=4)
    batch = nl.sample_tasks(jax.random.key(1), prob, 4000, 3, 2)
    self.assertEqual(batch.x_support.shape, (4000, 3, 4))
    self.assertEqual(batch.y_query.shape, (4000, 2))
    # E y = ‖w̄‖² + ν_w² + b̄² + ν_b² (x ~ N(0, I), E z = 0).
    y = np.asarray(batch.y_support).ravel()
    expected = 0.5**2 + 0.3**2 + 0.5**2 + 0.3**2
    self.assertLess(abs(y.mean() - expected), 4 * y.std() / np.sqrt(y.size))

  def test_label_noise_is_sigma_and_support_query_share_a_task(self):
    key, n = jax.random.key(3), 3000
    clean = nl.sample_tasks(key, _problem(d=4, sigma=0.0), n, 3, 2)
    noisy = nl.sample_tasks(key, _problem(d=4, sigma=0.3), n, 3, 2)
    np.testing.assert_array_equal(clean.x_support, noisy.x_support)
    np.testing.assert_array_equal(clean.x_query, noisy.x_query)
    # The same key draws the same tasks and inputs: the difference is the noise.
    z = np.concatenate([np.ravel(noisy.y_support - clean.y_support),
                        np.ravel(noisy.y_query - clean.y_query)]) / 0.3
    self.assertLess(abs(z.mean()), 4 / np.sqrt(z.size))
    self.assertLess(abs(z.var() - 1.0), 4 * np.sqrt(2.0 / z.size))
    # Noise-free targets of support and query points are one task's (wᵀx + b)².
    w, b = nl.sample_task_params(jax.random.split(key, 3)[0], _problem(d=4), n)
    np.testing.assert_allclose(clean.y_support, nl.quadratic_targets(clean.x_support, w, b),
                               rtol=1e-12)
    np.testing.assert_allclose(clean.y_query, nl.quadratic_targets(clean.x_query, w, b),
                               rtol=1e-12)

  def test_antisymmetric_init_is_the_zero_function(self):
    apply, params = _net(16, 3)
    x = jax.random.normal(jax.random.key(2), (5, 3), jnp.float64)
    # Paired units cancel up to the rounding of the width-16 sum (terms O(1)).
    np.testing.assert_allclose(apply(params, x), np.zeros(5), atol=1e-14)
    with self.assertRaisesRegex(ValueError, "even"):
      nl.antisymmetric_init(nl.TwoLayerReLU(5), jax.random.key(0), 3)


class NTKParameterizationTest(absltest.TestCase):

  def test_tangent_kernel_is_the_closed_form_of_the_ntk_parameterization(self):
    # f = aᵀrelu(u)/√h + b₂, u = Wᵀx/√d + b₁: the tangent kernel is
    # Θ(x, x') = [relu(u)·relu(u') + Σᵢ aᵢ² 1[uᵢ > 0] 1[u'ᵢ > 0] (xᵀx'/d + 1)]/h + 1.
    d, h = 3, 10
    apply, params = _net(h, d, key=0, antisymmetric=False)
    lin = ntk.linearize(apply, params)
    x = 2.0 * jax.random.normal(jax.random.key(1), (6, d), jnp.float64)
    phi = lin.features(x)
    p = {k: np.asarray(v) for k, v in params["params"].items()}
    u = np.asarray(x) @ p["w1"] / np.sqrt(d) + p["b1"]                 # [n, h]
    on = (u > 0).astype(float)
    want = (np.maximum(u, 0) @ np.maximum(u, 0).T
            + ((on * p["w2"] ** 2) @ on.T) * (np.asarray(x) @ np.asarray(x).T / d + 1)
            ) / h + 1
    np.testing.assert_allclose(phi @ phi.T, want, rtol=1e-12)

  def test_random_network_output_variance_is_the_relu_nngp(self):
    # Plain init, all of W, b₁, a ~ N(0, 1) and b₂ = 0: for every width,
    # E f(x)² = E relu(u)² = (‖x‖²/d + 1)/2, u ~ N(0, ‖x‖²/d + 1).
    d, h, n = 3, 8, 4000
    module = nl.TwoLayerReLU(h, param_dtype=jnp.float64)
    x = jnp.array([[2.0, -2.0, 2.0], [0.0, 0.0, 0.0]], jnp.float64)    # ‖x‖² = 12, 0
    f = jax.vmap(lambda k: module.apply(
        nl.antisymmetric_init(module, k, d, antisymmetric=False), x))(
            jax.random.split(jax.random.key(2), n))                    # [n, 2]
    f2 = np.asarray(f) ** 2
    for j, sq in enumerate((12.0, 0.0)):
      self.assertAlmostEqual(f2[:, j].mean(), (sq / d + 1) / 2,
                             delta=5 * f2[:, j].std() / np.sqrt(n))

  def test_linearized_model_keeps_the_initial_function(self):
    # Without the antisymmetric pairing f(·; θ₀) ≠ 0: f_lin = f(θ₀) + Φδ, and the
    # adapted test loss of the linearized model is the engine's on that model.
    d = 3
    apply, params = _net(8, d, key=3, antisymmetric=False)
    lin = ntk.linearize(apply, params)
    test = nl.sample_tasks(jax.random.key(4), _problem(), 3, 3, 4)
    x = test.x_query.reshape(-1, d)
    f0 = apply(params, x)
    self.assertGreater(float(jnp.min(jnp.abs(f0))), 1e-3)
    deltas = 0.3 * jax.random.normal(jax.random.key(5), (2, lin.num_params), jnp.float64)
    np.testing.assert_allclose(lin.f0(x), f0, rtol=1e-13)
    np.testing.assert_allclose(lin.predict(deltas[0], x),
                               f0 + lin.features(x) @ deltas[0], rtol=1e-12)
    explicit = lambda delta, xs: apply(params, xs) + lin.features(xs) @ delta  # noqa: E731
    got = jax.jit(lambda dl: ntk.adapted_test_loss(lin, dl, test, jnp.array([0.2, -0.5]),
                                                   chunk=2))(deltas)
    engine = jax.jit(jax.vmap(jax.vmap(
        lambda dl, a: maml.adapt_and_evaluate(explicit, dl, a, test, steps=1,
                                              loss_fn=_study.half_mse).query[:, 1],
        in_axes=(None, 0)), in_axes=(0, None)))
    ref = engine(deltas, jnp.array([0.2, -0.5]))                      # [G, A, T]
    np.testing.assert_allclose(got, np.transpose(ref, (2, 1, 0)), rtol=1e-10)


class TaskDistributionTest(absltest.TestCase):

  def test_task_spreads_and_targets(self):
    # Distinct spreads: w − w̄ ~ N(0, ν_w²/d I), b − b̄ ~ N(0, ν_b²).
    d, n = 5, 4000
    prob = _problem(d=d, w_norm=1.0, b_mean=-0.4, nu_w=0.2, nu_b=0.7)
    w, b = (np.asarray(a) for a in nl.sample_task_params(jax.random.key(6), prob, n))
    np.testing.assert_allclose(w.mean(axis=0), np.full(d, 1 / np.sqrt(d)),
                               atol=5 * 0.2 / np.sqrt(d * n))
    self.assertAlmostEqual(b.mean(), -0.4, delta=5 * 0.7 / np.sqrt(n))
    self.assertAlmostEqual(w.var(axis=0).mean() / (0.2**2 / d), 1.0,
                           delta=5 * np.sqrt(2 / (d * n)))
    self.assertAlmostEqual(b.var() / 0.7**2, 1.0, delta=5 * np.sqrt(2 / n))
    # Targets (wᵀx + b)² against NumPy, with b of both signs.
    x = np.asarray(jax.random.normal(jax.random.key(7), (n, 2, d), jnp.float64))
    np.testing.assert_allclose(nl.quadratic_targets(x, w, b),
                               (np.einsum("tnd,td->tn", x, w) + b[:, None]) ** 2,
                               rtol=1e-12)


def _study_sizes(**kw):
  args = dict(d=3, width=8, m=2, n_t=4, n_v=2, n_r=3, n_s=5, test_tasks=4,
              num_steps=7, momentum=0.9, antisymmetric=True, dtype="float64",
              grid_batch=2, eval_batch=2, ntk_chunk=2)
  args.update(kw)
  return _study.Sizes(**args)


class StudyKernelTest(absltest.TestCase):

  def test_run_draws_fresh_test_tasks_of_the_right_sizes(self):
    sizes = _study_sizes()
    run = _study.make_run(jax.random.key(13), _problem(), sizes)
    self.assertEqual(run.train.x_support.shape, (2, 4, 3))
    self.assertEqual(run.train.x_query.shape, (2, 2, 3))
    self.assertEqual(run.test.x_support.shape, (4, 3, 3))     # n_r adaptation points
    self.assertEqual(run.test.x_query.shape, (4, 5, 3))       # n_s test points
    train_x = np.concatenate([np.ravel(run.train.x_support), np.ravel(run.train.x_query)])
    test_x = np.concatenate([np.ravel(run.test.x_support), np.ravel(run.test.x_query)])
    self.assertFalse(np.any(np.isin(test_x, train_x)))

  def test_curvatures_and_path_loss_against_autodiff(self):
    # The α_t unit (calibrate), the meta-curvature and the NTK path's training
    # loss, each against autodiff on the run's linearized network.
    sizes, prob = _study_sizes(), _problem()
    keys = jax.random.key(14)[None]
    alpha = jnp.array([-0.3, 0.5])
    lam = _study.calibrate(keys, prob, sizes)[0]                       # [m]
    top, bottom = _study.ntk_curvature(keys, prob, alpha, sizes)
    paths, path_loss = _study.ntk_paths(keys, prob, alpha, jnp.full((1, 2), 0.2), sizes)
    run = _study.make_run(keys[0], prob, sizes)
    lin = ntk.linearize(_study.apply_fn(sizes), run.params0)
    zero = jnp.zeros_like(lin.flat0)
    support = lambda dl, xs, ys: _study.half_mse(lin.predict(dl, xs), ys)  # noqa: E731
    support_h = jax.jit(jax.vmap(jax.hessian(support), in_axes=(None, 0, 0)))
    eig = np.linalg.eigvalsh(np.asarray(support_h(zero, run.train.x_support,
                                                  run.train.y_support)))
    np.testing.assert_allclose(lam, eig[:, -1], rtol=1e-9)
    meta = lambda dl, a: maml.meta_loss(  # noqa: E731
        lin.predict, dl, a, run.train, steps=1, loss_fn=_study.half_mse)
    meta_h = jax.jit(jax.vmap(jax.hessian(meta), in_axes=(None, 0)))
    n = sizes.m * sizes.n_v
    eig = np.linalg.eigvalsh(np.asarray(meta_h(zero, alpha)))[:, -n:]
    np.testing.assert_allclose(top[0], eig[:, -1], rtol=1e-8)
    np.testing.assert_allclose(bottom[0], eig[:, 0], rtol=1e-8)
    np.testing.assert_allclose(path_loss[0], jax.jit(jax.vmap(meta))(paths[0], alpha),
                               rtol=1e-10)

  def test_training_is_heavy_ball_on_the_one_step_maml_loss(self):
    # Two outer steps of `train` against a hand-written one-inner-step MAML
    # loss ½·MSE_query(θ − α ∇½·MSE_support(θ)), averaged over the run's tasks,
    # and heavy-ball steps v ← g + μv, θ ← θ − βv.
    sizes, prob = _study_sizes(num_steps=2), _problem()
    keys = jax.random.key(15)[None]
    alpha, beta = jnp.array([-0.6, 0.4]), 0.3
    result = _study.train(keys, prob, alpha, jnp.full((1, 2), beta), sizes)
    run = _study.make_run(keys[0], prob, sizes)
    apply = _study.apply_fn(sizes)
    mse = lambda p, x, y: 0.5 * jnp.mean((apply(p, x) - y) ** 2)  # noqa: E731

    def maml_loss(p, a):
      def task(xs, ys, xq, yq):
        g = jax.grad(mse)(p, xs, ys)
        return mse(jax.tree.map(lambda w, d: w - a * d, p, g), xq, yq)
      return jnp.mean(jax.vmap(task)(*run.train))

    loss_and_grad = jax.jit(jax.value_and_grad(maml_loss))
    for g, a in enumerate(alpha):
      theta, velocity = run.params0, None
      for step in range(2):
        loss, grad = loss_and_grad(theta, a)
        np.testing.assert_allclose(result.losses[g, 0, step], loss, rtol=1e-10)
        velocity = grad if velocity is None else jax.tree.map(
            lambda u, v: u + sizes.momentum * v, grad, velocity)
        theta = jax.tree.map(lambda w, v: w - beta * v, theta, velocity)  # noqa: B023
      chex.assert_trees_all_close(jax.tree.map(lambda x: x[g, 0], result.state.params),
                                  theta, rtol=1e-10, atol=1e-12)


class LinearizationTest(absltest.TestCase):

  def test_linearization_matches_network_to_first_order(self):
    apply, params = _net(64, 3)
    lin = ntk.linearize(apply, params)
    x = jax.random.normal(jax.random.key(3), (7, 3), jnp.float64)
    v = jax.random.normal(jax.random.key(4), (lin.num_params,), jnp.float64)
    # Features are the Jacobian: Φv equals the JVP of the network.
    _, jvp = jax.jvp(lambda t: lin.apply_flat(t, x), (lin.flat0,), (v,))
    np.testing.assert_allclose(lin.features(x) @ v, jvp, rtol=1e-12, atol=1e-12)
    # f(θ₀ + εv) − f_lin(θ₀ + εv) = o(ε): the relative remainder vanishes with
    # ε (O(ε) but not monotone step by step: ReLU kinks are crossed at some ε).
    rel = []
    for eps in (1e-2, 1e-5):
      exact = lin.apply_flat(lin.flat0 + eps * v, x)
      rel.append(float(jnp.linalg.norm(exact - lin.predict(eps * v, x))
                       / jnp.linalg.norm(eps * jvp)))
    self.assertLess(rel[1], 1e-3)
    self.assertLess(rel[1], rel[0] / 20)

  def test_feature_space_solution_equals_linear_study_on_a_linear_model(self):
    # A model that *is* linear, y = θᵀx: the NTK meta-solution (nearest θ₀,
    # residual targets) must be the linear study's ω* with ω₀ = θ₀ ≠ 0.
    p, m, n_t, n_v = 12, 2, 5, 2
    key = jax.random.key(5)
    x = jax.random.normal(key, (m, n_t + n_v, p), jnp.float64)
    y = jax.random.normal(jax.random.key(6), (m, n_t + n_v), jnp.float64)
    batch = maml.TaskBatch(x[:, :n_t], y[:, :n_t], x[:, n_t:], y[:, n_t:])
    theta0 = jax.random.normal(jax.random.key(7), (p,), jnp.float64)
    lin = ntk.linearize(lambda w, xs: xs @ w, theta0)
    alphas = jnp.array([-0.7, 0.0, 0.3])
    delta = ntk.exact_solution(ntk.meta_design(lin, batch), alphas).omega
    raw = linear.meta_design(linear.TaskBatch(jnp.zeros(()), batch.x_support,
                                              batch.y_support, batch.x_query,
                                              batch.y_query))
    for g, a in enumerate(alphas):
      z, u = raw.at(a)
      omega = linear.min_distance_solution(z, u, theta0)
      np.testing.assert_allclose(theta0 + delta[g], omega, rtol=1e-9, atol=1e-10)


class ExactSolutionTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.apply, self.params = _net(32, 3, key=8)
    self.lin = ntk.linearize(self.apply, self.params)
    self.batch = nl.sample_tasks(jax.random.key(9), _problem(), 3, 4, 2)
    self.design = ntk.meta_design(self.lin, self.batch)
    # The linearized network as a model over δ, for the engine's meta-loss.
    self.lin_apply = lambda delta, x: self.lin.predict(delta, x)

  def _meta_loss(self, delta, alpha):
    return maml.meta_loss(self.lin_apply, delta, alpha, self.batch, steps=1,
                          loss_fn=_study.half_mse)

  @parameterized.parameters(-1.5, 0.0, 0.4)
  def test_stationary_interpolating_and_nearest_theta0(self, alpha):
    delta = ntk.exact_solution(self.design, jnp.array([alpha])).omega[0]
    zero = jnp.zeros_like(delta)
    # Stationary for the engine's meta-loss of the linearized network (autodiff
    # through the inner step), and interpolating (N = 6 < P).
    g0 = jnp.linalg.norm(jax.grad(self._meta_loss)(zero, alpha))
    g = jnp.linalg.norm(jax.grad(self._meta_loss)(delta, alpha))
    self.assertLess(float(g / g0), 1e-9)
    self.assertLess(float(self._meta_loss(delta, alpha)), 1e-18)
    # Nearest θ₀: δ* has no component in the null space of Z (δ* = Zᵀv).
    z, _ = self.design.at(alpha)
    v, *_ = jnp.linalg.lstsq(z.T, delta)
    np.testing.assert_allclose(z.T @ v, delta, atol=1e-10 * float(jnp.linalg.norm(delta)))

  @parameterized.parameters(-1.5, 0.4)
  def test_curvatures_are_hessian_eigenvalues(self, alpha):
    # The units of every rate (inner) and the outer step (meta) against autodiff.
    zero = jnp.zeros_like(self.lin.flat0)
    meta_h = jax.hessian(self._meta_loss)(zero, alpha)
    eigs = np.linalg.eigvalsh(np.asarray(meta_h))
    n = self.design.at(alpha)[0].shape[0]               # N = m·n_v nonzero ones
    np.testing.assert_allclose(np.sort(ntk.meta_curvature(self.design, alpha)),
                               eigs[-n:], rtol=1e-9)
    self.assertLess(float(np.max(np.abs(eigs[:-n]))), 1e-9 * eigs[-1])
    inner = ntk.inner_curvature(self.lin, self.batch.x_support)
    for task in range(self.batch.x_support.shape[0]):
      xs, ys = self.batch.x_support[task], self.batch.y_support[task]
      support_loss = lambda d: _study.half_mse(self.lin.predict(d, xs), ys)  # noqa: E731,B023
      top = np.linalg.eigvalsh(np.asarray(jax.hessian(support_loss)(zero)))[-1]
      np.testing.assert_allclose(inner[task], top, rtol=1e-10)

  def test_dual_path_is_primal_heavy_ball(self):
    alpha, steps = 0.3, 25
    opt = optax.sgd(1.0, momentum=0.9)
    lr = 1.0 / ntk.meta_curvature(self.design, alpha)[-1]
    dual = ntk.dual_optimizer_path(self.design, alpha, opt, lr, steps)
    delta = jnp.zeros_like(dual)
    state = opt.init(delta)
    grad = jax.jit(jax.grad(self._meta_loss), static_argnums=1)
    for _ in range(steps):
      grads = grad(delta, alpha)
      updates, state = opt.update(grads, state, delta)
      delta = delta + lr * updates
    np.testing.assert_allclose(dual, delta, rtol=1e-9, atol=1e-12)
    # …and converges to the exact solution.
    far = ntk.dual_optimizer_path(self.design, alpha, opt, lr, 3000)
    exact = ntk.exact_solution(self.design, jnp.array([alpha])).omega[0]
    np.testing.assert_allclose(far, exact, rtol=1e-6, atol=1e-8)

  def test_adapted_test_loss_matches_engine_on_linearized_model(self):
    delta = ntk.exact_solution(self.design, jnp.array([0.2, -0.4])).omega
    test = nl.sample_tasks(jax.random.key(10), _problem(), 5, 3, 4)
    got = ntk.adapted_test_loss(self.lin, delta, test, jnp.array([0.3, 0.7]), chunk=2)
    engine = jax.jit(functools.partial(maml.adapt_and_evaluate, self.lin_apply, steps=1,
                                       loss_fn=_study.half_mse))
    for g in range(2):
      for a, rate in enumerate((0.3, 0.7)):
        ref = engine(delta[g], rate, test).query[:, 1]
        np.testing.assert_allclose(got[:, a, g], ref, rtol=1e-10)


def _lazy_gap(width):
  """Trained network vs linearized model after the same outer steps (tiny problem).

  Returns the relative squared distance of their (unadapted) functions on the
  test inputs and the largest |test loss difference| after adaptation.
  """
  sizes = _study.Sizes(d=3, width=width, m=2, n_t=4, n_v=2, n_r=3, n_s=4,
                       test_tasks=4, num_steps=20, momentum=0.9, antisymmetric=True,
                       dtype="float64", grid_batch=2, eval_batch=2, ntk_chunk=4)
  prob = _problem()
  keys = jax.random.key(11)[None]
  alpha = jnp.array([-0.4, 0.2])
  lr = jnp.full((1, 2), 0.1)
  paths, _ = _study.ntk_paths(keys, prob, alpha, lr, sizes)
  trained = _study.train(keys, prob, alpha, lr, sizes)
  ev = _study.evaluate_trained(keys, prob, trained.state.params, jnp.array([0.3]), sizes)
  nev = _study.evaluate_ntk(keys, prob, paths, jnp.array([0.3]), sizes)
  pred_tr = np.asarray(ev.predictions).transpose(1, 0, 2, 3)
  pred_lin = np.asarray(nev.predictions)
  function_gap = np.mean((pred_tr - pred_lin) ** 2) / np.mean(pred_lin**2)
  loss_gap = np.max(np.abs(np.asarray(ev.loss)[..., 0].T - np.asarray(nev.loss)[:, 0]))
  return function_gap, loss_gap


class LazyLimitTest(absltest.TestCase):

  def test_trained_network_approaches_ntk_as_width_grows(self):
    # NTK parameterization: the trained network's distance to its linearization
    # after the same outer steps shrinks like 1/√width in norm (1/width squared).
    # 64× the width: expect ~64× in the squared function gap, ~8× in losses
    # (measured at seed 11: 97× and 21×).
    narrow_f, narrow_l = _lazy_gap(32)
    wide_f, wide_l = _lazy_gap(2048)
    self.assertLess(wide_f, narrow_f / 16)
    self.assertLess(wide_l, narrow_l / 4)

  def test_trained_evaluation_matches_engine(self):
    sizes = _study.Sizes(d=3, width=8, m=2, n_t=3, n_v=2, n_r=3, n_s=4, test_tasks=5,
                         num_steps=2, momentum=0.9, antisymmetric=True,
                         dtype="float64", grid_batch=1, eval_batch=2, ntk_chunk=2)
    prob = _problem()
    keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(12), r))(jnp.arange(2))
    # Any parameters [G=1, R=2] will do: the runs' initial ones, perturbed.
    params0 = jax.vmap(lambda k: _study.make_run(k, prob, sizes).params0)(keys)
    params = jax.tree.map(lambda a: (a + 0.1 * jnp.cos(a))[None], params0)
    rates = jnp.array([0.1, 0.6])
    ev = _study.evaluate_trained(keys, prob, params, rates, sizes)
    engine = jax.jit(functools.partial(maml.adapt_and_evaluate, _study.apply_fn(sizes),
                                       steps=1, loss_fn=_study.half_mse))
    for r in range(2):
      test = _study.make_run(keys[r], prob, sizes).test
      p_r = jax.tree.map(lambda a: a[0, r], params)
      for a in range(2):
        ref = engine(p_r, rates[a], test).query
        np.testing.assert_allclose(ev.loss[0, r, a], ref[:, 1].mean(), rtol=1e-12)
      np.testing.assert_allclose(ev.loss_unadapted[0, r], ref[:, 0].mean(), rtol=1e-12)


class OneTraceTest(absltest.TestCase):

  def test_whole_grid_of_runs_traces_once(self):
    sizes = _study.Sizes(d=2, width=4, m=2, n_t=2, n_v=1, n_r=2, n_s=2, test_tasks=2,
                         num_steps=3, momentum=0.9, antisymmetric=True,
                         dtype="float64", grid_batch=2, eval_batch=2, ntk_chunk=2)
    counted = jax.jit(chex.assert_max_traces(_study._train_grid, n=1),
                      static_argnames=("sizes",))
    prob = _problem(d=2)
    keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(0), r))(jnp.arange(3))
    first = counted(keys, prob, jnp.array([-1.0, 0.0, 0.5]), jnp.full((3, 3), 0.1),
                    sizes=sizes)
    second = counted(keys, _problem(d=2, sigma=0.9), jnp.array([0.2, 0.3, -2.0]),
                     jnp.full((3, 3), 0.05), sizes=sizes)
    self.assertEqual(first.losses.shape, (3, 3, 3))   # [G, R, steps]
    self.assertFalse(np.allclose(first.losses, second.losses))


def _run(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, BINARY, *args], capture_output=True, text=True,
                        timeout=timeout, env=env)


class BinaryTest(absltest.TestCase):

  def test_tiny_run_writes_results_figure_and_table(self):
    with tempfile.TemporaryDirectory() as d:
      proc = _run(f"--workdir={d}", *TINY)
      self.assertEqual(proc.returncode, 0, msg=proc.stderr[-3000:])
      self.assertIn("NTK exact", proc.stdout)
      self.assertIn("curvature λ̄", proc.stdout)
      self.assertEqual(sorted(os.listdir(d)),
                       ["nonlinear_sweep.png", "results.json", "runs.npz"])
      with open(os.path.join(d, "results.json")) as f:
        rec = json.load(f)
      self.assertEqual(rec["config"]["grid"], [-1.0, 0.0, 1.0])   # 0 added
      self.assertEqual(rec["seeds"]["runs"], 2)
      self.assertIn("jax", rec["runtime"]["versions"])
      self.assertGreater(rec["curvature"]["lambda_bar"], 0)
      entry = rec["grid"][0]
      for key in ("trained", "ntk", "ntk_same_steps", "diverged", "by_alpha_r"):
        self.assertIn(key, entry)
      self.assertEqual(entry["trained"]["runs"], 2)
      self.assertLen(entry["by_alpha_r"], 2)
      self.assertLen(rec["optimum"], 2)
      data = np.load(os.path.join(d, "runs.npz"))
      self.assertEqual(data["loss_trained"].shape, (2, 2, 3))   # [R, A, G]
      np.testing.assert_allclose(data["loss_ntk"][:, 0, 0].mean(),
                                 entry["ntk"]["mean"])
      with open(os.path.join(d, "nonlinear_sweep.png"), "rb") as f:
        self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


class ResumeTest(absltest.TestCase):

  def test_interrupted_sweep_resumes_from_its_finished_stages(self):
    cfg = experiment.NonlinearSweepConfig(
        d=3, width=8, m=2, n_t=3, n_v=2, n_r=3, num_steps=5, grid=(-1.0, 0.0, 1.0),
        seeds=2, test_tasks=4, test_points=3)
    reference = experiment.run(cfg)
    with tempfile.TemporaryDirectory() as d:
      with mock.patch.object(_study, "evaluate_ntk", side_effect=KeyboardInterrupt):
        with self.assertRaises(KeyboardInterrupt):
          experiment.run(cfg, store_dir=d)
      self.assertLen(os.listdir(d), 6)          # every stage before the last
      log = []
      resumed = experiment.run(cfg, store_dir=d, log=log.append)
      stored = {}
      for i, name in enumerate(resumed.resumed_stages):
        with np.load(os.path.join(d, f"chunk_{i:05d}.npz")) as chunk:
          stored[name] = float(chunk["extra_seconds"])
      # The loaded values are the ones used: a value planted in the stored
      # evaluation of the trained networks (stage 5) shows in the result.
      store = io.ChunkStore(d, io.fingerprint(io.config_identity(cfg)))
      chunk = store.load(5)
      store.save(5, {k: (np.full_like(v, 7.0) if k.startswith("leaf_") and v.dtype.kind == "f"
                         else v) for k, v in chunk.items()})
      marked = experiment.run(cfg, store_dir=d)
      ok = ~np.broadcast_to(marked.diverged[:, None, :], marked.losses["trained"].shape)
      self.assertTrue(ok.any())
      np.testing.assert_array_equal(marked.losses["trained"][ok], 7.0)
      # Another seed's run loads none of these stages.
      self.assertEqual(experiment.run(dataclasses.replace(cfg, seed=1),
                                      store_dir=d).resumed_stages, ())
    loaded = [line.split(":")[0] for line in log if "by a previous run" in line]
    stages = ["calibrate", "ntk_solve", "ntk_curvature", "ntk_same_steps", "train",
              "evaluate_trained"]
    self.assertEqual(loaded, stages)
    self.assertEqual(list(resumed.resumed_stages), stages)
    # A loaded stage reports the time it took when computed, not the load.
    self.assertEqual({k: resumed.seconds[k] for k in stages}, stored)
    self.assertNotIn("evaluate_ntk", resumed.resumed_stages)
    self.assertEqual(experiment.record(resumed)["resumed_stages"], stages)
    self.assertEqual(experiment.record(reference)["resumed_stages"], [])
    with tempfile.TemporaryDirectory() as d:   # save → load round trip
      experiment.save(resumed, d)
      back = experiment.load(d)
    self.assertEqual(back.resumed_stages, resumed.resumed_stages)
    self.assertEqual(back.seconds, resumed.seconds)
    for name in resumed.losses:
      np.testing.assert_array_equal(back.losses[name], resumed.losses[name])
    np.testing.assert_array_equal(back.diverged, resumed.diverged)
    for name in reference.losses:
      np.testing.assert_array_equal(reference.losses[name], resumed.losses[name])
    np.testing.assert_array_equal(reference.loss_trace, resumed.loss_trace)
    np.testing.assert_array_equal(reference.function_gap, resumed.function_gap)
    self._check_table_counts(reference)

  def _check_table_counts(self, result):
    """The table says where a curve averages fewer runs than were not diverged."""
    self.assertNotIn("averaged over fewer runs", experiment.summary_table(result))
    diverged = result.diverged.copy()
    diverged[0, 2] = True                  # run 0 diverged at α_t = 1 ...
    trained = result.losses["trained"].copy()
    trained[:, :, 2] = np.nan              # ... and run 1's test loss overflowed
    ntk = result.losses["ntk"].copy()
    ntk[1, 0, 0] = np.inf                  # one NTK run at α_t = −1
    same_steps = result.losses["ntk_same_steps"].copy()
    same_steps[0, 0, 2] = np.nan           # the NTK does not diverge with the net
    planted = dataclasses.replace(
        result, diverged=diverged,
        losses={**result.losses, "trained": trained, "ntk": ntk,
                "ntk_same_steps": same_steps})
    line = experiment.summary_table(planted).splitlines()
    short = [x for x in line if x.startswith("averaged over fewer runs")]
    self.assertLen(short, 1)
    self.assertIn("trained at α_t = 1: 0 of 1", short[0])
    self.assertIn("ntk at α_t = -1: 1 of 2", short[0])
    self.assertIn("ntk_same_steps at α_t = 1: 1 of 2", short[0])
    self.assertEqual(short[0].count(" of "), 3)


def _planted_sweep(losses, *, diverged=None, alpha_r=(0.5, 1.0), grid=(-1.0, 0.0, 1.0)):
  """A NonlinearSweepResult around planted per-run losses {curve: [R, A, G]}."""
  r, a, g = losses["trained"].shape
  config = experiment.validate(experiment.NonlinearSweepConfig(
      grid=grid, alpha_r=alpha_r, seeds=r))
  rng = np.random.default_rng(9)
  diverged = np.zeros((r, g), bool) if diverged is None else diverged
  curv_max = rng.uniform(2.0, 3.0, (r, g))
  curv_min = rng.uniform(0.1, 1.0, (r, g))
  return experiment.NonlinearSweepResult(
      config=config, curvature={"lambda_bar": 2.0, "lambda_std": 0.1, "lambda_min": 1.9,
                                "lambda_max": 2.1, "alpha_unit": 0.5},
      alpha_t=np.asarray(config.grid) * 0.5, alpha_r=np.asarray(alpha_r) * 0.5,
      losses=losses, trained_unadapted=rng.uniform(1.0, 2.0, (r, g)),
      diverged=diverged, final_meta_loss=rng.uniform(0.1, 0.2, (r, g)),
      ntk_final_meta_loss=rng.uniform(0.1, 0.2, (r, g)),
      function_gap=rng.uniform(0.0, 1.0, (r, g)) ** 3,
      meta_curvature=(curv_max, curv_min), rcond=rng.uniform(0.01, 1.0, (r, g)),
      loss_trace=np.zeros((r, g, 2)), optimum=[], seconds={"train": 0.0})


class PlantedSweepTest(absltest.TestCase):
  """Reported numbers of planted per-run losses, recomputed in NumPy."""

  def test_optimum_of(self):
    grid = np.array([-1.0, 0.0, 1.0])
    values = np.array([[2.0, 1.5, 1.0], [2.5, 1.0, 0.5], [3.0, 2.5, 2.4],
                       [1.0, 3.0, 0.9]])
    o = experiment.optimum_of(values, grid, zero_index=1)
    d = values[:, 2] - values[:, 1]
    self.assertEqual(o["argmin"], 1.0)
    self.assertAlmostEqual(o["min"], values[:, 2].mean(), places=14)
    self.assertAlmostEqual(o["min_se"], values[:, 2].std(ddof=1) / 2, places=14)
    self.assertAlmostEqual(o["min_minus_at_zero"], d.mean(), places=14)
    self.assertAlmostEqual(o["min_minus_at_zero_se"], d.std(ddof=1) / 2, places=14)
    self.assertEqual(o["bootstrap_runs"], 4)
    # Two runs preferring opposite ends, flat in the middle on average: a
    # resample is (A, A) → −1, (B, B) → +1 or mixed → 0, with probabilities
    # 1/4, 1/4, 1/2; 2000 resamples put each within ±0.05 of that.
    two = np.array([[0.0, 1.0, 3.0], [3.0, 1.0, 0.0]])
    b = experiment.optimum_of(two, grid, zero_index=1)
    self.assertEqual(b["bootstrap_resamples"], 2000)
    self.assertAlmostEqual(b["bootstrap_p_negative"], 0.25, delta=0.05)
    self.assertAlmostEqual(b["bootstrap_p_positive"], 0.25, delta=0.05)
    self.assertEqual(b["bootstrap_argmin_68"], [-1.0, 1.0])
    self.assertEqual(b["bootstrap_argmin_95"], [-1.0, 1.0])
    # Half the resamples tie the runs: the 68% interval is the middle.
    one_sided = np.array([[0.0, 1.0, 3.0], [3.0, 1.0, 1.5]])
    c = experiment.optimum_of(one_sided, grid, zero_index=1)
    self.assertEqual(c["bootstrap_argmin_68"], [-1.0, 0.0])
    self.assertEqual(c["bootstrap_p_positive"], 0.0)

  def test_record_and_table(self):
    rng = np.random.default_rng(4)
    losses = {k: rng.uniform(1.0, 2.0, (4, 2, 3)) for k in experiment.CURVES}
    diverged = np.zeros((4, 3), bool)
    diverged[1, 2] = True
    losses["trained"][1, :, 2] = np.nan
    losses["ntk"][3, 0, 0] = np.inf
    res = _planted_sweep(losses, diverged=diverged)
    rec = experiment.record(res)
    self.assertEqual([g["diverged"] for g in rec["grid"]], [0, 0, 1])
    for i, entry in enumerate(rec["grid"]):
      self.assertEqual(entry["alpha_t"], res.config.grid[i])
      for a, by in enumerate(entry["by_alpha_r"]):
        self.assertEqual(by["alpha_r"], res.config.alpha_r[a])
        for name in experiment.CURVES:
          v = losses[name][:, a]
          ok = np.isfinite(v[:, i])
          self.assertEqual(by[name]["runs"], int(ok.sum()))
          self.assertAlmostEqual(by[name]["mean"], v[ok, i].mean(), places=13)
          d = v[:, i] - v[:, 1]
          d = d[np.isfinite(d)]
          self.assertAlmostEqual(by[name]["minus_at_zero"]["mean"], d.mean(), places=13)
        d = losses["trained"][:, a, i] - losses["ntk"][:, a, i]
        d = d[np.isfinite(d)]
        self.assertAlmostEqual(by["trained_minus_ntk"]["mean"], d.mean(), places=13)
        self.assertAlmostEqual(by["trained_minus_ntk"]["se"],
                               d.std(ddof=1) / np.sqrt(d.size), places=13)
      for key in ("trained", "ntk", "ntk_same_steps", "trained_minus_ntk"):
        self.assertEqual(entry[key], entry["by_alpha_r"][0][key])
      self.assertAlmostEqual(entry["ntk_same_steps_final_meta_loss_median"],
                             np.median(res.ntk_final_meta_loss[:, i]), places=14)
      self.assertAlmostEqual(entry["function_gap_median"],
                             np.median(res.function_gap[:, i]), places=14)
      self.assertAlmostEqual(entry["meta_condition_median"], np.median(
          res.meta_curvature[0][:, i] / res.meta_curvature[1][:, i]), places=12)
      self.assertAlmostEqual(entry["min_rcond"], res.rcond[:, i].min(), places=14)
    # The runs differ between α_r values: the second is not the first again.
    self.assertNotEqual(rec["grid"][0]["by_alpha_r"][1]["trained"]["mean"],
                        rec["grid"][0]["by_alpha_r"][0]["trained"]["mean"])

  def test_validate_outer_lr_bound_and_boolean(self):
    with self.assertRaises(_checks.ConfigError) as cm:    # at the bound: unstable
      experiment.validate(experiment.NonlinearSweepConfig(outer_lr=3.8, momentum=0.9))
    self.assertEqual(cm.exception.name, "outer_lr")
    self.assertEqual(experiment.validate(experiment.NonlinearSweepConfig(
        outer_lr=3.79, momentum=0.9)).outer_lr, 3.79)
    with self.assertRaises(_checks.ConfigError) as cm:
      experiment.validate(experiment.NonlinearSweepConfig(antisymmetric="yes"))
    self.assertEqual(cm.exception.name, "antisymmetric")


  def test_figure_shows_each_alpha_r_panels_curves_and_optima(self):
    from negmeta import plotting
    from negmeta.nonlinear import _plot
    rng = np.random.default_rng(6)
    # [R=4, A=2, G=3]: each curve and panel its own numbers, argmins apart.
    losses = {k: rng.uniform(1.0, 2.0, (4, 2, 3)) for k in experiment.CURVES}
    losses["trained"][:, 0, 0] -= 0.8      # panel 0: trained best at α_t = −1,
    losses["ntk"][:, 0, 2] -= 0.8          # NTK best at +1
    losses["trained"][:, 1, 2] -= 0.5      # panel 1: trained at +1,
    losses["ntk"][:, 1, 1] -= 0.6          # NTK at 0
    res = _planted_sweep(losses)
    grid = res.grid
    res.optimum.extend({name: experiment.optimum_of(v[:, a], grid, zero_index=1, seed=0)
                        for name, v in losses.items()} for a in range(2))
    self.assertEqual(res.config.units, "curvature")
    fig = _plot.sweep_figure(res)
    try:
      fig.canvas.draw()
      panels = [ax for ax in fig.axes if ax.get_ylabel()]
      self.assertLen(panels, 2)
      for a, ax in enumerate(panels):
        stat = {k: (v[:, a].mean(0), v[:, a].std(0, ddof=1) / 2) for k, v in losses.items()}
        lines = {line.get_label(): line for line in ax.get_lines()}
        for label, name, color in (
            ("NTK prediction (exact, nearest θ₀)", "ntk", "black"),
            (f"NTK, same optimizer & {res.config.num_steps} steps", "ntk_same_steps",
             "grey")):
          mean, se = stat[name]
          np.testing.assert_allclose(lines[label].get_xydata(), np.stack([grid, mean], 1),
                                     rtol=1e-12, err_msg=name)
          # The shaded band is mean ± s.e., in the line's colour.
          (band,) = [c for c in ax.collections if isinstance(c, PolyCollection) and
                     np.allclose(c.get_facecolor()[0][:3], to_rgb(color))]
          v = band.get_paths()[0].vertices
          for xi, m, e in zip(grid, mean, se):
            ys = v[np.isclose(v[:, 0], xi), 1]
            np.testing.assert_allclose([ys.min(), ys.max()], [m - e, m + e], rtol=1e-12,
                                       err_msg=name)
        (container,) = ax.containers
        self.assertEqual(container.get_label(), f"trained network (width {res.config.width})")
        data, _, (segments,) = container.lines
        mean, se = stat["trained"]
        np.testing.assert_allclose(data.get_xydata(), np.stack([grid, mean], 1), rtol=1e-12)
        seg = np.asarray(segments.get_segments())
        np.testing.assert_allclose(seg[:, 1, 1] - seg[:, 0, 1], 2 * se, rtol=1e-9)
        np.testing.assert_allclose(seg[:, 0, 0], grid)
        # Optimum stars at the smallest plotted means of their own curve.
        for name, label, color in (("trained", "trained", "tab:red"), ("ntk", "NTK", "black")):
          i = int(np.argmin(stat[name][0]))
          (star,) = [v for k, v in lines.items() if k.startswith(f"{label} optimum ")]
          self.assertTrue(star.get_label().startswith(f"{label} optimum {grid[i]:g} ("))
          np.testing.assert_allclose(star.get_xydata(), [[grid[i], stat[name][0][i]]],
                                     rtol=1e-12, err_msg=name)
          self.assertEqual(to_rgb(star.get_color()), to_rgb(color))
        self.assertNotEqual(np.argmin(stat["trained"][0]), np.argmin(stat["ntk"][0]))
        # Axes: α_t in units of 1/λ̄ below, absolute (× 1/λ̄ = 0.5) on top.
        self.assertEqual((ax.get_xscale(), ax.get_yscale()), ("linear", "linear"))
        self.assertEqual(ax.get_xlabel(),
                         r"learning rate $\alpha_t$ (training), units of $1/\bar\lambda$")
        self.assertEqual(ax.get_ylabel(), "average test loss")
        (top,) = ax.child_axes
        np.testing.assert_allclose(top.get_xlim(), np.array(ax.get_xlim()) / 2.0)
        self.assertEqual(top.get_xlabel(), r"$\alpha_t$ (absolute)")
        self.assertIn(f"α_r = {res.config.alpha_r[a]:g} /λ̄", ax.get_title())
        lo, hi = ax.get_ylim()
        # Every error bar and band is shown whole (panel 1's NTK band reaches
        # below every other value: its lower edge sets the limit).
        for name, (m, e) in stat.items():
          self.assertTrue(np.all((lo < m - e) & (m + e < hi)), msg=(name, lo, hi))
    finally:
      plotting.close(fig)


class ReportedRatesTest(absltest.TestCase):

  def test_curvature_unit_and_absolute_rates(self):
    # ResumeTest's sizes (its compiled stages are reused), two adaptation rates.
    cfg = experiment.NonlinearSweepConfig(
        d=3, width=8, m=2, n_t=3, n_v=2, n_r=3, num_steps=5, grid=(-1.0, 0.0, 1.0),
        seeds=2, test_tasks=4, test_points=3, alpha_r=(0.5, 1.0))
    res = experiment.run(cfg)
    # λ_max(J Jᵀ / n_t), J the network's Jacobian at θ₀ on each training task's
    # support inputs, by autodiff, for every run and task.
    sizes = experiment.sizes_of(cfg)
    lams = []
    with jax.enable_x64(True):
      apply = _study.apply_fn(sizes)
      prob = experiment.make_problem(cfg)
      for key in experiment.run_keys(cfg):
        run = _study.make_run(key, prob, sizes)
        for x in np.asarray(run.train.x_support, np.float64):
          jac = jax.jacobian(lambda p: apply(p, x))(run.params0)  # noqa: B023
          j = np.concatenate([np.asarray(v, np.float64).reshape(x.shape[0], -1)
                              for v in jax.tree.leaves(jac)], axis=1)
          lams.append(np.linalg.eigvalsh(j @ j.T / x.shape[0])[-1])
    lams = np.array(lams)
    self.assertLen(lams, 4)
    c = res.curvature
    np.testing.assert_allclose(
        [c["lambda_bar"], c["lambda_std"], c["lambda_min"], c["lambda_max"]],
        [lams.mean(), lams.std(ddof=1), lams.min(), lams.max()], rtol=1e-6)
    self.assertAlmostEqual(c["alpha_unit"] * c["lambda_bar"], 1.0, places=12)
    self.assertAlmostEqual(c["alpha_unit"] * lams.mean(), 1.0, places=5)
    unit = c["alpha_unit"]
    np.testing.assert_allclose(res.alpha_t, np.array([-1.0, 0.0, 1.0]) * unit,
                               rtol=1e-12)
    rec = experiment.record(res)
    np.testing.assert_allclose(rec["alpha_r_absolute"], [0.5 * unit, unit], rtol=1e-12)
    for a, entry in enumerate(res.optimum):
      self.assertEqual(entry["alpha_r"], cfg.alpha_r[a])
      self.assertAlmostEqual(entry["alpha_r_absolute"], cfg.alpha_r[a] * unit,
                             places=12)
      for name in experiment.CURVES:
        if entry[name]["argmin"] is not None:
          self.assertAlmostEqual(entry[name]["argmin_absolute"],
                                 entry[name]["argmin"] * unit, places=12)
    # In absolute units the rates are used as given.
    absolute = experiment.run(dataclasses.replace(cfg, units="absolute"))
    self.assertEqual(absolute.curvature["alpha_unit"], 1.0)
    np.testing.assert_array_equal(absolute.alpha_t, [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(absolute.alpha_r, [0.5, 1.0])


# ResumeTest's sizes: its compiled stages are reused.
_TINY_SWEEP = experiment.NonlinearSweepConfig(
    d=3, width=8, m=2, n_t=3, n_v=2, n_r=3, num_steps=5, grid=(-1.0, 0.0, 1.0),
    seeds=2, test_tasks=4, test_points=3)


class RunAssemblyTest(absltest.TestCase):
  """How `run` turns the stages' outputs into curves, traces and masks."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.reference = experiment.run(_TINY_SWEEP)

  def test_exact_ntk_curve_does_not_depend_on_the_outer_rate(self):
    # The outer rate is an array argument: no new compilation.
    slow = experiment.run(dataclasses.replace(_TINY_SWEEP, outer_lr=0.5))
    ref = self.reference
    # The exact NTK solution is the meta-loss minimiser: the outer rate cannot
    # enter it; the same-steps curve and the network's training follow it.
    np.testing.assert_array_equal(slow.losses["ntk"], ref.losses["ntk"])
    for values in (lambda r: r.losses["ntk_same_steps"], lambda r: r.loss_trace[:, :, 1:]):
      self.assertGreater(np.min(np.abs(values(slow) - values(ref))), 0.0)
    # The final meta-loss is the last of the num_steps recorded losses.
    self.assertEqual(ref.loss_trace.shape, (2, 3, 5))
    np.testing.assert_array_equal(ref.final_meta_loss, ref.loss_trace[:, :, -1])
    self.assertTrue(np.all(ref.final_meta_loss != ref.loss_trace[:, :, 0]))

  def test_diverged_runs_are_masked_in_every_network_quantity(self):
    real_train = _study.train

    def train_with_a_diverged_run(*args, **kwargs):
      out = real_train(*args, **kwargs)            # diverged: [G, R]
      return out._replace(diverged=out.diverged.at[2, 1].set(True))

    reference = self.reference
    self.assertFalse(reference.diverged.any())
    with mock.patch.object(_study, "train", train_with_a_diverged_run):
      res = experiment.run(_TINY_SWEEP)
    bad = np.zeros((2, 3), bool)
    bad[1, 2] = True                               # run 1 at α_t = 1
    np.testing.assert_array_equal(res.diverged, bad)
    for name, values in (("trained_unadapted", res.trained_unadapted),
                         ("function_gap", res.function_gap),
                         ("trained", res.losses["trained"].transpose(1, 0, 2)[0])):
      self.assertTrue(np.isnan(values[bad]).all(), msg=name)
      self.assertTrue(np.isfinite(values[~bad]).all(), msg=name)
    # The linearized model does not diverge with the network.
    for name in ("ntk", "ntk_same_steps"):
      np.testing.assert_array_equal(res.losses[name], reference.losses[name])


class BadInputTest(parameterized.TestCase):
  """One-line error naming the flag and its allowed values; exit ≠ 0."""

  @parameterized.named_parameters(
      ("odd_width", dict(width=7), "width", "must be an even integer"),
      ("one_seed", dict(seeds=1), "seeds", "must be an integer >= 2"),
      ("no_test_tasks", dict(test_tasks=0), "test_tasks", "must be an integer >= 1"),
      ("negative_noise", dict(sigma=-1.0), "sigma", ">= 0"),
      ("momentum_one", dict(momentum=1.0), "momentum", "<= 0.99"),
      ("unstable_outer_lr", dict(outer_lr=4.0), "outer_lr", "< 2(1 + momentum) = 3.8"),
      ("zero_outer_lr", dict(outer_lr=0.0), "outer_lr", "> 0"),
      ("nan_rate", dict(alpha_r=(float("nan"),)), "alpha_r", "only finite"),
      ("empty_grid", dict(grid=()), "grid", "at least one value"),
      ("bad_units", dict(units="fast"), "units", "must be one of curvature, absolute"),
      ("huge_grid_value", dict(grid=(1e300, -1.0)), "grid", "|x| <= 1e+06 (got 1e+300)"),
      ("huge_alpha_r", dict(alpha_r=(-2e6,)), "alpha_r", "|x| <= 1e+06 (got -2e+06)"),
  )
  def test_validate(self, fields, name, detail):
    with self.assertRaises(_checks.ConfigError) as cm:
      experiment.validate(experiment.NonlinearSweepConfig(**fields))
    self.assertEqual(cm.exception.name, name)
    self.assertIn(detail, cm.exception.detail)

  def test_optimum_without_runs_finite_on_the_whole_grid(self):
    grid = np.array([-1.0, 0.0, 1.0])
    values = np.array([[1.0, 2.0, np.nan], [1.2, 2.1, 3.0], [np.nan, 1.9, 2.5]])
    o = experiment.optimum_of(values, grid, zero_index=1)
    self.assertEqual(o["argmin"], -1.0)
    self.assertEqual(o["bootstrap_runs"], 1)
    self.assertIsNone(o["bootstrap_argmin_68"])
    self.assertIn("bootstrap: none, 1 run(s)", experiment._optimum_line("x", o, "/λ̄"))
    full = experiment.optimum_of(values[1:2].repeat(3, 0) + np.arange(3)[:, None] * 0.01,
                                 grid, zero_index=1)
    self.assertEqual(full["bootstrap_argmin_68"], [-1.0, -1.0])
    self.assertEqual(full["bootstrap_p_negative"], 1.0)

  def test_preset_contradiction(self):
    with self.assertRaisesRegex(_checks.ConfigError, "contradicts --preset=fig5"):
      experiment.preset("fig5", d=5)
    self.assertEqual(experiment.preset("fig5", seeds=10).seeds, 10)

  @parameterized.named_parameters(
      ("nan_alpha_r", ["--alpha_r=0.5,nan"],
       "nonlinear_sweep: error: --alpha_r: must contain only finite values"),
      ("preset", ["--preset=fig5", "--m=4", "--grid_min=1", "--grid_max=-1"],
       "nonlinear_sweep: error: --grid_max: must be >="),
      ("huge_grid_num", ["--grid_num=2000000000"],
       "nonlinear_sweep: error: --grid_num: must be an integer in [1, 1000]"),
      ("parser_error", ["--antisymmetric=maybe"],
       "nonlinear_sweep: error: --antisymmetric: must be true or false"),
      ("negated_bool_with_value", ["--noantisymmetric=true"],
       "nonlinear_sweep: error: --noantisymmetric: takes no value (got 'true')"),
  )
  def test_binary_one_line_error(self, args, message):
    with tempfile.TemporaryDirectory() as d:
      proc = _run(f"--workdir={d}", *args, timeout=60)
      self.assertNotEqual(proc.returncode, 0)
      lines = proc.stderr.strip().splitlines()
      self.assertTrue(lines[-1].startswith(message), msg=proc.stderr[-2000:])
      self.assertEqual(os.listdir(d), [])

  def test_binary_requires_workdir(self):
    proc = _run("--seeds=2", timeout=60)
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn("nonlinear_sweep: error: --workdir: is required", proc.stderr)


if __name__ == "__main__":
  absltest.main()
