"""Fixtures of the protocol tests (payload builders live in protocol_payloads.py)."""

from __future__ import annotations

import pytest

from device_protocol import Birth, decode_birth
from tests.logic.protocol.protocol_payloads import birth_map, pack


@pytest.fixture
def birth() -> Birth:
    return decode_birth(pack(birth_map()))
