"""The ceiling for a Python ingest: a paho subscriber that only counts QoS 1 messages.

paho-mqtt 2.x, MQTT v5, QoS 1 subscription to fleet/+/telemetry, paho's automatic PUBACK;
on_message does nothing but count. Whatever the gateway spends per frame beyond this is the
gateway's own work (decode, dedup, SQLite, series encoding, remote write).

Prints "ready" once the broker has granted the subscription (SUBACK), then, after `count`
messages, one JSON line: its own CPU time (getrusage RUSAGE_SELF, user + sys, since start) and
the wall time from the first to the last message. With --linger it then waits for stdin to
close before exiting, so a controller can read /proc/<pid> of a live process.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

TOPIC = "fleet/+/telemetry"


class Counter:
    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self.count == 0:
            self.first = time.time()
        self.count += 1
        if self.count == self.target:
            self.last = time.time()
            # Queued behind this message's PUBACK, which paho sends once we return.
            client.disconnect()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mqtt", default="mqtt://127.0.0.1:1883")
    ap.add_argument("--count", type=int, required=True, help="exit after this many messages")
    ap.add_argument("--linger", action="store_true", help="after the result, wait for stdin EOF")
    args = ap.parse_args(argv)
    url = urlsplit(args.mqtt)
    counter = Counter(args.count)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare-subscriber",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.on_message = counter.on_message
    client.on_connect = lambda c, userdata, flags, rc, props: c.subscribe(TOPIC, qos=1)
    client.on_subscribe = lambda c, userdata, mid, rcs, props: print("ready", flush=True)
    client.connect(url.hostname or "127.0.0.1", url.port or 1883, keepalive=60)
    client.loop_forever()
    if counter.count < counter.target:
        print(json.dumps({"error": f"disconnected after {counter.count} messages"}), flush=True)
        return 1
    assert counter.first is not None and counter.last is not None
    print(json.dumps({"messages": counter.count, "cpu_s": cpu_seconds(),
                      "wall_s": counter.last - counter.first,
                      "first_epoch": counter.first, "last_epoch": counter.last}), flush=True)
    if args.linger:
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
