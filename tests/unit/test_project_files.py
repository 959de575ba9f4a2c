"""The project's own promises: the README's commands, the Procfile, lint. The README's
start command run for real: system/test_run_command.py."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from processes import ROOT, procfile_web_command, readme_command


def test_readme_run_command_is_the_procfiles_web_line() -> None:
    """The same command with PORT spelt out (`PORT=5000 cmd ...$PORT` would expand too early)."""
    run = readme_command("run-command")
    assert run == "pip install -r requirements.txt && " + procfile_web_command().replace("$PORT", "5000")


def test_procfile_runs_one_gevent_websocket_worker_without_control_socket() -> None:
    web = procfile_web_command()
    assert "-k geventwebsocket.gunicorn.workers.GeventWebSocketWorker" in web
    assert " -w 1 " in web and "--no-control-socket" in web and "0.0.0.0:$PORT" in web


def test_requirements_are_pinned_and_carry_the_known_traps() -> None:
    lines = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert all("==" in line for line in lines), lines
    names = {line.split("==")[0].lower(): line.split("==")[1] for line in lines}
    assert "packaging" in names  # gunicorn's gevent worker imports it undeclared
    major, minor, patch = (int(x) for x in names["redis"].split(".")[:3])
    assert (major, minor, patch) >= (8, 0, 1)


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(args: list[str]) -> None:
    ruff = shutil.which("ruff") or pytest.fail("ruff is not installed: requirements-dev.txt lists it")
    result = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
