"""The app: Flask + SocketIO + ChatService, wired (chat_app.create_app)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask
from flask_socketio import SocketIO

from . import json_codec
from .api import register_api
from .backends.base import Broker, Presence
from .backends.memory import MemoryBroker, MemoryHub, MemoryPresence
from .http import register_routes
from .logsafe import q
from .metrics import register_metrics
from .protocol.errors import ChatError, ErrorCode
from .protocol.wire import max_wire_bytes
from .service import BEHIND, ChatService
from .settings import Settings
from .socketio_handlers import register_handlers
from .transport import SendShedding, install_transport
from .transport.environ import one_environ
from .transport.socketio_out import SocketIOOut

if TYPE_CHECKING:
    from .archive.node import NodeArchive

log = logging.getLogger("chat_app")  # the lines it logged before it moved here


class _InstanceFilter(logging.Filter):
    def __init__(self, instance_id: str) -> None:
        super().__init__()
        self.instance_id = instance_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.instance = self.instance_id
        return True


class LogFormatter(logging.Formatter):
    """logging's own line, with each second's date and time formatted once: a connect, a
    join, a leave and a disconnect each log a line, and `localtime` + `strftime` for each
    was 2 % of a node's CPU in W3's connects and joins (py-spy)."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second, stamp = self._second
        if int(record.created) != second:
            second = int(record.created)
            stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = (second, stamp)
        return self.default_msec_format % (stamp, record.msecs)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_InstanceFilter(settings.instance_id))
    handler.setFormatter(LogFormatter("%(asctime)s %(levelname)s instance=%(instance)s %(name)s %(message)s"))
    root = logging.getLogger("chat_app")
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    root.propagate = False
    # No format of the node's (chat_app's, gunicorn's) prints where a line was logged from:
    # without a source file, logging skips findCaller's walk up the stack for every record
    # (the logging HOWTO's "Optimization"; a connect and a join log one line each).
    logging._srcfile = None  # type: ignore[attr-defined]
    # Nor its thread, process or process name, which every record otherwise looks up.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


class CloseWhenAsked:
    """WSGI middleware: a response to a request that said `Connection: close` says it too.

    gevent's pywsgi closes such a connection after the response but does not say so on
    HTTP/1.1 (RFC 9112 9.6: the server SHOULD send "close" in that response). Node's HTTP
    client, which node-fetch asks for `Connection: close`, then kept the socket in its
    keep-alive pool and its next request on it failed with "socket hang up" (seen with the
    official Socket.IO protocol suite)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        tokens = {t.strip().lower() for t in environ.get("HTTP_CONNECTION", "").split(",")}
        if "close" not in tokens:
            return self.app(environ, start_response)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if not any(name.lower() == "connection" for name, _ in headers):
                headers = [*headers, ("Connection", "close")]
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        return self.app(environ, start)


def build_backends(settings: Settings) -> tuple[Broker, Presence, NodeArchive | None]:
    if not settings.uses_redis:
        log.warning("event=backend backend=memory REDIS_URL is unset: single node, rooms are not shared")
        hub = MemoryHub(settings.history_length)
        presence = MemoryPresence(hub, settings.instance_id, settings.presence_events_max_members)
        return MemoryBroker(hub, settings.instance_id), presence, None
    from .backends.redis.broker import RedisBroker
    from .backends.redis.clients import RedisClients
    from .backends.redis.presence import RedisPresence

    clients = RedisClients.from_settings(settings)
    log.info("event=backend backend=redis sentinel=%s", settings.redis_sentinels is not None)
    archive = None
    if settings.database_url:
        from .archive.node import NodeArchive

        archive = NodeArchive.build(settings, clients.commands, max_wire_bytes(settings.max_message_bytes))  # type: ignore[arg-type]
    else:
        log.warning(
            "event=archive_off detail=%s",
            q("no DATABASE_URL: history is Redis's recent window of live rooms only, and goes with them"),
        )
    broker = RedisBroker(clients, settings, archive.reads if archive else None)
    reads = archive.reads if archive else None
    return broker, RedisPresence(clients, settings, broker.batcher, reads), archive


def create_app(settings: Settings | None = None, async_mode: str | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging(settings)
    app = Flask(__name__)
    socketio = SocketIO(
        app,
        async_mode=async_mode,
        cors_allowed_origins=settings.cors_allowed_origins,
        # Frames (and polling bodies) up to this are read, so that an oversized paste is
        # answered `message_too_large`; past it they are refused before they are read.
        max_http_buffer_size=settings.transport_max_bytes,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        logger=False,
        engineio_logger=False,
        json=json_codec,
    )
    transport = install_transport(
        socketio.server, settings.max_client_queue, settings.connect_timeout, settings.presence_linger
    )
    broker, presence, archive = build_backends(settings)
    reads = archive.reads if archive else None
    service = ChatService(settings, broker, presence, SocketIOOut(socketio, transport), archive=reads)
    if settings.hook_url:
        from .hooks.decisions import DecisionHooks

        service.hooks = DecisionHooks(settings)
        log.info("event=hooks_on events=%s failure=%s", settings.hook_events, settings.hook_failure)
    register_handlers(socketio, service, transport)
    behind = ChatError(ErrorCode.OVERLOADED, BEHIND).to_wire()
    transport.shed_sends(SendShedding(service.load.shedding, service.load.refuses, behind))
    register_routes(app, service)
    # Bound methods, not instances: Flask calls wsgi_app for every request, and calling an
    # instance goes through C, another interpreter loop on the C stack that each websocket
    # connection's greenlet keeps saved for its lifetime (~750 bytes a level); a bound method
    # runs in the caller's loop.
    # one_environ: Flask-SocketIO's middleware without its copy of every request's environ.
    app.wsgi_app = CloseWhenAsked(one_environ(app.wsgi_app)).__call__  # type: ignore[method-assign]
    register_api(app, service)
    app.extensions["chat_service"] = service
    app.extensions["chat_socketio"] = socketio
    registry = register_metrics(app, service, broker, transport.writer.counters if transport.writer else None, presence)
    service.start()
    if archive is not None:
        from .archive.metrics import register_archive_metrics

        register_archive_metrics(registry, archive, settings.instance_id)
        archive.start()
        app.extensions["chat_archive"] = archive
    if socketio.async_mode == "gevent":
        service.measure_load()
    log.info("event=started")
    return app


def shutdown(app: Flask) -> None:
    """Leave every room at once, close Redis, then disconnect the clients (SIGTERM)."""
    service: ChatService = app.extensions["chat_service"]
    socketio: SocketIO = app.extensions["chat_socketio"]
    archive: NodeArchive | None = app.extensions.get("chat_archive")
    if archive is not None:
        if archive.webhooks is not None:
            archive.webhooks.stop()
        archive.writer.stop()  # the database connections close with the process
    for sid in service.stop():
        with contextlib.suppress(Exception):  # the client may already be gone
            socketio.server.disconnect(sid, namespace="/")


__all__ = ["Settings", "create_app", "shutdown"]
