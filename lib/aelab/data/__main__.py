"""Command line: ``python -m aelab.data prepare [--all | NAME ...]`` fills the data cache."""

from __future__ import annotations

import argparse
import sys
import time

from aelab._env import data_dir

from . import PREPARERS


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; print one line per data set and return 0, or 1 when any of them failed."""
    parser = argparse.ArgumentParser(prog="python -m aelab.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser(
        "prepare",
        help="fill the cache ($AELAB_DATA or ~/.cache/aelab) so later loads are instant and offline",
        description="Data sets: " + ", ".join(f"{n} ({(f.__doc__ or '').strip()})" for n, f in PREPARERS.items()),
    )
    prep.add_argument("names", nargs="*", metavar="NAME", help=f"any of: {', '.join(PREPARERS)}")
    prep.add_argument("--all", action="store_true", help="prepare every data set")
    args = parser.parse_args(argv)

    if args.all == bool(args.names):
        parser.error("prepare needs either --all or some data set names")
    unknown = [n for n in args.names if n not in PREPARERS]
    if unknown:
        parser.error(f"unknown data set(s) {', '.join(unknown)}; choose from {', '.join(PREPARERS)}")

    names = list(PREPARERS) if args.all else args.names
    print(f"cache: {data_dir()}")
    failed = []
    start = time.perf_counter()
    for name in names:
        try:
            print(PREPARERS[name](), flush=True)
        except RuntimeError as e:  # DataUnavailableError and CorruptDataError carry the fix in their message
            failed.append(name)
            print(f"{name}: FAILED: {e}", file=sys.stderr, flush=True)
    took = time.perf_counter() - start
    if failed:
        print(f"failed: {', '.join(failed)} ({took:.1f} s)", file=sys.stderr)
        return 1
    print(f"done: {len(names)} data set(s) in {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
