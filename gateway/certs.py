"""A small private PKI and Mosquitto password lines, for operators without a PKI of their own.

`fleetgate certs` (gateway/cli.py) is the command line over this module. Operators who have a
PKI issue the same files with it; nothing in the gateway or the broker config depends on this
module having made them.

Layout of a certificates directory DIR:

    DIR/ca.crt               the CA certificate: the broker's cafile, the gateway's
                             mqtt_ca_file, and what every device pins
    DIR/ca.key               the CA's private key (0600): keep it off the broker if you can
    DIR/server.crt           the broker's certificate (SubjectAltName = the given hosts and IPs;
    DIR/server.key           EKU serverAuth) and its key (0600)
    DIR/clients/NAME.crt     a client certificate (CN = NAME = the MQTT username under
    DIR/clients/NAME.key     `use_identity_as_username`; EKU clientAuth) and its key (0600)

Keys are EC P-256 (what MCU TLS stacks such as mbedTLS and wolfSSL support, and small and fast
on them), unencrypted PKCS#8 PEM; signatures are ECDSA with SHA-256. Keys are written 0600 and
never printed. A client NAME follows the device-id rules (device_protocol.is_valid_device_id):
the broker's ACL puts it into topics (`%u`), so `+`, `#` and `/` must never occur in it.

Passwords: `password_line` makes a line of Mosquitto 2.0's own password file format
(`user:$7$101$<base64 12-byte salt>$<base64 PBKDF2-HMAC-SHA512, 101 iterations, 64 bytes>`,
the same as `mosquitto_passwd`), `set_password` adds or replaces a user's line in a file.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_protocol import is_valid_device_id
from gateway.errors import ConfigError

CA_DAYS = 3650
LEAF_DAYS = 825  # the CA/Browser limit of the time; devices get a new certificate before then
_BACKDATE = dt.timedelta(minutes=5)  # tolerates a little clock skew between host and devices

# Mosquitto 2.0's "$7$" scheme (src/password_mosq.c): PBKDF2-HMAC-SHA512, 12-byte salt,
# 64-byte hash, 101 iterations by default.
_PW_ITERATIONS = 101
_PW_SALT_BYTES = 12
_PW_HASH_BYTES = 64

_KEY_MODE = 0o600
_NEW_PASSWD_MODE = 0o600


@dataclass(frozen=True)
class CaPaths:
    """Where the files of one certificates directory are (see the module docstring)."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    clients_dir: Path

    def client(self, name: str) -> tuple[Path, Path]:
        """(cert, key) paths of a client NAME."""
        return self.clients_dir / f"{name}.crt", self.clients_dir / f"{name}.key"


def ca_paths(directory: Path | str) -> CaPaths:
    d = Path(directory)
    return CaPaths(dir=d, ca_cert=d / "ca.crt", ca_key=d / "ca.key",
                   server_cert=d / "server.crt", server_key=d / "server.key",
                   clients_dir=d / "clients")


def init_ca(directory: Path | str, hosts: Sequence[str], ips: Sequence[str], *,
            days: int = CA_DAYS, server_days: int = LEAF_DAYS) -> CaPaths:
    """A new CA in DIR and a server certificate for `hosts` (DNS names) and `ips`.

    Refuses a DIR that already holds a CA key: a new CA would silently invalidate every
    certificate issued by the old one.
    """
    paths = ca_paths(directory)
    if paths.ca_key.exists():
        raise ConfigError(f"{paths.ca_key} exists: {paths.dir} already holds a CA",
                          hint="issue with `fleetgate certs issue`, or use a new directory")
    dns_names = [_check_host(h) for h in hosts]
    addresses = [_check_ip(a) for a in ips]
    if not dns_names and not addresses:
        raise ConfigError("a server certificate needs at least one host name or IP address")
    _check_days(days)
    _check_days(server_days)
    paths.dir.mkdir(parents=True, exist_ok=True)
    now = _now()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetgate"),
        # Dated and salted so two CAs made by this tool are told apart in logs and errors.
        x509.NameAttribute(NameOID.COMMON_NAME,
                           f"fleetgate CA {now:%Y-%m-%d} {secrets.token_hex(4)}"),
    ])
    ca_pub = ca_key.public_key()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_pub), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(paths.ca_key, ca_key)
    _write_cert(paths.ca_cert, ca_cert)
    san: list[x509.GeneralName] = [x509.DNSName(h) for h in dns_names]
    san += [x509.IPAddress(a) for a in addresses]
    cn = dns_names[0] if dns_names else str(addresses[0])
    server_key, server_cert = _leaf(ca_cert, ca_key, cn, ExtendedKeyUsageOID.SERVER_AUTH,
                                    server_days, san)
    _write_key(paths.server_key, server_key)
    _write_cert(paths.server_cert, server_cert)
    return paths


