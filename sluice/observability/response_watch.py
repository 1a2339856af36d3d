"""Read each answer once as it leaves the ingress: what metering, tracing, pricing and the
ledger all need, from one pass over the response.

The response says what happened: `x-sluice-model` / `x-sluice-route` / `x-sluice-cache`
headers, the status, and the body (a JSON answer with `usage`, or SSE events). A JSON answer
or a buffered stream (cached or judged) is read whole; a live stream is wrapped so the first
token's time, the token events, the id, the finish reasons and the closing usage event are
seen as they pass. Only the events that carry those are parsed, not every token.

The usage is priced where it is found (`usage.cost`, and `x-sluice-cost-usd` where the
headers are not sent yet). The ingress always asks engines for a stream's usage event, since
a ledger needs the tokens of every answer; a client that did not ask for it
(`stream_options.include_usage`) does not get it. When the body ends, `on_end` receives the
Outcome.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from starlette.responses import Response, StreamingResponse

from sluice import sse
from sluice.observability.outcome import COST_HEADER, Outcome, Priced

Price = Callable[[dict[str, Any] | None, str, bool], Priced]  # (usage, model, hit)
Estimate = Callable[[int], dict[str, Any]]  # token events seen -> an estimated usage
CLIENT_GONE = 499  # the client closed the connection before the answer ended


def _compact(event: str) -> str:
    return event.replace('": ', '":')


class _Reader:
    """Sees SSE events one chunk at a time; prices the usage event (or drops it)."""

    def __init__(self, outcome: Outcome, price: Price, hit: bool, client_usage: bool,
                 clock: Callable[[], float]) -> None:
        self._o, self.price, self.hit = outcome, price, hit
        self._client_usage, self._clock = client_usage, clock

    def chunk(self, text: str) -> str:
        if "data: {" not in text:
            return text
        kept = [e for e in (self._event(e) for e in text.split("\n\n")) if e is not None]
        return "\n\n".join(kept)

    def _event(self, event: str) -> str | None:
        body = event.strip()
        if not body.startswith("data: {"):
            return event
        o, compact = self._o, _compact(body)
        payload: dict[str, Any] | None = None
        if o.response_id is None or '"finish_reason":"' in compact or '"usage":{' in compact:
            payload = sse.payload(body)
            if payload is None:
                return event
        if payload is not None and o.response_id is None and payload.get("id"):
            o.response_id = str(payload["id"])
        if sse.is_error(compact):
            o.failed = True
            return event
        usage_only = '"choices":[]' in compact
        if not usage_only and '"role":' not in compact:
            o.token_events += 1
            if o.first_token_at is None:
                o.first_token_at = self._clock()
        if payload is None:
            return event
        o.finish_reasons += [str(c["finish_reason"]) for c in payload.get("choices") or []
                             if isinstance(c, dict) and c.get("finish_reason")]
        if not isinstance(payload.get("usage"), dict):
            return event
        o.priced = self.price(payload["usage"], o.model, self.hit)
        o.usage = payload["usage"] = o.priced.usage
        if usage_only and not self._client_usage:
            return None
        return sse.encode(payload, end="")


def _rebuilt(response: Response, body: str, usd: float | None) -> Response:
    headers = {k: v for k, v in response.headers.items() if k != "content-length"}
    if usd is not None:
        headers[COST_HEADER] = f"{usd:.9f}"
    return Response(body, status_code=response.status_code, media_type=response.media_type,
                    headers=headers)


def watch(response: Response, *, started: float, clock: Callable[[], float], price: Price,
          client_usage: bool, on_end: Callable[[Outcome], None],
          estimate: Estimate | None = None) -> Response:
    """The response, priced, whose end (now, or its stream's end) calls `on_end` once.

    A stream that ends without its usage event (the client left: status 499; the engine
    failed mid-stream: 503) is charged an estimate from `estimate`, marked as such: the
    engine did that work.
    """
    headers = response.headers
    hit = headers.get("x-sluice-cache") == "hit"
    outcome = Outcome(response.status_code, headers.get("x-sluice-model", ""),
                      headers.get("x-sluice-route", "direct"), headers.get("x-sluice-cache", ""),
                      started)
    reader = _Reader(outcome, price, hit, client_usage, clock)
    if isinstance(response, StreamingResponse):
        end = _Once(outcome, price, hit, clock, on_end, estimate)
        return _SettledStream(response, _watched(response.body_iterator, reader, outcome, end),
                              end)
    text = bytes(response.body).decode(errors="replace")
    if response.media_type == "text/event-stream":  # a buffered stream: cached or judged
        text = reader.chunk(text)
        outcome.first_token_at = None  # all at once: no first-token time to report
    else:
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict):
            outcome.response_id = body.get("id")
            outcome.finish_reasons = [str(c.get("finish_reason")) for c in
                                      body.get("choices") or [] if isinstance(c, dict)
                                      and c.get("finish_reason")]
            usage = body.get("usage")
            if isinstance(usage, dict):
                outcome.priced = price(usage, outcome.model, hit)
                outcome.usage = body["usage"] = outcome.priced.usage
                text = json.dumps(body)
    _settle(outcome, price, hit, clock)
    on_end(outcome)
    return _rebuilt(response, text, outcome.cost_usd)


def _settle(outcome: Outcome, price: Price, hit: bool, clock: Callable[[], float]) -> None:
    """The end: an answer without usage (a failed stream) still costs its earlier stages."""
    outcome.ended = clock()
    if outcome.priced is None:
        outcome.priced = price(None, outcome.model, hit)


class _Once:
    """Ends a stream's outcome exactly once, however the stream stopped."""

    def __init__(self, outcome: Outcome, price: Price, hit: bool, clock: Callable[[], float],
                 on_end: Callable[[Outcome], None], estimate: Estimate | None) -> None:
        self._outcome, self._price, self._hit = outcome, price, hit
        self._clock, self._on_end, self._estimate = clock, on_end, estimate
        self.done = False

    def __call__(self, gone: bool) -> None:
        if self.done:
            return
        self.done = True
        o = self._outcome
        if o.usage is None:
            if gone:
                o.status = CLIENT_GONE
            elif o.failed:
                o.status = 503
            if self._estimate is not None and not self._hit:
                o.estimated = True
                o.priced = self._price(self._estimate(o.token_events), o.model, self._hit)
                o.usage = o.priced.usage
        _settle(o, self._price, self._hit, self._clock)
        self._on_end(o)


class _SettledStream(StreamingResponse):
    """The watched stream; ends its outcome even when the body never started (the client
    left before the first byte, so the body generator's `finally` never ran)."""

    def __init__(self, inner: StreamingResponse, body: AsyncIterator[Any], end: _Once) -> None:
        super().__init__(body, status_code=inner.status_code, media_type=inner.media_type,
                         background=inner.background)
        self.raw_headers = inner.raw_headers
        self._end = end

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._end(gone=True)  # no-op when the body ended it


async def _watched(body: AsyncIterable[Any], reader: _Reader, outcome: Outcome, end: _Once
                   ) -> AsyncIterator[Any]:
    gone = True  # until the body is read to its end
    try:
        async for chunk in body:
            text = chunk if isinstance(chunk, str) else bytes(chunk).decode(errors="replace")
            out = reader.chunk(text)
            if out:
                yield out
        gone = False
    finally:
        end(gone)
