"""One pass over each answer: its cost put on it (JSON, live and buffered streams, cache
hits, a cascade's earlier stages), the usage event a client did not ask for removed, and
the outcome the meter, the tracer and the ledger read."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse

from sluice.accounting.cost import Pricing
from sluice.accounting.response_cost import UsagePricer
from sluice.accounting.stage_spend import StageSpend
from sluice.observability.outcome import COST_HEADER, Outcome
from sluice.observability.response_watch import watch

PRICES = {"small": Pricing.model_validate({"mode": "tokens", "tokens": {
    "input_per_1m": 1.0, "output_per_1m": 2.0}}), "large": Pricing.model_validate(
    {"mode": "tokens", "tokens": {"input_per_1m": 10.0, "output_per_1m": 20.0}})}
USAGE = {"prompt_tokens": 1000, "completion_tokens": 500}  # small: $0.002, large: $0.02


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def watched(response: Response, *, client_usage: bool = True, stages=(), clock=None):
    pricer, ended = UsagePricer(PRICES), []
    out = watch(response, started=100.0, clock=clock or Clock(), client_usage=client_usage,
                on_end=ended.append,
                price=lambda usage, model, hit: pricer.price(usage, model, hit=hit,
                                                             stages=stages))
    return out, ended


def event(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def drain(response: StreamingResponse) -> list[str]:
    async def run():
        return [c async for c in response.body_iterator]
    return asyncio.run(run())


def test_a_json_answer_gets_its_cost_header_and_usage_block_and_ends_at_once() -> None:
    body = {"id": "c1", "choices": [{"finish_reason": "stop"}], "usage": USAGE}
    out, (o,) = watched(Response(json.dumps(body), media_type="application/json",
                                 headers={"x-sluice-model": "small", "x-request-id": "r1"}))
    sent = json.loads(out.body)
    assert sent["usage"]["cost"] == {"total_usd": 0.002, "currency": "USD", "source": "engine"}
    assert out.headers[COST_HEADER] == "0.002000000"
    assert out.headers["x-request-id"] == "r1"  # other headers kept
    assert int(out.headers["content-length"]) == len(out.body)
    assert (o.status, o.model, o.response_id, o.finish_reasons) == (200, "small", "c1", ["stop"])
    assert o.cost_usd == 0.002 and o.usage == sent["usage"]


def test_a_cache_hit_costs_nothing_and_says_so() -> None:
    body = json.dumps({"choices": [], "usage": USAGE})
    out, (o,) = watched(Response(body, media_type="application/json", headers={
        "x-sluice-model": "small", "x-sluice-cache": "hit"}))
    assert json.loads(out.body)["usage"]["cost"]["source"] == "response_cache"
    assert out.headers[COST_HEADER] == "0.000000000" and o.cost_usd == 0 and o.cache == "hit"


def test_a_rejected_draft_and_a_judge_call_are_added_and_itemised() -> None:
    stages = [StageSpend("draft", "small", USAGE),
              StageSpend("judge", "large", {"prompt_tokens": 100, "completion_tokens": 1})]
    body = json.dumps({"choices": [], "usage": USAGE})
    out, (o,) = watched(Response(body, media_type="application/json",
                                 headers={"x-sluice-model": "large"}), stages=stages)
    cost = json.loads(out.body)["usage"]["cost"]
    assert cost["total_usd"] == round(0.002 + 0.00102 + 0.02, 9) == o.cost_usd
    assert [(s["stage"], s["model"]) for s in cost["stages"]] == [
        ("draft", "small"), ("judge", "large"), ("answer", "large")]
    assert o.priced is not None and o.priced.by_model == {"small": 0.002, "large": 0.02102}


def test_a_stream_is_timed_priced_and_keeps_the_usage_event_the_client_asked_for() -> None:
    clock = Clock()
    chunks = [event({"id": "s1", "choices": [{"delta": {"role": "assistant"}}]}),
              event({"id": "s1", "choices": [{"delta": {"content": "a"}}]}),
              event({"id": "s1", "choices": [{"delta": {"content": "b"},
                                              "finish_reason": "length"}]}),
              event({"id": "s1", "choices": [], "usage": USAGE}), "data: [DONE]\n\n"]

    async def body():
        for t, chunk in zip([100.0, 100.25, 100.45, 100.46, 100.46], chunks):
            clock.t = t
            yield chunk

    out, ended = watched(StreamingResponse(body(), headers={"x-sluice-model": "small"}),
                         clock=clock)
    sent = drain(out)
    (o,) = ended
    assert sent[:3] == chunks[:3] and sent[-1] == "data: [DONE]\n\n"
    assert json.loads(sent[3][len("data: "):])["usage"]["cost"]["total_usd"] == 0.002
    assert (o.response_id, o.finish_reasons, o.token_events) == ("s1", ["length"], 2)
    assert o.ttft_s == 0.25 and abs(o.tpot_s - 0.21 / 499) < 1e-12  # usage: 500 tokens
    assert o.cost_usd == 0.002


def test_a_usage_event_the_client_did_not_ask_for_is_read_then_dropped() -> None:
    chunks = [event({"choices": [{"delta": {"content": "a"}}]}),
              event({"choices": [], "usage": USAGE}) + "data: [DONE]\n\n"]

    async def body():
        for c in chunks:
            yield c

    out, ended = watched(StreamingResponse(body(), headers={"x-sluice-model": "small"}),
                         client_usage=False)
    assert "".join(drain(out)) == chunks[0] + "data: [DONE]\n\n"
    assert ended[0].usage["prompt_tokens"] == 1000 and ended[0].cost_usd == 0.002


def test_a_stream_that_failed_still_costs_its_earlier_stages_and_is_marked() -> None:
    async def body():
        yield event({"choices": [{"delta": {"content": "a"}}]})
        yield 'data: {"error":{"message":"gone","code":503}}\n\n'

    out, ended = watched(StreamingResponse(body(), headers={"x-sluice-model": "large"}),
                         stages=[StageSpend("draft", "small", USAGE)])
    drain(out)
    (o,) = ended
    assert o.failed and o.usage is None and o.cost_usd == 0.002


def test_a_buffered_stream_gets_the_header_and_no_first_token_time() -> None:
    text = (event({"id": "b", "choices": [{"delta": {"content": "x"}, "finish_reason": "stop"}]})
            + event({"id": "b", "choices": [], "usage": USAGE}) + "data: [DONE]\n\n")
    out, (o,) = watched(Response(text, media_type="text/event-stream",
                                 headers={"x-sluice-model": "small"}))
    assert out.headers[COST_HEADER] == "0.002000000" and '"cost"' in out.body.decode()
    assert isinstance(o, Outcome) and o.ttft_s is None and o.finish_reasons == ["stop"]


def estimate(events: int) -> dict:
    return {"prompt_tokens": 1000, "completion_tokens": events}


def test_a_stream_the_client_left_is_499_and_charged_an_estimate_once() -> None:
    async def body():
        for i in range(10):
            yield event({"choices": [{"delta": {"content": f"t{i}"}}]})

    pricer, ended = UsagePricer(PRICES), []
    out = watch(StreamingResponse(body(), headers={"x-sluice-model": "small"}), started=100.0,
                clock=Clock(), client_usage=True, on_end=ended.append, estimate=estimate,
                price=lambda usage, model, hit: pricer.price(usage, model, hit=hit))

    async def read_three_then_leave():
        it = out.body_iterator
        for _ in range(3):
            await it.__anext__()
        await it.aclose()  # as Starlette does when the client disconnects
        out._end(gone=True)  # and the ASGI call's end: a no-op, the outcome has ended

    asyncio.run(read_three_then_leave())
    (o,) = ended
    assert o.status == 499 and o.estimated and o.token_events == 3
    assert o.usage["completion_tokens"] == 3 and o.cost_usd == (1000 * 1 + 3 * 2) / 1e6


def test_a_stream_whose_client_left_before_the_first_byte_still_ends_its_outcome() -> None:
    async def body():
        yield event({"choices": [{"delta": {"content": "never read"}}]})

    pricer, ended = UsagePricer(PRICES), []
    out = watch(StreamingResponse(body(), headers={"x-sluice-model": "small"}), started=100.0,
                clock=Clock(), client_usage=True, on_end=ended.append, estimate=estimate,
                price=lambda usage, model, hit: pricer.price(usage, model, hit=hit))

    async def gone(message):
        raise OSError("connection reset")

    async def disconnected():
        return {"type": "http.disconnect"}

    async def serve():
        with pytest.raises(ClientDisconnect):  # Starlette's word for the OSError
            await out({"type": "http", "asgi": {"spec_version": "2.4"}}, disconnected, gone)

    asyncio.run(serve())
    (o,) = ended
    assert o.status == 499 and o.token_events == 0 and o.cost_usd == 0.001  # the prompt
