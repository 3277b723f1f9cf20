r"""Where the paper-scale Fig. 2b sweep spends its time: trace, compile, execute.

Run by hand:  python benchmarks/linear_kernel_breakdown.py [--variants=...]

Times `linear._sweep.simulate_batches` on the `fig2b` preset (1000 runs, 41 α_t
values, α_r = 0.2, 100 new tasks × 50 points, float64) in batches of 26, in
three phases: `lower` (tracing), `compile`, and two executions. Variants
(ablations, each in its own subprocess so no compilation is shared):

  full          the kernel as it is;
  no_normals    every standard-normal draw replaced by a constant (the χ²
                sampler and key splitting stay): what the threefry normals cost;
  no_protocol   the new-task protocol estimator replaced by zeros: the
                meta-training half alone (draw, ω* path, inner-step gap,
                exact loss).

The ablated kernels compute wrong numbers on purpose; only their times mean
something. Prints one JSON line per variant, with the CPU time of each phase
(the machine's cores in use = CPU time / wall time).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VARIANTS = ("full", "no_normals", "no_protocol")


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def measure(variant: str) -> dict:
  import jax
  import jax.numpy as jnp
  jax.config.update("jax_enable_x64", True)
  from negmeta import _prng
  from negmeta.linear import _maml, _sweep, experiment
  config = experiment.preset("fig2b")
  problem = experiment.make_problem(config)
  alpha_t, alpha_r = (jnp.asarray(g) for g in experiment.grid_pairs(config))
  if variant == "no_normals":
    _prng.normals = lambda key, shapes, dtype=jnp.float64: [
        jnp.full(s, 0.1, dtype) for s in shapes]
  elif variant == "no_protocol":
    _maml.protocol_test_loss_reduced = lambda key, *args, **kwargs: jnp.zeros_like(alpha_t)
  batch = 26
  n = -(-config.runs // batch)
  keys = _sweep.run_keys(config.seed, 0, n * batch).reshape(n, batch)
  sizes = dict(test_tasks=config.test_tasks, test_points=config.test_points,
               plan=_sweep.protocol_plan(alpha_t, alpha_r))
  result = {"variant": variant, "runs": n * batch, "batch": batch}

  def timed(phase, fn):
    cpu, wall = _cpu_seconds(), time.perf_counter()
    out = jax.block_until_ready(fn())
    result[f"{phase}_s"] = round(time.perf_counter() - wall, 3)
    result[f"{phase}_cpu_s"] = round(_cpu_seconds() - cpu, 3)
    return out

  lowered = timed("trace", lambda: _sweep.simulate_batches.lower(
      keys, problem, alpha_t, alpha_r, **sizes))
  compiled = timed("compile", lowered.compile)
  for phase in ("execute", "execute_again"):
    timed(phase, lambda: compiled(keys, problem, alpha_t, alpha_r))
  result["total_s"] = round(result["trace_s"] + result["compile_s"] + result["execute_s"], 3)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"comma-separated, from {', '.join(VARIANTS)}")
  parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure(args.child)))
    return
  variants = [v for v in args.variants.split(",") if v]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    parser.error(f"--variants: unknown {', '.join(unknown)}; allowed: {', '.join(VARIANTS)}")
  for variant in variants:
    out = subprocess.run([sys.executable, __file__, "--child", variant],
                         capture_output=True, text=True)
    if out.returncode != 0:
      last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
      sys.exit(f"linear_kernel_breakdown: {variant} failed: {last}\n"
               f"(is negmeta installed? README: pip install -e \".[dev]\")")
    print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
  main()
