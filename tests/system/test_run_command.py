"""The README's start command starts a node (the project's other promises, which need none,
are in unit/test_project_files.py)."""

from __future__ import annotations

import os
import signal
import subprocess

import requests
from helpers import wait_until
from processes import ROOT, free_port, readme_command


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
