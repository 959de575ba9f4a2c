"""Redis key and channel names. Room names are escaped where they enter Redis, so no name
can reach another room's keys, and wrapped in a hash tag so one room lives on one shard."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from urllib.parse import unquote

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def escape(name: str) -> str:
    """Percent-encode every UTF-8 byte outside [A-Za-z0-9_.-]: injective and glob-free."""
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in name)


def unescape(escaped: str) -> str:
    return unquote(escaped, errors="strict")


@dataclass(frozen=True, slots=True)
class RoomKeys:
    nodes: str  # zset: instance id -> deadline (ms) of that node's entry
    node_prefix: str  # + instance id: hash sid -> user, one per node hosting members
    epoch: str
    seq: str
    hist: str  # stream, entry id "<seq>-0", field "e" = envelope JSON
    dedup: str  # zset: message id or client key -> seq, trimmed to the history window
    srv: str  # replication id of the server that last wrote the stream
    users: str  # hash: user -> connections in the room across live nodes
    leaving: str  # zset: user -> deadline (ms) of a departure still within its grace period
    names: str  # zset, every score 0: the users of `users`, in name order (pages of members)
    channel: str
    tag: str  # KEY_PREFIX:{room:<escaped>}, shared by every key of the room

    @classmethod
    def of(cls, prefix: str, room: str) -> RoomKeys:
        tag = f"{prefix}:{{room:{escape(room)}}}"
        return cls(
            nodes=f"{tag}:nodes",
            node_prefix=f"{tag}:node:",
            epoch=f"{tag}:epoch",
            seq=f"{tag}:seq",
            hist=f"{tag}:hist",
            dedup=f"{tag}:dedup",
            srv=f"{tag}:srv",
            users=f"{tag}:users",
            leaving=f"{tag}:leaving",
            names=f"{tag}:names",
            channel=f"{tag}:ch",
            tag=tag,
        )

    def ban(self, user: str) -> str:
        """string with a TTL: while it exists the user's joins of the room are refused. It is
        not one of the room's presence keys: a ban outlives the room emptying."""
        return f"{self.tag}:ban:{escape(user)}"

    def script_keys(self, node_id: str) -> list[str]:
        """KEYS for the presence scripts, in their order; `node_id` is already escaped."""
        return [
            self.nodes,
            self.node_prefix + node_id,
            self.epoch,
            self.seq,
            self.hist,
            self.dedup,
            self.users,
            self.leaving,
            self.srv,
            self.names,
        ]


def room_keys(prefix: str) -> Callable[[str], RoomKeys]:
    """RoomKeys.of for one prefix, kept for the 1,024 rooms asked for last: escaping a room
    name and formatting its keys cost more than the rest of a send's bookkeeping, and a
    node's busy rooms are few enough to keep."""
    return lru_cache(maxsize=1024)(partial(RoomKeys.of, prefix))


def user_directs(prefix: str, user: str) -> str:
    """zset of the user's direct conversations (room -> last message, ms). A hash tag of its
    own: on a Cluster each user's list is on its own slot, written by a call of its own."""
    return f"{prefix}:{{user:{escape(user)}}}:directs"


def control_channel(prefix: str, instance_id: str) -> str:
    """A node's own channel: its listener's liveness probes come back on it."""
    return f"{prefix}:node:{escape(instance_id)}:ctl"


def room_nodes_pattern(prefix: str) -> str:
    """SCAN pattern of every room's `nodes` key (a room with presence); no glob character
    can come from a room name (escaped) or the prefix (refused by the settings)."""
    return f"{prefix}:{{room:*}}:nodes"


def room_of_nodes_key(prefix: str, key: str) -> str | None:
    """The room whose `nodes` key this is; None for anything else the pattern let through."""
    head, tail = f"{prefix}:{{room:", "}:nodes"
    if not (key.startswith(head) and key.endswith(tail)):
        return None
    escaped = key[len(head) : -len(tail)]
    try:
        return unescape(escaped) if escape(unescape(escaped)) == escaped else None
    except UnicodeDecodeError:
        return None


def commands_channel(prefix: str) -> str:
    """Every node listens here for commands on users (server API). The `{control}` hash tag
    puts it and every reply list on one Cluster shard (SPUBLISH/SSUBSCRIBE)."""
    return f"{prefix}:{{control}}:commands"


def reply_prefix(prefix: str) -> str:
    return f"{prefix}:{{control}}:reply:"


def reply_key(prefix: str, token: str) -> str:
    """The list where the nodes answer one command; only its sender pops it, for its deadline."""
    return reply_prefix(prefix) + token


def archive_key(prefix: str) -> str:
    """The archive's marker (common.lua archive_conf); + ":outbox", the stream its writers
    read. Not hash-tagged: the archive runs on one Redis (or Sentinel), not a Cluster."""
    return f"{prefix}:archive"
