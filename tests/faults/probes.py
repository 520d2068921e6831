"""What the fault scenarios read from the gateway while they break things around it."""

from __future__ import annotations

from collections.abc import Callable

import httpx

import tests.support.factories as f
from devstack import GatewayProcess, Prometheus
from tests.support.receivers import prom_samples

GatewayFactory = Callable[..., GatewayProcess]  # the gateway_factory fixture (tests/conftest.py)
METRIC = "device_temperature_celsius"
# Backoff ceiling while a receiver is away. The default (30 s) would only make a test wait
# longer after the receiver is back; the retry path is the same.
FAST_RETRY = {"remote_write_retry_max_s": "1"}


def readyz(gw: GatewayProcess) -> int | None:
    try:
        return gw.http.get("/readyz", timeout=3.0).status_code
    except httpx.TransportError:
        return None


def committed_upto(gw: GatewayProcess) -> int:
    """Frame ids are kept in SQLite, so this grows across restarts (metrics start at 0)."""
    try:
        return int(gw.pipeline()["committed_upto"])
    except httpx.TransportError:
        return -1


def buffer_frames(gw: GatewayProcess) -> int:
    return int(gw.pipeline()["buffer"]["frames"])


def out_of_order(prom: Prometheus, devices: range, seqs: range, base_ms: int) -> list[str]:
    """Devices whose Prometheus samples are not exactly one per seq, each value at its time."""
    return [f.device_id(i) for i in devices
            if prom_samples(prom, METRIC, f.device_id(i))
            != [(base_ms + s * 1000, f.sample_value(i, s)) for s in seqs]]
