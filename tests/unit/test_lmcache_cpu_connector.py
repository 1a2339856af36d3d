"""The CPU device connector against vLLM's own CPU KV-cache write kernel (no engine).

vLLM writes K/V into the paged cache with `cpu_attn_reshape_and_cache`; the connector must
read back exactly those K/V for any token range, and writing a partial block must produce
the same bytes as the kernel writing the same tokens.
"""

from __future__ import annotations

import types

import pytest
import torch

vllm_ops = pytest.importorskip("vllm._custom_ops")
from lmcache.utils import EngineType
from lmcache.v1 import gpu_connector
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.memory_management import MemoryFormat
from lmcache.v1.metadata import LMCacheMetadata

import sluice.cache_tier.lmcache_cpu_connector as cpu_connector

L, NH, HS, BS, NB, DT = 3, 2, 64, 128, 6, torch.bfloat16


def _write_with_vllm_kernel(caches, k, v, slots) -> None:
    for layer, cache in enumerate(caches):
        kc, vc = cache.view(NB, NH, 2 * BS, HS).chunk(2, dim=2)
        vllm_ops.cpu_attn_reshape_and_cache(k[layer], v[layer], kc, vc, slots, "vec")


def _memobj(tokens: int):
    return types.SimpleNamespace(tensor=torch.empty(2, L, tokens, NH * HS, dtype=DT),
                                 metadata=types.SimpleNamespace(fmt=MemoryFormat.KV_2LTD))


def _slots(blocks: list[int], tokens: int) -> torch.Tensor:
    ids = torch.tensor(blocks)
    return (ids[:, None] * BS + torch.arange(BS)[None]).flatten()[:tokens]


def test_factory_returns_the_cpu_connector_on_cpu() -> None:
    meta = LMCacheMetadata(model_name="x", world_size=1, local_world_size=1, worker_id=0,
                           local_worker_id=0, kv_dtype=DT, kv_shape=(L, 2, 16, NH, HS),
                           chunk_size=16)
    conn = gpu_connector.CreateGPUConnector(LMCacheEngineConfig.from_env(), meta,
                                            EngineType.VLLM, layout_hints={})
    assert isinstance(conn, cpu_connector.VLLMPagedMemCPUConnector)


def test_round_trip_matches_vllm_kernel_including_partial_blocks() -> None:
    torch.manual_seed(0)
    conn = cpu_connector.VLLMPagedMemCPUConnector(L, NH, HS, DT, isa="vec")
    tokens = 200
    k = torch.randn(L, tokens, NH, HS).to(DT)
    v = torch.randn(L, tokens, NH, HS).to(DT)
    caches = [torch.zeros(NB, NH, BS, 2 * HS, dtype=DT) for _ in range(L)]
    slots = _slots([4, 1], tokens)
    _write_with_vllm_kernel(caches, k, v, slots)

    starts = list(range(0, 192, 16))
    objs = [_memobj(16) for _ in starts]
    conn.batched_from_gpu(objs, starts, [s + 16 for s in starts], kvcaches=caches,
                          slot_mapping=slots, offset=0)
    for obj, s in zip(objs, starts):
        assert torch.equal(obj.tensor[0].view(L, 16, NH, HS), k[:, s:s + 16])
        assert torch.equal(obj.tensor[1].view(L, 16, NH, HS), v[:, s:s + 16])

    # load 144 tokens (ends mid-block) into other blocks of a fresh cache
    loaded = [torch.zeros_like(c) for c in caches]
    new_slots = _slots([0, 5], 144)
    conn.batched_to_gpu(objs[:9], starts[:9], [s + 16 for s in starts[:9]], kvcaches=loaded,
                        slot_mapping=new_slots, vllm_cached_tokens=0)
    expected = [torch.zeros_like(c) for c in caches]
    _write_with_vllm_kernel(expected, k[:, :144], v[:, :144], new_slots)
    assert all(torch.equal(a, b) for a, b in zip(loaded, expected))


def test_a_layout_it_cannot_read_is_refused_by_name() -> None:
    """vLLM picks its CPU attention ISA per machine (AMX CPUs: 'amx' for bf16 with large
    blocks); the connector reads the 'vec'/'vec16' layouts only, and says so."""
    conn = cpu_connector.VLLMPagedMemCPUConnector(L, NH, HS, DT, isa="amx")
    caches = [torch.zeros(NB, NH, BS, 2 * HS, dtype=DT) for _ in range(L)]
    with pytest.raises(NotImplementedError, match="'amx' layout not supported"):
        conn.batched_from_gpu([_memobj(16)], [0], [16], kvcaches=caches,
                              slot_mapping=_slots([0], 16), offset=0)
