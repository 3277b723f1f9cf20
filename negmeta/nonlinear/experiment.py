"""The nonlinear (quadratic) regression study (Bernacchia 2021, Fig. 5) as library calls.

A notebook does what `experiments/nonlinear_sweep.py` does with

  config = experiment.preset("fig5")
  result = experiment.run(config)
  print(experiment.summary_table(result))
  experiment.save(result, "/tmp/fig5")       # results.json, runs.npz, PNG

Protocol (choices where the paper is silent are ours; see BUILD_NOTES.md §7.2):

* A run draws θ₀ (antisymmetric, so f(·; θ₀) ≡ 0), a fixed set of m
  meta-training tasks and `test_tasks` test tasks, all from
  ``fold_in(key(seed), run)``; every α_t sees the same run (common random
  numbers), so differences along the grid are paired.
* The network is meta-trained with one inner step at α_t and full-batch
  heavy-ball SGD on the m tasks for `num_steps` steps, at an outer rate
  β = outer_lr / λ_max(linearized meta-Hessian) of that run and α_t.
* The NTK prediction solves the meta-problem of the network linearized at θ₀
  exactly (the minimiser nearest θ₀, like ω* of the linear study), and also
  follows the same optimizer for the same number of steps on it.
* Every model is adapted with one step at α_r on n_r points of each test task
  and scored by ½·MSE on `test_points` other points; a run's loss is the mean
  over its test tasks. Curves are mean ± s.e. over runs.
* Rates are given in units of 1/λ̄, λ̄ = mean over runs and meta-training tasks
  of λ_max(Θ(X_t, X_t)/n_t), the empirical NTK Gram at θ₀: the largest
  curvature of the inner loss (units="curvature"), or as absolute values.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from negmeta import _checks, cli, io, stats
from negmeta.nonlinear import _study, _tasks

UNITS = ("curvature", "absolute")
DTYPES = ("float32", "float64")
CURVES = ("trained", "ntk", "ntk_same_steps")
MAX_GRID = 1000   # α_t values per sweep

# Fields that define the problem: a preset fixes them. The others (grid,
# seeds, evaluation sizes, seed, batching, dtype) change only how precisely
# (or how fast) the curve is estimated.
PROBLEM_FIELDS = ("d", "width", "m", "n_t", "n_v", "n_r", "w_norm", "b_mean",
                  "nu_w", "nu_b", "sigma", "alpha_r", "units", "num_steps",
                  "momentum", "outer_lr", "antisymmetric")


@dataclasses.dataclass(frozen=True)
class NonlinearSweepConfig:
  """An α_t sweep of MAML on quadratic regression with a 2-layer ReLU network.

  Attributes:
    d: input dimension.
    width: hidden units h of the network (even: antisymmetric pairs).
    m: meta-training tasks per run (fixed during meta-training).
    n_t, n_v: support / query points per meta-training task.
    n_r: adaptation points per test task.
    w_norm, b_mean, nu_w, nu_b: task distribution, w = w̄ + (ν_w/√d)ξ with
      ‖w̄‖ = w_norm, b = b̄ + ν_b ζ (see `negmeta.nonlinear._tasks`).
    sigma: label noise σ.
    alpha_r: adaptation rates (in `units`); every trained network and NTK
      solution is evaluated at each, the first is the primary one (table).
    units: "curvature" (rates in units of 1/λ̄) or "absolute".
    num_steps: outer steps of meta-training.
    momentum: heavy-ball momentum of the outer SGD.
    outer_lr: outer rate in units of 1/λ_max of the run's linearized
      meta-Hessian at that α_t (stable for heavy-ball below 2(1 + momentum)).
    antisymmetric: antisymmetric initialization (f(·; θ₀) ≡ 0).
    grid: α_t values (in `units`); 0 is added if absent (paired reference).
    seeds: independent runs R.
    test_tasks: test tasks per run.
    test_points: test points per test task (after the n_r adaptation points).
    seed: base PRNG seed; run r uses fold_in(key(seed), r).
    dtype: network and training float type (the NTK solve is always float64).
    grid_batch: α_t values meta-trained together (vmapped).
    eval_batch: trained networks evaluated together (vmapped).
  """
  d: int = 20
  width: int = 128
  m: int = 3
  n_t: int = 10
  n_v: int = 2
  n_r: int = 10
  w_norm: float = 0.5
  b_mean: float = 0.5
  nu_w: float = 0.25
  nu_b: float = 0.25
  sigma: float = 0.3
  alpha_r: tuple[float, ...] = (0.5,)
  units: str = "curvature"
  num_steps: int = 100
  momentum: float = 0.9
  outer_lr: float = 1.0
  antisymmetric: bool = True
  grid: tuple[float, ...] = (-2.0, -1.0, 0.0, 0.5, 1.0)
  seeds: int = 4
  test_tasks: int = 100
  test_points: int = 10
  seed: int = 0
  dtype: str = "float32"
  grid_batch: int = 8
  eval_batch: int = 8


grid = cli.linear_grid

PRESETS: dict[str, dict[str, Any]] = {
    # Fig. 5 of the paper, as the nonlinear counterpart of its Fig. 2b (the
    # paper: "note the qualitative similarity with Figures 2b and 4b"):
    # Fig. 2's sizes with the input dimension d in the role of p (p = 60,
    # n_t = 30, n_v = 2, m = 3, n_r = 20, σ = 1), so N = m·n_v = 6 ≪ d ≪ P.
    # Tasks y = (wᵀx + b)² + z with w̄ = 0, ν_w = 0.5 (the linear part 2b·wᵀx
    # then has spread ≈ 1), b ~ N(1, 0.3²). α_r at 0.5/λ̄ (primary), 0.25/λ̄
    # and 1/λ̄. 30 runs × 1000 test tasks × 10 points.
    "fig5": dict(d=60, width=512, m=3, n_t=30, n_v=2, n_r=20, w_norm=0.0,
                 b_mean=1.0, nu_w=0.5, nu_b=0.3, sigma=1.0,
                 alpha_r=(0.5, 0.25, 1.0), units="curvature", num_steps=400,
                 momentum=0.9, outer_lr=1.0, antisymmetric=True,
                 grid=(-3.0, -2.0, -1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5,
                       0.75, 1.0, 2.0),
                 seeds=30, test_tasks=1000, test_points=10),
    # A data-rich contrast: N = m·n_v = 200 query points in d = 10, where the
    # network does learn the (nonlinear) mean task function.
    "datarich": dict(d=10, width=512, m=40, n_t=5, n_v=5, n_r=5, w_norm=0.5,
                     b_mean=0.5, nu_w=0.25, nu_b=0.25, sigma=0.3,
                     alpha_r=(0.5, 0.25, 1.0), units="curvature", num_steps=400,
                     momentum=0.9, outer_lr=1.0, antisymmetric=True,
                     grid=(-2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0),
                     seeds=20, test_tasks=1000, test_points=10),
}


def preset(name: str, **overrides) -> NonlinearSweepConfig:
  """The named preset, with non-problem fields optionally overridden.

  Raises:
    ConfigError: unknown preset, or an override contradicting the preset's problem.
  """
  return validate(NonlinearSweepConfig(**_checks.preset_fields(name, PRESETS, overrides,
                                                 PROBLEM_FIELDS)))


def validate(config: NonlinearSweepConfig) -> NonlinearSweepConfig:
  """Checks every field; returns the config with normalized types (0 in the grid).

  Raises:
    ConfigError: naming the first invalid field and its allowed values.
  """
  c = config
  integer, real = _checks.integer, _checks.real
  values = dict(
      d=integer("d", c.d), width=integer("width", c.width, minimum=2),
      m=integer("m", c.m), n_t=integer("n_t", c.n_t), n_v=integer("n_v", c.n_v),
      n_r=integer("n_r", c.n_r),
      w_norm=real("w_norm", c.w_norm, lo=0.0), b_mean=real("b_mean", c.b_mean),
      nu_w=real("nu_w", c.nu_w, lo=0.0), nu_b=real("nu_b", c.nu_b, lo=0.0),
      sigma=real("sigma", c.sigma, lo=0.0),
      alpha_r=_checks.real_grid("alpha_r", c.alpha_r, max_points=16,
                                max_abs=_checks.MAX_ABS_RATE),
      units=_checks.choice("units", c.units, UNITS),
      num_steps=integer("num_steps", c.num_steps),
      momentum=real("momentum", c.momentum, lo=0.0, hi=0.99),
      outer_lr=real("outer_lr", c.outer_lr, lo=0.0, lo_open=True),
      antisymmetric=bool(c.antisymmetric),
      grid=_checks.real_grid("grid", c.grid, max_points=MAX_GRID,
                             max_abs=_checks.MAX_ABS_RATE),
      seeds=integer("seeds", c.seeds, minimum=2),
      test_tasks=integer("test_tasks", c.test_tasks),
      test_points=integer("test_points", c.test_points),
      seed=integer("seed", c.seed, minimum=0, maximum=2**31 - 1),
      dtype=_checks.choice("dtype", c.dtype, DTYPES),
      grid_batch=integer("grid_batch", c.grid_batch),
      eval_batch=integer("eval_batch", c.eval_batch))
  if values["antisymmetric"] and values["width"] % 2:
    raise _checks.ConfigError(
        "width", f"must be an even integer >= 2 with the antisymmetric "
        f"initialization (got {values['width']})")
  bound = 2.0 * (1.0 + values["momentum"])
  if values["outer_lr"] >= bound:
    raise _checks.ConfigError(
        "outer_lr", f"must be a finite real number > 0 and < 2(1 + momentum) = "
        f"{bound:g} (heavy-ball stability; got {values['outer_lr']:g})")
  if not isinstance(c.antisymmetric, (bool, np.bool_)):
    raise _checks.ConfigError("antisymmetric", f"must be true or false (got {c.antisymmetric!r})")
  values["grid"] = tuple(sorted(set(values["grid"]) | {0.0}))
  return NonlinearSweepConfig(**values)


def sizes_of(config: NonlinearSweepConfig) -> _study.Sizes:
  """The static sizes of `config` (the jit static argument)."""
  c = config
  return _study.Sizes(
      d=c.d, width=c.width, m=c.m, n_t=c.n_t, n_v=c.n_v, n_r=c.n_r,
      n_s=c.test_points, test_tasks=c.test_tasks, num_steps=c.num_steps,
      momentum=c.momentum, antisymmetric=c.antisymmetric, dtype=c.dtype,
      grid_batch=c.grid_batch, eval_batch=c.eval_batch, ntk_chunk=8)


def make_problem(config: NonlinearSweepConfig) -> _tasks.QuadraticProblem:
  c = config
  return _tasks.quadratic_problem(c.d, w_norm=c.w_norm, b_mean=c.b_mean,
                                  nu_w=c.nu_w, nu_b=c.nu_b, sigma=c.sigma,
                                  dtype=jnp.dtype(c.dtype))


def run_keys(config: NonlinearSweepConfig) -> jax.Array:
  """Run r's key: fold_in(key(seed), r), [R]."""
  base = jax.random.key(config.seed)
  return jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.arange(config.seeds))


