"""CPU device connector for LMCache 0.5.6 + vLLM CPU (CPU_ATTN backend).

LMCache's device-connector factory has branches for CUDA, XPU, HPU and MUSA only; on a CPU
engine it fails and LMCache runs degraded (nothing stored, nothing loaded). vLLM imports the
connector class named in `kv_transfer_config` from `kv_connector_module_path` in every engine
process, so importing this module there installs the CPU branch (see kv_tier.py):

  {"kv_connector": "LMCacheCPUConnectorV1",
   "kv_connector_module_path": "sluice.cache_tier.lmcache_cpu_connector", "kv_role": "kv_both"}

Layout, read from vLLM 0.32's `cpu_attn_reshape_and_cache` (not from its tensor shape, which
misleads): see docs/notes/lmcache-cpu-connector.md.
"""
from __future__ import annotations

import lmcache.v1.gpu_connector as _lmc_gc
import torch
from lmcache import torch_device_type
from lmcache.logging import init_logger
from lmcache.utils import EngineType
from lmcache.v1.gpu_connector.gpu_connectors import GPUConnectorInterface
from lmcache.v1.memory_management import MemoryFormat, MemoryObj
from lmcache.v1.metadata import LMCacheMetadata
from vllm.distributed.kv_transfer.kv_connector.v1.lmcache_connector import (
    LMCacheConnectorV1,
)

logger = init_logger(__name__)


