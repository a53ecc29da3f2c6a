"""Headless Chromium for the browser tests: Debian's ``chromium``, installed by ``make browser``.

The browser loads a page, runs its scripts for a budget of virtual time (``--virtual-time-budget``
lets timers and network fire as fast as they can), and hands back the rendered DOM; screenshots go
to ``screenshots/`` in the repository (git-ignored) for people to look at. ``CHROMIUM=/path/to/chrome``
uses another Chromium-based browser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "screenshots"
# As root Chromium needs --no-sandbox; the rest keeps it from calling home on a closed network.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--hide-scrollbars", "--mute-audio",
)


@dataclass
class Chromium:
    """One Chromium binary and a scratch profile folder; each call is a fresh headless browser."""

    binary: str
    profile: Path

    def run(self, url: str, *args: str, budget_ms: int, timeout: float) -> str:
        cmd = [self.binary, *FLAGS, f"--user-data-dir={self.profile}", f"--virtual-time-budget={budget_ms}", *args, url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"chromium failed ({proc.returncode}) on {url}:\n{proc.stderr[-3000:]}")
        return proc.stdout

    def dom(self, url: str, budget_ms: int = 15000, timeout: float = 120) -> str:
        """The page's DOM after its scripts ran for ``budget_ms`` of virtual time."""
        return self.run(url, "--dump-dom", budget_ms=budget_ms, timeout=timeout)

    def screenshot(self, url: str, name: str, budget_ms: int = 15000, size: str = "1280,800", timeout: float = 120) -> Path:
        """A PNG of the page in ``screenshots/<name>.png``."""
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.run(url, f"--screenshot={path}", f"--window-size={size}", budget_ms=budget_ms, timeout=timeout)
        assert path.exists() and path.stat().st_size > 1000, f"chromium wrote no screenshot of {url}"
        return path


def find_chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium(tmp_path_factory) -> Chromium:
    """Headless Chromium, installed with `make browser` first if missing; skips (saying why) if that fails."""
    binary = find_chromium()
    if binary is None:
        proc = subprocess.run(["make", "-C", str(REPO), "--no-print-directory", "browser"], capture_output=True, text=True)
        binary = find_chromium()
        if binary is None:
            pytest.skip(f"no Chromium and `make browser` could not install it ({proc.returncode}): "
                        f"{(proc.stdout + proc.stderr).strip()[-600:]}")
    return Chromium(binary, tmp_path_factory.mktemp("chromium-profile"))
