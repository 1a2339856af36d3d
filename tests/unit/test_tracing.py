"""Request spans in the GenAI conventions, on the real OTel SDK with an in-memory exporter."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sluice.observability.outcome import Outcome, Priced
from sluice.observability.tracing import end_span, fail_span, set_request, start_span, tracer_for
from sluice.schema.observability import TracingConfig

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
REQUEST = SimpleNamespace(model="small", max_tokens=16, max_completion_tokens=None,
                          temperature=0.2, top_p=0.9)
USAGE = {"prompt_tokens": 40, "completion_tokens": 3,
         "prompt_tokens_details": {"cached_tokens": 32},
         "cost": {"total_usd": 0.00125, "currency": "USD", "source": "engine"}}


def outcome(**kw) -> Outcome:
    return Outcome(status=200, model="small", route="small", cache="miss", started=0.0, **kw)


def traced():
    exporter = InMemorySpanExporter()
    return tracer_for(TracingConfig(), exporter=exporter), exporter


def test_tracing_is_off_by_default_and_a_file_exporter_needs_its_path() -> None:
    assert tracer_for(TracingConfig()) is None
    with pytest.raises(ValueError, match="file"):
        TracingConfig(exporter="file")


def test_an_answer_gives_one_genai_span_under_the_clients_trace() -> None:
    tracer, exporter = traced()
    span = start_span(tracer, "chat", PARENT)
    set_request(span, "chat", REQUEST)
    end_span(span, outcome(response_id="chatcmpl-1", finish_reasons=["length"], usage=USAGE,
                           priced=Priced(USAGE, 0.00125, {"small": 0.00125})))
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
        "sluice.route": "small", "sluice.cache": "miss", "http.response.status_code": 200}


def test_a_stream_that_ended_with_an_error_event_is_an_error_span() -> None:
    tracer, exporter = traced()
    span = start_span(tracer, "completions", {})
    set_request(span, "completions", REQUEST)
    end_span(span, outcome(failed=True))
    (done,) = exporter.get_finished_spans()
    assert done.name == "text_completion small"
    assert done.status.status_code is StatusCode.ERROR


def test_child_spans_started_under_the_current_request_span_share_its_trace() -> None:
    tracer, exporter = traced()
    span = start_span(tracer, "chat", PARENT)
    with trace.use_span(span), tracer.start_as_current_span("sluice.cache.lookup"):
        pass
    end_span(span, outcome())
    child, parent = exporter.get_finished_spans()
    assert child.name == "sluice.cache.lookup" and child.parent.span_id == parent.context.span_id
    assert child.context.trace_id == parent.context.trace_id


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
    end_span(span, outcome())
    (line,) = path.read_text().splitlines()
    record = json.loads(line)
    assert record["name"] == "chat small"
    assert record["context"]["trace_id"] == f"0x{TRACE_ID}"
