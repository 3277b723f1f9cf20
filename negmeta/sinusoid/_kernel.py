"""The compiled core of the sinusoid study: meta-train a grid, then evaluate it.

One jitted function trains every member of an (α_t, seed) grid with
`negmeta.maml.meta_train_grid` (Finn et al.'s 1-40-40-1 ReLU MLP, Adam) and
evaluates each trained member on its seed's held-out test tasks at every
adaptation rate α_r of a second grid, recording the query loss after
0..S fine-tuning steps (Finn et al.'s test protocol). Grid values and seeds are
array arguments, so one trace serves every grid of the same shape.

References:
  Finn, Abbeel, Levine, ICML 2017, Sec. 5.1, Appendix B, Table 2 (and
  cbfinn/maml `main.py: test()`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from negmeta import maml
from negmeta.maml import _inner as maml_inner
from negmeta import models
from negmeta import sharding
from negmeta.tasks import sinusoid as tasks

# The evaluation tasks of seed s come from fold_in(key(s), EVAL_STREAM); the
# meta-training run of seed s splits key(s) into its init and task-stream keys
# (`maml.meta_train_grid`), so the two streams are distinct.
EVAL_STREAM = 0x7E57

STATIC_ARGNAMES = ("iterations", "meta_batch", "k_support", "k_query",
                   "inner_steps", "first_order", "remat", "test_tasks",
                   "eval_shots", "eval_steps", "test_points", "dense_points",
                   "eval_batch", "mesh")


class GridOutputs(NamedTuple):
  """Per-member outputs of `train_and_evaluate` (G members, R rates).

  Attributes:
    query: query MSE on `test_points` random held-out points of each test
      task after 0..S fine-tuning steps, [G, R, T, S+1]; NaN for members whose
      meta-training diverged.
    dense: the same, with the held-out points replaced by a midpoint grid of
      `dense_points` points over [−5, 5] (the expectation over test inputs, to
      quadrature accuracy), [G, R, T, S+1] ([G, R, T, 0] if `dense_points` is
      0).
    train_losses: meta-loss of each meta-training step's batch, [G, iterations]
      (NaN after divergence).
    diverged: whether meta-training diverged, [G] bool.
    diverged_step: meta-step of divergence or −1, [G] int32.
    params: final meta-parameters, flattened with `ravel_pytree`, [G, P].
  """
  query: jax.Array
  dense: jax.Array
  train_losses: jax.Array
  diverged: jax.Array
  diverged_step: jax.Array
  params: jax.Array


def eval_tasks(seed: jax.Array, *, test_tasks: int, eval_shots: int,
               test_points: int, dense_points: int, dtype
               ) -> tuple[maml.TaskBatch, maml.TaskBatch]:
  """The held-out test tasks of one seed.

  Args:
    seed: integer seed, [].
    test_tasks: number of test tasks T (static).
    eval_shots: fine-tuning points per task (static).
    test_points: random held-out points per task (static).
    dense_points: midpoint-grid points over the input range (static; 0 for
      none, then the dense batch has an empty query set).
    dtype: float dtype.

  Returns:
    (protocol, dense) `TaskBatch`es with the same tasks and support points:
    protocol has `test_points` random query points [T, test_points, 1], dense
    the midpoint grid [T, dense_points, 1].
  """
  key = jax.random.fold_in(jax.random.key(seed), EVAL_STREAM)
  k_tasks, k_points = jax.random.split(key)
  amplitude, phase = tasks.sample_sinusoid_params(k_tasks, test_tasks,
                                                  dtype=dtype)
  protocol = tasks.sinusoid_batch(k_points, amplitude, phase, eval_shots,
                                  test_points)
  lo, hi = tasks.INPUT_RANGE
  grid = lo + (hi - lo) * (jnp.arange(dense_points, dtype=dtype) + 0.5) / max(
      dense_points, 1)
  x = jnp.broadcast_to(grid[None, :, None], (test_tasks, dense_points, 1))
  y = amplitude[:, None, None] * jnp.sin(x - phase[:, None, None])
  dense = maml.TaskBatch(protocol.x_support, protocol.y_support, x, y)
  return protocol, dense


def evaluate_members(params: models.MLPParams, seeds: jax.Array,
                     alpha_r: jax.Array, *, test_tasks: int, eval_shots: int,
                     eval_steps: int, test_points: int, dense_points: int,
                     eval_batch: int, mesh: jax.sharding.Mesh | None = None
                     ) -> tuple[jax.Array, jax.Array]:
  """Finn et al.'s test protocol for every (member, α_r) pair.

  Each test task is fine-tuned on the same `eval_shots` points for
  `eval_steps` SGD steps at α_r; the query loss is recorded after each step.
  Pairs run `eval_batch` at a time (`sharding.batched_map`), which bounds
  memory.

  Args:
    params: meta-parameters with a leading member axis [G, ...].
    seeds: each member's seed (selects its test tasks), [G].
    alpha_r: adaptation rates, [R].
    test_tasks, eval_shots, eval_steps, test_points, dense_points: the
      protocol (static).
    eval_batch: pairs evaluated together (static; with a mesh, rounded up to
      a multiple of its devices).
    mesh: optional 1-D device mesh (static): each batch of pairs is split
      over its devices.

  Returns:
    (query [G, R, T, S+1], dense [G, R, T, S+1] or [G, R, T, 0]).
  """
  num_members, num_rates = seeds.shape[0], alpha_r.shape[0]
  dtype = alpha_r.dtype
  member, rate = (a.reshape(-1) for a in jnp.meshgrid(
      jnp.arange(num_members), jnp.arange(num_rates), indexing="ij"))

  def one_pair(index):
    g, r = index
    p = jax.tree.map(lambda leaf: leaf[g], params)
    protocol, dense = eval_tasks(
        seeds[g], test_tasks=test_tasks, eval_shots=eval_shots,
        test_points=test_points, dense_points=dense_points, dtype=dtype)
    return _adapt_and_record(p, alpha_r[r], protocol, dense, steps=eval_steps,
                             with_dense=dense_points > 0)

  query, dense = sharding.batched_map(one_pair, (member, rate), eval_batch, mesh)
  shape = (num_members, num_rates, test_tasks)
  return (query.reshape(shape + query.shape[2:]),
          dense.reshape(shape + dense.shape[2:]))


def _adapt_and_record(params: models.MLPParams, alpha: jax.Array,
                      protocol: maml.TaskBatch, dense: maml.TaskBatch, *,
                      steps: int, with_dense: bool
                      ) -> tuple[jax.Array, jax.Array]:
  """Query losses of each task after 0..steps fine-tuning steps.

  Same computation as `maml.adapt_and_evaluate` on both batches (which share
  their support sets), with one adaptation serving both query sets.

  Returns:
    (protocol losses [T, steps+1], dense losses [T, steps+1] or [T, 0]).
  """
  rates = maml.broadcast_rate(alpha, params)

  def one_task(xs, ys, xq, yq, xd, yd):
    def observe(p):
      q = maml.mse(models.mlp_apply(p, xq), yq)
      d = maml.mse(models.mlp_apply(p, xd), yd) if with_dense else q
      return q, d
    adapted, _, (q, d) = maml_inner.scan_inner(
        models.mlp_apply, params, rates, xs, ys, steps=steps,
        loss_fn=maml.mse, first_order=False, remat=False, observe=observe)
    q_last, d_last = observe(adapted)
    return jnp.append(q, q_last), jnp.append(d, d_last)

  q, d = jax.vmap(one_task)(*protocol, dense.x_query, dense.y_query)
  return q, (d if with_dense else d[:, :0])


def _train_and_evaluate(alpha_t: jax.Array, seeds: jax.Array,
                        alpha_r: jax.Array, meta_lr: jax.Array, *,
                        iterations: int, meta_batch: int, k_support: int,
                        k_query: int, inner_steps: int, first_order: bool,
                        remat: str, test_tasks: int, eval_shots: int,
                        eval_steps: int, test_points: int, dense_points: int,
                        eval_batch: int, mesh: jax.sharding.Mesh | None = None
                        ) -> GridOutputs:
  """Meta-trains G members and evaluates each at R adaptation rates.

  Member g meta-trains from ``mlp_init`` with inner rate ``alpha_t[g]`` and
  seed ``seeds[g]`` (key(seed) → init key and task-stream key, so members with
  one seed share the initialization and every task batch), Adam with rate
  `meta_lr`, on fresh sinusoid tasks each step; it is then evaluated on its
  seed's test tasks (shared by every member and rate of that seed).

  Args:
    alpha_t: meta-training inner rates, [G] (its dtype is the run's dtype).
    seeds: integer seeds, [G].
    alpha_r: adaptation rates for evaluation, [R].
    meta_lr: Adam's rate β, [].
    iterations: meta-training steps (static).
    meta_batch: tasks per meta-step (static).
    k_support, k_query: support and query points per training task (static).
    inner_steps: inner steps during meta-training (static).
    first_order: first-order MAML (static).
    remat: inner-loop rematerialization mode (static; see `maml.inner_loop`).
    test_tasks, eval_shots, eval_steps, test_points, dense_points, eval_batch:
      evaluation (static; see `evaluate_members`).
    mesh: optional 1-D device mesh (static; `negmeta.sharding.device_mesh`):
      members, and each batch of evaluated pairs, are split over its devices.
      Same values as without.

  Returns:
    `GridOutputs`.
  """
  dtype = alpha_t.dtype
  sampler = functools.partial(tasks.sample_sinusoid_batch,
                              meta_batch=meta_batch, k_support=k_support,
                              k_query=k_query, dtype=dtype)
  init_fn = functools.partial(models.mlp_init, dtype=dtype)
  (alpha_t, seeds), num_members = sharding.shard_members((alpha_t, seeds), mesh)
  trained = maml.meta_train_grid(
      models.mlp_apply, init_fn, optax.adam(1.0), sampler, alpha_t,
      jnp.broadcast_to(jnp.asarray(meta_lr, dtype), seeds.shape), seeds,
      num_steps=iterations, steps=inner_steps, first_order=first_order,
      remat=remat)
  params = trained.state.params
  query, dense = evaluate_members(
      params, seeds, alpha_r.astype(dtype), test_tasks=test_tasks,
      eval_shots=eval_shots, eval_steps=eval_steps, test_points=test_points,
      dense_points=dense_points, eval_batch=eval_batch, mesh=mesh)
  # A diverged member's frozen state is not a trained model: no evaluation.
  bad = trained.diverged[:, None, None, None]
  query = jnp.where(bad, jnp.nan, query)
  dense = jnp.where(bad, jnp.nan, dense)
  flat = jax.vmap(lambda p: ravel_pytree(p)[0])(params)
  out = GridOutputs(query=query, dense=dense, train_losses=trained.losses,
                    diverged=trained.diverged,
                    diverged_step=trained.diverged_step, params=flat)
  return jax.tree.map(lambda x: x[:num_members], out)   # drops mesh padding


train_and_evaluate = jax.jit(_train_and_evaluate,
                             static_argnames=STATIC_ARGNAMES)
evaluate_members_jit = jax.jit(
    evaluate_members, static_argnames=("test_tasks", "eval_shots",
                                       "eval_steps", "test_points",
                                       "dense_points", "eval_batch", "mesh"))


def unravel_params(flat: jax.Array, dtype) -> models.MLPParams:
  """Inverse of the flattening in `GridOutputs.params`, for [P] or [G, P]."""
  template = models.mlp_init(jax.random.key(0), dtype=dtype)
  unravel = ravel_pytree(template)[1]
  flat = jnp.asarray(flat, dtype)
  return unravel(flat) if flat.ndim == 1 else jax.vmap(unravel)(flat)
