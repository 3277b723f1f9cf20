"""Heatmap of a convergence map with the predicted and Takagi boundaries drawn on it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from negmeta.convergence import maps  # noqa: E402


def _edges(x: np.ndarray, log: bool) -> np.ndarray:
  v = np.log(x) if log else np.asarray(x, np.float64)
  mid = 0.5 * (v[1:] + v[:-1])
  e = np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])
  return np.exp(e) if log else e


def _curve(beta_c: np.ndarray, lo: float, hi: float) -> np.ndarray:
  # Draw +inf above and 0 below the axes so the line leaves the plot there.
  return np.clip(np.where(np.isfinite(beta_c), beta_c, hi * 10), lo / 10, hi * 10)


def map_figure(result):
  """Two panels over (α, β): final loss, and classes; boundaries on both.

  Args:
    result: a `negmeta.convergence.experiment.ConvergenceMapResult`.

  Returns:
    The matplotlib Figure.
  """
  c, a, s = result.config, result.arrays, result.summary
  alpha, beta = a["alpha"], a["beta"]
  ae, be = _edges(alpha, False), _edges(beta, True)
  fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8), sharey=True)
  loss = np.where(a["empirical_class"] == maps.DIVERGED, np.nan, a["final_loss"])
  with np.errstate(divide="ignore", invalid="ignore"):
    logloss = np.log10(np.maximum(loss, 1e-300))
  finite = np.isfinite(logloss)
  vmin = max(np.min(logloss[finite]), -12.0) if finite.any() else 0.0
  vmax = np.max(logloss[finite]) if finite.any() else 1.0
  cmap = plt.get_cmap("viridis").with_extremes(bad="white")
  mesh = axes[0].pcolormesh(ae, be, np.ma.masked_invalid(logloss).T, cmap=cmap,
                            vmin=vmin, vmax=vmax, shading="flat")
  fig.colorbar(mesh, ax=axes[0], label="log10 final loss (white: diverged)")
  classes = ListedColormap(["#1b4f72", "#aab7b8", "#fdfefe"])
  axes[1].pcolormesh(ae, be, a["empirical_class"].T, cmap=classes, vmin=-0.5,
                     vmax=2.5, shading="flat")
  lo, hi = be[0], be[-1]
  linear = c.preset != "sinusoid"
  pred_label = (f"exact β_c(α), {c.method}" if linear else
                "min 2/(λ − αλ²), top eigenvalues of H")
  if "dense_beta_c_predicted" in a:
    pred_x, pred_y = a["dense_alpha"], a["dense_beta_c_predicted"]
  else:
    pred_x, pred_y = alpha, a["beta_c_predicted"]
    pred_label = "2/λ_max of the MAML meta-Hessian ∇²L_α at the trained point"
  for ax in axes:
    ax.plot(pred_x, _curve(pred_y, lo, hi), color="red", lw=1.8, label=pred_label)
    if "dense_beta_c_formula" in a and "dense_beta_c_predicted" not in a:
      ax.plot(a["dense_alpha"], _curve(a["dense_beta_c_formula"], lo, hi), color="red",
              lw=1.0, ls="-.", label="min 2/(λ(1 − αλ)²), top eigenvalues of H")
    ax.plot(a["dense_alpha"], _curve(a["dense_beta_c_takagi"], lo, hi), color="orange",
            lw=1.5, ls="--", label="Takagi β_c(α) = min 2/(λ − αλ²)")
    alpha_c = s["takagi_alpha_c"]
    if alpha[0] <= alpha_c <= alpha[-1]:
      ax.axvline(alpha_c, color="orange", lw=0.8, ls=":",
                 label="Takagi α_c = 1/λ_max")
    ax.axvline(0.0, color="black", lw=0.4)
    ax.set_yscale("log")
    ax.set_xlim(ae[0], ae[-1])
    ax.set_ylim(lo, hi)
    ax.set_xlabel("inner learning rate α")
  if "trained_point" in s and s["trained_point"]["alpha"] is not None:
    tp = s["trained_point"]
    for ax in axes:
      ax.plot([tp["alpha"]], [tp["beta"]], marker="*", ms=12, color="magenta",
              ls="none", label="trained point (Hessian)")
  axes[0].set_ylabel("meta learning rate β")
  axes[1].legend(fontsize=7, loc="lower left")
  agr = s["agreement"]
  key = "exact_at_horizon" if "exact_at_horizon" in agr else "predicted_asymptotic"
  axes[0].set_title(f"{c.preset}, {c.method}: final loss after {c.iterations} steps",
                    fontsize=9)
  axes[1].set_title(f"classes (dark: converged, grey: not yet, white: diverged); "
                    f"agreement {100 * agr[key]['share']:.1f}%", fontsize=9)
  fig.tight_layout()
  return fig
