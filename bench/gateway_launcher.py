"""The gateway (`python -m gateway.cli ...`) as a variant for a same-run comparison, bench/ only.

    python bench/gateway_launcher.py {as-is|aiosqlite|legacy} run

`as-is` runs whatever `gateway` package the interpreter finds first: with PYTHONPATH=<tree>,
that tree's (bench/same_run.py starts a gateway from another source tree this way, e.g. the
code before issue 12's redesign). `aiosqlite` runs the shipped gateway.buffer.db.Database
unchanged; `legacy` puts bench/legacy_db.py's Database (the hand-written executor that
aiosqlite replaced) in its place before the gateway is imported, so that bench/throughput.py
--sqlite-layers can measure both in one run. The gateway reads no setting for this: the swap
lives here only.

Before the gateway starts, one line `gateway_launcher: {json}` on stderr says where its
`gateway` and `device_protocol` packages were imported from and which of their modules, if any,
came from somewhere else: the bench checks it, so a comparison cannot silently run one tree twice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODES = ("as-is", "aiosqlite", "legacy")
LAYERS = ("legacy", "aiosqlite")
PROVENANCE_PREFIX = "gateway_launcher: "
PACKAGES = ("gateway", "device_protocol")


def provenance(layer: str) -> dict[str, object]:
    """Where the imported gateway comes from: each package's directory, and every module of
    those packages loaded so far that lives outside its package's directory."""
    roots = {name: Path(sys.modules[name].__file__ or "").resolve().parent for name in PACKAGES}
    files = {name: getattr(module, "__file__", None) for name, module in sys.modules.items()}
    foreign = sorted(name for name, file in files.items()
                     if (top := name.partition(".")[0]) in roots and file
                     and not Path(file).resolve().is_relative_to(roots[top]))
    return {"layer": layer, **{name: str(root) for name, root in roots.items()},
            "foreign": foreign}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in MODES:
        print(f"usage: gateway_launcher.py {{{'|'.join(MODES)}}} GATEWAY-ARGS...",
              file=sys.stderr)
        return 2
    mode, gateway_argv = argv[0], argv[1:]
    if mode == "legacy":
        import legacy_db  # beside this script: bench/ is sys.path[0]

        from gateway.buffer import db

        db.Database = legacy_db.Database  # type: ignore[misc,assignment]
    # From here on the gateway sees the path `python -m gateway.cli` would give it, less the
    # working directory: nothing of bench/ can shadow a module it imports.
    del sys.path[0]
    import device_protocol  # noqa: F401 - for provenance()
    from gateway import app, cli

    # Whoever builds the Database must see the swap: fail loudly if that moved out of app.py.
    if mode == "legacy" and app.Database is not legacy_db.Database:
        raise SystemExit("gateway_launcher: gateway.app does not use the swapped Database")
    layer = mode if mode != "as-is" else getattr(app, "Database", object).__module__
    print(PROVENANCE_PREFIX + json.dumps(provenance(layer)), file=sys.stderr, flush=True)
    return cli.main(gateway_argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
