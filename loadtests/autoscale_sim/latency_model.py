"""One replica's latency and throughput as a function of the requests it runs concurrently.

Built from the measured steps of a capacity plan (`LatencyProfile`), because that is the only
evidence of how a replica degrades with load:
- throughput: piecewise-linear between the steps (0 at 0 in flight), made non-decreasing (the
  measured dip from 23.0 req/s at 24 to 21.8 at 32 is within the noise of a 15 s step), flat
  past the last step (a replica's throughput saturates);
- TTFT and TPOT of a request: log-normal, its median and p95 interpolated piecewise-linearly
  between the steps' p50 and p95, held at the first step below it, extrapolated linearly from
  the last two steps beyond it. TTFT and TPOT are drawn independently given the load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from loadtests.autoscale_sim.params import LatencyProfile

Z95 = 1.6448536269514722  # standard normal quantile of 0.95


def interpolate(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """Piecewise-linear in the steps; the first value below them, linear from the last two
    above them (never below 1% of the last value)."""
    if x <= xs[-1]:
        return float(np.interp(x, xs, ys))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return float(max(ys[-1] * 0.01, ys[-1] + slope * (x - xs[-1])))


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@dataclass(frozen=True)
class LogNormal:
    """A log-normal given by its median and p95."""

    median: float
    p95: float

    @property
    def sigma(self) -> float:
        return max(math.log(self.p95 / self.median), 1e-9) / Z95

    def cdf(self, x: float) -> float:
        if x <= 0:
            return 0.0
        return _normal_cdf(math.log(x / self.median) / self.sigma)

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self.median * np.exp(self.sigma * rng.standard_normal(size))


@dataclass(frozen=True)
class LatencyModel:
    profile: LatencyProfile
    _arrays: dict[str, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        p = self.profile
        xs = np.asarray(p.in_flight, dtype=float)
        envelope = np.maximum.accumulate(np.asarray(p.throughput_rps, dtype=float))
        rate_xs, rate_ys = np.concatenate([[0.0], xs]), np.concatenate([[0.0], envelope])
        rising = np.concatenate([[True], np.diff(rate_ys) > 0])
        object.__setattr__(self, "_arrays", {
            "xs": xs, "rate_xs": rate_xs, "rate_ys": rate_ys,
            "inv_xs": rate_xs[rising], "inv_ys": rate_ys[rising],
            **{name: np.asarray(getattr(p, name), dtype=float) for name in
               ("ttft_p50_s", "ttft_p95_s", "tpot_p50_s", "tpot_p95_s")}})

    def throughput_rps(self, in_flight: float) -> float:
        """Completions per second of a replica running `in_flight` requests."""
        a = self._arrays
        return float(np.interp(in_flight, a["rate_xs"], a["rate_ys"]))

    def in_flight_for(self, rate_rps: float) -> float:
        """Fewest requests in flight that carry `rate_rps` (Little's law on the measured
        closed-loop steps); the saturation point for a rate at or past the maximum."""
        a = self._arrays
        return float(np.interp(rate_rps, a["inv_ys"], a["inv_xs"]))

    def ttft(self, in_flight: float) -> LogNormal:
        return self._lognormal(in_flight, "ttft")

    def tpot(self, in_flight: float) -> LogNormal:
        return self._lognormal(in_flight, "tpot")

    def _lognormal(self, n: float, which: str) -> LogNormal:
        a = self._arrays
        median = interpolate(n, a["xs"], a[f"{which}_p50_s"])
        high = interpolate(n, a["xs"], a[f"{which}_p95_s"])
        return LogNormal(median, max(high, median * (1 + 1e-6)))

    def p_within(self, in_flight: float, ttft_budget_s: float, tpot_slo_s: float) -> float:
        """Probability a request admitted at this load meets both objectives, its TTFT
        budget being the SLO less the time it already waited."""
        return self.ttft(in_flight).cdf(ttft_budget_s) * self.tpot(in_flight).cdf(tpot_slo_s)

    def draw(self, rng: np.random.Generator, in_flight: float,
             waits_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TTFT (wait included) and TPOT of requests admitted at this load."""
        size = len(waits_s)
        ttft = waits_s + self.ttft(in_flight).draw(rng, size)
        return ttft, self.tpot(in_flight).draw(rng, size)
