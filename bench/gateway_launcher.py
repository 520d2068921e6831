"""The gateway (`python -m gateway.cli ...`) on a chosen SQLite layer, for bench/ only.

    python bench/gateway_launcher.py {aiosqlite|legacy} run

`aiosqlite` runs the shipped gateway.buffer.db.Database unchanged; `legacy` puts
bench/legacy_db.py's Database (the hand-written executor that aiosqlite replaced) in its place
before the gateway is imported, so that bench/throughput.py --sqlite-layers can measure both in
one run. The gateway reads no setting for this: the swap lives here only.
"""

from __future__ import annotations

import sys

LAYERS = ("legacy", "aiosqlite")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in LAYERS:
        print(f"usage: gateway_launcher.py {{{'|'.join(LAYERS)}}} GATEWAY-ARGS...",
              file=sys.stderr)
        return 2
    layer, gateway_argv = argv[0], argv[1:]
    if layer == "legacy":
        import legacy_db  # beside this script: bench/ is sys.path[0]

        from gateway.buffer import db

        db.Database = legacy_db.Database  # type: ignore[misc,assignment]
    from gateway import app, cli

    # Whoever builds the Database must see the swap: fail loudly if that moved out of app.py.
    if layer == "legacy" and app.Database is not legacy_db.Database:
        raise SystemExit("gateway_launcher: gateway.app does not use the swapped Database")
    print(f"gateway_launcher: SQLite layer {layer} ({app.Database.__module__})",
          file=sys.stderr, flush=True)
    return cli.main(gateway_argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
