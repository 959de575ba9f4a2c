"""Vendor the official socket.io-client browser build into chat_app/static/vendor/.

The page loads no CDN, so the build lives in the repo. This script is the only way it
changes: it runs `npm pack socket.io-client@<version>`, checks the tarball against the npm
registry's `dist.integrity` (sha512) and the extracted files against the sha256 recorded in
`pin.json`, then writes the files. tests/system/test_vendored_client.py checks, without the
network, that what a node serves is byte for byte the recorded build.

    python scripts/vendor_socketio_client.py            # refetch the pinned version, verify, rewrite
    python scripts/vendor_socketio_client.py --check    # verify only; exit 1 if the repo differs
    python scripts/vendor_socketio_client.py --version 4.8.5   # pin a new version (asks the registry)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "socket.io-client"
VENDOR = Path(__file__).resolve().parent.parent / "chat_app" / "static" / "vendor" / PACKAGE
PIN = VENDOR / "pin.json"
# vendored name -> path inside the npm tarball
FILES = {"socket.io.min.js": "package/dist/socket.io.min.js", "LICENSE": "package/LICENSE"}
VERSION_RULE = re.compile(r"^\d+\.\d+\.\d+$")

log = logging.getLogger("vendor_socketio_client")


class VendorError(Exception):
    """A check failed: nothing was written."""


@dataclass(frozen=True)
class Pin:
    version: str
    integrity: str  # the registry's dist.integrity of the tarball: "sha512-<base64>"
    sha256: dict[str, str]  # vendored file name -> hex sha256

    @classmethod
    def load(cls, path: Path) -> Pin:
        data = json.loads(path.read_text())
        return cls(data["version"], data["integrity"], {name: f["sha256"] for name, f in data["files"].items()})

    def dump(self, path: Path) -> None:
        files = {name: {"from": FILES[name], "sha256": self.sha256[name]} for name in FILES}
        body = {"package": PACKAGE, "version": self.version, "integrity": self.integrity, "files": files}
        path.write_text(json.dumps(body, indent=2) + "\n")


def sha512_integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def npm(*args: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(["npm", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=300)
    except FileNotFoundError as exc:
        raise VendorError("npm is not installed (apt-get install npm)") from exc
    except subprocess.CalledProcessError as exc:
        raise VendorError(f"npm {' '.join(args)} failed: {exc.stderr.strip()}") from exc
    return done.stdout


def registry_integrity(version: str) -> str:
    answer = json.loads(npm("view", f"{PACKAGE}@{version}", "dist.integrity", "--json") or "null")
    if not isinstance(answer, str) or not answer.startswith("sha512-"):
        raise VendorError(f"the registry gave no sha512 integrity for {PACKAGE}@{version}: {answer!r}")
    return answer


def fetch(version: str, integrity: str) -> dict[str, bytes]:
    """The vendored files out of the npm tarball, once its sha512 matches `integrity`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        npm("pack", f"{PACKAGE}@{version}", "--pack-destination", str(out), "--silent")
        (tarball,) = out.glob("*.tgz")
        got = sha512_integrity(tarball.read_bytes())
        if got != integrity:
            raise VendorError(f"tarball integrity mismatch for {PACKAGE}@{version}: expected {integrity}, got {got}")
        with tarfile.open(tarball) as tar:
            files = {}
            for name, member in FILES.items():
                handle = tar.extractfile(member)
                if handle is None:
                    raise VendorError(f"{member} is missing from {tarball.name}")
                files[name] = handle.read()
    banner = f"Socket.IO v{version}".encode()
    if banner not in files["socket.io.min.js"][:200]:
        raise VendorError(f"socket.io.min.js does not start with the banner {banner.decode()!r}")
    return files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(version: str | None, check: bool) -> int:
    pinned = Pin.load(PIN) if PIN.exists() else None
    if version is None:
        if pinned is None:
            raise VendorError(f"{PIN} is missing: pass --version")
        version = pinned.version
    if not VERSION_RULE.match(version):
        raise VendorError(f"not an exact version: {version!r}")
    same_pin = pinned is not None and pinned.version == version
    integrity = pinned.integrity if same_pin and pinned else registry_integrity(version)
    files = fetch(version, integrity)
    hashes = {name: sha256(data) for name, data in files.items()}
    if same_pin and pinned and hashes != pinned.sha256:
        raise VendorError(f"files differ from pin.json's sha256: {hashes} != {pinned.sha256}")
    stale = [
        name for name, data in files.items() if not (VENDOR / name).exists() or (VENDOR / name).read_bytes() != data
    ]
    if check:
        if stale or not same_pin:
            log.error("event=check result=differs version=%s files=%s", version, ",".join(stale) or "pin")
            return 1
        log.info("event=check result=ok version=%s sha256=%s", version, hashes["socket.io.min.js"])
        return 0
    VENDOR.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (VENDOR / name).write_bytes(data)
    Pin(version, integrity, hashes).dump(PIN)
    log.info(
        "event=vendored version=%s changed=%s sha256=%s", version, ",".join(stale) or "-", hashes["socket.io.min.js"]
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", help="exact version to pin (default: the one in pin.json)")
    parser.add_argument("--check", action="store_true", help="verify the vendored files; write nothing")
    args = parser.parse_args(argv)
    try:
        return run(args.version, args.check)
    except VendorError as exc:
        log.error("event=failed reason=%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
