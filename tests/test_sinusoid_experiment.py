"""The sinusoid study: one trace per sweep, isolation of seeds and diverged
members, estimates against NumPy, a real adaptation property, the results
format, and the binary end to end (outputs and one-line errors)."""

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
import matplotlib.pyplot as plt
import numpy as np
from absl.testing import absltest, parameterized

from negmeta import _checks, io, models
from negmeta.sinusoid import _kernel
from negmeta.sinusoid import experiment

BINARY = os.path.join(os.path.dirname(__file__), os.pardir, "experiments",
                      "sinusoid.py")

# One small problem shared by the in-process tests, so they share one compiled
# kernel (3 α_t × 2 seeds = 6 members, 3 α_r). 300 meta-steps of 25 tasks with
# β = 3e-3 make α_t = 0.05 visibly better than α_t = 0 and α_t = −0.02.
TINY = experiment.SinusoidConfig(
    alpha_t=(0.0, 0.05, -0.02), alpha_r=(0.0, 0.05, 0.01), iterations=300,
    meta_batch=25, meta_lr=3e-3, seeds=2, test_tasks=60, eval_shots=10,
    eval_steps=2, dense_points=32)


def _run(**changes):
  return experiment.run(dataclasses.replace(TINY, **changes))


@functools.cache
def _base():
  """TINY run once, shared by the tests that only read it."""
  return _run()


class EvaluationKernelTest(absltest.TestCase):

  def test_recorded_losses_are_plain_sgd_on_the_support_set(self):
    # Entry s of a member's record is the query MSE after s SGD steps
    # θ ← θ − α_r ∇MSE_support(θ) (Finn's test protocol), s = 0..S, checked
    # against a plain loop of autodiff steps on the same test tasks.
    steps, rates, seeds = 3, jnp.array([0.05, -0.02]), jnp.array([4, 9])
    sizes = dict(test_tasks=3, eval_shots=5, test_points=6, dense_points=8)
    init = [models.mlp_init(jax.random.key(s), stddev=0.7, dtype=jnp.float64)
            for s in (0, 1)]
    params = jax.tree.map(lambda *a: jnp.stack(a), *init)
    query, dense = _kernel.evaluate_members_jit(
        params, seeds, rates, eval_steps=steps, eval_batch=3, **sizes)
    self.assertEqual(query.shape, (2, 2, 3, steps + 1))
    mse = jax.jit(lambda p, x, y: jnp.mean((models.mlp_apply(p, x) - y) ** 2))
    grad = jax.jit(jax.grad(mse))
    for g in range(2):
      protocol, grid = _kernel.eval_tasks(seeds[g], dtype=jnp.float64, **sizes)
      for r, alpha in enumerate(rates):
        for t in range(3):
          p = init[g]
          for s in range(steps + 1):
            np.testing.assert_allclose(
                query[g, r, t, s], mse(p, protocol.x_query[t], protocol.y_query[t]),
                rtol=1e-10)
            np.testing.assert_allclose(
                dense[g, r, t, s], mse(p, grid.x_query[t], grid.y_query[t]),
                rtol=1e-10)
            p = jax.tree.map(lambda w, d: w - alpha * d, p,  # noqa: B023
                             grad(p, protocol.x_support[t], protocol.y_support[t]))
    # Adaptation at these rates really changes the loss step by step.
    self.assertTrue(np.all(np.abs(np.diff(np.asarray(query), axis=-1)) > 1e-6))

  def test_dense_set_is_a_midpoint_grid_of_the_same_tasks(self):
    n = 40
    protocol, dense = _kernel.eval_tasks(jnp.asarray(3), test_tasks=5, eval_shots=4,
                                         test_points=6, dense_points=n,
                                         dtype=jnp.float64)
    x = np.asarray(dense.x_query)[..., 0]                  # [T, n]
    np.testing.assert_array_equal(x, np.broadcast_to(x[0], x.shape))
    # The midpoint rule on [−5, 5]: spacing 10/n, symmetric about 0, so the
    # end points sit half a spacing inside the interval.
    np.testing.assert_allclose(np.diff(x[0]), 10 / n, rtol=1e-12)
    np.testing.assert_allclose(x[0], -x[0][::-1], atol=1e-12)
    self.assertAlmostEqual(x[0, 0], -5 + 5 / n, places=12)
    # Support set shared; dense targets are the protocol tasks' sinusoids.
    np.testing.assert_array_equal(dense.x_support, protocol.x_support)
    np.testing.assert_array_equal(dense.y_support, protocol.y_support)
    xs = np.concatenate([protocol.x_support, protocol.x_query], axis=1)[..., 0]
    ys = np.concatenate([protocol.y_support, protocol.y_query], axis=1)[..., 0]
    # A sin(x − φ) = a sin x + b cos x: fit on the protocol points, predict.
    basis = lambda v: np.stack([np.sin(v), np.cos(v)], axis=-1)  # noqa: E731
    for t in range(5):
      coef, *_ = np.linalg.lstsq(basis(xs[t]), ys[t], rcond=None)
      np.testing.assert_allclose(np.asarray(dense.y_query)[t, :, 0],
                                 basis(x[t]) @ coef, rtol=1e-9, atol=1e-12)


class OneTraceTest(absltest.TestCase):

  def test_whole_sweeps_trace_once(self):
    counted = jax.jit(chex.assert_max_traces(_kernel._train_and_evaluate, n=1),
                      static_argnames=_kernel.STATIC_ARGNAMES)
    small = dataclasses.replace(TINY, iterations=5, test_tasks=4,
                                chunk_members=4)
    with mock.patch.object(_kernel, "train_and_evaluate", counted):
      # 6 members in 2 chunks of 4 (the last padded), then other grid values,
      # adaptation rates and seeds: all reuse the single trace.
      a = experiment.run(small)
      b = experiment.run(dataclasses.replace(
          small, alpha_t=(0.3, -0.1, 0.02), alpha_r=(0.1, 0.2, -0.05), seed=7))
      self.assertEqual(a.query.shape, (3, 2, 3, 4, 3))
      self.assertFalse(np.allclose(a.query, b.query))
      with self.assertRaises(AssertionError):   # a new grid *shape* retraces
        experiment.run(dataclasses.replace(small, alpha_r=(0.1,)))


