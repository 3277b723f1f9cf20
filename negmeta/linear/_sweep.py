"""Learning-rate sweeps of linear MAML in one compiled call.

A sweep evaluates a grid of (α_t, α_r) pairs on R independent runs. A run is one
draw of the m meta-training tasks, the exact ω*(α_t) for every grid value, and
its evaluation on `test_tasks` new tasks. Every grid value of a run sees the same
data (common random numbers), so differences along the grid are smooth and
paired comparisons are precise. Run r's randomness is `fold_in(key(seed), r)`,
independent of how runs are batched, chunked or sharded.

The kernel `simulate_batches` is jitted once per problem shape: grid values, σ,
ν, w_0, ω_0 and the keys are array arguments. Runs are vmapped in batches of B,
which bounds memory, and a `lax.map` runs the batches of a chunk one after
another inside the call; the driver `run_sweep` makes one call per chunk (one
call per sweep unless it saves chunks to resume from), every chunk padded to
the same size so that all of them reuse the one compiled kernel.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from negmeta import io, problems, sharding, stats
from negmeta.linear import _maml, _sampler


class RunValues(NamedTuple):
  """Per-run, per-grid-value results (arrays [..., G]).

  Attributes:
    distance: ‖ω* − w_0‖².
    exact_loss: test loss of ω* exactly in expectation over test tasks and data.
    protocol_loss: the paper's protocol: mean over `test_tasks` tasks × points.
    rcond: Cholesky pivot ratio of the meta-regression Gram matrix (≥ 1/cond).
    inner_gap: min over tasks and eigenvalues of |1 − α_t λ(H_t)|.
    conditional_distance: E[‖ω* − w_0‖² | meta-training inputs]; NaN where not
      computed.
    conditional_loss: test loss exactly in expectation over the test data *and*
      over the meta-training task vectors and label noise, given the
      meta-training inputs (a Rao-Blackwellized, lower-variance estimator with
      the same mean as exact_loss); NaN where not computed.
  """
  distance: jax.Array
  exact_loss: jax.Array
  protocol_loss: jax.Array
  rcond: jax.Array
  inner_gap: jax.Array
  conditional_distance: jax.Array
  conditional_loss: jax.Array


def simulate_run(key: jax.Array, problem: problems.MixedLinearRegression,
                 alpha_t: jax.Array, alpha_r: jax.Array, *, test_tasks: int,
                 test_points: int, conditional: bool = False,
                 plan: _maml.ProtocolPlan | None = None) -> RunValues:
  """One run for a whole grid: meta-train at every α_t, evaluate with α_r.

  Args:
    key: the run's PRNG key.
    problem: the specification.
    alpha_t: [G]. alpha_r: [G].
    test_tasks: number of new tasks evaluated (static).
    test_points: test points per new task (static).
    conditional: also compute `conditional_loss` (static; costs one extra
      min(N, p)-sized solve with N right-hand sides per grid value).
    plan: which rates vary along the grid (static, see `protocol_plan`). When
      given and it reduces the work, the protocol estimator draws the new
      tasks' adaptation and test data only through their sufficient
      statistics (`_maml.protocol_test_loss_reduced`: same distribution, far
      fewer draws); None: the direct protocol with every data point drawn.

  Returns:
    RunValues of shape [G] each.
  """
  k_train, k_test = jax.random.split(key)
  train = _sampler.sample_meta_training(k_train, problem)
  design = _maml.meta_design(train)
  solution = _maml.meta_solution_path(design, problem.omega0, alpha_t)
  if plan is not None and plan.reduces(problem.p, problem.num_validation):
    span = _maml.omega_span(design, solution, problem.omega0, alpha_t, plan)
    protocol = _maml.protocol_test_loss_reduced(
        k_test, *span, problem, alpha_r, test_tasks, test_points, plan)
  else:
    test = _sampler.sample_meta_test(k_test, problem, test_tasks, test_points)
    protocol = _maml.protocol_test_loss(solution.omega, test, alpha_r)
  gap = _maml.inner_step_gap(train, alpha_t)
  if conditional:
    # With α_t fixed along the grid, E[D | inputs] is one number per run.
    distinct = alpha_t[:1] if plan is not None and not plan.vary_t else alpha_t
    cond = jnp.broadcast_to(_maml.expected_distance_given_inputs(
        train, problem, distinct), alpha_t.shape)
  else:
    cond = jnp.full_like(alpha_t, jnp.nan)
  return RunValues(
      distance=jnp.sum((solution.omega - problem.w0) ** 2, axis=-1),
      exact_loss=_maml.exact_test_loss(solution.omega, problem, alpha_r),
      protocol_loss=protocol,
      rcond=solution.rcond,
      inner_gap=gap,
      conditional_distance=cond,
      conditional_loss=_maml.exact_test_loss_given_distance(cond, problem, alpha_r))


def _simulate_chunk(keys, problem, alpha_t, alpha_r, test_tasks, test_points,
                    conditional=False, plan=None):
  run = functools.partial(simulate_run, problem=problem, alpha_t=alpha_t,
                          alpha_r=alpha_r, test_tasks=test_tasks,
                          test_points=test_points, conditional=conditional, plan=plan)
  return jax.vmap(run)(keys)


def _simulate_batches(keys, problem, alpha_t, alpha_r, test_tasks, test_points,
                      conditional=False, plan=None):
  batch = functools.partial(_simulate_chunk, problem=problem, alpha_t=alpha_t,
                            alpha_r=alpha_r, test_tasks=test_tasks,
                            test_points=test_points, conditional=conditional, plan=plan)
  return jax.lax.map(batch, keys)


STATIC_ARGNAMES = ("test_tasks", "test_points", "conditional", "plan")
simulate_batches: Callable[..., RunValues] = jax.jit(
    _simulate_batches, static_argnames=STATIC_ARGNAMES)
simulate_batches.__doc__ = """Runs keys [n, B] → RunValues [n, B, G]: n batches, one after another.

