"""The late-submission plugin (course/late.py): 10% of the score per started day, at most the score."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_late():
    spec = importlib.util.spec_from_file_location("course_late", REPO / "course" / "late.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


late = load_late()
HOUR = 3600


@pytest.mark.parametrize(
    ("score", "seconds_late", "expected"),
    [
        (18.0, 0, 0.0),  # on time
        (18.0, -5 * HOUR, 0.0),  # early
        (18.0, 1, 1.8),  # one second late starts the first day
        (18.0, 24 * HOUR, 1.8),  # exactly one day: still the first
        (18.0, 24 * HOUR + 1, 3.6),  # the second day has started
        (18.0, 34 * HOUR, 3.6),  # 1 day 10 hours, the guide's example: raw 18, penalty 3.6, score 14.4
        (13.0, 3 * 24 * HOUR, 3.9),
        (7.0, 2.5 * 24 * HOUR, 2.1),  # rounded to cents: 0.3 * 7 = 2.1 (not 2.0999999...)
        (18.0, 9.5 * 24 * HOUR, 18.0),  # the tenth started day takes everything
        (18.0, 30 * 24 * HOUR, 18.0),  # never more than the score
        (0.0, 5 * 24 * HOUR, 0.0),  # nothing to deduct from
    ],
)
def test_penalty_is_ten_percent_per_started_day(score, seconds_late, expected):
    assert late.penalty(score, seconds_late) == expected


def test_penalty_matches_the_rule_written_out():
    """A second formula: the per-day loop a person would write, over a grid of scores and delays."""
    for score in (0.5, 1.0, 7.0, 13.0, 16.0, 18.0):
        for minutes in range(1, 15 * 24 * 60, 97):
            days, left = 0, minutes * 60
            while left > 0:  # count the started days one by one
                days, left = days + 1, left - late.DAY
            assert late.penalty(score, minutes * 60) == pytest.approx(min(score, round(score * days / 10, 2)))


def test_plugin_is_what_nbgrader_calls_and_is_enabled():
    from nbgrader.plugins import BasePlugin

    plugin = late.TenPercentPerDay()
    assert isinstance(plugin, BasePlugin)
    assert plugin.late_submission_penalty("alice", 18.0, 34 * HOUR) == 3.6
    config = (REPO / "course" / "nbgrader_config.py").read_text()
    assert 'c.AssignLatePenalties.plugin_class = "late.TenPercentPerDay"' in config
