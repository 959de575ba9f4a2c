"""What a hostile client can reach around the chat itself (issue 23, the smaller items): the
Origin check, the cost of list_directs and leave_room, the log, what an outage says about
Redis, and the headers the page is served with. Here what needs no node; on real
nodes and a real redis-server: system/test_surface_nodes.py."""

from __future__ import annotations

import logging
import re

import pytest
from helpers import Recorded, wait_until

from chat_app import create_app
from chat_app.http import SECURITY_HEADERS
from chat_app.logsafe import LogThrottle, q
from chat_app.settings import Settings, SettingsError


def test_an_empty_cors_setting_is_unset_and_nothing_names_no_origin() -> None:
    for raw in ("", " ", ",", " , "):
        assert Settings.from_env({"CORS_ALLOWED_ORIGINS": raw}).cors_allowed_origins is None, raw
    assert Settings.from_env({"CORS_ALLOWED_ORIGINS": "https://a, https://b"}).cors_allowed_origins == [
        "https://a",
        "https://b",
    ]
    with pytest.raises(SettingsError, match="CORS_ALLOWED_ORIGINS"):
        Settings(cors_allowed_origins=[])  # python-engineio reads [] as "no Origin check at all"


def test_the_new_limits_have_defaults() -> None:
    s = Settings.from_env({})
    assert (s.list_directs_rate, s.list_directs_burst, s.leave_rate, s.leave_burst) == (1.0, 5, 5.0, 20)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("lobby", "lobby"),
        ("/api/users/x", "/api/users/x"),
        ("hist #1 café", '"hist #1 café"'),
        ("x\n2026-12-06 00:00:00,000 INFO", '"x\\n2026-12-06 00:00:00,000 INFO"'),
        ('a" event=forged b="', '"a\\" event=forged b=\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("\r\x1b[31m", '"\\r\\x1b[31m"'),
        ("line\u2028sep\u202eltr\x85", '"line\\u2028sep\\u202eltr\\x85"'),
        ("", '""'),
    ],
)
def test_a_client_value_is_one_token_on_one_line(value: str, shown: str) -> None:
    assert q(value) == shown
    assert len(q(value).splitlines()) <= 1


def test_a_throttled_kind_logs_its_first_lines_then_says_how_many_it_held_back() -> None:
    logger = logging.getLogger("test_surface.throttle")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    recorded = Recorded()
    logger.addHandler(recorded)
    now = [0.0]
    throttle = LogThrottle(logger, rate=1.0, burst=3, window=0.05, clock=lambda: now[0])
    written = [throttle.log(logging.INFO, "bad", "event=bad n=%d", i) for i in range(10)]
    assert written == [True] * 3 + [False] * 7
    wait_until(lambda: "event=log_suppressed kind=bad suppressed=7" in recorded.lines, timeout=5, what="the summary")
    now[0] += 1.0  # a second later one more passes
    assert throttle.log(logging.INFO, "bad", "event=bad n=%d", 10)
    assert throttle.log(logging.INFO, "other", "event=other")  # each kind has its own bucket
    assert not throttle.log(logging.DEBUG, "bad", "event=bad n=%d", 11)  # below the level: not even counted
    assert recorded.lines == [
        "event=bad n=0",
        "event=bad n=1",
        "event=bad n=2",
        "event=log_suppressed kind=bad suppressed=7",
        "event=bad n=10",
        "event=other",
    ]
    logger.removeHandler(recorded)


def test_the_page_and_its_files_are_served_with_security_headers() -> None:
    app = create_app(Settings.from_env({}, instance_id="headers"), async_mode="threading")
    client = app.test_client()
    for path in ("/", "/static/chat.js", "/static/chat.css", "/static/vendor/socket.io-client/socket.io.min.js"):
        response = client.get(path)
        assert response.status_code == 200, path
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (path, name)
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert SECURITY_HEADERS["X-Content-Type-Options"] == "nosniff"
    page = client.get("/").get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "an inline script would need 'unsafe-inline'"
    assert " style=" not in page and "<style" not in page
    app.extensions["chat_service"].stop()
