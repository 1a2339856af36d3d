"""Settling each answer from its typed form: its cost put on it (JSON, live and buffered
streams, cache hits, a cascade's earlier stages), the usage event a client did not ask for
removed, the outcome the meter, the tracer and the ledger read, and the render that is
the only place headers are written."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from sluice import sse
from sluice.accounting.accountant import Admission
from sluice.accounting.budgets import Verdict
from sluice.accounting.response_cost import UsagePricer
from sluice.accounting.stage_spend import StageSpend
from sluice.accounting.tenancy import Principal
from sluice.deployments.http import render
from sluice.observability.metrics import Metrics
from sluice.observability.outcome import COST_HEADER, Outcome
from sluice.observability.request_meter import RequestMeter
from sluice.pipeline.answer import Answer, replayed
from sluice.pipeline.request import RequestLimits, parsed
from sluice.pipeline.settlement import Settlement
from sluice.schema.accounting import Pricing

PRICES = {"small": Pricing.model_validate({"mode": "tokens", "tokens": {
    "input_per_1m": 1.0, "output_per_1m": 2.0}}), "large": Pricing.model_validate(
    {"mode": "tokens", "tokens": {"input_per_1m": 10.0, "output_per_1m": 20.0}})}
USAGE = {"prompt_tokens": 1000, "completion_tokens": 500}  # small: $0.002, large: $0.02
LIMITS = RequestLimits(max_n=8, max_tokens=4096)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Ledger:
    """Stands in for the Accountant: what settlement hands the ledger."""

    def __init__(self) -> None:
        self.settled: list[dict[str, Any]] = []
        self.waits: list[int] = []

    def settle(self, admission, request_id, model, status, outcome, cost_usd, route="error",
               stages=(), hold_id="", context="", compression=None, variants=()) -> None:
        self.settled.append({"status": status, "outcome": outcome, "cost": cost_usd,
                             "stages": list(stages), "hold_id": hold_id,
                             "context": context, "compression": compression,
                             "variants": tuple(variants)})

    async def recorded(self) -> bool:
        """The answer waits for its record: how many were settled when it did."""
        self.waits.append(len(self.settled))
        return True

    @property
    def outcomes(self) -> list[Outcome]:
        return [s["outcome"] for s in self.settled]


def settlement(*, stream: bool = False, client_usage: bool = True, stages=(),
               clock: Clock | None = None, prompt: str = "x" * 3998):
    clock = clock or Clock()
    ledger = Ledger()
    s = Settlement(RequestMeter(Metrics(), clock), None, ledger, UsagePricer(PRICES), "r1",
                   clock)  # type: ignore[arg-type]
    s.admitted(Admission(Principal("k", "t"), (), 0.0, Verdict("ok")))
    body: dict[str, Any] = {"model": "small", "prompt": prompt, "stream": stream}
    if stream and client_usage:
        body["stream_options"] = {"include_usage": True}
    s.parsed(parsed("completions", body, LIMITS, "r1", {}), known_model=True)
    s.spend.stages.extend(stages)
    return s, ledger


def event(payload: dict) -> str:
    return sse.encode(payload)


async def events_of(chunks: list[str], clock: Clock | None = None, times=()):
    for i, chunk in enumerate(chunks):
        if clock is not None and times:
            clock.t = times[i]
        yield sse.read(chunk, parse_first=i == 0)


def drain(response) -> list[str]:
    async def run():
        return [c async for c in response.body_iterator]
    return asyncio.run(run())


def test_a_json_answer_gets_its_cost_header_and_usage_block_and_ends_at_once() -> None:
    s, ledger = settlement()
    answer = Answer("small", "small", "miss", whole={
        "id": "c1", "choices": [{"finish_reason": "stop"}], "usage": dict(USAGE)},
        replica="r-7")
    out = render(asyncio.run(s.settle(answer)))
    sent = json.loads(out.body)
    assert sent["usage"]["cost"] == {"total_usd": 0.002, "currency": "USD", "source": "engine"}
    assert out.headers[COST_HEADER] == "0.002000000"
    assert (out.headers["x-sluice-model"], out.headers["x-sluice-route"],
            out.headers["x-sluice-cache"], out.headers["x-sluice-replica"]) == (
        "small", "small", "miss", "r-7")
    assert int(out.headers["content-length"]) == len(out.body)
    (o,) = ledger.outcomes
    assert (o.status, o.model, o.response_id, o.finish_reasons) == (200, "small", "c1", ["stop"])
    assert o.cost_usd == 0.002 and o.usage == sent["usage"]


def test_what_a_context_overflow_became_is_in_the_header_and_the_ledger() -> None:
    s, ledger = settlement()
    s.context = "trimmed 4 messages, 1,200 tokens"
    answer = Answer("small", "small", "miss", whole={"choices": [], "usage": dict(USAGE)},
                    context=s.context)
    out = render(asyncio.run(s.settle(answer)))
    assert out.headers["x-sluice-context"] == "trimmed 4 messages, 1,200 tokens"
    assert ledger.settled[0]["context"] == "trimmed 4 messages, 1,200 tokens"
    failed, ledger = settlement()
    failed.context = "routed"
    failed.failed(RuntimeError("engine gone"))
    assert ledger.settled[0]["context"] == "routed"


def test_a_cache_hit_costs_nothing_and_says_so() -> None:
    s, ledger = settlement()
    answer = Answer("small", "small", "hit", whole={"choices": [], "usage": dict(USAGE)},
                    similarity=0.93)
    out = render(asyncio.run(s.settle(answer)))
    assert json.loads(out.body)["usage"]["cost"]["source"] == "response_cache"
    assert out.headers[COST_HEADER] == "0.000000000"
    assert out.headers["x-sluice-cache-similarity"] == "0.9300"
    (o,) = ledger.outcomes
    assert o.cost_usd == 0 and o.cache == "hit"


def test_a_rejected_draft_and_a_judge_call_are_added_and_itemised() -> None:
    stages = [StageSpend("draft", "small", USAGE),
              StageSpend("judge", "large", {"prompt_tokens": 100, "completion_tokens": 1})]
    s, ledger = settlement(stages=stages)
    answer = Answer("large", "small>large", "miss",
                    whole={"choices": [], "usage": dict(USAGE)}, scores={"judge": 0.2})
    out = render(asyncio.run(s.settle(answer)))
    cost = json.loads(out.body)["usage"]["cost"]
    (o,) = ledger.outcomes
    assert cost["total_usd"] == round(0.002 + 0.00102 + 0.02, 9) == o.cost_usd
    assert [(st["stage"], st["model"]) for st in cost["stages"]] == [
        ("draft", "small"), ("judge", "large"), ("answer", "large")]
    assert o.priced is not None and o.priced.by_model == {"small": 0.002, "large": 0.02102}
    assert out.headers["x-sluice-judge-score"] == "0.2000"
    assert [st.model for st in ledger.settled[0]["stages"]] == ["small", "large"]


def test_a_stream_is_timed_priced_and_keeps_the_usage_event_the_client_asked_for() -> None:
    clock = Clock()
    chunks = [event({"id": "s1", "choices": [{"delta": {"role": "assistant"}}]}),
              event({"id": "s1", "choices": [{"delta": {"content": "a"}}]}),
              event({"id": "s1", "choices": [{"delta": {"content": "b"},
                                              "finish_reason": "length"}]}),
              event({"id": "s1", "choices": [], "usage": USAGE}), sse.DONE]
    s, ledger = settlement(stream=True, clock=clock)
    answer = Answer("small", "small", "miss", events=events_of(
        chunks, clock, [100.0, 100.25, 100.45, 100.46, 100.46]))
    out = render(asyncio.run(s.settle(answer)))
    assert COST_HEADER not in out.headers and out.headers["cache-control"] == "no-cache"
    sent = drain(out)
    (o,) = ledger.outcomes
    assert sent[:3] == chunks[:3] and sent[-1] == sse.DONE
    assert json.loads(sent[3][len("data: "):])["usage"]["cost"]["total_usd"] == 0.002
    assert (o.response_id, o.finish_reasons, o.token_events) == ("s1", ["length"], 2)
    assert o.ttft_s == 0.25 and abs(o.tpot_s - 0.21 / 499) < 1e-12  # usage: 500 tokens
    assert o.cost_usd == 0.002


def test_a_streams_done_is_sent_only_after_its_record_was_written() -> None:
    """An ingress killed between an answer's last byte and its record's write would lose
    the record of an answer the client has whole: the [DONE] waits for the ledger."""
    chunks = [event({"id": "s1", "choices": [{"delta": {"content": "a"}}]}),
              event({"id": "s1", "choices": [], "usage": USAGE}) + sse.DONE]
    s, ledger = settlement(stream=True)
    out = render(asyncio.run(s.settle(Answer("small", "small", "miss",
                                             events=events_of(chunks)))))

    async def read() -> list[tuple[str, list[int]]]:
        return [(c, list(ledger.waits)) async for c in out.body_iterator]
    sent = asyncio.run(read())
    assert [c for c, _ in sent][::2] == [chunks[0], sse.DONE]
    assert '"usage"' in sent[1][0] and "[DONE]" not in sent[1][0]
    # nothing waited while the tokens and the usage went out; the [DONE] came after the
    # wait, which saw the request settled
    assert [w for _, w in sent] == [[], [], [1]]


def test_a_json_answer_is_returned_only_after_its_record_was_written() -> None:
    s, ledger = settlement()
    asyncio.run(s.settle(Answer("small", "small", "miss", whole={"choices": [],
                                                               "usage": dict(USAGE)})))
    assert ledger.waits == [1]


def test_a_usage_event_the_client_did_not_ask_for_is_read_then_dropped() -> None:
    chunks = [event({"choices": [{"delta": {"content": "a"}}]}),
              event({"choices": [], "usage": USAGE}) + sse.DONE]
    s, ledger = settlement(stream=True, client_usage=False)
    out = render(asyncio.run(s.settle(Answer("small", "small", "miss",
                                             events=events_of(chunks)))))
    assert "".join(drain(out)) == chunks[0] + sse.DONE
    assert ledger.outcomes[0].usage["prompt_tokens"] == 1000
    assert ledger.outcomes[0].cost_usd == 0.002


def test_a_stream_that_failed_is_503_costs_its_stages_and_an_estimate() -> None:
    chunks = [event({"choices": [{"delta": {"content": "a"}}]}),
              'data: {"error":{"message":"gone","code":503}}\n\n']
    s, ledger = settlement(stream=True, stages=[StageSpend("draft", "small", USAGE)])
    drain(render(asyncio.run(s.settle(Answer("large", "large", "miss",
                                             events=events_of(chunks))))))
    (o,) = ledger.outcomes
    assert o.failed and o.status == 503 and o.estimated
    # the draft, and the large model's estimate: ~1000 prompt tokens, 1 token event
    assert o.cost_usd == pytest.approx(0.002 + (1000 * 10 + 1 * 20) / 1e6, abs=1e-6)


def test_a_buffered_stream_gets_the_header_and_no_first_token_time() -> None:
    text = (event({"id": "b", "choices": [{"delta": {"content": "x"}, "finish_reason": "stop"}]})
            + event({"id": "b", "choices": [], "usage": USAGE}) + sse.DONE)
    s, ledger = settlement(stream=True)
    answer = Answer("small", "small", "miss", buffered=True,
                    events=replayed([sse.read(text, parse_first=True)]))
    out = render(asyncio.run(s.settle(answer)))
    assert out.headers[COST_HEADER] == "0.002000000" and '"cost"' in out.body.decode()
    assert out.media_type == "text/event-stream"
    (o,) = ledger.outcomes
    assert o.ttft_s is None and o.finish_reasons == ["stop"] and o.response_id == "b"


def test_a_stream_the_client_left_is_499_and_charged_an_estimate_once() -> None:
    chunks = [event({"choices": [{"delta": {"content": f"t{i}"}}]}) for i in range(10)]
    s, ledger = settlement(stream=True)
    out = render(asyncio.run(s.settle(Answer("small", "small", "miss",
                                             events=events_of(chunks)))))

    async def read_three_then_leave():
        it = out.body_iterator
        for _ in range(3):
            await it.__anext__()
        await it.aclose()  # as Starlette does when the client disconnects
        out._end(True)  # and the ASGI call's end: a no-op, the outcome has ended

    asyncio.run(read_three_then_leave())
    (o,) = ledger.outcomes
    assert o.status == 499 and o.estimated and o.token_events == 3
    assert o.usage["completion_tokens"] == 3
    assert o.cost_usd == pytest.approx((o.usage["prompt_tokens"] + 3 * 2) / 1e6)


def test_a_stream_whose_client_left_before_the_first_byte_still_ends_its_outcome() -> None:
    s, ledger = settlement(stream=True)
    out = render(asyncio.run(s.settle(Answer("small", "small", "miss", events=events_of(
        [event({"choices": [{"delta": {"content": "never read"}}]})])))))

    async def gone(message):
        raise OSError("connection reset")

    async def disconnected():
        return {"type": "http.disconnect"}

    async def serve():
        with pytest.raises(ClientDisconnect):  # Starlette's word for the OSError
            await out({"type": "http", "asgi": {"spec_version": "2.4"}}, disconnected, gone)

    asyncio.run(serve())
    (o,) = ledger.outcomes
    assert o.status == 499 and o.token_events == 0
    assert o.cost_usd == pytest.approx(o.usage["prompt_tokens"] / 1e6)  # the prompt only
    assert o.usage["prompt_tokens"] == 1000  # ~4 characters a token


def test_a_request_that_failed_before_its_answer_is_settled_by_its_status() -> None:
    from sluice.errors import Unavailable

    s, ledger = settlement(stages=[StageSpend("draft", "small", USAGE)])
    s.failed(Unavailable("engine down"))
    (record,) = ledger.settled
    assert record["status"] == 503 and record["outcome"] is None
    assert record["cost"] == 0.002  # the draft it ran
    s, ledger = settlement()
    s.failed(KeyError("a bug"))
    assert ledger.settled[0]["status"] == 500
    s, ledger = settlement()
    s.failed(asyncio.CancelledError())
    assert ledger.settled[0]["status"] == 499
