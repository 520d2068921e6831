"""The whole stack with the gateway in a network namespace of its own (tests/faults/netns.py).

Mosquitto listens on loopback (for the fleet) and on the root end of the "mqtt" hop (for the
gateway); VictoriaMetrics on the root end of the "rw" hop; the gateway's API on the namespace end
of the "api" hop. So faults on the "mqtt" and "rw" hops reach only the gateway's own traffic:
the fleet always reaches the broker, and the test always reads the receiver and the gateway.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack import (
    GatewayProcess,
    Mosquitto,
    ServiceNotInstalled,
    VictoriaMetrics,
    free_port,
    wait_for,
)
from tests.faults import seeded_fleet
from tests.faults.broker_stats import SYS_CONF, BrokerStats
from tests.faults.netns import GatewayNetns
from tests.support.receivers import vm_account


@dataclass
class NetStack:
    netns: GatewayNetns
    mosquitto: Mosquitto
    vm: VictoriaMetrics
    gw: GatewayProcess
    stats: BrokerStats

    def settle(self, fleet_plan: seeded_fleet.FleetPlan, within_s: float = 180.0
               ) -> tuple[int, int]:
        """(lost, doubled) once every sample of the plan is at the receiver and the gateway
        has caught up (or as it stands after within_s: the assertion then shows the loss)."""
        def complete() -> bool:
            lost, _ = vm_account(self.vm, seeded_fleet.METRIC, fleet_plan.expected, within_s=0)
            return lost == 0 and self.gw.caught_up()

        try:
            wait_for(complete, within_s, interval=0.5,
                     what="every sample of the fleet at the receiver")
        except TimeoutError:
            pass
        return vm_account(self.vm, seeded_fleet.METRIC, fleet_plan.expected, within_s=0)


@contextmanager
def gateway_in_netns(workdir: Path, seed: int, **settings: str) -> Iterator[NetStack]:
    with ExitStack() as stack:
        netns = stack.enter_context(GatewayNetns(seed=seed))
        mqtt_hop, rw_hop, api_hop = (netns.hops[h] for h in ("mqtt", "rw", "api"))
        gateway_port = free_port()
        mosquitto = Mosquitto(workdir / "mosquitto", extra_conf=(
            f"{SYS_CONF}\nlistener {gateway_port} {mqtt_hop.root_addr}"))
        vm = VictoriaMetrics(workdir / "victoria-metrics", host=rw_hop.root_addr)
        gw = GatewayProcess(workdir / "gateway",
                            mqtt_url=f"mqtt://{mqtt_hop.root_addr}:{gateway_port}",
                            remote_write_urls=[vm.remote_write_url], settings=settings,
                            api_host=api_hop.ns_addr, command_prefix=netns.exec_prefix)
        for service in (mosquitto, vm):
            try:
                service.start()
            except ServiceNotInstalled as e:
                pytest.fail(str(e), pytrace=False)
            stack.callback(service.stop)
        stats = BrokerStats(mosquitto)
        stack.callback(stats.close)
        stack.callback(gw.stop)  # first out: before the namespace and the services go
        gw.start()
        yield NetStack(netns, mosquitto, vm, gw, stats)
