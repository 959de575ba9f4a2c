"""Real processes for the tests: a redis-server the suite owns, and nodes started from the
Procfile's web line. Nothing here touches a Redis the tests did not start."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests
from helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]  # tests/support/ -> the repository


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT: set[int] = set()  # two ports asked for before either is bound must differ


def free_port() -> int:
    """A free port below the kernel's ephemeral range, and 10,000 below it (a cluster's bus
    port is port + 10000): a port the kernel hands out to outgoing connections can be taken
    by any test's client between this check and the server's own bind."""
    high = max(_ephemeral_low() - 10000, 11000)
    while True:
        port = random.randrange(10000, high)
        if port in _HANDED_OUT:
            continue
        _HANDED_OUT.add(port)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def readme_command(marker: str) -> str:
    """The command in the README's ```sh block after `<!-- marker -->`."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```sh\n(.+)\n```", text)
    assert match, f"README.md has no {marker}"
    return match.group(1)


def procfile_web_command() -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.removeprefix("web:").strip()
    raise AssertionError("Procfile has no web: line")


@dataclass
class RedisServer:
    directory: Path
    port: int
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    password: str | None = None  # requirepass (and masterauth, for its replicas and a cluster)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, password=self.password)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.directory), *self.extra_args]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        self.process = subprocess.Popen(args, stdout=open(self.directory / "redis.log", "ab"), stderr=subprocess.STDOUT)
        wait_until(self._ping, timeout=30, what=f"redis-server on {self.port}")

    def _ping(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = (self.directory / "redis.log").read_text(errors="replace").splitlines()[-5:]
            raise AssertionError(f"redis-server on {self.port} exited with {self.process.returncode}: {log}")
        try:
            client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5, password=self.password)
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start again on the same port, empty (nothing is saved to disk)."""
        self.start()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@dataclass
class Node:
    port: int
    instance_id: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> dict:
        return requests.get(f"{self.url}/healthz", timeout=5).json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class NodeFactory:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.nodes: list[Node] = []

    def start(
        self, redis_url: str | None = None, wait_healthy: bool = True, open_files: int | None = None, **env: str
    ) -> Node:
        """`open_files`: the soft limit the node starts under (as a host's default would be)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        port = int(env.pop("PORT", "0")) or free_port()  # a fixed PORT: a node restarted in place
        instance_id = env.pop("INSTANCE_ID", f"node{len(self.nodes) + 1}-{port}")
        environment = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        environment.update(
            {
                "PORT": str(port),
                "INSTANCE_ID": instance_id,
                "PRESENCE_TTL": "3",
                "HEARTBEAT_INTERVAL": "1",
                "LISTENER_IDLE_PROBE": "1",
                "PROBE_TIMEOUT": "1",
                "REDIS_SOCKET_TIMEOUT": "2",
                "LOG_LEVEL": "DEBUG",
                **env,
            }
        )
        if redis_url:
            environment["REDIS_URL"] = redis_url
        log_path = self.directory / f"{instance_id}.log"
        process = subprocess.Popen(
            ["sh", "-c", (f"ulimit -Sn {open_files}; " if open_files else "") + f"exec {procfile_web_command()}"],
            cwd=ROOT,
            env=environment,
            stdout=open(log_path, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        node = Node(port, instance_id, process, log_path)
        self.nodes.append(node)
        if wait_healthy:
            wait_until(lambda: self._healthy(node), timeout=30, what=f"node {instance_id} healthy")
        return node

    @staticmethod
    def _healthy(node: Node) -> bool:
        if node.process.poll() is not None:
            raise AssertionError(f"node exited with {node.process.returncode}:\n{node.log()}")
        try:
            return requests.get(f"{node.url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def signal(self, node: Node, sig: int) -> None:
        os.killpg(node.process.pid, sig)

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(timeout=10)
