"""Each answer carries its cost: JSON (header + usage.cost), streamed usage events, buffered
streams, response-cache hits (free)."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.responses import Response, StreamingResponse

from sluice.accounting.cost import Pricing
from sluice.accounting.response_cost import COST_HEADER, ResponsePricer

PRICES = {"small": Pricing.model_validate({"mode": "tokens", "tokens": {
    "input_per_1m": 1.0, "output_per_1m": 2.0}}), "large": None}
USAGE = {"prompt_tokens": 1000, "completion_tokens": 500}  # 1000 x 1 + 500 x 2 = $0.002


def pricer():
    seen: list[tuple[str, float]] = []
    return ResponsePricer(PRICES, on_cost=lambda m, usd: seen.append((m, usd))), seen


def json_answer(headers: dict[str, str]) -> Response:
    return Response(json.dumps({"choices": [], "usage": USAGE}), media_type="application/json",
                    headers=headers)


def test_a_json_answer_gets_the_header_and_the_usage_block() -> None:
    p, seen = pricer()
    out = p.price(json_answer({"x-sluice-model": "small", "x-request-id": "r1"}))
    body = json.loads(out.body)
    assert body["usage"]["cost"] == {"total_usd": 0.002, "currency": "USD", "source": "engine"}
    assert out.headers[COST_HEADER] == "0.002000000"
    assert out.headers["x-request-id"] == "r1"  # other headers kept
    assert int(out.headers["content-length"]) == len(out.body)
    assert seen == [("small", 0.002)]


def test_a_cache_hit_costs_nothing_and_says_so() -> None:
    p, seen = pricer()
    out = p.price(json_answer({"x-sluice-model": "small", "x-sluice-cache": "hit"}))
    assert json.loads(out.body)["usage"]["cost"] == {
        "total_usd": 0.0, "currency": "USD", "source": "response_cache"}
    assert out.headers[COST_HEADER] == "0.000000000" and seen == [("small", 0.0)]


def test_an_unpriced_model_reports_zero() -> None:
    p, _ = pricer()
    out = p.price(json_answer({"x-sluice-model": "large"}))
    assert json.loads(out.body)["usage"]["cost"]["total_usd"] == 0.0


def test_a_streamed_answer_prices_its_usage_event_only() -> None:
    p, seen = pricer()
    chunks = ['data: {"choices":[{"delta":{"content":"a"}}]}\n\n',
              f'data: {json.dumps({"choices": [], "usage": USAGE})}\n\ndata: [DONE]\n\n']

    async def body():
        for c in chunks:
            yield c

    out = p.price(StreamingResponse(body(), headers={"x-sluice-model": "small"}))

    async def drain():
        return [c async for c in out.body_iterator]

    got = asyncio.run(drain())
    assert got[0] == chunks[0]
    usage_event = got[1].split("\n\n")[0]
    assert json.loads(usage_event[6:])["usage"]["cost"]["total_usd"] == pytest.approx(0.002)
    assert got[1].endswith("data: [DONE]\n\n")
    assert seen == [("small", 0.002)]


def test_a_buffered_stream_gets_priced_and_a_stream_without_usage_is_untouched() -> None:
    p, _ = pricer()
    sse = f'data: {json.dumps({"choices": [], "usage": USAGE})}\n\ndata: [DONE]\n\n'
    out = p.price(Response(sse, media_type="text/event-stream",
                           headers={"x-sluice-model": "small"}))
    assert '"cost"' in out.body.decode() and out.headers[COST_HEADER] == "0.002000000"
    plain = Response("data: [DONE]\n\n", media_type="text/event-stream",
                     headers={"x-sluice-model": "small"})
    assert p.price(plain) is plain
