"""How models are served: latency objectives, the SLO autoscaling policy's settings and the
replica router's.

Schema only: the decisions that read these (sluice.autoscaling.policy,
sluice.router.replica_affinity, sluice.capacity.analysis) are pure logic elsewhere.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sluice.schema.base import Frozen


class SLO(Frozen):
    """Latency objectives of one model (from the catalog)."""

    ttft_p95_s: float = Field(default=2.0, gt=0, description="95th percentile TTFT bound.")
    tpot_p95_s: float = Field(default=0.1, gt=0, description="95th percentile time per "
                              "output token bound.")
    max_error_rate: float = Field(default=0.01, ge=0, le=1, description="Largest failed share.")


class AutoscalingSettings(Frozen):
    target_ongoing_per_replica: float = Field(
        default=8, gt=0, description="Requests in flight one replica carries comfortably.")
    max_queued_per_replica: float = Field(
        default=1, ge=0, description="Queued requests per replica that count as a breach.")
    upscale_cooldown_s: float = Field(default=10, ge=0)
    downscale_cooldown_s: float = Field(default=120, ge=0)
    downscale_fraction: float = Field(default=0.25, gt=0, le=1, description="Largest share "
                                      "of the replicas removed in one scale-down step.")
    comfort: float = Field(default=0.5, gt=0, lt=1, description="Scale down only with both "
                           "p95 latencies under this fraction of their SLO.")
    metrics_max_age_s: float = Field(default=30, gt=0, description="Older latency reports are "
                                     "ignored.")
    scale_to_zero_after_s: float | None = Field(
        default=None, gt=0, description="Idle time after which the model scales to zero (its "
        "cold start is then paid by the next request); None: never.")


class ReplicaRoutingConfig(Frozen):
    """How an LLM deployment's handle picks a replica for each request."""

    policy: Literal["prefix_affinity", "power_of_two"] = Field(
        default="prefix_affinity", description="prefix_affinity: Sluice's router; "
        "power_of_two: Ray Serve's default (two random replicas, the shorter queue wins).")
    block_chars: int = Field(default=128, ge=16, description="Characters per hashed block "
                             "(about 32 tokens); prompts shorter than one block get no "
                             "affinity.")
    imbalance_threshold: int = Field(default=4, ge=0, description="Extra requests in flight "
                                     "a replica may carry over the least-loaded one and still "
                                     "be preferred for its prefix.")
    tier_imbalance_threshold: int = Field(default=1, ge=0, description="The same margin when "
                                          "the KV tier is on and the prefix was already "
                                          "computed (so it is in Redis). 1, not 0: Serve's "
                                          "count of a finished request can lag its answer.")
    min_match_fraction: float = Field(default=0.1, ge=0, le=1, description="A remembered "
                                      "prefix shorter than this fraction of the prompt "
                                      "counts as no match.")
    max_blocks: int = Field(default=200_000, ge=1, description="Block hashes remembered "
                            "(least recently used ones are forgotten).")
    replicas_per_block: int = Field(default=4, ge=1, description="Replicas remembered per "
                                    "block (the most recent ones).")


class EngineFaults(Frozen):
    """Faults a model's replicas inject into the requests they serve."""

    error_fraction: float = Field(default=0.0, ge=0, le=1, description="Share of requests "
                                  "answered with a 503 before any output, at random.")
    delay_s: float = Field(default=0.0, ge=0, le=60, description="Added before each "
                           "request's first output.")
