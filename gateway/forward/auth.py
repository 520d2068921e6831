"""How the remote-write client proves who it is to an endpoint: the Authorization header from a
secret file (bearer token, basic auth) and the TLS context (a private CA, a client certificate).

The header is set per request by an `httpx.Auth`, never fixed at start-up: the secret file is
stat-ed on every request and read again when it changed (gateway.credentials), so an operator
fixes a wrong token by rewriting the file, without a restart. Each auth remembers the secrets it
has sent, so the client can redact exactly those from a receiver's answer (vmauth 1.79 echoes a
wrong token in its 400 body), even when the file changed while the request was in flight.
"""

from __future__ import annotations

import ssl
from collections.abc import Generator

import httpx

from gateway.credentials import CredentialFile, basic_credentials
from gateway.endpoint_config import RemoteWriteEndpoint
from gateway.errors import ConfigError

__all__ = ["BasicFileAuth", "BearerFileAuth", "SecretAuth", "endpoint_auth", "tls_context"]

# Secrets remembered for redaction: the file's last few values (a rotation, a typo fixed), not
# every value ever read.
_REMEMBERED = 4


class SecretAuth(httpx.Auth):
    """Sets Authorization from a secret file on each request; never shows the secret."""

    def __init__(self) -> None:
        self._sent: list[str] = []  # the secrets (and encodings) sent, newest last

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret this auth has sent recently, in each form a receiver may echo."""
        return tuple(self._sent)

    def header(self) -> tuple[str, tuple[str, ...]]:
        """(the Authorization value, the secrets it carries)."""
        raise NotImplementedError

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        value, secrets = self.header()
        for secret in secrets:
            if secret in self._sent:
                self._sent.remove(secret)
            self._sent.append(secret)
        del self._sent[:-_REMEMBERED * max(1, len(secrets))]
        request.headers["Authorization"] = value
        yield request


class BearerFileAuth(SecretAuth):
    def __init__(self, token: CredentialFile) -> None:
        super().__init__()
        self._token = token

    def __repr__(self) -> str:
        return f"BearerFileAuth({self._token!r})"

    def header(self) -> tuple[str, tuple[str, ...]]:
        token = self._token.read()
        return f"Bearer {token}", (token,)


class BasicFileAuth(SecretAuth):
    def __init__(self, username: str, password: CredentialFile) -> None:
        super().__init__()
        self._username = username
        self._password = password

    def __repr__(self) -> str:
        return f"BasicFileAuth({self._username!r}, {self._password!r})"

    def header(self) -> tuple[str, tuple[str, ...]]:
        password = self._password.read()
        encoded = basic_credentials(self._username, password)
        return f"Basic {encoded}", (password, encoded)


def endpoint_auth(target: RemoteWriteEndpoint) -> SecretAuth | None:
    """The endpoint's credentials (read once now: a missing or empty file is a start-up
    error), or None when it has none. The model makes the two kinds exclusive."""
    if target.bearer_token_file is not None:
        return BearerFileAuth(CredentialFile(
            target.bearer_token_file, f"bearer_token_file of endpoint {target.name}"))
    if target.basic_auth_username and target.basic_auth_password_file is not None:
        return BasicFileAuth(target.basic_auth_username, CredentialFile(
            target.basic_auth_password_file, f"basic_auth_password_file of endpoint {target.name}"))
    return None


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> str:
    # Without a callback OpenSSL would prompt for a passphrase on the terminal, at start-up.
    raise _EncryptedKey


def tls_context(target: RemoteWriteEndpoint) -> ssl.SSLContext | None:
    """The TLS context of an https endpoint (None for http): the system's trust store, or only
    ca_file when set; the client certificate when set. Hostname verification is always on."""
    if not target.url.lower().startswith("https:"):
        return None
    what = f"endpoint {target.name}"
    try:
        context = ssl.create_default_context(
            cafile=str(target.ca_file) if target.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what}: cannot load ca_file {target.ca_file}: {exc}",
                          hint="ca_file must be a PEM file of CA certificates") from exc
    if target.cert_file is not None and target.key_file is not None:
        try:
            context.load_cert_chain(target.cert_file, target.key_file, password=_no_passphrase)
        except _EncryptedKey as exc:
            raise ConfigError(f"{what}: key_file {target.key_file} is encrypted",
                              hint="give the gateway an unencrypted key file readable only by "
                                   "it (chmod 600)") from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{what}: cannot load cert_file {target.cert_file} with key_file "
                              f"{target.key_file}: {exc}",
                              hint="both PEM; the key must be the certificate's") from exc
    context.check_hostname = True  # create_default_context's default, kept whatever changes
    context.verify_mode = ssl.CERT_REQUIRED
    return context
