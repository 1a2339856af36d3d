"""The composition root: the whole Serve application from one validated PlatformConfig."""

from __future__ import annotations

import os
from typing import Any

from ray.serve.deployment import Application

from sluice.deployments.ingress import SluiceIngress
from sluice.deployments.llm_server import build_llm_deployments
from sluice.schema.platform import PlatformConfig
from sluice.schema.serve_app import ServeAppArgs


def build_app(config: PlatformConfig, redis_url: str | None = None) -> Application:
    """Ingress in front of one LLMServer deployment per catalog model.

    redis_url: the shared Redis (response cache, KV tier); None runs without one.
    """
    ingress = config.profile.ingress
    actor_options: dict[str, Any] = {"num_cpus": config.profile.replica_num_cpus}
    if ingress.resources:
        actor_options["resources"] = dict(ingress.resources)
    return SluiceIngress.options(
        num_replicas=ingress.num_replicas,
        ray_actor_options=actor_options,
    ).bind(config.model_dump(mode="json"), build_llm_deployments(config, redis_url), redis_url)


def app_builder(args: dict[str, Any]) -> Application:
    """Ray Serve's application builder: the `import_path` of the config `sluice build` writes.

    Serve's controller calls it with the config's `args` (sluice.schema.serve_app) where it
    builds the app, on the cluster; the Redis URL comes from that process's environment (the
    `ray start` environment of the node) or the head node's address, never from the config.
    """
    from sluice.deployments.serve_config import load_config, resolve_redis_url

    spec = ServeAppArgs.model_validate(args)
    config = load_config(spec)
    return build_app(config, resolve_redis_url(spec, config.profile, os.environ))
