"""The OpenAPI document (issue 28, item 1): the committed copy is what the code generates,
it names exactly the routes Flask has, it is served without a key, and schemathesis, run
against a live node (Redis and the archive), finds no 5xx, no answer off its schema and no
undocumented status."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import requests
from helpers import wait_until
from processes import ROOT

from chat_app import create_app
from chat_app.openapi import OPENAPI_PATH, VERSION, document, render
from chat_app.protocol.errors import ChatError, ErrorCode
from chat_app.protocol.requests import SEQ_MAX, HistoryQuery, HistoryRequest, SearchQuery, SearchRequest, parse
from chat_app.settings import Settings

COMMITTED = ROOT / "docs" / "openapi.json"
KEY = "an-api-key-of-at-least-thirty-two-bytes!"
DOCUMENTED_PREFIXES = ("/api/", "/healthz", "/metrics")
FAST = {"SEND_RATE": "1000", "SEND_BURST": "1000", "JOIN_RATE": "100", "JOIN_BURST": "100"}
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "ignored_auth",
    "unsupported_method",
]
MAX_EXAMPLES = 25
MAX_SECONDS = 35  # schemathesis's own budget; the subprocess is cut at twice that
# One worker: CPython 3.11.7's ast.parse (hypothesis describes its lambdas with it) fails with
# "AST constructor recursion depth mismatch" when two threads parse at once (fixed in 3.11.8).


def flask_routes() -> set[tuple[str, str]]:
    """(method, path in OpenAPI's spelling) of every documented-kind route Flask has."""
    app = create_app(Settings.from_env({}, instance_id="openapi"), async_mode="threading")
    routes = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(DOCUMENTED_PREFIXES):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes |= {(m.lower(), path) for m in rule.methods or () if m not in {"HEAD", "OPTIONS"}}
    return routes


def test_committed_document_is_what_the_code_generates() -> None:
    assert COMMITTED.read_text() == render(), "regenerate: python -m chat_app.openapi > docs/openapi.json"


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    documented = {(m, p) for p, item in document()["paths"].items() for m in item}
    routes = flask_routes()
    assert routes - documented == set(), "Flask routes missing from the document"
    assert documented - routes == set(), "the document names routes Flask does not have"


def test_every_link_names_an_operation_and_its_parameters() -> None:
    operations = {op["operationId"]: op for item in document()["paths"].values() for op in item.values()}
    for op in operations.values():
        for answer in op["responses"].values():
            for link in answer.get("links", {}).values():
                target = operations[link["operationId"]]
                assert set(link["parameters"]) <= {p["name"] for p in target.get("parameters", ())}


def test_what_the_fuzzer_found_is_bad_input_now() -> None:
    """A `before` past any seq was a 503 (Redis refused the number); a search with a NUL was a
    500 (PostgreSQL's text holds none): both are 400 invalid_payload, socket events too."""
    for model, payload in (
        (HistoryQuery, {"before": str(SEQ_MAX + 1)}),
        (HistoryRequest, {"room": "r", "before": 10**27}),
        (SearchQuery, {"q": "a\x00b"}),
        (SearchRequest, {"room": "r", "q": "\x00"}),
    ):
        with pytest.raises(ChatError) as refused:
            parse(model, payload)
        assert refused.value.code is ErrorCode.INVALID_PAYLOAD
    assert parse(HistoryQuery, {"before": str(SEQ_MAX)}).before == SEQ_MAX


def test_document_version_is_the_project_version() -> None:
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == VERSION


def test_document_is_served_without_a_key_and_states_the_error_shape_and_auth() -> None:
    app = create_app(Settings.from_env({"API_KEY": KEY}, instance_id="openapi"), async_mode="threading")
    served = app.test_client().get(OPENAPI_PATH)
    assert served.status_code == 200 and served.mimetype == "application/json"
    doc = served.get_json()
    assert doc == document() and doc["openapi"] == "3.1.0"
    codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
    assert {"invalid_room", "unauthorized", "no_archive", "not_found"} <= set(codes)
    assert doc["components"]["schemas"]["ErrorAnswer"]["required"] == ["ok", "error"]
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "API_KEY, as `Authorization: Bearer <API_KEY>`, compared in constant time",
    }
    post = doc["paths"]["/api/rooms/{room}/messages"]["post"]
    assert post["security"] == [{"bearerAuth": []}]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PostMessageBody"
    }
    body = doc["components"]["schemas"]["PostMessageBody"]
    assert body["required"] == ["message"] and "room" not in body["properties"]  # the path gives it
    assert {"200", "400", "401", "403", "404", "500", "503"} <= set(post["responses"])
    assert doc["paths"]["/api/rooms/{room}"]["get"]["security"] == [{}, {"bearerAuth": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []


def test_a_method_a_route_lacks_is_a_405_with_allow() -> None:
    """Found by schemathesis: the JSON 405 dropped Allow, and a GET of the POST-only messages
    route was read as the open route of a room named `<room>/messages` (400 invalid_room)."""
    client = create_app(
        Settings.from_env({"API_KEY": KEY}, instance_id="openapi"), async_mode="threading"
    ).test_client()
    for method, path, allowed in (("GET", "/api/rooms/orders/messages", "POST"), ("PUT", "/api/rooms", "GET")):
        answer = client.open(path, method=method)
        assert answer.status_code == 405 and allowed in answer.headers["Allow"]
        assert answer.get_json()["error"]["code"] == "not_found"


def test_a_body_of_whitespace_is_not_json() -> None:
    """Found by schemathesis in CI: a body of "\\n" was taken for no body and the call done."""
    client = create_app(
        Settings.from_env({"API_KEY": KEY}, instance_id="openapi"), async_mode="threading"
    ).test_client()
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    answer = client.post("/api/users/alice/disconnect", data="\n", headers=auth)
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "invalid_payload"
    assert client.post("/api/users/alice/disconnect", data="", headers=auth).status_code == 200  # no body: none


def test_schemathesis_finds_nothing_against_a_live_node(redis_server, database_url, nodes, tmp_path: Path) -> None:
    node = nodes.start(redis_server.url, API_KEY=KEY, DATABASE_URL=database_url, **FAST)
    auth = {"Authorization": f"Bearer {KEY}"}
    # Pages and searches find some; PostgreSQL's text holds no NUL, yet a message may.
    for text in ("the parcel shipped", "meet at five", "the parcel is late", "nul \x00 inside"):
        answer = requests.post(f"{node.url}/api/rooms/orders/messages", json={"message": text}, headers=auth, timeout=5)
        assert answer.status_code == 200, answer.text
    served = requests.get(f"{node.url}{OPENAPI_PATH}", timeout=5)
    assert served.status_code == 200 and served.json() == document()

    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{node.url}{OPENAPI_PATH}"]
    command += ["--url", node.url, "--header", f"Authorization: Bearer {KEY}", "--checks", ",".join(CHECKS)]
    command += ["--phases", "examples,coverage,fuzzing,stateful", "--max-examples", str(MAX_EXAMPLES)]
    command += ["--max-time", str(MAX_SECONDS), "--request-timeout", "10", "--workers", "1", "--no-color"]
    command += ["--suppress-health-check", "too_slow,filter_too_much"]
    # One seed in CI, so a run is repeatable; SCHEMATHESIS_SEED explores others.
    command += ["--seed", os.environ.get("SCHEMATHESIS_SEED", "1")]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    started = time.monotonic()
    run = subprocess.run(
        command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=2 * MAX_SECONDS
    )
    (tmp_path / "schemathesis.log").write_text(run.stdout + run.stderr)
    print(run.stdout[-20000:], run.stderr[-5000:], sep="\n")
    print(f"schemathesis took {time.monotonic() - started:.1f} s")
    assert run.returncode == 0, "schemathesis found failures (above)"
    health = requests.get(f"{node.url}/healthz", timeout=5).json()
    assert health["status"] == "ok" and health["archive"]["database_ok"], health
    # What the fuzzer posted reached the archive: no message it sent stuck the writer.
    wait_until(lambda: requests.get(f"{node.url}/healthz", timeout=5).json()["archive"]["backlog"] == 0, timeout=15)
