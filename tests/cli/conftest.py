"""Fixtures for the command-line tests: the `cnn` command in a subprocess, as a user runs it, against real
servers on real ports (tests/conftest.py trains and exports the one small model these use)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.cli.pki import make_pki
from tests.conftest import MODEL_NAME, PY, ROOT


@dataclass
class Result:
    rc: int
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:
        return f"exit {self.rc} after {self.seconds:.1f} s\nstdout:\n{self.out}\nstderr:\n{self.err}"


def cnn(*args: str, timeout: float = 300, env: dict | None = None, cwd: Path = ROOT) -> Result:
    """`cnn ARGS...` in a subprocess (python -m client.cli, this checkout), output captured."""
    t0 = time.monotonic()
    p = subprocess.run(
        [PY, "-m", "client.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    return Result(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


# Fewer verification images: these tests check what the command line says, tests/export checks the gate.
FAST_EXPORT = ("--parity-images", "32", "--eval-images", "96")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("cli-pki"))


@pytest.fixture(scope="session")
def two_model_repo(model_repository, tmp_path_factory) -> Path:
    """The session's repository plus a second model (a copy of the first under another name)."""
    repo = tmp_path_factory.mktemp("two-models") / "repo"
    shutil.copytree(model_repository, repo)
    other = repo / "second-model"
    shutil.copytree(repo / MODEL_NAME, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["name"] = "second-model"
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    return repo
