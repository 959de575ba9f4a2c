"""Processes the benchmark owns: one redis-server in a temp dir and nodes, gunicorn's started
from the Procfile's web line, the peer's as its own command. Every process gets its own
group so that stopping kills all."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def procfile_web_command(app: str = "wsgi:app") -> str:
    """The Procfile's web line, with another WSGI app swapped in for the baseline."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.removeprefix("web:").strip().replace("wsgi:app", app)
    raise RuntimeError("Procfile has no web: line")


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    """Direct and indirect children, read from /proc (gunicorn's worker is the master's child)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process and all its descendants."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def rss_bytes_one(pid: int) -> int:
    """Resident set of one process (0 once it is gone)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE
    return 0


def rss_bytes(pid: int) -> int:
    """Resident set of one process and all its descendants."""
    return sum(rss_bytes_one(p) for p in [pid, *_children(pid)])


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def worker_pids(self) -> list[int]:
        return _children(self.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 8.0) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # gunicorn's worker may outlive the master by a moment: the group goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _spawn(name: str, args: list[str], directory: Path, port: int, **popen: object) -> Proc:
    log_path = directory / f"{name}.log"
    process = subprocess.Popen(
        args,
        stdout=open(log_path, "ab"),  # noqa: SIM115 - the child owns the file
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **popen,  # type: ignore[call-overload]
    )
    return Proc(name, process, port, log_path)


def start_redis(directory: Path, prefix: Sequence[str] = (), timeout: float = 10) -> Proc:
    """A private, non-persistent redis-server on a free port of 127.0.0.1; `prefix` runs it
    under another program (valgrind)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [*prefix, "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = _spawn("redis", [*args, "--dir", str(directory)], directory, port)

    def pong() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    wait_until(pong, timeout, f"redis-server on {port}")
    return proc


@dataclass
class NodeSpec:
    """Which app a node runs and what it is told through its environment."""

    app: str  # "wsgi:app" (chat_app) or "bench.baseline_server:app"; unused with `command`
    env: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] = ()  # a node that is no WSGI app (the Node peer), run as it is
    cwd: Path = ROOT


def start_node(spec: NodeSpec, redis_url: str, directory: Path, name: str) -> Proc:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "PORT", "INSTANCE_ID"}}
    env.update({"PORT": str(port), "REDIS_URL": redis_url, "INSTANCE_ID": name, **spec.env})
    args = list(spec.command) or ["sh", "-c", f"exec {procfile_web_command(spec.app)}"]
    return _spawn(name, args, directory, port, cwd=spec.cwd, env=env)


def wait_healthy(node: Proc, timeout: float = 30.0) -> None:
    def ok() -> bool:
        if node.process.poll() is not None:
            raise RuntimeError(f"{node.name} exited with {node.process.returncode}:\n{node.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    wait_until(ok, timeout, f"{node.name} healthy")


def redis_command(port: int, *args: str) -> bytes:
    """One command over a raw socket (RESP), so the generator needs no Redis client library."""
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"".join(parts))
        s.settimeout(5)
        data = b""
        while True:
            chunk = s.recv(65536)
            data += chunk
            if not chunk or _resp_complete(data):
                return data


def _resp_complete(data: bytes) -> bool:
    try:
        return _resp_parse(data, 0)[1] == len(data)
    except (IndexError, ValueError):
        return False


def _resp_parse(data: bytes, pos: int) -> tuple[object, int]:
    end = data.index(b"\r\n", pos)
    kind, body = data[pos : pos + 1], data[pos + 1 : end]
    pos = end + 2
    if kind in (b"+", b"-", b":"):
        return body, pos
    if kind == b"$":
        n = int(body)
        if n < 0:
            return None, pos
        if len(data) < pos + n + 2:
            raise IndexError
        return data[pos : pos + n], pos + n + 2
    if kind == b"*":
        items = []
        for _ in range(int(body)):
            item, pos = _resp_parse(data, pos)
            items.append(item)
        return items, pos
    raise ValueError(f"unexpected RESP type {kind!r}")


def redis_call(port: int, *args: str) -> object:
    return _resp_parse(redis_command(port, *args), 0)[0]
