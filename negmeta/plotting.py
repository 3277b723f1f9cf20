"""Figures (matplotlib, headless Agg backend). Plotting only reads results."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def close(fig) -> None:
  plt.close(fig)


def linear_sweep_figure(result):
  """Paper-style figure: theory line, simulated points ± s.e., optima marked.

  Args:
    result: a `negmeta.linear.experiment.LinearSweepResult`.

  Returns:
    The matplotlib Figure.
  """
  c = result.config
  est = result.estimates()
  x = result.swept
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  ax.plot(*result.theory_curve, color="black", lw=1.6, label="theory")
  ax.errorbar(x, est["protocol_loss"].mean, yerr=est["protocol_loss"].se, fmt="o",
              ms=4, color="tab:blue", capsize=2,
              label=f"experiment ({c.test_tasks} tasks × {c.test_points} points)")
  ax.errorbar(x, est["exact_loss"].mean, yerr=est["exact_loss"].se, fmt="s", ms=3,
              mfc="none", color="tab:orange", capsize=2,
              label="experiment, exact over test data")
  o = result.optimum
  ax.axvline(o["theory_argmin"], color="black", ls="--", lw=0.8,
             label=f"theory optimum {o['theory_argmin']:.3f}")
  s = o.get("simulated_exact_loss")   # absent when every run diverged
  if s is not None:
    ax.plot([s["argmin"]], [s["min"]], marker="*", ms=14, color="tab:red", ls="none",
            label=f"simulated optimum {s['argmin']:.3f}")
  ax.axvline(0.0, color="grey", lw=0.5)
  sym = r"$\alpha_t$ (training)" if c.sweep == "alpha_t" else r"$\alpha_r$ (adaptation)"
  ax.set_xlabel(f"learning rate {sym}")
  ax.set_ylabel("average test loss")
  regime = "overparameterized" if c.p > c.n_v * c.m else "underparameterized"
  ax.set_title(f"{regime}: p={c.p}, n_t={c.n_t}, n_v={c.n_v}, n_r={c.n_r}, m={c.m}, "
               f"σ={c.sigma:g}, ν={c.nu:g}, {c.runs} runs", fontsize=9)
  ax.legend(fontsize=8)
  # Limits from finite values only (overflowed theory or diverged runs are inf/NaN).
  shown = np.concatenate([np.ravel(result.theory_curve[1]), est["exact_loss"].mean,
                          est["protocol_loss"].mean])
  shown = shown[np.isfinite(shown)]
  if shown.size:
    lo, hi = float(np.min(shown)), float(np.max(shown))
    pad = 0.08 * (hi - lo) if np.isfinite(hi - lo) and hi > lo else 1.0
    if np.isfinite(lo - pad) and np.isfinite(hi + pad):
      ax.set_ylim(lo - pad, hi + pad)
  fig.tight_layout()
  return fig
