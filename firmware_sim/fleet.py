"""Run simulated devices against a real MQTT broker, thousands of them from one thread.

Each device has its own paho client, its own TCP connection and its own Will on its death
topic, as real firmware has one connection per device. paho's own network thread (one per
client, and `select()`, which stops at file descriptor 1024) cannot carry 10,000 devices, so
the clients run in paho's external-loop mode: one `selectors` loop (epoll on Linux) reads and
writes every socket, and one timer heap schedules everything else (frames, replays, reconnects,
keepalives, faults). paho's callbacks therefore run on the fleet's own thread: no locks.

A device is offline when it is not connected to the broker or when the gateway's retained state
says it is offline. No state message at all counts as online: a gateway that never announced
itself should not make the fleet hoard frames forever.

Its parts: `fleet_link` (one device's client, callbacks and schedule), `fleet_io` (the socket
loop), `fleet_summary` (what a run reports). This module holds the `Fleet`: the devices, the
timer heap, the run loop and the shutdown.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
import ssl
import time
from collections.abc import Callable

from firmware_sim.config import (
    BrokerAddress,
    FleetConfig,
    device_tls_context,
    parse_mqtt_url,
    read_passwords,
)
from firmware_sim.device import SimDevice
from firmware_sim.faults import MODEL_FAULTS, FaultKind
from firmware_sim.fleet_io import SocketLoop, raise_fd_limit
from firmware_sim.fleet_link import DeviceLink
from firmware_sim.fleet_summary import DeviceStats, FleetSummary
from firmware_sim.ledger import FrameLedger
from firmware_sim.profiles import ModelFault

__all__ = ["DeviceStats", "Fleet", "FleetSummary"]

_MAX_WAIT_S = 0.05  # longest the loop blocks: bounds how late a timer can fire
_KEEPALIVE_SWEEP_S = 1.0  # paho's loop_misc (PINGREQ, ping timeouts) for every client
_PROGRESS_EVERY_S = 5.0
_FD_HEADROOM = 64


class Fleet:
    """Build with a config, `run()` in any thread, `stop()` from any other."""

    def __init__(
        self, config: FleetConfig, *, progress: Callable[[str], None] | None = None
    ) -> None:
        config.validate()
        self.config = config
        self.broker: BrokerAddress = parse_mqtt_url(config.mqtt_url)
        # Each device's password (username = its id), read once: secrets, never printed.
        self.passwords: dict[str, str] = (
            read_passwords(config.password_file) if config.password_file else {})
        # Without per-device certificates every device's TLS is alike: one context serves them
        # all (building one takes ~1 ms, with a certificate ~3 ms: 30 s for 10,000 devices).
        self._shared_tls = (device_tls_context(config, None) if config.tls_cert_dir is None
                            else None)
        self.ledger = FrameLedger()
        self.io = SocketLoop()
        self._progress = progress
        # A plain flag, not an Event: stop() is called from signal handlers, and Event.set()
        # takes a lock the interrupted main thread may hold. The loop polls it every turn.
        self._stop_requested = False
        self.stopping = False
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._tie = itertools.count()
        interval_ms = max(1, round(config.interval_s * 1000))
        self._links: list[DeviceLink] = []
        for i, device_id in enumerate(config.device_ids()):
            device = SimDevice(
                device_id,
                config.profiles[i % len(config.profiles)],
                random.Random(f"{config.seed}/{device_id}"),
                interval_ms=interval_ms,
                ring_size=config.ring_size,
                samples_per_frame=config.samples_per_frame,
                topic_prefix=config.topic_prefix,
                gateway_id=config.gateway_id,
                max_in_flight=config.max_unacked,
            )
            link = DeviceLink(self, device, random.Random(f"{config.seed}/{device_id}/link"))
            self._links.append(link)
        self._by_id = {link.device.device_id: link for link in self._links}
        self._fault_rng = random.Random(f"{config.seed}/faults")
        self._pending_model_faults: list[tuple[float, DeviceLink, ModelFault]] = []
        self._apply_fault_settings()

    def _apply_fault_settings(self) -> None:
        ids = self.device_ids
        for spec in self.config.faults:
            for device_id in spec.select(ids, self.config.seed):
                link = self._by_id[device_id]
                if spec.kind is FaultKind.CLOCK_SKEW:
                    link.device.clock_skew_ms = round(spec.param * 1000)
                elif spec.kind is FaultKind.DUPLICATE:
                    link.duplicate_share = spec.param
                elif spec.kind is FaultKind.MALFORMED:
                    link.malformed_rate = spec.param
                elif spec.kind is FaultKind.CARDINALITY:
                    link.device.cardinality_per_frame = round(spec.param)
                elif spec.kind in MODEL_FAULTS:
                    fault = ModelFault(spec.kind.value)
                    if fault in link.device.profile.model_faults:
                        self._pending_model_faults.append((spec.param, link, fault))

    def tls_context(self, device_id: str) -> ssl.SSLContext | None:
        if self.config.tls_cert_dir is None:
            return self._shared_tls
        return device_tls_context(self.config, device_id)

    @property
    def device_ids(self) -> list[str]:
        return [link.device.device_id for link in self._links]

    def stop(self) -> None:
        """Ask `run()` to stop; safe from a signal handler."""
        self._stop_requested = True

    def connected(self) -> int:
        return sum(link.connected for link in self._links)

    def produced(self) -> int:
        """Telemetry frames the devices have sampled so far, sent or not."""
        return sum(link.produced for link in self._links)

    def buffered(self) -> int:
        """Frames waiting in the devices' rings now."""
        return sum(link.device.buffered for link in self._links)

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._tie), action))

    # --- run --------------------------------------------------------------------------------

    def run(self) -> FleetSummary:
        raise_fd_limit(self.config.devices + _FD_HEADROOM)
        start = time.monotonic()
        self._start = start
        self._schedule_start(start)
        try:
            self._drive(start)
        finally:
            deaths = self._shutdown()
        return self.summary(time.monotonic() - start, deaths)

    def _schedule_start(self, start: float) -> None:
        config = self.config
        # Connect at a bounded rate: a herd of 10,000 CONNECTs at once only queues in the
        # broker's accept backlog.
        for i, link in enumerate(self._links):
            self.at(start + i / config.connect_rate, link.try_connect)
            # A device that cannot connect starts sampling (and buffering) after the grace.
            self.at(start + config.connect_grace_s + i / config.connect_rate,
                    link.start_unless_started)
        for delay, link, fault in self._pending_model_faults:
            self.at(start + delay, functools.partial(link.device.inject, fault))
        for spec in config.faults:
            if spec.kind in (FaultKind.REBOOT, FaultKind.FLAP):
                for device_id in spec.select(self.device_ids, config.seed):
                    self._schedule_periodic(self._by_id[device_id], spec.kind, spec.param)
        self.at(start + _KEEPALIVE_SWEEP_S, self._keepalive_sweep)
        if self._progress is not None:
            self.at(start + _PROGRESS_EVERY_S, self._report_progress)

    def _schedule_periodic(self, link: DeviceLink, kind: FaultKind, mean_s: float) -> None:
        delay = link.rng.expovariate(1.0 / mean_s)

        def fire() -> None:
            if self.stopping:
                return
            if kind is FaultKind.REBOOT:
                link.reboot()
            else:
                # Outages of 10-25 % of the mean period: long enough to buffer several frames.
                link.flap(mean_s * link.rng.uniform(0.1, 0.25))
            self._schedule_periodic(link, kind, mean_s)

        self.at(time.monotonic() + delay, fire)

    def after_frame(self, link: DeviceLink) -> None:
        """Spontaneous model faults: rare, at `fault_rate_per_hour` per device."""
        rate = self.config.fault_rate_per_hour
        if not rate or self._fault_rng.random() >= rate * self.config.interval_s / 3600.0:
            return
        candidates = sorted(link.device.profile.model_faults - link.device.faults)
        if candidates:
            link.device.inject(self._fault_rng.choice(candidates))

    def _keepalive_sweep(self) -> None:
        for link in self._links:
            if link.client.socket() is not None:
                link.client.loop_misc()
        self.at(time.monotonic() + _KEEPALIVE_SWEEP_S, self._keepalive_sweep)

    def _report_progress(self) -> None:
        assert self._progress is not None
        self._progress(self._progress_line())
        self.at(time.monotonic() + _PROGRESS_EVERY_S, self._report_progress)

    def _run_due(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, action = heapq.heappop(timers)
            action()

    def _wait_s(self, now: float) -> float:
        if not self._timers:
            return _MAX_WAIT_S
        return max(0.0, min(_MAX_WAIT_S, self._timers[0][0] - now))

    def _drive(self, start: float) -> None:
        deadline = None if self.config.duration_s is None else start + self.config.duration_s
        next_settle_check = start
        while not self._stop_requested:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            self._run_due(now)
            if self.config.frames is not None and now >= next_settle_check:
                if all(link.settled() for link in self._links):
                    return
                next_settle_check = now + 0.1
            self.io.poll(self._wait_s(time.monotonic()))

    def _shutdown(self) -> int:
        self.stopping = True
        deadline = time.monotonic() + self.config.stop_timeout_s
        # Let frames already on the wire be acknowledged, so the ledger is complete.
        self._settle(lambda link: not (link.connected and link.pending), deadline)
        for link in self._links:
            link.publish_death()
        self._settle(lambda link: link.death_mid is None or link.death_acked, deadline)
        # A clean DISCONNECT: the broker discards the Will. paho closes each socket once its
        # DISCONNECT is written.
        for link in self._links:
            if link.client.socket() is not None:
                link.client.disconnect()
        while self.io.busy() and time.monotonic() < deadline:
            self.io.poll(_MAX_WAIT_S)
        for link in self._links:
            sock = link.client.socket()
            if sock is not None:
                self.io.unwatch(sock)
                sock.close()
        self.io.close()
        return sum(link.death_acked for link in self._links)

    def _settle(self, done: Callable[[DeviceLink], bool], deadline: float) -> None:
        next_check = 0.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_check:
                if all(done(link) for link in self._links):
                    return
                next_check = now + 0.05
            self._run_due(now)  # keepalives and reconnects go on; produce/replay see `stopping`
            self.io.poll(_MAX_WAIT_S / 5)

    def _progress_line(self) -> str:
        published = len(self.ledger)
        buffered = self.buffered()
        return (
            f"sim: {self.connected()}/{len(self._links)} connected, {published} frames published "
            f"({self.ledger.historical} replayed), {buffered} buffered"
        )

    def summary(self, elapsed_s: float = 0.0, deaths: int = 0) -> FleetSummary:
        counts = self.ledger.count_by_device()
        return FleetSummary(
            seed=self.config.seed,
            elapsed_s=elapsed_s,
            connected=sum(link.ever_connected for link in self._links),
            deaths=deaths,
            devices=tuple(link.stats(counts) for link in self._links),
            ledger=self.ledger.ranges(),
        )
