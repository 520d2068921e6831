"""Reading a stored frame back into remote-write entries, exactly as the pipeline made them.

A forwarder behind the entry cache (an outage, a restart, a slow endpoint) gets its frames from
SQLite; the buffer calls this decoder for them. It applies what the pipeline applied at ingest:
the boot's birth (aliases, declarations) and its clock correction.
"""

from __future__ import annotations

from collections.abc import Sequence

from device_protocol import decode_birth, decode_telemetry_rows
from gateway.buffer import store
from gateway.buffer.buffer import FrameDecoder
from gateway.pipeline.births import BirthRegistry, shifted
from gateway.pipeline.frame_compiler import FrameCompiler
from gateway.remote_write.wire import split_entries


def stored_frame_decoder(compiler: FrameCompiler, births: BirthRegistry) -> FrameDecoder:
    """The decoder for the buffer. It raises ProtocolError, LabelValidationError or
    ValueError for a frame that no longer decodes (a bug or a bad disk: the caller skips it)."""

    def decode(row: store.FrameRow) -> Sequence[bytes]:
        if row.kind == store.KIND_ENTRIES:
            return split_entries(row.payload)
        if row.kind == store.KIND_BIRTH:
            stored_birth = decode_birth(row.payload)
            return [compiler.encoder.info_entry(row.device_id, stored_birth, row.received_ms)]
        raw = decode_telemetry_rows(row.payload)
        known = births.get(row.device_id, raw.boot)
        ahead_ms = births.clock_ahead_ms(row.device_id, raw.boot)
        if ahead_ms:  # as the pipeline did when it stored the frame
            raw = shifted(raw, ahead_ms)
        return compiler.entries(row.device_id, raw, known)

    return decode
