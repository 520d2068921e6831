"""Operator API latency with a large fleet (default 100,000 devices).

A fresh Mosquitto and gateway (`python -m gateway.cli run`, defaults, no remote-write
endpoint: the API reads fleet state, so frames just stay buffered; one read token in
api_tokens, sent as a Bearer header like an operator's client would). The fleet, published
over plain sockets with pre-encoded QoS 1 packets (bench/loadgen.py's sender):

  - a birth per device: platform over 5 values, firmware over 4, label `site` over 20,
    declared interval 600 s (--interval-s; long enough that no device turns late while the
    benchmark runs, so every request sees the same fleet);
  - a few telemetry frames each (--frames); 1 % of devices skip 1 to 5 seqs (completeness
    below 100 %, one gap each), another 1 % then send their death (offline).

Once the gateway holds all of it (frames stored, deaths seen, /api/v1/fleet/summary counts
the whole fleet), one httpx client (keep-alive, one request at a time) times --requests
requests per line of the table after a warm-up, the lines interleaved round-robin so that
whatever else the gateway does meanwhile (checkpoints, GC) is spread over all of them. A
request's time is from sending it to having read the whole body. /healthz, answered without
touching fleet state, is the floor: one HTTP round trip to that server through the same
client.

    .venv/bin/python bench/api.py [--devices 100000] [--requests 200] [--frames 4]

Results go to stdout and the "api" section of bench/RESULTS.md (results_file.py).
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import loadgen
import procstat
import results_file
import stats
from throughput import BenchError, parse_setting

from device_protocol import (
    Birth,
    Death,
    MetricDef,
    MetricType,
    RawSample,
    RawTelemetry,
    birth_topic,
    death_topic,
    encode_birth,
    encode_death,
    encode_telemetry,
    telemetry_topic,
)
from devstack import GatewayProcess, Mosquitto, wait_for

BENCH_DIR = Path(__file__).resolve().parent
SECTION = "api"
GOAL_P99_MS = 50.0
GOAL_PAGE = 100
TOPIC_PREFIX = "fleet"
READ_TOKEN = "bench-read"
PLATFORMS = ("esp32-s3", "esp32-c6", "rp2040", "nrf52840", "stm32h7")
FIRMWARES = ("1.4.2", "1.5.0", "1.5.1", "2.0.0")
SITES = tuple(f"site-{i:02d}" for i in range(20))
# (name, labels of the sample) per alias; cpu_temp_c has two series, one per core.
METRICS = ("cpu_temp_c", "mem_free_bytes", "inference_ms", "uptime_s", "wifi_rssi_dbm",
           "battery_v")
SAMPLE_SERIES = ((0, (("core", "0"),)), (0, (("core", "1"),)), (1, ()), (2, ()), (3, ()),
                 (4, ()), (5, ()))
GAP_EVERY, GAP_AT = 100, 37  # device i has a gap when i % 100 == 37: 1 %
DEATH_EVERY, DEATH_AT = 100, 71  # and is offline when i % 100 == 71: another 1 %
WARMUP = 5
# A /healthz p50 this high on loopback is no work of the server: it is the delayed-ACK timer.
STALLED_FLOOR_MS = 30.0
LOAD_TIMEOUT_S = 900.0
HTTP_TIMEOUT_S = 30.0


class ApiBenchError(BenchError):
    """An answer of the API did not check out, so its timing would mean nothing."""


# ------------------------------------------------------------------------------- the fleet
def device_id(i: int) -> str:
    return f"api-{i:06d}"


def _mix(i: int) -> int:
    """A fixed scramble of the index, so platform, firmware and site are not correlated."""
    return (i * 2654435761) % 2**32


@dataclass(frozen=True, slots=True)
class Device:
    index: int
    platform: str
    firmware: str
    site: str
    boot: int
    seqs: tuple[int, ...]
    dies: bool

    @property
    def id(self) -> str:
        return device_id(self.index)

    @property
    def missing(self) -> int:
        return self.seqs[-1] + 1 - len(self.seqs)


def plan_device(i: int, frames: int) -> Device:
    h = _mix(i)
    seqs = tuple(range(frames))
    if i % GAP_EVERY == GAP_AT and frames > 1:
        skipped = 1 + (i // GAP_EVERY) % 5  # 1..5 seqs missing after seq 0
        seqs = (0, *range(1 + skipped, frames + skipped))
    return Device(i, PLATFORMS[h % len(PLATFORMS)], FIRMWARES[(h // 5) % len(FIRMWARES)],
                  SITES[(h // 20) % len(SITES)], boot=1 + i % 1000, seqs=seqs,
                  dies=i % DEATH_EVERY == DEATH_AT)


def birth_payload(device: Device, interval_ms: int, time_ms: int) -> bytes:
    metrics = tuple(MetricDef(a, name, MetricType.GAUGE) for a, name in enumerate(METRICS))
    return encode_birth(Birth(boot=device.boot, time_ms=time_ms, platform=device.platform,
                              firmware=device.firmware, labels=(("site", device.site),),
                              interval_ms=interval_ms, metrics=metrics))


def telemetry_payload(device: Device, seq: int, time_ms: int) -> bytes:
    samples = tuple(RawSample(alias, ((device.index * 31 + seq * 7 + n) % 1000) / 8.0 + 0.1,
                              0, labels)
                    for n, (alias, labels) in enumerate(SAMPLE_SERIES))
    return encode_telemetry(RawTelemetry(boot=device.boot, seq=seq, time_ms=time_ms,
                                         samples=samples, historical=False))


@dataclass(slots=True)
class Fleet:
    devices: list[Device]
    births: list[list[tuple[bytes, bytes]]]  # per connection: (topic, payload)
    rest: list[list[tuple[bytes, bytes]]]  # telemetry seq by seq, then deaths
    telemetry_frames: int = 0
    deaths: int = 0
    encode_s: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)


def build_fleet(devices: int, frames: int, interval_ms: int, connections: int) -> Fleet:
    """Every packet's payload, per connection; device i always on connection i % connections,
    so its birth, frames and death reach the broker (and the gateway) in that order."""
    began = time.process_time()
    now_ms = int(time.time() * 1000)
    plan = [plan_device(i, frames) for i in range(devices)]
    births: list[list[tuple[bytes, bytes]]] = [[] for _ in range(connections)]
    rest: list[list[tuple[bytes, bytes]]] = [[] for _ in range(connections)]
    for d in plan:
        births[d.index % connections].append((
            birth_topic(TOPIC_PREFIX, d.id).encode(),
            birth_payload(d, interval_ms, now_ms - 60_000)))
    topics = [telemetry_topic(TOPIC_PREFIX, d.id).encode() for d in plan]
    n_frames = 0
    for k in range(frames):  # as a fleet sends: every device's k-th frame, then the next
        for d in plan:
            seq = d.seqs[k]
            # one second apart, ending a few seconds ago: all in the past, none far back
            time_ms = now_ms - (frames - k) * 1000
            rest[d.index % connections].append((topics[d.index],
                                                telemetry_payload(d, seq, time_ms)))
            n_frames += 1
    dying = [d for d in plan if d.dies]
    for d in dying:
        rest[d.index % connections].append((death_topic(TOPIC_PREFIX, d.id).encode(),
                                            encode_death(Death(d.boot))))
    return Fleet(plan, births, rest, telemetry_frames=n_frames, deaths=len(dying),
                 encode_s=time.process_time() - began)


class ProgressPoller:
    """The gateway's progress while it loads, from /api/v1/pipeline and /api/v1/fleet/summary
    (cheap answers: /metrics has per-device families, ~30 MB at 100,000 devices, and polling
    it would load the machine more than the gateway's own work), and the slowest answer: the
    API shares the gateway's event loop with ingest, so a slow answer is a stalled loop."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=LOAD_TIMEOUT_S,
                                 headers={"Authorization": f"Bearer {READ_TOKEN}"})
        self.slowest_s = 0.0

    def _get(self, path: str) -> Any:
        began = time.monotonic()
        body = self.http.get(path).raise_for_status().json()
        self.slowest_s = max(self.slowest_s, time.monotonic() - began)
        return body

    def buffered_frames(self) -> int:
        """Frames in the buffer: every stored frame, as the gateway has no endpoint."""
        return int(self._get("/api/v1/pipeline")["buffer"]["frames"])

    def offline(self) -> int:
        return int(self._get("/api/v1/fleet/summary")["by_state"]["offline"])

    def close(self) -> None:
        self.http.close()


