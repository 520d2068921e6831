"""Timing probe of the MQTT receive path alone, plain TCP against TLS (not a test): prints CPU
microseconds per message.

    .venv/bin/python bench/probe_tls_receive.py [--messages 20000] [--repeat 3]

One Mosquitto (shipped config plus a TLS listener, bench/tls_compare.py). Per variant and
repeat: MqttIngest subscribes once (its session), the probe publishes N QoS 1 messages of 300
bytes while it is away, then MqttIngest comes back and this process's CPU is counted until
every message is in the Inbox and acknowledged: paho's thread and the acks, no SQLite, no
forwarding. Variants: plain and tls (fast path on), tls-one-record (fast path on, but one TLS
record per read, as BufferedSocket did before it read on), tls-stock and plain-stock (fast path
off). The order rotates per repeat; ratios are against plain of the same repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import tls_compare
from paho.mqtt.enums import CallbackAPIVersion

from gateway.ingest import fastpath
from gateway.ingest.inbox import Inbox
from gateway.ingest.mqtt import MqttIngest
from gateway.settings import load_settings

PAYLOAD = os.urandom(300)
# name: (TLS, fast path, several records per read)
VARIANTS = {"plain": (False, True, True), "tls": (True, True, True),
            "tls-one-record": (True, True, False), "tls-stock": (True, False, True),
            "plain-stock": (False, False, True)}
_READ_ON: Callable[[fastpath.BufferedSocket, bytes], bytes] = (
    fastpath.BufferedSocket._more_records)


def _one_record(self: fastpath.BufferedSocket, first: bytes) -> bytes:
    return first


def publish(mosq: tls_compare.TlsMosquitto, count: int) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe-pub",
                      protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.connect(mosq.host, mosq.port)
    pub.loop_start()
    infos = [pub.publish(f"fleet/dev-{i % 100}/telemetry", PAYLOAD, 1) for i in range(count)]
    for info in infos:
        info.wait_for_publish(60)
    pub.disconnect()
    pub.loop_stop()


async def connect(settings_kwargs: dict[str, object]) -> tuple[MqttIngest, Inbox]:
    loop = asyncio.get_running_loop()
    inbox, up = Inbox(loop, 50_000), asyncio.Event()

    def on_change(connected: bool) -> None:
        if connected:
            loop.call_soon_threadsafe(up.set)

    ingest = MqttIngest(load_settings(None, **settings_kwargs).mqtt_config(),  # type: ignore[arg-type]
                        inbox, on_change)
    ingest.start()
    await asyncio.wait_for(up.wait(), 15)
    return ingest, inbox


async def one(mosq: tls_compare.TlsMosquitto, pki: tls_compare.BrokerPki, name: str,
              repeat: int, count: int) -> float:
    """CPU µs per message of variant `name` taking `count` queued messages."""
    tls, fast, read_on = VARIANTS[name]
    fastpath.BufferedSocket._more_records = _READ_ON if read_on else _one_record  # type: ignore[method-assign,assignment]
    kwargs: dict[str, object] = {"mqtt_url": mosq.tls_url if tls else mosq.url,
                                 "mqtt_fast_path": fast, "gateway_id": f"probe-{name}-{repeat}"}
    if tls:
        kwargs["mqtt_ca_file"] = pki.ca
    ingest, inbox = await connect(kwargs)
    await ingest.stop()  # the session and its subscription stay at the broker
    await asyncio.to_thread(publish, mosq, count)
    began = time.process_time()
    ingest, inbox = await connect(kwargs)
    got = 0
    while got < count:
        batch = await inbox.get_batch(2000, 0.01)
        got += sum(m.topic.endswith("/telemetry") for m in batch)
        ingest.ack(batch)
    used = time.process_time() - began
    await ingest.stop()
    return used / count * 1e6


async def measure(count: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="fleetgate-tls-probe-") as tmp:
        pki = tls_compare.issue_pki(Path(tmp) / "pki")
        with tls_compare.TlsMosquitto(Path(tmp) / "mosquitto", pki) as mosq:
            names = list(VARIANTS)
            results: dict[str, list[float]] = {n: [] for n in names}
            for i in range(repeat):
                for name in [*names[i % len(names):], *names[:i % len(names)]]:
                    results[name].append(await one(mosq, pki, name, i, count))
                    print(f"repeat {i + 1} {name}: {results[name][-1]:.1f} µs/message",
                          flush=True)
    for name in names:
        ratios = [v / b for v, b in zip(results[name], results["plain"], strict=True)]
        print(f"{name:15s} median {statistics.median(results[name]):6.1f} µs/message; per-repeat "
              f"/ plain: median {statistics.median(ratios):.2f} "
              f"({', '.join(f'{r:.2f}' for r in ratios)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    asyncio.run(measure(args.messages, args.repeat))


if __name__ == "__main__":
    main()
