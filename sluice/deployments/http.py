"""The HTTP edge: request ids, errors as OpenAI JSON, and a settled answer rendered once.

This is the only module that turns an answer into headers and bytes (the pipeline returns
data: `sluice.pipeline.settlement.Settled`). The headers name what answered:
`x-sluice-model`, `x-sluice-route`, `x-sluice-cache` (and `-similarity`),
`x-sluice-replica` (and `x-sluice-retries`), the cascade's `x-sluice-<stage>-score` and
`x-sluice-fallback`, `x-sluice-variant` (and `x-sluice-prompt-variant`), `x-sluice-budget:
soft`, and `x-sluice-cost-usd` where the cost is known before the body is sent (JSON and
buffered answers; a live stream carries it in its usage event).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from sluice import sse
from sluice.accounting.rate_limits import headers as quota_headers
from sluice.deployments import anthropic_api
from sluice.errors import ClientGone, MethodNotAllowed, NotFound, SluiceError, unexpected
from sluice.observability.outcome import COST_HEADER
from sluice.pipeline.answer import Answer
from sluice.pipeline.prompt_stage import VARIANT_HEADER as PROMPT_VARIANT_HEADER
from sluice.pipeline.settlement import Settled

log = logging.getLogger(__name__)

REPLICA_HEADER = "x-sluice-replica"
VARIANT_HEADER = "x-sluice-variant"  # which version of the model answered (rollouts)
RETRIES_HEADER = "x-sluice-retries"  # engine replicas that failed before this one answered
CACHE_HEADER = "x-sluice-cache"
SIMILARITY_HEADER = "x-sluice-cache-similarity"
FAILOVER_HEADER = "x-sluice-failover"  # the models of a failover chain that did not answer
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def client_request_id(request: Request) -> str | None:
    """The client's x-request-id when it is a sane id; a long or odd one is not carried
    into response ids, error messages, the ledger or logs."""
    given = request.headers.get("x-request-id") or ""
    return given if _CLIENT_ID.fullmatch(given) else None


async def body_of(request: Request) -> AsyncIterator[bytes]:
    """The request body as it arrives; a client that leaves while sending it is a 499
    (ClientGone), not an unhandled error."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise ClientGone("The client closed the connection while sending its request.") from None


def request_id(request: Request) -> str:
    return client_request_id(request) or f"req-{uuid.uuid4().hex}"


