"""The NTK prediction: one-step MAML on the network linearized at initialization.

Linearizing f(x; θ) around θ₀,

  f_lin(x; θ) = f(x; θ₀) + φ(x)ᵀ(θ − θ₀),   φ(x) = ∇_θ f(x; θ₀) ∈ R^P,

makes MAML on the network a *linear* regression in feature space (Bernacchia
2021, Sec. 4; reference §4): with δ = θ − θ₀ and residual targets
r = y − f(x; θ₀), the inner step on a task's support set (Φ_t, r_t) is
δ_i = (I − α_t Φ_tᵀΦ_t/n_t) δ + (α_t/n_t) Φ_tᵀ r_t, exactly the linear study's
step with inputs x → φ(x), targets y → r and p → P. Its meta-loss is
‖Zδ − u‖²/(2N) with the linear study's Z(α_t), u(α_t) (`negmeta.linear`'s
`meta_design`, reused unchanged), and the minimiser nearest to θ₀ is
δ* = Z⁺u (`meta_solution_path` with ω₀ = 0): the analogue of ω* (reference §1.4).
Per-sample loss ½(y − f)², as in the linear study.

Besides the converged solution, `dual_optimizer_path` gives the exact iterate of
a linear optax optimizer (SGD, heavy-ball or Nesterov momentum) after S steps on
the linearized meta-loss, started at θ₀: the NTK prediction for a training run
of the same length, which separates "not lazy" from "not converged".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from negmeta import linear
from negmeta.maml import TaskBatch

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


class Linearized(NamedTuple):
  """A scalar-output model linearized at θ₀, over flattened parameters.

  Attributes:
    flat0: θ₀ flattened, [P].
    unravel: maps a [P] vector back to the parameter pytree.
    apply_flat: ``apply_flat(theta [P], x [n, d]) -> [n]``, the model itself.
  """
  flat0: jax.Array
  unravel: Callable[[jax.Array], Params]
  apply_flat: Callable[[jax.Array, jax.Array], jax.Array]

  @property
  def num_params(self) -> int:
    return self.flat0.shape[0]

  def f0(self, x: jax.Array) -> jax.Array:
    """f(x; θ₀): x [n, d] → [n]."""
    return self.apply_flat(self.flat0, x)

  def features(self, x: jax.Array) -> jax.Array:
    """Φ = ∂f(x; θ₀)/∂θ: x [n, d] → [n, P] (one backward pass per input)."""
    point = lambda t, xi: self.apply_flat(t, xi[None])[0]  # noqa: E731
    return jax.vmap(jax.grad(point), in_axes=(None, 0))(self.flat0, x)

  def predict(self, delta: jax.Array, x: jax.Array) -> jax.Array:
    """f_lin(x; θ₀ + δ) = f(x; θ₀) + Φ(x)δ by one JVP: δ [P], x [n, d] → [n]."""
    f0, tangent = jax.jvp(lambda t: self.apply_flat(t, x), (self.flat0,),
                          (delta.astype(self.flat0.dtype),))
    return f0 + tangent


def linearize(apply_fn: ApplyFn, params0: Params) -> Linearized:
  """Linearizes ``apply_fn(params, x) -> [n]`` at `params0`.

  Args:
    apply_fn: scalar-output model, ``apply_fn(params, x [n, d]) -> [n]``.
    params0: the expansion point θ₀ (a pytree).

  Returns:
    The `Linearized` model.
  """
  flat0, unravel = ravel_pytree(params0)
  return Linearized(flat0, unravel, lambda t, x: apply_fn(unravel(t), x))


def feature_tasks(lin: Linearized, batch: TaskBatch) -> linear.TaskBatch:
  """The feature-space linear regression of a batch of tasks.

  Args:
    lin: the linearized model.
    batch: m tasks, x_support [m, n_t, d], y_support [m, n_t], x_query
      [m, n_v, d], y_query [m, n_v].

  Returns:
    A `negmeta.linear.TaskBatch` with x_a = Φ_t [m, n_t, P], y_a = r_t
    [m, n_t], x_b = Φ_v [m, n_v, P], y_b = r_v [m, n_v] (w unused, []).
  """

  def split(x, y):
    return lin.features(x), y - lin.f0(x)

  x_a, y_a = jax.vmap(split)(batch.x_support, batch.y_support)
  x_b, y_b = jax.vmap(split)(batch.x_query, batch.y_query)
  return linear.TaskBatch(w=jnp.zeros((), x_a.dtype), x_a=x_a, y_a=y_a, x_b=x_b,
                          y_b=y_b)


def meta_design(lin: Linearized, batch: TaskBatch) -> linear.MetaDesign:
  """Z(α_t) = z0 − α_t z1, u(α_t) = u0 − α_t u1 of the linearized meta-loss.

  Args:
    lin: the linearized model.
    batch: the m meta-training tasks.

  Returns:
    `negmeta.linear.MetaDesign` with N = m·n_v rows over P features.
  """
  return linear.meta_design(feature_tasks(lin, batch))


def exact_solution(design: linear.MetaDesign, alpha_t: jax.Array
                   ) -> linear.MetaSolution:
  """δ*(α_t) = Z⁺u: the linearized meta-loss minimiser nearest θ₀, per α_t.

  Args:
    design: from `meta_design`.
    alpha_t: [G].

  Returns:
    `negmeta.linear.MetaSolution`: omega = δ* [G, P], rcond [G] (Cholesky pivot
    ratio of ZZᵀ; NaN if numerically singular).
  """
  zeros = jnp.zeros(design.z0.shape[1], design.z0.dtype)
  return linear.meta_solution_path(design, zeros, alpha_t)


def meta_gram(design: linear.MetaDesign, alpha_t: ArrayLike
              ) -> tuple[jax.Array, jax.Array]:
  """(K = Z Zᵀ [N, N], u [N]) at one α_t: the dual form of the meta-loss."""
  z, u = design.at(alpha_t)
  return z @ z.T, u


def meta_curvature(design: linear.MetaDesign, alpha_t: ArrayLike) -> jax.Array:
  """Eigenvalues of the linearized meta-loss Hessian ZᵀZ/N on its row space, [N].

  The largest sets a stable outer learning rate, the smallest how many outer
  steps convergence takes.
  """
  gram, _ = meta_gram(design, alpha_t)
  return jnp.linalg.eigvalsh(gram) / gram.shape[0]


def dual_optimizer_path(design: linear.MetaDesign, alpha_t: ArrayLike,
                        optimizer: optax.GradientTransformation,
                        meta_lr: ArrayLike, num_steps: int) -> jax.Array:
  """δ after `num_steps` steps of `optimizer` on the linearized meta-loss from θ₀.

  Exact for optimizers whose update is linear in the gradients and independent
  of the parameters (`optax.sgd`, with or without (Nesterov) momentum): the
  gradient Zᵀ(Zδ − u)/N lies in the row space of Z, so δ_k = Zᵀv_k and the
  iteration runs on v ∈ R^N with "gradient" (Kv − u)/N, K = ZZᵀ. Updates are
  scaled by `meta_lr` as in `negmeta.maml.meta_train`.

  Args:
    design: from `meta_design`.
    alpha_t: [].
    optimizer: a linear optax optimizer (see above).
    meta_lr: multiplier of the optimizer's updates, [].
    num_steps: outer steps S (static).

  Returns:
    δ_S, [P].
  """
  z, u = design.at(alpha_t)
  gram = z @ z.T
  n = gram.shape[0]
  v = jnp.zeros_like(u)
  state = optimizer.init(v)

  def step(carry, _):
    v, state = carry
    grad = (gram @ v - u) / n
    updates, state = optimizer.update(grad, state, v)
    return (v + meta_lr * updates, state), None

  (v, _), _ = jax.lax.scan(step, (v, state), None, length=num_steps)
  return z.T @ v


def inner_curvature(lin: Linearized, x_support: jax.Array) -> jax.Array:
  """λ_max of the linearized inner-loss Hessian Φ_tᵀΦ_t/n_t, per task.

  Equals the largest eigenvalue of the empirical NTK Gram matrix Θ(X_t, X_t)/n_t:
  the inner step is unstable along its top direction for α_t > 2/λ_max.

  Args:
    lin: the linearized model.
    x_support: [m, n_t, d].

  Returns:
    [m].
  """

  def one(x):
    phi = lin.features(x)
    return jnp.linalg.eigvalsh(phi @ phi.T / x.shape[0])[-1]

  return jax.vmap(one)(x_support)


def adapted_test_loss(lin: Linearized, deltas: jax.Array, batch: TaskBatch,
                      alpha_r: ArrayLike, *, chunk: int = 8) -> jax.Array:
  """Test loss of linearized models after one adaptation step, per task.

  For each δ_g, rate α_r and task: δ' = δ_g − (α_r/n_r) Φ_rᵀ(f_lin(X_r; δ_g) − y_r),
  then ½ mean over the task's query points of (f_lin(x; δ') − y)². Uses each
  task's Jacobian Φ = [Φ_r; Φ_s] once for all δ_g and α_r:
  f_lin(X_s; δ') = f₀ + Φ_sδ_g − (α_r/n_r) Φ_sΦ_rᵀ e_r.

  Args:
    lin: the linearized model.
    deltas: parameter offsets from θ₀, [G, P].
    batch: T tasks; x_support [T, n_r, d] (adaptation), x_query [T, n_s, d].
    alpha_r: adaptation rate(s), [] or [A].
    chunk: tasks per step of the sequential map (bounds memory).

  Returns:
    [T, G] for a scalar `alpha_r`, else [T, A, G].
  """
  n_r = batch.x_support.shape[1]
  rates = jnp.atleast_1d(jnp.asarray(alpha_r))

  def one(xs, ys, xq, yq):
    x = jnp.concatenate([xs, xq])
    phi = lin.features(x)                                             # [n, P]
    out = lin.f0(x)[:, None] + phi @ deltas.T.astype(phi.dtype)       # [n, G]
    err_r = out[:n_r] - ys[:, None]
    step = (phi[n_r:] @ phi[:n_r].T) @ err_r / n_r                    # [n_s, G]
    pred = out[n_r:] - rates[:, None, None] * step                    # [A, n_s, G]
    return 0.5 * jnp.mean((pred - yq[:, None]) ** 2, axis=1)          # [A, G]

  loss = jax.lax.map(lambda a: one(*a), tuple(batch), batch_size=chunk)
  return loss[:, 0] if jnp.ndim(alpha_r) == 0 else loss
