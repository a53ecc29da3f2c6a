"""`python -m aelab.lectures` (what `make lectures` runs): executes lectures in place and records their times."""

from __future__ import annotations

import json
import os

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


def test_timings_file_times_another_machine_without_touching_the_course_timings(tmp_path, monkeypatch):
    from aelab.train.precision import cpu_name

    monkeypatch.delenv("AELAB_FAST", raising=False)
    tiny_course(tmp_path, ["01_a.ipynb"])
    (tmp_path / "lectures" / "timings.json").write_text(json.dumps({"01_a.ipynb": 99.0}))
    mine = tmp_path / "mine.json"
    assert lectures.main(["--root", str(tmp_path), "--timings-only", "--timings-file", str(mine)]) == 0
    timings = json.loads(mine.read_text())
    assert "01_a.ipynb" in timings and timings["_machine"].startswith(cpu_name())
    assert json.loads((tmp_path / "lectures" / "timings.json").read_text()) == {"01_a.ipynb": 99.0}
    assert not nbformat.read(tmp_path / "lectures" / "01_a.ipynb", as_version=4).cells[0].outputs


def test_avx2_times_lectures_with_kernels_limited_to_avx2_in_fp32(tmp_path, monkeypatch):
    monkeypatch.delenv("AELAB_FAST", raising=False)
    monkeypatch.delenv("AELAB_BF16", raising=False)
    (tmp_path / "lectures").mkdir()
    probe = "import os, torch, aelab\nprint(torch.backends.cpu.get_cpu_capability(), os.environ['MKL_ENABLE_INSTRUCTIONS'], aelab.train.bf16_is_fast('cpu'))"
    path = tmp_path / "lectures" / "01_a.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(probe)]), path)
    (tmp_path / "lectures" / "timings.json").write_text(json.dumps({"01_a.ipynb": 99.0}))
    assert lectures.main(["--root", str(tmp_path), "--avx2"]) == 0
    assert not nbformat.read(path, as_version=4).cells[0].outputs, "--avx2 never writes the notebooks"
    timings = json.loads((tmp_path / "lectures" / "timings_avx2.json").read_text())
    assert "01_a.ipynb" in timings and "AVX2" in timings["_machine"]
    assert json.loads((tmp_path / "lectures" / "timings.json").read_text()) == {"01_a.ipynb": 99.0}
    # what the kernel sees: torch's kernels at AVX2 (or lower on an older CPU), MKL told so, and bf16 off
    lectures.execute(path, env=lectures.AVX2_ENV)
    capability, mkl, fast = nbformat.read(path, as_version=4).cells[0].outputs[0]["text"].split()
    assert capability in ("AVX2", "DEFAULT") and mkl == "AVX2" and fast == "False"
    assert "AELAB_BF16" not in os.environ and "ATEN_CPU_CAPABILITY" not in os.environ, "the test process is unchanged"
