"""After every step: what the receiver, the registry, the fleet and SQLite say, against the
model. Each check names the rule of tests/model/reference.py it enforces."""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field

from gateway.fleet import completeness
from gateway.fleet.series import device_exposition

from .node import Node
from .reference import STALE, Model, Sample, SeriesKey
from .seams import Receiver

DROPPED = ("fleetgate_frames_dropped_total", {"reason": "buffer_full"})
# Checks to leave out while exploring past a known, reported failure (comma-separated tags):
# missing-after-restart, duplicate-count, past-boot-completeness, held-block,
# no-quarantined-count, order, size, refused-resent, stale-twice, ahead-remeasure,
# death-after-restart, closed-boot-revived, held-copy-lost.
# Empty in `make test`.
STATS = Counter[str]()  # what the histories exercised, for the report line
KNOWN = frozenset(filter(None, os.environ.get("MODEL_KNOWN", "").split(",")))


@dataclass
class CheckState:
    allowed_twice: Counter[Sample] = field(default_factory=Counter)  # rule 6
    refused: set[Sample] = field(default_factory=set)  # rule 7: never sent again
    requests_checked: int = 0
    full_drain: bool = False  # the last forward sent everything committed
    dropped_before: float = 0.0  # buffer_full drops counted by past incarnations
    stale_pending: list[tuple[str, dict[SeriesKey, int]]] = field(default_factory=list)
    offline_transitions: int = 0

    def counted_before_restart(self, node: Node) -> None:
        self.dropped_before += value(node, *DROPPED)

    def stale_due(self, due: list[tuple[str, dict[SeriesKey, int]]]) -> None:
        self.offline_transitions += len(due)
        self.stale_pending += [(d, series) for d, series in due if series]


def value(node: Node, name: str, labels: dict[str, str] | None = None) -> float:
    return node.metrics.registry.get_sample_value(name, labels) or 0.0


def total(node: Node, name: str) -> float:
    return sum(s.value for metric in node.metrics.registry.collect() for s in metric.samples
               if s.name == name)


def show(samples: Counter[Sample] | set[Sample], limit: int = 4) -> str:
    items = sorted(samples, key=repr)[:limit]
    return "; ".join(f"{name}{dict(labels)} {v} @{ts}" for (name, labels), v, ts in items) + (
        f" (+{len(samples) - limit} more)" if len(samples) > limit else "")


async def check_all(node: Node, model: Model, receiver: Receiver, state: CheckState, *,
                    max_samples: int, dropping: bool) -> None:
    check_requests(receiver, state, max_samples, model)
    check_delivery(node, model, receiver, state, dropping)
    check_registry(node, model)
    await check_tables(node, model, receiver)
    check_fleet(node, model)
    await check_reboots(node, model)
    state.full_drain = False


def check_requests(receiver: Receiver, state: CheckState, max_samples: int,
                   model: Model) -> None:
    """Rules 7 and 10: request size, per-series order, nothing refused is sent again."""
    for n, request in enumerate(receiver.requests[state.requests_checked:],
                                state.requests_checked):
        assert len(request.samples) <= max_samples or "size" in KNOWN, (
            f"rule 10: request {n} carried {len(request.samples)} samples, "
            f"remote_write_max_samples is {max_samples}")
        newest: dict[SeriesKey, int] = {}
        for key, _v, ts in request.samples:
            assert ts >= newest.get(key, ts) or "order" in KNOWN, (
                f"rule 10: request {n}: {key[0]}{dict(key[1])} has @{ts} after "
                f"@{newest[key]}: samples of a series out of timestamp order")
            newest[key] = max(ts, newest.get(key, ts))
        # (a sample due twice, e.g. two births of a boot in one millisecond, may come again)
        again = state.refused & {s for s in request.samples if model.expected[s] < 2
                                 and (s[1] != STALE or "stale-twice" not in KNOWN)}
        assert not again or "refused-resent" in KNOWN, (
            f"rule 7: request {n} sends again samples refused with a 4xx before: {show(again)}")
        STATS[f"requests answered {request.outcome}"] += 1
        if request.outcome == "400":
            state.refused |= set(request.samples)
    state.requests_checked = len(receiver.requests)


def _real(samples: Counter[Sample]) -> Counter[Sample]:
    return Counter({s: n for s, n in samples.items() if s[1] != STALE})


