"""The ingress deployment: Sluice's OpenAI-compatible HTTP edge on Ray Serve.

Thin bindings, as Ray Serve LLM's OpenAiIngress is: each route hands the request to the
framework-free pipeline (`sluice.pipeline.handler`, which documents the order a request goes
through) and renders what comes back (`sluice.deployments.http`). The catalog, health,
usage and metrics routes read the same collaborators.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from sluice.accounting.key_admin import MAX_BODY_BYTES as MAX_KEY_BODY_BYTES
from sluice.accounting.tenancy import Principal
from sluice.cache_tier.redis_target import async_client
from sluice.cache_tier.store_errors import STORE_ERRORS
from sluice.deployments import anthropic_api, openapi
from sluice.deployments.http import (
    INGRESS_NAME_KEY,
    body_of,
    create_app,
    render,
    render_message,
    request_id,
)
from sluice.deployments.rollout_admin import MAX_BODY_BYTES as MAX_ROLLOUT_BODY_BYTES
from sluice.deployments.rollout_admin import check_operator, spec_of
from sluice.errors import NotFound, Unavailable
from sluice.observability.metrics import CONTENT_TYPE
from sluice.observability.metrics_endpoint import MetricsEndpoint, Render
from sluice.observability.scrape_targets import TIMEOUT_S as REGISTRY_TIMEOUT_S
from sluice.observability.scrape_targets import ReplicaTarget, TargetRegistry, service_discovery
from sluice.pipeline.assembly import assemble
from sluice.pipeline.request import Endpoint
from sluice.pipeline.request_body import read_body
from sluice.schema.platform import PlatformConfig

log = logging.getLogger(__name__)
LLM_DEPLOYMENT_PREFIX = "SluiceLLMServer:"  # + the model: each engine deployment's name


def _running_replicas() -> dict[str, int]:
    """Running replicas per model deployment, from Serve's controller ({} if it won't say)."""
    try:
        apps = serve.status().applications
    except Exception as exc:  # noqa: BLE001 - readiness must not fail on a status call
        log.warning("serve.status() failed: %r", exc)
        return {}
    prefix = LLM_DEPLOYMENT_PREFIX
    return {name[len(prefix):]: int(dep.replica_states.get("RUNNING", 0))
            for app in apps.values() for name, dep in app.deployments.items()
            if name.startswith(prefix)}


def _replica_id() -> str:
    """This ingress replica's Serve replica id ("local" outside a Serve replica: tests)."""
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside a Serve replica
        return "local"


def _node_ip() -> str:
    """The address other nodes reach this replica's node at (Ray's node IP); loopback
    outside a Ray worker (tests)."""
    import ray
    import ray.util

    if not ray.is_initialized():
        return "127.0.0.1"
    return str(ray.util.get_node_ip_address())


def scrape_target(port: int | None, render: Render, redis_url: str | None,
                  replica: str, host: str) -> ReplicaTarget | None:
    """This replica's own metrics endpoint and its entry in the registry, when the profile
    turns them on (`ingress.metrics_port`)."""
    if port is None:
        return None
    registry = (TargetRegistry(async_client(redis_url, REGISTRY_TIMEOUT_S))
                if redis_url else None)
    return ReplicaTarget(MetricsEndpoint(render, host, port), registry, replica)


