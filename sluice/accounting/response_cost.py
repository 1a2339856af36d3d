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


def _priced_event(event: str, pricing: Pricing | None, hit: bool) -> tuple[str, float | None]:
    """One SSE event with a cost block in its usage, and that cost (unchanged, None: no
    usage in it)."""
    if '"usage"' not in event or not event.startswith("data: {"):
        return event, None
    try:
        payload = json.loads(event[len("data: "):])
    except ValueError:
        return event, None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return event, None
    payload["usage"], usd = _priced_usage(usage, pricing, hit)
    return "data: " + json.dumps(payload, separators=(",", ":")), usd


def _priced_chunk(chunk: str, pricing: Pricing | None, hit: bool) -> tuple[str, float | None]:
    """The chunk with its usage event priced, and that cost (None: no usage event)."""
    if '"usage"' not in chunk:
        return chunk, None
    usd = None
    events = []
    for event in chunk.split("\n\n"):
        priced, cost = _priced_event(event, pricing, hit)
        events.append(priced)
        usd = cost if cost is not None else usd
    return "\n\n".join(events), usd


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
            priced, usd = _priced_chunk(text, pricing, hit)
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
            priced, usd = _priced_chunk(text, pricing, hit)
            if usd is None:
                yield chunk
                continue
            self._on_cost(model, usd)
            yield priced
