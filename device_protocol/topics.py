"""MQTT topic tree of protocol v1.

    {prefix}/{device_id}/birth        device -> gateway, QoS 1, on every (re)connect
    {prefix}/{device_id}/telemetry    device -> gateway, QoS 1
    {prefix}/{device_id}/death        device -> gateway, QoS 1 (the device's MQTT Will)
    {prefix}/{device_id}/cmd          gateway -> device, QoS 1
    {prefix}/_gateway/{gateway_id}/state   gateway -> devices, retained

The device id is taken from the topic only, never from the payload, so a device cannot speak
for another one once the broker's ACL ties client ids to topics.
"""

from __future__ import annotations

import re

from .errors import InvalidTopic
from .frames import FrameKind

DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
GATEWAY_SEGMENT = "_gateway"  # starts with "_", so it can never be a device id

_KINDS = {kind.value: kind for kind in FrameKind}


def is_valid_device_id(s: object) -> bool:
    return isinstance(s, str) and DEVICE_ID_RE.fullmatch(s) is not None


def parse_topic(topic: str, prefix: str) -> tuple[str, FrameKind]:
    """Split a device topic into (device_id, kind); anything else raises InvalidTopic.

    The gateway's own `_gateway/...` topics are not device topics and raise too.
    """
    if not isinstance(topic, str):
        raise InvalidTopic("not a device topic", f"topic must be a str, got {type(topic).__name__}")
    head = prefix + "/"
    if not topic.startswith(head):
        raise InvalidTopic("wrong prefix", f"{topic!r} is not under {head!r}")
    parts = topic[len(head) :].split("/")
    if len(parts) != 2:
        raise InvalidTopic("not a device topic", f"{topic!r}: expected {head}<device_id>/<kind>")
    device_id, kind_name = parts
    kind = _KINDS.get(kind_name)
    if kind is None:
        raise InvalidTopic(
            "unknown topic kind", f"{kind_name!r} in {topic!r}; allowed: {', '.join(_KINDS)}"
        )
    if DEVICE_ID_RE.fullmatch(device_id) is None:
        raise InvalidTopic(
            "invalid device id",
            f"{device_id!r} in {topic!r} must match {DEVICE_ID_RE.pattern}",
        )
    return device_id, kind


def _device_topic(prefix: str, device_id: str, kind: FrameKind) -> str:
    _check_prefix(prefix)
    if not is_valid_device_id(device_id):
        raise InvalidTopic("invalid device id", f"{device_id!r} must match {DEVICE_ID_RE.pattern}")
    return f"{prefix}/{device_id}/{kind.value}"


def _check_prefix(prefix: str) -> None:
    # A wildcard or empty level in the prefix would make subscriptions match foreign topics.
    if (
        not isinstance(prefix, str)
        or not prefix
        or any(not level or "+" in level or "#" in level for level in prefix.split("/"))
    ):
        raise InvalidTopic(
            "invalid prefix", f"{prefix!r}: non-empty topic levels without + or # required"
        )


def birth_topic(prefix: str, device_id: str) -> str:
    return _device_topic(prefix, device_id, FrameKind.BIRTH)


def telemetry_topic(prefix: str, device_id: str) -> str:
    return _device_topic(prefix, device_id, FrameKind.TELEMETRY)


def death_topic(prefix: str, device_id: str) -> str:
    return _device_topic(prefix, device_id, FrameKind.DEATH)


def cmd_topic(prefix: str, device_id: str) -> str:
    return _device_topic(prefix, device_id, FrameKind.CMD)


def gateway_state_topic(prefix: str, gateway_id: str) -> str:
    _check_prefix(prefix)
    if not is_valid_device_id(gateway_id):
        raise InvalidTopic(
            "invalid gateway id", f"{gateway_id!r} must match {DEVICE_ID_RE.pattern}"
        )
    return f"{prefix}/{GATEWAY_SEGMENT}/{gateway_id}/state"


def device_subscriptions(prefix: str) -> list[str]:
    """What a gateway subscribes to (cmd is gateway -> device, so not included)."""
    _check_prefix(prefix)
    return [
        f"{prefix}/+/{kind.value}"
        for kind in (FrameKind.BIRTH, FrameKind.TELEMETRY, FrameKind.DEATH)
    ]
