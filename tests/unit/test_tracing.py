"""Request spans in the GenAI conventions, on the real OTel SDK with an in-memory exporter."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.responses import Response, StreamingResponse

from sluice.observability.tracing import (
    TracingConfig,
    end_span,
    fail_span,
    set_request,
    start_span,
    tracer_for,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
REQUEST = SimpleNamespace(model="small", max_tokens=16, max_completion_tokens=None,
                          temperature=0.2, top_p=0.9)
USAGE = {"prompt_tokens": 40, "completion_tokens": 3,
         "prompt_tokens_details": {"cached_tokens": 32},
         "cost": {"total_usd": 0.00125, "currency": "USD", "source": "engine"}}
HEADERS = {"x-sluice-model": "small", "x-sluice-route": "small", "x-sluice-cache": "miss"}


def traced():
    exporter = InMemorySpanExporter()
    return tracer_for(TracingConfig(), exporter=exporter), exporter


def test_tracing_is_off_by_default_and_a_file_exporter_needs_its_path() -> None:
    assert tracer_for(TracingConfig()) is None
    with pytest.raises(ValueError, match="file"):
        TracingConfig(exporter="file")


def test_a_json_answer_gives_one_genai_span_under_the_clients_trace() -> None:
    tracer, exporter = traced()
    span = start_span(tracer, "chat", PARENT)
    set_request(span, "chat", REQUEST)
    body = {"id": "chatcmpl-1", "choices": [{"finish_reason": "length"}], "usage": USAGE}
    end_span(span, Response(json.dumps(body), media_type="application/json", headers=HEADERS))
    (done,) = exporter.get_finished_spans()
    assert done.name == "chat small" and done.kind is SpanKind.SERVER
    assert format(done.context.trace_id, "032x") == TRACE_ID  # W3C context from the client
    assert done.attributes == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "sluice",
        "gen_ai.request.model": "small", "gen_ai.request.max_tokens": 16,
        "gen_ai.request.temperature": 0.2, "gen_ai.request.top_p": 0.9,
        "gen_ai.response.model": "small", "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.response.finish_reasons": ("length",),
        "gen_ai.usage.input_tokens": 40, "gen_ai.usage.output_tokens": 3,
        "gen_ai.usage.cache_read.input_tokens": 32, "sluice.cost.usd": 0.00125,
        "sluice.route": "small", "sluice.cache": "miss"}


def test_a_stream_ends_its_span_at_its_last_event() -> None:
    tracer, exporter = traced()
    span = start_span(tracer, "completions", {})
    set_request(span, "completions", REQUEST)
    chunks = ['data: {"id":"cmpl-2","choices":[{"text":"a","finish_reason":null}]}\n\n',
              'data: {"id":"cmpl-2","choices":[{"text":"b","finish_reason":"stop"}]}\n\n',
              f'data: {json.dumps({"id": "cmpl-2", "choices": [], "usage": USAGE})}\n\n',
              "data: [DONE]\n\n"]

    async def body():
        for c in chunks:
            yield c

    response = end_span(span, StreamingResponse(body(), headers=HEADERS))
    assert exporter.get_finished_spans() == ()  # still streaming

    async def drain():
        return [c async for c in response.body_iterator]

    assert asyncio.run(drain()) == chunks
    (done,) = exporter.get_finished_spans()
    assert done.name == "text_completion small"
    assert done.attributes["gen_ai.response.id"] == "cmpl-2"
    assert done.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert done.attributes["gen_ai.usage.output_tokens"] == 3


def test_a_failed_request_ends_its_span_as_an_error() -> None:
    tracer, exporter = traced()
    span = start_span(tracer, "chat", {})
    fail_span(span, 400, "messages is required")
    (done,) = exporter.get_finished_spans()
    assert done.status.status_code is StatusCode.ERROR
    assert done.attributes["error.type"] == "400"


def test_the_file_exporter_writes_one_json_span_per_line(tmp_path) -> None:
    path = tmp_path / "spans.jsonl"
    tracer = tracer_for(TracingConfig(exporter="file", file=str(path)))
    assert tracer is not None
    span = start_span(tracer, "chat", PARENT)
    set_request(span, "chat", REQUEST)
    end_span(span, Response("{}", media_type="application/json", headers=HEADERS))
    (line,) = path.read_text().splitlines()
    record = json.loads(line)
    assert record["name"] == "chat small"
    assert record["context"]["trace_id"] == f"0x{TRACE_ID}"
