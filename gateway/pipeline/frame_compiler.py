"""Raw telemetry + its birth -> remote-write entries, without building resolved samples.

Cost per sample must not depend on the fleet's size, so nothing here is kept per series for
the common sample (an alias of the birth, no labels of its own, a plain number): its entry is
joined from byte pieces that are shared or per boot. A series' labels are the boot's labels
that sort before __name__ (`head`, usually empty), the metric's encoded __name__ (one piece
per name for the whole fleet, in a `_Table` shared by every boot of the same declarations),
then the boot's labels after it (device_id, birth and external labels: `tail`). A boot costs
~300 bytes; the first sample of each of its series goes through the series budget once
(bit masks per boot), and after that a boot whose every alias is admitted takes no checks.

Anything else (labels of its own, a name instead of an alias, a histogram, a timestamp outside
the 6-byte varint range) takes the general path: `resolve_telemetry` (every rule of the
protocol) and `SeriesEncoder`, with the prefix cached per boot. Validation of the frame itself
(types, names, finiteness, clock skew) stays in `decode_telemetry`, which the caller runs first.
"""

from __future__ import annotations

from device_protocol import (
    Birth,
    BirthRequired,
    HistogramSample,
    HistogramValue,
    Labels,
    MetricType,
    RawSample,
    RawTelemetry,
    SampleRow,
    TelemetryRows,
    resolve_telemetry,
)
from gateway.buffer.entry_cache import FrameEntries
from gateway.pipeline.series_budget import SeriesBudget
from gateway.remote_write.series import (
    ENTRY_HEADS,
    SAMPLE_OPEN,
    SAMPLE_OVERHEAD,
    SeriesEncoder,
    label_bytes,
)
from gateway.remote_write.wire import (
    SAMPLE_HEAD,
    SAMPLE_TIMESTAMP_TAG,
    SAMPLE_VALUE_TAG,
    LabelValidationError,
    encode_varint,
    entry_timestamp,
)

_TS_LEN = 6  # SeriesEncoder prefixes assume a 6-byte varint timestamp (years 1971..2109)
TABLES_KEPT = 10_000  # distinct alias tables interned (firmware versions, not devices)


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


class _Table:
    """A birth's plain (non-histogram) aliases as byte pieces, shared by every boot that
    declares the same aliases and names: a fleet of one firmware has one table."""

    __slots__ = ("bits", "full", "longest", "names", "parts")

    def __init__(self, declared: tuple[tuple[int, str], ...], encoder: SeriesEncoder) -> None:
        self.parts: dict[int | str, bytes] = {}  # alias -> encoded __name__ label
        self.bits: dict[int | str, int] = {}  # alias -> its bit in a boot's learned mask
        self.names: dict[int | str, str] = {}
        for alias, name in declared:
            try:
                part = encoder.name_part(name)
            except LabelValidationError:
                continue  # left to the long way, which refuses only the frames that use it
            self.parts[alias] = part
            self.bits[alias] = 1 << len(self.bits)
            self.names[alias] = name
        self.full = (1 << len(self.bits)) - 1
        self.longest = max(map(len, self.parts.values()), default=0)


_NO_TABLE = _Table((), SeriesEncoder())


class _Boot:
    """What a (device, boot) needs to encode its samples: ~300 bytes, not one object per
    series. A series' entry is joined from the boot's label bytes around __name__ and the
    table's name piece; `learned`/`refused` are bit masks of the table's aliases."""

    __slots__ = ("birth", "complete", "extra", "fixed", "head", "learned", "refused",
                 "table", "tail")

    def __init__(self, birth: Birth, table: _Table, head: bytes, tail: bytes) -> None:
        self.birth = birth
        self.table = table
        self.head = head
        self.tail = tail + SAMPLE_OPEN
        # + len(name part) = the entry's length beyond its head: an index into ENTRY_HEADS
        self.fixed = len(head) + len(tail) + SAMPLE_OVERHEAD
        self.learned = self.refused = 0
        self.complete = not table.full  # every alias learned and admitted: no checks at all
        self.extra: dict[SeriesKey, bytes] | None = None  # labelled series etc.: prefixes


