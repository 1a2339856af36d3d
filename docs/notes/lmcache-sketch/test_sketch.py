import sys, types, torch
sys.path.insert(0, "/tmp/lmc_sketch")
import vllm._custom_ops as ops
import lmcache_cpu_connector as m
import lmcache.v1.gpu_connector as gc
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.metadata import LMCacheMetadata
from lmcache.v1.memory_management import MemoryFormat
from lmcache.utils import EngineType
torch.manual_seed(0)
L, NH, HS, BS, NB, dt = 3, 2, 64, 128, 6, torch.bfloat16
md = LMCacheMetadata(model_name="x", world_size=1, local_world_size=1, worker_id=0, local_worker_id=0,
                     kv_dtype=dt, kv_shape=(L, 2, 16, NH, HS), chunk_size=16)
cfg = LMCacheEngineConfig.from_env()
conn = gc.CreateGPUConnector(cfg, md, EngineType.VLLM, layout_hints={})
print("factory returned:", type(conn).__name__)
# simulate vLLM: write K/V for a 200-token request with vLLM's own kernel
caches = [torch.zeros(NB, NH, BS, 2 * HS, dtype=dt) for _ in range(L)]
block_ids = torch.tensor([4, 1])
T = 200
slot_mapping = (block_ids[:, None] * BS + torch.arange(BS)[None]).flatten()[:T]
K = torch.randn(L, T, NH, HS).to(dt); V = torch.randn(L, T, NH, HS).to(dt)
for l in range(L):
    kc, vc = caches[l].view(NB, NH, 2 * BS, HS).chunk(2, dim=2)
    ops.cpu_attn_reshape_and_cache(K[l], V[l], kc, vc, slot_mapping, "vec")
def memobj(t):
    return types.SimpleNamespace(tensor=torch.empty(2, L, t, NH * HS, dtype=dt),
                                 metadata=types.SimpleNamespace(fmt=MemoryFormat.KV_2LTD))
starts = list(range(0, 192, 16)); ends = [s + 16 for s in starts]
objs = [memobj(16) for _ in starts]
conn.batched_from_gpu(objs, starts, ends, kvcaches=caches, slot_mapping=slot_mapping, offset=0)
ok = all(torch.equal(o.tensor[0].view(L, 16, NH, HS), K[:, s:e]) and torch.equal(o.tensor[1].view(L, 16, NH, HS), V[:, s:e])
         for o, s, e in zip(objs, starts, ends))
print("from_gpu matches K/V written by vLLM kernel:", ok)
# load the first 144 tokens (9 chunks, partial 2nd block) into different blocks of a fresh cache
new_caches = [torch.zeros_like(c) for c in caches]
nb_ids = torch.tensor([0, 5])
new_slots = (nb_ids[:, None] * BS + torch.arange(BS)[None]).flatten()[:144]
conn.batched_to_gpu(objs[:9], starts[:9], ends[:9], kvcaches=new_caches, slot_mapping=new_slots, vllm_cached_tokens=0)
ref = [torch.zeros_like(c) for c in caches]
for l in range(L):
    kc, vc = ref[l].view(NB, NH, 2 * BS, HS).chunk(2, dim=2)
    ops.cpu_attn_reshape_and_cache(K[l, :144], V[l, :144], kc, vc, new_slots, "vec")
print("to_gpu bytes == vLLM kernel writing the same tokens:", all(torch.equal(a, b) for a, b in zip(new_caches, ref)))
# naive per-token-row interpretation (what the brief assumed) for comparison
naive_k = caches[0][slot_mapping // BS, :, slot_mapping % BS, :HS]
print("naive [K|V]-in-last-dim read equals true K:", torch.equal(naive_k, K[0]))
