"""The product's backend for the hooks bench, one process of its own on 127.0.0.1:

    python -m bench.http_receiver PORT

- `POST /hook`: answers `{"allow": true}` at once (the decision hook, HOOK_URL);
- `POST /webhook`: answers 200 and, for `message.created`, notes when it came, the lag from
  the generator's send (the body's `room|n|sent_at|...`, `sent_at` on CLOCK_MONOTONIC, the
  clock of `time.perf_counter` in every process of this machine), the webhook-id and seq;
- `GET /stats`: counts; `GET /records`: the arrivals (perf_counter, lag) as JSON.

Written on a bare asyncio.Protocol under uvloop, HTTP/1.1 keep-alive parsed by hand, so a
request costs one `data_received` callback, one header scan and one `write` — no task,
greenlet or request object per request, as aiohttp, http.server or gevent's pywsgi would
make. The nodes' urllib3 pools send one request at a time per connection (no pipelining),
but a chunk holding several is answered in order all the same. Signatures are not verified:
the receiver's cost is kept to what any backend pays before its own work.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from typing import Any

import orjson

ALLOW = b'{"allow": true}'
HOOK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(ALLOW),
    ALLOW,
)
EMPTY_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
HEADER_CAP = 64 * 1024


class Record:
    """What the webhook side saw (one per process)."""

    def __init__(self) -> None:
        self.requests = 0
        self.by_type: Counter[str] = Counter()
        self.ids: set[str] = set()
        self.duplicates = 0
        self.out_of_order = 0
        self.out_of_order_seen: list[tuple[str, int, int]] = []  # (room, seq, the room's highest before), 20
        self.last_seq: dict[str, int] = {}
        self.arrivals: list[float] = []  # perf_counter at receipt, message.created only
        self.lags: list[float] = []  # receipt - the generator's send

    def webhook(self, body: bytes, webhook_id: str) -> None:
        event = orjson.loads(body)
        kind = event.get("type", "?")
        self.by_type[kind] += 1
        if kind != "message.created":
            return
        now = time.perf_counter()
        if webhook_id in self.ids:
            self.duplicates += 1
            return
        self.ids.add(webhook_id)
        data = event["data"]
        room, seq = data["room"], data["seq"]
        if seq <= self.last_seq.get(room, 0):
            self.out_of_order += 1
            if len(self.out_of_order_seen) < 20:
                self.out_of_order_seen.append((room, seq, self.last_seq[room]))
        self.last_seq[room] = max(seq, self.last_seq.get(room, 0))
        self.arrivals.append(now)
        parts = data["message"].split("|", 3)
        self.lags.append(now - float(parts[2]) if len(parts) == 4 else float("nan"))

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_type": dict(self.by_type),
            "created": len(self.arrivals),
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "out_of_order_seen": self.out_of_order_seen,
            "last_arrival": self.arrivals[-1] if self.arrivals else None,
        }


RECORD = Record()


def _content_length(head: bytes) -> int:
    at = head.lower().find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    end = head.find(b"\r\n", at + 2)
    return int(head[at + 17 : end if end >= 0 else len(head)])


def _header(head: bytes, name: bytes) -> str:
    at = head.lower().find(b"\r\n" + name + b":")
    if at < 0:
        return ""
    end = head.find(b"\r\n", at + 2)
    return head[at + len(name) + 3 : end if end >= 0 else len(head)].strip().decode()


class Connection(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > HEADER_CAP:
                    self.transport.close()
                return
            head = bytes(buffer[:end])
            total = end + 4 + _content_length(head)
            if len(buffer) < total:
                return
            body = bytes(buffer[end + 4 : total])
            del buffer[:total]
            self.transport.write(self.answer(head, body))

    def answer(self, head: bytes, body: bytes) -> bytes:
        RECORD.requests += 1
        line = head[: head.find(b"\r\n")] if b"\r\n" in head else head
        method, _, rest = line.partition(b" ")
        path = rest.partition(b" ")[0]
        if path == b"/hook":
            return HOOK_ANSWER
        if path == b"/webhook":
            RECORD.webhook(body, _header(head, b"webhook-id"))
            return EMPTY_OK
        if method == b"GET" and path in (b"/stats", b"/records"):
            payload = orjson.dumps(
                RECORD.stats() if path == b"/stats" else {"arrivals": RECORD.arrivals, "lags": RECORD.lags}
            )
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
        return NOT_FOUND


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Connection, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    try:
        import uvloop
    except ImportError:  # bench/requirements.txt pins it; plain asyncio works, a little slower
        asyncio.run(serve(port))
    else:
        uvloop.run(serve(port))


if __name__ == "__main__":
    main()
