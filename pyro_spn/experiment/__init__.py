"""The paper's experiment protocol: grid search on the validation split, the selected settings over several
seeds on the test split, results tables and figures (``pyrospn-experiment``).

Modules: :mod:`.methods` (what is compared), :mod:`.config` (the experiment's settings, one run's spec),
:mod:`.evaluation` (metrics of one run), :mod:`.protocol` (the grid, the runs, resume), :mod:`.report` (selection,
CSV, Markdown), :mod:`.figures` (the two figures).
"""

from .config import ExperimentConfig, RunSpec
from .evaluation import evaluate_run, feature_extractor
from .methods import METHODS, Method
from .protocol import Experiment

__all__ = ["METHODS", "Experiment", "ExperimentConfig", "Method", "RunSpec", "evaluate_run", "feature_extractor"]
