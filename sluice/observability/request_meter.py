"""Meter one request at the ingress by wrapping its response, not by timers in the handlers.

The response already says what happened: `x-sluice-model` / `x-sluice-route` /
`x-sluice-cache` headers, the status, and the body (a JSON answer with `usage`, or SSE
events). A streamed body is wrapped so the first token's time, the events after it and the
closing usage event are seen as they pass; nothing is parsed but the usage event. A
response-cache hit did no engine work: it counts as a request, never as tokens.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from starlette.responses import Response, StreamingResponse

from sluice.observability.metrics import Metrics

UNROUTED = "unrouted"  # the label of requests that failed before a model was chosen


def _usage_of(event: str) -> dict[str, Any] | None:
    if '"usage"' not in event:
        return None
    try:
        usage = json.loads(event[event.index("{"):]).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


class _StreamWatch:
    """What the SSE events of one answer show: first token, token events, usage."""

    def __init__(self, started: float, clock: Callable[[], float]) -> None:
        self._started, self._clock = started, clock
        self.first: float | None = None
        self.events = 0  # token-bearing events after the role-only opener
        self.usage: dict[str, Any] | None = None

    def see(self, chunk: str) -> None:
        for event in chunk.split("\n\n"):
            event = event.strip()
            if not event.startswith("data: ") or event == "data: [DONE]":
                continue
            usage = _usage_of(event)
            if usage is not None:
                self.usage = usage
                if '"choices":[]' in event.replace(" ", ""):
                    continue  # the usage-only closing event carries no token
            if '"role"' in event or '"error"' in event:
                continue
            self.events += 1
            if self.first is None:
                self.first = self._clock()

    def timings(self, ended: float) -> tuple[float | None, float | None]:
        if self.first is None:
            return None, None
        ttft = self.first - self._started
        tokens = (self.usage or {}).get("completion_tokens") or self.events
        tpot = (ended - self.first) / (tokens - 1) if tokens > 1 else None
        return ttft, tpot


class RequestMeter:
    """Started when a request arrives; finished by its response (or its error)."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.perf_counter
                 ) -> None:
        self._metrics, self._clock = metrics, clock
        self._started = clock()
        self.model = UNROUTED
        self._gauge_model: str | None = None

    def routed(self, model: str) -> None:
        """The request's model is known (parsed); it now counts as in flight for it."""
        self.model = model
        self._gauge_model = model
        self._metrics.in_flight.labels(model).inc()

    def _done(self, status: int, route: str, usage: dict[str, Any] | None,
              ttft: float | None = None, tpot: float | None = None) -> None:
        if self._gauge_model is not None:
            self._metrics.in_flight.labels(self._gauge_model).dec()
            self._gauge_model = None
        self._metrics.record(self.model, route, status, duration_s=self._clock() - self._started,
                             ttft_s=ttft, tpot_s=tpot, usage=usage)

    def failed(self, status: int) -> None:
        self._done(status, "error", None)

    def attach(self, response: Response) -> Response:
        """Record a complete response now, or a streamed one when its body ends."""
        headers = response.headers
        route = headers.get("x-sluice-route", "direct")
        hit = headers.get("x-sluice-cache") == "hit"
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._watched(response.body_iterator, route, hit,
                                                   response.status_code)
            return response
        body = bytes(response.body).decode(errors="replace")
        watch = _StreamWatch(self._started, self._clock)
        if response.media_type == "text/event-stream":
            watch.see(body)
            usage = watch.usage
        else:
            usage = _usage_of(body)
        self._done(response.status_code, route, None if hit else usage)
        return response

    async def _watched(self, body: AsyncIterable[Any], route: str, hit: bool,
                       status: int) -> AsyncIterator[Any]:
        watch = _StreamWatch(self._started, self._clock)
        try:
            async for chunk in body:
                watch.see(chunk if isinstance(chunk, str) else bytes(chunk).decode(
                    errors="replace"))
                yield chunk
        finally:
            ttft, tpot = watch.timings(self._clock())
            self._done(status, route, None if hit else watch.usage, ttft, tpot)
