"""Summarise a py-spy raw profile (`py-spy record --format raw --threads`) of the gateway.

Each line of the raw format is one distinct stack, root first, and how often it was sampled:

    thread (0x7f..): MainThread;run (gateway/app.py:90);handle (gateway/pipeline/stage.py:224) 17

Shares are of samples of running threads. py-spy misses that some threads are blocked in C
with the GIL released (paho's select, the event loop's epoll, an executor's queue); such
samples (WAITING_LEAVES) are counted apart and left out.

Every sample is put in exactly one category: the first rule, in CATEGORIES order, that matches
any frame of its stack. Rules go from specific to general, so that e.g. paho code called from
the pipeline's ack() counts as "PUBACK", not as "paho receive path".

Garbage collection is invisible to a Python-level sampler: its time lands on whichever line
allocated the object that triggered it. bench/gcstats measures it separately.

    .venv/bin/python bench/profile_summary.py bench/profile-gateway.txt
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_LINE_RE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME_RE = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?P<line>:\d+)?\)$")
_LINENO_RE = re.compile(r":\d+\)$")

# (category, regex searched in each frame, "Class.function (path/file.py:line)")
CATEGORIES: list[tuple[str, str]] = [
    ("PUBACK (MqttIngest.ack -> paho)", r"^MqttIngest\.ack \("),
    ("SQLite write + commit (store.write_batch)", r"^write_batch \(gateway/buffer/store\.py"),
    ("forwarder re-decoding frames read back from SQLite (entry cache miss)",
     r"^Gatherer\.entries_of \("),
    ("SQLite other (forwarder reads, cursor, deletes, checkpoints)",
     r"gateway/buffer/(store|db|markers)\.py"),
    ("msgpack unpack (wire.unpack_map)", r"^unpack_map \(device_protocol/wire\.py"),
    ("telemetry validation (decode_telemetry)", r"device_protocol/telemetry\.py"),
    ("birth decode", r"device_protocol/birth\.py"),
    ("alias resolution (resolve_telemetry)", r"device_protocol/resolve\.py"),
    ("topic parsing (parse_topic)", r"device_protocol/topics\.py"),
    ("series encoding (SeriesEncoder)", r"gateway/remote_write/series\.py"),
    ("dedup ledger", r"gateway/pipeline/dedup\.py"),
    ("fleet state (observe_telemetry)", r"gateway/fleet/(state|records)\.py"),
    ("entry cache", r"gateway/buffer/entry_cache\.py"),
    ("gateway metrics (prometheus_client)", r"prometheus_client/"),
    ("paho -> Inbox hand-off (Inbox.put)", r"^Inbox\.put \("),
    ("paho receive path (socket read, packet parse, on_message)", r"paho/mqtt/"),
    ("remote write: batch, join, snappy (forwarder, remote_write)",
     r"gateway/forward/(forwarder|gather|order)\.py|gateway/remote_write/wire\.py|cramjam"),
    ("remote write: HTTP (httpx/httpcore/h11)", r"httpx/|httpcore/|h11/|anyio/"),
    ("retry wrappers (tenacity)", r"tenacity/"),
    ("pipeline plan/apply (gateway/pipeline/plan.py and stage.py themselves)",
     r"gateway/pipeline/(plan|stage|state)\.py"),
    ("HTTP API (uvicorn/fastapi/starlette)", r"uvicorn/|fastapi/|starlette/|pydantic"),
    ("asyncio event loop, futures, threads", r"asyncio/|concurrent/|threading\.py|queue\.py"),
]

WAITING_LEAVES = re.compile(
    r"^(_worker \(concurrent/futures/thread\.py"  # work_queue.get(block=True)
    r"|Client\._loop \(paho/mqtt/client\.py"  # select.select(...)
    r"|\w*Selector\.select \(selectors\.py"  # the event loop's epoll
    r"|(Condition|Event|Semaphore)\.(wait|acquire) \(threading\.py"
    r"|(Queue\.)?get \(queue\.py)")

_COMPILED = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]


@dataclass(frozen=True, slots=True)
class Profile:
    stacks: list[tuple[str, tuple[str, ...], int]]  # (thread, frames root first, count)
    waiting: int  # samples left out: blocked in select/epoll/queue/lock waits

    @property
    def total(self) -> int:
        return sum(count for _, _, count in self.stacks)


def _parse(text: str) -> Counter[tuple[str, tuple[str, ...]]]:
    stacks: Counter[tuple[str, tuple[str, ...]]] = Counter()
    for line in text.splitlines():
        m = _LINE_RE.match(line)
        if m:
            raw_frames = m["stack"].split(";")
            thread = _thread_name(raw_frames[0].split(": ", 1)[-1])
            stacks[thread, tuple(_short(f) for f in raw_frames[1:])] += int(m["count"])
    return stacks


def load(path: Path) -> Profile:
    stacks = _parse(path.read_text())
    running = [(t, f, n) for (t, f), n in stacks.items() if not _waiting(f)]
    return Profile(running, sum(n for (_, f), n in stacks.items() if _waiting(f)))


def compact(path: Path) -> str:
    """The profile without line numbers or thread ids, equal stacks merged: load() reads it
    like the raw file (only the per-line table is lost) at a fraction of the size."""
    merged: Counter[str] = Counter()
    for (thread, frames), count in _parse(path.read_text()).items():
        merged[";".join([f"thread: {thread}", *(_function(f) for f in frames)])] += count
    return "".join(f"{stack} {count}\n" for stack, count in sorted(merged.items()))


def _waiting(frames: tuple[str, ...]) -> bool:
    return bool(frames) and WAITING_LEAVES.match(frames[-1]) is not None


def _thread_name(name: str) -> str:
    # ThreadPoolExecutor threads are numbered: sqlite-writer_0 -> sqlite-writer
    return re.sub(r"_\d+$", "", name)


def _short(frame: str) -> str:
    """'handle (/work/main/gateway/pipeline/stage.py:224)'
    -> 'handle (gateway/pipeline/stage.py:224)'."""
    m = _FRAME_RE.match(frame)
    if not m:
        return frame
    file = m["file"]
    for marker in ("/site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{m['func']} ({file}{m['line'] or ''})"


def _function(frame: str) -> str:
    return _LINENO_RE.sub(")", frame)


def categorise(frames: tuple[str, ...]) -> str:
    for category, pattern in _COMPILED:
        if any(pattern.search(f) for f in frames):
            return category
    return "other"


def by_category(profile: Profile) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _, frames, count in profile.stacks:
        counts[categorise(frames)] += count
    return counts


def by_thread(profile: Profile) -> Counter[str]:
    counts: Counter[str] = Counter()
    for thread, _, count in profile.stacks:
        counts[thread] += count
    return counts


def self_time(profile: Profile, *, lines: bool) -> Counter[str]:
    """Samples by leaf frame (where the interpreter was), per function or per line."""
    counts: Counter[str] = Counter()
    for _, frames, count in profile.stacks:
        if frames:
            counts[frames[-1] if lines else _function(frames[-1])] += count
    return counts


def inclusive(profile: Profile) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _, frames, count in profile.stacks:
        for frame in {_function(f) for f in frames}:
            counts[frame] += count
    return counts


def _ranked(counts: Counter[str], top: int | None = None) -> list[tuple[str, int]]:
    """Largest first; ties by name, so the same profile always reads the same."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]


