"""The node's log lines: each second's date and time is formatted once, and a line reads
exactly as logging's own formatter writes it, across the turn of a second too."""

from __future__ import annotations

import logging

from chat_app.app import LogFormatter

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def test_a_line_reads_as_loggings_own_through_the_turn_of_a_second() -> None:
    ours, theirs = LogFormatter(FORMAT), logging.Formatter(FORMAT)
    for created in (1_765_000_000.001, 1_765_000_000.999, 1_765_000_001.0, 1_765_000_000.5, 1_765_003_600.25):
        record = logging.LogRecord("chat_app", logging.INFO, "", 0, "event=join room=%s", ("lobby",), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == theirs.format(record)
