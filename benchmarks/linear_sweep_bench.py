r"""Paper-scale Fig. 2b sweep: negmeta (one compiled call) vs a per-run NumPy loop.

Run by hand:  python benchmarks/linear_sweep_bench.py [--numpy_runs=1000]

Both implement the same protocol: 41 α_t values in [−2, 2], α_r = 0.2, 1000 runs,
each run's ω*(α_t) exact, evaluated on 100 new tasks × 50 points plus exactly in
expectation over the test data, float64, common random numbers across the grid.
negmeta draws the new tasks' adaptation and test data through their sufficient
statistics (`linear._maml.protocol_test_loss_reduced`: the same estimator, the
same joint law, tested against the direct draw); `--direct` also times negmeta
drawing every adaptation and test point in p dimensions, as the NumPy loop does.
Each side runs in its own subprocess so its wall time (compilation included for
JAX, imports excluded for both) and its peak RSS are its own. Prints one JSON line
per side and the measured speed ratio. With --numpy_runs < 1000 the NumPy time is
extrapolated linearly (and the line says so).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

P, N_T, N_V, N_R, M, SIGMA, NU = 60, 30, 2, 20, 3, 1.0, 0.5
TEST_TASKS, TEST_POINTS, ALPHA_R = 100, 50, 0.2


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def jax_side(runs: int, reduced: bool = True) -> dict:
  import numpy as np
  import jax
  jax.config.update("jax_enable_x64", True)
  from negmeta import problems
  from negmeta.linear import _sweep
  problem = problems.mixed_linear_regression(p=P, n_t=N_T, n_v=N_V, n_r=N_R, m=M,
                                             sigma=SIGMA, nu=NU)
  grid = np.linspace(-2.0, 2.0, 41)
  start = time.perf_counter()
  values = _sweep.run_sweep(problem, grid, ALPHA_R, runs=runs, seed=0,
                            test_tasks=TEST_TASKS, test_points=TEST_POINTS,
                            reduced_protocol=reduced)
  seconds = time.perf_counter() - start
  side = "negmeta (jax)" if reduced else "negmeta (jax, direct data points)"
  return {"side": side, "runs": runs, "seconds": seconds,
          "peak_rss_mb": _peak_rss_mb(), "devices": str(jax.devices()),
          "mean_exact_loss_at_0": float(np.mean(values.exact_loss[:, 20])),
          "mean_protocol_loss_at_0": float(np.mean(values.protocol_loss[:, 20]))}


def numpy_side(runs: int) -> dict:
  """The straightforward implementation: loops over runs, α_t values, test tasks."""
  import numpy as np
  grid = np.linspace(-2.0, 2.0, 41)
  start = time.perf_counter()
  exact_at_0, protocol_at_0 = [], []
  for r in range(runs):
    rng = np.random.default_rng(r)
    w = NU / np.sqrt(P) * rng.standard_normal((M, P))
    xt = rng.standard_normal((M, N_T, P))
    yt = np.einsum("mnp,mp->mn", xt, w) + SIGMA * rng.standard_normal((M, N_T))
    xv = rng.standard_normal((M, N_V, P))
    yv = np.einsum("mnp,mp->mn", xv, w) + SIGMA * rng.standard_normal((M, N_V))
    wr = NU / np.sqrt(P) * rng.standard_normal((TEST_TASKS, P))
    xr = rng.standard_normal((TEST_TASKS, N_R, P))
    yr = np.einsum("tnp,tp->tn", xr, wr) + SIGMA * rng.standard_normal((TEST_TASKS, N_R))
    xs = rng.standard_normal((TEST_TASKS, TEST_POINTS, P))
    ys = np.einsum("tnp,tp->tn", xs, wr) + SIGMA * rng.standard_normal(
        (TEST_TASKS, TEST_POINTS))
    for alpha_t in grid:
      rows, targets = [], []
      for i in range(M):
        a = np.eye(P) - alpha_t * xt[i].T @ xt[i] / N_T
        rows.append(xv[i] @ a)
        targets.append(yv[i] - alpha_t / N_T * xv[i] @ (xt[i].T @ yt[i]))
      z, u = np.vstack(rows), np.concatenate(targets)
      omega = np.linalg.pinv(z) @ u                      # ω_0 = 0: min-norm solution
      losses = []
      for t in range(TEST_TASKS):
        theta = omega - ALPHA_R / N_R * xr[t].T @ (xr[t] @ omega - yr[t])
        losses.append(0.5 * np.mean((ys[t] - xs[t] @ theta) ** 2))
      h_r = (1 - ALPHA_R) ** 2 + ALPHA_R**2 * (P + 1) / N_R
      exact = SIGMA**2 / 2 * (1 + ALPHA_R**2 * P / N_R) + h_r / 2 * (NU**2 + omega @ omega)
      if alpha_t == 0.0:
        exact_at_0.append(exact)
        protocol_at_0.append(np.mean(losses))
  seconds = time.perf_counter() - start
  return {"side": "numpy (per-run loops)", "runs": runs, "seconds": seconds,
          "peak_rss_mb": _peak_rss_mb(), "mean_exact_loss_at_0": float(np.mean(exact_at_0)),
          "mean_protocol_loss_at_0": float(np.mean(protocol_at_0))}


def _child(side: str, runs: int) -> dict:
  out = subprocess.run([sys.executable, __file__, "--child", side, "--runs", str(runs)],
                       capture_output=True, text=True)
  if out.returncode != 0:
    last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
    sys.exit(f"linear_sweep_bench: the {side} side failed: {last}\n"
             f"(is negmeta installed? README: pip install -e \".[dev]\")")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--numpy_runs", type=int, default=1000)
  parser.add_argument("--direct", action="store_true",
                      help="also time negmeta with full p-dimensional test points")
  parser.add_argument("--child", choices=("jax", "jax_direct", "numpy"))
  parser.add_argument("--runs", type=int, default=1000)
  args = parser.parse_args()
  if args.child:
    sides = {"jax": jax_side, "numpy": numpy_side,
             "jax_direct": lambda runs: jax_side(runs, reduced=False)}
    print(json.dumps(sides[args.child](args.runs)))
    return
  jax_result = _child("jax", 1000)
  print(json.dumps(jax_result))
  if args.direct:
    print(json.dumps(_child("jax_direct", 1000)))
  np_result = _child("numpy", args.numpy_runs)
  np_seconds = np_result["seconds"] * 1000 / args.numpy_runs
  np_result["seconds_for_1000_runs"] = np_seconds
  np_result["extrapolated"] = args.numpy_runs != 1000
  print(json.dumps(np_result))
  print(json.dumps({"speedup_numpy_over_jax": np_seconds / jax_result["seconds"],
                    "jax_seconds": jax_result["seconds"],
                    "jax_peak_rss_mb": jax_result["peak_rss_mb"],
                    "targets": {"jax_seconds_max": 20, "peak_rss_mb_max": 2048,
                                "speedup_min": 30}}))


if __name__ == "__main__":
  main()
