"""client.testing: the one helper that starts `cnn serve` and reads its ready line (tests, bench, users)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from client.testing import READY_LINE, start_server
from tests.conftest import PY, ROOT


def test_ready_line_with_and_without_metrics():
    m = READY_LINE.search("serving gRPC on 127.0.0.1:50051 metrics http://0.0.0.0:8002/metrics models: a v1")
    assert m.groups() == ("127.0.0.1", "50051", "0.0.0.0", "8002")
    m = READY_LINE.search("serving gRPC on [::]:50051 metrics off models: none (workers: 2)")
    assert m.groups() == ("[::]", "50051", None, None)


def test_start_server_parses_the_ready_line_and_stops(model_repository, tmp_path):
    s = start_server(
        model_repository, "--poll-interval-s", "0", python=PY, cwd=ROOT, log_path=tmp_path / "server.log", timeout_s=60
    )
    try:
        assert re.fullmatch(r"127\.0\.0\.1:\d+", s.address) and not s.address.endswith(":0")
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", s.metrics_url)
        assert "cnn_" in s.metrics_text()
        assert s.t_spawn < s.t_ready and s.pid == s.proc.pid
    finally:
        rc = s.stop()
    assert rc == 0, s.log()


def test_a_server_that_fails_to_start_raises_with_the_log_tail(tmp_path):
    missing = tmp_path / "no-such-repository"
    with pytest.raises(RuntimeError) as e:
        start_server(missing, python=PY, cwd=ROOT, log_path=tmp_path / "server.log", timeout_s=60)
    msg = str(e.value)
    assert "did not start" in msg and "exited with code" in msg
    assert "model repository folder does not exist" in msg and str(missing) in msg  # the server's stderr


def test_no_ready_line_in_time_kills_the_process(tmp_path):
    # a "server" that prints nothing: start_server must not block on its silent stdout
    with pytest.raises(RuntimeError, match=r"no ready line within 1 s") as e:
        start_server(
            tmp_path,
            python=PY,
            launcher=("-c", "import time; time.sleep(60)"),
            cwd=ROOT,
            log_path=tmp_path / "server.log",
            timeout_s=1,
        )
    assert "did not start" in str(e.value)


def test_importing_it_pulls_in_neither_torch_nor_pytest_nor_the_inference_stubs():
    code = "import sys, client.testing; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pytest', 'tests', 'bench') or m.startswith('protos.inference')))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
