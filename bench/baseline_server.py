"""The baseline: what a user would otherwise run. Plain Flask-SocketIO with `message_queue=`
Redis, the same events and acks as chat_app, no sequencing, no history, no presence.

Started exactly like a chat_app node (the Procfile's web line, `bench.baseline_server:app`),
so both run under the same gunicorn gevent-websocket worker.
"""

from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

from flask import Flask, request  # noqa: E402
from flask_socketio import SocketIO, join_room  # noqa: E402

INSTANCE_ID = os.environ.get("INSTANCE_ID", "baseline")


class _ShowRedisError(logging.Filter):
    """python-socketio passes the Redis error as `extra`, which no default format prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = getattr(record, "redis_exception", None)
        if error:
            record.msg = f"{record.msg} ({error})"
        return True


logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
for handler in logging.getLogger().handlers:
    handler.addFilter(_ShowRedisError())

app = Flask(__name__)
socketio = SocketIO(app, message_queue=os.environ["REDIS_URL"], logger=False, engineio_logger=False)
users: dict[str, str] = {}
stats = {"received": 0}  # messages this node's manager took from Redis (routing evidence)


def _counting(listen: Any) -> Any:
    def counted() -> Any:
        for message in listen():
            stats["received"] += 1
            yield message

    return counted


socketio.server.manager._listen = _counting(socketio.server.manager._listen)


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok", "instance_id": INSTANCE_ID}


@app.get("/stats")
def get_stats() -> dict[str, int]:
    return stats


@socketio.on("connect")
def on_connect(auth: Any = None) -> bool:
    users[request.sid] = (auth or {}).get("username") or "anonymous"
    return True


@socketio.on("disconnect")
def on_disconnect(reason: Any = None) -> None:
    users.pop(request.sid, None)


@socketio.on("join_room")
def on_join(payload: Any = None) -> dict[str, Any]:
    room = payload.get("room") if isinstance(payload, dict) else payload
    if not isinstance(room, str) or not room:
        return {"ok": False, "error": {"code": "invalid_room", "message": "room must be a string"}}
    join_room(room)
    return {"ok": True, "room": room, "seq": 0, "epoch": "", "members": [], "history": []}


@socketio.on("send_message")
def on_send(payload: Any = None) -> dict[str, Any]:
    room = payload.get("room") if isinstance(payload, dict) else None
    message = payload.get("message") if isinstance(payload, dict) else None
    if not isinstance(room, str) or not isinstance(message, str):
        return {"ok": False, "error": {"code": "invalid_payload", "message": "room and message are required"}}
    envelope = {
        "id": uuid.uuid4().hex,
        "room": room,
        "sender": users.get(request.sid, "anonymous"),
        "message": message,
        "timestamp": int(time.time() * 1000),
        "seq": 0,
        "epoch": "",
        "instance_id": INSTANCE_ID,
    }
    socketio.emit("broadcast_message", envelope, to=room)
    return {"ok": True, "id": envelope["id"], "seq": 0, "epoch": "", "timestamp": envelope["timestamp"]}
