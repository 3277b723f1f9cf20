"""Convergence maps in the (α, β) plane, theory against experiment, as library calls.

A notebook does what `experiments/convergence_map.py` does with

  config = experiment.preset("takagi_linear", method="maml")
  result = experiment.run(config)
  print(experiment.summary_table(result))
  experiment.save(result, "/tmp/takagi")          # results.json, map.npz, PNG

Presets (each fixes the problem and the classification criterion):

  takagi_linear  Takagi et al.'s protocol (MetaLearn 2019, App. C): one task
                 y = 2x + 3, 100 points x ~ U[−5, 5] (same for inner and outer
                 step), model ŷ = w·x + c from θ_0 = 0, full batch, 500 outer
                 steps; converged iff the meta-training loss < 1e-2.
  mixed_linear   a fixed draw of 20 mixed-linear-regression tasks (p = 10,
                 10 support + 10 query points each, σ = 0.5, ν = 1, w_0 = 1,
                 θ_0 = 0), full batch, 500 steps; converged iff the outer update
                 direction shrank below 1e-3 of its initial norm (the loss has a
                 non-zero floor, and first-order MAML's fixed point is not the
                 meta-loss minimiser).
  sinusoid       the 1-40-40-1 ReLU MLP (cbfinn init) on a fixed pool of 3
                 sinusoid tasks, 10 support + 10 query points, full batch, 200
                 steps, float32, from the cbfinn init (Takagi's protocol);
                 converged iff the meta-training loss fell below half its initial
                 value. Trained point: the α ≈ 0 cell with the lowest final
                 loss (θ_0 if every cell diverged).
                 Predicted boundary there (Lanczos): MAML, 2/λ_max of the MAML
                 meta-Hessian ∇²L_α at each α; first-order MAML, Takagi's formula
                 on the top-k eigenvalues of the α = 0 Hessian (also drawn and
                 scored for MAML, with the exact one-task formula).

For the quadratic problems every cell is also predicted exactly (`predict`): its
asymptotic class from the spectral radius of the outer step, and its class after
exactly T steps from the exact T-step map under the same criterion.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from negmeta import _checks, io, maml, models
from negmeta.convergence import maps, predict
from negmeta.convergence import problems as cproblems

PRESET_NAMES = ("takagi_linear", "mixed_linear", "sinusoid")
LINEAR_PRESETS = ("takagi_linear", "mixed_linear")
DTYPES = ("float64", "float32")
MAX_GRID_NUM = 1024
MAX_ITERATIONS = 100_000

# Problem parameters per preset: name -> (kind, minimum) for validation.
_PROBLEM_FIELDS: dict[str, dict[str, tuple[str, float | None]]] = {
    "takagi_linear": {"slope": ("real", None), "intercept": ("real", None),
                      "num_points": ("int", 1)},
    "mixed_linear": {"p": ("int", 1), "num_tasks": ("int", 1),
                     "n_support": ("int", 1), "n_query": ("int", 1),
                     "sigma": ("real", 0.0), "nu": ("real", 0.0), "w0": ("real", None),
                     "omega0": ("real", None)},
    "sinusoid": {"num_tasks": ("int", 1), "n_support": ("int", 1),
                 "n_query": ("int", 1), "lanczos_iters": ("int", 2),
                 "top_k": ("int", 1)},
}


@dataclasses.dataclass(frozen=True)
class ConvergenceMapConfig:
  """One convergence map.

  Attributes:
    preset: the problem: "takagi_linear", "mixed_linear" or "sinusoid".
    method: "maml" (exact second-order meta-gradient) or "fomaml".
    alpha_min, alpha_max, alpha_num: linearly spaced inner rates α (signed).
    beta_min, beta_max, beta_num: log-spaced meta rates β (> 0).
    iterations: outer steps per run T.
    seed: PRNG seed of the data (and of the init and Lanczos start for sinusoid).
    dtype: float type of the runs (theory is always float64).
    chunk_alphas: α rows of the map per compiled call, each saved as a
      resumable chunk (0: the whole map in one call).
    problem: the preset's problem parameters (see `PRESETS`).
    criterion: how runs are classified (`maps.Criterion`).
  """
  preset: str = "takagi_linear"
  method: str = maps.MAML
  alpha_min: float = -0.1
  alpha_max: float = 0.1
  alpha_num: int = 65
  beta_min: float = 5e-3
  beta_max: float = 9.0
  beta_num: int = 64
  iterations: int = 500
  seed: int = 0
  dtype: str = "float64"
  chunk_alphas: int = 0
  problem: Mapping[str, Any] = dataclasses.field(
      default_factory=lambda: dict(slope=2.0, intercept=3.0, num_points=100))
  criterion: maps.Criterion = maps.Criterion()


PRESETS: dict[str, dict[str, Any]] = {
    # Takagi et al. App. C / Fig. 3, with α signed and linear instead of log.
    "takagi_linear": dict(
        problem=dict(slope=2.0, intercept=3.0, num_points=100),
        alpha_min=-0.1, alpha_max=0.1, alpha_num=65, beta_min=5e-3, beta_max=9.0,
        beta_num=64, iterations=500, dtype="float64",
        criterion=maps.Criterion(maps.LOSS, 1e-2, relative=False)),
    "mixed_linear": dict(
        problem=dict(p=10, num_tasks=20, n_support=10, n_query=10, sigma=0.5,
                     nu=1.0, w0=1.0, omega0=0.0),
        alpha_min=-0.25, alpha_max=0.25, alpha_num=65, beta_min=1e-2, beta_max=10.0,
        beta_num=64, iterations=500, dtype="float64",
        criterion=maps.Criterion(maps.UPDATE_NORM, 1e-3, relative=True)),
    "sinusoid": dict(
        problem=dict(num_tasks=3, n_support=10, n_query=10, lanczos_iters=64,
                     top_k=8),
        alpha_min=-0.3, alpha_max=0.3, alpha_num=65, beta_min=1e-2, beta_max=10.0,
        beta_num=64, iterations=200, dtype="float32",
        criterion=maps.Criterion(maps.LOSS, 0.5, relative=True)),
}

# Fields a preset fixes: a caller may not contradict them.
PROBLEM_FIXED = ("problem", "criterion", "dtype")


def preset(name: str, **overrides) -> ConvergenceMapConfig:
  """The named preset with grid/method/iterations/seed optionally overridden.

  Raises:
    ConfigError: unknown preset, or an override of a field the preset fixes.
  """
  _checks.choice("preset", name, PRESET_NAMES)
  base = PRESETS[name]
  for key, value in overrides.items():
    if key in PROBLEM_FIXED and value != base[key]:
      raise _checks.ConfigError(
          key, f"is fixed by --preset={name} ({base[key]!r}); got {value!r}")
  return validate(ConvergenceMapConfig(preset=name, **{**base, **overrides}))


# |α|, β beyond this overflow the figure's axes (and any run diverges anyway).
MAX_RATE = _checks.MAX_ABS_RATE


def _range(lo_name, lo, hi_name, hi, num_name, num, *, positive=False):
  lo = _checks.real(lo_name, lo, lo=0.0 if positive else -MAX_RATE, lo_open=positive,
                    hi=MAX_RATE)
  hi = _checks.real(hi_name, hi, lo=0.0 if positive else -MAX_RATE, hi=MAX_RATE)
  if not hi > lo:
    raise _checks.ConfigError(hi_name, f"must be > --{lo_name}={lo:g} (got {hi:g})")
  num = _checks.integer(num_name, num, minimum=2, maximum=MAX_GRID_NUM)
  return lo, hi, num


def validate(config: ConvergenceMapConfig) -> ConvergenceMapConfig:
  """Checks every field; returns the config with normalized types.

  Raises:
    ConfigError: naming the first invalid field and its allowed values.
  """
  c = config
  name = _checks.choice("preset", c.preset, PRESET_NAMES)
  method = _checks.choice("method", c.method, maps.METHODS)
  a_lo, a_hi, a_num = _range("alpha_min", c.alpha_min, "alpha_max", c.alpha_max,
                             "alpha_num", c.alpha_num)
  b_lo, b_hi, b_num = _range("beta_min", c.beta_min, "beta_max", c.beta_max,
                             "beta_num", c.beta_num, positive=True)
  iterations = _checks.integer("iterations", c.iterations, maximum=MAX_ITERATIONS)
  seed = _checks.integer("seed", c.seed, minimum=0, maximum=2**31 - 1)
  dtype = _checks.choice("dtype", c.dtype, DTYPES)
  chunk_alphas = _checks.integer("chunk_alphas", c.chunk_alphas, minimum=0,
                                 maximum=a_num)
  fields = _PROBLEM_FIELDS[name]
  unknown = sorted(set(c.problem) - set(fields))
  if unknown or set(fields) - set(c.problem):
    raise _checks.ConfigError(
        "problem", f"{name} needs exactly the keys {', '.join(fields)} "
        f"(got {', '.join(sorted(c.problem))})")
  problem = {}
  for key, (kind, lo) in fields.items():
    if kind == "int":
      problem[key] = _checks.integer(key, c.problem[key], minimum=int(lo))
    else:
      problem[key] = _checks.real(key, c.problem[key], lo=lo)
  crit = c.criterion
  _checks.choice("criterion.quantity", crit.quantity, maps.QUANTITIES)
  _checks.real("criterion.threshold", crit.threshold, lo=0.0, lo_open=True)
  return dataclasses.replace(
      c, preset=name, method=method, alpha_min=a_lo, alpha_max=a_hi, alpha_num=a_num,
      beta_min=b_lo, beta_max=b_hi, beta_num=b_num, iterations=iterations,
      seed=seed, dtype=dtype, chunk_alphas=chunk_alphas, problem=problem)


def grids(config: ConvergenceMapConfig) -> tuple[np.ndarray, np.ndarray]:
  """(α [A] linearly spaced, β [B] log-spaced), float64."""
  alpha = np.linspace(config.alpha_min, config.alpha_max, config.alpha_num)
  alpha[np.abs(alpha) < 1e-12 * max(abs(config.alpha_min), abs(config.alpha_max))] = 0.0
  beta = np.geomspace(config.beta_min, config.beta_max, config.beta_num)
  return alpha, beta


@dataclasses.dataclass(frozen=True)
class ConvergenceMapResult:
  """Everything a map produced; `save` writes it, `summary_table` prints it.

  Attributes:
    config: the validated config.
    arrays: grids and per-cell arrays (see `save` for the keys).
    summary: the numbers reported in results.json (agreement, boundaries, ...).
    seconds: {"map": the map's compute time summed over its chunks (a chunk
      loaded from an interrupted run counts the time it took then),
      "theory": this call's theory time, "total": this call's wall time};
      compilation included.
    resumed_chunks: chunks of the map loaded from an interrupted run.
  """
  config: ConvergenceMapConfig
  arrays: dict[str, np.ndarray]
  summary: dict[str, Any]
  seconds: dict[str, float]
  resumed_chunks: int = 0


def _np(tree):
  return jax.tree.map(np.asarray, tree)


def _agreement_record(empirical, predicted, what: str) -> dict[str, Any]:
  a = maps.agreement(empirical, predicted)
  return {"share": a.share, "cells_counted": a.counted,
          "cells_disagreeing": a.disagreeing,
          "not_yet_converged_counted": a.not_yet_counted,
          "share_of_decided_cells": a.decided_share,
          "prediction": what}


def _nearest_zero(alpha: np.ndarray) -> int:
  return int(np.argmin(np.abs(alpha)))


def _beta_c_alpha0(alpha, beta, empirical_boundary, lambda_max, predicted_beta_c
                   ) -> dict[str, Any]:
  i = _nearest_zero(alpha)
  log_step = math.log(beta[-1] / beta[0]) / (len(beta) - 1)
  emp = float(empirical_boundary.beta_c[i])
  theory = 2.0 / float(lambda_max)
  within = (bool(abs(math.log(emp) - math.log(theory)) <= log_step * (1 + 1e-9))
            if math.isfinite(emp) else False)
  return {"alpha": float(alpha[i]),
          "empirical_beta_c": emp,
          "empirical_bracket": [float(empirical_boundary.beta_below[i]), emp],
          "two_over_lambda_max": theory,
          "predicted_beta_c_at_alpha": float(predicted_beta_c[i]),
          "log_grid_step": log_step,
          "within_one_grid_step": within,
          "empirical_beta_c_definition": "smallest grid β whose run diverged; the "
                                         "bracket is (the grid β below it, it)"}


def _boundary_table(alpha, eb, predicted_beta_c, takagi_beta_c) -> list[dict]:
  return [{"alpha": float(a), "empirical_beta_c": float(eb.beta_c[i]),
           "empirical_beta_below": float(eb.beta_below[i]),
           "diverged_set_monotone": bool(eb.monotone[i]),
           "predicted_beta_c": float(predicted_beta_c[i]),
           "takagi_beta_c": float(takagi_beta_c[i])} for i, a in enumerate(alpha)]


def _tightening(alpha, eb, predicted_beta_c, takagi_beta_c) -> dict[str, Any] | None:
  if alpha[0] >= 0:
    return None
  i0 = _nearest_zero(alpha)
  def ratio(x):   # 0/0 or inf/inf (a degenerate map): NaN, recorded as null
    with np.errstate(invalid="ignore", divide="ignore"):
      return float(np.float64(x[0]) / np.float64(x[i0]))
  return {"alpha_min": float(alpha[0]), "alpha_ref": float(alpha[i0]),
          "empirical_beta_c_ratio": ratio(eb.beta_c),
          "predicted_beta_c_ratio": ratio(predicted_beta_c),
          "takagi_beta_c_ratio": ratio(takagi_beta_c),
          "empirical_beta_c_at_alpha_min": float(eb.beta_c[0]),
          "predicted_beta_c_at_alpha_min": float(predicted_beta_c[0]),
          "takagi_beta_c_at_alpha_min": float(takagi_beta_c[0])}


def _diverged_sides(empirical: np.ndarray, pred: np.ndarray, *,
                    alpha: np.ndarray) -> dict[str, Any]:
  """Where the diverged cells of a map lie relative to a prediction.

  Args:
    empirical: (A, B) empirical classes (`maps.classify`).
    pred: (A, B) predicted classes (`predict.asymptotic_classes`).
    alpha: (A,) the map's α values (rows).

  Returns:
    Counts of diverged cells: all of them, those the prediction calls divergent,
    those it calls convergent, and of the latter those within one grid step of
    the predicted boundary and those at α ≤ 0; `share` is the fraction on the
    predicted divergent side (None when nothing diverged).
  """
  diverged = empirical == maps.DIVERGED
  below = diverged & (pred == maps.CONVERGED)
  near = ~maps.away_from_boundary(pred)
  return {"diverged_cells": int(diverged.sum()),
          "on_predicted_divergent_side": int(np.sum(diverged & ~below)),
          "on_predicted_convergent_side": int(below.sum()),
          "on_convergent_side_within_one_step": int(np.sum(below & near)),
          "on_convergent_side_alpha_le_0": int(np.sum(below & (alpha <= 0)[:, None])),
          "share": (float(1 - below.sum() / diverged.sum()) if diverged.any()
                    else None)}


def _map_runs(config, apply_fn, init_params, batch, alpha, beta, log, mesh, store):
  """The map's runs (`maps.run_map_chunks`): a `maps.ChunkedMap`."""
  dtype = jnp.dtype(config.dtype)

  def on_chunk(i, total, loaded):
    if log and total > 1:
      log(f"map chunk {i + 1}/{total} "
          + ("loaded from a previous run" if loaded else "done"))

  out = maps.run_map_chunks(
      apply_fn, init_params, batch, jnp.asarray(alpha, dtype), jnp.asarray(beta, dtype),
      method=config.method, iterations=config.iterations,
      chunk_alphas=config.chunk_alphas, store=store, mesh=mesh, on_chunk=on_chunk)
  if log:
    log(f"map: {alpha.size}×{beta.size} runs × {config.iterations} steps in "
        f"{out.seconds:.1f} s" + (f" ({out.loaded} chunks computed by a previous "
                                  "run)" if out.loaded else ""))
  return out


