"""platform/observability/: the alert rules and the Grafana dashboard, checked by real tools.

- promtool (Prometheus' own checker) parses the rules, runs their unit tests
  (alerts_test.yaml), and parses every PromQL query of the dashboard.
- The dashboard JSON is type-checked by the TypeScript compiler against Grafana's published
  schema types (npm @grafana/schema: the dashboard, its variables, rows and panels, and the
  options of each panel type used). Grafana's dashboard-linter is a Go program and the Go
  module proxy is not reachable here, so the rules of it that matter are checked below in
  Python (datasource variable, $__rate_interval, units, descriptions, layout).
- Every metric and label the rules and the dashboard read must be one the ingress exports:
  compared with what the real Metrics and accounting classes render (the `exported` fixture).

`make setup` (target observability-tools) installs promtool and the schema; without them
these tests fail rather than skip.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sluice.accounting.accountant import Accountant, Admission
from sluice.accounting.budgets import Verdict
from sluice.accounting.tenancy import Principal
from sluice.cache_tier.response_cache import ResponseCache
from sluice.cache_tier.semantic_cache import SemanticCache
from sluice.observability import assets
from sluice.observability.assets import (
    GRAFANA_BUILTINS,
    grouping_labels,
    metric_names,
    selectors,
    walk_panels,
)
from sluice.observability.metrics import Metrics
from sluice.observability.request_meter import UNROUTED
from sluice.pipeline.assembly import on_compared, rollout_hooks
from sluice.rollouts import state as ops
from sluice.rollouts.report import ShadowPair
from sluice.router.cascade import ESCALATED, FALLBACK, LARGE, SMALL, CascadePolicy
from sluice.schema.accounting import AccountingConfig
from sluice.schema.caches import ResponseCacheConfig, SemanticCacheConfig
from sluice.schema.rollouts import RolloutSpec
from sluice.schema.routing import RouteConfig

REPO = Path(__file__).resolve().parents[2]
ALERTS, DASHBOARD = assets.ALERTS, assets.DASHBOARD
ALERT_TESTS = assets.OBSERVABILITY / "alerts_test.yaml"
CATALOG = REPO / "platform" / "catalog.yaml"
SCHEMA_TOOLS = REPO / ".cache" / "grafana-schema" / "node_modules"  # make observability-tools
SCHEMA_TYPES = SCHEMA_TOOLS / "@grafana" / "schema" / "dist" / "types"
TSC = SCHEMA_TOOLS / "typescript" / "bin" / "tsc"
INSTALL_HINT = "`make observability-tools` (part of `make setup`) installs it"

SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
RANGE_FUNCS = ("rate", "irate", "increase")
PANEL_TYPES = {  # panel type -> (its options type, its fieldConfig.custom type) in the schema
    "timeseries": ("TimeSeriesOptions", "TimeSeriesFieldConfig"), "stat": ("StatOptions", None),
    "bargauge": ("BarGaugeOptions", None), "text": ("TextOptions", None)}


# ---- helpers ----------------------------------------------------------------------------

def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False,
                          **kwargs)


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(f"promtool is not on PATH: {INSTALL_HINT} (Debian package prometheus)")
    return path


async def _accounting(metrics: Metrics) -> None:
    """The accountant's series (budgets, ledger, webhook): one request settled as the ingress
    does, in a loop; nothing listens at 127.0.0.1:1, so its record stays buffered."""
    config = AccountingConfig.model_validate({
        "budgets": [{"scope": scope, "id": ident, "daily_usd": 5.0, "monthly_usd": 100.0}
                    for scope, ident in (("key", "k1"), ("tenant", "t1"))],
        "ledger": {"timeout_s": 0.5}, "webhook": {"url": "http://127.0.0.1:1/"}})
    accountant = Accountant(config, "redis://127.0.0.1:1", lambda coro: coro.close(), metrics)
    admission = Admission(Principal("k1", "t1"), ("team-a",), time.time(), Verdict("ok"))
    accountant.settle(admission, "req-1", "auto", 200, None, cost_usd=6.0)  # over 5.0/day
    assert (await accountant.guard.check(admission.principal)).level == "hard"  # a refusal
    await accountant.close()


# ---- fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def catalog_slos() -> dict[str, dict[str, float]]:
    models = yaml.safe_load(CATALOG.read_text())["models"]
    return {m["name"]: m["slo"] for m in models}


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    return assets.alert_rules()


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return assets.dashboard()


@pytest.fixture(scope="module")
def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    return [q.expr for q in assets.dashboard_queries(dashboard)]


@pytest.fixture(scope="module")
def exported(catalog_slos: dict[str, Any]) -> dict[str, dict[str, set[str]]]:
    """What GET /metrics shows: sample name -> label -> values seen, from the real classes."""
    response = ResponseCache(None, ResponseCacheConfig())  # type: ignore[arg-type]
    semantic = SemanticCache(response, SemanticCacheConfig(),
                             embed=lambda text: None)  # type: ignore[arg-type,return-value]
    policy = CascadePolicy(RouteConfig(name="auto", small="small", large="large"),
                           random.Random(0))
    for path in (SMALL, LARGE, ESCALATED, FALLBACK):
        policy.count(path)
    metrics = Metrics(caches=lambda: {"response": response.counters,
                                      "semantic": semantic.counters},
                      routes=lambda: {"auto": policy.snapshot()})
    usage = {"prompt_tokens": 12, "completion_tokens": 5,
             "prompt_tokens_details": {"cached_tokens": 8}}
    for model in catalog_slos:
        metrics.record(model, "chat", 200, duration_s=0.3, ttft_s=0.1, tpot_s=0.02,
                       usage=usage)
        metrics.in_flight.labels(model).inc()
        metrics.cost.labels(model).inc(0.001)  # as the ingress's response pricer does
    metrics.record(UNROUTED, "chat", 400, duration_s=0.01)
    metrics.context_overflows.labels("small", "trim", "trimmed", "acme").inc()  # context_gate
    on_event, on_read = rollout_hooks(metrics, alert=lambda _event: None)  # as the ingress
    canary = ops.begin("large-v2-x", RolloutSpec(model="large", to="v2"), "large", 0.0)
    on_read(canary)
    on_event(ops.abort(canary, 1.0), "rolled_back")
    compared = on_compared(metrics)  # a shadow's pairs, as the rollouts controller reports
    compared(canary, ShadowPair(True, False, 0.2, 0.25, 10, 11))
    compared(canary, None)  # a sample skipped at the bound
    asyncio.run(_accounting(metrics))
    out: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            labels = out.setdefault(sample.name, {})
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    return out


# ---- promtool: the rules and their unit tests ------------------------------------------

@pytest.mark.parametrize(("verb", "path"), [("check", ALERTS), ("test", ALERT_TESTS)],
                         ids=["check_rules", "unit_tests"])
def test_promtool_checks_the_rules_and_runs_their_unit_tests(verb: str, path: Path) -> None:
    result = _run([_promtool(), verb, "rules", str(path)])
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_every_alert_is_unit_tested_and_annotated(alert_rules: list[dict[str, Any]]) -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    for rule in alert_rules:
        assert rule["alert"] in tested, f"{rule['alert']}: no test makes it fire"
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key), f"{rule['alert']}: no {key}"
        assert "$value" in rule["annotations"]["summary"], f"{rule['alert']}: value not shown"


def test_latency_alerts_use_the_catalog_objectives(
        alert_rules: list[dict[str, Any]], catalog_slos: dict[str, dict[str, float]]) -> None:
    for alert, metric, key in (
            ("SluiceTTFTP95AboveSLO", "gen_ai_server_time_to_first_token_seconds", "ttft_p95_s"),
            ("SluiceTPOTP95AboveSLO", "gen_ai_server_time_per_output_token_seconds",
             "tpot_p95_s")):
        thresholds = {}
        for rule in (r for r in alert_rules if r["alert"] == alert):
            expr = " ".join(rule["expr"].split())
            assert f"histogram_quantile(0.95, sum by (le, model) (rate({metric}_bucket" in expr
            model = re.search(r'model="([^"]+)"', expr)
            threshold = re.search(r">\s*([0-9.]+)$", expr)
            assert model and threshold, expr
            thresholds[model.group(1)] = float(threshold.group(1))
            assert rule["for"] == "5m"
        assert thresholds == {name: slo[key] for name, slo in catalog_slos.items()}, alert


# ---- the dashboard: Grafana's schema, promtool, lint rules ------------------------------

def _typed(name: str, type_name: str, value: Any) -> str:
    return f"export const {name}: Lit<{type_name}> = {json.dumps(value)};"


def _panel_checks(dashboard: dict[str, Any]) -> list[str]:
    lines = []
    for panel in walk_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["type"] in PANEL_TYPES, (
            f"panel type {panel['type']!r}: add its panelcfg types to PANEL_TYPES")
        options_type, custom_type = PANEL_TYPES[panel["type"]]
        lines.append(_typed(f"p{panel['id']}_options", options_type, panel["options"]))
        if custom_type is not None:
            custom = panel["fieldConfig"]["defaults"].get("custom", {})
            lines.append(_typed(f"p{panel['id']}_custom", custom_type, custom))
    return lines


def test_dashboard_matches_grafanas_schema(dashboard: dict[str, Any], tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not TSC.is_file() or not SCHEMA_TYPES.is_dir():
        pytest.fail(f"node, typescript or @grafana/schema missing: {INSTALL_HINT}")
    composable = SCHEMA_TYPES / "raw" / "composable"
    # String enums of the schema (e.g. ThresholdsMode) take their literal values in JSON.
    header = "\n".join([
        f'import type {{ Dashboard }} from "{SCHEMA_TYPES}/index";',
        ("import type { Options as TimeSeriesOptions, FieldConfig as TimeSeriesFieldConfig }"
         f' from "{composable}/timeseries/panelcfg/x/types.gen";'),
        *(f'import type {{ Options as {options} }} from "{composable}/{kind}/panelcfg/x/types.gen";'
          for kind, (options, _) in PANEL_TYPES.items() if kind != "timeseries"),
        ("type Lit<T> = T extends string ? `${T}` : T extends readonly (infer U)[] ? Lit<U>[]"
         " : T extends object ? { [K in keyof T]: Lit<T[K]> } : T;"),
    ])
    (tmp_path / "dashboard.ts").write_text("\n".join([
        header,
        f"export const dashboard: Lit<Dashboard> = {json.dumps(dashboard, indent=1)};",
        *_panel_checks(dashboard)]) + "\n")
    # The same compiler run must reject a dashboard with mistakes: one per line, each caught.
    timeseries = next(p for p in dashboard["panels"] if p["type"] == "timeseries")
    broken_legend = json.loads(json.dumps(timeseries["options"]))
    broken_legend["legend"]["displayMode"] = "tabel"
    mistakes = [
        _typed("b1", "Dashboard", {**dashboard, "schemaVersion": str(dashboard["schemaVersion"])}),
        _typed("b2", "TimeSeriesOptions", broken_legend),
        _typed("b3", "Dashboard", {**dashboard, "templating": {"list": [
            {**dashboard["templating"]["list"][0], "type": "datasrc"}]}}),
        _typed("b4", "Dashboard", {**dashboard, "panels": [{**timeseries, "gridpos": {}}]}),
    ]
    (tmp_path / "broken.ts").write_text("\n".join([header, *mistakes]) + "\n")
    (tmp_path / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {"strict": True, "noEmit": True, "skipLibCheck": True,
                            "target": "es2022", "lib": ["es2022"], "types": [],
                            "module": "esnext", "moduleResolution": "bundler"},
        "files": ["dashboard.ts", "broken.ts"]}))
    result = _run([node, str(TSC), "-p", str(tmp_path / "tsconfig.json")], cwd=tmp_path)
    errors = re.findall(r"^(\w+)\.ts\((\d+),\d+\): error (TS\d+: .*)$", result.stdout,
                        re.MULTILINE)
    assert not [e for e in errors if e[0] == "dashboard"], result.stdout + result.stderr
    header_lines = header.count("\n") + 1
    caught = {int(line) - header_lines for file, line, _ in errors if file == "broken"}
    assert caught == set(range(1, len(mistakes) + 1)), result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(dashboard: dict[str, Any],
                                               tmp_path: Path) -> None:
    rules = []
    for panel in walk_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = assets.as_sent(target["expr"])
            rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}",
                          "expr": expr})
    assert len(rules) >= 25
    path = tmp_path / "dashboard_queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _run([_promtool(), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds, model = variables["datasource"], variables["model"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert model["type"] == "query" and model["datasource"] == DS_REF
    assert model["query"]["query"] == "label_values(sluice_requests_total, model)"
    for var in variables.values():
        if var.get("multi") or var.get("includeAll"):
            assert var.get("allValue") == ".*", f"${var['name']} is used with =~"


def test_dashboard_lint(dashboard: dict[str, Any]) -> None:
    """The rules of Grafana's dashboard-linter that apply, plus layout sanity."""
    assert 36 <= dashboard["schemaVersion"] <= 42 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    panels = walk_panels(dashboard["panels"])
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos, where = panel["gridPos"], f"panel {panel['id']} {panel.get('title')!r}"
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, where
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"{where} overlaps another panel"
        cells |= mine
        assert panel.get("title"), where
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{where}: no description"
        if panel["type"] == "text":
            assert not panel.get("targets"), where
            continue
        assert panel["datasource"] == DS_REF, f"{where}: datasource must be ${{datasource}}"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["datasource"] == DS_REF, where
            assert target.get("legendFormat"), f"{where}: {target['refId']} has no legend"
            expr = target["expr"]
            for func in RANGE_FUNCS:
                for window in re.findall(rf"\b{func}\s*\([^\[]*\[([^\]]*)\]", expr):
                    assert window == "$__rate_interval", f"{where}: {func}[{window}]"
            # counters and histogram buckets only make sense through rate()/increase()
            for name in metric_names(expr):
                if name.endswith(("_total", "_bucket", "_count", "_sum")):
                    uses = re.findall(rf"\b{name}\s*(?:\{{[^}}]*\}})?\s*(\[?)", expr)
                    assert uses and all(uses), f"{where}: {name} read without a range"
            for name in re.findall(r"\$\{?(\w+)\}?", expr):
                assert name in GRAFANA_BUILTINS or name in variables, f"{where}: ${name}"
            for label, op, value in (m for _, ms in selectors(expr) for m in ms):
                if "$" in value:
                    assert op in ("=~", "!~"), f"{where}: {label}{op}{value!r} (multi-value)"


