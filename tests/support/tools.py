"""External tools the tests run (promtool, amtool, docker-compose): found, or the test stops.

In CI (CI=true) a missing tool fails the test: a skip would let a green run hide a missing
install step. Elsewhere it skips with the command that installs it.
"""

from __future__ import annotations

import os
import shutil

import pytest


def system_tool(name: str, package: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not os.access(path, os.X_OK):
        message = f"{name} missing: run `make install` (Debian package {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def promtool() -> str:
    return system_tool("promtool", "prometheus")
