"""Rejoins into busy rooms through real nodes and Redis (issue 12): every member that comes
back with `since` gets its ack first, then exactly the messages it missed and what follows,
once each, in seq order.

The storm: a node is SIGKILLed and all its members rejoin the survivors at once, while the
rooms keep receiving. The mixed-fault run: one busy room while Redis connections are killed,
Redis is paused, a node is killed and restarted and its members rejoin, and a node's link to
Redis stalls, resets and is dead for a while."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from helpers import wait_until
from tcpproxy import TcpProxy
from wire import Sender, WireClient, assert_once_in_order

# PING_TIMEOUT: python-engineio's client ends its own connection when it has sent nothing
# for max(ping_interval, ping_timeout) + 5 s; a member that only listens sends pongs alone,
# so on a slow machine, with hundreds of clients reading in this one process, a ping read
# 5 s late cut a member off (the server never closed it). 60 s gives the pongs room.
FAST = {"SEND_RATE": "1000", "SEND_BURST": "1000", "JOIN_RATE": "100", "JOIN_BURST": "100", "PING_TIMEOUT": "60"}
LONG_HISTORY = {**FAST, "HISTORY_LENGTH": "5000"}  # what a node or link misses for seconds stays recoverable


def position(client: WireClient, room: str) -> tuple[int, str]:
    """(last seq, epoch) this client was handed: what it rejoins with."""
    seen = client.room_wire(room)
    epoch = seen[0][1]["epoch"]
    return max(client.seqs(room), default=seen[0][1]["seq"]), epoch


def rejoin_all(members: list[tuple[WireClient, str]], urls: list[str]) -> list[tuple[WireClient, str, int]]:
    """Every member reconnects at once (no jitter) to one of `urls` and rejoins with since."""
    barrier = threading.Barrier(len(members))
    out: list[tuple[WireClient, str, int] | None] = [None] * len(members)
    errors: list[BaseException] = []

    def rejoin(i: int, old: WireClient, room: str) -> None:
        try:
            since, epoch = position(old, room)
            barrier.wait(timeout=30)
            client = WireClient(urls[i % len(urls)], old.username)
            ack = client.join({"room": room, "since": since, "epoch": epoch})
            assert ack["ok"] and ack["recovered"], ack
            out[i] = (client, room, since)
        except BaseException as exc:  # reported below, with the member's name
            errors.append(exc)

    threads = [threading.Thread(target=rejoin, args=(i, c, r)) for i, (c, r) in enumerate(members)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:3]
    return [x for x in out if x is not None]


def behind(members: list[tuple[WireClient, str]], last: dict[str, int]) -> list[str]:
    """Who has not been handed its room's last acked seq yet, and where each stands."""
    out = []
    for client, room in members:
        seqs = client.seqs(room)
        top = max(seqs, default=0)
        if top < last[room]:
            out.append(
                f"{client.username} ({client.sio.sid}, connected={client.sio.connected}):"
                f" {len(seqs)} seqs up to {top} of {last[room]} in {room}"
            )
    return out[:5]


@pytest.fixture
def closing() -> Iterator[list[WireClient]]:
    clients: list[WireClient] = []
    yield clients
    for client in clients:
        client.close()


