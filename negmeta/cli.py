"""Glue shared by the experiment binaries: config errors and grid flags.

Binaries stay thin: they read flags, build a validated config with the library's
`_checks` helpers, and report any `ConfigError` as one line naming the flag::

  with cli.config_errors("linear_sweep"):
    config = config_from_flags()
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import shutil
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from negmeta import _checks, io, sharding


@contextlib.contextmanager
def config_errors(binary: str) -> Iterator[None]:
  """Turns a ConfigError into ``<binary>: error: --<flag>: <detail>`` and exit 1."""
  try:
    yield
  except _checks.ConfigError as e:
    sys.exit(f"{binary}: error: --{e.name}: {e.detail}")


def linear_grid(lo: float, hi: float, num: int) -> tuple[float, ...]:
  """`num` evenly spaced values from `lo` to `hi`, rounded to 12 digits."""
  return tuple(float(v) for v in np.round(np.linspace(lo, hi, num), 12))


def grid_from_flags(flag_values, base: Sequence[float], *, prefix: str = "grid",
                    max_points: int = 100_000,
                    max_abs: float = _checks.MAX_ABS_RATE) -> tuple[float, ...] | None:
  """The swept grid from ``--<prefix>`` or ``--<prefix>_min/_max/_num`` flags.

  Args:
    flag_values: `absl.flags.FLAGS`.
    base: the default grid; unspecified bounds/count fall back to it.
    prefix: flag name prefix (e.g. "grid", "alpha_grid").
    max_points: the most grid values allowed (checked before any is made).
    max_abs: the largest |value| allowed (checked on the bounds and values).

  Returns:
    The grid, or None when no grid flag was given.

  Raises:
    ConfigError: naming the offending flag (the one the user gave, when a
      bound given on the command line clashes with the default of the other).
  """
  f = flag_values
  lo_n, hi_n, num_n = f"{prefix}_min", f"{prefix}_max", f"{prefix}_num"
  if f[prefix].present:
    for name in (lo_n, hi_n, num_n):
      if f[name].present:
        raise _checks.ConfigError(
            name, f"cannot be combined with --{prefix} (an explicit list of values)")
    return _checks.real_grid(prefix, f[prefix].value or (), max_points=max_points,
                             max_abs=max_abs)
  if not any(f[k].present for k in (lo_n, hi_n, num_n)):
    return None
  bounded = lambda name, value: _checks.real(name, value, lo=-max_abs, hi=max_abs)  # noqa: E731
  lo = bounded(lo_n, f[lo_n].value if f[lo_n].value is not None else min(base))
  hi = bounded(hi_n, f[hi_n].value if f[hi_n].value is not None else max(base))
  num = _checks.integer(num_n, f[num_n].value if f[num_n].value is not None
                        else len(base), maximum=max_points)
  if hi < lo:   # so a bound was given: the defaults, min and max of `base`, are ordered
    if f[hi_n].present:
      raise _checks.ConfigError(hi_n, f"must be >= --{lo_n}={lo:g}"
                                f"{'' if f[lo_n].present else ' (its default)'} (got {hi:g})")
    raise _checks.ConfigError(lo_n, f"must be <= --{hi_n}={hi:g} (its default; "
                              f"give --{hi_n} too) (got {lo:g})")
  if num == 1 and hi != lo:
    raise _checks.ConfigError(num_n, f"must be >= 2 when --{lo_n} != --{hi_n} "
                              f"(got 1); for a single value give --{prefix}=<value>")
  return linear_grid(lo, hi, num)


def start(binary: str, argv, workdir: str | None, config_from_flags):
  """The common start of a binary: no stray arguments, a config, a workdir.

  Args:
    binary: the binary's name, for error lines.
    argv: `main`'s argv.
    workdir: the --workdir flag's value.
    config_from_flags: () -> validated config; may raise ConfigError.

  Returns:
    (config, prepared workdir path). Exits with one line on a ConfigError.
  """
  if len(argv) > 1:
    sys.exit(f"{binary}: error: unexpected arguments: {' '.join(argv[1:])} (every "
             "setting is a flag, --name=value; --helpshort lists them)")
  with config_errors(binary):
    if not workdir:
      raise _checks.ConfigError("workdir", "is required: a writable output directory")
    config = config_from_flags()
    return config, io.prepare_workdir(workdir)


@contextlib.contextmanager
def run_errors(binary: str, size_flags: Sequence[str]) -> Iterator[None]:
  """One-line errors for what fails after the config was accepted.

  A ConfigError (e.g. an output path blocked by a directory) prints as
  ``<binary>: error: --<flag>: <detail>``; running out of host or device
  memory prints the size that failed and the flags that set the sizes. Both
  exit 1; finished chunks are kept (see `resume_dir`).

  Args:
    binary: the binary's name, for error lines.
    size_flags: the flags that set the run's memory (e.g. ("p", "runs")).
  """
  try:
    yield
  except _checks.ConfigError as e:
    sys.exit(f"{binary}: error: --{e.name}: {e.detail}")
  except Exception as e:   # noqa: BLE001 -- only out-of-memory is handled
    if not _out_of_memory(e):
      raise
    need = re.search(r"allocating (\d+) bytes", str(e))
    what = f" (a buffer of {int(need.group(1)) / 2**30:,.1f} GiB)" if need else ""
    sys.exit(f"{binary}: error: out of memory{what}; reduce --"
             + ", --".join(size_flags))


def _out_of_memory(error: BaseException) -> bool:
  if isinstance(error, MemoryError):
    return True
  from jax.errors import JaxRuntimeError  # local: keep absl-only paths light.
  return isinstance(error, JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


@contextlib.contextmanager
def resume_dir(workdir: str, name: str, enabled: bool = True
               ) -> Iterator[str | None]:
  """``<workdir>/<name>`` for a run's finished chunks while the block runs.

  The directory is removed when the block ends normally (the results saved in
  it supersede the chunks), and kept when it raises, so that rerunning the
  same command resumes.

  Args:
    workdir: the prepared workdir.
    name: the subdirectory ("chunks", "stages").
    enabled: whether the run saves chunks at all (else the block gets None).

  Yields:
    The directory's path, or None when not enabled.
  """
  path = os.path.join(workdir, name) if enabled else None
  if path is not None and os.path.exists(path) and not os.path.isdir(path):
    raise _checks.ConfigError(
        "workdir", f"must not hold a file named {name!r} ({path}): the run keeps "
        "its finished parts in that directory; remove the file")
  yield path
  if path is not None:
    shutil.rmtree(path, ignore_errors=True)


def report(table: str, paths: dict[str, str]) -> None:
  """Prints a binary's summary table and the files it wrote."""
  print(table)
  for kind, path in paths.items():
    print(f"wrote {kind}: {path}")


