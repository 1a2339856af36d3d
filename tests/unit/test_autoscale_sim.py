"""The autoscaling simulation: Ray's policy wiring, the fleet model, the trace, end to end on
small hand-sized cases."""

from __future__ import annotations

import math
from typing import Any
from unittest import mock

import numpy as np
import pytest
from ray.serve.autoscaling_policy import (
    _apply_autoscaling_config,
    replica_queue_length_autoscaling_policy,
)

from loadtests.autoscale_sim.fleet import Fleet
from loadtests.autoscale_sim.latency_model import LatencyModel
from loadtests.autoscale_sim.params import (
    FleetParams,
    LatencyProfile,
    ServeParams,
    SimParams,
    TraceParams,
    sustainable_step,
)
from loadtests.autoscale_sim.policies import (
    ControllerView,
    make_context,
    ray_stock,
    replica_ids,
    serve_decision,
    sluice_slo,
)
from loadtests.autoscale_sim.serve_metrics import ServeMetrics
from loadtests.autoscale_sim.sim import Simulation
from loadtests.autoscale_sim.trace import Trace, make_trace
from sluice.autoscaling.serve_policy import SLOPolicy
from sluice.schema.serving import SLO, AutoscalingSettings

SLO_ = SLO(ttft_p95_s=0.5, tpot_p95_s=0.05)
MODEL = LatencyModel(LatencyProfile())


def view(now: float, running: int, target: int, total: float, **kw) -> ControllerView:
    base: dict[str, Any] = {"now": now, "running": running, "target": target, "min_replicas": 1,
            "max_replicas": 50, "last_scale_up": None, "last_scale_down": None,
            "total_num_requests": total, "total_queued_requests": 0.0,
            "aggregated_metrics": {}}
    return ControllerView(**{**base, **kw})


def test_stock_adapter_returns_rays_desired_count_after_rays_upscale_delay() -> None:
    policy = ray_stock(2.0, 1, 50)
    ctx = make_context(view(0.0, 4, 4, 16.0), policy.config, {}, replica_ids(50))
    desired, _ = replica_queue_length_autoscaling_policy(ctx)
    assert desired == 8  # 16 ongoing / 2 per replica
    decisions = {t: policy(view(float(t), 4, 4, 16.0)) for t in range(31)}
    assert {decisions[t] for t in range(30)} == {4}  # upscale_delay_s = 30
    assert decisions[30] == 8


@pytest.mark.parametrize("make_policy", [
    lambda: replica_queue_length_autoscaling_policy,
    lambda: SLOPolicy(slo=SLO_.model_dump()),
])
def test_serve_decision_is_rays_own_wrapper_on_the_sim_clock(make_policy) -> None:
    """The adapter's composition equals `_apply_autoscaling_config` with time.time() = now."""
    stock = ray_stock(2.0, 1, 50)
    ours, theirs = make_policy(), make_policy()
    state_ours: dict = {}
    state_theirs: dict = {}
    wrapped = _apply_autoscaling_config(theirs)
    target, seen = 4, set()
    for t in range(0, 1000, 5):
        total = 40.0 if t < 300 else 1.0  # wants up, then wants down
        v = view(1000.0 + t, target, target, total,  # replicas start at once here
                 aggregated_metrics={"ttft_p95_s": {replica_ids(1)[0]: 0.9 if t < 300 else 0.1},
                                     "tpot_p95_s": {replica_ids(1)[0]: 0.01}})
        ids = replica_ids(50)
        got, state_ours = serve_decision(ours, make_context(v, stock.config, state_ours, ids),
                                         v.now)
        with mock.patch("time.time", return_value=v.now):
            want, state_theirs = wrapped(make_context(v, stock.config, state_theirs, ids))
        assert got == max(1, min(50, math.ceil(want)))
        target = got
        seen.add(got)
    assert len(seen) >= 3  # went up and came down: the delays were exercised


def run(policy, rates: np.ndarray, initial: int = 1, startup_s: float = 60.0):
    params = SimParams(fleet=FleetParams(startup_s=startup_s, max_replicas=50), slo=SLO_,
                       serve=ServeParams(reporting_replicas=2), samples_per_tick=8)
    trace = Trace.from_rates(rates, 1.0, seed=3)
    return Simulation(policy, trace, params, initial).run()


def policies():
    return [ray_stock(2.0, 1, 50), sluice_slo(SLO_, AutoscalingSettings(), 1, 50)]


def test_light_constant_load_stays_at_min_replicas_within_slo() -> None:
    for policy in policies():
        rec = run(policy, np.full(800, 1.0))  # ~0.26 in flight on one replica
        assert set(rec.series["target"]) == {1.0}, policy.name
        assert rec.series["met"].sum() / rec.trace.arrivals.sum() > 0.99


