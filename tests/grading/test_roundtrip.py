"""An nbgrader round trip of a01_vae in a temporary course: release, submit, autograde, read the gradebook.

The temporary course holds a copy of solutions/ and an nbgrader_config.py that loads the course's
own course/nbgrader_config.py and changes only the course root, the database and the cell timeout.
Five submissions are autograded in one call: the solution, the blank release, a KL with the wrong
sign, a KL that patches aelab's reference to hide its mistake, and one with a cell that never
finishes and two functions that only hand over to aelab's.
"""

from __future__ import annotations

import json
import os
import shutil
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.timeout(1200)  # one module fixture generates and autogrades five submissions

REPO = Path(__file__).resolve().parents[2]
ASSIGNMENT = "a01_vae"
COURSE_ID = "autoencoders"
# Seconds per cell while grading. The longest a01 cell in fast mode (training, with the one-time
# imports torch's optimizer triggers) takes 5-10 s on an idle 2-core machine and about 20 s on a busy
# one; the hanging submission waits this long once.
TIMEOUT = 45

# The graded cells of a01_vae and their points (the point table of the assignment).
POINTS = {
    "test_reparameterize": 1,
    "test_reparameterize_hidden": 1,
    "test_kl_normal": 1,
    "test_kl_normal_hidden": 2,
    "test_bernoulli_log_likelihood": 1,
    "test_bernoulli_log_likelihood_hidden": 2,
    "test_gaussian_log_likelihood": 1,
    "test_gaussian_log_likelihood_hidden": 2,
    "test_elbo": 1,
    "test_elbo_hidden": 1,
    "test_my_vae": 1,
    "test_my_vae_hidden": 2,
    "test_training": 2,
}
KL_CELLS = {"test_kl_normal", "test_kl_normal_hidden"}
BERNOULLI_CELLS = {"test_bernoulli_log_likelihood", "test_bernoulli_log_likelihood_hidden"}
GAUSSIAN_CELLS = {"test_gaussian_log_likelihood", "test_gaussian_log_likelihood_hidden"}
ELBO_CELLS = {"test_elbo", "test_elbo_hidden"}

WRONG_SIGN_KL = '''
def kl_normal(mu, logvar):
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per example, with the sign flipped by mistake."""
    kl = 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar)
    return -kl.flatten(1).sum(dim=1)
'''

TAMPERING_KL = '''
def my_wrong_kl(mu, logvar):
    """A wrong KL (the sign is flipped) that also replaces aelab's, hoping the tests compare against it."""
    return -0.5 * (torch.exp(logvar) + mu**2 - 1.0 - logvar).flatten(1).sum(dim=1)


kl_normal = my_wrong_kl
aelab.functional.kl_normal = my_wrong_kl
aelab.functional.distributions.kl_normal = my_wrong_kl
'''

HANG = "while True:\n    pass\n\n"

LAZY_BERNOULLI = "bernoulli_log_likelihood = aelab.functional.bernoulli_log_likelihood"

LAZY_ELBO = '''
def elbo(log_likelihood, kl, beta=1.0):
    """The ELBO, by calling aelab's."""
    return aelab.functional.elbo(log_likelihood, kl, beta)
'''

# Expected lost cells per student; every other graded cell earns its full points.
LOST = {
    "solution": set(),
    "blank": set(POINTS),
    # The KL cells fail, and training with a negated KL diverges, so the trained-model cell fails
    # too; MyVAE.loss is graded with aelab's parts substituted for the student's, so it keeps its points.
    "wrong_kl": KL_CELLS | {"test_training"},
    "tampering": KL_CELLS | {"test_training"},
    # The Gaussian cell is interrupted at the timeout before it defines gaussian_log_likelihood;
    # MyVAE (Bernoulli) and training do not need it. The Bernoulli likelihood (an alias) and the
    # ELBO (a wrapper) only call aelab's: their tests fail, training with them works.
    "hanging_lazy": GAUSSIAN_CELLS | BERNOULLI_CELLS | ELBO_CELLS,
}


