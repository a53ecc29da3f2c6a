"""The training loop, its checkpoints, history and schedules."""

from aelab.train.history import History
from aelab.train.loop import NonFiniteLossError, StepContext, fit
from aelab.train.schedules import linear_ramp, warmup_cosine

__all__ = ["History", "NonFiniteLossError", "StepContext", "fit", "linear_ramp", "warmup_cosine"]
