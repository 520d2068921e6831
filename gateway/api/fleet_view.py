"""Read-side queries over the fleet for the fleet routes: summaries, completeness ranking, and
the pages of the device list in each sort order (no sort of the whole fleet per request)."""

from __future__ import annotations

import base64
import binascii
import bisect
import json
from collections.abc import Callable, Iterator
from typing import Any, Literal

from gateway.api.port import GatewayPort
from gateway.api.schemas import ApiError, DeviceSummary
from gateway.fleet import completeness
from gateway.fleet.state import DeviceRecord, DeviceState

Sort = Literal["device_id", "-device_id", "last_seen", "-last_seen", "completeness"]


def encode_cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_request", "cursor is not one this API gave out") from exc
    if not isinstance(key, list) or not key:
        raise ApiError(422, "invalid_request", "cursor is not one this API gave out")
    return key


class FleetView:
    """Read-side queries over the fleet, for the fleet routes."""

    def __init__(self, port: GatewayPort) -> None:
        self.port = port
        self.fleet = port.fleet

    def completeness_pct(self, record: DeviceRecord) -> float | None:
        if record.device_id in self.fleet.incomplete:
            received, missing = completeness.totals(record, self.port.ledger)
            if not missing:
                self.fleet.incomplete.discard(record.device_id)  # a replay filled the gaps
            return completeness.percent(received, missing)
        return 100.0 if record.frames else None

    def summary(self, record: DeviceRecord) -> DeviceSummary:
        budget = self.port.series_budget
        return DeviceSummary(
            device_id=record.device_id, state=record.state, state_since_ms=record.state_since_ms,
            online=record.online, platform=record.platform, firmware=record.firmware,
            boot=record.boot, labels=record.labels, interval_ms=record.interval_ms,
            last_seen_ms=record.last_seen_ms, last_seq=record.last_seq,
            completeness_pct=self.completeness_pct(record),
            series=budget.series(record.device_id),
            over_series_budget=budget.over(record.device_id))

    def incomplete_ranked(self) -> list[tuple[float, str]]:
        """(completeness %, id) of devices with gaps, worst first."""
        ranked = []
        for device_id in list(self.fleet.incomplete):
            record = self.fleet.devices.get(device_id)
            if record is None:
                self.fleet.incomplete.discard(device_id)
                continue
            pct = self.completeness_pct(record)
            if pct is not None and pct < 100.0:
                ranked.append((pct, device_id))
        ranked.sort()
        return ranked

    def page(self, match: Callable[[DeviceRecord], bool], sort: Sort, limit: int,
             cursor: list[Any] | None, states: set[DeviceState] | None = None,
             q: str | None = None) -> tuple[list[DeviceRecord], list[Any] | None]:
        devices = self.fleet.devices
        if sort in ("device_id", "-device_id"):
            ids = None
            if q:  # the id search first: it narrows the fleet the most cheaply
                ids = self.fleet.ids_containing(q)
            elif states:
                wanted = sum(len(self.fleet.by_state[s]) for s in states)
                if wanted * 5 < len(devices):  # a rare state: sort its few ids, don't scan
                    ids = sorted(set().union(*(self.fleet.by_state[s] for s in states)))
            return self._page_by_id(match, sort == "-device_id", limit, cursor, ids)
        if sort == "completeness":
            return self._page_by_completeness(match, limit, cursor)
        return self._page_by_last_seen(match, sort == "-last_seen", limit, cursor)

    def _page_by_last_seen(self, match: Callable[[DeviceRecord], bool], newest_first: bool,
                           limit: int, cursor: list[Any] | None
                           ) -> tuple[list[DeviceRecord], list[Any] | None]:
        """In FleetState's recency order: no sort of the fleet. Cursor: [last_seen_ms, id];
        a page resumes after that device among those seen in the same millisecond."""
        devices = self.fleet.devices
        order = self.fleet.by_last_seen(newest_first)
        out: list[DeviceRecord] = []
        if cursor is not None:
            seen_ms, last_id = int(cursor[0]), str(cursor[1])
            passed = False
            for device_id in order:
                record = devices.get(device_id)
                if record is None:
                    continue
                ahead = (record.last_seen_ms > seen_ms if newest_first
                         else record.last_seen_ms < seen_ms)
                if ahead:
                    continue
                if record.last_seen_ms == seen_ms and not passed:
                    passed = device_id == last_id
                    continue
                if match(record):
                    out.append(record)
                    break
        for device_id in order:
            if len(out) > limit:
                break
            record = devices.get(device_id)
            if record is not None and match(record):
                out.append(record)
        if len(out) > limit:
            out = out[:limit]
            return out, [out[-1].last_seen_ms, out[-1].device_id]
        return out, None

    def _page_by_id(self, match: Callable[[DeviceRecord], bool], descending: bool, limit: int,
                    cursor: list[Any] | None, ids: list[str] | None = None
                    ) -> tuple[list[DeviceRecord], list[Any] | None]:
        if ids is None:
            ids = self.fleet.sorted_ids()
        devices = self.fleet.devices
        if descending:
            end = bisect.bisect_left(ids, str(cursor[0])) if cursor else len(ids)
            order: Iterator[str] = (ids[i] for i in range(end - 1, -1, -1))
        else:
            start = bisect.bisect_right(ids, str(cursor[0])) if cursor else 0
            order = (ids[i] for i in range(start, len(ids)))
        out: list[DeviceRecord] = []
        for device_id in order:
            record = devices.get(device_id)
            if record is None or not match(record):
                continue
            if len(out) == limit:
                return out, [out[-1].device_id]
            out.append(record)
        return out, None

    def _page_by_completeness(self, match: Callable[[DeviceRecord], bool], limit: int,
                              cursor: list[Any] | None
                              ) -> tuple[list[DeviceRecord], list[Any] | None]:
        """Devices with gaps, worst first; then the rest by id. Cursor: [phase, pct, id]."""
        devices = self.fleet.devices
        ranked = self.incomplete_ranked()
        gappy = {device_id for _, device_id in ranked}
        ids = self.fleet.sorted_ids()

        def ordered() -> Iterator[tuple[list[Any], str]]:
            for pct, device_id in ranked:
                yield [0, pct, device_id], device_id
            for device_id in ids:
                if device_id not in gappy:
                    yield [1, 100.0, device_id], device_id

        after = (int(cursor[0]), float(cursor[1]), str(cursor[2])) if cursor else None
        out: list[DeviceRecord] = []
        last_key: list[Any] | None = None
        for key, device_id in ordered():
            if after is not None and tuple(key) <= after:
                continue
            record = devices.get(device_id)
            if record is None or not match(record):
                continue
            if len(out) == limit:
                return out, last_key
            out.append(record)
            last_key = key
        return out, None

    def device_or_404(self, device_id: str) -> DeviceRecord:
        record = self.fleet.devices.get(device_id)
        if record is None:
            raise ApiError(404, "not_found", f"unknown device {device_id!r}")
        return record


def label_filter(labels: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for label in labels:
        name, sep, value = label.partition("=")
        if not sep or not name:
            raise ApiError(422, "invalid_request", f"label filter {label!r} must be name=value")
        pairs.append((name, value))
    return pairs


def has_label(name: str, value: str) -> Callable[[DeviceRecord], bool]:
    return lambda record: record.labels.get(name) == value


def completeness_bucket(pct: float) -> str:
    if pct >= 100.0:
        return "100"
    if pct >= 99.0:
        return "99-100"
    if pct >= 95.0:
        return "95-99"
    if pct >= 90.0:
        return "90-95"
    return "<90"
