"""Metering a request by its response: statuses, streamed timings, usage, cache hits."""

from __future__ import annotations

import asyncio
import json

from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import Response, StreamingResponse

from sluice.accounting.cost import Pricing
from sluice.accounting.response_cost import UsagePricer
from sluice.observability.metrics import Metrics
from sluice.observability.request_meter import RequestMeter
from sluice.observability.response_watch import watch

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


def metered(meter: RequestMeter, response: Response, clock: Clock) -> Response:
    pricer = UsagePricer({"small": PRICE, "large": PRICE})
    return watch(response, started=meter.started, clock=clock, client_usage=True,
                 on_end=meter.finished,
                 price=lambda usage, model, hit: pricer.price(usage, model, hit=hit))


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
            yield chunk

    response = metered(meter, StreamingResponse(body(), headers={
        "x-sluice-route": "direct", "x-sluice-model": "small"}), clock)

    async def drain():
        return [c async for c in response.body_iterator]

    assert len(asyncio.run(drain())) == len(chunks)
    assert value(metrics, "gen_ai_server_time_to_first_token_seconds_sum", model="small") == 0.25
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
    body = json.dumps({"choices": [{"message": {"content": "x"}}], "usage": USAGE})
    metered(meter, Response(body, media_type="application/json", headers={
        "x-sluice-route": "direct", "x-sluice-model": "large"}), clock)
    hit = RequestMeter(metrics, clock)
    hit.routed("large")
    metered(hit, Response(body, media_type="application/json", headers={
        "x-sluice-route": "cache", "x-sluice-cache": "hit", "x-sluice-model": "large"}), clock)
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
    assert value(metrics, "sluice_in_flight_requests", model="small") == 0


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
