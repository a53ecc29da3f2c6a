"""The nbgrader round trip of every assignment in a temporary course: release, submit, autograde, read the gradebook.

Each assignment (a ``spec_<name>.py`` here) is released and autograded once, with its solution
(full marks), its blank release (zero), and its own known-wrong, tampering and misbehaving
submissions; the tests then check every cell's score, the messages that name the mistakes, the
committed release and the feedback. To add an assignment, write its spec; nothing here changes.
"""

from __future__ import annotations

import nbformat
import pytest
from harness import REPO, error_outputs, hidden_block, load_specs, normalized, stream_text, traceback_text

pytestmark = pytest.mark.timeout(1800)  # the first test of an assignment generates and autograds all its submissions

SPECS = load_specs()
ASSIGNMENTS = sorted(SPECS)
STUDENTS = [(name, student) for name in ASSIGNMENTS for student in SPECS[name].students]
EXPECTATIONS = [
    (name, student, cell) for name in ASSIGNMENTS for student, sub in SPECS[name].submissions.items() for cell in sub.expect
]


def test_every_assignment_has_a_spec():
    sources = sorted(p.name for p in (REPO / "solutions").glob("a[0-9]*") if p.is_dir())
    assert sources == ASSIGNMENTS, (
        f"assignments in solutions/ {sources} but round-trip specs for {ASSIGNMENTS}: "
        "describe each assignment in tests/grading/spec_<assignment>.py (see harness.py)"
    )


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_the_point_table_matches_the_source(name):
    spec = SPECS[name]
    source = nbformat.read(REPO / "solutions" / name / spec.notebook, as_version=4)
    graded = {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"]["points"] for c in source.cells
              if c.metadata.get("nbgrader", {}).get("grade")}
    assert graded == dict(spec.points)
    derived = {student: sum(p for cell, p in spec.points.items() if cell not in spec.lost(student)) for student in spec.students}
    assert derived == dict(spec.totals), "the totals of the spec disagree with its point table and lost cells"
    for student, sub in spec.submissions.items():
        assert sub.lost <= set(spec.points), f"{student} loses cells that are not graded: {sorted(sub.lost - set(spec.points))}"


@pytest.mark.parametrize(("name", "student"), STUDENTS)
def test_each_submission_gets_the_points_it_deserves(graded_course, name, student):
    spec = SPECS[name]
    got = graded_course(name).scores(student)
    expected = {cell: (0 if cell in spec.lost(student) else points) for cell, points in spec.points.items()}
    assert got == expected, {cell: (got.get(cell), expected[cell]) for cell in spec.points if got.get(cell) != expected[cell]}


@pytest.mark.parametrize(("name", "student", "cell"), EXPECTATIONS)
def test_cells_show_what_the_spec_expects(graded_course, name, student, cell):
    """Wrong answers get messages that name the mistake; timeouts and lazy answers show up as such."""
    expect = SPECS[name].submissions[student].expect[cell]
    out = graded_course(name).cells(student)[cell]
    if expect.error is None:
        assert expect.says in stream_text(out), (cell, stream_text(out))
        return
    errors = error_outputs(out)
    assert expect.error in {o.ename for o in errors}, (cell, [(o.ename, o.evalue) for o in errors])
    message = "".join(o.get("evalue", "") for o in errors)
    assert expect.says in message, (cell, message)


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_tampering_with_aelab_does_not_change_the_reference(graded_course, name):
    """The tampering submission's lost cells fail on the comparison with the fresh reference, not on an accident."""
    spec = SPECS[name]
    sub = spec.submissions[spec.tampering]
    tampered = sorted(cell for cell, expect in sub.expect.items() if cell in sub.lost and expect.error == "AssertionError")
    assert tampered, f"{name}: the spec must expect the message that names the hidden mistake in a lost cell of {spec.tampering!r}"
    cells = graded_course(name).cells(spec.tampering)
    for cell in tampered:
        errors = error_outputs(cells[cell])
        assert errors and errors[0].ename == "AssertionError", (cell, [(o.ename, o.evalue) for o in errors])
        assert sub.expect[cell].says in errors[0].evalue, (cell, errors[0].evalue)


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_the_committed_release_equals_a_fresh_generation(graded_course, name):
    spec = SPECS[name]
    fresh = graded_course(name).release()
    committed_path = REPO / "assignments" / name / spec.notebook
    assert committed_path.exists(), f"{committed_path} is missing: run `make assignments`"
    committed = nbformat.read(committed_path, as_version=4)
    assert normalized(committed) == normalized(fresh), "assignments/ is stale or was edited by hand: run `make assignments`"
    text = committed_path.read_text()
    for marker in spec.not_in_release:
        assert marker not in text, f"the committed release contains {marker!r}"
    assert sorted(p.name for p in (REPO / "assignments" / name).iterdir()) == [spec.notebook], "only the notebook belongs in the release"


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_feedback_shows_scores_and_messages_but_not_the_hidden_tests(graded_course, name):
    spec = SPECS[name]
    check = spec.feedback
    course = graded_course(name)
    html = course.feedback_html(check.student)
    assert str(spec.totals[check.student]) in html and str(spec.totals["solution"]) in html, "feedback should show the score"
    for text in check.shows:
        assert text in html, f"feedback should show {text!r}"
    assert "BEGIN HIDDEN TESTS" not in html
    source = nbformat.read(REPO / "solutions" / name / spec.notebook, as_version=4)
    body = hidden_block(source, check.hidden_cell)
    # A failing test's traceback quotes the lines around the failure; any other hidden line is a leak.
    traceback = traceback_text(course.cells(check.student)[check.hidden_cell])
    leaked = [line for line in body.splitlines()
              if len(line.strip()) > 30 and line.strip() in html and line.strip() not in traceback]
    assert not leaked, f"hidden test lines appear in the feedback: {leaked[:3]}"
