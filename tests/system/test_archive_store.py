"""The archive's database side on a PostgreSQL of the suite's own: migrations, idempotent
writes, pages, search, retention and erasure."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from chat_app.archive import webhook_outbox
from chat_app.archive.schema import LATEST, SchemaError, check, current_version, migrate
from chat_app.archive.store import Archived, ArchiveStore
from chat_app.archive.webhook_outbox import WebhookOutbox
from chat_app.protocol import Envelope, envelope_head


def message(room: str, seq: int, text: str, sender: str = "alice", epoch: str = "e1", age: float = 0) -> Archived:
    sent = datetime.now(UTC) - timedelta(seconds=age)
    env = Envelope(f"id{room}{seq}", room, sender, text, int(sent.timestamp() * 1000), seq, epoch, "n1")
    head = envelope_head(env.id, room, sender, text, env.timestamp, "n1").decode()
    return Archived.of(env, head + f',"seq":{seq},"epoch":"{epoch}"}}')  # send.lua's form


@pytest.fixture
def store(database_url):
    s = ArchiveStore(database_url, 2)
    s.open()
    yield s
    s.close()


def test_migrations_from_empty_and_from_the_previous_schema(postgres_server) -> None:
    url = postgres_server.new_database()
    with psycopg.connect(url) as conn:
        assert current_version(conn) == 0
        with pytest.raises(SchemaError, match=r"run `python -m chat_app\.archive migrate`"):
            check(conn)
    assert migrate(url, target=1) == [1]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO messages VALUES ('r', 'e', 1, 'i', 'alice', 'kept across a migration', now(), '{}')")
    assert migrate(url) == list(range(2, LATEST + 1))
    assert migrate(url) == []  # idempotent: a second release phase changes nothing
    with psycopg.connect(url) as conn:
        check(conn)
        found = conn.execute("SELECT body FROM messages WHERE search @@ websearch_to_tsquery('simple', 'migration')")
        assert found.fetchall() == [("kept across a migration",)]
        conn.execute("UPDATE chat_schema_version SET version = %s", (LATEST + 1,))
        with pytest.raises(SchemaError, match="newer than this release"):
            check(conn)


def test_a_batch_written_twice_is_stored_once(store) -> None:
    batch = [message("r", seq, f"m{seq}") for seq in range(1, 11)]
    assert store.write(batch) == 10
    assert store.write([*batch[5:], message("r", 11, "m11")]) == 1
    assert len(store.page("r", None, 100)) == 11


def test_pages_go_back_by_seq(store) -> None:
    store.write([message("r", seq, f"m{seq}") for seq in range(1, 301)])
    page = store.page("r", 101, 50)
    assert [int(p.split('"seq":')[1].split(",")[0]) for p in page] == list(range(51, 101))


def test_search_finds_words_in_one_room_newest_first(store) -> None:
    store.write(
        [
            message("a", 1, "Deploy at noon"),
            message("a", 2, "lunch?"),
            message("a", 3, "the deploy failed"),
            message("b", 1, "deploy elsewhere"),
        ]
    )
    found = store.search("a", "deploy", 10)
    assert [f.split('"message":"')[1].split('"')[0] for f in found] == ["the deploy failed", "Deploy at noon"]
    assert store.search("a", '"deploy failed"', 10) and not store.search("a", "-deploy lunch deploy", 10)


def test_retention_deletes_only_what_is_older(store) -> None:
    store.write([message("r", 1, "old", age=3 * 86400), message("r", 2, "new")])
    assert store.expire(2) == 1
    assert store.expire(2) == 0
    assert len(store.page("r", None, 10)) == 1


def test_erasure_deletes_and_keeps_late_arrivals_out(store) -> None:
    store.write([message("r", 1, "mine", sender="eve"), message("r", 2, "theirs", sender="bob")])
    assert store.erase("eve") == [("r", 1, "idr1")]
    late = message("r", 3, "still in the outbox", sender="eve", age=1)
    assert store.write([late]) == 0  # sent before the erasure, archived after: refused
    assert len(store.page("r", None, 10)) == 1


def test_a_row_the_database_refuses_is_dropped_alone_not_the_batch_behind_it() -> None:
    """A value PostgreSQL cannot hold fails the batch's one statement; the writer then stores
    the messages one by one and drops (counts) only the one still refused."""
    from chat_app.archive.writer import ArchiveWriter
    from chat_app.settings import Settings

    class Store:
        def __init__(self) -> None:
            self.stored: list[int] = []

        def write(self, batch: list[Archived], events: object = ()) -> int:
            if any(m.body == "poison" for m in batch):
                raise psycopg.errors.DataError("invalid byte sequence")
            self.stored += [m.seq for m in batch]
            return len(batch)

    store = Store()
    writer = ArchiveWriter(None, store, Settings(redis_url="redis://x", database_url="postgresql://x"))  # type: ignore[arg-type]
    batch = [message("r", 1, "a"), message("r", 2, "poison"), message("r", 3, "c")]
    assert writer._store_each(batch) == 2
    assert store.stored == [1, 3] and writer.stats.rejected == 1


def test_webhook_outbox_from_the_previous_schema_and_one_event_per_message(postgres_server) -> None:
    url = postgres_server.new_database()
    assert migrate(url, target=2) == [1, 2]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO messages VALUES ('r', 'e', 1, 'i', 'alice', 'before webhooks', now(), '{}')")
    assert migrate(url, target=3) == [3]
    assert migrate(url) == [4]  # rooms' and members' events' order (pos): none for messages
    s = ArchiveStore(url, 2, webhooks=True)
    s.open()
    try:
        batch = [message("w", seq, f"m{seq}") for seq in range(1, 6)]
        assert s.write(batch) == 5
        assert s.write([*batch[2:], message("w", 6, "m6")]) == 1  # a retried batch: no second event
        s.write([message("w", 7, "bob's", sender="bob")])
        assert [row[2] for row in s.erase("bob")] == ["idw7"]
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT webhook_id, type, seq, body FROM webhook_outbox ORDER BY id").fetchall()
    finally:
        s.close()
    assert [(w, t, seq) for w, t, seq, _ in rows] == [
        *((f"msg_idw{n}_created", "message.created", n) for n in range(1, 8)),
        ("msg_idw7_deleted", "message.deleted", 7),
    ]
    created = json.loads(rows[0][3])
    assert created["type"] == "message.created" and created["data"]["message"] == "m1"
    assert "v" not in created["data"] and "kind" not in created["data"]  # as members receive it
    assert json.loads(rows[-1][3])["data"] == {"room": "w", "id": "idw7"}


def test_webhooks_wait_for_the_message_before_them_or_gap_wait(database_url) -> None:
    """Two nodes' writers commit in whatever order they finish: seq 3 archived before seq 2
    is not sent until seq 2 is (then both, in order), and seq 5 whose seq 4 never comes goes
    once it has waited GAP_WAIT."""
    s = ArchiveStore(database_url, 2, webhooks=True)
    s.open()
    outbox = WebhookOutbox(s)

    def claim() -> list[str]:
        events = outbox.claim(rooms=10, per_room=10, lease=30)
        for event in events:
            outbox.delivered(event.id)
        return [event.webhook_id for event in events]

    try:
        s.write([message("g", 1, "one"), message("g", 3, "three")])
        assert claim() == ["msg_idg1_created"]
        assert claim() == []  # seq 3 waits for seq 2
        s.write([message("g", 2, "two")])
        assert claim() == ["msg_idg2_created", "msg_idg3_created"]
        s.write([message("g", 5, "five")])
        assert claim() == []
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE webhook_outbox SET created_at = now() - make_interval(secs => %s)",
                (webhook_outbox.GAP_WAIT + 1,),
            )
        assert claim() == ["msg_idg5_created"]
    finally:
        s.close()
