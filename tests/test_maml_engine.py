"""Tests of the general MAML engine `negmeta.maml` (float64 via conftest).

Every reference computation (unrolled Python loops, closed forms, finite
differences) is jitted once and compared in NumPy, so the file's run time is
dominated by a few dozen small XLA compilations, not by eager dispatch.
"""

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
from negmeta.maml import _inner as maml_inner
from negmeta import models
from negmeta.tasks import sample_sinusoid_batch

F64 = jnp.float64
SIZES = (1, 8, 1)  # One hidden layer keeps the compiled programs small.
# A wide init makes the second-order terms of the meta-gradient large enough
# to matter (with cbfinn's std 0.01 they are ~1e-4 of the first-order ones).
INIT_STD = 0.6


def tanh_apply(params, x):
  """Smooth MLP, so finite differences never straddle a ReLU kink."""
  return models.mlp_apply(params, x, activation=jnp.tanh)


def numpy_mlp(rng, sizes, std):
  """MLP parameters (the `models.mlp_init` tree) drawn with NumPy."""
  return tuple({"w": std * rng.standard_normal((d_in, d_out)),
                "b": 0.1 * rng.standard_normal(d_out)}
               for d_in, d_out in zip(sizes[:-1], sizes[1:]))


def numpy_sinusoids(rng, meta_batch, k_support, k_query):
  """Sinusoid tasks drawn with NumPy (the sampler is tested elsewhere)."""
  amp = rng.uniform(0.1, 5.0, (meta_batch, 1, 1))
  phase = rng.uniform(0.0, np.pi, (meta_batch, 1, 1))
  x = rng.uniform(-5.0, 5.0, (meta_batch, k_support + k_query, 1))
  y = amp * np.sin(x - phase)
  return maml.TaskBatch(x[:, :k_support], y[:, :k_support], x[:, k_support:],
                        y[:, k_support:])


def make_problem(seed=0):
  """(params, TaskBatch of 3 tasks, a random per-parameter rate tree).

  Drawn with NumPy, so building a problem compiles nothing.
  """
  rng = np.random.default_rng(seed)
  params = numpy_mlp(rng, SIZES, INIT_STD)
  batch = numpy_sinusoids(rng, 3, 5, 4)
  rates = jax.tree.map(lambda p: rng.uniform(-0.05, 0.2, p.shape), params)
  return params, batch, rates


def to_numpy(tree):
  return jax.tree.map(np.asarray, tree)


def flat_numpy(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(to_numpy(tree))])


def assert_close(actual, expected, rtol=1e-12, atol=1e-14):
  chex.assert_trees_all_equal_structs(actual, expected)
  for a, e in zip(jax.tree.leaves(to_numpy(actual)),
                  jax.tree.leaves(to_numpy(expected))):
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


def assert_bitwise_equal(actual, expected):
  chex.assert_trees_all_equal_structs(actual, expected)
  for a, e in zip(jax.tree.leaves(to_numpy(actual)),
                  jax.tree.leaves(to_numpy(expected))):
    np.testing.assert_array_equal(a, e)


