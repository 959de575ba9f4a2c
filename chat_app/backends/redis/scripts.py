"""The Lua scripts, and running many of them in as few round trips as the deployment allows."""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.connection import ConnectionInterface
from redis.exceptions import AskError, NoPermissionError, NoScriptError, OutOfMemoryError

from ... import versions
from ...logsafe import q
from ...settings import Settings
from .connection import CONNECTION_ERRORS, describe
from .keys import archive_key
from .topology import follow_moved, shard

try:  # redis-py's packer wraps this one in per-argument checks that cost more than packing
    from hiredis import pack_command
except ImportError:  # requirements.txt pins hiredis; without it redis-py's packer does
    pack_command = None

log = logging.getLogger(__name__)

_LUA = Path(__file__).parent / "lua"
IDLE_RECHECK = 0.1  # seconds a held connection may sit unused before the pool checks it again


@dataclass(frozen=True)
class ArchiveLua:
    """What the scripts know of the archive (common.lua): the marker's key, None where the
    archive cannot run (a Cluster: the outbox is one key); `required` in a process that runs
    the archive, whose scripts refuse to start a room while the marker is missing."""

    key: str | None = None
    required: bool = False

    @classmethod
    def of(cls, settings: Settings, sharded: bool) -> ArchiveLua:
        if sharded:
            return cls()
        return cls(archive_key(settings.key_prefix), bool(settings.database_url))

    def header(self) -> str:
        if self.key is None:
            return "local ARCHIVE_KEY = nil\nlocal ARCHIVE_REQUIRED = false\n"
        key = json.dumps(self.key, ensure_ascii=False)  # a Lua string literal too: the prefix is printable
        return f"local ARCHIVE_KEY = {key}\nlocal ARCHIVE_REQUIRED = {str(self.required).lower()}\n"


class _Functions:
    """Whether a script is still called as a Redis Function in this process: until a server
    refuses to load its library (Redis before 7.0, FUNCTION denied by an ACL, no memory for
    it), then as EVALSHA for good, which every server runs."""

    __slots__ = ("on",)

    def __init__(self, on: bool) -> None:
        self.on = on


@dataclass(frozen=True)
class LuaScript:
    """A script as EVAL runs it (`source`, `sha`) and the same code as a Redis Function
    library (`library`, `function`; '' for a script built without one). FCALL runs a
    function whose library Redis loaded once, where EVALSHA runs the script's whole body
    again on every call: each of its local functions made anew and left to Lua's collector
    (callgrind: ~10 % of a lone message's Redis instructions, issue 27 item 4)."""

    source: str
    sha: str
    library: str = ""
    function: str = ""
    _functions: _Functions = field(default_factory=lambda: _Functions(False), compare=False, repr=False)

    @classmethod
    def load(
        cls, *names: str, sharded: bool, archive: ArchiveLua = ArchiveLua(), reads_only: bool = False
    ) -> LuaScript:
        """common.lua, then the named files, as a library whose function runs the last file;
        `PUBLISH` is SPUBLISH on a cluster, so a room's traffic stays on its shard instead of
        being copied to every cluster node."""
        header = f"local PUBLISH = '{'SPUBLISH' if sharded else 'PUBLISH'}'\n" + archive.header()
        shared = header + "".join((_LUA / name).read_text() for name in ("common.lua", *names[:-1]))
        return cls.of(shared, (_LUA / names[-1]).read_text(), reads_only=reads_only)

    @classmethod
    def of(cls, shared: str, body: str, reads_only: bool = False) -> LuaScript:
        """`shared` then `body` as a script and as a library whose function runs `body`
        (`shared` runs once then, at FUNCTION LOAD: what it keeps for a call must be set anew
        by each, as prelude.lua's `begin` does). `reads_only`: the function is declared
        `no-writes`, so Redis runs it when it is out of memory, as it ran the script."""
        source = shared + body
        sha = hashlib.sha1(source.encode()).hexdigest()
        name = f"chat_app_{sha}"  # function names are one namespace across libraries: the sha keeps them apart
        flags = ", flags = {'no-writes'}" if reads_only else ""
        library = (
            f"#!lua name={name}\n{shared}redis.register_function{{function_name = '{name}', "
            f"callback = function(KEYS, ARGV)\n{body}\nend{flags}}}\n"
        )
        return cls(source, sha, library, name, _Functions(True))

    def command(self, keys: Sequence[str], args: Sequence[object]) -> tuple[object, ...]:
        if self._functions.on:
            return ("FCALL", self.function, len(keys), *keys, *args)
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def load_into(self, execute: Callable[..., Any]) -> None:
        """Loads the script into the server `execute` sends commands to: its library, or the
        script where the server refuses the library or has no memory for it (from then on
        EVALSHA). Raises the server's error when it refuses the script too."""
        if self._functions.on:
            try:
                execute("FUNCTION", "LOAD", self.library)
                return
            except redis.ResponseError as exc:
                if "already exists" in str(exc):  # another process loaded it meanwhile
                    return
                if not (_refuses_functions(exc) or isinstance(exc, OutOfMemoryError)):
                    raise  # BUSY...: the call fails as a script's would
                # EVALSHA from now on: a server out of memory takes no library but a script,
                # whose reads it still runs (and whose writes it refuses, as FCALL's)
                self._functions.on = False
                log.warning("event=functions_off library=%s error=%s", self.function, q(describe(exc)))
        execute("SCRIPT", "LOAD", self.source)


