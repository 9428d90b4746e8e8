"""The benchmark cannot rot: every scenario runs end to end in seconds (`python -m bench run --smoke`) and
writes well-formed JSON, Markdown and PNG. No thresholds: smoke numbers mean nothing.

The bench runs in a subprocess (it imports the server's `inference` stubs, which this process must not;
see tests/conftest.py). LeNet-5 from the session fixture stands in for ResNet-20 as well.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEMS = {
    1: "s1_tiny_vs_echo",
    2: "s2_compute_vs_raw",
    3: "s3_client_batches",
    4: "s4_batching",
    5: "s5_workers",
    6: "s6_memory_cold_start",
}
PNGS = {6: "s6_memory"}


def _bench(*args: str, timeout: float = 540) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture(scope="module")
def smoke_run(model_repository, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    proc = _bench(
        "run",
        "--smoke",
        "--out",
        str(out),
        "--lenet-repo",
        str(model_repository),
        "--resnet-repo",
        str(model_repository),
        "--compare-root",
        str(ROOT),
    )  # B = the same tree
    assert proc.returncode == 0, (
        f"bench exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    )
    return out


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def test_summary_lists_every_scenario_and_target(smoke_run):
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["errors"] == {}
    assert sorted(int(k) for k in summary["scenarios"]) == [1, 2, 3, 4, 5, 6]
    env = summary["env"]
    assert env["hardware"]["cores_online"] >= 1 and env["hardware"]["memory_total_bytes"] > 0
    assert env["hardware"]["lscpu"], "lscpu output is part of every result"
    for key in ("python", "onnxruntime", "grpcio", "numpy", "cnn-stack"):
        assert env["versions"][key], key
    assert env["settings"]["mode"] == "smoke"
    for t in summary["targets"]:
        assert {"name", "measured", "threshold", "met", "scenario"} <= set(t) and _finite_number(t["value"])
    assert {t["scenario"] for t in summary["targets"]} == {1, 2, 3, 6}
    md = (smoke_run / "summary.md").read_text()
    assert "## Targets" in md and "| target | measured | threshold | met |" in md


@pytest.mark.parametrize("n", sorted(STEMS))
def test_scenario_outputs_exist_and_are_well_formed(smoke_run, n):
    stem = STEMS[n]
    result = json.loads((smoke_run / f"{stem}.json").read_text())
    assert result["scenario"] == n and result["env"]["versions"]["onnxruntime"]
    md = (smoke_run / f"{stem}.md").read_text()
    assert md.startswith(f"# Scenario {n}:") and "\n|" in md, "a Markdown table"
    png = (smoke_run / f"{PNGS.get(n, stem)}.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 2000


def test_s1_measures_server_and_echo_at_every_concurrency(smoke_run):
    r = json.loads((smoke_run / "s1_tiny_vs_echo.json").read_text())
    assert [row["concurrency"] for row in r["rows"]] == r["mode"]["s1_conc"] * 2  # server, then server B
    assert sum("[server B" in t["name"] for t in r["targets"]) == 2
    for row in r["rows"]:
        assert row["errors"] == 0
        for k in ("echo_rps", "server_rps", "ratio", "echo_p50_ms", "server_p50_ms", "server_p99_ms", "server_cpu_us"):
            assert _finite_number(row[k]) and row[k] > 0, k
    assert r["raw_batch1"]["run_p50_ms"] > 0


def test_s2_reads_batch_sizes_and_times_raw_onnxruntime_at_them(smoke_run):
    r = json.loads((smoke_run / "s2_compute_vs_raw.json").read_text())
    assert set(r["points"]) == {"server", "server B"}
    for pts in r["points"].values():
        for p in pts:
            assert p["batches"] and sum(int(b) * c for b, (c, _) in p["batches"].items()) > 0
            assert p["raw"]["images_per_s"] > 0 and p["raw"]["measured_sizes"]
    assert all(row["ratio"] > 0 for row in r["rows"])


def test_s3_to_s6_have_their_measures(smoke_run):
    s3 = json.loads((smoke_run / "s3_client_batches.json").read_text())
    assert all(row["server_img_s"] > 0 and row["raw_img_s"] > 0 and row["errors"] == 0 for row in s3["rows"])
    s4 = json.loads((smoke_run / "s4_batching.json").read_text())
    assert {row["variant"] for row in s4["rows"]} == {"batching off", "delay 0 µs"}
    assert all(row["rps"] > 0 and row["mean_batch"] >= 1 for row in s4["rows"])
    s5 = json.loads((smoke_run / "s5_workers.json").read_text())
    assert {row["workers"] for row in s5["rows"]} == {1, 2} and all(row["rps"] > 0 for row in s5["rows"])
    s6 = json.loads((smoke_run / "s6_memory_cold_start.json").read_text())
    assert s6["rss_warm_bytes"] > 10 * 2**20 and s6["requests"] >= s6["mode"]["s6_requests"]
    assert 0 < s6["cold_start_median_s"] < 120 and len(s6["rss_samples"]) == 11


def test_ab_compares_two_trees_in_one_run(model_repository, tmp_path):
    proc = _bench(
        "ab",
        "--b",
        str(ROOT),
        "--repo",
        str(model_repository),
        "--concurrency",
        "2",
        "--rounds",
        "1",
        "--duration",
        "0.3",
        "--out",
        str(tmp_path),
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "ab.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["A_rps"] > 0 and rows[0]["B_rps"] > 0 and rows[0]["B_cpu_us"] > 0
    assert (tmp_path / "ab.md").read_text().startswith("# A/B")


def test_inproc_measures_the_handler_without_grpc(model_repository):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.inproc",
            "--repo",
            str(model_repository),
            "--concurrency",
            "1,4",
            "--requests",
            "200",
            "--rounds",
            "1",
            "--deadline",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])["results"]
    assert set(res) == {"1", "4"} and all(v["cpu_us"] > 0 for v in res.values())


def test_inproc_telemetry_ab_alternates_both_services_in_one_process(model_repository):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.inproc",
            "--repo",
            str(model_repository),
            "--concurrency",
            "4",
            "--requests",
            "200",
            "--rounds",
            "3",
            "--telemetry",
            "ab",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])["results"]["4"]
    assert len(r["off"]["rounds"]) == len(r["on"]["rounds"]) == len(r["ratios"]) == 3
    assert r["ratios"] == [b["cpu_us"] / a["cpu_us"] for a, b in zip(r["off"]["rounds"], r["on"]["rounds"])]
    assert sorted(r["ratios"])[1] == r["on_over_off_cpu"] and all(x > 0 for x in r["ratios"])


def test_telemetry_tap_times_the_tap_per_answer():
    proc = subprocess.run(
        [sys.executable, "-m", "bench.telemetry_tap", "--answers", "2000", "--rounds", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    per = [float(x) for x in proc.stdout.split(":", 1)[1].split(";")[0].split(",")]
    assert len(per) == 2 and all(0 < x < 1000 for x in per) and "median" in proc.stdout


def test_digit_crops_reports_every_case(model_repository):
    from bench.digit_crops import CASES

    onnx_path = model_repository / "lenet5-digits" / "1" / "model.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.digit_crops", "--model", str(onnx_path), "--n", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [
        ln for ln in proc.stdout.splitlines() if ln.startswith("| MNIST test") or ln.startswith("| examples/photos")
    ]
    assert len(rows) == len(CASES) + 1
    for ln in rows:
        acc = float(ln.split("|")[3].strip().rstrip(" %"))
        assert 0.0 <= acc <= 100.0
    assert "| examples/photos (photos and scans on paper) | 300 |" in proc.stdout


@pytest.mark.parametrize("mode", ["inline", "batched"])
def test_http_floor_answers_what_onnxruntime_computes(model_repository, mode):
    """The floor server (bench/http_floor.py) must do the real work: its answers are the model's outputs."""
    import concurrent.futures
    import signal
    import urllib.request

    import numpy as np
    import onnxruntime as ort

    from bench.http_bare import BINARY_HEADER, start_serving

    model = model_repository / "lenet5-digits" / "1" / "model.onnx"
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    xs = np.random.default_rng(5).random((8, 1, 1, 28, 28), dtype=np.float32)
    proc, port = start_serving(["-m", "bench.http_floor", "serve", "--model", str(model), "--mode", mode])

    def post(x: np.ndarray) -> list[np.ndarray]:
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ]
            }
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/models/lenet5-digits/infer",
            header + x.tobytes(),
            {BINARY_HEADER: str(len(header)), "Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            body, n = r.read(), int(r.headers[BINARY_HEADER])
        outs, at = [], n
        for o in json.loads(body[:n])["outputs"]:
            size = o["parameters"]["binary_data_size"]
            outs.append(np.frombuffer(body[at : at + size], np.float32).reshape(o["shape"]))
            at += size
        assert at == len(body)
        return outs

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # concurrent: the batched mode runs them together
            answers = list(pool.map(post, xs))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    for x, outs in zip(xs, answers, strict=True):
        want = sess.run(None, {"input": x})
        assert len(outs) == len(want) == 2
        for got, w in zip(outs, want, strict=True):
            np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)