@dataclasses.dataclass(frozen=True)
class NonlinearSweepResult:
  """Everything a sweep produced (per-run arrays are [R, G]).

  Attributes:
    config: the validated config.
    curvature: λ̄, and its spread over runs and tasks (dict).
    alpha_t: grid in absolute units, [G].
    alpha_r: adaptation rates in absolute units, [A].
    losses: per-run test losses by curve name ("trained", "ntk",
      "ntk_same_steps"), [R, A, G] each.
    trained_unadapted: trained networks' test loss before adaptation, [R, G].
    diverged: whether the network's meta-training diverged, [R, G] bool.
    final_meta_loss: last meta-training loss of the network, [R, G].
    ntk_final_meta_loss: the linearized model's after the same steps, [R, G].
    function_gap: ‖f_trained − f_lin(same steps)‖² / ‖f_lin(same steps)‖² over
      the test inputs (how far from lazy the network trained), [R, G].
    meta_curvature: (max, min) eigenvalue of the linearized meta-Hessian, [R, G].
    rcond: Cholesky pivot ratio of the linearized meta-Gram ZZᵀ, [R, G].
    loss_trace: meta-training loss every `trace_every` steps, [R, G, K].
    optimum: per α_r, each curve's argmin with its uncertainty (`optimum_of`).
    seconds: wall time per stage (compilation included; for a stage loaded
      from an interrupted run, the time it took when it was computed).
    resumed_stages: the stages loaded from an interrupted run, in order.
  """
  config: NonlinearSweepConfig
  curvature: dict[str, float]
  alpha_t: np.ndarray
  alpha_r: np.ndarray
  losses: dict[str, np.ndarray]
  trained_unadapted: np.ndarray
  diverged: np.ndarray
  final_meta_loss: np.ndarray
  ntk_final_meta_loss: np.ndarray
  function_gap: np.ndarray
  meta_curvature: tuple[np.ndarray, np.ndarray]
  rcond: np.ndarray
  loss_trace: np.ndarray
  optimum: list[dict[str, Any]]
  seconds: dict[str, float]
  resumed_stages: tuple[str, ...] = ()

  @property
  def grid(self) -> np.ndarray:
    return np.asarray(self.config.grid, np.float64)

  def estimates(self, a: int = 0) -> dict[str, stats.Estimate]:
    """Mean ± s.e. over runs per grid value, for every curve, at α_r index `a`."""
    return {k: stats.estimate(v[:, a]) for k, v in self.losses.items()}


