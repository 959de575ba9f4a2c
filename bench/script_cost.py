"""Redis's instructions per message of the send script alone (issue 27 item 4): no nodes, no
subscribers, no sockets but the one that sends the calls, so a change to send_batch.lua is
measured to a few instructions, run after run.

    python -m bench.script_cost                  # batches of 16 over 20 rooms
    python -m bench.script_cost --batch 1        # a call per message, as at light load

A private Redis runs under callgrind, counting off. The send script's batches (the
publisher's send_many.lua call, send.lua's for `--batch 1`) fill every room's history first
(`--warmup` messages), then counting is on for `--messages` more: Redis's instructions
divided by them. The batches take turns among `--rooms` rooms, as W2's messages do.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import redis

from chat_app.backends.base import Draft
from chat_app.backends.redis.keys import RoomKeys
from chat_app.backends.redis.scripts import run_scripts
from chat_app.backends.redis.send import SendScript
from chat_app.settings import Settings

from . import procs
from .callgrind import callgrind_control, totals, valgrind_command

CANDIDATE = "c0ffee0123456789"  # the batch's candidate epoch: used once per room
SERVER_ID = "bench-server"  # as a node's (the master's replication id): the failover check runs


def count(batch: int, rooms: int, messages: int, warmup: int, tmp: Path) -> float:
    out = tmp / "cg"
    out.mkdir()
    server = procs.start_redis(tmp / "redis", prefix=valgrind_command(out), timeout=60)
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        settings = Settings.from_env({}, redis_url=url, instance_id="n1")
        client = redis.Redis.from_url(url)
        script = SendScript(client, settings)
        rooms_keys = [(f"room{r}", RoomKeys.of(settings.key_prefix, f"room{r}")) for r in range(rooms)]
        sent = 0

        def send(n: int) -> None:
            nonlocal sent
            for _ in range(n // batch):
                sends = []
                for _ in range(batch):
                    room, keys = rooms_keys[sent % rooms]
                    sends.append((Draft.new(room, "u1", f"{sent}|{'x' * 40}", "n1"), keys))
                    sent += 1
                if batch == 1:
                    call = script.call(*sends[0], CANDIDATE, SERVER_ID)
                else:
                    call = script.batch(sends, CANDIDATE, SERVER_ID)
                [result] = run_scripts(client, [call])
                if isinstance(result, Exception):
                    raise result

        send(warmup)
        callgrind_control(out, "--zero", str(server.pid))
        callgrind_control(out, "--instr=on", str(server.pid))
        send(messages)
        callgrind_control(out, "--instr=off", str(server.pid))
        callgrind_control(out, "--dump", str(server.pid))
        return totals(out) / (messages // batch * batch)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--messages", type=int, default=1600)
    parser.add_argument("--warmup", type=int, default=2560)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind (Debian's valgrind package)")
    with tempfile.TemporaryDirectory(prefix="script-cost-") as tmp:
        per_message = count(args.batch, args.rooms, args.messages, args.warmup, Path(tmp))
    print(
        f"send script, batches of {args.batch} over {args.rooms} rooms: "
        f"{per_message:,.0f} Redis instructions per message"
    )


if __name__ == "__main__":
    main()
