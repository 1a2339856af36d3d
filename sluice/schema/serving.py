"""How models are served: latency objectives, the SLO autoscaling policy's settings and the
replica router's.

Schema only: the decisions that read these (sluice.autoscaling.policy,
sluice.router.replica_affinity, sluice.capacity.analysis) are pure logic elsewhere.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

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


class Speculation(Frozen):
    """Speculative decoding (vLLM's `speculative_config`): a cheap proposer drafts tokens the
    model verifies in one step. `ngram` (prompt lookup) needs no extra model and helps where
    answers copy the prompt (extraction, editing, code); `draft` runs a small model of the
    same tokenizer as the proposer."""

    method: Literal["ngram", "draft"] = Field(description="ngram: prompt lookup; draft: a "
                                              "draft model (`draft_model`).")
    num_speculative_tokens: int = Field(default=3, ge=1, le=16, description="Tokens proposed "
                                        "per step.")
    prompt_lookup_min: int = Field(default=2, ge=1, le=16, description="ngram: shortest "
                                   "n-gram matched in the prompt.")
    prompt_lookup_max: int = Field(default=4, ge=1, le=16, description="ngram: longest.")
    draft_model: str | None = Field(default=None, description="draft: the catalog model that "
                                    "proposes (it must share the model's tokenizer).")

    @model_validator(mode="after")
    def _fits(self) -> Speculation:
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError("prompt_lookup_min must not exceed prompt_lookup_max")
        if (self.method == "draft") != (self.draft_model is not None):
            raise ValueError("draft_model is set exactly when method is draft")
        return self

    def engine_config(self, draft_source: str | None) -> dict[str, Any]:
        """vLLM's `speculative_config` (draft_source: the draft model's resolved path)."""
        if self.method == "ngram":
            return {"method": "ngram", "num_speculative_tokens": self.num_speculative_tokens,
                    "prompt_lookup_min": self.prompt_lookup_min,
                    "prompt_lookup_max": self.prompt_lookup_max}
        return {"method": "draft_model", "model": draft_source,
                "num_speculative_tokens": self.num_speculative_tokens}


class ChunkedPrefill(Frozen):
    """Chunked prefill (Sarathi-Serve): a long prompt's prefill is split into chunks of at
    most `max_num_batched_tokens` tokens per engine step, batched with the running decodes,
    so a long prompt no longer stalls everyone's next token (at some cost to its own TTFT)."""

    enabled: bool = Field(default=True, description="vLLM's `enable_chunked_prefill`.")
    max_num_batched_tokens: int | None = Field(
        default=None, ge=16, description="The token budget of one engine step (vLLM's "
        "`max_num_batched_tokens`); smaller: smoother decodes, slower long prefills.")

    def engine_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"enable_chunked_prefill": self.enabled}
        if self.max_num_batched_tokens is not None:
            out["max_num_batched_tokens"] = self.max_num_batched_tokens
        return out
