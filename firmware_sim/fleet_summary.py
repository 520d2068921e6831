"""What a simulated fleet reports when it stops: per-device counts and the fleet's totals.

Plain values, built by `Fleet.summary()` and read by the CLI (`line()`, `--summary-json`), the
tests and the benchmarks; nothing here touches a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class DeviceStats:
    device_id: str
    profile: str
    boot: int
    published: int  # telemetry frames the broker acknowledged, live and replayed
    replayed: int  # of which replays from the ring
    buffered: int  # frames ever put in the ring
    unsent: int  # frames still in the ring or awaiting a PUBACK at the end
    dropped: int  # frames pushed out of a full ring
    refused: int  # frames the broker answered with a failure PUBACK (e.g. not authorised)
    births: int
    reboots: int = 0
    lost_on_reboot: int = 0  # frames in the ring or awaiting a PUBACK when the device rebooted
    duplicates: int = 0  # extra copies published on purpose (fault `duplicate`)
    malformed: int = 0  # malformed payloads published on purpose (fault `malformed`)
    faults: tuple[str, ...] = ()  # model faults active at the end


_COUNTS = ("published", "replayed", "buffered", "dropped", "unsent", "refused", "births",
           "reboots", "lost_on_reboot", "duplicates", "malformed")


@dataclass(frozen=True, slots=True)
class FleetSummary:
    seed: int
    elapsed_s: float
    connected: int  # devices that connected at least once
    deaths: int  # deaths the broker acknowledged at shutdown
    devices: tuple[DeviceStats, ...]
    ledger: dict[str, dict[int, list[tuple[int, int]]]] = field(default_factory=dict)

    def total(self, name: str) -> int:
        return sum(int(getattr(d, name)) for d in self.devices)

    def line(self) -> str:
        faults = "".join(f" {name}={self.total(name)}"
                         for name in ("reboots", "lost_on_reboot", "duplicates", "malformed")
                         if self.total(name))
        return (
            f"sim summary: devices={len(self.devices)} published={self.total('published')} "
            f"replayed={self.total('replayed')} buffered={self.total('buffered')} "
            f"dropped={self.total('dropped')} unsent={self.total('unsent')} "
            f"refused={self.total('refused')} "
            f"births={self.total('births')} deaths={self.deaths}{faults} seed={self.seed} "
            f"elapsed={self.elapsed_s:.1f}s"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "elapsed_s": round(self.elapsed_s, 3),
            "devices": len(self.devices),
            "connected": self.connected,
            "deaths": self.deaths,
            **{name: self.total(name) for name in _COUNTS},
            "per_device": {
                d.device_id: {"profile": d.profile, "boot": d.boot, "faults": list(d.faults)}
                | {name: getattr(d, name) for name in _COUNTS}
                for d in self.devices
            },
            "ledger": self.ledger,
        }