def test_dashboard_rows_and_what_they_show(dashboard: dict[str, Any]) -> None:
    rows: dict[str, list[dict[str, Any]]] = {}
    current = None
    for panel in sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"],
                                                             p["gridPos"]["x"])):
        if panel["type"] == "row":
            current = panel["title"]
            rows[current] = list(panel.get("panels") or [])
        else:
            assert current is not None, "panels come under rows"
            rows[current].append(panel)
    assert list(rows) == ["Latency", "Throughput", "Queue", "Cache", "Cascade", "Cost",
                          "Rollouts"]
    assert all(rows[name] for name in rows)
    queries = {name: " ".join(t["expr"] for p in panels for t in p.get("targets", []))
               for name, panels in rows.items()}
    for row, shown in {
            "Latency": ["gen_ai_server_time_to_first_token_seconds_bucket"],
            "Throughput": ["sluice_tokens_total"], "Queue": ["sluice_in_flight_requests"],
            "Cache": ["sluice_cache_lookups_total", 'type="cached_input"'],
            "Cascade": ["sluice_judge_reliability"],
            "Cost": ["sluice_cost_usd_total", 'sluice_attributed_cost_usd_total{scope="tenant"}',
                     'sluice_attributed_cost_usd_total{scope="key"}', "sluice_budget_spent_usd",
                     "sluice_budget_limit_usd", 'sluice_ledger_records_total{result="dropped"}',
                     "sluice_ledger_buffered", "sluice_ledger_write_errors_total"],
            "Rollouts": ["sluice_rollout_share", 'sluice_rollout_events_total',
                         "sluice_served_requests_total",
                         "sluice_served_time_to_first_token_seconds_bucket",
                         "sluice_rollout_compared_pairs_total",
                         "sluice_rollout_compared_latency_ratio_bucket"]}.items():
        for what in shown:
            assert what in queries[row], f"row {row} does not show {what}"


