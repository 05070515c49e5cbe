"""The local stack's certificates: made once, private keys private, the server certificate renewed near
its end under the same CA (so devices that pin the CA never notice)."""

from __future__ import annotations

import os
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from kernel.settings import MqttTarget, with_ca_file
from localstack import tls


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_and_server_certificate_are_made_with_private_keys_600(tmp_path: Path) -> None:
    files = tls.tls_files(tmp_path)
    old_umask = os.umask(0)  # modes must not depend on the caller's umask
    try:
        assert tls.ensure(files, None, datetime.now(UTC))
    finally:
        os.umask(old_umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files.folder.iterdir()}
    assert modes == {"ca.crt": 0o644, "ca.key": 0o600, "server.crt": 0o644, "server.key": 0o600}
    server, ca = load(files.server_cert), load(files.ca_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "localhost", *tls.server_names()} <= names
    server.verify_directly_issued_by(ca)
    assert server.not_valid_after_utc - datetime.now(UTC) > timedelta(days=365)
    assert ca.not_valid_after_utc - datetime.now(UTC) > timedelta(days=10 * 365)
    # what a client does: trust the CA, check the name
    context = ssl.create_default_context(cafile=str(files.ca_cert))
    assert context.cert_store_stats()["x509_ca"] == 1


def test_the_server_certificate_is_renewed_near_its_end_and_the_ca_is_kept(tmp_path: Path) -> None:
    files = tls.tls_files(tmp_path)
    now = datetime.now(UTC)
    tls.ensure(files, None, now)
    ca_before, server_before = files.ca_cert.read_bytes(), load(files.server_cert)
    assert not tls.ensure(files, None, now + timedelta(days=30))  # far from its end: kept
    assert load(files.server_cert) == server_before
    later = server_before.not_valid_after_utc - tls.RENEW_BEFORE + timedelta(days=1)
    assert tls.ensure(files, None, later)
    renewed = load(files.server_cert)
    assert files.ca_cert.read_bytes() == ca_before
    assert renewed.serial_number != server_before.serial_number and renewed.not_valid_after_utc > later
    renewed.verify_directly_issued_by(load(files.ca_cert))
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600


def test_renewal_rules(tmp_path: Path) -> None:
    files = tls.tls_files(tmp_path)
    now = datetime.now(UTC)
    tls.ensure(files, None, now)
    server, ca = load(files.server_cert), load(files.ca_cert)
    assert not tls.needs_new_server_cert(server, ca, tls.server_names(), now)
    assert tls.needs_new_server_cert(server, ca, [*tls.server_names(), "renamed-host"], now)
    other = tls.tls_files(tmp_path / "other")
    tls.ensure(other, None, now)
    assert tls.needs_new_server_cert(server, load(other.ca_cert), tls.server_names(), now)  # another CA
    assert tls.needs_new_server_cert(server, ca, tls.server_names(), server.not_valid_after_utc - timedelta(days=1))


def test_mqtts_urls_keep_the_account_and_name_the_ca(tmp_path: Path) -> None:
    url = tls.mqtts_url("mqtt://svc:p%40ss@127.0.0.1:1883", 8883, tmp_path / "ca.crt")
    assert url == f"mqtts://svc:p%40ss@127.0.0.1:8883?cafile={tmp_path}/ca.crt"


def test_mqtt_urls_parse_with_tls_and_a_ca_file(tmp_path: Path) -> None:
    target = MqttTarget.parse("mqtts://dev:pw@broker.example:8884?cafile=/etc/fleet/ca.crt")
    assert (target.tls, target.port, target.ca_file, target.username) == (True, 8884, "/etc/fleet/ca.crt", "dev")
    assert MqttTarget.parse("mqtts://broker.example").port == 8883
    assert MqttTarget.parse("mqtts://h", default_ca_file="/ca.pem").ca_file == "/ca.pem"
    assert MqttTarget.parse("mqtt://h").ssl_context() is None
    assert with_ca_file("mqtts://u:p@h:1", "/x/ca.crt") == "mqtts://u:p@h:1?cafile=/x/ca.crt"
    assert with_ca_file("mqtts://h:1?cafile=/mine", "/x") == "mqtts://h:1?cafile=/mine"  # the URL's own wins
    assert with_ca_file("mqtt://h:1", "/x") == "mqtt://h:1"
