"""A product's backend for the hook and webhook tests, run in a process of its own:
`python hook_receiver.py PORT RECORD_FILE [SLEEP_SECONDS]`.

Every request is appended to RECORD_FILE as one JSON line (path, headers, body), so the
test can verify signatures with the standardwebhooks library. Its answers, by path:
- /hook: the decision hook; what it answers depends on the request, so one receiver serves
  every case (see `decide`);
- /webhook: 200, except for an event whose data's message starts with "flaky" (500 to its
  first two tries) or "down" (500 always); one starting with "tarry" is answered after
  0.3 s (a node is killed while it holds a room's events).
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections import Counter
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RECORD, SLEEP = "", 3.0  # set by main
_lock = threading.Lock()
_tries: Counter[str] = Counter()


def decide(body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes]:  # noqa: PLR0911 (one case a line)
    """The answer to one hook call: (status, body)."""
    event, room, text = body.get("event"), body.get("room") or "", body.get("message") or ""
    what = room if event == "join" else text if event == "send" else (body.get("user") or "")
    if what.startswith("slow"):
        time.sleep(SLEEP)
    if what.startswith("notjson"):
        return 200, b"<html>not json</html>"
    if what.startswith("types"):
        return 200, json.dumps({"allow": "yes", "meta": [1, 2]}).encode()
    if what.startswith("huge"):
        return 200, json.dumps({"allow": True, "reason": "x" * 500_000}).encode()
    if what.startswith("error"):
        return 503, b"{}"
    if event == "connect":
        cookie = SimpleCookie((body.get("headers") or {}).get("cookie", ""))  # the client's, allow-listed
        session = cookie["session"].value if "session" in cookie else None
        if session == "bad":
            return 200, json.dumps({"allow": False, "reason": "session expired"}).encode()
        return 200, json.dumps({"allow": True, **({"user": session.removeprefix("s-")} if session else {})}).encode()
    if event == "join" and room.startswith("secret"):
        return 200, json.dumps({"allow": False, "reason": "members only"}).encode()
    if event == "send" and "spam" in text:
        return 200, json.dumps({"allow": False, "reason": "looks like spam"}).encode()
    if event == "send" and "darn" in text:
        answer = {"allow": True, "message": text.replace("darn", "d**n"), "meta": {"moderated": True, "by": "filter"}}
        return 200, json.dumps(answer).encode()
    return 200, b'{"allow": true}'


def webhook(body: dict[str, Any], headers: dict[str, str]) -> int:
    message = (body.get("data") or {}).get("message") or ""
    with _lock:
        _tries[headers.get("webhook-id", "")] += 1
        tries = _tries[headers.get("webhook-id", "")]
    if message.startswith("flaky") and tries <= 2:
        return 500
    if message.startswith("down"):
        return 500
    if message.startswith("tarry"):
        time.sleep(0.3)
    return 200


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the nodes' pools expect

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        with _lock, open(RECORD, "a") as f:
            f.write(json.dumps({"path": self.path, "headers": headers, "body": raw.decode(), "at": time.time()}) + "\n")
        body = json.loads(raw)
        if self.path == "/hook":
            status, answer = decide(body, headers)
        else:
            status, answer = webhook(body, headers), b"ok"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the node gave up waiting
            self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


if __name__ == "__main__":
    RECORD, SLEEP = sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
