"""The gateway from two source trees in one run: e.g. the code before issue 12's redesign
against the current code (`--gateway-trees before=/tmp/old,after=.`).

bench/throughput.py and bench/drain.py take the option: each gateway run imports its `gateway`
and `device_protocol` from one tree (PYTHONPATH=<tree>, started by bench/gateway_launcher.py,
which says where they came from; bench/same_run.py checks it). Everything else, the load
generator, Mosquitto, VictoriaMetrics and the bench itself, is this checkout. The first tree
named is the baseline and runs first in repeat 1; the two alternate from then on. This module
parses the option and writes the "redesign-throughput" and "redesign-drain" sections.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import same_run
from same_run import Comparison, Figure, Runs, Variant

THROUGHPUT_SECTION = "redesign-throughput"
DRAIN_SECTION = "redesign-drain"
THROUGHPUT_FIGURES = (
    Figure("cpu_us_per_frame", "gateway CPU per frame", "µs", 1, lower_is_better=True),
    Figure("frames_per_s", "frames/s end to end", "", 0, lower_is_better=False),
)
DRAIN_FIGURES = (
    Figure("frames_per_s", "drain frames/s", "", 0, lower_is_better=False),
    Figure("lateness_p50_s", "live lateness p50", "s", 1, lower_is_better=True),
    Figure("lateness_max_s", "live lateness max", "s", 1, lower_is_better=True),
    Figure("gw_us_per_frame", "gateway CPU per drained frame", "µs", 1, lower_is_better=True),
)


def parse_trees(text: str) -> Comparison:
    """NAME=PATH,NAME=PATH: two source trees, each with a gateway package."""
    variants = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, sep, path = item.partition("=")
        tree = Path(path.strip()).resolve()
        if not sep or not name.strip() or not (tree / "gateway" / "__init__.py").is_file():
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected NAME=PATH to a source tree with a gateway package")
        variants.append(Variant(name.strip(), tree=tree))
    if len(variants) != 2 or variants[0].name == variants[1].name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected two trees, e.g. "
                                         "before=/tmp/old,after=.")
    return Comparison(variants[0], variants[1], first=variants[0].name)


def _header(title: str, command: str, machine: dict[str, str], comparison: Comparison,
            repeat: int) -> list[str]:
    return [
        f"## {title}", "",
        f"- Command: `{command}`",
        f"- Date: {machine['date']}; bench and services from commit {machine['commit']}",
        f"- Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory']} RAM, "
        f"Linux {machine['kernel']}; shared with other work while it ran",
        *(f"- `{v.name}`: gateway and device_protocol imported from `{v.tree}` (at the end: "
          f"{same_run.tree_state(v.tree)})" for v in (comparison.baseline, comparison.subject)),
        "- Each gateway was started by bench/gateway_launcher.py with PYTHONPATH=<tree>, "
        "default settings; at start it printed where its packages came from and the bench "
        "checked that (every run: the named tree, no module from elsewhere). Load generator, "
        "Mosquitto, VictoriaMetrics and the harness are this checkout's in both",
        f"- Repeats: {repeat}; the two trees alternate which runs first. Two back-to-back runs "
        "differ by up to ±20% on this machine, so the per-repeat ratios are the figures to "
        "read: a difference counts when the 95% interval of their mean (Student's t) excludes 1",
        "",
    ]


def _case(comparison: Comparison, title: str, runs: Runs, figures: Sequence[Figure],
          check: Callable[[dict[str, Any]], list[str]]) -> list[str]:
    found = same_run.problems(runs, check)
    return [f"### {title}", "", *same_run.case_table(comparison, runs, figures), "",
            *(f"- {same_run.figure_line(comparison, runs, f)}" for f in figures), "",
            "Gateway package imported from, as its launcher reported in each run (with the "
            "tree's commit at that run's start): " + "; ".join(
                f"{name}: {same_run.imported_from(runs, name)}" for name in comparison.names)
            + ".", "",
            "Output checks (every run, both trees): "
            + ("all passed." if not found else "FAILED: " + "; ".join(found)), ""]


def throughput_markdown(*, comparison: Comparison, command: str, machine: dict[str, str],
                        repeat: int, titles: Sequence[str], results: Sequence[Runs],
                        check: Callable[[dict[str, Any]], list[str]]) -> str:
    out = _header("Redesign: gateway before vs after issue 12, throughput "
                  "(`bench/throughput.py --gateway-trees`)", command, machine, comparison, repeat)
    for title, runs in zip(titles, results, strict=True):
        out += _case(comparison, title, runs, THROUGHPUT_FIGURES, check)
    out += [f"- {same_run.pooled_line(comparison, results, f)}" for f in THROUGHPUT_FIGURES]
    return "\n".join(out)


def drain_markdown(*, comparison: Comparison, command: str, machine: dict[str, str],
                   repeat: int, title: str, runs: Runs,
                   check: Callable[[dict[str, Any]], list[str]]) -> str:
    out = _header("Redesign: gateway before vs after issue 12, backlog drain "
                  "(`bench/drain.py --gateway-trees`)", command, machine, comparison, repeat)
    out += _case(comparison, title, runs, DRAIN_FIGURES, check)
    out += ["No vmagent baseline in this mode: the gateway before the redesign is the baseline. "
            "Drain frames/s, lateness and CPU per drained frame are as in the drain section."]
    return "\n".join(out)
