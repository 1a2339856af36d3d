"""Statistical gates: is the canary worse than the variant it would replace?

Each gate answers `breach` (the canary is worse than allowed, with the stated confidence:
roll back), `pass` (it is not, with that confidence: it may advance) or `wait` (not enough
evidence either way: hold the step). A handful of requests never decides anything: below
`min_requests` a gate waits, and with few requests its intervals are wide, so it waits
longer.

- **Error rate**: Newcombe's hybrid score interval (method 10, from two Wilson intervals)
  for the canary's error rate minus the baseline's. Breach when its lower end is above the
  allowed margin; pass when its upper end is at or below it.
- **Agreement** (quality, opt-in): on a sample of the canary's requests the baseline is
  asked the same in the background, and the answers compared as the shadow compares
  them; a Wilson interval on the agreement rate against `min_agreement`.
- **Latency** (p95 TTFT or TPOT by default): an exceedance test, which needs no assumption
  about the latency distribution. Let q be the baseline's quantile (its 95th percentile);
  if the canary's own quantile were at most `max_ratio` x q, at most 5% of its requests
  would be slower than `max_ratio` x q. The gate counts those that are and puts a Wilson
  interval on their share: breach when its lower end is above 5%, pass when its upper end
  is below it. The baseline's quantile is taken as known (the baseline carries the other
  95-50% of the traffic, so it has many more samples than the canary).

Every evaluation is a look at accumulating data, and repeated looks raise the chance of a
false breach above the per-look level; `loadtests/canary_power.py` measures both the false
rollback rate of this procedure and the requests it needs to catch a given regression.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

from sluice.router.reliability import wilson_interval

Verdict = Literal["pass", "breach", "wait"]


@dataclass(frozen=True)
class GateResult:
    gate: str
    verdict: Verdict
    canary: float | None  # the canary's measurement (error rate, or its quantile in s)
    baseline: float | None  # the baseline's
    detail: str  # the interval and the bound, for the rollback reason and the status

    def as_dict(self) -> dict[str, object]:
        return {"gate": self.gate, "verdict": self.verdict, "canary": self.canary,
                "baseline": self.baseline, "detail": self.detail}


def z_for(confidence: float) -> float:
    """The two-sided normal quantile for a confidence level (0.95 -> 1.96)."""
    if not 0.5 < confidence < 1:
        raise ValueError("confidence must be in (0.5, 1)")
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def difference_interval(x1: int, n1: int, x2: int, n2: int, z: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p2."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, z)
    l2, u2 = wilson_interval(x2, n2, z)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def error_gate(canary_errors: int, canary_n: int, baseline_errors: int, baseline_n: int,
               margin: float, confidence: float, min_requests: int) -> GateResult:
    """Breach when the canary's error rate is above the baseline's by more than `margin`
    (absolute, e.g. 0.01 = one point), with `confidence`."""
    if canary_n < min_requests or baseline_n < min_requests:
        return GateResult("error_rate", "wait", _rate(canary_errors, canary_n),
                          _rate(baseline_errors, baseline_n),
                          f"{canary_n} canary / {baseline_n} baseline requests, "
                          f"{min_requests} needed")
    lo, hi = difference_interval(canary_errors, canary_n, baseline_errors, baseline_n,
                                 z_for(confidence))
    c, b = canary_errors / canary_n, baseline_errors / baseline_n
    detail = (f"canary {c:.2%} of {canary_n} vs baseline {b:.2%} of {baseline_n}: "
              f"difference in [{lo:+.2%}, {hi:+.2%}] at {confidence:.0%}, allowed "
              f"+{margin:.2%}")
    verdict: Verdict = "breach" if lo > margin else "pass" if hi <= margin else "wait"
    return GateResult("error_rate", verdict, c, b, detail)


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def latency_gate(name: str, canary: Sequence[float], baseline: Sequence[float], q: float,
                 max_ratio: float, confidence: float, min_requests: int) -> GateResult:
    """Breach when the canary's q-quantile is above `max_ratio` x the baseline's, with
    `confidence` (the exceedance test in the module's docstring)."""
    if len(canary) < min_requests or len(baseline) < min_requests:
        return GateResult(name, "wait", None, None,
                          f"{len(canary)} canary / {len(baseline)} baseline samples, "
                          f"{min_requests} needed")
    qb = quantile(baseline, q)
    bound = max_ratio * qb
    over = sum(1 for v in canary if v > bound)
    lo, hi = wilson_interval(over, len(canary), z_for(confidence))
    allowed = 1 - q
    qc = quantile(canary, q)
    detail = (f"canary p{q * 100:g} {qc * 1000:.0f} ms vs baseline {qb * 1000:.0f} ms; "
              f"{over} of {len(canary)} canary requests over {max_ratio:g}x "
              f"({bound * 1000:.0f} ms): share in [{lo:.2%}, {hi:.2%}] at {confidence:.0%}, "
              f"allowed {allowed:.0%}")
    verdict: Verdict = "breach" if lo > allowed else "pass" if hi < allowed else "wait"
    return GateResult(name, verdict, qc, qb, detail)


def agreement_gate(agreed: int, pairs: int, min_agreement: float, confidence: float,
                   min_pairs: int) -> GateResult:
    """Quality: on requests the canary answered, the baseline was asked the same in the
    background (`quality_sample` of them) and the two answers compared (the shadow's
    agreement). Breach when the Wilson interval of the agreement rate lies below
    `min_agreement`; pass when it lies at or above it."""
    if pairs < min_pairs:
        return GateResult("agreement", "wait", _rate(agreed, pairs), None,
                          f"{pairs} compared pairs, {min_pairs} needed")
    lo, hi = wilson_interval(agreed, pairs, z_for(confidence))
    rate = agreed / pairs
    detail = (f"the canary agreed with the baseline on {agreed} of {pairs} requests "
              f"({rate:.1%}, in [{lo:.1%}, {hi:.1%}] at {confidence:.0%}), at least "
              f"{min_agreement:.0%} required")
    verdict: Verdict = "breach" if hi < min_agreement else "pass" if lo >= min_agreement \
        else "wait"
    return GateResult("agreement", verdict, rate, min_agreement, detail)


def _rate(x: int, n: int) -> float | None:
    return x / n if n else None
