"""A node past capacity refuses a share of sends `overloaded` at once, stores none of them,
delivers every one it accepted and takes sends again as soon as it caught up (issue 14). Here the gauge, the
shedding and the receive loop in this process; on real nodes: system/test_overload_nodes.py."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import gevent
import pytest

from chat_app import create_app, json_codec
from chat_app.load import LoadGauge
from chat_app.protocol import ChatError, ErrorCode, SendRequest
from chat_app.settings import Settings, SettingsError
from chat_app.transport import Transport, lean_websockets
from chat_app.transport.lean_websockets import LeanWebsockets, PacketQueue
from chat_app.transport.shedding import SendShedding

BEHIND = {"code": "overloaded", "message": "behind"}


def ticks(gauge: LoadGauge, late: float, count: int) -> list[float]:
    """The share after each of `count` ticks that came `late` seconds late."""
    shares = []
    for _ in range(count):
        gauge.observe(late)
        shares.append(gauge.share)
    return shares


def test_a_node_on_time_sheds_nothing_and_one_that_stays_behind_sheds_all() -> None:
    gauge = LoadGauge(limit=0.05)
    assert ticks(gauge, 0.01, 100)[-1] == 0 and not gauge.shedding()
    assert not any(gauge.refuses() for _ in range(1000))
    shares = ticks(gauge, 0.3, 10)
    assert shares == sorted(shares) and shares[-1] == 1.0  # grows while the lag lasts
    assert 0 < shares[0] < 1  # a share first, not all at once
    assert all(gauge.refuses() for _ in range(100))
    assert gauge.refused == 100


def test_the_share_grows_with_the_lag_between_the_limit_and_twice_it() -> None:
    gauge = LoadGauge(limit=0.1)
    ticks(gauge, 0.15, 60)  # settles at 1.5x the limit: half the sends
    assert gauge.share == pytest.approx(0.5, abs=0.01)
    refused = sum(gauge.refuses() for _ in range(4000))
    assert 1800 < refused < 2200  # at random, in proportion


def test_shedding_stops_within_a_few_ticks_of_catching_up() -> None:
    gauge = LoadGauge(limit=0.05)
    ticks(gauge, 1.0, 20)
    assert gauge.share == 1.0
    after = ticks(gauge, 0.0, 10)
    assert after[-1] == 0, after
    assert after.index(0) <= 9  # 1 s of lag is forgotten within 9 ticks (0.45 s)


def test_one_late_tick_sheds_only_briefly() -> None:
    """A 400 ms pause (a full garbage collection at 19,000 connections) then ticks on time."""
    gauge = LoadGauge(limit=0.05)
    ticks(gauge, 0.002, 20)
    shares = ticks(gauge, 0.4, 1) + ticks(gauge, 0.002, 10)
    assert sum(1 for s in shares if s) <= 4, shares


def test_limit_zero_never_sheds() -> None:
    gauge = LoadGauge(limit=0.0)
    assert ticks(gauge, 5.0, 20)[-1] == 0 and not gauge.refuses()
    assert Settings.from_env({"OVERLOAD_LAG": "0"}).overload_lag == 0
    with pytest.raises(SettingsError, match="OVERLOAD_LAG"):
        Settings.from_env({"OVERLOAD_LAG": "-1"})


@pytest.fixture
def shedding() -> tuple[SendShedding, list[bool]]:
    state = [True]  # shedding and refusing
    return SendShedding(lambda: state[0], lambda: state[0], BEHIND), state


def test_a_send_is_refused_off_its_frame_with_the_services_answer(shedding) -> None:
    shed, _ = shedding
    answer = shed.answer('217["send_message",{"room":"lobby","message":"hi"}]')
    assert answer is not None and answer.startswith("317[")
    assert json_codec.loads(answer[3:]) == [{"ok": False, "error": BEHIND}]
    # without an ack id: the `error` event the handlers send
    event = shed.answer('2["send_message",{"room":"lobby","message":"hi"}]')
    assert event is not None and event[0] == "2"
    assert json_codec.loads(event[1:]) == ["error", {**BEHIND, "event": "send_message"}]


@pytest.mark.parametrize(
    "text",
    [
        '21["join_room","lobby"]',  # joins, leaves, everything but sends goes its usual way
        '21["typing",{"room":"lobby"}]',
        '21["send_message_later",{}]',
        '2/admin,1["send_message",{}]',  # another namespace
        '31[{"ok":true}]',  # an ack from the client
        "0",
        "",
        b'21["send_message",{}]',  # a binary packet's bytes
    ],
)
def test_anything_but_a_send_is_left_alone(shedding, text: object) -> None:
    shed, _ = shedding
    assert shed.answer(text) is None


def test_nothing_is_refused_while_not_shedding(shedding) -> None:
    shed, state = shedding
    state[0] = False
    assert shed.answer('21["send_message",{"room":"lobby","message":"hi"}]') is None


class LoopServer:
    """What the lean receive loop uses of engine.io's server."""

    ping_interval, ping_timeout, max_http_buffer_size, async_handlers = 25, 20, 1 << 20, False
    logger = logging.getLogger("test")
    reason = SimpleNamespace(TRANSPORT_CLOSE="transport close")

    def __init__(self) -> None:
        self.dispatched: list[str] = []
        self.handlers = {"message": self._on_message}  # the loop calls engine.io's handler itself

    def _on_message(self, sid: str, data: str) -> None:
        self.dispatched.append(data)

    def start_background_task(self, target: Any, *args: Any) -> gevent.Greenlet:
        return gevent.spawn(target, *args)


