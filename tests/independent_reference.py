"""An independent NumPy implementation of the mixed-linear-regression study.

Written from the reference digest alone (`shared/reference/bernacchia2021.md`
§1.3-1.5 and §2.1-2.3), without reading negmeta's theory or simulation code, so
that `test_independent_reference.py` can hold negmeta against something that
does not share its derivations or its bugs. It is deliberately plain: the
theory as the digest writes it, and a simulation that draws every data point,
forms the meta-regression matrix Z explicitly and takes ω* with `np.linalg.pinv`.

Parameters are dicts with keys p, n_t, n_v, n_r, m, sigma, nu, w0, omega0
(w0/omega0: a scalar or a length-p list).
"""

from __future__ import annotations

import numpy as np

PARAM_SEED = 20240601


def h(alpha, p, n):
  """(1 − α)² + α²(p + 1)/n = E tr(I − αH)²/p for H = XᵀX/n (§1.5)."""
  alpha = np.asarray(alpha, np.float64)
  return (1.0 - alpha) ** 2 + alpha**2 * (p + 1.0) / n


def loss_from_distance(distance, alpha_r, p, n_r, sigma, nu):
  """L = σ²/2 (1 + α_r² p/n_r) + h_r/2 (ν² + D) (§1.5)."""
  alpha_r = np.asarray(alpha_r, np.float64)
  return (0.5 * sigma**2 * (1.0 + alpha_r**2 * p / n_r)
          + 0.5 * h(alpha_r, p, n_r) * (nu**2 + distance))


def distance_over(alpha_t, p, n_t, n, sigma, nu, init_distance):
  """Theorem 1: D ≈ (1 − N/p)‖ω_0 − w_0‖² + N/p [ν² + σ²(1 + α_t² p/n_t)/h_t]."""
  alpha_t = np.asarray(alpha_t, np.float64)
  f = (1.0 + alpha_t**2 * p / n_t) / h(alpha_t, p, n_t)
  return (1.0 - n / p) * init_distance + n / p * (nu**2 + sigma**2 * f)


def _wishart_moments(p, n):
  """μ_k = E tr H^k / p, k = 2, 3, 4, for H = XᵀX/n, X n × p Gaussian (§2.3 table)."""
  p, n = float(p), float(n)
  mu2 = (n + p + 1) / n
  mu3 = (n**2 + 3 * n * p + 3 * n + p**2 + 3 * p + 4) / n**2
  mu4 = (n**3 + 6 * n**2 * p + 6 * n**2 + 6 * n * p**2 + 17 * n * p + 21 * n
         + p**3 + 6 * p**2 + 21 * p + 20) / n**3
  return mu2, mu3, mu4


def distance_under(alpha_t, p, n_t, n_v, m, sigma, nu):
  """The digest's boxed stand-in (§2.3):
  D ≈ {ν²[(n_v+1)γ4 + pγ3] + σ²p h_t + σ²α_t² p/n_t [(n_v+1)γ1 + pγ2]}/(N h_t²)."""
  a = np.asarray(alpha_t, np.float64)
  n, pf = float(n_t), float(p)
  mu2, mu3, mu4 = _wishart_moments(p, n_t)
  ht = h(a, p, n_t)
  g1 = 1 - 2 * a * mu2 + a**2 * mu3
  g2 = ht + 4 * a * (a * n + a * pf + a - n) / (n**2 * pf)
  g3 = ht**2 + 4 * a**2 / (n**3 * pf) * (
      a**2 * (2 * n**2 + 5 * n * pf + 5 * n + 2 * pf**2 + 5 * pf + 5)
      - 4 * a * n * (n + pf + 1) + 2 * n**2)
  g4 = 1 - 4 * a + 6 * a**2 * mu2 - 4 * a**3 * mu3 + a**4 * mu4
  numerator = (nu**2 * ((n_v + 1) * g4 + p * g3) + sigma**2 * p * ht
               + sigma**2 * a**2 * p / n_t * ((n_v + 1) * g1 + p * g2))
  return numerator / (n_v * m * ht**2)


def _vector(value, p):
  return np.broadcast_to(np.asarray(value, np.float64), (p,)).copy()


def theory_loss(params: dict, alpha_t, alpha_r) -> np.ndarray:
  """L̄_test(α_t, α_r): Theorem 1 if p > N = n_v·m, the stand-in if p < N."""
  p, n_t, n_v, n_r, m = (params[k] for k in ("p", "n_t", "n_v", "n_r", "m"))
  sigma, nu = params["sigma"], params["nu"]
  alpha_t, alpha_r = np.broadcast_arrays(np.asarray(alpha_t, np.float64),
                                         np.asarray(alpha_r, np.float64))
  if p > n_v * m:
    init = float(np.sum((_vector(params["omega0"], p) - _vector(params["w0"], p)) ** 2))
    distance = distance_over(alpha_t, p, n_t, n_v * m, sigma, nu, init)
  else:
    distance = distance_under(alpha_t, p, n_t, n_v, m, sigma, nu)
  return loss_from_distance(distance, alpha_r, p, n_r, sigma, nu)


def alpha_t_stationary(p, n_t):
  """α_t^± = −(n_t + 1)/(2p) ± √(((n_t + 1)/(2p))² + n_t/p) (§3)."""
  c = (n_t + 1) / (2 * p)
  root = np.sqrt(c**2 + n_t / p)
  return -c + root, -c - root


