"""End to end: the linear_sweep binary, its outputs, and its errors on bad input."""

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
from unittest import mock

import numpy as np
from absl.testing import absltest, parameterized

from negmeta import _checks, plotting
from negmeta.linear import _sweep, experiment
from negmeta.theory import linear as theory

BINARY = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "linear_sweep.py")
TINY = ["--runs=6", "--test_tasks=3", "--test_points=4", "--grid_num=5"]


def _run(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, BINARY, *args], capture_output=True, text=True,
                        timeout=timeout, env=env)


class BinaryTest(absltest.TestCase):

  def test_tiny_run_writes_results_figure_and_table(self):
    with tempfile.TemporaryDirectory() as d:
      workdir = os.path.join(d, "out")
      proc = _run(f"--workdir={workdir}", *TINY, "--p=20", "--n_t=10")
      self.assertEqual(proc.returncode, 0, msg=proc.stderr[-3000:])
      self.assertIn("theory argmin α_t", proc.stdout)
      self.assertEqual(sorted(os.listdir(workdir)),
                       ["alpha_t_sweep.png", "results.json", "runs.npz"])
      with open(os.path.join(workdir, "results.json")) as f:
        rec = json.load(f)
      self.assertEqual(rec["config"]["p"], 20)
      self.assertEqual(rec["config"]["runs"], 6)
      self.assertEqual(rec["regime"], "overparameterized")
      self.assertIn("jax", rec["runtime"]["versions"])
      self.assertEqual(len(rec["grid"]), 5)
      entry = rec["grid"][2]
      for key in ("alpha_t", "theory", "exact_loss", "protocol_loss", "nonfinite_runs"):
        self.assertIn(key, entry)
      self.assertEqual(entry["exact_loss"]["runs"], 6)
      self.assertGreater(entry["exact_loss"]["se"], 0)
      data = np.load(os.path.join(workdir, "runs.npz"))
      self.assertEqual(data["exact_loss"].shape, (6, 5))
      np.testing.assert_allclose(data["exact_loss"].mean(0)[2], entry["exact_loss"]["mean"])
      with open(os.path.join(workdir, "alpha_t_sweep.png"), "rb") as f:
        self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

  def test_preset_with_scale_overrides_and_chunked_run(self):
    with tempfile.TemporaryDirectory() as d:
      proc = _run(f"--workdir={d}", "--preset=fig3a", "--runs=4", "--test_tasks=2",
                  "--test_points=3", "--grid_num=3", "--chunk_runs=2", "--batch_size=2")
      self.assertEqual(proc.returncode, 0, msg=proc.stderr[-3000:])
      with open(os.path.join(d, "results.json")) as f:
        rec = json.load(f)
      self.assertEqual((rec["config"]["p"], rec["config"]["sigma"]), (30, 1.0))
      self.assertEqual(rec["config"]["sweep"], "alpha_r")
      self.assertIn("theory_alpha_r_star", rec["optimum"])
      self.assertFalse(os.path.exists(os.path.join(d, "chunks")))  # cleaned up


class ResumeTest(absltest.TestCase):

  def test_rerun_resumes_only_the_same_sweep(self):
    config = experiment.LinearSweepConfig(
        p=12, n_t=4, n_v=2, n_r=3, m=2, runs=6, test_tasks=2, test_points=3,
        grid=(-1.0, 0.0, 1.0), chunk_runs=2, batch_size=2)
    reference = experiment.run(config)
    kernel, calls = _sweep.simulate_batches, []

    def interrupted(keys, *args, **kwargs):
      calls.append(1)
      if len(calls) == 2:
        raise KeyboardInterrupt
      return kernel(keys, *args, **kwargs)

    with tempfile.TemporaryDirectory() as d:
      with mock.patch.object(_sweep, "simulate_batches", interrupted):
        with self.assertRaises(KeyboardInterrupt):
          experiment.run(config, store_dir=d)
      resumed = experiment.run(config, store_dir=d)
      self.assertEqual(resumed.resumed_chunks, 1)
      for name in _sweep.RunValues._fields:
        np.testing.assert_array_equal(getattr(resumed.runs, name),
                                      getattr(reference.runs, name), err_msg=name)
      # Batching does not change per-run values, so it does not change the match.
      rebatched = experiment.run(dataclasses.replace(config, batch_size=1), store_dir=d)
      self.assertEqual(rebatched.resumed_chunks, 3)
      # Anything that changes the values does: such a rerun loads nothing.
      for change in (dict(seed=1), dict(sigma=0.5), dict(test_points=4)):
        other = experiment.run(dataclasses.replace(config, **change), store_dir=d)
        self.assertEqual(other.resumed_chunks, 0, msg=change)