def _calling_binary() -> str:
  """The module name absl gives the caller of a `define_*` function here.

  Flags defined on a binary's behalf are registered as the binary's own, so
  that ``--helpshort`` lists them with the others.
  """
  name = sys._getframe(2).f_globals.get("__name__")   # noqa: SLF001
  return sys.argv[0] if name == "__main__" else name


def define_shard_flag(members: str):
  """The ``--shard`` flag of a binary: split `members` over all local devices."""
  from absl import flags  # local: the library itself does not need absl.
  return flags.DEFINE_bool(
      "shard", False, f"Split {members} over all local devices (GPUs/TPUs, or "
      "CPU devices faked with XLA_FLAGS=--xla_force_host_platform_device_count=N); "
      "same values as unsharded.", module_name=_calling_binary())


def define_grid_flags(prefix: str, what: str, *, max_points: int,
                      max_abs: float = _checks.MAX_ABS_RATE, note: str = "") -> None:
  """A binary's ``--<prefix>`` list and ``--<prefix>_min/_max/_num`` flags.

  Read them with `grid_from_flags` (same `prefix`, `max_points`, `max_abs`).

  Args:
    prefix: the flag names' prefix (e.g. "grid", "alpha_t").
    what: what one value is, for the help (e.g. "α_t (in --units)").
    max_points: the most values allowed.
    max_abs: the largest |value| allowed.
    note: appended to the list flag's help (e.g. "; 0 is always added").
  """
  from absl import flags  # local: the library itself does not need absl.
  module, bound = _calling_binary(), f"|x| <= {max_abs:g}"
  flags.DEFINE_list(prefix, None, f"Explicit {what} values (comma-separated, at most "
                    f"{max_points}, {bound}{note}); overrides --{prefix}_min/"
                    f"--{prefix}_max/--{prefix}_num.", module_name=module)
  flags.DEFINE_float(f"{prefix}_min", None, f"Smallest {what} ({bound}).",
                     module_name=module)
  flags.DEFINE_float(f"{prefix}_max", None, f"Largest {what} ({bound}).",
                     module_name=module)
  flags.DEFINE_integer(f"{prefix}_num", None, f"Number of {what} values (1 .. "
                       f"{max_points}; 1 only when --{prefix}_min = --{prefix}_max).",
                       module_name=module)


