"""TLS for the listeners that take it (RTMPS ingest, HTTPS origin), and a self-signed
pair for a local try.

    ctx = server_context(settings)            # None until tls_cert is set
    cert, key = make_self_signed(Path("tls"), ["localhost", "127.0.0.1"])

Certificates and keys are PEM files named in the settings (``tls_cert``,
``tls_key``; the key may sit in the certificate file). A file that cannot be
read or does not hold a matching pair is a ``ConfigError`` naming the file, at
start-up. TLS 1.2 is the minimum; Python's default ciphers.

``make_self_signed`` (``tidecast tls-selfsigned --out DIR``) writes a P-256 key
(mode 0600) and a certificate for the given names and addresses, valid for
``days``. It is its own issuer, marked as a CA so clients can trust exactly
that file (``curl --cacert``, ``httpx.Client(verify=...)``); OBS, ffmpeg and
GStreamer accept it with verification off, as they do for any self-signed one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

from tidecast.config import ConfigError, Settings

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The server-side TLS context from the settings, or None when TLS is off."""
    if not settings.tls_cert:
        return None
    cert = Path(settings.tls_cert)
    key = Path(settings.tls_key) if settings.tls_key else None
    for path in (cert, key):
        if path is not None and not path.is_file():
            raise ConfigError(f"TLS: {path} is not a file (tls_cert / tls_key)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"TLS: cannot load the certificate {cert}"
                          f"{f' with the key {key}' if key else ''}: {exc}") from exc  # fmt: skip
    return ctx


def make_self_signed(out_dir: Path, names: Sequence[str] = DEFAULT_NAMES,
                     days: int = 30) -> tuple[Path, Path]:  # fmt: skip
    """Write ``cert.pem`` and ``key.pem`` into ``out_dir``; returns their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not names:
        raise ValueError("a certificate needs at least one host name or address")
    if not 1 <= days <= 825:
        raise ValueError("days must be 1..825")
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tidecast self-signed")])  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=False,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / "cert.pem", out_dir / "key.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))  # fmt: skip
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
