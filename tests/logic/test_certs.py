"""gateway.certs: the CA, server and client certificates verify as TLS peers would check them,
keys stay private, and password lines are Mosquitto's own."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from gateway import certs
from gateway.errors import ConfigError
from tests.support.tools import system_tool


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _store(paths: certs.CaPaths) -> Store:
    return Store([_cert(paths.ca_cert)])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_ca_and_a_server_certificate_a_tls_client_accepts(tmp_path: Path) -> None:
    paths = certs.init_ca(tmp_path / "pki", ["broker.example", "localhost"], ["127.0.0.1", "::1"])
    server = _cert(paths.server_cert)
    verifier = PolicyBuilder().store(_store(paths)).build_server_verifier(
        x509.DNSName("broker.example"))
    verifier.verify(server, [])  # raises when the chain or the name does not hold
    PolicyBuilder().store(_store(paths)).build_server_verifier(
        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))).verify(server, [])
    with pytest.raises(VerificationError):
        PolicyBuilder().store(_store(paths)).build_server_verifier(
            x509.DNSName("other.example")).verify(server, [])

    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("::1")]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ca = _cert(paths.ca_cert)
    assert str(ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value).startswith(
        "fleetgate CA ")
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    assert ca.signature_hash_algorithm is not None
    assert ca.signature_hash_algorithm.name == "sha256"


def test_client_certificates_carry_the_device_id_and_verify(tmp_path: Path) -> None:
    paths = certs.init_ca(tmp_path, ["localhost"], [])
    cert_path, key_path = certs.issue_client(tmp_path, "dev-a")
    assert (cert_path, key_path) == paths.client("dev-a")
    assert cert_path == tmp_path / "clients" / "dev-a.crt"
    cert = _cert(cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-a"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    # cryptography's client verifier demands a SubjectAltName (web PKI); device certificates
    # name the device in the CN only, so check the signature here and the chain with openssl.
    cert.verify_directly_issued_by(_cert(paths.ca_cert))
    # The key on disk is the certificate's key.
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()


def test_a_certificate_of_another_ca_does_not_verify(tmp_path: Path) -> None:
    ours = certs.init_ca(tmp_path / "ours", ["localhost"], [])
    certs.init_ca(tmp_path / "theirs", ["localhost"], [])
    foreign, _ = certs.issue_client(tmp_path / "theirs", "dev-a")
    # Two CAs made by init never share a name; either way the chain does not hold.
    with pytest.raises((InvalidSignature, ValueError)):
        _cert(foreign).verify_directly_issued_by(_cert(ours.ca_cert))
    openssl = system_tool("openssl", "openssl")
    result = subprocess.run([openssl, "verify", "-CAfile", str(ours.ca_cert), str(foreign)],
                            capture_output=True)
    assert result.returncode != 0


def test_openssl_agrees(tmp_path: Path) -> None:
    openssl = system_tool("openssl", "openssl")
    paths = certs.init_ca(tmp_path, ["localhost"], ["127.0.0.1"])
    cert_path, _ = certs.issue_client(tmp_path, "dev-a")
    for leaf, purpose in ((paths.server_cert, "sslserver"), (cert_path, "sslclient")):
        result = subprocess.run([openssl, "verify", "-purpose", purpose, "-CAfile",
                                 str(paths.ca_cert), str(leaf)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    # A server certificate is not a client certificate.
    refused = subprocess.run([openssl, "verify", "-purpose", "sslclient", "-CAfile",
                              str(paths.ca_cert), str(paths.server_cert)], capture_output=True)
    assert refused.returncode != 0


def test_keys_are_0600_and_certificates_0644(tmp_path: Path) -> None:
    paths = certs.init_ca(tmp_path, ["localhost"], [])
    cert_path, key_path = certs.issue_client(tmp_path, "fleetgate")
    for key in (paths.ca_key, paths.server_key, key_path):
        assert _mode(key) == 0o600, key
        assert b"PRIVATE KEY" in key.read_bytes()
    for cert in (paths.ca_cert, paths.server_cert, cert_path):
        assert _mode(cert) == 0o644, cert


def test_init_refuses_a_directory_with_a_ca(tmp_path: Path) -> None:
    paths = certs.init_ca(tmp_path, ["localhost"], [])
    before = paths.ca_key.read_bytes()
    with pytest.raises(ConfigError, match="already holds a CA"):
        certs.init_ca(tmp_path, ["localhost"], [])
    assert paths.ca_key.read_bytes() == before


def test_issue_refuses_a_second_certificate_unless_overwrite(tmp_path: Path) -> None:
    certs.init_ca(tmp_path, ["localhost"], [])
    _, key_path = certs.issue_client(tmp_path, "dev-a")
    first = key_path.read_bytes()
    with pytest.raises(ConfigError, match="already has a certificate"):
        certs.issue_client(tmp_path, "dev-a")
    assert key_path.read_bytes() == first
    certs.issue_client(tmp_path, "dev-a", overwrite=True)
    assert key_path.read_bytes() != first
    assert _mode(key_path) == 0o600


@pytest.mark.parametrize("name", ["dev/a", "dev+", "#", "", "-dev", "x" * 65, "dev a"])
def test_issue_refuses_names_that_are_not_device_ids(tmp_path: Path, name: str) -> None:
    certs.init_ca(tmp_path, ["localhost"], [])
    with pytest.raises(ConfigError, match="not a valid device id"):
        certs.issue_client(tmp_path, name)
    assert not (tmp_path / "clients").exists() or not any((tmp_path / "clients").iterdir())


def test_issue_without_a_ca_says_to_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="certs init"):
        certs.issue_client(tmp_path, "dev-a")


@pytest.mark.parametrize(("hosts", "ips"), [(["bad host"], []), (["127.0.0.1"], []),
                                            ([], ["not-an-ip"]), ([], [])])
def test_init_refuses_bad_names(tmp_path: Path, hosts: list[str], ips: list[str]) -> None:
    with pytest.raises(ConfigError):
        certs.init_ca(tmp_path, hosts, ips)
    assert not (tmp_path / "ca.key").exists()


def test_validity(tmp_path: Path) -> None:
    paths = certs.init_ca(tmp_path, ["localhost"], [], days=30, server_days=10)
    cert_path, _ = certs.issue_client(tmp_path, "dev-a", days=5)
    now = dt.datetime.now(dt.UTC)
    for path, days in ((paths.ca_cert, 30), (paths.server_cert, 10), (cert_path, 5)):
        cert = _cert(path)
        assert cert.not_valid_before_utc <= now
        assert abs((cert.not_valid_after_utc - now) - dt.timedelta(days=days)) < dt.timedelta(
            minutes=1)


def test_password_line_is_mosquittos_format() -> None:
    # Salt and hash from `mosquitto_passwd -b` (Mosquitto 2.0.11) for alice / secret.
    salt = base64.b64decode("y8bp9j2omlU3FtS0")
    assert certs.password_line("alice", "secret", salt=salt) == (
        "alice:$7$101$y8bp9j2omlU3FtS0$QUEqzdLQlnUfqIpp6RTneZ8AgWO1XqEKdv7IG4xw4eg9lSISJUrEDDF6"
        "jhf5NdbvCXcMIeaM9mGFqAyTsbx2fA==")
    a, b = certs.password_line("alice", "secret"), certs.password_line("alice", "secret")
    assert a != b  # a fresh salt each time
    assert a.startswith("alice:$7$101$")


def test_password_lines_verified_by_mosquitto_passwd(tmp_path: Path) -> None:
    """The same user and password with mosquitto_passwd's own salt give its very line; ours has
    the same shape. (tests/e2e/test_secure_broker.py logs in with such lines on a real broker.)"""
    tool = system_tool("mosquitto_passwd", "mosquitto")
    ours = tmp_path / "passwd"
    certs.set_password(ours, "dev-a", "pw-a")
    theirs = tmp_path / "theirs"
    subprocess.run([tool, "-c", "-b", str(theirs), "dev-a", "pw-a"], check=True)
    line, their_line = ours.read_text().strip(), theirs.read_text().strip()
    _, _, _, their_salt, _ = their_line.split("$")
    assert certs.password_line("dev-a", "pw-a", salt=base64.b64decode(their_salt)) == their_line
    assert len(line) == len(their_line)


@pytest.mark.parametrize(("user", "password"), [("a:b", "x"), ("", "x"), ("a\nb", "x"),
                                                ("a", ""), ("a", "x\ny")])
def test_password_line_refuses_what_would_break_the_file(user: str, password: str) -> None:
    with pytest.raises(ConfigError):
        certs.password_line(user, password)


def test_set_password_adds_and_replaces_keeping_other_lines(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    assert certs.set_password(path, "dev-a", "one") is False
    assert _mode(path) == 0o600
    assert certs.set_password(path, "dev-b", "two") is False
    path.chmod(0o640)
    first_b = path.read_text().splitlines()[1]
    assert certs.set_password(path, "dev-a", "three") is True
    lines = path.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["dev-b", "dev-a"]
    assert lines[0] == first_b
    assert _mode(path) == 0o640  # an operator's mode is kept
    assert not [p for p in tmp_path.iterdir() if p.name != "passwd"]  # no temp file left

