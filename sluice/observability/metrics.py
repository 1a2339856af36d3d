"""Prometheus metrics of one ingress replica, exposed at `GET /metrics`.

Latency histograms use the bucket boundaries of OpenTelemetry's GenAI semantic conventions
(gen_ai.server.time_to_first_token, gen_ai.server.time_per_output_token,
gen_ai.server.request.duration) under their Prometheus names. Counters the caches and the
cascade already keep are read at scrape time by collectors, so the hot path pays nothing for
them. Each ingress owns its registry (no process-global state).

Names (the alert rules and the Grafana dashboard in platform/observability/ use these):
- gen_ai_server_time_to_first_token_seconds{model}            histogram
- gen_ai_server_time_per_output_token_seconds{model}          histogram
- gen_ai_server_request_duration_seconds{model}               histogram
- sluice_requests_total{model, route, status}                 counter (status: HTTP code)
- sluice_served_requests_total{model, served, status}        counter (served: the model or
  rollout variant that answered, e.g. large@v2; empty when none did)
- sluice_served_time_to_first_token_seconds{model, served}    histogram
- sluice_tokens_total{model, type}                            counter (input|output|cached_input)
- sluice_in_flight_requests{model}                            gauge (queue depth at the ingress)
- sluice_cost_usd_total{model}                                counter (each model that ran)
- sluice_attributed_cost_usd_total{scope, id}                 counter (scope: key|tenant|tag)
- sluice_budget_limit_usd / _soft_limit_usd / _spent_usd{scope, id, period}  gauges (accountant)
- sluice_budget_decisions_total{result, scope, id}            counter (rejected|downgraded)
- sluice_ledger_records_total{result}, sluice_ledger_write_errors_total,
  sluice_ledger_buffered                                      ledger health (accountant)
- sluice_alert_webhook_total{result}                          counter (sent|failed)
- sluice_failovers_total{model, to}                           counter (a call `model` did not
  answer, answered by `to`, a later model of its failover chain)
- sluice_context_overflows_total{model, policy, outcome, tenant} counter (rejected|routed|
  trimmed|lowered: what an overflow of the model's context became)
- sluice_compressed_requests_total{model, method}            counter (relevance|salience)
- sluice_compression_saved_tokens_total{model}               counter (prompt tokens removed)
- sluice_cache_lookups_total{cache, result}                   counter (response|semantic)
- sluice_rollout_compared_pairs_total{model, candidate, result} counter (agreed|disagreed|
  candidate_error|skipped: a shadow's copies, a canary's quality sample)
- sluice_rollout_compared_latency_ratio{model, candidate}     histogram (candidate / baseline)
- sluice_cascade_requests_total{route, path}                  counter (small|large|small>large|..)
- sluice_cascade_escalation_rate{route}                       gauge
- sluice_judge_reliability{route}                             gauge (NaN until measured)
- sluice_judge_reliability_pairs{route}                       gauge
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sluice.observability.outcome import Tokens

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# OpenTelemetry GenAI semantic conventions, explicit bucket boundaries
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)
# a candidate's latency over its baseline's on the same request (compared pairs)
RATIO_BUCKETS = (0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)

CacheCounters = Callable[[], Mapping[str, Mapping[str, int] | None]]
RouteSnapshots = Callable[[], Mapping[str, Mapping[str, Any]]]


class _StateCollector(Collector):
    """Cache and cascade counters, read from the objects that keep them, at scrape time."""

    def __init__(self, caches: CacheCounters, routes: RouteSnapshots) -> None:
        self._caches = caches
        self._routes = routes

    def collect(self) -> Iterator[Metric]:
        lookups = CounterMetricFamily("sluice_cache_lookups", "Response-cache lookups by "
                                      "result.", labels=["cache", "result"])
        for cache, counters in self._caches().items():
            for result, n in (counters or {}).items():
                lookups.add_metric([cache, result], n)
        yield lookups
        paths = CounterMetricFamily("sluice_cascade_requests", "Cascade requests by the path "
                                    "they took.", labels=["route", "path"])
        escalation = GaugeMetricFamily("sluice_cascade_escalation_rate", "Share of judged "
                                       "answers escalated to the large model.", labels=["route"])
        reliability = GaugeMetricFamily("sluice_judge_reliability", "Measured agreement of "
                                        "the judge with the large model (shadow pairs).",
                                        labels=["route"])
        pairs = GaugeMetricFamily("sluice_judge_reliability_pairs", "Shadow pairs behind the "
                                  "judge-reliability estimate.", labels=["route"])
        for route, snap in self._routes().items():
            for path, n in (snap.get("routes") or {}).items():
                paths.add_metric([route, path], n)
            rate = snap.get("escalation_rate")
            escalation.add_metric([route], math.nan if rate is None else rate)
            judge = snap.get("judge_reliability") or {}
            estimate = judge.get("estimate")
            reliability.add_metric([route], math.nan if estimate is None else estimate)
            pairs.add_metric([route], judge.get("pairs") or 0)
        yield from (paths, escalation, reliability, pairs)


class Metrics:
    """The ingress's metrics; `render()` is the body of GET /metrics."""

    def __init__(self, caches: CacheCounters | None = None,
                 routes: RouteSnapshots | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("gen_ai_server_time_to_first_token", "Time to first token.",
                              ["model"], unit="seconds", buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("gen_ai_server_time_per_output_token", "Time per output token "
                              "after the first.", ["model"], unit="seconds",
                              buckets=TPOT_BUCKETS, registry=r)
        self.duration = Histogram("gen_ai_server_request_duration", "End-to-end request "
                                  "duration.", ["model"], unit="seconds",
                                  buckets=DURATION_BUCKETS, registry=r)
        self.requests = Counter("sluice_requests", "Requests answered, by model, route and "
                                "HTTP status.", ["model", "route", "status"], registry=r)
        # by the catalog model that answered: a rollout's variant (`large@v2`), a failover
        # chain's model; `model` is the one asked for, as everywhere else
        self.served = Counter("sluice_served_requests", "Requests by the model asked for, the "
                              "model or variant that answered (served; empty: none did) and "
                              "HTTP status.", ["model", "served", "status"], registry=r)
        self.served_ttft = Histogram("sluice_served_time_to_first_token", "Time to first "
                                     "token by the model asked for and the model or variant "
                                     "that answered.", ["model", "served"], unit="seconds",
                                     buckets=TTFT_BUCKETS, registry=r)
        self.tokens = Counter("sluice_tokens", "Tokens by model and type (input, output, "
                              "cached_input).", ["model", "type"], registry=r)
        self.cost = Counter("sluice_cost_usd", "Cost of the answers, by the model that "
                            "answered (sluice.accounting.cost).", ["model"], registry=r)
        self.attributed_cost = Counter("sluice_attributed_cost_usd", "Cost attributed to "
                                       "API keys, tenants and tags (scope: key|tenant|tag).",
                                       ["scope", "id"], registry=r)
        self.retries = Counter("sluice_engine_retries", "Engine calls retried on another "
                               "replica after one failed before its first output, by model.",
                               ["model"], registry=r)
        self.failovers = Counter("sluice_failovers", "Calls a model did not answer (it failed "
                                 "before its first output, or was put aside), answered by a "
                                 "later model of its failover chain.",
                                 ["model", "to"], registry=r)
        self.context_overflows = Counter(
            "sluice_context_overflows", "Requests whose prompt and answer overflowed the "
            "context of the model asked for, by what the policy made of them (rejected, "
            "routed, trimmed, lowered).", ["model", "policy", "outcome", "tenant"], registry=r)
        self.compressed = Counter(
            "sluice_compressed_requests", "Requests whose chat context was compressed, by the "
            "model it was counted for and the method.", ["model", "method"], registry=r)
        self.compression_saved_tokens = Counter(
            "sluice_compression_saved_tokens", "Prompt tokens compression removed.",
            ["model"], registry=r)
        self.in_flight = Gauge("sluice_in_flight_requests", "Requests in flight at this "
                               "ingress replica.", ["model"], registry=r)
        self.rollout_events = Counter(
            "sluice_rollout_events", "Rollout decisions taken by this ingress replica (started, "
            "advanced, promoted, rolled_back, aborted, paused, resumed, retired), by model.",
            ["model", "event"], registry=r)
        self.rollout_share = Gauge(
            "sluice_rollout_share", "The candidate's share of its model's traffic (0-1) at the "
            "last decision this replica took or read.", ["model", "variant"], registry=r)
        self.compared_pairs = Counter(
            "sluice_rollout_compared_pairs", "Requests answered by one variant and, in the "
            "background, by another (a shadow's copies; a canary's quality sample), by model, "
            "the candidate and the result: agreed, disagreed, candidate_error, or skipped (at "
            "the bound of copies in flight).", ["model", "candidate", "result"], registry=r)
        self.compared_latency_ratio = Histogram(
            "sluice_rollout_compared_latency_ratio", "The candidate's whole-answer latency over "
            "the baseline's, on the same request (compared pairs).", ["model", "candidate"],
            buckets=RATIO_BUCKETS, registry=r)
        if caches is not None or routes is not None:
            r.register(_StateCollector(caches or dict, routes or dict))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def record(self, model: str, route: str, status: int, *, duration_s: float,
               served: str = "",
               ttft_s: float | None = None, tpot_s: float | None = None,
               usage: Mapping[str, Any] | None = None) -> None:
        """One finished request (success or error); served: the model or variant that
        answered it."""
        self.requests.labels(model, route, str(status)).inc()
        self.served.labels(model, served, str(status)).inc()
        self.duration.labels(model).observe(duration_s)
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
            self.served_ttft.labels(model, served).observe(ttft_s)
        if tpot_s is not None:
            self.tpot.labels(model).observe(tpot_s)
        if usage:
            tokens = Tokens.of(usage)
            self.tokens.labels(model, "input").inc(tokens.prompt)
            self.tokens.labels(model, "output").inc(tokens.completion)
            self.tokens.labels(model, "cached_input").inc(tokens.cached)
