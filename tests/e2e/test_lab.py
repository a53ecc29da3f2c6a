"""`make lab` serves the course: the server answers, JupyterLab and the formgrader load, extensions are on, and a
headless browser renders the JupyterLab shell with the Nbgrader menu (tests/e2e/conftest.py)."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str) -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # follows redirects
        return resp.status, resp.geturl(), resp.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Start the server exactly as `make lab` does, on a free loopback port with a fresh token."""
    runtime = tmp_path_factory.mktemp("runtime")
    port, token = free_port(), secrets.token_hex(16)
    env = os.environ | {"JUPYTER_TOKEN": token, "JUPYTER_RUNTIME_DIR": str(runtime)}
    log = (runtime / "lab.log").open("w")
    proc = subprocess.Popen(["make", "-C", str(REPO), "--no-print-directory", "lab", f"PORT={port}"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    info = None
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            for f in runtime.glob("jpserver-*.json"):
                data = json.loads(f.read_text() or "{}")
                if data.get("port") == port:
                    info = data
            if info:
                try:
                    get(f"http://127.0.0.1:{port}/api/status", token)
                    break
                except OSError:
                    pass
            time.sleep(0.5)
        else:
            pytest.fail(f"`make lab` did not serve on port {port}; log:\n{(runtime / 'lab.log').read_text()[-3000:]}")
        yield {"base": f"http://127.0.0.1:{port}", "token": token, "pid": info["pid"], "info": info}
    finally:
        if info:  # stop the server by its own PID, as a user would
            try:
                os.kill(info["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_server_listens_on_loopback_with_a_token(lab):
    assert lab["info"]["hostname"] in ("localhost", "127.0.0.1")
    assert lab["info"]["token"] == lab["token"]
    assert Path(lab["info"]["root_dir"]).resolve() == REPO
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{lab['base']}/api/contents", timeout=30)
    assert err.value.code == 403, "the API must refuse requests without the token"


def test_status_lab_and_formgrader_answer(lab):
    status, _, body = get(f"{lab['base']}/api/status", lab["token"])
    assert status == 200 and "started" in json.loads(body)
    status, _, body = get(f"{lab['base']}/lab", lab["token"])
    assert status == 200 and "JupyterLab" in body
    status, url, body = get(f"{lab['base']}/formgrader", lab["token"])
    assert status == 200 and "/formgrader/" in url and "nbgrader" in body.lower()


def test_course_files_are_served(lab):
    status, _, body = get(f"{lab['base']}/api/contents/lectures", lab["token"])
    names = {item["name"] for item in json.loads(body)["content"]}
    assert "00_setup_and_tools.ipynb" in names


def test_nbgrader_and_rise_extensions_are_enabled(lab):
    _, _, body = get(f"{lab['base']}/lab/api/extensions", lab["token"])
    exts = {e["name"]: e for e in json.loads(body)}
    for name in ("jupyter-nbgrader", "jupyterlab-rise", "jupyter-widgets-jupyterlab-manager"):
        assert name in exts, f"lab extension {name} is not installed; installed: {sorted(exts)}"
        assert exts[name]["enabled"] and exts[name]["status"] == "ok", f"{name}: {exts[name]}"
    out = subprocess.run([str(REPO / ".venv/bin/jupyter"), "server", "extension", "list"],
                         capture_output=True, text=True, env=os.environ.copy(), check=True)
    text = out.stdout + out.stderr
    for ext in ("nbgrader.server_extensions.formgrader", "jupyterlab_rise"):
        assert any(ext in line and "enabled" in line for line in text.splitlines()), f"{ext} not enabled:\n{text}"


def test_lab_shell_and_nbgrader_menu_render_in_chromium(lab, chromium):
    """Headless Chromium renders JupyterLab's shell from the server `make lab` started, with the Nbgrader menu."""
    url = f"{lab['base']}/lab?token={lab['token']}"
    dom = chromium.dom(url, budget_ms=30000, timeout=180)
    assert re.search(r'class="[^"]*\bjp-LabShell\b', dom), f"the JupyterLab shell did not render:\n{dom[:2000]}"
    menus = re.findall(r'class="[^"]*\blm-MenuBar-itemLabel\b[^"]*"[^>]*>([^<]+)<', dom)
    assert "File" in menus, f"JupyterLab's menu bar did not render: {menus}"
    assert "Nbgrader" in menus, f"no Nbgrader menu in the menu bar: {menus}"
    chromium.screenshot(url, "jupyterlab", budget_ms=30000, timeout=180)
