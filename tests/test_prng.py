"""Tests of `negmeta._prng`: flat draws, the exact χ² sampler, Bartlett Wishart."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from scipy import stats

from negmeta import _prng


class ChiSquareTest(parameterized.TestCase):

  @parameterized.parameters(1.0, 2.0, 3.5, 37.0)
  def test_law(self, df):
    # df = 1 and 2 take the a < 1 and a = 1 branches (boost, boundary).
    # 100k draws: mean df and variance 2·df within 4 s.e.; a KS test against
    # scipy's χ²(df) at level 1e-3 (a mean-preserving error such as a
    # mis-scaled boost would fail it).
    n = 100_000
    x = np.asarray(jax.jit(lambda k: _prng.chi_square(k, df, (n,)))(
        jax.random.key(int(df * 10))))
    self.assertLess(abs(x.mean() - df), 4 * np.sqrt(2 * df / n))
    # Var of the sample variance of χ²(df): (μ₄ − σ⁴)/n, μ₄ = 12 df (df + 4).
    var_se = np.sqrt((12 * df * (df + 4) - (2 * df) ** 2) / n)
    self.assertLess(abs(x.var() - 2 * df), 4 * var_se)
    self.assertGreater(stats.kstest(x, stats.chi2(df).cdf).pvalue, 1e-3)

  def test_elementwise_degrees_of_freedom_and_shape(self):
    df = jnp.array([1.0, 5.0, 40.0])
    x = jax.jit(lambda k: _prng.chi_square(k, df, (20_000, 3)))(jax.random.key(1))
    self.assertEqual(x.shape, (20_000, 3))
    self.assertTrue(bool(jnp.all(x > 0)))
    np.testing.assert_array_less(np.abs(np.asarray(x.mean(0)) - df),
                                 4 * np.sqrt(2 * df / 20_000))


class WishartFactorTest(parameterized.TestCase):

  @parameterized.parameters((5, 12), (5, 5), (6, 3))
  def test_moments_of_the_wishart_matrix(self, dim, df):
    # W = F Fᵀ ~ Wishart_dim(df, I): E W = df·I, Var W_ij = df (i ≠ j) and
    # 2·df (i = j); 50k draws, every entry within 4.5 s.e. (max over ≤ 21).
    n = 50_000
    f = jax.jit(lambda k: _prng.wishart_factor(k, dim, df, (n,)))(jax.random.key(df))
    self.assertEqual(f.shape, (n, dim, min(dim, df)))
    if df >= dim:
      np.testing.assert_array_equal(np.triu(np.asarray(f), 1), 0.0)
    w = np.asarray(f @ jnp.swapaxes(f, -1, -2))
    eye = np.eye(dim)
    var = df * (1 + eye)
    np.testing.assert_array_less(np.abs(w.mean(0) - df * eye),
                                 4.5 * np.sqrt(var / n))
    # The s.e. of each sample variance, estimated from the draws' 4th moments.
    sample_var = w.var(0)
    var_se = np.sqrt(((w - w.mean(0)) ** 4).mean(0) - sample_var**2) / np.sqrt(n)
    np.testing.assert_array_less(np.abs(sample_var - var), 4.5 * var_se)

  def test_several_factors_from_one_call_are_independent_wisharts(self):
    # Mixed branches in one call: each factor has its Wishart mean, and the
    # traces of different factors are uncorrelated (|corr| within 4.5 s.e.).
    n, specs = 50_000, [(4, 9), (3, 2), (1, 5), (4, 4)]
    fs = jax.jit(lambda k: _prng.wishart_factors(k, specs, (n,)))(jax.random.key(7))
    traces = []
    for (dim, df), f in zip(specs, fs):
      self.assertEqual(f.shape, (n, dim, min(dim, df)))
      w = np.asarray(f @ jnp.swapaxes(f, -1, -2))
      np.testing.assert_array_less(np.abs(w.mean(0) - df * np.eye(dim)),
                                   4.5 * np.sqrt(df * (1 + np.eye(dim)) / n))
      traces.append(np.trace(w, axis1=1, axis2=2))
    corr = np.corrcoef(np.stack(traces))
    np.testing.assert_array_less(np.abs(corr - np.eye(len(specs))), 4.5 / np.sqrt(n))


if __name__ == "__main__":
  absltest.main()