def is_missing(result: object) -> bool:
    """A server that did not run the script because it does not hold it: it lost its script
    cache or functions (a restart, a failover to a replica that never had them, SCRIPT or
    FUNCTION FLUSH), or it runs no FCALL (before Redis 7.0, renamed away, denied by an ACL)."""
    if isinstance(result, NoScriptError):
        return True
    if not isinstance(result, redis.ResponseError):
        return False
    text = str(result)
    if text.startswith("Function not found"):
        return True
    return "fcall" in text.lower() and _refuses_functions(result)


def _refuses_functions(exc: redis.ResponseError) -> bool:
    """A server that will never run a library: it knows no FUNCTION or FCALL (before Redis
    7.0, or renamed away), or its ACL denies them."""
    return isinstance(exc, NoPermissionError) or str(exc).lower().startswith("unknown command")


Call = tuple[LuaScript, Sequence[str], Sequence[object]]
AnyRedis = redis.Redis | RedisCluster


def run_scripts(client: AnyRedis, calls: Sequence[Call], rerun_moved: bool = True) -> list[object]:
    """Runs every call (FCALL, or EVALSHA where functions are off), one pipeline per server.
    Errors come back in place, not raised. `rerun_moved=False`: a call a shard answered
    MOVED/ASK is not sent on (the map is still refreshed) but comes back as that error, for
    callers whose calls name the server they were built for (send.lua's server id: sent on
    unchanged, it would start a new epoch)."""

    def rerun(scripts: list[LuaScript], again: list[Call], moved: bool) -> list[object]:
        # Only when a slot moved: a topology refresh also reconnects every connection the
        # client lent out (redis-py 8), and "Function not found" (or NOSCRIPT) comes with
        # each script's first call on each shard.
        if not isinstance(client, RedisCluster):
            for script in scripts:
                script.load_into(client.execute_command)
            return _pipeline(client, again)
        if moved:
            follow_moved(client, [keys[0] for _, keys, _ in again if keys])
        # Loaded only where they are missing: RedisCluster.script_load would go to every
        # master, and fail every call with one shard away.
        for node, _ in _by_node(client, again).values():
            with contextlib.suppress(*CONNECTION_ERRORS), shard(client, node) as server:
                for script in scripts:  # a shard away: its calls then fail in their place
                    script.load_into(server.execute_command)
        return _pipelined(client, again)

    results = _pipelined(client, calls)
    if not rerun_moved and isinstance(client, RedisCluster) and any(is_moved(r) for r in results):
        follow_moved(client, [keys[0] for (_, keys, _), r in zip(calls, results, strict=True) if keys and is_moved(r)])
    return _rerun_missing(calls, results, rerun, rerun_moved)


def _rerun_missing(
    calls: Sequence[Call],
    results: list[object],
    rerun: Callable[[list[LuaScript], list[Call], bool], list[object]],
    rerun_moved: bool = True,
) -> list[object]:
    """The calls a server answered without running their script (`is_missing`) or with
    MOVED/ASK (a Cluster slot moved: `rerun` is told) go once more through `rerun`, which
    loads their scripts first; the other results stay in place."""
    missing = [i for i, r in enumerate(results) if is_missing(r) or (rerun_moved and is_moved(r))]
    if missing:
        scripts = list(dict.fromkeys(calls[i][0] for i in missing))
        moved = any(is_moved(results[i]) for i in missing)
        for i, result in zip(missing, rerun(scripts, [calls[i] for i in missing], moved), strict=True):
            results[i] = result
    return results


