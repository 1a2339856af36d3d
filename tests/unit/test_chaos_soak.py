"""The soak's arithmetic: windows of outcomes, memory growth per hour, the capacity step."""

from __future__ import annotations

import pytest

from loadtests.chaos.outcomes import OK, OTHER, Observation
from loadtests.chaos.soak import capacity, memory_growth, slope_per_hour, window_stats


def _obs(i: int, sent: float, took: float, kind: str = OK, stream: bool = False,
         ttft: float = 0.0) -> Observation:
    o = Observation(i, f"r{i}", stream, sent, ended_s=sent + took)
    o.kind = kind
    o.first_chunk_s = sent + ttft if ttft else 0.0
    return o


def test_windows_count_errors_and_take_latency_percentiles_of_answers_only() -> None:
    obs = [_obs(i, i * 1.0, 0.1 * (i + 1)) for i in range(10)]  # window 0: 0-9 s
    obs += [_obs(10, 10.0, 5.0, kind=OTHER), _obs(11, 11.0, 0.2, stream=True, ttft=0.05)]
    w0, w1 = window_stats(obs, 10.0)
    assert (w0["requests"], w0["errors"], w0["error_rate"]) == (10, 0, 0.0)
    assert w0["latency_p50_s"] == pytest.approx(0.6) and w0["latency_p95_s"] == pytest.approx(1.0)
    assert w0["ttft_p50_s"] is None  # no stream in it
    # the failed request's 5 s is not a latency sample
    assert (w1["requests"], w1["errors"], w1["error_rate"]) == (2, 1, 0.5)
    assert w1["latency_p95_s"] == pytest.approx(0.2) and w1["ttft_p95_s"] == pytest.approx(0.05)


def test_slope_is_per_hour_and_needs_three_points() -> None:
    assert slope_per_hour([(0, 100.0), (1800, 110.0), (3600, 120.0)]) == pytest.approx(20.0)
    assert slope_per_hour([(0, 1.0), (60, 2.0)]) is None
    assert slope_per_hour([(5, 1.0), (5, 2.0), (5, 3.0)]) is None


def test_memory_growth_leaves_the_warm_up_out_of_the_slope() -> None:
    samples = [{"t_s": t, "rss_mb": {"ingress-0": mb, "redis-server": 10.0}}
               for t, mb in [(0, 100.0), (300, 400.0), (600, 400.0), (900, 400.0),
                             (1200, 400.0)]]
    g = memory_growth(samples, warmup_s=300)
    assert g["ingress-0"] == {"first_mb": 100.0, "last_mb": 400.0, "peak_mb": 400.0,
                              "mb_per_hour": pytest.approx(0.0)}
    assert g["redis-server"]["mb_per_hour"] == pytest.approx(0.0)
    assert memory_growth(samples, warmup_s=0)["ingress-0"]["mb_per_hour"] > 0


def test_capacity_is_the_highest_step_that_met_the_slo_and_was_delivered() -> None:
    steps = [{"rate": 2, "errors": 0, "latency_p95_s": 0.5, "delivered_rps": 2.0},
             {"rate": 4, "errors": 0, "latency_p95_s": 0.9, "delivered_rps": 3.9},
             {"rate": 6, "errors": 0, "latency_p95_s": 1.5, "delivered_rps": 4.8},  # behind
             {"rate": 8, "errors": 1, "latency_p95_s": 1.0, "delivered_rps": 8.0}]
    assert capacity(steps, latency_slo_s=2.0) == 4
    assert capacity(steps[:1], latency_slo_s=0.4) is None