def markdown(profile: Profile, top: int = 15) -> str:
    total = profile.total or 1

    def pct(n: int) -> str:
        return f"{100 * n / total:.1f}%"

    def table(title: str, head: str, rows: list[tuple[str, int]], code: bool = True) -> list[str]:
        quote = "`" if code else ""
        return ["", title, "", f"| {head} | share |", "|---|---:|",
                *(f"| {quote}{name}{quote} | {pct(n)} |" for name, n in rows)]

    out = [f"{profile.total:,} samples of running threads ({profile.waiting:,} more were "
           "threads blocked in select/epoll/queue waits and are left out)."]
    out += table("By category (each sample counted once, first matching rule in "
                 "`bench/profile_summary.py` CATEGORIES):", "category",
                 _ranked(by_category(profile)), code=False)
    out += table("By thread:", "thread", _ranked(by_thread(profile)), code=False)
    out += table(f"Top {top} functions by self time:", "function",
                 _ranked(self_time(profile, lines=False), top))
    by_line = _ranked(self_time(profile, lines=True), top)
    if any(_LINENO_RE.search(name) for name, _ in by_line):
        out += table(f"Top {top} lines by self time (garbage collection lands on the line "
                     "whose allocation triggered it):", "line", by_line)
    ours = Counter({k: v for k, v in inclusive(profile).items()
                    if ("gateway/" in k or "device_protocol/" in k) and "gateway/cli.py" not in k})
    out += table(f"Top {top} gateway functions by inclusive time:", "function",
                 _ranked(ours, top))
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(markdown(load(Path(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