def publish(mqtt_url: str, fleet: Fleet, gw: GatewayProcess, window: int) -> dict[str, float]:
    """Births, wait until stored; then telemetry and deaths, wait until the gateway shows it
    all. Returns the wall time of each phase and the slowest progress answer meanwhile."""
    url = urlsplit(mqtt_url)
    conns = [loadgen.Connection(url.hostname or "127.0.0.1", url.port or 1883,
                                f"bench-api-{c}") for c in range(len(fleet.births))]
    poller = ProgressPoller(gw.url)
    n = len(fleet.devices)
    stored = n + fleet.telemetry_frames

    def stored_frames() -> float:
        return poller.buffered_frames()

    def all_in() -> bool:
        return stored_frames() >= stored and poller.offline() >= fleet.deaths

    try:
        began = time.monotonic()
        birth_streams = loadgen.build_streams(fleet.births, [0] * len(conns))
        loadgen.send_phase(conns, birth_streams, window, timeout_s=LOAD_TIMEOUT_S)
        wait_for(lambda: stored_frames() >= n, LOAD_TIMEOUT_S, 0.2,
                 f"gateway did not store {n:,} births")
        births_s = time.monotonic() - began
        rest = loadgen.build_streams(fleet.rest, [s.count for s in birth_streams])
        loadgen.send_phase(conns, rest, window, timeout_s=LOAD_TIMEOUT_S)
        wait_for(all_in, LOAD_TIMEOUT_S, 0.2,
                 f"gateway did not store {stored:,} frames and receive {fleet.deaths:,} deaths")
    finally:
        for conn in conns:
            conn.close()
        poller.close()
    return {"births_s": births_s, "load_s": time.monotonic() - began,
            "slowest_poll_s": poller.slowest_s}


# ------------------------------------------------------------------------------- requests
Check = Callable[[Any], None]


@dataclass(slots=True)
class Line:
    """One line of the table: a request (or a list of them to cycle through) and its check."""

    label: str
    paths: list[tuple[str, dict[str, Any]]]
    check: Check
    goal: bool = True  # a page of 100 (or one device): held to GOAL_P99_MS
    times_ms: list[float] = field(default_factory=list)
    bytes: int = 0

    def request(self, n: int) -> tuple[str, dict[str, Any]]:
        return self.paths[n % len(self.paths)]


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise ApiBenchError(what)


def _page(n: int, where: Callable[[dict[str, Any]], bool] = lambda d: True,
          what: str = "") -> Check:
    def check(body: Any) -> None:
        devices = body["devices"]
        _expect(len(devices) == n, f"{what}: {len(devices)} devices, expected {n}")
        wrong = [d for d in devices if not where(d)]
        _expect(not wrong, f"{what}: {len(wrong)} devices do not match, e.g. {wrong[:1]}")
    return check


def _ordered(key: Callable[[dict[str, Any]], Any], reverse: bool = False) -> Check:
    def check(body: Any) -> None:
        keys = [key(d) for d in body["devices"]]
        _expect(len(keys) == GOAL_PAGE and keys == sorted(keys, reverse=reverse),
                f"page not in order: {keys[:5]}...")
    return check


def _has(*keys: str) -> Check:
    def check(body: Any) -> None:
        _expect(all(k in body for k in keys), f"missing {keys} in {sorted(body)}")
    return check


def deep_cursor(http: httpx.Client, pages: int) -> tuple[str, str]:
    """The cursor of page `pages + 1` (limit 100, default sort), found by following
    next_cursor, and the first device id expected on it."""
    cursor: str | None = None
    params: dict[str, Any] = {"limit": GOAL_PAGE}
    for _ in range(pages):
        body = _get(http, "/api/v1/devices", {**params, **({"cursor": cursor} if cursor else {})})
        cursor = body["next_cursor"]
        _expect(cursor is not None, "next_cursor ran out before the deep page")
    assert cursor is not None
    return cursor, device_id(pages * GOAL_PAGE)


def _get(http: httpx.Client, path: str, params: dict[str, Any]) -> Any:
    response = http.get(path, params=params)
    _expect(response.status_code == 200,
            f"GET {path} {params} -> {response.status_code}: {response.text[:500]}")
    return response.json()


def build_lines(http: httpx.Client, fleet: Fleet, args: argparse.Namespace) -> list[Line]:
    rng = random.Random(20261122)
    n = len(fleet.devices)
    ids = [device_id(rng.randrange(n)) for _ in range(args.requests)]
    platform, site = PLATFORMS[1], SITES[7]
    needle = "123"  # in about 1 id in 200 of 100,000 ("api-0123xx", "api-x123xx", ...)
    matches = sum(1 for d in fleet.devices if needle in d.id[4:])
    pages = min(args.deep_pages, max(0, (n - 1) // GOAL_PAGE))
    cursor, first_deep = deep_cursor(http, pages) if pages else ("", device_id(0))
    page = {"limit": GOAL_PAGE}

    def by(key: str, value: str) -> Callable[[dict[str, Any]], bool]:
        return lambda d: d[key] == value

    offline_page = min(GOAL_PAGE, fleet.deaths)
    lines = [
        Line("`GET /healthz` (baseline: one HTTP round trip)", [("/healthz", {})],
             _has("status"), goal=False),
        Line("`GET /api/v1/devices` (first page of 100)", [("/api/v1/devices", page)],
             _page(min(GOAL_PAGE, n), what="first page")),
        Line("`?state=offline`", [("/api/v1/devices", {**page, "state": "offline"})],
             _page(offline_page, by("state", "offline"), "state=offline")),
        Line(f"`?platform={platform}`", [("/api/v1/devices", {**page, "platform": platform})],
             _page(min(GOAL_PAGE, sum(d.platform == platform for d in fleet.devices)),
                   by("platform", platform), "platform")),
        Line(f"`?q={needle}` (substring of the id; {matches:,} match)",
             [("/api/v1/devices", {**page, "q": needle})],
             _page(min(GOAL_PAGE, matches), lambda d: needle in d["device_id"], "q")),
        Line(f"`?label=site={site}`",
             [("/api/v1/devices", {**page, "label": f"site={site}"})],
             _page(min(GOAL_PAGE, sum(d.site == site for d in fleet.devices)),
                   lambda d: d["labels"].get("site") == site, "label")),
        Line("`?sort=-last_seen`", [("/api/v1/devices", {**page, "sort": "-last_seen"})],
             _ordered(lambda d: d["last_seen_ms"], reverse=True)),
        Line("`?sort=completeness` (worst first)",
             [("/api/v1/devices", {**page, "sort": "completeness"})],
             _ordered(lambda d: d["completeness_pct"])),
        Line("`GET /api/v1/devices?limit=1000` (for scale: 10x the page)",
             [("/api/v1/devices", {"limit": 1000})], _page(min(1000, n), what="limit=1000"),
             goal=False),
        Line("`GET /api/v1/devices/{id}` (random ids)",
             [(f"/api/v1/devices/{i}", {}) for i in ids], _has("latest", "completeness")),
        Line("`GET /api/v1/devices/{id}/events` (random ids)",
             [(f"/api/v1/devices/{i}/events", {}) for i in ids], _has("events")),
        Line("`GET /api/v1/fleet/summary`", [("/api/v1/fleet/summary", {})],
             _has("total", "by_state", "worst")),
        Line("`GET /api/v1/pipeline`", [("/api/v1/pipeline", {})], _has("buffer", "endpoints")),
    ]
    if pages:
        lines.insert(8, Line(
            f"deep page: `?cursor=` after following next_cursor {pages} times "
            f"(devices {pages * GOAL_PAGE:,}-{pages * GOAL_PAGE + GOAL_PAGE - 1:,})",
            [("/api/v1/devices", {**page, "cursor": cursor})],
            _deep_check(first_deep)))
    return lines


def _deep_check(first_id: str) -> Check:
    def check(body: Any) -> None:
        _expect(body["devices"][0]["device_id"] == first_id,
                f"deep page starts at {body['devices'][0]['device_id']}, expected {first_id}")
    return check


def time_lines(http: httpx.Client, lines: list[Line], requests: int) -> None:
    """Warm-up, then `requests` timed requests per line, the lines taken round-robin."""
    for line in lines:  # a warm-up also checks every line's answer once
        for n in range(WARMUP):
            path, params = line.request(n)
            line.check(_get(http, path, params))
    for n in range(requests):
        for line in lines:
            path, params = line.request(n)
            began = time.perf_counter()
            response = http.get(path, params=params)
            elapsed = time.perf_counter() - began
            if response.status_code != 200:
                raise ApiBenchError(f"GET {path} {params} -> {response.status_code}: "
                                    f"{response.text[:500]}")
            line.times_ms.append(elapsed * 1000)
            line.bytes = max(line.bytes, len(response.content))


# ------------------------------------------------------------------------------- the run
def vm_rss_mb(pid: int) -> float:
    """VmRSS: resident set now (procstat.peak_rss_mb gives the high-water mark)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def fleet_counts(http: httpx.Client, fleet: Fleet) -> dict[str, Any]:
    """Wait until the summary counts the whole fleet with its dead devices offline."""
    n = len(fleet.devices)

    def complete() -> bool:
        body = _get(http, "/api/v1/fleet/summary", {})
        fleet.counts = body
        return bool(body["total"] == n and body["by_state"].get("offline", 0) >= fleet.deaths)

    wait_for(complete, 120, 0.5, f"fleet summary did not reach {n:,} devices with "
             f"{fleet.deaths:,} offline: {fleet.counts}")
    return fleet.counts


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    print(f"encoding {args.devices:,} devices x {args.frames} frames ...", flush=True)
    fleet = build_fleet(args.devices, args.frames, args.interval_s * 1000, args.connections)
    settings = {"api_tokens": f"{READ_TOKEN}:read", **args.gateway_settings}
    with Mosquitto(workdir / "mosquitto") as mosq, GatewayProcess(
            workdir / "gateway", mqtt_url=mosq.url, settings=settings) as gw:
        assert gw.pid is not None
        print(f"publishing ({fleet.encode_s:.1f} s to encode) ...", flush=True)
        load = publish(mosq.url, fleet, gw, args.window)
        headers = {"Authorization": f"Bearer {READ_TOKEN}"}
        with httpx.Client(base_url=gw.url, headers=headers, timeout=HTTP_TIMEOUT_S) as http:
            counts = fleet_counts(http, fleet)
            rss, peak = vm_rss_mb(gw.pid), procstat.peak_rss_mb(gw.pid)
            print(f"loaded in {load['load_s']:.1f} s (births {load['births_s']:.1f} s, slowest "
                  f"progress poll {load['slowest_poll_s']:.1f} s); gateway RSS {rss:,.0f} MB; "
                  "timing ...", flush=True)
            lines = build_lines(http, fleet, args)
            cpu0 = procstat.cpu(gw.pid)
            load_before = os.getloadavg()[0]
            began = time.monotonic()
            time_lines(http, lines, args.requests)
            timing_s = time.monotonic() - began
            cpu = procstat.cpu_since(cpu0)
            load_after = os.getloadavg()[0]
            after = _get(http, "/api/v1/fleet/summary", {})
    if after["by_state"] != counts["by_state"]:
        print(f"note: device states changed while timing: {counts['by_state']} -> "
              f"{after['by_state']}", file=sys.stderr)
    return {"fleet": fleet, "load": load, "counts": counts, "after": after, "rss_mb": rss,
            "peak_rss_mb": peak, "lines": lines, "gw_cpu_s": cpu, "timing_s": timing_s,
            "loadavg": (load_before, load_after)}


def summary(line: Line) -> dict[str, float]:
    t = line.times_ms
    return {"p50": stats.percentile(t, 50), "p99": stats.percentile(t, 99), "max": max(t)}


def table(lines: list[Line]) -> str:
    out = [f"| request | p50 | p99 | max | response | p99 < {GOAL_P99_MS:.0f} ms |",
           "|---|---:|---:|---:|---:|---|"]
    for line in lines:
        s = summary(line)
        verdict = ("**met**" if s["p99"] < GOAL_P99_MS else "**missed**") if line.goal else "—"
        out.append(f"| {line.label} | {s['p50']:.1f} ms | {s['p99']:.1f} ms | "
                   f"{s['max']:.1f} ms | {line.bytes / 1024:,.1f} KiB | {verdict} |")
    return "\n".join(out)


def markdown(args: argparse.Namespace, command: str, machine: dict[str, str],
             result: dict[str, Any]) -> str:
    fleet: Fleet = result["fleet"]
    lines: list[Line] = result["lines"]
    judged = [line for line in lines if line.goal]
    missed = [line for line in judged if summary(line)["p99"] >= GOAL_P99_MS]
    gaps = sum(1 for d in fleet.devices if d.missing)
    requests = sum(len(line.times_ms) for line in lines)
    states = ", ".join(f"{k} {v:,}" for k, v in sorted(result["counts"]["by_state"].items()))
    settings = (", overridden: " + ", ".join(f"{k}={v}" for k, v in
                                             sorted(args.gateway_settings.items()))
                if args.gateway_settings else "")
    out = [
        f"## Operator API at {len(fleet.devices):,} devices (`bench/api.py`)",
        "",
        f"- Command: `{command}`",
        f"- Date: {machine['date']}; commit {machine['commit']}",
        f"- Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory']} RAM, "
        f"Linux {machine['kernel']}; broker, gateway and this client share these CPUs; load "
        f"average (1 min) {result['loadavg'][0]:.1f} before timing, {result['loadavg'][1]:.1f} "
        "after",
        f"- Fleet: {len(fleet.devices):,} devices over {len(PLATFORMS)} platforms, "
        f"{len(FIRMWARES)} firmwares, {len(SITES)} values of the label `site`, declared "
        f"interval {args.interval_s} s; {args.frames} telemetry frames each of "
        f"{len(SAMPLE_SERIES)} samples ({fleet.telemetry_frames:,} frames); {gaps:,} devices "
        f"with a gap of 1-5 seqs, {fleet.deaths:,} sent their death. States seen: {states}",
        f"- Gateway: defaults{settings}, no remote-write endpoint (frames stay buffered), "
        f"a read token in api_tokens sent as `Authorization: Bearer`. Load until all stored "
        f"and seen: {result['load']['load_s']:.0f} s, of which births "
        f"{result['load']['births_s']:.0f} s; slowest answer to a progress poll "
        f"(/api/v1/pipeline, /api/v1/fleet/summary, every 0.2 s) meanwhile: "
        f"{result['load']['slowest_poll_s']:.1f} s",
        f"- **Gateway memory after loading: RSS {result['rss_mb']:,.0f} MB** (peak "
        f"{result['peak_rss_mb']:,.0f} MB)",
        f"- Timing: one httpx client, keep-alive, one request at a time; {WARMUP} warm-up "
        f"requests per line, then {args.requests} per line, the lines taken round-robin; "
        f"time = request sent to whole body read. Gateway CPU while timing: "
        f"{result['gw_cpu_s']:.1f} s for {requests:,} requests "
        f"({result['gw_cpu_s'] / requests * 1000:.1f} ms per request on average) in "
        f"{result['timing_s']:.0f} s",
        "",
        table(lines),
        "",
        f"Goal: p99 under {GOAL_P99_MS:.0f} ms for a page of {GOAL_PAGE} "
        + (f"(**met** on all {len(judged)} lines held to it)." if not missed else
           f"(**missed** on {len(missed)} of {len(judged)} lines: "
           + ", ".join(line.label for line in missed) + ")."),
        "The `/healthz` line is the floor any answer pays (HTTP parsing, the event loop, "
        "the client); the `limit=1000` line is not held to the goal.",
    ]
    floor = summary(lines[0])["p50"]
    if floor >= STALLED_FLOOR_MS:
        out += ["", f"**The floor itself is {floor:.0f} ms.** On loopback that is the "
                "delayed-ACK timer (40 ms on Linux): the server writes a response in two "
                "pieces (headers, then body) to a socket without TCP_NODELAY, and Nagle holds "
                "the second until the client acknowledges the first. Every small answer above "
                "pays it; a body that fills whole segments does not (so `limit=1000` can beat "
                "a page of 100). The API's own time is roughly each line minus the floor."]
    if result["after"]["by_state"] != result["counts"]["by_state"]:
        out += ["", f"**Device states changed while timing**: {states} -> "
                + ", ".join(f"{k} {v:,}" for k, v in sorted(result["after"]["by_state"].items()))]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--frames", type=int, default=4, help="telemetry frames per device")
    ap.add_argument("--interval-s", type=int, default=600,
                    help="interval each birth declares (late after 2x, offline after 6x)")
    ap.add_argument("--requests", type=int, default=200, help="timed requests per line")
    ap.add_argument("--deep-pages", type=int, default=500,
                    help="next_cursor hops to the deep page (500: the middle of 100,000)")
    ap.add_argument("--connections", type=int, default=4, help="publisher connections")
    ap.add_argument("--window", type=int, default=loadgen.DEFAULT_WINDOW,
                    help="most unacked packets per connection")
    ap.add_argument("--gateway-setting", action="append", type=parse_setting, default=[],
                    metavar="KEY=VALUE", help="passed to the gateway as FLEETGATE_KEY=VALUE")
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md",
                    help="report to write (its other sections and notes are kept)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep service dirs and logs here (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    if args.devices < 1 or args.frames < 1 or args.requests < 1:
        ap.error("--devices, --frames and --requests must be at least 1")
    args.gateway_settings = dict(args.gateway_setting)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/api.py",
                          *(sys.argv[1:] if argv is None else argv)])
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fleetgate-api-bench-"))
    try:
        result = run(args, root)
    except (BenchError, TimeoutError, KeyError, httpx.HTTPError) as exc:
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    text = markdown(args, command, procstat.machine(), result)
    print(text)
    results_file.write_section(args.results, SECTION, text)
    print(f"wrote section '{SECTION}' of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
