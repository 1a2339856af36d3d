"""The Messages API's two translations (Anthropic -> chat request, chat answer -> Anthropic),
which lean on vLLM's converters: these pin them against the vLLM this project pins."""

from __future__ import annotations

import asyncio
import json

import pytest

from sluice import sse
from sluice.deployments import anthropic_api
from sluice.errors import InvalidRequest, PayloadTooLarge, Unavailable


def _payload(body: dict) -> dict:
    return anthropic_api.chat_payload(json.dumps(body).encode())


def test_a_messages_body_becomes_the_chat_request_it_asks_for() -> None:
    chat = _payload({"model": "small", "max_tokens": 32, "system": "Be brief.",
                     "stop_sequences": ["END"], "temperature": 0.2,
                     "messages": [{"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "hello"},
                                  {"role": "user", "content": [
                                      {"type": "text", "text": "and"},
                                      {"type": "text", "text": "more"}]}]})
    assert chat["model"] == "small" and chat["max_tokens"] == 32
    assert chat["stop"] == ["END"] and chat["temperature"] == 0.2
    assert "max_completion_tokens" not in chat and "stream" not in chat
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert chat["messages"][0]["content"] == "Be brief."
    assert "and" in json.dumps(chat["messages"][3]) and "more" in json.dumps(chat["messages"][3])


def test_a_streamed_messages_request_asks_for_the_usage_chunk() -> None:
    chat = _payload({"model": "small", "max_tokens": 8, "stream": True,
                     "messages": [{"role": "user", "content": "hi"}]})
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "small", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ({"model": "small", "max_tokens": 8}, "messages"),
    ({"model": "small", "max_tokens": 8, "messages": [{"role": "robot", "content": "x"}]},
     "messages.0.role"),
])
def test_a_body_that_is_not_a_messages_request_is_a_400_naming_the_field(
        body: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _payload(body)
    assert caught.value.status == 400 and caught.value.param == param


def test_bad_json_and_oversize_bodies_are_the_clients_mistakes() -> None:
    with pytest.raises(InvalidRequest):
        anthropic_api.chat_payload(b"{not json")

    async def read(limit: int) -> bytes:
        async def body():
            yield b'{"model": "small", "max_tokens": 8, "messages": []}'
        return b"".join([c async for c in anthropic_api.chat_body(body(), None, limit)])

    with pytest.raises(PayloadTooLarge):
        asyncio.run(read(10))
    assert json.loads(asyncio.run(read(1000)))["model"] == "small"


def test_the_anthropic_key_header_is_the_bearer_token() -> None:
    headers = anthropic_api.chat_headers({"X-Api-Key": "sk-a", "content-length": "99",
                                          "anthropic-version": "2023-06-01"})
    assert headers["authorization"] == "Bearer sk-a" and "content-length" not in headers
    both = anthropic_api.chat_headers({"x-api-key": "sk-a", "authorization": "Bearer sk-b"})
    assert both["authorization"] == "Bearer sk-b"  # an explicit bearer token wins


def _completion(finish: str = "stop", content: str = "Hello there") -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "small",
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}


def test_a_whole_answer_is_an_anthropic_message() -> None:
    out = anthropic_api.message(_completion())
    assert out["type"] == "message" and out["role"] == "assistant" and out["model"] == "small"
    assert out["content"] == [{"type": "text", "text": "Hello there"}]
    assert out["stop_reason"] == "end_turn"
    assert out["usage"]["input_tokens"] == 11 and out["usage"]["output_tokens"] == 3
    assert anthropic_api.message(_completion("length"))["stop_reason"] == "max_tokens"


def test_prompt_tokens_served_from_a_cache_are_anthropics_cache_reads() -> None:
    """Anthropic counts input as input_tokens + cache_read_input_tokens (+ creation); the
    engines' prefix cache (and the KV tier) report cached_tokens, which become cache reads."""
    whole = _completion()
    whole["usage"]["prompt_tokens_details"] = {"cached_tokens": 8}
    usage = anthropic_api.message(whole)["usage"]
    assert usage["cache_read_input_tokens"] == 8 and usage["input_tokens"] == 11 - 8
    cached = {**USAGE, "prompt_tokens_details": {"cached_tokens": 4}}
    events = _convert([_chunk({"role": "assistant", "content": ""}), _chunk({"content": "a"}),
                       _chunk({"content": ""}, finish="stop"), _chunk(usage=cached),
                       sse.DONE])
    delta = dict(events)["message_delta"]["usage"]
    assert delta["cache_read_input_tokens"] == 4 and delta["input_tokens"] == 5 - 4
    # no details (the engine was not asked for them): no cache fields, all input
    assert "cache_read_input_tokens" not in anthropic_api.message(_completion())["usage"]