def simulate(params: dict, alpha_t, alpha_r, runs: int, seed: int,
             test_tasks: int = 100, test_points: int = 50) -> dict:
  """Direct Monte Carlo; common random numbers across the grid within a run.

  Returns:
    dict of [runs, G] arrays: "distance" ‖ω* − w_0‖², "exact" (the test loss of ω*
    exactly in expectation over new tasks and data, §1.5) and "protocol" (mean ½
    squared error on `test_tasks` new tasks × `test_points` points after one
    adaptation step with α_r on n_r points).
  """
  rng = np.random.default_rng(seed)
  p, n_t, n_v, n_r, m = (params[k] for k in ("p", "n_t", "n_v", "n_r", "m"))
  sigma, nu = float(params["sigma"]), float(params["nu"])
  w0, omega0 = _vector(params["w0"], p), _vector(params["omega0"], p)
  at, ar = np.broadcast_arrays(np.atleast_1d(np.asarray(alpha_t, np.float64)),
                               np.atleast_1d(np.asarray(alpha_r, np.float64)))
  out = {k: np.empty((runs, at.size)) for k in ("distance", "exact", "protocol")}
  for r in range(runs):
    w = w0 + nu / np.sqrt(p) * rng.standard_normal((m, p))
    xt = rng.standard_normal((m, n_t, p))
    yt = np.einsum("inp,ip->in", xt, w) + sigma * rng.standard_normal((m, n_t))
    xv = rng.standard_normal((m, n_v, p))
    yv = np.einsum("inp,ip->in", xv, w) + sigma * rng.standard_normal((m, n_v))
    ht = np.einsum("inp,inq->ipq", xt, xt) / n_t
    xty = np.einsum("inp,in->ip", xt, yt)
    omega = np.empty((at.size, p))
    for g, a in enumerate(at):
      z = np.einsum("ivp,ipq->ivq", xv, np.eye(p) - a * ht).reshape(-1, p)
      u = (yv - a / n_t * np.einsum("ivp,ip->iv", xv, xty)).reshape(-1)
      omega[g] = omega0 + np.linalg.pinv(z) @ (u - z @ omega0)
    distance = np.sum((omega - w0) ** 2, axis=1)
    out["distance"][r] = distance
    out["exact"][r] = loss_from_distance(distance, ar, p, n_r, sigma, nu)
    w_new = w0 + nu / np.sqrt(p) * rng.standard_normal((test_tasks, p))
    xr = rng.standard_normal((test_tasks, n_r, p))
    yr = np.einsum("tnp,tp->tn", xr, w_new) + sigma * rng.standard_normal((test_tasks, n_r))
    xs = rng.standard_normal((test_tasks, test_points, p))
    ys = (np.einsum("tsp,tp->ts", xs, w_new)
          + sigma * rng.standard_normal((test_tasks, test_points)))
    resid = np.einsum("tnp,gp->tng", xr, omega) - yr[:, :, None]
    theta = omega[None] - ar[None, :, None] * np.einsum("tnp,tng->tgp", xr, resid) / n_r
    pred = np.einsum("tsp,tgp->tsg", xs, theta)
    out["protocol"][r] = 0.5 * np.mean((ys[:, :, None] - pred) ** 2, axis=(0, 1))
  return out


def draw_parameter_sets(per_regime: int = 8, seed: int = PARAM_SEED) -> list[dict]:
  """Random problems, `per_regime` overparameterized then as many underparameterized.

  Sizes are moderate; σ, ν log-uniform. Set k = 1 has σ = 0.02, k = 2 scalar
  w_0 = 0.7, ω_0 = −0.3, k = 3 has ω_0 = w_0 (vectors); the others random vectors.
  Each set carries an (α_t, α_r) grid with negative values, α_t^+ and α_t^+ + 0.05.
  """
  rng = np.random.default_rng(seed)
  sets = []
  for regime in ("over", "under"):
    k = 0
    while k < per_regime:
      if regime == "over":
        p, n_v, m = int(rng.integers(20, 81)), int(rng.integers(1, 5)), int(rng.integers(2, 9))
        if n_v * m > p - 6:
          continue
      else:
        p, n_v, m = int(rng.integers(5, 31)), int(rng.integers(2, 31)), int(rng.integers(2, 41))
        if not p + 6 <= n_v * m <= 400:
          continue
      n_t, n_r = int(rng.integers(3, 41)), int(rng.integers(3, 31))
      sigma = float(np.exp(rng.uniform(np.log(0.05), np.log(1.5))))
      nu = float(np.exp(rng.uniform(np.log(0.1), np.log(1.5))))
      if k == 1:
        sigma = 0.02
      if k == 2:
        w0, omega0 = 0.7, -0.3
      else:
        w0 = np.round(rng.normal(0.2, 0.4, p), 6).tolist()
        omega0 = np.round(rng.normal(-0.1, 0.4, p), 6).tolist()
      if k == 3:
        omega0 = w0
      plus, minus = alpha_t_stationary(p, n_t)
      if regime == "over":
        at = [minus, -1.5 * abs(minus), rng.uniform(-2, 0), 0.0, plus, plus + 0.05,
              rng.uniform(0.5, 2.0), 0.5 * plus]
      else:
        at = [rng.uniform(-0.6, -0.2), -0.05, 0.0, 0.1, plus, plus + 0.05,
              rng.uniform(0.2, 0.6), rng.uniform(-0.2, 0.2)]
      ar = [float(x) for x in rng.uniform(-0.3, 0.6, len(at))]
      ar[0] = -0.2
      sets.append(dict(name=f"{regime}{k}", p=p, n_t=n_t, n_v=n_v, n_r=n_r, m=m,
                       sigma=round(sigma, 6), nu=round(nu, 6), w0=w0, omega0=omega0,
                       alpha_t=[round(float(a), 6) for a in at],
                       alpha_r=[round(a, 6) for a in ar]))
      k += 1
  return sets
