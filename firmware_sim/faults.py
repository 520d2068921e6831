"""Fault switches: which devices misbehave, how, and how often.

Pure. `--fault KIND=WHO[@PARAM]` on the command line becomes a `FaultSpec`; the fleet asks it
which of its devices are affected (`select`) and reads the parameter with its default.

WHO is `all`, a share (`5%`), a count (`3`: that many devices, picked by the seed), or device
ids separated by commas (`sim-0001,sim-0007`). PARAM depends on the kind (see `FAULT_KINDS`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class FaultKind(StrEnum):
    # Model faults: the device's physics or model go wrong; the alert rules should catch them.
    OVERHEAT = "overheat"
    MEMORY_LEAK = "memory-leak"
    ACCURACY_COLLAPSE = "accuracy-collapse"
    FLASH_FILL = "flash-fill"
    # Device and link faults: what the gateway's dedup, ledger, quarantine and budget are for.
    REBOOT = "reboot"
    CLOCK_SKEW = "clock-skew"
    FLAP = "flap"
    DUPLICATE = "duplicate"
    MALFORMED = "malformed"
    CARDINALITY = "cardinality"


MODEL_FAULTS = frozenset(
    {FaultKind.OVERHEAT, FaultKind.MEMORY_LEAK, FaultKind.ACCURACY_COLLAPSE, FaultKind.FLASH_FILL}
)


@dataclass(frozen=True, slots=True)
class FaultParam:
    meaning: str
    default: float
    lo: float  # inclusive bounds the value must lie in
    hi: float


FAULT_KINDS: dict[FaultKind, FaultParam] = {
    FaultKind.OVERHEAT: FaultParam("seconds after start when cooling fails", 0.0, 0.0, 1e9),
    FaultKind.MEMORY_LEAK: FaultParam("seconds after start when the leak begins", 0.0, 0.0, 1e9),
    FaultKind.ACCURACY_COLLAPSE: FaultParam("seconds after start when the model collapses",
                                            0.0, 0.0, 1e9),
    FaultKind.FLASH_FILL: FaultParam("seconds after start when logs start filling flash",
                                     0.0, 0.0, 1e9),
    FaultKind.REBOOT: FaultParam("mean seconds between reboots", 300.0, 0.1, 1e9),
    FaultKind.CLOCK_SKEW: FaultParam("seconds the device clock is off (+ ahead, - behind)",
                                     300.0, -1e7, 1e7),
    FaultKind.FLAP: FaultParam("mean seconds between network outages", 120.0, 0.1, 1e9),
    FaultKind.DUPLICATE: FaultParam("share of frames published twice", 0.1, 0.0, 1.0),
    FaultKind.MALFORMED: FaultParam("malformed payloads per frame sent", 0.05, 0.0, 1.0),
    FaultKind.CARDINALITY: FaultParam("invented label values per frame", 5.0, 1.0, 100.0),
}


class FaultSpecError(ValueError):
    """A `--fault` value that cannot be understood; the message says how to write it."""


_DEVICE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True, slots=True)
class FaultSpec:
    kind: FaultKind
    who: str  # as written: all | N% | N | id,id,...
    param: float

    def select(self, device_ids: Sequence[str], seed: int) -> frozenset[str]:
        """The affected devices; a share or count is drawn reproducibly from the seed."""
        who = self.who
        if who == "all":
            return frozenset(device_ids)
        if who.endswith("%") or who.isdigit():
            n = (round(len(device_ids) * float(who[:-1]) / 100.0) if who.endswith("%")
                 else int(who))
            rng = random.Random(f"{seed}/fault/{self.kind}")
            return frozenset(rng.sample(list(device_ids), min(n, len(device_ids))))
        wanted = frozenset(who.split(","))
        unknown = wanted - set(device_ids)
        if unknown:
            raise FaultSpecError(
                f"--fault {self.kind}: no such device {', '.join(sorted(unknown))} in this fleet "
                f"(ids run {device_ids[0]} .. {device_ids[-1]})"
            )
        return wanted


def parse_fault(text: str) -> FaultSpec:
    """`overheat=sim-0003`, `flap=10%@60`, `clock-skew=2@-120`, `duplicate=all@0.5`."""
    kinds = ", ".join(k.value for k in FaultKind)
    kind_text, sep, rest = text.partition("=")
    try:
        kind = FaultKind(kind_text.strip())
    except ValueError:
        raise FaultSpecError(f"--fault {text!r}: unknown fault kind; known: {kinds}") from None
    if not sep or not rest:
        raise FaultSpecError(f"--fault {text!r}: expected KIND=WHO[@PARAM], WHO being all, N%, "
                             "N or device ids separated by commas")
    who, at, param_text = rest.partition("@")
    who = who.strip()
    spec = FAULT_KINDS[kind]
    param = spec.default
    if at:
        try:
            param = float(param_text)
        except ValueError:
            raise FaultSpecError(f"--fault {text!r}: {param_text!r} is not a number "
                                 f"({kind}'s PARAM is the {spec.meaning})") from None
        if not spec.lo <= param <= spec.hi:
            raise FaultSpecError(f"--fault {text!r}: {kind}'s PARAM ({spec.meaning}) must lie "
                                 f"in [{spec.lo:g}, {spec.hi:g}]")
    if who != "all" and not re.fullmatch(r"\d+(\.\d+)?%|\d+", who):
        ids = who.split(",")
        if not all(_DEVICE_ID.match(i) for i in ids):
            raise FaultSpecError(f"--fault {text!r}: WHO must be all, N%, N or device ids "
                                 "separated by commas")
    elif who.endswith("%") and not 0.0 <= float(who[:-1]) <= 100.0:
        raise FaultSpecError(f"--fault {text!r}: a share must lie in [0%, 100%]")
    return FaultSpec(kind, who, param)
