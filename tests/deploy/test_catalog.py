"""The metric catalog: code (server/metrics.py) = docs (docs/operations.md); Prometheus naming; the
dashboard and alerts read only catalogued metrics and aggregate over replicas; series pre-initialised."""

from __future__ import annotations

import re

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from server.metrics import INFERENCE_RPCS, PREINIT_ERROR_CODES, REJECT_REASONS, Metrics, batch_size_buckets
from tests.conftest import MODEL_NAME, ROOT, start_server
from tests.deploy.conftest import PROMETHEUS_DIR, dashboard, dashboard_targets

DOCS = ROOT / "docs" / "operations.md"
DOC_ROW = re.compile(r"^\| `([a-z_*]+)` \| ([^|]+) \| ([^|]*) \|")


def exposition(m: Metrics) -> str:
    return generate_latest(m.registry).decode()


def catalog() -> dict[str, tuple[str, set[str]]]:
    """{exposed family name: (type, label names)} for a Metrics with one model version pre-initialised."""
    m = Metrics(max_batch_size=64)
    m.preinitialise("m", "1", queue_capacity_rows=1024)
    m.model_loaded.labels("m", "1", "CPUExecutionProvider").set(1)
    m.init_predictions(
        "m",
        ["a", "b"],
        ["logits", "probabilities"],
        {  # a model with its test-split reference
            "class_share": {"a": 0.5, "b": 0.5},
            "confidence_quantiles": {"0.5": 0.9},
            "confidence_histogram": [1.0],
        },
    )
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition(m), re.M))
    out: dict[str, tuple[str, set[str]]] = {}
    for fam in text_string_to_metric_families(exposition(m)):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        labels = {k for s in fam.samples for k in s.labels if k != "le"}
        out[name] = (types.get(name, fam.type), labels)
    return out


def doc_rows() -> dict[str, tuple[str, set[str]]]:
    rows = {}
    for line in DOCS.read_text().splitlines():
        m = DOC_ROW.match(line)
        if m:
            labels = {x.strip() for x in m.group(3).split(",") if x.strip() and x.strip() != "—"}
            rows[m.group(1)] = (m.group(2).strip(), labels)
    assert rows, f"no metric table found in {DOCS}"
    return rows


