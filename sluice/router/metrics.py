"""Quality against share of large-model calls, and RouteLLM's summary metrics.

Given a score per query (probability the small model is enough), escalating the lowest-scored
fraction f of queries to the large model gives a quality Q(f). With Q_s = always-small and
Q_l = always-large quality:
- PGR(f) = (Q(f) - Q_s) / (Q_l - Q_s), the performance gap recovered;
- APGR = the area under PGR over f in [0, 1] (random routing: 0.5);
- CPT(x) = the smallest share of large calls with PGR >= x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHARES = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class Curve:
    shares: np.ndarray
    quality: np.ndarray
    small_quality: float
    large_quality: float

    @property
    def pgr(self) -> np.ndarray:
        gap = self.large_quality - self.small_quality
        return (self.quality - self.small_quality) / gap if gap else np.zeros_like(self.quality)

    @property
    def apgr(self) -> float:
        return float(np.trapezoid(self.pgr, self.shares))

    def cpt(self, pgr_target: float) -> float:
        hit = np.nonzero(self.pgr >= pgr_target - 1e-12)[0]
        return float(self.shares[hit[0]]) if len(hit) else float("nan")

    def quality_at(self, share: float) -> float:
        return float(np.interp(share, self.shares, self.quality))

    def share_for_quality(self, quality: float) -> float:
        hit = np.nonzero(self.quality >= quality - 1e-12)[0]
        return float(self.shares[hit[0]]) if len(hit) else float("nan")


def _curve_from_order(order: np.ndarray, small: np.ndarray, large: np.ndarray) -> Curve:
    n = len(small)
    gains = np.concatenate([[0.0], np.cumsum((large - small)[order])])
    ks = np.rint(SHARES * n).astype(int)
    quality = (small.sum() + gains[ks]) / n
    return Curve(SHARES, quality, float(small.mean()), float(large.mean()))


def routing_curve(scores: np.ndarray, small: np.ndarray, large: np.ndarray) -> Curve:
    """Escalate lowest scores first (a stable sort keeps ties in data order)."""
    return _curve_from_order(np.argsort(scores, kind="stable"), small, large)


def oracle_curve(small: np.ndarray, large: np.ndarray) -> Curve:
    """Escalate exactly the queries the large model improves most, first."""
    return _curve_from_order(np.argsort(-(large - small), kind="stable"), small, large)


def random_curve(small: np.ndarray, large: np.ndarray) -> Curve:
    """Expected quality of escalating a random fraction: the straight line."""
    quality = small.mean() + SHARES * (large.mean() - small.mean())
    return Curve(SHARES, quality, float(small.mean()), float(large.mean()))


def relative_cost(share_large: float, price_ratio: float, cascade: bool) -> float:
    """Cost relative to always-large, with a small call costing 1 and a large one price_ratio.

    A cascade always pays for the small answer; a pre-generation router pays for it only on
    the queries it keeps small.
    """
    small_calls = 1.0 if cascade else 1.0 - share_large
    return (small_calls + share_large * price_ratio) / price_ratio


def threshold_for_share(scores: np.ndarray, share: float) -> float:
    """The score below which `share` of these queries fall (escalate if score < threshold)."""
    if share <= 0:
        return float("-inf")
    if share >= 1:
        return float("inf")
    ordered = np.sort(scores)
    k = int(np.rint(share * len(ordered)))
    return float(ordered[k]) if k < len(ordered) else float("inf")