def first_scale_up(rec) -> float:
    return float(np.argmax(rec.series["target"] > 1))


def test_step_up_scales_both_and_sluice_no_later_than_stock() -> None:
    rates = np.concatenate([np.full(100, 5.0), np.full(200, 60.0)])
    ray_rec, sluice_rec = (run(p, rates) for p in policies())
    assert ray_rec.series["target"][-1] > 1 and sluice_rec.series["target"][-1] > 1
    assert first_scale_up(ray_rec) >= 100 + 30  # the upscale delay counts
    assert 100 <= first_scale_up(sluice_rec) <= first_scale_up(ray_rec)
    assert sluice_rec.series["queued"].max() == 0  # no handle queue: the latency reports did it


def test_no_capacity_before_startup() -> None:
    fleet = Fleet(FleetParams(startup_s=60.0), MODEL, initial_replicas=1)
    fleet.set_target(0.0, 3)
    outcomes, running = [], []
    for t in range(70):
        outcomes.append(fleet.step(float(t), 200, 1.0))
        running.append(fleet.running)
    assert set(running[:60]) == {1} and running[60] == 3
    assert max(o.served for o in outcomes[:60]) <= math.ceil(fleet.capacity_rps)
    assert outcomes[60].served > 2 * fleet.capacity_rps
    empty = Fleet(FleetParams(startup_s=60.0), MODEL, initial_replicas=0)
    empty.set_target(0.0, 1)
    served = [empty.step(float(t), 5, 1.0).served for t in range(61)]
    assert sum(served[:60]) == 0 and served[60] > 0


def test_replica_hours_integral_counts_starting_running_and_draining() -> None:
    fleet = Fleet(FleetParams(startup_s=60.0, drain_s=4.0), MODEL, initial_replicas=2)
    for t in range(100):
        fleet.step(float(t), 0, 1.0)
    fleet.set_target(100.0, 5)  # 3 starting for 60 s, then running
    for t in range(100, 200):
        fleet.step(float(t), 0, 1.0)
    fleet.set_target(200.0, 1)  # 4 draining for 4 s
    for t in range(200, 210):
        fleet.step(float(t), 0, 1.0)
    assert fleet.replica_seconds == pytest.approx(2 * 100 + 5 * 100 + 5 * 4 + 1 * 6)


def test_scale_down_cancels_starting_replicas_first() -> None:
    fleet = Fleet(FleetParams(startup_s=60.0), MODEL, initial_replicas=2)
    fleet.set_target(0.0, 6)
    fleet.set_target(1.0, 3)
    assert (fleet.running, fleet.starting, fleet.draining) == (2, 1, 0)


def test_trace_is_deterministic_for_a_seed() -> None:
    p = TraceParams(hours=0.5, peak_rps=100.0, bursts_per_hour=6.0, seed=7)
    a, b = make_trace(p), make_trace(p)
    assert np.array_equal(a.arrivals, b.arrivals) and a.bursts == b.bursts
    assert not np.array_equal(a.arrivals, make_trace(p.model_copy(update={"seed": 8})).arrivals)
    assert a.rate_rps.min() >= 15.0 - 1e-9 and a.rate_rps.max() <= 100.0 * 3


def test_latency_model_reproduces_the_measured_steps() -> None:
    profile = LatencyProfile()
    assert MODEL.in_flight_for(MODEL.throughput_rps(8)) == pytest.approx(8)
    assert MODEL.ttft(24).cdf(profile.ttft_p95_s[6]) == pytest.approx(0.95, abs=1e-6)
    assert MODEL.tpot(4).cdf(profile.tpot_p50_s[2]) == pytest.approx(0.5, abs=1e-6)
    assert sustainable_step(profile, SLO_) == (24, 23.0)


def test_controller_sees_recorded_points_only_once_pushed() -> None:
    """Points every 6 s, pushed every 10 s, averaged over 30 s (Serve's defaults)."""
    metrics = ServeMetrics(ServeParams(), [])
    for t in range(30):
        metrics.tick(float(t), 10.0, 0.0)
    assert metrics.total_num_requests(29.5) == pytest.approx(10.0)
    metrics.tick(30.0, 20.0, 0.0)  # recorded and pushed at 30 s
    assert 10.0 < metrics.total_num_requests(32.0) < 20.0
    for t in range(31, 36):
        metrics.tick(float(t), 1000.0, 0.0)  # next point at 36 s, next push at 40 s
    assert metrics.total_num_requests(35.0) < 20.0
