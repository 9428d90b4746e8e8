"""Throwaway certificates for the command-line TLS tests: a CA, a server certificate for 127.0.0.1, a
client certificate, and a second ("rogue") CA that signed nothing the server trusts."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def cert(subject: str, issuer_key, issuer: x509.Name, key, ca: bool, san_ip: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san_ip:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def pem(obj) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_pki(folder: Path) -> Path:
    """Write ca.pem, server.pem/.key (SAN 127.0.0.1), client.pem/.key (signed by ca), rogue-ca.pem and rogue-client.pem/.key (signed by the rogue CA) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, rogue_key, srv_key, cli_key, rogue_cli_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(5))
    ca = cert("cli-test-ca", ca_key, _name("cli-test-ca"), ca_key, ca=True)
    rogue = cert("rogue-ca", rogue_key, _name("rogue-ca"), rogue_key, ca=True)
    files = {
        "ca.pem": pem(ca),
        "rogue-ca.pem": pem(rogue),
        "server.pem": pem(cert("server", ca_key, _name("cli-test-ca"), srv_key, False, "127.0.0.1")),
        "server.key": pem(srv_key),
        "client.pem": pem(cert("client", ca_key, _name("cli-test-ca"), cli_key, False)),
        "client.key": pem(cli_key),
        "rogue-client.pem": pem(cert("rogue-client", rogue_key, _name("rogue-ca"), rogue_cli_key, False)),
        "rogue-client.key": pem(rogue_cli_key),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


if __name__ == "__main__":
    import sys

    print(make_pki(Path(sys.argv[1])))
