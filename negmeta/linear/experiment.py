"""The mixed-linear-regression study (Bernacchia 2021, Figs. 2-3) as library calls.

A notebook does what `experiments/linear_sweep.py` does with

  config = experiment.preset("fig2b", runs=200)
  result = experiment.run(config)
  print(experiment.summary_table(result))
  experiment.save(result, "/tmp/fig2b")          # results.json, runs.npz, PNG

Presets reproduce the paper's figures. Fig. 3's caption says σ = ν = 0.2 but its
plotted losses (~1.0) need σ = ν = 1 (reference §5.2); the fig3 presets use σ = ν = 1.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from negmeta import _checks, cli, io, problems
from negmeta.linear import _sweep
from negmeta.theory import linear as theory

SWEEPS = ("alpha_t", "alpha_r")
# Per-run quantities averaged over runs (mean ± s.e.) in results and tables.
ESTIMATORS = ("distance", "conditional_distance", "exact_loss", "protocol_loss",
              "conditional_loss")
DTYPES = ("float64", "float32")
# Input ranges. Beyond them a run cannot fit in memory (p: the m [p, p] inner
# Hessians per run; sizes, runs) or its theory overflows float64 (|values|).
MAX_P = 4096
MAX_SIZE = 100_000
MAX_RUNS = 10_000_000
MAX_VALUE = 1e6

# Parameters that define the problem: a preset fixes them (a flag may not
# contradict them). The others (runs, evaluation sizes, seed, grid resolution,
# batching) only change how precisely the figure is estimated.
PROBLEM_FIELDS = ("p", "n_t", "n_v", "n_r", "m", "sigma", "nu", "w0", "omega0",
                  "alpha_t", "alpha_r", "sweep")


@dataclasses.dataclass(frozen=True)
class LinearSweepConfig:
  """A learning-rate sweep on mixed linear regression.

  Attributes:
    p, n_t, n_v, n_r, m: sizes (Bernacchia's symbols).
    sigma, nu: label noise σ and task variability ν.
    w0, omega0: task mean and initial meta-parameter; every component equals
      this value (library users may pass vectors to `problems` directly).
    alpha_t: meta-training inner rate (used when sweeping alpha_r).
    alpha_r: adaptation rate (used when sweeping alpha_t).
    sweep: which rate the grid varies: "alpha_t" or "alpha_r".
    grid: the swept values.
    runs: independent runs (meta-training draws).
    test_tasks, test_points: the paper's evaluation protocol per run.
    seed: base PRNG seed; run r uses fold_in(key(seed), r).
    batch_size: runs vmapped together (0: automatic, from a memory budget).
    chunk_runs: runs per compiled call, saved as a resumable chunk (0: all).
    dtype: simulation float type.
  """
  p: int = 60
  n_t: int = 30
  n_v: int = 2
  n_r: int = 20
  m: int = 3
  sigma: float = 1.0
  nu: float = 0.5
  w0: float = 0.0
  omega0: float = 0.0
  alpha_t: float = 0.2
  alpha_r: float = 0.2
  sweep: str = "alpha_t"
  grid: tuple[float, ...] = tuple(np.round(np.linspace(-2.0, 2.0, 41), 12))
  runs: int = 200
  test_tasks: int = 100
  test_points: int = 50
  seed: int = 0
  batch_size: int = 0
  chunk_runs: int = 0
  dtype: str = "float64"


grid = cli.linear_grid   # `num` evenly spaced values from `lo` to `hi`.


_FIG2 = dict(p=60, n_t=30, n_v=2, n_r=20, m=3, sigma=1.0, nu=0.5, w0=0.0, omega0=0.0)
_FIG3 = dict(p=30, n_t=5, n_v=25, n_r=10, m=40, sigma=1.0, nu=1.0, w0=0.0, omega0=0.0)

PRESETS: dict[str, dict[str, Any]] = {
    # Fig. 2a: overparameterized, α_r swept at α_t = 0.2, 100 runs.
    "fig2a": dict(_FIG2, alpha_t=0.2, alpha_r=0.2, sweep="alpha_r",
                  grid=grid(-0.1, 0.5, 31), runs=100),
    # Fig. 2b: overparameterized, α_t swept at α_r = 0.2, 1000 runs.
    "fig2b": dict(_FIG2, alpha_t=0.2, alpha_r=0.2, sweep="alpha_t",
                  grid=grid(-2.0, 2.0, 41), runs=1000),
    # Fig. 3a: underparameterized (σ = ν = 1 as plotted), α_r swept, 100 runs.
    "fig3a": dict(_FIG3, alpha_t=0.2, alpha_r=0.2, sweep="alpha_r",
                  grid=grid(-0.1, 0.5, 31), runs=100),
    # Fig. 3b: underparameterized (σ = ν = 1 as plotted), α_t swept, 1000 runs.
    "fig3b": dict(_FIG3, alpha_t=0.2, alpha_r=0.2, sweep="alpha_t",
                  grid=grid(-0.5, 0.5, 41), runs=1000),
}


def preset(name: str, **overrides) -> LinearSweepConfig:
  """The named preset, with non-problem fields optionally overridden.

  Raises:
    ConfigError: unknown preset, or an override contradicting the preset's problem.
  """
  return validate(LinearSweepConfig(**_checks.preset_fields(name, PRESETS, overrides,
                                                 PROBLEM_FIELDS)))


def validate(config: LinearSweepConfig) -> LinearSweepConfig:
  """Checks every field; returns the config with normalized types.

  Raises:
    ConfigError: naming the first invalid field and its allowed values.
  """
  c = config
  size = lambda name, value: _checks.integer(name, value, maximum=MAX_SIZE)  # noqa: E731
  bounded = lambda name, value, lo=-MAX_VALUE: _checks.real(  # noqa: E731
      name, value, lo=lo, hi=MAX_VALUE)
  values = dict(
      p=_checks.integer("p", c.p, maximum=MAX_P), n_t=size("n_t", c.n_t),
      n_v=size("n_v", c.n_v), n_r=size("n_r", c.n_r), m=size("m", c.m),
      sigma=bounded("sigma", c.sigma, 0.0), nu=bounded("nu", c.nu, 0.0),
      w0=bounded("w0", c.w0), omega0=bounded("omega0", c.omega0),
      alpha_t=bounded("alpha_t", c.alpha_t), alpha_r=bounded("alpha_r", c.alpha_r),
      sweep=_checks.choice("sweep", c.sweep, SWEEPS),
      grid=_checks.real_grid("grid", c.grid, max_abs=MAX_VALUE),
      runs=_checks.integer("runs", c.runs, minimum=2, maximum=MAX_RUNS),
      test_tasks=size("test_tasks", c.test_tasks),
      test_points=size("test_points", c.test_points),
      seed=_checks.integer("seed", c.seed, minimum=0, maximum=2**31 - 1),
      batch_size=_checks.integer("batch_size", c.batch_size, minimum=0),
      chunk_runs=_checks.integer("chunk_runs", c.chunk_runs, minimum=0),
      dtype=_checks.choice("dtype", c.dtype, DTYPES))
  problems.regime_of(values["p"], values["n_v"], values["m"])
  return LinearSweepConfig(**values)


def make_problem(config: LinearSweepConfig) -> problems.MixedLinearRegression:
  """The problem specification of `config`, in its dtype."""
  return problems.mixed_linear_regression(
      p=config.p, n_t=config.n_t, n_v=config.n_v, n_r=config.n_r, m=config.m,
      sigma=config.sigma, nu=config.nu, w0=config.w0, omega0=config.omega0,
      dtype=jnp.dtype(config.dtype))


def grid_pairs(config: LinearSweepConfig) -> tuple[np.ndarray, np.ndarray]:
  """(α_t [G], α_r [G]) for the sweep: the swept rate varies, the other is fixed."""
  grid = np.asarray(config.grid, np.float64)
  fixed = np.full_like(grid, config.alpha_r if config.sweep == "alpha_t" else config.alpha_t)
  return (grid, fixed) if config.sweep == "alpha_t" else (fixed, grid)


@dataclasses.dataclass(frozen=True)
class LinearSweepResult:
  """Everything a sweep produced; `save` writes it, `summary_table` prints it.

  Attributes:
    config: the validated config.
    alpha_t, alpha_r: grid pairs, [G] each.
    runs: per-run values, RunValues of [R, G] arrays.
    theory: theoretical L̄_test on the grid, [G].
    theory_curve: (x [K], L̄_test [K]) on a dense grid spanning the sweep.
    optimum: theory and simulation optima (see `_optima`).
    seconds: wall time of the simulation (compilation included).
    resumed_chunks: chunks loaded from a previous interrupted run.
  """
  config: LinearSweepConfig
  alpha_t: np.ndarray
  alpha_r: np.ndarray
  runs: _sweep.RunValues
  theory: np.ndarray
  theory_curve: tuple[np.ndarray, np.ndarray]
  optimum: dict[str, Any]
  seconds: float
  resumed_chunks: int

  @property
  def swept(self) -> np.ndarray:
    return self.alpha_t if self.config.sweep == "alpha_t" else self.alpha_r

  def estimates(self) -> dict[str, _sweep.Estimate]:
    """Mean ± s.e. over runs per grid value, for every per-run quantity."""
    return {k: _sweep.estimate(v) for k, v in self.runs._asdict().items()
            if k in ESTIMATORS}


def _theory_on(problem, config, swept):
  swept = jnp.asarray(swept, problem.w0.dtype)
  if config.sweep == "alpha_t":
    return np.asarray(theory.average_test_loss(problem, swept, config.alpha_r))
  return np.asarray(theory.average_test_loss(problem, config.alpha_t, swept))


def _optima(problem, config, swept, runs: _sweep.RunValues) -> dict[str, Any]:
  lo, hi = float(np.min(swept)), float(np.max(swept))
  out: dict[str, Any] = {"swept": config.sweep}
  if config.sweep == "alpha_t":
    num = theory.optimal_alpha_t(problem, config.alpha_r, lo, hi)
    if problem.regime == problems.OVERPARAMETERIZED:
      plus, minus = theory.alpha_t_stationary(problem.p, problem.n_t)
      out["theory_alpha_t_minus"] = float(minus)   # global minimum (§3.2)
      out["theory_alpha_t_plus"] = float(plus)     # global maximum (§3.2)
  else:
    num = theory.optimal_alpha_r(problem, config.alpha_t, lo, hi)
    d_theory = theory.distance(problem, config.alpha_t)
    out["theory_alpha_r_star"] = float(theory.alpha_r_optimal(
        d_theory, sigma=problem.sigma, nu=problem.nu, p=problem.p, n_r=problem.n_r))
    # The α_r structure is exact (§1.5), so the simulated D gives the exact α_r*
    # (the conditional estimate of D when computed: same mean, less noise).
    d_sim = _sweep.estimate(runs.conditional_distance)
    if not d_sim.n[0]:
      d_sim = _sweep.estimate(runs.distance)
    out["simulated_alpha_r_star"] = float(theory.alpha_r_optimal(
        d_sim.mean[0], sigma=problem.sigma, nu=problem.nu, p=problem.p, n_r=problem.n_r))
  out["theory_argmin"] = float(num.x)
  out["theory_min"] = float(num.value)
  for name in ("exact_loss", "protocol_loss", "conditional_loss"):
    est = _sweep.estimate(getattr(runs, name))
    if not np.any(est.n):
      continue
    i = int(np.nanargmin(est.mean))
    entry = {"argmin": float(swept[i]), "min": float(est.mean[i]),
             "min_se": float(est.se[i])}
    zero = np.flatnonzero(np.isclose(swept, 0.0))
    if zero.size:
      diff, se = _sweep.paired_difference(getattr(runs, name), i, int(zero[0]))
      entry["min_minus_at_zero"] = diff
      entry["min_minus_at_zero_se"] = se
    out[f"simulated_{name}"] = entry
  return out


def run(config: LinearSweepConfig, *, store_dir: str | None = None,
        mesh: jax.sharding.Mesh | None = None,
        log: Callable[[str], None] | None = None) -> LinearSweepResult:
  """Runs the sweep of `config` (one compiled kernel; chunks resumable).

  Args:
    config: a LinearSweepConfig (validated here).
    store_dir: directory for finished chunks; a rerun with the same config
      resumes from them.
    mesh: optional 1-D device mesh to shard runs over.
    log: optional progress printer.

  Returns:
    LinearSweepResult.
  """
  config = validate(config)
  x64 = config.dtype == "float64"
  with jax.enable_x64(x64):
    problem = make_problem(config)
    alpha_t, alpha_r = grid_pairs(config)
    store = None
    if store_dir is not None:
      store = io.ChunkStore(store_dir, io.fingerprint(sweep_identity(config)))
    resumed = []

    def on_chunk(i, total, loaded):
      resumed.append(loaded)
      if log is not None:
        log(f"chunk {i + 1}/{total} {'loaded from ' + store_dir if loaded else 'done'}")

    start = time.perf_counter()
    values = _sweep.run_sweep(
        problem, alpha_t, alpha_r, runs=config.runs, seed=config.seed,
        test_tasks=config.test_tasks, test_points=config.test_points,
        batch_size=config.batch_size or None, chunk_runs=config.chunk_runs or None,
        store=store, mesh=mesh, conditional=uses_conditional(config),
        on_chunk=on_chunk)
    seconds = time.perf_counter() - start
    swept = alpha_t if config.sweep == "alpha_t" else alpha_r
    dense = np.linspace(float(np.min(swept)), float(np.max(swept)), 401)
    return LinearSweepResult(
        config=config, alpha_t=alpha_t, alpha_r=alpha_r, runs=values,
        theory=_theory_on(problem, config, swept),
        theory_curve=(dense, _theory_on(problem, config, dense)),
        optimum=_optima(problem, config, swept, values), seconds=seconds,
        resumed_chunks=int(sum(resumed)))


def uses_conditional(config: LinearSweepConfig) -> bool:
  """Whether the sweep also computes the conditional (Rao-Blackwellized) estimator.

  Where it is cheap: in the overparameterized regime (N×N solves; there it
  matters most, D is heavy-tailed and 100-run sweeps are noisy) and in α_r sweeps
  (one solve per run, shared by the grid). Underparameterized α_t sweeps would
  need a p×p solve with N right-hand sides per grid value, and their plain
  estimators are already precise (N ≫ p averages the noise);
  `linear.expected_distances` computes it there on its own.
  """
  return config.p > config.n_v * config.m or config.sweep == "alpha_r"


def sweep_identity(config: LinearSweepConfig) -> dict[str, Any]:
  """What determines the per-run values (for matching resumable chunks)."""
  # Test points drawn in the error span (_maml): the "reduced" protocol.
  ident = io.config_identity(config, protocol="reduced")
  ident.pop("batch_size")   # batching does not change per-run values
  return ident


def _finite_min(values: np.ndarray) -> float | None:
  """The smallest finite value, or None when there is none (all runs diverged)."""
  finite = values[np.isfinite(values)]
  return float(finite.min()) if finite.size else None


def record(result: LinearSweepResult) -> dict[str, Any]:
  """The JSON record: config, seeds, versions, grid, and per grid value results."""
  est = result.estimates()
  problem_regime = problems.regime_of(result.config.p, result.config.n_v, result.config.m)
  per_grid = []
  for g, x in enumerate(result.swept):
    entry = {result.config.sweep: float(x), "alpha_t": float(result.alpha_t[g]),
             "alpha_r": float(result.alpha_r[g]), "theory": float(result.theory[g])}
    for name, e in est.items():
      if e.n[g] or not name.startswith("conditional"):
        entry[name] = {"mean": float(e.mean[g]), "se": float(e.se[g]),
                       "runs": int(e.n[g])}
    entry["gap_exact_minus_theory"] = float(est["exact_loss"].mean[g] - result.theory[g])
    rc = result.runs.rcond[:, g]
    entry["nonfinite_runs"] = int(np.sum(~np.isfinite(result.runs.exact_loss[:, g])))
    entry["ill_conditioned_runs"] = int(np.sum(~(rc > _ill_conditioned_rcond(result))))
    entry["min_rcond"] = _finite_min(rc)
    entry["min_inner_gap"] = _finite_min(result.runs.inner_gap[:, g])
    per_grid.append(entry)
  return {
      "experiment": "linear_sweep",
      "regime": problem_regime,
      "config": dataclasses.asdict(result.config),
      "seeds": {"base_seed": result.config.seed,
                "run_keys": "jax.random.fold_in(jax.random.key(seed), run_index)",
                "runs": result.config.runs},
      "runtime": io.runtime_record(),
      "seconds": result.seconds,
      "resumed_chunks": result.resumed_chunks,
      "ill_conditioned_threshold_rcond": _ill_conditioned_rcond(result),
      "optimum": result.optimum,
      "grid": per_grid,
  }


def _ill_conditioned_rcond(result: LinearSweepResult) -> float:
  # Below √eps the solved ω* has lost about half its significant digits.
  return float(math.sqrt(np.finfo(np.dtype(result.config.dtype)).eps))


def summary_table(result: LinearSweepResult, max_rows: int = 12) -> str:
  """A short text table of the key numbers."""
  c, est = result.config, result.estimates()
  sym = "α_t" if c.sweep == "alpha_t" else "α_r"
  g = len(result.swept)
  rows = sorted(set(np.linspace(0, g - 1, min(g, max_rows)).round().astype(int)))
  lines = [f"{c.sweep} sweep: p={c.p} n_t={c.n_t} n_v={c.n_v} n_r={c.n_r} m={c.m} "
           f"σ={c.sigma:g} ν={c.nu:g} ({problems.regime_of(c.p, c.n_v, c.m)}), "
           f"{c.runs} runs × {c.test_tasks} tasks × {c.test_points} points, "
           f"{result.seconds:.1f} s",
           f"{sym:>8} {'theory':>8} {'protocol sim':>18} {'exact sim':>18} "
           f"{'conditional sim':>18} {'flags':>6}"]
  for i in rows:
    cells = []
    for name in ("protocol_loss", "exact_loss", "conditional_loss"):
      e = est[name]
      cells.append(f"{e.mean[i]:9.4f} ± {e.se[i]:.4f}" if e.n[i] else f"{'—':>18}")
    bad = int(np.sum(~np.isfinite(result.runs.exact_loss[:, i])))
    lines.append(f"{result.swept[i]:8.3f} {result.theory[i]:8.4f} {' '.join(cells)} "
                 f"{(str(bad) + ' nan') if bad else '':>6}")
  o = result.optimum
  lines.append(f"theory argmin {sym} = {o['theory_argmin']:.4f} (L = {o['theory_min']:.4f})")
  if "theory_alpha_t_minus" in o:
    lines.append(f"closed form: α_t^- = {o['theory_alpha_t_minus']:.4f} (min), "
                 f"α_t^+ = {o['theory_alpha_t_plus']:.4f} (max)")
  if "theory_alpha_r_star" in o:
    lines.append(f"closed form α_r* = {o['theory_alpha_r_star']:.4f} (theory D), "
                 f"{o['simulated_alpha_r_star']:.4f} (simulated D, exact)")
  s = o.get("simulated_exact_loss")
  if s is None:
    lines.append("simulated argmin: none (no grid value has a finite run: all diverged)")
    return "\n".join(lines)
  msg = f"simulated argmin {sym} = {s['argmin']:.4f} (L = {s['min']:.4f} ± {s['min_se']:.4f})"
  if "min_minus_at_zero" in s:
    msg += (f"; L(argmin) − L(0) = {s['min_minus_at_zero']:.5f} ± "
            f"{s['min_minus_at_zero_se']:.5f} (paired)")
  lines.append(msg)
  return "\n".join(lines)


def save(result: LinearSweepResult, workdir: str) -> dict[str, str]:
  """Writes results.json, runs.npz and the figure PNG atomically into `workdir`.

  Returns:
    Paths written, by kind.
  """
  from negmeta import plotting  # local: matplotlib only when saving.
  workdir = io.prepare_workdir(workdir)
  paths = {"json": os.path.join(workdir, "results.json"),
           "npz": os.path.join(workdir, "runs.npz"),
           "png": os.path.join(workdir, f"{result.config.sweep}_sweep.png")}
  arrays = dict(alpha_t=result.alpha_t, alpha_r=result.alpha_r, theory=result.theory,
                theory_curve_x=result.theory_curve[0],
                theory_curve_y=result.theory_curve[1], **result.runs._asdict())
  io.write_results(paths["json"], record(result), paths["npz"], arrays,
                   {paths["png"]: plotting.linear_sweep_figure(result)})
  return paths
