"""Redis's instructions per message of the send script alone (issue 27 item 4): no nodes and,
unless asked for, no subscribers: no sockets but the one that sends the calls, so a change to
send_batch.lua is measured to a few instructions, run after run.

    python -m bench.script_cost                  # batches of 16 over 20 rooms
    python -m bench.script_cost --batch 1        # a call per message, as at light load

A private Redis runs under callgrind, counting off. The send script's batches (the
publisher's send_many.lua call, send.lua's for `--batch 1`) fill every room's history first
(`--warmup` messages), then counting is on for `--messages` more: Redis's instructions
divided by them. The batches take turns among `--rooms` rooms, as W2's messages do.

    python -m bench.script_cost --shape sequenced   # XADD + PUBLISH a message, no script
    python -m bench.script_cost --shape publish     # PUBLISH alone: the peer's work a message

The two other shapes price what a redesign could reach, on the same calls' count and sizes:
`sequenced` is what Redis would do per message if one node gave each room its seqs and kept
its dedup window in memory (the history's XADD, its trim every 16th seq, the PUBLISH,
pipelined, no Lua); `publish` is the peer's (@socket.io/redis-adapter pipelines a PUBLISH a
message). `--subscribers 2` (W2's two nodes) adds connections that take every room's channel
and drop what they read, so the PUBLISH's fan-out is counted, in each shape alike.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import threading
from pathlib import Path

import redis
from redis.client import PubSub

from chat_app.backends.base import Draft
from chat_app.backends.redis.keys import RoomKeys
from chat_app.backends.redis.scripts import run_scripts
from chat_app.backends.redis.send import SendScript
from chat_app.protocol.wire import envelope_head
from chat_app.settings import Settings

from . import procs
from .callgrind import callgrind_control, totals, valgrind_command

CANDIDATE = "c0ffee0123456789"  # the batch's candidate epoch: used once per room
SERVER_ID = "bench-server"  # as a node's (the master's replication id): the failover check runs


def subscribe(client: redis.Redis, channels: list[str]) -> PubSub:
    """A subscriber that takes `channels` and drops whatever comes, until closed."""
    pubsub = client.pubsub()
    pubsub.subscribe(*channels)

    def drain() -> None:
        with contextlib.suppress(redis.RedisError, OSError, AttributeError):  # closed under it
            for _ in pubsub.listen():
                pass

    threading.Thread(target=drain, daemon=True).start()
    return pubsub


def count(shape: str, batch: int, rooms: int, messages: int, warmup: int, subscribers: int, tmp: Path) -> float:
    out = tmp / "cg"
    out.mkdir()
    server = procs.start_redis(tmp / "redis", prefix=valgrind_command(out), timeout=60)
    listeners: list[PubSub] = []
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        settings = Settings.from_env({}, redis_url=url, instance_id="n1")
        client = redis.Redis.from_url(url)
        script = SendScript(client, settings)
        rooms_keys = [(f"room{r}", RoomKeys.of(settings.key_prefix, f"room{r}")) for r in range(rooms)]
        listeners = [subscribe(client, [k.channel for _, k in rooms_keys]) for _ in range(subscribers)]
        seqs: dict[str, int] = {}  # the sequencing node's, per room
        sent = 0

        def by_script(sends: list[tuple[Draft, RoomKeys]]) -> None:
            if batch == 1:
                call = script.call(*sends[0], CANDIDATE, SERVER_ID)
            else:
                call = script.batch(sends, CANDIDATE, SERVER_ID)
            [result] = run_scripts(client, [call])
            if isinstance(result, Exception):
                raise result

        def by_commands(sends: list[tuple[Draft, RoomKeys]]) -> None:
            pipe = client.pipeline(transaction=False)
            for d, keys in sends:
                seq = seqs[keys.hist] = seqs.get(keys.hist, 0) + 1
                head = envelope_head(d.id, d.room, d.sender, d.message, d.timestamp, d.instance_id, d.meta)
                envelope = head + f',"seq":{seq},"epoch":"{CANDIDATE}"}}'.encode()  # as send_batch.lua adds them
                if shape == "sequenced":
                    pipe.execute_command("XADD", keys.hist, seq, "e", envelope)
                    if seq % 16 == 0:
                        pipe.execute_command("XTRIM", keys.hist, "MAXLEN", "~", settings.history_length)
                pipe.execute_command("PUBLISH", keys.channel, envelope)
            pipe.execute()

        def send(n: int) -> None:
            nonlocal sent
            for _ in range(n // batch):
                sends = []
                for _ in range(batch):
                    room, keys = rooms_keys[sent % rooms]
                    sends.append((Draft.new(room, "u1", f"{sent}|{'x' * 40}", "n1"), keys))
                    sent += 1
                (by_script if shape == "script" else by_commands)(sends)

        send(warmup)
        callgrind_control(out, "--zero", str(server.pid))
        callgrind_control(out, "--instr=on", str(server.pid))
        send(messages)
        callgrind_control(out, "--instr=off", str(server.pid))
        callgrind_control(out, "--dump", str(server.pid))
        return totals(out) / (messages // batch * batch)
    finally:
        for pubsub in listeners:
            pubsub.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--messages", type=int, default=1600)
    parser.add_argument("--warmup", type=int, default=2560)
    parser.add_argument("--shape", choices=("script", "sequenced", "publish"), default="script")
    parser.add_argument("--subscribers", type=int, default=0, help="connections taking every room's channel")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind (Debian's valgrind package)")
    with tempfile.TemporaryDirectory(prefix="script-cost-") as tmp:
        per_message = count(args.shape, args.batch, args.rooms, args.messages, args.warmup, args.subscribers, Path(tmp))
    print(
        f"{args.shape}, batches of {args.batch} over {args.rooms} rooms, {args.subscribers} subscribers: "
        f"{per_message:,.0f} Redis instructions per message"
    )


if __name__ == "__main__":
    main()
