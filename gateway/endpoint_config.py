"""One remote-write endpoint as configured: `[[remote_write]]` tables in TOML, the JSON list in
FLEETGATE_REMOTE_WRITE, or a bare URL of `remote_write_url`. Owns the endpoint's validation and
its name; imports nothing of the gateway.

Credentials are never values here, only paths to files (read by gateway/credentials.py and
re-read when they change), so a setting dump, an error or the API never holds a secret.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,199}$")
_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
# Set by the gateway itself (the protocol, or the credentials' own keys): a configured header of
# these names would be overridden, or would put a secret in the plain configuration.
_RESERVED_HEADERS = frozenset({
    "authorization", "content-encoding", "content-type", "content-length", "host",
    "user-agent", "x-prometheus-remote-write-version", "proxy-authorization",
})


class RemoteWriteEndpoint(BaseModel):
    """A receiver and how to reach it; `name` is its identity (metrics, logs, its cursor)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    # Labels its metrics and logs, keys its cursor in the buffer; default: the URL without its
    # query (which may carry a key), so a plain remote_write_url keeps its cursor.
    name: str = ""
    bearer_token_file: Path | None = None
    basic_auth_username: str | None = None
    basic_auth_password_file: Path | None = None
    headers: dict[str, str] = Field(default_factory=dict)  # e.g. X-Scope-OrgID for a tenant
    ca_file: Path | None = None  # a private CA for an https URL; default: the system's
    cert_file: Path | None = None  # a client certificate (mutual TLS) ...
    key_file: Path | None = None  # ... and its key
    timeout_s: float | None = Field(default=None, gt=0)  # default: remote_write_timeout_s

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("name") and isinstance(data.get("url"), str):
            data = {**data, "name": default_name(data["url"])}
        return data

    @model_validator(mode="after")
    def _check(self) -> RemoteWriteEndpoint:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"remote-write url {self.url!r} must be http(s)://host[:port]/path")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"endpoint {self.name!r}: put credentials in basic_auth_username "
                             "and basic_auth_password_file, not in the URL")
        if not _NAME_RE.match(self.name):
            raise ValueError(f"endpoint name {self.name!r} must match {_NAME_RE.pattern}")
        if self.bearer_token_file and (self.basic_auth_username or self.basic_auth_password_file):
            raise ValueError(f"endpoint {self.name!r}: bearer_token_file and basic auth are "
                             "exclusive (both set an Authorization header)")
        if bool(self.basic_auth_username) != bool(self.basic_auth_password_file):
            raise ValueError(f"endpoint {self.name!r}: basic auth needs both "
                             "basic_auth_username and basic_auth_password_file")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError(f"endpoint {self.name!r}: a client certificate needs both "
                             "cert_file and key_file")
        if parts.scheme == "http" and (self.ca_file or self.cert_file):
            raise ValueError(f"endpoint {self.name!r}: ca_file/cert_file need an https url "
                             f"(got {self.url!r}); over http they would be ignored")
        for header, value in self.headers.items():
            if not _HEADER_NAME_RE.match(header) or "\n" in value or "\r" in value:
                raise ValueError(f"endpoint {self.name!r}: header {header!r} is not a valid "
                                 "HTTP header")
            if header.lower() in _RESERVED_HEADERS:
                raise ValueError(f"endpoint {self.name!r}: header {header!r} is set by the "
                                 "gateway (credentials go in bearer_token_file or basic_auth_*)")
        return self

    @property
    def credential_files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.bearer_token_file, self.basic_auth_password_file) if p)


def default_name(url: str) -> str:
    """The URL without credentials, query or fragment: what names an endpoint by default."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 literal
        netloc = f"[{netloc}]"
    try:
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:
        netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