def test_dashboard_slo_lines_are_the_catalog_objectives(
        dashboard: dict[str, Any], catalog_slos: dict[str, dict[str, float]]) -> None:
    for metric, key in (("gen_ai_server_time_to_first_token_seconds", "ttft_p95_s"),
                        ("gen_ai_server_time_per_output_token_seconds", "tpot_p95_s")):
        panel, = (p for p in walk_panels(dashboard["panels"])
                  if any(metric in t["expr"] for t in p.get("targets", [])))
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["custom"]["thresholdsStyle"]["mode"] != "off", panel["title"]
        lines = {s["value"] for s in defaults["thresholds"]["steps"] if s["value"] is not None}
        assert lines == {slo[key] for slo in catalog_slos.values()}, panel["title"]


# ---- every metric and label read exists --------------------------------------------------

def test_metric_name_extraction() -> None:
    expr = ('sum by (le, model) (rate(a_bucket{model=~"$model", x="b{c}"}[$__rate_interval]))'
            " / on (model) group_left b_total > bool 1e3 and vector(1) offset 5m")
    assert metric_names(expr) == {"a_bucket", "b_total"}
    assert grouping_labels(expr) == {"le", "model"}
    assert selectors(expr) == [("a_bucket", [("model", "=~", "$model"), ("x", "=", "b{c}")])]


