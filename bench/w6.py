"""W6: many idle joined connections on ONE node (issue 15), beside the Node peer.

    python -m bench.w6                        # 20,000 connections in 1,000 rooms
    python -m bench.w6 --connections 5000 --servers chat_app

Reports, per server: whether all connected, connect + join time, RSS per connection, and
the node's CPU while the connections sit idle (% of one core over --idle seconds, which
for chat_app spans several heartbeats that rewrite every room's presence).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time

from . import nodejs
from .__main__ import OURS, PEER
from .workloads import LEAN, Member, Server, cluster


def _raise_open_files(wanted: int) -> None:
    """For the generator and, inherited, the nodes it starts: raising the hard limit needs
    root (CAP_SYS_RESOURCE); otherwise the soft one goes as far as the hard one allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, wanted), hard), hard))


async def w6(server: Server, connections: int, rooms: int, idle: float) -> dict[str, float]:
    with cluster(server, 1) as c:
        node = c.nodes[0]
        await asyncio.sleep(1.0)
        rss0 = node.rss()
        members = [Member(node.port, f"idle{i}", i % rooms) for i in range(connections)]
        async with LEAN.idle(members) as joined:
            await asyncio.sleep(2.0)
            rss1 = node.rss()
            cpu0, t0 = node.cpu(), time.monotonic()
            await asyncio.sleep(idle)
            idle_cpu = (node.cpu() - cpu0) / (time.monotonic() - t0)
    return {
        "connections": connections,
        "connect_and_join_s": round(joined.total_s, 2),
        "rss_kib_per_connection": round((rss1 - rss0) / connections / 1024, 1),
        "idle_cpu_percent_of_a_core": round(100 * idle_cpu, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--rooms", type=int, default=1_000)
    parser.add_argument("--idle", type=float, default=25.0, help="seconds of idle CPU measurement")
    parser.add_argument("--servers", default="chat_app,peer")
    args = parser.parse_args()
    _raise_open_files(2 * args.connections + 4096)
    wanted = args.servers.split(",")
    servers = [s for s in (OURS, PEER) if s.label in wanted]
    if PEER in servers and (why := nodejs.unavailable()):
        print(f"peer skipped: {why}")
        servers.remove(PEER)
    for server in servers:
        result = asyncio.run(w6(server, args.connections, args.rooms, args.idle))
        print(server.label, result, flush=True)


if __name__ == "__main__":
    main()
