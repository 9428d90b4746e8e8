"""docker-compose.replicas.yml: two server replicas behind Debian's nginx (grpc_pass), host networking.

`docker-compose config` validates the merged files; the replicas keep the single server's promises
(image, drain grace, health check, read-only, loopback literals); the balancer's config
(deploy/nginx/nginx.compose.conf) routes to exactly the replicas' addresses with the retry settings of
nginx.conf.template. Then the same nginx config, with only its addresses and paths moved to free
ones, runs for real in front of two real servers, and a real Prometheus (Debian's) scraping both
replicas sees every call once: the dashboard's request-rate query sums the two instances into one
series, and the counters add up to what the client sent."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from client import ClassificationClient
from server.config import ServerConfig
from tests.conftest import MODEL_NAME, ROOT, digit_examples, start_server
from tests.deploy.test_compose import compose_cmd

NGINX_DIR = ROOT / "deploy" / "nginx"
COMPOSE_CONF = NGINX_DIR / "nginx.compose.conf"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "cnn-serving.json"
FILES = ("docker-compose.yml", "docker-compose.replicas.yml")
REPLICAS = ("server-1", "server-2")
BALANCER_LISTEN = "127.0.0.1:8000"


def compose_config(*files: str, profile: str | None = None) -> dict:
    args = [a for f in files for a in ("-f", f)] + (["--profile", profile] if profile else [])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNN_")}
    proc = subprocess.run(
        [*compose_cmd(), *args, "config"], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, f"docker-compose {' '.join(args)} config failed:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


@pytest.fixture(scope="module")
def merged() -> dict:
    return compose_config(*FILES)["services"]


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", str(duration)))


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def nginx_bin() -> str:
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(path).exists():
        pytest.fail("nginx not found: run scripts/setup.sh --system (installs Debian's nginx package)")
    return path


# -------------------------------------------------------------------------------------------------
# the compose files


def test_replicas_override_validates_and_keeps_the_default_stack(merged):
    base = compose_config("docker-compose.yml")["services"]
    assert set(merged) == set(base) | {*REPLICAS, "balancer"}

    def normal(svc: dict) -> dict:  # compose v1 prints volumes in no fixed order
        return {**svc, "volumes": sorted(map(str, svc.get("volumes", [])))}

    for name, svc in base.items():
        assert normal(merged[name]) == normal(svc), f"the override must not change {name}"
    for name in (*REPLICAS, "balancer"):
        assert merged[name]["profiles"] == ["replicas"], f"{name}: behind the profile, so a plain `up` is unchanged"
    with_profile = compose_config(*FILES, profile="replicas")["services"]
    assert {*REPLICAS, "balancer"} <= set(with_profile)


def test_replicas_keep_the_single_servers_promises(merged):
    server = merged["server"]
    grpc, metrics = set(), set()
    for name in REPLICAS:
        r = merged[name]
        assert r["image"] == server["image"] and r["build"] == server["build"]
        assert r["network_mode"] == "host" and "ports" not in r
        cmd = r["command"]
        assert flag(cmd, "--repository") == "/models"
        for address in (flag(cmd, "--grpc-address"), flag(cmd, "--metrics-address")):
            assert address.startswith("127.0.0.1:"), f"{name}: {address} (host network: loopback literals only)"
        grpc.add(flag(cmd, "--grpc-address"))
        metrics.add(flag(cmd, "--metrics-address"))
        assert r["environment"]["CNN_HEALTH_ADDRESS"] == flag(cmd, "--grpc-address"), (
            "the health check probes its own port"
        )
        assert r["healthcheck"]["test"] == server["healthcheck"]["test"]
        assert seconds(r["stop_grace_period"]) > ServerConfig().drain_grace_s, "docker must wait longer than the drain"
        assert r.get("stop_signal", "SIGTERM") == "SIGTERM"
        for key in ("init", "read_only", "tmpfs", "cap_drop", "security_opt", "volumes", "restart"):
            assert r[key] == server[key], f"{name}.{key} differs from the single server's"
    assert len(grpc) == len(metrics) == len(REPLICAS), "each replica needs its own ports"
    published = {p.split(":", 1)[1].split(":")[0] for s in merged.values() for p in s.get("ports", [])}
    used = {a.rsplit(":", 1)[1] for a in grpc | metrics | {BALANCER_LISTEN}}
    assert not used & published, f"ports {used & published} clash with the default stack's"


def test_balancer_service(merged):
    b = merged["balancer"]
    assert b["network_mode"] == "host" and "ports" not in b
    assert b["depends_on"] == {r: {"condition": "service_healthy"} for r in REPLICAS}
    assert b["read_only"] is True and "/tmp" in b["tmpfs"], "nginx.compose.conf keeps pid and temp files in /tmp"
    (mount,) = b["volumes"]
    src, dst, mode = mount.split(":")
    assert Path(src) == COMPOSE_CONF and mode == "ro"
    dockerfile = Path(b["build"]["context"]) / b["build"]["dockerfile"]
    text = dockerfile.read_text()
    assert re.search(r'^CMD \["-c", "' + re.escape(dst) + r'"\]', text, re.M), "the image reads the mounted config"
    assert re.search(r"^USER 65534", text, re.M), "nginx runs as nobody"
    assert re.search(r"^STOPSIGNAL SIGQUIT", text, re.M) and b["stop_signal"] == "SIGQUIT", "graceful nginx shutdown"
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    ci = (ROOT / "scripts" / "ci_docker.sh").read_text()
    assert re.search(rf"^DEBIAN_TAG={re.escape(base)}\b", ci, re.M), "an offline build can use CI's Debian base tag"


def _directives(block: str) -> list[str]:
    return [
        re.sub(r"\s+", " ", ln.split("#")[0]).strip()
        for ln in block.splitlines()
        if ln.split("#")[0].strip() and not ln.strip().startswith("#")
    ]


def _block(text: str, head: str) -> str:
    start = text.index(head)
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    raise AssertionError(f"unclosed {head}")


def load_render():
    spec = importlib.util.spec_from_file_location("deploy_nginx_render", NGINX_DIR / "render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compose_nginx_config_routes_to_the_replicas_like_the_template(merged):
    conf = COMPOSE_CONF.read_text()
    replicas = [flag(merged[r]["command"], "--grpc-address") for r in REPLICAS]
    upstream = _directives(_block(conf, "upstream cnn_grpc"))
    assert [d.split()[1] for d in upstream if d.startswith("server ")] == replicas
    assert re.search(rf"^\s*listen {re.escape(BALANCER_LISTEN)} http2;", conf, re.M)
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", a) for a in re.findall(r"\b(\d+\.\d+\.\d+\.\d+:\d+)", conf))
    # Everything but addresses, pid, logs and temp paths is the lead's template, rendered for these replicas.
    template = load_render().render(BALANCER_LISTEN, "/tmp", replicas)
    assert _directives(_block(conf, "location /")) == _directives(_block(template, "location /")), (
        "retry and timeout settings must match deploy/nginx/nginx.conf.template"
    )
    assert upstream == _directives(_block(template, "upstream cnn_grpc"))
    assert _directives(_block(conf, "events")) == _directives(_block(template, "events"))
    assert "error_log stderr" in conf and "daemon off;" in conf


def local_conf(workdir: Path, listen: str, replicas: list[str]) -> Path:
    """nginx.compose.conf with its addresses and /tmp paths moved to this test's: nothing else changes."""
    text = COMPOSE_CONF.read_text()
    for old, new in ((BALANCER_LISTEN, listen), ("127.0.0.1:8011", replicas[0]), ("127.0.0.1:8021", replicas[1])):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    text = text.replace(" /tmp/", f" {workdir}/")
    assert "/tmp/" not in text.replace(str(workdir), "")
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