def _masked(values: np.ndarray, bad: np.ndarray) -> np.ndarray:
  return np.where(bad, np.nan, values)


def optimum_of(values: np.ndarray, grid_values: np.ndarray, *, zero_index: int,
               boot: int = 2000, seed: int = 0) -> dict[str, Any]:
  """Grid argmin of the mean curve with its uncertainty.

  Args:
    values: per-run losses, [R, G] (non-finite = excluded run).
    grid_values: the grid, [G].
    zero_index: index of α_t = 0.
    boot: bootstrap resamples of the runs.
    seed: bootstrap RNG seed.

  Returns:
    argmin, min ± s.e., the paired difference L(argmin) − L(0) ± s.e., the
    bootstrap distribution of the argmin (resampling runs, paired across the
    grid): 68% / 95% percentile intervals and P(argmin < 0), P(argmin > 0).
  """
  est = stats.estimate(values)
  if not np.any(est.n):
    return {"argmin": None}
  i = int(np.nanargmin(est.mean))
  diff, diff_se = stats.paired_difference(values, i, zero_index)
  finite_runs = np.all(np.isfinite(values), axis=1)
  v = values[finite_runs]
  out = {"argmin": float(grid_values[i]), "min": float(est.mean[i]),
         "min_se": float(est.se[i]),
         "min_minus_at_zero": diff, "min_minus_at_zero_se": diff_se,
         "bootstrap_runs": int(v.shape[0])}
  if v.shape[0] < 2:
    # The paired bootstrap needs runs finite on the whole grid: none to resample.
    return out | {"bootstrap_argmin_68": None, "bootstrap_argmin_95": None,
                  "bootstrap_p_negative": None, "bootstrap_p_positive": None,
                  "bootstrap_resamples": 0}
  rng = np.random.default_rng(seed)
  picks = rng.integers(0, v.shape[0], size=(boot, v.shape[0]))
  arg = grid_values[np.argmin(v[picks].mean(axis=1), axis=1)]
  return out | {
      "bootstrap_argmin_68": [float(np.quantile(arg, 0.16)), float(np.quantile(arg, 0.84))],
      "bootstrap_argmin_95": [float(np.quantile(arg, 0.025)), float(np.quantile(arg, 0.975))],
      "bootstrap_p_negative": float(np.mean(arg < 0)),
      "bootstrap_p_positive": float(np.mean(arg > 0)),
      "bootstrap_resamples": boot,
  }