def unrolled_adapt(apply_fn, params, alpha, x, y, steps):
  """Reference inner loop: a Python loop of explicit gradient steps."""
  rates = alpha if isinstance(alpha, tuple) else jax.tree.map(
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


@functools.cache
def two_step_meta_gradients():
  """Value and (θ, α)-gradient of the K=2 meta-loss, computed four ways.

  Returns (scan, scan with remat, (first-order with remat, first-order
  without), unrolled Python-loop reference), compiled together once and shared
  by the tests that compare them.
  """
  params, batch, alpha = make_problem(seed=6)

  @jax.jit
  def run(p, a):
    vg = lambda loss: jax.value_and_grad(loss, argnums=(0, 1))(p, a)
    scan = lambda remat, first_order: vg(lambda p, a: maml.meta_loss(
        tanh_apply, p, a, batch, steps=2, first_order=first_order,
        remat=remat))
    return (scan(False, False), scan(True, False),
            (scan(True, True), scan(False, True)),
            vg(lambda p, a: unrolled_meta_loss(tanh_apply, p, a, batch, 2)))

  return to_numpy(run(params, alpha))


class InnerLoopTest(parameterized.TestCase):

  def test_matches_unrolled_python_loop(self):
    params, batch, _ = make_problem()
    x, y = batch.x_support[0], batch.y_support[0]
    alphas = jnp.array([0.1, -0.2])
    all_steps = (0, 1, 3)

    @jax.jit
    def run(p, alphas):
      adapt = lambda k: jax.vmap(functools.partial(
          maml.inner_loop, tanh_apply, steps=k), in_axes=(None, 0, None, None))
      reference = lambda k: jax.vmap(
          lambda a: unrolled_adapt(tanh_apply, p, a, x, y, k))
      return [(adapt(k)(p, alphas, x, y), reference(k)(alphas))
              for k in all_steps]

    for steps, (got, want) in zip(all_steps, to_numpy(run(params, alphas))):
      assert_close(got, want)
      moved = max(np.max(np.abs(g - p[None])) for g, p in zip(
          jax.tree.leaves(got), jax.tree.leaves(to_numpy(params))))
      self.assertEqual(moved > 1e-3, steps > 0)  # Not vacuous.

  def test_meta_gradient_matches_unrolled_python_loop(self):
    scan, _, _, unrolled = two_step_meta_gradients()
    assert_close(scan, unrolled, rtol=1e-11)

  def test_scalar_per_leaf_and_full_rates_agree(self):
    params, batch, _ = make_problem()
    value = 0.07
    per_leaf = jax.tree.map(lambda _: np.float64(value), params)
    full = jax.tree.map(lambda p: np.full(p.shape, value), params)
    x, y = batch.x_support[0], batch.y_support[0]

    @jax.jit
    def run(alpha_scalar, alpha_leaf, alpha_full):
      outs = []
      for alpha in (alpha_scalar, alpha_leaf, alpha_full):
        loss_and_grads = jax.value_and_grad(
            lambda p, a: maml.meta_loss(tanh_apply, p, a, batch, steps=1),
            argnums=(0, 1))(params, alpha)
        outs.append((loss_and_grads, maml.inner_loop(
            tanh_apply, params, alpha, x, y, steps=2)))
      return outs

    ((l_s, (g_s, ga_s)), adapted_s), ((l_l, (g_l, ga_l)), adapted_l), (
        (l_f, (g_f, ga_f)), adapted_f) = to_numpy(run(value, per_leaf, full))
    assert_close((l_l, g_l, adapted_l), (l_s, g_s, adapted_s), rtol=1e-14)
    assert_close((l_f, g_f, adapted_f), (l_s, g_s, adapted_s), rtol=1e-14)
    # dL/dα for a shared rate is the sum of the per-leaf / per-entry ones.
    assert_close(sum(jax.tree.leaves(ga_l)), ga_s, rtol=1e-12)
    assert_close(flat_numpy(ga_f).sum(), ga_s, rtol=1e-12)

  def test_per_leaf_rate_adapts_only_the_leaves_it_names(self):
    params, batch, _ = make_problem()
    # ANIL-style: zero rate on the body, signed rates on the head.
    rates = tuple({"w": 0.0, "b": 0.0} for _ in params[:-1]) + (
        {"w": -0.3, "b": 0.1},)
    x, y = batch.x_support[0], batch.y_support[0]
    got, grads = to_numpy(jax.jit(lambda p, r: (
        maml.inner_loop(tanh_apply, p, r, x, y, steps=1),
        jax.grad(lambda q: maml.mse(tanh_apply(q, x), y))(p)))(params, rates))
    params = to_numpy(params)
    assert_bitwise_equal(got[:-1], params[:-1])
    assert_close(got[-1]["w"], params[-1]["w"] + 0.3 * grads[-1]["w"])
    assert_close(got[-1]["b"], params[-1]["b"] - 0.1 * grads[-1]["b"])

  def test_rate_of_wrong_shape_is_rejected(self):
    params, batch, _ = make_problem()
    x, y = batch.x_support[0], batch.y_support[0]
    bad = jax.tree.map(lambda p: np.zeros(p.shape + (2,)), params)
    with self.assertRaisesRegex(ValueError, r"alpha\[0\]\['b'\]"):
      maml.inner_loop(tanh_apply, params, bad, x, y, steps=1)
    with self.assertRaisesRegex(ValueError, "scalar"):
      maml.inner_loop(tanh_apply, params, np.ones(3), x, y, steps=1)
    with self.assertRaisesRegex(ValueError, "structure"):
      maml.inner_loop(tanh_apply, params, (0.1, 0.2), x, y, steps=1)


class MetaGradientTest(parameterized.TestCase):

  def test_second_order_matches_finite_differences(self):
    params, batch, alpha = make_problem()
    f = jax.jit(lambda p, a: maml.meta_loss(tanh_apply, p, a, batch, steps=1))
    # check_grads perturbs along unnormalized Gaussian tangents (norm ~10
    # here), so its default eps=1e-4 leaves a central-difference truncation
    # error ~1e-7; eps=1e-6 puts it below float64 round-off (the convergence
    # test below shows the discrepancy is pure O(eps²) truncation).
    check_grads(f, (params, alpha), order=1, modes=("fwd", "rev"),
                atol=1e-7, rtol=1e-7, eps=1e-6)

  def test_finite_differences_converge_to_autodiff_at_second_order_rate(self):
    # Central differences D(h) = g + c·h² + O(h⁴) for the true derivative g.
    # If autodiff were off by δ, the FD error would level off at δ; instead
    # it shrinks 100× per decade of h, and the Richardson extrapolation
    # (4·D(h/2) − D(h))/3 = g + O(h⁴) matches autodiff to ~1e-10.
    params, batch, alpha = make_problem()
    flat, unravel = ravel_pytree((params, alpha))
    f = lambda v: maml.meta_loss(tanh_apply, *unravel(v), batch, steps=2)
    direction = np.random.default_rng(9).standard_normal(flat.shape)
    direction /= np.linalg.norm(direction)
    steps = jnp.array([1e-2, 1e-3, 1e-4, 2e-3])

    @jax.jit
    def autodiff_and_fd(v, d):
      fd = jax.vmap(lambda h: (f(v + h * d) - f(v - h * d)) / (2 * h))(steps)
      return jnp.vdot(jax.grad(f)(v), d), fd

    exact, fd = to_numpy(autodiff_and_fd(flat, direction))
    error = np.abs(fd - exact)
    self.assertBetween(error[0] / error[1], 80.0, 125.0)
    self.assertBetween(error[1] / error[2], 80.0, 125.0)
    richardson = (4 * fd[1] - fd[3]) / 3
    np.testing.assert_allclose(richardson, exact, rtol=1e-9)
    self.assertGreater(error[1], 1e3 * abs(richardson - exact))

  def test_one_step_second_order_closed_form(self):
    # ∇_θ L_q(θ') = (I − α ∇²L_s(θ)) ∇L_q(θ'), averaged over tasks.
    params, batch, _ = make_problem(seed=2)
    flat, unravel = ravel_pytree(params)
    alpha = 0.15

    @jax.jit
    def run(v):
      second, first = (jax.grad(lambda v: maml.meta_loss(
          tanh_apply, unravel(v), alpha, batch, steps=1,
          first_order=fo))(v) for fo in (False, True))

      def closed_form(xs, ys, xq, yq):
        support = lambda v: maml.mse(tanh_apply(unravel(v), xs), ys)
        query = lambda v: maml.mse(tanh_apply(unravel(v), xq), yq)
        adapted = v - alpha * jax.grad(support)(v)
        return (jnp.eye(v.size) - alpha * jax.hessian(support)(v)) @ jax.grad(
            query)(adapted)

      return second, first, jnp.mean(jax.vmap(closed_form)(*batch), 0)

    second, first, want = to_numpy(run(flat))
    assert_close(second, want, rtol=1e-11)
    # The Hessian term is not negligible here, so the test can tell them apart.
    self.assertGreater(np.linalg.norm(first - want),
                       1e-2 * np.linalg.norm(want))

  def test_first_order_is_query_gradient_at_adapted_params(self):
    params, batch, _ = make_problem(seed=5)
    alpha = 0.1

    def got_and_want(p, a, steps):
      got = jax.grad(lambda p, a: maml.meta_loss(
          tanh_apply, p, a, batch, steps=steps, first_order=True), (0, 1))(p, a)

      def reference(xs, ys, xq, yq):
        adapted, grad_sum = p, jax.tree.map(jnp.zeros_like, p)
        for _ in range(steps):
          g = jax.grad(lambda q: maml.mse(tanh_apply(q, xs), ys))(adapted)
          grad_sum = jax.tree.map(jnp.add, grad_sum, g)
          adapted = jax.tree.map(lambda q, g: q - a * g, adapted, g)
        query_grad = jax.grad(lambda q: maml.mse(tanh_apply(q, xq), yq))(
            adapted)
        # θ_K = θ − α Σ_k g_k with every g_k held constant, so
        # ∂L_q/∂θ = ∇L_q(θ_K) and ∂L_q/∂α = −Σ_k g_k · ∇L_q(θ_K).
        alpha_grad = -sum(jnp.vdot(s, q) for s, q in zip(
            jax.tree.leaves(grad_sum), jax.tree.leaves(query_grad)))
        return query_grad, alpha_grad

      want = jax.tree.map(lambda x: jnp.mean(x, 0),
                          jax.vmap(reference)(*batch))
      return got, want

    run = jax.jit(lambda p, a: [got_and_want(p, a, k) for k in (1, 2)])
    for got, want in run(params, alpha):
      assert_close(got, want)

  def test_remat_gives_same_values_and_gradients(self):
    scan, scan_remat, first_order_pair, _ = two_step_meta_gradients()
    assert_close(scan_remat, scan, rtol=1e-13)
    assert_close(first_order_pair[0], first_order_pair[1], rtol=1e-13)

  def test_remat_memory_grows_only_by_the_carry(self):
    # Compiled temp memory of the second-order meta-gradient: without remat
    # each extra inner step stores θ_k plus residuals of the inner gradient;
    # with per-step remat only the carry θ_k (B·|θ| floats per step).
    temp_bytes, carry_bytes = remat_temp_bytes()
    # K = 1 compiles to a different loop structure, so fit from K = 3 on.
    slope = {r: (temp_bytes(9, r) - temp_bytes(3, r)) / 6
             for r in ("none", "step")}
    self.assertLess(slope["step"], 0.75 * slope["none"])
    self.assertLessEqual(slope["step"], 1.02 * carry_bytes)

  def test_nested_remat_memory_grows_logarithmically(self):
    # Nested checkpointing stores Σ level sizes ≈ e·ln K carries: 4, 6, 8, 10
    # for K = 4, 8, 16, 32 (measured: 2.00-2.01 carries per doubling up to
    # K = 64), instead of K more carries per doubling.
    temp_bytes, carry_bytes = remat_temp_bytes()
    temps = [temp_bytes(k, "nested") for k in (4, 8, 16, 32)]
    per_doubling = np.diff(temps) / carry_bytes
    self.assertTrue(np.all(per_doubling <= 2.1), per_doubling)
    self.assertLess(temps[-1], 0.5 * temp_bytes(32, "step"))

  def test_flat_remat_memory_does_not_grow_with_steps(self):
    # remat=True ("flat") stores θ_0 only: the compiled temporary memory of
    # the second-order meta-gradient at K = 2, 8 and 64 differs by at most
    # the per-step support-loss record (K scalars per task, 8 bytes each;
    # measured: 5.0 carries at every K, +448 bytes at K = 64), while every
    # other mode grows by carries.
    temp_bytes, carry_bytes = remat_temp_bytes()
    flat = [temp_bytes(k, True) for k in (2, 8, 64)]
    self.assertLessEqual(max(flat) - min(flat), 64 * REMAT_TASKS * 8, flat)
    self.assertLess(flat[0], 6 * carry_bytes)
    self.assertGreater(temp_bytes(64, "nested"), flat[0] + 5 * carry_bytes)

  def test_flat_remat_matches_plain_scan(self):
    # Values and (θ, α)-gradients of the flat mode against the plain scan,
    # for K = 0 (no step), 1 and 7, an integer scalar rate (cast to a float
    # inside the custom VJP), per-parameter rates, and first order.
    params, batch, rates = make_problem(seed=8)

    @jax.jit
    def run(p, a):
      out = {}
      for steps in (0, 1, 7):
        for first_order in (False, True):
          for remat in ("none", "flat"):
            loss = lambda p, a: maml.meta_loss(
                tanh_apply, p, a, batch, steps=steps, first_order=first_order,
                remat=remat)
            out[steps, first_order, remat] = (
                jax.value_and_grad(loss, argnums=(0, 1))(p, a),
                jax.value_and_grad(loss)(p, 1) if steps < 7 else None)
      return out

    out = to_numpy(run(params, rates))
    for steps in (0, 1, 7):
      for first_order in (False, True):
        with self.subTest(steps=steps, first_order=first_order):
          assert_close(out[steps, first_order, "flat"],
                       out[steps, first_order, "none"], rtol=1e-12)

  def test_flat_remat_has_no_forward_mode(self):
    # The flat mode is a custom VJP: one reverse-mode derivative only. JAX
    # says so (instead of returning wrong numbers) when asked for forward mode.
    params, batch, rates = make_problem(seed=8)
    loss = lambda p: maml.meta_loss(tanh_apply, p, rates, batch, steps=2,
                                    remat="flat")
    with self.assertRaisesRegex(TypeError, "custom_vjp"):
      jax.jvp(loss, (params,), (params,))

  def test_nested_remat_matches_plain_scan(self):
    # K = 7 runs as 4 × 2 segments with the 8th step masked; values, first
    # and second derivatives (the checkpointed replay is differentiable
    # again) match the plain scan.
    self.assertEqual(maml_inner.level_sizes(7), (4, 2))
    params, batch, alpha = make_problem(seed=7)
    steps = 7

    @jax.jit
    def run(p, a):
      def loss(p, a, remat):
        return maml.meta_loss(tanh_apply, p, a, batch, steps=steps,
                              remat=remat)
      out = {}
      for r in ("none", "nested"):
        value, grads = jax.value_and_grad(loss, argnums=(0, 1))(p, a, r)
        # A Hessian-vector product of the meta-loss in θ.
        hvp = jax.jvp(lambda q: jax.grad(loss)(q, a, r), (p,), (grads[0],))[1]
        out[r] = (value, grads, hvp)
      return out

    out = to_numpy(run(params, alpha))
    assert_close(out["nested"], out["none"], rtol=1e-12)
    with self.assertRaisesRegex(ValueError, "remat"):
      maml.inner_loop(tanh_apply, params, 0.1, batch.x_support[0],
                      batch.y_support[0], steps=2, remat="always")


REMAT_TASKS = 8  # Meta-batch of `remat_temp_bytes`.


@functools.cache
def remat_temp_bytes():
  """(temp_bytes(steps, remat), carry bytes) for the 1-40-40-1 sinusoid MLP.

  Compiled XLA temporary memory of the second-order meta-gradient over 8
  tasks in float32; the carry is the per-task parameter trees, B·|θ| floats.
  """
  meta_batch, sizes = REMAT_TASKS, (1, 40, 40, 1)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: x.astype(np.float32),
                        numpy_mlp(rng, sizes, 0.01))
  batch = jax.tree.map(lambda x: x.astype(np.float32),
                       numpy_sinusoids(rng, meta_batch, 10, 10))
  carry_bytes = meta_batch * flat_numpy(params).size * 4

  @functools.cache
  def temp_bytes(steps, remat):
    grad = jax.jit(jax.grad(lambda p, b: maml.meta_loss(
        models.mlp_apply, p, 0.01, b, steps=steps, remat=remat)))
    return grad.lower(params, batch).compile().memory_analysis(
    ).temp_size_in_bytes

  return temp_bytes, carry_bytes


