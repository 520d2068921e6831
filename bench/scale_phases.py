"""Phases 1 and 2 of bench/scale.py: CPU per frame by fleet size, and the sustained load.

CPU per frame (one fleet size, fresh services): births, then every device's first frame of the
boot (a "burst 1": each device's series are new to the gateway), then `frames - 1` more rounds
(later frames). For each of the three the gateway's CPU (/proc utime+stime, all threads) is
taken from the command to the generator until /api/v1/pipeline shows every frame committed and
forwarded (bench/throughput.py's _await_gateway), and divided by the frames. VmRSS is read after
the later frames (N devices known). VictoriaMetrics is then checked for every sample.

Sustained: frames at devices / 10 s per second, each stamped with its publish time, for
sustain_s; each device's birth (declaring a 10 s interval) just before its first frame. Every
second the age of the newest sample in VM (scale_stack.HEAD_QUERY; the newest seen so far when
it finds none in its window: nothing newer arrived) is read; every 5 s VmRSS and CPU. Figures
after the first two intervals (births and first frames: learning) are the steady ones. At the
end pacing stops, the gateway must store and forward everything, and VM must hold every sample
once.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import procstat
import scale_report
import scale_stack
from scale_stack import Stack
from throughput import _await_gateway

CPU_INTERVAL_MS = 600_000  # bursts are faster than any cadence: no device should go late
RSS_EVERY_S = 5.0
HEAD_EVERY_S = 1.0
SUSTAIN_INTERVAL_MS = 10_000


def _timed(stack: Stack, command: str, target: int, timeout: float) -> dict[str, Any]:
    """Gateway CPU from `command` until frame `target` is committed and forwarded."""
    before = stack.cpu()
    steal0 = procstat.steal_seconds()
    stack.gen.send(command)
    progress = _await_gateway(stack.gw, target)
    used = {k: v - before[k] for k, v in stack.cpu().items()}
    stack.gen.expect_event("acked", timeout)
    return {"gw_cpu_s": used["gw"], "broker_cpu_s": used["broker"], "vm_cpu_s": used["vm"],
            "gen_cpu_s": used["gen"], "steal_s": procstat.steal_seconds() - steal0,
            "forwarded_epoch": progress["forwarded_epoch"]}


def run_cpu(args: argparse.Namespace, devices: int, frames: int,
            workdir: Path) -> dict[str, Any]:
    """One fleet size: births, first frames, later frames; CPU per frame of each."""
    with scale_stack.stack(workdir, devices, args.samples, CPU_INTERVAL_MS,
                           args.gateway_settings) as stack:
        gw_pid = stack.pids["gw"]
        rss_idle = scale_stack.vm_rss_mb(gw_pid)
        upto = int(stack.gw.pipeline()["committed_upto"])
        births = _timed(stack, "births", upto + devices, args.timeout)
        scale_stack.check_fleet(stack)
        rss_born = scale_stack.vm_rss_mb(gw_pid)
        first = _timed(stack, "burst 1", upto + 2 * devices, args.timeout)
        scale_stack.check_fleet(stack)
        later = {"gw_cpu_s": 0.0, "broker_cpu_s": 0.0, "vm_cpu_s": 0.0, "gen_cpu_s": 0.0,
                 "steal_s": 0.0}
        if frames > 1:
            later = _timed(stack, f"burst {frames - 1}", upto + (frames + 1) * devices,
                           args.timeout)
        rss = scale_stack.vm_rss_mb(gw_pid)
        check = scale_stack.verify_fleet(stack, devices * frames)
        hwm = procstat.peak_rss_mb(gw_pid)
    n_later = devices * (frames - 1)
    return {
        "devices": devices, "frames": frames, "series": devices * args.samples,
        "birth_us_per_device": births["gw_cpu_s"] / devices * 1e6,
        "first_us_per_frame": first["gw_cpu_s"] / devices * 1e6,
        "later_us_per_frame": later["gw_cpu_s"] / n_later * 1e6 if n_later else None,
        "all_us_per_frame": (first["gw_cpu_s"] + later["gw_cpu_s"]) / (devices * frames) * 1e6,
        "broker_us_per_frame": later["broker_cpu_s"] / n_later * 1e6 if n_later else None,
        "vm_us_per_frame": later["vm_cpu_s"] / n_later * 1e6 if n_later else None,
        "gen_us_per_frame": later["gen_cpu_s"] / n_later * 1e6 if n_later else None,
        "steal_s": births["steal_s"] + first["steal_s"] + later["steal_s"],
        "rss_idle_mb": rss_idle, "rss_born_mb": rss_born, "rss_mb": rss, "hwm_mb": hwm,
        **check,
    }


def _sample(stack: Stack, t0: float, rss: list[tuple[float, float]],
            cpu: list[tuple[float, dict[str, float]]]) -> None:
    rss.append((time.time() - t0, scale_stack.vm_rss_mb(stack.pids["gw"])))
    cpu.append((time.time(), stack.cpu()))


def run_sustain(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """devices at a 10 s cadence for sustain_s; rate, CPU shares, RSS, lateness, delivery."""
    devices = args.sustain_devices
    rate = devices / (SUSTAIN_INTERVAL_MS / 1000)
    warmup_s = SUSTAIN_INTERVAL_MS / 1000 * 2
    with scale_stack.stack(workdir, devices, args.samples, SUSTAIN_INTERVAL_MS,
                           args.gateway_settings) as stack:
        stack.gen.send(f"pace {rate} births")
        t0 = time.time()
        rss: list[tuple[float, float]] = []
        cpu: list[tuple[float, dict[str, float]]] = []
        ages: list[tuple[float, float]] = []
        steady: dict[str, Any] = {}
        next_rss = t0
        newest, unanswered = 0.0, 0  # the newest sample seen so far; polls without one
        while (now := time.time()) < t0 + args.sustain_s:
            if now >= next_rss:
                _sample(stack, t0, rss, cpu)
                next_rss += RSS_EVERY_S
            if not steady and now - t0 >= warmup_s:
                steady = {"t": time.time(), "cpu": stack.cpu(),
                          "stored": stack.stored_patiently()}
            head = scale_stack.patient(lambda: scale_stack.newest_head(stack.vm))
            if head is None:  # VM did not answer, or nothing within the query's window
                unanswered += 1
            newest = max(newest, head or 0.0)
            ages.append((now - t0, time.time() - max(newest, t0)))
            time.sleep(max(0.0, HEAD_EVERY_S - (time.time() - now)))
        end = {"t": time.time(), "cpu": stack.cpu(), "stored": stack.stored_patiently()}
        # While the fleet still reports: after the silence below every device goes late.
        names = {e: f'fleetgate_device_events_total{{event="{e}"}}' for e in ("late", "offline")}
        scraped = scale_stack.patient(lambda: stack.scrape(*names.values())) or {}
        events = {e: scraped.get(name) for e, name in names.items()}
        stack.gen.send("silence")
        paced = stack.gen.expect_event("paced", args.timeout)
        stack.gen.expect_event("silent", 60)
        problems: list[str] = []
        frames = min(devices, paced["sent"]) + paced["sent"]  # births + telemetry
        scale_stack.delivered(stack, frames, args.timeout, "sustained load", problems)
        check = scale_stack.verify_fleet(stack, int(paced["sent"]))
        hwm = procstat.peak_rss_mb(stack.pids["gw"])
        mqtt = scale_stack.mqtt_health(stack)
    wall = end["t"] - steady["t"] if steady else 0.0
    used = {k: end["cpu"][k] - steady["cpu"][k] for k in end["cpu"]} if steady else {}
    frames = end["stored"] - steady["stored"] if steady else 0.0
    late = [a for t, a in ages if t >= warmup_s]
    return {
        "devices": devices, "asked_frames_per_s": rate, "sustain_s": args.sustain_s,
        "warmup_s": warmup_s, "sent": paced["sent"],
        "paced_s": paced["end_epoch"] - paced["start_epoch"],
        "sent_per_s": paced["sent"] / (paced["end_epoch"] - paced["start_epoch"]),
        "gen_max_lag_s": paced["max_lag_s"], "gen_window_waits": paced["window_waits"],
        "stored_per_s": frames / wall if wall else None,
        "gw_share_pct": used["gw"] / wall / 2 * 100 if wall else None,
        "broker_share_pct": used["broker"] / wall / 2 * 100 if wall else None,
        "vm_share_pct": used["vm"] / wall / 2 * 100 if wall else None,
        "gen_share_pct": used["gen"] / wall / 2 * 100 if wall else None,
        "gw_us_per_frame": used["gw"] / frames * 1e6 if frames else None,
        "rss_mb": [round(r, 1) for _, r in rss], "rss_end_mb": rss[-1][1] if rss else None,
        "rss_max_sampled_mb": max((r for _, r in rss), default=None), "hwm_mb": hwm,
        "lateness": scale_report.spread(late),
        "lateness_unanswered_polls": unanswered,
        "late_events": events["late"], "offline_events": events["offline"],
        "keepalive_drops": mqtt["keepalive_drops"], **check, "problems": problems + [
            f"the broker dropped the gateway {mqtt['keepalive_drops']} time(s) for a missed "
            "keepalive (blocked)"] * bool(mqtt["keepalive_drops"]),
    }
