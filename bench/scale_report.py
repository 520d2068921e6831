"""bench/scale.py's arithmetic and its report: the "scale" section of bench/RESULTS.md and the
summary printed at the end. A phase that failed is a row that says FAILED and why."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import stats

GOAL_DEVICES = 100_000
GOAL_FLAT = 1.2  # later-frame CPU at the largest fleet / the smallest, same run
GOAL_RSS_MB = 300.0
GOAL_DARK_LATENESS_S = 1.0
GOAL_DRAIN_FRAMES_S = 30_000
GOAL_DRAIN_LATENESS_S = 5.0


def spread(values: Sequence[float]) -> dict[str, Any]:
    """p50 / p99 / max (nearest rank) and how many values; None when there are none."""
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    return {"p50": stats.percentile(values, 50), "p99": stats.percentile(values, 99),
            "max": max(values), "n": len(values)}


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x (e.g. RSS bytes per device known); None for < 2 x."""
    if len({x for x, _ in points}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    return (sum((x - mx) * (y - my) for x, y in points)
            / sum((x - mx) ** 2 for x, _ in points))


def _f(value: Any, fmt: str = ",.0f", unit: str = "") -> str:
    return "—" if value is None else f"{value:{fmt}}{unit}"


def _met(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def _ms(s: dict[str, Any]) -> str:
    if not s or s.get("p50") is None:
        return "—"
    return f"{s['p50'] * 1000:,.0f} / {s['p99'] * 1000:,.0f} / {s['max'] * 1000:,.0f} ms"


def _failed(name: str, failures: dict[str, str]) -> list[str]:
    return [f"**{name}: FAILED** — {failures[name]}", ""] if name in failures else []


def flat_ratio(cpu: dict[int, dict[str, Any]], key: str = "later_us_per_frame") -> float | None:
    sizes = sorted(n for n, r in cpu.items() if r.get(key))
    if len(sizes) < 2:
        return None
    return float(cpu[sizes[-1]][key] / cpu[sizes[0]][key])


def cpu_lines(cpu: dict[int, dict[str, Any]], repeats: int) -> list[str]:
    if not cpu:
        return []
    sizes = sorted(cpu)
    base = cpu[sizes[0]]
    out = ["| devices (series) | frames/device | births µs/device | first frame µs | "
           "later frames µs | later vs smallest | broker µs | VM µs | RSS after | "
           "lost samples |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in sizes:
        r = cpu[n]
        ratio = (r["later_us_per_frame"] / base["later_us_per_frame"]
                 if r.get("later_us_per_frame") and base.get("later_us_per_frame") else None)
        out.append(
            f"| {n:,} ({r['series']:,}) | {r['frames']} | {_f(r['birth_us_per_device'])} | "
            f"{_f(r['first_us_per_frame'])} | **{_f(r['later_us_per_frame'])}** | "
            f"{_f(ratio, '.2f', 'x')} | {_f(r['broker_us_per_frame'])} | "
            f"{_f(r['vm_us_per_frame'])} | {_f(r['rss_mb'])} MB | {_f(r['lost_samples'])} |")
    out += ["", f"Medians of {repeats} repeat(s), fleet sizes interleaved in each. Gateway CPU "
            "from /proc (all threads) from the command to the generator until every frame is "
            "committed and forwarded (/api/v1/pipeline), divided by the frames (births: by "
            "the devices). \"First frame\": every device's first frame of its boot (its series "
            "are new); \"later frames\": the rest. CPU stolen by the hypervisor meanwhile "
            "(/proc/stat steal, all CPUs): " + ", ".join(
                f"{n:,}: {_f(cpu[n].get('steal_s'), '.1f', ' s')}" for n in sizes) + "."]
    return out


def memory_lines(cpu: dict[int, dict[str, Any]], samples: int) -> list[str]:
    points = [(float(n), r["rss_mb"] * 1024 * 1024) for n, r in cpu.items()]
    per_device = slope(points)
    if per_device is None:
        return []
    return ["RSS with N devices known (VmRSS after the later frames, the CPU phase's runs): "
            + ", ".join(f"{n:,}: {cpu[n]['rss_mb']:,.0f} MB" for n in sorted(cpu))
            + f"; least-squares slope **{per_device:,.0f} bytes per device**, "
            f"{per_device / samples:,.0f} bytes per series ({samples} series per device)."]


def sustain_lines(s: dict[str, Any]) -> list[str]:
    late = s["lateness"]
    return [
        f"{s['devices']:,} devices at a 10 s cadence for {s['paced_s']:.0f} s "
        f"(asked {s['asked_frames_per_s']:,.0f} frames/s); steady figures exclude the first "
        f"{s['warmup_s']:.0f} s.", "",
        "| figure | value |", "|---|---:|",
        f"| frames/s published (generator) / stored by the gateway | "
        f"{_f(s['sent_per_s'])} / **{_f(s['stored_per_s'])}** |",
        f"| gateway CPU share of 2 cores / µs per frame | {_f(s['gw_share_pct'], '.1f', '%')}"
        f" / {_f(s['gw_us_per_frame'])} µs |",
        f"| broker / VictoriaMetrics / generator CPU share | "
        f"{_f(s['broker_share_pct'], '.1f', '%')} / {_f(s['vm_share_pct'], '.1f', '%')} / "
        f"{_f(s['gen_share_pct'], '.1f', '%')} |",
        f"| gateway RSS: end / max sampled (5 s) / VmHWM | {_f(s['rss_end_mb'])} / "
        f"{_f(s['rss_max_sampled_mb'])} / **{_f(s['hwm_mb'])} MB** |",
        f"| newest data's age at VM p50 / p99 / max ({late['n']} polls; "
        f"{s['lateness_unanswered_polls']} found nothing new) | {_ms(late)} |",
        f"| generator behind schedule, at worst | {s['gen_max_lag_s']:.2f} s |",
        f"| late / offline events while the fleet reported | {_f(s['late_events'])} / "
        f"{_f(s['offline_events'])} |",
        f"| gateway dropped by the broker (missed keepalive) / duplicate frames | "
        f"{s['keepalive_drops']} / {s['duplicates']:,.0f} |",
        f"| samples in VM / expected (lost) | {s['vm_samples']:,.0f} / "
        f"{s['expected_samples']:,.0f} ({s['lost_samples']:,.0f}); values "
        f"{'ok' if s['values_ok'] else 'WRONG'} |",
        "", "Age of the newest data: every second, now minus the newest timestamp VM returns "
        "for bench_m00 of the devices whose id ends in 0 (frames carry their publish time; "
        "a tenth of the fleet, so one of them publishes every few ms at this cadence).",
    ]


def dark_lines(d: dict[str, Any]) -> list[str]:
    how = (f"a death for each within {d['spread_s']:.0f} s" if d["variant"] == "deaths"
           else "silence: offline by timeout")
    return [
        f"{d['devices']:,} devices online (10 s cadence), {d['live_devices']:,} live devices "
        f"at {d['live_rate']:,.0f} frames/s in total; then {how}.", "",
        "| figure | value |", "|---|---:|",
        f"| live lateness p50 / p99 / max during the wave | **{_ms(d['lateness'])}** |",
        f"| live lateness before the wave (baseline) | {_ms(d['baseline'])} |",
        f"| all {d['devices']:,} offline (fleet API counts) after | "
        f"{_f(d['offline_s'], '.1f', ' s')} |",
        f"| every stale marker forwarded after | {_f(d['markers_s'], '.1f', ' s')} "
        f"({d['markers']:,.0f} queued: {d['markers'] / d['devices']:.1f} per device; "
        f"{d['expected_markers']:,} metric series) |",
        f"| VM export of {d['export_series']} series: last value a staleness marker | "
        f"{d['export_stale']} |",
        f"| gateway RSS before / max sampled / VmHWM | {d['rss_before_mb']:,.0f} / "
        f"{d['rss_max_sampled_mb']:,.0f} / {d['hwm_mb']:,.0f} MB |",
        f"| fleet summary by_state at the end | {d['by_state']} |",
        f"| samples lost: fleet / live | {d['lost_samples']:,.0f} / {d['live_lost']:,.0f} |",
        f"| polls unanswered within 10 s: VM lateness / gateway checks | {d['slow_polls']} / "
        f"{d['slow_checks']} |",
    ]


def drain_lines(r: dict[str, Any]) -> list[str]:
    g, a = r["gateway"], r["vmagent"]
    return [
        f"Backlog {r['workload']} (bench/drain.py's run_gateway; vmagent_peer.run_drain "
        "as the baseline, same run).", "",
        "| | vmagent | gateway |", "|---|---:|---:|",
        f"| drain frames/s | {a['frames_per_s']:,.0f} | **{g['frames_per_s']:,.0f}** "
        f"({g['frames_per_s'] / a['frames_per_s']:.2f}x) |",
        f"| drain samples/s | {a['samples_per_s']:,.0f} | {g['samples_per_s']:,.0f} |",
        f"| live lateness p50 / max | — | {g['lateness_p50_s']:.1f} / "
        f"**{g['lateness_max_s']:.1f} s** |",
        f"| samples lost | {a['lost_samples']:,.0f} | {g['lost_samples']:,.0f} |",
    ]


def _at(result: dict[str, Any] | None) -> str:
    """ at N devices, flagged when smaller than the issue's 100,000."""
    if result is None:
        return ""
    n = result["devices"]
    return f" at {n:,} devices" + (" (**not** the goal's 100,000)" if n < GOAL_DEVICES else "")


def goals(cpu: dict[int, dict[str, Any]], phases: dict[str, Any]) -> list[str]:
    ratio = flat_ratio(cpu)
    s, d, r = phases.get("sustain"), phases.get("dark"), phases.get("drain")
    rss = s["hwm_mb"] if s else None
    sustained = None if s is None else (
        not s["lost_samples"] and not s.get("problems") and not s["late_events"]
        and s["stored_per_s"] is not None
        and s["stored_per_s"] >= 0.97 * s["asked_frames_per_s"])
    largest = cpu[max(cpu)] if cpu else None
    return [
        f"- Flat cost (later frames, largest / smallest fleet <= {GOAL_FLAT}x): "
        f"{_met(None if ratio is None else ratio <= GOAL_FLAT)} ({_f(ratio, '.2f', 'x')})"
        + _at(largest),
        f"- Sustained 10 s cadence, rate reached, every sample delivered, no device late, "
        "no problem: "
        f"{_met(sustained)}{_at(s)}",
        f"- RSS <= {GOAL_RSS_MB:.0f} MB under that load: "
        f"{_met(None if rss is None else rss <= GOAL_RSS_MB)} ({_f(rss)} MB VmHWM){_at(s)}",
        f"- Dark wave, live lateness < {GOAL_DARK_LATENESS_S:.0f} s: "
        f"{_met(None if d is None else (d['lateness']['max'] or 0) < GOAL_DARK_LATENESS_S)}"
        + _at(d),
        f"- Drain >= {GOAL_DRAIN_FRAMES_S:,} frames/s with live < {GOAL_DRAIN_LATENESS_S:.0f}"
        " s late: " + _met(None if r is None else (
            r["gateway"]["frames_per_s"] >= GOAL_DRAIN_FRAMES_S
            and r["gateway"]["lateness_max_s"] < GOAL_DRAIN_LATENESS_S)),
    ]


def markdown(*, command: str, machine: dict[str, str], cpu: dict[int, dict[str, Any]],
             phases: dict[str, Any], failures: dict[str, str], repeats: int, samples: int,
             settings: dict[str, str], load: str) -> str:
    out = [
        "## Scale: 100,000 devices on one box (`bench/scale.py`)", "",
        f"- Command: `{command}`",
        f"- Date: {machine['date']}; commit {machine['commit']}; {machine['cpus']} CPUs "
        f"({machine['cpu_model']}), {machine['memory']}, shared by broker, gateway, "
        f"VictoriaMetrics and the generators; {load}",
        "- Gateway settings: defaults" + ("" if not settings else ", overridden: " + ", ".join(
            f"{k}={v}" for k, v in sorted(settings.items()))),
        f"- Frames of {samples} gauges each; fresh Mosquitto, VictoriaMetrics and gateway "
        "(fresh data dir) per run", "",
    ]
    if failures:
        out += ["**Phases that FAILED: " + ", ".join(sorted(failures)) + "** (below).", ""]
    out += ["### Goals", "", *goals(cpu, phases), ""]
    out += ["### CPU per frame by fleet size", "", *_failed("cpu", failures),
            *cpu_lines(cpu, repeats), ""]
    out += ["### Memory", "", *_failed("memory", failures), *memory_lines(cpu, samples)]
    if "memory" in phases:
        out += ["", phases["memory"]["text"]]
    out += [""]
    for name, title, render in (("sustain", "Sustained load", sustain_lines),
                                ("dark", "Going dark", dark_lines),
                                ("drain", "Drain against vmagent", drain_lines)):
        out += [f"### {title}", "", *_failed(name, failures)]
        problems = phases.get(name, {}).get("problems", [])
        out += [f"**PROBLEM: {p}**" for p in problems] + [""] * bool(problems)
        out += [*render(phases[name]), ""] if name in phases else (
            [] if name in failures else ["Not run.", ""])
    return "\n".join(out).rstrip() + "\n"
