"""The shipped dashboard and alert rules against a real Prometheus scraping the real stack.

A Prometheus server (the one `make observe` runs, LocalPrometheus) scrapes the shared stack's
ingress every second with platform/observability/alerts.yaml loaded. After a short mixed
workload (plain, streamed, cascaded, shadow-judged, cached, refused and budgeted requests)
every PromQL expression of the Grafana dashboard, as Grafana sends it, returns data; every
alert rule evaluates without error, and every metric it reads has series, so an alert that
stays quiet does so because its threshold is not crossed, not because its metric is gone.
If the ingress stops emitting a metric the dashboard or an alert reads, this test fails.
"""

from __future__ import annotations

import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.deployments.local_stack import LocalStack
from sluice.observability import assets
from sluice.observability.prometheus_server import LocalPrometheus

pytestmark = pytest.mark.integration
SCRAPE_S = 1.0
# Grafana's $__rate_interval is at least four scrape intervals; a window longer than this
# run's history is still evaluated over the samples it has
BUILTINS = {"__rate_interval": "5m", "__interval": "15s", "__range": "5m"}
# Dashboard queries that may be empty after a healthy workload, and why
ROLLOUT_PANELS = ("panel 31 (Rollout: candidate's share) A", "panel 32 (Rollout decisions) A",
                  "panel 35 (Compared pairs/s (shadow, quality sample)) A",
                  "panel 36 (Candidate / baseline latency, p50 of pairs) A")
ROLLOUT_METRICS = {"sluice_rollout_share", "sluice_rollout_events_total",
                   "sluice_rollout_compared_pairs_total",
                   "sluice_rollout_compared_latency_ratio_bucket"}
MAY_BE_EMPTY = {
    "panel 7 (5xx share by model) A": "no 5xx answers on a healthy stack: 0/x is data, "
                                      "but sum() over no 5xx series is no series",
    "panel 28 (Ledger health) B": "no ledger record dropped (the counter is created at its "
                                  "first drop)",
    **{panel: "no rollout runs on the shared stack; test_rollouts_live reads these series "
              "from its own stack's /metrics" for panel in ROLLOUT_PANELS},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus(stack: LocalStack) -> Iterator[LocalPrometheus]:
    run_dir = Path(tempfile.mkdtemp(prefix="sluice-prometheus-"))
    with LocalPrometheus(run_dir, stack.scrape_targets(), port=_free_port(),
                         scrape_interval_s=SCRAPE_S) as server:
        yield server


def _chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": text}], **extra}


def _workload(http: httpx.Client) -> None:
    """A little of everything the dashboard shows: each model and route, streams, a cache
    hit, a client error, a context overflow, the judge's shadow pairs, budgeted tenants,
    tags."""
    run = uuid.uuid4().hex[:8]
    tags = {"x-sluice-tags": f"prom-{run}"}
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    sent = [
        http.post("/v1/chat/completions", json=_chat("small", f"plain {run}"), headers=tags),
        http.post("/v1/chat/completions", json=_chat("large", f"plain {run}"), headers=tags),
        http.post("/v1/chat/completions", json=_chat("small", f"stream {run}", **stream)),
        http.post("/v1/chat/completions", json=_chat("auto", f"what is 2+2? {run}")),
        http.post("/v1/chat/completions", json=_chat("t-escalate", f"escalate {run}")),
        *(http.post("/v1/chat/completions", json=_chat("t-accept", f"shadow {i} {run}"))
          for i in range(4)),
        http.post("/v1/completions", json={"model": "small", "prompt": f"c {run}",
                                           "max_tokens": 4}),
    ]
    again = _chat("small", f"plain {run}")
    sent.append(http.post("/v1/chat/completions", json=again, headers=tags))  # cache hit
    for secret in ("sk-test-soft", "sk-test-hard", "sk-test-hard"):  # soft, then 429
        sent.append(http.post("/v1/chat/completions", json=_chat("auto", f"b {run}"),
                              headers={"authorization": f"Bearer {secret}"}))
    assert http.post("/v1/chat/completions", json={"model": "small"}).status_code == 400
    # a prompt and answer past small's 2,048-token context: its policy (reject) refuses it
    overflow = http.post("/v1/chat/completions", json={**_chat("small", f"o {run}"),
                                                       "max_tokens": 2047})
    assert overflow.status_code == 400, overflow.text
    assert overflow.json()["error"]["code"] == "context_length_exceeded"
    statuses = [r.status_code for r in sent]
    assert set(statuses) <= {200, 429} and statuses.count(200) >= len(sent) - 2, statuses


def _query(prom: LocalPrometheus, expr: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{prom.url}/api/v1/query", params={"query": expr}, timeout=30)
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _has_series(prom: LocalPrometheus, metric: str) -> bool:
    return bool(_query(prom, f'group({{__name__="{metric}"}})'))


def _wait_scraped_after(prom: LocalPrometheus, since: float, timeout_s: float = 60) -> None:
    """Until two scrapes of every target happened after `since` (rates need two samples)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        up = _query(prom, 'timestamp(up{job="sluice-ingress"})')
        if up and all(float(s["value"][1]) > since + 2 * SCRAPE_S for s in up) and all(
                s["value"][1] == "1" for s in _query(prom, 'up{job="sluice-ingress"}')):
            return
        time.sleep(SCRAPE_S)
    pytest.fail(f"Prometheus did not scrape the ingress after the workload in {timeout_s} s: "
                f"{_query(prom, 'up')}")


def test_dashboard_and_alerts_have_data_from_the_real_stack(
        prometheus: LocalPrometheus, http: httpx.Client) -> None:
    _wait_scraped_after(prometheus, time.time())  # a first sample of every series
    _workload(http)
    _wait_scraped_after(prometheus, time.time())

    empty, absent = [], []
    for query in assets.dashboard_queries(assets.dashboard()):
        result = _query(prometheus, assets.as_sent(query.expr, BUILTINS))
        if not result and query.where not in MAY_BE_EMPTY:
            empty.append(f"{query.where}: {' '.join(query.expr.split())}")
        absent += [f"{query.where}: {m}" for m in sorted(assets.metric_names(query.expr))
                   if not _has_series(prometheus, m) and not _created_on_failure(m)]
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

    for query in assets.alert_queries(assets.alert_rules()):
        _query(prometheus, query.expr)  # evaluates (an alert that does not fire is empty)
        absent += [f"{query.where}: {m}" for m in sorted(assets.metric_names(query.expr))
                   if not _has_series(prometheus, m) and not _created_on_failure(m)]
    assert not absent, "metrics read but never exported:\n" + "\n".join(absent)


def _created_on_failure(metric: str) -> bool:
    """Series that appear with their first failure (a healthy run has none) or their first
    rollout (test_rollouts_live checks those on its own stack)."""
    return metric in {"sluice_ledger_write_errors_total"} | ROLLOUT_METRICS


def test_prometheus_loaded_every_shipped_rule_and_evaluates_it(
        prometheus: LocalPrometheus) -> None:
    shipped = {q.where.removeprefix("alert ") for q in assets.alert_queries(assets.alert_rules())}
    deadline = time.monotonic() + 30
    while True:
        groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        evaluated = [r for r in rules if r.get("lastEvaluation", "").startswith("20")
                     and not r["lastEvaluation"].startswith("0001")]
        if len(evaluated) == len(rules) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {r["name"] for r in rules} == shipped
    assert len(rules) == len(assets.alert_rules())
    bad = [(r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"]
    assert not bad, bad
