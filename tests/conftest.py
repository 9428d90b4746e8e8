"""Test-run fixtures: one tiny real model trained and exported once, and real servers on free ports.

Servers run as subprocesses (`cnn serve`) and are exercised through real gRPC channels. The pytest
process itself never imports the server's `inference` stubs: tritonclient registers the same
`inference.*` protobuf names in the default descriptor pool, and one process cannot hold both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client import testing as client_testing
from client.testing import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
# HTTP is on by default at 127.0.0.1:8000: servers started by tests (in parallel, beside a developer's own)
# take any free port instead, unless a test passes --http-address or sets this variable itself.
os.environ.setdefault("CNN_SERVER_HTTP_ADDRESS", "127.0.0.1:0")
PY = sys.executable
MODEL_NAME = "lenet5-digits"


def cnn(*args: str, timeout: float = 600, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the `cnn` command line in a subprocess (as a user would)."""
    proc = subprocess.run(
        [PY, "-m", "client.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"cnn {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """LeNet-5 trained on the bundled digits (default recipe, fewer epochs), once per test run."""
    reuse = os.environ.get("CNN_TEST_REUSE_RUN")  # local iteration only: a run dir from an earlier `cnn train`
    if reuse:
        return Path(reuse)
    out = tmp_path_factory.mktemp("run")
    cnn("train", "--model", "lenet5", "--data", "digits", "--out", str(out), "--seed", "0", "--epochs", "12")
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    return out


@pytest.fixture(scope="session")
def model_repository(trained_run, tmp_path_factory) -> Path:
    """A repository holding version 1 of lenet5-digits, exported and verified by `cnn export`."""
    repo = tmp_path_factory.mktemp("repo")
    cnn("export", str(trained_run / "best.pt"), "--repository", str(repo), "--name", MODEL_NAME)
    assert (repo / MODEL_NAME / "1" / "model.onnx").is_file()
    # readable by a server running as another user (the container's uid 10001 on a bind mount)
    for path in (
        repo / MODEL_NAME,
        repo / MODEL_NAME / "1",
        repo / MODEL_NAME / "config.yaml",
        repo / MODEL_NAME / "1" / "model.onnx",
    ):
        assert path.stat().st_mode & 0o004, f"{path} is not world-readable"
    return repo


@pytest.fixture
def repository_copy(model_repository, tmp_path) -> Path:
    """A private copy of the repository for tests that publish, break or remove versions."""
    dst = tmp_path / "repo"
    shutil.copytree(model_repository, dst)
    return dst


RunningServer = ServerProcess  # a `cnn serve` subprocess: address, metrics_url, metrics_text(), log(), stop()


def start_server(
    repository: Path, *args: str, env: dict | None = None, log_dir: Path | None = None, timeout_s: float = 60
) -> ServerProcess:
    """`cnn serve` (this checkout) on free ports; returns once it printed its ready line."""
    log_path = (log_dir or repository.parent) / f"server-{time.monotonic_ns()}.log"
    return client_testing.start_server(
        repository, *args, python=PY, cwd=ROOT, env=env, log_path=log_path, timeout_s=timeout_s
    )


@pytest.fixture(scope="session")
def server(model_repository, tmp_path_factory):
    """One shared server on the session's repository (read-only use)."""
    s = start_server(model_repository, "--poll-interval-s", "0", log_dir=tmp_path_factory.mktemp("logs"))
    yield s
    s.stop()


def digit_examples() -> list[Path]:
    files = sorted((ROOT / "examples" / "digits").glob("*.png"))
    assert len(files) >= 10, "examples/digits must hold at least 10 sample PNGs"
    return files
