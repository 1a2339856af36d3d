"""The private Ray hooks Sluice still relies on, in one place, checked against the Ray version
they were read from. Everything else uses Ray's public API (`ray.serve.request_router`,
`ray.serve.llm`, handles' `choose_replica`/`dispatch`).

The hooks, and why no public API does their job (Ray 2.60):
- `VLLMEngine` (ray.llm._internal) and its `_prepare_engine_config`: the only place where
  the vLLM config Ray Serve LLM builds can be changed before the engine starts
  (`SingleWorkerCpuEngine` picks vLLM's in-process executor on CPU);
- `LLMServer._default_engine_cls` and `LLMServer._run_request`: the engine class of a
  deployment, and the one method every chat/completions call passes through (the latency
  window of the SLO autoscaler wraps its stream);
- `VLLMEngine._engine_client` (an instance attribute): vLLM's AsyncLLM, whose public
  `get_num_unfinished_requests` tells how many requests the engine holds
  (`SluiceLLMServer.engine_requests`, which tests use to see aborts reach the engine);
- `RequestRouter._probe_queue_lens` and `RequestRouter._use_replica_queue_len_cache`: the
  queue-length probe and cache switch Serve's own power-of-two router uses; a custom router
  has no public way to ask a replica its queue length.

Importing this module fails on another Ray version, naming what to re-check; set
SLUICE_UNCHECKED_RAY=1 to run anyway (at your own risk) while porting.
"""

from __future__ import annotations

import os

import ray
from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
from ray.serve.llm import LLMServer
from ray.serve.request_router import RequestRouter

RAY_VERSION = "2.60.0"
HOOKS: dict[type, tuple[str, ...]] = {
    VLLMEngine: ("_prepare_engine_config",),
    LLMServer: ("_default_engine_cls", "_run_request"),
    RequestRouter: ("_probe_queue_lens",),
}

__all__ = ["RAY_VERSION", "VLLMEngine", "check"]


def check(version: str = ray.__version__) -> None:
    """Raise if Ray is not the version these hooks were read from, or one is gone."""
    if os.environ.get("SLUICE_UNCHECKED_RAY") == "1":
        return
    if version != RAY_VERSION:
        raise ImportError(
            f"Sluice uses private hooks of Ray {RAY_VERSION} (sluice/deployments/ray_compat.py); "
            f"Ray {version} is installed. Re-check them against its source, then update "
            "RAY_VERSION (or set SLUICE_UNCHECKED_RAY=1 to try anyway).")
    missing = [f"{cls.__name__}.{name}" for cls, names in HOOKS.items() for name in names
               if not hasattr(cls, name)]
    if missing:
        raise ImportError(f"Ray {version} lacks the hooks Sluice uses: {missing}")


check()
