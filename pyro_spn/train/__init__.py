"""Training runs: a config dataclass, the trainer loop with checkpoints and resume, and the click CLIs
``pyrospn-train`` and ``pyrospn-sample``."""

from .checkpoint import CheckpointError
from .config import TrainConfig
from .trainer import NonFiniteLossError, Trainer

__all__ = ["CheckpointError", "NonFiniteLossError", "TrainConfig", "Trainer"]
