"""Compiled kernels of the nonlinear study: setup, NTK prediction, training, evaluation.

A *run* r is one draw of (θ₀, the m meta-training tasks, the T test tasks) from
``fold_in(key(seed), r)``. Every α_t of the grid sees the same run (common random
numbers), so differences along the grid are paired.

Stages (each one compiled function, traced once per shape; grid values, rates
and keys are array arguments):

1. `calibrate`: λ_max of the empirical NTK Gram Θ(X_t, X_t)/n_t of every
   meta-training task at θ₀ (the α_t unit).
2. `ntk_solutions`, `ntk_curvature`: the linearized meta-problem of each run,
   solved exactly (δ*, nearest θ₀) for every α_t, and its curvature (sets the
   outer rate).
3. `ntk_paths`: the linearized model after the same outer optimizer and number
   of steps as the network (exact, in the dual space).
4. `train`: the network meta-trained at every (α_t, run), all in one call.
5. `evaluate_trained` / `evaluate_ntk`: adaptation with α_r on the T test tasks.

Each compiled call contains at most one chain of batched LAPACK calls
(eigvalsh; or Cholesky → triangular solves), and the driver waits for each
stage before the next: jaxlib 0.10.2's CPU LAPACK kernels split a batch over
XLA's intra-op thread pool and block until the pieces finish
(`ParallelBatchMap`), so two independent batched LAPACK calls that XLA runs
concurrently can occupy every pool thread (2 on a 2-core machine) and wait
forever. Found with gdb on a hung run (both pool threads in
`BlockingCounter::Wait` under `lapack_dsyevd_ffi` and `lapack_dpotrf_ffi`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from negmeta import maml, sharding
from negmeta.maml import TaskBatch
from negmeta.nonlinear import _model, _tasks, ntk


def half_mse(pred: jax.Array, y: jax.Array) -> jax.Array:
  """½ mean((ŷ − y)²): Bernacchia's per-sample loss ½(y − f)², averaged."""
  return 0.5 * jnp.mean(jnp.square(pred - y))


class Sizes(NamedTuple):
  """Static sizes of a study (hashable: used as a jit static argument).

  Attributes:
    d: input dimension.
    width: hidden units h.
    m: meta-training tasks per run.
    n_t, n_v: support / query points per meta-training task.
    n_r, n_s: adaptation / test points per test task.
    test_tasks: T, test tasks per run.
    num_steps: outer (meta-training) steps.
    momentum: heavy-ball momentum of the outer optimizer.
    antisymmetric: antisymmetric initialization (f(·; θ₀) ≡ 0).
    dtype: network / training dtype name.
    grid_batch: grid values meta-trained together (vmapped); the rest of the
      grid is a sequential map in the same compiled call.
    eval_batch: (α_t, run) members evaluated together.
    ntk_chunk: test tasks per step when evaluating the linearized model.
  """
  d: int
  width: int
  m: int
  n_t: int
  n_v: int
  n_r: int
  n_s: int
  test_tasks: int
  num_steps: int
  momentum: float
  antisymmetric: bool
  dtype: str
  grid_batch: int
  eval_batch: int
  ntk_chunk: int


class Run(NamedTuple):
  """One run's random draw.

  Attributes:
    params0: θ₀ (flax pytree).
    train: m meta-training tasks (n_t support, n_v query points).
    test: T test tasks (n_r adaptation, n_s test points).
  """
  params0: Any
  train: TaskBatch
  test: TaskBatch


def module(sizes: Sizes, dtype: Any = None) -> _model.TwoLayerReLU:
  return _model.TwoLayerReLU(sizes.width,
                             param_dtype=jnp.dtype(dtype or sizes.dtype))


def apply_fn(sizes: Sizes, dtype: Any = None):
  net = module(sizes, dtype)
  return lambda params, x: net.apply(params, x)


def optimizer(sizes: Sizes) -> optax.GradientTransformation:
  """Outer optimizer: heavy-ball SGD with unit rate (β is `meta_lr`)."""
  return optax.sgd(1.0, momentum=sizes.momentum or None)


def make_run(key: jax.Array, problem: _tasks.QuadraticProblem,
             sizes: Sizes) -> Run:
  """Draws run `key`'s θ₀, meta-training tasks and test tasks (network dtype)."""
  k_init, k_train, k_test = jax.random.split(key, 3)
  params0 = _model.antisymmetric_init(module(sizes), k_init, sizes.d,
                                      sizes.antisymmetric)
  train = _tasks.sample_tasks(k_train, problem, sizes.m, sizes.n_t, sizes.n_v)
  test = _tasks.sample_tasks(k_test, problem, sizes.test_tasks, sizes.n_r,
                             sizes.n_s)
  return Run(params0, train, test)


