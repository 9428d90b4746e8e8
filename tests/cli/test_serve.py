"""`cnn serve` starting up (issue 20, findings 2 and 6): a taken port is one line naming the address and the
flag, exit 2, before any model loads; the start-up line says what is on (addresses, TLS / mTLS, which RPC
groups need tokens, models with versions and providers)."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from client.testing import READY_LINE
from server.config import ServerConfig
from server.startup import AddressInUse, check_addresses, models_summary, summary_line, tokens_summary
from tests.conftest import MODEL_NAME, PY, ROOT, start_server


@pytest.fixture
def taken_port():
    """A port something else is listening on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


# ------------------------------------------------------------------------------------------- units


def test_check_addresses_names_the_taken_address_setting_and_flag(taken_port):
    cfg = ServerConfig(grpc_address=f"127.0.0.1:{taken_port}", metrics_address="")
    with pytest.raises(AddressInUse) as e:
        check_addresses(cfg, {"grpc_address": "command line"})
    msg = str(e.value)
    assert f"cannot listen on 127.0.0.1:{taken_port} (grpc_address, the gRPC port, from command line)" in msg
    assert "address already in use" in msg and "--grpc-address" in msg
    cfg = ServerConfig(grpc_address="127.0.0.1:0", metrics_address=f"127.0.0.1:{taken_port}")
    with pytest.raises(AddressInUse, match=f"127.0.0.1:{taken_port} \\(metrics_address.*--metrics-address"):
        check_addresses(cfg)


def test_check_addresses_passes_free_and_any_ports():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    check_addresses(ServerConfig(grpc_address=f"127.0.0.1:{free}", metrics_address="127.0.0.1:0"))
    check_addresses(ServerConfig(grpc_address="127.0.0.1:0", metrics_address=""))


def test_summary_line_says_what_is_on_and_keeps_the_parsed_prefix():
    plain = summary_line("127.0.0.1", 8001, "off", "none", ServerConfig(), None)
    assert "TLS: off" in plain and "tokens: off" in plain
    cfg = ServerConfig(tls_cert_file="s.pem", tls_key_file="s.key", tls_client_ca_file="ca.pem")
    line = summary_line(
        "127.0.0.1",
        8001,
        "http://127.0.0.1:8002/metrics",
        models_summary([(MODEL_NAME, ["1", "2"], "CPUExecutionProvider")]),
        cfg,
        {"inference": ["t" * 8], "repository": ["u" * 8]},
    )
    m = READY_LINE.search(line)
    assert m and m.groups() == ("127.0.0.1", "8001", "127.0.0.1", "8002"), line
    assert f"models: {MODEL_NAME} v1,2 [CPUExecutionProvider]" in line
    assert "TLS: mutual (client certificates required)" in line
    assert "tokens: inference, repository (open: health, metadata, statistics)" in line
    assert "TLS: on (server certificate only)" in summary_line(
        "h", 1, "off", "none", ServerConfig(tls_cert_file="a", tls_key_file="b"), None
    )
    assert (
        tokens_summary({g: ["x" * 8] for g in ("health", "metadata", "inference", "statistics", "repository")})
        == "tokens: health, metadata, inference, statistics, repository (every group)"
    )


# ------------------------------------------------------------------------------------------- the command


def _serve(repo, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    p = subprocess.run(
        [PY, "-m", "client.cli", "serve", "--repository", str(repo), "--poll-interval-s", "0", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return p, time.monotonic() - t0


@pytest.mark.parametrize("which", ["grpc", "metrics"])
def test_a_taken_port_is_one_line_exit_2_before_models_load(model_repository, taken_port, which):
    addresses = {
        "grpc": ["--grpc-address", f"127.0.0.1:{taken_port}", "--metrics-address", "127.0.0.1:0"],
        "metrics": ["--grpc-address", "127.0.0.1:0", "--metrics-address", f"127.0.0.1:{taken_port}"],
    }
    p, _ = _serve(model_repository, *addresses[which])
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr  # no traceback, and no model was loaded (its READY log line would be here)
    assert lines[0].startswith(f"cnn serve: cannot listen on 127.0.0.1:{taken_port} ({which}_address"), lines
    assert "address already in use" in lines[0] and f"--{which}-address" in lines[0], lines
    assert MODEL_NAME not in p.stderr and "READY" not in p.stderr


def test_the_start_up_line_says_tls_tokens_models_and_providers(model_repository, pki, tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("inference: [app-token-123]\nrepository: [admin-token-456]\n")
    s = start_server(
        model_repository,
        "--poll-interval-s",
        "0",
        "--tls-cert-file",
        str(pki / "server.pem"),
        "--tls-key-file",
        str(pki / "server.key"),
        "--tls-client-ca-file",
        str(pki / "ca.pem"),
        "--auth-tokens-file",
        str(tokens),
        log_dir=tmp_path,
    )
    line = s.ready_line
    s.stop()
    assert f"models: {MODEL_NAME} v1 [CPUExecutionProvider]" in line, line
    assert "TLS: mutual (client certificates required)" in line, line
    assert "tokens: inference, repository (open: health, metadata, statistics)" in line, line


def test_the_start_up_line_of_a_plain_server_says_tls_and_tokens_are_off(server):
    assert "TLS: off (plaintext); tokens: off" in server.ready_line, server.ready_line
