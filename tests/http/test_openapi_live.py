"""In-process checks of the HTTP adapter's static parts: the OpenAPI description matches the routes the
application registers (both ways), the page's assets are all served from the server itself, and the live
panel's quantiles follow Prometheus' histogram_quantile."""

from __future__ import annotations

import json
import re

import pytest

from server.http.live import LiveStats
from server.http.server import OPENAPI, STATIC, HttpServer
from server.metrics import Metrics


class NoService:
    def is_known(self, name: str) -> bool:
        return False


def routes(app) -> set[tuple[str, str]]:
    out = set()
    for r in app.router.routes():
        if r.method == "HEAD":
            continue
        info = r.resource.get_info()
        path = info.get("path") or info.get("formatter")
        out.add((r.method.lower(), path))
    return out


def test_openapi_describes_exactly_the_routes():
    doc = json.loads(OPENAPI.read_text())
    assert doc["openapi"].startswith("3.")
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    registered = routes(HttpServer(NoService(), Metrics()).app)
    assert registered == described, (
        f"not described: {sorted(registered - described)}; described but not served: {sorted(described - registered)}"
    )
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for ops in doc["paths"].values():  # every $ref resolves
        for ref in re.findall(r'"\$ref": "#/components/(\w+)/(\w+)"', json.dumps(ops)):
            assert ref[1] in doc["components"][ref[0]], ref


def test_page_uses_only_its_own_assets():
    html = (STATIC / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs, "the page references its assets"
    for ref in refs:
        assert "://" not in ref and not ref.startswith("//"), f"{ref}: the page must not load anything from elsewhere"
        if ref.startswith("static/"):
            assert (STATIC / ref.removeprefix("static/")).is_file(), ref
    js = (STATIC / "app.js").read_text()
    assert "://" not in re.sub(r"//.*", "", js), "app.js must call only relative URLs"


def test_live_quantiles_and_rate(monkeypatch):
    m = Metrics()
    live = LiveStats(m)
    clock = [100.0]
    monkeypatch.setattr("server.http.live.time.monotonic", lambda: clock[0])
    first = live.summary()
    assert first["requests_per_s"] == 0.0 and first["latency_ms"]["p50"] is None
    for _ in range(90):  # 90 requests at 1.5 ms, 10 at 40 ms, over 2 s
        m.requests.labels("ModelInfer", "m", "1", "OK").inc()
        m.request_duration.labels("ModelInfer", "m").observe(0.0015)
    for _ in range(10):
        m.requests.labels("Classify", "m", "1", "OK").inc()
        m.request_duration.labels("Classify", "m").observe(0.04)
    for _ in range(50):  # health probes are not counted
        m.requests.labels("ServerReady", "", "", "OK").inc()
        m.request_duration.labels("ServerReady", "").observe(0.0001)
    clock[0] += 2.0
    s = live.summary()
    assert s["requests_per_s"] == pytest.approx(50.0)
    assert s["requests_total"] == 100
    # the 50th observation lies in the (1 ms, 2.5 ms] bucket, the 99th in (25 ms, 50 ms]
    assert 1.0 < s["latency_ms"]["p50"] <= 2.5
    assert 25.0 < s["latency_ms"]["p99"] <= 50.0
    clock[0] += 30.0  # an idle window: no requests since the last sample
    s = live.summary()
    assert s["requests_per_s"] == 0.0
