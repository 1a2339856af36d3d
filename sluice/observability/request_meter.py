"""Meter one request at the ingress from its Outcome (sluice.pipeline.settlement).

A request counts as in flight from the moment its model is known until its answer's last
byte. A response-cache hit did no engine work: it counts as a request, never as tokens.
Cost is counted per model that ran (a cascade's draft and judge as well as its answer).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sluice.observability.metrics import Metrics
from sluice.observability.outcome import Outcome, Priced

UNROUTED = "unrouted"  # the label of requests that failed before a model was chosen


class RequestMeter:
    """Started when a request arrives; finished by its outcome (or its error)."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.perf_counter,
                 on_answered: Callable[[str, float], None] | None = None,
                 on_outcome: Callable[[Outcome], None] | None = None) -> None:
        """on_answered(model, ttft): a model's own answer (the selector's latencies);
        on_outcome(outcome): every finished request (a rollout's measurements)."""
        self._metrics, self._clock, self._on_answered = metrics, clock, on_answered
        self._on_outcome = on_outcome
        self.started = clock()
        self.model = UNROUTED
        self._gauge_model: str | None = None

    def routed(self, model: str) -> None:
        """The request's model is known (parsed); it now counts as in flight for it."""
        self.model = model
        self._gauge_model = model
        self._metrics.in_flight.labels(model).inc()

    def _leave(self) -> None:
        if self._gauge_model is not None:
            self._metrics.in_flight.labels(self._gauge_model).dec()
            self._gauge_model = None

    def failed(self, status: int) -> None:
        self._leave()
        self._metrics.record(self.model, "error", status,
                             duration_s=self._clock() - self.started)

    def finished(self, outcome: Outcome) -> None:
        self._leave()
        self._metrics.record(self.model, outcome.route, outcome.status,
                             duration_s=outcome.duration_s, served=outcome.model,
                             ttft_s=outcome.ttft_s,
                             tpot_s=outcome.tpot_s,
                             usage=None if outcome.cache == "hit" else outcome.usage)
        self.charged(outcome.priced)
        if self._on_outcome is not None:
            self._on_outcome(outcome)
        # a model's own answer (not a cache hit, a cascade's or a failover's): its latency,
        # as the client saw its first token (a whole answer's: when it arrived)
        if (self._on_answered is not None and outcome.status == 200 and not outcome.failed
                and outcome.cache != "hit" and outcome.model
                and outcome.route == outcome.model):
            ttft = outcome.ttft_s if outcome.ttft_s is not None else outcome.duration_s
            self._on_answered(outcome.model, ttft)

    def charged(self, priced: Priced | None) -> None:
        """Cost per model that ran (also for a request that failed after earlier stages)."""
        for model, usd in (priced.by_model.items() if priced else ()):
            if usd and model:
                self._metrics.cost.labels(model).inc(usd)
