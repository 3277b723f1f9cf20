"""Meta-objective over a batch of tasks, and per-step evaluation of adaptation.

References:
  Finn, Abbeel, Levine, ICML 2017 (Alg. 2, eq. 3; sinusoid evaluation, Table 2).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from negmeta.maml import _inner
from negmeta.maml._inner import ApplyFn, LossFn, Params


class TaskBatch(NamedTuple):
  """A batch of B few-shot tasks, support and query sets.

  Attributes:
    x_support: support inputs, [B, N_s, ...].
    y_support: support targets, [B, N_s, ...].
    x_query: query inputs, [B, N_q, ...].
    y_query: query targets, [B, N_q, ...].
  """
  x_support: jax.Array
  y_support: jax.Array
  x_query: jax.Array
  y_query: jax.Array


class AdaptationLosses(NamedTuple):
  """Losses of each task after 0..K inner steps.

  Attributes:
    support: support loss L_s(θ_k), [B, K+1]; column k is after k steps.
    query: query loss L_q(θ_k), [B, K+1]; column 0 is the unadapted θ.
  """
  support: jax.Array
  query: jax.Array


def task_losses(apply_fn: ApplyFn, params: Params, alpha: Any, batch: TaskBatch,
                *, steps: int, first_order: bool = False, remat: bool | str = False,
                loss_fn: LossFn = _inner.mse) -> jax.Array:
  """Query loss of each task after adapting on its support set.

  Args:
    apply_fn: model, ``apply_fn(params, x) -> y_hat``.
    params: meta-parameters θ, shared by all tasks.
    alpha: inner rate (scalar, per-leaf or per-parameter tree; see
      `inner_loop`), shared by all tasks.
    batch: B tasks.
    steps: inner steps K (static).
    first_order: first-order MAML (see `inner_loop`).
    remat: rematerialization of the inner loop (see `inner_loop`).
    loss_fn: ``loss_fn(y_hat, y) -> []``, used for both inner and query loss.

  Returns:
    L_q(θ'_b) for each task b, [B].
  """
  rates = _inner.broadcast_rate(alpha, params)

  def one_task(xs, ys, xq, yq):
    adapted, _, _ = _inner.scan_inner(apply_fn, params, rates, xs, ys,
                                      steps=steps, loss_fn=loss_fn,
                                      first_order=first_order, remat=remat)
    return loss_fn(apply_fn(adapted, xq), yq)

  return jax.vmap(one_task)(*batch)


def meta_loss(apply_fn: ApplyFn, params: Params, alpha: Any, batch: TaskBatch,
              *, steps: int, first_order: bool = False, remat: bool | str = False,
              loss_fn: LossFn = _inner.mse) -> jax.Array:
  r"""MAML meta-objective: mean over tasks of the query loss after adaptation.

  .. math::
    \mathcal L(θ, α) = \frac1B \sum_b L_{q,b}(θ'_b),\quad
    θ'_b = \mathrm{inner\_loop}(θ, α; \text{support}_b).

  Differentiate it w.r.t. `params` (and `alpha` for Meta-SGD) to get the
  meta-gradient: second-order by default, first-order with `first_order=True`.

  Args:
    apply_fn: model, ``apply_fn(params, x) -> y_hat``.
    params: meta-parameters θ.
    alpha: inner rate (scalar, per-leaf or per-parameter tree), any sign.
    batch: B tasks.
    steps: inner steps K (static).
    first_order: first-order MAML.
    remat: rematerialization of the inner loop (see `inner_loop`).
    loss_fn: ``loss_fn(y_hat, y) -> []``.

  Returns:
    The meta-loss, shape [].
  """
  return jnp.mean(task_losses(apply_fn, params, alpha, batch, steps=steps,
                              first_order=first_order, remat=remat,
                              loss_fn=loss_fn))


def adapt_and_evaluate(apply_fn: ApplyFn, params: Params, alpha: Any,
                       batch: TaskBatch, *, steps: int,
                       loss_fn: LossFn = _inner.mse) -> AdaptationLosses:
  """Adapts each task for K steps and records support and query losses per step.

  This is the sinusoid test protocol of Finn et al. (Table 2: query MSE after
  1, 5, 10 steps on the same K support points). The evaluation rate `alpha` may
  differ from the meta-training rate.

  Args:
    apply_fn: model, ``apply_fn(params, x) -> y_hat``.
    params: meta-parameters θ.
    alpha: inner rate (scalar, per-leaf or per-parameter tree), any sign.
    batch: B tasks.
    steps: inner steps K (static).
    loss_fn: ``loss_fn(y_hat, y) -> []``.

  Returns:
    Support and query losses after 0..K steps, each [B, K+1].
  """
  rates = _inner.broadcast_rate(alpha, params)

  def one_task(xs, ys, xq, yq):
    query = lambda p: loss_fn(apply_fn(p, xq), yq)
    adapted, support_losses, query_losses = _inner.scan_inner(
        apply_fn, params, rates, xs, ys, steps=steps, loss_fn=loss_fn,
        first_order=False, remat=False, observe=query)
    final_support = loss_fn(apply_fn(adapted, xs), ys)
    return (jnp.append(support_losses, final_support),
            jnp.append(query_losses, query(adapted)))

  support, query = jax.vmap(one_task)(*batch)
  return AdaptationLosses(support=support, query=query)
