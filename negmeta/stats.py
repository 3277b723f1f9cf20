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
  """Mean and s.e. over runs of values[:, i] − values[:, j] (common random numbers)."""
  d = np.asarray(values[:, i], np.float64) - np.asarray(values[:, j], np.float64)
  d = d[np.isfinite(d)]
  return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))


def interval95(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Normal-approximation 95% interval (mean ± 1.96 s.e.) over axis 0 of [R, ...]."""
  e = estimate(values)
  return e.mean - 1.96 * e.se, e.mean + 1.96 * e.se
