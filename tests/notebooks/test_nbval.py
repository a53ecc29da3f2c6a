"""Every lecture and solution notebook runs top to bottom in fast mode and keeps its checked outputs.

Each notebook runs under `pytest --nbval-lax` in its own process with AELAB_FAST=1: cells marked
`# NBVAL_CHECK_OUTPUT` must reproduce their committed (full-mode) output; every cell must run.
Committed notebooks must also carry no error output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(REPO.glob("lectures/*.ipynb")) + sorted(REPO.glob("solutions/*/*.ipynb"))


def ids(paths):
    return [str(p.relative_to(REPO)) for p in paths]


def test_there_are_notebooks():
    assert any(p.parent.name == "lectures" for p in NOTEBOOKS), "no lecture notebooks found"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_committed_notebook_is_executed_and_clean(nb):
    cells = json.loads(nb.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    errors = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert not errors, f"{nb.name}: code cells {errors} were committed with an error output"
    first = next((c for c in code if "".join(c["source"]).strip()), None)
    src = "".join(first["source"]) if first else ""
    assert "import aelab" in src and "aelab.seed_everything(" in src, f"{nb.name}: first code cell must import aelab and seed"
    assert "sys.path" not in "".join("".join(c["source"]) for c in code), f"{nb.name}: no sys.path edits (aelab is installed)"
    if nb.parent.name == "lectures":
        assert all(c.get("execution_count") for c in code if "".join(c["source"]).strip()), f"{nb.name}: commit lectures executed"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_runs_in_fast_mode_under_nbval(nb, tmp_path):
    env = os.environ | {"AELAB_FAST": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
           "--nbval-cell-timeout=600", "--rootdir", str(tmp_path), str(nb)]
    result = subprocess.run(cmd, cwd=nb.parent, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"nbval failed on {nb.name}:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
