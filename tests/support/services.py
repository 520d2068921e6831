"""A devstack service as a fixture's body: started (a missing binary fails the test, never skips
it: CI must not go green without a tool) and stopped by PID at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import pytest

from devstack import ManagedProcess, ServiceNotInstalled

_P = TypeVar("_P", bound=ManagedProcess)


def running(service: _P) -> Iterator[_P]:
    try:
        service.start()
    except ServiceNotInstalled as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield service
    finally:
        service.stop()
