"""The bench's Node side (bench/node/): installed from its committed lock with `npm ci`.

The peer server and the official-client generator need node and the pinned packages. The
install runs only when node_modules is missing or was installed from another lock, so a
run after the first costs nothing; a machine without node gets a reason instead of a crash.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

NODE_DIR = Path(__file__).resolve().parent / "node"
STAMP = NODE_DIR / "node_modules" / ".bench-installed-from"
NPM_CI_TIMEOUT_S = 300


def _lock_digest() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((NODE_DIR / name).read_bytes())
    return digest.hexdigest()


def unavailable() -> str | None:
    """None when node and the locked packages are ready (running `npm ci` if needed), else why not."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on the PATH (install Node.js 18 or later with npm)"
    digest = _lock_digest()
    if STAMP.exists() and STAMP.read_text().strip() == digest:
        return None
    print(f"bench/node: installing the locked packages with npm ci (into {NODE_DIR / 'node_modules'})", flush=True)
    args = ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"]
    try:
        done = subprocess.run(args, cwd=NODE_DIR, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"`npm ci` in {NODE_DIR} did not finish in {NPM_CI_TIMEOUT_S} s"
    if done.returncode != 0:
        return f"`npm ci` in {NODE_DIR} failed ({done.returncode}): {(done.stderr or done.stdout)[-1500:]}"
    STAMP.write_text(digest + "\n")
    return None


def versions() -> dict[str, str]:
    """The installed versions of the packages the bench names in its reports, and node's."""
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    names = ("socket.io", "@socket.io/redis-adapter", "redis", "socket.io-client")
    found = {name: lock["packages"].get(f"node_modules/{name}", {}).get("version", "?") for name in names}
    node = shutil.which("node")
    if node:
        found["node"] = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return found
