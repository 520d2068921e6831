"""Simulated edge-ML devices speaking protocol v1, alone (pure) or as a fleet over MQTT."""

from firmware_sim.device import SimDevice
from firmware_sim.ledger import FrameKey, FrameLedger
from firmware_sim.profiles import PROFILES, Profile, get_profile

__all__ = ["PROFILES", "FrameKey", "FrameLedger", "Profile", "SimDevice", "get_profile"]
