"""Grids of whole meta-training runs, vmapped and traced once.

Every grid member is an independent `meta_train` run with its own inner rate
α_t, meta learning rate β and seed. The values are array arguments, so one
compiled function serves every grid of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from negmeta import sharding
from negmeta.maml import _inner
from negmeta.maml import _train
from negmeta.maml._inner import ApplyFn, LossFn, Params

InitFn = Callable[[jax.Array], Params]


def grid_product(*axes: ArrayLike) -> tuple[jax.Array, ...]:
  """Flattened Cartesian product of 1-D axes, for `meta_train_grid`.

  Args:
    *axes: 1-D arrays of lengths n_1, …, n_d (e.g. alphas, betas, seeds).

  Returns:
    d arrays of shape [n_1·…·n_d], row-major: results with a leading [G] axis
    reshape to [n_1, …, n_d, ...].

  Examples:
    >>> a, s = grid_product(jnp.array([0.1, -0.1]), jnp.array([0, 1, 2]))
    >>> a.shape, s.tolist()
    ((6,), [0, 1, 2, 0, 1, 2])
  """
  grids = jnp.meshgrid(*[jnp.asarray(a) for a in axes], indexing="ij")
  return tuple(g.reshape(-1) for g in grids)


def meta_train_grid(apply_fn: ApplyFn, init_fn: InitFn,
                    optimizer: optax.GradientTransformation,
                    sample_batch: _train.BatchSampler, alpha: Any,
                    meta_lr: ArrayLike, seed: ArrayLike, *, num_steps: int,
                    steps: int, first_order: bool = False, remat: bool | str = False,
                    learn_alpha: bool = False, loss_fn: LossFn = _inner.mse,
                    mesh: jax.sharding.Mesh | None = None
                    ) -> _train.MetaTrainResult:
  """Runs G independent meta-training runs as one vmapped computation.

  Member g uses ``key = jax.random.key(seed[g])``, split into an init key
  (``params = init_fn(init_key)``) and a task-stream key. Members that share a
  seed therefore share the initialization and every task batch (common random
  numbers across α and β). Each member is `meta_train` with its own
  ``alpha[g]`` and ``meta_lr[g]``; divergence is detected and contained per
  member (see `meta_train`): a diverging member keeps its last finite state and
  cannot change other members' results, because nothing reduces across the
  grid axis.

  Wrap the call in `jax.jit` (with the callables closed over or static) to get
  a single compiled function for all grids of the same shape.

  Args:
    apply_fn: model, ``apply_fn(params, x) -> y_hat``.
    init_fn: ``init_fn(key) -> params``.
    optimizer: optax meta-optimizer, scaled by `meta_lr` (e.g.
      ``optax.sgd(1.0)``, ``optax.adam(1.0)``).
    sample_batch: ``sample_batch(key) -> TaskBatch``.
    alpha: inner rate per member: [G], or a tree (per-leaf [G] or
      per-parameter [G, ...] leaves) with a leading grid axis.
    meta_lr: β per member, [G].
    seed: integer seed per member, [G].
    num_steps: meta-steps per run (static).
    steps: inner steps K (static).
    first_order: first-order MAML meta-gradient.
    remat: rematerialization of the inner loop (see `inner_loop`).
    learn_alpha: meta-learn α too (Meta-SGD).
    loss_fn: ``loss_fn(y_hat, y) -> []``.
    mesh: optional 1-D device mesh (`negmeta.sharding.device_mesh`): the
      members are split over its devices (padded to a multiple of them with
      copies of the last member, which are dropped). Same values as without;
      under `jax.jit`, pass it as a static argument.

  Returns:
    `MetaTrainResult` with a leading [G] axis on every leaf: final states,
    losses [G, num_steps], diverged [G], diverged_step [G].
  """

  def one_run(a, beta, s):
    init_key, train_key = jax.random.split(jax.random.key(s))
    return _train.meta_train(
        apply_fn, init_fn(init_key), a, optimizer, sample_batch, train_key,
        num_steps=num_steps, steps=steps, meta_lr=beta,
        first_order=first_order, remat=remat, learn_alpha=learn_alpha,
        loss_fn=loss_fn)

  members, size = sharding.shard_members(
      (alpha, jnp.asarray(meta_lr), jnp.asarray(seed)), mesh)
  result = jax.vmap(one_run)(*members)
  if mesh is None:
    return result
  return jax.tree.map(lambda x: x[:size], result)
