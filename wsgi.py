"""The gunicorn entry point (see Procfile). gevent must patch the standard library before
anything else imports sockets or threading."""

from gevent import monkey

monkey.patch_all()

import signal  # noqa: E402
from types import FrameType  # noqa: E402

import gevent  # noqa: E402

from chat_app import create_app, shutdown  # noqa: E402

app = create_app()

_previous = signal.getsignal(signal.SIGTERM)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Drop presence at once, then let gunicorn's own graceful stop run."""
    gevent.spawn(shutdown, app)
    if callable(_previous):
        _previous(signum, frame)


signal.signal(signal.SIGTERM, _on_sigterm)