class LoopSocket:
    def __init__(self, server: LoopServer) -> None:
        self.server, self.sid, self.queue = server, "s1", PacketQueue()
        self.connected = self.upgraded = self.closed = False

    def close(self, **_: Any) -> None:
        self.closed = True


class Frames:
    """A websocket that hands the loop these frames, then the client's close."""

    def __init__(self, frames: list[str]) -> None:
        self.frames, self.sent = frames, []

    def wait(self) -> str | None:
        return self.frames.pop(0) if self.frames else None

    def send(self, frame: str) -> None:
        self.sent.append(frame)

    def close(self) -> None:
        pass


def test_the_receive_loop_answers_a_refused_send_itself_and_dispatches_the_rest(shedding) -> None:
    server, written = LoopServer(), []
    lean = LeanWebsockets(server, 0.05, send=lambda sock, pkt: written.append(pkt.encode()))
    lean.shed = shedding[0].answer
    setattr(server, lean_websockets._ATTR, lean)
    sock = LoopSocket(server)
    frames = ['42["join_room","lobby"]', '427["send_message",{"room":"lobby","message":"hi"}]', '42["typing",{}]']
    lean_websockets._websocket_handler(sock, Frames(frames))  # type: ignore[arg-type]
    assert server.dispatched == ['2["join_room","lobby"]', '2["typing",{}]']  # the send never reached socketio
    assert len(written) == 1 and written[0].startswith("437[")
    assert json_codec.loads(written[0][3:]) == [{"ok": False, "error": BEHIND}]
    assert sock.closed


def test_an_overloaded_service_refuses_sends_and_api_posts_and_stores_none() -> None:
    """Threading mode, memory backend: ChatService refuses itself (no lean receive loop);
    nothing measures the load there, so the share is the test's."""
    key = "k" * 32
    app = create_app(Settings.from_env({}, api_key=key), async_mode="threading")
    service = app.extensions["chat_service"]
    client = app.extensions["chat_socketio"].test_client(app, auth={"username": "ann"})
    assert client.emit("join_room", "lobby", callback=True)["ok"]
    http = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}

    service.load.share = 1.0
    ack = client.emit("send_message", {"room": "lobby", "message": "refused"}, callback=True)
    assert ack["ok"] is False and ack["error"]["code"] == "overloaded"
    posted = http.post("/api/rooms/lobby/messages", json={"sender": "bot", "message": "refused"}, headers=headers)
    assert posted.status_code == 503 and posted.get_json()["error"]["code"] == "overloaded"
    assert service.load.refused == 2
    metrics = http.get("/metrics").get_data(as_text=True)
    assert 'chat_overloaded_total{instance_id="' in metrics and 'reason="behind"} 2.0' in metrics

    service.load.share = 0.0
    ack = client.emit("send_message", {"room": "lobby", "message": "accepted"}, callback=True)
    assert ack["ok"] and ack["seq"] == 1  # nothing refused took a seq
    history = client.emit("join_room", {"room": "lobby", "since": 0}, callback=True)
    assert [m["message"] for m in history["history"]] == ["accepted"]


