"""Turn resolved telemetry into encoded remote-write entries (pure, no I/O).

Label rules, applied in this order (later steps never override earlier ones):

1. ``__name__`` and ``device_id`` belong to the gateway. ``device_id`` is the identity the
   gateway authenticated (topic/client), so a device cannot claim another device's series:
   a sample label with either name is replaced, not kept.
2. The sample's own labels (the codec has already merged them over the birth labels).
   A label with an empty value is dropped: for Prometheus ``{a=""}`` *is* "no label a".
3. External labels are added only where the series does not already have that label name.
   That is Prometheus's own ``external_labels`` rule: they never override series labels.

For histograms, ``le`` on ``<name>_bucket`` belongs to the encoder as well.

Label sets are validated once per series (on a cache miss); an invalid one raises
``LabelValidationError`` naming the device and metric, before anything reaches a receiver
(one bad series makes Prometheus refuse the whole request).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from device_protocol.frames import Birth, HistogramSample, Labels, Sample, Telemetry
from gateway.remote_write.wire import (
    SAMPLE_HEAD,
    SAMPLE_TAG,
    SAMPLE_TIMESTAMP_TAG,
    SAMPLE_VALUE_TAG,
    TIMESERIES_TAG,
    LabelValidationError,
    encode_entry,
    encode_labels,
    encode_varint,
    validate_labels,
)

__all__ = ["ENTRY_HEADS", "INFO_METRIC", "SAMPLE_OPEN", "SAMPLE_OVERHEAD", "SeriesEncoder",
           "entry_head", "format_le"]

INFO_METRIC = "fleet_device_info"
_RESERVED = frozenset({"__name__", "device_id"})
_INF = math.inf
# Millisecond timestamps from 1971 to 2109 are 6-byte varints. Entries are cached up to their
# sample for that length, so encoding a sample is one struct.pack and two concatenations.
_TS_LEN = 6
_SAMPLE_LEN = 1 + 8 + 1 + _TS_LEN


def _prefix(label_bytes: bytes) -> bytes:
    """Everything of an entry that precedes the Sample's value, for a 6-byte timestamp."""
    series_len = len(label_bytes) + 2 + _SAMPLE_LEN
    return (TIMESERIES_TAG + encode_varint(series_len) + label_bytes + SAMPLE_TAG
            + bytes((_SAMPLE_LEN,)))


# TIMESERIES_TAG + varint(series length) for every length a series of up to ~16 KB of labels has:
# an entry is then joined from byte pieces without encoding a varint per sample.
ENTRY_HEADS = tuple(TIMESERIES_TAG + encode_varint(n) for n in range(16384))
# What follows a series' labels, up to its sample's value (for a 6-byte timestamp).
SAMPLE_OPEN = SAMPLE_TAG + bytes((_SAMPLE_LEN,))
# An entry's length beyond its labels: the Sample field's tag and length, and the Sample.
SAMPLE_OVERHEAD = 2 + _SAMPLE_LEN
_NAME = "__name__"


def entry_head(labels_len: int) -> bytes:
    """TIMESERIES_TAG + varint(length) of an entry whose labels take labels_len bytes."""
    series_len = labels_len + SAMPLE_OVERHEAD
    return ENTRY_HEADS[series_len] if series_len < len(ENTRY_HEADS) else (
        TIMESERIES_TAG + encode_varint(series_len))


def label_bytes(prefix: bytes) -> bytes:
    """Inverse of _prefix: the series' encoded labels (for the rare timestamp outside the
    6-byte range, and to keep a series by its labels alone)."""
    start = 1
    while prefix[start] & 0x80:
        start += 1
    return prefix[start + 1 : -2]


