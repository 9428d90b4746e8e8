"""Transport limits for the gRPC server, and the start-up check of the TLS certificate's validity dates.

`grpc_options(cfg)` turns the server settings into grpc core channel arguments:

    max_concurrent_streams   grpc.max_concurrent_streams     HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: a client
                                                              that opens more waits (client side) for one to end
    max_connection_idle_s    grpc.max_connection_idle_ms      a connection with no call for this long gets GOAWAY
    max_connection_age_s     grpc.max_connection_age_ms       (0: off) every connection is retired after this
                             + grpc.max_connection_age_grace_ms  long, so clients re-balance; calls get the grace
    keepalive_time_s         grpc.keepalive_time_ms           the server pings an idle connection this often and
    keepalive_timeout_s      grpc.keepalive_timeout_ms        closes it if no answer comes in time (dead peers)

The number of connections is not capped here: grpcio 1.81 accepts `grpc.max_allowed_incoming_connections`
but did not enforce it when measured (7 of 7 connections served with a cap of 4). Cap connections in
front of the server (nginx `limit_conn`, the host firewall's `connlimit`), see README "Operating it safely".

`certificate_warnings(path)`: messages for a PEM certificate that has expired or is not valid yet
(the server still starts; clients will refuse the handshake), using only the standard library.
"""

from __future__ import annotations

import ssl
import time
from typing import Any


def grpc_options(cfg: Any) -> list[tuple[str, int]]:
    opts = [("grpc.max_concurrent_streams", int(cfg.max_concurrent_streams))]
    if cfg.max_connection_idle_s > 0:
        opts.append(("grpc.max_connection_idle_ms", int(cfg.max_connection_idle_s * 1000)))
    if cfg.max_connection_age_s > 0:
        opts.append(("grpc.max_connection_age_ms", int(cfg.max_connection_age_s * 1000)))
        opts.append(("grpc.max_connection_age_grace_ms", int(max(cfg.drain_grace_s, 1.0) * 1000)))
    if cfg.keepalive_time_s > 0:
        opts.append(("grpc.keepalive_time_ms", int(cfg.keepalive_time_s * 1000)))
        opts.append(("grpc.keepalive_timeout_ms", int(max(cfg.keepalive_timeout_s, 1.0) * 1000)))
    return opts


def certificate_warnings(cert_file: str, now: float | None = None) -> list[str]:
    """'expired' / 'not yet valid' messages for the first certificate in `cert_file` (empty when fine or
    when the file cannot be decoded here: the TLS setup itself reports unreadable files)."""
    try:
        info = ssl._ssl._test_decode_cert(cert_file)  # type: ignore[attr-defined]  # CPython's PEM decoder
        not_before = ssl.cert_time_to_seconds(info["notBefore"])
        not_after = ssl.cert_time_to_seconds(info["notAfter"])
    except Exception:  # noqa: BLE001 - a best-effort warning, never a reason not to start
        return []
    now = time.time() if now is None else now
    out = []
    if now > not_after:
        out.append(f"TLS certificate {cert_file} expired on {info['notAfter']}: clients will refuse the handshake")
    if now < not_before:
        out.append(
            f"TLS certificate {cert_file} is not yet valid (valid from {info['notBefore']}): "
            "clients will refuse the handshake"
        )
    return out
