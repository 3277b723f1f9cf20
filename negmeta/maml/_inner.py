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

import math
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


def _as_inexact(a: ArrayLike) -> jax.Array:
  """`a` as an array, integer or boolean values cast to the default float."""
  a = jnp.asarray(a)
  if jnp.issubdtype(a.dtype, jnp.inexact):
    return a
  return a.astype(jnp.result_type(float))


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


REMAT_MODES = ("none", "step", "nested", "flat")


def remat_mode(remat: bool | str) -> str:
  """Normalizes a `remat` argument to one of `REMAT_MODES`.

  Args:
    remat: False or "none" (store every intermediate), "step" (checkpoint each
      inner step: the backward pass stores θ_k per step, memory O(K)),
      "nested" (nested checkpointing: O(log K) stored parameter trees), True
      or "flat" (store θ_0 only and recompute θ_k from it in the backward
      pass: memory independent of K, O(K²) forward steps).

  Returns:
    "none", "step", "nested" or "flat".

  Raises:
    ValueError: for any other value.
  """
  if remat is False or remat is None or remat == "none":
    return "none"
  if remat is True or remat == "flat":
    return "flat"
  if remat in ("step", "nested"):
    return remat
  raise ValueError(f"remat: must be False, True, 'none', 'step', 'nested' or "
                   f"'flat' (got {remat!r})")


