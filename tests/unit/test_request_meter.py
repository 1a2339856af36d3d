"""Metering a request by its response: statuses, streamed timings, usage, cache hits."""

from __future__ import annotations

import asyncio
import json

from prometheus_client.parser import text_string_to_metric_families

from sluice import sse
from sluice.accounting.accountant import Admission
from sluice.accounting.budgets import Verdict
from sluice.accounting.response_cost import UsagePricer
from sluice.accounting.tenancy import Principal
from sluice.deployments.http import render
from sluice.observability.metrics import Metrics
from sluice.observability.request_meter import RequestMeter
from sluice.pipeline.answer import Answer
from sluice.pipeline.request import RequestLimits, parsed
from sluice.pipeline.settlement import Settlement
from sluice.schema.accounting import Pricing

PRICE = Pricing.model_validate({"mode": "tokens", "tokens": {"input_per_1m": 1.0,
                                                             "output_per_1m": 1.0}})


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def samples(metrics: Metrics) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, frozenset(labels.items())), 0.0)


def event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


USAGE = {"prompt_tokens": 40, "completion_tokens": 3,
         "prompt_tokens_details": {"cached_tokens": 32}}


class NoLedger:
    def settle(self, *args, **kwargs) -> None:
        pass

    async def recorded(self) -> bool:
        return True


def metered(meter: RequestMeter, answer: Answer, clock: Clock) -> list[str]:
    """Settle the answer with this meter and send it; the chunks sent (streams)."""
    pricer = UsagePricer({"small": PRICE, "large": PRICE})
    settlement = Settlement(meter, None, NoLedger(), pricer, "r", clock)  # type: ignore[arg-type]
    settlement.admitted(Admission(Principal("k", "t"), (), 0.0, Verdict("ok")))
    body: dict = {"model": meter.model, "prompt": "p", "stream": answer.events is not None}
    if answer.events is not None:
        body["stream_options"] = {"include_usage": True}
    settlement.parsed(parsed("completions", body, RequestLimits(8, 4096), "r", {}),
                      known_model=False)  # the tests mark it routed themselves
    response = render(asyncio.run(settlement.settle(answer)))
    if answer.events is None:
        return []

    async def drain() -> list[str]:
        return [c async for c in response.body_iterator]

    return asyncio.run(drain())


def test_a_streamed_answer_records_ttft_tpot_tokens_cost_and_in_flight() -> None:
    metrics, clock = Metrics(), Clock()
    meter = RequestMeter(metrics, clock)
    meter.routed("small")
    assert value(metrics, "sluice_in_flight_requests", model="small") == 1
    chunks = [event({"choices": [{"delta": {"role": "assistant", "content": ""}}]}),
              event({"choices": [{"delta": {"content": "a"}}]}),
              event({"choices": [{"delta": {"content": "b"}}]}),
              event({"choices": [{"delta": {"content": "c"}}]}),
              event({"choices": [], "usage": USAGE}), "data: [DONE]\n\n"]

    async def body():
        for i, chunk in enumerate(chunks):
            clock.t = 100.0 + [0.0, 0.25, 0.35, 0.45, 0.46, 0.46][i]
            yield sse.read(chunk, parse_first=i == 0)

    sent = metered(meter, Answer("small", "direct", "bypass", events=body()), clock)
    assert len(sent) == len(chunks)
    assert value(metrics, "gen_ai_server_time_to_first_token_seconds_sum", model="small") == 0.25
    assert value(metrics, "sluice_served_time_to_first_token_seconds_sum", model="small",
                 served="small") == 0.25
    # 3 tokens: 2 gaps over 0.46 - 0.25 s
    assert abs(value(metrics, "gen_ai_server_time_per_output_token_seconds_sum",
                     model="small") - 0.105) < 1e-9
    assert value(metrics, "sluice_tokens_total", model="small", type="input") == 40
    assert value(metrics, "sluice_tokens_total", model="small", type="cached_input") == 32
    assert value(metrics, "sluice_requests_total", model="small", route="direct",
                 status="200") == 1
    assert value(metrics, "sluice_in_flight_requests", model="small") == 0
    assert value(metrics, "sluice_cost_usd_total", model="small") == (40 + 3) / 1e6


def test_a_json_answer_counts_its_usage_and_a_cache_hit_counts_no_tokens() -> None:
    metrics, clock = Metrics(), Clock()
    meter = RequestMeter(metrics, clock)
    meter.routed("large")
    def body() -> dict:
        return {"choices": [{"message": {"content": "x"}}], "usage": dict(USAGE)}

    metered(meter, Answer("large", "direct", "miss", whole=body()), clock)
    hit = RequestMeter(metrics, clock)
    hit.routed("large")
    metered(hit, Answer("large", "cache", "hit", whole=body()), clock)
    assert value(metrics, "sluice_tokens_total", model="large", type="output") == 3
    assert value(metrics, "sluice_requests_total", model="large", route="cache",
                 status="200") == 1
    assert value(metrics, "gen_ai_server_request_duration_seconds_count", model="large") == 2
    assert value(metrics, "sluice_cost_usd_total", model="large") == (40 + 3) / 1e6


def test_errors_are_counted_with_their_status_and_release_the_gauge() -> None:
    metrics = Metrics()
    early = RequestMeter(metrics, Clock())
    early.failed(400)  # rejected before a model was known
    late = RequestMeter(metrics, Clock())
    late.routed("small")
    late.failed(503)
    assert value(metrics, "sluice_requests_total", model="unrouted", route="error",
                 status="400") == 1
    assert value(metrics, "sluice_requests_total", model="small", route="error",
                 status="503") == 1
    assert value(metrics, "sluice_served_requests_total", model="small", served="",
                 status="503") == 1  # nobody answered it
    assert value(metrics, "sluice_in_flight_requests", model="small") == 0


def test_the_model_or_variant_that_answered_is_its_own_label() -> None:
    """A rollout's variant (or a failover chain's model) answered for the model asked for:
    `model` stays the one asked for; `served` names who answered."""
    metrics, clock = Metrics(), Clock()
    meter = RequestMeter(metrics, clock)
    meter.routed("large")
    metered(meter, Answer("large@v2", "large", "miss", whole={
        "choices": [{"message": {"content": "x"}}], "usage": dict(USAGE)}), clock)
    assert value(metrics, "sluice_served_requests_total", model="large", served="large@v2",
                 status="200") == 1
    assert value(metrics, "sluice_requests_total", model="large", route="large",
                 status="200") == 1


def test_cache_and_cascade_state_is_read_at_scrape_time() -> None:
    state = {"hit": 1, "miss": 4}
    routes = {"auto": {"routes": {"small": 7, "small>large": 3}, "escalation_rate": 0.3,
                       "judge_reliability": {"estimate": 0.75, "pairs": 40}}}
    metrics = Metrics(caches=lambda: {"response": state, "semantic": None},
                      routes=lambda: routes)
    assert value(metrics, "sluice_cache_lookups_total", cache="response", result="miss") == 4
    state["hit"] += 1
    assert value(metrics, "sluice_cache_lookups_total", cache="response", result="hit") == 2
    assert value(metrics, "sluice_cascade_requests_total", route="auto",
                 path="small>large") == 3
    assert value(metrics, "sluice_judge_reliability", route="auto") == 0.75
