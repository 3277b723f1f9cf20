"""Figure of the nonlinear sweep: trained network and NTK prediction on one plot."""

from __future__ import annotations

import numpy as np

from negmeta import plotting

plt = plotting.plt


def sweep_figure(result):
  """Test loss vs α_t, one panel per α_r: trained network (points ± s.e.) and
  the NTK prediction (exact solution, and the same optimizer and steps).

  Args:
    result: a `negmeta.nonlinear.experiment.NonlinearSweepResult`.

  Returns:
    The matplotlib Figure.
  """
  c = result.config
  x = result.grid
  panels = len(c.alpha_r)
  fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.6), squeeze=False)
  unit = r"$1/\bar\lambda$" if c.units == "curvature" else "absolute"
  for a, ax in enumerate(axes[0]):
    est = result.estimates(a)
    opt = result.optimum[a]
    styles = {
        "ntk": dict(color="black", lw=1.6, label="NTK prediction (exact, nearest θ₀)"),
        "ntk_same_steps": dict(color="grey", lw=1.0, ls="--",
                               label=f"NTK, same optimizer & {c.num_steps} steps"),
    }
    for name, style in styles.items():
      e = est[name]
      ax.plot(x, e.mean, **style)
      ax.fill_between(x, e.mean - e.se, e.mean + e.se, color=style["color"],
                      alpha=0.12, lw=0)
    e = est["trained"]
    ax.errorbar(x, e.mean, yerr=e.se, fmt="o", ms=4, color="tab:blue", capsize=2,
                label=f"trained network (width {c.width})")
    for name, color, label in (("trained", "tab:red", "trained"),
                               ("ntk", "black", "NTK")):
      o = opt[name]
      if o.get("argmin") is not None:
        p_neg = o["bootstrap_p_negative"]
        boot = "no bootstrap" if p_neg is None else f"bootstrap P(<0) = {p_neg:.2f}"
        ax.plot([o["argmin"]], [o["min"]], marker="*", ms=13, color=color, ls="none",
                label=f"{label} optimum {o['argmin']:g} ({boot})")
    ax.axvline(0.0, color="grey", lw=0.5)
    ax.set_xlabel(r"learning rate $\alpha_t$ (training), units of " + unit)
    ax.set_ylabel("average test loss")
    if c.units == "curvature":
      lam = result.curvature["lambda_bar"]
      top = ax.secondary_xaxis("top", functions=(lambda v: v / lam, lambda v: v * lam))
      top.set_xlabel(r"$\alpha_t$ (absolute)", fontsize=8)
      top.tick_params(labelsize=7)
    ax.set_title(f"d={c.d}, m={c.m}, n_t={c.n_t}, n_v={c.n_v}, n_r={c.n_r}, "
                 f"σ={c.sigma:g}; α_r = {c.alpha_r[a]:g} "
                 f"{'/λ̄' if c.units == 'curvature' else ''}; {c.seeds} runs × "
                 f"{c.test_tasks} tasks", fontsize=8)
    ax.legend(fontsize=7)
    # Scale to the NTK curves and the trained points near them; trained points
    # far above (non-lazy blow-ups) are marked at the top edge with their value.
    # The NTK bands' upper (mean + s.e.) and lower (mean − s.e.) edges.
    ntk_vals, ntk_low = (
        np.concatenate([est[k].mean + sign * est[k].se for k in ("ntk", "ntk_same_steps")])
        for sign in (1.0, -1.0))
    ntk_vals, ntk_low = ntk_vals[np.isfinite(ntk_vals)], ntk_low[np.isfinite(ntk_low)]
    tr = est["trained"].mean
    if ntk_vals.size:
      lo = np.nanmin(np.concatenate([ntk_low, tr - est["trained"].se]))
      span = np.max(ntk_vals) - lo
      hi = max(np.max(ntk_vals), np.nanmax(np.where(tr <= np.max(ntk_vals) + span, tr, -np.inf)
                                           + est["trained"].se))
      pad = 0.08 * (hi - lo + 1e-12)
      ax.set_ylim(lo - pad, hi + 3 * pad)
      for xi, yi in zip(x, tr):
        if np.isfinite(yi) and yi > hi + 3 * pad:
          ax.annotate(f"{yi:.2f}", (xi, hi + 2.2 * pad), ha="center", fontsize=7,
                      color="tab:blue")
          ax.plot([xi], [hi + 2.8 * pad], marker="^", color="tab:blue", ms=5)
  fig.tight_layout()
  return fig
