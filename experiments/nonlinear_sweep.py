r"""α_t sweep of MAML on quadratic regression with a wide 2-layer ReLU network and
its NTK prediction (Bernacchia 2021, Sec. 4, Fig. 5).

This file is intentionally thin: flags in, `negmeta.nonlinear.experiment` calls,
results out. Examples:

  python experiments/nonlinear_sweep.py --workdir=/tmp/nl            # small, < 1 min
  python experiments/nonlinear_sweep.py --preset=fig5 --workdir=/tmp/fig5
  python experiments/nonlinear_sweep.py --preset=fig5 --seeds=20 --grid=-2,-1,0,1 \
      --workdir=/tmp/fig5_coarse

Writes results.json (config, seeds, versions, curvature scale λ̄, per α_t: the
trained network's and the NTK prediction's test loss mean ± s.e., runs, diverged
count, paired differences against α_t = 0, optima with bootstrap intervals),
runs.npz (per-run values) and nonlinear_sweep.png (trained and NTK curves, one
panel per α_r), and prints a table. Rates (--grid, --alpha_r) are in units of 1/λ̄ unless
--units=absolute. A preset fixes the problem (sizes, task distribution, σ, α_r,
optimizer and steps); flags that contradict it are an error, while --grid,
--seeds, --test_tasks, --test_points, --seed, --dtype and batching may change.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from negmeta import _checks, cli
from negmeta.nonlinear import experiment

_RATE = _checks.MAX_ABS_RATE
_PRESET = flags.DEFINE_enum("preset", None, list(experiment.PRESETS),
                            "Problem to run (fixes the problem parameters).")
flags.DEFINE_integer("d", None, "Input dimension (>= 1).")
flags.DEFINE_integer("width", None, "Hidden units of the network (even, >= 2).")
flags.DEFINE_integer("m", None, "Meta-training tasks per run (>= 1).")
flags.DEFINE_integer("n_t", None, "Support points per meta-training task (>= 1).")
flags.DEFINE_integer("n_v", None, "Query points per meta-training task (>= 1).")
flags.DEFINE_integer("n_r", None, "Adaptation points per test task (>= 1).")
flags.DEFINE_float("w_norm", None, "‖w̄‖, norm of the mean task vector (>= 0).")
flags.DEFINE_float("b_mean", None, "b̄, mean task offset.")
flags.DEFINE_float("nu_w", None, "Task spread of w (>= 0).")
flags.DEFINE_float("nu_b", None, "Task spread of b (>= 0).")
flags.DEFINE_float("sigma", None, "Label noise σ (>= 0).")
flags.DEFINE_list("alpha_r", None, "Adaptation rate(s) (in --units, comma-separated, "
                  f"1 .. 16 values, |x| <= {_RATE:g}; the first is the primary one).")
flags.DEFINE_enum("units", None, list(experiment.UNITS),
                  "Rates in units of 1/λ̄ (curvature) or absolute.")
flags.DEFINE_integer("num_steps", None, "Outer (meta-training) steps (>= 1).")
flags.DEFINE_float("momentum", None, "Heavy-ball momentum of the outer SGD, [0, 0.99].")
flags.DEFINE_float("outer_lr", None, "Outer rate in units of 1/λ_max of the "
                   "linearized meta-Hessian, in (0, 2(1 + momentum)).")
flags.DEFINE_bool("antisymmetric", None, "Antisymmetric init (f(·; θ₀) ≡ 0).")
cli.define_grid_flags("grid", "α_t (in --units)", max_points=experiment.MAX_GRID,
                      note="; 0 is always added")
flags.DEFINE_integer("seeds", None, "Independent runs (>= 2).")
flags.DEFINE_integer("test_tasks", None, "Test tasks per run (>= 1).")
flags.DEFINE_integer("test_points", None, "Test points per test task (>= 1).")
flags.DEFINE_integer("seed", None, "Base PRNG seed (0 .. 2^31-1).")
flags.DEFINE_enum("dtype", None, list(experiment.DTYPES), "Network / training float type.")
flags.DEFINE_integer("grid_batch", None, "α_t values meta-trained together (>= 1).")
flags.DEFINE_integer("eval_batch", None, "Trained networks evaluated together (>= 1).")
_SHARD = cli.define_shard_flag("runs of the network stages (the NTK stages run unsharded)")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (created if needed).")

_CONFIG_FLAGS = tuple(f.name for f in dataclasses.fields(experiment.NonlinearSweepConfig)
                      if f.name != "grid")


def config_from_flags() -> experiment.NonlinearSweepConfig:
  """The validated config described by the command line."""
  f = flags.FLAGS
  given = {k: f[k].value for k in _CONFIG_FLAGS if f[k].present}
  if "alpha_r" in given:
    given["alpha_r"] = _checks.real_grid("alpha_r", given["alpha_r"] or ())
  base = (experiment.PRESETS[_PRESET.value] if _PRESET.value
          else dataclasses.asdict(experiment.NonlinearSweepConfig()))
  grid = cli.grid_from_flags(f, tuple(base.get(
      "grid", experiment.NonlinearSweepConfig.grid)), max_points=experiment.MAX_GRID)
  if grid is not None:
    given["grid"] = grid
  if _PRESET.value:
    return experiment.preset(_PRESET.value, **given)
  return experiment.validate(experiment.NonlinearSweepConfig(**given))


# The flags that set how much memory a run needs (named when it runs out).
_SIZE_FLAGS = ("d", "width", "m", "n_t", "seeds", "test_tasks", "test_points", "grid_batch",
               "eval_batch")


def main(argv):
  config, workdir = cli.start("nonlinear_sweep", argv, _WORKDIR.value, config_from_flags)
  with (cli.run_errors("nonlinear_sweep", _SIZE_FLAGS),
        cli.resume_dir(workdir, "stages") as stages):   # finished stages: resumable
    result = experiment.run(config, log=print, mesh=cli.mesh_from_flag(_SHARD.value),
                            store_dir=stages)
    paths = experiment.save(result, workdir)
  cli.report(experiment.summary_table(result), paths)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("nonlinear_sweep"))
