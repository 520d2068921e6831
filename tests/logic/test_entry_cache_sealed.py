"""EntryCache's sealed blocks: frames that fall out while a forwarder is behind, kept as the
compressed body of a request of them (consecutive frames, at most a request's samples, within a
byte bound), served once, and forgotten when passed or dropped."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.buffer.entry_cache import EntryCache, FrameEntries, Sealed
from gateway.forward.order import seal
from gateway.remote_write.wire import compress, decompress, encode_entry, encode_labels


def entries(frame_id: int, count: int) -> list[bytes]:
    # real entries are protobuf; the cache and a block only concatenate and cut them, so any
    # bytes that split_entries can cut again will do: 0x0a <len> <payload>
    return [b"\x0a" + bytes([len(p)]) + p for p in (f"{frame_id}:{i}".encode()
                                                     for i in range(count))]


def plain_seal(frames: Sequence[tuple[int, Sequence[bytes]]]) -> bytes | None:
    # these entries carry no timestamps: the order check is the last test's (real entries)
    return compress(b"".join(e for _, frame in frames for e in frame))


def sealing_cache(max_samples: int, block: int, max_bytes: int = 1 << 30) -> EntryCache:
    cache = EntryCache(max_samples=max_samples, max_sealed_bytes=max_bytes)
    cache.seal_blocks(block, plain_seal)
    return cache


def blocks(cache: EntryCache, upto: int) -> list[Sealed]:
    found, frame_id = [], 0
    while frame_id <= upto:
        block = cache.sealed_at(frame_id)
        if block is not None:
            found.append(block)
            frame_id = block.last_id
        frame_id += 1
    return found


def test_without_a_forwarder_frames_that_fall_out_are_forgotten() -> None:
    cache = EntryCache(max_samples=4)
    for frame_id in range(1, 11):
        cache.put(frame_id, entries(frame_id, 2))
    assert blocks(cache, 10) == [] and cache.sealed_bytes == 0
    assert cache.get(1) is None


def test_frames_that_fall_out_become_blocks_of_at_most_a_request() -> None:
    cache = sealing_cache(max_samples=4, block=6)
    for frame_id in range(1, 12):
        cache.put(frame_id, entries(frame_id, 2))
    # frames 10, 11 in the cache; 1..9 fell out: blocks 1-3, 4-6, 7-9
    found = blocks(cache, 11)
    assert [(b.first_id, b.last_id, b.samples) for b in found] == [(1, 3, 6), (4, 6, 6),
                                                                    (7, 9, 6)]
    assert found[0].frames() == [(i, entries(i, 2)) for i in (1, 2, 3)]
    assert decompress(found[1].body) == b"".join(entries(4, 2) + entries(5, 2) + entries(6, 2))
    assert cache.sealed_bytes == sum(len(b.body) for b in found)
    assert cache.get(3) is None  # sealed: not served frame by frame
    assert cache.next_sealed_after(1) == 4 and cache.next_sealed_after(7) is None
    cache.put(12, entries(12, 2))
    assert cache.get(10) == entries(10, 2)  # fell out, not a block yet: still served
    assert cache.oldest_id() == 10


def test_a_hole_ends_a_block_and_a_frame_larger_than_a_request_is_left_out() -> None:
    cache = sealing_cache(max_samples=1, block=6)
    for frame_id, count in ((1, 2), (2, 2), (4, 2), (5, 9), (6, 2), (7, 2), (8, 2)):
        cache.put(frame_id, entries(frame_id, count))  # no frame 3; each falls out at once
    found = blocks(cache, 8)
    assert [(b.first_id, b.last_id) for b in found] == [(1, 2), (4, 4), (6, 8)]
    assert cache.get(5) is None and cache.sealed_at(5) is None  # read back from SQLite


def test_evict_upto_forgets_blocks_once_wholly_passed() -> None:
    cache = sealing_cache(max_samples=2, block=4)
    for frame_id in range(1, 10):
        cache.put(frame_id, entries(frame_id, 2))
    assert [(b.first_id, b.last_id) for b in blocks(cache, 9)] == [(1, 2), (3, 4), (5, 6),
                                                                    (7, 8)]
    cache.evict_upto(3)  # inside block 3-4: it stays
    assert [(b.first_id, b.last_id) for b in blocks(cache, 9)] == [(3, 4), (5, 6), (7, 8)]
    cache.evict_upto(8)
    assert blocks(cache, 9) == [] and cache.sealed_bytes == 0
    assert cache.get(8) is None and cache.get(9) == entries(9, 2)


def test_a_dropped_frame_takes_its_block_with_it() -> None:
    cache = sealing_cache(max_samples=2, block=4)
    for frame_id in range(1, 10):
        cache.put(frame_id, entries(frame_id, 2))
    cache.discard([4, 7])
    assert [(b.first_id, b.last_id) for b in blocks(cache, 9)] == [(1, 2), (5, 6)]
    assert cache.get(7) is None and cache.sealed_bytes == sum(
        len(b.body) for b in blocks(cache, 9))


def test_the_byte_bound_stops_sealing_and_room_freed_is_used_again() -> None:
    one = len(plain_seal([(i, entries(i, 2)) for i in (1, 2)]) or b"")
    cache = sealing_cache(max_samples=2, block=4, max_bytes=2 * one + one // 2)
    for frame_id in range(1, 12):
        cache.put(frame_id, entries(frame_id, 2))
    # 5-6, 7-8, 9-10 did not fit (read back from SQLite when their turn comes)
    assert [(b.first_id, b.last_id) for b in blocks(cache, 11)] == [(1, 2), (3, 4)]
    assert cache.sealed_bytes <= cache.max_sealed_bytes
    cache.evict_upto(4)  # sent: room again
    for frame_id in range(12, 14):
        cache.put(frame_id, entries(frame_id, 2))
    assert [(b.first_id, b.last_id) for b in blocks(cache, 13)] == [(11, 12)]


def test_frames_that_would_need_sorting_are_not_sealed() -> None:
    def frame(ms: int) -> FrameEntries:
        out = FrameEntries(encode_entry(encode_labels([("__name__", f"m{i}")]), 1.0, ms)
                           for i in range(2))
        out.device, out.first_ms, out.last_ms = "d1", ms, ms
        return out

    assert seal([(1, frame(2000)), (2, frame(3000))]) is not None
    assert seal([(1, frame(3000)), (2, frame(2000))]) is None  # d1 goes back in time


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("put"), st.integers(0, 5)),
                          st.tuples(st.just("skip"), st.just(0)),
                          st.tuples(st.just("evict"), st.integers(0, 8)),
                          st.tuples(st.just("drop"), st.integers(0, 8))), max_size=80),
       st.integers(1, 8), st.integers(1, 6))
def test_every_frame_is_served_at_most_once_and_as_it_was_put(
        ops: list[tuple[str, int]], cap: int, block: int) -> None:
    cache = sealing_cache(max_samples=cap, block=block, max_bytes=300)
    put: dict[int, list[bytes]] = {}
    gone: set[int] = set()  # passed (evict_upto) or dropped: never served again
    next_id = 1
    for op, arg in ops:
        if op == "put":
            put[next_id] = entries(next_id, arg)
            cache.put(next_id, put[next_id])
            next_id += 1
        elif op == "skip":
            next_id += 1  # an id the cache never sees
        elif op == "evict":
            upto = next_id - 1 - arg
            cache.evict_upto(upto)
            gone.update(i for i in put if i <= upto)
        else:
            victim = next_id - 1 - arg
            cache.discard([victim])
            gone.add(victim)
        served: dict[int, Sequence[bytes]] = {}
        for b in blocks(cache, next_id):
            assert b.last_id - b.first_id + 1 == len(b.counts) and b.samples <= block
            if b.first_id in gone:  # a reader inside it: kept until passed, never sent again
                continue  # (a forwarder takes a block only at its start)
            for frame_id, got in b.frames():
                assert frame_id not in served
                served[frame_id] = got
        for frame_id in put:
            got_one = cache.get(frame_id)
            if got_one is not None:
                assert frame_id not in served  # in a block or in the cache, not both
                served[frame_id] = got_one
        for frame_id, frame in served.items():
            assert frame_id not in gone and list(frame) == put[frame_id]
        assert cache.sealed_bytes <= 300
