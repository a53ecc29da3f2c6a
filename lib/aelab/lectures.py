"""Execute lecture notebooks in place and record how long each takes: ``python -m aelab.lectures``.

Lectures are committed executed in full mode (so they read well unexecuted and as slides); this
runs them top to bottom in a fresh kernel from their own folder, keeps the widget state (so the
explorers show their starting image in a static viewer), and writes the wall times to
``lectures/timings.json`` and a Markdown table to stdout::

    python -m aelab.lectures                      # every lectures/NN_*.ipynb, full mode
    python -m aelab.lectures 02 03                # the lectures whose names start with 02, 03
    AELAB_FAST=1 python -m aelab.lectures --no-write 02   # a quick check, notebook left untouched
    python -m aelab.lectures --timings-only       # time every lecture, notebooks left untouched
    python -m aelab.lectures --avx2               # time them as on a laptop CPU (lectures/timings_avx2.json)
    python -m aelab.lectures --timings-only --timings-file mine.json   # time this machine, keep the course's file

``--avx2`` runs the kernels with torch, oneDNN and MKL limited to AVX2 and with ``AELAB_BF16=0`` (fp32
training): on a server CPU with AVX-512 and AMX, the speed a student's laptop without either gets
from the same cores. It never writes the notebooks.

A cell that raises stops the run with the cell's error; the notebook file is then left unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from aelab.io import atomic_open
from aelab.train.precision import AVX2_ENV, cpu_name


def find(root: Path, prefixes: list[str]) -> list[Path]:
    """The lectures under ``root/lectures`` whose file names start with one of ``prefixes`` (all if empty)."""
    found = sorted((root / "lectures").glob("[0-9][0-9]_*.ipynb"))
    if prefixes:
        found = [p for p in found if any(p.name.startswith(x) for x in prefixes)]
        if not found:
            raise SystemExit(f"no lecture matches {prefixes}; lectures are {[p.name for p in (root / 'lectures').glob('*.ipynb')]}")
    return found


def execute(path: Path, write: bool = True, timeout: int = 1800, env: dict[str, str] | None = None) -> float:
    """Run one notebook top to bottom in a fresh kernel (cwd = its folder), with ``env`` added to the
    kernel's environment; return the wall time in seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                            store_widget_state=True)
    start = time.perf_counter()
    client.execute(env={**os.environ, **(env or {})})  # without env, the kernel's default: this process's environment
    seconds = time.perf_counter() - start
    if write:
        with atomic_open(path, "w") as f:
            nbformat.write(nb, f)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aelab.lectures", description=__doc__.splitlines()[0])
    parser.add_argument("lectures", nargs="*", help="name prefixes, e.g. 02 03 (default: all)")
    parser.add_argument("--root", default=".", help="the repository root (default: the current folder)")
    parser.add_argument("--no-write", action="store_true", help="execute without saving the notebooks or the timings")
    parser.add_argument("--timings-only", action="store_true",
                        help="save the timings (full mode) but leave the notebooks as they are, e.g. to time a new machine")
    parser.add_argument("--avx2", action="store_true",
                        help="time the lectures with torch, oneDNN and MKL limited to AVX2 and in fp32, as on a laptop CPU "
                             "(lectures/timings_avx2.json; the notebooks are left as they are)")
    parser.add_argument("--timings-file", type=Path, default=None,
                        help="write the timings to this JSON file instead of lectures/timings.json (or timings_avx2.json), "
                             "e.g. to time another machine without replacing the course's reference timings")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    mode = "fast" if os.environ.get("AELAB_FAST", "") not in ("", "0") else "full"
    timings_file = args.timings_file or root / "lectures" / ("timings_avx2.json" if args.avx2 else "timings.json")
    measured = {}
    for path in find(root, args.lectures):
        print(f"executing {path.name} ({mode} mode{', AVX2, fp32' if args.avx2 else ''}) ...", flush=True)
        seconds = execute(path, write=not (args.no_write or args.timings_only or args.avx2), env=AVX2_ENV if args.avx2 else None)
        print(f"  {seconds:.0f} s", flush=True)
        measured[path.name] = round(seconds, 1)
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    if not args.no_write and mode == "full":
        # read just before writing, so that two runs of different lectures keep both results
        timings.update(measured)
        timings["_machine"] = (f"{cpu_name()} ({platform.machine()}), {torch.get_num_threads()} threads, torch {torch.__version__}"
                               + (", kernels limited to AVX2, fp32 (--avx2)" if args.avx2 else ""))
        with atomic_open(timings_file, "w") as f:
            json.dump(dict(sorted(timings.items())), f, indent=1)
            f.write("\n")
    else:
        timings = measured
    print("\n| lecture | full mode (s) |\n|---|---|")
    for name, seconds in sorted(timings.items()):
        if not name.startswith("_"):
            print(f"| {name} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
