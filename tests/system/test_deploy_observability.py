"""Compose's `observability` profile, checked without Docker (no engine runs here, and Grafana
cannot run on these machines): Prometheus's configuration by Debian's promtool, Grafana's
provisioning files parsed and held to what compose mounts and what the dashboard expects."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from helpers import require_program
from processes import ROOT

PROMTOOL = "/usr/bin/promtool"
DEPLOY = ROOT / "deploy"


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def mounts(service: dict) -> dict[str, str]:
    """Container path -> repository path of a service's bind mounts."""
    found = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        found[target] = source.removeprefix("./")
    return found


def test_the_profile_runs_prometheus_and_grafana_only_when_asked() -> None:
    services = compose()["services"]
    profiled = {name for name, s in services.items() if s.get("profiles")}
    assert profiled == {"prometheus", "grafana"}
    assert all(services[name]["profiles"] == ["observability"] for name in profiled)


def test_prometheus_scrapes_every_web_replica_as_chat_app_with_the_alert_rules(tmp_path: Path) -> None:
    require_program(PROMTOOL, "apt-get install prometheus")
    prometheus = compose()["services"]["prometheus"]
    mounted = mounts(prometheus)
    config = yaml.safe_load((ROOT / mounted["/etc/prometheus/prometheus.yml"]).read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert mounted["/etc/prometheus/alerts.yml"] == "deploy/prometheus/alerts.yml"
    [job] = config["scrape_configs"]
    assert job["job_name"] == "chat_app"  # what the rules and the dashboard select
    [sd] = job["dns_sd_configs"]
    web = compose()["services"]["web"]
    assert sd["names"] == ["web"] and sd["port"] == int(web["environment"]["PORT"])
    # promtool, with the rules where the container has them: here, the repository's file.
    local = dict(config, rule_files=[str(DEPLOY / "prometheus" / "alerts.yml")])
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(local))
    result = subprocess.run([PROMTOOL, "check", "config", str(checked)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_the_prometheus_source_and_the_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    mounted = mounts(grafana)
    provisioning = ROOT / mounted["/etc/grafana/provisioning"]
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "chat_app.yml").read_text())
    [provider] = providers["providers"]
    folder = provider["options"]["path"]
    dashboards = {target: source for target, source in mounted.items() if target.startswith(folder + "/")}
    assert dashboards == {f"{folder}/chat_app.json": "deploy/grafana/chat_app.json"}
    board = json.loads((ROOT / "deploy" / "grafana" / "chat_app.json").read_text())
    [variable] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == source["type"]  # the panels' source: the provisioned default
