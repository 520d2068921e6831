"""The Grafana dashboards in deploy/grafana: well-formed, wired to the provisioned datasource,
their PromQL valid (promtool) and naming only metrics that exist (docs/seeds.md, the gateway's
own in docs/operations.md, recording rules), and each seed dashboard covering its whole seed."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.tools import promtool

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "fleetgate.yml"
RULES = ROOT / "deploy" / "prometheus" / "rules"
SEEDS_DOC = ROOT / "docs" / "seeds.md"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

GENERAL_DASHBOARDS = ("fleet-overview.json", "device-detail.json", "gateway-health.json")
PANEL_TYPES = {"timeseries", "stat", "table", "bargauge", "row"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Grafana's own variables, replaced by a value of the kind Grafana puts there.
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h",
                     "__range_s": "3600", "__range_ms": "3600000", "__interval_ms": "60000"}
# Dashboard variables stand inside label matchers: any regex-safe value will do.
VARIABLE_VALUE = "x"
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)\]\]")


# --- the catalogue ------------------------------------------------------------------------------

def table_rows(text: str) -> Iterator[list[str]]:
    for line in text.splitlines():
        if line.startswith("|"):
            yield [cell.strip() for cell in line.strip().strip("|").split("|")]


@cache
def seed_catalogue() -> dict[str, dict[str, str]]:
    """profile -> {metric: type} from the table of each `## N. `profile`` section of seeds.md."""
    seeds: dict[str, dict[str, str]] = {}
    sections = re.split(r"^## ", SEEDS_DOC.read_text(), flags=re.M)
    for section in sections:
        heading = re.match(r"\d+\. `([a-z0-9-]+)`", section)
        if heading is None:
            continue
        metrics = seeds.setdefault(heading.group(1), {})
        for row in table_rows(section):
            name = re.fullmatch(r"`([A-Za-z_:][\w:]*)`", row[0])
            if name and len(row) > 1:
                metrics[name.group(1)] = row[1]
    return seeds


@cache
def gateway_metrics() -> dict[str, str]:
    """The gateway's metric names (backticked fleetgate_*/fleet_* in docs/operations.md, and
    fleet_device_info from seeds.md) -> their type where a table gives one."""
    names: dict[str, str] = {}
    for doc in (OPERATIONS_DOC, SEEDS_DOC):
        for name in re.findall(r"`(fleet(?:gate)?_[a-z0-9_]+)", doc.read_text()):
            names.setdefault(name, "")
    for row in table_rows(OPERATIONS_DOC.read_text()):
        name = re.fullmatch(r"`(fleet(?:gate)?_[a-z0-9_]+)`", row[0])
        if name and len(row) > 1:
            names[name.group(1)] = row[1]
    return names


@cache
def recording_rules() -> set[str]:
    names: set[str] = set()
    for path in RULES.glob("*.yml"):
        if path.name.endswith("_test.yml"):
            continue
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups") or []:
            names.update(rule["record"] for rule in group.get("rules") or [] if "record" in rule)
    return names


@cache
def known_metrics() -> tuple[set[str], set[str]]:
    """(every known metric name, the histograms among them)."""
    typed = dict(gateway_metrics())
    for metrics in seed_catalogue().values():
        typed.update(metrics)
    histograms = {name for name, kind in typed.items() if kind.startswith("histogram")}
    return set(typed) | recording_rules() | {"ALERTS", "ALERTS_FOR_STATE"}, histograms


def is_known(name: str) -> bool:
    known, histograms = known_metrics()
    return name in known or any(
        name.endswith(suffix) and name.removesuffix(suffix) in histograms
        for suffix in HISTOGRAM_SUFFIXES)


# --- PromQL, simply ---------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_NAME_MATCHER = re.compile(r'__name__\s*(=~|=)\s*"([^"]*)"')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_METRIC_NAME = re.compile(r"[A-Za-z_:][\w:]*")
KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: bare identifiers that are not functions, keywords or
    label names, plus the alternatives of a `__name__` matcher (a plain `a|b|c` list only).
    Enough for the dashboards' own expressions; `group_left`/`group_right` need their
    parentheses, even empty ones, to be told from the operand after them."""
    names: set[str] = set()
    for matchers in _MATCHERS.finditer(expr):
        for op, value in _NAME_MATCHER.findall(matchers.group(1)):
            alternatives = value.split("|") if op == "=~" else [value]
            for name in alternatives:
                if not _METRIC_NAME.fullmatch(name):
                    raise ValueError(f"__name__ matcher too complex to check: {value!r}")
                names.add(name)
    bare = _STRING.sub('""', expr)
    for pattern in (_MATCHERS, _RANGE, _OFFSET, _LABEL_LIST):
        bare = pattern.sub(" ", bare)
    for identifier, call in _IDENTIFIER.findall(bare):
        if not call and identifier not in KEYWORDS:
            names.add(identifier)
    return names


