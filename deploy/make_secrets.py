"""Make the secrets a local ivr-bridge deployment needs, once (files that exist are kept).

    python deploy/make_secrets.py DIR [--host NAME ...]

Writes into DIR (mode 0644: see make()):
  tls.crt, tls.key      a self-signed certificate for the TLS proxy (nginx), for NAMEs / addresses
                        (default: localhost, 127.0.0.1); replace them with real ones in production
  metrics_token         BRIDGE_METRICS_TOKEN, also read by Prometheus (credentials_file)
  postgres_password     the PostgreSQL password (the postgres image reads POSTGRES_PASSWORD_FILE)
  grafana_password      Grafana's admin password (GF_SECURITY_ADMIN_PASSWORD__FILE)
  bridge.env            the bridges' shared secrets as KEY=value lines: BRIDGE_METRICS_TOKEN,
                        BRIDGE_ADMIN_TOKEN, BRIDGE_STREAM_SECRET (the same on every replica: a stream
                        token issued by one is checked by another), BRIDGE_DATA_KEY, BRIDGE_DATABASE_URL

docker/compose.yaml runs this in its `secrets` init service (the bridge image has Python and the
`cryptography` package); tests/deploy/test_nginx_proxy.py uses its certificate function.
Needs only the standard library and `cryptography`.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import os
import secrets
import sys
from pathlib import Path


def self_signed_certificate(hosts: list[str], days: int = 365) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM): ECDSA P-256, subjectAltName = `hosts` (names or IPs)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write(path: Path, data: bytes) -> bool:
    if path.exists():
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return True


def _read(path: Path) -> str:
    return path.read_text().strip()


def make(directory: Path, hosts: list[str], *, postgres_host: str = "postgres") -> list[str]:
    """Create what is missing in `directory`; returns the names written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    if not (directory / "tls.crt").exists() or not (directory / "tls.key").exists():
        cert, key = self_signed_certificate(hosts)
        (directory / "tls.crt").unlink(missing_ok=True)
        (directory / "tls.key").unlink(missing_ok=True)
        _write(directory / "tls.key", key)
        _write(directory / "tls.crt", cert)
        written += ["tls.crt", "tls.key"]
    for name in ("metrics_token", "postgres_password", "grafana_password"):
        if _write(directory / name, secrets.token_urlsafe(32).encode()):
            written.append(name)
    password = _read(directory / "postgres_password")
    env = {
        "BRIDGE_METRICS_TOKEN": _read(directory / "metrics_token"),
        "BRIDGE_ADMIN_TOKEN": secrets.token_urlsafe(32),
        "BRIDGE_STREAM_SECRET": secrets.token_urlsafe(32),
        "BRIDGE_DATA_KEY": base64.b64encode(os.urandom(32)).decode(),
        "BRIDGE_DATABASE_URL": f"postgresql+asyncpg://ivr_bridge:{password}@{postgres_host}:5432/ivr_bridge",
    }
    text = "".join(f"{k}={v}\n" for k, v in env.items())
    if _write(directory / "bridge.env", text.encode()):
        written.append("bridge.env")
    # The compose services run as different users (the bridge as uid 10001, nginx, prometheus as
    # nobody, postgres): the files are readable by all of them, on a volume mounted read-only into
    # those containers only. Production: Kubernetes Secrets or your secret store (docs/deploy.md).
    for path in directory.iterdir():
        path.chmod(0o644)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--host", action="append", dest="hosts", help="certificate name or address")
    args = parser.parse_args(argv)
    written = make(args.directory, args.hosts or ["localhost", "127.0.0.1"])
    print(
        f"{args.directory}: {'wrote ' + ', '.join(written) if written else 'nothing to do'}", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
