"""The MAML outer loop: a whole meta-training run as one `lax.scan`.

References:
  Finn, Abbeel, Levine, ICML 2017 (Alg. 2).
  Li, Zhou, Chen, Li, arXiv:1707.09835 (Meta-SGD: learn α with θ).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from negmeta.maml import _inner
from negmeta.maml import _meta
from negmeta.maml._inner import ApplyFn, LossFn, Params

BatchSampler = Callable[[jax.Array], _meta.TaskBatch]


class MetaTrainState(NamedTuple):
  """State of a meta-training run.

  Attributes:
    params: meta-parameters θ.
    alpha: inner rate (scalar, per-leaf or per-parameter tree). Constant unless
      meta-training ran with `learn_alpha=True`.
    opt_state: optimizer state, for `params` or for `(params, alpha)` when α is
      learned.
  """
  params: Params
  alpha: Any
  opt_state: optax.OptState


class MetaTrainResult(NamedTuple):
  """Outcome of `meta_train` (with a leading grid axis [G] from the grid).

  Attributes:
    state: the final state; for a diverged run, the last state whose loss,
      parameters and optimizer state were all finite.
    losses: meta-loss on each step's batch before that step's update,
      [num_steps]; NaN after the step of divergence.
    diverged: whether an update produced a non-finite loss or state, [] bool.
    diverged_step: the step at which that happened, or -1, [] int32.
  """
  state: MetaTrainState
  losses: jax.Array
  diverged: jax.Array
  diverged_step: jax.Array


def _float_leaves(tree: Any) -> Any:
  """Makes every leaf a strongly typed floating array (stable scan carries)."""

  def cast(a):
    a = jnp.asarray(a)
    dtype = a.dtype if jnp.issubdtype(a.dtype, jnp.floating) else jnp.zeros(
        ()).dtype
    return jax.lax.convert_element_type(a, dtype)

  return jax.tree.map(cast, tree)


def all_finite(tree: Any) -> jax.Array:
  """True iff every floating leaf of `tree` is finite, [] bool.

  Reduces within the tree only, so under `vmap` each lane is checked on its own.
  """
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
           if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def meta_train(apply_fn: ApplyFn, init_params: Params, alpha: Any,
               optimizer: optax.GradientTransformation,
               sample_batch: BatchSampler, key: jax.Array, *, num_steps: int,
               steps: int, meta_lr: ArrayLike = 1.0, first_order: bool = False,
               remat: bool | str = False, learn_alpha: bool = False,
               loss_fn: LossFn = _inner.mse) -> MetaTrainResult:
  """Meta-trains θ (and α if `learn_alpha`) for `num_steps` steps in one scan.

  Step t draws ``batch = sample_batch(jax.random.fold_in(key, t))``, computes
  the meta-gradient of `meta_loss` and applies
  ``meta_lr * optimizer.update(grads)``. The meta learning rate β is therefore
  ``meta_lr`` times the optimizer's own rate: pass e.g. ``optax.sgd(1.0)`` or
  ``optax.adam(1.0)`` and β as the traced array `meta_lr` (one compiled
  function then serves every β), or a fixed-rate optimizer and ``meta_lr=1``.

  Divergence: if a step yields a non-finite loss, or non-finite parameters,
  rates or optimizer state, the run keeps its last finite state from then on
  (the update is discarded with `jnp.where`), records `diverged` and the step,
  and reports NaN losses for the remaining steps. No reduction crosses runs,
  so under `vmap` a diverging run does not affect the others.

  Args:
    apply_fn: model, ``apply_fn(params, x) -> y_hat``.
    init_params: initial meta-parameters θ_0.
    alpha: inner rate (scalar, per-leaf or per-parameter tree; any sign). With
      `learn_alpha` it is the initial value of a meta-parameter (Meta-SGD:
      pass a per-parameter tree).
    optimizer: an optax meta-optimizer; its update is scaled by `meta_lr`.
    sample_batch: ``sample_batch(key) -> TaskBatch`` of B tasks (pure).
    key: PRNG key for the task stream.
    num_steps: number of meta-steps (static: the scan length).
    steps: inner steps K (static).
    meta_lr: multiplier β of the optimizer's updates, shape [] (may be traced).
    first_order: first-order MAML meta-gradient.
    remat: rematerialization of the inner loop (see `inner_loop`).
    learn_alpha: also meta-learn `alpha` (Meta-SGD when `alpha` is a
      per-parameter tree; a learned scalar or per-layer rate otherwise).
    loss_fn: ``loss_fn(y_hat, y) -> []`` for inner and query losses.

  Returns:
    The final state, the loss trace [num_steps] and the divergence record.

  Examples:
    >>> import functools, optax
    >>> run = jax.jit(functools.partial(
    ...     meta_train, apply_fn, optimizer=optax.adam(1.0),
    ...     sample_batch=sampler, num_steps=1000, steps=1))  # doctest: +SKIP
    >>> result = run(params, 0.01, key=key, meta_lr=1e-3)  # doctest: +SKIP
  """
  alpha = _float_leaves(alpha)
  meta_lr = jnp.asarray(meta_lr)

  def objective(target, batch):
    params, rate = target if learn_alpha else (target, alpha)
    return _meta.meta_loss(apply_fn, params, rate, batch, steps=steps,
                           first_order=first_order, remat=remat,
                           loss_fn=loss_fn)

  def target_of(state):
    return (state.params, state.alpha) if learn_alpha else state.params

  state = MetaTrainState(init_params, alpha, None)
  state = state._replace(opt_state=optimizer.init(target_of(state)))

  def step(carry, t):
    state, diverged, diverged_step = carry
    batch = sample_batch(jax.random.fold_in(key, t))
    target = target_of(state)
    loss, grads = jax.value_and_grad(objective)(target, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, target)
    updates = jax.tree.map(lambda u: (meta_lr * u).astype(u.dtype), updates)
    target = optax.apply_updates(target, updates)
    params, rate = target if learn_alpha else (target, state.alpha)
    proposed = MetaTrainState(params, rate, opt_state)
    ok = ~diverged & jnp.isfinite(loss) & all_finite(proposed)
    state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), proposed,
                         state)
    diverged_step = jnp.where(~diverged & ~ok, t, diverged_step)
    loss = jnp.where(diverged, jnp.nan, loss)
    return (state, ~ok, diverged_step), loss

  carry = (state, jnp.array(False), jnp.array(-1, jnp.int32))
  (state, diverged, diverged_step), losses = jax.lax.scan(
      step, carry, jnp.arange(num_steps, dtype=jnp.int32))
  return MetaTrainResult(state, losses, diverged, diverged_step)
