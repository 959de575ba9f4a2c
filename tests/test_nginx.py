"""deploy/nginx.conf run for real (Debian's nginx; .ci/run installs it) in front of two
nodes: websocket and long-polling clients both get through, the browser-style Origin check
passes, and a message crosses between them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import socketio
from helpers import require_program, wait_until
from processes import ROOT, free_port

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


class Recorder:
    def __init__(self, url: str, name: str, transport: str) -> None:
        self.sio = socketio.Client(reconnection=False)
        self.got: list[dict] = []
        self.sio.on("broadcast_message", self.got.append)
        # A browser on the page served through nginx sends Origin: <nginx's address>, and the
        # server only accepts its own origin. websocket-client sends that Origin by itself.
        headers = {"Origin": url} if transport == "polling" else {}
        self.sio.connect(url, transports=[transport], auth={"username": name}, headers=headers)

    def call(self, event: str, data: object) -> dict:
        return self.sio.call(event, data, timeout=10)


def test_websocket_and_polling_clients_through_nginx(nginx) -> None:
    ws = Recorder(nginx, "wendy", "websocket")
    poll = Recorder(nginx, "paul", "polling")  # needs every request on one node: ip_hash
    try:
        assert ws.sio.transport() == "websocket" and poll.sio.transport() == "polling"
        assert ws.call("join_room", "lobby")["ok"]
        assert poll.call("join_room", "lobby")["members"] == ["paul", "wendy"]
        for i in range(5):  # several polling round trips, each must reach the same node
            assert poll.call("send_message", {"room": "lobby", "message": f"from polling {i}"})["ok"]
        assert ws.call("send_message", {"room": "lobby", "message": "from websocket"})["ok"]
        wait_until(lambda: len(ws.got) == 6 and len(poll.got) == 6, what="both got all six")
        assert [m["message"] for m in poll.got] == [f"from polling {i}" for i in range(5)] + ["from websocket"]
        page = requests.get(f"{nginx}/", timeout=5)
        assert page.status_code == 200 and "socket.io.min.js" in page.text
    finally:
        ws.sio.disconnect()
        poll.sio.disconnect()
