"""Clients that stopped reading are cut before their queues grow the node's memory.

It reads engine.io's per-socket queues (`Server.sockets`, `Socket.queue`), which are not
public API: chat_app.transport runs it only on the versions it was written for.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any

from .fanout import tcp_socket

log = logging.getLogger(__name__)

STUCK_UNSENT_BYTES = 16 * 1024


def _unsent_bytes(sock: Any) -> int | None:
    """Bytes the kernel still holds for a client: they pile up only when the client stops
    reading (its TCP window is closed)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return None


def watch_slow_clients(
    server: Any, limit: int, interval: float = 1.0, longest: Callable[[], int] | None = None
) -> None:
    """Disconnect a client that stopped reading once its outgoing queue passed `limit`
    packets, so it cannot grow the node's memory; it reconnects and recovers with `since`.

    A long queue alone is not enough: when the node itself is behind (CPU-bound), every
    queue grows while every client reads. Cutting those would turn late messages into lost
    ones, so a client is cut only if, at two checks in a row, the kernel is also holding
    unsent bytes for it: it is the reader that is slow.

    The cut shuts the TCP connection down rather than closing the engine.io socket, which
    would wait for the stuck queue to drain (forever, and this watch with it). The
    connection's own greenlets then see it end and clean up as for any disconnect.

    `longest`, when given (chat_app.transport.lean_websockets), says how long the longest
    queue is without reading every socket's: the round is skipped while none is over
    `limit` (reading 19,000 queues each second was half of an idle node's busy time)."""
    eio = server.eio

    def watch() -> None:
        suspects: set[str] = set()
        while True:
            server.sleep(interval)
            try:
                suspects = check(suspects)
            except Exception:  # a surprise in one round must not end the watch
                log.exception("event=slow_client_watch_failed")

    def check(suspects: set[str]) -> set[str]:
        if longest is not None and longest() <= limit:
            return set()
        stuck: dict[str, Any] = {}
        for eio_sid, sock in list(eio.sockets.items()):
            tcp = tcp_socket(server.environ.get(eio_sid)) if sock.queue.qsize() > limit else None
            if tcp is not None and (_unsent_bytes(tcp) or 0) > STUCK_UNSENT_BYTES:
                stuck[eio_sid] = tcp
        for eio_sid in suspects & stuck.keys():
            log.warning("event=slow_client_disconnected eio_sid=%s", eio_sid)
            with contextlib.suppress(OSError):  # it may be gone already
                stuck[eio_sid].shutdown(socket.SHUT_RDWR)
        return stuck.keys() - suspects

    server.start_background_task(watch)
