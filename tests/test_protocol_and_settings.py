"""Pure units: the wire envelope, settings from the environment."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat_app.protocol import BadEnvelope, Envelope, decode_wire, envelope_head
from chat_app.settings import Settings, SettingsError

room_chars = st.characters(categories=["L", "Nd"]) | st.sampled_from("_-.:#@")
rooms = st.text(room_chars, min_size=1, max_size=64).filter(
    lambda r: r == __import__("unicodedata").normalize("NFC", r)
)


@given(
    room=rooms,
    sender=st.text(max_size=64),
    message=st.text(min_size=1, max_size=200),
    timestamp=st.integers(min_value=0, max_value=2**53),
    seq=st.integers(min_value=1, max_value=10**12),
)
def test_envelope_round_trips_through_the_publish_script_format(
    room: str, sender: str, message: str, timestamp: int, seq: int
) -> None:
    head = envelope_head("id1", room, sender, message, timestamp, "node-1")
    wire = head + f',"seq":{seq},"epoch":"e1"}}'.encode()  # what send.lua appends
    assert decode_wire(wire, max_bytes=len(wire)) == Envelope(
        "id1", room, sender, message, timestamp, seq, "e1", "node-1"
    )


@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_cleanly(data: bytes) -> None:
    with contextlib.suppress(BadEnvelope):  # anything else would fail the test
        decode_wire(data, max_bytes=10_000)


def test_settings_read_the_environment() -> None:
    s = Settings.from_env(
        {"PRESENCE_TTL": "3", "HEARTBEAT_INTERVAL": "1", "CORS_ALLOWED_ORIGINS": "https://a, https://b"}
    )
    assert (s.presence_ttl, s.heartbeat_interval, s.cors_allowed_origins) == (3.0, 1.0, ["https://a", "https://b"])
    assert s.redis_url is None and s.key_prefix == "chat"
    assert Settings.from_env({"PUBLISH_LINGER": "0"}).publish_linger == 0.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PRESENCE_TTL": "soon"}, "PRESENCE_TTL must be a number"),
        ({"HISTORY_LENGTH": "-5"}, "HISTORY_LENGTH must be greater than 0"),
        ({"PRESENCE_TTL": "5", "HEARTBEAT_INTERVAL": "5"}, "must be shorter than"),
        ({"KEY_PREFIX": "chat*"}, "KEY_PREFIX must not contain"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be"),
        ({"AUTH_SECRET": "short"}, "AUTH_SECRET must be at least 32 bytes"),
        ({"PUBLISH_LINGER": "0.5"}, r"PUBLISH_LINGER must be 0 \(off\) to 0.1 seconds"),
        ({"PUBLISH_LINGER": "-0.001"}, r"PUBLISH_LINGER must be 0 \(off\) to 0.1 seconds"),
    ],
)
def test_bad_settings_are_named_clearly(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_a_node_with_a_bad_setting_refuses_to_start(nodes) -> None:
    node = nodes.start(None, wait_healthy=False, PRESENCE_TTL="soon")
    node.process.wait(timeout=30)
    assert node.process.returncode != 0
    assert "PRESENCE_TTL must be a number" in node.log()
