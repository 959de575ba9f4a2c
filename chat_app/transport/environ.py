"""One WSGI environ per websocket, not two.

Flask-SocketIO's middleware (5.7.0) copies every request's environ to add `flask.app` to
it. For a websocket the copy lives as long as the connection (python-socketio keeps it in
its environ map, engine.io's websocket wrapper holds it), and so does pywsgi's original
(its handler's, gevent-websocket's): two dicts of ~30 entries for every idle connection
(~1.2 KiB). Here the original gets `flask.app` and goes on to engine.io's middleware call,
in the same number of frames (the connection's greenlet keeps them under its receive loop).
Nothing downstream tells the two apart: the copy was never written to after the call but
by what also wrote the original (`wsgi.websocket` is set before the app runs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import engineio
import flask_socketio

from .. import versions

WSGIApp = Callable[[dict[str, Any], Any], Any]


def one_environ(middleware: Any) -> WSGIApp:
    """What to call instead of Flask-SocketIO's middleware `middleware`: the same, without
    its copy. Its own bound `__call__` on other versions (versions.py: part `environ`), or
    when it is not Flask-SocketIO's middleware."""
    if not isinstance(middleware, flask_socketio._SocketIOMiddleware) or not versions.matches(
        "environ", "Flask-SocketIO", "python-engineio"
    ):
        return middleware.__call__  # type: ignore[no-any-return]
    flask_app = middleware.flask_app
    # engine.io's WSGIApp.__call__ bound to the middleware: what Flask-SocketIO's calls
    # through super() after its copy.
    call = engineio.WSGIApp.__call__.__get__(middleware)

    def shared(environ: dict[str, Any], start_response: Any) -> Any:
        environ["flask.app"] = flask_app
        return call(environ, start_response)

    return shared
