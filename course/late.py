"""Late-submission penalty of the course: 10% of the score per started day late.

nbgrader calls the plugin once per submitted notebook whose submission time (``timestamp.txt``)
is after the assignment's due date; ``course/nbgrader_config.py`` enables it with
``c.AssignLatePenalties.plugin_class = "late.TenPercentPerDay"``.
"""

import math

from nbgrader.plugins import BasePlugin

DAY = 86400
"""Seconds in a day."""
RATE = 0.1
"""Fraction of the score deducted per started day late."""


def penalty(score: float, seconds_late: float) -> float:
    """Points deducted: ``RATE * ceil(days late) * score``, rounded to 2 decimals, at most ``score``.

    A submission one second late has started its first day (10%); 1 day and 10 hours is two started
    days (20%); from 10 days on the whole score is deducted. On time (``seconds_late <= 0``): 0.
    """
    if seconds_late <= 0 or score <= 0:
        return 0.0
    days = math.ceil(seconds_late / DAY)
    return min(score, round(RATE * days * score, 2))


class TenPercentPerDay(BasePlugin):
    """Deduct 10% of the notebook's score for each started day after the due date, at most the score."""

    def late_submission_penalty(self, student_id: str, score: float, total_seconds_late: float) -> float:
        return penalty(score, total_seconds_late)