class _IngressName:
    """Names the ingress replica that answered, on every response (`x-sluice-ingress`, its
    Serve replica id): which replica of several took a request is otherwise invisible. Pure
    ASGI, so streamed bodies pass through untouched."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._name: bytes | None = None

    def _replica(self) -> bytes:
        if self._name is None:
            self._name = _replica_id().encode()
        return self._name

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        name = self._replica()
        scope[INGRESS_NAME_KEY] = name.decode()  # for the last-resort 500 (sluice.http)

        async def named(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (INGRESS_HEADER, name)]
            await send(message)

        await self._app(scope, receive, named)


INGRESS_HEADER = b"x-sluice-ingress"
app = create_app()
app.add_middleware(_IngressName)


@serve.deployment(max_ongoing_requests=1000)
@serve.ingress(app)
class SluiceIngress:
    """Routes each request to a model deployment and relays its answer."""

    def __init__(self, config: dict[str, Any], models: dict[str, DeploymentHandle],
                 redis_url: str | None = None) -> None:
        self._config = PlatformConfig.model_validate(config)
        self._handles = models
        self._platform = assemble(self._config, models, redis_url)
        self._router = self._platform.router
        self._cache = self._platform.cache
        self._accountant = self._platform.accountant
        self._metrics = self._platform.metrics
        self._created = int(time.time())
        # the OpenAPI document states the served model ids and bounds, known only now
        self._api = openapi.ApiDocument(openapi.ApiFacts.of(self._config, self._router))
        # its own scrape target (behind Serve's proxy /metrics reads any replica's): started
        # here, on the replica's event loop, whether or not a request ever comes
        self._scrape = scrape_target(self._config.profile.ingress.metrics_port,
                                     self._exposition, redis_url, _replica_id(), _node_ip())
        if self._scrape is not None:
            self._scrape.start()

    async def __del__(self) -> None:
        """Serve calls this on graceful shutdown: write the ledger records still buffered."""
        platform = getattr(self, "_platform", None)
        scrape = getattr(self, "_scrape", None)
        if scrape is not None:
            await scrape.close()  # out of the registry first: Prometheus stops scraping it
        if platform is not None:
            await platform.accountant.close()
            await platform.rate_limiter.close()
            await platform.engines.close()  # the providers' connection pools
            await platform.rollouts.close()  # its buffered observations

    # ---- inference -------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self._answer("chat", request)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._answer("completions", request)

    @app.post(anthropic_api.PATH, include_in_schema=False)  # Anthropic's API: its own docs
    async def messages(self, request: Request) -> Response:
        """Anthropic's Messages API, answered by the same pipeline as a chat completion
        (`sluice.deployments.anthropic_api`)."""
        body = anthropic_api.chat_body(body_of(request), request.headers.get("content-length"),
                                       self._config.profile.ingress.max_body_bytes)
        self._platform.rollouts.start()
        settled = await self._platform.handler.handle(
            "chat", anthropic_api.chat_headers(request.headers), body, request_id(request))
        return await render_message(settled)

    async def _answer(self, endpoint: Endpoint, request: Request) -> Response:
        self._platform.rollouts.start()  # (once: the loop needs Serve's event loop)
        settled = await self._platform.handler.handle(endpoint, request.headers,
                                                      body_of(request), request_id(request))
        return render(settled)

    # ---- catalog and health ----------------------------------------------------------

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._card(n) for n in self._router.model_ids]}

    @app.get("/v1/models/{model_id}")
    async def model(self, model_id: str) -> dict[str, Any]:
        self._router.decide(model_id)  # 404 for unknown ids
        return self._card(model_id)

    @app.get("/v1/routing/stats")
    async def routing_stats(self) -> dict[str, Any]:
        """Per cascade route: routes taken, fallbacks, escalation rate, judge reliability."""
        return {"routes": self._platform.route_snapshots()}

    @app.get("/v1/cache/stats")
    async def cache_stats(self) -> dict[str, Any]:
        """This ingress replica's response-cache and semantic-cache counters."""
        return await self._cache.stats()

    @app.get("/v1/usage")
    async def usage(self, request: Request) -> dict[str, Any]:
        """Spend and tokens from the ledger, grouped, for the caller's tenant."""
        return await self._accountant.usage(request.headers, dict(request.query_params))

    # ---- key management (admin key) -------------------------------------------------

    @app.get("/v1/admin/keys")
    async def list_keys(self, request: Request) -> dict[str, Any]:
        """The key store's keys (never their secrets)."""
        return await self._platform.key_admin.list(await self._caller(request))

    @app.post("/v1/admin/keys", status_code=201)
    async def create_key(self, request: Request) -> dict[str, Any]:
        """A new key; its secret is in the answer's `key`, and nowhere else."""
        caller = await self._caller(request)
        body = await read_body(body_of(request), request.headers.get("content-length"),
                               MAX_KEY_BODY_BYTES, self._config.profile.ingress.body_timeout_s)
        return await self._platform.key_admin.create(caller, body)

    @app.post("/v1/admin/keys/{key_id}/rotate")
    async def rotate_key(self, key_id: str, request: Request) -> dict[str, Any]:
        """A new secret for the key; the old one is refused within key_refresh_s."""
        return await self._platform.key_admin.rotate(await self._caller(request), key_id)

    @app.delete("/v1/admin/keys/{key_id}")
    async def revoke_key(self, key_id: str, request: Request) -> dict[str, Any]:
        """Revoke the key: refused on every ingress replica within key_refresh_s."""
        return await self._platform.key_admin.revoke(await self._caller(request), key_id)

    # ---- rollouts (an admin key where keys are required) ------------------------------

    async def _operator(self, request: Request) -> None:
        self._platform.rollouts.start()
        check_operator(await self._caller(request),
                       self._config.profile.accounting.auth.required)

    @app.get("/v1/admin/rollouts")
    async def list_rollouts(self, request: Request) -> dict[str, Any]:
        """Every rollout, and the variant serving each model a rollout promoted."""
        await self._operator(request)
        return await self._platform.rollouts.list()

    @app.post("/v1/admin/rollouts", status_code=201)
    async def start_rollout(self, request: Request) -> dict[str, Any]:
        """Start a canary, A/B or shadow rollout (`sluice.schema.rollouts.RolloutSpec`)."""
        await self._operator(request)
        raw = await read_body(body_of(request), request.headers.get("content-length"),
                              MAX_ROLLOUT_BODY_BYTES, self._config.profile.ingress.body_timeout_s)
        return await self._platform.rollouts.begin(spec_of(raw))

    @app.get("/v1/admin/rollouts/{model}")
    async def rollout(self, model: str, request: Request) -> dict[str, Any]:
        """Where a model's rollout stands: share, gates, history, and what each variant
        measured (with the A/B differences and, for a shadow, the pairs' comparison)."""
        await self._operator(request)
        return await self._platform.rollouts.status(model)

    @app.post("/v1/admin/rollouts/{model}/{action}")
    async def rollout_action(self, model: str, action: str, request: Request
                             ) -> dict[str, Any]:
        """pause, resume, promote or abort a model's rollout."""
        await self._operator(request)
        return await self._platform.rollouts.act(model, action)

    async def _caller(self, request: Request) -> Principal:
        return await self._accountant.principal(request.headers)

    @app.get("/metrics")
    async def metrics(self) -> Response:
        """Prometheus exposition of this ingress replica's metrics."""
        return Response(await self._exposition(), media_type=CONTENT_TYPE)

    async def _exposition(self) -> bytes:
        await self._accountant.guard.refresh_all()  # budget gauges: the fleet's spend now
        return self._metrics.render()

    @app.get("/metrics/targets")
    async def metrics_targets(self) -> JSONResponse:
        """Prometheus HTTP service discovery: every live ingress replica's own metrics
        endpoint (`ingress.metrics_port`), from the registry in the shared Redis."""
        if self._scrape is None:
            raise NotFound("No per-replica scrape targets: ingress.metrics_port is not set "
                           "in this profile (scrape /metrics).")
        try:
            targets = await self._scrape.targets()
        except STORE_ERRORS as exc:  # 503: Prometheus keeps the targets it has
            log.warning("scrape target registry unreachable: %r", exc)
            raise Unavailable("The scrape target registry (the shared Redis) is "
                              "unreachable; retry.", code="scrape_registry_unavailable"
                              ) from exc
        return JSONResponse(service_discovery(targets))

    @app.get(openapi.OPENAPI_URL, include_in_schema=False)
    async def openapi_document(self, request: Request) -> JSONResponse:
        """What clients send and get (`sluice.deployments.openapi`)."""
        return JSONResponse(self._api.document(request.app))

    @app.get("/docs", include_in_schema=False)
    async def docs(self) -> Response:
        return openapi.swagger_ui()

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        self._platform.rollouts.start()
        names = list(self._handles)
        results = await asyncio.gather(
            *(self._model_ready(self._handles[n]) for n in names), return_exceptions=False
        )
        models = {n: ("ready" if ok else "unavailable") for n, ok in zip(names, results)}
        ready = all(results)
        cache, providers = await asyncio.gather(self._cache.health(),
                                                self._platform.engines.providers_ready())
        # the KV tier shares this Redis; engines keep serving (recomputing) without it
        kv_tier = cache if self._config.profile.kv_tier.enabled else "disabled"
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "models": models,
             "replicas": await asyncio.to_thread(_running_replicas),
             "response_cache": cache, "kv_tier": kv_tier,
             # reported, not gating: a provider's outage is every ingress replica's alike
             # (taking them out of a load balancer helps no one), and its chain answers
             **({"providers": providers} if providers else {})},
            status_code=200 if ready else 503,
            headers={} if ready else {"Retry-After": "5"},
        )

    @staticmethod
    async def _model_ready(handle: DeploymentHandle, timeout_s: float = 5.0) -> bool:
        try:
            await asyncio.wait_for(handle.check_health.remote(), timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            log.warning("readiness check failed: %r", exc)
            return False
        return True

    def _card(self, model_id: str) -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": self._created,
            "owned_by": "sluice",
            "metadata": self._router.metadata(model_id),
        }
