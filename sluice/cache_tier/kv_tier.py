"""The shared KV tier: LMCache inside every vLLM engine, Redis as the shared backend.

Owns its config and turns it into what an engine needs: a `kv_transfer_config` (LMCache's
vLLM connector; on CPU engines Sluice's subclass that installs the CPU device connector) and
the LMCACHE_* environment of the engine processes. Every engine gets the same hash seed, so
chunk keys written by one replica are found by all.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sluice.cache_tier.redis_target import lmcache_env

CPU_CONNECTOR_MODULE = "sluice.cache_tier.lmcache_cpu_connector"


class KVTierConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

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


def kv_transfer_config(device: Literal["cpu", "cuda"]) -> dict[str, Any]:
    if device == "cpu":
        return {"kv_connector": "LMCacheCPUConnectorV1",
                "kv_connector_module_path": CPU_CONNECTOR_MODULE, "kv_role": "kv_both"}
    return {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}


def engine_env(config: KVTierConfig, redis_url: str) -> dict[str, str]:
    """LMCACHE_* settings for every engine process (redis:// or redis-sentinel:// URLs)."""
    return {
        "PYTHONHASHSEED": config.hash_seed,
        **lmcache_env(redis_url),
        "LMCACHE_CHUNK_SIZE": str(config.chunk_size),
        "LMCACHE_LOCAL_CPU": "True" if config.local_cpu else "False",
        "LMCACHE_MAX_LOCAL_CPU_SIZE": str(config.max_local_cpu_size_gb),
        "LMCACHE_REMOTE_SERDE": config.remote_serde,
    }