def level_sizes(length: int, max_levels: int = 8) -> tuple[int, ...]:
  """Segment counts per level for `nested_checkpoint_scan`, outermost first.

  Chooses sizes s_1 ≥ s_2 ≥ … with s_1·s_2·… ≥ `length` that minimize the
  number of stored carries Σ s_i (then the padded length Π s_i, then the
  depth): e.g. 10 → (4, 3), 50 → (5, 5, 2), 100 → (4, 3, 3, 3).

  Args:
    length: number of steps K >= 0.
    max_levels: largest depth considered.

  Returns:
    The sizes, a tuple of positive ints (``(K,)`` for K <= 3).
  """
  if length <= 3:
    return (max(length, 0),)
  best = None

  def search(prefix, remaining_levels, product, cap):
    nonlocal best
    if product >= length:
      key = (sum(prefix), product, len(prefix))
      if best is None or key < best[0]:
        best = (key, tuple(prefix))
      return
    if remaining_levels == 0:
      return
    need = -(-length // product)                  # steps still to cover
    lo = 2 if remaining_levels > 1 else need      # the last level must finish
    # Balanced sizes suffice: no size above ⌈need^(1/levels)⌉ + 2.
    hi = min(cap, need, int(round(need ** (1.0 / remaining_levels))) + 2)
    for size in range(max(lo, 2), hi + 1):
      if best is not None and sum(prefix) + size >= best[0][0] + 1:
        break
      search(prefix + [size], remaining_levels - 1, product * size, size)

  for depth in range(1, max_levels + 1):
    search([], depth, 1, length)
  return best[1]


def nested_checkpoint_scan(body: Callable[[Any, None], tuple[Any, Any]],
                           carry: Any, length: int) -> tuple[Any, Any]:
  """``lax.scan(body, carry, None, length)`` whose backward pass keeps O(log K) carries.

  Nested checkpointing with uniform scans: the K steps are arranged as
  ``s_1 × s_2 × … × s_d`` (`level_sizes`; steps past K are masked to the
  identity). Level 1 is a scan over s_1 checkpointed segments, each a scan
  over s_2 checkpointed segments, and so on down to single checkpointed
  steps. The backward pass stores the carries at the starts of the segments
  of one path from the root: Σ s_i parameter trees (≈ e·ln K: 7 for K = 10,
  12 for K = 50) instead of K, and replays each step's forward computation d
  times. Each level is a single scan body, so the program size does not grow
  with K. Values and gradients (of any order) are those of the plain scan.

  Args:
    body: ``body(carry, None) -> (carry, out)``, as for `lax.scan`.
    carry: initial carry.
    length: number of steps K >= 0 (static).

  Returns:
    (final carry, outputs stacked along a leading [K] axis).
  """
  sizes = level_sizes(length)
  padded = math.prod(sizes)

  def step(c, index):
    new, out = body(c, None)
    if padded == length:
      return new, out
    keep = index < length
    return jax.tree.map(lambda u, v: jnp.where(keep, u, v), new, c), out

  def run(level, c, offset):
    """Runs the Π sizes[level:] steps that start at step `offset`."""
    inner = math.prod(sizes[level + 1:])
    starts = offset + inner * jnp.arange(sizes[level])
    if level == len(sizes) - 1:
      f = step
    else:
      f = lambda c_, o: run(level + 1, c_, o)
    # prevent_cse=False is safe (and faster) inside scan (jax.checkpoint docs).
    c, outs = jax.lax.scan(jax.checkpoint(f, prevent_cse=False), c, starts)
    return c, jax.tree.map(
        lambda o: o.reshape((sizes[level] * inner,) + o.shape[2:])
        if level < len(sizes) - 1 else o, outs)

  carry, outs = run(0, carry, jnp.asarray(0, jnp.int32))
  return carry, jax.tree.map(lambda o: o[:length], outs)


def flat_checkpoint_scan(body: Callable[[Any, Any], tuple[Any, Any]],
                         carry: Any, consts: Any, length: int
                         ) -> tuple[Any, Any]:
  """``lax.scan(lambda c, _: body(c, consts), carry, None, length)`` with flat memory.

  A `jax.custom_vjp` whose forward pass keeps only the initial carry (and
  `consts`). The backward pass runs k = K−1, …, 0 and, at each k, recomputes
  the carry c_k from c_0 by k forward steps (no residuals kept), then pulls
  the cotangent back through step k. Memory is that of one step plus three
  carries whatever K is; the cost is K(K−1)/2 extra forward steps, so
  prefer "nested" (`nested_checkpoint_scan`) unless memory is the limit.
  Values and first derivatives are those of the plain scan. Only reverse
  mode, once: forward mode (jvp, Hessian-vector products) and derivatives of
  second order are not defined for this function; use "nested" for those.

  Args:
    body: ``body(carry, consts) -> (carry, out)``.
    carry: initial carry (floating-point leaves).
    consts: inputs used by every step and differentiated through, e.g. the
      rates and the support data (floating-point leaves). The function must
      not be differentiated with respect to values `body` closes over.
    length: number of steps K >= 0 (static).

  Returns:
    (final carry, outputs stacked along a leading [K] axis).
  """
  def forward(c, cs):
    return jax.lax.scan(lambda c_, _: body(c_, cs), c, None, length=length)

  @jax.custom_vjp
  def run(c, cs):
    return forward(c, cs)

  def run_fwd(c, cs):
    return forward(c, cs), (c, cs)

  def run_bwd(residuals, cotangents):
    c0, cs = residuals
    ct_final, ct_outs = cotangents

    def advance(_, c):
      return body(c, cs)[0]

    def back(acc, k_and_ct_out):
      ct_c, ct_cs = acc
      k, ct_out = k_and_ct_out
      c_k = jax.lax.fori_loop(0, k, advance, c0)     # recompute c_k from c_0
      _, pull = jax.vjp(body, c_k, cs)
      d_c, d_cs = pull((ct_c, ct_out))
      return (d_c, jax.tree.map(jnp.add, ct_cs, d_cs)), None

    zeros = jax.tree.map(jnp.zeros_like, cs)
    (ct_c0, ct_cs), _ = jax.lax.scan(back, (ct_final, zeros),
                                     (jnp.arange(length), ct_outs),
                                     reverse=True)     # k = K−1, …, 0
    return ct_c0, ct_cs

  run.defvjp(run_fwd, run_bwd)
  return run(carry, consts)


def scan_inner(apply_fn: ApplyFn, params: Params, rates: Params, x: jax.Array,
               y: jax.Array, *, steps: int, loss_fn: LossFn, first_order: bool,
               remat: bool | str, observe: Callable[[Params], Any] | None = None
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
    remat: rematerialization (see `remat_mode`): False/"none"; "step"
      checkpoints the scan body, so the backward pass stores only the carry
      (the parameters) per step, O(K); "nested" nests checkpointed scans
      (`nested_checkpoint_scan`), O(log K) stored parameter trees; True/"flat"
      stores θ_0 only (`flat_checkpoint_scan`), memory independent of K.
    observe: optional ``observe(params_k) -> pytree`` evaluated before each step.

  Returns:
    (θ_K, support losses before each step [K], stacked `observe` outputs with a
    leading [K] axis, or None).
  """
  mode = remat_mode(remat)

  def step(p, consts):
    rates_, x_, y_ = consts
    extra = None if observe is None else observe(p)
    loss, grads = jax.value_and_grad(
        lambda q: loss_fn(apply_fn(q, x_), y_))(p)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    return sgd_step(p, rates_, grads), (loss, extra)

  consts = (rates, x, y)
  if mode == "flat":
    # custom_vjp arguments must be arrays with real cotangents: integer or
    # Python-scalar rates become floating-point arrays (same values).
    consts = jax.tree.map(_as_inexact, consts)
    adapted, (losses, extras) = flat_checkpoint_scan(step, params, consts,
                                                     steps)
    return adapted, losses, extras
  body = lambda p, _: step(p, consts)
  if mode == "nested":
    adapted, (losses, extras) = nested_checkpoint_scan(body, params, steps)
    return adapted, losses, extras
  if mode == "step":
    # prevent_cse=False is safe (and faster) inside scan (jax.checkpoint docs).
    body = jax.checkpoint(body, prevent_cse=False)
  adapted, (losses, extras) = jax.lax.scan(body, params, None, length=steps)
  return adapted, losses, extras


def inner_loop(apply_fn: ApplyFn, params: Params, alpha: Any, x: ArrayLike,
               y: ArrayLike, *, steps: int, loss_fn: LossFn = mse,
               first_order: bool = False, remat: bool | str = False) -> Params:
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
    remat: rematerialization of the inner loop in the backward pass; values
      and gradients are unchanged. False/"none": store every intermediate of
      the second-order computation (memory O(K)); "step": checkpoint each
      step, storing only θ_k per step (O(K), smaller); "nested": nested
      checkpointing, O(log K) stored parameter trees (≈ e·ln K) for
      d ≈ log₃K replays of the forward steps (`nested_checkpoint_scan`),
      derivatives of any order; True/"flat": store θ_0 only, memory
      independent of K, for K(K−1)/2 extra forward steps; one reverse-mode
      derivative only (`flat_checkpoint_scan`).

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