def _as64(tree):
  return jax.tree.map(lambda a: a.astype(jnp.float64)
                      if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _linearized(run: Run, sizes: Sizes) -> ntk.Linearized:
  """The run's network linearized at θ₀, in float64 (needs x64 enabled)."""
  return ntk.linearize(apply_fn(sizes, jnp.float64), _as64(run.params0))


@functools.partial(jax.jit, static_argnames=("sizes",))
def calibrate(keys: jax.Array, problem: _tasks.QuadraticProblem,
              sizes: Sizes) -> jax.Array:
  """λ_max(Θ(X_t, X_t)/n_t) at θ₀ for every run and meta-training task, [R, m]."""

  def one(key):
    run = make_run(key, problem, sizes)
    return ntk.inner_curvature(_linearized(run, sizes),
                               _as64(run.train.x_support))

  return jax.vmap(one)(keys)


class NTKSolution(NamedTuple):
  """The exact linearized meta-solution of each run (arrays [R, G, ...]).

  Attributes:
    delta: δ*(α_t) = θ* − θ₀, [R, G, P].
    rcond: Cholesky pivot ratio of ZZᵀ, [R, G].
  """
  delta: jax.Array
  rcond: jax.Array


@functools.partial(jax.jit, static_argnames=("sizes",))
def ntk_solutions(keys: jax.Array, problem: _tasks.QuadraticProblem,
                  alpha_t: jax.Array, sizes: Sizes) -> NTKSolution:
  """Exact δ*(α_t) for every run (float64; one batched Cholesky per run).

  Args:
    keys: run keys, [R].
    problem: task distribution (network dtype).
    alpha_t: [G], absolute units.
    sizes: static sizes.

  Returns:
    NTKSolution.
  """

  def one(key):
    run = make_run(key, problem, sizes)
    design = ntk.meta_design(_linearized(run, sizes), _as64(run.train))
    solution = ntk.exact_solution(design, alpha_t)
    return NTKSolution(solution.omega, solution.rcond)

  return jax.vmap(one)(keys)


@functools.partial(jax.jit, static_argnames=("sizes",))
def ntk_curvature(keys: jax.Array, problem: _tasks.QuadraticProblem,
                  alpha_t: jax.Array, sizes: Sizes) -> tuple[jax.Array, jax.Array]:
  """Largest and smallest eigenvalue of the linearized meta-Hessian ZᵀZ/N.

  Its own compiled call (one batched eigvalsh): see the module docstring.

  Args:
    keys: run keys, [R].
    problem: task distribution.
    alpha_t: [G].
    sizes: static sizes.

  Returns:
    (λ_max [R, G], λ_min [R, G]); λ_max sets the outer rate, λ_max/λ_min the
    number of steps convergence takes.
  """

  def one(key):
    run = make_run(key, problem, sizes)
    design = ntk.meta_design(_linearized(run, sizes), _as64(run.train))
    eig = jax.vmap(lambda a: ntk.meta_curvature(design, a))(alpha_t)
    return eig[:, -1], eig[:, 0]

  return jax.vmap(one)(keys)


@functools.partial(jax.jit, static_argnames=("sizes",))
def ntk_paths(keys: jax.Array, problem: _tasks.QuadraticProblem,
              alpha_t: jax.Array, meta_lr: jax.Array, sizes: Sizes
              ) -> tuple[jax.Array, jax.Array]:
  """The linearized model after `num_steps` outer steps from θ₀.

  Args:
    keys: run keys, [R].
    problem: task distribution.
    alpha_t: [G].
    meta_lr: outer rate β per run and grid value, [R, G].
    sizes: static sizes.

  Returns:
    (δ_S [R, G, P], its linearized meta-training loss ‖Zδ_S − u‖²/(2N) [R, G]).
  """
  opt = optimizer(sizes)

  def one(key, lrs):
    run = make_run(key, problem, sizes)
    design = ntk.meta_design(_linearized(run, sizes), _as64(run.train))

    def path(a, lr):
      delta = ntk.dual_optimizer_path(design, a, opt, lr, sizes.num_steps)
      z, u = design.at(a)
      return delta, 0.5 * jnp.mean((z @ delta - u) ** 2)

    return jax.vmap(path)(alpha_t, lrs)

  return jax.lax.map(lambda a: one(*a), (keys, meta_lr))


def _train_grid(keys: jax.Array, problem: _tasks.QuadraticProblem,
                alpha_t: jax.Array, meta_lr: jax.Array,
                sizes: Sizes, mesh: jax.sharding.Mesh | None = None
                ) -> maml.MetaTrainResult:
  """Meta-trains the network at every (α_t, run) in one compiled call (`train`).

  Each member is `negmeta.maml.meta_train` (one inner step at rate α_t,
  full-batch outer steps on the run's fixed m tasks, loss ½·MSE) started at the
  run's θ₀. Grid values are mapped in vmapped groups of `sizes.grid_batch`;
  runs are vmapped. `train` is this function jitted with `sizes` static.

  Args:
    keys: run keys, [R].
    problem: task distribution.
    alpha_t: [G].
    meta_lr: outer rate β per run and grid value, [R, G].
    sizes: static sizes.
    mesh: optional 1-D device mesh (static; `negmeta.sharding.device_mesh`):
      the runs are split over its devices. Same values as without.

  Returns:
    `negmeta.maml.MetaTrainResult` with leading axes [G, R].
  """
  (keys, meta_lr), num_runs = sharding.shard_members((keys, meta_lr), mesh)
  apply = apply_fn(sizes)
  opt = optimizer(sizes)
  runs = jax.vmap(lambda k: make_run(k, problem, sizes))(keys)
  dtype = jnp.dtype(sizes.dtype)

  def one_alpha(args):
    alpha, lrs = args

    def one_run(params0, batch, lr):
      return maml.meta_train(
          apply, params0, alpha.astype(dtype), opt, lambda _: batch,
          jax.random.key(0), num_steps=sizes.num_steps, steps=1,
          meta_lr=lr.astype(dtype), loss_fn=half_mse)

    return jax.vmap(one_run)(runs.params0, runs.train, lrs)

  result = jax.lax.map(one_alpha, (alpha_t, meta_lr.T),
                       batch_size=min(sizes.grid_batch, alpha_t.shape[0]))
  return jax.tree.map(lambda x: x[:, :num_runs], result)   # drops mesh padding


train = jax.jit(_train_grid, static_argnames=("sizes", "mesh"))


class TrainedEval(NamedTuple):
  """Test results of the trained networks (predictions [G, R, T, n_s]).

  Attributes:
    loss: mean over test tasks of ½·MSE after one adaptation step at each α_r,
      [G, R, A].
    loss_unadapted: the same before adaptation, [G, R].
    predictions: f(x; θ) at the test tasks' test inputs, unadapted.
  """
  loss: jax.Array
  loss_unadapted: jax.Array
  predictions: jax.Array


@functools.partial(jax.jit, static_argnames=("sizes", "mesh"))
def evaluate_trained(keys: jax.Array, problem: _tasks.QuadraticProblem,
                     params: Any, alpha_r: jax.Array, sizes: Sizes,
                     mesh: jax.sharding.Mesh | None = None) -> TrainedEval:
  """Adapts every trained network to its run's test tasks with rate α_r.

  Args:
    keys: run keys, [R].
    problem: task distribution.
    params: trained parameters with leading axes [G, R].
    alpha_r: adaptation rates, [A].
    sizes: static sizes.
    mesh: optional 1-D device mesh (static): each batch of `sizes.eval_batch`
      networks is split over its devices.
  """
  apply = apply_fn(sizes)
  rates = alpha_r.astype(sizes.dtype)
  tests = jax.vmap(lambda k: make_run(k, problem, sizes).test)(keys)
  g, r = jax.tree.leaves(params)[0].shape[:2]
  flat = jax.tree.map(lambda a: a.reshape(g * r, *a.shape[2:]), params)
  run_index = jnp.tile(jnp.arange(r), g)

  def one(args):
    p, i = args
    test = jax.tree.map(lambda a: a[i], tests)

    def task(xs, ys, xq, yq):
      # One inner step per rate, θ' = θ − α_r ∇L_r(θ), sharing the gradient.
      grads = jax.grad(lambda q: half_mse(apply(q, xs), ys))(p)
      unadapted = apply(p, xq)
      adapted = jax.vmap(lambda a: half_mse(apply(jax.tree.map(
          lambda w, g: w - (a * g).astype(w.dtype), p, grads), xq), yq))(rates)
      return adapted, half_mse(unadapted, yq), unadapted

    adapted, unadapted, pred = jax.vmap(task)(*test)
    return jnp.mean(adapted, axis=0), jnp.mean(unadapted), pred

  loss, unadapted, pred = sharding.batched_map(one, (flat, run_index),
                                               sizes.eval_batch, mesh)
  shape = lambda a: a.reshape(g, r, *a.shape[1:])  # noqa: E731
  return TrainedEval(shape(loss), shape(unadapted), shape(pred))


class NTKEval(NamedTuple):
  """Test results of linearized models (predictions [R, K, T, n_s]).

  Attributes:
    loss: mean over test tasks of ½·MSE after one adaptation step at each α_r,
      [R, A, K].
    predictions: f_lin(x; θ₀ + δ_k) at the test inputs, unadapted.
  """
  loss: jax.Array
  predictions: jax.Array


@functools.partial(jax.jit, static_argnames=("sizes",))
def evaluate_ntk(keys: jax.Array, problem: _tasks.QuadraticProblem,
                 deltas: jax.Array, alpha_r: jax.Array, sizes: Sizes) -> NTKEval:
  """Adapts linearized models θ₀ + δ_k of every run to its test tasks (float64).

  Args:
    keys: run keys, [R].
    problem: task distribution.
    deltas: parameter offsets per run, [R, K, P].
    alpha_r: adaptation rates, [A].
    sizes: static sizes.
  """

  def one(args):
    key, delta = args
    run = make_run(key, problem, sizes)
    lin = _linearized(run, sizes)
    test = _as64(run.test)
    loss = ntk.adapted_test_loss(lin, delta, test, alpha_r, chunk=sizes.ntk_chunk)
    x = test.x_query.reshape(-1, sizes.d)
    pred = jax.vmap(lambda dk: lin.predict(dk, x))(delta)
    return jnp.mean(loss, axis=0), pred.reshape(delta.shape[0], *test.x_query.shape[:2])

  return NTKEval(*jax.lax.map(one, (keys, deltas)))