def variables_in(text: str) -> set[str]:
    return {next(name for name in match if name) for match in VARIABLE.findall(text)}


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name.startswith("__"):
            if name not in BUILTIN_VARIABLES:
                raise ValueError(f"no stand-in for Grafana variable ${name}")
            return BUILTIN_VARIABLES[name]
        return VARIABLE_VALUE
    return VARIABLE.sub(value, expr)


# --- the dashboards ---------------------------------------------------------------------------

@cache
def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else query


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every target and of every query variable's series selector."""
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            found.append((f"panel {panel.get('title')!r} target {target.get('refId')}",
                          target.get("expr", "")))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable_query(variable).strip()
        label_values = re.fullmatch(r"label_values\((.*),\s*\w+\)", query, re.S)
        result = re.fullmatch(r"query_result\((.*)\)", query, re.S)
        inner = label_values or result
        if inner:
            found.append((f"variable ${variable['name']}", inner.group(1)))
    return found


def all_expressions() -> list[tuple[str, str]]:
    return [(f"{name}: {where}", expr) for name, dashboard in dashboards().items()
            for where, expr in expressions(dashboard)]


@cache
def datasource_uid() -> str:
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(sources) == 1
    return str(sources[0]["uid"])


# --- tests ------------------------------------------------------------------------------------

def test_the_datasource_and_the_dashboard_folder_are_provisioned() -> None:
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert [{key: source.get(key) for key in ("name", "uid", "type", "url", "access",
                                              "isDefault")} for source in sources] == [
        {"name": "Prometheus", "uid": "prometheus", "type": "prometheus",
         "url": "http://prometheus:9090", "access": "proxy", "isDefault": True}]
    providers = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert [(p["type"], p["folder"], p["options"]["path"]) for p in providers] == [
        ("file", "fleetgate", "/var/lib/grafana/dashboards")]


def test_there_is_a_dashboard_for_the_fleet_the_gateway_and_each_seed() -> None:
    expected = {*GENERAL_DASHBOARDS, *(f"{profile}.json" for profile in seed_catalogue())}
    assert len(seed_catalogue()) == 5
    assert expected <= set(dashboards())


def test_uids_and_titles_are_unique() -> None:
    uids = [d.get("uid") for d in dashboards().values()]
    titles = [d.get("title") for d in dashboards().values()]
    assert all(uids) and len(set(uids)) == len(uids), uids
    assert all(titles) and len(set(titles)) == len(titles), titles
    assert all(len(str(uid)) <= 40 for uid in uids), "Grafana refuses uids over 40 characters"


@pytest.mark.parametrize("name", sorted(p.name for p in DASHBOARDS.glob("*.json")))
def test_dashboard_settings(name: str) -> None:
    dashboard = dashboards()[name]
    assert dashboard.get("schemaVersion", 0) >= 36
    assert dashboard.get("time") == {"from": "now-1h", "to": "now"}
    assert dashboard.get("refresh") == "10s"
    assert dashboard.get("id") is None, "a provisioned dashboard gets its id from Grafana"


