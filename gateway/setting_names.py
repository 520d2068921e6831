"""Unknown setting names: a typo in a FLEETGATE_* variable or a TOML key is a start-up error that
names it and the closest valid setting, never a setting ignored in silence (a mistyped
FLEETGATE_MQTT_CA_FIL would leave the gateway quietly trusting the wrong CA). Pure; imports
nothing of the gateway.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

ENV_PREFIX = "FLEETGATE_"


def closest(name: str, valid: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(name.lower(), sorted(valid), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _problem(where: str, name: str, valid: Iterable[str], spell: str = "{}") -> str:
    near = closest(name, valid)
    hint = f"; did you mean {spell.format(near.upper() if spell != '{}' else near)}?" \
        if near else ""
    return f"unknown setting {where}{hint}"


def unknown_env(environ: Mapping[str, str], fields: Iterable[str]) -> list[str]:
    """Problems with FLEETGATE_* variables that name no setting (case-insensitive, as read)."""
    valid = set(fields)
    problems = []
    for key in sorted(environ):
        if not key.upper().startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name not in valid:
            problems.append(_problem(f"{key} (environment)", name, valid,
                                     spell=ENV_PREFIX + "{}"))
    return problems


def unknown_toml(data: Mapping[str, Any], fields: Iterable[str],
                 tables: Mapping[str, Iterable[str]]) -> list[str]:
    """Problems with TOML keys that name no setting; `tables` gives the keys of each array of
    tables (e.g. remote_write -> url, name, ...)."""
    valid = set(fields)
    problems = []
    for key, value in data.items():
        if key not in valid:
            problems.append(_problem(f"{key!r} (TOML)", key, valid))
            continue
        if key in tables and isinstance(value, list):
            keys = set(tables[key])
            for index, entry in enumerate(value):
                if not isinstance(entry, Mapping):
                    continue
                for inner in entry:
                    if inner not in keys:
                        problems.append(_problem(f"{inner!r} in [[{key}]] #{index + 1} (TOML)",
                                                 inner, keys))
    return problems
