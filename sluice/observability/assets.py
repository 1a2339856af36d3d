"""The shipped observability assets (platform/observability/): the alert rules, the Grafana
dashboard, and what their PromQL reads.

One reading of the files for the static checks (tests/unit/test_observability_assets.py) and
the live one against a real Prometheus scraping the real stack
(tests/integration/test_prometheus_live.py), so both check the same queries.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

OBSERVABILITY = Path(__file__).resolve().parents[2] / "platform" / "observability"
ALERTS = OBSERVABILITY / "alerts.yaml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"

# Grafana's built-in variables, as a query is sent once a dashboard is rendered
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio", "by", "without", "on", "ignoring",
    "group_left", "group_right", "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
_STRING = r'"(?:[^"\\]|\\.)*"'
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Query:
    """One PromQL expression of an asset, named after where it lives."""

    where: str  # "alert SluiceX" or "panel 12 (title) A"
    expr: str


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text())


def walk_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for panel in panels for p in (panel, *walk_panels(panel.get("panels") or []))]


def alert_queries(rules: list[dict[str, Any]]) -> list[Query]:
    return [Query(f"alert {r.get('alert') or r.get('record')}", r["expr"]) for r in rules]


def dashboard_queries(board: dict[str, Any]) -> list[Query]:
    return [Query(f"panel {p['id']} ({p.get('title', '')}) {t.get('refId', '')}", t["expr"])
            for p in walk_panels(board["panels"]) for t in p.get("targets", [])]


def as_sent(expr: str, builtins: dict[str, str] | None = None) -> str:
    """A dashboard query as Grafana sends it with every variable at 'All': built-ins
    replaced, multi-value variables (only ever inside =~) matching anything."""
    for name, value in (builtins or GRAFANA_BUILTINS).items():
        expr = expr.replace("$" + name, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def _without_strings(expr: str) -> str:
    return re.sub(_STRING, '""', expr)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (not functions, keywords or label names)."""
    s = _without_strings(expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery selectors
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    return {m.group(1) for m in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?", s)
            if not m.group(2) and m.group(1).lower() not in PROMQL_WORDS}  # not calls


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric, [(label, op, value)]) of each `metric{...}` selector."""
    return [(m.group(1), _MATCHER.findall(m.group(2))) for m in
            re.finditer(r"([a-zA-Z_:][\w:]*)\s*\{((?:[^}\"]|" + _STRING + r")*)\}", expr)]


def grouping_labels(expr: str) -> set[str]:
    found = re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", _without_strings(expr))
    return {label.strip() for group in found for label in group.split(",") if label.strip()}
