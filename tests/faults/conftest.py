"""Fault-matrix fixtures. FAULTS_LONG=1 (set by `make faults`) runs the long versions."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def long_run() -> bool:
    return os.environ.get("FAULTS_LONG", "") not in ("", "0")
