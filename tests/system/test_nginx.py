"""deploy/nginx.conf run for real (Debian's nginx; .ci/run installs it) in front of two
nodes: websocket and long-polling clients both get through, each to a node of its own, the
browser-style Origin check passes, and a message crosses between them."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import socketio
from helpers import require_program, scrape, wait_until
from processes import ROOT, free_port
from requests.adapters import HTTPAdapter

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def require_nginx() -> None:
    require_program(NGINX, "apt-get install nginx-light")


def local_config(directory: Path, listen: int, upstreams: list[int]) -> Path:
    """deploy/nginx.conf with only its addresses and file locations changed for loopback."""
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    servers = "".join(f"server 127.0.0.1:{port};\n        " for port in upstreams)
    conf, n = re.subn(r"server web:\d+;\n\s*", servers, conf)
    assert n == 1
    conf, n = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen};", conf)
    assert n == 1
    temp = "".join(f"    {kind}_temp_path {directory / kind};\n" for kind in ("client_body", "proxy"))
    conf = conf.replace("http {\n", f"http {{\n    access_log off;\n{temp}", 1)
    path = directory / "nginx.conf"
    path.write_text(conf)
    return path


@pytest.fixture
def nginx(tmp_path: Path, redis_server, nodes):
    require_nginx()
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    port = free_port()
    conf = local_config(tmp_path, port, [a.port, b.port])
    directives = f"daemon off; user root; pid {tmp_path / 'nginx.pid'}; error_log {tmp_path / 'error.log'} info;"
    check = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-g", directives], capture_output=True, check=False
    )
    assert check.returncode == 0, check.stderr.decode()
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(conf), "-g", directives],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until(up, timeout=10, what="nginx answering")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


class SourceAddressAdapter(HTTPAdapter):
    """HTTP from one local address: nginx's ip_hash then sees a client of its own."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, source_address=(self.address, 0), **kwargs)


def session_from(address: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", SourceAddressAdapter(address))
    return session


def addresses_per_node(url: str, instance_ids: set[str]) -> dict[str, str]:
    """A loopback address that nginx sends to each node. ip_hash keys on the first three
    octets of an IPv4 address, so 127.0.0.x are all one client: these differ in the third."""
    found: dict[str, str] = {}
    for k in range(1, 33):
        address = f"127.0.{k}.1"
        found.setdefault(session_from(address).get(f"{url}/healthz", timeout=5).json()["instance_id"], address)
        if set(found) == instance_ids:
            return found
    raise AssertionError(f"ip_hash sent 32 client addresses to {set(found)} only")


class Recorder:
    def __init__(self, url: str, name: str, transport: str, source: str) -> None:
        if transport == "polling":
            options: dict[str, Any] = {"http_session": session_from(source)}
        else:  # the websocket transport connects by itself: hand it a socket from `source`
            parts = urlsplit(url)
            sock = socket.create_connection((parts.hostname, parts.port), timeout=10, source_address=(source, 0))
            options = {"websocket_extra_options": {"socket": sock}}
        self.sio = socketio.Client(reconnection=False, **options)
        self.got: list[dict] = []
        self.sio.on("broadcast_message", self.got.append)
        # A browser on the page served through nginx sends Origin: <nginx's address>, and the
        # server only accepts its own origin. websocket-client sends that Origin by itself.
        headers = {"Origin": url} if transport == "polling" else {}
        self.sio.connect(url, transports=[transport], auth={"username": name}, headers=headers)

    def call(self, event: str, data: object) -> dict:
        return self.sio.call(event, data, timeout=10)


def test_websocket_and_polling_clients_through_nginx(nginx, nodes) -> None:
    """Each client on a node of its own (clients from two addresses), so the message also
    crosses between the two nodes behind nginx."""
    by_node = addresses_per_node(nginx, {n.instance_id for n in nodes.nodes})
    ws_node, poll_node = nodes.nodes
    ws = Recorder(nginx, "wendy", "websocket", by_node[ws_node.instance_id])
    poll = Recorder(nginx, "paul", "polling", by_node[poll_node.instance_id])  # many requests, one node: ip_hash
    try:
        assert ws.sio.transport() == "websocket" and poll.sio.transport() == "polling"
        for node in nodes.nodes:  # asked directly: one client on each
            assert scrape(node.url)["chat_connected_clients"] == 1, node.instance_id
        assert ws.call("join_room", "lobby")["ok"]
        assert poll.call("join_room", "lobby")["members"] == ["paul", "wendy"]
        for i in range(5):  # several polling round trips, each must reach the same node
            assert poll.call("send_message", {"room": "lobby", "message": f"from polling {i}"})["ok"]
        assert ws.call("send_message", {"room": "lobby", "message": "from websocket"})["ok"]
        wait_until(lambda: len(ws.got) == 6 and len(poll.got) == 6, what="both got all six")
        expected = [(f"from polling {i}", poll_node.instance_id) for i in range(5)]
        expected.append(("from websocket", ws_node.instance_id))
        for client in (ws, poll):
            assert [(m["message"], m["instance_id"]) for m in client.got] == expected
        page = requests.get(f"{nginx}/", timeout=5)
        assert page.status_code == 200 and "socket.io.min.js" in page.text
    finally:
        ws.sio.disconnect()
        poll.sio.disconnect()
