"""Scenarios 7-9 (issue 21: open-loop tail latency, memory across batch sizes, reload under load) run end to
end in `--smoke` mode and write well-formed results that measured what they claim. No thresholds: smoke
numbers mean nothing. The bench runs in a subprocess (it imports the server's `inference` stubs); LeNet-5
from the session fixture stands in for ResNet-20 and VGG-11.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from bench.hist import LatencyHistogram
from bench.memory import SETTINGS
from bench.tail import LEVELS
from tests.conftest import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@pytest.fixture(scope="module")
def run_dir(model_repository, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench21") / "run"
    repo = str(model_repository)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "run",
            "--smoke",
            "--scenarios",
            "7-9",
            "--out",
            str(out),
            "--lenet-repo",
            repo,
            "--resnet-repo",
            repo,
            "--vgg-repo",
            repo,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, (
        f"bench exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    )
    return out


def _load(run_dir, stem: str) -> dict:
    r = json.loads((run_dir / f"{stem}.json").read_text())
    md = (run_dir / f"{stem}.md").read_text()
    assert md.startswith(f"# Scenario {r['scenario']}:") and "\n|" in md and "## Targets" in md
    assert "load average" in md, "a shared machine: every result records the load"
    png = (run_dir / f"{stem}.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 2000
    for t in r["targets"]:
        assert {"name", "measured", "threshold", "met"} <= set(t) and _finite(t["value"]), t
    return r


def test_summary_lists_the_three_scenarios(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["errors"] == {} and sorted(int(k) for k in summary["scenarios"]) == [7, 8, 9]
    assert {t["scenario"] for t in summary["targets"]} == {7, 8, 9}


def test_s7_finds_a_max_rate_and_measures_every_level_open_loop(run_dir):
    r = _load(run_dir, "s7_open_loop")
    assert [c["label"] for c in r["configs"]] == [
        "LeNet-5, batching on",
        "LeNet-5, batching off",
        "LeNet-5, batching on, HTTP",
    ]
    assert [c["protocol"] for c in r["configs"]] == ["grpc", "grpc", "http"]
    assert r["configs"][1]["dynamic_batching"] is None and r["configs"][0]["dynamic_batching"] is not None
    assert r["configs"][2]["dynamic_batching"] == r["configs"][0]["dynamic_batching"]
    for c in r["configs"]:
        assert c["probes"] and all(p["phase"] in ("search", "confirm") for p in c["probes"])
        assert c["max_rps"] > 0
        assert c["max_rps"] == pytest.approx(max(p["offered_rps"] for p in c["probes"] if p["sustainable"]), abs=0.01)
        assert [p["fraction"] for p in c["levels"]] == list(LEVELS)
        for p in c["levels"]:
            assert p["offered_rps"] == pytest.approx(p["fraction"] * c["max_rps"], rel=1e-3)
            assert p["scheduled"] > 0 and p["ok"] + p["failed"] == p["scheduled"]
            assert sum(p["outcomes"].values()) == p["scheduled"]
            h = LatencyHistogram.decode(p["histogram"])  # the full distribution travels with the result
            assert h.count == p["ok"] and h.percentile_ms(99) == pytest.approx(p["p99_ms"], abs=1e-3)
            assert p["p99.9_ms"] >= p["p99_ms"] >= p["p50_ms"] > 0 and p["send_lag_count"] == p["scheduled"]
            assert p["host_steal_s"] >= 0  # /proc/stat's steal time over the window (Linux)
    names = [t["name"] for t in r["targets"]]
    assert len(names) == 2 and "p99 at 80 %" in names[0] and "95 %" in names[1] and "p99.9" in names[1]


def test_s8_compares_every_memory_setting_and_soaks_the_server(run_dir):
    r = _load(run_dir, "s8_memory_batches")
    ((model, raw),) = r["raw"].items()
    assert set(raw) == set(SETTINGS) and r["chosen"][model] in SETTINGS
    for res in raw.values():
        assert res["runs"] == r["mem_mode"]["raw_runs"]["resnet20"] and res["images_per_s"] > 0
        assert res["rss_end"] > 10 * 2**20 and len(res["points"]) >= 2 and res["ratio"] > 0
    soak = r["soak"][model]
    assert soak["requests"] == r["mem_mode"]["soak_requests"]["resnet20"] and soak["errors"] == 0
    assert soak["rss_first"] > 10 * 2**20 and len(soak["samples"]) >= 3
    assert r["targets"][0]["name"].startswith(f"{model}: server RSS after")


def test_s9_publishes_a_version_and_changes_the_config_under_load(run_dir):
    r = _load(run_dir, "s9_reload")
    assert "new version READY (swap)" in r["events_s"], "the server never served the published version"
    ev = r["events_s"]
    assert ev["version published (rename)"] < ev["new version READY (swap)"] < ev["config.yaml replaced"]
    assert r["rate"] == pytest.approx(0.8 * r["max_rps"]) and r["max_rps_source"] == "scenario 7 of this run"
    for w in r["windows"].values():
        assert w["scheduled"] > 0 and _finite(w["failed"])
    assert r["windows"]["whole run"]["scheduled"] == r["summary"]["scheduled"]
    assert len(r["targets"]) == 3
