"""Finding 8: refusals gRPC makes itself, expired-deadline floods, the Bearer scheme, expired certificates.

On 0e6d6fb a request above max_message_bytes was refused by gRPC before any server code ran and was
in no metric although the README said every refusal is counted; a flood of requests whose deadline
expires in transit logged ERROR tracebacks; `authorization: bearer <token>` was refused (RFC 7235: the
scheme is case-insensitive); and a server started with an expired certificate said nothing.
"""

from __future__ import annotations

import datetime

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.hardening.conftest import scale_request, serve
from tests.reliability.helpers import Stubs, pb, wait_for_metric


def test_oversized_messages_refused_by_grpc_are_counted(repo):
    s = serve(repo, env={"CNN_SERVER_MAX_MESSAGE_BYTES": "65536"})
    try:
        big = pb.ModelInferRequest(model_name="scale")
        big.inputs.add(name="input", datatype="FP32", shape=[8, 4])
        big.raw_input_contents.append(np.zeros(40_000, dtype="<f4").tobytes())  # 160 KB > 64 KiB
        with Stubs(s.address) as st:
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as e:
                    st.infer.ModelInfer(big, timeout=10)
                assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert st.infer.ModelInfer(scale_request(), timeout=10).outputs
        got = wait_for_metric(s, "cnn_requests_total", 3, rpc="ModelInfer", code="RESOURCE_EXHAUSTED")
        assert got >= 3, s.metrics_text()[-2000:]
    finally:
        assert s.stop() == 0


def test_expired_deadline_flood_logs_no_tracebacks_and_few_lines(repo):
    """4,000 requests whose deadlines (1-20 ms) expire in transit, in the queue or while computing: the log
    gets no traceback, no ERROR, and a rate-limited handful of warnings rather than one per request."""
    s = serve(repo)
    try:
        with Stubs(s.address) as st:
            st.infer.ModelInfer(scale_request(), timeout=10)
            futures = [st.infer.ModelInfer.future(scale_request(), timeout=0.001 * (1 + i % 20)) for i in range(4000)]
            codes = {f.exception().code() if f.exception() else grpc.StatusCode.OK for f in futures}
            assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
            assert grpc.StatusCode.DEADLINE_EXCEEDED in codes
            assert st.infer.ModelInfer(scale_request(), timeout=10).outputs
    finally:
        assert s.stop() == 0
    lines = s.log().splitlines()
    assert not any("Traceback" in line or " ERROR " in line for line in lines), s.log()[-3000:]
    warnings = [line for line in lines if " WARNING " in line and "DEADLINE" in line.upper()]
    assert len(warnings) <= 30, f"{len(warnings)} deadline warnings:\n" + "\n".join(warnings[:5])


def test_bearer_scheme_is_case_insensitive(repo, tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("inference: [app-token-123]\n")
    s = serve(repo, "--auth-tokens-file", str(tokens))
    try:
        with Stubs(s.address) as st:
            for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
                r = st.infer.ModelInfer(scale_request(), timeout=10, metadata=[("authorization", f"{scheme} app-token-123")])
                assert r.outputs, scheme
            for header in ("Basic app-token-123", "Bearerapp-token-123", "bearer wrong-token-1"):
                with pytest.raises(grpc.RpcError) as e:
                    st.infer.ModelInfer(scale_request(), timeout=10, metadata=[("authorization", header)])
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, header
    finally:
        assert s.stop() == 0


def _self_signed(tmp_path, name: str, before: datetime.datetime, after: datetime.datetime):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(before).not_valid_after(after)
            .sign(key, hashes.SHA256()))
    (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    return tmp_path / f"{name}.pem", tmp_path / f"{name}.key"


@pytest.mark.parametrize("kind", ["expired", "not yet valid"])
def test_a_certificate_outside_its_validity_is_warned_about_at_start(repo, tmp_path, kind):
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    before, after = (now - 10 * day, now - day) if kind == "expired" else (now + day, now + 10 * day)
    cert, key = _self_signed(tmp_path, kind.replace(" ", "_"), before, after)
    s = serve(repo, "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    try:
        lines = [line for line in s.log().splitlines() if " WARNING " in line and kind in line]
        assert lines and str(cert) in lines[0], s.log()[-2000:]
    finally:
        assert s.stop() == 0


def test_a_valid_certificate_starts_without_warning(repo, tmp_path):
    now = datetime.datetime.now(datetime.UTC)
    cert, key = _self_signed(tmp_path, "good", now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    s = serve(repo, "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    try:
        assert "certificate" not in s.log().lower(), s.log()[-2000:]
    finally:
        assert s.stop() == 0
