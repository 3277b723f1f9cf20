r"""MAML on sinusoid regression (Finn et al. 2017): Table 2 and α_t / α_r sweeps.

This file is intentionally thin: flags in, `negmeta.sinusoid.experiment` calls,
results out. Examples:

  python experiments/sinusoid.py --workdir=/tmp/sin                 # small defaults (< 1 min)
  python experiments/sinusoid.py --preset=finn_table2 --workdir=/tmp/table2
  python experiments/sinusoid.py --preset=alpha_t_small --workdir=/tmp/sweep_small
  python experiments/sinusoid.py --preset=alpha_t_alpha_r --workdir=/tmp/sweep2d
  python experiments/sinusoid.py --alpha_t_min=-0.02 --alpha_t_max=0.04 \
      --alpha_t_num=7 --alpha_r=0.005,0.01,0.02 --iterations=5000 --seeds=3 \
      --workdir=/tmp/custom

Every (α_t, seed) member is meta-trained in one compiled call (or
--chunk_members at a time, saved to <workdir>/chunks so that rerunning the same
command resumes; the presets that run for minutes default to chunks: 1 member
for finn_table2 and finn_table2_code, 12 for alpha_t_sweep and alpha_t_alpha_r)
and evaluated at every α_r with Finn's test protocol. Writes results.json
(config, seeds, versions, per grid value: loss after each fine-tuning step,
mean ± s.e. and 95% CI over seeds, Finn's per-seed CI, divergence), runs.npz
(per-task losses, training curves, final parameters) and PNGs (learning curve
with Finn's Table 2, loss vs α_t, the α_t × α_r map, meta-training curves), and
prints a table.

A preset fixes the problem (meta-batch, shots, inner steps, β, order, the
evaluation protocol; for finn_table2 and finn_table2_code also their α grids); flags that
contradict it are an error, while --iterations, --seeds, --seed,
--test_tasks, --dense_points, the sweep grids of sweep presets and batching
may be changed (recorded as modified_from_preset).
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from negmeta import _checks, cli
from negmeta.sinusoid import experiment

_PRESET = flags.DEFINE_enum("preset", None, list(experiment.PRESETS),
                            "Named setup (finn_table2 reproduces MAML's Table 2).")
_RATE = _checks.MAX_ABS_RATE
cli.define_grid_flags("alpha_t", "meta-training rate α_t", max_points=experiment.MAX_GRID)
cli.define_grid_flags("alpha_r", "adaptation rate α_r (at evaluation)",
                      max_points=experiment.MAX_GRID)
flags.DEFINE_integer("iterations", None, "Meta-training iterations (1 .. 10^8).")
flags.DEFINE_integer("meta_batch", None, "Tasks per meta-iteration (1 .. 10^6).")
flags.DEFINE_integer("k_support", None, "Support points per training task (1 .. 10^5).")
flags.DEFINE_integer("k_query", None, "Query points per training task (1 .. 10^5).")
flags.DEFINE_integer("inner_steps", None, "Inner steps in meta-training (1 .. 1000).")
flags.DEFINE_float("meta_lr", None, f"Adam meta learning rate β (> 0, <= {_RATE:g}).")
flags.DEFINE_bool("first_order", None, "First-order MAML meta-gradient.")
flags.DEFINE_integer("seeds", None, "Independent seeds per grid value (1 .. 10000).")
flags.DEFINE_integer("seed", None, "First seed (seeds are seed..seed+seeds-1 <= 2^31-1).")
flags.DEFINE_integer("test_tasks", None, "Test tasks per seed (2 .. 10^6; Finn: 600).")
flags.DEFINE_integer("eval_shots", None, "Fine-tuning points per test task (1 .. 10^5).")
flags.DEFINE_integer("eval_steps", None, "Fine-tuning SGD steps (0 .. 1000).")
flags.DEFINE_integer("test_points", None, "Random held-out points per test task "
                     "(0 .. 10^5; 0 = as many as --eval_shots, as cbfinn/maml).")
flags.DEFINE_integer("dense_points", None, "Midpoint-grid points over [-5, 5] for "
                     "the low-noise estimator (0 .. 10^5; 0 = off).")
flags.DEFINE_integer("chunk_members", None, "Grid members per compiled call, each "
                     "saved to <workdir>/chunks so an interrupted run resumes "
                     "(0 = all; at most seeds × number of α_t; default 0, or per preset: "
                     + ", ".join(f"{name} {size}" for name, size
                                 in experiment.DEFAULT_CHUNK_MEMBERS.items()) + ").")
flags.DEFINE_enum("remat", None, list(experiment.REMAT),
                  "Inner-loop rematerialization.")
flags.DEFINE_enum("dtype", None, list(experiment.DTYPES), "Float type.")
_SHARD = cli.define_shard_flag("grid members (and their evaluation)")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (created if needed).")

_CONFIG_FLAGS = ("iterations", "meta_batch", "k_support", "k_query",
                 "inner_steps", "meta_lr", "first_order", "seeds", "seed",
                 "test_tasks", "eval_shots", "eval_steps", "test_points",
                 "dense_points", "chunk_members", "remat", "dtype")


def config_from_flags() -> experiment.SinusoidConfig:
  """The validated config described by the command line."""
  f = flags.FLAGS
  given = {k: f[k].value for k in _CONFIG_FLAGS if f[k].present}
  base = (experiment.PRESETS[_PRESET.value] if _PRESET.value
          else dataclasses.asdict(experiment.SinusoidConfig()))
  for prefix in ("alpha_t", "alpha_r"):
    values = cli.grid_from_flags(f, tuple(base[prefix]), prefix=prefix,
                                 max_points=experiment.MAX_GRID)
    if values is not None:
      given[prefix] = values
  if _PRESET.value:
    return experiment.preset(_PRESET.value, **given)
  return experiment.validate(experiment.SinusoidConfig(**given))


# The flags that set how much memory a run needs (named when it runs out).
_SIZE_FLAGS = ("meta_batch", "k_support", "k_query", "seeds", "test_tasks", "eval_shots",
               "dense_points", "chunk_members")


def main(argv):
  config, workdir = cli.start("sinusoid", argv, _WORKDIR.value, config_from_flags)
  with (cli.run_errors("sinusoid", _SIZE_FLAGS),
        cli.resume_dir(workdir, "chunks", bool(config.chunk_members)) as chunks):
    result = experiment.run(config, preset_name=_PRESET.value, store_dir=chunks,
                            log=print, mesh=cli.mesh_from_flag(_SHARD.value))
    paths = experiment.save(result, workdir)
  cli.report(experiment.summary_table(result), paths)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("sinusoid"))
