"""The local stack's certificates: a private CA and the broker's server certificate, under `<state>/tls/`.

The CA is made once and kept (20 years): devices and services pin it, so it must outlive any server
certificate. The server certificate (about 2 years) names 127.0.0.1, ::1, localhost and the host's
name, and is made again, signed by the same CA, when it is within `RENEW_BEFORE` of its end, when it
was not signed by the CA on disk, or when the host's name changed. Devices that trust the CA never
notice (docs/protocol.md, "TLS").

Private keys are created with mode 600 before a byte is written, and the broker's key belongs to the
account the broker runs as (it drops root's privileges).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = dt.timedelta(days=20 * 365)
SERVER_VALIDITY = dt.timedelta(days=2 * 365)
RENEW_BEFORE = dt.timedelta(days=30)
BACKDATE = dt.timedelta(hours=1)  # a client whose clock runs a little behind still accepts a fresh certificate

Log = Callable[[str], None]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"


def tls_files(state_dir: Path) -> TlsFiles:
    return TlsFiles(Path(state_dir) / "tls")


def server_names() -> list[str]:
    """Names the server certificate must carry: loopback, and this host's name for clients on the LAN."""
    names = ["127.0.0.1", "::1", "localhost"]
    for name in (socket.gethostname(), socket.getfqdn()):
        if name and name not in names:
            names.append(name)
    return names


def needs_new_server_cert(cert: x509.Certificate, ca: x509.Certificate, names: Sequence[str], now: dt.datetime) -> bool:
    """Pure: is `cert` near its end, not signed by `ca`, or missing one of `names`?"""
    if cert.not_valid_after_utc - now < RENEW_BEFORE or cert.not_valid_before_utc > now:
        return True
    if cert.issuer != ca.subject:
        return True
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return True
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    present = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    return not set(names) <= present


def ensure(files: TlsFiles, broker_account: str | None, now: dt.datetime, log: Log | None = None) -> bool:
    """Make the CA if there is none, and a server certificate if there is none or it is due.
    `broker_account` (root only) will own the server key. True when a server certificate was made."""
    say: Log = log or (lambda _m: None)
    files.folder.mkdir(parents=True, exist_ok=True)
    files.folder.chmod(0o755)  # the broker reads its files here; ca.crt is for everyone
    if not (files.ca_cert.exists() and files.ca_key.exists()):
        say(f"creating the local certificate authority {files.ca_cert}")
        _make_ca(files, now)
        for stale in (files.server_cert, files.server_key):
            stale.unlink(missing_ok=True)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    names = server_names()
    if files.server_cert.exists() and files.server_key.exists():
        current = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        if not needs_new_server_cert(current, ca, names, now):
            _own(files.server_key, broker_account)
            return False
        say(f"renewing the broker's certificate {files.server_cert} (same CA)")
    _make_server(files, ca, names, broker_account, now)
    return True


def _make_ca(files: TlsFiles, now: dt.datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fleet local CA {socket.gethostname()}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_secret(files.ca_key, _pem_key(key), None)
    _write_public(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM))


def _make_server(
    files: TlsFiles, ca: x509.Certificate, names: Sequence[str], account: str | None, now: dt.datetime
) -> None:
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{files.ca_key} is not the stack's CA key")
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet broker")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + SERVER_VALIDITY, ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_secret(files.server_key, _pem_key(key), account)
    _write_public(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    pkcs8, plain = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, plain)


def _write_secret(path: Path, data: bytes, account: str | None) -> None:
    """A new file, mode 600 from its creation (never readable by others, not even for a moment)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        _own_fd(out.fileno(), account)
        out.write(data)
    tmp.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)


def _own_fd(descriptor: int, account: str | None) -> None:
    if account and os.geteuid() == 0:
        entry = pwd.getpwnam(account)
        os.fchown(descriptor, entry.pw_uid, entry.pw_gid)


def _own(path: Path, account: str | None) -> None:
    if account and os.geteuid() == 0:
        entry = pwd.getpwnam(account)
        if path.stat().st_uid != entry.pw_uid:
            os.chown(path, entry.pw_uid, entry.pw_gid)


def mqtts_url(url: str, port: int, ca_file: Path) -> str:
    """An `mqtt://user:pw@host:port` URL moved to the TLS listener on `port`, naming `ca_file`."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{parts.hostname}:{port}" if credentials else f"{parts.hostname}:{port}"
    return urlunsplit(("mqtts", netloc, parts.path, urlencode({"cafile": str(ca_file)}, safe="/"), ""))


def mqtts_urls(urls: T, port: int, ca_file: Path) -> T:
    """Every `mqtt_*` URL of a `StackUrls` (and of each service's `ServiceUrls`) moved to the TLS
    listener (used when the plain one is off)."""
    changes: dict[str, object] = {
        f.name: mqtts_url(getattr(urls, f.name), port, ca_file)
        for f in fields(urls)  # type: ignore[arg-type]
        if f.name.startswith("mqtt") and getattr(urls, f.name)
    }
    services = getattr(urls, "services", None)
    if services:
        changes["services"] = {name: mqtts_urls(own, port, ca_file) for name, own in services.items()}
    return replace(urls, **changes)  # type: ignore[type-var]
