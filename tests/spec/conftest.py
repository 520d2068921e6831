"""Fixtures of the remote-write specification suite: a recording receiver per test.

The suite checks the forwarder from the outside, against the Prometheus remote-write 1.0
specification (https://prometheus.io/docs/specs/remote_write_spec/): frames built by hand from
docs/protocol.md go in, and what reaches a real HTTP receiver is read back with a decoder that
shares no code with the gateway's encoder.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from rw_receiver import RecordingReceiver


@pytest.fixture
def receiver() -> Iterator[RecordingReceiver]:
    rx = RecordingReceiver().start()
    try:
        yield rx
    finally:
        rx.close()
