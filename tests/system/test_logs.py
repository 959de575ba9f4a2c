"""Logs of a real node: one line per event, carrying the instance id and the room and sid
where they apply; message text never appears at INFO; LOG_LEVEL is obeyed."""

from __future__ import annotations

import re

from helpers import ChatClient, wait_until

from chat_app.backends.redis.keys import RoomKeys

SECRET = "the-text-of-a-private-message"


def chat_lines(log: str) -> list[str]:
    """The app's own lines (gunicorn's start-up lines have another shape)."""
    return [line for line in log.splitlines() if " instance=" in line and " event=" in line]


def event(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if f" event={name} " in f"{line} "]


def test_one_line_per_event_with_instance_room_and_sid_and_no_message_text(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, LOG_LEVEL="INFO")
    client = ChatClient(node.url, "alice")
    sid = client.sio.get_sid("/")
    client.call("join_room", "lobby")
    assert client.call("send_message", {"room": "lobby", "message": SECRET})["ok"]
    client.call("leave_room", "lobby")
    client.close()
    lines = wait_until(lambda: event(chat_lines(node.log()), "disconnect") and chat_lines(node.log()), what="logs")

    assert all(f"instance={node.instance_id} " in line for line in lines)
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ", line) for line in lines)
    for name in ("join", "leave"):
        [line] = event(lines, name)
        assert "room=lobby " in line + " " and f"sid={sid}" in line, line
    assert not event(lines, "send")  # one line per message is DEBUG: a busy node would write thousands a second
    for name in ("connect", "disconnect"):
        [line] = event(lines, name)
        assert f"sid={sid}" in line
    assert SECRET not in node.log()
    assert not [line for line in lines if " DEBUG " in line]


def test_debug_logs_each_send_without_its_text(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, LOG_LEVEL="DEBUG")
    client = ChatClient(node.url, "alice")
    sid = client.sio.get_sid("/")
    client.call("join_room", "lobby")
    ack = client.call("send_message", {"room": "lobby", "message": SECRET})
    client.close()
    [line] = wait_until(lambda: event(chat_lines(node.log()), "send"), what="the send line")
    assert " DEBUG " in line and "room=lobby " in line and f"sid={sid} " in line and f"id={ack['id']}" in line
    assert SECRET not in node.log()


def test_log_level_warning_silences_info(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, LOG_LEVEL="WARNING")
    client = ChatClient(node.url, "bob")
    client.call("join_room", "lobby")
    client.call("send_message", {"room": "lobby", "message": "hello"})
    # Something worth a WARNING: a payload on the room's channel that is not an envelope.
    redis_server.client().publish(RoomKeys.of("chat", "lobby").channel, b"not an envelope")
    warned = wait_until(lambda: event(chat_lines(node.log()), "bad_payload"), what="the WARNING line")
    assert " WARNING " in warned[0] and f"instance={node.instance_id} " in warned[0], warned
    client.close()
    node.process.terminate()
    node.process.wait(timeout=15)
    lines = chat_lines(node.log())
    assert event(lines, "bad_payload") == warned
    assert not [line for line in lines if " INFO " in line or " DEBUG " in line], node.log()
