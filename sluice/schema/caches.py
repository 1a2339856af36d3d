"""Settings of the caches: the exact response cache, the semantic cache, the shared KV tier.

Schema only: the caches themselves (sluice.cache_tier) need Redis, numpy and an embedder;
a profile is validated without any of them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sluice.schema.base import Frozen


class ResponseCacheConfig(Frozen):
    enabled: bool = Field(default=True, description="Serve and store exact-match hits.")
    ttl_s: int = Field(default=3600, ge=1, description="Lifetime of an entry in seconds.")
    timeout_ms: float = Field(
        default=50, gt=0, description="Budget of one Redis call; past it the cache is bypassed."
    )
    retry_after_s: float = Field(
        default=5, gt=0, description="After a Redis failure, bypass it this long, then probe."
    )
    max_entry_bytes: int = Field(
        default=1_000_000, ge=1, description="Larger responses are not stored."
    )
    key_prefix: str = Field(default="sluice:rc:", description="Redis key prefix.")


class SemanticCacheConfig(Frozen):
    enabled: bool = Field(
        default=False, description="Load the embedder and allow semantic lookups at all."
    )
    models: tuple[str, ...] = Field(
        default=(), description="Models (or routes) looked up semantically by default; other "
        "requests opt in with `x-sluice-semantic-cache: allow`."
    )
    threshold: float = Field(
        default=0.94, gt=0, le=1, description="Least cosine similarity of a hit (0.94: "
        "held-out false-hit rate 1.3% on Quora question pairs, see BENCHMARKS.md)."
    )
    guard: bool = Field(
        default=True, description="Refuse hits whose texts differ in numbers, negation or "
        "named entities."
    )
    max_entries: int = Field(default=10_000, ge=1, description="Entries kept (shared log).")
    log_key: str = Field(default="sluice:sc:log", description="Redis stream of entries.")


class KVTierConfig(Frozen):
    enabled: bool = Field(default=False, description="Run LMCache in every engine.")
    chunk_size: int = Field(default=256, ge=16, description="Tokens per LMCache chunk (key).")
    local_cpu: bool = Field(
        default=False, description="Also keep chunks in each engine's host memory."
    )
    max_local_cpu_size_gb: float = Field(
        default=0.5, gt=0, description="LMCache's host staging buffer per engine (GiB)."
    )
    remote_serde: Literal["naive", "cachegen"] = Field(
        default="naive", description="Serialization of chunks in Redis."
    )
    hash_seed: str = Field(
        default="0", description="PYTHONHASHSEED of every engine: chunk keys must agree."
    )
    redis_timeout_s: float = Field(
        default=1.0, gt=0, description="Bound on each Redis call of an engine's KV lookups "
        "and stores; a lookup that runs over it is a miss, so a paused or unreachable Redis "
        "costs a request at most about this, not a stalled engine.")
