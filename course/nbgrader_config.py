"""nbgrader configuration of the course (found through JUPYTER_CONFIG_PATH=course, set by the Makefile).

The course root is the repository: instructors write source notebooks in solutions/, and
`make assignments` releases them into assignments/ with solutions and hidden tests removed.
"""

import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821  (provided by traitlets when nbgrader loads this file)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

c.CourseDirectory.root = str(ROOT)
c.CourseDirectory.course_id = "autoencoders"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "assignments"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.db_url = f"sqlite:///{ROOT / 'gradebook.db'}"

# nbgrader's exchange (release_assignment, fetch, submit, collect, release_feedback): by default the
# git-ignored folder exchange/ inside the course, enough to try the whole cycle with one account.
# On JupyterHub every user's server must reach one shared folder: set AELAB_EXCHANGE to it in the
# grader's environment (the instructor guide, "Many students on JupyterHub").
c.Exchange.root = os.environ.get("AELAB_EXCHANGE") or str(ROOT / "exchange")

# Late submissions lose 10% of the score per started day (the syllabus' rule), by the plugin in
# course/late.py; this folder goes on sys.path so that nbgrader can import it from any directory.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
c.AssignLatePenalties.plugin_class = "late.TenPercentPerDay"

# Autograding runs each submission with nbgrader's Execute preprocessor (an nbclient client).
# Training cells take up to a minute or two on a laptop CPU in full mode. A cell that runs longer
# than `timeout` seconds is interrupted (SIGINT to the kernel: a `while True: pass` stops with
# KeyboardInterrupt), gets a CellTimeoutError output, and the notebook goes on with the next cell,
# so the rest of the submission is still graded. Waiting for the interrupted cell's last outputs
# must not abort the notebook either, hence raise_on_iopub_timeout = False. allow_errors is
# always on in nbgrader: a failing cell never stops the run.
c.Execute.timeout = 300
c.Execute.interrupt_on_timeout = True
c.Execute.raise_on_iopub_timeout = False
c.Execute.iopub_timeout = 10

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# Feedback HTML shows each test's output (the failure message names the likely mistake) but not the
# hidden tests' source, so the hidden tests stay hidden for the next cohort too.
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "nbgrader.preprocessors.ClearHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
