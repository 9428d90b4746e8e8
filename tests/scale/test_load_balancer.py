"""Two server replicas behind Debian's nginx (grpc_pass): one is killed mid-run, no request fails."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from client import ClassificationClient
from tests.conftest import ROOT, digit_examples, start_server

sys.path.insert(0, str(ROOT / "deploy" / "nginx"))
from render import render  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _served(server) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(server.metrics_text()):
        for smp in fam.samples:
            if smp.name == "cnn_requests_total" and smp.labels["rpc"] == "Classify" and smp.labels["code"] == "OK":
                total += smp.value
    return total


def test_replica_killed_mid_run_loses_no_request(model_repository, tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is installed by scripts/setup.sh --system"
    a = start_server(model_repository, "--poll-interval-s", "0", log_dir=tmp_path)
    b = start_server(model_repository, "--poll-interval-s", "0", log_dir=tmp_path)
    port = _free_port()
    work = tmp_path / "nginx"
    work.mkdir()
    (work / "nginx.conf").write_text(render(f"127.0.0.1:{port}", work, [a.address, b.address]))
    lb = subprocess.Popen([nginx, "-c", str(work / "nginx.conf"), "-p", str(work)], stderr=subprocess.PIPE, text=True)
    try:
        image = digit_examples()[0].read_bytes()
        deadline = time.monotonic() + 20
        while True:  # nginx is up when a call goes through it
            try:
                with ClassificationClient(f"127.0.0.1:{port}", timeout_s=2) as c:
                    c.classify([image])
                break
            except Exception:
                assert time.monotonic() < deadline and lb.poll() is None, (work / "error.log").read_text()
                time.sleep(0.2)
        ok, errors, stop = [0], [], threading.Event()
        lock = threading.Lock()

        def loop():
            with ClassificationClient(f"127.0.0.1:{port}", timeout_s=10) as c:
                while not stop.is_set():
                    try:
                        assert c.classify([image])[0][0].label
                        with lock:
                            ok[0] += 1
                    except Exception as e:  # noqa: BLE001 - asserted empty below
                        with lock:
                            errors.append(e)

        threads = [threading.Thread(target=loop) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        served_a_before = _served(a)
        assert served_a_before > 0 and _served(b) > 0, "the balancer should spread calls over both replicas"
        served_b_at_kill = _served(b)
        a.proc.send_signal(signal.SIGKILL)  # no drain: connections just die
        a.proc.wait(10)
        before = ok[0]
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join(30)
        assert errors == [], f"{len(errors)} failed calls, first: {errors[0]!r}"
        assert ok[0] > before + 10, "calls stopped going through after the replica died"
        assert _served(b) > served_b_at_kill + 10, "the surviving replica should take over"
    finally:
        lb.send_signal(signal.SIGQUIT)
        try:
            lb.wait(10)
        except subprocess.TimeoutExpired:
            lb.kill()
        a.stop()
        b.stop()
