"""deploy/ (compose, Kubernetes, Prometheus, Grafana) cannot run here (no Docker, no cluster), so
these tests parse the files and cross-check them against the code: subcommands, settings,
ports, metric names, volumes."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.cli import build_parser
from streaming.ops.metrics import metric_names
from streaming.settings import Settings, env_name

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALIASES = {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "PYTHONUNBUFFERED"}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def check_env(env: dict[str, str]) -> None:
    known = {env_name(key) for key, _, _ in Settings().items()} | ALIASES
    unknown = set(env) - known
    assert not unknown, f"not a streamrec setting: {sorted(unknown)}"
    # Every value must be accepted by the typed settings (types, ranges).
    Settings.load(env={k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"})


def check_command(args: list[str]) -> str:
    parsed = build_parser().parse_args(args)
    return str(parsed.command)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())


def test_compose_services_run_real_subcommands_with_valid_settings(compose: dict) -> None:
    services = compose["services"]
    streamrec = {n: s for n, s in services.items() if s.get("image") == "streamrec:latest"}
    commands = {n: check_command(s["command"]) for n, s in streamrec.items()}
    assert commands == {"topics": "topics", "worker": "worker", "trainer": "train",
                        "scorer": "score", "lag-exporter": "lag", "dashboard": "dashboard"}
    for service in streamrec.values():
        check_env(service["environment"])
    env = streamrec["worker"]["environment"]
    host, port = env["KAFKA_BOOTSTRAP_SERVERS"].split(":")
    assert host == "kafka" and f"PLAINTEXT://kafka:{port}" in \
        services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert env["REDIS_URL"].startswith("redis://redis:6379")
    assert "--appendonly" in services["redis"]["command"]
    # Trainer writes checkpoints where scorers read them.
    assert streamrec["trainer"]["volumes"] == streamrec["scorer"]["volumes"]
    assert any(v.startswith("checkpoints:" + env["STREAMREC_TRAINER_CHECKPOINT_DIR"])
               for v in streamrec["scorer"]["volumes"])
    # Published ports stay on loopback.
    for service in services.values():
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), mapping


def test_prometheus_scrapes_the_ports_the_components_serve(compose: dict) -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    services = compose["services"]
    targets: dict[str, int] = {}
    for job in prom["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                targets[name] = sd["port"]
        for static in job.get("static_configs", []):
            for t in static["targets"]:
                name, port = t.split(":")
                targets[name] = int(port)
    assert set(targets) == {"worker", "trainer", "scorer", "lag-exporter"}
    for name, port in targets.items():
        service = services[name]
        if service["command"][0] == "lag":
            assert service["command"][service["command"].index("--serve") + 1] == str(port)
        else:
            assert service["environment"]["STREAMREC_RUNTIME_METRICS_PORT"] == str(port)


def test_grafana_dashboard_uses_only_exported_metric_names() -> None:
    dash = json.loads((DEPLOY / "grafana" / "streamrec-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:streamrec|kafka)_[a-z_]+)\b", e)}
    names = metric_names()
    assert used and used <= names, sorted(used - names)
    # The conventional lag names, and every pipeline stage, are on the dashboard.
    assert {"kafka_consumergroup_lag", "kafka_consumergroup_lag_seconds",
            "streamrec_stage_latency_seconds_bucket", "streamrec_trainer_prequential_auc",
            "streamrec_model_version"} <= used
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "streamrec.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_kubernetes_manifests_are_consistent() -> None:
    docs = [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in load_all(f)]
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    config = by_kind["ConfigMap"]["streamrec-config"]["data"]
    check_env(config)
    partitions = int(config["STREAMREC_TOPICS_EVENTS_PARTITIONS"])
    workloads = {**by_kind["Deployment"], **by_kind["Job"]}
    seen = {}
    for name, w in workloads.items():
        pod = w["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": "streamrec-config"}}]
        args = container["args"]
        cli = args[args.index("deploy.cli") + 1:] if "deploy.cli" in args else args
        seen[name] = check_command(cli)
        port = int(pod["metadata"]["annotations"]["prometheus.io/port"])
        assert port in [p["containerPort"] for p in container["ports"]]
        if seen[name] == "lag":
            assert cli[cli.index("--serve") + 1] == str(port)
        else:
            assert config["STREAMREC_RUNTIME_METRICS_PORT"] == str(port)
        for volume in pod["spec"].get("volumes", []):
            assert volume["persistentVolumeClaim"]["claimName"] in \
                by_kind["PersistentVolumeClaim"]
        for mount in container.get("volumeMounts", []):
            assert mount["mountPath"] == config["STREAMREC_TRAINER_CHECKPOINT_DIR"]
        if w["kind"] == "Deployment" and seen[name] in ("worker", "score"):
            assert w["spec"]["replicas"] <= partitions  # more would sit idle
    assert sorted(seen.values()) == ["lag", "score", "train", "worker"]
    # torchrun: one rank per pod of the indexed job, rendezvous at pod 0 of the headless service.
    job = by_kind["Job"]["streamrec-trainer"]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    flags = dict(a.lstrip("-").split("=", 1) for a in args if a.startswith("--") and "=" in a)
    assert int(flags["nnodes"]) == job["spec"]["completions"] == job["spec"]["parallelism"]
    assert flags["node-rank"] == "$(JOB_COMPLETION_INDEX)"
    service = job["spec"]["template"]["spec"]["subdomain"]
    assert flags["master-addr"] == f"streamrec-trainer-0.{service}"
    assert service in by_kind["Service"]
    assert by_kind["Service"][service]["spec"]["ports"][0]["port"] == int(flags["master-port"])


def test_dockerfile_installs_the_same_way_as_the_readme() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    run = next(line for line in text.splitlines() if line.startswith("RUN "))
    assert "deploy/bootstrap.sh" in shlex.split(run[4:])
    assert 'ENTRYPOINT ["streamrec"]' in text
