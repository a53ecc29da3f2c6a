"""`python -m aelab.lectures` (what `make lectures` runs): executes lectures in place and records their times."""

from __future__ import annotations

import json

import nbformat
import pytest

from aelab import lectures


def tiny_course(root, names):
    (root / "lectures").mkdir()
    for name in names:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os\nprint(21 * 2, os.environ.get('AELAB_FAST', ''))")])
        nbformat.write(nb, root / "lectures" / name)


def test_executes_in_place_and_merges_timings(tmp_path, monkeypatch):
    monkeypatch.delenv("AELAB_FAST", raising=False)
    tiny_course(tmp_path, ["01_a.ipynb", "02_b.ipynb"])
    (tmp_path / "lectures" / "timings.json").write_text(json.dumps({"01_a.ipynb": 99.0, "09_other.ipynb": 5.0}))
    assert lectures.main(["--root", str(tmp_path), "01"]) == 0
    nb = nbformat.read(tmp_path / "lectures" / "01_a.ipynb", as_version=4)
    assert nb.cells[0].outputs[0]["text"].startswith("42")
    assert not nbformat.read(tmp_path / "lectures" / "02_b.ipynb", as_version=4).cells[0].outputs, "only the chosen lecture runs"
    timings = json.loads((tmp_path / "lectures" / "timings.json").read_text())
    assert timings["01_a.ipynb"] < 99.0 and timings["09_other.ipynb"] == 5.0 and "_machine" in timings


def test_no_write_and_unknown_names(tmp_path):
    tiny_course(tmp_path, ["01_a.ipynb"])
    lectures.main(["--root", str(tmp_path), "--no-write"])
    assert not nbformat.read(tmp_path / "lectures" / "01_a.ipynb", as_version=4).cells[0].outputs
    assert not (tmp_path / "lectures" / "timings.json").exists()
    with pytest.raises(SystemExit, match="no lecture matches"):
        lectures.main(["--root", str(tmp_path), "07"])


def test_timings_only_keeps_the_notebooks(tmp_path, monkeypatch):
    monkeypatch.delenv("AELAB_FAST", raising=False)
    tiny_course(tmp_path, ["01_a.ipynb"])
    lectures.main(["--root", str(tmp_path), "--timings-only"])
    assert not nbformat.read(tmp_path / "lectures" / "01_a.ipynb", as_version=4).cells[0].outputs
    assert "01_a.ipynb" in json.loads((tmp_path / "lectures" / "timings.json").read_text())