def mesh_from_flag(shard: bool, axis_name: str = "members"):
  """A 1-D mesh over all local devices when ``--shard`` is set, else None."""
  return sharding.device_mesh(axis_name=axis_name) if shard else None


def flags_parser(binary: str):
  """An `app.run(…, flags_parser=…)` that reports flag-parsing errors in one line.

  absl's own parser prints a two-line ``FATAL Flags parsing error``; this one
  prints ``<binary>: error: --<flag>: <detail>`` with the flag's help (which
  states its allowed values), like every other bad input, and exits 1.
  """
  def parse(argv):
    from absl import flags  # local: the library itself does not need absl.
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      sys.exit(f"{binary}: error: {_flag_error(flags.FLAGS, e)}")
    except ValueError as e:    # absl: "--noX=v does not take an argument"
      match = re.match(r"--no(\w+)=(.*) does not take an argument", str(e))
      if match is None:
        raise
      name, value = match.groups()
      sys.exit(f"{binary}: error: --no{name}: takes no value (got {value!r}); "
               f"write --{name}=true, --{name}=false or --no{name}")
  return parse


def _binary_flags(flag_values) -> list[str]:
  """The binary's flags: those of the module defining --workdir (every binary
  does), including those defined for it here (`define_shard_flag`, …)."""
  module = flag_values.find_module_defining_flag("workdir")
  if module is None:
    return []
  return sorted(f.name for f in flag_values.get_flags_for_module(module))


def _flag_error(flag_values, error) -> str:
  from absl import flags  # local: the library itself does not need absl.
  if isinstance(error, flags.UnrecognizedFlagError):
    known = _binary_flags(flag_values)
    close = difflib.get_close_matches(error.flagname, known, n=3)
    tip = f"did you mean --{', --'.join(close)}? " if close else ""
    listing = (f"this binary's flags are --{', --'.join(known)} "
               "(--helpshort describes them)" if known else "see --helpshort")
    return f"--{error.flagname}: unknown flag; {tip}{listing}"
  text = str(error)
  missing = re.match(r"Missing value for flag (--[\w.]+)", text)
  if missing:
    name = missing.group(1)[2:]
    usage = flag_values[name].help if name in flag_values else ""
    return f"--{name}: missing value (write --{name}=<value>)" + (
        f"; --{name}: {usage}" if usage else "")
  if "Unable to open flagfile" in text:
    return "--flagfile: " + text.replace("ERROR:: ", "").replace("\n", " ").strip()
  match = re.match(r"flag --([\w.]+)=(.*?): (.*)", text, re.S)
  if match is None:
    return text.replace("\n", " ")
  name, value, detail = match.groups()
  kind = flag_values[name].flag_type() if name in flag_values else ""
  if kind == "int":
    detail = f"must be an integer (got {value!r})"
  elif kind == "bool":
    detail = f"must be true or false (got {value!r})"
  elif value not in detail:
    detail = f"{detail} (got {value!r})"
  usage = flag_values[name].help if name in flag_values else ""
  return f"--{name}: {detail}" + (f"; --{name}: {usage}" if usage else "")
