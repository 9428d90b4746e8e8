"""A small client for `cnn.v1.Classification` (the `cnn classify` subcommand is client/classify_cli.py).

It deliberately imports only the project's own classification stubs (package `cnn.v1`), never the
`inference` stubs, so it can share a process with tritonclient (which registers the same `inference`
message names in protobuf's default pool).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import grpc

from protos.cnn import classification_pb2 as pb
from protos.cnn import classification_pb2_grpc as pb_grpc

# Classification is idempotent: a call refused with UNAVAILABLE (a replica draining on SIGTERM, a full
# queue, a connection reset behind a load balancer) is retried with backoff, within the call's deadline.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "cnn.v1.Classification"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class ConnectError(ConnectionError):
    """No connection to the server; the message says why (client/diagnose.py)."""


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probability: float


class ClassificationClient:
    """`with ClassificationClient("127.0.0.1:8001") as c: c.classify([png_bytes], top_k=3)`."""

    def __init__(
        self,
        address: str = "127.0.0.1:8001",
        timeout_s: float = 30.0,
        max_message_bytes: int = 16 * 1024 * 1024,
        *,
        token: str = "",
        tls_ca: bytes | None = None,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        tls: bool = False,
        retry_unavailable: bool = True,
        tls_names: dict[str, str] | None = None,
    ) -> None:
        """`tls_ca` (PEM) or `tls=True` (system roots) switch to TLS; `tls_cert`/`tls_key` add a client
        certificate (mTLS); `token` is sent as `authorization: Bearer <token>`. `tls_names` (file names by
        'tls_ca' / 'tls_cert') are quoted in connection errors."""
        self.address = address
        self.timeout_s = timeout_s
        self.retry_unavailable = retry_unavailable
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", int(retry_unavailable)),
            ("grpc.service_config", RETRY_SERVICE_CONFIG),
        ]
        if tls or tls_ca or tls_cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls_ca, private_key=tls_key, certificate_chain=tls_cert
            )
            self._channel = grpc.secure_channel(address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._tls = {
            "tls": tls,
            "tls_ca": tls_ca,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
            "names": dict(tls_names or {}),
        }
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._stub = pb_grpc.ClassificationStub(self._channel)
        self.last_model: tuple[str, str] = ("", "")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ClassificationClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def classify(
        self, images: list[bytes], top_k: int = 3, model: str = "", version: str = ""
    ) -> list[list[Prediction]]:
        """Encoded images (PNG/JPEG bytes) -> per image, the top-k predictions (most probable first)."""
        req = pb.ClassifyRequest(
            model_name=model, model_version=version, top_k=top_k, images=[pb.Image(encoded=b) for b in images]
        )
        resp = self._call(self._stub.Classify, req)
        self.last_model = (resp.model_name, resp.model_version)
        return [[Prediction(p.label, p.index, p.probability) for p in r.top_k] for r in resp.results]

    def wait_ready(self, timeout_s: float = 5.0, diagnose_first_failure: bool = True) -> None:
        """Connect now, and raise ConnectError with a sentence saying why when that fails: nothing listening,
        TLS on one side only, a certificate refused (client/diagnose.py). Returns as soon as the channel is
        connected; gives up as soon as a failed attempt has a clear reason, else after `timeout_s`."""
        from client.diagnose import diagnose

        state: dict[str, grpc.ChannelConnectivity] = {}
        changed = threading.Condition()

        def on_change(s: grpc.ChannelConnectivity) -> None:
            with changed:
                state["now"] = s
                changed.notify_all()

        self._channel.subscribe(on_change, try_to_connect=True)
        deadline = time.monotonic() + timeout_s
        probed = False
        try:
            with changed:
                while True:
                    now = state.get("now")
                    if now == grpc.ChannelConnectivity.READY:
                        return
                    if now == grpc.ChannelConnectivity.TRANSIENT_FAILURE and diagnose_first_failure and not probed:
                        probed = True
                        why = diagnose(self.address, **self._tls)
                        if why:
                            raise ConnectError(why)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    changed.wait(min(left, 0.5))
        finally:
            self._channel.unsubscribe(on_change)
        why = diagnose(self.address, **self._tls)
        raise ConnectError(
            why
            or f"no connection to {self.address} within {timeout_s:g} s (the last state was {state.get('now', 'IDLE')})"
        )

    def list_models(self) -> pb.ListModelsResponse:
        return self._call(self._stub.ListModels, pb.ListModelsRequest())

    def _call(self, method, request):
        """One call with the client's deadline; UNAVAILABLE is retried with backoff inside that deadline.

        gRPC's own retry policy (RETRY_SERVICE_CONFIG) covers calls refused before any response header;
        this loop also covers the ones a proxy answers with an HTTP 502/503 header (a replica that died
        mid-call behind nginx), which gRPC counts as committed and will not retry."""
        deadline = time.monotonic() + self.timeout_s
        backoff = 0.05
        while True:
            remaining = deadline - time.monotonic()
            try:
                return method(request, timeout=max(remaining, 0.001), metadata=self._metadata)
            except grpc.RpcError as e:
                if (
                    not self.retry_unavailable
                    or e.code() != grpc.StatusCode.UNAVAILABLE
                    or time.monotonic() + backoff >= deadline
                ):
                    raise
            time.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
