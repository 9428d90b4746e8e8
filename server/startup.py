"""Before and after `cnn serve` starts: the port pre-check and the one start-up summary line.

`check_addresses(config)` test-binds every configured listen address (gRPC, metrics, HTTP) before any model is
loaded, so a taken port costs a second, not a repository's worth of loading, and fails with one line that
names the address, the setting and the flag:

    cnn serve: cannot listen on 127.0.0.1:8001 (grpc_address, the gRPC port): address already in use;
    another server is running there? stop it or choose another port with --grpc-address HOST:PORT

`summary_line(...)` builds the ready line that tests and scripts parse (client/testing.py READY_LINE keeps
its prefix `serving gRPC on HOST:PORT metrics URL|off [http URL|off] models: ...`) and then says what is on:

    serving gRPC on 127.0.0.1:8001 metrics http://127.0.0.1:8002/metrics http http://127.0.0.1:8000 models: lenet5-digits v1
    [CPUExecutionProvider]; TLS: mutual (client certificates required); tokens: inference, repository
    (open: health, metadata, statistics)

Standard library only (plus the server's own config types), so it can be imported and tested without
grpcio or onnxruntime state.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from server.config import ServerConfig

GROUPS = ("health", "metadata", "inference", "statistics", "repository")  # as in server/security.py

_FLAGS = {
    "grpc_address": ("--grpc-address", "the gRPC port"),
    "metrics_address": ("--metrics-address", "the Prometheus /metrics port"),
    "http_address": ("--http-address", "the HTTP port"),
}


class AddressInUse(OSError):
    """A configured listen address cannot be bound; the message is the one line to print."""

    def __str__(self) -> str:  # the sentence alone, without OSError's "[Errno 98]" prefix
        return str(self.strerror)


@dataclass(frozen=True)
class Listen:
    key: str  # the ServerConfig field
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def listen_addresses(config: ServerConfig) -> list[Listen]:
    """The addresses `config` listens on (metrics_address / http_address '' are off and left out)."""
    out = []
    for key in _FLAGS:
        value = getattr(config, key, "")
        if not value:
            continue
        host, _, port = str(value).rpartition(":")
        out.append(Listen(key, host, int(port)))
    return out


def _family_and_host(host: str) -> tuple[socket.AddressFamily, str]:
    bare = host.strip("[]")
    if bare in ("", "*"):
        return socket.AF_INET, "0.0.0.0"
    if ":" in bare:
        return socket.AF_INET6, bare
    return socket.AF_INET, bare


def probe_bind(host: str, port: int, *, reuse_port: bool = False) -> OSError | None:
    """Bind (and listen on) host:port with the options the server uses, then let it go. None if it could;
    else the OSError. Port 0 always binds."""
    family, bare = _family_and_host(host)
    try:
        infos = socket.getaddrinfo(bare, port, family, socket.SOCK_STREAM)
    except socket.gaierror as e:
        return OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {e.strerror}")
    sockaddr = infos[0][4]
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        # gRPC and http.server both set SO_REUSEADDR: a port in TIME_WAIT from a server that just stopped
        # is free for them, and must be free here too.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(sockaddr)
        s.listen(1)
        return None
    except OSError as e:
        return e
    finally:
        s.close()


def check_addresses(config: ServerConfig, where: Mapping[str, str] | None = None) -> None:
    """Raise AddressInUse, naming the address, its setting (and where it came from) and the flag, if a
    configured listen address cannot be bound. Called before any model is loaded."""
    where = where or {}
    for listen in listen_addresses(config):
        if listen.port == 0:
            continue  # any free port: always available
        err = probe_bind(listen.host, listen.port, reuse_port=listen.key == "grpc_address" and config.workers > 1)
        if err is None:
            continue
        flag, what = _FLAGS[listen.key]
        source = f", from {where[listen.key]}" if listen.key in where else ""
        if err.errno == errno.EADDRINUSE:
            why = (
                "address already in use: another server (or another program) is listening there; "
                f"stop it or choose another port with {flag} HOST:PORT"
            )
        elif err.errno == errno.EACCES:
            why = f"permission denied (ports below 1024 need privileges); choose another port with {flag} HOST:PORT"
        elif err.errno == errno.EADDRNOTAVAIL:
            why = (
                f"no such local address ({err.strerror}); use 127.0.0.1, 0.0.0.0 or an address of this host with {flag}"
            )
        else:
            why = f"{err.strerror or err}; choose another address with {flag} HOST:PORT"
        raise AddressInUse(err.errno or 0, f"cannot listen on {listen.address} ({listen.key}, {what}{source}): {why}")


def tls_summary(config: ServerConfig) -> str:
    if not config.tls_cert_file:
        return "TLS: off (plaintext)"
    if config.tls_client_ca_file:
        return "TLS: mutual (client certificates required)"
    return "TLS: on (server certificate only)"


def tokens_summary(tokens: Mapping[str, Iterable[str]] | None) -> str:
    """Which RPC groups need a bearer token; `tokens` is server/security.py load_tokens()' result."""
    if not tokens:
        return "tokens: off (every RPC group open)"
    locked = [g for g in GROUPS if g in tokens]
    open_ = [g for g in GROUPS if g not in tokens]
    return f"tokens: {', '.join(locked)}" + (f" (open: {', '.join(open_)})" if open_ else " (every group)")


def models_summary(models: Iterable[tuple[str, Iterable[int | str], str]]) -> str:
    """'lenet5-digits v1,2 [CPUExecutionProvider], other v3 [CUDAExecutionProvider]' or 'none', from
    (name, versions, provider) per served model ('' when the provider is not known)."""
    parts = []
    for name, versions, provider in sorted(models, key=lambda m: m[0]):
        shown = ",".join(sorted(map(str, versions), key=lambda v: int(v) if v.isdigit() else 0))
        if not shown:
            continue
        parts.append(f"{name} v{shown}" + (f" [{provider}]" if provider else ""))
    return ", ".join(parts) or "none"


def summary_line(
    host: str,
    grpc_port: int,
    metrics: str,
    models: str,
    config: ServerConfig,
    tokens: Mapping[str, Iterable[str]] | None,
    http: str | None = None,
) -> str:
    """The ready line: the prefix client/testing.py parses (`http URL|off` when the server has an HTTP
    setting), then TLS and tokens. `metrics` is the URL or 'off'; `models` is models_summary()'s text."""
    http_part = f" http {http}" if http is not None else ""
    return (
        f"serving gRPC on {host}:{grpc_port} metrics {metrics}{http_part} models: {models}; "
        f"{tls_summary(config)}; {tokens_summary(tokens)}"
    )
