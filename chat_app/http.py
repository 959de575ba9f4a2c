"""HTTP routes outside /api: the page, /healthz, and the security headers every answer
carries (api.py serves /api, metrics.py /metrics)."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, render_template

from .service import ChatService

# Every HTTP answer Flask makes (the page, its static files, the JSON routes): the page runs
# only its own two scripts (no inline script, style or eval: chat.js and the vendored
# socket.io client) and talks only to its own origin, by XHR or websocket; no other site
# may frame it (clickjacking); nothing is sniffed into another type; a link out does not
# carry the page's URL, whose #fragment names a room.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _transport_not_here() -> tuple[str, int]:
    return "", 404


def register_routes(app: Flask, service: ChatService) -> None:
    # The Socket.IO middleware answers /socket.io/ before Flask routes anything, but
    # Flask-SocketIO builds a request context for every event, and with no rule for that
    # path each one raised and caught a NotFound while matching the URL (~6 us per event).
    for websocket in (False, True):
        app.add_url_rule("/socket.io/", "socketio_transport", _transport_not_here, websocket=websocket)

    @app.after_request
    def security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.get("/")
    def index() -> str:
        return render_template("index.html")

    @app.get("/healthz")
    def healthz() -> Any:
        parts = service.health()
        body = {"status": "ok" if all(parts.values()) else "failing", "instance_id": service.instance_id, **parts}
        body["backend"] = "redis" if service.settings.uses_redis else "memory"
        if (archive := app.extensions.get("chat_archive")) is not None:
            body["archive"] = archive.status()  # informative: the archive's trouble fails no send
        if not all(parts.values()):
            body["failing"] = [name for name, ok in parts.items() if not ok]
            if unreached := service.unreached():
                body["shards_failing"] = unreached
        return jsonify(body), 200 if all(parts.values()) else 503
