"""Raw telemetry + its birth -> remote-write entries, without building resolved samples.

The first sample of each series of a boot goes the long way: `resolve_telemetry` (every rule
of the protocol: aliases, histogram declarations, birth labels) and `SeriesEncoder`. What that
yields, the series' entry prefix, is cached per (device, boot) against the very Birth object
that resolved it; every later sample of the series costs a dict lookup and one struct.pack.
Histogram samples always take the long way (they are few). Validation of the frame itself
(types, names, finiteness, clock skew) stays in `decode_telemetry`, which the caller runs first.
"""

from __future__ import annotations

from device_protocol import (
    Birth,
    BirthRequired,
    HistogramSample,
    HistogramValue,
    Labels,
    RawSample,
    RawTelemetry,
    SampleRow,
    TelemetryRows,
    resolve_telemetry,
)
from gateway.buffer.entry_cache import FrameEntries
from gateway.pipeline.series_budget import SeriesBudget
from gateway.remote_write.series import SeriesEncoder, label_bytes
from gateway.remote_write.wire import (
    SAMPLE_HEAD,
    SAMPLE_TIMESTAMP_TAG,
    SAMPLE_VALUE_TAG,
    encode_varint,
    entry_timestamp,
)

_TS_LEN = 6  # SeriesEncoder prefixes assume a 6-byte varint timestamp (years 1971..2109)


def _in_time_order(out: FrameEntries, raw: TelemetryRows) -> None:
    """A frame whose samples carry time offsets: note its oldest and newest sample time, and
    if a series goes back in time within it (dt +500 then -500), sort the entries by timestamp
    (stable), as remote-write 1.0 wants every series' samples in timestamp order."""
    rows = raw.rows
    offsets = [row[2] for row in rows]
    out.first_ms, out.last_ms = raw.time_ms + min(offsets), raw.time_ms + max(offsets)
    newest: dict[object, int] = {}
    for metric, _, dt_ms, labels in rows:
        key = (metric, labels) if labels else metric
        if newest.get(key, dt_ms) > dt_ms:
            break
        newest[key] = dt_ms
    else:
        return  # every series in order already: keep the frame's order
    stamps = [entry_timestamp(entry) for entry in out]
    order = sorted(range(len(out)), key=stamps.__getitem__)
    out[:] = [out[i] for i in order]


# alias or name alone when the sample has no labels of its own, else (alias or name, labels)
SeriesKey = int | str | tuple[int | str, tuple[tuple[str, str], ...]]


