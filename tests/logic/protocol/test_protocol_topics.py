"""The topic tree: device id from the topic only, everything else refused."""

from __future__ import annotations

import pytest

from device_protocol import (
    FrameKind,
    InvalidTopic,
    birth_topic,
    cmd_topic,
    death_topic,
    device_subscriptions,
    gateway_state_topic,
    is_valid_device_id,
    parse_topic,
    telemetry_topic,
)

BUILDERS = {
    FrameKind.BIRTH: birth_topic,
    FrameKind.TELEMETRY: telemetry_topic,
    FrameKind.DEATH: death_topic,
    FrameKind.CMD: cmd_topic,
}


@pytest.mark.parametrize("kind", list(FrameKind))
@pytest.mark.parametrize("prefix", ["fleet", "site-3/fleet"])
def test_build_and_parse(kind: FrameKind, prefix: str) -> None:
    topic = BUILDERS[kind](prefix, "dev-01")
    assert topic == f"{prefix}/dev-01/{kind.value}"
    assert parse_topic(topic, prefix) == ("dev-01", kind)


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("other/dev-01/birth", "wrong prefix"),
        ("fleetx/dev-01/birth", "wrong prefix"),
        ("fleet", "wrong prefix"),
        ("fleet/dev-01", "not a device topic"),
        ("fleet/dev-01/birth/extra", "not a device topic"),
        ("fleet/_gateway/gw-1/state", "not a device topic"),
        ("fleet/dev-01/state", "unknown topic kind"),
        ("fleet/dev-01/Birth", "unknown topic kind"),
        ("fleet//birth", "invalid device id"),
        ("fleet/-dev/birth", "invalid device id"),
        ("fleet/_dev/birth", "invalid device id"),
        ("fleet/dev 01/birth", "invalid device id"),
        ("fleet/dév/birth", "invalid device id"),
        ("fleet/+/birth", "invalid device id"),
        ("fleet/" + "a" * 65 + "/birth", "invalid device id"),
    ],
)
def test_refused_topics(topic: str, reason: str) -> None:
    with pytest.raises(InvalidTopic) as caught:
        parse_topic(topic, "fleet")
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("device_id", "valid"),
    [
        ("a", True),
        ("A9_.-z", True),
        ("0" * 64, True),
        ("0" * 65, False),
        ("", False),
        (".hidden", False),
        ("dev\n", False),
        ("dev/1", False),
        (5, False),
    ],
)
def test_device_id_rule(device_id: object, valid: bool) -> None:
    assert is_valid_device_id(device_id) is valid


def test_builders_refuse_bad_ids_and_prefixes() -> None:
    with pytest.raises(InvalidTopic, match="invalid device id"):
        birth_topic("fleet", "dev/1")
    with pytest.raises(InvalidTopic, match="invalid gateway id"):
        gateway_state_topic("fleet", "")
    for prefix in ["", "fleet/", "fl+eet", "fleet/#", "a//b"]:
        with pytest.raises(InvalidTopic, match="invalid prefix"):
            telemetry_topic(prefix, "dev-01")


def test_gateway_topics() -> None:
    assert gateway_state_topic("fleet", "gw-1") == "fleet/_gateway/gw-1/state"
    assert device_subscriptions("fleet") == [
        "fleet/+/birth",
        "fleet/+/telemetry",
        "fleet/+/death",
    ]
