"""Hostile-client probes against one node, each with the node's RSS before, at its peak and
after: what one connection can make a node hold (issue 23, item 1).

    python -m bench.hostile                 # starts a node of this checkout, runs every probe
    python -m bench.hostile --root DIR      # a node of another checkout (before/after)
    python -m bench.hostile --probe big_frame --probe fragments

Raw sockets to 127.0.0.1 only; every probe is bounded in bytes and time. The tests
(tests/system/test_hostile_clients.py) use the same client and probes against the `nodes` fixture.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

MIB = 1024 * 1024
TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
ZERO_MASK = b"\0\0\0\0"  # a legal mask key that leaves the payload as it is: no XOR of MiBs


class Closed(Exception):
    """The server closed the connection."""


class RawWebSocket:
    """A websocket client made of a plain socket: it sends frame headers that declare any
    length, fragments as told, and binary frames, which no library client lets one do."""

    def __init__(self, port: int, query: str = "EIO=4&transport=websocket", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /socket.io/?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self._buffer = b""
        head = self._read_until(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise Closed(f"no upgrade: {head[:100]!r}")

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise Closed("connection closed")
        self._buffer += data

    def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    @staticmethod
    def header(opcode: int, length: int, fin: bool = True) -> bytes:
        first = (0x80 if fin else 0) | opcode
        if length < 126:
            return struct.pack("!BB", first, 0x80 | length) + ZERO_MASK
        if length < 65536:
            return struct.pack("!BBH", first, 0x80 | 126, length) + ZERO_MASK
        return struct.pack("!BBQ", first, 0x80 | 127, length) + ZERO_MASK

    def send(self, payload: bytes | str, opcode: int = TEXT, fin: bool = True) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self.sock.sendall(self.header(opcode, len(data), fin) + data)

    def send_declared(self, declared: int, chunk: int = MIB, opcode: int = TEXT, fin: bool = True) -> int:
        """A frame whose header declares `declared` bytes, then as many of them as the
        server reads (spaces). Returns the bytes written before the server
        closed."""
        try:
            self.sock.sendall(self.header(opcode, declared, fin))
        except OSError:
            return 0
        return self.stream(declared, chunk)

    def stream(self, total: int, chunk: int = MIB) -> int:
        block = b" " * chunk
        sent = 0
        try:
            while sent < total:
                n = min(chunk, total - sent)
                self.sock.sendall(block[:n])
                sent += n
        except OSError:
            pass
        return sent

    def recv(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame; answers the server's pings itself."""
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            payload = self._read(length)
            opcode = first & 0x0F
            if opcode == PING:
                self.send(payload, PONG)
                continue
            return opcode, payload

    def recv_text(self, timeout: float = 10.0) -> str:
        """The next text message; an Engine.IO PING is answered with a PONG and skipped.
        TimeoutError when none comes within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no message within {timeout}s")
            opcode, payload = self.recv()
            if opcode == CLOSE:
                raise Closed(f"close frame {struct.unpack('!H', payload[:2])[0] if len(payload) >= 2 else None}")
            text = payload.decode()
            if text == "2":
                self.send("3")
                continue
            return text

    def closed_within(self, seconds: float) -> bool:
        """Whether the server closes the connection (close frame or EOF) within `seconds`,
        answering Engine.IO pings meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                self.recv_text(timeout=remaining)
            except (Closed, ConnectionError):
                return True
            except TimeoutError:
                return False
            except OSError:
                return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def open_session(port: int) -> tuple[RawWebSocket, dict]:
    """A websocket Engine.IO session, its OPEN packet read."""
    ws = RawWebSocket(port)
    opened = ws.recv_text()
    assert opened.startswith("0"), opened
    return ws, json.loads(opened[1:])


# -- the node's memory ---------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def worker_pid(master: int, timeout: float = 30.0) -> int:
    """gunicorn's worker: the master's only child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RuntimeError(f"gunicorn master {master} has no worker")


class PeakRss:
    """Samples a pid's RSS every 20 ms while in the `with` block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = rss_mib(pid)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
            except (OSError, RuntimeError):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib(self.pid))


# -- the probes ------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    refused: bool  # the node closed the connection (or answered the request with an error)
    detail: str
    before: float = 0.0
    peak: float = 0.0
    after: float = 0.0

    def line(self) -> str:
        return (
            f"{self.name:<18} refused={self.refused!s:<5} rss_before={self.before:.1f}MiB "
            f"peak=+{self.peak - self.before:.1f}MiB after=+{self.after - self.before:.1f}MiB  {self.detail}"
        )