def test_names_follow_prometheus_conventions():
    cat = catalog()
    text = exposition(Metrics())
    assert "_created" not in text, "counters/histograms must not export _created series"
    cnn = {n: v for n, v in cat.items() if n.startswith("cnn_")}
    assert len(cnn) >= 15
    for name, (typ, labels) in cnn.items():
        assert typ in ("counter", "gauge", "histogram"), f"{name}: {typ} (summaries do not aggregate over replicas)"
        assert (typ == "counter") == name.endswith("_total"), f"{name}: `_total` is for counters and only counters"
        if "duration" in name or "wait" in name:
            assert typ == "histogram" and name.endswith("_seconds"), f"{name}: durations are histograms in seconds"
        assert not labels & {"id", "request_id", "instance", "job"}, f"{name}: label {labels} is unbounded or reserved"
    for want in (
        "cnn_requests_total",
        "cnn_request_duration_seconds",
        "cnn_queue_wait_seconds",
        "cnn_compute_duration_seconds",
        "cnn_batch_size_rows",
        "cnn_queue_depth_rows",
        "cnn_requests_in_flight",
        "cnn_model_load_duration_seconds",
        "cnn_model_load_failures_total",
        "cnn_model_loaded_info",
        "cnn_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert want in cat, f"{want} missing from the catalog"
    assert cat["cnn_requests_total"][1] == {"rpc", "model", "version", "code"}
    assert cat["cnn_model_loaded_info"][1] == {"model", "version", "provider"}


def test_batch_size_buckets_reach_max_batch():
    assert batch_size_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert batch_size_buckets(48)[-2:] == (32, 48)
    m = Metrics(max_batch_size=64)
    m.preinitialise("m", "1")
    les = re.findall(r'cnn_batch_size_rows_bucket\{le="([^"]+)",model="m"\}', exposition(m))
    assert les == ["1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "+Inf"]


def test_docs_table_matches_the_code():
    cat, docs = catalog(), doc_rows()
    for name, (typ, labels) in cat.items():
        if name.startswith("cnn_"):
            assert name in docs, f"{name} is not in the metric table of {DOCS.name}"
            doc_type, doc_labels = docs[name]
            assert doc_type.split()[0] == typ, f"{name}: docs say {doc_type}, code says {typ}"
            assert doc_labels == labels, f"{name}: docs list labels {sorted(doc_labels)}, code has {sorted(labels)}"
        else:
            assert name in docs or any(d.endswith("*") and name.startswith(d[:-1]) for d in docs), (
                f"{name} (collector) is not covered by the metric table of {DOCS.name}"
            )
    for name in docs:
        if name.startswith("cnn_"):
            assert name in cat, f"{DOCS.name} documents {name}, which the server does not export"


def _used_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (quoted label values removed first)."""
    bare = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"\b(?:cnn|process|python)_[a-z0-9_]+\b", bare)) | set(re.findall(r"\bup\b(?=\s*\{)", bare))


def _alert_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"] if "alert" in r]  # not recording rules


def test_dashboard_and_alerts_use_only_catalogued_metrics():
    cat = catalog()
    known = set(cat) | {"up"}
    for name, (typ, _) in cat.items():
        if typ == "histogram":
            known |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    exprs = [(f"panel '{title}'", t["expr"]) for title, t in dashboard_targets()]
    exprs += [(f"alert {a}", e) for a, e in _alert_exprs()]
    exprs += [
        (f"variable {v['name']}", v["definition"]) for v in dashboard()["templating"]["list"] if v.get("definition")
    ]
    for where, expr in exprs:
        used = _used_metrics(expr)
        assert used, f"{where}: no metric found in {expr!r}"
        unknown = used - known
        assert not unknown, f"{where} reads {sorted(unknown)}, which the server does not export"


def test_dashboard_panels_aggregate_over_replicas():
    d = dashboard()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "model", "instance"} <= names
    titles = " | ".join(p["title"].lower() for p in d["panels"])
    for want in (
        "request rate",
        "error ratio",
        "latency",
        "queue wait",
        "compute",
        "batch size",
        "queue depth",
        "in flight",
        "loaded versions",
    ):
        assert want in titles, f"the dashboard has no '{want}' panel"
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["targets"], f"panel '{p['title']}' has no query"
        assert p["datasource"]["uid"] == "${datasource}"
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
    for title, t in dashboard_targets():
        expr = " ".join(t["expr"].split())
        assert re.match(r"^(sum|max|count|min|avg|histogram_quantile)\b", expr), (
            f"panel '{title}': {expr!r} must aggregate over replicas (sum by / max by / histogram_quantile)"
        )
        if expr.startswith("histogram_quantile"):
            assert re.search(r"sum by \((?:[a-z_, ]*, )?le\)", expr), f"panel '{title}': quantiles over sum by (le)"
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window in ("$__rate_interval", "$__range"), f"panel '{title}': window [{window}] is hard-coded"
        assert t["datasource"]["uid"] == "${datasource}"


def test_series_exist_before_the_first_request(model_repository, tmp_path):
    """Label values are pre-initialised when a version loads: error and rejection series exist at 0."""
    s = start_server(model_repository, "--poll-interval-s", "0", log_dir=tmp_path)
    try:
        fams = {f.name: f for f in text_string_to_metric_families(s.metrics_text())}
    finally:
        s.stop()

    def value(family: str, **labels) -> float:
        for sample in fams[family].samples:
            if all(sample.labels.get(k) == v for k, v in labels.items()) and sample.name.endswith(
                ("_total", "_count", family)
            ):
                return sample.value
        raise AssertionError(f"no {family} series with {labels} before the first request")

    for rpc in INFERENCE_RPCS:
        assert value("cnn_requests", rpc=rpc, model=MODEL_NAME, code="OK") == 0
        for code in PREINIT_ERROR_CODES:
            assert value("cnn_requests", rpc=rpc, model=MODEL_NAME, version="", code=code) == 0
        assert value("cnn_requests_in_flight", rpc=rpc) == 0
    assert value("cnn_requests", rpc="ModelInfer", model=MODEL_NAME, version="1", code="OK") == 0
    assert value("cnn_request_duration_seconds", rpc="Classify", model=MODEL_NAME) == 0
    for reason in REJECT_REASONS:
        assert value("cnn_queue_rejections", model=MODEL_NAME, reason=reason) == 0
    assert value("cnn_model_load_failures", model=MODEL_NAME) == 0
    assert value("cnn_queue_wait_seconds", model=MODEL_NAME) == 0
    assert value("cnn_compute_duration_seconds", model=MODEL_NAME, version="1") == 0
    assert value("cnn_inference_rows", model=MODEL_NAME, version="1") == 0
    assert value("cnn_queue_depth_rows", model=MODEL_NAME) == 0
    assert value("cnn_queue_capacity_rows", model=MODEL_NAME) > 0, (
        "cnn_queue_capacity_rows is not set: server/models.py must pass queue_capacity_rows to Metrics.preinitialise"
    )
    assert value("cnn_model_loaded_info", model=MODEL_NAME, version="1") == 1
    assert value("cnn_build_info") == 1


@pytest.mark.parametrize("alert", [a for a, _ in _alert_exprs()])
def test_every_alert_has_a_runbook_section(alert):
    assert f"### {alert}" in DOCS.read_text() or alert == "CnnServerMissing", f"{DOCS.name} has no runbook for {alert}"
