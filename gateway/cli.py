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

from gateway.errors import ConfigError, GatewayError


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


def cmd_certs(args: argparse.Namespace) -> int:
    from gateway import certs

    if args.certs_command == "init":
        # The defaults make a certificate for a broker on this host; any --host/--ip replaces
        # both, so a production certificate names only what was asked for.
        hosts, ips = args.host or [], args.ip or []
        if not hosts and not ips:
            hosts, ips = ["localhost"], ["127.0.0.1"]
        paths = certs.init_ca(args.dir, hosts, ips, days=args.days, server_days=args.server_days)
        names = ", ".join([*hosts, *ips])
        print(f"CA:     {paths.ca_cert} (key {paths.ca_key})")
        print(f"server: {paths.server_cert} (key {paths.server_key}) for {names}")
        return 0
    if args.certs_command == "issue":
        _check_device_id(args.device_id)
        cert, key = certs.issue_client(args.dir, args.device_id, days=args.days,
                                       overwrite=args.force)
        print(f"{args.device_id}: {cert} (key {key})")
        return 0
    _check_device_id(args.user)
    replaced = certs.set_password(args.file, args.user, _read_password(args.password_file))
    print(f"{args.file}: {'replaced' if replaced else 'added'} {args.user}")
    return 0


def _check_device_id(name: str) -> None:
    from device_protocol import is_valid_device_id

    # The broker's ACL puts the name into topics (%u): a "+", "#" or "/" would widen a rule.
    if not is_valid_device_id(name):
        raise ConfigError(f"{name!r} is not a valid device id",
                          hint="1-64 of A-Z a-z 0-9 _ . -, starting with a letter or digit")


def _read_password(password_file: Path | None) -> str:
    """From the file, or stdin (asked twice on a terminal): never from argv, which `ps` shows."""
    import getpass

    if password_file is not None:
        try:
            text = password_file.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read the password file {password_file}: "
                              f"{e.strerror}") from e
    elif sys.stdin.isatty():
        text = getpass.getpass("password: ")
        if getpass.getpass("again: ") != text:
            raise ConfigError("the two passwords differ")
    else:
        text = sys.stdin.read()
    # One trailing line break is the file's or echo's, not the password's.
    return text.removesuffix("\n").removesuffix("\r")


CERTS_HELP = """\
A private CA for the broker's TLS and per-device identities (operators with their own PKI
need none of this). Files in DIR:
  ca.crt, ca.key             the CA (the broker's cafile; the gateway's mqtt_ca_file)
  server.crt, server.key     the broker's certificate for the given host names and IPs
  clients/NAME.crt, .key     a client certificate, CN = NAME = the device id (MQTT username
                             under use_identity_as_username); NAME fleetgate is the gateway's
Keys are EC P-256, written 0600 and never printed.
"""


def _add_certs_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = sub.add_parser("certs", help="a CA, broker and device certificates, broker passwords",
                           description=CERTS_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = certs.add_subparsers(dest="certs_command", required=True)
    init = csub.add_parser("init", help="a new CA and the broker's server certificate in DIR")
    init.add_argument("dir", type=Path, metavar="DIR")
    init.add_argument("--host", action="append", metavar="NAME",
                      help="DNS name clients dial (repeatable; default localhost, and "
                           "127.0.0.1 as --ip, when neither --host nor --ip is given)")
    init.add_argument("--ip", action="append", metavar="ADDR", help="IP address (repeatable)")
    init.add_argument("--days", type=int, default=3650, help="CA validity (default 3650)")
    init.add_argument("--server-days", type=int, default=825,
                      help="server certificate validity (default 825)")
    issue = csub.add_parser("issue", help="a device (or gateway) certificate signed by DIR's CA")
    issue.add_argument("dir", type=Path, metavar="DIR")
    issue.add_argument("device_id", metavar="DEVICE_ID",
                       help="the certificate's CN; `fleetgate` for the gateway itself")
    issue.add_argument("--days", type=int, default=825, help="validity (default 825)")
    issue.add_argument("--force", action="store_true",
                       help="replace an existing certificate (with a new key)")
    passwd = csub.add_parser(
        "passwd", help="add or replace a user in a Mosquitto password file",
        # Else `--password SECRET` would be read as --password-file SECRET.
        allow_abbrev=False,
        description="The password comes from --password-file or stdin, never the command "
                    "line. The line is Mosquitto 2.0's own format ($7$, PBKDF2-SHA512); "
                    "reload the broker afterwards (SIGHUP).")
    passwd.add_argument("file", type=Path, metavar="FILE")
    passwd.add_argument("user", metavar="USER", help="the device id (username)")
    passwd.add_argument("--password-file", type=Path, metavar="PATH",
                        help="read the password from this file (one trailing newline dropped)")


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
    _add_certs_parser(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "certs":
            return cmd_certs(args)
        return cmd_db(args)
    except GatewayError as exc:
        print(f"fleetgate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
