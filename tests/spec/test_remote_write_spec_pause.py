"""A paused endpoint as an operator sees it (docs/operations.md, section 8), with `fleetgate run`.

The spec forbids resending on a 4xx; fleetgate reads 401/403/404 (and vmauth's wrong-token 400)
as a configuration error instead of a data error and pauses the endpoint. The operator must see
that: `/api/v1/pipeline` says `paused` with the receiver's answer, `fleetgate_forward_paused` is
1, and both clear once a probe finds the endpoint fixed; nothing was resent meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack import GatewayProcess, Mosquitto
from tests.spec.device_frames import GAUGE, birth_msg, now_ms, tele_msg
from tests.spec.rw_receiver import RecordingReceiver, Reply
from tests.spec.spec_cases import GATEWAY_SETTINGS
from tests.support.publisher import Publisher

GatewayStarter = Callable[..., GatewayProcess]
pytestmark = pytest.mark.e2e  # Mosquitto and a gateway process


def endpoint(gw: GatewayProcess) -> dict[str, Any]:
    endpoints: list[dict[str, Any]] = gw.pipeline()["endpoints"]
    return endpoints[0]


def test_a_paused_endpoint_shows_in_the_api_and_metrics_until_a_probe_resumes_it(
        gateway_process: GatewayStarter, device: Publisher, receiver: RecordingReceiver) -> None:
    receiver.default = Reply(401, b"unauthorized")
    gw = gateway_process(remote_write_paused_probe_s="0.2")
    device.publish([birth_msg(), tele_msg(0, [[GAUGE, 20.0]], t_ms=now_ms())])
    receiver.wait_for(lambda rx: len(rx.snapshot()) >= 2, what="a probe after the refusal")
    state = endpoint(gw)
    assert state["state"] == "paused" and "401" in (state["paused_reason"] or ""), state
    assert gw.metric("fleetgate_forward_paused") == 1
    assert len(receiver.with_samples()) == 1, receiver.describe()
    receiver.default = Reply(204)
    receiver.wait_for(lambda rx: any(r.accepted and r.sample_count for r in rx.snapshot()),
                      what="sending resumed")
    receiver.wait_for(lambda rx: endpoint(gw)["state"] != "paused", what="the pause cleared")
    assert gw.metric("fleetgate_forward_paused") == 0
    assert set(receiver.accepted_counts().values()) == {1}


def test_a_paused_endpoint_does_not_hold_back_the_other(
        tmp_path: Path, mosquitto: Mosquitto, device: Publisher,
        receiver: RecordingReceiver) -> None:
    """Two endpoints, one paused (401): the other gets every frame at once; the paused one gets
    them all, once, when it is fixed. Each endpoint keeps its own cursor."""
    receiver.default = Reply(401, b"unauthorized")
    healthy = RecordingReceiver().start()
    gw = GatewayProcess(tmp_path / "gateway2", mqtt_url=mosquitto.url,
                        remote_write_urls=[receiver.url, healthy.url],
                        settings={**GATEWAY_SETTINGS, "remote_write_paused_probe_s": "0.2"})
    try:
        gw.start()
        t = now_ms()
        device.publish([birth_msg(), *(tele_msg(seq, [[GAUGE, 20.0 + seq]], t_ms=t + seq)
                                       for seq in range(5))])
        healthy.wait_for(lambda rx: len(rx.accepted_counts()) == 1 + 5, what="all at the other")
        assert not any(r.accepted for r in receiver.snapshot()), receiver.describe()
        receiver.default = Reply(204)
        receiver.wait_for(lambda rx: len(rx.accepted_counts()) == 1 + 5, what="all once fixed")
        assert set(receiver.accepted_counts().values()) == {1}
        assert set(healthy.accepted_counts().values()) == {1}
    finally:
        gw.stop()
        healthy.close()
