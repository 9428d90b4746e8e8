"""Stock clients, unchanged, over HTTP: tritonclient.http (JSON and binary), perf_analyzer -i http, the curl
commands in the README; and gRPC beside HTTP on one server (same models, same statistics, both counted)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.conftest import MODEL_NAME, ROOT
from tests.http.conftest import call


@pytest.fixture
def client(http_server):
    c = th.InferenceServerClient(http_server.hostport)
    yield c
    c.close()


def test_tritonclient_http_metadata_and_control(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL_NAME)
    assert client.get_server_metadata()["name"] == "cnn-stack"
    md = client.get_model_metadata(MODEL_NAME, "1")
    assert md["inputs"][0]["shape"] == [-1, 1, 28, 28]
    assert client.get_model_config(MODEL_NAME)["max_batch_size"] == 64
    assert any(m["name"] == MODEL_NAME for m in client.get_model_repository_index())
    client.unload_model("scale-uint8")
    assert not client.is_model_ready("scale-uint8")
    client.load_model("scale-uint8")
    assert client.is_model_ready("scale-uint8")
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("binary_out", [False, True], ids=["json-out", "binary-out"])
def test_tritonclient_http_infer(client, binary_in, binary_out):
    x = np.random.default_rng(3).random((4, 1, 28, 28), dtype=np.float32)
    inp = th.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    outs = [
        th.InferRequestedOutput("probabilities", binary_data=binary_out),
        th.InferRequestedOutput("logits", binary_data=binary_out, class_count=3),
    ]
    r = client.infer(MODEL_NAME, [inp], outputs=outs, request_id="t1")
    probs = r.as_numpy("probabilities")
    assert probs.shape == (4, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    top = r.as_numpy("logits")
    assert top.shape == (4, 3)
    first = top[0, 0].decode() if isinstance(top[0, 0], bytes) else str(top[0, 0])
    assert int(first.split(":")[1]) == int(probs[0].argmax())
    assert r.get_response()["id"] == "t1"
    # no outputs named: tritonclient asks for every output as binary (binary_data_output)
    r2 = client.infer(MODEL_NAME, [inp])
    np.testing.assert_allclose(r2.as_numpy("probabilities"), probs, rtol=1e-6)
    # compressed request bodies (Content-Encoding), as tritonclient offers them
    r3 = client.infer(MODEL_NAME, [inp], request_compression_algorithm="gzip")
    np.testing.assert_allclose(r3.as_numpy("probabilities"), probs, rtol=1e-6)


def test_tritonclient_http_errors(client):
    bad = th.InferInput("input", [1, 1, 28, 27], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 1, 28, 27), np.float32))
    with pytest.raises(InferenceServerException, match=r"inputs\[0\].shape") as e:
        client.infer(MODEL_NAME, [bad])
    assert e.value.status() == "400"
    with pytest.raises(InferenceServerException) as e:
        client.infer("nope", [bad])
    assert e.value.status() == "404"


def test_grpc_and_http_serve_the_same_models(http_server):
    """Both protocols on one server and one event loop: the same answer, one set of statistics, metrics by protocol."""
    s = http_server.proc
    x = np.random.default_rng(9).random((1, 1, 28, 28), dtype=np.float32)
    g = tg.InferenceServerClient(s.address)
    h = th.InferenceServerClient(http_server.hostport)
    try:
        before = g.get_inference_statistics(MODEL_NAME).model_stats[0].inference_count
        gi = tg.InferInput("input", list(x.shape), "FP32")
        gi.set_data_from_numpy(x)
        hi = th.InferInput("input", list(x.shape), "FP32")
        hi.set_data_from_numpy(x)
        pg = g.infer(MODEL_NAME, [gi]).as_numpy("probabilities")
        ph = h.infer(MODEL_NAME, [hi]).as_numpy("probabilities")
        np.testing.assert_array_equal(pg, ph)
        after_http = h.get_inference_statistics(MODEL_NAME)["model_stats"][0]["inference_count"]
        assert after_http == before + 2
    finally:
        g.close()
        h.close()
    text = s.metrics_text()
    for proto in ("grpc", "http"):
        counts = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("cnn_protocol_requests_total{")
            and f'protocol="{proto}"' in line
            and 'rpc="ModelInfer"' in line
            and 'code="OK"' in line
        ]
        assert sum(counts) >= 1, f"no {proto} ModelInfer count in /metrics"


def perf_analyzer_env() -> tuple[str, dict]:
    pa = ROOT / ".venv-tools" / "bin" / "perf_analyzer"
    assert pa.exists(), "perf_analyzer is installed by scripts/setup.sh --system"
    cudart = next((ROOT / ".venv-tools").glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    return str(pa), {**os.environ, "LD_LIBRARY_PATH": f"{cudart}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


def test_perf_analyzer_over_http(http_server, tmp_path):
    pa, env = perf_analyzer_env()
    csv = tmp_path / "pa.csv"
    proc = subprocess.run(
        [
            pa,
            "-m",
            MODEL_NAME,
            "-u",
            http_server.hostport,
            "-i",
            "http",
            "--concurrency-range",
            "1:8:7",
            "--measurement-mode",
            "count_windows",
            "--measurement-request-count",
            "200",
            "-s",
            "80",
            "-f",
            str(csv),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    throughputs = [float(t) for t in re.findall(r"Throughput: ([\d.]+) infer/sec", proc.stdout)]
    assert len(throughputs) == 2 and all(t > 0 for t in throughputs), proc.stdout
    assert "Server:" in proc.stdout  # it read the statistics over HTTP
    assert csv.read_text().splitlines()[0].startswith("Concurrency")


def readme_curl_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- http-curl-examples -->\s*```sh\n(.*?)```", text, re.DOTALL)
    assert block, "README.md has the HTTP curl examples block"
    cmds = [line for line in block.group(1).splitlines() if line.startswith("curl ")]
    assert len(cmds) >= 5
    return cmds


def test_readme_curl_commands(http_server):
    for cmd in readme_curl_commands():
        argv = [a.replace("127.0.0.1:8000", http_server.hostport) for a in shlex.split(cmd.split(" #")[0])]
        p = subprocess.run(
            [*argv, "--fail-with-body", "-sS"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr}"
        assert p.stdout.strip(), cmd
    # and the server is still there
    assert call(http_server.url + "/v2/health/ready").status == 200
