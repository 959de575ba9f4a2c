"""gunicorn's settings for a chat node, read by the Procfile's command (`-c gunicorn.conf.py`).

A gevent worker takes at most `worker_connections` clients at once and stops accepting
past it (gunicorn's default is 1,000). Each connection is one open file, so the soft limit
on open files is raised here, in the master, before it forks the worker that inherits it."""

import gc
import logging
import os
import resource

# Concurrent connections one node accepts (websockets and long-polls alike).
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "20000"))

# Files besides the clients: Redis connections, the listening socket, logs, the wake-up pair.
SPARE_FILES = 256


def _raise_open_files_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        logging.getLogger("gunicorn.error").warning(
            "event=open_files_limit_low hard=%d wanted=%d: the node takes fewer than "
            "WORKER_CONNECTIONS=%d clients; raise the hard limit (ulimit -Hn, docker --ulimit nofile)",
            hard,
            wanted,
            worker_connections,
        )


_raise_open_files_limit(worker_connections + SPARE_FILES)


def post_worker_init(worker: object) -> None:
    """Freeze what start-up made (modules, classes, the app, ~100,000 objects) out of the
    cyclic collector's reach: they live as long as the worker, and every full collection
    would walk them again. A connection storm triggers full collections as the heap grows,
    and at 1,000 connections a node start-up's objects were two thirds of what each walked
    (bench/README.md, "Connect + join"). Objects made later are collected as before."""
    gc.collect()
    gc.freeze()
