"""Test-session setup.

The whole suite runs with float64 enabled (theory-vs-simulation checks would be
hidden by float32 noise); tests of float32 behaviour pass dtypes explicitly.
Matplotlib is forced to the headless Agg backend.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
