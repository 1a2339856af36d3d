"""One run: a trace through the fleet under one autoscaler, tick by tick.

Per tick: the fleet serves the tick's arrivals (`Fleet.step`); the outcome is recorded
(expected number of requests within both objectives, computed exactly from the latency model,
and a fixed number of sampled requests, weighted, for the percentiles); the representative
replicas' `LatencyWindow`s (Sluice's real class, on the sim clock) get their share of the
tick's requests one by one when the policy reads them; Serve's metric pipeline records and
pushes when due; and every control period the policy decides, and the fleet follows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from loadtests.autoscale_sim.fleet import Fleet, TickOutcome
from loadtests.autoscale_sim.latency_model import LatencyModel
from loadtests.autoscale_sim.params import SimParams
from loadtests.autoscale_sim.policies import ControllerView, ServePolicy, replica_ids
from loadtests.autoscale_sim.serve_metrics import CustomStats, ServeMetrics
from loadtests.autoscale_sim.trace import Trace
from sluice.autoscaling.latency import LatencyWindow

SERIES = ("served", "met", "running", "starting", "draining", "target", "ongoing", "queued",
          "backlog", "in_flight")


@dataclass
class SimClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class RunRecord:
    """Everything a run produced, per tick."""

    name: str
    trace: Trace
    series: dict[str, np.ndarray]
    ttft: np.ndarray  # (ticks, samples): sampled requests' TTFT (wait included)
    tpot: np.ndarray
    weight: np.ndarray  # (ticks,): requests each sample of the tick stands for
    replica_seconds: float = 0.0
    scale_ups: int = 0
    scale_downs: int = 0
    unserved: int = 0


@dataclass
class Simulation:
    policy: ServePolicy
    trace: Trace
    params: SimParams
    initial_replicas: int
    clock: SimClock = field(default_factory=SimClock)

    def __post_init__(self) -> None:
        p = self.params
        self.model = LatencyModel(p.profile)
        self.fleet = Fleet(p.fleet, self.model, self.initial_replicas)
        self.rng = np.random.default_rng([p.seed, 2])
        reporters = replica_ids(p.serve.reporting_replicas) if self.policy.reads_latency else []
        self.windows = {r: LatencyWindow(p.serve.latency_window_s, clock=self.clock)
                        for r in reporters}
        self.metrics = ServeMetrics(p.serve, reporters)
        self.last_up: float | None = None
        self.last_down: float | None = None
        n, k = self.trace.ticks, p.samples_per_tick
        self.record = RunRecord(self.policy.name, self.trace,
                                {s: np.zeros(n) for s in SERIES}, np.zeros((n, k)),
                                np.zeros((n, k)), np.zeros(n))

    def run(self, progress: Callable[[str], None] | None = None) -> RunRecord:
        dt = self.trace.dt_s
        every = max(1, round(3600 / dt))
        period = max(1, round(self.params.serve.control_period_s / dt))
        for i in range(self.trace.ticks):
            self.clock.now = i * dt
            out = self.fleet.step(self.clock.now, int(self.trace.arrivals[i]), dt)
            self.clock.now = (i + 1) * dt  # the tick is over
            self._observe(i, out)
            if self.windows:
                self._report_latency(out)
            self.metrics.tick(self.clock.now, out.ongoing, out.queued, self._stats)
            if (i + 1) % period == 0:
                self._control()
            if progress and (i + 1) % every == 0:
                progress(self._progress_line(i))
        self.record.replica_seconds = self.fleet.replica_seconds
        self.record.unserved = int(self.record.series["backlog"][-1])
        return self.record

    def _observe(self, i: int, out: TickOutcome) -> None:
        s, f, slo = self.record.series, self.fleet, self.params.slo
        s["served"][i], s["in_flight"][i] = out.served, out.in_flight
        s["met"][i] = sum(k * self.model.p_within(out.in_flight, slo.ttft_p95_s - wait,
                                                  slo.tpot_p95_s) for wait, k in out.cohorts)
        s["ongoing"][i], s["queued"][i], s["backlog"][i] = out.ongoing, out.queued, out.backlog
        s["running"][i], s["starting"][i], s["draining"][i] = f.running, f.starting, f.draining
        s["target"][i] = f.target
        if out.served:
            k = self.params.samples_per_tick
            ttft, tpot = self.model.draw(self.rng, out.in_flight, self._waits(out, k))
            self.record.ttft[i], self.record.tpot[i] = ttft, tpot
            self.record.weight[i] = out.served / k

    def _waits(self, out: TickOutcome, size: int) -> np.ndarray:
        """Waits of `size` requests drawn from the tick's admitted cohorts."""
        if len(out.cohorts) == 1:
            return np.full(size, out.cohorts[0][0])
        waits = np.array([w for w, _ in out.cohorts])
        counts = np.array([k for _, k in out.cohorts], dtype=float)
        return self.rng.choice(waits, size=size, p=counts / counts.sum())

    def _report_latency(self, out: TickOutcome) -> None:
        """Each representative replica records its share of the tick's requests."""
        if not out.served or not self.fleet.running:
            return
        per_replica = out.served / self.fleet.running
        for window in list(self.windows.values())[:self.fleet.running]:
            count = int(self.rng.poisson(per_replica))
            if count:
                ttft, tpot = self.model.draw(self.rng, out.in_flight, self._waits(out, count))
                for a, b in zip(ttft.tolist(), tpot.tolist()):
                    window.record(a, b)

    def _stats(self) -> CustomStats:
        running = list(self.windows.items())[:self.fleet.running]
        return {r: w.stats() for r, w in running}

    def _control(self) -> None:
        now, f, fp = self.clock.now, self.fleet, self.params.fleet
        view = ControllerView(
            now=now, running=f.running, target=f.target, min_replicas=fp.min_replicas,
            max_replicas=fp.max_replicas, last_scale_up=self.last_up,
            last_scale_down=self.last_down,
            total_num_requests=self.metrics.total_num_requests(now),
            total_queued_requests=self.metrics.total_queued_requests(now),
            aggregated_metrics=self.metrics.aggregated_metrics(now, f.running))
        decision = self.policy(view)
        if decision == f.target:
            return
        up = decision > f.target
        f.set_target(now, decision)
        self.record.scale_ups += up
        self.record.scale_downs += not up
        # Serve records the time only with the running count within bounds
        if fp.min_replicas <= f.running <= fp.max_replicas:
            self.last_up, self.last_down = (now, self.last_down) if up else (self.last_up, now)

    def _progress_line(self, i: int) -> str:
        s = self.record.series
        served = s["served"][: i + 1].sum()
        share = s["met"][: i + 1].sum() / served if served else math.nan
        return (f"  {self.policy.name}: {(i + 1) * self.trace.dt_s / 3600:.1f} h, "
                f"{int(s['running'][i])} running + {int(s['starting'][i])} starting, "
                f"attainment so far {share:.2%}")