def binary_attachments(port: int, frames: int = 48) -> tuple[bool, str]:
    """Issue 23: a binary event announcing 999,999 attachments, then 1 MiB binary frames."""
    ws, _ = open_session(port)
    try:
        ws.send('40{"username":"prober"}')
        ws.recv_text()  # the CONNECT answer
        ws.send('45999999-["send_message",{"_placeholder":true,"num":0}]')
        sent = 0
        for _ in range(frames):
            if ws.send_declared(MIB, opcode=BINARY) < MIB:
                break
            sent += 1
        return ws.closed_within(5), f"binary frames written={sent}/{frames}"
    finally:
        ws.close()


def big_frame(port: int, declared: int = 64 * MIB) -> tuple[bool, str]:
    """One text frame declaring 64 MiB, before any CONNECT (so before any token)."""
    ws, _ = open_session(port)
    try:
        written = ws.send_declared(declared)
        return ws.closed_within(5), f"written={written // MIB}MiB of {declared // MIB}MiB"
    finally:
        ws.close()


def four_big_frames(port: int) -> tuple[bool, str]:
    results: list[tuple[bool, str]] = []
    threads = [threading.Thread(target=lambda: results.append(big_frame(port))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return len(results) == 4 and all(r[0] for r in results), "; ".join(r[1] for r in results)


def fragments(port: int, count: int = 32) -> tuple[bool, str]:
    """A text message in `count` fragments of 1 MiB, none of them final."""
    ws, _ = open_session(port)
    try:
        sent = 0
        for i in range(count):
            if ws.send_declared(MIB, opcode=TEXT if i == 0 else CONTINUATION, fin=False) < MIB:
                break
            sent += 1
        return ws.closed_within(5), f"fragments written={sent}/{count}"
    finally:
        ws.close()


def no_connect(port: int, bound: float = 15.0) -> tuple[bool, str]:
    """A session that answers pings and never sends the Socket.IO CONNECT."""
    ws, _ = open_session(port)
    started = time.monotonic()
    try:
        closed = ws.closed_within(bound)
        return closed, f"closed after {time.monotonic() - started:.1f}s" if closed else f"open after {bound:.0f}s"
    finally:
        ws.close()


def polling_post(port: int, size: int = 64 * MIB) -> tuple[bool, str]:
    """A polling session's POST whose Content-Length says 64 MiB."""
    base = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
    sid = json.loads(requests.get(base, timeout=5).text[1:])["sid"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            (
                f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: text/plain\r\nContent-Length: {size}\r\n\r\n"
            ).encode()
        )
        s.sendall(b"4" + b" " * (MIB - 1))
        try:
            status = s.recv(200).split(b"\r\n", 1)[0].decode()
        except OSError as e:
            status = f"error {e}"
    return " 200 " not in status, f"answer: {status}"


PROBES: dict[str, Callable[[int], tuple[bool, str]]] = {
    "binary_attachments": binary_attachments,
    "big_frame": big_frame,
    "four_big_frames": four_big_frames,
    "fragments": fragments,
    "no_connect": no_connect,
    "polling_post": polling_post,
}


def run_probe(name: str, port: int, pid: int, settle: float = 1.0) -> Outcome:
    """One probe with the worker's RSS around it; `after` is read `settle` s after it ended."""
    with PeakRss(pid) as rss:
        refused, detail = PROBES[name](port)
        time.sleep(settle)  # a measurement interval, not a synchronisation
    return Outcome(name, refused, detail, rss.before, rss.peak, rss_mib(pid))


# -- a node to probe --------------------------------------------------------------------------


def start_node(root: Path, port: int, log: Path, **env: str) -> subprocess.Popen[bytes]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    environment.update({"PORT": str(port), "LOG_LEVEL": "INFO", **env})
    command = (
        f"exec {sys.executable} -m gunicorn -c gunicorn.conf.py -k geventwebsocket.gunicorn.workers."
        f"GeventWebSocketWorker -w 1 --bind 127.0.0.1:{port} --no-control-socket wsgi:app"
    )
    process = subprocess.Popen(
        ["sh", "-c", command], cwd=root, env=environment, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except requests.RequestException:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"node did not start; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--probe", action="append", choices=sorted(PROBES))
    args = parser.parse_args()
    port = args.port
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    log = Path(f"/tmp/hostile-node-{port}.log")
    process = start_node(args.root, port, log)
    try:
        pid = worker_pid(process.pid)
        print(f"node {args.root} port={port} worker={pid} log={log}")
        for name in args.probe or list(PROBES):
            print(run_probe(name, port, pid).line(), flush=True)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a probe's connection holds the worker
            process.kill()
            process.wait(timeout=10)


if __name__ == "__main__":
    main()
