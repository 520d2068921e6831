"""A paused endpoint as an operator sees it (docs/operations.md, section 8), with `fleetgate run`.

The spec forbids resending on a 4xx; fleetgate reads 401/403/404 (and vmauth's wrong-token 400)
as a configuration error instead of a data error and pauses the endpoint. The operator must see
that: `/api/v1/pipeline` says `paused` with the receiver's answer, `fleetgate_forward_paused` is
1, and both clear once a probe finds the endpoint fixed; nothing was resent meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from device_frames import GAUGE, birth_msg, now_ms, tele_msg
from publisher import Publisher
from rw_receiver import RecordingReceiver, Reply

from gateway.devstack import GatewayProcess

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