def error_response(err: SluiceError, request: Request | None = None) -> JSONResponse:
    """The error as OpenAI's error JSON, or as Anthropic's on the Messages endpoint."""
    anthropic = request is not None and request.url.path == anthropic_api.PATH
    body = anthropic_api.sluice_error_body(err) if anthropic else err.body()
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def allowed_methods(request: Request) -> str:
    """Every method some route takes on the request's path (Starlette's own 405 names only
    the first route that matched the path, so GET and POST on one path would say GET)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def create_app() -> FastAPI:
    """The FastAPI app with Sluice's error handling; routes are methods of the ingress,
    `/openapi.json` and `/docs` too (the document states the models the ingress serves:
    `sluice.deployments.openapi`)."""
    app = FastAPI(title="Sluice", openapi_url=None, docs_url=None, redoc_url=None)

    @app.exception_handler(SluiceError)
    async def _sluice_error(request: Request, exc: SluiceError) -> JSONResponse:
        return error_response(exc, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allow = allowed_methods(request) or headers.get("Allow", "")
            return error_response(MethodNotAllowed(
                f"Method {request.method} is not allowed on {request.url.path[:200]}; "
                f"allowed: {allow}.", headers={**headers, "Allow": allow}), request)
        err = NotFound(str(exc.detail), headers=headers)
        err.status = exc.status_code
        return error_response(err, request)

    @app.exception_handler(Exception)
    async def _last_resort(request: Request, exc: Exception) -> JSONResponse:
        rid = client_request_id(request)
        log.error("unhandled error in ingress (request id %s)", rid, exc_info=exc)
        response = error_response(unexpected(exc, rid), request)
        # Starlette sends this response from outside every middleware (its
        # ServerErrorMiddleware), so the ingress name is added here, from the request's scope
        name = request.scope.get(INGRESS_NAME_KEY)
        if isinstance(name, str):
            response.headers["x-sluice-ingress"] = name
        return response

    return app


INGRESS_NAME_KEY = "sluice.ingress"  # the answering ingress replica, set by the ingress


def answer_headers(answer: Answer) -> dict[str, str]:
    headers = {"x-sluice-model": answer.model, "x-sluice-route": answer.route,
               CACHE_HEADER: answer.cache}
    if answer.similarity is not None:
        headers[SIMILARITY_HEADER] = f"{answer.similarity:.4f}"
    if answer.replica:
        headers[REPLICA_HEADER] = answer.replica
        headers[RETRIES_HEADER] = str(answer.retries)
    for name, value in answer.scores.items():
        headers[f"x-sluice-{name}-score"] = f"{value:.4f}"
    if answer.fallback:
        headers["x-sluice-fallback"] = answer.fallback
    if answer.budget:
        headers["x-sluice-budget"] = answer.budget
    if answer.context:
        headers["x-sluice-context"] = answer.context
    if answer.compression:
        headers["x-sluice-compression"] = answer.compression
    if answer.selection:
        headers["x-sluice-selection"] = answer.selection
    if answer.failed_over:
        headers[FAILOVER_HEADER] = ",".join(answer.failed_over)
    if answer.variant:
        headers[VARIANT_HEADER] = answer.variant
    if answer.prompt_variant:
        headers[PROMPT_VARIANT_HEADER] = answer.prompt_variant
    return headers


async def _sse_text(events: AsyncIterator[list[sse.Event]]) -> AsyncIterator[str]:
    async for chunk in events:
        yield "".join(event.text for event in chunk)


class _SettledStream(StreamingResponse):
    """A streamed answer that ends its settlement even when the body never started (the
    client left before the first byte, so the body generator's `finally` never ran)."""

    def __init__(self, settled: Settled, headers: dict[str, str],
                 body: AsyncIterator[str] | None = None) -> None:
        assert settled.events is not None
        super().__init__(body or _sse_text(settled.events), media_type="text/event-stream",
                         headers=headers)
        self._end = settled.end

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._end(True)  # a no-op when the body ended it


def _headers(settled: Settled) -> dict[str, str]:
    headers = {**answer_headers(settled.answer), **quota_headers(settled.quota)}
    if settled.cost_usd is not None:
        headers[COST_HEADER] = f"{settled.cost_usd:.9f}"
    return headers


def render(settled: Settled) -> Response:
    headers = _headers(settled)
    if settled.whole is not None:
        return Response(json.dumps(settled.whole), media_type="application/json",
                        headers=headers)
    if settled.buffered is not None:  # a cached or judged stream: one body, all there
        text = "".join(event.text for chunk in settled.buffered for event in chunk)
        return Response(text, media_type="text/event-stream", headers=headers)
    return _SettledStream(settled, {**headers, "cache-control": "no-cache"})


async def _replayed(chunks: list[list[sse.Event]]) -> AsyncIterator[list[sse.Event]]:
    for chunk in chunks:
        yield chunk


async def render_message(settled: Settled) -> Response:
    """The answer in Anthropic's Messages shape (`anthropic_api`), same headers."""
    headers = _headers(settled)
    if settled.whole is not None:
        return JSONResponse(anthropic_api.message(settled.whole), headers=headers)
    if settled.buffered is not None:
        text = "".join([e async for e in anthropic_api.message_events(
            _replayed(settled.buffered))])
        return Response(text, media_type="text/event-stream", headers=headers)
    assert settled.events is not None
    return _SettledStream(settled, {**headers, "cache-control": "no-cache"},
                          anthropic_api.message_events(settled.events))
