"""`fleetgate` command line: run the gateway, manage its database, run the simulator.

Only what works from an installed wheel: the demo stack runs from a checkout
(`make demo`, i.e. `python -m devstack demo`), since devstack is not in the wheel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from gateway.errors import GatewayError


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from gateway.settings import load_settings

    return load_settings(args.config)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import serve

    settings = _settings(args)
    _configure_logging(settings.log_level)
    return asyncio.run(serve(settings))


def cmd_db(args: argparse.Namespace) -> int:
    from gateway.buffer import db as dbmod

    settings = _settings(args)
    _configure_logging(settings.log_level)
    path = settings.store_config().db_path
    if args.db_command == "status" and not path.exists():
        print(json.dumps({"database": str(path), "exists": False,
                          "pending": [m.path.name for m in dbmod.discover_migrations()]},
                         indent=2))
        return 0
    conn = dbmod.connect(path, settings.sqlite_synchronous)
    try:
        if args.db_command == "migrate":
            applied = dbmod.apply_migrations(conn)
            print(f"{path}: applied {len(applied)} migration(s); schema version "
                  f"{dbmod.schema_version(conn)}")
        else:
            from gateway.fleet import queries

            available = dbmod.discover_migrations()
            version = dbmod.schema_version(conn)
            status = {
                "database": str(path),
                "schema_version": version,
                "migrations": [{"version": m.version, "name": m.name,
                                "applied": m.version <= version} for m in available],
                "pending": [m.path.name for m in available if m.version > version],
            }
            if version == len(available):
                status["tables"] = queries.table_counts(conn)
            print(json.dumps(status, indent=2))
    finally:
        conn.close()
    return 0


def cmd_sim(argv: list[str]) -> int:
    from firmware_sim.__main__ import main as sim_main

    return sim_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The simulator owns its flags; hand it the rest of the line untouched.
    if argv[:1] == ["sim"]:
        return cmd_sim(argv[1:])
    parser = argparse.ArgumentParser(prog="fleetgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway until SIGTERM/SIGINT")
    run.add_argument("--config", type=Path, help="TOML settings file (env FLEETGATE_* wins)")
    db = sub.add_parser("db", help="database schema: migrate or status")
    db.add_argument("db_command", choices=["migrate", "status"])
    db.add_argument("--config", type=Path)
    sub.add_parser("sim", help="run the firmware simulator (see `fleetgate sim --help`)")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        return cmd_db(args)
    except GatewayError as exc:
        print(f"fleetgate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
