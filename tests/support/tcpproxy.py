"""A loopback TCP proxy that can go silent (half-open: sockets stay open, no bytes flow)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.silent = threading.Event()
        self.dead = threading.Event()  # connections are refused: reset at once
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.dead.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._closing:
                readable, _, _ = select.select([a, b], [], [], 0.1)
                if self.silent.is_set():
                    continue  # hold everything: the peers see an open, silent connection
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def go_silent(self) -> None:
        self.silent.set()

    def go_dead(self) -> None:
        """Every connection is reset and new ones are closed at once, until come_back."""
        self.dead.set()
        self._reset_all()

    def come_back(self) -> None:
        """The network returns: connections that went silent are reset, new ones flow."""
        self._reset_all()
        self.silent.clear()
        self.dead.clear()

    def _reset_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closing = True
        self.server.close()
        self.come_back()
