"""The project's own promises: the README's commands, the Procfile, lint."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

import pytest
import requests
from helpers import wait_until
from processes import ROOT, free_port, procfile_web_command


def readme_command(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```sh\n(.+)\n```", text)
    assert match, f"README.md has no {marker}"
    return match.group(1)


def test_readme_run_command_is_the_procfiles_web_line() -> None:
    """The same command with PORT spelt out (`PORT=5000 cmd ...$PORT` would expand too early)."""
    run = readme_command("run-command")
    assert run == "pip install -r requirements.txt && " + procfile_web_command().replace("$PORT", "5000")


def test_readme_run_command_starts_a_node(tmp_path) -> None:
    """Run the README's start command as a user would (its pip step is the test's own
    requirement, already satisfied), and talk to the node it starts."""
    command = readme_command("run-command").removeprefix("pip install -r requirements.txt && ")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "PORT"}}
    proc = subprocess.Popen(
        ["sh", "-c", "exec " + command.replace("5000", str(port))],
        cwd=ROOT,
        env=env,
        stdout=open(tmp_path / "node.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        health = wait_until(lambda: _health(port), timeout=30, what="the README's node to answer")
        assert health["backend"] == "memory" and health["status"] == "ok"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _health(port: int) -> dict | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()
    except requests.RequestException:
        return None


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
