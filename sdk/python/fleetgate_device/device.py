"""`Device`: the core (core.py) on paho-mqtt, with a thread that publishes every interval.

Threads: paho's network thread runs the callbacks; the Device's own thread builds a frame every
`interval_s` and is the one that calls `publish` (besides `publish_now` and `stop`, under the
same send lock). Callbacks never publish: paho calls `on_publish` holding its outgoing-message
lock, which `publish` takes too, so a callback only hands the core's answer to the send queue
and wakes the thread. The core is guarded by one lock, never held while paho is called.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fleetgate_device.connection import make_client, parse_url
from fleetgate_device.core import DEFAULT_MAX_IN_FLIGHT, DeviceCore, Publish
from fleetgate_device.metrics import Counter, Gauge, Histogram, Metric
from fleetgate_device.ring import Ring
from fleetgate_device.samples import Sample

log = logging.getLogger("fleetgate_device")

Collect = Callable[[], Iterable[Sample]]
_STOP_TIMEOUT_S = 5.0


def _now_ms() -> int:
    return int(time.time() * 1000)


class Device:
    def __init__(
        self,
        device_id: str,
        mqtt_url: str,
        *,
        hw: str,
        fw: str,
        interval_s: float = 10.0,
        labels: Mapping[str, str] | None = None,
        topic_prefix: str = "fleet",
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password_file: str | None = None,
        ring_size: int = 1000,
        ring_path: str | Path | None = None,
        collect: Collect | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        boot: int | None = None,
        reconnect_max_s: float = 30.0,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.interval_s = interval_s
        self._broker = parse_url(mqtt_url)
        ring: Ring | None = None
        if ring_path is not None:
            from fleetgate_device.file_ring import FileRing
            ring = FileRing(ring_path, ring_size)
        self.core = DeviceCore(device_id, hw=hw, fw=fw, interval_ms=max(1, round(interval_s *
                               1000)), labels=labels, topic_prefix=topic_prefix, boot=boot,
                               ring=ring, ring_size=ring_size, max_in_flight=max_in_flight)
        self.collect = collect
        death = self.core.death()
        self._client = make_client(device_id, self._broker, username=username,
                                   password_file=password_file, ca_file=ca_file,
                                   cert_file=cert_file, key_file=key_file,
                                   will=(death.topic, death.payload))
        self._client.reconnect_delay_set(1, max(1, round(reconnect_max_s)))
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._lock = threading.Lock()  # the core, the outbox, the mid table
        self._metrics_lock = threading.Lock()  # metric values (updated by the application)
        self._send_lock = threading.Lock()  # one publisher at a time, in outbox order
        self._outbox: deque[Publish] = deque()
        self._mids: dict[int, Publish] = {}
        self._early: dict[int, bool] = {}  # acks that came before publish() returned the mid
        self._metrics: dict[str, Metric] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.errors = 0  # frames not built (a bad sample from collect); logged

    # --- metrics ----------------------------------------------------------------------------

    def gauge(self, name: str) -> Gauge:
        return self._metric(name, Gauge, ())  # type: ignore[return-value]

    def counter(self, name: str) -> Counter:
        return self._metric(name, Counter, ())  # type: ignore[return-value]

    def histogram(self, name: str, buckets: Iterable[float]) -> Histogram:
        return self._metric(name, Histogram, tuple(float(b) for b in buckets))  # type: ignore[return-value]

    def _metric(self, name: str, cls: type[Metric], bounds: tuple[float, ...]) -> Metric:
        with self._metrics_lock:
            known = self._metrics.get(name)
            if known is not None:
                if type(known) is not cls or known.bounds != bounds:
                    raise ValueError(f"metric {name} is already a {known.kind}")
                return known
            metric = (Histogram(name, self._metrics_lock, bounds) if cls is Histogram
                      else cls(name, self._metrics_lock))
            with self._lock:  # declared now, so the first birth already names it
                self.core.declare(name, metric.kind, metric.bounds)
            self._metrics[name] = metric
            return metric

    def samples(self) -> list[Sample]:
        """Every current value: the metrics' children, then what `collect` returns."""
        with self._metrics_lock:
            metrics = list(self._metrics.values())
        out = [s for m in metrics for s in m.samples()]
        if self.collect is not None:
            out.extend(self.collect())
        return out

    # --- life cycle -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        with self._lock:
            return self.core.connected

    def start(self) -> None:
        """Connect in the background (paho retries until the broker answers) and publish a
        frame every interval from then on, live or into the ring."""
        if self._thread is not None:
            raise RuntimeError("Device already started")
        self._client.connect_async(self._broker.host, self._broker.port, keepalive=30)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name=f"fleetgate-{self.core.device_id}",
                                        daemon=True)
        self._thread.start()

    def publish_now(self) -> None:
        """Build one frame now from every current value; sent, or ringed when offline."""
        samples = self.samples()
        with self._lock:
            self._outbox.extend(self.core.telemetry(_now_ms(), samples))
        self._flush()

    def stop(self) -> None:
        """The death (when connected), then disconnect. Ringed frames stay in a file ring."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT_S + self.interval_s)
        self._flush()
        if self.connected:
            death = self.core.death()
            info = self._client.publish(death.topic, death.payload, qos=1)
            try:
                info.wait_for_publish(_STOP_TIMEOUT_S)
            except (RuntimeError, ValueError):
                pass  # the connection went away meanwhile: the Will says it instead
        self._client.disconnect()
        self._client.loop_stop()
        self.core.ring.close()

    def _run(self) -> None:
        next_due = time.monotonic() + self.interval_s
        while not self._stopping:
            self._wake.wait(max(0.0, next_due - time.monotonic()))
            self._wake.clear()
            if self._stopping:
                return
            if time.monotonic() >= next_due:
                # Keep the cadence; after a stall, one frame, not a burst.
                next_due = max(next_due + self.interval_s, time.monotonic())
                try:
                    self.publish_now()
                except Exception:  # a bad sample or a failing collect(): skip this frame only
                    self.errors += 1
                    log.exception("device %s: frame not built", self.core.device_id)
            else:
                self._flush()

    def _flush(self) -> None:
        with self._send_lock:
            while True:
                with self._lock:
                    if not self._outbox:
                        return
                    pub = self._outbox.popleft()
                info = self._client.publish(pub.topic, pub.payload, qos=pub.qos,
                                            retain=pub.retain)
                with self._lock:
                    ok = self._early.pop(info.mid, None)
                    if ok is None:
                        self._mids[info.mid] = pub
                    else:
                        self._outbox.extend(self.core.on_ack(pub, ok))

    # --- paho callbacks (paho's thread) -----------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: mqtt.ConnectFlags,
                    reason: ReasonCode, _p: Properties | None) -> None:
        if reason.is_failure:
            log.warning("device %s: broker refused the connection: %s", self.core.device_id,
                        reason)
            return
        client.subscribe([(topic, 1) for topic in self.core.subscriptions])
        with self._lock:
            self._outbox.extend(self.core.on_connect(_now_ms()))
        self._wake.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: mqtt.DisconnectFlags,
                       _r: ReasonCode, _p: Properties | None) -> None:
        with self._lock:
            self.core.on_disconnect()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._outbox.extend(self.core.on_message(message.topic, bytes(message.payload),
                                                     _now_ms(), retained=bool(message.retain)))
        self._wake.set()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode,
                    _p: Properties | None) -> None:
        ok = not reason.is_failure
        with self._lock:
            pub = self._mids.pop(mid, None)
            if pub is None:
                self._early[mid] = ok
                return
            self._outbox.extend(self.core.on_ack(pub, ok))
        self._wake.set()
