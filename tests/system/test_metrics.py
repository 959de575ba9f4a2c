"""GET /metrics: Prometheus text from real nodes, counters moved by real traffic."""

from __future__ import annotations

import requests
from helpers import ChatClient, scrape, wait_until
from prometheus_client.parser import text_string_to_metric_families

from chat_app.backends.redis.keys import RoomKeys


def test_metrics_count_a_cross_node_message(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    alice = ChatClient(a.url, "alice")
    bob = ChatClient(b.url, "bob")
    try:
        before_a = scrape(a.url)
        assert before_a["chat_connected_clients"] == 1
        assert before_a["chat_local_rooms"] == 0
        assert before_a["chat_messages_published_total"] == 0
        first = alice.call("join_room", "lobby")
        bob.call("join_room", "lobby")
        for i in range(3):
            assert alice.call("send_message", {"room": "lobby", "message": f"m{i}"})["ok"]
        bob.wait_for(3)
        rejoin = bob.call("join_room", {"room": "lobby", "since": 1, "epoch": first["epoch"]})
        assert rejoin["recovered"] is True
        failed = bob.call("join_room", {"room": "lobby", "since": 1, "epoch": "gone"})
        assert failed["recovered"] is False

        after_a = scrape(a.url)
        assert after_a["chat_local_rooms"] == 1
        assert after_a["chat_connected_clients"] == 1
        assert after_a["chat_messages_published_total"] == 3
        assert after_a["chat_publish_latency_seconds_count"] == 3
        assert after_a["chat_redis_publish_batches_total"] == 3  # one at a time: nothing to wait for
        assert 0 < after_a["chat_publish_latency_seconds_sum"] < 3
        assert after_a["chat_redis_listener_connected"] == 1
        for name in ("chat_redis_reconnects_total", "chat_bad_payloads_total", "chat_rate_limited_total"):
            assert after_a[name] == 0, name
        text = requests.get(f"{a.url}/metrics", timeout=5).text
        chat_samples = [
            sample
            for family in text_string_to_metric_families(text)
            if family.name.startswith("chat_")
            for sample in family.samples
            if not sample.name.endswith("_created")
        ]
        assert chat_samples and all(x.labels.get("instance_id") == a.instance_id for x in chat_samples)
        after_b = wait_until(
            lambda: (s := scrape(b.url))["chat_messages_delivered_total"] == 3 and s, what="B delivered 3"
        )
        assert after_b["chat_messages_published_total"] == 0
        # 3 messages and 3 join acks, each written at once: nothing was queued on an idle socket
        assert after_b["chat_websocket_frames_total{path=direct}"] >= 6
        assert after_b["chat_websocket_frames_total{path=queued}"] == 0
        assert 0 < after_b["chat_websocket_writes_total"] <= after_b["chat_websocket_frames_total{path=direct}"]
        assert after_b["chat_recoveries_total{result=ok}"] == 1
        assert after_b["chat_recoveries_total{result=failed}"] == 1
        assert "chat_gaps_filled_total" in after_b
        # The heartbeat (every 1 s here) reports its round; Redis lost nothing, so it rewrote nothing.
        beats = wait_until(lambda: (s := scrape(a.url))["chat_presence_heartbeats_total"] >= 1 and s, what="a beat")
        assert 0 < beats["chat_presence_heartbeat_seconds"] < 1
        assert beats["chat_presence_heartbeat_duration_seconds_total"] >= beats["chat_presence_heartbeat_seconds"]
        assert beats["chat_presence_rooms_rewritten_total"] == 0
    finally:
        alice.close()
        bob.close()


def test_metrics_count_bad_payloads_and_rate_limits(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, SEND_RATE="0.001", SEND_BURST="1")
    client = ChatClient(node.url, "x")
    try:
        client.call("join_room", "lobby")
        assert client.call("send_message", {"room": "lobby", "message": "one"})["ok"]
        refused = client.call("send_message", {"room": "lobby", "message": "two"})
        assert refused["error"]["code"] == "rate_limited"
        channel = RoomKeys.of("chat", "lobby").channel
        r = redis_server.client()
        wait_until(lambda: r.pubsub_numsub(channel)[0][1] == 1, what="node subscribed to the room")
        r.publish(channel, b"not an envelope")
        samples = wait_until(
            lambda: (s := scrape(node.url))["chat_bad_payloads_total"] == 1 and s, what="bad payload counted"
        )
        assert samples["chat_rate_limited_total"] == 1
    finally:
        client.close()
