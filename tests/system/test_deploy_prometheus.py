"""deploy/prometheus/alerts.yml checked by Debian's promtool (.ci/run installs `prometheus`):
the rules parse, and their unit tests on synthetic series (alerts_test.yml) pass. Every
alert's runbook annotation points at an anchor the README really has. The rules loading in
a live Prometheus is tests/system/test_deploy_grafana.py's job."""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml
from helpers import require_program
from processes import ROOT

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    require_program(PROMTOOL, "apt-get install prometheus")
    return subprocess.run([PROMTOOL, *args], check=False, capture_output=True, text=True, timeout=60, cwd=RULES.parent)


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_check_rules_passes() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_severity_summary_and_a_runbook_anchor_in_the_readme() -> None:
    """The README's runbook lines carry `<a id="runbook-…">` anchors; a renamed alert whose
    anchor was not added would send the person paged to nowhere."""
    readme = (ROOT / "README.md").read_text()
    anchors = set(re.findall(r'<a id="(runbook-[a-z0-9-]+)"', readme))
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"], name
        runbook = rule["annotations"]["runbook"]
        assert runbook == f"README.md#runbook-{name.lower()}", (name, runbook)
        assert runbook.split("#", 1)[1] in anchors, f"{name}: README.md has no anchor for {runbook}"


def test_every_alert_has_a_unit_test_that_makes_it_fire() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    missing = {rule["alert"] for rule in alerts()} - fired
    assert not missing, f"alerts never shown firing in alerts_test.yml: {sorted(missing)}"
