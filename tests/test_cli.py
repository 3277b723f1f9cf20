"""The binaries' shared glue: grid flags, run-time errors, resume directories."""

import os
import tempfile

import jax
import jax.numpy as jnp
from absl import flags
from absl.testing import absltest

from negmeta import _checks, cli


def _grid_flags(*argv):
  fv = flags.FlagValues()
  flags.DEFINE_list("grid", None, "", flag_values=fv)
  flags.DEFINE_float("grid_min", None, "", flag_values=fv)
  flags.DEFINE_float("grid_max", None, "", flag_values=fv)
  flags.DEFINE_integer("grid_num", None, "", flag_values=fv)
  fv(["prog", *argv])
  return fv


def _grid(*argv, base=(-2.0, 0.0, 2.0)):
  return cli.grid_from_flags(_grid_flags(*argv), base)


class _ConfigErrorAssertions(absltest.TestCase):

  def assertConfigError(self, fn, name, detail):
    """fn() raises a ConfigError naming `name`, whose detail contains `detail`."""
    with self.assertRaises(_checks.ConfigError) as ctx:
      fn()
    self.assertEqual(ctx.exception.name, name)
    self.assertIn(detail, ctx.exception.detail)


class GridFlagsTest(_ConfigErrorAssertions):

  def assertError(self, argv, name, detail):
    self.assertConfigError(lambda: _grid(*argv), name, detail)

  def test_grids(self):
    self.assertIsNone(_grid())
    self.assertEqual(_grid("--grid_num=5"), (-2.0, -1.0, 0.0, 1.0, 2.0))
    self.assertEqual(_grid("--grid_min=0", "--grid_num=3"), (0.0, 1.0, 2.0))
    self.assertEqual(_grid("--grid_min=1", "--grid_max=1", "--grid_num=1"), (1.0,))
    self.assertEqual(_grid("--grid=0.5,-1"), (0.5, -1.0))

  def test_unspecified_bounds_and_count_come_from_the_default_grid(self):
    self.assertEqual(_grid("--grid_min=0"), (0.0, 1.0, 2.0))      # 3 values, up to 2
    self.assertEqual(_grid("--grid_max=0"), (-2.0, -1.0, 0.0))
    # Its smallest and largest values, in whatever order it lists them.
    self.assertEqual(_grid("--grid_num=5", base=(2.0, -2.0, 0.0)),
                     (-2.0, -1.0, 0.0, 1.0, 2.0))

  def test_grid_values_are_rounded_to_twelve_digits(self):
    # linspace alone gives 0.30000000000000004 here: the record would show it.
    values = cli.linear_grid(-0.1, 0.5, 31)
    self.assertEqual(values[20], 0.3)
    self.assertEqual(values, tuple(round(v, 12) for v in values))

  def test_bounds_are_checked_before_the_grid_is_made(self):
    # Before: linspace(0, 1e300) overflowed and the error blamed --grid with inf.
    self.assertError(["--grid_min=0", "--grid_max=1e300"], "grid_max",
                     "must be a finite real number >= -1e+06 and <= 1e+06 (got 1e+300)")
    self.assertError(["--grid_min=-1e308", "--grid_max=1e308"], "grid_min", "<= 1e+06")
    self.assertError(["--grid=0,2e6"], "grid", "|x| <= 1e+06 (got 2e+06)")

  def test_the_flag_given_is_blamed_and_a_default_is_called_one(self):
    self.assertError(["--grid_min=5"], "grid_min",
                     "must be <= --grid_max=2 (its default; give --grid_max too) (got 5)")
    self.assertError(["--grid_max=-5"], "grid_max",
                     "must be >= --grid_min=-2 (its default) (got -5)")
    self.assertError(["--grid_min=1", "--grid_max=-1"], "grid_max",
                     "must be >= --grid_min=1 (got -1)")

  def test_one_point_between_two_bounds_is_an_error(self):
    # Before: --grid_num=1 silently dropped the maximum.
    self.assertError(["--grid_num=1"], "grid_num",
                     "must be >= 2 when --grid_min != --grid_max (got 1)")


class ChecksTest(_ConfigErrorAssertions):

  def test_bounds_are_inclusive_unless_open(self):
    self.assertEqual(_checks.integer("n", 3, minimum=3, maximum=3), 3)
    self.assertEqual(_checks.real("x", 0.0, lo=0.0, hi=0.0), 0.0)
    self.assertConfigError(lambda: _checks.real("x", 0.0, lo=0.0, lo_open=True), "x",
                           "must be a finite real number > 0 (got 0)")
    self.assertEqual(_checks.real_grid("g", [1.0, -1.0], max_points=2, max_abs=1.0),
                     (1.0, -1.0))
    self.assertConfigError(lambda: _checks.real_grid("g", [0.0] * 3, max_points=2),
                           "g", "must have at most 2 points (got 3)")
    self.assertConfigError(lambda: _checks.real_grid("g", [0.5, -1.5], max_abs=1.0),
                           "g", "|x| <= 1 (got -1.5)")

  def test_integers(self):
    self.assertEqual(_checks.integer("runs", 4.0), 4)
    self.assertIsInstance(_checks.integer("runs", 4.0), int)
    self.assertConfigError(lambda: _checks.integer("runs", True), "runs",
                           "must be an integer >= 1 (got True)")
    self.assertConfigError(lambda: _checks.integer("runs", 2.5), "runs", "(got 2.5)")

  def test_infinity_is_refused_without_an_upper_bound(self):
    for value in (float("inf"), float("-inf"), float("nan")):
      self.assertConfigError(lambda: _checks.real("sigma", value, lo=0.0), "sigma",
                             "must be a finite real number >= 0")
      self.assertConfigError(lambda: _checks.real("b", value), "b",
                             "must be a finite real number")

  def test_preset_sequences_compare_by_value(self):
    presets = {"a": {"grid": (0.5, 1.0), "runs": 3}}
    fields = _checks.preset_fields("a", presets, {"grid": [0.5, 1], "runs": 5}, ("grid",))
    self.assertEqual(fields, {"grid": [0.5, 1], "runs": 5})
    self.assertConfigError(
        lambda: _checks.preset_fields("a", presets, {"grid": [0.5, 2.0]}, ("grid",)),
        "grid", "contradicts --preset=a, which sets grid=(0.5, 1.0)")


