"""`python -m chat_app.archive migrate`: the release phase (Procfile `release:`, compose)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .schema import LATEST, SchemaError, migrate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chat_app.archive")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("migrate", help="bring DATABASE_URL's schema up to this release's")
    run.add_argument("--to", type=int, default=LATEST, help="stop at this version (tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    url = os.environ.get("DATABASE_URL", "")
    if not url:  # a deployment without the archive: its release phase must still pass
        print("DATABASE_URL is not set: no archive, nothing to migrate")
        return 0
    try:
        applied = migrate(url, args.to)
    except SchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"schema at version {applied[-1] if applied else 'unchanged'} (this release: {LATEST})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
