"""What the archive's tests share: fast per-connection limits, an API key, reading the table."""

from __future__ import annotations

import psycopg

FAST = {"SEND_RATE": "1000", "SEND_BURST": "1000", "JOIN_RATE": "100", "JOIN_BURST": "100"}
KEY = "k" * 40
AUTH = {"Authorization": f"Bearer {KEY}"}


def archived(url: str, room: str) -> list[tuple[int, str]]:
    """(seq, text) of the room's archived messages, in seq order."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT seq, body FROM messages WHERE room = %s ORDER BY seq", (room,)).fetchall()
    return [(int(seq), body) for seq, body in rows]
