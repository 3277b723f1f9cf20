"""Few-shot task distributions that produce `negmeta.maml.TaskBatch`es."""

from negmeta.tasks.sinusoid import sample_sinusoid_batch
from negmeta.tasks.sinusoid import sample_sinusoid_params
from negmeta.tasks.sinusoid import sinusoid_batch

__all__ = ("sample_sinusoid_batch", "sample_sinusoid_params", "sinusoid_batch")
