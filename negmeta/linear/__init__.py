"""One-step MAML on mixed linear regression: sampler, exact learner, compiled sweeps.

The theory it is checked against lives apart, in `negmeta.theory.linear`.
"""

from negmeta.linear._maml import MetaDesign
from negmeta.linear._maml import MetaSolution
from negmeta.linear._maml import exact_test_loss
from negmeta.linear._maml import expected_distance_given_inputs
from negmeta.linear._maml import inner_step
from negmeta.linear._maml import inner_step_gap
from negmeta.linear._maml import meta_design
from negmeta.linear._maml import meta_loss
from negmeta.linear._maml import meta_solution_path
from negmeta.linear._maml import min_distance_solution
from negmeta.linear._maml import protocol_test_loss
from negmeta.linear._maml import squared_loss
from negmeta.linear._sampler import TaskBatch
from negmeta.linear._sampler import sample_meta_test
from negmeta.linear._sampler import sample_meta_training
from negmeta.linear._sampler import sample_tasks
from negmeta.linear._sweep import Estimate
from negmeta.linear._sweep import RunValues
from negmeta.linear._sweep import estimate
from negmeta.linear._sweep import expected_distances
from negmeta.linear._sweep import paired_difference
from negmeta.linear._sweep import run_keys
from negmeta.linear._sweep import run_sweep
from negmeta.linear._sweep import runs_mesh
from negmeta.linear._sweep import simulate_batches
from negmeta.linear._sweep import simulate_chunk
from negmeta.linear._sweep import simulate_run
