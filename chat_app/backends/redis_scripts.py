"""The Lua scripts, and running many of them in as few round trips as the deployment allows."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

_LUA = Path(__file__).parent / "lua"


@dataclass(frozen=True)
class LuaScript:
    source: str
    sha: str

    @classmethod
    def load(cls, *names: str, sharded: bool) -> LuaScript:
        """Concatenate the named files; `PUBLISH` is SPUBLISH on a cluster, so a room's
        traffic stays on its shard instead of being copied to every cluster node."""
        header = f"local PUBLISH = '{'SPUBLISH' if sharded else 'PUBLISH'}'\n"
        source = header + "".join((_LUA / name).read_text() for name in names)
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


Call = tuple[LuaScript, Sequence[str], Sequence[object]]
AnyRedis = redis.Redis | RedisCluster


def run_scripts(client: AnyRedis, calls: Sequence[Call]) -> list[object]:
    """EVALSHA every call, one pipeline per server; a server that lost its script cache gets
    the script loaded and those calls run again. Errors come back in place, not raised."""
    results = _pipelined(client, calls)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError) or _moved(r)]
    if missing:
        if isinstance(client, RedisCluster) and any(_moved(results[i]) for i in missing):
            client.nodes_manager.initialize()  # a slot moved: learn the topology again
        for script in {calls[i][0] for i in missing}:
            client.script_load(script.source)
        for i, result in zip(missing, _pipelined(client, [calls[i] for i in missing]), strict=True):
            results[i] = result
    return results


def _moved(result: object) -> bool:
    return isinstance(result, redis.ResponseError) and str(result).startswith(("MOVED", "ASK"))


def _pipelined(client: AnyRedis, calls: Sequence[Call]) -> list[object]:
    if not isinstance(client, RedisCluster):
        return _pipeline(client, calls)
    by_node: dict[str, tuple[object, list[int]]] = {}
    for i, (_, keys, _) in enumerate(calls):
        node = client.get_node_from_key(keys[0])
        by_node.setdefault(node.name, (node, []))[1].append(i)
    results: list[object] = [None] * len(calls)
    for node, indexes in by_node.values():
        part = _pipeline(client.get_redis_connection(node), [calls[i] for i in indexes])
        for i, result in zip(indexes, part, strict=True):
            results[i] = result
    return results


def _pipeline(client: redis.Redis, calls: Sequence[Call]) -> list[object]:
    with client.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return pipe.execute(raise_on_error=False)
