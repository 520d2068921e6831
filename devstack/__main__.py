"""`python -m devstack demo [--help]`: the demo stack from a checkout (what `make demo` runs).

Not the installed `fleetgate` command: devstack is not in the wheel, so its commands run only
where the source tree is.
"""

from __future__ import annotations

import sys

from devstack import demo

USAGE = "usage: python -m devstack demo [--help]"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        return demo.main(argv[1:])  # the demo owns its flags
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{USAGE}\n\n{__doc__}")
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