class VLLMPagedMemCPUConnector(GPUConnectorInterface):
    """vLLM CPU_ATTN paged KV  <->  LMCache KV_2LTD memory objects.

    vLLM registers, per layer, a tensor of shape [NB, NH, BS, 2*HS]. Its
    *physical* content per (block, head) plane for the "vec"/"vec16" ISAs
    (what cpu_attn_reshape_and_cache writes) is:
        K^T : [HS, BS]   (K[o, d] at d*BS + o)
        V   : [BS, HS]   (V[o, d] at BS*HS + o*HS + d)
    i.e. NOT "[K|V] in the last dim of token row o".
    Memory object: tensor [2, L, T, NH*HS] (K plane, V plane), fmt KV_2LTD.
    """

    SUPPORTED_ISAS = ("vec", "vec16")

    def __init__(self, num_layers: int, num_kv_heads: int, head_size: int,
                 dtype: torch.dtype, use_mla: bool = False, isa: str | None = None):
        if use_mla:
            raise NotImplementedError("MLA is not supported by the CPU connector")
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_size = head_size
        self.hidden_dim_size = num_kv_heads * head_size
        self.dtype = dtype
        self.use_mla = False
        self.isa = isa
        self.kvcaches: list[torch.Tensor] | None = None
        self._view_cache: dict = {}

    @classmethod
    def from_metadata(cls, metadata: LMCacheMetadata, isa: str | None = None):
        num_layers, _, _, num_kv_heads, head_size = metadata.kv_shape
        return cls(num_layers, num_kv_heads, head_size, metadata.kv_dtype,
                   use_mla=metadata.use_mla, isa=isa)

    # ---- layout helpers ------------------------------------------------
    def _views(self, kv: torch.Tensor):
        key = (kv.data_ptr(), tuple(kv.shape), tuple(kv.stride()))
        hit = self._view_cache.get(key)
        if hit is not None:
            return hit
        nb, nh, bs, cs = kv.shape
        hs = cs // 2
        assert nh == self.num_kv_heads and hs == self.head_size, (kv.shape,)
        if self.isa is None:
            from vllm.v1.attention.backends.cpu_attn import _get_attn_isa
            self.isa = _get_attn_isa(kv.dtype, bs, hs)
        if self.isa not in self.SUPPORTED_ISAS:
            raise NotImplementedError(f"CPU attention ISA {self.isa!r} layout not supported")
        k_t = kv.view(nb, nh, 2, bs * hs)[:, :, 0, :].unflatten(-1, (hs, bs))  # [NB,NH,HS,BS]
        v = kv.view(nb, nh, 2, bs, hs)[:, :, 1]                                  # [NB,NH,BS,HS]
        self._view_cache[key] = (k_t, v, bs)
        return k_t, v, bs

    def _kvcaches(self, kwargs) -> list[torch.Tensor]:
        if "kvcaches" in kwargs:
            self.kvcaches = list(kwargs["kvcaches"])
        assert self.kvcaches is not None, "kvcaches must be passed in kwargs"
        assert len(self.kvcaches) == self.num_layers, (len(self.kvcaches), self.num_layers)
        return self.kvcaches

    @staticmethod
    def _check_fmt(memory_obj: MemoryObj):
        fmt = memory_obj.metadata.fmt
        if fmt != MemoryFormat.KV_2LTD:
            raise ValueError(f"expected KV_2LTD memory object, got {fmt}")

    # ---- GPUConnectorInterface -----------------------------------------
    def get_shape(self, num_tokens: int) -> torch.Size:
        return torch.Size([2, self.num_layers, num_tokens, self.hidden_dim_size])

    @torch.inference_mode()
    def from_gpu(self, memory_obj: MemoryObj, start: int, end: int, **kwargs):
        """paged KV (slots slot_mapping[start:end]) -> memory_obj."""
        assert memory_obj.tensor is not None
        self._check_fmt(memory_obj)
        kvcaches = self._kvcaches(kwargs)
        slots = kwargs["slot_mapping"][start:end].to("cpu", torch.long)
        out = memory_obj.tensor  # [2, L, T, NH*HS]
        t = end - start
        assert out.shape[2] == t, (out.shape, start, end)
        for layer, kv in enumerate(kvcaches):
            k_t, v, bs = self._views(kv)
            b, o = slots // bs, slots % bs
            out[0, layer].view(t, self.num_kv_heads, self.head_size).copy_(k_t[b, :, :, o])
            out[1, layer].view(t, self.num_kv_heads, self.head_size).copy_(v[b, :, o, :])

    @torch.inference_mode()
    def to_gpu(self, memory_obj: MemoryObj, start: int, end: int, **kwargs):
        """memory_obj -> paged KV (slots slot_mapping[start:end])."""
        assert memory_obj.tensor is not None
        self._check_fmt(memory_obj)
        kvcaches = self._kvcaches(kwargs)
        # like VLLMPagedMemGPUConnectorV2: never overwrite tokens vLLM already
        # holds in its own (possibly shared) prefix-cache blocks
        skip = min(end - start, max(0, kwargs.get("vllm_cached_tokens", 0) - start))
        if skip == end - start:
            return
        slots = kwargs["slot_mapping"][start + skip:end].to("cpu", torch.long)
        src = memory_obj.tensor[:, :, skip:]  # [2, L, T', NH*HS]
        t = end - start - skip
        for layer, kv in enumerate(kvcaches):
            k_t, v, bs = self._views(kv)
            b, o = slots // bs, slots % bs
            shape = (t, self.num_kv_heads, self.head_size)
            k_t[b, :, :, o] = src[0, layer].reshape(shape).to(kv.dtype)
            v[b, :, o, :] = src[1, layer].reshape(shape).to(kv.dtype)

    def batched_from_gpu(self, memory_objs, starts, ends, **kwargs):
        for m, s, e in zip(memory_objs, starts, ends, strict=False):
            self.from_gpu(m, s, e, **kwargs)

    def batched_to_gpu(self, memory_objs=None, starts=None, ends=None, **kwargs):
        for m, s, e in zip(memory_objs, starts, ends, strict=False):
            self.to_gpu(m, s, e, **kwargs)


# ---- install into LMCache's factory (runs on import, in every process) ----
_orig_create = _lmc_gc.CreateGPUConnector


def _create_gpu_connector(config, metadata, engine, layout_hints=None):
    if engine == EngineType.VLLM and torch_device_type == "cpu":
        if config.use_layerwise or config.enable_blending or config.use_gpu_connector_v3:
            raise ValueError("CPU connector supports only non-layerwise, non-blending mode")
        logger.info("Using VLLMPagedMemCPUConnector for the CPU KV cache")
        return VLLMPagedMemCPUConnector.from_metadata(metadata)
    return _orig_create(config, metadata, engine, layout_hints)


if getattr(_lmc_gc.CreateGPUConnector, "__name__", "") != "_create_gpu_connector":
    _lmc_gc.CreateGPUConnector = _create_gpu_connector


class LMCacheCPUConnectorV1(LMCacheConnectorV1):
    """Same as vLLM's LMCacheConnectorV1; importing this module installs the
    CPU device connector. Inherits __init__(vllm_config, role, kv_cache_config)."""