Jitted; the B runs of a batch are vmapped and a `lax.map` runs the n batches in
sequence (memory of one batch). Arguments as `simulate_chunk`. The kernel has
no LAPACK calls (BUILD_NOTES.md §4), so sharding the B axis over CPU devices
cannot deadlock.
"""
simulate_chunk: Callable[..., RunValues] = jax.jit(
    _simulate_chunk, static_argnames=STATIC_ARGNAMES)
simulate_chunk.__doc__ = """Runs keys [B] → RunValues [B, G] (jitted; the B runs are vmapped).

Args:
  keys: typed PRNG keys, [B].
  problem: MixedLinearRegression.
  alpha_t, alpha_r: grid, [G] each.
  test_tasks, test_points: static evaluation sizes.
  conditional: also compute RunValues.conditional_loss (static).
  plan: optional static ProtocolPlan (see `simulate_run`, `protocol_plan`).
"""


@jax.jit
def _expected_distances(keys, problem, alpha_t):
  def one(key):   # the meta-training draw of `simulate_run`
    train = _sampler.sample_meta_training(jax.random.split(key)[0], problem)
    return _maml.expected_distance_given_inputs(train, problem, alpha_t)
  return jax.lax.map(jax.vmap(one), keys)      # keys [n, B]: n batches in sequence


def expected_distances(problem: problems.MixedLinearRegression, alpha_t, *,
                       runs: int, seed: int = 0, batch_size: int = 64) -> np.ndarray:
  """E[‖ω* − w_0‖² | inputs] for each run and α_t: a low-variance estimator of D.

  Uses the same meta-training draws as `run_sweep` with the same seed, so the
  values pair run by run with `RunValues.distance`.

  Args:
    problem: the specification.
    alpha_t: grid, [G].
    runs, seed: as in `run_sweep`.
    batch_size: runs vmapped together.

  Returns:
    NumPy array [R, G].
  """
  alpha_t = jnp.atleast_1d(jnp.asarray(alpha_t, problem.w0.dtype))
  b = min(batch_size, runs)
  n = math.ceil(runs / b)
  out = _expected_distances(run_keys(seed, 0, n * b).reshape(n, b), problem, alpha_t)
  return np.asarray(out).reshape(n * b, -1)[:runs]


def run_keys(seed: int, start: int, count: int) -> jax.Array:
  """Keys of runs start..start+count−1: fold_in(key(seed), r). Shape [count]."""
  base = jax.random.key(seed)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
      base, jnp.arange(start, start + count, dtype=jnp.uint32))


def runs_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh named "runs" over `devices` (default: all), with Auto sharding.

  Auto (GSPMD) axes let XLA propagate the run sharding through the kernel; the
  sweep shards each batch of vmapped runs over the mesh
  (`negmeta.sharding.device_mesh` with the axis named "runs").
  """
  return sharding.device_mesh(devices, axis_name="runs")


