"""The tests' product backend (hook_receiver.py) in a process of its own, on a free port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import wait_until
from processes import free_port


class Receiver:
    def __init__(self, directory: Path, sleep: float = 3.0) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.record = directory / "requests.jsonl"
        self.record.touch()
        script = Path(__file__).with_name("hook_receiver.py")
        self.process = subprocess.Popen([sys.executable, str(script), str(self.port), str(self.record), str(sleep)])
        wait_until(self._listening, timeout=10, what="receiver listening")

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        lines = self.record.read_text().splitlines()
        found = [json.loads(line) for line in lines if line.strip()]
        return [r for r in found if path is None or r["path"] == path]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        """Back on the same port (after stop): a receiver that was down."""
        script = Path(__file__).with_name("hook_receiver.py")
        self.process = subprocess.Popen([sys.executable, str(script), str(self.port), str(self.record), "3"])
        wait_until(self._listening, timeout=10, what="receiver listening again")