def _run_linear(config, alpha, beta, key, log, mesh, store):
  p = config.problem
  dtype = jnp.dtype(config.dtype)
  if config.preset == "takagi_linear":
    problem = cproblems.takagi_linear(key, slope=p["slope"], intercept=p["intercept"],
                                      num_points=p["num_points"], dtype=jnp.float64)
  else:
    problem = cproblems.mixed_linear(key, p=p["p"], num_tasks=p["num_tasks"],
                                     n_support=p["n_support"], n_query=p["n_query"],
                                     sigma=p["sigma"], nu=p["nu"], w0=p["w0"],
                                     omega0=p["omega0"], dtype=jnp.float64)
  cast = lambda t: jax.tree.map(lambda x: jnp.asarray(x, dtype), t)
  chunked = _map_runs(config, cproblems.linear_apply, cast(problem.theta0),
                      cast(problem.batch), alpha, beta, log, mesh, store)
  runs = chunked.runs
  start = time.perf_counter()
  pred = _np(predict.predict_linear(problem, alpha, beta, method=config.method,
                                    iterations=config.iterations))
  dense = np.linspace(alpha[0], alpha[-1], 801)
  curves = _np(predict.linear_boundaries(problem, dense, method=config.method))
  t_theory = time.perf_counter() - start
  crit = config.criterion
  empirical = maps.classify(*runs.quantity(crit.quantity), runs.nonfinite, crit)
  horizon = predict.horizon_classes(pred, crit)
  asymptotic = predict.asymptotic_classes(pred.converges)
  bounds = pred.boundaries
  takagi = predict.asymptotic_classes((beta[None, :] > 0)
                                      & (beta[None, :] < bounds.beta_c_takagi[:, None]))
  eb = maps.empirical_boundary(empirical, beta)
  eigs = bounds.hessian_eigenvalues
  summary = {
      "agreement": {
          "exact_at_horizon": _agreement_record(
              empirical, horizon,
              "exact T-step map θ_T = (I − βJ)^T θ_0 + Σ(I − βJ)^k βb, classified "
              "by the same criterion (three classes)"),
          "exact_asymptotic": _agreement_record(
              empirical, asymptotic,
              "spectral radius: converges iff ρ(I − βJ(α)) < 1 (two classes; a "
              "not-yet-converged cell counts as a disagreement)"),
          "takagi_asymptotic": _agreement_record(
              empirical, takagi,
              "Takagi: converges iff β < min_i 2/(λ_i − αλ_i²) and α ≤ 1/λ_max, "
              "λ_i eigenvalues of H = mean_i Q_i"),
      },
      "hessian_eigenvalues": {
          "values": eigs.tolist(),
          "source": "exact: eigvalsh of H = mean_i Q_i, the Hessian of the α = 0 "
                    "meta-loss (= S = Q for one task with the same data)"},
      "takagi_alpha_c": float(1.0 / eigs[-1]),
      "beta_c_at_alpha0": _beta_c_alpha0(alpha, beta, eb, eigs[-1], bounds.beta_c),
      "negative_alpha": _tightening(alpha, eb, bounds.beta_c, bounds.beta_c_takagi),
      "boundary": _boundary_table(alpha, eb, bounds.beta_c, bounds.beta_c_takagi),
      "max_abs_final_loss_gap_converged_cells": float(np.max(
          np.abs(runs.final_loss - pred.final_loss)[empirical == maps.CONVERGED],
          initial=0.0)),
  }
  arrays = dict(
      final_loss=runs.final_loss, initial_loss=runs.initial_loss,
      final_update_norm=runs.final_update_norm,
      initial_update_norm=runs.initial_update_norm, nonfinite=runs.nonfinite,
      nonfinite_step=runs.nonfinite_step, empirical_class=empirical,
      predicted_class=horizon, predicted_class_asymptotic=asymptotic,
      predicted_class_takagi=takagi, spectral_radius=pred.spectral_radius,
      predicted_final_loss=pred.final_loss, beta_c_predicted=bounds.beta_c,
      beta_c_takagi=bounds.beta_c_takagi, empirical_beta_c=eb.beta_c,
      dense_alpha=dense, dense_beta_c_predicted=curves.beta_c,
      dense_beta_c_takagi=curves.beta_c_takagi, hessian_eigenvalues=eigs,
      away_from_boundary=maps.away_from_boundary(horizon))
  return arrays, summary, chunked, t_theory


