"""Ray Serve's side of the SLO policy: turn an AutoscalingContext into an Observation.

Configured per deployment as `AutoscalingPolicy(policy_function=
"sluice.autoscaling.serve_policy:SLOPolicy", policy_kwargs={"slo": ..., "settings": ...})`;
Serve constructs the class with the kwargs and calls it with the context on every
autoscaling tick. Latency figures are read from the replicas' custom autoscaling metrics
`ttft_p95_s` / `tpot_p95_s` (the worst replica counts) when present; Serve's own request
counts always are.
"""

from __future__ import annotations

import logging
from typing import Any

from sluice.autoscaling.policy import Observation, decide
from sluice.schema.serving import SLO, AutoscalingSettings

log = logging.getLogger(__name__)
TTFT_METRIC, TPOT_METRIC, AGE_METRIC = "ttft_p95_s", "tpot_p95_s", "latency_age_s"


def _worst(metrics: dict[str, dict[Any, float]] | None, name: str) -> float | None:
    values = [v for v in ((metrics or {}).get(name) or {}).values() if v is not None]
    return max(values) if values else None


def observe(ctx: Any) -> Observation:
    """What the policy needs from Serve's context (missing pieces stay None)."""
    metrics = ctx.aggregated_metrics
    state = ctx.policy_state or {}
    age = _worst(metrics, AGE_METRIC)
    ttft, tpot = _worst(metrics, TTFT_METRIC), _worst(metrics, TPOT_METRIC)
    if age is None and (ttft is not None or tpot is not None):
        age = 0.0  # reported this window
    try:
        ongoing: float | None = float(ctx.total_num_requests)
    except (TypeError, ValueError):
        ongoing = None
    try:
        queued = float(ctx.total_queued_requests)
    except (TypeError, ValueError):
        queued = None
    return Observation(
        # the target, not the running count: while a scale-up starts replicas, holding
        # must keep it (answering the running count would cancel it)
        now=float(ctx.current_time), replicas=int(ctx.target_num_replicas),
        min_replicas=int(ctx.capacity_adjusted_min_replicas),
        max_replicas=int(ctx.capacity_adjusted_max_replicas),
        ongoing=ongoing, queued=queued, ttft_p95_s=ttft, tpot_p95_s=tpot, metrics_age_s=age,
        last_scale_up=ctx.last_scale_up_time, last_scale_down=ctx.last_scale_down_time,
        idle_since=state.get("idle_since"), running=int(ctx.current_num_replicas))


class SLOPolicy:
    """Serve autoscaling policy: replicas from queue depth and latency SLOs."""

    def __init__(self, slo: dict[str, Any], settings: dict[str, Any] | None = None) -> None:
        self._slo = SLO.model_validate(slo)
        self._settings = AutoscalingSettings.model_validate(settings or {})

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        obs = observe(ctx)
        state = dict(ctx.policy_state or {})
        busy = (obs.ongoing or 0) > 0 or (obs.queued or 0) > 0
        state["idle_since"] = None if busy else (state.get("idle_since") or obs.now)
        decision = decide(obs, self._slo, self._settings)
        if decision.replicas != obs.replicas or decision.reason != state.get("last_reason"):
            # (WARNING: Serve's controller log shows it; one line per change of mind)
            log.warning("autoscaling %s: %d -> %d (%s) from %s", ctx.deployment_name,
                        obs.replicas, decision.replicas, decision.reason, obs)
        state["last_reason"] = decision.reason
        return decision.replicas, state
