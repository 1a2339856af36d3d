"""The shared KV tier: LMCache inside every vLLM engine, Redis as the shared backend.

Turns its config (`KVTierConfig`, in sluice.schema.caches) into what an engine needs: a
`kv_transfer_config` (LMCache's vLLM connector; on CPU engines Sluice's subclass that
installs the CPU device connector) and the LMCACHE_* environment of the engine processes. Every engine gets the same hash seed, so
chunk keys written by one replica are found by all.
"""

from __future__ import annotations

from typing import Any, Literal

from sluice.cache_tier.redis_target import lmcache_env
from sluice.schema.caches import KVTierConfig

CPU_CONNECTOR_MODULE = "sluice.cache_tier.lmcache_cpu_connector"


def kv_transfer_config(device: Literal["cpu", "cuda"]) -> dict[str, Any]:
    if device == "cpu":
        return {"kv_connector": "LMCacheCPUConnectorV1",
                "kv_connector_module_path": CPU_CONNECTOR_MODULE, "kv_role": "kv_both"}
    return {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}


def engine_env(config: KVTierConfig, redis_url: str) -> dict[str, str]:
    """LMCACHE_* settings for every engine process (redis:// or redis-sentinel:// URLs)."""
    return {
        "PYTHONHASHSEED": config.hash_seed,
        **lmcache_env(redis_url, config.redis_timeout_s),
        "LMCACHE_CHUNK_SIZE": str(config.chunk_size),
        "LMCACHE_LOCAL_CPU": "True" if config.local_cpu else "False",
        "LMCACHE_MAX_LOCAL_CPU_SIZE": str(config.max_local_cpu_size_gb),
        "LMCACHE_REMOTE_SERDE": config.remote_serde,
    }
