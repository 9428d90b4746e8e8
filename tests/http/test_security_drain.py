"""TLS, mutual TLS, bearer tokens per RPC group and the SIGTERM drain apply to HTTP as they do to gRPC;
`--http-address ""` switches HTTP off. Real servers, real sockets."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import threading
import time
import urllib.error

import numpy as np
import pytest

from tests.conftest import MODEL_NAME, digit_examples, start_server
from tests.http.conftest import HTTP_LOG_LINE, call, start_http_server
from tests.server.onnx_models import publish, slow_model
from tests.server.test_security import TOKENS, pki  # noqa: F401 - the module-scoped certificate fixture


def infer_body() -> bytes:
    return json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
    ).encode()


def test_bearer_tokens_per_group_over_http(model_repository, tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(TOKENS)
    s = start_http_server(
        model_repository,
        "--poll-interval-s",
        "0",
        "--auth-tokens-file",
        str(tokens),
        "--allow-model-control",
        log_dir=tmp_path,
    )
    u, image = s.url, digit_examples()[0].read_bytes()
    bearer = lambda t: {"Authorization": f"Bearer {t}"}  # noqa: E731
    try:
        for headers, status in (({}, 401), (bearer("wrong-token-000"), 401), ({"Authorization": "Basic abc"}, 401)):
            a = call(f"{u}/v2/models/{MODEL_NAME}/infer", "POST", infer_body(), headers)
            assert a.status == status and "error" in a.json()
            a = call(f"{u}/v1/classify", "POST", image, {"Content-Type": "image/png", **headers})
            assert a.status == status
        assert call(f"{u}/v2/models/{MODEL_NAME}/infer", "POST", infer_body(), bearer("app-token-123")).status == 200
        assert (
            call(f"{u}/v1/classify", "POST", image, {"Content-Type": "image/png", **bearer("app-token-123")}).status
            == 200
        )
        # statistics and repository: the app token is known but not allowed -> 403; the admin token may
        for path, method in (
            (f"/v2/models/{MODEL_NAME}/stats", "GET"),
            ("/v2/models/stats", "GET"),
            ("/v2/repository/index", "POST"),
            (f"/v2/repository/models/{MODEL_NAME}/load", "POST"),
            ("/v1/stats/live", "GET"),
            ("/metrics", "GET"),
        ):
            assert call(u + path, method, b"" if method == "POST" else None, bearer("app-token-123")).status == 403, (
                path
            )
            assert call(u + path, method, b"" if method == "POST" else None, bearer("admin-token-456")).status == 200, (
                path
            )
        # health, metadata and the page stay open in this configuration
        for path in (
            "/v2/health/live",
            "/v2/health/ready",
            f"/v2/models/{MODEL_NAME}/ready",
            "/v2",
            f"/v2/models/{MODEL_NAME}",
            "/v1/models",
            "/",
            "/openapi.json",
        ):
            assert call(u + path).status == 200, path
        text = s.proc.metrics_text()
        assert 'cnn_protocol_requests_total{code="PERMISSION_DENIED",protocol="http",rpc="ModelStatistics"}' in text
        assert f'code="UNAUTHENTICATED",model="{MODEL_NAME}",rpc="ModelInfer"' in text
    finally:
        assert s.proc.stop() == 0


def test_tls_and_mtls_over_http(model_repository, pki, tmp_path):  # noqa: F811
    ca = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    s = start_http_server(
        model_repository,
        "--poll-interval-s",
        "0",
        "--tls-cert-file",
        str(pki / "server.pem"),
        "--tls-key-file",
        str(pki / "server.key"),
        log_dir=tmp_path,
        scheme="https",
    )
    try:
        assert call(s.url + "/v2/health/ready", context=ca).status == 200
        assert call(f"{s.url}/v2/models/{MODEL_NAME}/infer", "POST", infer_body(), context=ca).status == 200
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):  # plaintext to a TLS port
            call(s.url.replace("https://", "http://") + "/v2/health/live", timeout=5)
    finally:
        assert s.proc.stop() == 0
    s = start_http_server(
        model_repository,
        "--poll-interval-s",
        "0",
        "--tls-cert-file",
        str(pki / "server.pem"),
        "--tls-key-file",
        str(pki / "server.key"),
        "--tls-client-ca-file",
        str(pki / "ca.pem"),
        log_dir=tmp_path,
        scheme="https",
    )
    try:
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):  # no client certificate
            call(s.url + "/v2/health/live", context=ca, timeout=5)
        rogue = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        rogue.load_cert_chain(pki / "rogue.pem", pki / "rogue.key")
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):  # a certificate the CA did not sign
            call(s.url + "/v2/health/live", context=rogue, timeout=5)
        mine = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        mine.load_cert_chain(pki / "client.pem", pki / "client.key")
        assert call(s.url + "/v2/health/live", context=mine).json() == {"live": True}
    finally:
        assert s.proc.stop() == 0


def test_http_off_and_default_port_refused_when_taken(model_repository, tmp_path):
    s = start_server(model_repository, "--poll-interval-s", "0", "--http-address", "", log_dir=tmp_path)
    try:
        assert HTTP_LOG_LINE.search(s.log()) is None
    finally:
        assert s.stop() == 0
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(RuntimeError) as e:
            start_server(
                model_repository,
                "--poll-interval-s",
                "0",
                "--http-address",
                f"127.0.0.1:{port}",
                log_dir=tmp_path,
                timeout_s=60,
            )
        assert f"127.0.0.1:{port}" in str(e.value) and "--http-address" in str(e.value)
    finally:
        taken.close()


def test_sigterm_drains_http_requests(model_repository, tmp_path):
    """Requests in flight over HTTP when SIGTERM arrives finish with 200; new ones are refused; exit 0."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    publish(repo, "slow", slow_model(), max_batch_size=2)
    s = start_http_server(repo, "--poll-interval-s", "0", "--drain-grace-s", "60", log_dir=tmp_path)
    n = 6
    results: list = [None] * n
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 1024], "datatype": "FP32", "data": np.ones(1024).tolist()}]}
    ).encode()

    def one(i: int) -> None:
        try:
            results[i] = call(f"{s.url}/v2/models/slow/infer", "POST", body, timeout=120).status
        except Exception as e:  # noqa: BLE001 - asserted below
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        live = call(s.url + "/v1/stats/live").json()
        if live["in_flight"] >= n:
            break
        time.sleep(0.02)
    assert live["in_flight"] >= n, f"only {live['in_flight']} requests reached the server"
    s.proc.proc.send_signal(15)
    time.sleep(0.3)
    try:  # a new request while draining: refused (503), or the listener is already closed
        late = call(f"{s.url}/v2/models/slow/infer", "POST", body, timeout=10).status
    except (urllib.error.URLError, ConnectionError, OSError):
        late = "closed"
    assert late in (503, "closed")
    for t in threads:
        t.join(120)
    assert results == [200] * n, results
    assert s.proc.proc.wait(60) == 0
