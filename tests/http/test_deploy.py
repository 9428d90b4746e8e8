"""The deployment manifests expose HTTP (offline: the files themselves, as tests/deploy and tests/scale do):
compose publishes it on the host's loopback, the replicas each have their own HTTP port and the nginx
balancer routes to exactly those, the Kubernetes Deployment and Service declare it, and KServe has a REST
runtime whose one port and probes are HTTP."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from server.config import ServerConfig
from tests.conftest import ROOT


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def block(text: str, head: str) -> str:
    start = text.index(head)
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    raise AssertionError(head)


def directives(text: str) -> list[str]:
    return [re.sub(r"\s+", " ", ln.split("#")[0]).strip() for ln in text.splitlines() if ln.split("#")[0].strip()]


def test_default_http_address_is_loopback_port_8000():
    assert ServerConfig().http_address == "127.0.0.1:8000"


def test_compose_publishes_http_on_loopback():
    server = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["server"]
    inside = flag(server["command"], "--http-address")
    assert inside == "0.0.0.0:8000"
    published = [p for p in server["ports"] if p.split(":")[-1] == "8000"]
    assert published and all(p.startswith("127.0.0.1:") for p in published), server["ports"]
    ci = yaml.safe_load((ROOT / "docker-compose.ci.yml").read_text())["services"]["server"]
    assert flag(ci["command"], "--http-address").startswith("127.0.0.1:")


def test_replicas_and_balancer_route_http():
    services = yaml.safe_load((ROOT / "docker-compose.replicas.yml").read_text())["services"]
    http = [flag(services[r]["command"], "--http-address") for r in ("server-1", "server-2")]
    grpc = [flag(services[r]["command"], "--grpc-address") for r in ("server-1", "server-2")]
    assert len(set(http)) == 2 and not set(http) & set(grpc) and all(a.startswith("127.0.0.1:") for a in http)
    conf = (ROOT / "deploy" / "nginx" / "nginx.compose.conf").read_text()
    ups = [
        line.split()[1] for line in block(conf, "upstream cnn_http").splitlines() if line.strip().startswith("server ")
    ]
    assert ups == http
    listen = re.findall(r"^\s*listen ([^;]+);", conf, re.M)
    assert listen == ["127.0.0.1:8000 http2", "127.0.0.1:8010"], "gRPC first (tests/scale reads its block), then HTTP"
    spec = importlib.util.spec_from_file_location("deploy_nginx_render", ROOT / "deploy" / "nginx" / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    text = render.render("127.0.0.1:8000", "/tmp", grpc, http_listen="127.0.0.1:8010", http_replicas=http)
    assert directives(block(text, "upstream cnn_http")) == directives(block(conf, "upstream cnn_http"))
    http_part = lambda t: t[t.index("upstream cnn_http") :]  # noqa: E731
    assert directives(block(http_part(text), "location /")) == directives(block(http_part(conf), "location /")), (
        "the compose balancer's HTTP settings are the template's"
    )
    assert "upstream cnn_http" not in render.render("127.0.0.1:8000", "/tmp", grpc), "HTTP balancing is opt-in"


def test_nginx_with_http_passes_nginx_t(tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is installed by scripts/setup.sh --system"
    spec = importlib.util.spec_from_file_location("deploy_nginx_render", ROOT / "deploy" / "nginx" / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        render.render(
            "127.0.0.1:1",
            tmp_path,
            ["127.0.0.1:2"],
            http_listen="127.0.0.1:3",
            http_replicas=["127.0.0.1:4", "127.0.0.1:5"],
        )
    )
    p = subprocess.run(
        [nginx, "-t", "-e", "stderr", "-c", str(conf), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert p.returncode == 0, p.stderr


def test_kubernetes_declares_http():
    dep = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert flag(c["args"], "--http-address") == "0.0.0.0:8000"
    assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in c["ports"]
    svc = next(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "service.yaml").read_text()))
    assert any(p["name"] == "http" and p["port"] == 8000 and p["targetPort"] == "http" for p in svc["spec"]["ports"])


def test_kserve_rest_runtime_routes_its_one_port_to_http():
    rt = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "kserve" / "servingruntime-rest.yaml").read_text())
    (c,) = rt["spec"]["containers"]
    assert c["ports"] == [{"name": "http1", "containerPort": 8000, "protocol": "TCP"}], "serverless mode: one port"
    assert flag(c["args"], "--http-address") == "0.0.0.0:8000"
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}
    assert "v2" in rt["spec"]["protocolVersions"]
    kust = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "kserve" / "kustomization.yaml").read_text())
    assert "servingruntime-rest.yaml" in kust["resources"]
