"""Nonlinear (quadratic) regression with a wide 2-layer ReLU network and its NTK prediction.

Bernacchia 2021, Sec. 4 and Fig. 5 (reference §4, §5.3): tasks
y = (wᵀx + b)² + z, MAML with one inner step meta-trained at each α_t of a
signed grid, adapted with α_r, and the prediction of the network linearized at
initialization (solved exactly, nearest to θ₀, as in the linear study).
"""

from negmeta.nonlinear import ntk
from negmeta.nonlinear._model import TwoLayerReLU
from negmeta.nonlinear._model import antisymmetric_init
from negmeta.nonlinear._tasks import QuadraticProblem
from negmeta.nonlinear._tasks import quadratic_problem
from negmeta.nonlinear._tasks import quadratic_targets
from negmeta.nonlinear._tasks import sample_task_params
from negmeta.nonlinear._tasks import sample_tasks

__all__ = (
    "QuadraticProblem",
    "TwoLayerReLU",
    "antisymmetric_init",
    "ntk",
    "quadratic_problem",
    "quadratic_targets",
    "sample_task_params",
    "sample_tasks",
)
