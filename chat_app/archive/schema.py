"""Versioned schema migrations: numbered SQL files, applied in order, each in a transaction,
under an advisory lock so that two release phases cannot run them at once."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK = 7_324_101  # pg_advisory_lock key: chat_app's migrations


class SchemaError(RuntimeError):
    """The database's schema is not the one this release knows: the message says what to do."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    found = []
    for path in sorted(_MIGRATIONS.glob("*.sql")):
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", path.name)
        if match:
            found.append(Migration(int(match[1]), match[2], path.read_text()))
    return found


LATEST = migrations()[-1].version


def current_version(conn: psycopg.Connection) -> int:
    """0 for a database the archive never touched."""
    exists = conn.execute("SELECT to_regclass('chat_schema_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT version FROM chat_schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(conninfo: str, target: int = LATEST) -> list[int]:
    """Apply every migration above the database's version up to `target`; returns those applied."""
    applied = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS chat_schema_version (version integer NOT NULL)")
            version = current_version(conn)
            if version > LATEST:
                raise SchemaError(f"the database's schema is version {version}, newer than this release's {LATEST}")
            for migration in migrations():
                if version < migration.version <= target:
                    with conn.transaction():
                        conn.execute(migration.sql)  # type: ignore[arg-type] (our own files)
                        conn.execute("DELETE FROM chat_schema_version")
                        conn.execute("INSERT INTO chat_schema_version VALUES (%s)", (migration.version,))
                    log.info("event=archive_migrated version=%d name=%s", migration.version, migration.name)
                    applied.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))
    return applied


def check(conn: psycopg.Connection) -> None:
    """Refuse a schema this release does not know: older (migrate first) or newer (a rollback
    to a release that would misread it)."""
    version = current_version(conn)
    if version < LATEST:
        raise SchemaError(
            f"the archive's schema is version {version}, this release needs {LATEST}: "
            "run `python -m chat_app.archive migrate` (the Procfile's release phase does)"
        )
    if version > LATEST:
        raise SchemaError(f"the archive's schema is version {version}, newer than this release knows ({LATEST})")
