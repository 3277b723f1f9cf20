"""Tests for negmeta.theory.hessian (Lanczos and power iteration on HVPs).

The reference is the explicit Hessian of the flattened loss (jax.hessian) and its
eigenvalues from jnp.linalg.eigvalsh.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from jax.flatten_util import ravel_pytree

from negmeta.theory import hessian


def _mlp_problem():
  """A 3-6-1 tanh MLP (31 parameters in a nested pytree) and its MSE loss."""
  rng = np.random.default_rng(0)
  params = {
      "hidden": {"w": jnp.asarray(rng.standard_normal((3, 6))),
                 "b": jnp.asarray(0.1 * rng.standard_normal(6))},
      "out": {"w": jnp.asarray(rng.standard_normal((6, 1))), "b": jnp.zeros((1,))},
  }
  x = jnp.asarray(rng.standard_normal((32, 3)))
  y = jnp.sin(x.sum(-1, keepdims=True))

  def loss(p):
    h = jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])
    return jnp.mean((h @ p["out"]["w"] + p["out"]["b"] - y) ** 2)

  return loss, params


def _explicit_spectrum(loss, params):
  flat, unravel = ravel_pytree(params)
  H = np.asarray(jax.jit(jax.hessian(lambda f: loss(unravel(f))))(flat))
  return H, np.linalg.eigvalsh(H)


def _quadratic_problem(eigs, seed=0):
  """½ xᵀAx over a pytree {'a': [k], 'b': [n − k, 1]}, A = U diag(eigs) Uᵀ."""
  n = len(eigs)
  U = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))[0]
  A = jnp.asarray(U @ np.diag(eigs) @ U.T)
  params = {"a": jnp.ones((n // 2,)), "b": jnp.full((n - n // 2, 1), 0.5)}

  def loss(p):
    x, _ = ravel_pytree(p)
    return 0.5 * x @ A @ x

  return loss, params, np.sort(np.asarray(eigs, dtype=np.float64))


class HvpTest(absltest.TestCase):

  def test_matches_explicit_hessian_on_pytree(self):
    loss, params = _mlp_problem()
    H, _ = _explicit_spectrum(loss, params)
    flat, unravel = ravel_pytree(params)
    v = np.random.default_rng(1).standard_normal(flat.shape[0])
    tree_hv, _ = ravel_pytree(jax.jit(functools.partial(hessian.hvp, loss))(
        params, unravel(jnp.asarray(v))))
    matvec, flat_again = hessian.flat_hvp_fn(loss, params)
    np.testing.assert_allclose(tree_hv, H @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jax.jit(matvec)(jnp.asarray(v)), H @ v, rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_array_equal(flat_again, flat)


class LanczosTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    loss, cls.params = _mlp_problem()
    cls.loss = staticmethod(loss)
    _, cls.eigs = _explicit_spectrum(loss, cls.params)
    cls.scale = float(np.max(np.abs(cls.eigs)))
    cls._compiled = {}

  def run_lanczos(self, num_iters, key=0, top_k=1):
    """Jitted Lanczos; one compilation per (num_iters, top_k) for the whole class."""
    cache = self._compiled
    if (num_iters, top_k) not in cache:
      cache[num_iters, top_k] = jax.jit(functools.partial(
          hessian.lanczos, self.loss, num_iters=num_iters, top_k=top_k))
    return cache[num_iters, top_k](self.params, jax.random.PRNGKey(key))

  def test_spectrum_is_indefinite(self):
    # the test model is a meaningful case: both ends, with clusters near zero
    self.assertEqual(self.eigs.shape, (31,))
    self.assertLess(self.eigs[0], -1.0)
    self.assertGreater(self.eigs[-1], 4.0)

  def test_full_krylov_space_recovers_whole_spectrum(self):
    res = self.run_lanczos(num_iters=100, top_k=5)  # capped at n = 31
    self.assertEqual(res.ritz_values.shape, (31,))
    np.testing.assert_allclose(res.ritz_values, self.eigs, rtol=0,
                               atol=1e-12 * self.scale)
    np.testing.assert_allclose(res.lambda_max, self.eigs[-1], rtol=1e-13)
    np.testing.assert_allclose(res.lambda_min, self.eigs[0], rtol=1e-13)
    np.testing.assert_allclose(res.top_k, self.eigs[::-1][:5], rtol=1e-12)

  def test_partial_run_extremes_and_error_bounds(self):
    res = self.run_lanczos(num_iters=20, top_k=3)
    np.testing.assert_allclose(res.lambda_max, self.eigs[-1], rtol=1e-10)
    np.testing.assert_allclose(res.lambda_min, self.eigs[0], rtol=1e-8)
    np.testing.assert_allclose(res.top_k, self.eigs[::-1][:3], rtol=1e-9)
    # Rayleigh-Ritz: Ritz values lie inside [λ_min, λ_max] ...
    tol = 1e-12 * self.scale
    self.assertTrue(np.all(res.ritz_values <= self.eigs[-1] + tol))
    self.assertTrue(np.all(res.ritz_values >= self.eigs[0] - tol))
    # ... and each has an eigenvalue within its residual norm
    dist = np.min(np.abs(np.asarray(res.ritz_values)[:, None] - self.eigs[None, :]),
                  axis=1)
    self.assertTrue(np.all(dist <= np.asarray(res.residuals) + tol),
                    (dist, res.residuals))

  def test_residuals_equal_explicit_ritz_pair_residuals(self):
    # residuals[i] must be ‖H y_i − θ_i y_i‖ itself, not just an upper bound:
    # rebuild the Ritz vectors y_i = Vᵀ s_i from the same Lanczos basis.
    res = self.run_lanczos(num_iters=20, top_k=3)
    H, _ = _explicit_spectrum(self.loss, self.params)
    matvec, flat = hessian.flat_hvp_fn(self.loss, self.params)
    alphas, betas, V = hessian.lanczos_tridiagonal(
        matvec, flat.shape[0], jax.random.PRNGKey(0), 20, flat.dtype)
    np.testing.assert_allclose(alphas, res.alphas, rtol=1e-12)
    off = np.asarray(betas[:-1])
    theta, s = np.linalg.eigh(np.diag(alphas) + np.diag(off, 1) + np.diag(off, -1))
    y = np.asarray(V).T @ s
    explicit = np.linalg.norm(H @ y - y * theta, axis=0)
    np.testing.assert_allclose(res.residuals, explicit, rtol=1e-6,
                               atol=1e-10 * self.scale)
    # The run is partial: some residuals are far from zero, the top one is tiny.
    self.assertGreater(float(np.max(explicit)), 1e-3 * self.scale)
    self.assertLess(float(explicit[-1]), 1e-8 * self.scale)

  def test_few_iterations_bracket_from_inside(self):
    res = self.run_lanczos(num_iters=5, top_k=1)
    self.assertLessEqual(float(res.lambda_max), self.eigs[-1] + 1e-12)
    self.assertGreaterEqual(float(res.lambda_min), self.eigs[0] - 1e-12)
    self.assertGreater(float(res.lambda_max), 0.5 * self.eigs[-1])

  def test_key_only_changes_the_start_vector(self):
    first, again = self.run_lanczos(num_iters=20, key=3), self.run_lanczos(20, key=3)
    np.testing.assert_array_equal(first.alphas, again.alphas)
    other = self.run_lanczos(num_iters=20, key=7)
    self.assertGreater(float(jnp.max(jnp.abs(other.alphas - first.alphas))), 1e-3)
    np.testing.assert_allclose(other.lambda_max, self.eigs[-1], rtol=1e-10)
    full = self.run_lanczos(num_iters=100, key=7, top_k=5)
    np.testing.assert_allclose(full.ritz_values, self.eigs, rtol=0,
                               atol=1e-12 * self.scale)

  def test_restarts_after_invariant_subspace(self):
    """3 distinct eigenvalues in n = 7: the Krylov space is invariant after 3 steps."""
    loss, params, eigs = _quadratic_problem([1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0])
    res = jax.jit(functools.partial(hessian.lanczos, loss, num_iters=7))(
        params, jax.random.PRNGKey(0))
    self.assertTrue(bool(jnp.all(jnp.isfinite(res.ritz_values))))
    self.assertEqual(float(res.betas[2]), 0.0)  # the breakdown was detected
    np.testing.assert_allclose(res.ritz_values, eigs, rtol=0, atol=1e-12)

  def test_rejects_bad_top_k(self):
    with self.assertRaisesRegex(ValueError, "top_k"):
      hessian.lanczos(self.loss, self.params, jax.random.PRNGKey(0), num_iters=4,
                      top_k=5)


class PowerIterationTest(absltest.TestCase):

  def test_mlp_extremes(self):
    loss, params = _mlp_problem()
    _, eigs = _explicit_spectrum(loss, params)
    res = jax.jit(functools.partial(hessian.power_iteration, loss, num_iters=300))(
        params, jax.random.PRNGKey(0))
    np.testing.assert_allclose(res.lambda_max, eigs[-1], rtol=1e-10)
    np.testing.assert_allclose(res.lambda_min, eigs[0], rtol=1e-10)
    # the reported residuals certify the estimates: an eigenvalue lies within ‖r‖
    for est, true, resid in ((res.lambda_max, eigs[-1], res.residual_max),
                             (res.lambda_min, eigs[0], res.residual_min)):
      self.assertLess(float(resid), 1e-6 * np.max(np.abs(eigs)))
      self.assertLessEqual(abs(float(est) - true),
                           float(resid) + 1e-12 * np.max(np.abs(eigs)))

  def test_negative_dominant_eigenvalue(self):
    """|λ_min| > λ_max: the first run finds λ_min, the shifted run finds λ_max."""
    loss, params, _ = _quadratic_problem([-5.0, -1.0, 0.5, 1.0, 2.0])
    res = jax.jit(functools.partial(hessian.power_iteration, loss, num_iters=300))(
        params, jax.random.PRNGKey(1))
    np.testing.assert_allclose(res.dominant, -5.0, rtol=1e-12)
    np.testing.assert_allclose(res.lambda_min, -5.0, rtol=1e-12)
    np.testing.assert_allclose(res.lambda_max, 2.0, rtol=1e-12)


if __name__ == "__main__":
  absltest.main()
