"""HTTP test fixtures: `cnn serve` subprocesses with HTTP on a free port, found from the server's log line
"HTTP on HOST:PORT"; a small urllib client that returns (status, headers, body) without raising on 4xx/5xx."""

from __future__ import annotations

import json
import re
import shutil
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

from client.testing import ServerProcess
from tests.conftest import MODEL_NAME, start_server
from tests.server.onnx_models import publish, scale_model

HTTP_LOG_LINE = re.compile(r"HTTP on (\S+):(\d+)")
SCALE_DATATYPES = ("FP32", "FP16", "UINT8", "INT64")
# small limits, so that the tests can go past them cheaply
MAX_BODY = 1024 * 1024
MAX_PIXELS = 1_000_000
LIMITS = {"CNN_SERVER_MAX_MESSAGE_BYTES": str(MAX_BODY), "CNN_SERVER_MAX_IMAGE_PIXELS": str(MAX_PIXELS)}


@dataclass
class HttpServer:
    proc: ServerProcess
    url: str  # http://host:port (no trailing slash)

    @property
    def hostport(self) -> str:
        return self.url.split("://", 1)[1]


def start_http_server(repository, *args: str, log_dir=None, env=None, scheme: str = "http") -> HttpServer:
    s = start_server(repository, "--http-address", "127.0.0.1:0", *args, log_dir=log_dir, env=env)
    m = HTTP_LOG_LINE.search(s.log())
    if m is None:
        s.stop()
        raise AssertionError(f"no 'HTTP on' line in the server log:\n{s.log()[-2000:]}")
    return HttpServer(s, f"{scheme}://{m.group(1)}:{m.group(2)}")


@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def call(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 30,
) -> Answer:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return Answer(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, dict(e.headers), e.read())


@pytest.fixture(scope="module")
def http_server(model_repository, tmp_path_factory):
    """One server for the module: the session's LeNet-5 plus small models of several datatypes, model control on."""
    repo = tmp_path_factory.mktemp("http") / "repo"
    shutil.copytree(model_repository, repo)
    for dt in SCALE_DATATYPES:
        publish(repo, f"scale-{dt.lower()}", scale_model(dt), max_batch_size=8)
    s = start_http_server(
        repo,
        "--poll-interval-s",
        "0",
        "--allow-model-control",
        "--default-model",
        MODEL_NAME,
        log_dir=repo.parent,
        env=LIMITS,
    )
    yield s
    s.proc.stop()
