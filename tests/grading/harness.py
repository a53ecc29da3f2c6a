"""The nbgrader round trip, written once for every assignment: a temporary course, release, autograde, gradebook.

An assignment takes part by describing itself in a ``spec_<assignment>.py`` file next to this one
(``SPEC = AssignmentSpec(...)``): its point table, the submissions to grade besides the solution and
the blank release (what each student writes, which graded cells it must lose, what some cells must
show), its tampering submission, lines the release must not contain and a feedback check.
``grade(spec, root)`` then builds a temporary course under ``root`` holding a copy of the
assignment's source notebook and an nbgrader_config.py that loads the course's own
course/nbgrader_config.py and changes only the course root, the database and the cell timeout; it
generates the release, fills it once per student and autogrades all of them in one nbgrader call.
The temporary course, the nbgrader runner and the filling of a release are ``aelab.grading``'s,
the same code ``make grading-demo`` runs.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from aelab.grading import fill, nbgrader, solution_cells, submit  # noqa: F401  (re-exported for the tests)
from aelab.grading import make_course as make_course_of

REPO = Path(__file__).resolve().parents[2]
COURSE_ID = "autoencoders"
BUILT_IN = ("solution", "blank")
"""Submissions every assignment gets: the source's solutions (full marks) and the untouched release (zero)."""


@dataclass(frozen=True)
class Expect:
    """What one cell of an autograded submission must show.

    With ``error``, one of the cell's error outputs has that exception name and the cell's error
    messages (evalue, joined) contain ``says``; without it, the cell's stream output contains ``says``.
    """

    error: str | None = None
    says: str = ""


@dataclass(frozen=True)
class Submission:
    """One student's notebook: the release with every solution cell filled from the source, except ``answers``."""

    answers: Mapping[str, str | Callable[[str], str]]
    """grade_id of a solution cell -> the student's code, or a function of the source's solution code."""
    lost: frozenset[str]
    """Graded cells (grade_id) that must score 0; every other graded cell earns its full points."""
    expect: Mapping[str, Expect] = field(default_factory=dict)
    """grade_id -> what that cell of the autograded notebook must show (the message naming the mistake, ...)."""


@dataclass(frozen=True)
class Feedback:
    """The feedback HTML of ``student`` shows scores and failure messages but not ``hidden_cell``'s hidden tests."""

    student: str
    hidden_cell: str
    """grade_id of a graded cell with a ``### BEGIN HIDDEN TESTS`` block that fails for ``student``."""
    shows: tuple[str, ...]
    """Texts the HTML must contain: a word of the failure message, the hidden cell's visible first line."""


@dataclass(frozen=True)
class AssignmentSpec:
    """Everything the shared round-trip tests need to know about one assignment."""

    name: str
    """The assignment folder and notebook name, e.g. ``"a01_vae"``."""
    points: Mapping[str, int]
    """The point table: grade_id of every graded cell -> its points, as in the source notebook."""
    submissions: Mapping[str, Submission]
    """Graded besides "solution" and "blank", student name -> submission (names are nbgrader student ids)."""
    tampering: str
    """The submission that monkeypatches aelab's reference to hide a mistake; its lost cells must fail with an AssertionError."""
    totals: Mapping[str, int]
    """Total points of every submission, built-in ones included (a check on ``points`` and ``lost``)."""
    not_in_release: tuple[str, ...]
    """Solution and hidden-test lines that must not appear in the committed release."""
    feedback: Feedback
    timeout: int = 45
    """Seconds per cell while grading (nbgrader's Execute.timeout); a hanging cell waits this long once."""

    @property
    def notebook(self) -> str:
        return f"{self.name}.ipynb"

    @property
    def students(self) -> tuple[str, ...]:
        return (*BUILT_IN, *self.submissions)

    def lost(self, student: str) -> frozenset[str]:
        """The graded cells ``student`` must lose."""
        if student == "solution":
            return frozenset()
        if student == "blank":
            return frozenset(self.points)
        return self.submissions[student].lost


