"""Convergence maps: a grid of whole MAML outer-loop runs over (α, β) in one call.

`run_map` runs every cell (α_a, β_b) of an [A, B] grid as an independent
full-batch meta-training run from the same θ_0 on the same fixed task set: one
inner step of rate α (any sign), then the outer step θ ← θ − β g with the exact
second-order meta-gradient (MAML) or the first-order one (FOMAML). The grid is the
engine's `maml.meta_train_grid`, vmapped over all A·B cells; α, β, the data and θ_0
are array arguments, so one compiled function serves every grid of the same shape.
A diverging cell is frozen at its last finite state and marked (see
`maml.meta_train`); nothing reduces across cells, so it cannot change any other
cell's values.

Each cell is then classified by a `Criterion` on a scalar quantity q (the
meta-training loss, or the norm of the outer update direction g):

  diverged          a non-finite loss or state occurred, or q_T > q_0 (grew);
  converged         otherwise, if q_T < threshold (× q_0 when relative);
  not yet converged otherwise.

The agreement of an empirical map with a predicted one is the share of cells whose
classes are equal, counted over the cells farther than one grid step from the
predicted boundary: cells whose 3 × 3 neighbourhood in the grid (clipped at the
edges) all have the same predicted class.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from negmeta import _checks, io, maml, sharding

MAML = "maml"
FOMAML = "fomaml"
METHODS = (MAML, FOMAML)

CONVERGED = 0
NOT_YET_CONVERGED = 1
DIVERGED = 2
CLASS_NAMES = ("converged", "not_yet_converged", "diverged")

LOSS = "loss"
UPDATE_NORM = "update_norm"
QUANTITIES = (LOSS, UPDATE_NORM)


@dataclasses.dataclass(frozen=True)
class Criterion:
  """How a finished run is classified (see the module docstring).

  Attributes:
    quantity: "loss" (the meta-training loss, i.e. the mean query loss after the
      inner step, on the full task set) or "update_norm" (‖g‖₂, g the outer
      update direction: the exact meta-gradient for MAML, the first-order one
      for FOMAML; it vanishes exactly at the method's fixed point).
    threshold: converged iff q_T < threshold (absolute) or < threshold·q_0.
    relative: whether the threshold is relative to q_0.
  """
  quantity: str = LOSS
  threshold: float = 1e-2
  relative: bool = False

  def describe(self) -> dict[str, str]:
    """The criterion in words, for results.json."""
    name = ("meta-training loss L (mean over tasks of the query MSE after one "
            "inner step, full batch)" if self.quantity == LOSS else
            "‖g‖₂, the norm of the outer update direction (exact meta-gradient "
            "for MAML, first-order meta-gradient for FOMAML)")
    sym = "L" if self.quantity == LOSS else "‖g‖"
    bound = (f"{self.threshold:g}·{sym}_0" if self.relative else f"{self.threshold:g}")
    return {
        "quantity": name,
        "diverged": f"a non-finite loss or parameter occurred during the run, or "
                    f"{sym}_T > {sym}_0 (it grew)",
        "converged": f"not diverged and {sym}_T < {bound}",
        "not_yet_converged": "neither (finite, not grown, above the threshold)",
        "where": f"{sym}_0 at the initial point θ_0, {sym}_T after the last "
                 "outer step",
    }


class MapRuns(NamedTuple):
  """Per-cell outcome of `run_map` (leading [A, B] axes on every leaf).

  Attributes:
    final_loss: meta-training loss after the last step; NaN for cells that
      produced a non-finite value, [A, B].
    initial_loss: meta-training loss at θ_0 (depends on α), [A, B].
    final_update_norm: ‖g(θ_T)‖₂; NaN where non-finite, [A, B].
    initial_update_norm: ‖g(θ_0)‖₂, [A, B].
    nonfinite: whether a non-finite loss or state occurred, [A, B] bool.
    nonfinite_step: the outer step at which that happened, or −1, [A, B] int32.
    final_params: θ_T (the last finite θ for non-finite cells), [A, B, ...].
  """
  final_loss: jax.Array
  initial_loss: jax.Array
  final_update_norm: jax.Array
  initial_update_norm: jax.Array
  nonfinite: jax.Array
  nonfinite_step: jax.Array
  final_params: Any

  def quantity(self, name: str) -> tuple[jax.Array, jax.Array]:
    """(q_T, q_0) for a criterion quantity."""
    if name == LOSS:
      return self.final_loss, self.initial_loss
    return self.final_update_norm, self.initial_update_norm


def map_kernel(apply_fn: Callable[[Any, jax.Array], jax.Array], init_params: Any,
               batch: maml.TaskBatch, alpha: jax.Array, beta: jax.Array, *,
               method: str, iterations: int,
               loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = maml.mse,
               mesh: jax.sharding.Mesh | None = None) -> MapRuns:
  """All A·B full-batch outer-loop runs of an (α, β) grid, vmapped (un-jitted core).

  Args:
    apply_fn: model ``apply_fn(params, x) -> y_hat`` (static).
    init_params: θ_0, shared by every cell.
    batch: the fixed task set, used at every outer step (full batch).
    alpha: inner rates, [A] (any sign).
    beta: meta rates, [B] (plain gradient descent, θ ← θ − β g).
    method: "maml" or "fomaml" (static).
    iterations: outer steps per run (static).
    loss_fn: ``loss_fn(y_hat, y) -> []`` for inner and query losses.
    mesh: optional 1-D device mesh (static; `negmeta.sharding.device_mesh`):
      the A·B cells are split over its devices. Same values as without.

  Returns:
    MapRuns with [A, B] leading axes.
  """
  first_order = _checks.choice("method", method, METHODS) == FOMAML
  (a_flat, b_flat), cells = sharding.shard_members(maml.grid_product(alpha, beta),
                                                   mesh)
  result = maml.meta_train_grid(
      apply_fn, lambda _: init_params, optax.sgd(1.0), lambda _: batch, a_flat,
      b_flat, jnp.zeros(a_flat.shape, jnp.int32), num_steps=iterations, steps=1,
      first_order=first_order, loss_fn=loss_fn)

  def evaluate(params, a):
    objective = lambda p: maml.meta_loss(apply_fn, p, a, batch, steps=1,
                                         first_order=first_order, loss_fn=loss_fn)
    loss, grads = jax.value_and_grad(objective)(params)
    return loss, jnp.linalg.norm(ravel_pytree(grads)[0])

  final_loss, final_norm = jax.vmap(evaluate)(result.state.params, a_flat)
  initial_loss, initial_norm = jax.vmap(evaluate, in_axes=(None, 0))(
      init_params, a_flat)
  bad = result.diverged
  shape = (alpha.shape[0], beta.shape[0])
  grid = lambda x: x[:cells].reshape(shape + x.shape[1:])   # drops mesh padding
  nan_where_bad = lambda x: grid(jnp.where(bad, jnp.nan, x))
  return MapRuns(
      final_loss=nan_where_bad(final_loss), initial_loss=grid(initial_loss),
      final_update_norm=nan_where_bad(final_norm),
      initial_update_norm=grid(initial_norm), nonfinite=grid(bad),
      nonfinite_step=grid(result.diverged_step),
      final_params=jax.tree.map(grid, result.state.params))


# One compiled function per (model, method, iterations, grid shape, data shape).
run_map = jax.jit(map_kernel, static_argnames=("apply_fn", "method", "iterations",
                                               "loss_fn", "mesh"))


class ChunkedMap(NamedTuple):
  """The outcome of `run_map_chunks`.

  Attributes:
    runs: MapRuns of NumPy arrays with [A, B] leading axes.
    loaded: number of chunks loaded from the store instead of run.
    seconds: the map's compute time, summed over its chunks (a loaded chunk
      counts the time it took when it was computed; compilation included).
  """
  runs: MapRuns
  loaded: int
  seconds: float


def run_map_chunks(apply_fn: Callable[[Any, jax.Array], jax.Array], init_params: Any,
                   batch: maml.TaskBatch, alpha: ArrayLike, beta: ArrayLike, *,
                   method: str, iterations: int, chunk_alphas: int = 0,
                   store: io.ChunkStore | None = None,
                   loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = maml.mse,
                   mesh: jax.sharding.Mesh | None = None,
                   on_chunk: Callable[[int, int, bool], None] | None = None
                   ) -> ChunkedMap:
  """`run_map` over `chunk_alphas` rows of α at a time, each chunk saved to resume.

  Every chunk has the same shape (the last one padded with copies of the last
  α, dropped afterwards), so all of them reuse one compiled `run_map`. Cells
  are independent runs, so the values do not depend on the chunking beyond
  round-off (XLA may order a cell's reductions differently at another number of
  cells: 1e-13 relative in float64, tested). A chunk already in `store` with
  the same tree, shapes and dtypes is loaded instead of run; the store's
  fingerprint must identify the map and its chunking (see
  `experiment.map_identity`).

  Args:
    apply_fn: model ``apply_fn(params, x) -> y_hat`` (static).
    init_params: θ_0, shared by every cell.
    batch: the fixed task set.
    alpha: inner rates, [A] (any sign).
    beta: meta rates, [B].
    method: "maml" or "fomaml".
    iterations: outer steps per run.
    chunk_alphas: α rows per compiled call (0: all A in one call).
    store: optional `io.ChunkStore` for finished chunks.
    loss_fn: ``loss_fn(y_hat, y) -> []``.
    mesh: optional 1-D device mesh over which each chunk's cells are split.
    on_chunk: optional callback(index, total, loaded_from_store).

  Returns:
    ChunkedMap.
  """
  alpha = jnp.asarray(alpha)
  num = alpha.shape[0]
  chunk = min(chunk_alphas or num, num)
  total = -(-num // chunk)
  call = lambda a: run_map(apply_fn, init_params, batch, a, beta, method=method,
                           iterations=iterations, loss_fn=loss_fn, mesh=mesh)
  like = jax.eval_shape(call, alpha[:chunk]) if store is not None else None
  parts, loaded_count, seconds = [], 0, 0.0
  for c in range(total):
    loaded = store.load_tree(c, like) if store is not None else None
    if loaded is not None and "seconds" in loaded[1]:
      part, loaded_count = loaded[0], loaded_count + 1
      seconds += float(loaded[1]["seconds"])
    else:
      loaded = None
      start = time.perf_counter()
      rows = np.minimum(np.arange(c * chunk, (c + 1) * chunk), num - 1)
      part = jax.device_get(call(alpha[rows]))
      elapsed = time.perf_counter() - start
      seconds += elapsed
      if store is not None:
        store.save_tree(c, part, seconds=elapsed)
    parts.append(part)
    if on_chunk is not None:
      on_chunk(c, total, loaded is not None)
  runs = jax.tree.map(lambda *xs: np.concatenate(xs)[:num], *parts)
  return ChunkedMap(runs, loaded_count, seconds)


def classify(final: ArrayLike, initial: ArrayLike, nonfinite: ArrayLike,
             criterion: Criterion) -> np.ndarray:
  """Class of every cell: CONVERGED (0), NOT_YET_CONVERGED (1) or DIVERGED (2).

  Args:
    final: q_T per cell, [...] (NaN/inf allowed).
    initial: q_0 per cell, [...].
    nonfinite: whether the run produced a non-finite value, [...] bool.
    criterion: the Criterion.

  Returns:
    int8 classes, [...].
  """
  final = np.asarray(final, np.float64)
  initial = np.asarray(initial, np.float64)
  with np.errstate(invalid="ignore"):
    diverged = np.asarray(nonfinite, bool) | ~np.isfinite(final) | (final > initial)
    bound = criterion.threshold * (initial if criterion.relative else 1.0)
    converged = ~diverged & (final < bound)
  out = np.full(final.shape, NOT_YET_CONVERGED, np.int8)
  out[converged] = CONVERGED
  out[diverged] = DIVERGED
  return out


def away_from_boundary(predicted: ArrayLike) -> np.ndarray:
  """Cells farther than one grid step from the predicted boundary.

  A cell qualifies iff every cell of its 3 × 3 neighbourhood (clipped at the grid
  edges) has the same predicted class.

  Args:
    predicted: predicted classes, [A, B].

  Returns:
    bool mask, [A, B].
  """
  pred = np.asarray(predicted)
  padded = np.pad(pred, 1, mode="edge")
  same = np.ones(pred.shape, bool)
  rows, cols = pred.shape
  for di in (0, 1, 2):
    for dj in (0, 1, 2):
      same &= padded[di:di + rows, dj:dj + cols] == pred
  return same


class Agreement(NamedTuple):
  """Agreement of an empirical map with a predicted one.

  Attributes:
    share: fraction of counted cells whose classes are equal (NaN if none).
    counted: number of counted cells (away from the predicted boundary).
    disagreeing: number of counted cells whose classes differ.
    not_yet_counted: counted cells classified not yet converged.
    decided_share: the share over counted cells that converged or diverged
      (NaN if none): whether a decided run ever contradicts the prediction.
  """
  share: float
  counted: int
  disagreeing: int
  not_yet_counted: int
  decided_share: float


def agreement(empirical: ArrayLike, predicted: ArrayLike) -> Agreement:
  """Share of cells away from the predicted boundary whose classes agree.

  Args:
    empirical: empirical classes, [A, B].
    predicted: predicted classes on the same scale, [A, B] (a two-valued
      prediction uses only CONVERGED and DIVERGED; then a not-yet-converged cell
      counts as a disagreement).

  Returns:
    Agreement.
  """
  emp, pred = np.asarray(empirical), np.asarray(predicted)
  mask = away_from_boundary(pred)
  counted = int(mask.sum())
  wrong = mask & (emp != pred)
  decided = mask & (emp != NOT_YET_CONVERGED)
  share = float(1.0 - wrong.sum() / counted) if counted else float("nan")
  decided_share = (float(1.0 - np.sum(wrong & decided) / decided.sum())
                   if decided.any() else float("nan"))
  return Agreement(share, counted, int(wrong.sum()),
                   int(np.sum(mask & (emp == NOT_YET_CONVERGED))), decided_share)


class EmpiricalBoundary(NamedTuple):
  """The first diverged β of every α column.

  Attributes:
    beta_c: smallest grid β whose cell diverged, [A] (NaN if none did).
    beta_below: the grid β just below it (NaN if beta_c is the first grid value
      or none diverged), [A].
    monotone: whether every β above beta_c diverged too, [A] bool.
  """
  beta_c: np.ndarray
  beta_below: np.ndarray
  monotone: np.ndarray


def empirical_boundary(classes: ArrayLike, beta: ArrayLike) -> EmpiricalBoundary:
  """Empirical critical β per α column: the first grid β whose run diverged.

  Args:
    classes: empirical classes, [A, B] (β ascending along axis 1).
    beta: the β grid, [B], ascending.

  Returns:
    EmpiricalBoundary.
  """
  cls, beta = np.asarray(classes), np.asarray(beta, np.float64)
  div = cls == DIVERGED
  any_div = div.any(axis=1)
  first = np.argmax(div, axis=1)
  beta_c = np.where(any_div, beta[first], np.nan)
  below = np.where(any_div & (first > 0), beta[np.maximum(first - 1, 0)], np.nan)
  tail = np.array([div[i, first[i]:].all() if any_div[i] else True
                   for i in range(cls.shape[0])])
  return EmpiricalBoundary(beta_c, below, tail)