class MetaLossTest(absltest.TestCase):

  def test_adapt_and_evaluate_records_losses_per_step(self):
    params, batch, _ = make_problem()
    alpha, steps = 0.05, 3

    @jax.jit
    def run(p, a):
      reference = []
      for k in range(steps + 1):
        def losses(xs, ys, xq, yq):
          adapted = unrolled_adapt(tanh_apply, p, a, xs, ys, k)
          return (maml.mse(tanh_apply(adapted, xs), ys),
                  maml.mse(tanh_apply(adapted, xq), yq))
        reference.append(jax.vmap(losses)(*batch))
      support, query = (jnp.stack(r, axis=1) for r in zip(*reference))
      return (maml.adapt_and_evaluate(tanh_apply, p, a, batch, steps=steps),
              maml.meta_loss(tanh_apply, p, a, batch, steps=steps),
              maml.AdaptationLosses(support=support, query=query))

    out, loss, want = to_numpy(run(params, alpha))
    self.assertEqual(out.query.shape, (3, steps + 1))
    self.assertEqual(out.support.shape, (3, steps + 1))
    assert_close(out, want)
    assert_close(out.query[:, -1].mean(), loss)

  def test_flax_linen_model_matches_pure_mlp(self):
    module = models.LinenMLP(features=SIZES[1:], param_dtype=F64)
    params, batch, _ = make_problem()
    variables = {"params": {f"dense_{i}": {"kernel": layer["w"],
                                           "bias": layer["b"]}
                            for i, layer in enumerate(params)}}
    # Same tree as the module's own init (shapes only: nothing is compiled).
    chex.assert_trees_all_equal_shapes_and_dtypes(
        jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 1), F64)),
        jax.tree.map(jnp.asarray, variables))
    to_pure = lambda v: tuple(
        {"w": v["params"][f"dense_{i}"]["kernel"],
         "b": v["params"][f"dense_{i}"]["bias"]} for i in range(len(params)))

    @jax.jit
    def run(v):
      f = lambda apply_fn, p: jax.value_and_grad(
          lambda q: maml.meta_loss(apply_fn, q, -0.05, batch, steps=2))(p)
      loss_l, grad_l = f(lambda p, x: module.apply(p, x), v)
      return (loss_l, to_pure(grad_l)), f(models.mlp_apply, to_pure(v))

    linen, pure = run(variables)
    assert_close(linen, pure)


