"""Learning-rate and coefficient schedules: functions of the step returning a multiplier."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(total_steps: int, warmup_steps: int = 0, final: float = 0.0) -> Callable[[int], float]:
    """Linear warm-up from 0 to 1 over ``warmup_steps``, then cosine decay to ``final`` at ``total_steps``."""
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps > 0, got {warmup_steps}, {total_steps}")

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def linear_ramp(steps: int, start: float = 0.0, end: float = 1.0) -> Callable[[int], float]:
    """From ``start`` to ``end`` linearly over ``steps``, then constant (KL or sparsity warm-up)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")

    def f(step: int) -> float:
        return end if steps == 0 or step >= steps else start + (end - start) * step / steps

    return f
