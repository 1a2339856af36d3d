"""The run's picture: arrival rate, replicas per policy, rolling SLO attainment per policy."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from loadtests.autoscale_sim.sim import RunRecord


def rolling_sum(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing sum over `window` ticks (shorter at the start)."""
    c = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    return c[idx] - c[np.maximum(idx - window, 0)]


def rolling_attainment(record: RunRecord, window_s: float = 60.0) -> np.ndarray:
    """Share of the trailing window's served requests that met both objectives."""
    w = max(1, round(window_s / record.trace.dt_s))
    served = rolling_sum(record.series["served"], w)
    met = rolling_sum(record.series["met"], w)
    return np.divide(met, served, out=np.full_like(met, np.nan), where=served > 0)


def plot(records: list[RunRecord], path: Path, slo_label: str) -> None:
    trace = records[0].trace
    hours = np.arange(trace.ticks) * trace.dt_s / 3600.0
    fig, (top, mid, bottom) = plt.subplots(3, 1, figsize=(12, 10), sharex=True)
    top.plot(hours, trace.arrivals / trace.dt_s, lw=0.4, color="0.6", label="arrivals")
    top.plot(hours, trace.rate_rps, lw=1.0, color="k", label="rate")
    top.set_ylabel("requests / s")
    top.legend(loc="upper left")
    for r in records:
        mid.plot(hours, r.series["running"] + r.series["starting"], lw=0.9, label=r.name)
        bottom.plot(hours, rolling_attainment(r) * 100, lw=0.7, label=r.name)
    mid.set_ylabel("replicas (starting + running)")
    mid.legend(loc="upper left")
    bottom.set_ylabel("requests within SLO, 60 s rolling (%)")
    bottom.set_xlabel("simulated hours")
    bottom.set_ylim(0, 101)
    bottom.legend(loc="lower left")
    fig.suptitle(f"Autoscaling simulation (a model, not a measurement): {slo_label}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