def check_delivery(node: Node, model: Model, receiver: Receiver, state: CheckState,
                   dropping: bool) -> None:
    """Rules 1, 3, 6, 8: each committed sample once (or twice across one crash window)."""
    got = _real(receiver.accepted + receiver.refused)
    extra = got - model.expected - state.allowed_twice
    assert not extra, f"rules 1/3/6/8: delivered but not due (or twice): {show(extra)}"
    if not state.full_drain:
        return
    STATS["full drains checked"] += 1
    if dropping:
        _account_drops(node, model, got, state)
    else:
        missing = model.expected - got
        assert not missing, f"rules 1/8: committed but never delivered: {show(missing)}"
        assert value(node, *DROPPED) == 0, "rule 8: frames dropped under `block`"
        check_stale(receiver, state)


def _account_drops(node: Node, model: Model, got: Counter[Sample], state: CheckState) -> None:
    """Rule 8 under drop_oldest: a frame is delivered whole or dropped whole, and exactly the
    frames counted as dropped are missing (frames without a visible sample give slack)."""
    kept = []
    window = 0  # frames a crash cut off after their 2xx: the gateway may count them dropped
    for frame in model.frames:
        present = frame & got
        size = sum(frame.values())
        if present == frame:
            kept.append(frame)
            window += not (frame - state.allowed_twice)
            continue
        outside = present - state.allowed_twice
        assert not outside, (
            f"rule 8: a frame partly delivered ({sum(present.values())} of {size}): "
            f"{show(frame - got)} missing")
        if size:
            STATS["frames dropped at the cap, checked"] += 1
            model.drop(frame)
    model.frames = kept
    counted = state.dropped_before + value(node, *DROPPED)
    # Frames without a sample of the device's: births of a past boot, frames of empty samples,
    # stale-marker frames (a close per timeout, reboot or death at most), crash-window frames.
    slack = model.invisible_frames + state.offline_transitions + model.deaths + window
    assert model.dropped_frames <= counted <= model.dropped_frames + slack, (
        f"rule 8: {model.dropped_frames} frames missing at the receiver (+ up to {slack} "
        f"without samples), fleetgate_frames_dropped says {counted:.0f}")


def check_stale(receiver: Receiver, state: CheckState) -> None:
    """Rule 9: every series of the boot has a stale marker after its newest sample."""
    markers: dict[SeriesKey, int] = {}
    for (key, v, ts), _n in (receiver.accepted + receiver.refused).items():
        if v == STALE:
            markers[key] = max(markers.get(key, ts), ts)
    for device, due in state.stale_pending:
        STATS["series checked for a stale marker"] += len(due)
        lacking = {k: ts for k, ts in due.items() if markers.get(k, -1) <= ts
                   and not ("closed-boot-revived" in KNOWN and k in markers)}
        assert not lacking, (
            f"rule 9: {device} went offline; {len(lacking)} of its {len(due)} series got no "
            f"stale marker, e.g. {[k[0] + str(dict(k[1])) for k in list(lacking)[:3]]}")
    state.stale_pending = []


def check_registry(node: Node, model: Model) -> None:
    """Rule 5, the registry (counts since this gateway's start)."""
    counts = model.counts
    for kind in ("birth", "telemetry", "death"):
        got = value(node, "fleetgate_frames_received_total", {"kind": kind})
        assert got == counts.received[kind], (
            f"rule 5: fleetgate_frames_received{{kind={kind}}} {got:.0f}, "
            f"model {counts.received[kind]}")
    stored = value(node, "fleetgate_frames_stored_total")
    low = counts.stored_telemetry + counts.births_current
    assert low <= stored <= low + counts.births_other, (
        f"rule 5: fleetgate_frames_stored {stored:.0f}, model {counts.stored_telemetry} "
        f"telemetry + {counts.births_current} births (+ up to {counts.births_other})")
    dups = value(node, "fleetgate_frames_duplicate_total")
    in_range = counts.duplicates == dups
    assert in_range or "duplicate-count" in KNOWN, (
        f"rule 3/5: fleetgate_frames_duplicate {dups:.0f}, model {counts.duplicates}")
    dropped_labels = total(node, "fleetgate_labels_dropped_total")
    assert dropped_labels == counts.labels_dropped, (
        f"rule 5: fleetgate_labels_dropped {dropped_labels:.0f}, model {counts.labels_dropped}")
    invalid = total(node, "fleetgate_frames_invalid_total")
    assert invalid == counts.invalid, (
        f"rule 2/5: fleetgate_frames_invalid {invalid:.0f}, model {counts.invalid}")
    held = value(node, "fleetgate_frames_held")
    assert held == model.held_count(), (
        f"rule 1/5: fleetgate_frames_held {held:.0f}, model {model.held_count()}")


