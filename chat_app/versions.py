"""The one version guard for what chat_app does below its libraries' public APIs.

The transport (chat_app.transport) patches python-socketio, python-engineio and
gevent-websocket internals and takes idle websockets from gevent's pywsgi and gunicorn's
pool (transport/idle_reader.py), and the Redis listener reads redis-py's and hiredis's private
state. Each of those reaches was written against, and measured with, exactly these versions
(requirements.txt pins them). On any other version the reach steps aside and the public path
runs instead: slower, never wrong.
"""

from __future__ import annotations

import importlib.metadata
import logging

log = logging.getLogger(__name__)

PINNED: dict[str, str] = {
    "Flask-SocketIO": "5.7.0",
    "python-socketio": "5.18.1",
    "python-engineio": "4.15.1",
    "gevent": "26.9.0",
    "gevent-websocket": "0.10.1",
    "gunicorn": "27.0.1",
    "redis": "8.1.0",
    "hiredis": "3.5.0",
}


def installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def matches(part: str, *distributions: str) -> bool:
    """True when every one of `distributions` is installed at its pinned version; else
    `part` steps aside, which is logged (parts ask once, when they are set up)."""
    found = {name: installed(name) for name in distributions}
    wanted = {name: PINNED[name] for name in distributions}
    if found == wanted:
        return True
    log.warning("event=private_api_skipped part=%s versions=%s written_for=%s", part, found, wanted)
    return False
