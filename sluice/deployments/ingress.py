"""The ingress deployment: Sluice's OpenAI-compatible HTTP edge on Ray Serve.

One hop from Serve's HTTP proxy. The body is parsed once into the engine's typed request, the
target model is decided in-process, and the chosen LLMServer deployment is called by handle
with streaming; its chunks are relayed unchanged. Errors of every kind leave through one
handler as OpenAI error JSON.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from sluice.config import PlatformConfig
from sluice.deployments.protocol import Endpoint, RequestLimits, decode_json, parse_request
from sluice.deployments.relay import call_engine
from sluice.errors import NotFound, SluiceError, Unavailable
from sluice.router.static import RouteDecision, StaticRouter

log = logging.getLogger(__name__)


def _error_response(err: SluiceError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _route_headers(decision: RouteDecision) -> dict[str, str]:
    return {"x-sluice-model": decision.model, "x-sluice-route": decision.route}


def _request_id(request: Request) -> str:
    """Serve's proxy guarantees the header (echoing the client's id or minting one)."""
    return request.headers.get("x-request-id") or f"req-{uuid.uuid4().hex}"


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
    async def _last_resort(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in ingress")
        return _error_response(Unavailable(f"Internal error ({type(exc).__name__}); retry."))

    return app


app = create_app()


@serve.deployment(max_ongoing_requests=1000)
@serve.ingress(app)
class SluiceIngress:
    """Routes each request to a model deployment and relays its answer."""

    def __init__(self, config: dict[str, Any], models: dict[str, DeploymentHandle]) -> None:
        self._config = PlatformConfig.model_validate(config)
        ingress = self._config.profile.ingress
        self._limits = RequestLimits(max_n=ingress.max_n, max_tokens=ingress.max_tokens_limit)
        self._router = StaticRouter(self._config.catalog, ingress.auto_route)
        self._handles = models
        self._streams = {name: h.options(stream=True) for name, h in models.items()}
        self._first_item_timeout_s = ingress.first_token_timeout_s
        self._created = int(time.time())

    # ---- inference -------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self._generate("chat", request)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._generate("completions", request)

    async def _generate(self, endpoint: Endpoint, request: Request) -> Response:
        body = decode_json(await request.body())
        llm_request = parse_request(endpoint, body, self._limits)
        decision = self._router.decide(llm_request.model)
        llm_request.model = decision.model
        llm_request.request_id = f"{_request_id(request)}.{uuid.uuid4().hex[:8]}"
        stream = await call_engine(
            self._streams[decision.model], endpoint, llm_request, decision.model,
            self._first_item_timeout_s,
        )
        headers = _route_headers(decision)
        if llm_request.stream:
            return StreamingResponse(stream.sse(), media_type="text/event-stream",
                                     headers={**headers, "cache-control": "no-cache"})
        return Response(stream.first.model_dump_json(), media_type="application/json",
                        headers=headers)

    # ---- catalog and health ----------------------------------------------------------

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._card(n) for n in self._router.model_ids]}

    @app.get("/v1/models/{model_id}")
    async def model(self, model_id: str) -> dict[str, Any]:
        self._router.decide(model_id)  # 404 for unknown ids
        return self._card(model_id)

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
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "models": models},
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
