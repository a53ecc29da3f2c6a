"""The training loop, its checkpoints, history and schedules."""

from aelab.train.history import History
from aelab.train.loop import NonFiniteLossError, StepContext, fit
from aelab.train.precision import bf16_is_fast
from aelab.train.schedules import linear_ramp, warmup_cosine

__all__ = ["History", "bf16_is_fast", "NonFiniteLossError", "StepContext", "fit", "linear_ramp", "warmup_cosine"]
