"""Capacity analysis of a stepped load test: per-step statistics, SLO checks, goodput, the
knee, the sustainable load, replicas for a target and cost per million tokens. Pure
functions.

Goodput (DistServe's; vLLM's `bench serve --goodput` counts the same): the requests per
second that met every objective of the model *jointly* (their own TTFT and TPOT within the
catalog's bounds; an error is a miss). A replica's goodput capacity is the highest step at
which at least a stated share of requests (the attainment, e.g. 99%) did so; the attainment
is reported with its Wilson interval, since a 20-second step holds only tens of requests."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from sluice.router.reliability import wilson_interval
from sluice.schema.serving import SLO


class Sample(Protocol):
    ok: bool
    ttft_s: float | None
    total_s: float
    output_tokens: int

    @property
    def tpot_s(self) -> float | None: ...


@dataclass(frozen=True)
class StepStats:
    users: int
    duration_s: float
    requests: int
    errors: int
    throughput_rps: float
    tokens_per_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    ttft_p99_s: float
    tpot_p50_s: float
    tpot_p95_s: float
    good: int = 0  # requests that met every SLO jointly (step_stats with an SLO)
    good_tokens: int = 0  # their output tokens

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 1.0

    @property
    def attainment(self) -> float:
        """The share of requests that met every SLO (errors count as misses)."""
        return self.good / self.requests if self.requests else 0.0

    def attainment_interval(self, z: float = 1.96) -> tuple[float, float]:
        return wilson_interval(self.good, self.requests, z)

    @property
    def goodput_rps(self) -> float:
        return self.good / self.duration_s

    @property
    def good_tokens_per_s(self) -> float:
        return self.good_tokens / self.duration_s

    def to_dict(self) -> dict[str, Any]:
        low, high = self.attainment_interval()
        return {**asdict(self), "error_rate": self.error_rate, "attainment": self.attainment,
                "attainment_ci95": [low, high], "goodput_rps": self.goodput_rps,
                "good_tokens_per_s": self.good_tokens_per_s}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> StepStats:
        """From `to_dict` (the derived values dropped; an older plan has no goodput)."""
        return cls(**{k: v for k, v in row.items() if k in cls.__dataclass_fields__})


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def meets(sample: Sample, slo: SLO) -> bool:
    """One request met every objective: answered, its TTFT and its TPOT within the bounds
    (a one-token answer has no TPOT to miss)."""
    if not sample.ok or sample.ttft_s is None or sample.ttft_s > slo.ttft_p95_s:
        return False
    tpot = sample.tpot_s
    return tpot is None or tpot <= slo.tpot_p95_s


def step_stats(users: int, duration_s: float, samples: Sequence[Sample],
               slo: SLO | None = None) -> StepStats:
    """Statistics of the requests completed within one step of `duration_s` seconds (with
    an SLO, also how many met it jointly)."""
    ok = [s for s in samples if s.ok]
    ttft = [s.ttft_s for s in ok if s.ttft_s is not None]
    tpot = [t for t in (s.tpot_s for s in ok) if t is not None]
    good = [s for s in samples if meets(s, slo)] if slo is not None else []
    return StepStats(
        users=users, duration_s=duration_s, requests=len(samples),
        errors=len(samples) - len(ok),
        throughput_rps=len(ok) / duration_s,
        tokens_per_s=sum(s.output_tokens for s in ok) / duration_s,
        ttft_p50_s=_pct(ttft, 50), ttft_p95_s=_pct(ttft, 95), ttft_p99_s=_pct(ttft, 99),
        tpot_p50_s=_pct(tpot, 50), tpot_p95_s=_pct(tpot, 95),
        good=len(good), good_tokens=sum(s.output_tokens for s in good))


def violations(step: StepStats, slo: SLO) -> list[str]:
    """Which objectives a step misses (NaN latencies, i.e. nothing completed, miss)."""
    out = []
    if step.requests == 0:
        return ["no requests completed"]
    if not step.ttft_p95_s <= slo.ttft_p95_s:
        out.append(f"p95 TTFT {step.ttft_p95_s:.3f} s > {slo.ttft_p95_s} s")
    if not step.tpot_p95_s <= slo.tpot_p95_s:
        out.append(f"p95 TPOT {step.tpot_p95_s * 1000:.1f} ms > {slo.tpot_p95_s * 1000:.0f} ms")
    if step.error_rate > slo.max_error_rate:
        out.append(f"error rate {step.error_rate:.1%} > {slo.max_error_rate:.1%}")
    return out


def sustainable(steps: Sequence[StepStats], slo: SLO) -> StepStats | None:
    """The highest step before the first one that misses an SLO (steps in load order)."""
    best = None
    for step in steps:
        if violations(step, slo):
            break
        best = step
    return best


def goodput_capacity(steps: Sequence[StepStats], share: float = 0.99) -> StepStats | None:
    """The highest step before the first whose attainment falls below `share` (steps in
    load order): the load one replica carries with that share of requests meeting every
    SLO. None when the first step already misses."""
    if not 0 < share <= 1:
        raise ValueError("share must be in (0, 1]")
    best = None
    for step in steps:
        if step.requests == 0 or step.attainment < share:
            break
        best = step
    return best


def knee(steps: Sequence[StepStats], min_gain: float = 0.1) -> StepStats | None:
    """The last step whose throughput still grew by at least `min_gain` over the previous
    one: more load past it mostly adds queueing."""
    if not steps:
        return None
    found = steps[0]
    for prev, step in itertools.pairwise(steps):
        if step.throughput_rps < prev.throughput_rps * (1 + min_gain):
            break
        found = step
    return found


def replicas_needed(target_rps: float, per_replica_rps: float, headroom: float) -> int:
    """Replicas for a target load, each run at most (1 - headroom) of its sustainable load."""
    if per_replica_rps <= 0:
        raise ValueError("per-replica throughput must be positive")
    if not 0 <= headroom < 1:
        raise ValueError("headroom must be in [0, 1)")
    return max(1, math.ceil(target_rps / (per_replica_rps * (1 - headroom))))


def cost_per_million_tokens(hourly_usd: float, tokens_per_s: float) -> float:
    """Hourly rate × time ÷ tokens: what a million output tokens cost on one replica."""
    return hourly_usd / (tokens_per_s * 3600) * 1e6 if tokens_per_s > 0 else math.inf
