r"""Where the paper-scale Fig. 2b sweep spends its time: trace, compile, execute.

Run by hand:  python benchmarks/linear_kernel_breakdown.py [--variants=...]

Times `linear._sweep.simulate_batches` for 1000 runs of the Fig. 2b problem (41
α_t values, α_r = 0.2, 100 new tasks × 50 points, float64, batches of 26) in
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
  import numpy as np
  jax.config.update("jax_enable_x64", True)
  from negmeta import _prng, problems
  from negmeta.linear import _maml, _sweep
  if variant == "no_normals":
    _prng.normals = lambda key, shapes, dtype=jnp.float64: [
        jnp.full(s, 0.1, dtype) for s in shapes]
  elif variant == "no_protocol":
    _maml.protocol_test_loss_reduced = lambda key, *args, **kwargs: jnp.zeros(41)
  problem = problems.mixed_linear_regression(p=60, n_t=30, n_v=2, n_r=20, m=3,
                                             sigma=1.0, nu=0.5)
  grid = np.linspace(-2.0, 2.0, 41)
  plan = _sweep.protocol_plan(grid, 0.2)
  alpha_t, alpha_r = _sweep._grid_arrays(grid, 0.2, jnp.float64)
  batch = 26
  n = -(-1000 // batch)
  keys = _sweep.run_keys(0, 0, n * batch).reshape(n, batch)
  result = {"variant": variant, "runs": n * batch, "batch": batch}
  compiled = None
  for phase in ("trace", "compile", "execute", "execute_again"):
    cpu, wall = _cpu_seconds(), time.perf_counter()
    if phase == "trace":
      lowered = _sweep.simulate_batches.lower(keys, problem, alpha_t, alpha_r,
                                              test_tasks=100, test_points=50, plan=plan)
    elif phase == "compile":
      compiled = lowered.compile()
    else:
      jax.block_until_ready(compiled(keys, problem, alpha_t, alpha_r))
    result[f"{phase}_s"] = round(time.perf_counter() - wall, 3)
    result[f"{phase}_cpu_s"] = round(_cpu_seconds() - cpu, 3)
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