def test_compose_nginx_config_passes_nginx_t(tmp_path):
    conf = local_conf(tmp_path, "127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"])
    proc = subprocess.run(
        [nginx_bin(), "-t", "-e", "stderr", "-c", str(conf), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0 and "syntax is ok" in proc.stderr, proc.stderr


# -------------------------------------------------------------------------------------------------
# for real: the compose nginx config in front of two servers, Prometheus scraping both


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(url: str, expr: str, at: float | None = None) -> list[dict]:
    params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
    with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode(params), timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def _wait(url: str, expr: str, want: float, proc: subprocess.Popen, log: Path, timeout: float = 60) -> list[dict]:
    deadline, result = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"prometheus exited:\n{log.read_text()[-2000:]}"
        try:
            result = _query(url, expr)
        except OSError:
            result = []
        if result and float(result[0]["value"][1]) == want:
            return result
        time.sleep(0.25)
    raise AssertionError(f"{expr} did not become {want} (last: {result})\n{log.read_text()[-2000:]}")


def _request_rate_expr() -> str:
    panel = next(p for p in json.loads(DASHBOARD.read_text())["panels"] if p.get("title") == "Request rate")
    (target,) = panel["targets"]
    expr = target["expr"]
    for var, value in (("$__rate_interval", "1m"), ("$instance", ".*"), ("$model", MODEL_NAME)):
        expr = expr.replace(var, value)
    assert "$" not in expr, expr
    return expr


def test_two_replicas_behind_the_compose_nginx_config_scraped_by_prometheus(model_repository, tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("prometheus not found: run scripts/setup.sh --system (installs Debian's prometheus package)")
    a = start_server(model_repository, "--poll-interval-s", "0", log_dir=tmp_path)
    b = start_server(model_repository, "--poll-interval-s", "0", log_dir=tmp_path)
    procs: list[subprocess.Popen] = []
    try:
        work = tmp_path / "nginx"
        work.mkdir()
        listen = f"127.0.0.1:{_free_port()}"
        conf = local_conf(work, listen, [a.address, b.address])
        nginx_log = work / "nginx.log"
        with open(nginx_log, "w") as out:
            lb = subprocess.Popen([nginx_bin(), "-e", "stderr", "-c", str(conf), "-p", str(work)], stderr=out)
        procs.append(lb)

        metrics = [s.metrics_url.split("//")[1].split("/")[0] for s in (a, b)]
        spec = importlib.util.spec_from_file_location(
            "deploy_prometheus_render", ROOT / "deploy" / "prometheus" / "render.py"
        )
        render = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(render)
        prom_port = _free_port()
        config = render.write(tmp_path / "prometheus", metrics, f"127.0.0.1:{prom_port}", "1s")
        prom_log = tmp_path / "prometheus.log"
        with open(prom_log, "w") as out:
            prom = subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(prom)
        url = f"http://127.0.0.1:{prom_port}"
        _wait(url, 'sum(up{job="cnn-server"})', 2.0, prom, prom_log)  # the dashboard's "Replicas up"

        image = digit_examples()[0].read_bytes()
        sent = 0
        deadline = time.monotonic() + 20
        with ClassificationClient(listen, timeout_s=10) as c:
            while True:  # nginx is up when a call goes through it
                try:
                    c.classify([image], model=MODEL_NAME)
                    sent += 1
                    break
                except Exception:
                    assert time.monotonic() < deadline and lb.poll() is None, nginx_log.read_text()
                    time.sleep(0.2)
            for _ in range(39):
                assert c.classify([image], model=MODEL_NAME)[0][0].label
                sent += 1

        ok = f'cnn_requests_total{{rpc="Classify", model="{MODEL_NAME}", code="OK"}}'
        _wait(url, f"sum({ok})", float(sent), prom, prom_log)
        per_instance = {r["metric"]["instance"]: float(r["value"][1]) for r in _query(url, ok)}
        assert set(per_instance) == set(metrics), per_instance
        assert all(v > 0 for v in per_instance.values()), (
            f"nginx should spread calls over both replicas: {per_instance}"
        )
        assert sum(per_instance.values()) == sent

        # The dashboard's request-rate panel: one series per (model, code), the replicas summed.
        expr = _request_rate_expr()
        at = time.time()  # both queries at one instant: the rates move with every scrape
        (series,) = [r for r in _query(url, expr, at) if r["metric"].get("code") == "OK"]
        assert "instance" not in series["metric"] and series["metric"]["model"] == MODEL_NAME
        split = expr.replace("sum by (model, code) (", "sum by (model, code, instance) (", 1)
        assert split != expr, f"the request-rate query no longer sums by (model, code): {expr}"
        by_instance = _query(url, split, at)
        parts = [float(r["value"][1]) for r in by_instance if r["metric"].get("code") == "OK"]
        assert len(parts) == 2 and all(p > 0 for p in parts)
        assert float(series["value"][1]) == pytest.approx(sum(parts), rel=1e-9)
    finally:
        for p, sig in zip(procs, (signal.SIGQUIT, signal.SIGTERM)):
            p.send_signal(sig)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        a.stop()
        b.stop()