def format_le(bound: float) -> str:
    """Format a bucket bound as prometheus_client's floatToGoString formats `le`: the shortest
    repr, switching to exponents where Go's FormatFloat('g', -1) does, and keeping ".0" on
    whole numbers (as Prometheus 3 also normalizes `le`). A float32 bound is already the
    shortest decimal at float32 precision when it gets here (device_protocol/float32.py).

    0.001 -> "0.001", 1.0 -> "1.0", 10 -> "10.0", 1e-05 -> "1e-05", inf -> "+Inf".
    """
    bound = float(bound)
    if bound == _INF:
        return "+Inf"
    if bound == -_INF:
        return "-Inf"
    if math.isnan(bound):
        return "NaN"
    text = repr(bound)
    dot = text.find(".")
    # Go switches to exponent notation from 1e21 down to 1e+07 sooner than Python does
    if bound > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


class SeriesEncoder:
    """Encodes samples to remote-write entries, caching each series' label bytes.

    The cache is a plain dict bounded by ``cache_size`` series and cleared when full: with a
    fleet's steady set of series it never fills, and clearing is cheaper and simpler than LRU
    bookkeeping on every sample. A cleared cache only costs re-encoding, never correctness.
    """

    __slots__ = ("_cache", "_cache_size", "_device_pieces", "_external", "_hist_cache",
                 "_name_parts", "_slots")

    def __init__(
        self, external_labels: Sequence[tuple[str, str]] = (), cache_size: int = 200_000
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        external = tuple(sorted(external_labels))
        for name, _ in external:
            if name in _RESERVED:
                raise LabelValidationError(f"external label {name!r} is reserved by the gateway")
        # validate as if attached to a dummy metric, which also checks names and values
        validate_labels(sorted((("__name__", "x"), *external)))  # byte order: "Az" < "__name__"
        self._external = external
        self._cache_size = cache_size
        # series -> entry prefix (see _prefix)
        self._cache: dict[tuple[str, str, Labels], bytes] = {}
        # histogram -> entry prefixes of its buckets (one per bound), then _sum, then _count
        self._hist_cache: dict[tuple[str, str, Labels, tuple[float, ...]], tuple[bytes, ...]] = {}
        self._slots = 0  # series held by both caches together
        # Shared by every device: a metric's encoded __name__ label (a fleet has few names).
        self._name_parts: dict[str, bytes] = {}
        # A device's labels around __name__ for series without labels of their own (the
        # fleet metrics): ~100 bytes a device, bounded like the series cache.
        self._device_pieces: dict[str, tuple[bytes, bytes]] = {}

    @property
    def cached_series(self) -> int:
        return self._slots

    def frame_entries(self, device_id: str, telemetry: Telemetry) -> list[bytes]:
        """One entry per series sample of the frame, in frame order.

        A histogram sample expands to ``<name>_bucket{le=...}`` per bucket (``+Inf`` included,
        added from ``count`` if the bounds lack it), then ``<name>_sum`` and ``<name>_count``.
        """
        entries: list[bytes] = []
        append = entries.append
        cache = self._cache
        pack, value_tag, ts_tag = SAMPLE_HEAD.pack, SAMPLE_VALUE_TAG, SAMPLE_TIMESTAMP_TAG
        last_ts: int | None = None
        ts_bytes = b""
        for sample in telemetry.samples:
            if isinstance(sample, Sample):
                key = (sample.name, device_id, sample.labels)
                prefix = cache.get(key)
                if prefix is None:
                    prefix = self._series(key)
                ts = sample.timestamp_ms
                if ts != last_ts:
                    last_ts, ts_bytes = ts, encode_varint(ts)
                if len(ts_bytes) == _TS_LEN:
                    append(prefix + pack(value_tag, sample.value, ts_tag) + ts_bytes)
                else:
                    append(encode_entry(label_bytes(prefix), sample.value, ts))
            elif isinstance(sample, HistogramSample):
                self._histogram(entries, device_id, sample)
            else:
                raise TypeError(f"not a resolved sample: {sample!r}")
        return entries

    def series_prefix(self, device_id: str, name: str, labels: Labels) -> bytes:
        """The bytes of an entry of this series up to its value (for a 6-byte timestamp):
        entry = prefix + pack("<BdB", 0x09, value, 0x10) + varint(timestamp)."""
        key = (name, device_id, labels)
        prefix = self._cache.get(key)
        return prefix if prefix is not None else self._series(key)

    def histogram_prefixes(self, device_id: str, name: str, labels: Labels,
                           bounds: Sequence[float]) -> tuple[bytes, ...]:
        """Prefixes of a histogram's series: one bucket per bound (+Inf added), _sum, _count."""
        with_inf = tuple(bounds) if bounds and bounds[-1] == _INF else (*bounds, _INF)
        key = (name, device_id, labels, with_inf)
        group = self._hist_cache.get(key)
        return group if group is not None else self._histogram_series(key)

    def uncached_prefix(self, device_id: str, name: str, labels: Labels = ()) -> bytes:
        """series_prefix without a per-series cache: for series written once a minute per
        device (the fleet's own metrics) and for the compiler, which keeps its own. Without
        labels of its own it is joined from the name's and the device's cached byte pieces."""
        if labels:
            return _prefix(encode_labels(self._labels(name, device_id, labels, ())))
        pieces = self._device_pieces.get(device_id)
        if pieces is None:
            if len(self._device_pieces) >= self._cache_size:
                self._device_pieces.clear()
            pieces = self._device_pieces[device_id] = self.boot_pieces(device_id, ())
        head, tail = pieces
        part = self.name_part(name)
        return (entry_head(len(head) + len(part) + len(tail)) + head + part + tail
                + SAMPLE_OPEN)

    def name_part(self, name: str) -> bytes:
        """The encoded ``__name__`` label of a metric, validated once for the whole fleet."""
        part = self._name_parts.get(name)
        if part is None:
            validate_labels(((_NAME, name),))
            if len(self._name_parts) >= self._cache_size:  # only a hostile fleet gets here
                self._name_parts.clear()
            part = self._name_parts[name] = encode_labels(((_NAME, name),))
        return part

    def boot_pieces(self, device_id: str, labels: Labels) -> tuple[bytes, bytes]:
        """(head, tail): the encoded labels of a series with these labels (a boot's birth
        labels) that sort before and after ``__name__``: any such series' labels are
        head + name_part(name) + tail. Validated here, once, with the label rules above."""
        merged = dict(self._external)
        merged.update((label, value) for label, value in labels if value)
        merged.pop(_NAME, None)
        merged["device_id"] = device_id
        pairs = sorted(merged.items())
        try:
            validate_labels(sorted((*pairs, (_NAME, "x"))))
        except LabelValidationError as exc:
            raise LabelValidationError(f"device {device_id!r}: {exc}") from exc
        return (encode_labels(p for p in pairs if p[0] < _NAME),
                encode_labels(p for p in pairs if p[0] > _NAME))

    def gateway_series_prefix(self, name: str, labels: Labels) -> bytes:
        """Prefix of a series of the gateway's own (no device_id), with the external labels."""
        merged = dict(self._external)
        merged.update(labels)
        merged["__name__"] = name
        pairs = sorted(merged.items())
        validate_labels(pairs)
        return _prefix(encode_labels(pairs))

    @staticmethod
    def entry(prefix: bytes, value: float, timestamp_ms: int) -> bytes:
        """An entry of the series whose prefix this is (see series_prefix)."""
        ts_bytes = encode_varint(timestamp_ms)
        if len(ts_bytes) == _TS_LEN:
            head = SAMPLE_HEAD.pack(SAMPLE_VALUE_TAG, value, SAMPLE_TIMESTAMP_TAG)
            return prefix + head + ts_bytes
        return encode_entry(label_bytes(prefix), value, timestamp_ms)

    def info_entry(self, device_id: str, birth: Birth, timestamp_ms: int) -> bytes:
        """``fleet_device_info{device_id, platform, firmware, <birth labels>} 1``.

        ``platform`` and ``firmware`` come from the birth fields and win over birth labels of
        the same name.
        """
        return encode_entry(self.info_labels(device_id, birth), 1.0, timestamp_ms)

    def info_labels(self, device_id: str, birth: Birth) -> bytes:
        """The encoded labels of the boot's ``fleet_device_info`` series."""
        extra = (("firmware", birth.firmware), ("platform", birth.platform))
        return encode_labels(self._labels(INFO_METRIC, device_id, birth.labels, extra))

    def sample_count(self, telemetry: Telemetry) -> int:
        """Number of entries ``frame_entries`` produces for this frame."""
        count = 0
        for sample in telemetry.samples:
            if isinstance(sample, HistogramSample):
                count += len(_with_inf(sample)) + 2
            else:
                count += 1
        return count

    # ------------------------------------------------------------------------------ internals

    def _histogram(self, entries: list[bytes], device_id: str, sample: HistogramSample) -> None:
        buckets = _with_inf(sample)
        key = (sample.name, device_id, sample.labels, tuple(bound for bound, _ in buckets))
        group = self._hist_cache.get(key)
        if group is None:
            group = self._histogram_series(key)
        values = [cumulative for _, cumulative in buckets]
        values.append(sample.sum)
        values.append(sample.count)
        ts = sample.timestamp_ms
        ts_bytes = encode_varint(ts)
        if len(ts_bytes) == _TS_LEN:
            pack, value_tag, ts_tag = SAMPLE_HEAD.pack, SAMPLE_VALUE_TAG, SAMPLE_TIMESTAMP_TAG
            entries.extend(
                prefix + pack(value_tag, value, ts_tag) + ts_bytes
                for prefix, value in zip(group, values, strict=True)
            )
        else:
            entries.extend(
                encode_entry(label_bytes(prefix), value, ts)
                for prefix, value in zip(group, values, strict=True)
            )

    def _make_room(self, slots: int) -> None:
        if self._slots + slots > self._cache_size:
            self._cache.clear()
            self._hist_cache.clear()
            self._slots = 0
        self._slots += slots

    def _histogram_series(
        self, key: tuple[str, str, Labels, tuple[float, ...]]
    ) -> tuple[bytes, ...]:
        name, device_id, labels, bounds = key
        group = [
            encode_labels(
                self._labels(name + "_bucket", device_id, labels, (("le", format_le(b)),))
            )
            for b in bounds
        ]
        for suffix in ("_sum", "_count"):
            group.append(encode_labels(self._labels(name + suffix, device_id, labels, ())))
        self._make_room(len(group))
        self._hist_cache[key] = result = tuple(_prefix(lb) for lb in group)
        return result

    def _series(self, key: tuple[str, str, Labels]) -> bytes:
        name, device_id, labels = key
        prefix = _prefix(encode_labels(self._labels(name, device_id, labels, ())))
        self._make_room(1)
        self._cache[key] = prefix
        return prefix

    def _labels(
        self,
        name: str,
        device_id: str,
        labels: Labels,
        owned: tuple[tuple[str, str], ...],
    ) -> list[tuple[str, str]]:
        merged = dict(self._external)
        merged.update((label, value) for label, value in (*labels, *owned) if value)
        merged["__name__"] = name
        merged["device_id"] = device_id
        pairs = sorted(merged.items())
        try:
            validate_labels(pairs)
        except LabelValidationError as exc:
            raise LabelValidationError(f"device {device_id!r}, metric {name!r}: {exc}") from exc
        return pairs


def _with_inf(sample: HistogramSample) -> tuple[tuple[float, float], ...]:
    buckets = sample.buckets
    if buckets and buckets[-1][0] == _INF:
        return buckets
    return (*buckets, (_INF, sample.count))
