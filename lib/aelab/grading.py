"""The nbgrader cycle in a temporary course, and the grading demo: ``python -m aelab.grading``.

One piece of code serves the tests and the instructor: ``make_course`` builds a course folder that
holds copies of the course's source notebooks and an ``nbgrader_config.py`` that loads the course's
own ``course/nbgrader_config.py`` (so the timeout, the late-penalty plugin and the feedback settings
are the real ones) and changes only the course root and the database; ``nbgrader`` runs the real
command line in it; ``fill`` writes a student's notebook from the release. ``tests/grading`` grades
known-right and known-wrong submissions this way, and the demo grades three generated submissions
per assignment and prints the gradebook::

    python -m aelab.grading                  # every solutions/a* assignment, fast mode (~40 s of CPU each)
    python -m aelab.grading a01_vae --full   # one assignment, at the sizes students run

The demo's submissions: ``full`` (every solution cell answered, on time), ``partial`` (the first
half of the solution cells answered, the rest left as released, submitted 1 day 10 hours late, so
the course's 10%-per-started-day penalty takes 20%) and ``blank`` (the release untouched). The
course stays in ``--root`` (default ``.cache/grading-demo``) with its ``autograded/``,
``feedback/`` HTML and ``grades.csv`` to look at.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

COURSE_ID = "autoencoders"
DEMO_STUDENTS = ("full", "partial", "blank")
DEMO_DUE = datetime(2025, 11, 2, 23, 59, tzinfo=timezone.utc)
"""The due date of every assignment in the demo course."""
MARKER = ".aelab-grading-demo"
"""File that marks a folder as a demo course, which a new demo may replace."""
DEMO_SUBMITTED = {"full": timedelta(hours=-2), "partial": timedelta(days=1, hours=10), "blank": timedelta(hours=-1)}
"""When each demo student submitted, relative to the due date: ``partial`` is 1 day 10 hours late."""


def assignments(repo: Path) -> list[str]:
    """The assignments of the course: every folder ``solutions/a[0-9]*`` (as the Makefile finds them)."""
    found = sorted(p.name for p in (repo / "solutions").glob("a[0-9]*") if p.is_dir())
    if not found:
        raise SystemExit(f"no assignments in {repo / 'solutions'}: run from the repository root or pass --repo")
    return found


def nbgrader(course: Path, *args: str, timeout: float = 900, fast: bool = True) -> subprocess.CompletedProcess:
    """Run ``nbgrader ARGS`` in ``course/course`` with this Python, Jupyter state kept in ``course/.state``.

    Raises RuntimeError with the end of nbgrader's log when it exits non-zero. ``fast`` sets
    ``AELAB_FAST=1`` for the notebooks it executes (the sizes of the test runs).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "IPYTHON", "AELAB_FAST"))}
    state = course / ".state"
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # nbgrader runs `alembic`
        JUPYTER_CONFIG_DIR=str(state / "config"),
        JUPYTER_DATA_DIR=str(state / "data"),
        JUPYTER_RUNTIME_DIR=str(state / "runtime"),
        JUPYTER_CONFIG_PATH=str(course / "course"),
        JUPYTER_PLATFORM_DIRS="1",
        IPYTHONDIR=str(state / "ipython"),
        MPLCONFIGDIR=str(state / "matplotlib"),
        PYDEVD_DISABLE_FILE_VALIDATION="1",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),  # small matmuls on a busy machine are faster on one thread
    )
    if fast:
        env["AELAB_FAST"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=course / "course", env=env,
        capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def make_course(root: Path, repo: Path, names: Iterable[str], timeout: int | None = None) -> Path:
    """A course at ``root``: the source folders ``names`` copied from ``repo/solutions`` and a config on top of the course's.

    ``timeout`` replaces the course's cell timeout (nbgrader's ``Execute.timeout``, seconds) when given.
    """
    for name in names:
        shutil.copytree(repo / "solutions" / name, root / "solutions" / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (root / "course").mkdir(parents=True, exist_ok=True)
    lines = [
        "c = get_config()  # noqa: F821",
        f"load_subconfig({str(repo / 'course' / 'nbgrader_config.py')!r})  # noqa: F821",
        f"c.CourseDirectory.root = {str(root)!r}",
        f"c.CourseDirectory.db_url = {'sqlite:///' + str(root / 'gradebook.db')!r}",
        f"c.Exchange.root = {str(root / 'exchange')!r}",
    ]
    if timeout is not None:
        lines.append(f"c.Execute.timeout = {timeout}")
    (root / "course" / "nbgrader_config.py").write_text("\n".join(lines) + "\n")
    return root


def solution_cells(nb) -> dict[str, str]:
    """grade_id -> source of every solution cell of a notebook, in notebook order."""
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")}


def fill(release, source, answers: Mapping[str, str | Callable[[str], str]] | None = None):
    """The release with its solution cells filled as a student would: from the source, or from ``answers``.

    ``answers`` maps the grade_id of a solution cell to the student's code, or to a function of the
    source's solution code; every other solution cell gets the source's solution.
    """
    import nbformat

    filled = solution_cells(source)
    for grade_id, answer in (answers or {}).items():
        if grade_id not in filled:
            raise KeyError(f"{grade_id!r} is not a solution cell of the source; solution cells are {sorted(filled)}")
        filled[grade_id] = answer(filled[grade_id]) if callable(answer) else answer.strip()
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            cell.source = filled[meta["grade_id"]]
    return nb


def submit(root: Path, assignment: str, student: str, nb, when: datetime | None = None) -> Path:
    """Write ``nb`` as ``student``'s submission of ``assignment``, with ``timestamp.txt`` when ``when`` is given."""
    import nbformat

    folder = root / "submitted" / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{assignment}.ipynb")
    if when is not None:
        (folder / "timestamp.txt").write_text(when.strftime("%Y-%m-%d %H:%M:%S %Z") + "\n")
    return folder


def demo_notebooks(release, source) -> dict[str, object]:
    """The demo's three submissions of one assignment: every answer, the first half of the answers, none."""
    released = solution_cells(release)
    later = list(released)[(len(released) + 1) // 2:]
    return {
        "full": fill(release, source),
        "partial": fill(release, source, {grade_id: released[grade_id] for grade_id in later}),
        "blank": release,
    }


@dataclass(frozen=True)
class Grade:
    """One row of the demo's grades.csv."""

    assignment: str
    student: str
    timestamp: str
    raw_score: float
    late_submission_penalty: float
    score: float
    max_score: float


def read_grades(path: Path) -> list[Grade]:
    """The rows of a grades.csv written by ``nbgrader export``."""
    with path.open(newline="") as f:
        return [
            Grade(row["assignment"], row["student_id"], row["timestamp"], float(row["raw_score"]),
                  float(row["late_submission_penalty"]), float(row["score"]), float(row["max_score"]))
            for row in csv.DictReader(f)
        ]


def grading_demo(root: Path, repo: Path, names: Iterable[str] | None = None, fast: bool = True,
                 log: Callable[[str], None] = print) -> list[Grade]:
    """Run the instructor's cycle on generated submissions in a fresh course at ``root``; return the exported grades.

    For each assignment: ``generate_assignment``, a due date, the three demo submissions with their
    timestamps, ``autograde``, ``generate_feedback``; then ``export`` to ``root/grades.csv``.
    """
    import nbformat

    names = list(names) if names else assignments(repo)
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise SystemExit(f"{root} exists and is not a grading-demo course: pass an empty or new folder as --root")
        shutil.rmtree(root)
    make_course(root, repo, names)
    (root / MARKER).write_text("a course made by `python -m aelab.grading`; the next demo replaces it\n")
    for name in names:
        start = time.perf_counter()
        nbgrader(root, "generate_assignment", name, "--force", fast=fast)
        nbgrader(root, "db", "assignment", "add", name, f"--duedate={DEMO_DUE:%Y-%m-%d %H:%M:%S} UTC", fast=fast)
        release = nbformat.read(root / "assignments" / name / f"{name}.ipynb", as_version=4)
        source = nbformat.read(root / "solutions" / name / f"{name}.ipynb", as_version=4)
        for student, nb in demo_notebooks(release, source).items():
            submit(root, name, student, nb, DEMO_DUE + DEMO_SUBMITTED[student])
        nbgrader(root, "autograde", name, fast=fast, timeout=1800)
        nbgrader(root, "generate_feedback", name, fast=fast)
        log(f"{name}: released, 3 submissions autograded, feedback written ({time.perf_counter() - start:.0f} s)")
    nbgrader(root, "export", "--to", str(root / "grades.csv"), fast=fast)
    return read_grades(root / "grades.csv")


def table(grades: list[Grade]) -> str:
    """The grades as a Markdown table."""
    rows = ["| assignment | student | submitted (UTC) | raw score | late penalty | score | max |", "|---|---|---|---:|---:|---:|---:|"]
    for g in grades:
        rows.append(f"| {g.assignment} | {g.student} | {g.timestamp[:19]} | {g.raw_score:g} | {g.late_submission_penalty:g} | "
                    f"{g.score:g} | {g.max_score:g} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aelab.grading", description=__doc__.splitlines()[0])
    parser.add_argument("assignments", nargs="*", help="assignment names (default: every solutions/a* folder)")
    parser.add_argument("--repo", default=".", help="the repository root (default: the current folder)")
    parser.add_argument("--root", default=None, help="where to build the demo course (default: REPO/.cache/grading-demo; replaced)")
    parser.add_argument("--full", action="store_true", help="run the submissions at full size (default: AELAB_FAST sizes)")
    args = parser.parse_args(argv)
    repo = Path(args.repo).resolve()
    if not (repo / "course" / "nbgrader_config.py").exists():
        raise SystemExit(f"{repo} is not the course repository (no course/nbgrader_config.py): pass --repo")
    root = Path(args.root).resolve() if args.root else repo / ".cache" / "grading-demo"
    known = assignments(repo)
    unknown = sorted(set(args.assignments) - set(known))
    if unknown:
        raise SystemExit(f"unknown assignments {unknown}; the course has {known}")
    print(f"grading demo in {root} ({'full' if args.full else 'fast'} mode, due date {DEMO_DUE:%Y-%m-%d %H:%M} UTC)")
    grades = grading_demo(root, repo, args.assignments or known, fast=not args.full)
    print()
    print(table(grades))
    print(f"\nfeedback: {root / 'feedback'}/<student>/<assignment>/<assignment>.html; grades: {root / 'grades.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