def is_moved(result: object) -> bool:
    """redis-py parses MOVED and ASK into AskError (MovedError is one), whose text drops the word."""
    return isinstance(result, AskError) or (
        isinstance(result, redis.ResponseError) and str(result).startswith(("MOVED", "ASK"))
    )


def _pipelined(client: AnyRedis, calls: Sequence[Call]) -> list[object]:
    """One pipeline per server. On a Cluster a shard that cannot be reached fails only its
    own calls (a connection error in their place) and is reported to the process's SlotMaps,
    which follow the cluster to its new master. Every call failing raises, as one server's
    pipeline does."""
    if not isinstance(client, RedisCluster):
        return _pipeline(client, calls)
    results: list[object] = [None] * len(calls)
    for node, indexes in _by_node(client, calls).values():
        try:
            with shard(client, node) as server:
                part = _pipeline(server, [calls[i] for i in indexes])
        except CONNECTION_ERRORS as exc:
            part = [exc] * len(indexes)
        for i, result in zip(indexes, part, strict=True):
            results[i] = result
    if results and all(isinstance(r, CONNECTION_ERRORS) for r in results):
        raise results[0]  # type: ignore[misc]
    return results


def _by_node(client: RedisCluster, calls: Sequence[Call]) -> dict[str, tuple[Any, list[int]]]:
    by_node: dict[str, tuple[Any, list[int]]] = {}
    for i in range(len(calls)):
        node = client.get_node_from_key(calls[i][1][0])
        by_node.setdefault(node.name, (node, []))[1].append(i)
    return by_node


def _pipeline(client: redis.Redis, calls: Sequence[Call]) -> list[object]:
    with client.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.execute_command(*script.command(keys, args))
        return pipe.execute(raise_on_error=False)


