import sys; sys.path.insert(0, "/tmp/lmc_sketch")
from vllm.config.kv_transfer import KVTransferConfig
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from vllm.distributed.kv_transfer.kv_connector.v1 import supports_hma
from vllm.utils.func_utils import supports_kw
c = KVTransferConfig(kv_connector="LMCacheCPUConnectorV1", kv_connector_module_path="lmcache_cpu_connector", kv_role="kv_both")
cls = KVConnectorFactory.get_connector_class(c)
print(cls, "supports kv_cache_config kw:", supports_kw(cls, "kv_cache_config"), "HMA:", KVConnectorFactory.supports_hma_config(c))
import lmcache.v1.gpu_connector as gc; print("patched factory:", gc.CreateGPUConnector.__module__, gc.CreateGPUConnector.__name__)