def test_http_infer_runs_every_arm_pinned(model_repository, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.http_infer",
            "--repo",
            str(model_repository),
            "--floor",
            "--mlserver-venv",
            str(tmp_path / "none"),
            "--rounds",
            "1",
            "--duration",
            "0.5",
            "--concurrency",
            "4",
            "--server-cpus",
            "0",
            "--client-cpus",
            "0",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "infer.json").read_text())
    assert set(r["summary"]) == {"server binary", "bare aiohttp", "server JSON", "floor inline", "floor batched"}
    assert all(s["median_rps"] > 0 and s["non_2xx"] == 0 for s in r["summary"].values())
    assert set(r["ratios"]) == {"binary / bare (target >= 0.80)", "floor inline / bare", "floor batched / bare"}
    assert r["server_cpus"] == "0" and (tmp_path / "infer.md").read_text().count("| floor ") == 2


def test_http_floor_model_cost_bounds_the_ratio(model_repository):
    model = model_repository / "lenet5-digits" / "1" / "model.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.http_floor", "model-cost", "--model", str(model), "--bare-us", "50"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_row = {
        int(ln.split()[1].rstrip(":")): float(ln.split()[2])
        for ln in proc.stdout.splitlines()
        if ln.startswith("batch")
    }
    assert sorted(per_row) == [1, 4, 16, 32, 64] and all(v > 0 for v in per_row.values())
    bound = float(proc.stdout.split(" = ")[1].split()[0])
    assert bound == pytest.approx(50 / (50 + min(per_row.values())), abs=0.006)