def _run_sinusoid(config, alpha, beta, key, log, mesh, store):
  p = config.problem
  dtype = jnp.dtype(config.dtype)
  k_data, k_init, k_lanczos = jax.random.split(key, 3)
  pool = cproblems.sinusoid_pool(k_data, num_tasks=p["num_tasks"],
                                 k_support=p["n_support"], k_query=p["n_query"],
                                 dtype=dtype)
  init = models.mlp_init(k_init, dtype=dtype)
  chunked = _map_runs(config, models.mlp_apply, init, pool, alpha, beta, log, mesh,
                      store)
  runs = chunked.runs
  crit = config.criterion
  empirical = maps.classify(*runs.quantity(crit.quantity), runs.nonfinite, crit)
  # Trained point: the α ≈ 0 cell with the lowest final loss (any other column if
  # that one has no finite cell).
  # If every cell diverged, there is no trained point: the Hessian is taken at
  # θ_0, where every run started, and the record says so.
  i0 = _nearest_zero(alpha)
  column = np.where(empirical[i0] != maps.DIVERGED, runs.final_loss[i0], np.inf)
  flat = np.where(empirical != maps.DIVERGED, runs.final_loss, np.inf)
  if not np.all(np.isinf(column)):
    ia, ib = i0, int(np.argmin(column))
    choice = "the α ≈ 0 cell with the lowest final loss"
  elif not np.all(np.isinf(flat)):
    ia, ib = np.unravel_index(int(np.argmin(flat)), flat.shape)
    choice = ("the cell with the lowest final loss (every α ≈ 0 cell diverged)")
  else:
    ia = ib = None
    choice = "none: every cell diverged, so the Hessian is taken at θ_0"
  start = time.perf_counter()
  to64 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)
  trained = to64(init if ia is None
                 else jax.tree.map(lambda x: x[ia, ib], runs.final_params))
  pool64 = to64(pool)
  # H = ∇² mean_i L_i^Q(θ) at the trained point: the α = 0 meta-loss Hessian
  loss_fn = lambda prm: maml.meta_loss(models.mlp_apply, prm, 0.0, pool64, steps=1)
  spectrum = _np(predict.hessian_spectrum(loss_fn, trained, k_lanczos,
                                          num_iters=p["lanczos_iters"],
                                          top_k=p["top_k"]))
  # The same at the initial point θ_0 (where every run of the map starts).
  at_init = _np(predict.hessian_spectrum(loss_fn, to64(init), k_lanczos,
                                         num_iters=p["lanczos_iters"],
                                         top_k=p["top_k"]))
  formula, beta_c_takagi = _np(predict.eigenvalue_boundaries(alpha, spectrum.top,
                                                             method=config.method))
  dense = np.linspace(alpha[0], alpha[-1], 801)
  dense_formula, dense_takagi = _np(predict.eigenvalue_boundaries(
      dense, spectrum.top, method=config.method))
  formula_text = ("2/(λ(1 − αλ)²)" if config.method == maps.MAML
                  else "2/(λ − αλ²)")
  if config.method == maps.MAML:
    # The local meta-Hessian ∇²L_α(θ*) at every grid α (exact linearization).
    meta_max, meta_min = _np(predict.meta_hessian_extremes(
        models.mlp_apply, trained, pool64, jnp.asarray(alpha), k_lanczos,
        num_iters=p["lanczos_iters"]))
    beta_c = np.where(meta_max > 0, 2.0 / np.where(meta_max > 0, meta_max, 1.0), np.inf)
    predicted_text = ("converges iff β < 2/λ_max(∇²_θ L_α(θ*)), the MAML "
                      "meta-Hessian at the trained point for each α (Lanczos)")
  else:
    meta_max = meta_min = None
    beta_c = formula
    predicted_text = (f"converges iff β < β_c(α) = min_i {formula_text} over the "
                      f"top-{p['top_k']} eigenvalues of H at the trained point "
                      "(first-order MAML's local Jacobian is not symmetric: no "
                      "Lanczos)")
  t_theory = time.perf_counter() - start
  below_curve = lambda bc: predict.asymptotic_classes(beta[None, :] < bc[:, None])
  predicted = below_curve(beta_c)
  eb = maps.empirical_boundary(empirical, beta)
  side = functools.partial(_diverged_sides, empirical, alpha=alpha)

  preds = {"predicted": (predicted, predicted_text),
           "hessian_formula": (below_curve(formula),
                               f"converges iff β < min_i {formula_text} over the "
                               f"top-{p['top_k']} eigenvalues of H (α = 0 meta-loss) "
                               "at the trained point"),
           "takagi": (below_curve(beta_c_takagi),
                      "Takagi's β_c from the same eigenvalues of H")}
  summary = {
      "agreement": {f"{k}_asymptotic": _agreement_record(empirical, v[0], v[1])
                    for k, v in preds.items()},
      "diverged_on_predicted_side": side(predicted),
      "diverged_on_side_of": {k: side(v[0]) for k, v in preds.items()},
      "trained_point": ({"alpha": float(alpha[ia]), "beta": float(beta[ib]),
                         "final_loss": float(runs.final_loss[ia, ib]),
                         "initial_loss": float(runs.initial_loss[ia, ib]),
                         "choice": choice} if ia is not None else
                        {"alpha": None, "beta": None, "final_loss": None,
                         "initial_loss": float(runs.initial_loss[0, 0]),
                         "choice": choice}),
      "hessian_eigenvalues": {
          "top": spectrum.top.tolist(), "lambda_max": float(spectrum.lambda_max),
          "lambda_min": float(spectrum.lambda_min),
          "residuals_top": spectrum.residuals_top.tolist(),
          "source": f"Lanczos ({p['lanczos_iters']} steps, full reorthogonalization, "
                    "float64) on the Hessian H of the α = 0 meta-loss (mean query MSE "
                    "over the pool) at the trained point; formulas use the positive "
                    "top-k values",
          "at_initial_point": {"top": at_init.top.tolist(),
                               "lambda_max": float(at_init.lambda_max),
                               "lambda_min": float(at_init.lambda_min)},
          "meta_hessian_lambda_max": None if meta_max is None else meta_max.tolist(),
          "meta_hessian_lambda_min": None if meta_min is None else meta_min.tolist()},
      "takagi_alpha_c": float(1.0 / spectrum.lambda_max),
      "beta_c_at_alpha0": _beta_c_alpha0(alpha, beta, eb, spectrum.lambda_max, beta_c),
      "beta_c_at_alpha0_initial_point": _beta_c_alpha0(
          alpha, beta, eb, at_init.lambda_max,
          np.full(alpha.shape, 2.0 / float(at_init.lambda_max))),
      "negative_alpha": _tightening(alpha, eb, beta_c, beta_c_takagi),
      "boundary": _boundary_table(alpha, eb, beta_c, beta_c_takagi),
  }
  arrays = dict(
      final_loss=runs.final_loss, initial_loss=runs.initial_loss,
      final_update_norm=runs.final_update_norm,
      initial_update_norm=runs.initial_update_norm, nonfinite=runs.nonfinite,
      nonfinite_step=runs.nonfinite_step, empirical_class=empirical,
      predicted_class=predicted, predicted_class_formula=preds["hessian_formula"][0],
      predicted_class_takagi=preds["takagi"][0], beta_c_predicted=beta_c,
      beta_c_formula=formula, beta_c_takagi=beta_c_takagi, empirical_beta_c=eb.beta_c,
      dense_alpha=dense, dense_beta_c_formula=dense_formula,
      dense_beta_c_takagi=dense_takagi, hessian_eigenvalues=spectrum.top,
      away_from_boundary=maps.away_from_boundary(predicted))
  if meta_max is not None:
    arrays.update(meta_hessian_lambda_max=meta_max, meta_hessian_lambda_min=meta_min)
  else:
    arrays["dense_beta_c_predicted"] = dense_formula
  return arrays, summary, chunked, t_theory


