"""Fixtures of the grading round trips: every ``spec_*.py`` here describes one assignment (see harness.py).

Each assignment is released and autograded once per test run, in its own temporary course, the first
time a test asks for it; every test of that assignment then reads the same graded course.
"""

from __future__ import annotations

import pytest
from harness import GradedCourse, grade, load_specs

SPECS = load_specs()


@pytest.fixture(scope="session")
def graded_course(tmp_path_factory):
    """A function: assignment name -> its GradedCourse, graded on first use and kept for the whole test run."""
    done: dict[str, GradedCourse | BaseException] = {}

    def get(name: str) -> GradedCourse:
        if name not in done:
            try:
                done[name] = grade(SPECS[name], tmp_path_factory.mktemp(name))
            except Exception as err:  # remembered, so that each test of the assignment fails fast with it
                done[name] = err
        result = done[name]
        if isinstance(result, BaseException):
            raise result
        return result

    return get