def run(config: NonlinearSweepConfig, *,
        log: Callable[[str], None] | None = None,
        mesh: jax.sharding.Mesh | None = None,
        store_dir: str | None = None) -> NonlinearSweepResult:
  """Runs the sweep of `config` (each stage one compiled call).

  Each finished stage (calibration, NTK solve, curvature, same-steps NTK,
  training, the two evaluations) is saved to `store_dir` when given, so a
  rerun of the same config after an interruption loads it and goes on with
  the next stage.

  Args:
    config: a NonlinearSweepConfig (validated here).
    log: optional progress printer.
    mesh: optional 1-D device mesh (`negmeta.sharding.device_mesh`): the
      network stages (meta-training, evaluation) split the runs over its
      devices; the NTK stages, which call LAPACK, run unsharded. Same values
      as without.
    store_dir: optional directory for finished stages (resumable runs).

  Returns:
    NonlinearSweepResult.
  """
  config = validate(config)
  say = log or (lambda _: None)
  sizes = sizes_of(config)
  seconds: dict[str, float] = {}
  resumed: list[str] = []
  store = (io.ChunkStore(store_dir, io.fingerprint(io.config_identity(config)))
           if store_dir is not None else None)

  def timed(name, fn, *args, **kwargs):
    index = len(seconds)
    start = time.perf_counter()
    saved = None
    if store is not None:
      # Same config, same stage: the output's tree, shapes and dtypes.
      saved = store.load_tree(index, jax.eval_shape(lambda: fn(*args, **kwargs)))
    note = ""
    if saved is not None:
      out = jax.tree.map(jnp.asarray, saved[0])
      resumed.append(name)
      if "seconds" in saved[1]:       # the time the stage took when computed
        seconds[name] = float(saved[1]["seconds"])
        note = " (computed by a previous run, loaded)"
      else:
        seconds[name] = time.perf_counter() - start
        note = " (loaded from a previous run; its compute time was not recorded)"
    else:
      out = jax.block_until_ready(fn(*args, **kwargs))
      seconds[name] = time.perf_counter() - start
      if store is not None:
        store.save_tree(index, out, seconds=seconds[name])
    say(f"{name}: {seconds[name]:.1f} s{note}")
    return out

  with jax.enable_x64(True):
    problem = make_problem(config)
    keys = run_keys(config)
    lam = np.asarray(timed("calibrate", _study.calibrate, keys, problem, sizes))
    lam_bar = float(lam.mean())
    scale = 1.0 / lam_bar if config.units == "curvature" else 1.0
    grid_values = np.asarray(config.grid, np.float64)
    alpha_t = jnp.asarray(grid_values * scale, jnp.float64)
    alpha_r = np.asarray(config.alpha_r, np.float64) * scale
    sol = timed("ntk_solve", _study.ntk_solutions, keys, problem, alpha_t, sizes)
    curv_max, curv_min = timed("ntk_curvature", _study.ntk_curvature, keys,
                               problem, alpha_t, sizes)
    meta_lr = config.outer_lr / curv_max                                # [R, G]
    paths, ntk_meta = timed("ntk_same_steps", _study.ntk_paths, keys, problem,
                            alpha_t, meta_lr, sizes)
    say(f"meta-training {len(grid_values)} α_t × {config.seeds} runs × "
        f"{config.num_steps} steps (one compiled call)")
    trained = timed("train", _study.train, keys, problem, alpha_t, meta_lr, sizes,
                    mesh=mesh)
    ev = timed("evaluate_trained", _study.evaluate_trained, keys, problem,
               trained.state.params, jnp.asarray(alpha_r, jnp.dtype(config.dtype)),
               sizes, mesh=mesh)
    deltas = jnp.concatenate([sol.delta, paths], axis=1)
    nev = timed("evaluate_ntk", _study.evaluate_ntk, keys, problem, deltas,
                jnp.asarray(alpha_r, jnp.float64), sizes)

  g = len(grid_values)
  diverged = np.asarray(trained.diverged).T
  trained_loss = np.asarray(ev.loss, np.float64).transpose(1, 2, 0)   # [R, A, G]
  trained_loss = np.where(diverged[:, None, :], np.nan, trained_loss)
  ntk_loss = np.asarray(nev.loss, np.float64)                          # [R, A, 2G]
  losses = {"trained": trained_loss, "ntk": ntk_loss[:, :, :g],
            "ntk_same_steps": ntk_loss[:, :, g:]}
  pred_tr = np.asarray(ev.predictions, np.float64).transpose(1, 0, 2, 3)
  pred_lin = np.asarray(nev.predictions[:, g:], np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    gap = (np.mean((pred_tr - pred_lin) ** 2, axis=(2, 3))
           / np.mean(pred_lin ** 2, axis=(2, 3)))
  trace = np.asarray(trained.losses, np.float64).transpose(1, 0, 2)
  every = max(1, config.num_steps // 200)
  zero = int(np.flatnonzero(grid_values == 0.0)[0])
  optimum = []
  for a, rate in enumerate(config.alpha_r):
    entry: dict[str, Any] = {"alpha_r": rate, "alpha_r_absolute": float(alpha_r[a])}
    for name, v in losses.items():
      entry[name] = optimum_of(v[:, a], grid_values, zero_index=zero, seed=config.seed)
      if entry[name].get("argmin") is not None:
        entry[name]["argmin_absolute"] = entry[name]["argmin"] * scale
    optimum.append(entry)
  return NonlinearSweepResult(
      config=config,
      curvature={"lambda_bar": lam_bar, "lambda_std": float(lam.std(ddof=1)),
                 "lambda_min": float(lam.min()), "lambda_max": float(lam.max()),
                 "alpha_unit": scale},
      alpha_t=np.asarray(alpha_t), alpha_r=alpha_r, losses=losses,
      trained_unadapted=_masked(np.asarray(ev.loss_unadapted, np.float64).T, diverged),
      diverged=diverged, final_meta_loss=trace[:, :, -1],
      ntk_final_meta_loss=np.asarray(ntk_meta, np.float64),
      function_gap=_masked(gap, diverged),
      meta_curvature=(np.asarray(curv_max), np.asarray(curv_min)),
      rcond=np.asarray(sol.rcond), loss_trace=trace[:, :, ::every],
      optimum=optimum, seconds=seconds, resumed_stages=tuple(resumed))


def _entry(est: stats.Estimate, i: int) -> dict[str, Any]:
  return {"mean": float(est.mean[i]), "se": float(est.se[i]), "runs": int(est.n[i])}


def _curves_at(result: NonlinearSweepResult, a: int, i: int, zero: int
               ) -> dict[str, Any]:
  est = result.estimates(a)
  out: dict[str, Any] = {}
  for name in CURVES:
    out[name] = _entry(est[name], i)
    diff, se = stats.paired_difference(result.losses[name][:, a], i, zero)
    out[name]["minus_at_zero"] = {"mean": diff, "se": se}
  d = result.losses["trained"][:, a, i] - result.losses["ntk"][:, a, i]
  d = d[np.isfinite(d)]
  out["trained_minus_ntk"] = {
      "mean": float(d.mean()) if d.size else None,
      "se": float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else None}
  return out


def record(result: NonlinearSweepResult) -> dict[str, Any]:
  """The JSON record: config, seeds, versions, curvature scale, per α_t results.

  Each grid entry holds the primary α_r's curves at top level ("trained",
  "ntk", "ntk_same_steps": mean, se, runs, paired difference to α_t = 0) and
  every α_r's under "by_alpha_r".
  """
  c = result.config
  zero = int(np.flatnonzero(result.grid == 0.0)[0])
  per_grid = []
  for i, x in enumerate(result.grid):
    entry: dict[str, Any] = {"alpha_t": float(x),
                             "alpha_t_absolute": float(result.alpha_t[i])}
    entry.update(_curves_at(result, 0, i, zero))
    entry["diverged"] = int(result.diverged[:, i].sum())
    entry["trained_unadapted"] = _entry(stats.estimate(result.trained_unadapted), i)
    entry["final_meta_loss_median"] = stats.nan_ignoring(
        np.median, result.final_meta_loss[:, i])
    entry["ntk_same_steps_final_meta_loss_median"] = float(
        np.median(result.ntk_final_meta_loss[:, i]))
    entry["function_gap_median"] = stats.nan_ignoring(np.median, result.function_gap[:, i])
    entry["meta_curvature_max_median"] = float(np.median(result.meta_curvature[0][:, i]))
    with np.errstate(invalid="ignore", divide="ignore"):
      entry["meta_condition_median"] = float(np.median(
          result.meta_curvature[0][:, i] / result.meta_curvature[1][:, i]))
    entry["min_rcond"] = stats.nan_ignoring(np.min, result.rcond[:, i])
    entry["by_alpha_r"] = [dict(alpha_r=float(r), **_curves_at(result, a, i, zero))
                           for a, r in enumerate(c.alpha_r)]
    per_grid.append(entry)
  return {
      "experiment": "nonlinear_sweep",
      "config": dataclasses.asdict(c),
      "seeds": {"base_seed": c.seed, "runs": c.seeds,
                "run_keys": "jax.random.fold_in(jax.random.key(seed), run_index)"},
      "runtime": io.runtime_record(),
      "seconds": result.seconds,
      "resumed_stages": list(result.resumed_stages),
      "curvature": result.curvature,
      "alpha_r_absolute": [float(v) for v in result.alpha_r],
      "optimum": result.optimum,
      "grid": per_grid,
  }


def _optimum_line(label: str, o: dict[str, Any], unit: str) -> str:
  if o.get("argmin") is None:
    return f"  {label}: no finite runs"
  if o["bootstrap_argmin_68"] is None:
    boot = (f"bootstrap: none, {o['bootstrap_runs']} run(s) finite on the whole "
            "grid")
  else:
    lo, hi = o["bootstrap_argmin_68"]
    boot = f"bootstrap 68% [{lo:g}, {hi:g}], P(<0) = {o['bootstrap_p_negative']:.2f}"
  return (f"  {label:>14}: argmin α_t = {o['argmin']:g} {unit} ({boot}); "
          f"L(argmin) − L(0) = {o['min_minus_at_zero']:+.5f} ± "
          f"{o['min_minus_at_zero_se']:.5f} (paired)")


def _short_counts(result: NonlinearSweepResult,
                  est: dict[str, stats.Estimate]) -> list[str]:
  """Curves and grid values averaged over fewer runs than those not diverged."""
  out = []
  for i, x in enumerate(result.grid):
    div = int(result.diverged[:, i].sum())
    for k in CURVES:
      expected = result.config.seeds - (div if k == "trained" else 0)
      if est[k].n[i] < expected:
        out.append(f"{k} at α_t = {x:g}: {int(est[k].n[i])} of {expected}")
  return out


def summary_table(result: NonlinearSweepResult) -> str:
  """A short text table of the key numbers (the primary α_r in full)."""
  c, est = result.config, result.estimates(0)
  unit = "/λ̄" if c.units == "curvature" else "abs"
  lines = [
      f"quadratic regression, 2-layer ReLU width {c.width}, d={c.d} m={c.m} "
      f"n_t={c.n_t} n_v={c.n_v} n_r={c.n_r} σ={c.sigma:g}; {c.seeds} runs × "
      f"{c.test_tasks} test tasks; {c.num_steps} outer steps; "
      f"{sum(result.seconds.values()):.0f} s",
      f"curvature λ̄ = {result.curvature['lambda_bar']:.4f} (runs·tasks: "
      f"{result.curvature['lambda_min']:.3f}..{result.curvature['lambda_max']:.3f}); "
      f"α_r = {c.alpha_r[0]:g}{unit} = {result.alpha_r[0]:.4g}",
      f"{'α_t·λ̄' if c.units == 'curvature' else 'α_t':>8} {'α_t':>9} "
      f"{'trained':>17} {'NTK exact':>17} {'NTK same steps':>17} {'div':>4}"]
  for i, x in enumerate(result.grid):
    cells = [f"{est[k].mean[i]:8.4f} ± {est[k].se[i]:.4f}" if est[k].n[i] else f"{'—':>17}"
             for k in CURVES]
    div = int(result.diverged[:, i].sum())
    lines.append(f"{x:8.3f} {result.alpha_t[i]:9.4f} {' '.join(cells)} "
                 f"{div if div else '':>4}")
  lines.append("div: runs whose meta-training diverged (excluded from 'trained')")
  short = _short_counts(result, est)
  if short:
    lines.append("averaged over fewer runs (the test loss after adaptation is "
                 "not finite in the others): " + "; ".join(short))
  for entry in result.optimum:
    lines.append(f"α_r = {entry['alpha_r']:g}{unit}:")
    for name, label in (("trained", "trained"), ("ntk", "NTK exact"),
                        ("ntk_same_steps", "NTK same steps")):
      lines.append(_optimum_line(label, entry[name], unit))
  return "\n".join(lines)


def load(workdir: str) -> NonlinearSweepResult:
  """Reads a result written by `save` (results.json + runs.npz) back.

  The loss trace is the subsampled one that was saved.
  """
  import json  # local: only needed here.
  with open(os.path.join(workdir, "results.json")) as f:
    rec = json.load(f)
  config = validate(NonlinearSweepConfig(**{
      k: tuple(v) if isinstance(v, list) else v for k, v in rec["config"].items()}))
  with np.load(os.path.join(workdir, "runs.npz")) as data:
    arrays = {k: data[k] for k in data.files}
  return NonlinearSweepResult(
      config=config, curvature=rec["curvature"], alpha_t=arrays["alpha_t"],
      alpha_r=arrays["alpha_r"],
      losses={k: arrays[f"loss_{k}"] for k in CURVES},
      trained_unadapted=arrays["trained_unadapted"], diverged=arrays["diverged"],
      final_meta_loss=arrays["final_meta_loss"],
      ntk_final_meta_loss=arrays["ntk_final_meta_loss"],
      function_gap=arrays["function_gap"],
      meta_curvature=(arrays["meta_curvature_max"], arrays["meta_curvature_min"]),
      rcond=arrays["rcond"], loss_trace=arrays["loss_trace"],
      optimum=rec["optimum"], seconds=rec["seconds"],
      resumed_stages=tuple(rec.get("resumed_stages", ())))


def save(result: NonlinearSweepResult, workdir: str) -> dict[str, str]:
  """Writes results.json, runs.npz and the figure PNG atomically into `workdir`."""
  from negmeta.nonlinear import _plot  # local: matplotlib only when saving.
  workdir = io.prepare_workdir(workdir)
  paths = {"json": os.path.join(workdir, "results.json"),
           "npz": os.path.join(workdir, "runs.npz"),
           "png": os.path.join(workdir, "nonlinear_sweep.png")}
  arrays = dict(grid=result.grid, alpha_t=result.alpha_t, alpha_r=result.alpha_r,
                **{f"loss_{k}": v for k, v in result.losses.items()},
                trained_unadapted=result.trained_unadapted,
                diverged=result.diverged, final_meta_loss=result.final_meta_loss,
                ntk_final_meta_loss=result.ntk_final_meta_loss,
                function_gap=result.function_gap,
                meta_curvature_max=result.meta_curvature[0],
                meta_curvature_min=result.meta_curvature[1], rcond=result.rcond,
                loss_trace=result.loss_trace)
  io.write_results(paths["json"], record(result), paths["npz"], arrays,
                   {paths["png"]: _plot.sweep_figure(result)})
  return paths