GRID_SIZES = (1, 12, 1)


def sinusoid_sampler(meta_batch=4):
  return functools.partial(sample_sinusoid_batch, meta_batch=meta_batch,
                           k_support=5, k_query=5, dtype=F64)


def init_fn(key):
  return models.mlp_init(key, GRID_SIZES, dtype=F64, stddev=0.3)


def numpy_init(seed):
  return numpy_mlp(np.random.default_rng(seed), GRID_SIZES, 0.3)


NUM_META_STEPS = 6


@functools.cache
def meta_train_runs():
  """Two `meta_train` runs and their Python-loop references.

  "meta_sgd": a learned per-parameter α with Adam; "blown": a fixed scalar α
  with SGD and β = 1e20, which overflows float64 within a few steps (its
  steps before that test the fixed-α path). Compiled once and shared.

  Returns:
    (results by name, reference parameter trajectories by name with
    NUM_META_STEPS + 1 entries, reference losses by name).
  """
  params = numpy_init(0)
  key, sampler = jax.random.key(1), sinusoid_sampler()
  configs = {  # name: (alpha, learn_alpha, optimizer, meta_lr)
      "meta_sgd": (jax.tree.map(lambda p: np.full(p.shape, 0.02), params),
                   True, optax.adam(1.0), 0.01),
      "blown": (np.float64(0.01), False, optax.sgd(1.0), 1e20),
  }

  @jax.jit
  def train(p):
    return {name: maml.meta_train(
        models.mlp_apply, p, alpha, opt, sampler, key,
        num_steps=NUM_META_STEPS, steps=1, meta_lr=meta_lr, learn_alpha=learn)
            for name, (alpha, learn, opt, meta_lr) in configs.items()}

  @jax.jit
  def reference_step(targets, opt_states, t):
    batch = sampler(jax.random.fold_in(key, t))
    out = {}
    for name, (alpha, learn, opt, meta_lr) in configs.items():
      target = targets[name]
      loss, grads = jax.value_and_grad(lambda tg: maml.meta_loss(
          models.mlp_apply, *(tg if learn else (tg, alpha)), batch,
          steps=1))(target)
      updates, opt_state = opt.update(grads, opt_states[name], target)
      target = optax.apply_updates(
          target, jax.tree.map(lambda u: meta_lr * u, updates))
      out[name] = (target, opt_state, loss)
    return out

  targets = {name: (params, alpha) if learn else params
             for name, (alpha, learn, _, _) in configs.items()}
  opt_states = {name: configs[name][2].init(targets[name]) for name in configs}
  trajectory = {name: [targets[name]] for name in configs}
  losses = {name: [] for name in configs}
  for t in range(NUM_META_STEPS):
    out = reference_step(targets, opt_states, t)
    for name in configs:
      targets[name], opt_states[name], loss = out[name]
      trajectory[name].append(targets[name])
      losses[name].append(loss)
  return to_numpy(train(params)), to_numpy(trajectory), to_numpy(losses)


