"""A Redis Cluster with a replica per master, started by the test on free ports, for failover
tests: which server holds a slot, its replica, and the moment a replica is seen promoted."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from helpers import wait_until
from processes import RedisServer, free_port
from redis.cluster import RedisCluster

from chat_app.backends.redis.keys import RoomKeys

NODE_TIMEOUT_MS = 2000
PASSWORD = "cluster-secret"  # every server requires it: the nodes must carry REDIS_PASSWORD everywhere


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def cluster_args() -> list[str]:
    return [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        str(NODE_TIMEOUT_MS),
        # The README's advice: the other shards keep serving while one has no master.
        "--cluster-require-full-coverage",
        "no",
    ]


@dataclass
class HaCluster:
    servers: list[RedisServer]

    def by_port(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def live(self) -> list[RedisServer]:
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]

    def startup_nodes(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.servers[:3])

    def shards(self) -> dict[int, int | None]:
        """master port -> its replica's port, as a live server reports CLUSTER SHARDS."""
        for server in self.live():
            try:
                reply = server.client().execute_command("CLUSTER SHARDS")
            except redis.RedisError:
                continue
            out: dict[int, int | None] = {}
            for shard in reply:  # redis-py parses each shard and node into a dict
                if not shard[b"slots"]:
                    continue
                nodes = shard[b"nodes"]
                master = [n for n in nodes if n[b"role"] == b"master" and n[b"health"] == b"online"]
                replicas = [n for n in nodes if n[b"role"] == b"replica" and n[b"health"] == b"online"]
                if master:
                    out[int(master[0][b"port"])] = int(replicas[0][b"port"]) if replicas else None
            return out
        raise AssertionError("no live cluster server answered CLUSTER SHARDS")

    def master_of(self, key: str) -> int:
        """The port of the master that holds `key`'s slot, per CLUSTER SLOTS of a live server."""
        slot = RedisCluster.keyslot(_KEYSLOT, key)
        for server in self.live():
            try:
                slots = server.client().execute_command("CLUSTER SLOTS")
            except redis.RedisError:
                continue
            for start, end, master, *_ in slots:
                if start <= slot <= end:
                    return int(master[1])
        raise AssertionError(f"no master holds slot {slot}")

    def in_sync(self) -> bool:
        """Every master has its replica online and at its replication offset."""
        for master_port, replica_port in self.shards().items():
            if replica_port is None:
                return False
            master = self.by_port(master_port).client().info("replication")
            replica = self.by_port(replica_port).client().info("replication")
            if replica.get("master_link_status") != "up":
                return False
            if master.get("master_repl_offset") != replica.get("slave_repl_offset"):
                return False
        return True

    def rooms_on_every_shard(self, prefix: str = "chat") -> dict[int, str]:
        """One room per master, by the master's port."""
        rooms: dict[int, str] = {}
        masters = set(self.shards())
        i = 0
        while set(rooms) != masters:
            room = f"room-{i}"
            rooms.setdefault(self.master_of(RoomKeys.of(prefix, room).channel), room)
            i += 1
        return rooms

    def wait_promoted(self, dead_master: int, replica: int, timeout: float = 20) -> float:
        """time.monotonic() when CLUSTER SHARDS first shows `replica` as an online master."""
        wait_until(lambda: replica in self.shards(), timeout=timeout, interval=0.05, what=f"{replica} promoted")
        return time.monotonic()


class _Keyslot:
    """RedisCluster.keyslot without a client: it reads only the encoder."""

    def __init__(self) -> None:
        from redis._parsers.encoders import Encoder

        self.encoder = Encoder("utf-8", "strict", False)


_KEYSLOT = _Keyslot()


def create_cluster(servers: list[RedisServer], replicas: int = 0, password: str | None = None) -> None:
    """`redis-cli --cluster create` over started servers, then every server's state ok."""
    auth = ["-a", password, "--no-auth-warning"] if password else []
    addresses = [f"127.0.0.1:{s.port}" for s in servers]
    command = ["redis-cli", *auth, "--cluster", "create", *addresses, "--cluster-replicas", str(replicas)]
    subprocess.run([*command, "--cluster-yes"], check=True, capture_output=True, timeout=30)
    wait_until(
        lambda: all(s.client().cluster("info")["cluster_state"] == "ok" for s in servers),
        timeout=30,
        what="cluster state ok on every server",
    )


def start_ha_cluster(directory: Path) -> HaCluster:
    servers = [
        RedisServer(directory / f"server{i}", free_cluster_port(), cluster_args(), password=PASSWORD) for i in range(6)
    ]
    cluster = HaCluster(servers)
    try:
        for server in servers:
            server.start()
        create_cluster(servers, replicas=1, password=PASSWORD)
        wait_until(lambda: len(cluster.shards()) == 3 and cluster.in_sync(), timeout=30, what="replicas in sync")
    except BaseException:
        stop(cluster)
        raise
    return cluster


def stop(cluster: HaCluster) -> None:
    for server in cluster.servers:
        server.stop()
