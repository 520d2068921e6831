"""EntryCache: encoded entries of recent frames, bounded by a sample count, evicted oldest first."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given
from hypothesis import strategies as st

from gateway.buffer.entry_cache import DEFAULT_MAX_SAMPLES, EntryCache


def entries(frame_id: int, count: int) -> list[bytes]:
    return [f"{frame_id}:{i}".encode() for i in range(count)]


def test_put_get_and_miss() -> None:
    cache = EntryCache()
    assert cache.max_samples == DEFAULT_MAX_SAMPLES
    cache.put(1, entries(1, 3))
    cache.put(2, entries(2, 2))
    assert cache.get(1) == entries(1, 3)
    assert cache.get(2) == entries(2, 2)
    assert cache.get(3) is None
    assert (len(cache), cache.samples) == (2, 5)


def test_frame_without_samples_is_still_cached() -> None:
    cache = EntryCache(max_samples=2)
    cache.put(1, [])
    assert cache.get(1) == []  # "nothing to send" is an answer, unlike a miss
    assert cache.samples == 0


def test_evict_upto_removes_that_frame_and_older_ones() -> None:
    cache = EntryCache()
    for frame_id in range(1, 6):
        cache.put(frame_id, entries(frame_id, frame_id))
    cache.evict_upto(3)
    assert [cache.get(i) is not None for i in range(1, 6)] == [False, False, False, True, True]
    assert cache.samples == 4 + 5
    cache.evict_upto(2)  # already gone: no effect
    assert len(cache) == 2
    cache.evict_upto(100)
    assert (len(cache), cache.samples) == (0, 0)


def test_sample_cap_evicts_the_oldest_frames_first() -> None:
    cache = EntryCache(max_samples=10)
    cache.put(1, entries(1, 4))
    cache.put(2, entries(2, 4))
    cache.put(3, entries(3, 2))
    assert cache.samples == 10 and len(cache) == 3  # exactly at the cap: nothing evicted
    cache.put(4, entries(4, 3))
    assert cache.get(1) is None  # 13 > 10: frame 1 (oldest) goes
    assert [cache.get(i) is not None for i in (2, 3, 4)] == [True, True, True]
    assert cache.samples == 9
    cache.put(5, entries(5, 7))  # needs frames 2 and 3 out
    assert [cache.get(i) is not None for i in (2, 3, 4, 5)] == [False, False, True, True]
    assert cache.samples == 10


def test_frame_larger_than_the_cap_is_not_kept() -> None:
    cache = EntryCache(max_samples=5)
    cache.put(1, entries(1, 2))
    cache.put(2, entries(2, 6))
    assert (len(cache), cache.samples) == (0, 0)
    assert cache.get(2) is None  # the forwarder falls back to SQLite for it


@given(st.lists(st.one_of(st.tuples(st.just("put"), st.integers(0, 12)),
                          st.tuples(st.just("evict"), st.integers(0, 60))), max_size=60),
       st.integers(min_value=1, max_value=30))
def test_cache_matches_a_fifo_model(ops: list[tuple[str, int]], cap: int) -> None:
    cache = EntryCache(max_samples=cap)
    model: OrderedDict[int, int] = OrderedDict()  # frame id -> sample count
    next_id = 1
    for op, arg in ops:
        if op == "put":  # the pipeline puts frames in id (commit) order
            cache.put(next_id, entries(next_id, arg))
            model[next_id] = arg
            while sum(model.values()) > cap:
                model.popitem(last=False)
            next_id += 1
        else:
            cache.evict_upto(arg)
            for frame_id in [i for i in model if i <= arg]:
                del model[frame_id]
        assert cache.samples == sum(model.values()) <= cap
        assert len(cache) == len(model)
        for frame_id in range(1, next_id):
            expected = entries(frame_id, model[frame_id]) if frame_id in model else None
            assert cache.get(frame_id) == expected


def test_serves_next_frame_only_when_every_cursor_is_within_the_cache() -> None:
    from gateway.buffer.entry_cache import serves_next_frame_of

    cache = EntryCache(max_samples=3)
    assert serves_next_frame_of(cache, [0, 50])  # nothing cached yet
    for frame_id in range(1, 6):
        cache.put(frame_id, [b"e"])  # holds frames 3..5
    assert serves_next_frame_of(cache, [2, 4])  # next frames 3 and 5: in memory
    assert not serves_next_frame_of(cache, [1, 4])  # frame 2 is only in SQLite now


def test_discard_forgets_dropped_frames_wherever_they_are() -> None:
    cache = EntryCache(max_samples=100)
    for frame_id in range(1, 6):
        cache.put(frame_id, [b"e"] * frame_id)
    cache.discard([2, 4, 9])  # 9 was never cached
    assert [cache.get(i) is not None for i in range(1, 6)] == [True, False, True, False, True]
    assert cache.samples == 1 + 3 + 5 and len(cache) == 3


def test_send_windows_keep_what_is_on_the_wire_and_note_drops_a_forwarder_holds() -> None:
    windows = EntryCache().windows
    windows.register("a")
    windows.register("a")
    assert windows.endpoints == ["a"]
    windows.hold("a", "backlog", 10, 20)  # frames 11..20 in memory
    windows.keep("a", "wire", 10, 15)  # frames 11..15 on the wire
    windows.keep("a", "partial:backlog", 10, 11)
    assert sorted(windows.ranges()) == [(10, 11), (10, 15)]
    windows.note_dropped([16, 17, 30])  # 30: nobody holds it
    assert windows.dropped == {16, 17}
    windows.keep("a", "wire", 0, 0)  # the answer came
    assert windows.ranges() == [(10, 11)]
    windows.hold("a", "backlog", 16, 40)  # the cursor moved past 16: forgotten
    assert windows.dropped == {17}
    windows.release("a")
    assert windows.ranges() == []
