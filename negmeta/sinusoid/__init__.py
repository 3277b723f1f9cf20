"""Sinusoid regression (Finn et al. 2017): Table 2 and learning-rate sweeps.

`experiment` is the library API (configs, presets, run, estimates, records,
files); `experiments/sinusoid.py` is its command-line front end.
"""

from negmeta.sinusoid import experiment
from negmeta.sinusoid.experiment import FINN_TABLE2
from negmeta.sinusoid.experiment import PRESETS
from negmeta.sinusoid.experiment import SinusoidConfig
from negmeta.sinusoid.experiment import SinusoidResult
from negmeta.sinusoid.experiment import preset
from negmeta.sinusoid.experiment import run
from negmeta.sinusoid.experiment import save
from negmeta.sinusoid.experiment import summary_table

__all__ = (
    "FINN_TABLE2",
    "PRESETS",
    "SinusoidConfig",
    "SinusoidResult",
    "experiment",
    "preset",
    "run",
    "save",
    "summary_table",
)