def load_specs() -> dict[str, AssignmentSpec]:
    """assignment name -> spec, from every spec_<assignment>.py file in this folder."""
    specs = {}
    for path in sorted(Path(__file__).parent.glob("spec_*.py")):
        spec = importlib.import_module(path.stem).SPEC
        if path.stem != f"spec_{spec.name}":
            raise ValueError(f"{path.name} describes {spec.name!r}: name the file spec_{spec.name}.py")
        specs[spec.name] = spec
    return specs


def make_course(root: Path, spec: AssignmentSpec) -> Path:
    """A temporary course: the assignment's source folder copied from solutions/ and a config on top of the course's."""
    return make_course_of(root, REPO, [spec.name], timeout=spec.timeout)


class GradedCourse:
    """A temporary course after generate_assignment and one autograde of every submission of ``spec``."""

    def __init__(self, spec: AssignmentSpec, root: Path):
        self.spec, self.root = spec, root

    def release(self) -> nbformat.NotebookNode:
        """The release generated in this course."""
        return nbformat.read(self.root / "assignments" / self.spec.name / self.spec.notebook, as_version=4)

    def scores(self, student: str) -> dict[str, float]:
        """grade_id -> score of one student's autograded notebook, read from the gradebook."""
        from nbgrader.api import Gradebook

        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}", COURSE_ID) as gb:
            notebook = gb.find_submission_notebook(self.spec.name, self.spec.name, student)
            return {grade.name: grade.score for grade in notebook.grades}

    def cells(self, student: str) -> dict[str, nbformat.NotebookNode]:
        """grade_id -> cell of one student's autograded notebook."""
        nb = nbformat.read(self.root / "autograded" / student / self.spec.name / self.spec.notebook, as_version=4)
        return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells if "nbgrader" in c.metadata}

    def feedback_html(self, student: str) -> str:
        """The feedback HTML nbgrader generates for one student."""
        nbgrader(self.root, "generate_feedback", self.spec.name, "--student", student)
        return (self.root / "feedback" / student / self.spec.name / f"{self.spec.name}.html").read_text()


def grade(spec: AssignmentSpec, root: Path) -> GradedCourse:
    """Release ``spec``'s assignment in a temporary course under ``root`` and autograde all its submissions at once."""
    make_course(root, spec)
    nbgrader(root, "generate_assignment", spec.name, "--force")
    release = nbformat.read(root / "assignments" / spec.name / spec.notebook, as_version=4)
    source = nbformat.read(root / "solutions" / spec.name / spec.notebook, as_version=4)
    notebooks = {"solution": fill(release, source), "blank": release}
    notebooks.update({student: fill(release, source, sub.answers) for student, sub in spec.submissions.items()})
    for student, nb in notebooks.items():
        submit(root, spec.name, student, nb)
    nbgrader(root, "autograde", spec.name, timeout=900)
    return GradedCourse(spec, root)


def error_outputs(cell: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """The error outputs of a cell."""
    return [o for o in cell.get("outputs", []) if o.output_type == "error"]


def stream_text(cell: nbformat.NotebookNode) -> str:
    """Everything a cell printed."""
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def traceback_text(cell: nbformat.NotebookNode) -> str:
    """The tracebacks of a cell's errors, without terminal colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join("\n".join(o.get("traceback", [])) for o in error_outputs(cell)))


def normalized(nb: nbformat.NotebookNode) -> dict:
    """A notebook's JSON without what changes from one generation to the next (ids, execution data)."""
    data = json.loads(json.dumps(nb))
    for cell in data["cells"]:
        cell.pop("id", None)
        for key in ("execution", "ExecuteTime", "collapsed", "scrolled"):
            cell["metadata"].pop(key, None)
    data["metadata"].get("language_info", {}).pop("version", None)
    return data


def hidden_block(source: nbformat.NotebookNode, grade_id: str) -> str:
    """The text between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` of one cell of the source."""
    cell = next(c.source for c in source.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    if "### BEGIN HIDDEN TESTS" not in cell:
        raise ValueError(f"{grade_id} has no hidden tests")
    return cell.split("### BEGIN HIDDEN TESTS")[1].split("### END HIDDEN TESTS")[0]
