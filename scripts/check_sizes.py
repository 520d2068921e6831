"""make lint: modules of one job and functions that fit on a screen, in the product packages.

    python scripts/check_sizes.py [--max-module-lines N] [--max-function-lines N]

The house style (shared STYLE.md, issue 12) aims under ~400 lines a module and ~60 a function;
the limits here leave a little slack so a comment does not fail the build, and anything past
them is reported with its place. Exit 1 when something is over.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

# what the wheel ships
PACKAGES = ("device_protocol", "gateway", "firmware_sim", "sdk/python/fleetgate_device")
ROOT = Path(__file__).resolve().parent.parent


def oversized(max_module: int, max_function: int) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            name = path.relative_to(ROOT)
            lines = text.count("\n")
            if lines > max_module:
                found.append(f"{name}: {lines} lines (module limit {max_module})")
            for node in ast.walk(ast.parse(text, str(name))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > max_function:
                        found.append(f"{name}:{node.lineno} {node.name}: {length} lines "
                                     f"(function limit {max_function})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-module-lines", type=int, default=420)
    parser.add_argument("--max-function-lines", type=int, default=65)
    args = parser.parse_args(argv)
    found = oversized(args.max_module_lines, args.max_function_lines)
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
