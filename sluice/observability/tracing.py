"""OpenTelemetry traces of requests at the ingress, in the GenAI semantic conventions.

One span per request, named `{gen_ai.operation.name} {gen_ai.request.model}`, a child of the
client's W3C `traceparent` when it sends one. Request attributes are set when the request is
parsed; response attributes (model that answered, id, finish reasons, token usage, cached
input tokens, cost) when its answer ends, for a stream at its last event. Cost has no
convention, so it lives under `sluice.*`, with the route and cache result.

The SDK's own TracerProvider, one per ingress (not the process-global one); exporters: `none`,
`otlp` (HTTP, batched), or `file` (one JSON span per line, for tests and local debugging).
Child spans (INTERNAL, under the request span as the current span): `sluice.cache.lookup`,
`sluice.route` (the routing decision: a cascade's stages, or the static choice), `sluice.judge`,
and one CLIENT span per engine call (`{operation} {model}`, until the engine's first output:
for a non-streamed call that is the whole answer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sluice.observability.outcome import Outcome, Tokens
from sluice.schema.observability import TracingConfig

OPERATIONS = {"chat": gen_ai.GenAiOperationNameValues.CHAT.value,
              "completions": gen_ai.GenAiOperationNameValues.TEXT_COMPLETION.value}
PROVIDER = "sluice"


def tracer_for(config: TracingConfig, exporter: SpanExporter | None = None) -> Tracer | None:
    """A tracer on its own provider, or None when tracing is off. `exporter` (tests) wins."""
    if exporter is None and config.exporter == "none":
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif config.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
            endpoint=config.otlp_endpoint) if config.otlp_endpoint else OTLPSpanExporter()))
    else:
        assert config.file is not None  # validated with the config
        Path(config.file).parent.mkdir(parents=True, exist_ok=True)
        out = open(config.file, "a", buffering=1)  # noqa: SIM115 - lives as long as the provider
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
            out=out, formatter=_one_line)))
    return provider.get_tracer("sluice.ingress")


def _one_line(span: ReadableSpan) -> str:
    return json.dumps(json.loads(span.to_json())) + "\n"


def start_span(tracer: Tracer, endpoint: str, headers: Mapping[str, str]) -> Span:
    """The request's span, child of the client's trace context if any."""
    parent = TraceContextTextMapPropagator().extract(carrier=dict(headers))
    operation = OPERATIONS.get(endpoint, endpoint)
    span = tracer.start_span(operation, context=parent, kind=SpanKind.SERVER)
    span.set_attribute(gen_ai.GEN_AI_OPERATION_NAME, operation)
    span.set_attribute(gen_ai.GEN_AI_PROVIDER_NAME, PROVIDER)
    return span


def set_request(span: Span, endpoint: str, request: Any) -> None:
    """Request attributes, once the body is parsed (and the span's final name)."""
    model = getattr(request, "model", None)
    span.update_name(f"{OPERATIONS.get(endpoint, endpoint)} {model}")
    for key, value in ((gen_ai.GEN_AI_REQUEST_MODEL, model),
                       (gen_ai.GEN_AI_REQUEST_MAX_TOKENS,
                        getattr(request, "max_completion_tokens", None)
                        or getattr(request, "max_tokens", None)),
                       (gen_ai.GEN_AI_REQUEST_TEMPERATURE, getattr(request, "temperature", None)),
                       (gen_ai.GEN_AI_REQUEST_TOP_P, getattr(request, "top_p", None))):
        if value is not None:
            span.set_attribute(key, value)


def end_span(span: Span, outcome: Outcome) -> None:
    """Response attributes from the answer's outcome, and the end of the span."""
    span.set_attribute(gen_ai.GEN_AI_RESPONSE_MODEL, outcome.model)
    span.set_attribute("sluice.route", outcome.route)
    span.set_attribute("sluice.cache", outcome.cache)
    span.set_attribute("http.response.status_code", outcome.status)
    if outcome.response_id:
        span.set_attribute(gen_ai.GEN_AI_RESPONSE_ID, outcome.response_id)
    if outcome.finish_reasons:
        span.set_attribute(gen_ai.GEN_AI_RESPONSE_FINISH_REASONS, outcome.finish_reasons)
    if outcome.usage is not None:
        tokens = Tokens.of(outcome.usage)
        span.set_attribute(gen_ai.GEN_AI_USAGE_INPUT_TOKENS, tokens.prompt)
        span.set_attribute(gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS, tokens.completion)
        span.set_attribute(gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, tokens.cached)
    if outcome.priced is not None:
        span.set_attribute("sluice.cost.usd", outcome.priced.total_usd)
    if outcome.failed:
        span.set_status(Status(StatusCode.ERROR, "the stream ended with an error event"))
    span.end()


def fail_span(span: Span, status: int, message: str) -> None:
    span.set_attribute("http.response.status_code", status)
    span.set_attribute("error.type", str(status))
    span.set_status(Status(StatusCode.ERROR, message))
    span.end()
