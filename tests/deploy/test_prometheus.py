"""Prometheus for real: promtool on the shipped config and rules, then a real Prometheus (Debian's)
scraping a real server every second under known traffic. The scraped request counters must equal
what the clients sent, and every dashboard panel query must return data."""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc

from client import ClassificationClient
from tests.conftest import MODEL_NAME, RunningServer, digit_examples, start_server
from tests.deploy.conftest import PROMETHEUS_DIR, dashboard, dashboard_targets, free_port, load_render

# Grafana's variables as the dashboard would send them for one model over all replicas. The rate
# window is one minute: wide enough to hold all of this test's traffic when the queries run.
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__range": "5m",
    "$__interval": "15s",
    "$instance": ".*",
    "$model": MODEL_NAME,
}


def promtool_run(promtool: str, *args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    proc = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} exited {proc.returncode}:\n{out}"
    return out


def test_promtool_check_config_on_the_shipped_config(promtool):
    out = promtool_run(promtool, "check", "config", "prometheus.yml")
    assert "SUCCESS" in out and "alerts.yml" in out


def test_promtool_check_rules(promtool):
    out = promtool_run(promtool, "check", "rules", "alerts.yml")
    assert "SUCCESS: 13 rules found" in out  # 9 alerts, 4 recording rules (prediction drift)


def test_promtool_test_rules(promtool):
    """deploy/prometheus/alerts_test.yml: each alert fires where it should and stays quiet beside it."""
    assert "SUCCESS" in promtool_run(promtool, "test", "rules", "alerts_test.yml")


def test_rendered_config_is_valid(promtool, tmp_path):
    render = load_render()
    path = render.write(tmp_path, ["127.0.0.1:18002", "127.0.0.1:18003"], "127.0.0.1:19090", "1s")
    promtool_run(promtool, "check", "config", str(path), cwd=tmp_path)
    text = path.read_text()
    assert "dns_sd_configs" not in text and "127.0.0.1:18003" in text and "scrape_interval: 1s" in text


# -------------------------------------------------------------------------------------------------
# a real Prometheus scraping a real server


