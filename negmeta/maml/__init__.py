"""General MAML engine: inner loop, meta-objective, outer loop and grids.

Works for any model given as a pure ``apply_fn(params, x) -> y_hat`` over a
parameter pytree, with a scalar, per-leaf or per-parameter (Meta-SGD) inner
rate of any sign, second- or first-order meta-gradients and optional
rematerialization of the inner loop.
"""

from negmeta.maml._grid import grid_product
from negmeta.maml._grid import meta_train_grid
from negmeta.maml._inner import broadcast_rate
from negmeta.maml._inner import inner_loop
from negmeta.maml._inner import mse
from negmeta.maml._meta import AdaptationLosses
from negmeta.maml._meta import TaskBatch
from negmeta.maml._meta import adapt_and_evaluate
from negmeta.maml._meta import meta_loss
from negmeta.maml._meta import task_losses
from negmeta.maml._train import MetaTrainResult
from negmeta.maml._train import MetaTrainState
from negmeta.maml._train import all_finite
from negmeta.maml._train import meta_train

__all__ = (
    "AdaptationLosses",
    "MetaTrainResult",
    "MetaTrainState",
    "TaskBatch",
    "adapt_and_evaluate",
    "all_finite",
    "broadcast_rate",
    "grid_product",
    "inner_loop",
    "meta_loss",
    "meta_train",
    "meta_train_grid",
    "mse",
    "task_losses",
)