def map_identity(config: ConvergenceMapConfig) -> dict[str, Any]:
  """What determines the map's per-cell values and chunks (for resuming).

  Args:
    config: a validated ConvergenceMapConfig.

  Returns:
    The whole config (the chunking included) and the JAX version, for
    `io.fingerprint`.
  """
  return io.config_identity(config)


def run(config: ConvergenceMapConfig, *, log: Callable[[str], None] | None = None,
        mesh: jax.sharding.Mesh | None = None,
        store_dir: str | None = None) -> ConvergenceMapResult:
  """Runs the map of `config` and its predictions.

  The map is one compiled call, or `config.chunk_alphas` rows of α at a time
  (every chunk reusing the one compiled call); with `store_dir`, each finished
  chunk is saved there and a rerun of the same config loads it.

  Args:
    config: a ConvergenceMapConfig (validated here).
    log: optional progress printer.
    mesh: optional 1-D device mesh (`negmeta.sharding.device_mesh`) to split
      the map's cells over; same values as without.
    store_dir: optional directory for finished chunks (resumable maps).

  Returns:
    ConvergenceMapResult.
  """
  config = validate(config)
  alpha, beta = grids(config)
  store = (io.ChunkStore(store_dir, io.fingerprint(map_identity(config)))
           if store_dir is not None else None)
  start = time.perf_counter()
  with jax.enable_x64(True):
    key = jax.random.key(config.seed)
    runner = _run_sinusoid if config.preset == "sinusoid" else _run_linear
    arrays, summary, chunked, t_theory = runner(config, alpha, beta, key, log, mesh,
                                                store)
  counts = np.bincount(arrays["empirical_class"].ravel(), minlength=3)
  summary = {"counts": dict(zip(maps.CLASS_NAMES, map(int, counts))), **summary}
  arrays = {"alpha": alpha, "beta": beta, **arrays}
  return ConvergenceMapResult(
      config=config, arrays={k: np.asarray(v) for k, v in arrays.items()},
      summary=summary, seconds={"map": chunked.seconds, "theory": t_theory,
                                "total": time.perf_counter() - start},
      resumed_chunks=chunked.loaded)


