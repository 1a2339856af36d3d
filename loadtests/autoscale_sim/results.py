"""What a run amounts to: SLO attainment, latency percentiles, cost and churn.

- attainment: share of all requests of the trace (unserved ones at the end count as misses)
  that met both objectives, TTFT <= the SLO's TTFT and TPOT <= the SLO's TPOT, each request
  counted with the model's exact probability (no sampling noise);
- p95 TTFT / TPOT over the whole run, and the share of one-minute windows whose p95s both
  stay within the SLO (the SLO is a p95 objective): from the weighted request samples;
- replica-hours: starting + running + draining replicas integrated over time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loadtests.autoscale_sim.sim import RunRecord
from sluice.schema.serving import SLO


def weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The smallest value with at least q% of the weight at or below it (NaN if none)."""
    values, weights = values.ravel(), weights.ravel()
    keep = weights > 0
    if not keep.any():
        return float("nan")
    order = np.argsort(values[keep])
    v, cum = values[keep][order], np.cumsum(weights[keep][order])
    return float(v[np.searchsorted(cum, q / 100.0 * cum[-1])])


def _sample_weights(record: RunRecord) -> np.ndarray:
    return np.repeat(record.weight[:, None], record.ttft.shape[1], axis=1)


def minutes_within_slo(record: RunRecord, slo: SLO) -> float:
    """Share of one-minute windows (with traffic) whose p95 TTFT and TPOT meet the SLO."""
    per = max(1, round(60 / record.trace.dt_s))
    weights = _sample_weights(record)
    ok = total = 0
    for start in range(0, len(record.weight), per):
        w = weights[start:start + per]
        if not w.any():
            continue
        total += 1
        ttft = weighted_percentile(record.ttft[start:start + per], w, 95)
        tpot = weighted_percentile(record.tpot[start:start + per], w, 95)
        ok += ttft <= slo.ttft_p95_s and tpot <= slo.tpot_p95_s
    return ok / total if total else float("nan")


def summarize(record: RunRecord, slo: SLO) -> dict[str, Any]:
    s, dt = record.series, record.trace.dt_s
    requests = int(record.trace.arrivals.sum())
    weights = _sample_weights(record)
    provisioned = s["running"] + s["starting"] + s["draining"]
    return {
        "requests": requests,
        "slo_attainment": float(s["met"].sum() / requests) if requests else float("nan"),
        "ttft_p95_s": weighted_percentile(record.ttft, weights, 95),
        "tpot_p95_s": weighted_percentile(record.tpot, weights, 95),
        "minutes_within_p95_slo": minutes_within_slo(record, slo),
        "replica_hours": record.replica_seconds / 3600.0,
        "mean_replicas": float(provisioned.mean()),
        "peak_replicas": int((s["running"] + s["starting"]).max()),
        "scale_ups": record.scale_ups,
        "scale_downs": record.scale_downs,
        "max_backlog": int(s["backlog"].max()),
        "unserved_at_end": record.unserved,
        "simulated_hours": len(record.weight) * dt / 3600.0,
    }


def markdown_table(summaries: dict[str, dict[str, Any]]) -> str:
    head = ("| policy | SLO attainment | p95 TTFT | p95 TPOT | minutes within p95 SLO "
            "| replica-hours | mean replicas | peak replicas | scale-ups / downs |")
    rows = [head, "|" + "---|" * 9]
    for name, r in summaries.items():
        rows.append(
            f"| {name} | {r['slo_attainment']:.2%} | {r['ttft_p95_s'] * 1000:,.0f} ms "
            f"| {r['tpot_p95_s'] * 1000:.1f} ms | {r['minutes_within_p95_slo']:.1%} "
            f"| {r['replica_hours']:,.0f} | {r['mean_replicas']:,.0f} "
            f"| {r['peak_replicas']:,} | {r['scale_ups']} / {r['scale_downs']} |")
    return "\n".join(rows)