@pytest.mark.parametrize(
    ("rooms", "members", "rate"),
    [(6, 60, 20.0), (30, 300, 2.0)],
    ids=["60-members-in-6-rooms-at-20-msg-s", "300-members-in-30-rooms-at-2-msg-s"],
)
def test_members_of_a_killed_node_rejoin_busy_rooms_at_once_and_get_each_message_once(
    redis_server, nodes, closing, rooms: int, members: int, rate: float
) -> None:
    """All of a killed node's members come back at once (issue 12's storm, and issue 15's
    at 300 clients): every one recovers exactly what it missed, then follows live."""
    a, b, c = (nodes.start(redis_server.url, **FAST) for _ in range(3))
    names = [f"busy-{i}" for i in range(rooms)]
    senders = [Sender(a.url, room, rate=rate, name=f"s{i}") for i, room in enumerate(names)]
    closing.extend(s.client for s in senders)
    joined = []
    for i in range(members):
        member = WireClient(c.url, f"m{i}")
        member.join({"room": names[i % rooms]})
        joined.append((member, names[i % rooms]))
    for s in senders:
        s.start()
    wait_until(lambda: all(m.seqs(room) for m, room in joined), timeout=30, what="traffic reached C's members")

    nodes.signal(c, signal.SIGKILL)
    started = time.monotonic()
    rejoined = rejoin_all(joined, [a.url, b.url])
    print(f"{len(rejoined)} rejoined in {time.monotonic() - started:.2f}s")
    assert len(rejoined) == members
    closing.extend(client for client, _, _ in rejoined)
    time.sleep(1.5)  # the rooms stay busy after the storm: live traffic follows the acks
    last = {s.room: s.stop() for s in senders}

    # One deadline for all: on a slow machine the last deliveries of 300 rooms' members
    # arrive seconds after the last ack; late is not what this test is about, lost is.
    members = [(client, room) for client, room, _ in rejoined]
    wait_until(
        lambda: not behind(members, last),
        timeout=60,
        interval=0.2,
        what="every member caught up",
        detail=lambda: behind(members, last),
    )
    for client, room, since in rejoined:
        assert_once_in_order(client, room, since + 1, last[room])
    # A node the storm put behind may shed a share of sends (`overloaded`: stored nowhere,
    # so no seq is missing above); nothing else is refused.
    assert all(set(s.failed) <= {"overloaded"} for s in senders), [s.failed[:3] for s in senders]


def test_a_busy_room_under_mixed_faults_hands_every_rejoined_member_each_message_once(
    redis_server, nodes, closing
) -> None:
    proxy = TcpProxy(redis_server.port)
    try:
        a = nodes.start(redis_server.url, **LONG_HISTORY)
        b = nodes.start(redis_server.url, **LONG_HISTORY)
        c = nodes.start(f"redis://127.0.0.1:{proxy.port}/0", **LONG_HISTORY)  # its Redis link can fail
        room = "storm"
        senders = [Sender(url, room, rate=60, name=f"s{i}") for i, url in enumerate((a.url, b.url, a.url))]
        closing.extend(s.client for s in senders)
        stayers = [WireClient(url, f"stay{i}") for i, url in enumerate((a.url, b.url, c.url) * 2)]
        closing.extend(stayers)
        for client in stayers:
            client.join({"room": room})
        for s in senders:
            s.start()
        admin = redis.Redis(port=redis_server.port, socket_timeout=5)

        movers = [WireClient(b.url, f"move{i}") for i in range(6)]
        for client in movers:
            client.join({"room": room})
        wait_until(lambda: all(m.seqs(room) for m in movers), what="traffic reached the movers")

        admin.client_kill_filter(_type="pubsub")  # every node's listener drops and catches up
        time.sleep(0.5)
        admin.client_kill_filter(_type="normal")
        time.sleep(0.5)
        redis_server.pause()
        time.sleep(1.0)
        redis_server.resume()

        nodes.signal(b, signal.SIGKILL)  # b's members rejoin a restarted b and c
        b2 = nodes.start(redis_server.url, PORT=str(b.port), **LONG_HISTORY)
        rejoined = rejoin_all([(m, room) for m in movers], [b2.url, c.url])
        closing.extend(client for client, _, _ in rejoined)

        proxy.go_silent()  # c's link stalls, is reset, then dead for a while
        time.sleep(1.5)
        proxy.come_back()
        time.sleep(0.5)
        proxy.go_dead()
        time.sleep(3)
        proxy.come_back()
        wait_until(lambda: c.health()["status"] == "ok", timeout=15, what="c healthy again")
        time.sleep(1)
        senders[1].client.close()  # b's sender died with b; the other two stop now
        last = max(s.stop() for s in (senders[0], senders[2]))

        kept = [client for client in stayers if client.username not in {"stay1", "stay4"}]  # on b, killed
        members = [(client, room) for client, _, _ in rejoined] + [(client, room) for client in kept]
        tops = {room: last}
        wait_until(
            lambda: not behind(members, tops),
            timeout=30,
            interval=0.2,
            what="every member caught up",
            detail=lambda: behind(members, tops),
        )
        for client, _, since in rejoined:
            assert_once_in_order(client, room, since + 1, last)
        for client in kept:
            seqs = client.seqs(room)
            assert seqs == list(range(seqs[0], last + 1)), f"{client.username}: {len(seqs)} seqs, not once in order"
    finally:
        proxy.close()
