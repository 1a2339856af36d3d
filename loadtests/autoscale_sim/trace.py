"""Arrival trace: a compressed diurnal day with sudden bursts, and its Poisson arrivals.

The rate starts at the trough, rises as a raised cosine to `peak_rps` midway and falls back;
bursts (a Poisson number of them, at uniform times) multiply it by 2-3x for a minute or
three, with instant edges, because a sudden spike is what an autoscaler with a start-up delay
handles worst. Arrivals per tick are drawn once per trace, so every policy sees exactly the
same requests (common random numbers), and the same seed gives the same trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loadtests.autoscale_sim.params import TraceParams


@dataclass(frozen=True)
class Burst:
    start_s: float
    duration_s: float
    factor: float


@dataclass(frozen=True)
class Trace:
    dt_s: float
    rate_rps: np.ndarray  # expected arrival rate of each tick
    arrivals: np.ndarray  # requests arriving in each tick
    bursts: tuple[Burst, ...] = ()

    @property
    def ticks(self) -> int:
        return len(self.arrivals)

    @classmethod
    def from_rates(cls, rate_rps: np.ndarray, dt_s: float, seed: int,
                   bursts: tuple[Burst, ...] = ()) -> Trace:
        """Poisson arrivals for a given rate curve."""
        rng = np.random.default_rng([seed, 1])
        rates = np.asarray(rate_rps, dtype=float)
        return cls(dt_s, rates, rng.poisson(rates * dt_s).astype(np.int64), bursts)


def diurnal_rate(t_s: np.ndarray, params: TraceParams) -> np.ndarray:
    """Trough at both ends of the day, peak midway."""
    day_s = params.hours * 3600.0
    shape = (1.0 - np.cos(2.0 * math.pi * t_s / day_s)) / 2.0
    return params.peak_rps * (params.trough_fraction + (1 - params.trough_fraction) * shape)


def make_bursts(params: TraceParams, rng: np.random.Generator) -> tuple[Burst, ...]:
    day_s = params.hours * 3600.0
    count = int(rng.poisson(params.bursts_per_hour * params.hours))
    longest = params.burst_s[1]
    bursts = [Burst(start_s=float(rng.uniform(0.0, max(day_s - longest, 0.0))),
                    duration_s=float(rng.uniform(*params.burst_s)),
                    factor=float(rng.uniform(*params.burst_factor))) for _ in range(count)]
    return tuple(sorted(bursts, key=lambda b: b.start_s))


def burst_multiplier(t_s: np.ndarray, bursts: tuple[Burst, ...]) -> np.ndarray:
    """Each tick's factor: the largest burst covering it (1 outside bursts)."""
    out = np.ones_like(t_s)
    for b in bursts:
        inside = (t_s >= b.start_s) & (t_s < b.start_s + b.duration_s)
        out[inside] = np.maximum(out[inside], b.factor)
    return out


def make_trace(params: TraceParams) -> Trace:
    rng = np.random.default_rng([params.seed, 0])
    t_s = np.arange(0.0, params.hours * 3600.0, params.dt_s)
    bursts = make_bursts(params, rng)
    rates = diurnal_rate(t_s, params) * burst_multiplier(t_s, bursts)
    return Trace.from_rates(rates, params.dt_s, params.seed, bursts)
