"""What ``fit`` returns: logged loss terms and evaluation results, ready to plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class History:
    """Training log. ``logs``: one dict per log interval (``step``, ``epoch``, mean of each loss term
    over the interval); ``evals``: one dict per evaluation (``step`` and what the eval callback returned)."""

    logs: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    """Wall-clock seconds ``fit`` spent training, summed over the runs of a resumed training."""

    def __getitem__(self, key: str) -> np.ndarray:
        """``history["kl"]``: that term over the logged steps (from ``logs``, else ``evals``)."""
        for rows in (self.logs, self.evals):
            if rows and any(key in r for r in rows):
                return np.array([r.get(key, np.nan) for r in rows], dtype=float)
        known = sorted({k for rows in (self.logs, self.evals) for r in rows for k in r})
        raise KeyError(f"{key!r} was not logged; logged keys: {known}")

    @property
    def terms(self) -> list[str]:
        """Names of the logged loss terms, in the order they first appeared."""
        seen: dict[str, None] = {}
        for row in self.logs:
            for k in row:
                if k not in ("step", "epoch", "lr"):
                    seen.setdefault(k)
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        return {"logs": self.logs, "evals": self.evals, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(logs=list(d.get("logs", [])), evals=list(d.get("evals", [])), seconds=float(d.get("seconds", 0.0)))

    def plot(self, terms: list[str] | None = None, ax=None, logy: bool = False):
        """Plot loss terms against the step; returns the matplotlib axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        steps = self["step"] if self.logs else np.array([])
        for name in terms or self.terms:
            ax.plot(steps, self[name], label=name)
        for name in sorted({k for r in self.evals for k in r} - {"step", "epoch"}):
            if terms is None or name in terms:
                ax.plot([r["step"] for r in self.evals], [r.get(name, np.nan) for r in self.evals], "o--", label=f"eval {name}")
        ax.set_xlabel("step")
        if logy:
            ax.set_yscale("log")
        ax.legend()
        return ax
