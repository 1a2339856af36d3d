"""The SLO autoscaling decision, as a pure function of what the replicas report.

Inputs: requests in flight and queued (Serve's own counts), the replicas' recent p95 TTFT and
TPOT with their age, the model's SLO, and the time of the last scale-up / scale-down.
Rules, in order:
- stale or missing latency metrics are not evidence: without fresh ones the decision rests on
  the queue alone, and with no load figures at all it holds;
- scale up fast when an SLO is breached or work queues: to what the load needs, at least one
  more, at most doubling per decision, after a short cooldown; while replicas of an earlier
  scale-up are still starting, only to what the load needs (the breach persists until they
  run, and adding more for it again would overshoot: found in the fleet simulation);
- scale up ahead of a breach when more requests are in flight than `target_ongoing_per_replica`
  per replica: to what the load needs, at most doubling (a breach only shows once users
  waited, and a new replica takes a minute to start: found in the fleet simulation);
- scale down in steps of at most `downscale_fraction` of the replicas (at least one), never
  below what the load needs, only when both latencies are comfortably inside their SLOs (a
  fraction `comfort` of them) and nothing queues, after a cooldown since any change;
- optionally to zero after `scale_to_zero_after_s` without a request, and back to one as soon
  as one arrives;
- always within [min_replicas, max_replicas].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sluice.schema.serving import SLO, AutoscalingSettings


@dataclass(frozen=True)
class Observation:
    now: float
    replicas: int
    min_replicas: int
    max_replicas: int
    ongoing: float | None  # requests in flight (running + queued), None if unknown
    queued: float | None
    ttft_p95_s: float | None
    tpot_p95_s: float | None
    metrics_age_s: float | None
    last_scale_up: float | None
    last_scale_down: float | None
    idle_since: float | None  # when the deployment last had no request at all
    running: int | None = None  # replicas running now (fewer than `replicas` while starting)


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str


def _since(now: float, then: float | None) -> float:
    return math.inf if then is None else now - then


def decide(obs: Observation, slo: SLO, settings: AutoscalingSettings) -> Decision:
    def bounded(n: int, reason: str) -> Decision:
        """Within [min_replicas, max_replicas]; only the idle path below goes to zero."""
        return Decision(max(obs.min_replicas, min(obs.max_replicas, n)), reason)

    if obs.ongoing is None:
        return bounded(obs.replicas, "hold: no load figures")
    queued = obs.queued or 0.0
    if obs.replicas == 0:
        if obs.ongoing > 0 or queued > 0:
            return bounded(1, "cold start")
        return Decision(0 if settings.scale_to_zero_after_s else obs.min_replicas,
                        "hold: idle at zero")
    fresh = obs.metrics_age_s is not None and obs.metrics_age_s <= settings.metrics_max_age_s
    ttft = obs.ttft_p95_s if fresh else None
    tpot = obs.tpot_p95_s if fresh else None
    needed = math.ceil(obs.ongoing / settings.target_ongoing_per_replica)

    idle = obs.ongoing == 0
    breach = []  # latency of past requests is no reason to add replicas to an idle model
    if not idle and ttft is not None and ttft > slo.ttft_p95_s:
        breach.append("ttft")
    if not idle and tpot is not None and tpot > slo.tpot_p95_s:
        breach.append("tpot")
    if queued > settings.max_queued_per_replica * obs.replicas:
        breach.append("queue")
    if breach:
        if _since(obs.now, obs.last_scale_up) < settings.upscale_cooldown_s:
            return bounded(obs.replicas, f"hold: {'+'.join(breach)} breached, up cooldown")
        reason = "+".join(breach)
        if obs.running is not None and obs.running < obs.replicas:
            if needed > obs.replicas:
                return bounded(min(2 * obs.replicas, needed), f"up: {reason}, load > target")
            return bounded(obs.replicas, f"hold: {reason} breached, replicas starting")
        target = min(2 * obs.replicas, max(obs.replicas + 1, needed))
        return bounded(target, f"up: {reason}")

    if needed > obs.replicas:  # more in flight than the replicas carry comfortably
        if _since(obs.now, obs.last_scale_up) < settings.upscale_cooldown_s:
            return bounded(obs.replicas, "hold: load above target, up cooldown")
        return bounded(min(2 * obs.replicas, needed), "up: load")

    if (settings.scale_to_zero_after_s is not None and obs.ongoing == 0 and queued == 0
            and _since(obs.now, obs.idle_since) >= settings.scale_to_zero_after_s):
        return Decision(0, "down: idle, scale to zero")
    comfortable = (ttft is not None and tpot is not None
                   and ttft < settings.comfort * slo.ttft_p95_s
                   and tpot < settings.comfort * slo.tpot_p95_s)
    if ((comfortable or idle) and queued == 0 and needed < obs.replicas
            and obs.replicas > obs.min_replicas):
        last_change = max(obs.last_scale_up or -math.inf, obs.last_scale_down or -math.inf)
        if obs.now - last_change < settings.downscale_cooldown_s:
            return bounded(obs.replicas, "hold: comfortable, down cooldown")
        step = max(1, math.floor(settings.downscale_fraction * obs.replicas))
        return bounded(max(needed, obs.replicas - step),
                       "down: comfortable" if comfortable else "down: idle")
    return bounded(obs.replicas, "hold")
