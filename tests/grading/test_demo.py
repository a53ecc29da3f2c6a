"""`make grading-demo`: the instructor's cycle on generated submissions prints the grades they deserve.

The demo (``aelab.grading``) runs here on one assignment, in fast mode, in a temporary folder: every
assignment's release, autograding and feedback are already exercised by test_roundtrip.py, and one
more assignment would add a minute. Its expected table is derived from the source notebook, not
from the demo's code: ``full`` earns every point; ``partial`` answers the first half of the solution
cells, so it earns exactly the graded cells that come before its first unanswered solution cell (a
part's tests follow its function and later parts build on earlier ones), and being 1 day 10 hours
late it loses 20% of that (two started days, course/late.py); ``blank`` earns nothing.
"""

from __future__ import annotations

import csv
import subprocess
import sys

import nbformat
import pytest
from harness import REPO

from aelab import grading

pytestmark = pytest.mark.timeout(1200)

ASSIGNMENT = "a05_superposition"  # the quicker of the first two assignments in fast mode


def expected_raw(source: nbformat.NotebookNode) -> dict[str, float]:
    """Student -> raw score the demo's submissions deserve, read off the source notebook's cells."""
    meta = [c.metadata.get("nbgrader", {}) for c in source.cells]
    solutions = [i for i, m in enumerate(meta) if m.get("solution") and not m.get("grade")]
    first_blank = solutions[(len(solutions) + 1) // 2]
    points = [(i, m["points"]) for i, m in enumerate(meta) if m.get("grade")]
    return {
        "full": float(sum(p for _, p in points)),
        "partial": float(sum(p for i, p in points if i < first_blank)),
        "blank": 0.0,
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "course"
    lines: list[str] = []
    grades = grading.grading_demo(root, REPO, [ASSIGNMENT], log=lines.append)
    return root, grades, lines


def test_demo_finds_the_assignments_the_makefile_finds():
    assert grading.assignments(REPO) == sorted(p.name for p in (REPO / "solutions").glob("a[0-9]*") if p.is_dir())
    assert ASSIGNMENT in grading.assignments(REPO)


def test_demo_rejects_an_unknown_assignment():
    proc = subprocess.run([sys.executable, "-m", "aelab.grading", "--repo", str(REPO), "a99_nothing"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown assignments ['a99_nothing']" in proc.stderr, proc.stderr[-2000:]


def test_demo_does_not_replace_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not a grading-demo course"):
        grading.grading_demo(tmp_path, REPO, [ASSIGNMENT])
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_partial_submission_leaves_the_second_half_as_released():
    release = nbformat.read(REPO / "assignments" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    source = nbformat.read(REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    notebooks = grading.demo_notebooks(release, source)
    answered = list(grading.solution_cells(source).values())
    partial = list(grading.solution_cells(notebooks["partial"]).values())
    half = (len(answered) + 1) // 2
    assert partial[:half] == answered[:half]
    assert all("raise NotImplementedError()" in cell for cell in partial[half:])
    assert list(grading.solution_cells(notebooks["full"]).values()) == answered


def test_demo_table_has_the_expected_scores(demo):
    root, grades, lines = demo
    source = nbformat.read(REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    raw = expected_raw(source)
    assert 0 < raw["partial"] < raw["full"], raw
    got = {g.student: g for g in grades}
    assert sorted(got) == sorted(grading.DEMO_STUDENTS) and {g.assignment for g in grades} == {ASSIGNMENT}
    for student, g in got.items():
        penalty = round(0.2 * raw[student], 2) if student == "partial" else 0.0
        assert (g.raw_score, g.late_submission_penalty, g.score, g.max_score) == pytest.approx(
            (raw[student], penalty, raw[student] - penalty, raw["full"])), (student, g)
    assert got["partial"].timestamp.startswith("2025-11-04 09:59:00"), "the partial submission's timestamp.txt was not read"
    assert lines and lines[0].startswith(f"{ASSIGNMENT}: released, 3 submissions autograded")


def test_demo_writes_grades_csv_and_feedback(demo):
    root, grades, _ = demo
    with (root / "grades.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(grades) == 3
    for student in grading.DEMO_STUDENTS:
        html = root / "feedback" / student / ASSIGNMENT / f"{ASSIGNMENT}.html"
        assert html.is_file(), f"no feedback for {student}"
    table = grading.table(grades)
    assert table.splitlines()[0].startswith("| assignment | student |") and len(table.splitlines()) == 2 + len(grades)
