"""Tests of the sinusoid task sampler, the MLP models and a short MAML run."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized

from negmeta import maml
from negmeta import models
from negmeta.tasks import sample_sinusoid_batch
from negmeta.tasks import sample_sinusoid_params
from negmeta.tasks import sinusoid_batch


def fit_sinusoids(x, y):
  """Least-squares fit of y = a sin x + b cos x per task; returns A, φ, resid.

  A sin(x − φ) = A cos φ · sin x − A sin φ · cos x, so A = |(a, b)| and
  φ = atan2(−b, a).

  Args:
    x: inputs, [B, N, 1].
    y: targets, [B, N, 1].

  Returns:
    (amplitude [B], phase [B], max absolute residual over all points).
  """
  x, y = np.asarray(x, np.float64)[..., 0], np.asarray(y, np.float64)[..., 0]
  design = np.stack([np.sin(x), np.cos(x)], axis=-1)  # [B, N, 2]
  coef = np.linalg.solve(np.einsum("bni,bnj->bij", design, design),
                         np.einsum("bni,bn->bi", design, y)[..., None])[..., 0]
  resid = np.max(np.abs(np.einsum("bni,bi->bn", design, coef) - y))
  a, b = coef[:, 0], coef[:, 1]
  return np.hypot(a, b), np.arctan2(-b, a), resid


class SinusoidSamplerTest(parameterized.TestCase):

  @parameterized.parameters(jnp.float32, jnp.float64)
  def test_shapes_and_dtypes(self, dtype):
    batch = sample_sinusoid_batch(jax.random.key(0), 7, 3, 5, dtype=dtype)
    self.assertIsInstance(batch, maml.TaskBatch)
    for name, k in (("x_support", 3), ("y_support", 3), ("x_query", 5),
                    ("y_query", 5)):
      array = getattr(batch, name)
      self.assertEqual(array.shape, (7, k, 1), name)
      self.assertEqual(array.dtype, dtype, name)

  def test_tasks_follow_finn_et_al_distribution(self):
    num_tasks = 2000
    batch = jax.device_get(jax.jit(
        functools.partial(sample_sinusoid_batch, meta_batch=num_tasks,
                          k_support=10, k_query=10, dtype=jnp.float64))(
                              jax.random.key(1)))
    x = np.concatenate([batch.x_support, batch.x_query], axis=1)
    y = np.concatenate([batch.y_support, batch.y_query], axis=1)
    # Support and query of one task are points of the same sinusoid.
    amplitude, phase, resid = fit_sinusoids(x, y)
    self.assertLess(resid, 1e-10)
    # Support and query points are distinct draws.
    self.assertFalse(np.any(np.isin(batch.x_support, batch.x_query)))
    # Ranges: A ∈ [0.1, 5], φ ∈ [0, π], x ∈ [−5, 5], all covered.
    for values, lo, hi in ((amplitude, 0.1, 5.0), (phase, 0.0, np.pi),
                           (x, -5.0, 5.0)):
      self.assertGreaterEqual(values.min(), lo - 1e-9)
      self.assertLessEqual(values.max(), hi + 1e-9)
      self.assertLess(values.min(), lo + 0.02 * (hi - lo))
      self.assertGreater(values.max(), hi - 0.02 * (hi - lo))
    # Uniform: means within ~5 standard errors of the midpoints.
    self.assertAlmostEqual(amplitude.mean(), 2.55, delta=0.15)
    self.assertAlmostEqual(phase.mean(), np.pi / 2, delta=0.1)
    self.assertAlmostEqual(x.mean(), 0.0, delta=0.07)

  def test_deterministic_per_key(self):
    sample = jax.jit(functools.partial(sample_sinusoid_batch, meta_batch=4,
                                       k_support=5, k_query=5))
    a, b, c = (jax.device_get(sample(jax.random.key(s))) for s in (3, 3, 4))
    for u, v, w in zip(a, b, c):
      np.testing.assert_array_equal(u, v)
      self.assertFalse(np.allclose(u, w))

  def test_params_then_points(self):
    amplitude, phase = sample_sinusoid_params(jax.random.key(5), 500,
                                              dtype=jnp.float64)
    self.assertEqual(amplitude.shape, (500,))
    self.assertTrue(np.all((amplitude >= 0.1) & (amplitude <= 5.0)))
    self.assertTrue(np.all((phase >= 0.0) & (phase <= np.pi)))
    batch = sinusoid_batch(jax.random.key(6), amplitude, phase, 4, 6)
    self.assertEqual(batch.x_support.shape, (500, 4, 1))
    self.assertEqual(batch.y_query.shape, (500, 6, 1))
    x = np.concatenate([batch.x_support, batch.x_query], axis=1)
    y = np.concatenate([batch.y_support, batch.y_query], axis=1)
    np.testing.assert_allclose(
        y, np.asarray(amplitude)[:, None, None]
        * np.sin(x - np.asarray(phase)[:, None, None]), rtol=1e-12,
        atol=1e-12)

  def test_task_parameters_and_inputs_are_independent(self):
    # A, φ and every input are separate uniform draws: across tasks, no
    # correlation between them (|r| < 5 standard errors of 1/√n).
    n = 2000
    batch = sample_sinusoid_batch(jax.random.key(7), n, 3, 2,
                                  dtype=jnp.float64)
    x = np.concatenate([batch.x_support, batch.x_query], axis=1)
    y = np.concatenate([batch.y_support, batch.y_query], axis=1)
    amplitude, phase, _ = fit_sinusoids(x, y)
    amp_p, phase_p = sample_sinusoid_params(jax.random.key(8), n,
                                            dtype=jnp.float64)
    pairs = [(amplitude, phase), (np.asarray(amp_p), np.asarray(phase_p))]
    pairs += [(amplitude, x[:, j, 0]) for j in range(x.shape[1])]
    pairs += [(phase, x[:, j, 0]) for j in range(x.shape[1])]
    for u, v in pairs:
      self.assertLess(abs(np.corrcoef(u, v)[0, 1]), 5 / np.sqrt(n))

  def test_sinusoid_batch_inputs_cover_the_input_range(self):
    # Points of given tasks are x ~ U[−5, 5], like those of the full sampler.
    amplitude, phase = sample_sinusoid_params(jax.random.key(9), 500,
                                              dtype=jnp.float64)
    batch = sinusoid_batch(jax.random.key(10), amplitude, phase, 4, 6)
    x = np.concatenate([batch.x_support, batch.x_query], axis=1).ravel()
    self.assertGreaterEqual(x.min(), -5.0)
    self.assertLessEqual(x.max(), 5.0)
    self.assertLess(x.min(), -4.9)
    self.assertGreater(x.max(), 4.9)
    # Mean 0 and variance 10²/12 of U[−5, 5], within 5 standard errors.
    self.assertLess(abs(x.mean()), 5 * np.sqrt(100 / 12 / x.size))
    self.assertAlmostEqual(x.var(), 100 / 12, delta=5 * np.sqrt(80 / x.size))


class ModelTest(absltest.TestCase):

  def test_mlp_init_follows_cbfinn(self):
    params = models.mlp_init(jax.random.key(0), dtype=jnp.float32)
    self.assertEqual([(l["w"].shape, l["b"].shape) for l in params],
                     [((1, 40), (40,)), ((40, 40), (40,)), ((40, 1), (1,))])
    for layer in params:
      self.assertEqual(layer["w"].dtype, jnp.float32)
      np.testing.assert_array_equal(layer["b"], 0.0)
      # Truncated at ±2 std of N(0, 0.01²).
      self.assertLessEqual(float(jnp.max(jnp.abs(layer["w"]))), 0.02)
    # The std of N(0, 1) truncated to [−2, 2] is 0.8796; 1600 draws give a
    # standard error of ~2% on the sample std.
    self.assertAlmostEqual(float(jnp.std(params[1]["w"])), 0.01 * 0.8796,
                           delta=0.01 * 0.8796 * 0.1)

  def test_mlp_layers_draw_independent_weights(self):
    # Each layer has its own key: no layer repeats another's draws.
    for seed in range(3):
      w = [np.asarray(l["w"]) for l in models.mlp_init(jax.random.key(seed))]
      first = w[0].ravel()                                    # 40 values
      for other in (w[1][0], w[1][:, 0], w[2].ravel()):
        self.assertLess(abs(np.corrcoef(first, other)[0, 1]), 0.6)

  def test_linen_mlp_matches_pure_function(self):
    module = models.LinenMLP(param_dtype=jnp.float64)
    variables = module.init(jax.random.key(0), jnp.zeros((1, 1), jnp.float64))
    dense = variables["params"]
    pure = tuple({"w": dense[f"dense_{i}"]["kernel"],
                  "b": dense[f"dense_{i}"]["bias"]} for i in range(3))
    self.assertEqual(pure[1]["w"].shape, (40, 40))
    self.assertLessEqual(float(jnp.max(jnp.abs(pure[1]["w"]))), 0.02)
    np.testing.assert_array_equal(pure[1]["b"], 0.0)
    x = jnp.linspace(-5.0, 5.0, 11)[:, None]
    np.testing.assert_allclose(module.apply(variables, x),
                               models.mlp_apply(pure, x), rtol=1e-13)

  def test_linen_mlp_init_is_the_symmetric_truncated_normal(self):
    # The same law as `mlp_init`: N(0, 0.01²) truncated at ±2 std on both sides.
    variables = models.LinenMLP(param_dtype=jnp.float64).init(
        jax.random.key(1), jnp.zeros((1, 1), jnp.float64))
    w = np.asarray(variables["params"]["dense_1"]["kernel"]).ravel()  # 1600
    std = 0.01 * 0.8796
    self.assertLessEqual(np.abs(w).max(), 0.02)
    # ~10 of 1600 draws are expected beyond 1.9 std in each tail.
    self.assertLess(w.min(), -0.019)
    self.assertGreater(w.max(), 0.019)
    self.assertLess(abs(w.mean()), 5 * std / np.sqrt(w.size))
    self.assertAlmostEqual(w.std(), std, delta=0.1 * std)

  def test_mlp_apply_is_relu_network(self):
    rng = np.random.default_rng(0)
    params = tuple({"w": rng.standard_normal((i, o)),
                    "b": rng.standard_normal(o)}
                   for i, o in ((1, 3), (3, 2), (2, 1)))
    x = rng.standard_normal((4, 1))
    h = np.maximum(x @ params[0]["w"] + params[0]["b"], 0)
    h = np.maximum(h @ params[1]["w"] + params[1]["b"], 0)
    want = h @ params[2]["w"] + params[2]["b"]
    np.testing.assert_allclose(models.mlp_apply(params, x), want, rtol=1e-13)


class ShortMetaTrainingTest(absltest.TestCase):

  def test_maml_reduces_meta_loss(self):
    # Finn et al.'s sinusoid setup (1-40-40-1, K = 10, α = 0.01, meta-batch
    # 25, Adam, one inner step) in float32, for 500 steps with β = 2e-3.
    dtype = jnp.float32
    sampler = functools.partial(sample_sinusoid_batch, meta_batch=25,
                                k_support=10, k_query=10, dtype=dtype)
    alpha = jnp.asarray(0.01, dtype)

    @jax.jit
    def run(key):
      k_init, k_train, k_eval = jax.random.split(key, 3)
      params = models.mlp_init(k_init, dtype=dtype)
      result = maml.meta_train(models.mlp_apply, params, alpha,
                               optax.adam(1.0), sampler, k_train,
                               num_steps=500, steps=1, meta_lr=2e-3)
      held_out = sample_sinusoid_batch(k_eval, 500, 10, 10, dtype=dtype)
      evaluate = lambda p: jnp.mean(maml.adapt_and_evaluate(
          models.mlp_apply, p, alpha, held_out, steps=1).query, axis=0)
      return result, evaluate(params), evaluate(result.state.params)

    result, untrained, trained = jax.device_get(run(jax.random.key(0)))
    self.assertFalse(result.diverged)
    self.assertTrue(np.all(np.isfinite(result.losses)))
    # Training meta-loss: last 100 steps vs first 25 (seeds 0-7 give
    # ratios 0.70-0.84).
    self.assertLess(result.losses[-100:].mean(),
                    0.9 * result.losses[:25].mean())
    # Held-out tasks, query loss after one adaptation step.
    self.assertLess(trained[1], 0.9 * untrained[1])
    # After meta-training, the adaptation step itself helps.
    self.assertLess(trained[1], 0.98 * trained[0])


if __name__ == "__main__":
  absltest.main()
