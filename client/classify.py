"""A small client for `cnn.v1.Classification` and the `cnn classify` subcommand.

It deliberately imports only the project's own classification stubs (package `cnn.v1`), never the
`inference` stubs, so it can share a process with tritonclient (which registers the same `inference`
message names in protobuf's default pool).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from protos.cnn import classification_pb2 as pb
from protos.cnn import classification_pb2_grpc as pb_grpc


# Classification is idempotent: a call refused with UNAVAILABLE (a replica draining on SIGTERM, a full
# queue, a connection reset behind a load balancer) is retried with backoff, within the call's deadline.
RETRY_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "cnn.v1.Classification"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "1s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probability: float


class ClassificationClient:
    """`with ClassificationClient("127.0.0.1:8001") as c: c.classify([png_bytes], top_k=3)`."""

    def __init__(self, address: str = "127.0.0.1:8001", timeout_s: float = 30.0,
                 max_message_bytes: int = 16 * 1024 * 1024, *, token: str = "", tls_ca: bytes | None = None,
                 tls_cert: bytes | None = None, tls_key: bytes | None = None, tls: bool = False,
                 retry_unavailable: bool = True) -> None:
        """`tls_ca` (PEM) or `tls=True` (system roots) switch to TLS; `tls_cert`/`tls_key` add a client
        certificate (mTLS); `token` is sent as `authorization: Bearer <token>`."""
        self.address = address
        self.timeout_s = timeout_s
        self.retry_unavailable = retry_unavailable
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.enable_retries", int(retry_unavailable)), ("grpc.service_config", RETRY_SERVICE_CONFIG)]
        if tls or tls_ca or tls_cert:
            creds = grpc.ssl_channel_credentials(root_certificates=tls_ca, private_key=tls_key, certificate_chain=tls_cert)
            self._channel = grpc.secure_channel(address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._stub = pb_grpc.ClassificationStub(self._channel)
        self.last_model: tuple[str, str] = ("", "")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "ClassificationClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def classify(self, images: list[bytes], top_k: int = 3, model: str = "", version: str = "") -> list[list[Prediction]]:
        """Encoded images (PNG/JPEG bytes) -> per image, the top-k predictions (most probable first)."""
        req = pb.ClassifyRequest(model_name=model, model_version=version, top_k=top_k,
                                 images=[pb.Image(encoded=b) for b in images])
        resp = self._call(self._stub.Classify, req)
        self.last_model = (resp.model_name, resp.model_version)
        return [[Prediction(p.label, p.index, p.probability) for p in r.top_k] for r in resp.results]

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
                if (not self.retry_unavailable or e.code() != grpc.StatusCode.UNAVAILABLE
                        or time.monotonic() + backoff >= deadline):
                    raise
            time.sleep(backoff)
            backoff = min(backoff * 2, 1.0)


def add_classify_parser(subparsers) -> None:
    p = subparsers.add_parser("classify", help="classify image files with a running server",
                              description="Send PNG/JPEG files to the server's Classification service; one line (or "
                                          "one JSON object with --json) per image.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    p.add_argument("--server", default="127.0.0.1:8001", help="gRPC address (default 127.0.0.1:8001)")
    p.add_argument("--model", default="", help="model name (default: the server's default model)")
    p.add_argument("--version", default="", help="model version (default: the newest ready one)")
    p.add_argument("--top-k", type=int, default=3, help="how many labels per image (default 3)")
    p.add_argument("--batch-size", type=int, default=64, help="images per request (default 64)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-request deadline in seconds")
    p.add_argument("--tls-ca", metavar="PEM", help="use TLS, trusting this CA (PEM file)")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate for mTLS (with --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="client private key for mTLS")
    p.add_argument("--token", default=os.environ.get("CNN_TOKEN", ""),
                   help="bearer token (default: $CNN_TOKEN)")
    p.add_argument("--json", action="store_true", help='one JSON object per image: {"image", "top_k": [{"label", "index", "probability"}]}')
    p.set_defaults(func=run_classify)


def run_classify(args) -> int:
    if args.top_k < 1:
        print("cnn classify: --top-k must be at least 1", file=sys.stderr)
        return 2
    paths = [Path(p) for p in args.images]
    data = []
    for p in paths:
        try:
            data.append(p.read_bytes())
        except OSError as e:
            print(f"cnn classify: cannot read {p}: {e.strerror}", file=sys.stderr)
            return 2
    tls = {}
    for key, path in (("tls_ca", args.tls_ca), ("tls_cert", args.tls_cert), ("tls_key", args.tls_key)):
        if path:
            try:
                tls[key] = Path(path).read_bytes()
            except OSError as e:
                print(f"cnn classify: cannot read --{key.replace('_', '-')} {path}: {e.strerror}", file=sys.stderr)
                return 2
    try:
        with ClassificationClient(args.server, timeout_s=args.timeout_s, token=args.token, **tls) as c:
            for start in range(0, len(data), max(1, args.batch_size)):
                chunk = slice(start, start + max(1, args.batch_size))
                results = c.classify(data[chunk], top_k=args.top_k, model=args.model, version=args.version)
                for path, preds in zip(paths[chunk], results):
                    if args.json:
                        print(json.dumps({"image": str(path), "model": c.last_model[0], "version": c.last_model[1],
                                          "top_k": [{"label": p.label, "index": p.index, "probability": round(p.probability, 6)}
                                                    for p in preds]}))
                    else:
                        best = ", ".join(f"{p.label} ({p.probability:.3f})" for p in preds)
                        print(f"{path}: {best}")
    except grpc.RpcError as e:
        print(f"cnn classify: {args.server}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    return 0
