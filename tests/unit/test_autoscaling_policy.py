"""The SLO autoscaling decision on hand-built observations."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sluice.autoscaling.policy import Observation, decide
from sluice.schema.serving import SLO, AutoscalingSettings

SLO_ = SLO(ttft_p95_s=2.0, tpot_p95_s=0.1)
SETTINGS = AutoscalingSettings(target_ongoing_per_replica=8, upscale_cooldown_s=10,
                               downscale_cooldown_s=120)
BASE = Observation(now=1000.0, replicas=2, min_replicas=1, max_replicas=6, ongoing=10,
                   queued=0, ttft_p95_s=0.8, tpot_p95_s=0.04, metrics_age_s=5,
                   last_scale_up=None, last_scale_down=None, idle_since=None)


def d(**changes):
    return decide(replace(BASE, **changes), SLO_, SETTINGS)


def test_within_slo_and_load_holds() -> None:
    assert d().replicas == 2 and d().reason == "hold"


@pytest.mark.parametrize("change, reason", [
    ({"ttft_p95_s": 2.5}, "up: ttft"),
    ({"tpot_p95_s": 0.2}, "up: tpot"),
    ({"queued": 5}, "up: queue"),
])
def test_breach_scales_up_at_least_one(change, reason) -> None:
    out = d(**change)
    assert out.replicas == 3 and out.reason == reason


def test_scale_up_goes_to_what_load_needs_but_at_most_doubles_and_stays_bounded() -> None:
    assert d(ttft_p95_s=3.0, ongoing=30).replicas == 4  # needs 4 (30/8), double of 2 is 4
    assert d(ttft_p95_s=3.0, ongoing=200).replicas == 4  # needs 25: capped at doubling
    assert d(ttft_p95_s=3.0, ongoing=200, replicas=5).replicas == 6  # max_replicas


def test_load_above_target_scales_up_before_any_breach() -> None:
    out = d(ongoing=30)  # 2 replicas x 8 carry 16; within SLO so far
    assert out.replicas == 4 and out.reason == "up: load"
    assert d(ongoing=100).replicas == 4  # at most doubling
    assert d(ongoing=30, last_scale_up=995.0).replicas == 2  # cooldown


def test_up_cooldown_holds_a_fresh_breach() -> None:
    out = d(ttft_p95_s=3.0, last_scale_up=995.0)
    assert out.replicas == 2 and "cooldown" in out.reason


def test_a_breach_while_replicas_start_waits_for_them_unless_load_needs_more() -> None:
    # target 4, two running: the breach is the capacity not having arrived yet
    starting = {"replicas": 4, "running": 2, "ttft_p95_s": 3.0}
    held = d(**starting, ongoing=20)  # 20 in flight needs 3 (of 8 each): the 4 will do
    assert held.replicas == 4 and "starting" in held.reason
    more = d(**starting, ongoing=50)  # needs 7: the load outgrew the target
    assert more.replicas == 6 and more.reason == "up: ttft, load > target"  # max_replicas
    assert d(**{**starting, "running": 4}, ongoing=20).replicas == 5  # all running: +1 again


def test_scale_down_steps_are_proportional_and_never_below_need() -> None:
    big = AutoscalingSettings(target_ongoing_per_replica=8, downscale_fraction=0.25)
    calm = replace(BASE, replicas=40, max_replicas=100, ttft_p95_s=0.3, tpot_p95_s=0.02)
    assert decide(replace(calm, ongoing=8), SLO_, big).replicas == 30  # a quarter at once
    assert decide(replace(calm, ongoing=280), SLO_, big).replicas == 35  # needs 35
    assert decide(replace(calm, replicas=3, ongoing=0), SLO_, big).replicas == 2  # >= 1 step


def test_missing_or_stale_metrics_never_scale() -> None:
    assert d(ongoing=None).reason == "hold: no load figures"
    stale = d(ttft_p95_s=9.9, metrics_age_s=300)  # an old breach is not evidence
    assert stale.replicas == 2
    unknown = d(ttft_p95_s=None, tpot_p95_s=None, metrics_age_s=None, ongoing=3)
    assert unknown.replicas == 2  # load but no latency figures: hold
    # ... but a queue is Serve's own count and does count
    assert d(ttft_p95_s=None, tpot_p95_s=None, metrics_age_s=None, queued=9).replicas == 3


def test_scale_down_is_slow_and_needs_comfort() -> None:
    calm = {"ttft_p95_s": 0.3, "tpot_p95_s": 0.02, "ongoing": 4}
    assert d(**calm).replicas == 1 and d(**calm).reason == "down: comfortable"
    assert d(**calm, last_scale_up=950.0).replicas == 2  # within the down cooldown
    assert d(**calm, last_scale_down=990.0).replicas == 2
    assert d(ttft_p95_s=1.2, tpot_p95_s=0.02, ongoing=4).replicas == 2  # not comfortable
    assert d(**calm, queued=1).replicas == 2  # something waits
    assert d(**{**calm, "ongoing": 12}).replicas == 2  # one replica could not carry 12
    assert d(**{**calm, "replicas": 1}).replicas == 1  # min_replicas


def test_idle_without_reports_scales_down() -> None:
    idle = d(ongoing=0, ttft_p95_s=None, tpot_p95_s=None, metrics_age_s=None)
    assert idle.replicas == 1 and idle.reason == "down: idle"


def test_idle_with_a_recent_breach_in_its_window_scales_down_not_up() -> None:
    after_load = d(ongoing=0, ttft_p95_s=5.0, tpot_p95_s=0.5, metrics_age_s=3)
    assert after_load.replicas == 1 and after_load.reason == "down: idle"


def test_flapping_load_does_not_oscillate() -> None:
    """Breach, calm, breach, calm every 5 s: one scale-up, no scale-down in between."""
    replicas, last_up, last_down = 2, None, None
    history = []
    for step in range(24):
        now = 1000.0 + 5 * step
        hot = step % 2 == 0
        obs = replace(BASE, now=now, replicas=replicas, last_scale_up=last_up,
                      last_scale_down=last_down, ttft_p95_s=2.5 if hot else 0.3,
                      tpot_p95_s=0.02, ongoing=10 if hot else 4)
        out = decide(obs, SLO_, SETTINGS)
        if out.replicas > replicas:
            last_up = now
        elif out.replicas < replicas:
            last_down = now
        replicas = out.replicas
        history.append(replicas)
    downs = sum(1 for a, b in zip(history, history[1:]) if b < a)
    assert max(history) <= 6 and downs == 0


def test_recovery_after_load_returns_to_minimum_over_cooldowns() -> None:
    replicas, last_change = 4, 1000.0
    now = 1000.0
    while replicas > 1 and now < 2000:
        now += 30
        out = decide(replace(BASE, now=now, replicas=replicas, ongoing=0, ttft_p95_s=None,
                             tpot_p95_s=None, metrics_age_s=None, last_scale_down=last_change),
                     SLO_, SETTINGS)
        if out.replicas < replicas:
            last_change = now
        replicas = out.replicas
    assert replicas == 1 and now - 1000.0 >= 3 * 120  # one step per cooldown


def test_scale_to_zero_and_cold_start() -> None:
    zero = AutoscalingSettings(scale_to_zero_after_s=300)
    idle = replace(BASE, replicas=1, ongoing=0, queued=0, ttft_p95_s=None, tpot_p95_s=None,
                   metrics_age_s=None, idle_since=600.0)
    assert decide(idle, SLO_, zero).replicas == 0
    assert decide(replace(idle, idle_since=800.0), SLO_, zero).replicas == 1  # not idle enough
    assert decide(idle, SLO_, SETTINGS).replicas == 1  # not enabled: min_replicas
    at_zero = replace(idle, replicas=0)
    assert decide(replace(at_zero, queued=1), SLO_, zero).replicas == 1
    assert decide(at_zero, SLO_, zero).replicas == 0


def _ctx(**overrides):
    from ray.serve._private.common import DeploymentID
    from ray.serve.config import AutoscalingContext

    args = dict(deployment_id=DeploymentID(name="small", app_name="sluice"),
                deployment_name="small", app_name="sluice", current_num_replicas=2,
                target_num_replicas=2, running_replicas=[], total_num_requests=10.0,
                total_queued_requests=0.0, aggregated_metrics={}, raw_metrics={},
                capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=6,
                policy_state={}, last_scale_up_time=None, last_scale_down_time=None,
                current_time=1000.0, config=None)
    args.update(overrides)
    return AutoscalingContext(**args)


def test_serve_policy_reads_serves_context_and_keeps_its_state() -> None:
    from sluice.autoscaling.serve_policy import SLOPolicy

    policy = SLOPolicy(slo={"ttft_p95_s": 2.0, "tpot_p95_s": 0.1},
                       settings={"downscale_cooldown_s": 60})
    # the worst replica's TTFT breaches: up
    hot = _ctx(aggregated_metrics={"ttft_p95_s": {"r1": 0.5, "r2": 2.6},
                                   "tpot_p95_s": {"r1": 0.02, "r2": 0.03}})
    replicas, state = policy(hot)
    assert replicas == 3 and state["last_reason"] == "up: ttft"
    # no latency reports, load present: hold
    assert policy(_ctx())[0] == 2
    # idle: the idle clock starts, then the policy scales down (no reports needed)
    replicas, state = policy(_ctx(total_num_requests=0.0))
    assert state["idle_since"] == 1000.0 and replicas == 1
    # a scale-up in progress (target 3, 2 running) is held, not cancelled
    starting = _ctx(target_num_replicas=3, last_scale_up_time=998.0,
                    aggregated_metrics={"ttft_p95_s": {"r1": 2.6}})
    assert policy(starting)[0] == 3
    # a lazily computed metric (Serve passes callables) is read too
    lazy = _ctx(aggregated_metrics=lambda: {"tpot_p95_s": {"r1": 0.5}})
    assert policy(lazy)[0] == 3


def test_a_deployment_with_autoscaling_settings_gets_the_slo_policy() -> None:
    from pathlib import Path

    from sluice.deployments.llm_server import LATENCY_WINDOW, SLO_POLICY, llm_config_for
    from sluice.schema.loading import load_platform_config

    root = Path(__file__).resolve().parents[2]
    config = load_platform_config(root / "platform/profiles/local-cpu.yaml", root=root)
    small = next(m for m in config.catalog.models if m.name == "small")
    plain = llm_config_for(config, small).deployment_config["autoscaling_config"]
    assert "policy" not in plain
    deployment = config.profile.models["small"].model_copy(update={
        "max_replicas": 3, "autoscaling": AutoscalingSettings(upscale_cooldown_s=5)})
    profile = config.profile.model_copy(
        update={"models": {**config.profile.models, "small": deployment}})
    scaled = llm_config_for(config.model_copy(update={"profile": profile}), small)
    auto = scaled.deployment_config["autoscaling_config"]
    assert auto["policy"]["policy_function"] == SLO_POLICY
    assert auto["policy"]["policy_kwargs"]["slo"] == small.slo.model_dump()
    assert auto["policy"]["policy_kwargs"]["settings"]["upscale_cooldown_s"] == 5
    assert auto["max_replicas"] == 3 and auto["downscale_delay_s"] == 0
    # only the autoscaled model's replicas read every chunk to measure TTFT/TPOT
    assert scaled.experimental_configs[LATENCY_WINDOW] is True
    assert llm_config_for(config, small).experimental_configs[LATENCY_WINDOW] is False
    from ray.serve.config import AutoscalingConfig

    AutoscalingConfig(**auto)  # Serve accepts it
