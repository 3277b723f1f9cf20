r"""Convergence maps of MAML's outer loop over (α, β): theory against experiment.

This file is intentionally thin: flags in, `negmeta.convergence.experiment` calls,
results out. Examples:

  python experiments/convergence_map.py --workdir=/tmp/takagi            # Takagi, MAML
  python experiments/convergence_map.py --preset=takagi_linear --method=fomaml \
      --workdir=/tmp/takagi_fo
  python experiments/convergence_map.py --preset=mixed_linear --workdir=/tmp/mixed
  python experiments/convergence_map.py --preset=sinusoid --workdir=/tmp/sinusoid
  python experiments/convergence_map.py --preset=takagi_linear --alpha_min=-0.2 \
      --alpha_num=81 --beta_min=1e-3 --beta_max=10 --beta_num=100 --workdir=/tmp/wide

Every cell of the grid (α linear and signed, β log-spaced) is a whole full-batch
meta-training run; the whole grid is one compiled call. Writes results.json
(config, seeds, versions, the classification criterion, agreement with theory,
Hessian eigenvalues, empirical β_c at α = 0 against 2/λ_max, the boundary per α),
map.npz (grids, final losses, empirical and predicted classes) and a PNG heatmap
with the exact (or Hessian-predicted) and Takagi boundaries, and prints a table.
A preset fixes the problem and the criterion; the method, grid, number of
iterations and seed may be changed. With --chunk_alphas=K the map runs K rows of
α per call (one compilation for all), each finished chunk saved under
<workdir>/chunks; rerunning the same command after an interruption loads them.
"""

from __future__ import annotations


from absl import app, flags

from negmeta import cli
from negmeta.convergence import experiment

# Every flag is read as a string and validated by the library, so any bad value
# ends as one line `convergence_map: error: --<flag>: <allowed values>`.
_PRESET = flags.DEFINE_string(
    "preset", "takagi_linear", f"Problem: one of {', '.join(experiment.PRESET_NAMES)} "
    "(fixes the data, model and criterion).")
flags.DEFINE_string("method", None, "Meta-gradient: maml (exact second-order, the "
                    "default) or fomaml (first-order).")
flags.DEFINE_string("alpha_min", None, "Smallest inner rate α (any sign).")
flags.DEFINE_string("alpha_max", None, "Largest inner rate α (> --alpha_min).")
flags.DEFINE_string("alpha_num", None, f"Number of α values, linearly spaced "
                    f"(2 .. {experiment.MAX_GRID_NUM}).")
flags.DEFINE_string("beta_min", None, "Smallest meta rate β (> 0).")
flags.DEFINE_string("beta_max", None, "Largest meta rate β (> --beta_min).")
flags.DEFINE_string("beta_num", None, f"Number of β values, log-spaced "
                    f"(2 .. {experiment.MAX_GRID_NUM}).")
flags.DEFINE_string("iterations", None, f"Outer steps per run "
                    f"(1 .. {experiment.MAX_ITERATIONS}).")
flags.DEFINE_string("seed", None, "PRNG seed of the data (0 .. 2^31-1).")
flags.DEFINE_string("chunk_alphas", None, "α rows per compiled call, each saved to "
                    "<workdir>/chunks so an interrupted map resumes (0 .. --alpha_num; "
                    "0 = the whole map in one call, the default).")
_SHARD = cli.define_shard_flag("the map's cells")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (created if needed).")

_REAL_FLAGS = ("alpha_min", "alpha_max", "beta_min", "beta_max")
_INT_FLAGS = ("alpha_num", "beta_num", "iterations", "seed", "chunk_alphas")


def _as_int(text: str):
  """An integer as the other binaries' DEFINE_integer flags read it (0x10, 0o10 too)."""
  try:
    return flags.IntegerParser().parse(text)
  except ValueError:
    return text   # validation reports it with the allowed range


def config_from_flags() -> experiment.ConvergenceMapConfig:
  """The validated config described by the command line."""
  f = flags.FLAGS
  given = {}
  if f["method"].present:
    given["method"] = f["method"].value
  for name in _REAL_FLAGS:
    if f[name].present:
      given[name] = f[name].value
  for name in _INT_FLAGS:
    if f[name].present:
      given[name] = _as_int(f[name].value)
  return experiment.preset(_PRESET.value, **given)


# The flags that set how much memory a run needs (named when it runs out).
_SIZE_FLAGS = ("alpha_num", "beta_num", "chunk_alphas")


def main(argv):
  config, workdir = cli.start("convergence_map", argv, _WORKDIR.value, config_from_flags)
  with (cli.run_errors("convergence_map", _SIZE_FLAGS),
        cli.resume_dir(workdir, "chunks", bool(config.chunk_alphas)) as chunks):
    result = experiment.run(config, log=print, mesh=cli.mesh_from_flag(_SHARD.value),
                            store_dir=chunks)
    paths = experiment.save(result, workdir)
  cli.report(experiment.summary_table(result), paths)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("convergence_map"))