class MetaTrainTest(absltest.TestCase):

  def test_matches_python_reference(self):
    results, trajectory, losses = meta_train_runs()
    meta_sgd = results["meta_sgd"]
    assert_close(meta_sgd.losses, np.stack(losses["meta_sgd"]), rtol=1e-11)
    assert_close((meta_sgd.state.params, meta_sgd.state.alpha),
                 trajectory["meta_sgd"][-1], rtol=1e-10)
    self.assertFalse(meta_sgd.diverged)
    self.assertEqual(int(meta_sgd.diverged_step), -1)
    # α really was meta-learned (Meta-SGD).
    self.assertGreater(
        np.max(np.abs(flat_numpy(meta_sgd.state.alpha) - 0.02)), 1e-4)

  def test_diverged_run_keeps_last_finite_state(self):
    results, trajectory, losses = meta_train_runs()
    blown = results["blown"]
    self.assertTrue(blown.diverged)
    step = int(blown.diverged_step)
    self.assertBetween(step, 1, NUM_META_STEPS - 2)
    self.assertTrue(maml.all_finite(blown.state))
    self.assertFalse(maml.all_finite(trajectory["blown"][step + 1]))
    # The kept state is the reference state before the diverging update.
    assert_close(blown.state.params, trajectory["blown"][step], rtol=1e-12)
    np.testing.assert_array_equal(blown.state.alpha, 0.01)
    assert_close(blown.losses[:step], np.stack(losses["blown"][:step]),
                 rtol=1e-12)
    self.assertTrue(np.all(np.isnan(blown.losses[step + 1:])))

  def test_meta_lr_is_traced_not_baked_in(self):
    params = numpy_init(0)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(alpha, meta_lr):
      return maml.meta_train(models.mlp_apply, params, alpha, optax.sgd(1.0),
                             sinusoid_sampler(), jax.random.key(0),
                             num_steps=3, steps=1, meta_lr=meta_lr)

    a = run(0.01, 0.1)
    b = run(-0.02, 0.3)
    self.assertFalse(np.allclose(a.losses[1:], b.losses[1:]))


