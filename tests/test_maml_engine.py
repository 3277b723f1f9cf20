"""Tests of the general MAML engine `negmeta.maml` (float64 via conftest)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads

from negmeta import maml
from negmeta import models
from negmeta.tasks import sample_sinusoid_batch

F64 = jnp.float64
SIZES = (1, 6, 5, 1)
# A wide init makes the second-order terms of the meta-gradient large enough
# to matter (with cbfinn's std 0.01 they are ~1e-4 of the first-order ones).
INIT_STD = 0.6


def tanh_apply(params, x):
  """Smooth MLP, so finite differences never straddle a ReLU kink."""
  return models.mlp_apply(params, x, activation=jnp.tanh)


def make_problem(seed=0, meta_batch=3, k_support=5, k_query=4):
  kp, kb = jax.random.split(jax.random.key(seed))
  params = models.mlp_init(kp, SIZES, stddev=INIT_STD, dtype=F64)
  batch = sample_sinusoid_batch(kb, meta_batch, k_support, k_query, dtype=F64)
  return params, batch


def full_rate(params, value):
  return jax.tree.map(lambda p: jnp.full_like(p, value), params)


def random_full_rate(key, params, low=-0.05, high=0.2):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [
      jax.random.uniform(k, p.shape, p.dtype, low, high)
      for k, p in zip(keys, leaves)])


def unrolled_adapt(apply_fn, params, alpha, x, y, steps):
  """Reference inner loop: a Python loop of explicit gradient steps."""
  rates = alpha if isinstance(alpha, (tuple, list, dict)) else jax.tree.map(
      lambda _: alpha, params)
  loss = lambda p: maml.mse(apply_fn(p, x), y)
  for _ in range(steps):
    grads = jax.grad(loss)(params)
    params = jax.tree.map(lambda p, a, g: p - a * g, params, rates, grads)
  return params


def unrolled_meta_loss(apply_fn, params, alpha, batch, steps):
  losses = []
  for b in range(batch.x_support.shape[0]):
    adapted = unrolled_adapt(apply_fn, params, alpha, batch.x_support[b],
                             batch.y_support[b], steps)
    losses.append(maml.mse(apply_fn(adapted, batch.x_query[b]),
                           batch.y_query[b]))
  return jnp.mean(jnp.stack(losses))


def assert_close(actual, expected, rtol=1e-12, atol=1e-14):
  chex.assert_trees_all_close(actual, expected, rtol=rtol, atol=atol)


class InnerLoopTest(parameterized.TestCase):

  @parameterized.product(steps=(0, 1, 3), alpha=(0.1, -0.2))
  def test_matches_unrolled_python_loop(self, steps, alpha):
    params, batch = make_problem()
    x, y = batch.x_support[0], batch.y_support[0]
    got = jax.jit(functools.partial(maml.inner_loop, tanh_apply,
                                    steps=steps))(params, alpha, x, y)
    want = unrolled_adapt(tanh_apply, params, alpha, x, y, steps)
    assert_close(got, want)
    if steps:  # The test is not vacuous: the parameters moved.
      self.assertGreater(
          float(jnp.max(jnp.abs(ravel_pytree(got)[0]
                                - ravel_pytree(params)[0]))), 1e-3)

  def test_meta_gradient_matches_unrolled_python_loop(self):
    params, batch = make_problem()
    alpha = random_full_rate(jax.random.key(3), params)
    f = lambda p, a: maml.meta_loss(tanh_apply, p, a, batch, steps=3)
    g = lambda p, a: unrolled_meta_loss(tanh_apply, p, a, batch, 3)
    assert_close(jax.jit(jax.value_and_grad(f, (0, 1)))(params, alpha),
                 jax.value_and_grad(g, (0, 1))(params, alpha), rtol=1e-11)

  def test_scalar_per_leaf_and_full_rates_agree(self):
    params, batch = make_problem()
    value = 0.07
    per_leaf = jax.tree.map(lambda _: jnp.asarray(value), params)
    full = full_rate(params, value)
    run = jax.jit(jax.value_and_grad(
        lambda p, a: maml.meta_loss(tanh_apply, p, a, batch, steps=2),
        argnums=(0, 1)))
    (l_s, (g_s, ga_s)), (l_l, (g_l, ga_l)), (l_f, (g_f, ga_f)) = (
        run(params, jnp.asarray(value)), run(params, per_leaf),
        run(params, full))
    assert_close((l_l, g_l), (l_s, g_s), rtol=1e-14)
    assert_close((l_f, g_f), (l_s, g_s), rtol=1e-14)
    # dL/dα for a shared rate is the sum of the per-leaf / per-entry ones.
    assert_close(sum(jax.tree.leaves(ga_l)), ga_s, rtol=1e-12)
    assert_close(sum(jnp.sum(a) for a in jax.tree.leaves(ga_f)), ga_s,
                 rtol=1e-12)
    x, y = batch.x_support[0], batch.y_support[0]
    adapt = jax.jit(functools.partial(maml.inner_loop, tanh_apply, steps=2))
    assert_close(adapt(params, per_leaf, x, y), adapt(params, value, x, y),
                 rtol=1e-15)
    assert_close(adapt(params, full, x, y), adapt(params, value, x, y),
                 rtol=1e-15)

  def test_per_leaf_rate_adapts_only_the_leaves_it_names(self):
    params, batch = make_problem()
    # ANIL-style: zero rate on the body, a negative rate on the head.
    rates = tuple({"w": jnp.asarray(0.0), "b": jnp.asarray(0.0)}
                  for _ in params[:-1]) + (
                      {"w": jnp.asarray(-0.3), "b": jnp.asarray(0.1)},)
    x, y = batch.x_support[0], batch.y_support[0]
    got = maml.inner_loop(tanh_apply, params, rates, x, y, steps=1)
    grads = jax.grad(lambda p: maml.mse(tanh_apply(p, x), y))(params)
    assert_close(got[:-1], params[:-1], rtol=0, atol=0)
    assert_close(got[-1]["w"], params[-1]["w"] + 0.3 * grads[-1]["w"])
    assert_close(got[-1]["b"], params[-1]["b"] - 0.1 * grads[-1]["b"])

  def test_rate_of_wrong_shape_is_rejected(self):
    params, batch = make_problem()
    x, y = batch.x_support[0], batch.y_support[0]
    bad = jax.tree.map(lambda p: jnp.zeros(p.shape + (2,)), params)
    with self.assertRaisesRegex(ValueError, r"alpha\[0\]\['b'\]"):
      maml.inner_loop(tanh_apply, params, bad, x, y, steps=1)
    with self.assertRaisesRegex(ValueError, "scalar"):
      maml.inner_loop(tanh_apply, params, jnp.ones(3), x, y, steps=1)
    with self.assertRaisesRegex(ValueError, "structure"):
      maml.inner_loop(tanh_apply, params, (0.1, 0.2), x, y, steps=1)


class MetaGradientTest(parameterized.TestCase):

  def test_second_order_matches_finite_differences(self):
    params, batch = make_problem()
    alpha = random_full_rate(jax.random.key(1), params)
    f = jax.jit(lambda p, a: maml.meta_loss(tanh_apply, p, a, batch, steps=2))
    # Directional derivatives (fwd) and VJPs (rev) against central differences.
    check_grads(f, (params, alpha), order=1, modes=("fwd", "rev"),
                atol=1e-7, rtol=1e-7)
    check_grads(lambda a: f(params, a), (jnp.asarray(0.05),), order=2,
                modes=("rev",), atol=1e-6, rtol=1e-6)

  def test_second_order_matches_explicit_central_differences(self):
    params, batch = make_problem(seed=4)
    flat, unravel = ravel_pytree(params)
    f = lambda v, a: maml.meta_loss(tanh_apply, unravel(v), a, batch, steps=1)
    grad = jax.jit(jax.grad(f, (0, 1)))(flat, 0.1)
    eps = 1e-6
    fd = np.array([(f(flat.at[i].add(eps), 0.1) - f(flat.at[i].add(-eps), 0.1))
                   / (2 * eps) for i in range(flat.size)])
    fd_alpha = (f(flat, 0.1 + eps) - f(flat, 0.1 - eps)) / (2 * eps)
    np.testing.assert_allclose(grad[0], fd, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grad[1], fd_alpha, rtol=1e-6, atol=1e-9)

  def test_one_step_second_order_closed_form(self):
    # ∇_θ L_q(θ') = (I − α ∇²L_s(θ)) ∇L_q(θ'), averaged over tasks.
    params, batch = make_problem(seed=2)
    flat, unravel = ravel_pytree(params)
    alpha = 0.15
    got = jax.grad(lambda v: maml.meta_loss(
        tanh_apply, unravel(v), alpha, batch, steps=1))(flat)
    want = []
    for b in range(batch.x_support.shape[0]):
      support = lambda v: maml.mse(tanh_apply(unravel(v), batch.x_support[b]),
                                   batch.y_support[b])
      query = lambda v: maml.mse(tanh_apply(unravel(v), batch.x_query[b]),
                                 batch.y_query[b])
      adapted = flat - alpha * jax.grad(support)(flat)
      hess = jax.hessian(support)(flat)
      want.append((jnp.eye(flat.size) - alpha * hess) @ jax.grad(query)(
          adapted))
    want = jnp.mean(jnp.stack(want), 0)
    assert_close(got, want, rtol=1e-11)
    first_order = jax.grad(lambda v: maml.meta_loss(
        tanh_apply, unravel(v), alpha, batch, steps=1, first_order=True))(flat)
    # The Hessian term is not negligible here, so the test can tell them apart.
    self.assertGreater(float(jnp.linalg.norm(first_order - want)),
                       1e-2 * float(jnp.linalg.norm(want)))

  @parameterized.parameters(1, 3)
  def test_first_order_is_query_gradient_at_adapted_params(self, steps):
    params, batch = make_problem(seed=5)
    alpha = 0.1
    f = lambda p, a: maml.meta_loss(tanh_apply, p, a, batch, steps=steps,
                                    first_order=True)
    got_params, got_alpha = jax.jit(jax.grad(f, (0, 1)))(params, alpha)
    want_params, want_alpha = [], []
    for b in range(batch.x_support.shape[0]):
      xs, ys = batch.x_support[b], batch.y_support[b]
      adapted, grad_sum = params, jax.tree.map(jnp.zeros_like, params)
      for _ in range(steps):
        g = jax.grad(lambda p: maml.mse(tanh_apply(p, xs), ys))(adapted)
        grad_sum = jax.tree.map(jnp.add, grad_sum, g)
        adapted = jax.tree.map(lambda p, g: p - alpha * g, adapted, g)
      query_grad = jax.grad(lambda p: maml.mse(
          tanh_apply(p, batch.x_query[b]), batch.y_query[b]))(adapted)
      want_params.append(query_grad)
      # θ_K = θ − α Σ_k g_k with g_k held constant ⇒ ∂/∂α = −Σ_k g_k · ∇L_q.
      want_alpha.append(-sum(jnp.vdot(s, q) for s, q in zip(
          jax.tree.leaves(grad_sum), jax.tree.leaves(query_grad))))
    mean = lambda trees: jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs), 0),
                                      *trees)
    assert_close(got_params, mean(want_params))
    assert_close(got_alpha, jnp.mean(jnp.stack(want_alpha)))

  @parameterized.parameters(False, True)
  def test_remat_gives_same_values_and_gradients(self, first_order):
    params, batch = make_problem(seed=6)
    alpha = random_full_rate(jax.random.key(7), params)
    vg = lambda remat: jax.jit(jax.value_and_grad(
        lambda p, a: maml.meta_loss(tanh_apply, p, a, batch, steps=4,
                                    first_order=first_order, remat=remat),
        argnums=(0, 1)))(params, alpha)
    assert_close(vg(True), vg(False), rtol=1e-13)

  def test_remat_memory_grows_only_by_the_carry(self):
    # Compiled temp memory of the second-order meta-gradient: without remat
    # each extra inner step stores the carry θ_k plus residuals of the
    # gradient computation; with remat it stores only θ_k (B·|θ| floats).
    params = models.mlp_init(jax.random.key(0), dtype=jnp.float32)
    batch = sample_sinusoid_batch(jax.random.key(1), 25, 10, 10,
                                  dtype=jnp.float32)
    carry_bytes = 25 * ravel_pytree(params)[0].size * 4

    def temp_bytes(steps, remat):
      grad = jax.jit(jax.grad(lambda p, b: maml.meta_loss(
          models.mlp_apply, p, 0.01, b, steps=steps, remat=remat)))
      return grad.lower(params, batch).compile().memory_analysis(
      ).temp_size_in_bytes

    slope = {r: (temp_bytes(17, r) - temp_bytes(1, r)) / 16
             for r in (False, True)}
    self.assertLess(slope[True], 0.75 * slope[False])
    self.assertLessEqual(slope[True], 1.1 * carry_bytes)


class MetaLossTest(absltest.TestCase):

  def test_adapt_and_evaluate_records_losses_per_step(self):
    params, batch = make_problem(meta_batch=4)
    alpha, steps = 0.05, 3
    out = jax.jit(functools.partial(maml.adapt_and_evaluate, tanh_apply,
                                    steps=steps))(params, alpha, batch)
    self.assertEqual(out.query.shape, (4, steps + 1))
    self.assertEqual(out.support.shape, (4, steps + 1))
    for b in range(4):
      for k in range(steps + 1):
        adapted = unrolled_adapt(tanh_apply, params, alpha, batch.x_support[b],
                                 batch.y_support[b], k)
        assert_close(out.query[b, k], maml.mse(
            tanh_apply(adapted, batch.x_query[b]), batch.y_query[b]))
        assert_close(out.support[b, k], maml.mse(
            tanh_apply(adapted, batch.x_support[b]), batch.y_support[b]))
    assert_close(out.query[:, -1], maml.task_losses(
        tanh_apply, params, alpha, batch, steps=steps))
    assert_close(jnp.mean(out.query[:, -1]), maml.meta_loss(
        tanh_apply, params, alpha, batch, steps=steps))

  def test_flax_linen_model_matches_pure_mlp(self):
    module = models.LinenMLP(features=SIZES[1:], param_dtype=F64)
    variables = module.init(jax.random.key(0), jnp.zeros((1, 1), F64))
    dense = variables["params"]
    pure = tuple({"w": dense[f"dense_{i}"]["kernel"],
                  "b": dense[f"dense_{i}"]["bias"]} for i in range(3))
    _, batch = make_problem()
    linen_apply = lambda p, x: module.apply(p, x)
    f = lambda apply_fn, p: jax.value_and_grad(
        lambda q: maml.meta_loss(apply_fn, q, -0.05, batch, steps=2))(p)
    loss_l, grad_l = f(linen_apply, variables)
    loss_p, grad_p = f(models.mlp_apply, pure)
    assert_close(loss_l, loss_p)
    assert_close(tuple({"w": grad_l["params"][f"dense_{i}"]["kernel"],
                        "b": grad_l["params"][f"dense_{i}"]["bias"]}
                       for i in range(3)), grad_p)


def sinusoid_sampler(meta_batch=4):
  return functools.partial(sample_sinusoid_batch, meta_batch=meta_batch,
                           k_support=5, k_query=5, dtype=F64)


def init_fn(key):
  return models.mlp_init(key, (1, 8, 8, 1), dtype=F64, stddev=0.3)


class MetaTrainTest(parameterized.TestCase):

  @parameterized.parameters(False, True)
  def test_matches_python_reference(self, learn_alpha):
    params = init_fn(jax.random.key(0))
    alpha = full_rate(params, 0.02) if learn_alpha else jnp.asarray(-0.02)
    key, sampler, optimizer = jax.random.key(1), sinusoid_sampler(), optax.adam(
        1.0)
    meta_lr, num_steps = 0.01, 4
    got = jax.jit(functools.partial(
        maml.meta_train, models.mlp_apply, optimizer=optimizer,
        sample_batch=sampler, num_steps=num_steps, steps=2,
        learn_alpha=learn_alpha))(params, alpha, key=key, meta_lr=meta_lr)
    target = (params, alpha) if learn_alpha else params
    opt_state = optimizer.init(target)
    losses = []
    for t in range(num_steps):
      batch = sampler(jax.random.fold_in(key, t))
      objective = lambda tg: maml.meta_loss(
          models.mlp_apply, *(tg if learn_alpha else (tg, alpha)), batch,
          steps=2)
      loss, grads = jax.value_and_grad(objective)(target)
      updates, opt_state = optimizer.update(grads, opt_state, target)
      target = optax.apply_updates(
          target, jax.tree.map(lambda u: meta_lr * u, updates))
      losses.append(loss)
    want_params, want_alpha = target if learn_alpha else (target, alpha)
    assert_close(got.losses, jnp.stack(losses), rtol=1e-11)
    assert_close(got.state.params, want_params, rtol=1e-10)
    assert_close(got.state.alpha, want_alpha, rtol=1e-10)
    self.assertFalse(got.diverged)
    self.assertEqual(int(got.diverged_step), -1)
    if learn_alpha:  # α really was meta-learned.
      self.assertGreater(float(jnp.max(jnp.abs(
          ravel_pytree(got.state.alpha)[0] - 0.02))), 1e-3)

  def test_meta_lr_is_traced_not_baked_in(self):
    params = init_fn(jax.random.key(0))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(alpha, meta_lr):
      return maml.meta_train(models.mlp_apply, params, alpha, optax.sgd(1.0),
                             sinusoid_sampler(), jax.random.key(0),
                             num_steps=3, steps=1, meta_lr=meta_lr)

    a = run(jnp.asarray(0.01), jnp.asarray(0.1))
    b = run(jnp.asarray(-0.02), jnp.asarray(0.3))
    self.assertFalse(np.allclose(a.losses[1:], b.losses[1:]))

  def test_diverged_run_keeps_last_finite_state(self):
    params = init_fn(jax.random.key(0))
    train = lambda num_steps: maml.meta_train(
        models.mlp_apply, params, 0.01, optax.sgd(1.0), sinusoid_sampler(),
        jax.random.key(2), num_steps=num_steps, steps=1, meta_lr=1e4)
    result = jax.jit(lambda: train(30))()
    self.assertTrue(result.diverged)
    step = int(result.diverged_step)
    self.assertBetween(step, 1, 28)
    self.assertTrue(maml.all_finite(result.state))
    self.assertTrue(np.all(np.isfinite(result.losses[:step])))
    self.assertTrue(np.all(np.isnan(result.losses[step + 1:])))
    # The kept state is the state before the diverging update.
    before = jax.jit(lambda: train(step))()
    assert_close(result.state.params, before.state.params, rtol=1e-12)
    np.testing.assert_array_equal(result.losses[:step], before.losses)


class GridTest(absltest.TestCase):

  def _grid_fn(self, num_steps=20):

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(alpha, meta_lr, seed):
      return maml.meta_train_grid(models.mlp_apply, init_fn, optax.sgd(1.0),
                                  sinusoid_sampler(), alpha, meta_lr, seed,
                                  num_steps=num_steps, steps=1)

    return run

  def test_grid_product(self):
    a, b, s = maml.grid_product(jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0, 5.0]),
                                jnp.array([7]))
    np.testing.assert_array_equal(a, [1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(b, [3, 4, 5, 3, 4, 5])
    np.testing.assert_array_equal(s, [7] * 6)

  def test_whole_grid_is_traced_once(self):
    run = self._grid_fn()
    first = run(*maml.grid_product(jnp.array([-0.05, 0.0, 0.05]),
                                   jnp.array([0.01, 0.1]), jnp.arange(2)))
    second = run(*maml.grid_product(jnp.array([-0.1, 0.02, 0.1]),
                                    jnp.array([0.03, 0.2]), jnp.arange(2, 4)))
    self.assertEqual(first.losses.shape, (12, 20))
    self.assertFalse(np.allclose(first.losses, second.losses))

  def test_member_equals_single_run(self):
    alpha, meta_lr, seed = (jnp.array([0.05, -0.03]), jnp.array([0.1, 0.2]),
                            jnp.array([0, 5]))
    grid = self._grid_fn()(alpha, meta_lr, seed)
    for g in range(2):
      init_key, train_key = jax.random.split(jax.random.key(seed[g]))
      single = jax.jit(lambda: maml.meta_train(
          models.mlp_apply, init_fn(init_key), alpha[g], optax.sgd(1.0),
          sinusoid_sampler(), train_key, num_steps=20, steps=1,
          meta_lr=meta_lr[g]))()
      assert_close(jax.tree.map(lambda x: x[g], grid), single, rtol=1e-10)

  def test_diverging_member_does_not_touch_other_members(self):
    run = self._grid_fn()
    alpha = jnp.array([0.05, -0.02, 0.01, 0.1])
    seed = jnp.array([0, 1, 2, 0])
    benign = run(alpha, jnp.array([0.1, 0.05, 0.1, 0.2]), seed)
    blown = run(alpha, jnp.array([0.1, 0.05, 1e4, 0.2]), seed)
    np.testing.assert_array_equal(blown.diverged, [False, False, True, False])
    self.assertFalse(np.any(benign.diverged))
    self.assertGreaterEqual(int(blown.diverged_step[2]), 0)
    np.testing.assert_array_equal(benign.diverged_step, [-1] * 4)
    self.assertTrue(np.all(np.isnan(
        blown.losses[2, int(blown.diverged_step[2]) + 1:])))
    self.assertTrue(maml.all_finite(blown.state))
    for g in (0, 1, 3):
      for got, want in zip(jax.tree.leaves(jax.tree.map(lambda x: x[g], blown)),
                           jax.tree.leaves(jax.tree.map(lambda x: x[g],
                                                        benign))):
        np.testing.assert_array_equal(got, want)  # bit-identical


if __name__ == "__main__":
  absltest.main()
