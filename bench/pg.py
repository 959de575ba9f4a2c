"""A PostgreSQL of the bench's own, the way tests/support/postgres.py starts one: initdb in a temp
dir, on a free port of 127.0.0.1, run as `nobody` when the bench runs as root (initdb and
postgres refuse root). Never the machine's own server on 5432. `pause()` and `resume()` stop
it and start it again on the same data and port: the archive's database outage."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg

from . import procs

_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
USER = "nobody"  # owns nothing else the server could reach


def postgres_bin(name: str) -> str:
    for directory in _BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    return shutil.which(name) or name


def unavailable() -> str | None:
    """Why the bench cannot start a PostgreSQL here, or None."""
    if not Path(postgres_bin("initdb")).exists() and not shutil.which("initdb"):
        return "no initdb (Debian's `postgresql` package) on this machine"
    return None


class BenchPostgres:
    """One server; `cpu()` is the CPU time of the postmaster and all its backends."""

    def __init__(self) -> None:
        self.port = procs.free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="chat-bench-pg-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)

    def _as_owner(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", USER, "--", *args] if os.geteuid() == 0 else args

    def start(self) -> BenchPostgres:
        if os.geteuid() == 0:
            owner = pwd.getpwnam(USER)
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        initdb = [postgres_bin("initdb"), "-D", str(self.directory / "data"), "-U", "postgres", "-A", "trust"]
        subprocess.run(self._as_owner([*initdb, "-E", "UTF8"]), check=True, capture_output=True)
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server on the data and port it had (again, after `pause()`)."""
        args = [postgres_bin("postgres"), "-D", str(self.directory / "data"), "-p", str(self.port)]
        # As the suite's: no fsync, so the figures are CPU, not this machine's disk.
        args += ["-h", "127.0.0.1", "-k", str(self.directory), "-c", "fsync=off", "-c", "full_page_writes=off"]
        log = open(self.directory / "postgres.log", "ab")  # noqa: SIM115 - the child owns the file
        self.process = subprocess.Popen(
            self._as_owner(args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.wait_until(self._ready, 30, f"postgres on {self.port}")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = (self.directory / "postgres.log").read_text(errors="replace").splitlines()[-5:]
            raise RuntimeError(f"postgres on {self.port} exited with {self.process.returncode}: {tail}")
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def pause(self) -> None:
        """Fast shutdown (SIGINT to the postmaster, by its pid file: runuser need not pass
        signals on); clients see their connections closed and new ones refused."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            pid = int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGINT)
        except (OSError, ValueError, IndexError):
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def cpu(self) -> float:
        return procs.cpu_seconds(self.process.pid) if self.process and self.process.poll() is None else 0.0

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's URL: one per step, so no step reads another's rows."""
        name = f"bench_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type] (our own name)
        return self.url(name)

    def stop(self) -> None:
        self.pause()
        if not os.environ.get("BENCH_KEEP_LOGS"):
            shutil.rmtree(self.directory, ignore_errors=True)