def grid_fn(num_steps=10):
  """A fresh jitted grid function that fails if it is traced twice."""

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(alpha, meta_lr, seed):
    return maml.meta_train_grid(models.mlp_apply, init_fn, optax.sgd(1.0),
                                sinusoid_sampler(), alpha, meta_lr, seed,
                                num_steps=num_steps, steps=1)

  return run


class GridTest(absltest.TestCase):
  """All grid tests use G = 4 members and share one trace-counted function."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.run_grid = staticmethod(grid_fn())

  def test_grid_product(self):
    a, b, s = maml.grid_product(np.array([1.0, 2.0]), np.array([3.0, 4.0, 5.0]),
                                np.array([7]))
    np.testing.assert_array_equal(a, [1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(b, [3, 4, 5, 3, 4, 5])
    np.testing.assert_array_equal(s, [7] * 6)

  def test_whole_grid_is_traced_once(self):
    # run_grid fails on a second trace (chex.assert_max_traces(n=1)); every
    # test of this class calls it with different α/β/seed grids.
    first = self.run_grid(*maml.grid_product(np.array([-0.05, 0.05]),
                                             np.array([0.01, 0.1]),
                                             np.arange(1)))
    second = self.run_grid(*maml.grid_product(np.array([-0.1, 0.1]),
                                              np.array([0.03, 0.2]),
                                              np.arange(2, 3)))
    self.assertEqual(first.losses.shape, (4, 10))
    self.assertFalse(np.allclose(first.losses, second.losses))
    # A third grid of the same shape, with diverging members: no retrace.
    third = to_numpy(self.run_grid(*maml.grid_product(
        np.array([0.5, 0.01]), np.array([1e-4, 1e308]), np.array([9]))))
    np.testing.assert_array_equal(third.diverged[1::2], [True, True])
    self.assertFalse(third.diverged[2])
    self.assertTrue(maml.all_finite(third.state))
    # (α, β) = (0.5, 1e308): the first update overflows the parameters while
    # the step's loss is finite, so only the state check can catch it.
    self.assertEqual(int(third.diverged_step[1]), 0)
    self.assertTrue(np.isfinite(third.losses[1, 0]))
    self.assertTrue(np.all(np.isnan(third.losses[1, 1:])))

  def test_member_equals_single_run(self):
    alpha, meta_lr, seed = (np.array([0.05, -0.03, 0.0, 0.02]),
                            np.array([0.1, 0.2, 0.05, 0.1]),
                            np.array([0, 5, 5, 1]))
    grid = self.run_grid(alpha, meta_lr, seed)

    @jax.jit
    def single(a, beta, s):
      init_key, train_key = jax.random.split(jax.random.key(s))
      return maml.meta_train(models.mlp_apply, init_fn(init_key), a,
                             optax.sgd(1.0), sinusoid_sampler(), train_key,
                             num_steps=10, steps=1, meta_lr=beta)

    for g in (0, 1):
      assert_close(jax.tree.map(lambda x: x[g], to_numpy(grid)),
                   single(alpha[g], meta_lr[g], seed[g]), rtol=1e-10)

  def test_diverging_member_does_not_touch_other_members(self):
    alpha = np.array([0.05, -0.02, 0.01, 0.1])
    seed = np.array([0, 1, 2, 0])
    benign = to_numpy(self.run_grid(alpha, np.array([0.05, 0.05, 0.05, 0.05]),
                                    seed))
    blown = to_numpy(self.run_grid(alpha, np.array([0.05, 0.05, 1e20, 0.05]),
                                   seed))
    np.testing.assert_array_equal(blown.diverged, [False, False, True, False])
    np.testing.assert_array_equal(benign.diverged, [False] * 4)
    np.testing.assert_array_equal(benign.diverged_step, [-1] * 4)
    step = int(blown.diverged_step[2])
    self.assertGreaterEqual(step, 1)
    self.assertTrue(np.all(np.isfinite(blown.losses[2, :step])))
    self.assertTrue(np.all(np.isnan(blown.losses[2, step + 1:])))
    self.assertTrue(maml.all_finite(blown.state))
    for g in (0, 1, 3):
      assert_bitwise_equal(jax.tree.map(lambda x: x[g], blown),
                           jax.tree.map(lambda x: x[g], benign))

  def test_flat_remat_grid_matches_no_remat(self):
    # A vmapped grid with K = 3 inner steps, learned per-leaf rates (Meta-SGD)
    # and a diverging member (α = 1e6): flat remat gives the same losses,
    # divergence marks and final states as no remat.
    run = jax.jit(lambda a, b, s, remat: maml.meta_train_grid(
        models.mlp_apply, init_fn, optax.adam(1.0), sinusoid_sampler(), a, b, s,
        num_steps=5, steps=3, remat=remat, learn_alpha=True),
                  static_argnums=3)
    args = (np.array([0.01, -0.02, 1e6]), np.full(3, 1e-3), np.arange(3))
    plain, flat = to_numpy(run(*args, False)), to_numpy(run(*args, True))
    np.testing.assert_array_equal(flat.diverged, [False, False, True])
    np.testing.assert_array_equal(flat.diverged, plain.diverged)
    assert_close(jax.tree.map(lambda x: x[:2], flat),
                 jax.tree.map(lambda x: x[:2], plain), rtol=1e-10, atol=1e-12)


if __name__ == "__main__":
  absltest.main()
