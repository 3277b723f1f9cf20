"""Estimates over independent runs: mean ± standard error, paired differences.

Every experiment reports its numbers through these, so "± s.e." means the same
thing everywhere: the sample standard deviation over finite runs divided by √n.
Non-finite runs (diverged) are counted out, never averaged in.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Estimate(NamedTuple):
  """Mean over the finite runs, its standard error, and counts (arrays [G]).

  Attributes:
    mean: mean over runs with a finite value.
    se: standard error of the mean (sample std / √n).
    n: number of finite runs.
  """
  mean: np.ndarray
  se: np.ndarray
  n: np.ndarray


def estimate(values: np.ndarray) -> Estimate:
  """Mean ± s.e. over axis 0 of [R, G] values, ignoring non-finite runs."""
  values = np.asarray(values, dtype=np.float64)
  ok = np.isfinite(values)
  n = ok.sum(axis=0)
  safe = np.where(ok, values, 0.0)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = safe.sum(axis=0) / n
    var = np.where(ok, (safe - mean) ** 2, 0.0).sum(axis=0) / (n - 1)
    se = np.sqrt(var / n)
  return Estimate(mean=mean, se=se, n=n)


def paired_difference(values: np.ndarray, i: int, j: int) -> tuple[float, float]:
  """Mean and s.e. over runs of values[:, i] − values[:, j] (common random numbers).

  Runs where either value is non-finite are left out; with no run left the
  mean is NaN, with one the s.e. is NaN.
  """
  with np.errstate(invalid="ignore", over="ignore"):
    d = np.asarray(values[:, i], np.float64) - np.asarray(values[:, j], np.float64)
  d = d[np.isfinite(d)]
  if d.size == 0:
    return float("nan"), float("nan")
  se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
  return float(d.mean()), se


def nan_ignoring(fn, values: np.ndarray) -> float:
  """`fn` (e.g. np.median, np.min) over the non-NaN entries; NaN if there are none.

  Like `np.nanmedian` / `np.nanmin` on a 1-D array, without their warning
  when every entry is NaN (a fully diverged grid value is data).
  """
  v = np.asarray(values, np.float64).ravel()
  v = v[~np.isnan(v)]
  return float(fn(v)) if v.size else float("nan")

