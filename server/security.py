"""Who may call what: TLS (optionally mutual) and bearer tokens per group of RPCs.

Groups (a method belongs to exactly one):
    health      grpc.health.v1.Health/*, ServerLive, ServerReady, ModelReady
    metadata    ServerMetadata, ModelMetadata, ModelConfig, ListModels, server reflection
    inference   ModelInfer, ModelStreamInfer, Classify, Explain
    statistics  ModelStatistics
    repository  RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload

The tokens file (YAML) maps a group to the tokens it accepts; a group that is not listed is open:

    inference: [app-token, admin-token]
    statistics: [admin-token]
    repository: [admin-token]

No token (or not `authorization: Bearer <token>`; the scheme in any case) -> UNAUTHENTICATED; a token this server does not know
-> UNAUTHENTICATED; a known token that the group does not accept -> PERMISSION_DENIED.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

import grpc

from server.config import ConfigError, read_yaml_mapping

log = logging.getLogger(__name__)

GROUPS = ("health", "metadata", "inference", "statistics", "repository")
_METHOD_GROUP = {
    "ServerLive": "health",
    "ServerReady": "health",
    "ModelReady": "health",
    "ServerMetadata": "metadata",
    "ModelMetadata": "metadata",
    "ModelConfig": "metadata",
    "ListModels": "metadata",
    "ModelInfer": "inference",
    "ModelStreamInfer": "inference",
    "Classify": "inference",
    "Explain": "inference",
    "ModelStatistics": "statistics",
    "RepositoryIndex": "repository",
    "RepositoryModelLoad": "repository",
    "RepositoryModelUnload": "repository",
}


def group_of(method: str) -> str:
    """'/inference.GRPCInferenceService/ModelInfer' -> 'inference'. Unknown methods count as metadata."""
    service, _, name = method.lstrip("/").rpartition("/")
    if service == "grpc.health.v1.Health":
        return "health"
    if service.startswith("grpc.reflection."):
        return "metadata"
    return _METHOD_GROUP.get(name, "metadata")


def load_tokens(path: str) -> dict[str, list[str]]:
    p = Path(path)
    data = read_yaml_mapping(p, "auth_tokens_file")  # group -> list of tokens
    out = {}
    for group, tokens in data.items():
        if group not in GROUPS:
            raise ConfigError(f"auth_tokens_file {p}: unknown group '{group}' (groups: {', '.join(GROUPS)})")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and len(t) >= 8 for t in tokens):
            raise ConfigError(
                f"auth_tokens_file {p}: '{group}' must be a non-empty list of tokens of at least 8 characters"
            )
        out[group] = tokens
    return out


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def unary(request, context):
        await context.abort(code, message)

    async def streaming(request, context):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.stream_stream_rpc_method_handler(streaming, **kw)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: dict[str, list[str]], on_denied=None) -> None:
        self.tokens = {g: [t.encode() for t in ts] for g, ts in tokens.items()}
        self.known = [t for ts in self.tokens.values() for t in ts]
        self.on_denied = on_denied or (lambda method, code: None)

    @staticmethod
    def _match(token: bytes, candidates: list[bytes]) -> bool:
        found = False
        for c in candidates:  # constant time per candidate, and every candidate is compared
            found |= hmac.compare_digest(token, c)
        return found

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        group = group_of(details.method)
        accepted = self.tokens.get(group)
        if handler is None or accepted is None:
            return handler
        header = next((v for k, v in (details.invocation_metadata or ()) if k == "authorization"), None)
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        scheme, _, credentials = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():  # RFC 7235: the scheme is case-insensitive
            code, message = (
                grpc.StatusCode.UNAUTHENTICATED,
                f"{group} calls need 'authorization: Bearer <token>' metadata",
            )
        else:
            token = credentials.strip().encode()
            if self._match(token, accepted):
                return handler
            if self._match(token, self.known):
                code, message = grpc.StatusCode.PERMISSION_DENIED, f"this token may not make {group} calls"
            else:
                code, message = grpc.StatusCode.UNAUTHENTICATED, "unknown token"
        log.warning("%s denied: %s", details.method, code.name)
        self.on_denied(details.method, code)
        return _deny(handler, code, message)


def server_credentials(cert_file: str, key_file: str, client_ca_file: str = "") -> grpc.ServerCredentials:
    """TLS with the server certificate; with a client CA, clients must present a certificate it signed."""

    def read(key: str, path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(f"config '{key}': cannot read {path}: {e.strerror}") from None

    cert, key = read("tls_cert_file", cert_file), read("tls_key_file", key_file)
    ca = read("tls_client_ca_file", client_ca_file) if client_ca_file else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)
