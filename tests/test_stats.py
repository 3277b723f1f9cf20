"""Estimates over runs (negmeta.stats): exact values on small hand-made inputs."""

import numpy as np
from absl.testing import absltest

from negmeta import stats

NAN, INF = float("nan"), float("inf")


class EstimateTest(absltest.TestCase):

  def test_mean_and_standard_error_over_finite_runs(self):
    values = np.array([[1.0, 5.0], [2.0, NAN], [6.0, 1.0], [INF, 3.0]])
    est = stats.estimate(values)
    for g, finite in enumerate(([1.0, 2.0, 6.0], [5.0, 1.0, 3.0])):
      self.assertEqual(est.n[g], 3)
      self.assertAlmostEqual(est.mean[g], np.mean(finite), places=14)
      self.assertAlmostEqual(est.se[g], np.std(finite, ddof=1) / np.sqrt(3), places=14)

  def test_one_or_no_finite_run(self):
    est = stats.estimate(np.array([[2.0, NAN], [NAN, -INF]]))
    np.testing.assert_array_equal(est.n, [1, 0])
    self.assertEqual(est.mean[0], 2.0)
    self.assertTrue(np.isnan(est.se[0]))          # one run: no spread to estimate
    self.assertTrue(np.isnan(est.mean[1]) and np.isnan(est.se[1]))


class PairedDifferenceTest(absltest.TestCase):

  def test_standard_error_of_the_differences(self):
    values = np.array([[1.0, 0.0], [3.0, 1.0], [4.0, 1.0], [8.0, 2.0]])   # d = 1, 2, 3, 6
    mean, se = stats.paired_difference(values, 0, 1)
    self.assertAlmostEqual(mean, 3.0, places=14)
    self.assertAlmostEqual(se, np.std([1.0, 2.0, 3.0, 6.0], ddof=1) / 2.0, places=14)
    mean, _ = stats.paired_difference(values, 1, 0)
    self.assertAlmostEqual(mean, -3.0, places=14)

  def test_pairing_removes_the_shared_noise(self):
    # Common random numbers: the two columns share most of their run-to-run noise,
    # so the paired s.e. is that of the small difference, not of either column.
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    values = np.stack([x, x + 0.01 * rng.normal(size=50)], axis=1)
    _, se = stats.paired_difference(values, 0, 1)
    d = values[:, 0] - values[:, 1]
    self.assertAlmostEqual(se, np.std(d, ddof=1) / np.sqrt(50), places=14)
    unpaired = np.sqrt(values.var(axis=0, ddof=1).sum() / 50)
    self.assertLess(10 * se, unpaired)

  def test_runs_with_a_nonfinite_value_are_left_out(self):
    mean, se = stats.paired_difference(np.array([[1.0, NAN], [2.0, 1.0], [4.0, 2.0],
                                                 [INF, INF]]), 0, 1)
    self.assertAlmostEqual(mean, 1.5, places=14)
    self.assertAlmostEqual(se, 0.5, places=14)    # d = 1, 2
    mean, se = stats.paired_difference(np.array([[1.0, NAN], [3.0, 1.0]]), 0, 1)
    self.assertEqual(mean, 2.0)
    self.assertTrue(np.isnan(se))
    mean, se = stats.paired_difference(np.array([[1.0, NAN], [INF, 1.0]]), 0, 1)
    self.assertTrue(np.isnan(mean) and np.isnan(se))


class NanIgnoringTest(absltest.TestCase):

  def test_leaves_out_nans_only(self):
    self.assertEqual(stats.nan_ignoring(np.min, np.array([NAN, 2.0, 1.0])), 1.0)
    # Infinities are values (a diverged run's gap), not missing data.
    self.assertEqual(stats.nan_ignoring(np.median, np.array([1.0, INF, INF, NAN])), INF)
    self.assertEqual(stats.nan_ignoring(np.max, np.array([[1.0], [INF]])), INF)
    self.assertTrue(np.isnan(stats.nan_ignoring(np.median, np.array([NAN, NAN]))))


if __name__ == "__main__":
  absltest.main()
