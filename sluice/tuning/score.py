"""How a trial is scored, when its load stops early, and which trials are on the Pareto front.

A trial's score is its **goodput**: the most requests per second, over the steps of its
stepped load, that met every SLO of the model jointly (errors count as misses), as the
capacity planner measures it (`sluice.capacity.analysis`), not raw throughput. Its latency
is the TTFT p95 of that same step. The Pareto front is over (goodput up, TTFT p95 down).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sluice.capacity.analysis import StepStats


@dataclass(frozen=True)
class Score:
    goodput_rps: float
    ttft_p95_s: float
    tpot_p95_s: float
    users: int  # the step that gave the goodput
    attainment: float


def score(steps: Sequence[StepStats]) -> Score:
    """The best step by goodput (ties: the lower TTFT p95); zero when there is no step."""
    if not steps:
        return Score(0.0, float("inf"), float("inf"), 0, 0.0)
    def latency(value: float) -> float:  # a step with no answer has no percentile
        return float("inf") if math.isnan(value) else value

    best = max(steps, key=lambda s: (s.goodput_rps, -latency(s.ttft_p95_s)))
    return Score(best.goodput_rps, latency(best.ttft_p95_s), latency(best.tpot_p95_s),
                 best.users, best.attainment)


def past_the_peak(steps: Sequence[StepStats], drop: float = 0.25,
                  floor_attainment: float = 0.5) -> bool:
    """Whether more load is pointless: the last step's goodput fell more than `drop` below the
    best so far, or under `floor_attainment` of its requests met the SLOs."""
    if not steps:
        return False
    last, peak = steps[-1], max(s.goodput_rps for s in steps)
    return last.attainment < floor_attainment or last.goodput_rps < (1 - drop) * peak


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (goodput, latency) no other point beats on both: at least as
    much goodput at no more latency, strictly better on one. In order of goodput."""
    front = [i for i, (g, lat) in enumerate(points)
             if not any((g2 >= g and l2 <= lat) and (g2 > g or l2 < lat)
                        for j, (g2, l2) in enumerate(points) if j != i)]
    return sorted(front, key=lambda i: points[i][0])
