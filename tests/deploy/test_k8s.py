"""deploy/k8s/*.yaml: valid against the Kubernetes schema (kubernetes-validate, offline, strict: unknown
fields fail) and consistent with the bridge: probes on its real routes, the grace period covering the
drain, env names it reads, no inline secrets, the PDB / HPA / Service / NetworkPolicy selecting it."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bridge.metrics import METRICS
from bridge.settings import ENV_FIELDS, SECRET_FIELDS
from tests.deploy.bridges import DEPLOY, REPO
from tests.deploy.test_compose import ops_routes

K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30"  # the oldest version still in upstream support when this was written
SECRET_ENV = {env for env, field in ENV_FIELDS.items() if field in SECRET_FIELDS}
SECRET_ENV |= {"BRIDGE_DATABASE_URL", "BRIDGE_REDIS_URL"}  # carry passwords


def documents() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":  # kustomize's own file, not a cluster object
            continue
        found += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def bridge_deployments() -> list[dict[str, Any]]:
    return [d for d in of_kind("Deployment") if d["metadata"]["name"].startswith("ivr-bridge")]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [bridge] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "bridge"]
    return bridge


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(deployment).get("env", [])}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("path_doc", documents(), ids=lambda pd: f"{pd[0].name}:{pd[1]['kind']}")
def test_manifest_is_valid_against_the_kubernetes_schema(path_doc: tuple[Path, dict[str, Any]]) -> None:
    path, doc = path_doc
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def test_the_validator_catches_a_misspelt_field() -> None:
    [deployment] = [d for d in bridge_deployments() if d["metadata"]["name"] == "ivr-bridge"]
    broken = copy.deepcopy(deployment)
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_existing_files() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource


def test_deployments_probes_grace_period_and_prestop_follow_the_drain() -> None:
    routes = ops_routes()
    assert len(bridge_deployments()) == 2  # Twilio side and SIP side
    for deployment in bridge_deployments():
        name = deployment["metadata"]["name"]
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        bridge = container(deployment)
        assert spec["replicas"] >= 2, name
        assert bridge["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert bridge["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {"/readyz", "/healthz"} <= routes
        port_names = {p["name"]: p["containerPort"] for p in bridge["ports"]}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert bridge[probe]["httpGet"]["port"] in port_names, (name, probe)
        env = env_of(deployment)
        assert port_names["http"] == int(env["BRIDGE_PORT"]["value"])
        prestop = bridge["lifecycle"]["preStop"]["exec"]["command"]
        assert prestop[0] == "sleep"
        prestop_s = float(prestop[1])
        drain_s = float(env["BRIDGE_DRAIN_S"]["value"])
        assert pod["terminationGracePeriodSeconds"] >= prestop_s + drain_s + 10, name
        assert bridge["resources"]["requests"]["cpu"]
        assert bridge["resources"]["limits"]["memory"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        # the image's CMD is `ivr-bridge serve` (PID 1: it gets the kubelet's SIGTERM and drains)
        assert "command" not in bridge
        assert 'CMD ["ivr-bridge", "serve"]' in (REPO / "docker/Dockerfile").read_text()


def test_environment_names_are_settings_and_secrets_come_from_the_secret() -> None:
    for deployment in bridge_deployments():
        for name, entry in env_of(deployment).items():
            assert name in ENV_FIELDS, f"{name} is not read by bridge/settings.py"
            if name in SECRET_ENV:
                assert "secretKeyRef" in entry.get("valueFrom", {}), f"{name} must come from a Secret"
        assert container(deployment)["envFrom"] == [{"secretRef": {"name": "ivr-bridge"}}]
    [secret] = of_kind("Secret")
    assert secret["metadata"]["name"] == "ivr-bridge"
    assert all(v == "" for v in secret["stringData"].values()), "the example Secret must hold no values"
    assert set(secret["stringData"]) <= set(ENV_FIELDS)
    wanted = {"TWILIO_AUTH_TOKEN", "OPENAI_API_KEY", "BRIDGE_STREAM_SECRET", "BRIDGE_METRICS_TOKEN"}
    wanted |= {"BRIDGE_ADMIN_TOKEN", "BRIDGE_DATA_KEY", "BRIDGE_DATABASE_URL", "BRIDGE_REDIS_URL"}
    assert wanted <= set(secret["stringData"]), wanted - set(secret["stringData"])


def test_pdb_hpa_service_and_network_policy_select_the_bridges() -> None:
    twilio = next(d for d in bridge_deployments() if d["metadata"]["name"] == "ivr-bridge")
    labels = twilio["spec"]["template"]["metadata"]["labels"]
    pdbs = {p["metadata"]["name"]: p for p in of_kind("PodDisruptionBudget")}
    assert matches(pdbs["ivr-bridge"]["spec"]["selector"]["matchLabels"], labels)
    assert pdbs["ivr-bridge"]["spec"]["maxUnavailable"] == 1
    [hpa] = of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "ivr-bridge",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    custom = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert custom == ["ivr_bridge_active_calls"]
    assert "# TYPE ivr_bridge_active_calls gauge" in METRICS.render()
    service = next(s for s in of_kind("Service") if s["metadata"]["name"] == "ivr-bridge")
    assert matches(service["spec"]["selector"], labels)
    [port] = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container(twilio)["ports"]}
    [policy] = of_kind("NetworkPolicy")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], labels)
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {8080}
    [ingress] = of_kind("Ingress")
    paths = [p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths == ["/twilio/"]


def test_sip_side_host_network_ports_and_the_shipped_dispatcher() -> None:
    sip = next(d for d in bridge_deployments() if d["metadata"]["name"] == "ivr-bridge-sip")
    pod = sip["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    env = env_of(sip)
    assert env["SIP_PUBLIC_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    sip_port = int(env["SIP_LOCAL_PORT"]["value"])
    [config_map] = of_kind("ConfigMap")
    listing = config_map["data"]["dispatcher.list"]
    assert all(line.endswith(f":{sip_port}") for line in listing.split("\n") if line.strip())
    kamailio = next(d for d in of_kind("Deployment") if d["metadata"]["name"] == "kamailio")
    args = " ".join(kamailio["spec"]["template"]["spec"]["containers"][0]["args"])
    [mount] = kamailio["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][:1]
    assert mount["name"] == "dispatcher"
    assert f'DISPATCHER_LIST="{mount["mountPath"]}/dispatcher.list"' in args
    # the image bakes in the very config tests/deploy/test_kamailio_dispatcher.py runs
    dockerfile = (REPO / "docker/kamailio.Dockerfile").read_text()
    copied = re.search(r"^COPY deploy/kamailio/dispatcher.cfg (\S+)$", dockerfile, re.M)
    assert copied, dockerfile
    assert f'"-f", "{copied.group(1)}"' in dockerfile  # and runs it
    header = (K8S / "sip.yaml").read_text().split("apiVersion", 1)[0]
    assert re.search(r"UDP 10000-20000", header), "the RTP port range is documented"
    assert "10000-20000" in (REPO / "docs" / "sip.md").read_text()  # the range the SIP leg uses