@dataclass
class Stack:
    server: RunningServer
    prometheus: subprocess.Popen
    url: str
    log: Path

    def query(self, expr: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"Prometheus refused {expr!r}: {e.read().decode(errors='replace')}") from None
        assert body["status"] == "success", body
        return body["data"]["result"]

    def api(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as r:
            return json.load(r)["data"]

    def wait_for(self, expr: str, want: float | None = None, timeout: float = 60) -> list[dict]:
        """Poll until the query returns data (equal to `want`, if given)."""
        deadline = time.monotonic() + timeout
        result: list[dict] = []
        while time.monotonic() < deadline:
            if self.prometheus.poll() is not None:
                raise AssertionError(f"prometheus exited {self.prometheus.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                result = self.query(expr)
            except OSError:
                result = []
            if result and (want is None or float(result[0]["value"][1]) == want):
                return result
            time.sleep(0.25)
        raise AssertionError(
            f"{expr} did not become {want if want is not None else 'non-empty'} in {timeout:.0f} s "
            f"(last: {result})\nprometheus log:\n{self.log.read_text()[-2000:]}"
        )


@pytest.fixture(scope="module")
def stack(model_repository, prometheus_bin, tmp_path_factory):
    d = tmp_path_factory.mktemp("prometheus")
    server = start_server(model_repository, "--poll-interval-s", "0", log_dir=d)
    metrics_address = server.metrics_url.split("//")[1].split("/")[0]
    port = free_port()
    config = load_render().write(d / "config", [metrics_address], f"127.0.0.1:{port}", "1s")
    log = d / "prometheus.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                prometheus_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={d / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    s = Stack(server, proc, f"http://127.0.0.1:{port}", log)
    try:
        s.wait_for('up{job="cnn-server"}', 1.0)
        yield s
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server.stop()


@dataclass
class Sent:
    classify_ok: int = 0
    classify_rows: int = 0
    infer_ok: int = 0
    infer_rows: int = 0
    classify_invalid: int = 0
    classify_unknown_model: int = 0


@pytest.fixture(scope="module")
def traffic(stack) -> Sent:
    """Known traffic: Classify (own client) and ModelInfer (tritonclient), some of it failing."""
    sent = Sent()
    files = digit_examples()
    with ClassificationClient(stack.server.address) as c:
        for n in (1, 2, 3, 4, 1, 2, 3):
            c.classify([f.read_bytes() for f in files[:n]], model=MODEL_NAME)
            sent.classify_ok += 1
            sent.classify_rows += n
        for _ in range(2):
            with pytest.raises(Exception, match="INVALID_ARGUMENT"):
                c.classify([b"this is not an image"], model=MODEL_NAME)
            sent.classify_invalid += 1
        with pytest.raises(Exception, match="NOT_FOUND"):
            c.classify([files[0].read_bytes()], model="no-such-model")
        sent.classify_unknown_model += 1
    client = tc.InferenceServerClient(stack.server.address)
    rng = np.random.default_rng(0)
    for rows in (1, 2, 5, 8, 16):
        x = rng.standard_normal((rows, 1, 28, 28)).astype(np.float32)
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.infer(MODEL_NAME, [inp], outputs=[tc.InferRequestedOutput("probabilities")])
        sent.infer_ok += 1
        sent.infer_rows += rows
    client.close()
    return sent


def test_scraped_request_counters_equal_what_the_clients_sent(stack, traffic):
    m = MODEL_NAME
    expected = {
        f'sum(cnn_requests_total{{rpc="Classify", model="{m}", version="1", code="OK"}})': traffic.classify_ok,
        f'sum(cnn_requests_total{{rpc="Classify", model="{m}", code="INVALID_ARGUMENT"}})': traffic.classify_invalid,
        'sum(cnn_requests_total{rpc="Classify", model="", code="NOT_FOUND"})': traffic.classify_unknown_model,
        f'sum(cnn_requests_total{{rpc="ModelInfer", model="{m}", version="1", code="OK"}})': traffic.infer_ok,
        'sum(cnn_requests_total{rpc=~"Classify|ModelInfer"})': traffic.classify_ok
        + traffic.classify_invalid
        + traffic.classify_unknown_model
        + traffic.infer_ok,
        f'sum(cnn_inference_rows_total{{model="{m}", version="1"}})': traffic.classify_rows + traffic.infer_rows,
        f'sum(cnn_request_duration_seconds_count{{rpc="ModelInfer", model="{m}"}})': traffic.infer_ok,
        f'sum(cnn_batch_size_rows_sum{{model="{m}"}})': traffic.classify_rows + traffic.infer_rows,
        f'sum(cnn_queue_wait_seconds_count{{model="{m}"}})': traffic.classify_ok + traffic.infer_ok,
    }
    for expr, want in expected.items():
        stack.wait_for(expr, float(want))
    # nothing counted twice, nothing on a wrong label
    assert (
        float(
            stack.query('sum(cnn_requests_total{rpc="Classify", code!~"OK|INVALID_ARGUMENT|NOT_FOUND"})')[0]["value"][1]
        )
        == 0
    )


def _substitute(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


def _panel_ids() -> list[str]:
    return [f"{title} [{t['refId']}]" for title, t in dashboard_targets()]


@pytest.mark.parametrize("target", dashboard_targets(), ids=_panel_ids())
def test_every_dashboard_query_returns_data(stack, traffic, target):
    title, t = target
    # wait until the traffic is in Prometheus, then ask the panel's question
    stack.wait_for(
        f'sum(cnn_requests_total{{rpc="ModelInfer", model="{MODEL_NAME}", code="OK"}})', float(traffic.infer_ok)
    )
    expr = _substitute(t["expr"])
    deadline = time.monotonic() + 20
    result = stack.query(expr)
    while not result and time.monotonic() < deadline:
        time.sleep(0.5)
        result = stack.query(expr)
    assert result, f"panel '{title}' query {t['refId']} returned no data: {expr}"
    values = [float(r["value"][1]) for r in result]
    assert any(math.isfinite(v) for v in values), f"panel '{title}' query {t['refId']} has no finite value: {result}"


def test_dashboard_variables_have_values(stack, traffic):
    models = stack.api("/api/v1/label/model/values?" + urllib.parse.urlencode({"match[]": "cnn_model_loaded_info"}))
    assert MODEL_NAME in models
    instances = stack.api(
        "/api/v1/label/instance/values?" + urllib.parse.urlencode({"match[]": 'up{job="cnn-server"}'})
    )
    assert instances == [stack.server.metrics_url.split("//")[1].split("/")[0]]
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["model"]["definition"] == "label_values(cnn_model_loaded_info, model)"


def test_alert_rules_load_and_evaluate_quietly(stack, traffic):
    deadline = time.monotonic() + 30
    while True:
        rules = [r for g in stack.api("/api/v1/rules")["groups"] for r in g["rules"]]
        if (
            rules
            and all(
                r.get("lastEvaluation", "").startswith("2") and not r["lastEvaluation"].startswith("0001")
                for r in rules
            )
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.5)
    assert len(rules) == 13
    for r in rules:
        assert r["health"] == "ok", f"rule {r['name']}: {r.get('lastError')}"
        if r["type"] == "alerting":
            assert r["state"] == "inactive", f"alert {r['name']} is {r['state']} on a healthy server: {r.get('alerts')}"


def test_prediction_metrics_after_real_traffic(stack, traffic):
    """Every answer of the known traffic is one top-1 prediction (Classify images and ModelInfer rows), the
    test-split reference that export recorded is scraped beside it, and the drift rules compute from both."""
    m = MODEL_NAME
    answers = float(traffic.classify_rows + traffic.infer_rows)
    stack.wait_for(f'sum(cnn_predictions_total{{model="{m}"}})', answers)
    stack.wait_for(f'sum(cnn_prediction_confidence_count{{model="{m}"}})', answers)
    classes = stack.query(f'cnn_predictions_total{{model="{m}"}}')
    assert sorted(r["metric"]["class"] for r in classes) == [str(i) for i in range(10)]  # every class, 0s included
    low = float(stack.query(f'sum(cnn_low_confidence_predictions_total{{model="{m}"}})')[0]["value"][1])
    assert 0 <= low <= answers
    share = float(stack.wait_for(f'sum(cnn_reference_class_share{{model="{m}"}})')[0]["value"][1])
    assert abs(share - 1) < 1e-3
    assert stack.query(f'cnn_reference_low_confidence_share{{model="{m}"}}')
    assert len(stack.query(f'cnn_reference_confidence{{model="{m}"}}')) == 5
    tvd = float(stack.wait_for(f'model:prediction_class_drift:tvd30m{{model="{m}"}}')[0]["value"][1])
    assert 0 <= tvd <= 1
    stack.wait_for(f'model:low_confidence_predictions:share_rate30m{{model="{m}"}}')