def headline_agreement(result: ConvergenceMapResult) -> dict[str, Any]:
  """The agreement this map is judged by: exact at the horizon (linear) or Hessian."""
  agr = result.summary["agreement"]
  return agr["exact_at_horizon"] if "exact_at_horizon" in agr else agr[
      "predicted_asymptotic"]


def record(result: ConvergenceMapResult) -> dict[str, Any]:
  """The JSON record: config, seeds, versions, criterion, agreement, boundaries."""
  c = result.config
  seeds = {"seed": c.seed}
  if c.preset == "sinusoid":
    seeds["keys"] = ("(data, init, lanczos) = jax.random.split(jax.random.key(seed), 3)"
                     "; every cell shares the init and the task pool")
  else:
    seeds["keys"] = "data drawn from jax.random.key(seed); θ_0 fixed by the preset"
  return {
      "experiment": "convergence_map",
      "config": dataclasses.asdict(c),
      "seeds": seeds,
      "runtime": io.runtime_record(),
      "seconds": result.seconds,
      "resumed_chunks": result.resumed_chunks,
      "criterion": c.criterion.describe(),
      "grid": {"alpha": "linear", "beta": "log", "alpha_values": result.arrays["alpha"],
               "beta_values": result.arrays["beta"]},
      "agreement_share": headline_agreement(result)["share"],
      "agreement_definition": (
          "share of cells whose empirical class equals the predicted one, counted "
          "over cells farther than one grid step from the predicted boundary (all 8 "
          "grid neighbours have the same predicted class)"),
      **result.summary,
  }


