"""Why a gRPC connection could not be made, in words a user can act on.

gRPC itself only says "failed to connect", "Socket closed" or "Deadline Exceeded" and retries quietly.
`diagnose(address, ...)` probes the address the same way the channel would (TCP, then TLS with the same
CA / client certificate / ALPN h2 / host-name check) with the standard library, and returns one sentence:

    nothing is listening on 127.0.0.1:8001 (connection refused): ...
    the server at 127.0.0.1:8001 speaks TLS and this client does not: ...
    the server at 127.0.0.1:8001 does not speak TLS: ...
    the server's certificate at 127.0.0.1:8001 was refused: ...
    the server at 127.0.0.1:8001 requires a client certificate (mutual TLS): ...
    the server at 127.0.0.1:8001 refused the client certificate client.pem: ...

or None when the probe finds nothing wrong (the caller then reports gRPC's own status).
`check_key_pair` checks a client certificate and key belong together before gRPC sees them (grpc aborts the
process on a certificate without its key).
"""

from __future__ import annotations

import socket
import ssl
import tempfile
from pathlib import Path

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # preface + empty SETTINGS


def split_address(address: str) -> tuple[str, int] | None:
    """'host:port' / '[v6]:port' -> (host, port); None for other gRPC target forms (dns:///..., unix:...)."""
    if "://" in address or address.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def check_key_pair(cert: bytes, key: bytes, cert_name: str, key_name: str) -> str | None:
    """None if the PEM certificate and private key load together, else why not (one sentence)."""
    with tempfile.TemporaryDirectory() as d:
        c, k = Path(d) / "cert.pem", Path(d) / "key.pem"
        c.write_bytes(cert)
        k.write_bytes(key)
        try:
            ssl.create_default_context().load_cert_chain(c, k)
        except ssl.SSLError as e:
            reason = (e.reason or str(e)).replace("_", " ").lower()
            return (
                f"--tls-cert {cert_name} and --tls-key {key_name} do not load as a certificate and its key ({reason})"
            )
    return None


def _tls_context(tls_ca: bytes | None, tls_cert: bytes | None, tls_key: bytes | None, tmp: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if tls_ca:
        ctx = ssl.create_default_context(cadata=tls_ca.decode("ascii", "replace"))
    if tls_cert and tls_key:
        (tmp / "c.pem").write_bytes(tls_cert)
        (tmp / "k.pem").write_bytes(tls_key)
        ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    ctx.set_alpn_protocols(["h2"])
    return ctx


def diagnose(
    address: str,
    *,
    tls: bool = False,
    tls_ca: bytes | None = None,
    tls_cert: bytes | None = None,
    tls_key: bytes | None = None,
    names: dict[str, str] | None = None,
    timeout_s: float = 3.0,
) -> str | None:
    """One sentence saying why a channel to `address` with these settings cannot work, or None.

    `names` maps 'tls_ca' / 'tls_cert' to the file names to quote in the message."""
    names = names or {}
    hp = split_address(address)
    if hp is None:
        return None
    host, port = hp
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except ConnectionRefusedError:
        return (
            f"nothing is listening on {address} (connection refused): start the server (`cnn serve`, or "
            f"scripts/run.sh) or point --server at the address it prints"
        )
    except socket.gaierror as e:
        return f"cannot resolve the host of {address}: {e.strerror}"
    except TimeoutError:
        return f"no answer from {address} within {timeout_s:g} s (host down, or a firewall drops the connection)"
    except OSError as e:
        return f"cannot connect to {address}: {e.strerror or e}"
    use_tls = tls or bool(tls_ca) or bool(tls_cert)
    with sock, tempfile.TemporaryDirectory() as d:
        if not use_tls:
            return _plaintext_against_tls(sock, host, address)
        try:
            ctx = _tls_context(tls_ca, tls_cert, tls_key, Path(d))
        except ssl.SSLError as e:
            return f"the TLS settings do not load: {e.reason or e}"
        try:
            with ctx.wrap_socket(sock, server_hostname=host) as tls_sock:
                tls_sock.settimeout(timeout_s)
                tls_sock.sendall(H2_PREFACE)
                # the server's SETTINGS frame; a gRPC server that wants a client certificate it did not get (or
                # does not accept) closes the connection here, after a TLS 1.3 handshake that looked fine
                if tls_sock.recv(1) == b"":
                    return _client_certificate_refused(address, tls_cert is not None, names.get("tls_cert", ""))
        except ssl.SSLCertVerificationError as e:
            ca = f"--tls-ca {names['tls_ca']}" if names.get("tls_ca") else "the system's trusted CAs"
            return (
                f"the server's certificate at {address} was refused: {e.verify_message}; "
                f"it is not signed by {ca}, or not issued for {host} (pass the CA that signed it with --tls-ca)"
            )
        except ssl.SSLError as e:
            reason = str(e.reason or e)
            if (
                "WRONG_VERSION_NUMBER" in reason
                or "RECORD_LAYER_FAILURE" in reason
                or "PACKET_LENGTH_TOO_LONG" in reason
            ):
                return (
                    f"the server at {address} does not speak TLS (it answered in plaintext): drop --tls-ca/"
                    f"--tls-cert/--tls-key, or start the server with --tls-cert-file and --tls-key-file"
                )
            if "CERTIFICATE_REQUIRED" in reason or any(
                s in reason
                for s in (
                    "UNKNOWN_CA",
                    "BAD_CERTIFICATE",
                    "CERTIFICATE_UNKNOWN",
                    "DECRYPT_ERROR",
                    "ACCESS_DENIED",
                    "UNSUPPORTED_CERTIFICATE",
                    "HANDSHAKE_FAILURE",
                )
            ):
                return _client_certificate_refused(address, tls_cert is not None, names.get("tls_cert", ""))
            if "NO_APPLICATION_PROTOCOL" in reason:
                return f"the server at {address} speaks TLS but not HTTP/2 (ALPN h2): is it a gRPC server?"
            return f"the TLS handshake with {address} failed: {reason.lower().replace('_', ' ')}"
        except (ConnectionResetError, BrokenPipeError, TimeoutError, OSError):
            return None
    return None


def _plaintext_against_tls(sock: socket.socket, host: str, address: str) -> str | None:
    """The client speaks plaintext: does the server at the other end expect TLS? Offer a handshake and see."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with ctx.wrap_socket(sock, server_hostname=host):
            pass
    except ssl.SSLError as e:
        reason = str(e.reason or e)
        if "ALERT" not in reason:  # no TLS at the other end (it closed, or answered in plaintext)
            return None
    except OSError:
        return None
    return (
        f"the server at {address} speaks TLS and this client does not: pass --tls-ca CA.pem (the CA that "
        f"signed its certificate; add --tls-cert/--tls-key if it requires client certificates)"
    )


def _client_certificate_refused(address: str, sent: bool, cert_name: str) -> str:
    if not sent:
        return (
            f"the server at {address} requires a client certificate (mutual TLS) and closed the connection: "
            f"pass --tls-cert CERT.pem --tls-key KEY.pem, signed by the CA the server trusts"
        )
    return (
        f"the server at {address} refused the client certificate --tls-cert {cert_name} and closed the "
        f"connection: it must be signed by the CA in the server's tls_client_ca_file"
    )
