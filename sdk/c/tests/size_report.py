"""Flash, RAM and stack of the C SDK per target, for `make size`.

    python sdk/c/tests/size_report.py TARGET:TOOL_PREFIX:BUILD_DIR ...

e.g. cortex-m4:arm-none-eabi-:build/cortex-m4. BUILD_DIR holds the library's objects built
at -Os with -fcallgraph-info=su (fg_*.o, fg_*.ci) and size_probe.elf (the whole library
linked with --gc-sections, see size_probe.c). Prints, per target, one "target key: value"
line each:
- flash (text+data) and RAM (data+bss) of the encoder + ring logic (fg_msgpack.o,
  fg_frames.o, fg_ring.o), of the whole library, and of the linked probe (adds libgcc's soft
  double and string.h; its RAM without the fg_device it holds and a linker-reserved .stack);
- sizeof(fg_device);
- the deepest stack of any public function, from the call graphs (the publish callback's own
  use and libgcc/libc leaves not included).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ENCODER_RING = ("fg_msgpack", "fg_frames", "fg_ring")
NODE = re.compile(r'node: \{ title: "([^"]+)" label: "([^"]*)"')
EDGE = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"')
FRAME = re.compile(r"\\n(\d+) bytes \((static|dynamic[^)]*)\)")


def berkeley(tool: str, files: list[Path]) -> list[tuple[int, int, int]]:
    out = subprocess.run([tool, *map(str, files)], capture_output=True, text=True, check=True)
    rows = []
    for line in out.stdout.splitlines()[1:]:
        text, data, bss = (int(x) for x in line.split()[:3])
        rows.append((text, data, bss))
    return rows


def flash_ram(rows: list[tuple[int, int, int]]) -> tuple[int, int]:
    return sum(t + d for t, d, _ in rows), sum(d + b for _, d, b in rows)


def section_size(tool: str, elf: Path, name: str) -> int:
    out = subprocess.run([tool, "-A", str(elf)], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    return sum(int(line.split()[1]) for line in lines if line.startswith(name + " "))


def symbol_size(nm: str, elf: Path, name: str) -> int:
    out = subprocess.run([nm, "-S", str(elf)], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3] == name:
            return int(parts[1], 16)
    raise SystemExit(f"size_report: {name} not in {elf}")


def deepest_stack(cis: list[Path]) -> tuple[int, str, bool]:
    """Worst (bytes, path) over public fg_* functions; the bool says whether a frame is dynamic
    or a call cycle was found (then the number is not an upper bound)."""
    frames: dict[str, int] = {}
    calls: dict[str, set[str]] = {}
    unbounded = False
    for ci in cis:
        for line in ci.read_text().splitlines():
            if node := NODE.search(line):
                size = FRAME.search(node.group(2))
                if size:
                    frames[node.group(1)] = int(size.group(1))
                    unbounded |= size.group(2) != "static"
            elif edge := EDGE.search(line):
                calls.setdefault(edge.group(1), set()).add(edge.group(2))
    memo: dict[str, tuple[int, str]] = {}

    def walk(fn: str, active: frozenset[str]) -> tuple[int, str]:
        nonlocal unbounded
        if fn in active:
            unbounded = True
            return 0, f"{fn} (cycle)"
        if fn not in memo:
            below = [walk(callee, active | {fn}) for callee in calls.get(fn, ())]
            deepest = max(below, default=(0, ""))
            name = fn.rsplit(":", 1)[-1]
            memo[fn] = (frames.get(fn, 0) + deepest[0],
                        name + (f" > {deepest[1]}" if deepest[1] else ""))
        return memo[fn]

    entries = [fn for fn in frames if fn.startswith("fg_")]
    best = max((walk(fn, frozenset()) for fn in entries), default=(0, "none"))
    return best[0], best[1], unbounded


def report(target: str, prefix: str, build: Path) -> None:
    objects = sorted(build.glob("fg_*.o"))
    rows = dict(zip(objects, berkeley(prefix + "size", objects), strict=True))
    part = [row for obj, row in rows.items() if obj.stem in ENCODER_RING]
    probe = build / "size_probe.elf"
    device = symbol_size(prefix + "nm", probe, "fg_device_bytes")
    linked_flash, linked_ram = flash_ram(berkeley(prefix + "size", [probe]))
    # picolibc's linker script reserves the stack as a .stack section: not the library's
    reserved_stack = section_size(prefix + "size", probe, ".stack")
    stack, path, unbounded = deepest_stack(sorted(build.glob("fg_*.ci")))
    for key, (flash, ram) in (
        ("encoder+ring", flash_ram(part)),
        ("library", flash_ram(list(rows.values()))),
        ("linked", (linked_flash, linked_ram - device - reserved_stack)),
    ):
        print(f"{target} {key}: flash {flash} B, RAM {ram} B")
    print(f"{target} sizeof(fg_device): {device} B (caller's RAM, default FG_MAX_*; plus the "
          "ring and frame buffer it passes)")
    bound = "not a bound: dynamic frame or recursion" if unbounded else "upper bound"
    print(f"{target} max stack: {stack} B ({bound}; {path})")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for spec in argv:
        target, prefix, build = spec.split(":")
        report(target, prefix, Path(build))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