def nbgrader(course: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``nbgrader ARGS`` in the temporary course's course/ folder, Jupyter state isolated; fail with its log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "IPYTHON"))}
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
        AELAB_FAST="1",
        OMP_NUM_THREADS="1",  # small matmuls on a busy 2-core machine are faster on one thread
    )
    proc = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=course / "course", env=env,
        capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"nbgrader {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return proc


def make_course(root: Path) -> Path:
    """A temporary course: solutions/ copied from the repository and a config on top of the course's."""
    shutil.copytree(REPO / "solutions", root / "solutions", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (root / "course").mkdir()
    (root / "course" / "nbgrader_config.py").write_text(
        "c = get_config()  # noqa: F821\n"
        f"load_subconfig({str(REPO / 'course' / 'nbgrader_config.py')!r})  # noqa: F821\n"
        f"c.CourseDirectory.root = {str(root)!r}\n"
        f"c.CourseDirectory.db_url = {'sqlite:///' + str(root / 'gradebook.db')!r}\n"
        f"c.Execute.timeout = {TIMEOUT}\n"
    )
    return root


def fill(release: nbformat.NotebookNode, source: nbformat.NotebookNode, replace: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """The release with its solution cells filled as a student would: from the source, or from ``replace``."""
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source.cells if c.metadata.get("nbgrader", {}).get("solution")}
    answers.update(replace or {})
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            cell.source = answers[meta["grade_id"]]
    return nb


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """The temporary course after generate_assignment and one autograde of all five submissions."""
    root = make_course(tmp_path_factory.mktemp("course"))
    nbgrader(root, "generate_assignment", ASSIGNMENT, "--force")
    name = f"{ASSIGNMENT}.ipynb"
    release = nbformat.read(root / "assignments" / ASSIGNMENT / name, as_version=4)
    source = nbformat.read(root / "solutions" / ASSIGNMENT / name, as_version=4)
    gaussian = next(c.source for c in source.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "gaussian_log_likelihood")
    submissions = {
        "solution": fill(release, source),
        "blank": release,
        "wrong_kl": fill(release, source, {"kl_normal": WRONG_SIGN_KL.strip()}),
        "tampering": fill(release, source, {"kl_normal": TAMPERING_KL.strip()}),
        "hanging_lazy": fill(release, source, {
            "gaussian_log_likelihood": HANG + gaussian,
            "bernoulli_log_likelihood": LAZY_BERNOULLI,
            "elbo": LAZY_ELBO.strip(),
        }),
    }
    for student, nb in submissions.items():
        folder = root / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / name)
    nbgrader(root, "autograde", ASSIGNMENT, timeout=900)
    return root


def scores(course: Path, student: str) -> dict[str, float]:
    """grade_id -> score of one student's autograded a01 notebook, read from the gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", COURSE_ID) as gb:
        notebook = gb.find_submission_notebook(ASSIGNMENT, ASSIGNMENT, student)
        return {grade.name: grade.score for grade in notebook.grades}


def autograded(course: Path, student: str) -> dict[str, nbformat.NotebookNode]:
    """grade_id -> cell of one student's autograded notebook."""
    nb = nbformat.read(course / "autograded" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells if "nbgrader" in c.metadata}


