"""negmeta: MAML-style meta-learning with signed inner-loop learning rates, in JAX."""

__version__ = "0.1.0"
