"""Pure-jnp small linear algebra against LAPACK (negmeta._linalg)."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from negmeta import _linalg


def _symmetric(seed, shape):
  x = np.random.default_rng(seed).standard_normal(shape)
  return jnp.asarray(x + np.swapaxes(x, -1, -2))


class EigvalshTest(parameterized.TestCase):

  @parameterized.parameters((1,), (2,), (3,), (7,), (30,))
  def test_matches_lapack_on_random_symmetric_matrices(self, n):
    a = _symmetric(n, (4, 3, n, n))
    got = jax.jit(_linalg.eigvalsh)(a)
    self.assertEqual(got.shape, (4, 3, n))
    scale = float(jnp.max(jnp.abs(a)))
    np.testing.assert_allclose(got, jnp.linalg.eigvalsh(a), rtol=0, atol=1e-13 * n * scale)

  def test_repeated_and_zero_eigenvalues(self):
    # A rank-4 Gram matrix (26 zero eigenvalues), and a matrix with a triple
    # eigenvalue hidden by a rotation.
    x = np.random.default_rng(1).standard_normal((30, 4))
    gram = jnp.asarray(x @ x.T)
    np.testing.assert_allclose(_linalg.eigvalsh(gram), jnp.linalg.eigvalsh(gram),
                               atol=1e-12)
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((5, 5)))
    a = jnp.asarray(q @ np.diag([-1.0, 2.0, 2.0, 2.0, 5.0]) @ q.T)
    np.testing.assert_allclose(_linalg.eigvalsh(a), [-1, 2, 2, 2, 5], atol=1e-13)

  def test_already_tridiagonal_and_diagonal(self):
    d = jnp.array([3.0, -1.0, 0.0, 4.0])
    # Bisection ends within an ulp of the eigenvalue (ulp(4) = 8.9e-16).
    np.testing.assert_allclose(_linalg.eigvalsh(jnp.diag(d)), jnp.sort(d), rtol=0,
                               atol=1e-15)
    t = jnp.diag(d) + jnp.diag(jnp.ones(3), 1) + jnp.diag(jnp.ones(3), -1)
    diag, off = _linalg.tridiagonalize(t)
    np.testing.assert_allclose(diag, d, atol=1e-15)
    np.testing.assert_allclose(jnp.abs(off), 1.0, atol=1e-15)

  def test_eigenvalues_on_the_gershgorin_bounds(self):
    # ones((2, 2)) has eigenvalues 0 and 2, exactly the ends of its Gershgorin
    # interval [0, 2]: the bisection's starting interval must contain them.
    np.testing.assert_allclose(_linalg.eigvalsh(jnp.ones((2, 2))), [0.0, 2.0], rtol=0,
                               atol=4.4e-16)                              # ulp(2)

  @parameterized.parameters((1.0,), (-1.0,))
  def test_reflection_without_cancellation(self, sign):
    # The column below the diagonal is ≈ ±e_1 (its head carries almost all of its
    # norm): v = x − sign(x₁)‖x‖e₁ would cancel to ~1e-16 and, normalised, lose
    # all precision; the Householder vector must take x₁'s sign.
    t = np.diag([3.0, -1.0, 0.0, 4.0]) + sign * (np.eye(4, k=1) + np.eye(4, k=-1))
    t[2, 0] = t[0, 2] = 1e-8
    np.testing.assert_allclose(_linalg.eigvalsh(jnp.asarray(t)),
                               jnp.linalg.eigvalsh(jnp.asarray(t)), rtol=0, atol=1e-13)

  def test_tridiagonal_form_keeps_the_spectrum(self):
    a = _symmetric(3, (6, 6))
    diag, off = _linalg.tridiagonalize(a)
    t = jnp.diag(diag) + jnp.diag(off, 1) + jnp.diag(off, -1)
    np.testing.assert_allclose(jnp.linalg.eigvalsh(t), jnp.linalg.eigvalsh(a), atol=1e-13)


class CholeskyTest(parameterized.TestCase):

  @parameterized.parameters(((5,),), ((5, 3),))
  def test_solve_matches_lapack(self, rhs_shape):
    x = np.random.default_rng(4).standard_normal((2, 9, 5))
    k = jnp.asarray(np.swapaxes(x, 1, 2) @ x)
    b = jnp.asarray(np.random.default_rng(5).standard_normal((2,) + rhs_shape))
    chol = _linalg.psd_cholesky(k)
    np.testing.assert_allclose(chol, jnp.linalg.cholesky(k), atol=1e-12)
    got = _linalg.cholesky_solve(chol, b)
    self.assertEqual(got.shape, b.shape)
    want = jnp.linalg.solve(k, b if len(rhs_shape) == 2 else b[..., None])
    np.testing.assert_allclose(got, want if len(rhs_shape) == 2 else want[..., 0],
                               rtol=1e-10)

  def test_zero_pivot_gives_the_solution_on_the_other_coordinates(self):
    # k = diag(K₁, 0): the zero pivot's coordinate is set to 0, the rest solved.
    x = np.random.default_rng(6).standard_normal((7, 3))
    k = np.zeros((4, 4))
    k[:3, :3] = x.T @ x
    chol = _linalg.psd_cholesky(jnp.asarray(k))
    b = jnp.array([1.0, -2.0, 0.5, 3.0])
    got = _linalg.cholesky_solve(chol, b)
    np.testing.assert_allclose(got[:3], np.linalg.solve(k[:3, :3], b[:3]), rtol=1e-12)
    self.assertEqual(float(got[3]), 0.0)


if __name__ == "__main__":
  absltest.main()
