"""Request spans from the real stack (the OTel SDK's exporter writing JSON lines): one span per
request in the GenAI conventions, under the client's W3C trace."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from pathlib import Path
from typing import Any


def _spans_of(path: Path, trace_id: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    return [s for s in spans if s["context"]["trace_id"] == f"0x{trace_id}"]


def _span_of(path: Path, trace_id: str, timeout_s: float = 10) -> dict[str, Any]:
    """The request's (SERVER) span of a trace, once it has ended."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for span in _spans_of(path, trace_id):
            if span["kind"] == "SpanKind.SERVER":
                return span
        time.sleep(0.2)
    raise AssertionError(f"no request span of trace {trace_id} in {path} after {timeout_s} s")


def test_a_request_is_one_genai_span_in_the_clients_trace(http, spans_file: Path) -> None:
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    body = {"model": "small", "max_tokens": 4, "temperature": 0, "top_p": 0.5,
            "messages": [{"role": "user", "content": f"trace probe {uuid.uuid4().hex}"}]}
    resp = http.post("/v1/chat/completions", json=body, headers={"traceparent": traceparent})
    assert resp.status_code == 200
    answer = resp.json()
    span = _span_of(spans_file, trace_id)
    assert span["name"] == "chat small" and span["kind"] == "SpanKind.SERVER"
    attrs = span["attributes"]
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "sluice"
    assert attrs["gen_ai.request.model"] == "small"
    assert attrs["gen_ai.request.max_tokens"] == 4
    assert attrs["gen_ai.request.temperature"] == 0
    assert attrs["gen_ai.request.top_p"] == 0.5
    assert attrs["gen_ai.response.model"] == "small"
    assert attrs["gen_ai.response.id"] == answer["id"]
    assert attrs["gen_ai.response.finish_reasons"] == [answer["choices"][0]["finish_reason"]]
    assert attrs["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
    assert "gen_ai.usage.cache_read.input_tokens" in attrs
    assert attrs["sluice.cost.usd"] == answer["usage"]["cost"]["total_usd"]


def test_a_rejected_request_is_an_error_span(http, spans_file: Path) -> None:
    trace_id = secrets.token_hex(16)
    resp = http.post("/v1/chat/completions", json={"model": "small"},
                     headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    assert resp.status_code == 400
    span = _span_of(spans_file, trace_id)
    assert span["status"]["status_code"] == "ERROR"
    assert span["attributes"]["error.type"] == "400"


def test_cache_routing_judge_and_engine_calls_are_child_spans(http, spans_file: Path) -> None:
    trace_id = secrets.token_hex(16)
    body = {"model": "t-accept", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": f"children {uuid.uuid4().hex}"}]}
    resp = http.post("/v1/chat/completions", json=body,
                     headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    assert resp.status_code == 200
    root = _span_of(spans_file, trace_id)
    children = {s["name"]: s for s in _spans_of(spans_file, trace_id) if s is not root
                and s["parent_id"] is not None and s["name"] != root["name"]}
    assert {"sluice.cache.lookup", "sluice.route", "sluice.judge", "chat small"} <= set(
        children), sorted(children)
    assert children["sluice.cache.lookup"]["attributes"]["sluice.cache"] == "miss"
    assert children["sluice.route"]["attributes"]["sluice.route"] == "small"
    engine = children["chat small"]
    assert engine["kind"] == "SpanKind.CLIENT"
    assert engine["attributes"]["gen_ai.request.model"] == "small"
    assert engine["attributes"]["sluice.replica"] == resp.headers["x-sluice-replica"]
    # every child hangs under the request span or one of its children, in the same trace
    ids = {root["context"]["span_id"]} | {s["context"]["span_id"] for s in children.values()}
    assert all(s["parent_id"] in ids for s in children.values())
