"""nbgrader configuration of the course (found through JUPYTER_CONFIG_PATH=course, set by the Makefile).

The course root is the repository: instructors write source notebooks in solutions/, and
`make assignments` releases them into assignments/ with solutions and hidden tests removed.
"""

from pathlib import Path

c = get_config()  # noqa: F821  (provided by traitlets when nbgrader loads this file)

c.CourseDirectory.root = str(Path(__file__).resolve().parent.parent)
c.CourseDirectory.course_id = "autoencoders"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "assignments"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.db_url = f"sqlite:///{Path(__file__).resolve().parent.parent / 'gradebook.db'}"

# Training cells in the assignments take up to a minute on a laptop CPU; a cell that runs longer
# than this is stopped, marked as an error, and the rest of the notebook is still graded.
c.ExecutePreprocessor.timeout = 300
c.Execute.timeout = 300

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
