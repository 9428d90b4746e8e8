"""docker-compose.yml and the images it builds: `docker-compose config` validates the files, and the
promises operators rely on hold (health check, init, drain grace, non-root, 0.0.0.0 inside only, the
trainer behind a profile, GPU reservation, provisioning mounts)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from server.config import ServerConfig
from tests.conftest import ROOT
from tests.deploy.conftest import DEPLOY, dashboard

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
CI_ENV = {
    "CNN_CI_GRPC_PORT": "18001",
    "CNN_CI_METRICS_PORT": "18002",
    "CNN_CI_PROMETHEUS_PORT": "19090",
    "CNN_CI_REPOSITORY": "/tmp/cnn-ci-models",
    "CNN_CI_PROMETHEUS_DIR": "/tmp/cnn-ci-prometheus",
}


def compose_cmd() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.fail(
        "neither docker-compose nor `docker compose` found: run scripts/setup.sh --system "
        "(installs Debian's docker-compose package)"
    )


def compose_config(*files: str, env: dict | None = None) -> dict:
    args = [a for f in files for a in ("-f", f)]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CNN_CI_")}
    proc = subprocess.run(
        [*compose_cmd(), *args, "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, **(env or {})},
    )
    assert proc.returncode == 0, f"docker-compose {' '.join(args)} config failed:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    total = 0.0
    for num, unit in re.findall(r"([\d.]+)(ms|us|h|m|s)", str(duration)):
        total += float(num) * units[unit]
    return total


def test_compose_file_validates():
    cfg = compose_config("docker-compose.yml")
    assert set(cfg["services"]) == {"server", "prometheus", "grafana", "trainer"}


def test_gpu_and_ci_overrides_validate():
    compose_config("docker-compose.yml", "docker-compose.gpu.yml")
    compose_config("docker-compose.yml", "docker-compose.ci.yml", env=CI_ENV)


def test_server_service():
    s = compose_config("docker-compose.yml")["services"]["server"]
    assert s["build"]["target"] == "server-default" and s["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert "profiles" not in s
    cmd = " ".join(s["command"])
    assert "--grpc-address 0.0.0.0:8001" in cmd and "--metrics-address 0.0.0.0:8002" in cmd
    assert "--repository /models" in cmd
    assert s["init"] is True
    assert seconds(s["stop_grace_period"]) > ServerConfig().drain_grace_s, "docker must wait longer than the drain"
    assert s.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert s["healthcheck"]["test"][-1] == "/opt/cnn/healthcheck.py"
    assert any(v.endswith(":/models") or ":/models:" in v for v in s["volumes"])
    for port in s["ports"]:  # no TLS, no authentication by default: the host's loopback only
        assert str(port).startswith("127.0.0.1:"), port


def test_default_addresses_stay_loopback_outside_compose():
    assert ServerConfig().grpc_address.startswith("127.0.0.1:")
    assert ServerConfig().metrics_address.startswith("127.0.0.1:")


def test_prometheus_and_grafana_services():
    services = compose_config("docker-compose.yml")["services"]
    prom = services["prometheus"]
    assert any(v.startswith(str(DEPLOY / "prometheus") + ":/etc/prometheus") for v in prom["volumes"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    graf = services["grafana"]
    assert any(
        v.startswith(str(DEPLOY / "grafana" / "provisioning") + ":/etc/grafana/provisioning") for v in graf["volumes"]
    )
    assert any(
        v.startswith(str(DEPLOY / "grafana" / "dashboards") + ":/var/lib/grafana/dashboards") for v in graf["volumes"]
    )
    for s in services.values():
        for port in s.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port


def test_trainer_is_a_job_behind_a_profile():
    t = compose_config("docker-compose.yml")["services"]["trainer"]
    assert t["profiles"] == ["train"]
    assert t["build"]["target"] == "trainer"
    assert any(v.startswith("models:/models") for v in t["volumes"]), "the trainer writes into the server's volume"
    assert t.get("restart", "no") == "no"


def test_gpu_override():
    s = compose_config("docker-compose.yml", "docker-compose.gpu.yml")["services"]["server"]
    assert "onnxruntime-gpu" in s["build"]["args"]["ORT_PACKAGE"]
    assert "cuda" in s["build"]["args"]["MODEL_PROVIDERS"]
    devices = s["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert s["image"] != compose_config("docker-compose.yml")["services"]["server"]["image"]


def test_ci_override_uses_host_networking_on_loopback_literals():
    services = compose_config("docker-compose.yml", "docker-compose.ci.yml", env=CI_ENV)["services"]
    for name in ("server", "prometheus"):
        assert services[name]["network_mode"] == "host"
        text = " ".join(services[name]["command"])
        for address in re.findall(r"address[= ](\S+)", text):
            assert address.startswith("127.0.0.1:"), f"{name}: {address}"
    assert services["server"]["environment"]["CNN_HEALTH_ADDRESS"] == "127.0.0.1:18001"


def _stages(dockerfile: str) -> list[str]:
    return re.findall(r"^FROM \S+ AS (\S+)", dockerfile, re.M)


def test_dockerfile():
    text = DOCKERFILE.read_text()
    stages = _stages(text)
    assert stages.index("build") < stages.index("server") < stages.index("trainer-build"), (
        "the classic builder builds every stage above --target: `server` must come before the torch stages"
    )
    assert stages[-1] == "server-default", "the default target serves the default model"
    server = text.split("AS server\n")[1].split("\nFROM ")[0]
    assert re.search(r"^USER 10001", server, re.M), "the server image runs as a non-root user"
    assert "HEALTHCHECK" in server and "healthcheck.py" in server
    build = text.split("AS build\n")[1].split("\nFROM ")[0]
    assert "[train]" not in build and "import torch" in build, "the server's venv must not get torch"
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    script = (ROOT / "scripts" / "ci_docker.sh").read_text()
    assert re.search(rf"^BASE_TAG={re.escape(base)}\b", script, re.M), (
        "CI must tag its base as the Dockerfile's BASE_IMAGE"
    )
    prom_base = re.search(
        r"^ARG BASE_IMAGE=(\S+)", (DEPLOY / "docker" / "prometheus-debian.Dockerfile").read_text(), re.M
    ).group(1)
    assert re.search(rf"^DEBIAN_TAG={re.escape(prom_base)}\b", script, re.M)


def test_dockerignore_keeps_the_context_small():
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*", ".dockerignore must exclude everything first (.venv holds gigabytes of torch)"
    allowed = [ln[1:].rstrip("/") for ln in lines if ln.startswith("!")]
    text = DOCKERFILE.read_text()
    copied = [src for srcs in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M) for src in srcs.split()]
    assert copied
    for src in copied:
        assert any(src == a or src.startswith(a + "/") for a in allowed), f"COPY {src}: excluded by .dockerignore"


def test_grafana_provisioning_matches_the_dashboard():
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert variable["current"]["value"] == ds["uid"]
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "cnn.yml").read_text())[
        "providers"
    ][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    prom_cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert ds["jsonData"]["timeInterval"] == prom_cfg["global"]["scrape_interval"]


def test_health_probe_against_a_real_server(server):
    probe = [sys.executable, str(DEPLOY / "docker" / "healthcheck.py")]
    ok = subprocess.run([*probe, server.address], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stdout + ok.stderr
    env = {**os.environ, "CNN_HEALTH_ADDRESS": server.address, "CNN_HEALTH_SERVICE": "inference.GRPCInferenceService"}
    assert subprocess.run(probe, capture_output=True, timeout=30, env=env).returncode == 0
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    bad = subprocess.run(
        [*probe, dead], capture_output=True, text=True, timeout=30, env={**os.environ, "CNN_HEALTH_TIMEOUT_S": "1"}
    )
    assert bad.returncode == 1 and "UNAVAILABLE" in bad.stdout, bad.stdout + bad.stderr


def test_setup_installs_what_the_deploy_tests_run():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    pkgs = re.search(r"pkgs=\(([^)]*)\)", setup).group(1).split()
    for pkg in ("prometheus", "docker.io", "docker-compose", "debootstrap"):
        assert pkg in pkgs, f"scripts/setup.sh --system does not install {pkg}"
