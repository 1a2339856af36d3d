"""Put each answer's cost on it: `x-sluice-cost-usd` and a `cost` block in `usage`.

Works on the finished response, like the request meter: the `x-sluice-model` header names
the model that answered (its catalog price applies), `x-sluice-cache: hit` means no engine
ran (cost 0, source `response_cache`). A JSON answer gets both the header and the block. A
streamed answer's headers are gone before its usage is known, so only its usage event (sent
when the client asked for `stream_options.include_usage`) gets the block; so does a
buffered stream (a cached or judged one), whose header is also set.

Not yet counted: the stages of a cascade before its answer (the small model's rejected draft
and the judge's call on an escalated request); the answering model's cost is reported.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import Any

from starlette.responses import Response, StreamingResponse

from sluice.accounting.cost import Pricing, cost_block, cost_usd

COST_HEADER = "x-sluice-cost-usd"


def _priced_usage(usage: dict[str, Any], pricing: Pricing | None, hit: bool
                  ) -> tuple[dict[str, Any], float]:
    block = cost_block(cost_usd(usage, pricing), cache_hit=hit)
    return {**usage, "cost": block}, block["total_usd"]


def _priced_event(event: str, pricing: Pricing | None, hit: bool) -> str:
    """One SSE event with a cost block in its usage (unchanged if it has no usage)."""
    if '"usage"' not in event or not event.startswith("data: {"):
        return event
    try:
        payload = json.loads(event[len("data: "):])
    except ValueError:
        return event
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return event
    payload["usage"], _ = _priced_usage(usage, pricing, hit)
    return "data: " + json.dumps(payload, separators=(",", ":"))


def _priced_chunk(chunk: str, pricing: Pricing | None, hit: bool) -> str:
    if '"usage"' not in chunk:
        return chunk
    return "\n\n".join(_priced_event(e, pricing, hit) for e in chunk.split("\n\n"))


class ResponsePricer:
    """Prices responses with the catalog's pricing of the model that answered."""

    def __init__(self, pricing: Mapping[str, Pricing | None],
                 on_cost: Callable[[str, float], None] | None = None) -> None:
        self._pricing = dict(pricing)
        self._on_cost = on_cost or (lambda model, usd: None)

    def price(self, response: Response) -> Response:
        model = response.headers.get("x-sluice-model", "")
        pricing = self._pricing.get(model)
        hit = response.headers.get("x-sluice-cache") == "hit"
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._priced_stream(response.body_iterator, model,
                                                         pricing, hit)
            return response
        if response.media_type == "text/event-stream":  # a buffered stream (cache, judged)
            text = bytes(response.body).decode(errors="replace")
            priced = _priced_chunk(text, pricing, hit)
            usd = _usage_cost(priced)
            if usd is None:
                return response
            self._on_cost(model, usd)
            return self._rebuilt(response, priced, usd)
        try:
            body = json.loads(bytes(response.body))
        except ValueError:
            return response
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            return response
        body["usage"], usd = _priced_usage(usage, pricing, hit)
        self._on_cost(model, usd)
        return self._rebuilt(response, json.dumps(body), usd)

    @staticmethod
    def _rebuilt(response: Response, body: str, usd: float | None) -> Response:
        headers = {k: v for k, v in response.headers.items() if k != "content-length"}
        if usd is not None:
            headers[COST_HEADER] = f"{usd:.9f}"
        return Response(body, status_code=response.status_code,
                        media_type=response.media_type, headers=headers)

    async def _priced_stream(self, body: AsyncIterable[Any], model: str,
                             pricing: Pricing | None, hit: bool) -> AsyncIterator[Any]:
        async for chunk in body:
            text = chunk if isinstance(chunk, str) else bytes(chunk).decode(errors="replace")
            if '"usage"' in text:
                priced = _priced_chunk(text, pricing, hit)
                if priced != text:
                    usage = _usage_cost(priced)
                    if usage is not None:
                        self._on_cost(model, usage)
                    yield priced
                    continue
            yield chunk


def _usage_cost(chunk: str) -> float | None:
    for event in chunk.split("\n\n"):
        if '"cost"' in event and event.startswith("data: {"):
            try:
                return float(json.loads(event[len("data: "):])["usage"]["cost"]["total_usd"])
            except (ValueError, KeyError, TypeError):
                return None
    return None