class HeldConnection:
    """One connection of a plain (non-cluster) client's pool, kept by the one thread that
    runs scripts through it. A pipeline checks a connection out and back in per batch: pool
    locks, a poll for stale data, retry wrappers, which at one send per batch cost more CPU
    than the send itself. Held, the connection pays that only after an idle spell, when the
    pool's check is what turns a connection the server closed meanwhile into a fresh one.

    An error other than a command's own error reply may leave replies unread, so the
    connection is disconnected and handed back: the next call checks out a fresh one (with
    Sentinel, one to the current master). Nothing is retried here; the caller decides."""

    def __init__(self, client: redis.Redis, idle_recheck: float = IDLE_RECHECK) -> None:
        self._client = client
        self._pool = client.connection_pool
        self._idle_recheck = idle_recheck
        self._conn: ConnectionInterface | None = None
        self._last_used = 0.0
        # Sending and reading on a checked-out connection is written for this redis-py; on
        # another, every call goes through the client's public pipeline instead.
        self._direct = versions.matches("held_connection", "redis", "hiredis")
        # hiredis encodes str as UTF-8, which is redis-py's default (and only sane) encoding.
        self._hiredis = pack_command is not None and codecs.lookup(client.get_encoder().encoding).name == "utf-8"

    def run_scripts(self, calls: Sequence[Call]) -> list[object]:
        """As `run_scripts`, in one round trip; a server that lost its scripts costs one more
        per script to load (a library refused is told apart from one loaded) and one that
        runs those calls again."""
        if not self._direct:
            return run_scripts(self._client, calls)
        conn = self._checkout()

        def load(*command: object) -> None:
            [reply] = self._round_trip(conn, [command])
            if isinstance(reply, redis.ResponseError):
                raise reply

        def rerun(scripts: list[LuaScript], again: list[Call], moved: bool) -> list[object]:
            for script in scripts:
                script.load_into(load)
            return self._round_trip(conn, [_command(call) for call in again])

        try:
            results = _rerun_missing(calls, self._round_trip(conn, [_command(call) for call in calls]), rerun)
        except redis.ResponseError:
            raise  # every reply was read: the connection is still in step
        except BaseException:
            self.release(disconnect=True)
            raise
        self._last_used = time.monotonic()
        return results

    def execute(self, *args: object) -> Any:
        """One command, its reply parsed as the client parses it (INFO as a dict, PING as a bool)."""
        if not self._direct:
            return self._client.execute_command(*args)
        conn = self._checkout()
        try:
            conn.send_command(*args)
            reply = self._client.parse_response(conn, args[0])
        except redis.ResponseError:
            raise
        except BaseException:
            self.release(disconnect=True)
            raise
        self._last_used = time.monotonic()
        return reply

    def release(self, *, disconnect: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if disconnect:
                conn.disconnect()
            self._pool.release(conn)

    def _checkout(self) -> ConnectionInterface:
        conn = self._conn
        if conn is not None and time.monotonic() - self._last_used > self._idle_recheck:
            self.release()
            conn = None
        if conn is None:
            conn = self._conn = self._pool.get_connection()
        return conn

    def _round_trip(self, conn: ConnectionInterface, commands: list[tuple[object, ...]]) -> list[object]:
        """Send every command before reading any reply; error replies come back in place."""
        if self._hiredis:
            conn.send_packed_command([b"".join([pack_command(command) for command in commands])])
        else:
            conn.send_packed_command(conn.pack_commands(commands))
        results: list[object] = []
        for _ in commands:
            try:
                results.append(conn.read_response())
            except redis.ResponseError as exc:
                results.append(exc)
        return results


def _command(call: Call) -> tuple[object, ...]:
    script, keys, args = call
    return script.command(keys, args)


class _Waiting:
    """One call queued in a ScriptBatcher and the slot for its result."""

    __slots__ = ("call", "done", "result")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.result: object = None
        self.done = threading.Event()


class ScriptBatcher:
    """Runs the script calls of many greenlets in one pipelined round trip: whatever is
    queued while one round trip is in flight goes in the next, so a burst of joins costs a
    few round trips, not several per join, and a lone call waits for nothing but Redis.

    One greenlet (a thread in the tests' threading mode) owns the round trips, on a
    connection it holds (HeldConnection: a redis-py pipeline per round trip was ~10 % of a
    node's instructions per connect + join, by callgrind). A connection error there sends
    the calls again through the client's pipeline, whose Retry reconnects; one that fails
    that too fails every call of the round trip. An error reply comes back in its call's
    place, as from `run_scripts`."""

    def __init__(self, client: AnyRedis, name: str, max_batch: int = 512) -> None:
        self._client = client
        self._held = None if isinstance(client, RedisCluster) else HeldConnection(client)
        self._max_batch = max_batch
        self._queue: deque[_Waiting] = deque()
        self._wakeup = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._start_lock = threading.Lock()
        self.round_trips = 0
        self.calls = 0

    def run(self, call: Call, timeout: float) -> object:
        """The call's result (an error reply as an exception object); raises
        ConnectionError when Redis could not be reached, TimeoutError past `timeout`."""
        if not self._started:
            with self._start_lock:
                if not self._started:
                    self._started = True
                    self._thread.start()
        waiting = _Waiting(call)
        self._queue.append(waiting)
        self._wakeup.set()
        if not waiting.done.wait(timeout):
            raise TimeoutError(f"no answer from redis within {timeout}s")
        if isinstance(waiting.result, BaseException) and not isinstance(waiting.result, redis.ResponseError):
            raise waiting.result
        return waiting.result

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()

    def _run(self) -> None:
        while not self._stopping:
            if not self._queue:
                self._wakeup.wait()
                self._wakeup.clear()
                continue
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
            self.round_trips += 1
            self.calls += len(batch)
            try:
                results = self._round_trip([w.call for w in batch])
            except Exception as exc:  # every waiter learns it; the batcher itself goes on
                if not isinstance(exc, redis.RedisError):
                    log.exception("event=batch_failed calls=%d", len(batch))
                results = [exc] * len(batch)
            for waiting, result in zip(batch, results, strict=True):
                waiting.result = result
                waiting.done.set()

    def _round_trip(self, calls: list[Call]) -> list[object]:
        if self._held is not None:
            try:
                return self._held.run_scripts(calls)
            except CONNECTION_ERRORS:
                pass  # the held connection was dropped; the pipeline below retries as the client says
        return run_scripts(self._client, calls)
