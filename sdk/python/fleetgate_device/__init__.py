"""fleetgate's device side: publish metrics to a fleetgate gateway over MQTT (protocol v1).

`Device` (paho-mqtt) for Linux devices; `DeviceCore` (sans-I/O) for any other transport;
`RegistryBridge` publishes a prometheus_client registry through a `Device`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetgate_device.core import CoreStats, DeviceCore, FrameKey, Publish
from fleetgate_device.samples import HistogramValue, Sample

if TYPE_CHECKING:
    from fleetgate_device.bridge import RegistryBridge
    from fleetgate_device.device import Device

__all__ = ["CoreStats", "Device", "DeviceCore", "FrameKey", "HistogramValue", "Publish",
           "RegistryBridge", "Sample"]


def __getattr__(name: str) -> Any:
    # Lazy: the simulator imports the core without paho's client thread machinery, and the
    # bridge's module stays optional.
    if name == "Device":
        from fleetgate_device.device import Device
        return Device
    if name == "RegistryBridge":
        from fleetgate_device.bridge import RegistryBridge
        return RegistryBridge
    raise AttributeError(f"module 'fleetgate_device' has no attribute {name!r}")