class FrameCompiler:
    def __init__(self, encoder: SeriesEncoder, max_series: int = 500_000,
                 budget: SeriesBudget | None = None, max_boots: int = 300_000) -> None:
        self.encoder = encoder
        self._encoder = encoder
        self.budget = budget if budget is not None else SeriesBudget(2**62)
        self._boots: dict[tuple[str, int], _Boot] = {}
        self._tables: dict[tuple[tuple[int, str], ...], _Table] = {}
        self._series = 0  # prefixes held in the boots' `extra` dicts
        self.max_series = max_series  # bounds memory; clearing only costs re-learning
        self.max_boots = max_boots
        # Series first seen in a boot, as (device, boot, label bytes): the pipeline takes them
        # into its next commit (table boot_series), so a boot's stale markers can name every
        # series it wrote, also after a restart. Re-learning after a restart repeats a few.
        self.learned: list[tuple[str, int, bytes]] = []
        self._long_way_seen: set[tuple[str, int, str, Labels]] = set()

    def _boot(self, device_id: str, boot: int, birth: Birth) -> _Boot:
        if len(self._boots) >= self.max_boots:  # boots come and go: bound them too
            self._forget_all()
        declared = tuple((m.alias, m.name) for m in birth.metrics
                         if m.type is not MetricType.HISTOGRAM)
        table = self._tables.get(declared)
        if table is None:
            if len(self._tables) >= TABLES_KEPT:
                self._tables.clear()  # boots keep their own reference
            table = self._tables[declared] = _Table(declared, self._encoder)
        head, tail = self._encoder.boot_pieces(device_id, birth.labels)
        if len(head) + len(tail) + table.longest + SAMPLE_OVERHEAD >= len(ENTRY_HEADS):
            table = _NO_TABLE  # labels of many KB: every sample takes the general path
        state = self._boots[device_id, boot] = _Boot(birth, table, head, tail)
        return state

    def entries(self, device_id: str, raw: TelemetryRows, birth: Birth | None,
                count_refused: bool = False) -> FrameEntries:
        """Entries of every sample of raw, in order (by timestamp when samples carry time
        offsets), but those of series beyond the device's budget. Raises what
        resolve_telemetry raises. count_refused: count the samples the
        budget refused (at ingest; not again when a forwarder re-reads the frame)."""
        if birth is None or birth.boot != raw.boot:
            raise BirthRequired("birth required", f"no birth known for boot {raw.boot}")
        state = self._boots.get((device_id, raw.boot))
        if state is None or state.birth is not birth:
            state = self._boot(device_id, raw.boot, birth)
        out = FrameEntries()
        append = out.append
        join, heads = b"".join, ENTRY_HEADS
        pack, value_tag, ts_tag = SAMPLE_HEAD.pack, SAMPLE_VALUE_TAG, SAMPLE_TIMESTAMP_TAG
        parts, head, tail, fixed = state.table.parts, state.head, state.tail, state.fixed
        complete = state.complete
        base_ms = raw.time_ms
        frame_ts = encode_varint(base_ms)
        refused = 0
        shifted = False  # a sample has a time offset of its own: check the frame's order
        # The common sample: no labels of its own, no time offset, a plain number, and a
        # timestamp of the 6-byte varint size ENTRY_HEADS' lengths are built for.
        plain_ok = len(frame_ts) == _TS_LEN
        for row in raw.rows:
            metric, value, dt_ms, labels = row
            if plain_ok and not dt_ms and not labels and type(value) is not HistogramValue:
                part = parts.get(metric)
                if part is not None:
                    if complete or self._admitted(device_id, raw.boot, state, metric):
                        append(join((heads[fixed + len(part)], head, part, tail,
                                     pack(value_tag, value, ts_tag), frame_ts)))
                    else:
                        refused += 1
                    continue
            shifted = shifted or dt_ms != 0
            refused += self._general(out, device_id, raw, row, state)
        if refused and count_refused:
            self.budget.count_refused(device_id, refused)
        out.device = device_id
        if shifted:
            _in_time_order(out, raw)
        else:
            out.first_ms = out.last_ms = base_ms
        return out

    def _admitted(self, device_id: str, boot: int, state: _Boot, metric: int | str) -> bool:
        """First sample of a table series in this boot: the budget admits it (or not) once."""
        table = state.table
        bit = table.bits[metric]
        if state.learned & bit:
            return True
        if state.refused & bit:
            return False
        name = table.names[metric]
        if not self.budget.admit(device_id, name, state.birth.labels):
            state.refused |= bit
            return False
        self.learned.append((device_id, boot, state.head + table.parts[metric]
                             + state.tail[:-len(SAMPLE_OPEN)]))
        state.learned |= bit
        state.complete = state.learned == table.full
        return True

    def _general(self, out: FrameEntries, device_id: str, raw: TelemetryRows, row: SampleRow,
                 state: _Boot) -> int:
        """A sample with labels of its own, a histogram, a name instead of an alias, or a
        timestamp of another size: appended to out; returns 1 if the budget refused it."""
        metric, value, dt_ms, labels = row
        ts_bytes = b"" if type(value) is HistogramValue else encode_varint(raw.time_ms + dt_ms)
        part = None if labels else state.table.parts.get(metric)
        if part is not None and len(ts_bytes) == _TS_LEN:  # a table series with a time offset
            if not self._admitted(device_id, raw.boot, state, metric):
                return 1
            out.append(b"".join((ENTRY_HEADS[state.fixed + len(part)], state.head, part,
                                 state.tail, SAMPLE_HEAD.pack(SAMPLE_VALUE_TAG, value,
                                                              SAMPLE_TIMESTAMP_TAG), ts_bytes)))
            return 0
        if len(ts_bytes) != _TS_LEN:  # a histogram, or a timestamp of another size
            long_way = self._long_way(device_id, raw, row, state.birth)
            out.extend(long_way)
            return not long_way
        extra = state.extra
        if extra is None:
            extra = state.extra = {}
        # Unlabelled samples are keyed by the metric alone: no tuple per sample.
        prefix = extra.get((metric, labels) if labels else metric)
        if prefix is None:
            prefix = self._learn(device_id, raw, row, state)
        if not prefix:  # b"": a series over the device's budget
            return 1
        out.append(prefix + SAMPLE_HEAD.pack(SAMPLE_VALUE_TAG, value, SAMPLE_TIMESTAMP_TAG)
                   + ts_bytes)
        return 0

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

    def _learn(self, device_id: str, raw: TelemetryRows, row: SampleRow, state: _Boot) -> bytes:
        # resolve_telemetry validates: the alias is declared and not as a histogram.
        resolved = resolve_telemetry(self._single(raw, row), state.birth).samples[0]
        if self.budget.admit(device_id, resolved.name, resolved.labels):
            prefix = self._encoder.uncached_prefix(device_id, resolved.name, resolved.labels)
            self.learned.append((device_id, raw.boot, label_bytes(prefix)))
        else:
            prefix = b""  # cached too: the next samples of the series are refused at once
        if self._series >= self.max_series:
            self._forget_all()
            self._boots[device_id, raw.boot] = state
        if state.extra is None:
            state.extra = {}
        state.extra[(row[0], row[3]) if row[3] else row[0]] = prefix
        self._series += 1
        return prefix

    def _forget_all(self) -> None:
        # Drops the Birth objects too (pruned boots must not stay alive here). A boot being
        # compiled keeps its state object, emptied of its extra prefixes.
        for state in self._boots.values():
            state.extra = None
        self._boots = {}
        self._long_way_seen.clear()
        self._series = 0

    def forget_device(self, device_id: str) -> None:
        """Forget a device's cached series (with SeriesBudget.forget: budgeted afresh)."""
        for key in [k for k in self._boots if k[0] == device_id]:
            self.forget(*key)

    def forget(self, device_id: str, boot: int) -> None:
        cached = self._boots.pop((device_id, boot), None)
        if cached is not None and cached.extra:
            self._series -= len(cached.extra)
        self._long_way_seen -= {k for k in self._long_way_seen if k[:2] == (device_id, boot)}