def issue_client(directory: Path | str, name: str, *, days: int = LEAF_DAYS,
                 overwrite: bool = False) -> tuple[Path, Path]:
    """A client certificate with CN = `name` signed by DIR's CA: (cert path, key path).

    `name` is a device id, or the gateway's own user (`fleetgate` in the shipped ACL).
    An existing certificate for `name` is kept unless `overwrite` (a re-issue gives a new key).
    """
    if not is_valid_device_id(name):
        raise ConfigError(f"{name!r} is not a valid device id",
                          hint="1-64 of A-Z a-z 0-9 _ . -, starting with a letter or digit")
    _check_days(days)
    paths = ca_paths(directory)
    ca_cert, ca_key = load_ca(paths)
    cert_path, key_path = paths.client(name)
    if not overwrite and (cert_path.exists() or key_path.exists()):
        raise ConfigError(f"{cert_path} exists: {name!r} already has a certificate",
                          hint="pass --force to replace it with a new key and certificate")
    paths.clients_dir.mkdir(parents=True, exist_ok=True)
    key, cert = _leaf(ca_cert, ca_key, name, ExtendedKeyUsageOID.CLIENT_AUTH, days, [])
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def load_ca(paths: CaPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """DIR's CA certificate and key; ConfigError when DIR holds no CA made by `init_ca`."""
    try:
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    except FileNotFoundError as e:
        raise ConfigError(f"{paths.dir} holds no CA ({e.filename} is missing)",
                          hint=f"run `fleetgate certs init {paths.dir}` first") from e
    except ValueError as e:
        raise ConfigError(f"the CA in {paths.dir} cannot be read: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{paths.ca_key} is not an EC key")
    return cert, key


def password_line(user: str, password: str, *, salt: bytes | None = None,
                  iterations: int = _PW_ITERATIONS) -> str:
    """`user:$7$...`: one line of a Mosquitto 2.0 password file (no newline)."""
    _check_user(user)
    if not password:
        raise ConfigError(f"empty password for {user!r}")
    if "\n" in password or "\r" in password or "\0" in password:
        raise ConfigError(f"the password for {user!r} contains a line break or NUL")
    salt = secrets.token_bytes(_PW_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, _PW_HASH_BYTES)
    b64 = base64.b64encode
    return f"{user}:$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def set_password(file: Path | str, user: str, password: str) -> bool:
    """Add `user`'s line to a Mosquitto password file, or replace it: True if it replaced one.

    Other lines are kept as they are. The file is replaced atomically (a broker reloading on
    SIGHUP never reads half a file) and keeps its mode and owner; a new file is made 0600.
    """
    path = Path(file)
    line = password_line(user, password)
    try:
        old = path.read_text().splitlines()
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        old, st = [], None
    kept = [entry for entry in old if entry.split(":", 1)[0] != user]
    replaced = len(kept) != len(old)
    _replace_file(path, "".join(f"{entry}\n" for entry in [*kept, line]), st)
    return replaced


# --- helpers


def _leaf(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, cn: str,
          usage: x509.ObjectIdentifier, days: int,
          san: list[x509.GeneralName]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # Created 0600 (never world-readable, not even for a moment), replacing an older key.
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _KEY_MODE)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), _KEY_MODE)  # whatever the umask
        f.write(pem)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)


def _replace_file(path: Path, text: str, like: os.stat_result | None) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            if like is None:
                os.fchmod(f.fileno(), _NEW_PASSWD_MODE)
            else:
                os.fchmod(f.fileno(), like.st_mode & 0o7777)
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), like.st_uid, like.st_gid)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_user(user: str) -> None:
    # ":" ends the user name in the file; a line break would inject another line.
    if not user or any(c in user for c in ":\n\r\0"):
        raise ConfigError(f"{user!r} cannot be a Mosquitto user name",
                          hint="non-empty, without ':' or line breaks")


def _check_host(host: str) -> str:
    name = host.strip().rstrip(".")
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(name)
        raise ConfigError(f"{host!r} is an IP address, not a host name", hint="pass it with --ip")
    labels = name.split(".")
    if not name or any(not label or len(label) > 63 for label in labels) or any(
            not (c.isalnum() or c in "-*") for c in name.replace(".", "")) or not name.isascii():
        raise ConfigError(f"{host!r} is not a DNS host name",
                          hint="pass IP addresses with --ip")
    return name


def _check_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(address.strip())
    except ValueError as e:
        raise ConfigError(f"{address!r} is not an IP address") from e


def _check_days(days: int) -> None:
    if days < 1:
        raise ConfigError(f"validity of {days} days: at least 1 day")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
