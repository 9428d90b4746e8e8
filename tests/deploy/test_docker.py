"""The compose stack in real containers: scripts/ci_docker.sh (a private dockerd, a debootstrapped base,
images built offline, `server` + `prometheus` up from docker-compose.yml, a sample image classified
through the container, Prometheus's scrape checked, a draining stop). Root and Debian's docker.io,
docker-compose and debootstrap are required: a missing one fails this test, it is never skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import ROOT

LIMIT_S = 1500


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the script's process group (its trap removes containers, dockerd and mounts), then KILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.timeout(LIMIT_S + 300)
def test_compose_stack_in_docker(model_repository, tmp_path):
    log = tmp_path / "ci_docker.log"
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "ci_docker.sh")],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "CNN_CI_REPOSITORY": str(model_repository)},
        )
        try:
            proc.wait(LIMIT_S)
        except subprocess.TimeoutExpired:
            pass
        finally:
            _stop(proc)
    text = log.read_text(errors="replace")
    print(text[-6000:])  # the step timings, shown with -rP or on failure
    assert proc.returncode == 0, (
        f"scripts/ci_docker.sh exited {proc.returncode} after {time.monotonic() - t0:.0f} s:\n{text[-8000:]}"
    )
    for step in ("top-1:", 'sum(cnn_requests_total{rpc="Classify", model="lenet5-digits", code="OK"}) = 3', "PASSED"):
        assert step in text, f"ci_docker.sh output lacks {step!r}"