class ResultTest(absltest.TestCase):
  """What `run` computes and `record` writes, on an α_t and an α_r sweep whose
  fixed rates differ (every preset has α_t = α_r, which hides a swap)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    base = dict(p=12, n_t=4, n_v=2, n_r=3, m=2, alpha_t=0.3, alpha_r=0.1, runs=6,
                test_tasks=2, test_points=3, seed=3)
    cls.t = experiment.run(experiment.LinearSweepConfig(
        sweep="alpha_t", grid=(-1.0, -0.5, 0.0, 0.5), **base))
    cls.r = experiment.run(experiment.LinearSweepConfig(
        sweep="alpha_r", grid=(-0.1, 0.0, 0.2, 0.4), **base))

  def test_the_fixed_rate_and_the_theory_are_the_configs(self):
    problem = experiment.make_problem(self.t.config)
    np.testing.assert_array_equal(self.t.alpha_t, self.t.config.grid)
    np.testing.assert_array_equal(self.t.alpha_r, [0.1] * 4)
    np.testing.assert_allclose(self.t.theory, theory.average_test_loss(
        problem, np.asarray(self.t.config.grid), 0.1), rtol=1e-12)
    x, y = self.t.theory_curve
    np.testing.assert_allclose(y, theory.average_test_loss(problem, x, 0.1), rtol=1e-12)
    np.testing.assert_array_equal(self.r.alpha_t, [0.3] * 4)
    np.testing.assert_array_equal(self.r.alpha_r, self.r.config.grid)
    np.testing.assert_allclose(self.r.theory, theory.average_test_loss(
        problem, 0.3, np.asarray(self.r.config.grid)), rtol=1e-12)

  def test_theory_optima(self):
    problem = experiment.make_problem(self.t.config)
    loss_t = lambda a: float(theory.average_test_loss(problem, a, 0.1))  # noqa: E731
    o = self.t.optimum
    self.assertBetween(o["theory_argmin"], -1.0, 0.5)
    self.assertAlmostEqual(loss_t(o["theory_argmin"]), o["theory_min"], places=12)
    self.assertLessEqual(o["theory_min"], min(self.t.theory) + 1e-12)
    # α_t^- is the global minimum, α_t^+ the global maximum (overparameterized).
    self.assertLessEqual(loss_t(o["theory_alpha_t_minus"]), o["theory_min"] + 1e-12)
    self.assertLess(loss_t(o["theory_alpha_t_minus"]), loss_t(o["theory_alpha_t_plus"]))
    o = self.r.optimum
    loss_r = lambda a: float(theory.average_test_loss(problem, 0.3, a))  # noqa: E731
    self.assertAlmostEqual(loss_r(o["theory_argmin"]), o["theory_min"], places=12)
    star = lambda d: float(theory.alpha_r_optimal(  # noqa: E731
        d, sigma=problem.sigma, nu=problem.nu, p=problem.p, n_r=problem.n_r))
    self.assertAlmostEqual(o["theory_alpha_r_star"], star(theory.distance(problem, 0.3)),
                           places=12)
    # The simulated α_r* uses the conditional D (same mean as D, less noise).
    conditional, plain = (np.mean(getattr(self.r.runs, k)[:, 0])
                          for k in ("conditional_distance", "distance"))
    self.assertNotAlmostEqual(conditional, plain, places=6)   # the test can tell them apart
    self.assertAlmostEqual(o["simulated_alpha_r_star"], star(conditional), places=12)

  def test_simulated_optima_are_the_smallest_means(self):
    for result in (self.t, self.r):
      est, zero = result.estimates(), list(result.swept).index(0.0)
      for name in ("exact_loss", "protocol_loss", "conditional_loss"):
        e, runs = est[name], getattr(result.runs, name)
        self.assertEqual(e.n.tolist(), [6] * 4, msg=name)
        i = int(np.argmin(e.mean))
        entry = result.optimum[f"simulated_{name}"]
        self.assertEqual(entry["argmin"], result.swept[i], msg=name)
        self.assertEqual(entry["min"], e.mean[i], msg=name)
        self.assertEqual(entry["min_se"], e.se[i], msg=name)
        diff = runs[:, i] - runs[:, zero]
        self.assertAlmostEqual(entry["min_minus_at_zero"], diff.mean(), places=12)
        self.assertAlmostEqual(entry["min_minus_at_zero_se"],
                               diff.std(ddof=1) / math.sqrt(6), places=12)
        self.assertLessEqual(entry["min_minus_at_zero"], 1e-12, msg=name)

  def test_run_passes_the_config_to_the_sweep(self):
    c = self.t.config
    values = _sweep.run_sweep(
        experiment.make_problem(c), *experiment.grid_pairs(c), runs=6, seed=3,
        test_tasks=2, test_points=3, conditional=True)
    for name in _sweep.RunValues._fields:
      np.testing.assert_array_equal(getattr(self.t.runs, name), getattr(values, name),
                                    err_msg=name)

  def test_conditional_estimator_where_it_is_cheap(self):
    over, under = dict(p=12, n_v=2, m=2), dict(p=3, n_v=2, m=2)
    uses = lambda sweep, sizes: experiment.uses_conditional(  # noqa: E731
        experiment.LinearSweepConfig(sweep=sweep, **sizes))
    self.assertTrue(uses("alpha_t", over))
    self.assertTrue(uses("alpha_r", over))
    self.assertTrue(uses("alpha_r", under))
    self.assertFalse(uses("alpha_t", under))

  def test_record_names_the_seeds_and_matches_the_estimates(self):
    rec = experiment.record(self.t)
    self.assertEqual(rec["config"], dataclasses.asdict(self.t.config))
    self.assertEqual(rec["seeds"]["base_seed"], 3)
    self.assertEqual(rec["seeds"]["runs"], 6)
    self.assertEqual(rec["ill_conditioned_threshold_rcond"],
                     math.sqrt(np.finfo(np.float64).eps))
    est = self.t.estimates()
    for g, entry in enumerate(rec["grid"]):
      self.assertEqual(entry["exact_loss"], {"mean": est["exact_loss"].mean[g],
                                             "se": est["exact_loss"].se[g], "runs": 6})
      self.assertEqual(entry["gap_exact_minus_theory"],
                       est["exact_loss"].mean[g] - self.t.theory[g])

  def test_record_flags_infinite_and_ill_conditioned_runs(self):
    runs = {k: np.array(v) for k, v in self.t.runs._asdict().items()}
    self.assertTrue(np.all(runs["rcond"] > 1e-6))    # none flagged before planting
    runs["exact_loss"][0, 1] = np.inf                # diverged to +inf, not NaN
    runs["rcond"][0, 2] = np.nan                     # no rcond at all
    runs["rcond"][1, 2] = 1e-10                      # above eps, below √eps
    runs["inner_gap"][0, 3] = -np.inf
    planted = dataclasses.replace(self.t, runs=_sweep.RunValues(**runs))
    grid = experiment.record(planted)["grid"]
    self.assertEqual([g["nonfinite_runs"] for g in grid], [0, 1, 0, 0])
    self.assertEqual([g["ill_conditioned_runs"] for g in grid], [0, 0, 2, 0])
    self.assertEqual(grid[3]["min_inner_gap"], float(np.min(runs["inner_gap"][1:, 3])))
    self.assertIn(" 1 nan", experiment.summary_table(planted).splitlines()[3])


  def test_figure_shows_the_theory_the_runs_and_the_optima(self):
    problem = experiment.make_problem(self.t.config)
    for result, symbol in ((self.t, r"$\alpha_t$ (training)"),
                           (self.r, r"$\alpha_r$ (adaptation)")):
      fig = plotting.linear_sweep_figure(result)
      try:
        (ax,) = fig.axes
        lines = {line.get_label(): line for line in ax.get_lines()}
        # Theory: the dense curve, recomputed from the problem.
        x, y = lines["theory"].get_xydata().T
        np.testing.assert_array_equal(x, result.theory_curve[0])
        want = (theory.average_test_loss(problem, x, 0.1) if result is self.t else
                theory.average_test_loss(problem, 0.3, x))
        np.testing.assert_allclose(y, want, rtol=1e-12)
        # Simulated points ± s.e. over the runs (the two estimators differ).
        swept = np.asarray(result.config.grid)
        self.assertFalse(np.allclose(result.runs.exact_loss, result.runs.protocol_loss))
        self.assertLen(ax.containers, 2)
        for container, name in zip(ax.containers, ("protocol_loss", "exact_loss")):
          runs = getattr(result.runs, name)
          mean, se = runs.mean(0), runs.std(0, ddof=1) / math.sqrt(runs.shape[0])
          data, _, (segments,) = container.lines
          np.testing.assert_allclose(data.get_xydata(), np.stack([swept, mean], 1),
                                     rtol=1e-12)
          seg = np.asarray(segments.get_segments())          # [G, 2 ends, (x, y)]
          np.testing.assert_allclose(seg[:, :, 0], np.stack([swept, swept], 1))
          np.testing.assert_allclose(seg[:, 1, 1] - seg[:, 0, 1], 2 * se, rtol=1e-9)
          np.testing.assert_allclose(seg[:, 1, 1] + seg[:, 0, 1], 2 * mean, rtol=1e-12)
        self.assertEqual(ax.containers[0].get_label(),
                         f"experiment ({result.config.test_tasks} tasks × "
                         f"{result.config.test_points} points)")
        self.assertEqual(ax.containers[1].get_label(), "experiment, exact over test data")
        # Optima: the theory line's argmin (within the dense grid's step) and
        # the smallest simulated exact-loss mean.
        o = result.optimum
        (vline,) = [v for k, v in lines.items() if k.startswith("theory optimum")]
        self.assertEqual(vline.get_label(), f"theory optimum {o['theory_argmin']:.3f}")
        np.testing.assert_array_equal(vline.get_xdata(), [o["theory_argmin"]] * 2)
        self.assertLessEqual(abs(o["theory_argmin"] - x[np.argmin(y)]), x[1] - x[0])
        (star,) = [v for k, v in lines.items() if k.startswith("simulated optimum")]
        exact = result.runs.exact_loss.mean(0)
        i = int(np.argmin(exact))
        self.assertEqual(star.get_marker(), "*")
        np.testing.assert_allclose(star.get_xydata(), [[swept[i], exact[i]]], rtol=1e-12)
        self.assertEqual(star.get_label(), f"simulated optimum {swept[i]:.3f}")
        # Axes: linear scales, the swept rate named, every point inside the limits.
        self.assertEqual((ax.get_xscale(), ax.get_yscale()), ("linear", "linear"))
        self.assertEqual(ax.get_xlabel(), f"learning rate {symbol}")
        self.assertEqual(ax.get_ylabel(), "average test loss")
        self.assertTrue(ax.get_title().startswith("overparameterized: p=12, n_t=4, "))
        lo, hi = ax.get_ylim()
        for runs in (result.runs.exact_loss, result.runs.protocol_loss):
          self.assertTrue(np.all((lo < runs.mean(0)) & (runs.mean(0) < hi)))
        self.assertTrue(np.all((lo < y) & (y < hi)))
        self.assertEqual([t.get_text() for t in ax.get_legend().get_texts()],
                         ["theory", vline.get_label(), star.get_label(),
                          ax.containers[0].get_label(), ax.containers[1].get_label()])
      finally:
        plotting.close(fig)


class BadInputTest(parameterized.TestCase):
  """One-line error naming the flag and allowed values; exit ≠ 0; nothing written."""

  @parameterized.named_parameters(
      ("negative_dimension", ["--p=-3"], "--p: must be an integer in [1, 4096] (got -3)"),
      ("huge_dimension", ["--p=1000000"], "--p: must be an integer in [1, 4096]"),
      ("non_integer_size", ["--p=2.5"], "--p: must be an integer (got '2.5'); --p: Input"),
      ("nan_rate", ["--alpha_r=nan"],
       "--alpha_r: must be a finite real number >= -1e+06 and <= 1e+06 (got nan)"),
      ("huge_rate", ["--alpha_r=1e300"], "--alpha_r: must be a finite real number >= -1e+06"),
      ("infinite_rate", ["--alpha_t=inf", "--sweep=alpha_r"], "--alpha_t: must be a finite"),
      ("empty_grid", ["--grid="], "--grid: must contain at least one value"),
      ("zero_grid_points", ["--grid_num=0"], "--grid_num: must be an integer in [1, 100000]"),
      ("huge_grid_num", ["--grid_num=1000000000"], "--grid_num: must be an integer in [1,"),
      ("huge_grid_value", ["--grid=0,1e200"], "--grid: must contain only values with |x| <="),
      ("list_and_num", ["--grid=0,1", "--grid_num=3"], "--grid_num: cannot be combined"),
      ("nan_in_grid", ["--grid=0.1,nan"], "--grid: must contain only finite values"),
      ("reversed_grid", ["--grid_min=1", "--grid_max=-1"], "--grid_max: must be >="),
      ("threshold_regime", ["--p=6", "--n_v=2", "--m=3"], "--p: must differ from n_v*m = 6"),
      ("one_run", ["--runs=1"], "--runs: must be an integer in [2,"),
      ("negative_noise", ["--sigma=-1"], "--sigma: must be a finite real number >= 0"),
      ("preset_contradiction", ["--preset=fig2b", "--p=30"],
       "--p: contradicts --preset=fig2b, which sets p=60 (got 30)"),
      ("preset_contradicting_sweep", ["--preset=fig2b", "--sweep=alpha_r"],
       "--sweep: contradicts --preset=fig2b"),
      ("unknown_flag", ["--runz=5"],
       "--runz: unknown flag; did you mean --runs? this binary's flags are --alpha_r, --alpha_t, "
       "--batch_size, --chunk_runs, --dtype, --grid, --grid_max, --grid_min, "
       "--grid_num, --m, --n_r, --n_t, --n_v, --nu, --omega0, --p, --preset, --runs, "
       "--seed, --shard, --sigma, --sweep, --test_points, --test_tasks, --w0, "
       "--workdir (--helpshort describes them)"),
      ("unknown_flag_far_from_any", ["--zzzzzz=5"],
       "--zzzzzz: unknown flag; this binary's flags are --alpha_r,"),
      ("grid_bound_out_of_range", ["--grid_min=0", "--grid_max=1e300", "--grid_num=2"],
       "--grid_max: must be a finite real number >= -1e+06 and <= 1e+06 (got 1e+300)"),
      ("grid_min_above_default_max", ["--grid_min=5"],
       "--grid_min: must be <= --grid_max=2 (its default; give --grid_max too) (got 5)"),
      ("one_point_between_bounds", ["--grid_num=1"],
       "--grid_num: must be >= 2 when --grid_min != --grid_max (got 1)"),
      ("missing_value", ["--runs"], "--runs: missing value (write --runs=<value>); --runs: "),
      ("negated_bool_with_value", ["--noshard=1"],
       "--noshard: takes no value (got '1'); write --shard=true, --shard=false or --noshard"),
      ("missing_flagfile", ["--flagfile=/nonexistent/flags"],
       "--flagfile: Unable to open flagfile"),
  )
  def test_config_errors(self, flags, message):
    with tempfile.TemporaryDirectory() as d:
      workdir = os.path.join(d, "out")
      proc = _run(f"--workdir={workdir}", *flags)
      self.assertNotEqual(proc.returncode, 0)
      last = proc.stderr.strip().splitlines()[-1]
      self.assertIn(message, last)
      self.assertTrue(last.startswith("linear_sweep: error: --"), msg=last)
      self.assertNotIn("Traceback", proc.stderr)
      self.assertFalse(os.path.exists(workdir))

  @parameterized.named_parameters(
      ("negative_task_variability", dict(nu=-0.5), "nu",
       "must be a finite real number >= 0 and <= 1e+06 (got -0.5)"),
      ("seed_beyond_31_bits", dict(seed=2**31), "seed",
       "must be an integer in [0, 2147483647] (got 2147483648)"))
  def test_validate_refuses(self, fields, name, detail):
    # Checked with the config, not later by the problem or the PRNG.
    with self.assertRaises(_checks.ConfigError) as ctx:
      experiment.validate(experiment.LinearSweepConfig(**fields))
    self.assertEqual(ctx.exception.name, name)
    self.assertEqual(ctx.exception.detail, detail)

  def test_unwritable_workdir(self):
    with tempfile.TemporaryDirectory() as d:
      blocker = os.path.join(d, "file")
      open(blocker, "w").close()
      proc = _run(f"--workdir={blocker}/sub", *TINY)
      self.assertNotEqual(proc.returncode, 0)
      self.assertIn("linear_sweep: error: --workdir: must be a writable directory",
                    proc.stderr)
      self.assertNotIn("Traceback", proc.stderr)

  def test_helpshort_lists_the_flags_defined_for_the_binary(self):
    # --shard and the grid flags are defined through negmeta.cli but belong to
    # the binary: --helpshort (which error lines point to) must list them.
    proc = _run("--helpshort")
    for flag in ("--[no]shard:", "--grid:", "--grid_min:", "--grid_num:", "--p:"):
      self.assertIn(flag, proc.stdout)

  def test_stray_argument_is_one_line(self):
    with tempfile.TemporaryDirectory() as d:
      workdir = os.path.join(d, "out")
      proc = _run(f"--workdir={workdir}", "extra", *TINY)
      self.assertNotEqual(proc.returncode, 0)
      self.assertEqual(proc.stderr.strip().splitlines(), [
          "linear_sweep: error: unexpected arguments: extra (every setting is a flag, "
          "--name=value; --helpshort lists them)"])
      self.assertFalse(os.path.exists(workdir))

  def test_out_of_memory_is_one_line_naming_the_size_flags(self):
    # Every value is in range, but the meta-training data alone need
    # m·n_t·p·8 bytes ≈ 3 PB: no machine has that, so this fails everywhere.
    with tempfile.TemporaryDirectory() as d:
      proc = _run(f"--workdir={d}", "--p=4096", "--n_t=100000", "--n_v=1", "--n_r=1",
                  "--m=1000", "--runs=2", "--test_tasks=1", "--test_points=1", "--grid=0")
      self.assertNotEqual(proc.returncode, 0)
      last = proc.stderr.strip().splitlines()[-1]
      self.assertRegex(last, r"^linear_sweep: error: out of memory \(a buffer of [\d,.]+ "
                       r"GiB\); reduce --p, --n_t, --n_r, --m, --runs, ")
      self.assertNotIn("Traceback", proc.stderr)
      self.assertEqual(os.listdir(d), [])

  def test_unknown_flag_value(self):
    proc = _run("--workdir=/tmp/never", "--sweep=beta")
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn("--sweep", proc.stderr)
    self.assertIn("alpha_t", proc.stderr)
    self.assertNotIn("Traceback", proc.stderr)

  def test_unknown_preset_is_one_line(self):
    proc = _run("--workdir=/tmp/never", "--preset=fig9")
    last = proc.stderr.strip().splitlines()[-1]
    self.assertNotEqual(proc.returncode, 0)
    self.assertTrue(last.startswith("linear_sweep: error: --preset: "), msg=last)
    self.assertIn("fig2b", last)

  def test_fully_diverged_run_is_saved_as_data(self):
    # Every run non-finite at every grid value: results, figure and table
    # still come out, with no simulated optimum.
    config = experiment.LinearSweepConfig(p=5, n_t=3, n_v=2, n_r=3, m=2, runs=2,
                                          test_tasks=2, test_points=2, grid=(-1.0, 1.0))
    result = experiment.run(config)
    nan_runs = result.runs._replace(**{k: np.full_like(v, np.nan) for k, v in
                                       result.runs._asdict().items()})
    optimum = experiment._optima(experiment.make_problem(config), config, result.swept,
                                 nan_runs)
    self.assertNotIn("simulated_exact_loss", optimum)
    diverged = dataclasses.replace(result, runs=nan_runs, optimum=optimum)
    table = experiment.summary_table(diverged)
    self.assertIn("simulated argmin: none", table)
    self.assertEqual([line.endswith(" 2 nan") for line in table.splitlines()[2:4]],
                     [True, True])
    with tempfile.TemporaryDirectory() as d:
      paths = experiment.save(diverged, d)
      self.assertEqual(sorted(os.listdir(d)), sorted(os.path.basename(p) for p in
                                                     paths.values()))
      with open(paths["json"]) as f:
        rec = json.load(f)
      self.assertEqual([g["nonfinite_runs"] for g in rec["grid"]], [2, 2])
      self.assertEqual([(g["min_rcond"], g["min_inner_gap"]) for g in rec["grid"]],
                       [(None, None)] * 2)
      # Every plain estimator is listed with 0 runs; no conditional one is.
      for name in ("distance", "exact_loss", "protocol_loss"):
        self.assertEqual(rec["grid"][0][name], {"mean": None, "se": None, "runs": 0})
      self.assertNotIn("conditional_loss", rec["grid"][0])
      with np.load(paths["npz"]) as data:
        self.assertEqual(set(data.files), {"alpha_t", "alpha_r", "theory", "theory_curve_x",
                                           "theory_curve_y", *_sweep.RunValues._fields})
        np.testing.assert_array_equal(data["theory"], result.theory)
    # None, not NaN (which the JSON file would also show as null).
    entry = experiment.record(diverged)["grid"][0]
    self.assertIsNone(entry["min_rcond"])
    self.assertIsNone(entry["min_inner_gap"])
    # Finite runs: the smallest finite value, ignoring a non-finite run.
    runs = result.runs.inner_gap.copy()
    runs[0, 0] = np.nan
    part = dataclasses.replace(result, runs=result.runs._replace(inner_gap=runs))
    entry = experiment.record(part)["grid"][0]
    self.assertEqual(entry["min_inner_gap"], float(result.runs.inner_gap[1, 0]))

  def test_failed_save_writes_nothing(self):
    config = experiment.LinearSweepConfig(p=5, n_t=3, n_v=2, n_r=3, m=2, runs=2,
                                          test_tasks=2, test_points=2, grid=(-1.0, 1.0))
    result = experiment.run(config)
    with tempfile.TemporaryDirectory() as d, mock.patch.object(
        experiment, "record", side_effect=RuntimeError("boom")):
      with self.assertRaisesRegex(RuntimeError, "boom"):
        experiment.save(result, d)
      self.assertEqual(os.listdir(d), [])

  def test_preset_agreeing_flag_is_accepted(self):
    config = experiment.preset("fig2b", p=60, runs=10)
    self.assertEqual((config.p, config.runs), (60, 10))
    with self.assertRaisesRegex(_checks.ConfigError, "^preset: must be one of"):
      experiment.preset("fig9")


if __name__ == "__main__":
  absltest.main()
