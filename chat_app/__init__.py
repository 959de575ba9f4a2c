"""chat_app: a Socket.IO chat server whose nodes share rooms through Redis.

The package itself imports nothing heavy: `chat_app.emitter` must load in a Celery worker or
a script without Flask or gevent, and importing a submodule runs this file first. The app's
names are resolved on first use from `chat_app.app`."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app, shutdown
    from .settings import Settings

_LAZY = {"create_app": ".app", "shutdown": ".app", "configure_logging": ".app", "build_backends": ".app"}
_LAZY["Settings"] = ".settings"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chat_app' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


__all__ = ["Settings", "create_app", "shutdown"]
