"""The descriptions of the environment agree: requirements.in, requirements.lock, environment.yml, and the
benchmark-only requirements-saelens.lock."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)\s*(?:;\s*(.*))?$")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def applies_to_311(marker: str | None) -> bool:
    return not marker or "python_full_version >= '3.12'" not in marker


def lock_entries(lock: str = "requirements.lock") -> list[tuple[str, str, str | None]]:
    """(normalised name, version, marker or None) of every pin of a uv lock file."""
    entries = []
    for line in (REPO / lock).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = PIN.match(line.strip())
        assert m, f"{lock} line is not an exact pin: {line!r}"
        entries.append((norm(m.group(1)), m.group(2), m.group(3)))
    return entries


def lock_pins() -> dict[str, str]:
    return {name: version for name, version, marker in lock_entries() if applies_to_311(marker)}


def top_level() -> set[str]:
    names = set()
    for line in (REPO / "requirements.in").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(norm(re.split(r"[=<>\[ ;]", line)[0]))
    return names


def conda_pins() -> dict[str, str]:
    text = (REPO / "environment.yml").read_text()
    pins = {}
    for line in text.splitlines():
        m = re.match(r"^\s+-\s+([A-Za-z0-9_.\-]+)==(\S+)\s*$", line)
        if m:
            pins[norm(m.group(1))] = m.group(2)
    assert re.search(r"^\s+-\s+python=3\.11\s*$", text, re.M), "environment.yml must pin python=3.11"
    assert re.search(r"^\s+-\s+-e \./lib\s*$", text, re.M), "environment.yml must install lib/ editable"
    return pins


def test_lock_pins_every_top_level_requirement():
    pins = lock_pins()
    missing = top_level() - set(pins)
    assert not missing, f"requirements.in names {sorted(missing)} that requirements.lock does not pin: run `make lock`"


def test_environment_yml_names_the_same_set_at_the_lock_versions():
    conda, pins = conda_pins(), lock_pins()
    assert set(conda) == top_level(), (
        f"environment.yml and requirements.in differ: only in environment.yml {sorted(set(conda) - top_level())}, "
        f"only in requirements.in {sorted(top_level() - set(conda))}"
    )
    wrong = {n: (v, pins[n]) for n, v in conda.items() if pins[n] != v}
    assert not wrong, f"environment.yml versions differ from requirements.lock (yml, lock): {wrong}"


def test_package_dependencies_are_in_the_lock():
    project = tomllib.loads((REPO / "lib" / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for extra in project.get("optional-dependencies", {}).values() for d in extra]
    names = {norm(re.split(r"[=<>\[ ;]", d)[0]) for d in deps}
    assert names <= set(lock_pins()), f"lib/pyproject.toml needs packages the lock lacks: {sorted(names - set(lock_pins()))}"


def test_torch_comes_with_a_matching_torchvision():
    pins = lock_pins()
    assert "torch" in pins and "torchvision" in pins


def test_the_saelens_environment_pins_the_course_packages_at_the_same_versions():
    """``make bench-saelens`` compares with SAELens from requirements-saelens.lock: same torch, same everything shared."""
    def versions(lock: str) -> dict[str, set[str]]:  # a package can appear once per environment marker
        pins: dict[str, set[str]] = {}
        for name, version, _ in lock_entries(lock):
            pins.setdefault(name, set()).add(version)
        return pins

    course, peer = versions("requirements.lock"), versions("requirements-saelens.lock")
    assert "torch" in course and "sae-lens" in peer
    differ = {name: (course[name], peer.get(name)) for name in course if peer.get(name) != course[name]}
    assert not differ, f"requirements-saelens.lock differs from requirements.lock; run `make lock`: {differ}"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^bench-saelens:", makefile, re.M) and "requirements-saelens.lock" in makefile
