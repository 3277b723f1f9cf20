"""The MAML inner loop: K gradient steps with a signed, possibly per-parameter rate.

The model is any pure function ``apply_fn(params, x) -> y_hat`` over a parameter
pytree, e.g. a plain MLP function or a flax linen ``lambda p, x: m.apply(p, x)``.

References:
  Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
  Networks", ICML 2017 (eq. 1; first-order MAML in Sec. 5.2).
  Li, Zhou, Chen, Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot
  Learning", arXiv:1707.09835 (per-parameter rates α ∘ ∇L).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

Params = Any  # A pytree of arrays.
ApplyFn = Callable[[Params, jax.Array], jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def mse(pred: ArrayLike, y: ArrayLike) -> jax.Array:
  """Un-halved mean squared error mean((ŷ − y)²), as cbfinn/maml's `utils.mse`.

  Args:
    pred: predictions, any shape.
    y: targets, the shape of `pred`.

  Returns:
    The mean over all elements, shape [].
  """
  return jnp.mean(jnp.square(jnp.asarray(pred) - jnp.asarray(y)))


def broadcast_rate(alpha: Any, params: Params) -> Params:
  """Expands an inner learning rate to a tree with the structure of `params`.

  Args:
    alpha: one of (a) a scalar, shape []; (b) a per-leaf tree with the structure
      of `params` and scalar leaves; (c) a per-parameter tree with the structure
      and shapes of `params` (Meta-SGD). Leaves of a tree may mix (b) and (c).
      Any sign is allowed.
    params: the parameter pytree.

  Returns:
    A tree with the structure of `params` whose leaves have shape [] or the
    shape of the matching parameter.

  Raises:
    ValueError: if `alpha` is neither a scalar nor a tree shaped like `params`.
  """
  treedef = jax.tree.structure(params)
  alpha_def = jax.tree.structure(alpha)
  if alpha_def == treedef:
    rates = alpha
  elif alpha_def.num_leaves == 1 and jax.tree_util.treedef_is_leaf(alpha_def):
    if jnp.ndim(alpha) != 0:
      raise ValueError(
          f"alpha: a single array rate must be a scalar (got shape "
          f"{jnp.shape(alpha)}); pass a tree shaped like params for per-parameter "
          "rates")
    rates = jax.tree.map(lambda _: alpha, params)
  else:
    raise ValueError(
        "alpha: must be a scalar or a pytree with the structure of params "
        f"(got structure {alpha_def}, params have {treedef})")
  for path_and_a, p in zip(jax.tree_util.tree_leaves_with_path(rates),
                           jax.tree.leaves(params)):
    path, a = path_and_a
    if jnp.shape(a) not in ((), jnp.shape(p)):
      raise ValueError(
          f"alpha{jax.tree_util.keystr(path)}: must have shape () or the "
          f"parameter's shape {jnp.shape(p)} (got {jnp.shape(a)})")
  return rates


def sgd_step(params: Params, rates: Params, grads: Params) -> Params:
  """θ − α ∘ g leaf by leaf, keeping each parameter's dtype.

  Args:
    params: parameter tree.
    rates: output of `broadcast_rate` for `params`.
    grads: gradient tree shaped like `params`.

  Returns:
    The updated parameter tree.
  """
  return jax.tree.map(lambda p, a, g: p - (a * g).astype(jnp.result_type(p)),
                      params, rates, grads)


def scan_inner(apply_fn: ApplyFn, params: Params, rates: Params, x: jax.Array,
               y: jax.Array, *, steps: int, loss_fn: LossFn, first_order: bool,
               remat: bool, observe: Callable[[Params], Any] | None = None
               ) -> tuple[Params, jax.Array, Any]:
  """Runs `steps` inner steps in one `lax.scan`; the shared core of the engine.

  Args:
    apply_fn: model, ``apply_fn(params, x) -> y_hat``.
    params: initial (meta-)parameters θ.
    rates: output of `broadcast_rate`.
    x: support inputs of one task, [N, ...].
    y: support targets of one task, [N, ...].
    steps: number of inner steps K >= 0 (static).
    loss_fn: ``loss_fn(y_hat, y) -> []``.
    first_order: stop gradients through the inner gradients (FOMAML).
    remat: checkpoint the scan body, so the backward pass stores only the carry
      (the parameters) per step and recomputes the rest.
    observe: optional ``observe(params_k) -> pytree`` evaluated before each step.

  Returns:
    (θ_K, support losses before each step [K], stacked `observe` outputs with a
    leading [K] axis, or None).
  """

  def support_loss(p):
    return loss_fn(apply_fn(p, x), y)

  def body(p, _):
    extra = None if observe is None else observe(p)
    loss, grads = jax.value_and_grad(support_loss)(p)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    return sgd_step(p, rates, grads), (loss, extra)

  if remat:
    # prevent_cse=False is safe (and faster) inside scan (jax.checkpoint docs).
    body = jax.checkpoint(body, prevent_cse=False)
  adapted, (losses, extras) = jax.lax.scan(body, params, None, length=steps)
  return adapted, losses, extras


def inner_loop(apply_fn: ApplyFn, params: Params, alpha: Any, x: ArrayLike,
               y: ArrayLike, *, steps: int, loss_fn: LossFn = mse,
               first_order: bool = False, remat: bool = False) -> Params:
  """Adapts `params` to one task with K gradient steps θ ← θ − α ∘ ∇L_s(θ).

  .. math::
    θ_{k+1} = θ_k − α ∘ ∇_θ L(f_{θ_k}(x), y),  k = 0..K−1.

  Args:
    apply_fn: model, ``apply_fn(params, x) -> y_hat``.
    params: initial parameters θ_0 (a pytree).
    alpha: inner learning rate, any sign: a scalar [], a per-leaf tree of
      scalars, or a per-parameter tree shaped like `params` (Meta-SGD). May be
      traced (vmapped, differentiated).
    x: support inputs, [N, ...].
    y: support targets, [N, ...].
    steps: number of inner steps K >= 0 (static: the scan length).
    loss_fn: ``loss_fn(y_hat, y) -> []``; default un-halved MSE.
    first_order: if True, the inner gradients are wrapped in `stop_gradient`, so
      dθ_K/dθ_0 = I (first-order MAML); gradients w.r.t. `alpha` still flow.
    remat: if True, the scan body is wrapped in `jax.checkpoint`: the backward
      pass keeps only θ_k per step instead of every intermediate of the
      second-order computation. Values and gradients are unchanged.

  Returns:
    The adapted parameters θ_K, same structure and dtypes as `params`.

  Examples:
    >>> import jax.numpy as jnp
    >>> f = lambda w, x: w * x
    >>> inner_loop(f, jnp.array(0.0), 0.25, jnp.ones(4), 2 * jnp.ones(4), steps=1)
    Array(1., dtype=float32)
  """
  rates = broadcast_rate(alpha, params)
  adapted, _, _ = scan_inner(apply_fn, params, rates, jnp.asarray(x),
                             jnp.asarray(y), steps=steps, loss_fn=loss_fn,
                             first_order=first_order, remat=remat)
  return adapted
