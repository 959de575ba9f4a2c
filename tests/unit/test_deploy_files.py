"""docker-compose.yml, Dockerfile and deploy/nginx.conf, checked by reading them: no Docker
engine runs in CI, so this is what keeps them in step with the Procfile."""

from __future__ import annotations

import re
import shlex
from urllib.parse import urlparse

import yaml
from processes import ROOT, procfile_web_command


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def procfile_line(kind: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{kind}:"):
            return line.removeprefix(f"{kind}:").strip()
    raise AssertionError(f"Procfile has no {kind}: line")


def web_services() -> dict[str, dict]:
    """Every service built from this repository is a chat node, but the release phase."""
    services = {
        name: s
        for name, s in compose()["services"].items()
        if "build" in s and " ".join(s["command"]) != procfile_line("release")
    }
    assert services, "docker-compose.yml builds no web service"
    return services


def shell_command(service: dict) -> str:
    """The command the container's shell runs, after compose's own `$$` -> `$` unescaping."""
    command = service["command"]
    if isinstance(command, list):
        assert command[:2] == ["sh", "-c"], command
        command = command[2]
    return command.replace("$$", "$").removeprefix("exec ")


def test_every_web_service_runs_the_procfile_command_against_the_redis_service() -> None:
    services = compose()["services"]
    for name, service in web_services().items():
        assert service["build"] in (".", {"context": "."}), name
        assert shell_command(service) == procfile_web_command(), name
        env = service["environment"]
        url = urlparse(env["REDIS_URL"])
        assert url.scheme == "redis" and url.hostname in services, env["REDIS_URL"]
        assert services[url.hostname]["image"].startswith("redis:")
        assert "PORT" in env
        assert service["depends_on"][url.hostname]["condition"] == "service_healthy"
    assert sum(s.get("deploy", {}).get("replicas", 1) for s in web_services().values()) >= 2


def test_the_release_phase_migrates_the_archive_before_any_node_starts() -> None:
    services = compose()["services"]
    release = [
        name for name, s in services.items() if "build" in s and " ".join(s["command"]) == procfile_line("release")
    ]
    assert release == ["migrate"]
    url = urlparse(services["migrate"]["environment"]["DATABASE_URL"])
    assert url.scheme == "postgresql" and services[url.hostname]["image"].startswith("postgres:")
    for name, web in web_services().items():
        assert web["environment"]["DATABASE_URL"] == services["migrate"]["environment"]["DATABASE_URL"], name
        assert web["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_dockerfile_runs_the_procfile_command() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (.+)$", dockerfile, re.M)
    assert cmd and cmd.group(1) == procfile_web_command()
    assert "pip install -r requirements.txt" in dockerfile
    assert re.search(r"^ENV .*\bPORT=\d+", dockerfile, re.M)


def test_nginx_is_the_one_exposed_port_and_proxies_websockets_to_the_web_nodes() -> None:
    services = compose()["services"]
    exposed = {name: s["ports"] for name, s in services.items() if s.get("ports") and not s.get("profiles")}
    assert list(exposed) == ["nginx"] and len(exposed["nginx"]) == 1
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in services["nginx"]["volumes"]

    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    directives = [line.split("#")[0].strip() for line in conf.splitlines() if line.split("#")[0].strip()]
    upstream = re.search(r"upstream (\w+) \{(.*?)\}", conf, re.S)
    assert upstream, "no upstream block"
    name, body = upstream.group(1), upstream.group(2)
    assert "ip_hash;" in body, "Socket.IO polling needs sticky sessions"
    web_name, web = next(iter(web_services().items()))
    assert f"server {web_name}:{web['environment']['PORT']};" in body
    for expected in (
        f"proxy_pass http://{name};",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header Host $http_host;",
    ):
        assert expected in directives, expected
    upgrade_map = re.search(r"map \$http_upgrade \$connection_upgrade \{(.*?)\}", conf, re.S)
    assert upgrade_map and re.search(r"default\s+upgrade;", upgrade_map.group(1))
    timeout = next(d for d in directives if d.startswith("proxy_read_timeout"))
    assert shlex.split(timeout.rstrip(";"))[1] in {"1h", "3600s", "3600"}, "idle websockets must survive"


def test_readme_documents_scaling_with_compose() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docker compose up --build --scale web=3" in readme
