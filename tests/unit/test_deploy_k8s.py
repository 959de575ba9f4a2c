"""deploy/k8s checked without a cluster: the core kinds against the Kubernetes OpenAPI
schemas bundled in kubernetes-validate (strict: an unknown or misspelt field fails), the
ServiceMonitor against a schema of its own (its CRD's schema is not bundled), and the
values that must agree with the rest of the repository: probes on /healthz, a grace period
longer than gunicorn's graceful stop, the Secret's keys, cookie affinity, the scrape job."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from processes import ROOT

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest version still supported upstream when this was written
GUNICORN_GRACEFUL_TIMEOUT = 30  # gunicorn's default; gunicorn.conf.py does not change it

SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string"},
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "action": {"type": "string"},
                                        "sourceLabels": {"type": "array", "items": {"type": "string"}},
                                        "targetLabel": {"type": "string"},
                                        "replacement": {"type": "string"},
                                        "regex": {"type": "string"},
                                        "separator": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def manifests() -> dict[str, dict[str, Any]]:
    """Every resource of the kustomization, by kind."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            found[doc["kind"]] = doc
    return found


def test_every_manifest_file_is_in_the_kustomization() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_core_kinds_validate_against_the_kubernetes_schemas() -> None:
    resources = manifests()
    assert {"Deployment", "PodDisruptionBudget", "Service", "Ingress", "ServiceMonitor"} <= set(resources)
    for kind, doc in resources.items():
        if kind == "ServiceMonitor":
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_service_monitor_validates_against_its_own_schema() -> None:
    """kubernetes-validate bundles no CRD schemas; this one covers the fields we use."""
    monitor = manifests()["ServiceMonitor"]
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics"
    assert {"targetLabel": "job", "replacement": "chat_app"} in endpoint["relabelings"]


def test_deployment_probes_grace_period_secret_and_selectors_agree() -> None:
    resources = manifests()
    deployment = resources["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > GUNICORN_GRACEFUL_TIMEOUT + pre_stop
    assert "graceful_timeout" not in (ROOT / "gunicorn.conf.py").read_text(), "update GUNICORN_GRACEFUL_TIMEOUT"
    assert container["envFrom"] == [{"secretRef": {"name": "chat-app"}}]
    assert container["resources"]["requests"]["memory"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = resources[kind]["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind
    port = container["ports"][0]
    assert port["name"] == resources["Service"]["spec"]["ports"][0]["targetPort"]
    assert {"name": "PORT", "value": str(port["containerPort"])} in container["env"]


def test_ingress_pins_long_polling_clients_with_a_cookie() -> None:
    annotations = manifests()["Ingress"]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
