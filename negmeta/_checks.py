"""Input validation that fails early, with the parameter's name and allowed range.

Every user-facing entry point (library configs and experiment binaries) validates
with these helpers *before* anything is traced, so a bad value never surfaces as a
traceback from deep inside JAX. The parameter names are the flag names of the
experiment binaries, so the binaries print them as ``--name``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence


# The largest |learning rate| any study accepts: far beyond every divergence
# threshold, and small enough that float32 and the theory's polynomials in the
# rates stay finite.
MAX_ABS_RATE = 1e6


class ConfigError(ValueError):
  """A configuration value outside its allowed range.

  Attributes:
    name: the parameter (and flag) name, e.g. ``"p"``.
    detail: what is allowed and what was given.
  """

  def __init__(self, name: str, detail: str):
    self.name = name
    self.detail = detail
    super().__init__(f"{name}: {detail}")


def integer(name: str, value, *, minimum: int = 1, maximum: int | None = None) -> int:
  """Returns `value` as an int, or raises ConfigError naming `name`."""
  rng = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
  if isinstance(value, bool) or not isinstance(value, (int,)) and not (
      isinstance(value, float) and value.is_integer()):
    raise ConfigError(name, f"must be an integer {rng} (got {value!r})")
  value = int(value)
  if value < minimum or (maximum is not None and value > maximum):
    raise ConfigError(name, f"must be an integer {rng} (got {value})")
  return value


def real(name: str, value, *, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False) -> float:
  """Returns `value` as a finite float in the given range, or raises ConfigError."""
  try:
    x = float(value)
  except (TypeError, ValueError):
    raise ConfigError(name, f"must be a finite real number (got {value!r})") from None
  parts = []
  if lo is not None:
    parts.append(f"{'>' if lo_open else '>='} {lo:g}")
  if hi is not None:
    parts.append(f"<= {hi:g}")
  rng = "a finite real number" + (" " + " and ".join(parts) if parts else "")
  if not math.isfinite(x):
    raise ConfigError(name, f"must be {rng} (got {value!r})")
  if lo is not None and (x < lo or (lo_open and x == lo)):
    raise ConfigError(name, f"must be {rng} (got {x:g})")
  if hi is not None and x > hi:
    raise ConfigError(name, f"must be {rng} (got {x:g})")
  return x


def real_grid(name: str, values: Iterable, *, max_points: int = 100_000,
              max_abs: float | None = None) -> tuple[float, ...]:
  """Returns a non-empty tuple of finite floats (|x| ≤ max_abs), or raises ConfigError."""
  try:
    vals = tuple(float(v) for v in values)
  except (TypeError, ValueError):
    raise ConfigError(
        name, f"must be a list of finite real numbers (got {values!r})") from None
  if not vals:
    raise ConfigError(name, "must contain at least one value (got an empty grid)")
  if len(vals) > max_points:
    raise ConfigError(name, f"must have at most {max_points} points (got {len(vals)})")
  bad = [v for v in vals if not math.isfinite(v)]
  if bad:
    raise ConfigError(name, f"must contain only finite values (got {bad[0]!r})")
  big = [v for v in vals if max_abs is not None and abs(v) > max_abs]
  if big:
    raise ConfigError(name, f"must contain only values with |x| <= {max_abs:g} "
                      f"(got {big[0]:g})")
  return vals


def choice(name: str, value, allowed: Sequence[str]) -> str:
  """Returns `value` if it is one of `allowed`, or raises ConfigError."""
  if value not in allowed:
    raise ConfigError(name, f"must be one of {', '.join(allowed)} (got {value!r})")
  return value


def _comparable(value):
  if isinstance(value, (list, tuple)):
    return tuple(float(v) for v in value)
  return value


def preset_fields(name: str, presets: Mapping[str, Mapping], overrides: Mapping,
                  fixed: Iterable[str]) -> dict:
  """A preset's fields with `overrides` applied, refusing to change `fixed` ones.

  Args:
    name: the preset (checked against `presets`).
    presets: name -> field values.
    overrides: field values given on top (e.g. from flags).
    fixed: fields the preset fixes (its problem); an override must equal them.

  Returns:
    The merged field values.

  Raises:
    ConfigError: unknown preset, or an override contradicting a fixed field.
  """
  choice("preset", name, tuple(presets))
  base, fixed = presets[name], tuple(fixed)
  for key, value in overrides.items():
    if key in fixed and key in base and _comparable(value) != _comparable(base[key]):
      raise ConfigError(
          key, f"contradicts --preset={name}, which sets {key}={base[key]!r} "
          f"(got {value!r}); drop the flag or the preset")
  return {**base, **overrides}