def test_every_metric_read_is_exported(
        exported: dict[str, dict[str, set[str]]], alert_rules: list[dict[str, Any]],
        dashboard: dict[str, Any], dashboard_queries: list[str]) -> None:
    read = {"alerts.yaml": set().union(*(metric_names(r["expr"]) for r in alert_rules)),
            "grafana-dashboard.json": set().union(*map(metric_names, dashboard_queries))}
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)",
                                         var["query"]["query"]).groups()  # type: ignore[union-attr]
            read["grafana-dashboard.json"].add(metric)
            assert label in exported[metric], f"${var['name']}: {metric} has no {label}"
    assert "sluice_judge_reliability_pairs" in read["alerts.yaml"]  # the extraction works
    assert len(read["grafana-dashboard.json"]) >= 15
    for where, names in read.items():
        missing = names - set(exported)
        assert not missing, f"{where} reads metrics /metrics does not export: {missing}"


def test_every_label_read_is_exported(
        exported: dict[str, dict[str, set[str]]], alert_rules: list[dict[str, Any]],
        dashboard_queries: list[str]) -> None:
    literal = re.compile(r"[\w>:-]+(\|[\w>:-]+)*")  # plain values or a|b|c alternations
    checked = 0
    for expr in [r["expr"] for r in alert_rules] + dashboard_queries:
        labels_of_expr = set(SCRAPE_LABELS).union(*(exported[m] for m in metric_names(expr)))
        for metric, matchers in selectors(expr):
            labels = exported[metric]
            for label, op, value in matchers:
                assert label in labels or label in SCRAPE_LABELS, f"{metric} has no {label}"
                if label in labels and op in ("=", "=~") and literal.fullmatch(value):
                    unknown = set(value.split("|")) - labels[label]
                    assert not unknown, f"{metric}{{{label}{op}{value!r}}}: never {unknown}"
                    checked += 1
        grouping = grouping_labels(expr)
        assert grouping <= labels_of_expr, f"{grouping - labels_of_expr}: {expr}"
        # every replica exports every budget's gauges (the fleet's spend): summed, they multiply
        budgets = re.findall(r"(max\s+by\s*\([^)]*\)\s*\(\s*)?sluice_budget_\w+_usd", expr)
        assert all(budgets), f"budget gauges are combined with max by (...), never summed: {expr}"
    assert checked >= 20  # model, type, result, path, scope and period values compared
