"""The cluster model: replicas that start, run and drain, and the requests they serve.

A model, not a measurement. What it models:
- replicas as entities in three states, kept as cohorts of identical replicas (same state,
  same transition time): *starting* for `startup_s` after the autoscaler asks for them (no
  capacity, but they cost), *running*, and *draining* for `drain_s` after a scale-down stops
  them (no new requests, still cost). A scale-down cancels starting replicas first, newest
  first, then stops running ones, as Serve does;
- requests: Poisson arrivals per tick (the trace), one FIFO backlog, served each tick up to
  the running replicas' capacity (the measured saturation throughput at the engine's
  concurrency, `max_num_seqs`, or Serve's `max_ongoing_requests` if lower);
- routing: load spread evenly over the running replicas (least-loaded routing in the fluid
  limit), so each runs the in-flight count that carries its share of the tick's throughput
  (Little's law on the measured closed-loop steps), or its full concurrency when saturated;
- latency: a request admitted at a load gets the measured TTFT/TPOT distribution of that load
  (`LatencyModel`), its TTFT plus its wait in the backlog (fluid FIFO: arrivals spread evenly
  over their tick, the backlog served at the tick's capacity rate);
- where waiting requests sit, as Serve counts them: in a replica's engine queue (Serve counts
  them as ongoing at the replica) up to `max_ongoing_requests` per replica, at the handles
  (Serve's queued requests) past it. With Ray Serve LLM's default cap (1e9) nothing queues
  at the handles.
What it does not model: per-request service (a tick's admissions share one load level),
imbalance between replicas (power-of-two choices is not exactly least-loaded), a request
already at a replica staying there when a new replica comes up (the backlog is shared),
prompt/output length mix beyond what the measured steps average over, prefix caching,
request timeouts and retries, replica failures, node (cluster autoscaler) provisioning beyond
the fixed `startup_s`, and the quasi-static assumption that a replica reaches its steady
in-flight level within a tick (the measured requests last ~0.3-1.3 s).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass

from loadtests.autoscale_sim.latency_model import LatencyModel
from loadtests.autoscale_sim.params import FleetParams


def _parts(k: int, parts: int = 4) -> list[tuple[int, int]]:
    """(first, count) of up to `parts` near-equal consecutive parts of k requests."""
    bounds = [round(k * i / parts) for i in range(parts + 1)]
    return [(a, b - a) for a, b in itertools.pairwise(bounds) if b > a]


@dataclass(frozen=True)
class TickOutcome:
    served: int
    cohorts: tuple[tuple[float, int], ...]  # (seconds waited, requests) admitted this tick
    in_flight: float  # requests each running replica's engine runs
    ongoing: float  # Serve's total: at replicas (running and in engine queues) + at handles
    queued: float  # at the handles (past max_ongoing_requests)
    backlog: int  # not admitted yet, after this tick


class Fleet:
    def __init__(self, params: FleetParams, model: LatencyModel, initial_replicas: int) -> None:
        self._p = params
        self._model = model
        self.running = initial_replicas
        self._starting: deque[list[float]] = deque()  # [ready at, count], oldest first
        self._draining: deque[tuple[float, int]] = deque()  # (gone at, count)
        self._backlog: deque[list[float]] = deque()  # [arrived at, left, arrived], FIFO
        self._waiting = 0
        self._credit = 0.0  # unused fraction of a request of capacity, while saturated
        self.replica_seconds = 0.0
        cap = params.max_ongoing_requests or math.inf
        self.concurrency = float(min(params.max_num_seqs, cap))
        self.capacity_rps = model.throughput_rps(self.concurrency)

    @property
    def starting(self) -> int:
        return int(sum(c[1] for c in self._starting))

    @property
    def draining(self) -> int:
        return sum(c[1] for c in self._draining)

    @property
    def target(self) -> int:
        return self.running + self.starting

    @property
    def provisioned(self) -> int:
        """Replicas that cost: starting, running and draining."""
        return self.target + self.draining

    def set_target(self, now: float, target: int) -> None:
        """Start replicas (ready after startup_s) or stop them (starting ones first)."""
        current = self.target
        if target > current:
            self._starting.append([now + self._p.startup_s, target - current])
        elif target < current:
            self._stop(now, current - target)

    def _stop(self, now: float, count: int) -> None:
        while count and self._starting:
            cohort = self._starting[-1]
            k = int(min(count, cohort[1]))
            cohort[1] -= k
            count -= k
            if cohort[1] == 0:
                self._starting.pop()
        if count:
            self.running -= count
            self._draining.append((now + self._p.drain_s, count))

    def step(self, now: float, arrivals: int, dt_s: float) -> TickOutcome:
        """One tick [now, now + dt_s): lifecycle, cost, arrivals, service."""
        self._advance(now)
        self.replica_seconds += self.provisioned * dt_s
        if arrivals:
            self._backlog.append([now, arrivals, arrivals])
            self._waiting += arrivals
        return self._serve(now, dt_s)

    def _advance(self, now: float) -> None:
        while self._starting and self._starting[0][0] <= now:
            self.running += int(self._starting.popleft()[1])
        while self._draining and self._draining[0][0] <= now:
            self._draining.popleft()

    def _serve(self, now: float, dt_s: float) -> TickOutcome:
        budget = self.running * self.capacity_rps * dt_s + self._credit
        served = min(self._waiting, int(budget))
        saturated = served < self._waiting
        self._credit = budget - served if saturated else 0.0
        cohorts = self._admit(now, served, budget / dt_s, dt_s) if served else ()
        if self.running == 0:
            in_flight = 0.0
        elif saturated:
            in_flight = self.concurrency
        else:
            in_flight = self._model.in_flight_for(served / (self.running * dt_s))
        queued = self._at_handles(in_flight)
        return TickOutcome(served=served, cohorts=cohorts, in_flight=in_flight,
                           ongoing=self.running * in_flight + self._waiting, queued=queued,
                           backlog=self._waiting)

    def _admit(self, now: float, count: int, rate: float, dt_s: float
               ) -> tuple[tuple[float, int], ...]:
        """Take `count` requests off the backlog, oldest first, as (wait, count) parts.

        Fluid FIFO: a cohort's requests arrived evenly over their tick, and this tick serves
        at `rate` from `now`; a request waits from its arrival until its turn (0 when a
        replica has room on arrival). Each cohort's share is split in four so that the
        spread of waits within it survives."""
        out = []
        self._waiting -= count
        done = 0  # served before, this tick
        while count:
            cohort = self._backlog[0]
            arrived, remaining, size = cohort
            k = int(min(count, remaining))
            for first, n in _parts(k):
                mid_in_cohort = size - remaining + first + n / 2
                arrival = arrived + dt_s * mid_in_cohort / size
                turn = now + (done + first + n / 2) / rate
                out.append((max(0.0, turn - arrival), n))
            done += k
            cohort[1] -= k
            count -= k
            if cohort[1] == 0:
                self._backlog.popleft()
        return tuple(out)

    def _at_handles(self, in_flight: float) -> float:
        """Waiting requests that Serve counts as queued at the handles (no replica has
        room for them under max_ongoing_requests)."""
        cap = self._p.max_ongoing_requests
        if self.running == 0:
            return float(self._waiting)
        if cap is None:
            return 0.0
        return max(0.0, self._waiting - self.running * max(0.0, cap - in_flight))
