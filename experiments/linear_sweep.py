r"""Learning-rate sweep of MAML on mixed linear regression (Bernacchia 2021, Figs. 2-3).

This file is intentionally thin: flags in, `negmeta.linear.experiment` calls, results
out. Examples:

  python experiments/linear_sweep.py --workdir=/tmp/negmeta            # small defaults
  python experiments/linear_sweep.py --preset=fig2b --workdir=/tmp/fig2b
  python experiments/linear_sweep.py --preset=fig3b --runs=200 --workdir=/tmp/fig3b
  python experiments/linear_sweep.py --sweep=alpha_r --grid_min=-0.1 --grid_max=0.5 \
      --p=100 --n_t=10 --workdir=/tmp/custom

Writes results.json (config, seeds, versions, per grid value: theory, simulated
mean ± s.e., runs), runs.npz (per-run values) and a PNG, and prints a table.
A preset fixes the problem (p, n_t, n_v, n_r, m, σ, ν, w_0, ω_0, the fixed rate and
the swept one); flags that contradict it are an error, while --runs, --test_tasks,
--test_points, --seed, the grid, --batch_size, --chunk_runs, --dtype and --shard
may be changed.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from negmeta import cli
from negmeta.linear import experiment

_MAX, _BOUND = experiment.MAX_SIZE, experiment.MAX_VALUE
_PRESET = flags.DEFINE_enum("preset", None, list(experiment.PRESETS),
                            "Paper figure to reproduce (fixes the problem parameters).")
flags.DEFINE_integer("p", None, "Input dimension = number of parameters "
                     f"(1 .. {experiment.MAX_P}).")
flags.DEFINE_integer("n_t", None, f"Support points per meta-training task (1 .. {_MAX}).")
flags.DEFINE_integer("n_v", None, f"Query points per meta-training task (1 .. {_MAX}).")
flags.DEFINE_integer("n_r", None, f"Adaptation points of a new task (1 .. {_MAX}).")
flags.DEFINE_integer("m", None, f"Number of meta-training tasks (1 .. {_MAX}).")
flags.DEFINE_float("sigma", None, f"Label noise σ (0 .. {_BOUND:g}).")
flags.DEFINE_float("nu", None, f"Task variability ν (0 .. {_BOUND:g}).")
flags.DEFINE_float("w0", None, f"Task mean: every component of w_0 (|x| <= {_BOUND:g}).")
flags.DEFINE_float("omega0", None, "Initial meta-parameter: every component of ω_0 "
                   f"(|x| <= {_BOUND:g}).")
flags.DEFINE_float("alpha_t", None, "Meta-training inner rate (fixed when sweeping α_r; "
                   f"|x| <= {_BOUND:g}).")
flags.DEFINE_float("alpha_r", None, f"Adaptation rate (fixed when sweeping α_t; |x| <= {_BOUND:g}).")
flags.DEFINE_enum("sweep", None, list(experiment.SWEEPS), "Which rate the grid varies.")
cli.define_grid_flags("grid", "swept rate", max_points=100_000, max_abs=_BOUND)
flags.DEFINE_integer("runs", None, f"Independent runs (2 .. {experiment.MAX_RUNS}).")
flags.DEFINE_integer("test_tasks", None, f"New tasks evaluated per run (1 .. {_MAX}).")
flags.DEFINE_integer("test_points", None, f"Test points per new task (1 .. {_MAX}).")
flags.DEFINE_integer("seed", None, "Base PRNG seed (0 .. 2^31-1).")
flags.DEFINE_integer("batch_size", None, "Runs vmapped together (0 = automatic).")
flags.DEFINE_integer("chunk_runs", None, "Runs per compiled call, each saved to "
                     "<workdir>/chunks so an interrupted sweep resumes (0 = all).")
flags.DEFINE_enum("dtype", None, list(experiment.DTYPES), "Simulation float type.")
_SHARD = cli.define_shard_flag("runs")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (created if needed).")

_CONFIG_FLAGS = ("p", "n_t", "n_v", "n_r", "m", "sigma", "nu", "w0", "omega0",
                 "alpha_t", "alpha_r", "sweep", "runs", "test_tasks", "test_points",
                 "seed", "batch_size", "chunk_runs", "dtype")


def config_from_flags() -> experiment.LinearSweepConfig:
  """The validated config described by the command line."""
  f = flags.FLAGS
  given = {k: f[k].value for k in _CONFIG_FLAGS if f[k].present}
  base = (experiment.PRESETS[_PRESET.value] if _PRESET.value
          else dataclasses.asdict(experiment.LinearSweepConfig()))
  grid = cli.grid_from_flags(f, tuple(base["grid"]))
  if grid is not None:
    given["grid"] = grid
  if _PRESET.value:
    return experiment.preset(_PRESET.value, **given)
  return experiment.validate(experiment.LinearSweepConfig(**given))


# The flags that set how much memory a run needs (named when it runs out).
_SIZE_FLAGS = ("p", "n_t", "n_r", "m", "runs", "test_tasks", "test_points", "batch_size")


def main(argv):
  config, workdir = cli.start("linear_sweep", argv, _WORKDIR.value, config_from_flags)
  mesh = cli.mesh_from_flag(_SHARD.value, axis_name="runs")
  with (cli.run_errors("linear_sweep", _SIZE_FLAGS),
        cli.resume_dir(workdir, "chunks", bool(config.chunk_runs)) as chunks):
    result = experiment.run(config, store_dir=chunks, mesh=mesh, log=print)
    paths = experiment.save(result, workdir)
  cli.report(experiment.summary_table(result), paths)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("linear_sweep"))
