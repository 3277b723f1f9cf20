"""Figures of the sinusoid study (matplotlib, headless). Plotting only reads results."""

from __future__ import annotations

import numpy as np

from negmeta import plotting  # noqa: F401  (selects the Agg backend)
from negmeta.sinusoid import experiment

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is set)

_MAX_LINES = 6


def _pick(values: np.ndarray, prefer: float = 0.01, limit: int = _MAX_LINES
          ) -> list[int]:
  """About `limit` indices spread over `values`, plus the one equal to `prefer`."""
  n = len(values)
  idx = set(np.round(np.linspace(0, n - 1, min(limit, n))).astype(int).tolist())
  near = np.flatnonzero(np.isclose(values, prefer))
  if near.size:
    idx.add(int(near[0]))
  return sorted(idx)


def _title(result, extra: str = "") -> str:
  c = result.config
  return (f"sinusoid MAML, {c.iterations} it., meta-batch {c.meta_batch}, "
          f"K={c.k_support}, {c.seeds} seeds; eval {c.test_tasks} tasks × "
          f"{c.eval_shots} shots" + extra)


def learning_curve_figure(result):
  """Test MSE after 0..S fine-tuning steps (Table 2 / Fig. 3 style), 95% CIs.

  One line per (α_t, α_r) pair (up to a few), pooled mean ± 1.96 s.e. over
  seeds; thin lines are the individual seeds. Finn et al.'s Table 2 values
  are overlaid when the protocol is theirs (5 shots).
  """
  c = result.config
  name = result._estimator("auto")
  e = experiment.estimate(result, name)
  steps = np.arange(c.eval_steps + 1)
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  pairs = [(i, j) for i in _pick(result.alpha_t, limit=4)
           for j in _pick(result.alpha_r, limit=2)]
  # Scale to the unadapted loss; means blown up by a few diverging
  # fine-tuning runs are off the chart (marked at the top edge).
  start = e.mean[..., 0][np.isfinite(e.mean[..., 0])]
  top = 1.3 * float(np.max(start)) if start.size else np.inf
  shown = lambda v: np.where(np.asarray(v) <= top, v, np.nan)
  for n, (i, j) in enumerate(pairs):
    color = f"C{n % 10}"
    for s in range(result.seeds.size):
      ax.plot(steps, shown(e.seed_mean[i, s, j]), color=color, lw=0.6,
              alpha=0.35)
    ax.errorbar(steps, shown(e.mean[i, j]),
                yerr=np.where(e.mean[i, j] <= top, 1.96 * e.se[i, j], np.nan),
                color=color,
                marker="o", ms=3, capsize=2,
                label=f"α_t={result.alpha_t[i]:g}, α_r={result.alpha_r[j]:g}"
                      " (mean ± 95% CI)")
    ax.plot(steps, e.median[i, j], color=color, ls="--", lw=1,
            label="median over tasks (mean over seeds)" if n == 0 else None)
  if c.eval_shots == 5:
    ref = experiment.FINN_TABLE2
    ax.plot(list(ref), list(ref.values()), "k*", ms=11,
            label="Finn et al. Table 2 (MAML)")
  ax.set_xlabel("fine-tuning steps (same points each step)")
  ax.set_ylabel(f"test MSE ({name} estimator)")
  ax.set_title(_title(result), fontsize=8)
  if start.size:
    ax.set_ylim(0, top)
    for i, j in pairs:
      off = ~(e.mean[i, j] <= top)
      if np.any(off):
        ax.plot(steps[off], np.full(off.sum(), 0.98 * top), "k^", ms=6)
    if any(np.any(~(e.mean[i, j] <= top)) for i, j in pairs):
      ax.plot([], [], "k^", label="mean off chart (blown-up tasks)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def sweep_figure(result):
  """Test MSE after `eval_steps` steps vs α_t, one line per α_r, ± 1.96 s.e."""
  c = result.config
  name = result._estimator("auto")
  e = experiment.estimate(result, name)
  last = c.eval_steps
  o = experiment.optimum(result, name)
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  x = result.alpha_t
  for n, j in enumerate(_pick(result.alpha_r)):
    color = f"C{n % 10}"
    ax.errorbar(x, e.mean[:, j, last], yerr=1.96 * e.se[:, j, last], fmt="-o",
                ms=4, capsize=2, color=color,
                label=f"α_r = {result.alpha_r[j]:g}")
    best = [b for b in (o or {}).get("per_alpha_r", [])
            if np.isclose(b["alpha_r"], result.alpha_r[j])]
    if best:
      ax.plot([best[0]["argmin_alpha_t"]], [best[0]["min"]], "*", ms=13,
              color=color)
  diverged = result.diverged.any(axis=1)
  if np.any(diverged):
    ax.plot(x[diverged], np.full(diverged.sum(), ax.get_ylim()[1]), "kx",
            ms=8, label="some seeds diverged")
  ax.axvline(0.0, color="grey", lw=0.5)
  ax.set_yscale("log")
  ax.set_xlabel(r"meta-training inner rate $\alpha_t$")
  ax.set_ylabel(f"test MSE after {last} step(s) ({name})")
  ax.set_title(_title(result, f", {last} step(s)"), fontsize=8)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def heatmap_figure(result):
  """Pooled test MSE over the (α_t, α_r) grid, log colour scale."""
  c = result.config
  name = result._estimator("auto")
  e = experiment.estimate(result, name)
  z = e.mean[:, :, c.eval_steps]
  fig, ax = plt.subplots(figsize=(6.4, 4.8))
  positive = np.where(np.isfinite(z) & (z > 0), z, np.nan)
  im = ax.imshow(np.log10(positive).T, origin="lower", aspect="auto",
                 cmap="viridis")
  ax.set_xticks(range(len(result.alpha_t)))
  ax.set_xticklabels([f"{v:g}" for v in result.alpha_t], rotation=60,
                     fontsize=7)
  ax.set_yticks(range(len(result.alpha_r)))
  ax.set_yticklabels([f"{v:g}" for v in result.alpha_r], fontsize=7)
  ax.set_xlabel(r"meta-training rate $\alpha_t$")
  ax.set_ylabel(r"adaptation rate $\alpha_r$")
  fig.colorbar(im, ax=ax, label=f"log10 test MSE after {c.eval_steps} step(s)")
  o = experiment.optimum(result, name)
  if o and "best_alpha_r" in o:
    xs = [int(np.flatnonzero(np.isclose(result.alpha_t, b["alpha_t"]))[0])
          for b in o["best_alpha_r"]]
    ys = [int(np.flatnonzero(np.isclose(result.alpha_r, b["argmin_alpha_r"]))[0])
          for b in o["best_alpha_r"]]
    ax.plot(xs, ys, "w.", ms=6, label="best α_r per α_t")
    jm = o["joint_argmin"]
    ax.plot(int(np.flatnonzero(np.isclose(result.alpha_t, jm["alpha_t"]))[0]),
            int(np.flatnonzero(np.isclose(result.alpha_r, jm["alpha_r"]))[0]),
            "r*", ms=13, label="joint minimum")
    ax.legend(fontsize=7, loc="upper left")
  ax.set_title(_title(result), fontsize=8)
  fig.tight_layout()
  return fig


def training_figure(result, points: int = 400):
  """Meta-training loss (window means) vs iteration, per α_t, seeds averaged."""
  c = result.config
  losses = np.asarray(result.train_losses, np.float64)     # [A, S, N]
  n = losses.shape[-1]
  width = max(1, n // points)
  usable = (n // width) * width
  windows = losses[..., :usable].reshape(losses.shape[:2] + (-1, width))
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    curve = np.nanmean(np.nanmean(windows, axis=-1), axis=1)   # [A, W]
  x = (np.arange(curve.shape[-1]) + 0.5) * width
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for n_line, i in enumerate(_pick(result.alpha_t, limit=8)):
    ax.plot(x, curve[i], lw=1, color=f"C{n_line % 10}",
            label=f"α_t = {result.alpha_t[i]:g}")
  ax.set_yscale("log")
  ax.set_xlabel("meta-iteration")
  ax.set_ylabel(f"meta-training loss (mean over {c.seeds} seeds, windows of "
                f"{width})")
  ax.set_title(_title(result), fontsize=8)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig
