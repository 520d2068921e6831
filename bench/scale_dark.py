"""Phase 4 of bench/scale.py: a fleet that goes dark at once, beside devices still alive.

`devices` generator devices boot (a birth declaring a 10 s interval just before the first
frame) and report at that cadence until every one is online with a frame stored and forwarded;
then bench/pacer.py's live devices ("live-NNNNN", 1 frame/s each by default, each frame stamped
with its publish time) start.
After a baseline the generator stops the fleet's telemetry and publishes a death for every
device, spread evenly over `spread_s` (default variant), or falls silent (`--dark-timeout`:
the devices then go offline by timeout, after device_offline_after_intervals x 10 s).

Meanwhile, every POLL_S: the live lateness at VictoriaMetrics (bench/drain.py's LIVE_QUERY: the
age of the newest live sample); every CHECK_S: the fleet API's device counts by state,
/api/v1/pipeline and VmRSS, and fleetgate_stale_markers_total once all are offline (see
_follow for when the wave is over). The fleet summary's by_state is read once at the end.
Then: every live sample and every fleet sample in VM exactly once (count_over_time skips
staleness markers), and VM's export of a few devices' series shows the stale marker as each
one's last value.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import drain
import procstat
import scale_report
import scale_stack
import vmagent_peer
from scale_stack import Stack, patient
from throughput import BenchError, Child

from devstack import wait_for

BENCH_DIR = Path(__file__).resolve().parent
INTERVAL_MS = 10_000
POLL_S = 0.5
CHECK_S = 2.0
BASELINE_S = 10.0
ONLINE_TIMEOUT_S = 300.0
EXPORT_DEVICES = 'bench-00000[0-9]'  # ten devices whose series' last value must be stale


def _counts(stack: Stack) -> dict[str, int]:
    """Devices by state, as the fleet API says right now (/api/v1/devices with limit=1:
    its counts; /metrics is 37 MB at 100,000 devices, too dear to poll)."""
    page = stack.gw.http.get("/api/v1/devices", params={"limit": 1}, timeout=30)
    return dict(page.raise_for_status().json()["counts"])


def _online(stack: Stack) -> float:
    return _counts(stack).get("online", 0)


def _live_age(stack: Stack, first_publish: float) -> float:
    newest = drain._newest_live(stack.vm)
    return drain.lateness_s(time.time(), newest, first_publish)


def _follow(args: argparse.Namespace, stack: Stack, began: float,
            state: dict[str, Any]) -> dict[str, Any]:
    """Poll until the wave is done (or dark_max_s): lateness, offline events, markers, RSS.

    Every device is offline once the fleet API's counts say N offline (the live devices stay
    online). Every marker is committed once the marker counter (read from /metrics only from
    then on) has reached N x samples and stopped growing from one check to the next; they are
    all forwarded once the endpoint's cursor reaches what was committed at that check (live
    frames keep coming: never "cursor = committed")."""
    out: dict[str, Any] = {"lateness": [], "rss": [], "offline_s": None, "markers_s": None,
                           "markers": 0.0}
    next_check = began
    target: int | None = None  # committed position once every marker was committed
    while True:
        now = time.time()
        age = patient(lambda: _live_age(stack, state["live_first"]))
        if age is None:  # VM did not answer in time: not a lateness of the gateway's
            out["slow_polls"] = out.get("slow_polls", 0) + 1
        else:
            out["lateness"].append(age)
        if now >= next_check:
            next_check += CHECK_S
            out["rss"].append(scale_stack.vm_rss_mb(stack.pids["gw"]))
            target = _check(stack, began, state, out, target)
            if out["markers_s"] is not None:
                return out
        if now - began > args.dark_max_s:
            out["timed_out"] = True
            return out
        time.sleep(max(0.0, POLL_S - (time.time() - now)))


def _check(stack: Stack, began: float, state: dict[str, Any], out: dict[str, Any],
           target: int | None) -> int | None:
    """One look at the offline count and the cursor (and, once every device is offline, the
    marker counter); the committed position to reach once every marker is committed."""
    counts = patient(lambda: _counts(stack))
    pipeline = patient(stack.gw.pipeline)
    if counts is None or pipeline is None:
        out["slow_checks"] = out.get("slow_checks", 0) + 1
        return target
    if out["offline_s"] is None and counts.get("offline", 0) >= stack.devices:
        out["offline_s"] = time.time() - began
    if target is None and out["offline_s"] is not None:
        name = "fleetgate_stale_markers_total"
        markers = (patient(lambda: stack.scrape(name)) or {}).get(name)
        if markers is None:
            out["slow_checks"] = out.get("slow_checks", 0) + 1
            return target
        if markers >= stack.devices * stack.samples and markers == out["markers"]:
            target = int(pipeline["committed_upto"])
        out["markers"] = markers
    cursor = min(int(e["cursor"]) for e in pipeline["endpoints"])
    if target is not None and cursor >= target:
        out["markers_s"] = time.time() - began
    return target


def _stale_last_values(stack: Stack) -> tuple[int, int]:
    """(series exported, of them ending in a staleness marker) for EXPORT_DEVICES."""
    series = stack.vm.export(f'{{__name__=~"bench_m[0-9]+",device_id=~"{EXPORT_DEVICES}"}}')
    stale = 0
    for s in series:
        # VictoriaMetrics exports a staleness marker as null (JSON has no NaN).
        if s["values"] and s["values"][-1] is None:
            stale += 1
    return len(series), stale


def _await_online(stack: Stack, devices: int, timeout: float) -> None:
    """Until every device is online with its birth and a frame stored (the gauge is set by a
    periodic job); a fleet that cannot get there (a gateway too far behind, devices going late)
    ends the phase with what the gateway says."""
    try:
        wait_for(lambda: bool(patient(lambda: _online(stack) >= devices
                                      and stack.stored() >= 2 * devices)),
                 timeout, 0.5, "")
    except TimeoutError:
        health = scale_stack.mqtt_health(stack)
        raise BenchError(
            f"the fleet did not come online within {timeout:.0f} s: {_counts(stack)} of "
            f"{devices:,}; committed {stack.stored():,.0f} frames, duplicates "
            f"{health['duplicates']:,.0f}; broker dropped the gateway "
            f"{health['keepalive_drops']} time(s) for a missed keepalive") from None


def _start_live(args: argparse.Namespace, stack: Stack, workdir: Path) -> Child:
    frames = int(args.live_devices * args.live_rate_per_device
                 * (BASELINE_S + args.dark_max_s + 60))
    pacer = Child("pacer", [
        sys.executable, str(BENCH_DIR / "pacer.py"), "--mqtt", stack.mosq.url,
        "--devices", str(args.live_devices),
        "--rate", str(args.live_devices * args.live_rate_per_device),
        "--frames", str(frames), "--samples", str(stack.samples)], workdir)
    pacer.expect_event("ready", 600)
    wait_for(lambda: _online(stack) >= stack.devices + args.live_devices, args.timeout, 0.5,
             "the live devices did not come online")
    return pacer


def run_dark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    devices = args.dark_devices
    with scale_stack.stack(workdir, devices, args.samples, INTERVAL_MS,
                           args.gateway_settings) as stack:
        stack.gen.send(f"pace {devices / (INTERVAL_MS / 1000)} births")
        _await_online(stack, devices, min(args.timeout, ONLINE_TIMEOUT_S))
        online_s = time.time() - stack.started_ms / 1000
        pacer = _start_live(args, stack, workdir)
        try:
            pacer.send("go")
            state: dict[str, float] = {"live_first": time.time()}
            baseline = []
            while time.time() - state["live_first"] < BASELINE_S:
                baseline.append(_live_age(stack, state["live_first"]))
                time.sleep(POLL_S)
            rss_before = scale_stack.vm_rss_mb(stack.pids["gw"])
            began = time.time()
            stack.gen.send("silence" if args.dark_timeout else f"dark {args.dark_spread_s}")
            wave = _follow(args, stack, began, state)
            pacer.send("stop")
            live = pacer.expect_event("done", 60)
        finally:
            pacer.stop()
        paced = stack.gen.expect_event("paced", 60)
        stack.gen.expect_event("silent" if args.dark_timeout else "acked", args.timeout)
        live_samples = live["sent"] * stack.samples
        problems: list[str] = []
        frames = min(devices, paced["sent"]) + paced["sent"] + args.live_devices + live["sent"]
        scale_stack.delivered(stack, frames, args.timeout, "going dark", problems)
        live_vm = vmagent_peer.count_samples(
            stack.vm, '{__name__=~"bench_m[0-9]+",device_id=~"live-.*"}',
            int(live["first_ms"]), live_samples)
        check = scale_stack.verify_fleet(stack, int(paced["sent"]))
        exported, stale = _stale_last_values(stack)
        by_state = stack.gw.http.get("/api/v1/fleet/summary").raise_for_status().json()[
            "by_state"]
        hwm = procstat.peak_rss_mb(stack.pids["gw"])
        mqtt = scale_stack.mqtt_health(stack)
    if mqtt["keepalive_drops"]:
        problems.append(f"the broker dropped the gateway {mqtt['keepalive_drops']} time(s) "
                        "for a missed keepalive (blocked)")
    if wave.get("timed_out"):
        raise BenchError(f"the dark wave was not over within {args.dark_max_s:.0f} s: "
                         f"offline after {wave['offline_s']} s, stale markers "
                         f"{wave.get('markers', 0):,.0f} of {devices * args.samples:,}")
    return {
        "devices": devices, "variant": "timeout" if args.dark_timeout else "deaths",
        "spread_s": 0 if args.dark_timeout else args.dark_spread_s, "online_s": online_s,
        "live_devices": args.live_devices, "live_sent": live["sent"],
        "live_rate": live["sent"] / live["wall_s"], "live_lost": live_samples - live_vm,
        "baseline": scale_report.spread(baseline), "lateness": scale_report.spread(
            wave["lateness"]), "offline_s": wave["offline_s"], "markers_s": wave["markers_s"],
        "markers": wave["markers"], "expected_markers": devices * args.samples,
        "export_series": exported, "export_stale": stale, "by_state": by_state,
        "rss_before_mb": rss_before, "rss_max_sampled_mb": max(wave["rss"], default=0.0),
        "hwm_mb": hwm, "slow_polls": wave.get("slow_polls", 0),
        "slow_checks": wave.get("slow_checks", 0), **check, "problems": problems,
    }