def _chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None
           ) -> str:
    body: dict = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1,
                  "model": "small",
                  "choices": [] if delta is None else [{"index": 0, "delta": delta,
                                                        "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return sse.encode(body)


def _convert(texts: list[str]) -> list[tuple[str, dict]]:
    async def chunks():
        for text in texts:
            yield sse.read(text)

    async def run() -> list[str]:
        return [e async for e in anthropic_api.message_events(chunks())]

    events = []
    for out in asyncio.run(run()):
        name, data = out.strip().split("\n", 1)
        assert name.startswith("event: ") and data.startswith("data: ")
        events.append((name[len("event: "):], json.loads(data[len("data: "):])))
    return events


USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_a_stream_becomes_anthropics_events_with_stop_reason_and_usage() -> None:
    events = _convert([_chunk({"role": "assistant", "content": ""}),
                       _chunk({"content": "Hel"}), _chunk({"content": "lo"}),
                       _chunk({"content": ""}, finish="length"),
                       _chunk(usage=USAGE), sse.DONE])
    names = [n for n, _ in events]
    assert names == ["message_start", "content_block_start", "content_block_delta",
                     "content_block_delta", "content_block_stop", "message_delta",
                     "message_stop"]
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "Hello"
    delta = dict(events)["message_delta"]
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"]["output_tokens"] == 2 and delta["usage"]["input_tokens"] == 5


def test_a_stream_whose_first_chunk_carries_text_loses_none_of_it() -> None:
    # a replayed or cached stream: no role chunk of its own
    events = _convert([_chunk({"role": "assistant", "content": "All"}),
                       _chunk({"content": " here"}, finish="stop"), _chunk(usage=USAGE),
                       sse.DONE])
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "All here"
    assert dict(events)["message_delta"]["delta"]["stop_reason"] == "end_turn"


def test_a_stream_that_fails_midway_ends_with_anthropics_error_event() -> None:
    failure = Unavailable("Model 'small' stopped mid-stream; retry.")
    events = _convert([_chunk({"role": "assistant", "content": ""}),
                       _chunk({"content": "Hel"}),
                       sse.encode(failure.body()), sse.DONE])
    name, data = events[-1]
    assert name == "error" and data["type"] == "error"
    assert data["error"] == {"type": "overloaded_error",
                             "message": "Model 'small' stopped mid-stream; retry."}
    assert "message_stop" not in [n for n, _ in events]  # it did not end as if complete


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (413, "request_too_large"), (429, "rate_limit_error"),
    (500, "api_error"), (503, "overloaded_error"), (405, "invalid_request_error")])
def test_errors_take_anthropics_types(status: int, kind: str) -> None:
    body = anthropic_api.error_body(status, "why")
    assert body == {"type": "error", "error": {"type": kind, "message": "why"}}


def test_the_edge_renders_errors_on_the_messages_path_in_anthropics_shape() -> None:
    from fastapi.testclient import TestClient

    from sluice.deployments.http import create_app

    app = create_app()

    @app.post(anthropic_api.PATH)
    async def messages() -> None:
        raise Unavailable("Model 'small' is at capacity; retry.", retry_after_s=2)

    @app.post("/v1/chat/completions")
    async def chat() -> None:
        raise Unavailable("Model 'small' is at capacity; retry.", retry_after_s=2)

    client = TestClient(app)
    refused = client.post(anthropic_api.PATH, json={})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert refused.json() == {"type": "error", "error": {
        "type": "overloaded_error", "message": "Model 'small' is at capacity; retry."}}
    assert client.post("/v1/chat/completions", json={}).json()["error"]["type"] == \
        "service_unavailable"  # the OpenAI endpoints keep OpenAI's shape
    wrong = client.get(anthropic_api.PATH)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["type"] == "invalid_request_error"
