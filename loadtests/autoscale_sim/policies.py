"""The autoscalers under test, each a `(controller view at time t) -> target replicas`.

Both run the way Serve runs any deployment policy, through Ray's own code: a real
`AutoscalingContext`, then the wrapping Serve applies around every policy
(`ray.serve.autoscaling_policy._apply_autoscaling_config`: the cold-start fast path, scaling
factors, the upscale/downscale delays) and the controller's rounding and bounds
(`DeploymentAutoscalingState.get_decision_num_replicas`). The only change: the delays are
measured on the simulation clock (`_apply_delay_logic(..., _now=...)`) instead of
`time.time()`; `serve_decision` re-composes Ray's pieces for that, and a unit test checks it
against `_apply_autoscaling_config` itself.
- Ray's stock policy: `replica_queue_length_autoscaling_policy` with a
  `target_ongoing_requests`, Serve's default delays (upscale 30 s, downscale 600 s).
- Sluice's: `SLOPolicy` with the model's SLO and `AutoscalingSettings`, configured as
  `sluice.deployments.llm_server` does it (Serve's delays 0: the policy keeps its own
  cooldowns).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.autoscaling_policy import (
    _apply_delay_logic,
    _apply_scaling_factors,
    _extract_internal_policy_state,
    _get_cold_start_scale_up_replicas,
    replica_queue_length_autoscaling_policy,
)
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from sluice.autoscaling.serve_policy import SLOPolicy
from sluice.schema.serving import SLO, AutoscalingSettings

PolicyFn = Callable[[AutoscalingContext], tuple[float | int, dict[str, Any]]]
DEPLOYMENT = DeploymentID(name="small", app_name="sim")


@dataclass(frozen=True)
class ControllerView:
    """What Serve's controller holds for the deployment at one control tick."""

    now: float
    running: int
    target: int
    min_replicas: int
    max_replicas: int
    last_scale_up: float | None
    last_scale_down: float | None
    total_num_requests: float
    total_queued_requests: float
    aggregated_metrics: dict[str, dict[ReplicaID, float]]


def replica_ids(count: int) -> list[ReplicaID]:
    return [ReplicaID(unique_id=f"r{i}", deployment_id=DEPLOYMENT) for i in range(count)]


def make_context(view: ControllerView, config: AutoscalingConfig, state: dict[str, Any],
                 running_ids: list[ReplicaID]) -> AutoscalingContext:
    return AutoscalingContext(
        deployment_id=DEPLOYMENT, deployment_name=DEPLOYMENT.name,
        app_name=DEPLOYMENT.app_name, current_num_replicas=view.running,
        target_num_replicas=view.target, running_replicas=running_ids[:view.running],
        total_num_requests=view.total_num_requests,
        total_queued_requests=view.total_queued_requests,
        aggregated_metrics=view.aggregated_metrics, raw_metrics=None,
        capacity_adjusted_min_replicas=view.min_replicas,
        capacity_adjusted_max_replicas=view.max_replicas, policy_state=dict(state),
        last_scale_up_time=view.last_scale_up, last_scale_down_time=view.last_scale_down,
        current_time=view.now, config=config)


def serve_decision(policy: PolicyFn, ctx: AutoscalingContext, now: float
                   ) -> tuple[int, dict[str, Any]]:
    """`_apply_autoscaling_config(policy)(ctx)` with the delay clock at `now`, then the
    controller's ceil and bounds."""
    config = ctx.config
    assert isinstance(config, AutoscalingConfig)
    cold = _get_cold_start_scale_up_replicas(ctx)
    if cold is not None:
        decision, state = cold, ctx.policy_state
    else:
        internal = _extract_internal_policy_state(ctx.policy_state.copy())
        desired, state = policy(ctx)
        desired = _apply_scaling_factors(desired, ctx.current_num_replicas, config)
        if ctx.current_num_replicas == 0 and desired > 0:
            decision = desired  # Serve's cold path: no delay, internal state untouched
        else:
            decision, internal = _apply_delay_logic(
                max(0, desired), ctx.target_num_replicas, config, internal, _now=now)
        state.update(internal)
    if isinstance(decision, float):
        decision = math.ceil(decision)
    bounded = max(ctx.capacity_adjusted_min_replicas,
                  min(ctx.capacity_adjusted_max_replicas, decision))
    return bounded, state


class ServePolicy:
    """A policy as Serve's controller runs it: context in, bounded target out, the policy
    state carried between ticks."""

    def __init__(self, name: str, policy: PolicyFn, config: AutoscalingConfig,
                 reads_latency: bool) -> None:
        self.name = name
        self.reads_latency = reads_latency  # whether replicas' latency reports matter
        self.config = config
        self._policy = policy
        self._state: dict[str, Any] = {}
        self._ids = replica_ids(config.max_replicas)

    def __call__(self, view: ControllerView) -> int:
        ctx = make_context(view, self.config, self._state, self._ids)
        decision, self._state = serve_decision(self._policy, ctx, view.now)
        return decision


def ray_stock(target_ongoing: float, min_replicas: int, max_replicas: int) -> ServePolicy:
    """Serve's default policy with its default delays and factors."""
    config = AutoscalingConfig(min_replicas=min_replicas, max_replicas=max_replicas,
                               target_ongoing_requests=target_ongoing)
    return ServePolicy(f"ray-stock (target {target_ongoing:g})",
                       replica_queue_length_autoscaling_policy, config, reads_latency=False)


def sluice_slo(slo: SLO, settings: AutoscalingSettings, min_replicas: int,
               max_replicas: int) -> ServePolicy:
    """Sluice's SLO policy, configured as sluice.deployments.llm_server configures it."""
    config = AutoscalingConfig(min_replicas=min_replicas, max_replicas=max_replicas,
                               upscale_delay_s=0, downscale_delay_s=0)
    policy = SLOPolicy(slo=slo.model_dump(), settings=settings.model_dump())
    return ServePolicy("sluice-slo", policy, config, reads_latency=True)
