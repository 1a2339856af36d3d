"""What the variants of a rollout measured, as gate windows and as reports with intervals.

Every ingress replica adds one observation per answered request of a model under rollout
(which variant, error or not, TTFT, TPOT, cost) and one per shadow pair to Redis streams;
the replica that judges reads them back here. Pure: lists in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean, variance
from typing import Any

from sluice.rollouts.canary import Window
from sluice.rollouts.gates import difference_interval, quantile, z_for
from sluice.router.reliability import wilson_interval


def _num(value: Any) -> float | None:
    if value in (None, "", b""):
        return None
    return float(value)


@dataclass(frozen=True)
class Observation:
    """One answered request of a model under rollout."""

    model: str  # the catalog model (variant) that answered
    error: bool  # a 5xx: the variant failed it (a client's mistake is not counted)
    ttft_s: float | None = None
    tpot_s: float | None = None
    cost_usd: float = 0.0

    def fields(self) -> dict[str, str]:
        return {"v": self.model, "e": "1" if self.error else "0",
                "t": "" if self.ttft_s is None else f"{self.ttft_s:.6f}",
                "p": "" if self.tpot_s is None else f"{self.tpot_s:.6f}",
                "c": f"{self.cost_usd:.9g}"}

    @classmethod
    def from_fields(cls, f: Mapping[Any, Any]) -> Observation:
        g = {(k.decode() if isinstance(k, bytes) else k):
             (v.decode() if isinstance(v, bytes) else v) for k, v in f.items()}
        return cls(g["v"], g.get("e") == "1", _num(g.get("t")), _num(g.get("p")),
                   _num(g.get("c")) or 0.0)


@dataclass(frozen=True)
class ShadowPair:
    """One request answered by the baseline and, in the shadow, by the candidate."""

    agreed: bool | None  # same final answer / enough overlap (None: the candidate failed)
    candidate_error: bool
    baseline_s: float  # each one's whole-answer latency
    candidate_s: float
    baseline_tokens: int
    candidate_tokens: int

    def fields(self) -> dict[str, str]:
        return {"a": "" if self.agreed is None else ("1" if self.agreed else "0"),
                "ce": "1" if self.candidate_error else "0", "bl": f"{self.baseline_s:.6f}",
                "cl": f"{self.candidate_s:.6f}", "bt": str(self.baseline_tokens),
                "ct": str(self.candidate_tokens)}

    @classmethod
    def from_fields(cls, f: Mapping[Any, Any]) -> ShadowPair:
        g = {(k.decode() if isinstance(k, bytes) else k):
             (v.decode() if isinstance(v, bytes) else v) for k, v in f.items()}
        a = g.get("a", "")
        return cls(None if a == "" else a == "1", g.get("ce") == "1", float(g["bl"]),
                   float(g["cl"]), int(g["bt"]), int(g["ct"]))


def window(observations: Iterable[Observation], model: str) -> Window:
    mine = [o for o in observations if o.model == model]
    return Window(requests=len(mine), errors=sum(o.error for o in mine),
                  ttft_s=tuple(o.ttft_s for o in mine if o.ttft_s is not None and not o.error),
                  tpot_s=tuple(o.tpot_s for o in mine if o.tpot_s is not None and not o.error))


def _mean_difference(a: Sequence[float], b: Sequence[float], z: float
                     ) -> dict[str, float] | None:
    """Welch's normal interval for mean(a) - mean(b) (large samples)."""
    if len(a) < 2 or len(b) < 2:
        return None
    d = fmean(a) - fmean(b)
    se = math.sqrt(variance(a) / len(a) + variance(b) / len(b))
    return {"difference": d, "low": d - z * se, "high": d + z * se}


def _arm(observations: Sequence[Observation], model: str) -> dict[str, Any]:
    mine = [o for o in observations if o.model == model]
    ok = [o for o in mine if not o.error]
    ttft = sorted(o.ttft_s for o in ok if o.ttft_s is not None)
    tpot = sorted(o.tpot_s for o in ok if o.tpot_s is not None)
    n = len(mine)
    return {"model": model, "requests": n, "errors": sum(o.error for o in mine),
            "error_rate": (sum(o.error for o in mine) / n) if n else None,
            "ttft_p50_s": quantile(ttft, 0.5) if ttft else None,
            "ttft_p95_s": quantile(ttft, 0.95) if ttft else None,
            "tpot_p50_s": quantile(tpot, 0.5) if tpot else None,
            "cost_per_request_usd": fmean(o.cost_usd for o in mine) if mine else None}


def ab_report(observations: Sequence[Observation], candidate: str, baseline: str,
              confidence: float = 0.95) -> dict[str, Any]:
    """Each arm's measurements and the candidate-minus-baseline differences with their
    intervals: error rate (Newcombe), mean TTFT and mean cost per request (Welch)."""
    z = z_for(confidence)
    arms = {"candidate": _arm(observations, candidate), "baseline": _arm(observations, baseline)}
    c = [o for o in observations if o.model == candidate]
    b = [o for o in observations if o.model == baseline]
    diff: dict[str, Any] = {"confidence": confidence}
    if c and b:
        ce, be = sum(o.error for o in c), sum(o.error for o in b)
        low, high = difference_interval(ce, len(c), be, len(b), z)
        diff["error_rate"] = {"difference": ce / len(c) - be / len(b), "low": low,
                              "high": high}
    diff["ttft_mean_s"] = _mean_difference(
        [o.ttft_s for o in c if o.ttft_s is not None and not o.error],
        [o.ttft_s for o in b if o.ttft_s is not None and not o.error], z)
    diff["cost_per_request_usd"] = _mean_difference([o.cost_usd for o in c],
                                                    [o.cost_usd for o in b], z)
    return {"arms": arms, "difference": diff}


def shadow_report(pairs: Sequence[ShadowPair], confidence: float = 0.95) -> dict[str, Any]:
    """How the candidate compares on copies of live requests: agreement (Wilson interval),
    its errors, and its latency and tokens against the baseline's on the same requests."""
    z = z_for(confidence)
    judged = [p for p in pairs if p.agreed is not None]
    agreed = sum(bool(p.agreed) for p in judged)
    ok = [p for p in pairs if not p.candidate_error]
    ratios = sorted(p.candidate_s / p.baseline_s for p in ok if p.baseline_s > 0)
    out: dict[str, Any] = {"pairs": len(pairs), "candidate_errors": len(pairs) - len(ok),
                           "agreement": None, "latency_ratio_p50": None,
                           "tokens_ratio": None}
    if judged:
        low, high = wilson_interval(agreed, len(judged), z)
        out["agreement"] = {"rate": agreed / len(judged), "low": low, "high": high,
                            "n": len(judged)}
    if ratios:
        out["latency_ratio_p50"] = quantile(ratios, 0.5)
    base_tokens = sum(p.baseline_tokens for p in ok)
    if base_tokens:
        out["tokens_ratio"] = sum(p.candidate_tokens for p in ok) / base_tokens
    return out