def test_a_send_drawn_in_the_receive_loop_is_not_drawn_again() -> None:
    """A websocket's sends take their draw in the receive loop; ChatService draws only the
    others (long-polling, API posts), so a share p refuses p of sends, not 1-(1-p)^2."""
    sockets = {"e-ws": SimpleNamespace(upgraded=True), "e-poll": SimpleNamespace(upgraded=False)}
    server = SimpleNamespace(
        eio=SimpleNamespace(sockets=sockets), manager=SimpleNamespace(eio_sid_from_sid=lambda sid, ns: "e-" + sid)
    )
    lean = LeanWebsockets(server, 0.05, send=lambda sock, pkt: None)
    transport = Transport(server, None, None, None, lean)  # type: ignore[arg-type]
    assert not transport.shed_already("ws")  # nothing sheds in the receive loop yet
    transport.shed_sends(SendShedding(lambda: True, lambda: True, BEHIND))
    assert transport.shed_already("ws")
    assert not transport.shed_already("poll") and not transport.shed_already("gone")

    app = create_app(Settings.from_env({}), async_mode="threading")
    service = app.extensions["chat_service"]
    client = app.extensions["chat_socketio"].test_client(app, auth={"username": "ann"})
    assert client.emit("join_room", "lobby", callback=True)["ok"]
    (sid,) = service._connections
    service.load.share = 1.0
    assert service.send(sid, SendRequest(room="lobby", message="drawn already"), shed=True)["seq"] == 1
    with pytest.raises(ChatError) as refused:
        service.send(sid, SendRequest(room="lobby", message="drawn here"))
    assert refused.value.code is ErrorCode.OVERLOADED and service.load.refused == 1


def test_the_send_handler_passes_the_transports_answer_and_asks_only_while_shedding(monkeypatch) -> None:
    """The wiring in socketio_handlers.py: the transport's `shed_already` decides whether ChatService
    draws again, and it is not asked at all while nothing sheds."""
    asked: list[str] = []
    drawn = {"ws": True}

    def shed_already(self: Transport, sid: str) -> bool:
        asked.append(sid)
        return drawn["ws"]

    monkeypatch.setattr(Transport, "shed_already", shed_already)
    app = create_app(Settings.from_env({}), async_mode="threading")
    service = app.extensions["chat_service"]
    client = app.extensions["chat_socketio"].test_client(app, auth={"username": "ann"})
    assert client.emit("join_room", "lobby", callback=True)["ok"]
    send = lambda text: client.emit("send_message", {"room": "lobby", "message": text}, callback=True)  # noqa: E731

    assert send("not shedding")["ok"] and asked == []
    service.load.share = 1.0
    assert send("drawn in the receive loop")["ok"] and service.load.refused == 0
    drawn["ws"] = False
    ack = send("drawn here")
    assert ack["error"]["code"] == "overloaded" and service.load.refused == 1
    assert len(asked) == 2


def test_a_message_handler_that_raises_is_logged_and_the_connection_reads_on(caplog) -> None:
    """The receive loop calls engine.io's message handler itself (issue 27: two frames less
    under every dispatch); a handler's error ends nothing, as in engine.io's run_handler."""
    server = LoopServer()
    lean = LeanWebsockets(server, 0.05, send=None)
    setattr(server, lean_websockets._ATTR, lean)

    def on_message(sid: str, data: str) -> None:
        if "boom" in data:
            raise RuntimeError("handler bug")
        server.dispatched.append(data)

    server.handlers = {"message": on_message}
    sock = LoopSocket(server)
    with caplog.at_level(logging.ERROR, logger="test"):
        lean_websockets._websocket_handler(sock, Frames(['42["boom"]', '42["typing",{}]']))  # type: ignore[arg-type]
    assert server.dispatched == ['2["typing",{}]']
    assert "message handler error" in caplog.text
