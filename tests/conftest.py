from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# tests/support/ holds what the tests share (processes, clients, helpers), imported as top-level
# modules (`from helpers import wait_until`) from every folder: unit/, system/, browser/ and any
# test file still at the top of tests/.
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "support"))
ROOT = TESTS.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from processes import NodeFactory, RedisServer, free_port  # noqa: E402

# One marker per folder, so `pytest -m unit` picks the fast tests without any file naming it:
# unit/ is pure Python (fakeredis at most); browser/ drives Chromium against nodes; system/
# starts redis-server, nodes, PostgreSQL... A test file still at the top of tests/ counts as
# browser when it takes the `browser` fixture, as system otherwise: never as unit.
FOLDER_MARKERS = {"unit": "unit", "browser": "browser", "system": "system"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.path)).resolve().parent
        if folder.parent == TESTS and folder.name in FOLDER_MARKERS:
            item.add_marker(FOLDER_MARKERS[folder.name])
        elif "browser" in getattr(item, "fixturenames", ()):
            item.add_marker("browser")
        else:
            item.add_marker("system")


@pytest.fixture
def redis_server(tmp_path: Path):
    """A redis-server of the test's own, on a free port, in a temporary directory."""
    server = RedisServer(tmp_path / "redis", free_port())
    server.start()
    yield server
    server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()
LOG_TAIL = 60


@pytest.fixture
def nodes(request: pytest.FixtureRequest, tmp_path: Path):
    """Starts nodes exactly as the Procfile's web line does; stops them afterwards. When the
    test failed, each node's last log lines go into the report: CI keeps nothing else."""
    factory = NodeFactory(tmp_path / "nodes")
    yield factory
    factory.stop_all()
    if request.node.stash.get(FAILED, False):
        for node in factory.nodes:
            tail = "\n".join(node.log().splitlines()[-LOG_TAIL:])
            print(f"--- last {LOG_TAIL} log lines of {node.instance_id} ---\n{tail}")


def pytest_report_header(config: pytest.Config) -> str:
    return f"redis-server: {os.popen('redis-server --version').read().strip()}"


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL of the suite's own for the session; each test takes a database of its own."""
    from helpers import require_program
    from postgres import PostgresServer, postgres_bin

    require_program(postgres_bin("initdb"), "apt-get install postgresql")
    server = PostgresServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def database_url(postgres_server) -> str:
    """A fresh database at the archive's latest schema (as the release phase leaves it)."""
    from chat_app.archive.schema import migrate

    url = postgres_server.new_database()
    migrate(url)
    return url
