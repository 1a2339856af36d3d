"""The ingress deployment: Sluice's OpenAI-compatible HTTP edge on Ray Serve.

One hop from Serve's HTTP proxy. The body is parsed once into the engine's typed request, the
target model is decided in-process, and the chosen LLMServer deployment is called by handle
with streaming; its chunks are relayed unchanged. Errors of every kind leave through one
handler as OpenAI error JSON.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import Coroutine
from contextlib import nullcontext
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import trace
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from sluice.accounting.accountant import Accountant, Admission
from sluice.accounting.response_cost import UsagePricer
from sluice.cache_tier.response_cache import CacheLookup
from sluice.config import PlatformConfig
from sluice.deployments.answer_cache import AnswerCache, cache_headers
from sluice.deployments.buffered_sse import sse_events
from sluice.deployments.cascade import CascadeRunner
from sluice.deployments.protocol import (
    Endpoint,
    LLMRequest,
    RequestLimits,
    decode_json,
    parse_request,
    read_body,
    with_usage_event,
)
from sluice.deployments.relay import REPLICA_HEADER, EngineStream, call_engine
from sluice.deployments.routing_setup import build_runners, lazy_embedder
from sluice.errors import NotFound, SluiceError, unexpected
from sluice.observability.metrics import CONTENT_TYPE, Metrics
from sluice.observability.request_meter import RequestMeter
from sluice.observability.response_watch import Outcome, watch
from sluice.observability.tracing import (
    OPERATIONS,
    end_span,
    fail_span,
    set_request,
    start_span,
    tracer_for,
)
from sluice.router.static import RouteDecision, StaticRouter

log = logging.getLogger(__name__)


def _error_response(err: SluiceError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _running_replicas() -> dict[str, int]:
    """Running replicas per model deployment, from Serve's controller ({} if it won't say)."""
    try:
        apps = serve.status().applications
    except Exception as exc:  # noqa: BLE001 - readiness must not fail on a status call
        log.warning("serve.status() failed: %r", exc)
        return {}
    prefix = "SluiceLLMServer:"
    return {name[len(prefix):]: int(dep.replica_states.get("RUNNING", 0))
            for app in apps.values() for name, dep in app.deployments.items()
            if name.startswith(prefix)}


def _route_headers(decision: RouteDecision) -> dict[str, str]:
    return {"x-sluice-model": decision.model, "x-sluice-route": decision.route}


@dataclasses.dataclass
class _Shape:
    """What the watch needs to know of the request: did the client ask for the usage event,
    and roughly how large is its prompt (for an answer that ends before its usage)."""

    client_usage: bool = True
    body: dict[str, Any] = dataclasses.field(default_factory=dict)

    def estimate(self, token_events: int) -> dict[str, Any]:
        """Only for an answer cut short, so the prompt is measured then, not per request:
        ~4 characters a token; each token event carries at least one token."""
        prompt = self.body.get("messages") or self.body.get("prompt") or ""
        return {"prompt_tokens": len(json.dumps(prompt)) // 4,
                "completion_tokens": token_events}


_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _client_id(request: Request) -> str | None:
    """The client's x-request-id when it is a sane id (Serve mints one otherwise); a long or
    odd one is not carried into response ids, error messages, the ledger or logs."""
    given = request.headers.get("x-request-id") or ""
    return given if _CLIENT_ID.fullmatch(given) else None


def _request_id(request: Request) -> str:
    return _client_id(request) or f"req-{uuid.uuid4().hex}"


def create_app() -> FastAPI:
    """The FastAPI app with Sluice's error handling; routes are methods of the ingress."""
    app = FastAPI(title="Sluice", docs_url=None, redoc_url=None)

    @app.exception_handler(SluiceError)
    async def _sluice_error(_: Request, exc: SluiceError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = NotFound(str(exc.detail))
        err.status = exc.status_code
        return _error_response(err)

    @app.exception_handler(Exception)
    async def _last_resort(request: Request, exc: Exception) -> JSONResponse:
        request_id = _client_id(request)
        log.error("unhandled error in ingress (request id %s)", request_id, exc_info=exc)
        return _error_response(unexpected(exc, request_id))

    return app


app = create_app()


@serve.deployment(max_ongoing_requests=1000)
@serve.ingress(app)
class SluiceIngress:
    """Routes each request to a model deployment and relays its answer."""

    def __init__(self, config: dict[str, Any], models: dict[str, DeploymentHandle],
                 redis_url: str | None = None) -> None:
        self._config = PlatformConfig.model_validate(config)
        ingress = self._config.profile.ingress
        self._limits = RequestLimits(max_n=ingress.max_n, max_tokens=ingress.max_tokens_limit)
        self._max_body_bytes = ingress.max_body_bytes
        routes = self._config.routing.routes if self._config.routing else ()
        self._router = StaticRouter(self._config.catalog, ingress.auto_route, routes)
        self._handles = models
        self._streams = {name: h.options(stream=True) for name, h in models.items()}
        self._first_item_timeout_s = ingress.first_token_timeout_s
        self._engine_attempts = ingress.engine_attempts
        self._created = int(time.time())
        self._background: set[asyncio.Task[None]] = set()
        self._tracer = tracer_for(self._config.profile.tracing)
        self._spans = self._tracer or trace.NoOpTracer()  # child spans
        embedder = lazy_embedder()
        profile = self._config.profile
        self._cache = AnswerCache(profile.response_cache, profile.semantic_cache, redis_url,
                                  embedder, self._off_hot_path, self._spans)
        self._runners = build_runners(self._config, self._call, self._off_hot_path, embedder,
                                      tracer=self._spans)
        self._metrics = Metrics(caches=self._cache.counters, routes=self._route_snapshots)
        self._pricer = UsagePricer({m.name: m.pricing for m in self._config.catalog.models})
        self._accountant = Accountant(self._config.profile.accounting, redis_url,
                                      self._off_hot_path, self._metrics)

    async def __del__(self) -> None:
        """Serve calls this on graceful shutdown: write the ledger records still buffered."""
        accountant = getattr(self, "_accountant", None)
        if accountant is not None:
            await accountant.close()

    # ---- inference -------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self._metered("chat", request)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._metered("completions", request)

    async def _metered(self, endpoint: Endpoint, request: Request) -> Response:
        """Admitted, then metered, priced, traced and recorded from its answer's outcome."""
        meter = RequestMeter(self._metrics)
        span = start_span(self._tracer, endpoint, request.headers) if self._tracer else None
        request_id = _request_id(request)
        admission: Admission | None = None
        shape = _Shape()
        try:
            admission = await self._accountant.admit(request.headers, request_id)
            with trace.use_span(span, record_exception=False, set_status_on_exception=False
                                ) if span is not None else nullcontext():
                response = await self._generate(endpoint, request, request_id, meter,
                                                admission, shape, span)
        except BaseException as exc:
            # 499: the client went away (cancelled); anything else unexpected is our bug: 500
            status = (exc.status if isinstance(exc, SluiceError)
                      else 500 if isinstance(exc, Exception) else 499)
            meter.failed(status)
            if span is not None:
                fail_span(span, status, str(exc))
            if admission is not None:
                spent = self._pricer.price(None, "", hit=False, stages=admission.stages)
                meter.charged(spent)
                self._accountant.settle(admission, request_id, meter.model, status, None,
                                        spent.total_usd)
            raise
        admitted = admission

        def ended(outcome: Outcome) -> None:
            meter.finished(outcome)
            if span is not None:
                end_span(span, outcome)
            self._accountant.settle(admitted, request_id, meter.model, outcome.status,
                                    outcome, outcome.cost_usd)

        return watch(response, started=meter.started, clock=time.perf_counter,
                     client_usage=shape.client_usage, on_end=ended, estimate=shape.estimate,
                     price=lambda usage, model, hit: self._pricer.price(
                         usage, model, hit=hit, stages=admitted.stages))

    async def _generate(self, endpoint: Endpoint, request: Request, request_id: str,
                        meter: RequestMeter, admission: Admission, shape: _Shape,
                        span: Any = None) -> Response:
        body = decode_json(await read_body(request.stream(), request.headers.get(
            "content-length"), self._max_body_bytes))
        llm_request = parse_request(endpoint, body, self._limits)
        llm_request.request_id = request_id
        if span is not None:
            set_request(span, endpoint, llm_request)
        shape.client_usage = with_usage_event(llm_request)
        shape.body = body
        if llm_request.model in self._runners or llm_request.model in self._handles:
            meter.routed(llm_request.model)  # (unknown names would grow the label set)
        extra: dict[str, str] = {}
        if admission.verdict.level == "soft":
            extra["x-sluice-budget"] = "soft"
        runner = self._runners.get(llm_request.model)
        if runner is not None and admission.verdict.downgrade:
            llm_request.model = runner.policy.route.small  # the budget's soft limit
            self._accountant.guard.downgraded(admission.verdict)
            extra["x-sluice-route"] = "budget-downgrade"
        elif runner is not None:
            return await self._cascade(endpoint, llm_request, body, request, runner, extra,
                                       admission.principal.tenant)
        with self._spans.start_as_current_span("sluice.route") as route_span:
            decision = self._router.decide(llm_request.model)
            route_span.set_attributes({"sluice.route": decision.route,
                                       "sluice.route.model": decision.model})
        headers = {**_route_headers(decision), **extra}
        cached = await self._cache.lookup(endpoint, decision.model, body, request.headers,
                                        admission.principal.tenant)
        headers.update(cache_headers(cached))
        if cached.body is not None:
            return self._cached(llm_request, cached.body, headers)
        stream = await self._call(decision.model, endpoint, llm_request)
        if stream.replica:
            headers[REPLICA_HEADER] = stream.replica
        return self._relay(llm_request, stream, headers, cached)

    async def _cascade(self, endpoint: Endpoint, llm_request: LLMRequest, body: dict[str, Any],
                       request: Request, runner: CascadeRunner, extra: dict[str, str],
                       tenant: str) -> Response:
        """A virtual model: the route's stages decide; a judged answer comes back buffered."""
        cached = await self._cache.lookup(endpoint, llm_request.model, body, request.headers,
                                        tenant)
        if cached.body is not None:
            headers = {"x-sluice-route": "cache", "x-sluice-model": llm_request.model,
                       **cache_headers(cached), **extra}
            return self._cached(llm_request, cached.body, headers)
        with self._spans.start_as_current_span("sluice.route") as route_span:
            outcome = await runner.run(endpoint, llm_request)
            route_span.set_attributes({"sluice.route": outcome.route,
                                       "sluice.route.model": outcome.model,
                                       **{f"sluice.score.{k}": v
                                          for k, v in outcome.scores.items()}})
        headers = {**outcome.headers(), **cache_headers(cached), **extra}
        if outcome.stream is not None:
            return self._relay(llm_request, outcome.stream, headers, cached)
        assert outcome.response is not None
        if llm_request.stream:
            options = llm_request.stream_options
            events = sse_events(endpoint, outcome.response,
                                bool(options and options.include_usage))
            payload, media = "".join(events), "text/event-stream"
        else:
            payload, media = json.dumps(outcome.response), "application/json"
        self._cache.store(cached, payload)
        return Response(payload, media_type=media, headers=headers)

    async def _call(self, model: str, endpoint: Endpoint, llm_request: LLMRequest
                    ) -> EngineStream:
        """One engine call; each gets its own engine request id under the client's."""
        engine_request = llm_request.model_copy(update={
            "model": model, "request_id": f"{llm_request.request_id}.{uuid.uuid4().hex[:8]}"})
        operation = OPERATIONS.get(endpoint, endpoint)
        with self._spans.start_as_current_span(
                f"{operation} {model}", kind=trace.SpanKind.CLIENT,
                attributes={"gen_ai.operation.name": operation, "gen_ai.provider.name": "vllm",
                            "gen_ai.request.model": model,
                            "sluice.stream": bool(engine_request.stream)}) as span:
            stream = await call_engine(self._streams[model], endpoint, engine_request, model,
                                       self._first_item_timeout_s, self._engine_attempts)
            span.set_attribute("sluice.replica", stream.replica or "")
        return stream

    @staticmethod
    def _cached(llm_request: LLMRequest, body: str, headers: dict[str, str]) -> Response:
        media = "text/event-stream" if llm_request.stream else "application/json"
        return Response(body, media_type=media, headers=headers)

    def _relay(self, llm_request: LLMRequest, stream: EngineStream, headers: dict[str, str],
               cached: CacheLookup) -> Response:
        if llm_request.stream:
            body_iter = self._cache.recorded(stream, cached) if cached.store_key else stream.sse()
            return StreamingResponse(body_iter, media_type="text/event-stream",
                                     headers={**headers, "cache-control": "no-cache"})
        payload = stream.first.model_dump_json()
        self._cache.store(cached, payload)
        return Response(payload, media_type="application/json", headers=headers)

    def _off_hot_path(self, work: Coroutine[Any, Any, None]) -> None:
        # a context of its own: background work (shadow calls, cache stores, alerts) is not
        # part of the request's trace or of its bill
        task = asyncio.create_task(work, context=contextvars.Context())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
        return {"routes": self._route_snapshots()}

    @app.get("/v1/cache/stats")
    async def cache_stats(self) -> dict[str, Any]:
        """This ingress replica's response-cache and semantic-cache counters."""
        return await self._cache.stats()

    @app.get("/v1/usage")
    async def usage(self, request: Request) -> dict[str, Any]:
        """Spend and tokens from the ledger, grouped, for the caller's tenant."""
        return await self._accountant.usage(request.headers, dict(request.query_params))

    @app.get("/metrics")
    async def metrics(self) -> Response:
        """Prometheus exposition of this ingress replica's metrics."""
        await self._accountant.guard.refresh_all()  # budget gauges: the fleet's spend now
        return Response(self._metrics.render(), media_type=CONTENT_TYPE)

    def _route_snapshots(self) -> dict[str, dict[str, Any]]:
        return {name: r.policy.snapshot() for name, r in self._runners.items()}

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        names = list(self._handles)
        results = await asyncio.gather(
            *(self._model_ready(self._handles[n]) for n in names), return_exceptions=False
        )
        models = {n: ("ready" if ok else "unavailable") for n, ok in zip(names, results)}
        ready = all(results)
        cache = await self._cache.health()
        # the KV tier shares this Redis; engines keep serving (recomputing) without it
        kv_tier = cache if self._config.profile.kv_tier.enabled else "disabled"
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "models": models,
             "replicas": await asyncio.to_thread(_running_replicas),
             "response_cache": cache, "kv_tier": kv_tier},
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