def default_batch_size(problem: problems.MixedLinearRegression, grid_size: int,
                       test_tasks: int, test_points: int,
                       budget_bytes: float = 256e6) -> int:
  """Runs vmapped together so that one batch's largest buffers fit `budget_bytes`.

  Counts the buffers of the direct protocol (every test point drawn), which
  the reduced protocol's are far below. XLA's measured temporary memory of a
  batch is 0.7-1.4× the budget for the direct protocol and 0.2-0.5× for the
  reduced one (BUILD_NOTES.md §3.5).
  """
  p, n = problem.p, problem.num_validation
  floats = (grid_size * test_tasks * (problem.n_r + test_points + 2 * p)
            + test_tasks * (problem.n_r + test_points) * p
            + problem.m * (problem.n_t + problem.n_v) * p
            + grid_size * (min(n, p) ** 2 + p) + problem.m * p * p)
  return max(1, int(budget_bytes // (8 * floats)))


def protocol_plan(alpha_t, alpha_r) -> _maml.ProtocolPlan:
  """The static structure of a grid: which of α_t, α_r vary along it."""
  at, ar = np.broadcast_arrays(np.atleast_1d(np.asarray(alpha_t)),
                               np.atleast_1d(np.asarray(alpha_r)))
  return _maml.ProtocolPlan(vary_t=bool(np.any(at != at[0])),
                            vary_r=bool(np.any(ar != ar[0])))


def _grid_arrays(alpha_t, alpha_r, dtype):
  at = jnp.atleast_1d(jnp.asarray(alpha_t, dtype))
  ar = jnp.atleast_1d(jnp.asarray(alpha_r, dtype))
  return jnp.broadcast_arrays(at, ar)


def run_sweep(problem: problems.MixedLinearRegression, alpha_t, alpha_r, *,
              runs: int, seed: int = 0, test_tasks: int = 100, test_points: int = 50,
              batch_size: int | None = None, chunk_runs: int | None = None,
              store: io.ChunkStore | None = None,
              mesh: jax.sharding.Mesh | None = None, conditional: bool = False,
              reduced_protocol: bool = True, on_chunk: Callable[[int, int, bool], None] | None = None
              ) -> RunValues:
  """Simulates `runs` runs on a grid of (α_t, α_r) pairs.

  Args:
    problem: the specification; its dtype is the simulation's dtype.
    alpha_t, alpha_r: grid values, broadcast against each other to [G].
    runs: R, number of independent runs.
    seed: base seed; run r uses fold_in(key(seed), r).
    test_tasks, test_points: evaluation protocol sizes.
    batch_size: runs vmapped together (default: from a 256 MB memory budget).
      With a mesh, it is rounded up to a multiple of the number of devices.
    chunk_runs: runs per compiled call and saved chunk (default: all runs),
      rounded up to a whole number of batches.
      Chunks are saved to `store` when given, and loaded from it on a rerun.
      The last chunk is padded to the full chunk size (its extra runs are
      computed and dropped) so that every chunk reuses the one compiled call.
    store: optional ChunkStore for resumable sweeps.
    mesh: optional mesh (see `runs_mesh`); the runs of each batch are sharded
      over its devices.
    conditional: also compute the conditional (Rao-Blackwellized) estimator.
    reduced_protocol: draw the protocol's adaptation and test data through
      their sufficient statistics where that is cheaper (same estimator
      distribution, far fewer draws; see `_maml.protocol_test_loss_reduced`).
      False: every adaptation and test point drawn in p dimensions.
    on_chunk: optional callback(index, total, loaded_from_store).

  Returns:
    RunValues of NumPy arrays [R, G].
  """
  plan = protocol_plan(alpha_t, alpha_r) if reduced_protocol else None
  alpha_t, alpha_r = _grid_arrays(alpha_t, alpha_r, problem.w0.dtype)
  grid_size = alpha_t.shape[0]
  b = batch_size or default_batch_size(problem, grid_size, test_tasks, test_points)
  b = min(b, runs)
  if mesh is not None:
    mesh = runs_mesh(mesh.devices.flat)     # Auto axes whatever the caller built
    b = math.ceil(b / mesh.size) * mesh.size
  chunk = chunk_runs or runs
  chunk = math.ceil(chunk / b) * b
  n_chunks = math.ceil(runs / chunk)
  sharding = (NamedSharding(mesh, PartitionSpec(None, mesh.axis_names[0]))
              if mesh is not None else None)
  parts = []
  for c in range(n_chunks):
    start = c * chunk
    valid = min(chunk, runs - start)
    saved = (store.load(c, fields=RunValues._fields, leading=(valid, grid_size))
             if store is not None else None)
    loaded = saved is not None
    if not loaded:
      # One compiled call per chunk: a lax.map over its batches of b runs.
      keys = run_keys(seed, start, chunk).reshape(chunk // b, b)
      if sharding is not None:
        keys = jax.device_put(keys, sharding)
      out = simulate_batches(keys, problem, alpha_t, alpha_r, test_tasks=test_tasks,
                             test_points=test_points, conditional=conditional, plan=plan)
      saved = {k: np.asarray(getattr(out, k)).reshape(chunk, grid_size)[:valid]
               for k in RunValues._fields}
      if store is not None:
        store.save(c, saved)
    if on_chunk is not None:
      on_chunk(c, n_chunks, loaded)
    parts.append(saved)
  return RunValues(**{k: np.concatenate([p[k] for p in parts]) for k in RunValues._fields})


# Re-exported for existing callers; the implementation lives in negmeta.stats.
Estimate = stats.Estimate
estimate = stats.estimate
paired_difference = stats.paired_difference