class RunErrorsTest(absltest.TestCase):

  def _exit_message(self, fn):
    with self.assertRaises(SystemExit) as ctx:
      with cli.run_errors("bin", ("p", "runs")):
        fn()
    return str(ctx.exception.code)

  def test_xla_out_of_memory_is_one_line_naming_the_size_flags(self):
    message = self._exit_message(
        lambda: jnp.zeros((2**44,), jnp.float32).block_until_ready())   # 2⁴⁶ bytes
    self.assertEqual(message, "bin: error: out of memory (a buffer of 65,536.0 GiB); "
                     "reduce --p, --runs")

  def test_host_out_of_memory(self):
    def fail():
      raise MemoryError()
    self.assertEqual(self._exit_message(fail), "bin: error: out of memory; reduce --p, --runs")

  def test_config_error_is_one_line(self):
    def fail():
      raise _checks.ConfigError("workdir", "must not hold a directory")
    self.assertEqual(self._exit_message(fail),
                     "bin: error: --workdir: must not hold a directory")

  def test_other_errors_propagate(self):
    with self.assertRaisesRegex(ValueError, "a bug"):
      with cli.run_errors("bin", ("p",)):
        raise ValueError("a bug")

  def test_other_xla_errors_are_not_called_out_of_memory(self):
    with self.assertRaisesRegex(jax.errors.JaxRuntimeError, "INTERNAL: a bug"):
      with cli.run_errors("bin", ("p",)):
        raise jax.errors.JaxRuntimeError("INTERNAL: a bug")


class FlagErrorTest(absltest.TestCase):

  def _error(self, define, arg):
    fv = flags.FlagValues()
    define(fv)
    with self.assertRaises(flags.Error) as ctx:
      fv(["prog", arg])
    return cli._flag_error(fv, ctx.exception)

  def test_a_value_missing_from_the_detail_is_quoted(self):
    message = self._error(
        lambda fv: flags.DEFINE_enum("sweep", None, ["alpha_t", "alpha_r"], "Which rate.",
                                     flag_values=fv),
        "--sweep=beta")
    self.assertTrue(message.startswith("--sweep: "), msg=message)
    self.assertIn("alpha_t", message)
    self.assertIn("(got 'beta'); --sweep: ", message)
    self.assertTrue(message.endswith("Which rate."), msg=message)

  def test_integer_and_boolean_flags_say_what_they_take(self):
    self.assertEqual(self._error(
        lambda fv: flags.DEFINE_integer("runs", 3, "Runs (>= 1).", flag_values=fv),
        "--runs=2.5"), "--runs: must be an integer (got '2.5'); --runs: Runs (>= 1).")
    self.assertEqual(self._error(
        lambda fv: flags.DEFINE_boolean("shard", False, "Split runs.", flag_values=fv),
        "--shard=maybe"), "--shard: must be true or false (got 'maybe'); --shard: Split runs.")


class MeshFromFlagTest(absltest.TestCase):

  def test_a_mesh_over_all_devices_only_when_asked(self):
    self.assertIsNone(cli.mesh_from_flag(False))
    mesh = cli.mesh_from_flag(True, axis_name="runs")
    self.assertEqual(mesh.axis_names, ("runs",))
    self.assertEqual(list(mesh.devices.flat), jax.devices())
    self.assertEqual(cli.mesh_from_flag(True).axis_names, ("members",))


class ResumeDirTest(absltest.TestCase):

  def test_removed_on_success_kept_on_error(self):
    with tempfile.TemporaryDirectory() as d:
      with cli.resume_dir(d, "chunks") as path:
        os.makedirs(path)
      self.assertFalse(os.path.exists(path))
      with self.assertRaises(KeyError):
        with cli.resume_dir(d, "chunks") as path:
          os.makedirs(path)
          raise KeyError("interrupted")
      self.assertTrue(os.path.isdir(path))
      with cli.resume_dir(d, "chunks", enabled=False) as none:
        self.assertIsNone(none)

  def test_a_file_in_the_way_is_a_workdir_error(self):
    with tempfile.TemporaryDirectory() as d:
      open(os.path.join(d, "chunks"), "w").close()
      with self.assertRaises(_checks.ConfigError) as ctx:
        with cli.resume_dir(d, "chunks"):
          self.fail("the block must not run")
      self.assertEqual(ctx.exception.name, "workdir")
      self.assertIn("must not hold a file named 'chunks'", ctx.exception.detail)


if __name__ == "__main__":
  absltest.main()