class FrameCompiler:
    def __init__(self, encoder: SeriesEncoder, max_series: int = 500_000,
                 budget: SeriesBudget | None = None) -> None:
        self.encoder = encoder
        self._encoder = encoder
        self.budget = budget if budget is not None else SeriesBudget(2**62)
        self._boots: dict[tuple[str, int], tuple[Birth, dict[SeriesKey, bytes]]] = {}
        self._series = 0
        self.max_series = max_series  # bounds memory; clearing only costs re-learning
        # Series first seen in a boot, as (device, boot, label bytes): the pipeline takes them
        # into its next commit (table boot_series), so a boot's stale markers can name every
        # series it wrote, also after a restart. Re-learning after a restart repeats a few.
        self.learned: list[tuple[str, int, bytes]] = []
        self._long_way_seen: set[tuple[str, int, str, Labels]] = set()

    def entries(self, device_id: str, raw: TelemetryRows, birth: Birth | None,
                count_refused: bool = False) -> FrameEntries:
        """Entries of every sample of raw, in order (by timestamp when samples carry time
        offsets), but those of series beyond the device's budget. Raises what
        resolve_telemetry raises. count_refused: count the samples the
        budget refused (at ingest; not again when a forwarder re-reads the frame)."""
        if birth is None or birth.boot != raw.boot:
            raise BirthRequired("birth required", f"no birth known for boot {raw.boot}")
        boot_key = (device_id, raw.boot)
        cached = self._boots.get(boot_key)
        if cached is None or cached[0] is not birth:
            if len(self._boots) >= self.max_series:  # boots come and go: bound them too
                self._forget_all()
            cached = self._boots[boot_key] = (birth, {})
        prefixes = cached[1]
        out = FrameEntries()
        append = out.append
        pack, value_tag, ts_tag = SAMPLE_HEAD.pack, SAMPLE_VALUE_TAG, SAMPLE_TIMESTAMP_TAG
        base_ms = raw.time_ms
        frame_ts = encode_varint(base_ms)
        # The common sample: no labels of its own, no time offset, a plain number, and a
        # timestamp of the 6-byte varint size the cached prefixes are built for.
        plain_ok = len(frame_ts) == _TS_LEN
        refused = 0
        shifted = False  # a sample has a time offset of its own: check the frame's order
        for row in raw.rows:
            metric, value, dt_ms, labels = row
            if plain_ok and not dt_ms and not labels and type(value) is not HistogramValue:
                prefix = prefixes.get(metric)
                if prefix is None:
                    prefix = self._learn(device_id, raw, row, birth, prefixes)
                if prefix:  # b"": a series over the device's budget
                    append(prefix + pack(value_tag, value, ts_tag) + frame_ts)
                else:
                    refused += 1
                continue
            shifted = shifted or dt_ms != 0
            ts_bytes = b"" if type(value) is HistogramValue else encode_varint(base_ms + dt_ms)
            if len(ts_bytes) != _TS_LEN:  # a histogram, or a timestamp of another size
                long_way = self._long_way(device_id, raw, row, birth)
                out.extend(long_way)
                refused += not long_way
            else:
                # Unlabelled samples are keyed by the metric alone: no tuple per sample.
                prefix = prefixes.get((metric, labels) if labels else metric)
                if prefix is None:
                    prefix = self._learn(device_id, raw, row, birth, prefixes)
                if prefix:
                    append(prefix + pack(value_tag, value, ts_tag) + ts_bytes)
                else:
                    refused += 1
        if refused and count_refused:
            self.budget.count_refused(device_id, refused)
        out.device = device_id
        if shifted:
            _in_time_order(out, raw)
        else:
            out.first_ms = out.last_ms = base_ms
        return out

    @staticmethod
    def _single(raw: TelemetryRows, row: SampleRow) -> RawTelemetry:
        return RawTelemetry(raw.boot, raw.seq, raw.time_ms, (RawSample(*row),), raw.historical)

    def _long_way(self, device_id: str, raw: TelemetryRows, row: SampleRow,
                  birth: Birth) -> list[bytes]:
        resolved = resolve_telemetry(self._single(raw, row), birth)
        entries = self._encoder.frame_entries(device_id, resolved)
        sample = resolved.samples[0]
        if not self.budget.admit(device_id, sample.name, sample.labels, len(entries)):
            return []
        seen = (device_id, raw.boot, sample.name, sample.labels)
        if seen not in self._long_way_seen:
            self._long_way_seen.add(seen)
            if isinstance(sample, HistogramSample):
                prefixes = self._encoder.histogram_prefixes(
                    device_id, sample.name, sample.labels, [b for b, _ in sample.buckets])
            else:
                prefixes = (self._encoder.series_prefix(device_id, sample.name, sample.labels),)
            self.learned.extend((device_id, raw.boot, label_bytes(p)) for p in prefixes)
        return entries

    def _learn(self, device_id: str, raw: TelemetryRows, row: SampleRow, birth: Birth,
               prefixes: dict[SeriesKey, bytes]) -> bytes:
        # resolve_telemetry validates: the alias is declared and not as a histogram.
        resolved = resolve_telemetry(self._single(raw, row), birth).samples[0]
        if self.budget.admit(device_id, resolved.name, resolved.labels):
            prefix = self._encoder.series_prefix(device_id, resolved.name, resolved.labels)
            self.learned.append((device_id, raw.boot, label_bytes(prefix)))
        else:
            prefix = b""  # cached too: the next samples of the series are refused at once
        if self._series >= self.max_series:
            self._forget_all()
            self._boots[(device_id, raw.boot)] = (birth, prefixes)
        prefixes[(row[0], row[3]) if row[3] else row[0]] = prefix
        self._series += 1
        return prefix

    def _forget_all(self) -> None:
        # Drops the Birth objects too (pruned boots must not stay alive here); clearing the
        # dicts in place keeps a caller's reference to its boot's prefixes valid and empty.
        for _, prefixes in self._boots.values():
            prefixes.clear()
        self._boots = {}
        self._long_way_seen.clear()
        self._series = 0

    def forget_device(self, device_id: str) -> None:
        """Forget a device's cached series (with SeriesBudget.forget: budgeted afresh)."""
        for key in [k for k in self._boots if k[0] == device_id]:
            self.forget(*key)

    def forget(self, device_id: str, boot: int) -> None:
        cached = self._boots.pop((device_id, boot), None)
        if cached is not None:
            self._series -= len(cached[1])
        self._long_way_seen -= {k for k in self._long_way_seen if k[:2] == (device_id, boot)}
