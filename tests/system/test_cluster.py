"""Redis Cluster with sharded pub/sub: three masters on loopback created here with
`redis-cli --cluster create`; rooms spread over every shard."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_ha import create_cluster, free_cluster_port
from helpers import ChatClient, wait_until
from processes import RedisServer
from redis.cluster import ClusterNode, RedisCluster
from streams import SendStream, assert_exactly_once_in_order
from test_faults import record

from chat_app.backends.redis.keys import RoomKeys, commands_channel, user_directs
from chat_app.backends.redis.scripts import LuaScript, run_scripts


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[RedisServer]]:
    cluster_args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    masters = [RedisServer(tmp_path / f"shard{i}", free_cluster_port(), cluster_args) for i in range(3)]
    try:
        for server in masters:
            server.start()
        create_cluster(masters)
        yield masters
    finally:
        for m in masters:
            m.stop()


def rooms_on_every_shard(masters: list[RedisServer], per_shard: int = 2) -> dict[int, list[str]]:
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", masters[0].port)])
    by_port: dict[int, list[str]] = {m.port: [] for m in masters}
    i = 0
    while any(len(rooms) < per_shard for rooms in by_port.values()):
        room = f"room-{i}"
        port = rc.get_node_from_key(RoomKeys.of("chat", room).channel).port
        if len(by_port[port]) < per_shard:
            by_port[port].append(room)
        i += 1
    rc.close()
    return by_port


class ShardProbes:
    """The listener's probes on one shard, seen from Redis. Its slow log, set to keep every
    command, tells a bare PING (the probe) from redis-py's own `PING redis-py-health-check`
    and names the connection that sent it."""

    def __init__(self, server: RedisServer) -> None:
        self.redis = server.client()
        self.redis.config_set("slowlog-max-len", 10_000)
        self.redis.config_set("slowlog-log-slower-than", 0)
        self.redis.slowlog_reset()
        self.connections = {c["addr"] for c in self.redis.client_list(_type="pubsub")}

    def answered(self) -> bool:
        """Two probes from each connection, and the same connections still there: the
        second is sent only after the first came back, and one that does not come back
        costs its connection within PROBE_TIMEOUT."""
        probes = Counter(
            e["client_address"].decode() for e in self.redis.slowlog_get(10_000) if e["command"] == b"PING"
        )
        live = {c["addr"] for c in self.redis.client_list(_type="pubsub")}
        return live == self.connections and all(probes[addr] >= 2 for addr in self.connections)


def test_cross_node_delivery_presence_and_history_on_every_shard(cluster, nodes) -> None:
    env = {"REDIS_CLUSTER_NODES": f"127.0.0.1:{cluster[0].port},127.0.0.1:{cluster[1].port}"}
    a = nodes.start(None, **env)
    b = nodes.start(None, **env)
    by_port = rooms_on_every_shard(cluster)
    rooms = [room for rs in by_port.values() for room in rs]
    alice, bob = ChatClient(a.url, "alice"), ChatClient(b.url, "bob")
    for room in rooms:
        alice.call("join_room", room)
        assert bob.call("join_room", room)["members"] == ["alice", "bob"]
    for room in rooms:
        assert alice.call("send_message", {"room": room, "message": f"to {room}"})["ok"]
    got = bob.wait_for(len(rooms))
    assert sorted((m["room"], m["message"]) for m in got) == sorted((r, f"to {r}") for r in rooms)
    wait_until(lambda: {p["room"] for p in alice.received("presence") if p["user"] == "bob"} == set(rooms))

    carol = ChatClient(b.url, "carol")
    ack = carol.call("join_room", rooms[-1])
    assert ack["ok"], ack
    assert [m["message"] for m in ack["history"]] == [f"to {rooms[-1]}"]

    # Each shard carries only its own rooms' traffic: one channel per room, where it lives
    # (and the server API's commands channel, on its own shard).
    for master in cluster:
        channels = {c.decode() for c in master.client().execute_command("PUBSUB SHARDCHANNELS")}
        assert channels - {commands_channel("chat")} == {RoomKeys.of("chat", r).channel for r in by_port[master.port]}
    # Idle past LISTENER_IDLE_PROBE, every shard connection of both nodes is probed, and answered.
    probes = {m.port: ShardProbes(m) for m in cluster}
    assert all(len(p.connections) == 2 for p in probes.values()), {k: p.connections for k, p in probes.items()}
    wait_until(lambda: all(p.answered() for p in probes.values()), timeout=10, what="two probes per shard connection")
    for node in (a, b):
        assert "listener_down" not in node.log(), "a healthy shard connection was taken for deaf"
    for room in rooms:
        bob.call("leave_room", room)
        alice.call("leave_room", room)
    carol.close()
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", cluster[0].port)])
    wait_until(lambda: not any(rc.keys(f"chat:{{room:{r}}}:*") for r in rooms[:-1]), what="keys of left rooms")
    rc.close()


def test_killing_one_shards_pubsub_connections_loses_nothing(cluster, nodes) -> None:
    env = {"REDIS_CLUSTER_NODES": f"127.0.0.1:{cluster[0].port}"}
    a = nodes.start(None, **env)
    b = nodes.start(None, **env)
    by_port = rooms_on_every_shard(cluster, per_shard=2)
    victim = cluster[1]
    room, other_room = by_port[victim.port]  # two rooms: a re-subscription spans two slots
    sender, far = ChatClient(a.url, "sender"), ChatClient(b.url, "far")
    for r in (room, other_room):
        sender.call("join_room", r)
        far.call("join_room", r)
    stream = SendStream(sender, room, rate=20).start()
    for _ in range(3):
        time.sleep(1.0)
        wait_until(lambda: len(victim.client().client_list(_type="pubsub")) >= 2, what="both nodes subscribed")
        assert victim.client().client_kill_filter(_type="pubsub") >= 1
    time.sleep(1.0)
    stream.stop()
    figures = assert_exactly_once_in_order(stream, far)
    assert stream.failed() == []
    assert sender.call("send_message", {"room": other_room, "message": "other"})["ok"]
    wait_until(lambda: any(m["room"] == other_room for m in far.received()), what="the other room re-subscribed")
    record("cluster_shard_pubsub_kill_x3", **figures)


def test_every_node_uses_only_the_shards_it_needs(cluster, nodes) -> None:
    env = {"REDIS_CLUSTER_NODES": f"127.0.0.1:{cluster[0].port}"}
    a = nodes.start(None, **env)
    by_port = rooms_on_every_shard(cluster, per_shard=1)
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", cluster[0].port)])
    control = rc.get_node_from_key(commands_channel("chat")).port  # every node listens there
    rc.close()
    only = next(m for m in cluster if m.port != control)
    client = ChatClient(a.url, "x")
    client.call("join_room", by_port[only.port][0])
    wait_until(lambda: only.client().client_list(_type="pubsub"), what="a pub/sub connection on its shard")
    for other in cluster:
        if other.port not in {only.port, control}:
            assert other.client().client_list(_type="pubsub") == []
    client.close()


def test_direct_lists_live_on_their_users_slots(cluster, nodes) -> None:
    """list_directs reads keys of several slots (each user's list, each room's seq): a
    pipeline the cluster client splits by shard, never one cross-slot script."""
    env = {"REDIS_CLUSTER_NODES": f"127.0.0.1:{cluster[0].port}"}
    env |= {"LIST_DIRECTS_RATE": "1000", "LIST_DIRECTS_BURST": "1000"}  # the list is polled below
    a = nodes.start(None, **env)
    b = nodes.start(None, **env)
    alice, bob = ChatClient(a.url, "alice"), ChatClient(b.url, "bob")
    peers = ["bob", "carol", "dave", "erin"]
    for peer in peers:
        room = alice.call("open_direct", {"with": peer})["room"]
        for i in range(2):
            assert alice.call("send_message", {"room": room, "message": f"{i}"})["ok"]
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", cluster[0].port)])
    slots = {rc.keyslot(user_directs("chat", u)) for u in ["alice", *peers]}
    slots |= {rc.keyslot(RoomKeys.of("chat", f"@alice+{p}").seq) for p in peers}
    assert len(slots) > 2  # the lists and rooms are spread: the read crosses shards
    expected = [{"with": p, "seq": 2} for p in reversed(peers)]
    wait_until(
        lambda: [{"with": d["with"], "seq": d["seq"]} for d in alice.call("list_directs", {})["directs"]] == expected,
        what="alice's list across shards",
    )
    assert [(d["with"], d["seq"]) for d in bob.call("list_directs", {})["directs"]] == [("alice", 2)]
    rc.close()
    alice.close()
    bob.close()


def test_a_scripts_first_call_on_each_shard_costs_no_topology_refresh(cluster) -> None:
    """NOSCRIPT comes with every script's first call on every shard. A refresh there would
    also reconnect every connection the client lent out (redis-py 8), a command's reply
    subscription among them once: the script is loaded and run again, and no more."""
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", cluster[0].port)])
    by_port = rooms_on_every_shard(cluster, per_shard=1)
    keys = [RoomKeys.of("chat", rooms[0]).seq for rooms in by_port.values()]

    def refreshes() -> int:
        stats = [m.client().info("commandstats").get("cmdstat_cluster|slots", {}) for m in cluster]
        return sum(s.get("calls", 0) for s in stats)

    source = "return redis.call('INCR', KEYS[1])"
    script = LuaScript(source, hashlib.sha1(source.encode()).hexdigest())
    before = refreshes()
    assert run_scripts(rc, [(script, [key], []) for key in keys]) == [1, 1, 1]
    assert [rc.get_redis_connection(rc.get_node_from_key(k)).script_exists(script.sha) for k in keys] == [[True]] * 3
    assert refreshes() == before
    rc.close()
