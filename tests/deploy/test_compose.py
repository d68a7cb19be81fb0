"""docker/compose.yaml and the configs it mounts, checked structurally (there is no Docker engine
here: the file is parsed as YAML, the way `docker compose config` would read it, including `<<:`
merges), and validated by Debian's `docker-compose config` (1.29, the Compose file schema of 2021)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from bridge.metrics import METRICS
from bridge.settings import ENV_FIELDS, SECRET_FIELDS
from tests.deploy.bridges import DEPLOY, REPO
from tests.helpers.sysdeps import require_binary

COMPOSE = REPO / "docker/compose.yaml"
SECRET_ENV = {env for env, field in ENV_FIELDS.items() if field in SECRET_FIELDS} | {"BRIDGE_DATABASE_URL"}
LOOKS_SECRET = re.compile(r"TOKEN|PASSWORD|SECRET|_KEY$|DATABASE_URL")
BRIDGES = ("bridge-a", "bridge-b")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def drain_s(env: dict[str, str]) -> float:
    return float(env["BRIDGE_DRAIN_S"])


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", text)
    assert m, text
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def ops_routes() -> set[str]:
    text = (REPO / "bridge" / "ops_routes.py").read_text()
    return set(re.findall(r'add_api_route\("(/[a-z]+)"', text))


def test_services_two_bridges_redis_postgres_proxy_prometheus_grafana() -> None:
    svc = services()
    assert {*BRIDGES, "redis", "postgres", "proxy", "prometheus", "grafana", "secrets"} <= set(svc)
    for name in BRIDGES:
        assert svc[name]["build"]["dockerfile"] == "docker/Dockerfile"
        assert (COMPOSE.parent / svc[name]["build"]["context"] / svc[name]["build"]["dockerfile"]).is_file()
        assert svc[name]["environment"]["BRIDGE_INSTANCE_ID"] == name
    # every long-running service says when it is healthy; the init step runs once
    for name, spec in svc.items():
        if name == "secrets":
            assert spec["restart"] == "no"
            continue
        assert spec.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_bridges_probe_readyz_wait_for_their_dependencies_and_drain_before_being_killed() -> None:
    svc = services()
    assert {"/readyz", "/healthz", "/metrics"} <= ops_routes()
    for name in BRIDGES:
        spec = svc[name]
        assert "/readyz" in " ".join(spec["healthcheck"]["test"])
        for dep in ("redis", "postgres"):
            assert spec["depends_on"][dep]["condition"] == "service_healthy"
        assert spec["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
        assert spec["stop_signal"] == "SIGTERM"
        assert seconds(spec["stop_grace_period"]) > drain_s(spec["environment"]) + 10
        env = spec["environment"]
        assert env["BRIDGE_TRUST_PROXY"] == "true"
        assert env["BRIDGE_REDIS_URL"].startswith("redis://redis:")
        assert "exec ivr-bridge serve" in spec["entrypoint"][-1]  # exec: the bridge itself gets SIGTERM


def test_bridge_environment_names_are_settings_and_no_secret_is_inlined() -> None:
    for name in BRIDGES:
        env: dict[str, str] = services()[name]["environment"]
        unknown = [k for k in env if k not in ENV_FIELDS]
        assert not unknown, f"{name}: {unknown} are not read by bridge/settings.py"
        for key, value in env.items():
            if key in SECRET_ENV or LOOKS_SECRET.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:?-?\}", value), f"{name}: {key} is inlined: {value!r}"
    # other services take their secrets from files (POSTGRES_PASSWORD_FILE, TLS_KEY, ...), never as values
    for name, spec in services().items():
        if name in BRIDGES:
            continue
        for key, value in (spec.get("environment") or {}).items():
            if LOOKS_SECRET.search(key):
                assert str(value).startswith("/secrets/"), (
                    f"{name}: {key} is not a file on the secrets volume"
                )


def test_make_secrets_writes_what_the_services_read(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_secrets", DEPLOY / "make_secrets.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.make(tmp_path, ["localhost"])
    assert module.make(tmp_path, ["localhost"]) == []  # a second run keeps everything
    env = dict(line.split("=", 1) for line in (tmp_path / "bridge.env").read_text().splitlines())
    assert set(env) <= set(ENV_FIELDS), set(env) - set(ENV_FIELDS)
    assert env["BRIDGE_METRICS_TOKEN"] == (tmp_path / "metrics_token").read_text().strip()
    assert (tmp_path / "postgres_password").read_text().strip() in env["BRIDGE_DATABASE_URL"]
    from bridge.settings import Settings

    Settings.from_env(env)  # valid values (the data key's format, ...)
    # every /secrets/<file> a service names is one that make_secrets writes
    named = set(re.findall(r"/secrets/([a-z_.]+)", COMPOSE.read_text()))
    named |= set(re.findall(r"/secrets/([a-z_.]+)", (DEPLOY / "prometheus" / "prometheus.yml").read_text()))
    assert named <= set(written), named - set(written)


def test_proxy_renders_the_tested_nginx_template() -> None:
    proxy = services()["proxy"]
    template = DEPLOY / "nginx" / "ivr-bridge.conf.template"
    mounts = {v.split(":")[0]: v.split(":")[1] for v in proxy["volumes"]}
    inside = Path(mounts["../deploy/nginx/ivr-bridge.conf.template"])
    assert inside.parent.name == "templates"  # the nginx image renders /etc/nginx/templates/*.template
    assert inside.parent.parent.name == "nginx"
    wanted = set(re.findall(r"\$\{([A-Z_]+)\}", template.read_text()))
    assert wanted == set(proxy["environment"])
    assert {proxy["environment"]["BRIDGE_A"], proxy["environment"]["BRIDGE_B"]} == {
        f"{b}:8080" for b in BRIDGES
    }


def test_prometheus_scrapes_both_bridges_with_the_metrics_token() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{b}:8080" for b in BRIDGES}
    assert job["authorization"]["credentials_file"] == "/secrets/metrics_token"
    prometheus = services()["prometheus"]
    assert "../deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "secrets:/secrets:ro" in prometheus["volumes"]


def test_dashboard_queries_only_metrics_the_bridge_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "ivr-bridge.json").read_text())
    exported = set()
    for metric in METRICS.render().splitlines():
        if metric.startswith("# TYPE "):
            name, kind = metric.split()[2:4]
            exported |= {name} if kind != "histogram" else {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(ivr_bridge_[a-z_]+)", target["expr"])
    }
    assert len(used) >= 8
    assert used <= exported, used - exported
    assert "ivr_bridge_active_calls" in used


def test_docker_compose_validates_the_file_against_the_compose_schema(tmp_path: Path) -> None:
    """`docker-compose config` (Debian's docker-compose 1.29: no engine needed) checks every key and
    value against its Compose schema, resolves the anchors and prints the effective file. Its schema
    predates the top-level `name:` (added to the Compose spec in 2022, read by Compose v2), so the
    copy it checks leaves that one line out; everything else is checked as shipped."""
    binary = require_binary("docker-compose")
    text = COMPOSE.read_text()
    assert re.search(r"^name: ivr-bridge$", text, re.M)
    probe = tmp_path / COMPOSE.parent.name  # the file names its build context and mounts as ../
    shutil.copytree(COMPOSE.parent, probe)
    (probe / "compose.yaml").write_text(re.sub(r"^name: .*\n", "", text, flags=re.M))
    done = subprocess.run(
        [binary, "-f", str(probe / "compose.yaml"), "config"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    effective = yaml.safe_load(done.stdout)
    assert set(effective["services"]) == set(services())
    for name in BRIDGES:
        assert effective["services"][name]["environment"]["BRIDGE_REDIS_URL"].startswith("redis://")
