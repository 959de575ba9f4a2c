"""The page's Socket.IO client is the official socket.io-client build, vendored byte for byte
(chat_app/static/vendor/socket.io-client/pin.json records its version, the npm tarball's
sha512 integrity and each file's sha256), and scripts/vendor_socketio_client.py refuses a
tarball or a file that does not match. No network: the script's npm is played by the test."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import re
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest
import requests
from processes import ROOT

VENDOR = ROOT / "chat_app" / "static" / "vendor" / "socket.io-client"
URL_PATH = "/static/vendor/socket.io-client/socket.io.min.js"


SCRIPT = ROOT / "scripts" / "vendor_socketio_client.py"


def load_script() -> ModuleType:
    """scripts/ is not a package: load the file as the module it is (dataclasses need it listed)."""
    spec = importlib.util.spec_from_file_location("vendor_socketio_client", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_served_client_is_the_pinned_build_and_its_license_is_beside_it(nodes) -> None:
    pin = json.loads((VENDOR / "pin.json").read_text())
    assert pin["package"] == "socket.io-client"
    assert re.fullmatch(r"4\.8\.\d+", pin["version"]), "an exact 4.8 version"
    assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", pin["integrity"])
    node = nodes.start(None)

    page = requests.get(f"{node.url}/", timeout=5).text
    scripts = re.findall(r'<script src="([^"]+)"', page)
    assert scripts == [URL_PATH, "/static/chat.js"], "the page loads the vendored client and nothing else"
    served = requests.get(f"{node.url}{URL_PATH}", timeout=5)
    assert served.status_code == 200
    assert sha256(served.content) == pin["files"]["socket.io.min.js"]["sha256"]
    assert served.content == (VENDOR / "socket.io.min.js").read_bytes()
    assert served.content.startswith(f"/*!\n * Socket.IO v{pin['version']}\n".encode())

    license_file = (VENDOR / "LICENSE").read_bytes()
    assert sha256(license_file) == pin["files"]["LICENSE"]["sha256"]
    assert b"The MIT License" in license_file and b"Socket.IO contributors" in license_file
    assert requests.get(f"{node.url}/static/vendor/socket.io-client/LICENSE", timeout=5).content == license_file
    assert requests.get(f"{node.url}/static/sio.js", timeout=5).status_code == 404  # the hand-written one is gone


class FakeNpm:
    """`npm pack` writes a tarball made here; `npm view` answers its integrity."""

    def __init__(self, version: str, files: dict[str, bytes]) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        self.tarball = buffer.getvalue()
        self.version = version
        self.calls: list[tuple[str, ...]] = []

    def integrity(self) -> str:
        return "sha512-" + base64.b64encode(hashlib.sha512(self.tarball).digest()).decode()

    def __call__(self, *args: str, cwd: Path | None = None) -> str:
        self.calls.append(args)
        if args[0] == "view":
            return json.dumps(self.integrity())
        assert args[0] == "pack" and args[1] == f"socket.io-client@{self.version}"
        destination = Path(args[args.index("--pack-destination") + 1])
        (destination / f"socket.io-client-{self.version}.tgz").write_bytes(self.tarball)
        return ""


@pytest.fixture
def script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = load_script()
    monkeypatch.setattr(module, "VENDOR", tmp_path / "vendor")
    monkeypatch.setattr(module, "PIN", tmp_path / "vendor" / "pin.json")
    return module


def build(version: str, body: bytes = b"!function(){}") -> dict[str, bytes]:
    js = f"/*!\n * Socket.IO v{version}\n */\n".encode() + body
    return {"package/dist/socket.io.min.js": js, "package/LICENSE": b"The MIT License (MIT)\n"}


def test_the_refresh_script_pins_verifies_and_refuses_what_does_not_match(script, monkeypatch) -> None:
    npm = FakeNpm("9.9.1", build("9.9.1"))
    monkeypatch.setattr(script, "npm", npm)
    pin = script.PIN

    assert script.main(["--version", "9.9.1"]) == 0  # a new pin: the registry's integrity is asked
    assert npm.calls[0][:2] == ("view", "socket.io-client@9.9.1")
    recorded = json.loads(pin.read_text())
    assert recorded["integrity"] == npm.integrity()
    js = (script.VENDOR / "socket.io.min.js").read_bytes()
    assert recorded["files"]["socket.io.min.js"]["sha256"] == sha256(js)
    assert script.main(["--check"]) == 0

    # The registry now serves a different tarball under the same version: refused, nothing written.
    monkeypatch.setattr(script, "npm", FakeNpm("9.9.1", build("9.9.1", b"!function(){evil()}")))
    assert script.main([]) == 1
    assert script.main(["--check"]) == 1
    assert (script.VENDOR / "socket.io.min.js").read_bytes() == js and json.loads(pin.read_text()) == recorded

    # The tarball matches its integrity but the file is not the one pin.json recorded.
    other = FakeNpm("9.9.1", build("9.9.1", b"!function(){other()}"))
    monkeypatch.setattr(script, "npm", other)
    pin.write_text(json.dumps({**recorded, "integrity": other.integrity()}))
    assert script.main([]) == 1
    assert (script.VENDOR / "socket.io.min.js").read_bytes() == js

    # A tampered vendored file is found by --check and restored by a refresh.
    pin.write_text(json.dumps(recorded))
    monkeypatch.setattr(script, "npm", npm)
    (script.VENDOR / "socket.io.min.js").write_bytes(js + b"//x")
    assert script.main(["--check"]) == 1
    assert script.main([]) == 0
    assert (script.VENDOR / "socket.io.min.js").read_bytes() == js

    # Not an exact version, or a build whose banner names another version: refused.
    assert script.main(["--version", "9.9"]) == 1
    monkeypatch.setattr(script, "npm", FakeNpm("9.9.2", build("9.9.1")))
    assert script.main(["--version", "9.9.2"]) == 1
    assert json.loads(pin.read_text()) == recorded
