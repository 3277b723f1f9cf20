"""Sinusoid MAML meta-training throughput, compile time and memory on CPU.

Measures `negmeta.maml.meta_train` on Finn et al.'s sinusoid problem
(1-40-40-1 ReLU MLP, K = 10 support and 10 query points, Adam, second-order
meta-gradient, float32). Each configuration runs in its own subprocess, so its
peak RSS is its own, and prints one JSON line:

  meta_batch, inner_steps, remat   the configuration;
  tasks_per_second                 meta_batch × num_steps / wall time of one
                                   whole compiled meta-training run (median
                                   of --repeats runs after a warm-up run;
                                   task sampling happens inside the run);
  compile_seconds                  jit(...).lower(...).compile(), timed apart;
  peak_rss_mb                      peak resident set size of the subprocess;
  plus num_steps, run_seconds, tasks_per_second_best, baseline_rss_mb (RSS
  after importing JAX and creating the CPU client), compile_peak_rss_mb (peak
  up to the end of compilation), run_peak_rss_mb (peak while running only:
  the kernel's high-water mark is reset after compiling, Linux only),
  xla_temp_mb (XLA's temporary buffers of the compiled run), cpu_count and
  load_average (other processes on the machine skew the timings).

Usage:
  python benchmarks/maml_throughput.py                  # all sweeps
  python benchmarks/maml_throughput.py --sweep headline # meta-batch 25, 1000
  python benchmarks/maml_throughput.py --sweep tasks    # time/memory vs tasks
  python benchmarks/maml_throughput.py --sweep inner    # vs K, remat none/step/nested/flat
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HEADLINE = [dict(meta_batch=b, inner_steps=1, remat="none") for b in (25, 1000)]
TASKS = [dict(meta_batch=b, inner_steps=1, remat="none")
         for b in (25, 100, 250, 1000, 4000)]
# remat: "none" stores every intermediate (O(K)); "step" checkpoints each inner
# step, storing θ_k per step (O(K), smaller); "nested" is nested
# checkpointing, O(log K) stored parameter trees; "flat" (= remat=True) stores
# θ_0 only and recomputes θ_k in the backward pass: memory independent of K,
# K(K−1)/2 extra forward steps.
INNER = [dict(meta_batch=250, inner_steps=k, remat=r)
         for k in (1, 2, 5, 10, 20, 50)
         for r in ("none", "step", "nested", "flat")]
SWEEPS = {"headline": HEADLINE, "tasks": TASKS, "inner": INNER}


def _rss_mb() -> float:
  """Peak RSS of this process so far, in MiB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak_rss() -> bool:
  """Resets the kernel's RSS high-water mark (Linux); False if unsupported."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _release_free_memory() -> bool:
  """Returns freed heap pages to the OS (glibc `malloc_trim`); False if unavailable.

  Compilation allocates (and frees) far more than the compiled run needs;
  glibc keeps freed pages mapped, so without trimming the run-phase RSS
  would still contain the compiler's high-water mark.
  """
  try:
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return True
  except (OSError, AttributeError):
    return False


def _hwm_mb() -> float | None:
  """VmHWM (peak RSS since the last reset) from /proc, in MiB."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return None


def run_configuration(meta_batch: int, inner_steps: int, remat: str,
                      target_tasks: int, repeats: int) -> dict:
  """Measures one configuration in this process; returns the JSON record."""
  import functools

  import jax
  import jax.numpy as jnp
  import optax

  from negmeta import maml
  from negmeta import models
  from negmeta.tasks import sample_sinusoid_batch

  jax.devices()  # Create the CPU client before taking the baseline.
  baseline_rss = _rss_mb()
  dtype = jnp.float32
  # Work scales with meta_batch × inner_steps; aim for ~target_tasks tasks of
  # one-step work per timed run.
  num_steps = max(10, round(target_tasks / (meta_batch * inner_steps)))
  sampler = functools.partial(sample_sinusoid_batch, meta_batch=meta_batch,
                              k_support=10, k_query=10, dtype=dtype)
  train = jax.jit(functools.partial(
      maml.meta_train, models.mlp_apply, optimizer=optax.adam(1.0),
      sample_batch=sampler, num_steps=num_steps, steps=inner_steps,
      remat=remat))
  params = models.mlp_init(jax.random.key(0), dtype=dtype)
  alpha, meta_lr = jnp.asarray(0.01, dtype), jnp.asarray(1e-3, dtype)

  start = time.perf_counter()
  compiled = train.lower(params, alpha, key=jax.random.key(1),
                         meta_lr=meta_lr).compile()
  compile_seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()

  compile_peak_rss = _rss_mb()
  _release_free_memory()
  can_reset = _reset_peak_rss()  # So the run phase gets its own peak.
  jax.block_until_ready(compiled(params, alpha, key=jax.random.key(2),
                                 meta_lr=meta_lr))  # Warm-up.
  times = []
  for r in range(repeats):
    start = time.perf_counter()
    result = compiled(params, alpha, key=jax.random.key(3 + r),
                      meta_lr=meta_lr)
    jax.block_until_ready(result)
    times.append(time.perf_counter() - start)
  if not bool(jnp.all(jnp.isfinite(result.losses))):
    raise RuntimeError("meta-training produced non-finite losses")
  tasks = meta_batch * num_steps
  run_peak_rss = _hwm_mb() if can_reset else None
  return dict(
      meta_batch=meta_batch, inner_steps=inner_steps, remat=remat,
      tasks_per_second=round(tasks / statistics.median(times), 1),
      compile_seconds=round(compile_seconds, 3),
      peak_rss_mb=round(_rss_mb(), 1),
      num_steps=num_steps, run_seconds=round(statistics.median(times), 4),
      tasks_per_second_best=round(tasks / min(times), 1),
      baseline_rss_mb=round(baseline_rss, 1),
      compile_peak_rss_mb=round(compile_peak_rss, 1),
      run_peak_rss_mb=None if run_peak_rss is None else round(run_peak_rss, 1),
      xla_temp_mb=round(memory.temp_size_in_bytes / 2**20, 3)
      if memory is not None else None,
      cpu_count=os.cpu_count(),
      load_average=[round(x, 2) for x in os.getloadavg()],
      jax_version=jax.__version__)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sweep", choices=["all", *SWEEPS], default="all")
  parser.add_argument("--target_tasks", type=int, default=50_000,
                      help="one-step tasks per timed run (sets num_steps)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.child:  # One configuration, in a fresh process.
    config = json.loads(args.child)
    print(json.dumps(run_configuration(**config)), flush=True)
    return

  sweeps = SWEEPS if args.sweep == "all" else {args.sweep: SWEEPS[args.sweep]}
  seen = []
  for configs in sweeps.values():
    for config in configs:
      if config in seen:
        continue
      seen.append(config)
      child = dict(config, target_tasks=args.target_tasks,
                   repeats=args.repeats)
      env = dict(os.environ)
      env.pop("JAX_ENABLE_X64", None)  # float32 throughout.
      root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
      env["PYTHONPATH"] = os.pathsep.join(
          p for p in (root, env.get("PYTHONPATH")) if p)
      out = subprocess.run(
          [sys.executable, os.path.abspath(__file__), "--child",
           json.dumps(child)], capture_output=True, text=True, env=env,
          check=False)
      if out.returncode:
        print(json.dumps(dict(config, error=out.stderr.strip()[-2000:])),
              flush=True)
      else:
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
  main()