def _fmt(x: float) -> str:
  return "—" if x is None or not math.isfinite(x) else f"{x:.4g}"


def summary_table(result: ConvergenceMapResult, max_rows: int = 9) -> str:
  """A short text table of the key numbers."""
  c, s = result.config, result.summary
  alpha = result.arrays["alpha"]
  lines = [f"convergence map: {c.preset}, {c.method}, {c.alpha_num}×{c.beta_num} "
           f"cells (α ∈ [{c.alpha_min:g}, {c.alpha_max:g}], β ∈ [{c.beta_min:g}, "
           f"{c.beta_max:g}] log), {c.iterations} steps; map "
           f"{result.seconds['map']:.1f} s, total {result.seconds['total']:.1f} s",
           "cells: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                 for k, v in s["counts"].items())]
  for name, a in s["agreement"].items():
    if not a["cells_counted"]:
      lines.append(f"agreement vs {name.replace('_', ' ')}: no cell away from the "
                   "boundary to compare")
      continue
    lines.append(f"agreement vs {name.replace('_', ' ')}: {100 * a['share']:.2f}% of "
                 f"{a['cells_counted']} cells away from the boundary "
                 f"({a['cells_disagreeing']} differ, {a['not_yet_converged_counted']} "
                 f"not yet converged)")
  b0 = s["beta_c_at_alpha0"]
  lines.append(f"β_c at α = {b0['alpha']:g}: empirical "
               f"{_fmt(b0['empirical_beta_c'])} "
               f"(bracket {_fmt(b0['empirical_bracket'][0])}–"
               f"{_fmt(b0['empirical_bracket'][1])}), 2/λ_max = "
               f"{b0['two_over_lambda_max']:.4g}, within one grid step: "
               f"{'yes' if b0['within_one_grid_step'] else 'no'}")
  if "beta_c_at_alpha0_initial_point" in s:
    bi = s["beta_c_at_alpha0_initial_point"]
    yes = "yes" if bi["within_one_grid_step"] else "no"
    lines.append(f"   2/λ_max at the initial point θ_0 = "
                 f"{bi['two_over_lambda_max']:.4g}, within one grid step: {yes}")
  if "diverged_on_predicted_side" in s:
    d = s["diverged_on_predicted_side"]
    tp = s["trained_point"]
    where = (f"trained point α = {tp['alpha']:g}, β = {tp['beta']:.3g}"
             if tp["alpha"] is not None else "no trained point (all diverged): θ_0")
    lines.append(f"diverged cells on the predicted side: "
                 f"{d['on_predicted_divergent_side']}/{d['diverged_cells']}; {where}, "
                 f"λ_max = {s['hessian_eigenvalues']['lambda_max']:.4g}, λ_min = "
                 f"{s['hessian_eigenvalues']['lambda_min']:.3g}")
  lines.append(f"{'α':>8} {'β_c empirical':>14} {'β_c predicted':>14} "
               f"{'β_c Takagi':>12}")
  rows = sorted(set(np.linspace(0, len(alpha) - 1, min(len(alpha), max_rows))
                    .round().astype(int)) | {_nearest_zero(alpha)})
  for i in rows:
    r = s["boundary"][i]
    lines.append(f"{r['alpha']:8.4f} {_fmt(r['empirical_beta_c']):>14} "
                 f"{_fmt(r['predicted_beta_c']):>14} {_fmt(r['takagi_beta_c']):>12}")
  return "\n".join(lines)


def save(result: ConvergenceMapResult, workdir: str) -> dict[str, str]:
  """Writes results.json, map.npz and the heatmap PNG atomically into `workdir`.

  The npz holds: alpha [A], beta [B]; per cell [A, B]: final_loss, initial_loss,
  final_update_norm, initial_update_norm, nonfinite, nonfinite_step,
  empirical_class and predicted_class (0 converged, 1 not yet converged,
  2 diverged), predicted_class_takagi, and for linear problems
  predicted_class_asymptotic, spectral_radius, predicted_final_loss; per α [A]:
  beta_c_predicted, beta_c_takagi, empirical_beta_c; dense boundary curves.

  Returns:
    Paths written, by kind.
  """
  from negmeta.convergence import figure  # local: matplotlib only when saving.
  workdir = io.prepare_workdir(workdir)
  stem = f"{result.config.preset}_{result.config.method}"
  paths = {"json": os.path.join(workdir, "results.json"),
           "npz": os.path.join(workdir, "map.npz"),
           "png": os.path.join(workdir, f"{stem}_map.png")}
  io.write_results(paths["json"], record(result), paths["npz"], result.arrays,
                   {paths["png"]: figure.map_figure(result)})
  return paths
