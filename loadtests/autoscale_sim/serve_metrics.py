"""What Serve's controller knows when it runs a policy: the metric pipeline, on the sim clock.

Mirrors Ray Serve 2.60 (ray/serve/_private/replica.py, router.py, autoscaling_state.py) with
Ray's own store and aggregation functions (`InMemoryMetricsStore`, `merge_instantaneous_total`,
`aggregate_timeseries`):
- replicas and handles record a point every min(look_back_period_s * 0.2, metrics_interval_s)
  (6 s by default): ongoing requests at the replicas, queued requests at the handles, and each
  replica's custom metrics (for Sluice: its `LatencyWindow.stats()`);
- every metrics_interval_s (10 s) they prune their store to the last look_back_period_s (30 s)
  and push it to the controller;
- at a decision the controller reduces what it was last pushed with the deployment's
  aggregation function (MEAN: time-weighted, the last point held until now):
  `total_num_requests` over running + queued, `total_queued_requests`, and every custom metric
  per replica (`aggregated_metrics`).
Simplifications: the fleet's ongoing requests are one series (the sum of the replicas',
recorded in phase), and the custom metrics come from a few representative replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

from ray.serve._private.common import ReplicaID, TimeSeries
from ray.serve._private.metrics_utils import (
    InMemoryMetricsStore,
    aggregate_timeseries,
    merge_instantaneous_total,
)
from ray.serve.config import AggregationFunction

from loadtests.autoscale_sim.params import ServeParams

RUNNING, QUEUED = "running", "queued"
CustomStats = Mapping[ReplicaID, Mapping[str, float]]


def aggregate(series: Sequence[TimeSeries], now: float) -> float:
    """Serve's `_merge_and_aggregate_timeseries` (MEAN) with `now` for `time.time()`."""
    series = [s for s in series if s]
    if not series:
        return 0.0
    merged = merge_instantaneous_total(list(series))
    if not merged:
        return 0.0
    last_window_s = now - merged[-1].timestamp
    value = aggregate_timeseries(merged, AggregationFunction.MEAN,
                                 last_window_s=last_window_s if last_window_s > 0 else 1e-3)
    return value if value is not None else 0.0


def _snapshot(store: InMemoryMetricsStore, now: float, look_back_s: float
              ) -> dict[str, TimeSeries]:
    store.prune_keys_and_compact_data(now - look_back_s)
    return {str(k): list(v) for k, v in store.data.items()}


class ServeMetrics:
    def __init__(self, serve: ServeParams, replicas: Sequence[ReplicaID]) -> None:
        self._serve = serve
        self._load = InMemoryMetricsStore()
        self._custom = {r: InMemoryMetricsStore() for r in replicas}
        self._pushed_load: dict[str, TimeSeries] = {}
        self._pushed_custom: dict[ReplicaID, dict[str, TimeSeries]] = {}
        self._next_record = 0.0
        self._next_push = 0.0

    def tick(self, now: float, ongoing: float, queued: float,
             custom: Callable[[], CustomStats] | None = None) -> None:
        """Record and push when due (`custom` is only called when recording)."""
        if now + 1e-9 >= self._next_record:
            self._next_record = now + self._serve.record_interval_s
            load: dict[Hashable, float] = {RUNNING: ongoing - queued, QUEUED: queued}
            self._load.add_metrics_point(load, now)
            for replica, stats in (custom() if custom else {}).items():
                point: dict[Hashable, float] = dict(stats.items())
                self._custom[replica].add_metrics_point(point, now)
        if now + 1e-9 >= self._next_push:
            self._next_push = now + self._serve.metrics_interval_s
            look_back = self._serve.look_back_period_s
            self._pushed_load = _snapshot(self._load, now, look_back)
            self._pushed_custom = {r: _snapshot(s, now, look_back)
                                   for r, s in self._custom.items()}

    def total_num_requests(self, now: float) -> float:
        return aggregate([self._pushed_load.get(RUNNING, []),
                          self._pushed_load.get(QUEUED, [])], now)

    def total_queued_requests(self, now: float) -> float:
        return aggregate([self._pushed_load.get(QUEUED, [])], now)

    def aggregated_metrics(self, now: float, running: int) -> dict[str, dict[ReplicaID, float]]:
        """Per replica, of the (at most `running`) reporting replicas that run."""
        out: dict[str, dict[ReplicaID, float]] = {}
        for replica, metrics in list(self._pushed_custom.items())[:running]:
            for name, series in metrics.items():
                if series:
                    out.setdefault(name, {})[replica] = aggregate([series], now)
        return out