def test_the_point_table_matches_the_source():
    source = nbformat.read(REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    graded = {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"]["points"] for c in source.cells if c.metadata.get("nbgrader", {}).get("grade")}
    assert graded == POINTS
    assert sum(POINTS.values()) == 18


@pytest.mark.parametrize("student", sorted(LOST))
def test_each_submission_gets_the_points_it_deserves(course, student):
    got = scores(course, student)
    expected = {cell: (0 if cell in LOST[student] else points) for cell, points in POINTS.items()}
    assert got == expected, {cell: (got.get(cell), expected[cell]) for cell in POINTS if got.get(cell) != expected[cell]}


def test_the_totals(course):
    totals = {student: sum(scores(course, student).values()) for student in LOST}
    assert totals == {"solution": 18, "blank": 0, "wrong_kl": 13, "tampering": 13, "hanging_lazy": 10}


def test_wrong_answers_get_messages_that_name_the_mistake(course):
    cells = autograded(course, "wrong_kl")
    message = "".join(o.get("evalue", "") for o in cells["test_kl_normal"].outputs if o.output_type == "error")
    assert "sign is flipped" in message, message


def test_tampering_with_aelab_does_not_change_the_reference(course):
    cells = autograded(course, "tampering")
    errors = [o for o in cells["test_kl_normal"].outputs if o.output_type == "error"]
    assert errors and errors[0].ename == "AssertionError", errors
    assert "sign is flipped" in errors[0].evalue


def test_calling_aelabs_function_earns_nothing(course):
    cells = autograded(course, "hanging_lazy")
    for cell in ("test_bernoulli_log_likelihood", "test_elbo"):
        message = "".join(o.get("evalue", "") for o in cells[cell].outputs if o.output_type == "error")
        assert "implement it yourself" in message, (cell, message)


def test_a_hanging_cell_times_out_and_the_rest_is_graded(course):
    cells = autograded(course, "hanging_lazy")
    names = {o.ename for o in cells["gaussian_log_likelihood"].outputs if o.output_type == "error"}
    assert "CellTimeoutError" in names, cells["gaussian_log_likelihood"].outputs
    after = [o.ename for o in cells["test_gaussian_log_likelihood"].outputs if o.output_type == "error"]
    assert after == ["NameError"], after  # the definition after the loop never ran
    trained = "".join(o.get("text", "") for o in cells["test_training"].outputs if o.output_type == "stream")
    assert "negative ELBO" in trained


def normalized(nb: nbformat.NotebookNode) -> dict:
    """A notebook's JSON without what changes from one generation to the next (ids, execution data)."""
    data = json.loads(json.dumps(nb))
    for cell in data["cells"]:
        cell.pop("id", None)
        for key in ("execution", "ExecuteTime", "collapsed", "scrolled"):
            cell["metadata"].pop(key, None)
    data["metadata"].get("language_info", {}).pop("version", None)
    return data


def test_the_committed_release_equals_a_fresh_generation(course):
    name = f"{ASSIGNMENT}.ipynb"
    fresh = nbformat.read(course / "assignments" / ASSIGNMENT / name, as_version=4)
    committed = nbformat.read(REPO / "assignments" / ASSIGNMENT / name, as_version=4)
    assert normalized(committed) == normalized(fresh), "assignments/ is stale or was edited by hand: run `make assignments`"
    text = (REPO / "assignments" / ASSIGNMENT / name).read_text()
    for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "x * logits - F.softplus(logits)", "check_close(mu.grad"):
        assert marker not in text, f"the committed release contains {marker!r}"
    assert sorted(p.name for p in (REPO / "assignments" / ASSIGNMENT).iterdir()) == [name], "only the notebook belongs in the release"


def test_feedback_shows_scores_and_messages_but_not_the_hidden_tests(course):
    nbgrader(course, "generate_feedback", ASSIGNMENT, "--student", "wrong_kl")
    html = (course / "feedback" / "wrong_kl" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
    assert "13" in html and "18" in html, "feedback should show the score"
    assert "sign" in html, "feedback should keep the failure message that names the mistake"
    assert "BEGIN HIDDEN TESTS" not in html and "Hidden tests of kl_normal" in html
    source = nbformat.read(REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    hidden = next(c.source for c in source.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_kl_normal_hidden")
    body = hidden.split("### BEGIN HIDDEN TESTS")[1].split("### END HIDDEN TESTS")[0]
    # A failing test's traceback quotes the lines around the failure; any other hidden line is a leak.
    cell = autograded(course, "wrong_kl")["test_kl_normal_hidden"]
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join("\n".join(o.get("traceback", [])) for o in cell.outputs))
    leaked = [line for line in body.splitlines()
              if len(line.strip()) > 30 and line.strip() in html and line.strip() not in traceback]
    assert not leaked, f"hidden test lines appear in the feedback: {leaked[:3]}"
