"""Grid members split over (faked) devices: same values, work really partitioned."""

import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from negmeta import sharding


def _only_scan(fn, *args):
  """The one `scan` equation (a `lax.map` loop) of fn's jaxpr."""
  (loop,) = [e for e in jax.make_jaxpr(fn)(*args).eqns if e.primitive.name == "scan"]
  return loop


class HelpersTest(absltest.TestCase):

  def test_padded_size(self):
    self.assertEqual(sharding.padded_size(7, None), 7)
    self.assertEqual(sharding.padded_size(7, sharding.device_mesh()), 7)  # 1 device
    four = types.SimpleNamespace(size=4)   # only the device count is read
    self.assertEqual([sharding.padded_size(n, four) for n in (1, 4, 7, 8, 9)],
                     [4, 4, 8, 8, 12])

  def test_pad_leading_repeats_the_last_member(self):
    tree = {"a": jnp.arange(3.0), "b": jnp.arange(6).reshape(3, 2)}
    padded = sharding.pad_leading(tree, 5)
    np.testing.assert_array_equal(padded["a"], [0, 1, 2, 2, 2])
    np.testing.assert_array_equal(padded["b"], [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    self.assertIs(sharding.pad_leading(tree, 3)["a"], tree["a"])

  def test_shard_members_without_mesh_is_identity(self):
    tree = (jnp.arange(3.0), jnp.arange(3))
    out, size = sharding.shard_members(tree, None)
    self.assertIs(out, tree)
    self.assertEqual(size, 3)

  def test_batched_map_loops_over_padded_batches_each_split_over_the_mesh(self):
    xs, mesh = jnp.arange(5.0), sharding.device_mesh()
    mapped = lambda v: sharding.batched_map(lambda x: 2 * x, v, 2, mesh)  # noqa: E731
    np.testing.assert_array_equal(mapped(xs), 2 * xs)            # the padding dropped
    # One batch of 2 at a time (3 batches: memory stays bounded), and each
    # batch constrained to the mesh (so it is split over its devices).
    loop = _only_scan(mapped, xs)
    self.assertEqual(loop.params["length"], 3)
    self.assertIn("sharding_constraint",
                  [e.primitive.name for e in loop.params["jaxpr"].jaxpr.eqns])
    # A batch larger than the members is capped at them: one batch of 5, not
    # 5 members padded to 100.
    big = lambda v: sharding.batched_map(lambda x: 2 * x, v, 100, mesh)  # noqa: E731
    np.testing.assert_array_equal(big(xs), 2 * xs)
    loop = _only_scan(big, xs)
    self.assertEqual(loop.params["length"], 1)
    self.assertEqual([v.aval.shape for v in loop.params["jaxpr"].jaxpr.invars], [(5,)])


_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import re
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update("jax_enable_x64", True)
    assert len(jax.devices()) == 4, jax.devices()
    from negmeta import maml, sharding
    from negmeta.convergence import maps, problems as cproblems
    from negmeta.sinusoid import experiment
    # A caller's default (Explicit-axes) mesh is accepted and rebuilt with Auto axes.
    mesh = jax.make_mesh((4,), ("m",))
    # A mesh over some of the devices is over those devices.
    assert list(sharding.device_mesh(jax.devices()[2:]).devices.flat) == jax.devices()[2:]

    def same(a, b, what):
      for name in a._fields:
        x, y = getattr(a, name), getattr(b, name)
        for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
          np.testing.assert_allclose(np.asarray(u, float), np.asarray(v, float),
                                     rtol=1e-10, atol=1e-300, err_msg=f"{what}.{name}")

    # 1. The engine's grid: 6 members (padded to 8), one of which diverges.
    apply_fn = lambda p, x: x @ p
    batch = maml.TaskBatch(*(jax.random.normal(jax.random.key(i), s) for i, s in
                             enumerate([(3, 5, 2), (3, 5), (3, 4, 2), (3, 4)])))
    sample = lambda key: batch
    init = lambda key: jax.random.normal(key, (2,))
    alpha = jnp.array([0.1, -0.2, 0.0, 0.3, -0.1, 0.05])
    beta = jnp.array([0.1, 0.1, 0.2, 1e5, 0.05, 0.1])
    seeds = jnp.array([0, 1, 2, 0, 1, 2])
    grid = jax.jit(maml.meta_train_grid, static_argnames=(
        "apply_fn", "init_fn", "optimizer", "sample_batch", "num_steps", "steps", "mesh"))
    kw = dict(apply_fn=apply_fn, init_fn=init, optimizer=optax.sgd(1.0),
              sample_batch=sample, num_steps=40, steps=2)
    single = grid(alpha=alpha, meta_lr=beta, seed=seeds, **kw)
    split = grid(alpha=alpha, meta_lr=beta, seed=seeds, mesh=mesh, **kw)
    assert np.asarray(single.diverged).tolist() == [False] * 3 + [True] + [False] * 2
    same(single, split, "meta_train_grid")

    # 2. A convergence map: 7 x 5 = 35 cells (padded to 36), 9 per device.
    prob = cproblems.takagi_linear(jax.random.key(0), slope=1.0, intercept=0.5,
                                   num_points=20, dtype=jnp.float64)
    a, b = jnp.linspace(-0.3, 0.3, 7), jnp.logspace(-3, 0.5, 5)
    kw = dict(method="maml", iterations=50)
    single = maps.run_map(cproblems.linear_apply, prob.theta0, prob.batch, a, b, **kw)
    split = maps.run_map(cproblems.linear_apply, prob.theta0, prob.batch, a, b,
                         mesh=mesh, **kw)
    assert 0 < int(np.asarray(single.nonfinite).sum()) < 35
    same(single, split, "run_map")
    hlo = maps.run_map.lower(cproblems.linear_apply, prob.theta0, prob.batch, a, b,
                             mesh=mesh, **kw).compile().as_text()
    loops = [l for l in hlo.splitlines() if " while(" in l]
    assert loops and all(re.search(r"f64\\[9\\]", l) for l in loops), loops

    # 3. The sinusoid study: 3 alpha_t x 1 seed (padded to 4), 3 alpha_r.
    cfg = experiment.SinusoidConfig(
        alpha_t=(0.0, 0.05, -0.02), alpha_r=(0.0, 0.05, 0.01), iterations=20,
        meta_batch=5, meta_lr=3e-3, seeds=1, test_tasks=6, eval_shots=10,
        eval_steps=2, dense_points=8, dtype="float64")
    single, split = experiment.run(cfg), experiment.run(cfg, mesh=mesh)
    for name in ("query", "dense", "train_losses", "diverged", "diverged_step", "params"):
      np.testing.assert_allclose(getattr(single, name), getattr(split, name),
                                 rtol=1e-10, atol=1e-300, err_msg=name)
    print("SHARDED-OK")
    """)


_NONLINEAR_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    from negmeta.nonlinear import _study, experiment
    # 3 runs (padded to 4) x 3 alpha_t; 9 networks evaluated in batches of 4.
    cfg = experiment.NonlinearSweepConfig(
        d=4, width=16, m=2, n_t=4, n_v=2, n_r=4, num_steps=20, grid=(-1.0, 0.0, 1.0),
        seeds=3, test_tasks=5, test_points=3, dtype="float64", eval_batch=4)
    mesh = jax.make_mesh((4,), ("m",))
    single, split = experiment.run(cfg), experiment.run(cfg, mesh=mesh)
    for k in single.losses:
      np.testing.assert_allclose(single.losses[k], split.losses[k], rtol=1e-10, err_msg=k)
    for k in ("diverged", "final_meta_loss", "function_gap", "trained_unadapted",
              "loss_trace"):
      np.testing.assert_allclose(getattr(single, k), getattr(split, k), rtol=1e-10,
                                 err_msg=k)
    print("SHARDED-OK")
    """)


class FakeDevicesTest(absltest.TestCase):

  def _run(self, script):
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=600)
    self.assertIn("SHARDED-OK", proc.stdout, msg=proc.stderr[-3000:])

  def test_engine_map_and_sinusoid_split_over_four_cpu_devices(self):
    self._run(_SCRIPT)

  def test_nonlinear_network_stages_split_over_four_cpu_devices(self):
    self._run(_NONLINEAR_SCRIPT)


if __name__ == "__main__":
  absltest.main()
