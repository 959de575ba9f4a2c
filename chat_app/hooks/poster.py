"""One kept-alive HTTP client for the hooks and the webhooks: POST a signed body, read a
bounded answer.

geventhttpclient (gevent sockets kept alive, a C parser): a call parks only its own greenlet
and costs the node ~190-220 µs of CPU where urllib3's pool cost ~500 (bench/hooks.py's
caller), the decision hooks' rate limit and most of a webhook's cost. The caller bounds the
whole call with its own deadline: the client's timeouts bound each connect and read, not a
backend that trickles its answer byte by byte.
"""

from __future__ import annotations

import http.client

from geventhttpclient import URL, HTTPClient
from geventhttpclient.response import HTTPConnectionClosed

ANSWER_MAX_BYTES = 64 * 1024  # a longer answer is a bad one (and is not read further)
# What a call can raise: socket errors and timeouts, a closed connection or an answer that
# is not HTTP; and what a kept-alive connection the backend closed meanwhile raises on reuse.
HTTP_ERRORS = (OSError, http.client.HTTPException)
STALE = (HTTPConnectionClosed, ConnectionResetError, BrokenPipeError)


class PostFailed(Exception):
    """No answer: the connection, a timeout, or an answer that is not HTTP."""


class Poster:
    def __init__(self, url: str, timeout: float, connections: int) -> None:
        parsed = URL(url)
        self._path = parsed.request_uri
        self._client = HTTPClient.from_url(
            parsed, concurrency=connections, connection_timeout=timeout, network_timeout=timeout
        )

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes | None]:
        """(status, answer); the answer None when it is over ANSWER_MAX_BYTES. A kept-alive
        connection found closed is retried once on a fresh one: the client retries only
        idempotent methods itself, and both callers' POSTs are safe to repeat (a question with
        no side effect; an event the receiver dedupes by its id)."""
        try:
            try:
                response = self._client.post(self._path, body=body, headers=headers)
            except STALE:
                response = self._client.post(self._path, body=body, headers=headers)
        except HTTP_ERRORS as exc:
            raise PostFailed(f"{type(exc).__name__}: {exc}") from None
        try:
            raw = response.read(ANSWER_MAX_BYTES + 1)  # whatever the status: the connection is reused
            return response.status_code, raw if len(raw) <= ANSWER_MAX_BYTES else None
        except HTTP_ERRORS as exc:
            raise PostFailed(f"{type(exc).__name__}: {exc}") from None
        finally:
            response.release()  # kept for the next call only when the answer was read whole