class ResumeTest(absltest.TestCase):

  def test_interrupted_run_resumes_from_its_finished_chunks(self):
    small = dataclasses.replace(TINY, iterations=5, test_tasks=4, chunk_members=4)
    reference = experiment.run(small)
    real = experiment._compiled_kernel
    calls = []

    def interrupted(*args, **kwargs):
      compiled = real(*args, **kwargs)

      def call(*a):
        calls.append(1)
        if len(calls) == 2:
          raise KeyboardInterrupt
        return compiled(*a)
      return call

    def counted(*args, **kwargs):
      compiled = real(*args, **kwargs)

      def call(*a):
        calls.append(1)
        return compiled(*a)
      return call

    with tempfile.TemporaryDirectory() as d:
      with mock.patch.object(experiment, "_compiled_kernel", interrupted):
        with self.assertRaises(KeyboardInterrupt):
          experiment.run(small, store_dir=d)
      self.assertEqual(os.listdir(d), ["chunk_00000.npz"])
      calls.clear()
      with mock.patch.object(experiment, "_compiled_kernel", counted):
        resumed = experiment.run(small, store_dir=d)
      self.assertEqual(resumed.resumed_chunks, 1)
      num_chunks = -(-reference.train_losses[..., 0].size // 4)
      self.assertEqual(len(calls), num_chunks - 1)    # chunk 0 is not recomputed
      store = io.ChunkStore(d, io.fingerprint(experiment.run_identity(small)))
      # The loaded values are the ones used: a value planted in chunk 0 shows.
      saved = store.load(0)
      store.save(0, dict(saved, train_losses=np.full_like(saved["train_losses"], 123.0)))
      marked = experiment.run(small, store_dir=d)
      flat = marked.train_losses.reshape(-1, small.iterations)
      np.testing.assert_array_equal(flat[:4], 123.0)
      np.testing.assert_array_equal(
          flat[4:], reference.train_losses.reshape(-1, small.iterations)[4:])
      store.save(0, saved)
      # A chunk of the wrong shape under this run's name is recomputed.
      store.save(0, {k: v[:2] for k, v in store.load(0).items()})
      again = experiment.run(small, store_dir=d)
      self.assertEqual(again.resumed_chunks, 1)        # chunk 1 only
      # Another seed's run does not pick these chunks up.
      self.assertEqual(experiment.run(dataclasses.replace(small, seed=1),
                                      store_dir=d).resumed_chunks, 0)
    for got in (resumed, again):
      for name in ("query", "dense", "train_losses", "diverged", "params"):
        np.testing.assert_array_equal(getattr(got, name), getattr(reference, name),
                                      err_msg=name)


class IsolationTest(absltest.TestCase):

  def test_diverged_member_and_seeds_do_not_touch_others(self):
    base = _base()
    # α_t = 1e6 (the largest allowed) overflows at the first step (step 0).
    blown = _run(alpha_t=(0.0, 1e6, -0.02))
    np.testing.assert_array_equal(blown.diverged, [[False, False],
                                                   [True, True],
                                                   [False, False]])
    np.testing.assert_array_equal(blown.diverged_step[1], [0, 0])
    self.assertTrue(np.all(np.isnan(blown.query[1])))
    self.assertTrue(np.all(np.isnan(blown.dense[1])))
    for i in (0, 2):   # the other members are bit-identical
      np.testing.assert_array_equal(blown.query[i], base.query[i])
      np.testing.assert_array_equal(blown.dense[i], base.dense[i])
      np.testing.assert_array_equal(blown.params[i], base.params[i])
    rec = experiment.record(blown)
    entry = [g for g in rec["grid"] if g["alpha_t"] == 1e6][0]
    self.assertEqual(entry["diverged_seeds"], [0, 1])
    self.assertEqual(entry["protocol"][1]["seeds"], 0)
    self.assertEqual(rec["diverged_members"], 2)
    self.assertIn("2/2", experiment.summary_table(blown))
    # Re-evaluated at another rate, the diverged member stays NaN (its frozen
    # parameters are finite, but not a trained model); the others do not.
    again = experiment.reevaluate(blown, alpha_r=(0.05,))
    self.assertTrue(np.all(np.isnan(again.query[1])))
    self.assertTrue(np.all(np.isnan(again.dense[1])))
    self.assertTrue(np.all(np.isfinite(again.query[[0, 2]])))
    # Seed 1 gives the same member wherever it sits in the grid (seeds 1, 2).
    shifted = _run(seed=1)
    np.testing.assert_array_equal(shifted.query[:, 0], base.query[:, 1])
    np.testing.assert_array_equal(shifted.train_losses[:, 0],
                                  base.train_losses[:, 1])
    self.assertFalse(np.allclose(shifted.query[:, 1], base.query[:, 1]))

  def test_common_random_numbers_within_a_seed(self):
    # Members with one seed and one α_t share the initialization, every
    # training batch and the test tasks, so they are identical; α_r = 0
    # leaves every fine-tuning step at the step-0 loss.
    base = _base()
    twin = _run(alpha_t=(0.05, 0.05, -0.02))
    np.testing.assert_array_equal(twin.query[0], twin.query[1])
    np.testing.assert_array_equal(twin.params[0], base.params[1])
    np.testing.assert_array_equal(base.query[:, :, 0, :, 2],
                                  base.query[:, :, 0, :, 0])
    self.assertFalse(np.allclose(base.query[1, 0], base.query[1, 1]))


class EstimatesTest(absltest.TestCase):

  def test_estimates_and_finn_interval_match_numpy(self):
    r = _base()
    e = experiment.estimate(r, "protocol")
    losses = r.query.astype(np.float64)                    # [A, S, R, T, K]
    t = losses.shape[3]
    seed_mean = losses.mean(axis=3)
    np.testing.assert_allclose(e.seed_mean, seed_mean, rtol=1e-12)
    # Finn's main.py: ci95 = 1.96 * np.std(losses, 0) / np.sqrt(600).
    np.testing.assert_allclose(
        e.seed_ci95, 1.96 * np.std(losses, axis=3) / np.sqrt(t), rtol=1e-12)
    np.testing.assert_allclose(e.mean, seed_mean.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(
        e.se, seed_mean.std(axis=1, ddof=1) / np.sqrt(2), rtol=1e-12)
    np.testing.assert_allclose(e.hi95 - e.mean, 1.96 * e.se, rtol=1e-12)
    pooled = np.moveaxis(losses, 1, 2).reshape(3, 3, 2 * t, -1)
    np.testing.assert_allclose(
        e.tasks_ci95, 1.96 * pooled.std(axis=2) / np.sqrt(2 * t), rtol=1e-12)

  def test_no_dense_points(self):
    # dense_points = 0 ("off") once crashed the evaluation's reshape.
    r = experiment.run(dataclasses.replace(
        TINY, iterations=2, alpha_t=(0.0,), alpha_r=(0.01,), test_tasks=4,
        dense_points=0))
    self.assertEqual(r.dense.shape[-2:], (4, 0))
    self.assertTrue(np.all(np.isfinite(r.query)))
    self.assertEqual(experiment.estimate(r, "auto").mean.shape, (1, 1, 3))

  def test_robust_estimates_match_numpy(self):
    r = _base()
    e = experiment.estimate(r, "protocol")
    losses = r.query.astype(np.float64)                    # [A, S, R, T, K]
    self.assertTrue(np.all(np.isfinite(losses)))
    seed_median = np.median(losses, axis=3)
    np.testing.assert_allclose(e.seed_median, seed_median, rtol=1e-12)
    np.testing.assert_allclose(e.median, seed_median.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(
        e.median_se, seed_median.std(axis=1, ddof=1) / np.sqrt(2), rtol=1e-12)
    # Unstable: above UNSTABLE_FACTOR × the member's mean unadapted loss.
    limit = experiment.UNSTABLE_FACTOR * losses[..., :1].mean(axis=3, keepdims=True)
    unstable = losses > limit
    np.testing.assert_array_equal(e.seed_unstable, unstable.sum(axis=3))
    kept = np.where(unstable, np.nan, losses)
    np.testing.assert_allclose(e.seed_stable_mean, np.nanmean(kept, axis=3),
                               rtol=1e-12)
    # Planted blow-ups: two tasks of one member and rate at step 2.
    planted = r.query.copy()
    planted[1, 0, 2, :2, 2] = 1e3
    e2 = experiment.estimate(dataclasses.replace(r, query=planted), "protocol")
    self.assertEqual(int(e2.seed_unstable[1, 0, 2, 2]),
                     int(unstable[1, 0, 2, 2].sum()) + 2)
    np.testing.assert_allclose(e2.seed_stable_mean[1, 0, 2, 2],
                               np.mean(np.delete(losses[1, 0, 2, :, 2], [0, 1])),
                               rtol=1e-12)

  def test_optimum_is_the_argmin_of_the_mean_curve(self):
    r = _base()
    e = experiment.estimate(r, "auto")
    opt = experiment.optimum(r, "auto")
    last = r.config.eval_steps
    self.assertLen(opt["per_alpha_r"], r.alpha_r.size)
    for j, entry in enumerate(opt["per_alpha_r"]):
      curve = e.mean[:, j, last]
      i = int(np.argmin(curve))
      self.assertEqual(entry["argmin_alpha_t"], r.alpha_t[i])
      self.assertEqual(entry["min"], curve[i])
      seeds = [r.alpha_t[int(np.argmin(e.seed_mean[:, s, j, last]))]
               for s in range(r.seeds.size)]
      self.assertEqual(entry["seed_argmins"], seeds)
    # The planted case: make α_t = −0.02 best at every α_r.
    shifted = r.query.copy()
    shifted[2] *= 0.01
    shifted_dense = r.dense.copy()
    shifted_dense[2] *= 0.01
    opt2 = experiment.optimum(dataclasses.replace(r, query=shifted, dense=shifted_dense))
    self.assertEqual([x["argmin_alpha_t"] for x in opt2["per_alpha_r"]], [-0.02] * 3)

  def test_refined_argmin_finds_a_parabola_vertex(self):
    x = np.linspace(-1.0, 1.0, 9)
    self.assertAlmostEqual(experiment._refined_argmin(x, (x - 0.1) ** 2 + 3), 0.1,
                           places=12)
    # Asymmetric neighbours pull the vertex towards the lower one.
    y = np.array([9, 8, 7, 6, 5, 1, 0, 2, 9.0])
    (x0, x1, x2), (y0, y1, y2) = x[5:8], y[5:8]
    a = ((y2 - y1) / (x2 - x1) - (y1 - y0) / (x1 - x0)) / (x2 - x0)
    self.assertAlmostEqual(experiment._refined_argmin(x, y),
                           0.5 * (x0 + x1) - (y1 - y0) / (x1 - x0) / (2 * a), places=12)
    self.assertLess(experiment._refined_argmin(x, y), x1)
    # At a grid edge, or with a non-finite neighbour: the grid argmin.
    self.assertEqual(experiment._refined_argmin(x, x), -1.0)
    self.assertEqual(experiment._refined_argmin(x, np.where(x == 0.75, np.nan, y)), 0.5)

  def test_adaptation_lowers_the_loss_after_meta_training(self):
    r = _base()
    dense = r.dense[:, :, 1]            # α_r = 0.05: [A, S, T, steps]

    def z(diff):
      diff = diff.ravel()
      return diff.mean() / (diff.std(ddof=1) / np.sqrt(diff.size))

    # α_t = α_r = 0.05 after 300 meta-steps: the first fine-tuning step lowers
    # the test loss of the 2 × 60 test tasks (paired by task; seeds 0, 3, 6
    # give z = −9.3, −8.4, −9.1).
    self.assertLess(z(dense[1, :, :, 1] - dense[1, :, :, 0]), -5)
    # Meta-training with α_t > 0 beats pretraining (α_t = 0) and α_t < 0
    # after that step (z = −7.9 / −8.4, −6.8 / −6.5, −6.4 / −6.8).
    self.assertLess(z(dense[1, :, :, 1] - dense[0, :, :, 1]), -4)
    self.assertLess(z(dense[1, :, :, 1] - dense[2, :, :, 1]), -4)
    # The dense and protocol estimators agree in mean (same expectation).
    d, q = r.dense[..., 0].ravel(), r.query[..., 0].ravel()
    self.assertLess(abs(z(q - d)), 4)

  def test_reevaluate_reproduces_the_run(self):
    r = _base()
    again = experiment.reevaluate(r, alpha_r=(0.05,))
    np.testing.assert_allclose(again.query[:, :, 0], r.query[:, :, 1],
                               rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(again.dense[:, :, 0], r.dense[:, :, 1],
                               rtol=2e-5, atol=1e-6)


class ConfigTest(parameterized.TestCase):

  def test_finn_preset_is_finns_setup(self):
    c = experiment.preset("finn_table2")
    self.assertEqual(
        (c.alpha_t, c.alpha_r, c.k_support, c.k_query, c.inner_steps,
         c.meta_lr, c.meta_batch, c.iterations, c.first_order, c.test_tasks,
         c.eval_shots, c.eval_steps, experiment.test_points_of(c)),
        ((0.01,), (0.01,), 10, 10, 1, 1e-3, 25, 70_000, False, 600, 5, 10, 5))
    self.assertEqual(experiment.preset("finn_table2", meta_batch=25,
                                       seeds=2).seeds, 2)

  @parameterized.named_parameters(
      ("contradiction", dict(meta_batch=10), "meta_batch: contradicts"),
      ("fixed_grid", dict(alpha_t=(0.02,)), "alpha_t: contradicts"),
  )
  def test_preset_contradictions(self, overrides, message):
    with self.assertRaisesRegex(_checks.ConfigError, message):
      experiment.preset("finn_table2", **overrides)

  @parameterized.named_parameters(
      ("iterations", dict(iterations=0), "iterations: must be an integer in"),
      ("seeds", dict(seeds=0), "seeds: must be an integer in"),
      ("meta_lr", dict(meta_lr=0.0), "meta_lr: must be a finite real number > 0"),
      ("test_tasks", dict(test_tasks=1), "test_tasks: must be an integer in"),
      ("nan_alpha", dict(alpha_t=(0.1, float("nan"))), "alpha_t: must contain only finite"),
      ("empty_alpha_r", dict(alpha_r=()), "alpha_r: must contain at least one"),
      ("remat", dict(remat="always"), "remat: must be one of none, step, nested, flat"),
      ("first_order", dict(first_order="yes"), "first_order: must be true or false"),
  )
  def test_invalid_fields(self, changes, message):
    with self.assertRaisesRegex(_checks.ConfigError, "^" + message):
      experiment.validate(dataclasses.replace(TINY, **changes))

  def test_sweep_preset_grid_may_change_and_is_recorded(self):
    c = experiment.preset("alpha_t_sweep", alpha_t=(0.0, 0.01), iterations=10)
    self.assertEqual(experiment._modified(c, "alpha_t_sweep"),
                     ("alpha_t", "iterations"))

  def test_long_sweeps_run_in_resumable_chunks_by_default(self):
    for name in ("alpha_t_sweep", "alpha_t_alpha_r"):
      c = experiment.preset(name)
      self.assertEqual(c.seeds * len(c.alpha_t), 60)
      self.assertEqual(c.chunk_members, 12)         # 5 saved chunks of 12 members
      # Capped at the members of a smaller grid, which is not a modification.
      small = experiment.preset(name, seeds=1, alpha_t=(0.0, 0.01))
      self.assertEqual(small.chunk_members, 2)
      self.assertEqual(experiment._modified(small, name), ("alpha_t", "seeds"))
      # Given explicitly, it wins (0: one call) and is recorded as a change.
      whole = experiment.preset(name, chunk_members=0)
      self.assertEqual(whole.chunk_members, 0)
      self.assertEqual(experiment._modified(whole, name), ("chunk_members",))
    for name in ("finn_table2", "finn_table2_code"):   # 5 members, one per chunk
      self.assertEqual(experiment.preset(name).chunk_members, 1)
      self.assertEqual(experiment._modified(experiment.preset(name, seeds=2), name),
                       ("seeds",))
    self.assertEqual(experiment.preset("alpha_t_small").chunk_members, 0)


def _synthetic(query, *, alpha_t, alpha_r, eval_shots=5, iterations=40,
               diverged=None, train_losses=None):
  """A SinusoidResult around planted per-task losses [A, S, R, T, K] (no training)."""
  a, s, r, t, k = query.shape
  config = experiment.validate(experiment.SinusoidConfig(
      alpha_t=alpha_t, alpha_r=alpha_r, iterations=iterations, seeds=s,
      test_tasks=t, eval_shots=eval_shots, eval_steps=k - 1, dense_points=0))
  diverged = np.zeros((a, s), bool) if diverged is None else diverged
  if train_losses is None:
    train_losses = np.random.default_rng(5).uniform(1.0, 2.0, (a, s, iterations))
  return experiment.SinusoidResult(
      config=config, preset=None, modified_from_preset=(), seeds=np.arange(s),
      query=np.asarray(query, np.float64), dense=np.zeros((a, s, r, t, 0)),
      train_losses=train_losses, diverged=diverged,
      diverged_step=np.where(diverged, 7, -1), params=np.zeros((a, s, 3)),
      seconds=0.0, compile_seconds=0.0, resumed_chunks=0)


def _with_seed_means(means):
  """Per-task losses [A, S, R, T=2, K] whose task mean is `means` [A, S, R, K]."""
  means = np.asarray(means, np.float64)
  return np.stack([means - 0.1, means + 0.1], axis=3)


class PlantedResultTest(absltest.TestCase):
  """Reported statistics of planted losses, recomputed in NumPy (milliseconds)."""

  def test_estimates_with_non_finite_tasks(self):
    rng = np.random.default_rng(1)
    q = rng.uniform(0.5, 1.5, (3, 3, 2, 6, 3))
    q[0, 1, 0, 2, 1] = np.nan          # member (0, seed 1), α_r 0, step 1: two of
    q[0, 1, 0, 4, 1] = np.inf          # its six tasks are not finite
    r = _synthetic(q, alpha_t=(-0.01, 0.0, 0.01), alpha_r=(0.0, 0.01))
    e = experiment.estimate(r, "protocol")
    self.assertEqual(int(e.nonfinite_tasks[0, 0, 1]), 2)      # NaN and inf
    self.assertEqual(int(e.nonfinite_tasks.sum()), 2)
    # The median ranks non-finite tasks above the finite ones: still finite.
    finite = np.sort(np.delete(q[0, 1, 0, :, 1], [2, 4]))
    self.assertEqual(e.seed_median[0, 1, 0, 1], 0.5 * (finite[2] + finite[3]))
    # The pooled mean leaves the non-finite seed out; 95% = mean ± 1.96 s.e.
    kept = q[0, [0, 2], 0, :, 1].mean(axis=1)
    self.assertEqual(int(e.n[0, 0, 1]), 2)
    self.assertAlmostEqual(e.mean[0, 0, 1], kept.mean(), places=14)
    se = kept.std(ddof=1) / np.sqrt(2)
    self.assertAlmostEqual(e.se[0, 0, 1], se, places=14)
    np.testing.assert_allclose([e.lo95[0, 0, 1], e.hi95[0, 0, 1]],
                               [kept.mean() - 1.96 * se, kept.mean() + 1.96 * se],
                               rtol=1e-13)

  def test_unstable_means_above_the_factor(self):
    q = np.ones((1, 2, 1, 4, 2))
    q[0, :, 0, :, 1] = [experiment.UNSTABLE_FACTOR, 5.000001, 1.0, 1.0]
    e = experiment.estimate(_synthetic(q, alpha_t=(0.0,), alpha_r=(0.01,)), "protocol")
    np.testing.assert_array_equal(e.seed_unstable[0, :, 0], [[0, 1], [0, 1]])
    np.testing.assert_array_equal(e.seed_stable_mean[0, :, 0, 1],
                                  [7.0 / 3.0, 7.0 / 3.0])

  def test_finn_comparison(self):
    rng = np.random.default_rng(2)
    q = rng.uniform(0.5, 1.5, (3, 3, 2, 4, 6))   # α_t × seeds × α_r × tasks × steps
    # Two matched pairs α_t = α_r: (0, 0) first, the paper's (0.01, 0.01) second.
    # Step 1 (Finn 0.67): seed means 0.67 + (0.5, 1.5, −3) × the seed's own
    # half-width 1.96·0.1/√4 (tasks ±0.1); step 5 (Finn 0.38): all well below.
    ci = 1.96 * 0.1 / 2
    pm = np.array([-0.1, 0.1, -0.1, 0.1])
    for s, shift in enumerate((0.5, 1.5, -3.0)):
      q[1, s, 1, :, 1] = 0.67 + shift * ci + pm
      q[1, s, 1, :, 5] = 0.2 + 0.01 * s + pm
    r = _synthetic(q, alpha_t=(0.0, 0.01, 0.02), alpha_r=(0.0, 0.01))
    comp = experiment.finn_comparison(r)
    self.assertEqual((comp["alpha_t"], comp["paper_alpha"]), (0.01, True))
    self.assertFalse(comp["finn_setup"])
    rows = comp["protocol"]
    self.assertEqual(sorted(rows), ["1", "5"])     # steps 1, 5 ≤ eval_steps = 5
    for step, ref in (("1", 0.67), ("5", 0.38)):
      row = rows[step]
      means = q[1, :, 1, :, int(step)].mean(axis=1)
      mean, se = means.mean(), means.std(ddof=1) / np.sqrt(3)
      self.assertAlmostEqual(row["mean"], mean, places=14)
      self.assertAlmostEqual(row["se"], se, places=14)
      np.testing.assert_allclose(row["ci95"], [mean - 1.96 * se, mean + 1.96 * se],
                                 rtol=1e-13)
      self.assertEqual(row["finn_inside_pooled_ci95"],
                       abs(mean - ref) <= 1.96 * se, msg=step)
      self.assertEqual((row["finite_seeds"], row["unstable_tasks"]), (3, 0))
      self.assertFalse(row["blowups_affect_mean"])
      for s, seed_row in enumerate(row["per_seed"]):
        half = 1.96 * q[1, s, 1, :, int(step)].std() / 2
        self.assertAlmostEqual(seed_row["ci95_halfwidth"], half, places=14)
        self.assertEqual(seed_row["finn_inside"], abs(means[s] - ref) <= half)
    self.assertTrue(rows["1"]["finn_inside_pooled_ci95"])
    self.assertFalse(rows["5"]["finn_inside_pooled_ci95"])        # above the interval
    self.assertEqual([x["finn_inside"] for x in rows["1"]["per_seed"]],
                     [True, False, False])
    self.assertEqual(rows["1"]["seeds_with_finn_inside"], 1)
    # Table 2 is a 5-shot comparison: none with 10 shots.
    self.assertIsNone(experiment.finn_comparison(_synthetic(
        q, alpha_t=(0.0, 0.01, 0.02), alpha_r=(0.0, 0.01), eval_shots=10)))

  def test_optimum(self):
    nan = np.nan
    last = np.array([[3.0, 3.0, nan],            # [A=4, S=3] at α_r = 0
                     [2.0, 1.0, 2.5],
                     [1.0, 2.0, 1.5],
                     [4.0, 4.0, 0.5]])
    offset = np.array([0.5, -0.2, 0.5, -2.0])[:, None]   # α_r = 0.01
    means = np.empty((4, 3, 2, 3))                        # [A, S, R, K]
    means[:, :, 0, 0], means[:, :, 1, 0] = 10.0, 20.0     # step 0: α_r = 0 best
    means[:, :, :, 1] = 5.0
    means[:, :, 0, 2], means[:, :, 1, 2] = last, last + offset
    alpha_t = (-0.01, 0.0, 0.01, 0.02)
    r = _synthetic(_with_seed_means(means), alpha_t=alpha_t, alpha_r=(0.0, 0.01))
    o = experiment.optimum(r, "protocol")
    self.assertEqual(o["step"], 2)
    first, second = o["per_alpha_r"]
    # Pooled means [3, 1.83, 1.5, 2.83]: α_t = 0.01.
    self.assertEqual(first["argmin_alpha_t"], 0.01)
    self.assertAlmostEqual(first["min"], 1.5, places=14)
    self.assertAlmostEqual(first["min_se"], 0.5 / np.sqrt(3), places=14)
    # Every seed's own argmin, the one with a non-finite value included.
    self.assertEqual(first["seed_argmins"], [0.01, 0.0, 0.02])
    self.assertAlmostEqual(first["seed_argmin_mean"], 0.01, places=14)
    self.assertAlmostEqual(first["seed_argmin_se"], 0.01 / np.sqrt(3), places=14)
    refined = [experiment._refined_argmin(np.array(alpha_t), last[:, s]) for s in range(3)]
    self.assertEqual(first["seed_refined_argmins"], refined)
    self.assertAlmostEqual(first["seed_refined_argmin_mean"], np.mean(refined), places=14)
    self.assertNotAlmostEqual(np.mean(refined), np.median(refined), places=4)
    # Paired by seed: L(0.01) − L(0) = (−1, 1, −1).
    self.assertAlmostEqual(first["min_minus_at_zero"], -1 / 3, places=14)
    self.assertAlmostEqual(first["min_minus_at_zero_se"],
                           np.std([-1, 1, -1], ddof=1) / np.sqrt(3), places=14)
    # α_r = 0.01: best at the grid edge α_t = 0.02 (refined: the edge itself).
    self.assertEqual(second["argmin_alpha_t"], 0.02)
    self.assertEqual(second["refined_argmin_alpha_t"], 0.02)
    self.assertAlmostEqual(second["min_minus_at_matched"],
                           np.mean((last + offset)[3] - (last + offset)[2]), places=14)
    # Best α_r per α_t and jointly, after the last step (not step 0).
    self.assertEqual([b["argmin_alpha_r"] for b in o["best_alpha_r"]],
                     [0.0, 0.01, 0.0, 0.01])
    self.assertEqual((o["joint_argmin"]["alpha_t"], o["joint_argmin"]["alpha_r"]),
                     (0.02, 0.01))
    self.assertAlmostEqual(o["joint_argmin"]["min"], np.mean(last[3] + offset[3]),
                           places=14)
    # Two seeds still give paired differences.
    two = experiment.optimum(_synthetic(_with_seed_means(means[:, [0, 2]]),
                                        alpha_t=alpha_t, alpha_r=(0.0, 0.01)), "protocol")
    self.assertEqual(two["per_alpha_r"][0]["argmin_alpha_t"], 0.01)
    self.assertAlmostEqual(two["per_alpha_r"][0]["min_minus_at_zero"], -1.0, places=14)

  def test_auto_estimator_is_dense_when_computed(self):
    rng = np.random.default_rng(6)
    q = rng.uniform(0.5, 1.5, (2, 2, 1, 3, 2))
    r = _synthetic(q, alpha_t=(0.0, 0.01), alpha_r=(0.01,))
    dense = dataclasses.replace(r, dense=q[..., ::-1] + 1.0)     # other losses
    self.assertEqual(experiment.optimum(dense)["estimator"], "dense")
    self.assertEqual(experiment.optimum(r)["estimator"], "protocol")
    np.testing.assert_allclose(experiment.estimate(dense).mean[:, 0],
                               (q[..., ::-1] + 1.0).mean(axis=(1, 3))[:, 0], rtol=1e-14)

  def test_refined_argmin_at_the_right_edge(self):
    x = np.linspace(-1.0, 1.0, 5)
    self.assertEqual(experiment._refined_argmin(x, -x), 1.0)
    self.assertEqual(experiment._refined_argmin(x, np.array([3, 2, 1, 1.5, 0.5])), 1.0)

  def test_record_and_table(self):
    rng = np.random.default_rng(3)
    q = rng.uniform(0.5, 1.5, (4, 3, 2, 5, 3))
    q[0, 0, 1, 3, 2] = np.nan                      # a non-finite task, seed 0
    q[0, 1, 1, 2, 2] = 50.0                        # a blown-up task, seed 1
    diverged = np.zeros((4, 3), bool)
    diverged[1, 2] = True
    q[1, 2] = np.nan
    train = rng.uniform(1.0, 2.0, (4, 3, 40))
    train[1, 2, 8:] = np.nan
    r = _synthetic(q, alpha_t=(-0.01, 0.0, 0.01, 0.02), alpha_r=(0.0, 0.01),
                   diverged=diverged, train_losses=train)
    rec = experiment.record(r)
    self.assertEqual(rec["test_points_used"], 5)               # = eval_shots
    self.assertEqual(rec["diverged_members"], 1)
    grid = {(g["alpha_t"], g["alpha_r"]): g for g in rec["grid"]}
    self.assertLen(grid, 8)
    self.assertEqual(grid[0.0, 0.01]["diverged_seeds"], [2])
    self.assertEqual(grid[0.0, 0.01]["diverged_steps"], [7])
    self.assertEqual(grid[0.01, 0.0]["diverged_steps"], [])
    # Meta-training loss: mean of the last 5% of the 40 steps (2 steps).
    np.testing.assert_allclose(grid[-0.01, 0.0]["final_train_loss_per_seed"],
                               train[0, :, -2:].mean(axis=1), rtol=1e-14)
    self.assertTrue(np.isnan(grid[0.0, 0.0]["final_train_loss_per_seed"][2]))
    step = grid[-0.01, 0.01]["protocol"][2]
    tasks = q[0, :, 1, :, 2]                                  # [S, T]
    self.assertEqual(step["step"], 2)
    self.assertEqual(step["nonfinite_tasks"], 1)
    self.assertEqual(step["unstable_tasks"], 2)                # NaN + blow-up
    self.assertEqual(step["seeds"], 2)
    means = tasks[1:].mean(axis=1)
    se = means.std(ddof=1) / np.sqrt(2)
    np.testing.assert_allclose(step["ci95"], [means.mean() - 1.96 * se,
                                              means.mean() + 1.96 * se], rtol=1e-13)
    np.testing.assert_allclose(step["per_seed_ci95_halfwidth"][1:],
                               1.96 * tasks[1:].std(axis=1) / np.sqrt(5), rtol=1e-13)
    # The table: too many (α_t, α_r) rows, so α_r = 0.01 only; the diverged
    # member's row says 1/3.
    lines = experiment.summary_table(r, max_rows=4).splitlines()
    self.assertIn("(showing α_r = 0.01 only", "\n".join(lines))
    rows = [x.split() for x in lines if x.split() and x.split()[0] in
            ("-0.0100", "0.0000", "0.0100", "0.0200")]
    self.assertEqual([x[1] for x in rows], ["0.0100"] * 4)
    self.assertEqual([x[-1] == "1/3" for x in rows], [False, True, False, False])


def _planted_for_figures(diverged=None):
  """A result over α_t (−0.01, 0, 0.01) × α_r (0, 0.01), 3 seeds, 3 tasks whose
  median is not their mean, 3 steps; with the seed means [A, S, R, K] planted."""
  rng = np.random.default_rng(8)
  means = rng.uniform(0.3, 1.2, (3, 3, 2, 3))
  means[..., 0] = rng.uniform(1.5, 2.0, (3, 3, 2))       # unadapted: the highest
  offsets = np.array([-0.3, 0.1, 0.2])                      # task mean 0, median 0.1
  q = means[:, :, :, None, :] + offsets[:, None]
  train = rng.uniform(0.5, 3.0, (3, 3, 40))
  return _synthetic(q, alpha_t=(-0.01, 0.0, 0.01), alpha_r=(0.0, 0.01),
                    diverged=diverged, train_losses=train), means, offsets


def _pooled(means):
  """Mean and s.e. over seeds (axis 1) of planted seed means."""
  return means.mean(axis=1), means.std(axis=1, ddof=1) / np.sqrt(means.shape[1])


def _bars(container):
  """(x, y) of an errorbar's points and the half-lengths of its vertical bars."""
  data, _, (segments,) = container.lines
  seg = np.asarray([g for g in segments.get_segments()   # NaN bars are not drawn
                    if len(g) == 2 and np.all(np.isfinite(g))])
  return data.get_xydata(), 0.5 * (seg[:, 1, 1] - seg[:, 0, 1]), seg[:, 0, 0]


class FigureTest(absltest.TestCase):
  """The figures show the planted numbers (recomputed here) where they say."""

  def setUp(self):
    super().setUp()
    from negmeta.sinusoid import plots
    self.plots = plots
    self.r, self.means, self.offsets = _planted_for_figures()
    self.mean, self.se = _pooled(self.means)                   # [A, R, K]
    self.mean = self.mean + self.offsets.mean()

  def _figure(self, make, result=None):
    fig = make(self.r if result is None else result)
    self.addCleanup(plt.close, fig)
    (ax,) = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    return ax

  def test_learning_curves(self):
    means = self.means.copy()
    means[0, :, 0, 2] = 50.0                     # (α_t −0.01, α_r 0) blows up at step 2
    q = means[:, :, :, None, :] + self.offsets[:, None]
    r = _synthetic(q, alpha_t=(-0.01, 0.0, 0.01), alpha_r=(0.0, 0.01))
    mean, se = _pooled(means)
    mean = mean + self.offsets.mean()
    ax = self._figure(self.plots.learning_curve_figure, r)
    top = 1.3 * mean[..., 0].max()
    self.assertEqual(ax.get_ylim(), (0.0, top))
    pairs = [(i, j) for i in range(3) for j in range(2)]
    self.assertLen(ax.containers, len(pairs))
    lines = ax.get_lines()
    for (i, j), container in zip(pairs, ax.containers):
      self.assertEqual(container.get_label(), f"α_t={r.alpha_t[i]:g}, α_r={r.alpha_r[j]:g}"
                       " (mean ± 95% CI)")
      xy, half, _ = _bars(container)
      want = np.where(mean[i, j] <= top, mean[i, j], np.nan)
      np.testing.assert_allclose(xy, np.stack([np.arange(3), want], 1), rtol=1e-12)
      shown = np.isfinite(want)
      np.testing.assert_allclose(half, 1.96 * se[i, j][shown], rtol=1e-9)
      color = container.lines[0].get_color()
      # The thin lines are the seeds' own means, the dashed one the median.
      seeds = [l for l in lines if l.get_color() == color and l.get_lw() == 0.6]
      np.testing.assert_allclose([l.get_ydata() for l in seeds],
                                 np.where(means[i, :, j] + self.offsets.mean() <= top,
                                          means[i, :, j] + self.offsets.mean(), np.nan),
                                 rtol=1e-12)
      (median,) = [l for l in lines if l.get_color() == color and l.get_ls() == "--"]
      np.testing.assert_allclose(median.get_ydata(), means[i, :, j].mean(0) + 0.1,
                                 rtol=1e-12)
    (finn,) = [l for l in lines if l.get_label().startswith("Finn")]
    np.testing.assert_array_equal(finn.get_xydata(), [[1, 0.67], [5, 0.38], [10, 0.35]])
    (off,) = [l for l in lines if l.get_marker() == "^" and len(l.get_xdata())]
    np.testing.assert_allclose(off.get_xydata(), [[2, 0.98 * top]])
    self.assertEqual(ax.get_xlabel(), "fine-tuning steps (same points each step)")
    self.assertEqual(ax.get_ylabel(), "test MSE (protocol estimator)")

  def test_alpha_t_sweep(self):
    diverged = np.zeros((3, 3), bool)
    diverged[2, 1] = True
    r, _, _ = _planted_for_figures(diverged)
    ax = self._figure(self.plots.sweep_figure, r)
    self.assertEqual(ax.get_yscale(), "log")
    self.assertEqual(ax.get_xlabel(), r"meta-training inner rate $\alpha_t$")
    self.assertEqual(ax.get_ylabel(), "test MSE after 2 step(s) (protocol)")
    lines = ax.get_lines()
    self.assertLen(ax.containers, 2)
    for j, container in enumerate(ax.containers):
      self.assertEqual(container.get_label(), f"α_r = {r.alpha_r[j]:g}")
      xy, half, x = _bars(container)
      curve = self.mean[:, j, 2]
      np.testing.assert_allclose(xy, np.stack([r.alpha_t, curve], 1), rtol=1e-12)
      np.testing.assert_allclose(half, 1.96 * self.se[:, j, 2], rtol=1e-9)
      np.testing.assert_allclose(x, r.alpha_t)
      color = container.lines[0].get_color()
      (star,) = [l for l in lines if l.get_marker() == "*" and l.get_color() == color]
      i = int(np.argmin(curve))
      np.testing.assert_allclose(star.get_xydata(), [[r.alpha_t[i], curve[i]]], rtol=1e-12)
    self.assertNotEqual(np.argmin(self.mean[:, 0, 2]), np.argmin(self.mean[:, 1, 2]))
    (cross,) = [l for l in lines if l.get_label() == "some seeds diverged"]
    np.testing.assert_array_equal(cross.get_xdata(), [0.01])

  def test_heatmap(self):
    ax = self._figure(self.plots.heatmap_figure)
    (image,) = ax.get_images()
    z = self.mean[:, :, 2]
    np.testing.assert_allclose(image.get_array(), np.log10(z).T, rtol=1e-12)
    self.assertEqual(image.origin, "lower")
    self.assertEqual([t.get_text() for t in ax.get_xticklabels()], ["-0.01", "0", "0.01"])
    self.assertEqual([t.get_text() for t in ax.get_yticklabels()], ["0", "0.01"])
    self.assertEqual(ax.get_xlabel(), r"meta-training rate $\alpha_t$")
    self.assertEqual(ax.get_ylabel(), r"adaptation rate $\alpha_r$")
    lines = {l.get_label(): l for l in ax.get_lines()}
    np.testing.assert_array_equal(lines["best α_r per α_t"].get_xydata(),
                                  np.stack([np.arange(3), np.argmin(z, axis=1)], 1))
    self.assertGreater(len(set(np.argmin(z, axis=1))), 1)
    np.testing.assert_array_equal(lines["joint minimum"].get_xydata(),
                                  [np.unravel_index(np.argmin(z), z.shape)])

  def test_training_curves(self):
    fig = self.plots.training_figure(self.r, points=10)      # windows of 4 of 40
    self.addCleanup(plt.close, fig)
    (ax,) = fig.axes
    train = self.r.train_losses
    curve = train.reshape(3, 3, 10, 4).mean(-1).mean(1)
    lines = ax.get_lines()
    self.assertLen(lines, 3)
    for i, line in enumerate(lines):
      self.assertEqual(line.get_label(), f"α_t = {self.r.alpha_t[i]:g}")
      np.testing.assert_allclose(line.get_xydata(),
                                 np.stack([4 * np.arange(10) + 2.0, curve[i]], 1),
                                 rtol=1e-12)
    self.assertEqual(ax.get_yscale(), "log")
    self.assertEqual(ax.get_xlabel(), "meta-iteration")
    self.assertEqual(ax.get_ylabel(),
                     "meta-training loss (mean over 3 seeds, windows of 4)")

def _binary(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, BINARY, *args], capture_output=True,
                        text=True, timeout=timeout, env=env)


class BinaryTest(parameterized.TestCase):

  def test_tiny_run_writes_results_figures_and_table(self):
    with tempfile.TemporaryDirectory() as d:
      workdir = os.path.join(d, "out")
      proc = _binary(f"--workdir={workdir}", "--iterations=10",
                     "--meta_batch=3", "--seeds=2", "--test_tasks=6",
                     "--alpha_t=-0.01,0.01", "--alpha_r_min=0",
                     "--alpha_r_max=0.01", "--alpha_r_num=2",
                     "--eval_shots=5", "--eval_steps=3", "--dense_points=8",
                     "--chunk_members=3")
      self.assertEqual(proc.returncode, 0, msg=proc.stderr[-3000:])
      self.assertIn("Table 2 (5 shots, α_t = α_r = 0.01)", proc.stdout)
      self.assertIn("NOT Finn's training setup", proc.stdout)
      self.assertEqual(sorted(os.listdir(workdir)), [
          "alpha_t_alpha_r.png", "alpha_t_sweep.png", "learning_curve.png",
          "meta_training.png", "results.json", "runs.npz"])  # chunks removed
      with open(os.path.join(workdir, "results.json")) as f:
        rec = json.load(f)
      self.assertEqual(rec["experiment"], "sinusoid")
      self.assertEqual(rec["config"]["alpha_t"], [-0.01, 0.01])
      self.assertEqual(rec["config"]["alpha_r"], [0.0, 0.01])
      self.assertEqual(rec["seeds"]["values"], [0, 1])
      self.assertIn("jax", rec["runtime"]["versions"])
      self.assertEqual(len(rec["grid"]), 4)
      entry = rec["grid"][3]
      self.assertEqual((entry["alpha_t"], entry["alpha_r"]), (0.01, 0.01))
      self.assertEqual(entry["diverged_seeds"], [])
      step = entry["protocol"][3]
      for key in ("mean", "se", "ci95", "seeds", "per_seed_mean",
                  "per_seed_ci95_halfwidth", "nonfinite_tasks"):
        self.assertIn(key, step)
      self.assertEqual(step["seeds"], 2)
      self.assertEqual(len(entry["dense"]), 4)   # steps 0..3
      self.assertEqual(sorted(rec["finn_table2"]["protocol"]), ["1"])
      self.assertFalse(rec["finn_table2"]["finn_setup"])
      self.assertIn("per_alpha_r", rec["optimum"])
      data = np.load(os.path.join(workdir, "runs.npz"))
      self.assertEqual(data["query"].shape, (2, 2, 2, 6, 4))
      self.assertEqual(data["params"].shape, (2, 2, 1761))
      np.testing.assert_allclose(
          data["query"][1, :, 1, :, 3].mean(), step["mean"], rtol=1e-5)
      with open(os.path.join(workdir, "learning_curve.png"), "rb") as f:
        self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
      loaded = experiment.load(workdir)
      self.assertEqual(loaded.config.alpha_t, (-0.01, 0.01))
      np.testing.assert_array_equal(loaded.query, data["query"])

  def test_bad_input_is_one_line_and_nothing_is_written(self):
    with tempfile.TemporaryDirectory() as d:
      workdir = os.path.join(d, "out")
      proc = _binary(f"--workdir={workdir}", "--alpha_t=0.1,nan")
      self.assertNotEqual(proc.returncode, 0)
      self.assertEqual(proc.stderr.strip().splitlines(), [
          "sinusoid: error: --alpha_t: must contain only finite values "
          "(got nan)"])
      self.assertFalse(os.path.exists(workdir))


# Runs the binary's flag handling for many command lines in one subprocess
# (the binary's absl flags must not enter the test process, where other
# binaries' flags of the same names may be defined).
_FLAG_DRIVER = r"""
import importlib.util, json, sys
from absl import flags
from negmeta import cli
spec = importlib.util.spec_from_file_location("sinusoid_binary", sys.argv[1])
binary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(binary)
out = []
for argv in json.loads(sys.argv[2]):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["sinusoid", "--workdir=/tmp/unused", *argv])
  try:
    with cli.config_errors("sinusoid"):
      config = binary.config_from_flags()
    out.append({"config": {k: getattr(config, k) for k in
                           ("meta_batch", "seeds", "iterations", "alpha_t")}})
  except SystemExit as e:
    out.append({"error": str(e.code)})
print(json.dumps(out))
"""


class FlagErrorTest(absltest.TestCase):

  def test_config_errors_name_the_flag_and_the_allowed_range(self):
    cases = [
        (["--iterations=0"],
         "--iterations: must be an integer in [1, 100000000] (got 0)"),
        (["--alpha_t=0.1,nan"], "--alpha_t: must contain only finite values"),
        (["--alpha_r_min=1", "--alpha_r_max=-1"],
         "--alpha_r_max: must be >= --alpha_r_min=1"),
        (["--alpha_t_num=0"], "--alpha_t_num: must be an integer in [1, 1000]"),
        (["--alpha_t=0,0.01", "--alpha_t_num=5"],
         "--alpha_t_num: cannot be combined with --alpha_t"),
        (["--chunk_members=1000000000"], "--chunk_members: must be an integer in [0, 8]"),
        (["--seeds=3", "--seed=2147483646"],
         "--seed: must be an integer in [0, 2147483645]"),
        (["--alpha_r="], "--alpha_r: must contain at least one value"),
        (["--test_tasks=1"], "--test_tasks: must be an integer in"),
        (["--seeds=0"], "--seeds: must be an integer in [1, 10000] (got 0)"),
        (["--meta_lr=0"], "--meta_lr: must be a finite real number > 0 and <= 1e+06 (got 0)"),
        (["--alpha_t=1e300,0"], "--alpha_t: must contain only values with |x| <= 1e+06"),
        (["--alpha_r_min=-2e6"], "--alpha_r_min: must be a finite real number >= -1e+06"),
        (["--alpha_t_num=1"], "--alpha_t_num: must be >= 2 when --alpha_t_min != "
         "--alpha_t_max (got 1)"),
        (["--eval_steps=-1"], "--eval_steps: must be an integer in [0, 1000]"),
        (["--preset=finn_table2", "--meta_batch=10"],
         "--meta_batch: contradicts --preset=finn_table2, which sets "
         "meta_batch=25 (got 10)"),
        (["--preset=finn_table2", "--alpha_t=0.02"],
         "--alpha_t: contradicts --preset=finn_table2"),
    ]
    accepted = ["--preset=finn_table2", "--meta_batch=25", "--seeds=3",
                "--iterations=100", "--alpha_t=0.01"]
    argvs = [argv for argv, _ in cases] + [accepted]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _FLAG_DRIVER, BINARY, json.dumps(argvs)],
        capture_output=True, text=True, timeout=300, env=env)
    self.assertEqual(proc.returncode, 0, msg=proc.stderr[-3000:])
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for (argv, message), got in zip(cases, results):
      with self.subTest(argv=argv):
        self.assertIn("error", got)
        self.assertTrue(got["error"].startswith("sinusoid: error: " + message),
                        msg=got["error"])
        self.assertNotIn("\n", got["error"])
    self.assertEqual(results[-1], {"config": {
        "meta_batch": 25, "seeds": 3, "iterations": 100, "alpha_t": [0.01]}})


if __name__ == "__main__":
  absltest.main()
