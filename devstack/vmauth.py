"""vmauth (Debian's `victoria-metrics` package): a bearer-token gate in front of receivers.

Each user is a (bearer token, backend URL) pair; a request carrying that token is proxied to
the backend with its path (`/api/v1/write` -> `<backend>/api/v1/write`). vmauth 1.79 answers a
request without a token 401 and a wrong token 400, echoing the token in the body: the answer a
remote-write sender must neither dead-letter its stream for nor log verbatim.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from devstack.http_service import HttpService
from devstack.ports import LOOPBACK


class VmAuth(HttpService):
    name = "vmauth"
    binary_names: tuple[str, ...] = ("/usr/bin/vmauth", "vmauth")
    # vmauth's own health page: answered without a token, never proxied.
    ready_path = "/health"

    def __init__(self, workdir: Path | str, port: int | None = None, *,
                 users: Sequence[tuple[str, str]], extra_args: Sequence[str] = ()) -> None:
        super().__init__(workdir, port)
        if not users:
            raise ValueError("VmAuth needs at least one (bearer token, backend url) user")
        self.users = tuple(users)
        self.extra_args = tuple(extra_args)
        self.config_path = self.workdir / "auth.yml"

    def render_config(self) -> str:
        """The -auth.config file (a JSON document is a YAML document)."""
        users = [{"bearer_token": token, "url_prefix": backend.rstrip("/")}
                 for token, backend in self.users]
        return json.dumps({"users": users}, indent=2) + "\n"

    def _prepare(self) -> None:
        # It holds the tokens: readable by its owner only, as an operator's would be.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.render_config())

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
            f"-auth.config={self.config_path}",
            f"-httpListenAddr={LOOPBACK}:{self.port}",
            *self.extra_args,
        ]
