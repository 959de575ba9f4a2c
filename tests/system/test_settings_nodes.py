"""A node started with a bad setting refuses to start, naming it (the settings alone are in
unit/test_protocol_and_settings.py)."""

from __future__ import annotations


def test_a_node_with_a_bad_setting_refuses_to_start(nodes) -> None:
    node = nodes.start(None, wait_healthy=False, PRESENCE_TTL="soon")
    node.process.wait(timeout=30)
    assert node.process.returncode != 0
    assert "PRESENCE_TTL must be a number" in node.log()
