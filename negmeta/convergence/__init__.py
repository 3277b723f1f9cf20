"""Convergence maps of MAML's outer loop over (α, β): theory against experiment.

  problems    fixed task sets (Takagi's linear regression, mixed linear regression,
              a sinusoid pool) and the exact Hessians of the quadratic ones;
  maps        the grid of whole outer-loop runs in one compiled call, the
              classification criterion, agreement and empirical boundaries;
  predict     exact predictions for quadratic problems (spectral radius and the
              exact T-step map), Takagi's boundary, Hessian (Lanczos) predictions;
  experiment  configs, presets, run / record / summary_table / save.

References:
  Takagi, Nagano, Yoshida, Okada, "On the conditions of MAML convergence",
  MetaLearn 2019; ../shared/reference/maml_variants.md §A.
"""

from negmeta.convergence import maps
from negmeta.convergence import predict
from negmeta.convergence import problems

__all__ = ("maps", "predict", "problems")
