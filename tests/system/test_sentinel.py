"""Redis Sentinel: master + replica + three sentinels on loopback, all started here. The
master is killed while messages flow across two nodes; delivery resumes on the promoted
replica. Asynchronous replication may lose the newest acked writes: counted, not hidden."""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import ChatClient, wait_until
from processes import RedisServer, free_port
from streams import SendStream
from test_faults import record

MASTER = "chatmaster"
PASSWORD = "data-secret"  # the master's and replica's requirepass
SENTINEL_PASSWORD = "sentinel-secret"  # the Sentinels' own


class Sentinels:
    def __init__(self, directory: Path, master_port: int, count: int = 3) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.processes: list[subprocess.Popen[bytes]] = []
        for port in self.ports:
            d = directory / f"sentinel-{port}"
            d.mkdir(parents=True)
            conf = d / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                f"requirepass {SENTINEL_PASSWORD}\n"
                f"sentinel sentinel-pass {SENTINEL_PASSWORD}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n"
                f"sentinel auth-pass {MASTER} {PASSWORD}\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 4000\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            log = open(d / "sentinel.log", "ab")
            self.processes.append(subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=log, stderr=log))

    @property
    def setting(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, decode_responses=True, password=SENTINEL_PASSWORD)

    def master_port(self) -> int:
        return int(self.client(self.ports[0]).sentinel_get_master_addr_by_name(MASTER)[1])

    def all_see_replica(self) -> bool:
        try:
            return all(
                self.client(p).sentinel_slaves(MASTER) and len(self.client(p).sentinel_sentinels(MASTER)) >= 2
                for p in self.ports
            )
        except redis.RedisError:
            return False

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, Sentinels]]:
    master = RedisServer(tmp_path / "master", free_port(), password=PASSWORD)
    replica = RedisServer(
        tmp_path / "replica", free_port(), ["--replicaof", "127.0.0.1", str(master.port)], password=PASSWORD
    )
    sentinels: Sentinels | None = None
    try:
        master.start()
        replica.start()
        sentinels = Sentinels(tmp_path, master.port)
        wait_until(sentinels.all_see_replica, timeout=30, interval=0.2, what="sentinels to discover the replica")
        yield master, replica, sentinels
    finally:
        if sentinels is not None:
            sentinels.stop()
        replica.stop()
        master.stop()


def test_failover_resumes_delivery_on_the_promoted_replica(sentinel_setup, nodes, capsys) -> None:
    master, replica, sentinels = sentinel_setup
    env = {"REDIS_SENTINELS": sentinels.setting, "REDIS_SENTINEL_MASTER": MASTER}
    env |= {"REDIS_PASSWORD": PASSWORD, "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD}
    a = nodes.start(None, **env)
    b = nodes.start(None, **env)
    assert a.health()["backend"] == "redis"
    sender, receiver = ChatClient(a.url, "sender"), ChatClient(b.url, "receiver")
    sender.call("join_room", "lobby")
    first_epoch = receiver.call("join_room", "lobby")["epoch"]
    stream = SendStream(sender, "lobby", rate=20).start()
    receiver.wait_for(20)

    master.kill()
    killed = time.monotonic()
    before = len(receiver.received())
    wait_until(lambda: sentinels.master_port() == replica.port, timeout=20, interval=0.2, what="sentinels to fail over")
    promoted = time.monotonic() - killed
    wait_until(
        lambda: any(m["epoch"] != first_epoch for m in receiver.received()[before:]),
        timeout=20,
        what="delivery in the new epoch on the promoted replica",
    )
    recovered = time.monotonic() - killed
    time.sleep(1.0)
    stream.stop(ack_timeout=20)
    # A send is acked on node A when Redis stored it; node B delivers it a moment later.
    acked_new = {a["id"] for a in stream.acks.values() if a["ok"] and a["epoch"] != first_epoch}
    wait_until(
        lambda: acked_new <= {m["id"] for m in receiver.received()},
        timeout=10,
        what="every send acked in the new epoch at the receiver",
        detail=lambda: f"{len(acked_new - {m['id'] for m in receiver.received()})} never arrived",
    )

    got = receiver.received()
    ids = [m["id"] for m in got]
    assert len(ids) == len(set(ids)), "no duplicates across the failover"
    for prev, cur in itertools.pairwise(got):
        if prev["epoch"] == cur["epoch"]:
            assert cur["seq"] > prev["seq"]
    ok_acks = [a for a in stream.acks.values() if a["ok"]]
    ok = {a["id"] for a in ok_acks}
    lost = ok - set(ids)
    assert any(m["epoch"] != first_epoch for m in got), "nodes resynchronised through the new epoch"
    # What asynchronous replication may lose is the old master's newest writes, nothing else:
    # every send acked in the new epoch arrives, every lost one was acked in the old epoch,
    # and a send that failed says so.
    new_epoch = {a["id"] for a in ok_acks if a["epoch"] != first_epoch}
    assert new_epoch, "sends were stored on the promoted replica"
    assert new_epoch <= set(ids), f"{len(new_epoch - set(ids))} sends acked in the new epoch never arrived"
    assert all(a["epoch"] == first_epoch for a in ok_acks if a["id"] in lost)
    assert all(a["error"]["code"] == "unavailable" for a in stream.failed()), stream.failed()
    record(
        "sentinel_failover",
        promoted_s=round(promoted, 3),
        first_delivery_after_kill_s=round(recovered, 3),
        acked_ok=len(ok),
        acked_ok_lost=len(lost),
        unavailable=len(stream.failed()),
    )
    with capsys.disabled():
        print(
            f"\nSentinel failover: promoted after {promoted:.2f}s, delivery back after {recovered:.2f}s, "
            f"{len(lost)} of {len(ok)} acked messages lost, {len(stream.failed())} sends answered unavailable"
        )
