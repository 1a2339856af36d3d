"""Capacity planning analysis on recorded step data; load shapes; stream timing."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

import pytest

from loadtests.shape_plans import diurnal, spike, step_ramp
from loadtests.streaming import read_stream
from loadtests.workloads import SHORT_CHAT, LogNormal, tenant_document
from sluice.capacity.analysis import (
    StepStats,
    cost_per_million_tokens,
    goodput_capacity,
    knee,
    replicas_needed,
    step_stats,
    sustainable,
    violations,
)
from sluice.schema.serving import SLO


@dataclass
class S:
    ok: bool
    ttft_s: float | None
    total_s: float
    output_tokens: int

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.total_s - self.ttft_s) / (self.output_tokens - 1)


def _step(users: int, rps: float, ttft95: float, tpot95: float = 0.01, errors: int = 0,
          requests: int = 100) -> StepStats:
    return StepStats(users, 10, requests, errors, rps, rps * 50, ttft95 / 2, ttft95, ttft95,
                     tpot95 / 2, tpot95)


# recorded: `python -m loadtests.plan --model small` on this project's 2-core CI-class machine
# (throughput req/s, p95 TTFT s, p95 TPOT s per concurrency step; BENCHMARKS.md)
RECORDED = [_step(1, 3.87, 0.042, 0.0054), _step(2, 5.00, 0.070, 0.0073),
            _step(4, 8.87, 0.099, 0.0087), _step(8, 12.33, 0.230, 0.0123),
            _step(12, 19.27, 0.275, 0.0131), _step(16, 19.73, 0.382, 0.0178),
            _step(24, 23.00, 0.379, 0.0235), _step(32, 21.80, 0.520, 0.0303)]
SLO_SMALL = SLO(ttft_p95_s=0.5, tpot_p95_s=0.05, max_error_rate=0.01)


def test_step_stats_percentiles_throughput_and_errors() -> None:
    samples = [S(True, 0.1 * (i + 1), 0.1 * (i + 1) + 0.9, 10) for i in range(10)]
    samples.append(S(False, None, 0.2, 0))
    stats = step_stats(4, 5.0, samples)
    assert stats.requests == 11 and stats.errors == 1
    assert stats.throughput_rps == pytest.approx(2.0)
    assert stats.tokens_per_s == pytest.approx(20.0)
    assert stats.ttft_p50_s == pytest.approx(0.55)
    assert stats.tpot_p95_s == pytest.approx(0.1)
    assert stats.error_rate == pytest.approx(1 / 11)


def test_slo_checks_name_what_is_missed() -> None:
    assert violations(_step(1, 5, 0.1), SLO_SMALL) == []
    missed = violations(_step(1, 5, 0.6, tpot95=0.08, errors=5), SLO_SMALL)
    assert [m.split()[0:2] for m in missed] == [["p95", "TTFT"], ["p95", "TPOT"],
                                                ["error", "rate"]]
    assert violations(_step(1, 0, math.nan, requests=0), SLO_SMALL)
    assert violations(_step(1, 1, math.nan), SLO_SMALL)  # nothing timed is not a pass


def test_sustainable_is_the_last_step_before_the_first_miss_and_knee_where_gain_stops() -> None:
    best = sustainable(RECORDED, SLO_SMALL)
    assert best is not None and best.users == 24  # 32 users: p95 TTFT 0.52 s > 0.5 s
    # a later step that passes again (noise) does not extend it
    bumpy = [*RECORDED[:4], _step(12, 22, 0.7), _step(16, 22, 0.4)]
    assert sustainable(bumpy, SLO_SMALL).users == 8  # type: ignore[union-attr]
    assert sustainable([_step(1, 1, 3.0)], SLO_SMALL) is None
    bend = knee(RECORDED)
    assert bend is not None and bend.users == 12  # 19.27 -> 19.73 is under 10% more


def test_replicas_and_cost() -> None:
    assert replicas_needed(50, 23.0, 0.2) == 3  # 50 / (23.0 * 0.8) = 2.72
    assert replicas_needed(60, 23.0, 0.2) == 4  # 3.26
    assert replicas_needed(1, 21.2, 0.0) == 1
    with pytest.raises(ValueError):
        replicas_needed(10, 0, 0.2)
    # $2/h at 1000 tok/s: 3.6M tokens an hour -> $0.556 per 1M
    assert cost_per_million_tokens(2.0, 1000) == pytest.approx(0.5556, abs=1e-4)
    assert cost_per_million_tokens(2.0, 0) == math.inf


def test_shapes_follow_their_schedules_and_end() -> None:
    assert step_ramp(0) == (1, 2.0) and step_ramp(65) == (5, 2.0) and step_ramp(181) is None
    assert spike(10)[0] == 2 and spike(35)[0] == 16 and spike(60)[0] == 2 and spike(81) is None
    trough, peak = diurnal(0)[0], diurnal(150)[0]  # type: ignore[index]
    assert trough == 1 and peak == 12 and diurnal(300) is None


def test_stream_timing_reads_ttft_gaps_and_usage() -> None:
    ticks = iter([1.5, 1.7, 2.0, 2.1])

    def chunk(content):
        return "data: " + json.dumps({"choices": [{"delta": {"content": content}}]})

    lines = [chunk("a"), "", chunk("b"), chunk("c"),
             "data: " + json.dumps({"choices": [], "usage": {"completion_tokens": 3,
                                                             "prompt_tokens": 7}}),
             "data: [DONE]"]
    result = read_stream(lines, started=1.0, clock=lambda: next(ticks))
    assert result.ok and result.text == "abc"
    assert result.ttft_s == pytest.approx(0.5)
    assert result.gaps_s == pytest.approx([0.2, 0.3])
    assert result.output_tokens == 3 and result.prompt_tokens == 7
    assert result.tpot_s == pytest.approx((1.1 - 0.5) / 2)
    error = read_stream(['data: {"error": {"message": "boom"}}', "data: [DONE]"], 0.0,
                        clock=lambda: 1.0)
    assert not error.ok and error.error == "boom"


def test_lengths_are_distributions_within_bounds() -> None:
    rng = random.Random(0)
    draws = [SHORT_CHAT.output_tokens.draw(rng) for _ in range(500)]
    assert min(draws) >= 4 and max(draws) <= 256 and len(set(draws)) > 30
    assert LogNormal(10, 0.0, 1, 100).draw(rng) == 10
    assert tenant_document(1) == tenant_document(1) != tenant_document(2)


def test_goodput_counts_requests_that_met_every_slo_jointly() -> None:
    slo = SLO(ttft_p95_s=0.5, tpot_p95_s=0.05)
    samples = [S(True, 0.2, 0.2 + 9 * 0.01, 10),   # good
               S(True, 0.6, 0.6 + 9 * 0.01, 10),   # TTFT missed
               S(True, 0.2, 0.2 + 9 * 0.08, 10),   # TPOT missed
               S(True, 0.3, 0.3, 1),               # one token: no TPOT to miss
               S(False, None, 0.1, 0)]             # an error is a miss
    stats = step_stats(2, 2.0, samples, slo)
    assert (stats.good, stats.good_tokens) == (2, 11)
    assert stats.attainment == pytest.approx(0.4) and stats.goodput_rps == pytest.approx(1.0)
    low, high = stats.attainment_interval()
    assert low < 0.4 < high and high - low > 0.5  # five requests say little
    assert step_stats(2, 2.0, samples).good == 0  # no SLO given: nothing judged
    again = StepStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again == stats and StepStats.from_dict(
        {k: v for k, v in stats.to_dict().items() if not k.startswith("good")}).good == 0


def test_goodput_capacity_is_the_last_step_whose_attainment_holds() -> None:
    def step(users: int, requests: int, good: int) -> StepStats:
        return StepStats(users, 10, requests, 0, requests / 10, requests * 5, 0.1, 0.2, 0.3,
                         0.01, 0.02, good=good, good_tokens=good * 50)

    steps = [step(1, 40, 40), step(2, 80, 80), step(4, 150, 149), step(8, 200, 180),
             step(16, 210, 205)]  # 16 recovers, but 8 already fell below: not counted
    assert goodput_capacity(steps, 0.99).users == 4
    assert goodput_capacity(steps, 0.9).users == 16
    assert goodput_capacity(steps, 1.0).users == 2
    assert goodput_capacity([step(1, 10, 5)], 0.99) is None
    with pytest.raises(ValueError):
        goodput_capacity(steps, 0)
    # $ per 1M good tokens: the same hour, fewer tokens that count
    best = goodput_capacity(steps, 0.9)
    assert cost_per_million_tokens(2.0, best.good_tokens_per_s) > cost_per_million_tokens(
        2.0, best.tokens_per_s)


def test_the_wilson_interval_is_exact_at_its_ends() -> None:
    from sluice.router.reliability import wilson_interval

    for n in (1, 3, 4, 7, 40, 391):  # 4 pairs, none agreeing, gave a low of 2.8e-17 > 0
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
        low, high = wilson_interval(n // 2, n)
        assert 0.0 <= low <= (n // 2) / n <= high <= 1.0
