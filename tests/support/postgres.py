"""A PostgreSQL server of the suite's own, from Debian's `postgresql` package: initdb in a
temporary folder, on a free port, owned by an unprivileged user when the suite runs as root
(initdb and postgres refuse root). Never a server the machine happens to run."""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
from helpers import wait_until

_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
USER = "nobody"  # exists on every Debian; owns nothing else the server could reach


def postgres_bin(name: str) -> str:
    for directory in _BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    return shutil.which(name) or f"/usr/lib/postgresql/15/bin/{name}"


@dataclass
class PostgresServer:
    port: int
    directory: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _names = itertools.count(1)

    def _as_owner(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", USER, "--", *args] if os.geteuid() == 0 else args

    def start(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="chat-pg-"))
        data = self.directory / "data"
        if os.geteuid() == 0:
            owner = pwd.getpwnam(USER)
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            self._as_owner([postgres_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]),
            check=True,
            capture_output=True,
        )
        args = [postgres_bin("postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1"]
        args += ["-k", str(self.directory), "-c", "fsync=off", "-c", "full_page_writes=off"]
        log = open(self.directory / "postgres.log", "ab")
        self.process = subprocess.Popen(self._as_owner(args), stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._ready, timeout=30, what=f"postgres on {self.port}")

    def _ready(self) -> bool:
        assert self.process is not None and self.directory is not None
        if self.process.poll() is not None:
            tail = (self.directory / "postgres.log").read_text(errors="replace").splitlines()[-5:]
            raise AssertionError(f"postgres on {self.port} exited with {self.process.returncode}: {tail}")
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def _postmaster(self, sig: int) -> None:
        """Signal the server itself, by its pid file: runuser need not pass signals on."""
        assert self.directory is not None and self.process is not None
        try:
            pid = int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            self.process.send_signal(sig)
            return
        os.kill(pid, sig)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's URL: one per test."""
        name = f"chat_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type] (our own name)
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self._postmaster(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
