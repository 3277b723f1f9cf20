"""Sinusoid regression (Finn et al. 2017) and its learning-rate sweeps as library calls.

A notebook does what `experiments/sinusoid.py` does with

  config = experiment.preset("finn_table2", seeds=3)
  result = experiment.run(config, log=print)
  print(experiment.summary_table(result))
  experiment.save(result, "/tmp/table2")        # results.json, runs.npz, PNGs

and re-evaluates the trained models at other adaptation rates with
``experiment.reevaluate(result, alpha_r=[...])`` (evaluation is cheap).

Every run meta-trains a grid of (α_t, seed) members in one compiled call
(`_kernel.train_and_evaluate`), then evaluates each member with Finn et al.'s
test protocol at every α_r of a second grid: fine-tune each of `test_tasks`
new tasks on the same `eval_shots` points for `eval_steps` SGD steps at α_r
and record the MSE on held-out points after 0..eval_steps steps. Two
estimators of the same expectation are recorded: ``protocol`` (random
held-out points, `test_points` per task, as cbfinn/maml's `test()`) and
``dense`` (a midpoint grid over [−5, 5]: the expectation over test inputs to
quadrature accuracy, less noisy).

Uncertainty: per seed, Finn's 95% interval 1.96·std/√T over the T test tasks
(std with ddof 0, as `main.py`); pooled over seeds, mean ± s.e. of the
per-seed means (independent replicates: own init, training tasks and test
tasks), 95% interval mean ± 1.96 s.e. Members with one seed share the
initialization, every training batch and the test tasks, so differences
between grid values are paired by seed.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from negmeta import _checks, cli, io, stats
from negmeta.sinusoid import _kernel

DTYPES = ("float32", "float64")
REMAT = ("none", "step", "nested", "flat")
ESTIMATORS = ("protocol", "dense")

# Finn et al. 2017, Table 2 (Appendix C): MAML's 5-shot MSE after 1/5/10 steps
# of the model meta-trained with K = 10 (reference maml_variants.md §C.2).
FINN_TABLE2 = {1: 0.67, 5: 0.38, 10: 0.35}

# What defines the training and evaluation *problem*: a preset fixes them (a
# flag may not contradict them). The rest (iterations, seeds, test tasks,
# the sweep grids of sweep presets, batching) only changes how long or how
# precisely it is estimated; changes are recorded as `modified_from_preset`.
PROBLEM_FIELDS = ("meta_batch", "k_support", "k_query", "inner_steps",
                  "meta_lr", "first_order", "eval_shots", "eval_steps",
                  "test_points")
MAX_GRID = 1000


@dataclasses.dataclass(frozen=True)
class SinusoidConfig:
  """Meta-training on sinusoids over an α_t grid, evaluation over an α_r grid.

  Attributes:
    alpha_t: meta-training inner rates (signed grid).
    alpha_r: adaptation rates used at evaluation (signed grid).
    iterations: meta-training steps per member.
    meta_batch: tasks per meta-step.
    k_support, k_query: support / query points per training task.
    inner_steps: inner SGD steps during meta-training.
    meta_lr: Adam's learning rate β (β1 = 0.9, β2 = 0.999, ε = 1e-8).
    first_order: first-order MAML meta-gradient (default exact second order).
    seeds: independent seeds per grid value; seed values seed..seed+seeds−1.
    seed: the first seed.
    test_tasks: new tasks per seed for evaluation (Finn: 600).
    eval_shots: fine-tuning points per test task (Finn's Table 2: 5).
    eval_steps: fine-tuning SGD steps, all on the same points (Finn: 10).
    test_points: random held-out points per test task; 0 means as many as
      `eval_shots` (cbfinn/maml's test() splits 2K drawn points into K support
      and K held-out).
    dense_points: midpoint-grid points over [−5, 5] for the dense estimator
      (0 disables it).
    chunk_members: grid members per compiled call, each saved as a resumable
      chunk (0: all members in one call).
    remat: inner-loop rematerialization ("none", "step", "nested", "flat").
    dtype: float type of meta-training and evaluation.
  """
  alpha_t: tuple[float, ...] = (-0.01, 0.0, 0.01, 0.02)
  alpha_r: tuple[float, ...] = (0.01,)
  iterations: int = 1000
  meta_batch: int = 25
  k_support: int = 10
  k_query: int = 10
  inner_steps: int = 1
  meta_lr: float = 1e-3
  first_order: bool = False
  seeds: int = 2
  seed: int = 0
  test_tasks: int = 200
  eval_shots: int = 10
  eval_steps: int = 1
  test_points: int = 0
  dense_points: int = 100
  chunk_members: int = 0
  remat: str = "none"
  dtype: str = "float32"


grid = cli.linear_grid   # `num` evenly spaced values from `lo` to `hi`.

# Finn et al.'s setup (§5.1, Appendix B, cbfinn/maml): α = 0.01, K = 10
# support + 10 query points, one inner step, Adam 1e-3, meta-batch 25,
# 70 000 iterations, un-halved MSE, second order.
_FINN = dict(meta_batch=25, k_support=10, k_query=10, inner_steps=1,
             meta_lr=1e-3, first_order=False)
# The signed α_t grid of the sweeps, scaled to the curvature of the inner
# problem (BUILD_NOTES.md §6): the 10-point support-loss Hessian of the model
# pretrained with α_t = 0 has λ_max ≈ 54 (median over tasks), so 2/λ_max ≈
# 0.037; the grid spans about ±2.7/λ_max, finer near 0. (MAML with α_t > 0
# reshapes the curvature to α_t·λ_max ≈ 1.7-1.9.)
SWEEP_ALPHA_T = (-0.05, -0.03, -0.02, -0.01, -0.005, 0.0, 0.005, 0.01, 0.015,
                 0.02, 0.03, 0.05)
SWEEP_ALPHA_R = grid(-0.02, 0.08, 11)

PRESETS: dict[str, dict[str, Any]] = {
    # Table 2: the 10-shot-trained model fine-tuned on 5 points for 10 steps
    # at α = 0.01; 600 test tasks per seed.
    "finn_table2": dict(_FINN, alpha_t=(0.01,), alpha_r=(0.01,),
                        iterations=70_000, seeds=5, test_tasks=600,
                        eval_shots=5, eval_steps=10, test_points=0),
    # The same with α = 0.001, the default of cbfinn/maml's `update_lr` flag,
    # which the documented sinusoid command does not override (reference
    # §C.2); also evaluated at α_r = 0.01.
    "finn_table2_code": dict(_FINN, alpha_t=(0.001,), alpha_r=(0.001, 0.01),
                             iterations=70_000, seeds=5, test_tasks=600,
                             eval_shots=5, eval_steps=10, test_points=0),
    # α_t sweep at fixed α_r = 0.01, evaluated like training (10 shots, one
    # step); a few minutes on 2 CPU cores.
    "alpha_t_small": dict(_FINN, alpha_t=(-0.03, -0.01, 0.0, 0.01, 0.03),
                          alpha_r=(0.01,), iterations=3000, seeds=3,
                          test_tasks=600, eval_shots=10, eval_steps=1,
                          test_points=0),
    # (i) α_t sweep, α_r = 0.01 fixed.
    "alpha_t_sweep": dict(_FINN, alpha_t=SWEEP_ALPHA_T, alpha_r=(0.01,),
                          iterations=20_000, seeds=5, test_tasks=600,
                          eval_shots=10, eval_steps=1, test_points=0),
    # (ii) α_t sweep with α_r swept too (2-D evaluation of the same training).
    "alpha_t_alpha_r": dict(_FINN, alpha_t=SWEEP_ALPHA_T,
                            alpha_r=SWEEP_ALPHA_R, iterations=20_000, seeds=5,
                            test_tasks=600, eval_shots=10, eval_steps=1,
                            test_points=0),
}
# The α grids of finn_table2 are part of its problem; sweep grids may change.
_FIXED_GRIDS = {"finn_table2": ("alpha_t", "alpha_r"),
                "finn_table2_code": ("alpha_t", "alpha_r")}
# The presets that run for minutes save their members in chunks of this many by
# default, so an interrupted run resumes (capped at the number of members; an
# explicit chunk_members, 0 included, wins). Chunking costs no throughput here:
# finn_table2 at 12 000 iterations took 41.2 / 39.6 s in one call and 38.3 /
# 42.4 s one member per call (interleaved runs, 2 CPU cores).
DEFAULT_CHUNK_MEMBERS = {"finn_table2": 1, "finn_table2_code": 1,
                         "alpha_t_sweep": 12, "alpha_t_alpha_r": 12}


def preset(name: str, **overrides) -> SinusoidConfig:
  """The named preset, with non-problem fields optionally overridden.

  The presets that run for minutes (`DEFAULT_CHUNK_MEMBERS`) run their members
  in resumable chunks unless `chunk_members` is given (0: all in one call).

  Raises:
    ConfigError: unknown preset, or an override contradicting its problem.
  """
  fixed = PROBLEM_FIELDS + _FIXED_GRIDS.get(name, ())
  config = validate(SinusoidConfig(**_checks.preset_fields(name, PRESETS, overrides,
                                                           fixed)))
  if "chunk_members" not in overrides:
    config = dataclasses.replace(config, chunk_members=_default_chunk(name, config))
  return config


def _default_chunk(name: str, config: SinusoidConfig) -> int:
  """The preset's chunk_members when none is given (0: one call)."""
  if name not in DEFAULT_CHUNK_MEMBERS:
    return 0
  return min(DEFAULT_CHUNK_MEMBERS[name], config.seeds * len(config.alpha_t))


def validate(config: SinusoidConfig) -> SinusoidConfig:
  """Checks every field; returns the config with normalized types.

  Raises:
    ConfigError: naming the first invalid field and its allowed values.
  """
  c = config
  seeds = _checks.integer("seeds", c.seeds, minimum=1, maximum=10_000)
  alpha_t = _checks.real_grid("alpha_t", c.alpha_t, max_points=MAX_GRID,
                              max_abs=_checks.MAX_ABS_RATE)
  values = dict(
      alpha_t=alpha_t,
      alpha_r=_checks.real_grid("alpha_r", c.alpha_r, max_points=MAX_GRID,
                                max_abs=_checks.MAX_ABS_RATE),
      iterations=_checks.integer("iterations", c.iterations, maximum=10**8),
      meta_batch=_checks.integer("meta_batch", c.meta_batch, maximum=10**6),
      k_support=_checks.integer("k_support", c.k_support, maximum=10**5),
      k_query=_checks.integer("k_query", c.k_query, maximum=10**5),
      inner_steps=_checks.integer("inner_steps", c.inner_steps, maximum=1000),
      meta_lr=_checks.real("meta_lr", c.meta_lr, lo=0.0, lo_open=True,
                           hi=_checks.MAX_ABS_RATE),
      first_order=_boolean("first_order", c.first_order),
      seeds=seeds,
      seed=_checks.integer("seed", c.seed, minimum=0,   # seed + seeds − 1 < 2³¹
                           maximum=2**31 - seeds),
      test_tasks=_checks.integer("test_tasks", c.test_tasks, minimum=2,
                                 maximum=10**6),
      eval_shots=_checks.integer("eval_shots", c.eval_shots, maximum=10**5),
      eval_steps=_checks.integer("eval_steps", c.eval_steps, minimum=0,
                                 maximum=1000),
      test_points=_checks.integer("test_points", c.test_points, minimum=0,
                                  maximum=10**5),
      dense_points=_checks.integer("dense_points", c.dense_points, minimum=0,
                                   maximum=10**5),
      chunk_members=_checks.integer(
          "chunk_members", c.chunk_members, minimum=0, maximum=seeds * len(alpha_t)),
      remat=_checks.choice("remat", c.remat, REMAT),
      dtype=_checks.choice("dtype", c.dtype, DTYPES))
  return SinusoidConfig(**values)


def _boolean(name: str, value) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise _checks.ConfigError(name, f"must be true or false (got {value!r})")
  return bool(value)


def seed_values(config: SinusoidConfig) -> np.ndarray:
  """The seeds of the run, [S]: seed, seed+1, …, seed+seeds−1."""
  return config.seed + np.arange(config.seeds)


def test_points_of(config: SinusoidConfig) -> int:
  """Random held-out points per test task (0 in the config: eval_shots)."""
  return config.test_points or config.eval_shots


@dataclasses.dataclass(frozen=True)
class SinusoidResult:
  """Everything a run produced; `save` writes it, `summary_table` prints it.

  Axes: A = len(alpha_t), S = seeds, R = len(alpha_r), T = test_tasks,
  steps 0..eval_steps.

  Attributes:
    config: the validated config.
    preset: the preset name, or None.
    modified_from_preset: fields that differ from the preset's values.
    seeds: seed values, [S].
    query: protocol query MSE per task, [A, S, R, T, eval_steps+1].
    dense: dense-grid query MSE per task, same shape (last axis 0 if
      disabled).
    train_losses: meta-training loss per step, [A, S, iterations].
    diverged: meta-training diverged, [A, S] bool.
    diverged_step: step of divergence or −1, [A, S].
    params: final meta-parameters (flat), [A, S, P].
    seconds: wall time of training and evaluation (compilation included).
    compile_seconds: time to compile the kernel.
    resumed_chunks: chunks loaded from an interrupted run.
  """
  config: SinusoidConfig
  preset: str | None
  modified_from_preset: tuple[str, ...]
  seeds: np.ndarray
  query: np.ndarray
  dense: np.ndarray
  train_losses: np.ndarray
  diverged: np.ndarray
  diverged_step: np.ndarray
  params: np.ndarray
  seconds: float
  compile_seconds: float
  resumed_chunks: int

  @property
  def alpha_t(self) -> np.ndarray:
    return np.asarray(self.config.alpha_t)

  @property
  def alpha_r(self) -> np.ndarray:
    return np.asarray(self.config.alpha_r)

  def losses(self, estimator: str = "auto") -> np.ndarray:
    """Per-task losses [A, S, R, T, steps+1] of `estimator` ("auto": dense if any)."""
    return self.query if self._estimator(estimator) == "protocol" else self.dense

  def _estimator(self, estimator: str) -> str:
    if estimator == "auto":
      return "dense" if self.dense.shape[-1] else "protocol"
    _checks.choice("estimator", estimator, ESTIMATORS)
    if estimator == "dense" and not self.dense.shape[-1]:
      raise _checks.ConfigError("estimator", "dense losses were not computed "
                                "(dense_points=0)")
    return estimator

  def unraveled_params(self):
    """The final meta-parameters as MLP trees with leading [A, S] axes."""
    flat = self.params.reshape(-1, self.params.shape[-1])
    with jax.enable_x64(self.config.dtype == "float64"):
      tree = _kernel.unravel_params(flat, jnp.dtype(self.config.dtype))
      return jax.tree.map(lambda x: np.asarray(x).reshape(
          self.params.shape[:2] + x.shape[1:]), tree)


# ---------------------------------------------------------------------------
# Running.


def _eval_batch(config: SinusoidConfig, budget_bytes: float = 256e6) -> int:
  # Live evaluation memory per (member, α_r) pair: a few [T, points, 40]
  # activation arrays per step.
  points = config.eval_shots + test_points_of(config) + config.dense_points
  per_pair = 6 * 40 * config.test_tasks * points * np.dtype(config.dtype).itemsize
  return int(max(1, min(64, budget_bytes // per_pair)))


def _static_args(config: SinusoidConfig) -> dict[str, Any]:
  return dict(iterations=config.iterations, meta_batch=config.meta_batch,
              k_support=config.k_support, k_query=config.k_query,
              inner_steps=config.inner_steps, first_order=config.first_order,
              remat=config.remat, test_tasks=config.test_tasks,
              eval_shots=config.eval_shots, eval_steps=config.eval_steps,
              test_points=test_points_of(config),
              dense_points=config.dense_points,
              eval_batch=_eval_batch(config))


def _compiled_kernel(static: dict[str, Any], *args: jax.Array):
  """The compiled kernel for these static arguments and argument shapes.

  JAX caches the compilation (per jitted function, static arguments and
  argument shapes), so later runs with the same shapes, e.g. a sweep re-run
  with other grid values or seeds, reuse it and report ~0 s of compilation.
  """
  return _kernel.train_and_evaluate.lower(*args, **static).compile()


def run_identity(config: SinusoidConfig) -> dict[str, Any]:
  """What determines the per-member values (for matching resumable chunks)."""
  return io.config_identity(config)


def run(config: SinusoidConfig, *, preset_name: str | None = None,
        store_dir: str | None = None,
        log: Callable[[str], None] | None = None,
        mesh: jax.sharding.Mesh | None = None) -> SinusoidResult:
  """Meta-trains and evaluates the whole grid of `config`.

  Members (α_t, seed) run in one compiled call, or `chunk_members` at a time
  (the last chunk padded) with each finished chunk saved to `store_dir`, so a
  rerun with the same config resumes.

  Args:
    config: a SinusoidConfig (validated here).
    preset_name: the preset `config` came from, for the record.
    store_dir: directory for finished chunks (resumable runs).
    log: optional progress printer.
    mesh: optional 1-D device mesh (`negmeta.sharding.device_mesh`): each
      chunk's members, and their evaluation, are split over its devices.
      Same values as without.

  Returns:
    SinusoidResult.
  """
  config = validate(config)
  dtype = jnp.dtype(config.dtype)
  alpha_t_axis = np.asarray(config.alpha_t)
  seeds = seed_values(config)
  member_alpha, member_seed = (np.asarray(a) for a in np.meshgrid(
      alpha_t_axis, seeds, indexing="ij"))
  member_alpha, member_seed = member_alpha.reshape(-1), member_seed.reshape(-1)
  num_members = member_alpha.size
  chunk = config.chunk_members or num_members
  num_chunks = -(-num_members // chunk)
  store = (io.ChunkStore(store_dir, io.fingerprint(run_identity(config)))
           if store_dir is not None else None)
  static = dict(_static_args(config), mesh=mesh)
  start = time.perf_counter()
  compile_seconds, resumed, parts = 0.0, 0, []
  with jax.enable_x64(config.dtype == "float64"):
    alpha_r = jnp.asarray(config.alpha_r, dtype)
    meta_lr = jnp.asarray(config.meta_lr, dtype)
    compiled = None
    for c in range(num_chunks):
      saved = (store.load(c, fields=_kernel.GridOutputs._fields, leading=(chunk,))
               if store is not None else None)
      if saved is not None:
        parts.append(saved)
        resumed += 1
        if log:
          log(f"chunk {c + 1}/{num_chunks} loaded from {store_dir}")
        continue
      index = np.minimum(np.arange(c * chunk, (c + 1) * chunk), num_members - 1)
      a_t = jnp.asarray(member_alpha[index], dtype)
      s = jnp.asarray(member_seed[index], jnp.int32)
      if compiled is None:
        t0 = time.perf_counter()
        compiled = _compiled_kernel(static, a_t, s, alpha_r, meta_lr)
        compile_seconds = time.perf_counter() - t0
        if log:
          log(f"compiled in {compile_seconds:.1f} s; training {num_members} "
              f"members × {config.iterations} iterations"
              + (f" in {num_chunks} chunks" if num_chunks > 1 else ""))
      t0 = time.perf_counter()
      out = jax.device_get(compiled(a_t, s, alpha_r, meta_lr))
      arrays = {k: np.asarray(v) for k, v in out._asdict().items()}
      if store is not None:
        store.save(c, arrays)
      parts.append(arrays)
      if log:
        log(f"chunk {c + 1}/{num_chunks} done in {time.perf_counter() - t0:.1f} s")
  seconds = time.perf_counter() - start
  joined = {k: np.concatenate([p[k] for p in parts])[:num_members]
            for k in parts[0]}
  shape = (alpha_t_axis.size, seeds.size)
  per = {k: v.reshape(shape + v.shape[1:]) for k, v in joined.items()}
  # [A, S, R, T, steps] (R after S: one member's evaluations together).
  return SinusoidResult(
      config=config, preset=preset_name,
      modified_from_preset=_modified(config, preset_name), seeds=seeds,
      query=per["query"], dense=per["dense"],
      train_losses=per["train_losses"], diverged=per["diverged"].astype(bool),
      diverged_step=per["diverged_step"], params=per["params"],
      seconds=seconds, compile_seconds=compile_seconds,
      resumed_chunks=resumed)


def _modified(config: SinusoidConfig, preset_name: str | None) -> tuple[str, ...]:
  if preset_name is None:
    return ()
  base = validate(SinusoidConfig(**PRESETS[preset_name]))
  base = dataclasses.replace(base, chunk_members=_default_chunk(preset_name, config))
  return tuple(f.name for f in dataclasses.fields(config)
               if getattr(config, f.name) != getattr(base, f.name))


def reevaluate(result: SinusoidResult, alpha_r: Sequence[float], *,
               eval_shots: int | None = None, eval_steps: int | None = None
               ) -> SinusoidResult:
  """Evaluates the trained members of `result` at other adaptation rates.

  Uses the same test tasks (per seed) as the run; diverged members stay NaN.

  Args:
    result: a finished run.
    alpha_r: the new adaptation-rate grid.
    eval_shots, eval_steps: optionally a different fine-tuning protocol.

  Returns:
    A SinusoidResult with the new α_r grid (and protocol) and the same
    training outputs.
  """
  changes = {"alpha_r": tuple(alpha_r)}
  if eval_shots is not None:
    changes["eval_shots"] = eval_shots
  if eval_steps is not None:
    changes["eval_steps"] = eval_steps
  config = validate(dataclasses.replace(result.config, **changes))
  static = _static_args(config)
  dtype = jnp.dtype(config.dtype)
  a, s = result.params.shape[:2]
  with jax.enable_x64(config.dtype == "float64"):
    params = _kernel.unravel_params(result.params.reshape(a * s, -1), dtype)
    seeds = jnp.asarray(np.tile(result.seeds, a), jnp.int32)
    query, dense = jax.device_get(_kernel.evaluate_members_jit(
        params, seeds, jnp.asarray(config.alpha_r, dtype),
        **{k: static[k] for k in ("test_tasks", "eval_shots", "eval_steps",
                                  "test_points", "dense_points",
                                  "eval_batch")}))
  bad = result.diverged.reshape(-1)[:, None, None, None]
  query = np.where(bad, np.nan, query)
  dense = np.where(bad, np.nan, dense)
  return dataclasses.replace(
      result, config=config,
      modified_from_preset=_modified(config, result.preset),
      query=query.reshape((a, s) + query.shape[1:]),
      dense=dense.reshape((a, s) + dense.shape[1:]))


# ---------------------------------------------------------------------------
# Estimates.


@dataclasses.dataclass(frozen=True)
class CurveEstimate:
  """Loss estimates per (α_t, α_r, step), shapes [A, R, steps+1] unless noted.

  Attributes:
    seed_mean: mean over the T test tasks per seed, [A, S, R, steps+1]
      (non-finite if any task's loss is).
    seed_ci95: Finn's half-width 1.96·std/√T per seed, [A, S, R, steps+1].
    mean: mean of the finite per-seed means.
    se: standard error over seeds (NaN with one seed).
    n: seeds with a finite value.
    lo95, hi95: mean ∓ 1.96 se.
    tasks_ci95: Finn's half-width over all S·T tasks pooled (treats seeds'
      tasks as independent; ignores between-seed spread).
    nonfinite_tasks: tasks with a non-finite loss, summed over seeds.
    seed_unstable: tasks whose fine-tuning blew up at this step (loss
      non-finite or above UNSTABLE_FACTOR × the member's mean unadapted loss,
      i.e. worse than any unadapted prediction), per seed, [A, S, R, steps+1].
    seed_median: median over tasks per seed, [A, S, R, steps+1].
    median, median_se: mean ± s.e. over seeds of the per-seed medians.
    seed_stable_mean: mean over the tasks that are not unstable at this step,
      per seed, [A, S, R, steps+1] (biased low by construction: a diagnostic).
    stable_mean, stable_se: mean ± s.e. over seeds of seed_stable_mean.
  """
  seed_mean: np.ndarray
  seed_ci95: np.ndarray
  mean: np.ndarray
  se: np.ndarray
  n: np.ndarray
  lo95: np.ndarray
  hi95: np.ndarray
  tasks_ci95: np.ndarray
  nonfinite_tasks: np.ndarray
  seed_unstable: np.ndarray
  seed_median: np.ndarray
  median: np.ndarray
  median_se: np.ndarray
  seed_stable_mean: np.ndarray
  stable_mean: np.ndarray
  stable_se: np.ndarray


# A task's fine-tuning "blew up" at step k if its loss is non-finite or above
# this multiple of the mean unadapted (step-0) loss of the member's test tasks
# (≈ 3 for a trained model: predicting 0 costs A²/2 ≤ 12.5 on any task).
UNSTABLE_FACTOR = 5.0


def finn_ci95(task_losses: np.ndarray, axis: int = -1) -> np.ndarray:
  """Finn et al.'s 95% half-width: 1.96·std(ddof=0)/√T along `axis`."""
  x = np.asarray(task_losses, np.float64)
  with np.errstate(invalid="ignore"):
    return 1.96 * np.std(x, axis=axis) / np.sqrt(x.shape[axis])


def estimate(result: SinusoidResult, estimator: str = "auto") -> CurveEstimate:
  """Per-seed and pooled estimates of the test loss after each step."""
  losses = np.asarray(result.losses(estimator), np.float64)  # [A, S, R, T, K]
  with np.errstate(invalid="ignore", over="ignore"):
    seed_mean = losses.mean(axis=3)
    seed_ci = finn_ci95(losses, axis=3)
  mean, se, n = _over_seeds(seed_mean)
  pooled = np.moveaxis(losses, 1, 2).reshape(
      losses.shape[0], losses.shape[2], -1, losses.shape[4])   # [A, R, S·T, K]
  with np.errstate(invalid="ignore"):
    tasks_ci = finn_ci95(pooled, axis=2)
  with np.errstate(invalid="ignore", over="ignore"):
    unstable = ~np.isfinite(losses) | (
        losses > UNSTABLE_FACTOR * losses[..., :1].mean(axis=3, keepdims=True))
  stable = np.where(unstable, np.nan, losses)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)   # all-unstable slices
    seed_median = np.median(np.where(np.isnan(losses), np.inf, losses), axis=3)
    seed_stable = np.nanmean(stable, axis=3)
  median, median_se, _ = _over_seeds(seed_median)
  stable_mean, stable_se, _ = _over_seeds(seed_stable)
  return CurveEstimate(
      seed_mean=seed_mean, seed_ci95=seed_ci, mean=mean, se=se, n=n,
      lo95=mean - 1.96 * se, hi95=mean + 1.96 * se, tasks_ci95=tasks_ci,
      nonfinite_tasks=np.sum(~np.isfinite(losses), axis=(1, 3)),
      seed_unstable=unstable.sum(axis=3), seed_median=seed_median,
      median=median, median_se=median_se, seed_stable_mean=seed_stable,
      stable_mean=stable_mean, stable_se=stable_se)


def _over_seeds(per_seed: np.ndarray):
  """Mean, s.e., n over axis 1 (seeds) of [A, S, ...], via `stats.estimate`."""
  moved = np.moveaxis(per_seed, 1, 0)
  est = stats.estimate(moved.reshape(moved.shape[0], -1))
  return tuple(np.asarray(v).reshape(moved.shape[1:]) for v in est)


def finn_comparison(result: SinusoidResult) -> dict[str, Any] | None:
  """Table 2 check: our 5-shot losses vs Finn's 0.67 / 0.38 / 0.35.

  Applies to a member trained and evaluated at the same rate α_t = α_r (0.01,
  the paper's, if on the grid; else the first such pair) with 5 shots; None
  if there is none. Reports, for both estimators and each of steps 1, 5, 10
  (those ≤ eval_steps): the pooled mean and 95% interval, whether Finn's
  value lies inside it, robust statistics (median, blown-up fine-tuning runs,
  the mean without them), and per seed the mean, Finn's interval and whether
  Finn's value lies inside.
  """
  c = result.config
  matched = [(i, j) for i, t in enumerate(result.alpha_t)
             for j, r in enumerate(result.alpha_r) if np.isclose(t, r)]
  if c.eval_shots != 5 or not matched:
    return None
  paper = [(i, j) for i, j in matched if np.isclose(result.alpha_t[i], 0.01)]
  i, j = (paper or matched)[0]
  alpha = float(result.alpha_t[i])
  out: dict[str, Any] = {
      "alpha_t": alpha, "alpha_r": alpha, "eval_shots": 5,
      "finn_setup": (c.iterations == 70_000 and all(
          getattr(c, k) == v for k, v in _FINN.items())),
      "paper_alpha": bool(np.isclose(alpha, 0.01)),
      "reference": {str(k): v for k, v in FINN_TABLE2.items()}}
  for name in ESTIMATORS:
    if name == "dense" and not result.dense.shape[-1]:
      continue
    e = estimate(result, name)
    rows = {}
    for step, ref in FINN_TABLE2.items():
      if step > c.eval_steps:
        continue
      m, se = float(e.mean[i, j, step]), float(e.se[i, j, step])
      lo, hi = float(e.lo95[i, j, step]), float(e.hi95[i, j, step])
      seeds = []
      for s, seed in enumerate(result.seeds):
        sm = float(e.seed_mean[i, s, j, step])
        ci = float(e.seed_ci95[i, s, j, step])
        seeds.append({"seed": int(seed), "mean": sm, "ci95_halfwidth": ci,
                      "finn_inside": bool(abs(sm - ref) <= ci),
                      "median": float(e.seed_median[i, s, j, step]),
                      "unstable_tasks": int(e.seed_unstable[i, s, j, step]),
                      "stable_mean": float(e.seed_stable_mean[i, s, j, step])})
      rows[str(step)] = {
          "finn": ref, "mean": m, "se": se, "ci95": [lo, hi],
          "finite_seeds": int(e.n[i, j, step]),
          "finn_inside_pooled_ci95": bool(lo <= ref <= hi),
          # The mean is Finn's statistic, but a few blown-up fine-tuning runs
          # (or non-finite seeds) dominate it; then "inside" says little.
          "blowups_affect_mean": bool(
              e.n[i, j, step] < result.seeds.size
              or e.seed_unstable[i, :, j, step].sum() > 0),
          "pooled_tasks_ci95_halfwidth": float(e.tasks_ci95[i, j, step]),
          "seeds_with_finn_inside": sum(r["finn_inside"] for r in seeds),
          "unstable_tasks": int(e.seed_unstable[i, :, j, step].sum()),
          "median": float(e.median[i, j, step]),
          "median_se": float(e.median_se[i, j, step]),
          "stable_mean": float(e.stable_mean[i, j, step]),
          "stable_se": float(e.stable_se[i, j, step]),
          "per_seed": seeds}
    out[name] = rows
  return out


def optimum(result: SinusoidResult, estimator: str = "auto"
            ) -> dict[str, Any] | None:
  """The best α_t at each α_r (loss after `eval_steps` steps), with uncertainty.

  For each α_r: the α_t minimizing the pooled mean; the mean ± s.e. over
  seeds of each seed's own argmin; and paired (by seed) differences of the
  loss at the pooled argmin to the loss at α_t = 0 and at α_t = α_r, where
  those are on the grid. Also the best α_r for each α_t when α_r is swept.
  None when the α_t grid has a single value and α_r too.
  """
  a_t, a_r = result.alpha_t, result.alpha_r
  if a_t.size < 2 and a_r.size < 2:
    return None
  name = result._estimator(estimator)
  e = estimate(result, name)
  last = result.config.eval_steps
  out: dict[str, Any] = {"estimator": name, "step": last, "per_alpha_r": []}
  for j, r in enumerate(a_r):
    curve = e.mean[:, j, last]
    if a_t.size < 2 or not np.any(np.isfinite(curve)):
      continue
    i = int(np.nanargmin(curve))
    per_seed = e.seed_mean[:, :, j, last]                      # [A, S]
    ok = np.any(np.isfinite(per_seed), axis=0)
    argmins = np.array([a_t[int(np.nanargmin(per_seed[:, s]))]
                        for s in np.flatnonzero(ok)])
    refined = np.array([_refined_argmin(a_t, per_seed[:, s])
                        for s in np.flatnonzero(ok)])
    entry = {"alpha_r": float(r), "argmin_alpha_t": float(a_t[i]),
             "min": float(curve[i]), "min_se": float(e.se[i, j, last]),
             "refined_argmin_alpha_t": _refined_argmin(a_t, curve),
             "seed_argmins": argmins.tolist(),
             "seed_refined_argmins": refined.tolist()}
    for name_, values in (("seed_argmin", argmins),
                          ("seed_refined_argmin", refined)):
      entry[f"{name_}_mean"] = float(values.mean()) if values.size else None
      entry[f"{name_}_se"] = (float(values.std(ddof=1) / np.sqrt(values.size))
                              if values.size > 1 else None)
    for label, target in (("zero", 0.0), ("matched", float(r))):
      k = np.flatnonzero(np.isclose(a_t, target))
      if k.size and result.seeds.size > 1:
        diff, se = stats.paired_difference(per_seed.T, i, int(k[0]))
        entry[f"min_minus_at_{label}"] = diff
        entry[f"min_minus_at_{label}_se"] = se
    out["per_alpha_r"].append(entry)
  if a_r.size > 1:
    best = []
    for i, t in enumerate(a_t):
      curve = e.mean[i, :, last]
      if np.any(np.isfinite(curve)):
        j = int(np.nanargmin(curve))
        best.append({"alpha_t": float(t), "argmin_alpha_r": float(a_r[j]),
                     "min": float(curve[j]), "min_se": float(e.se[i, j, last])})
    out["best_alpha_r"] = best
    finite = np.where(np.isfinite(e.mean[:, :, last]), e.mean[:, :, last],
                      np.inf)
    i, j = np.unravel_index(int(np.argmin(finite)), finite.shape)
    out["joint_argmin"] = {"alpha_t": float(a_t[i]), "alpha_r": float(a_r[j]),
                           "min": float(e.mean[i, j, last]),
                           "min_se": float(e.se[i, j, last])}
  return out


def _refined_argmin(x: np.ndarray, y: np.ndarray) -> float:
  """Grid argmin refined by the vertex of the parabola through it and its neighbours.

  At a grid edge, or when the three points are not convex, the grid argmin.
  """
  finite = np.isfinite(y)
  if not np.any(finite):
    return float("nan")
  i = int(np.nanargmin(np.where(finite, y, np.nan)))
  if i == 0 or i == len(x) - 1 or not np.all(finite[i - 1:i + 2]):
    return float(x[i])
  (x0, x1, x2), (y0, y1, y2) = x[i - 1:i + 2], y[i - 1:i + 2]
  d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
  curvature = (d12 - d01) / (x2 - x0)
  if not curvature > 0:
    return float(x1)
  vertex = 0.5 * (x0 + x1) - d01 / (2 * curvature)
  return float(np.clip(vertex, x0, x2))


# ---------------------------------------------------------------------------
# Records, tables, files.


def _curve_record(e: CurveEstimate, i: int, j: int, seeds: np.ndarray
                  ) -> list[dict[str, Any]]:
  rows = []
  for k in range(e.mean.shape[-1]):
    rows.append({
        "step": k, "mean": float(e.mean[i, j, k]), "se": float(e.se[i, j, k]),
        "ci95": [float(e.lo95[i, j, k]), float(e.hi95[i, j, k])],
        "seeds": int(e.n[i, j, k]),
        "pooled_tasks_ci95_halfwidth": float(e.tasks_ci95[i, j, k]),
        "nonfinite_tasks": int(e.nonfinite_tasks[i, j, k]),
        "per_seed_mean": [float(v) for v in e.seed_mean[i, :, j, k]],
        "per_seed_ci95_halfwidth": [float(v) for v in e.seed_ci95[i, :, j, k]],
        "unstable_tasks": int(e.seed_unstable[i, :, j, k].sum()),
        "median": float(e.median[i, j, k]),
        "median_se": float(e.median_se[i, j, k]),
        "stable_mean": float(e.stable_mean[i, j, k]),
        "stable_se": float(e.stable_se[i, j, k]),
    })
  return rows


def record(result: SinusoidResult) -> dict[str, Any]:
  """The JSON record: config, seeds, versions, and per grid value results."""
  c = result.config
  ests = {name: estimate(result, name) for name in ESTIMATORS
          if name == "protocol" or result.dense.shape[-1]}
  per_grid = []
  for i, t in enumerate(result.alpha_t):
    diverged = result.diverged[i]
    tail = _tail_loss(result.train_losses[i])
    for j, r in enumerate(result.alpha_r):
      entry = {
          "alpha_t": float(t), "alpha_r": float(r),
          "diverged_seeds": [int(s) for s in result.seeds[diverged]],
          "diverged_steps": [int(v) for v in result.diverged_step[i][diverged]],
          "final_train_loss_per_seed": [float(v) for v in tail],
      }
      for name, e in ests.items():
        entry[name] = _curve_record(e, i, j, result.seeds)
      per_grid.append(entry)
  return {
      "experiment": "sinusoid",
      "preset": result.preset,
      "modified_from_preset": list(result.modified_from_preset),
      "config": dataclasses.asdict(c),
      "test_points_used": test_points_of(c),
      "seeds": {"values": [int(s) for s in result.seeds],
                "member_keys": "jax.random.key(seed) split into (init, task "
                               "stream); members with one seed share both",
                "eval_keys": f"jax.random.fold_in(jax.random.key(seed), "
                             f"{_kernel.EVAL_STREAM}) (test tasks shared by "
                             "all grid values of a seed)"},
      "protocol": {
          "model": "1-40-40-1 ReLU MLP, weights truncated normal std 0.01, "
                   "biases 0 (cbfinn/maml)",
          "optimizer": "Adam(β, b1=0.9, b2=0.999, eps=1e-8), optax",
          "loss": "un-halved MSE",
          "evaluation": f"fine-tune each of {c.test_tasks} test tasks per seed "
                        f"on the same {c.eval_shots} points for "
                        f"{c.eval_steps} SGD steps at α_r; MSE on "
                        f"{test_points_of(c)} random held-out points "
                        f"(protocol) and on a {c.dense_points}-point midpoint "
                        "grid over [-5, 5] (dense)",
          "uncertainty": "per seed: 1.96·std/√T over tasks (Finn); pooled: "
                         "mean ± s.e. over seeds, 95% = ±1.96 s.e.",
      },
      "runtime": io.runtime_record(),
      "seconds": result.seconds,
      "compile_seconds": result.compile_seconds,
      "resumed_chunks": result.resumed_chunks,
      "diverged_members": int(result.diverged.sum()),
      "finn_table2": finn_comparison(result),
      "optimum": optimum(result),
      "grid": per_grid,
  }


def _tail_loss(train_losses: np.ndarray) -> np.ndarray:
  """Mean meta-training loss over the last 5% of steps (≥ 1), per seed."""
  n = max(1, train_losses.shape[-1] // 20)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN: diverged early
    return np.nanmean(train_losses[..., -n:], axis=-1)


def summary_table(result: SinusoidResult, max_rows: int = 40) -> str:
  """A short text table of the key numbers."""
  c = result.config
  name = result._estimator("auto")
  e = estimate(result, name)
  last = c.eval_steps
  lines = [f"sinusoid MAML: {len(c.alpha_t)} α_t × {len(c.alpha_r)} α_r × "
           f"{c.seeds} seeds, {c.iterations} iterations, meta-batch "
           f"{c.meta_batch}, K={c.k_support}, {c.inner_steps} inner step(s); "
           f"eval {c.test_tasks} tasks, {c.eval_shots} shots, {c.eval_steps} "
           f"steps ({result.seconds:.0f} s, compile {result.compile_seconds:.0f} s)"]
  comp = finn_comparison(result)
  if comp is not None:
    lines.append(f"Table 2 (5 shots, α_t = α_r = {comp['alpha_t']:g}): ours "
                 "(mean ± s.e. over seeds [95% CI]) vs Finn"
                 + ("" if comp["finn_setup"] else "  [NOT Finn's training setup]"))
    for est_name in ESTIMATORS:
      for step, row in comp.get(est_name, {}).items():
        inside = "inside" if row["finn_inside_pooled_ci95"] else "OUTSIDE"
        if row["blowups_affect_mean"]:
          inside += " (mean dominated by blown-up tasks)"
        lines.append(
            f"  {est_name:8s} step {step:>2s}: {_num(row['mean'])} ± "
            f"{_num(row['se'])} [{_num(row['ci95'][0])}, {_num(row['ci95'][1])}]"
            f" ({row['finite_seeds']}/{len(row['per_seed'])} seeds finite)"
            f"  Finn {row['finn']:.2f} {inside}; Finn inside own CI for "
            f"{row['seeds_with_finn_inside']}/{len(row['per_seed'])} seeds")
        lines.append(
            f"  {'':8s}          per seed "
            + " ".join(_num(r["mean"]) for r in row["per_seed"])
            + f"; median {row['median']:.3f} ± {row['median_se']:.3f}; "
            f"{row['unstable_tasks']} blown-up tasks; mean without them "
            f"{row['stable_mean']:.3f} ± {row['stable_se']:.3f}")
  lines.append(f"{'α_t':>8} {'α_r':>8} {'step 0':>16} {f'step {last}':>16} "
               f"{'diverged':>9}  ({name} estimator, mean ± s.e. over seeds)")
  pairs = [(i, j) for i in range(len(c.alpha_t)) for j in range(len(c.alpha_r))]
  if len(pairs) > max_rows:
    j0 = np.flatnonzero(np.isclose(result.alpha_r, 0.01))
    keep = int(j0[0]) if j0.size else 0
    pairs = [(i, keep) for i in range(len(c.alpha_t))]
    lines.append(f"  (showing α_r = {result.alpha_r[keep]:g} only; all in results.json)")
  for i, j in pairs:
    cells = [(f"{e.mean[i, j, k]:9.4f} ± {e.se[i, j, k]:.4f}"
              if abs(e.mean[i, j, k]) < 1e4 else
              f"{e.mean[i, j, k]:.2e} ± {e.se[i, j, k]:.1e}")
             if np.isfinite(e.mean[i, j, k]) else f"{'—':>16}" for k in (0, last)]
    div = int(result.diverged[i].sum())
    lines.append(f"{result.alpha_t[i]:8.4f} {result.alpha_r[j]:8.4f} "
                 f"{cells[0]:>16} {cells[1]:>16} "
                 f"{(f'{div}/{c.seeds}') if div else '':>9}")
  o = optimum(result)
  if o is not None:
    for entry in o["per_alpha_r"]:
      msg = (f"α_r = {entry['alpha_r']:g}: best α_t = {entry['argmin_alpha_t']:g} "
             f"(L = {entry['min']:.4f} ± {entry['min_se']:.4f})")
      if entry.get("seed_argmin_se") is not None:
        msg += (f"; per-seed argmin {entry['seed_argmin_mean']:.4f} ± "
                f"{entry['seed_argmin_se']:.4f}, parabola-refined "
                f"{entry['seed_refined_argmin_mean']:.4f} ± "
                f"{entry['seed_refined_argmin_se']:.4f}")
      for label in ("zero", "matched"):
        if f"min_minus_at_{label}" in entry:
          msg += (f"; L − L(α_t={'0' if label == 'zero' else 'α_r'}) = "
                  f"{entry[f'min_minus_at_{label}']:.4f} ± "
                  f"{entry[f'min_minus_at_{label}_se']:.4f}")
      lines.append(msg)
    if "joint_argmin" in o:
      jm = o["joint_argmin"]
      lines.append(f"joint best (α_t, α_r) = ({jm['alpha_t']:g}, "
                   f"{jm['alpha_r']:g}): L = {jm['min']:.4f} ± {jm['min_se']:.4f}")
  return "\n".join(lines)


def _num(x: float) -> str:
  """Compact number: 3 decimals, or scientific when huge or non-finite."""
  if not np.isfinite(x):
    return str(x)
  return f"{x:.3f}" if abs(x) < 1e4 else f"{x:.2e}"


def save(result: SinusoidResult, workdir: str) -> dict[str, str]:
  """Writes results.json, runs.npz and the PNGs atomically into `workdir`.

  Returns:
    Paths written, by kind.
  """
  from negmeta.sinusoid import plots  # local: matplotlib only when saving.
  workdir = io.prepare_workdir(workdir)
  paths = {"json": os.path.join(workdir, "results.json"),
           "npz": os.path.join(workdir, "runs.npz")}
  arrays = dict(alpha_t=result.alpha_t, alpha_r=result.alpha_r, seeds=result.seeds,
                query=result.query, dense=result.dense,
                train_losses=result.train_losses, diverged=result.diverged,
                diverged_step=result.diverged_step, params=result.params)
  figures = {"curve_png": ("learning_curve.png", plots.learning_curve_figure),
             "train_png": ("meta_training.png", plots.training_figure)}
  if len(result.config.alpha_t) > 1:
    figures["sweep_png"] = ("alpha_t_sweep.png", plots.sweep_figure)
  if len(result.config.alpha_r) > 1:
    figures["alpha_r_png"] = ("alpha_t_alpha_r.png", plots.heatmap_figure)
  for kind, (filename, _) in figures.items():
    paths[kind] = os.path.join(workdir, filename)
  io.write_results(paths["json"], record(result), paths["npz"], arrays,
                   {paths[kind]: make(result) for kind, (_, make) in figures.items()})
  return paths


def load(workdir: str) -> SinusoidResult:
  """Reads back a run written by `save` (results.json + runs.npz).

  The loaded result supports everything a fresh one does (tables, records,
  figures, `reevaluate` at other adaptation rates).
  """
  import json  # local: only for loading.
  with open(os.path.join(workdir, "results.json")) as f:
    rec = json.load(f)
  with np.load(os.path.join(workdir, "runs.npz")) as data:
    arrays = {k: data[k] for k in data.files}
  fields = {f.name for f in dataclasses.fields(SinusoidConfig)}
  config = {k: v for k, v in rec["config"].items() if k in fields}
  for k in ("alpha_t", "alpha_r"):
    config[k] = tuple(config[k])
  return SinusoidResult(
      config=validate(SinusoidConfig(**config)), preset=rec.get("preset"),
      modified_from_preset=tuple(rec.get("modified_from_preset", ())),
      seeds=arrays["seeds"], query=arrays["query"], dense=arrays["dense"],
      train_losses=arrays["train_losses"],
      diverged=arrays["diverged"].astype(bool),
      diverged_step=arrays["diverged_step"], params=arrays["params"],
      seconds=float(rec.get("seconds") or 0.0),
      compile_seconds=float(rec.get("compile_seconds") or 0.0),
      resumed_chunks=int(rec.get("resumed_chunks") or 0))