async def check_tables(node: Node, model: Model, receiver: Receiver) -> None:
    """Rules 2, 5, 7: the durable quarantine and dead-letter tables."""
    quarantined, dead = await node.db.read(lambda conn: (
        conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0],
        conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]))
    assert quarantined == model.quarantined_total, (
        f"rule 2/5: {quarantined} frames in quarantine, model {model.quarantined_total}")
    refused = sum(receiver.refused.values())
    assert dead == refused, (
        f"rule 7: {dead} dead letters, the receiver refused {refused} samples with a 4xx")


def check_fleet(node: Node, model: Model) -> None:
    """Rules 4 and 5: each device's boot, state and counts, in the fleet and its families."""
    exposition = _families(node)
    for name, dev in model.devices.items():
        record = node.fleet.devices.get(name)
        if not dev.known:
            assert record is None, f"rule 4: {name} is unknown yet the fleet has a record"
            continue
        assert record is not None, f"rule 4: {name} has no fleet record"
        assert dev.current is not None
        assert (record.boot, record.firmware) == (dev.current.boot, dev.current.fw), (
            f"rule 4: {name} current boot {record.boot} ({record.firmware}), model "
            f"{dev.current.boot} ({dev.current.fw})")
        assert record.online == dev.online or "death-after-restart" in KNOWN, (
            f"rule 4/9: {name} is {record.state}, model {'online' if dev.online else 'offline'}")
        dups = sum(record.duplicates.values())
        want_dups = sum(dev.duplicates.values())
        quarantined = getattr(record, "quarantined", None)
        assert quarantined is not None or "no-quarantined-count" in KNOWN, (
            "rule 5: the fleet keeps no per-device count of quarantined frames")
        if quarantined is None:
            quarantined = dev.quarantined
        assert (record.frames, quarantined) == (dev.frames, dev.quarantined), (
            f"rule 5: {name} fleet frames/quarantined {record.frames}/{quarantined}, "
            f"model {dev.frames}/{dev.quarantined}")
        in_range = want_dups == dups
        assert in_range or "duplicate-count" in KNOWN, (
            f"rule 3/5: {name} fleet duplicates {dups}, model {want_dups}")
        _check_completeness(node, model, name, record, exposition)


def _check_completeness(node: Node, model: Model, name: str, record: object,
                        exposition: dict[tuple[str, str], float]) -> None:
    report = completeness.of_device(record, node.pipeline.ledger)  # type: ignore[arg-type]
    missing = 0
    for boot in report.boots:
        want = model.completeness(name, boot.boot)
        assert (boot.received, boot.missing) == want, (
            f"rule 5: {name} boot {boot.boot} completeness received/missing "
            f"{boot.received}/{boot.missing}, model {want[0]}/{want[1]}")
        missing += boot.missing
    listed = {b.boot for b in report.boots}
    for device, boot in model.seen:
        if "past-boot-completeness" in KNOWN:
            break
        if device == name and model.seen[device, boot] and len(listed) < 8:
            assert boot in listed, f"rule 5: {name} boot {boot} has frames, not in completeness"
    rec = record
    for family, want_value in (("received_total", rec.frames),  # type: ignore[attr-defined]
                               ("quarantined_total",
                                getattr(rec, "quarantined", None)),
                               ("duplicate_total", sum(rec.duplicates.values())),  # type: ignore[attr-defined]
                               ("missing", missing)):
        got = exposition.get((f"fleet_device_frames_{family}", name))
        if ((family == "missing" and "missing-after-restart" in KNOWN)
                or (family == "quarantined_total" and "no-quarantined-count" in KNOWN)):
            continue
        assert got == want_value, (
            f"rule 5: fleet_device_frames_{family}{{device_id={name}}} {got}, the fleet "
            f"record and completeness say {want_value}")


_LINE = re.compile(r'^(\w+)\{device_id="([^"]+)"\} (\S+)$')


def _families(node: Node) -> dict[tuple[str, str], float]:
    text = device_exposition(node.fleet, node.missing_of).decode()
    return {(m[1], m[2]): float(m[3]) for m in map(_LINE.match, text.splitlines()) if m}


async def check_reboots(node: Node, model: Model) -> None:
    """Rule 4: a reboot event for each change of current boot, none for a birth of the past."""
    rows = dict(await node.db.read(lambda conn: conn.execute(
        "SELECT device_id, COUNT(*) FROM device_events WHERE kind = 'reboot' GROUP BY device_id"
    ).fetchall()))
    for name, dev in model.devices.items():
        assert rows.get(name, 0) == dev.reboots, (
            f"rule 4: {rows.get(name, 0)} reboot events for {name}, model {dev.reboots}")
