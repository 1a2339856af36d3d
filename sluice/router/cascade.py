"""The cascade's decisions, as pure functions of scores: no I/O, no clocks.

Route labels (what `x-sluice-route` reports):
- `small` / `large`: one model answered (pre-routed, accepted, or route-only);
- `small>large`: the small model answered, the judge rejected it, the large model answered;
- `large:fallback`: a stage failed or timed out and the safe default answered.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from sluice.router.reliability import ReliabilityTracker
from sluice.schema.routing import RouteConfig

SMALL, LARGE, ESCALATED, FALLBACK = "small", "large", "small>large", "large:fallback"


class CascadePolicy:
    """Thresholds and sampling of one route, plus its counters."""

    def __init__(self, route: RouteConfig, rng: random.Random) -> None:
        self.route = route
        self._rng = rng
        self.routes: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter()
        shadow = route.shadow
        self.reliability = ReliabilityTracker(shadow.window, shadow.min_samples,
                                              shadow.warn_below)

    def straight_to_large(self, router_score: float) -> bool:
        """Stage 1: the prompt's P(small is enough) is under the pre-router's threshold."""
        pre = self.route.pre_router
        return pre is not None and router_score < pre.threshold

    def accept(self, judge_score: float) -> bool:
        """Stage 2: keep the small answer when the judge scores it at or over threshold."""
        judge = self.route.judge
        return judge is None or judge_score >= judge.threshold

    def sample_shadow(self) -> bool:
        fraction = self.route.shadow.fraction
        return fraction > 0 and self._rng.random() < fraction

    def count(self, route_label: str, fallback_reason: str | None = None) -> None:
        self.routes[route_label] += 1
        if fallback_reason:
            self.fallbacks[fallback_reason] += 1

    def snapshot(self) -> dict[str, Any]:
        total = sum(self.routes.values())
        escalated = self.routes[ESCALATED]
        judged = self.routes[SMALL] + escalated if self.route.judge else 0
        return {
            "small": self.route.small, "large": self.route.large,
            "pre_router": self.route.pre_router is not None,
            "judge": self.route.judge.kind if self.route.judge else None,
            "requests": total, "routes": dict(self.routes), "fallbacks": dict(self.fallbacks),
            "escalation_rate": escalated / judged if judged else None,
            "large_share": (total - self.routes[SMALL]) / total if total else None,
            "judge_reliability": self.reliability.snapshot(),
        }
