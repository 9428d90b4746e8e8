"""One server for the bad-input matrix and the fuzz tests: LeNet-5 plus hand-built models.

Models: `lenet5-digits` (the session's trained model, FP32 [-1, 1, 28, 28]), `scale-fp32` and
`scale-uint8` (tests/server/onnx_models.py, [-1, 4]), and `halfbroken` (version policy `all`: version 1
serves, version 2 is not ONNX and stays UNAVAILABLE, so "an unready version" exists).
"""

from __future__ import annotations

import shutil

import pytest

from server.repository import VersionPolicy
from tests.conftest import MODEL_NAME, start_server
from tests.server.onnx_models import publish, scale_model


@pytest.fixture(scope="session")
def reliability_repo(model_repository, tmp_path_factory):
    repo = tmp_path_factory.mktemp("reliability") / "repo"
    shutil.copytree(model_repository, repo)
    publish(repo, "scale-fp32", scale_model("FP32"), max_batch_size=8)
    publish(repo, "scale-uint8", scale_model("UINT8"), max_batch_size=8)
    publish(
        repo, "halfbroken", scale_model("FP32"), version=1, max_batch_size=8, version_policy=VersionPolicy(kind="all")
    )
    publish(repo, "halfbroken", b"not an onnx model", version=2)
    return repo


@pytest.fixture(scope="session")
def rel_server(reliability_repo):
    s = start_server(
        reliability_repo, "--poll-interval-s", "0", "--default-model", MODEL_NAME, log_dir=reliability_repo.parent
    )
    yield s
    s.stop()
