"""The composition root: the whole Serve application from one validated PlatformConfig."""

from __future__ import annotations

from ray.serve.deployment import Application

from sluice.deployments.ingress import SluiceIngress
from sluice.deployments.llm_server import build_llm_deployments
from sluice.schema.platform import PlatformConfig


def build_app(config: PlatformConfig, redis_url: str | None = None) -> Application:
    """Ingress in front of one LLMServer deployment per catalog model.

    redis_url: the shared Redis (response cache, KV tier); None runs without one.
    """
    ingress = config.profile.ingress
    return SluiceIngress.options(
        num_replicas=ingress.num_replicas,
        ray_actor_options={"num_cpus": config.profile.replica_num_cpus},
    ).bind(config.model_dump(mode="json"), build_llm_deployments(config, redis_url), redis_url)
