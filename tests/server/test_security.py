"""TLS, mutual TLS and bearer tokens per RPC group, through real channels."""

from __future__ import annotations

import grpc
import pytest
import tritonclient.grpc as tc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import ClassificationClient
from server.security import group_of
from tests.cli.pki import cert, pem  # one way to make test certificates
from tests.conftest import MODEL_NAME, digit_examples, start_server

TOKENS = "inference: [app-token-123, admin-token-456]\nstatistics: [admin-token-456]\nrepository: [admin-token-456]\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    ca = cert("test-ca", ca_key, ca_name, ca_key, ca=True)
    srv_key, cli_key, rogue_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    files = {
        "ca.pem": pem(ca),
        "server.pem": pem(cert("server", ca_key, ca_name, srv_key, False, "127.0.0.1")),
        "server.key": pem(srv_key),
        "client.pem": pem(cert("client", ca_key, ca_name, cli_key, False)),
        "client.key": pem(cli_key),
        "rogue.pem": pem(
            cert("rogue", rogue_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue")]), rogue_key, False)
        ),
        "rogue.key": pem(rogue_key),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


def test_rpc_groups():
    assert group_of("/inference.GRPCInferenceService/ModelInfer") == "inference"
    assert group_of("/cnn.v1.Classification/Classify") == "inference"
    assert group_of("/inference.GRPCInferenceService/RepositoryModelLoad") == "repository"
    assert group_of("/inference.GRPCInferenceService/ModelStatistics") == "statistics"
    assert group_of("/grpc.health.v1.Health/Check") == "health"
    assert group_of("/inference.GRPCInferenceService/ServerLive") == "health"
    assert group_of("/inference.GRPCInferenceService/ModelConfig") == "metadata"


def test_tls_serves_and_plaintext_fails(model_repository, pki):
    s = start_server(
        model_repository,
        "--poll-interval-s",
        "0",
        "--tls-cert-file",
        str(pki / "server.pem"),
        "--tls-key-file",
        str(pki / "server.key"),
    )
    try:
        image = digit_examples()[0].read_bytes()
        with ClassificationClient(s.address, tls_ca=(pki / "ca.pem").read_bytes()) as c:
            assert c.classify([image])[0][0].label
        with ClassificationClient(s.address, timeout_s=3, retry_unavailable=False) as plain:
            with pytest.raises(grpc.RpcError) as e:
                plain.classify([image])
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert s.stop() == 0


def test_mtls_requires_a_client_certificate_from_the_ca(model_repository, pki):
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
    )
    try:
        image = digit_examples()[0].read_bytes()
        ca = (pki / "ca.pem").read_bytes()
        with ClassificationClient(
            s.address, tls_ca=ca, tls_cert=(pki / "client.pem").read_bytes(), tls_key=(pki / "client.key").read_bytes()
        ) as c:
            assert c.classify([image])[0][0].label
        for cert, key in ((None, None), (pki / "rogue.pem", pki / "rogue.key")):
            with ClassificationClient(
                s.address,
                timeout_s=3,
                tls_ca=ca,
                tls_cert=cert and cert.read_bytes(),
                tls_key=key and key.read_bytes(),
                retry_unavailable=False,
            ) as c:
                with pytest.raises(grpc.RpcError) as e:
                    c.classify([image])
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert s.stop() == 0


def test_bearer_tokens_per_group(model_repository, tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(TOKENS)
    s = start_server(
        model_repository, "--poll-interval-s", "0", "--auth-tokens-file", str(tokens), "--allow-model-control"
    )
    image = digit_examples()[0].read_bytes()
    try:
        # inference: no token / unknown token -> UNAUTHENTICATED; app token -> OK
        for token, code in (
            ("", grpc.StatusCode.UNAUTHENTICATED),
            ("wrong-token-000", grpc.StatusCode.UNAUTHENTICATED),
        ):
            with ClassificationClient(s.address, token=token) as c:
                with pytest.raises(grpc.RpcError) as e:
                    c.classify([image])
                assert e.value.code() == code
        with ClassificationClient(s.address, token="app-token-123") as c:
            assert c.classify([image])[0]
        # statistics and repository control: the app token is known but not allowed -> PERMISSION_DENIED
        app = tc.InferenceServerClient(s.address)
        admin = tc.InferenceServerClient(s.address)
        hdr = lambda t: {"authorization": f"Bearer {t}"}  # noqa: E731
        with pytest.raises(Exception, match="PERMISSION_DENIED"):
            app.get_inference_statistics(MODEL_NAME, headers=hdr("app-token-123"))
        with pytest.raises(Exception, match="PERMISSION_DENIED"):
            app.unload_model(MODEL_NAME, headers=hdr("app-token-123"))
        assert admin.get_inference_statistics(MODEL_NAME, headers=hdr("admin-token-456")).model_stats
        # metadata and health are open in this configuration: probes and clients need no token
        assert app.is_server_live() and app.is_model_ready(MODEL_NAME)
        assert app.get_model_metadata(MODEL_NAME).name == MODEL_NAME
        with grpc.insecure_channel(s.address) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="")).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        text = s.metrics_text()
        assert 'cnn_requests_total{code="PERMISSION_DENIED",model="",rpc="ModelStatistics",version=""} 1.0' in text
        assert 'code="UNAUTHENTICATED",model="",rpc="Classify"' in text
    finally:
        assert s.stop() == 0


def test_bad_tokens_file_is_a_start_error(model_repository, tmp_path):
    from tests.conftest import cnn

    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("inferense: [abcdefgh1]\n")
    proc = cnn(
        "serve",
        "--repository",
        str(model_repository),
        "--auth-tokens-file",
        str(tokens),
        "--grpc-address",
        "127.0.0.1:0",
        "--metrics-address",
        "",
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2 and "unknown group 'inferense'" in proc.stderr
