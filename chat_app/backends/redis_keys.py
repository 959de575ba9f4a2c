"""Redis key and channel names. Room names are escaped where they enter Redis, so no name
can reach another room's keys, and wrapped in a hash tag so one room lives on one shard."""

from __future__ import annotations

from dataclasses import dataclass

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def escape(name: str) -> str:
    """Percent-encode every UTF-8 byte outside [A-Za-z0-9_.-]: injective and glob-free."""
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in name)


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
        )

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


def control_channel(prefix: str, instance_id: str) -> str:
    """A node's own channel: its listener's liveness probes come back on it."""
    return f"{prefix}:node:{escape(instance_id)}:ctl"