@pytest.mark.parametrize("name", sorted(p.name for p in DASHBOARDS.glob("*.json")))
def test_panels_are_placed_typed_and_use_the_provisioned_datasource(name: str) -> None:
    uid = datasource_uid()
    problems = []
    ids = []
    boxes = []
    for panel in panels(dashboards()[name]):
        title = panel.get("title")
        ids.append(panel.get("id"))
        if panel.get("type") not in PANEL_TYPES:
            problems.append(f"{title!r}: type {panel.get('type')!r}")
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(key), int) for key in ("h", "w", "x", "y")):
            problems.append(f"{title!r}: gridPos {grid}")
            continue
        if grid["x"] < 0 or grid["x"] + grid["w"] > 24 or grid["w"] <= 0 or grid["h"] <= 0:
            problems.append(f"{title!r}: gridPos {grid} outside the 24 columns")
        boxes.append((title, grid))
        if panel.get("type") == "row":
            continue
        sources = [panel.get("datasource")] + [t.get("datasource") for t in panel["targets"]]
        if any(s != {"type": "prometheus", "uid": uid} for s in sources):
            problems.append(f"{title!r}: datasources {sources}")
        if not panel["targets"] or not all(t.get("expr", "").strip() for t in panel["targets"]):
            problems.append(f"{title!r}: a target without an expression")
        ref_ids = [t.get("refId") for t in panel["targets"]]
        if len(set(ref_ids)) != len(ref_ids):
            problems.append(f"{title!r}: refIds {ref_ids}")
    if len(set(ids)) != len(ids) or None in ids:
        problems.append(f"panel ids not unique: {ids}")
    for i, (title, a) in enumerate(boxes):
        for other, b in boxes[i + 1:]:
            if (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                    and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]):
                problems.append(f"{title!r} overlaps {other!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(p.name for p in DASHBOARDS.glob("*.json")))
def test_variables_used_are_defined_and_query_the_provisioned_datasource(name: str) -> None:
    dashboard = dashboards()[name]
    variables = dashboard.get("templating", {}).get("list", [])
    defined = {v["name"] for v in variables}
    problems = [f"{where}: ${var} is not defined"
                for where, expr in expressions(dashboard)
                for var in sorted(variables_in(expr) - defined)
                if not var.startswith("__")]
    problems += [f"variable ${v['name']}: datasource {v.get('datasource')}" for v in variables
                 if v.get("type") == "query"
                 and v.get("datasource") != {"type": "prometheus", "uid": datasource_uid()}]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("profile", sorted(seed_catalogue()))
def test_seed_dashboards_filter_by_platform_and_device(profile: str) -> None:
    variables = {v["name"]: v for v in dashboards()[f"{profile}.json"]["templating"]["list"]}
    for name in ("platform", "device_id"):
        assert variables[name]["type"] == "query"
        assert variables[name]["multi"] and variables[name]["includeAll"], name


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    tool = promtool()
    found = all_expressions()
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dash:expr_{i}", "expr": substitute(expr)}
        for i, (_, expr) in enumerate(found)]}]}
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    checked = subprocess.run([tool, "check", "rules", str(path)], capture_output=True,
                             text=True, timeout=60)
    output = checked.stdout + checked.stderr
    failing = sorted({int(i) for i in re.findall(r"dash:expr_(\d+)", output)})
    assert checked.returncode == 0, "\n".join(
        [f"{found[i][0]}: {found[i][1]}" for i in failing] + [output])
    assert f"SUCCESS: {len(found)} rules found" in output, output


@pytest.mark.parametrize("name", sorted(p.name for p in DASHBOARDS.glob("*.json")))
def test_every_metric_named_is_known(name: str) -> None:
    unknown = [f"{where}: {metric}" for where, expr in expressions(dashboards()[name])
               for metric in sorted(metric_names(expr)) if not is_known(metric)]
    assert not unknown, ("not in docs/seeds.md, docs/operations.md or a recording rule:\n"
                         + "\n".join(unknown))


@pytest.mark.parametrize("profile", sorted(seed_catalogue()))
def test_seed_dashboard_shows_every_metric_of_its_seed(profile: str) -> None:
    used: set[str] = set()
    for _, expr in expressions(dashboards()[f"{profile}.json"]):
        for name in metric_names(expr):
            used.add(name)
            used.update(name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s))
    missing = sorted(set(seed_catalogue()[profile]) - used)
    assert not missing, f"{profile}.json has no panel for {missing}"


@pytest.mark.parametrize(("expr", "names"), [
    ('histogram_quantile(0.95, sum by (le, platform) (rate(a_bucket{p="x", le!="1"}[1m])))',
     {"a_bucket"}),
    ('100 * a{d="$d"} / on (device_id, t) group_left () b offset 5m', {"a", "b"}),
    ('{__name__=~"c|d", device_id="e"} > bool 1e3', {"c", "d"}),
    ('count(f == 0) or vector(0) unless time() - g:rule > inf', {"f", "g:rule"}),
])
def test_metric_names_are_found_in_expressions(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
