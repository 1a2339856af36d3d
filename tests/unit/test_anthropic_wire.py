"""A hosted model behind Anthropic's Messages API (#21): the translation both ways
(`sluice.pipeline.anthropic_wire`) and the provider call that uses it, on httpx's
MockTransport (pure logic; the live test runs vLLM's own /v1/messages as the provider)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from sluice import sse
from sluice.errors import InvalidRequest, Unavailable
from sluice.pipeline import anthropic_wire
from sluice.pipeline.engines import EngineStream
from sluice.pipeline.providers import ProviderEngine
from sluice.schema.catalog import ProviderEndpoint

ENDPOINT = ProviderEndpoint(api="anthropic", base_url="https://anthropic.test/v1",
                            model="claude-x", api_key_env="TEST_ANTHROPIC_KEY",
                            first_token_timeout_s=0.5, stall_timeout_s=0.5,
                            request_timeout_s=1.0, default_max_tokens=321)
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
           "content": [{"type": "text", "text": "Hello"},
                       {"type": "tool_use", "id": "tu_1", "name": "find",
                        "input": {"q": "rivers"}}],
           "stop_reason": "tool_use",
           "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 4,
                     "cache_creation_input_tokens": 2}}


def test_a_chat_request_becomes_a_messages_request() -> None:
    chat = {"model": "hosted", "max_tokens": 20, "temperature": 0.5, "stop": "END",
            "user": "u1", "stream": True,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "find", "arguments": '{"q": "a"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "found a"},
                {"role": "user", "content": "and?"}],
            "tools": [{"type": "function", "function": {"name": "find", "parameters": {
                "type": "object", "properties": {"q": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "find"}}}
    body = anthropic_wire.messages_request(chat, "claude-x", 99)
    assert body["model"] == "claude-x" and body["max_tokens"] == 20
    assert body["system"] == "Be brief.\n\nUse tools."
    assert body["stop_sequences"] == ["END"] and body["stream"] is True
    assert body["temperature"] == 0.5 and body["metadata"] == {"user_id": "u1"}
    roles = [t["role"] for t in body["messages"]]
    assert roles == ["user", "assistant", "user"]  # the tool result and "and?" merged
    user, assistant, last = body["messages"]
    assert user["content"][1]["source"] == {"type": "base64", "media_type": "image/png",
                                            "data": "AAA"}
    assert user["content"][2]["source"] == {"type": "url", "url": "https://x.test/a.png"}
    assert assistant["content"] == [{"type": "tool_use", "id": "c1", "name": "find",
                                     "input": {"q": "a"}}]
    assert last["content"] == [{"type": "tool_result", "tool_use_id": "c1",
                                "content": "found a"},
                               {"type": "text", "text": "and?"}]
    assert body["tools"][0]["input_schema"]["properties"]["q"] == {"type": "string"}
    assert body["tool_choice"] == {"type": "tool", "name": "find"}


def test_max_tokens_defaults_and_what_has_no_counterpart_is_a_400() -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert anthropic_wire.messages_request(chat, "m", 99)["max_tokens"] == 99
    assert anthropic_wire.messages_request({**chat, "max_completion_tokens": 7}, "m",
                                           99)["max_tokens"] == 7
    with pytest.raises(InvalidRequest) as n:
        anthropic_wire.messages_request({**chat, "n": 2}, "m", 99)
    assert n.value.param == "n"
    with pytest.raises(InvalidRequest):
        anthropic_wire.messages_request({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {}}]}]}, "m", 99)


def test_a_whole_answer_becomes_a_chat_completion_with_all_of_its_prompt_counted() -> None:
    reply = anthropic_wire.chat_response(MESSAGE)
    choice = reply["choices"][0]
    assert choice["message"]["content"] == "Hello" and choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"] == {"name": "find", "arguments": '{"q": "rivers"}'}
    # OpenAI's prompt_tokens is the whole prompt; Anthropic counts cached input apart, and
    # the cache writes (billed above the input price) are named as OpenRouter names them
    assert reply["usage"] == {"prompt_tokens": 16, "completion_tokens": 5,
                              "total_tokens": 21,
                              "prompt_tokens_details": {"cached_tokens": 4,
                                                        "cache_write_tokens": 2}}


STREAM = [
    {"type": "message_start", "message": {"id": "msg_2", "model": "claude-x",
                                          "usage": {"input_tokens": 9, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_delta", "index": 0,
     "delta": {"type": "text_delta", "text": " there"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1,
     "content_block": {"type": "tool_use", "id": "tu_2", "name": "find", "input": {}}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": '{"q":'}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
     "usage": {"output_tokens": 6}},
    {"type": "message_stop"}]


def _anthropic_sse(events: list[dict]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def test_a_stream_becomes_chat_chunks_ending_with_usage_and_done() -> None:
    translator = anthropic_wire.StreamTranslator()
    chunks = [c for e in STREAM for c in translator.translate(e)]
    assert chunks[-1] == sse.DONE
    data = [sse.payload(c) for c in chunks[:-1]]
    assert data[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert data[0]["id"] == "chatcmpl-msg_2" and data[0]["model"] == "claude-x"
    text = "".join(d["choices"][0]["delta"].get("content", "") for d in data if d["choices"])
    assert text == "Hi there"
    calls = [d["choices"][0]["delta"]["tool_calls"][0] for d in data
             if d["choices"] and "tool_calls" in d["choices"][0]["delta"]]
    assert calls[0]["id"] == "tu_2" and calls[0]["index"] == 0
    assert calls[1]["function"]["arguments"] == '{"q":'
    assert data[-2]["choices"][0]["finish_reason"] == "length"
    assert data[-1]["choices"] == [] and data[-1]["usage"]["completion_tokens"] == 6
    assert data[-1]["usage"]["prompt_tokens"] == 9


def test_an_error_event_ends_the_stream_as_an_error() -> None:
    chunks = list(anthropic_wire.StreamTranslator().translate(
        {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}))
    assert sse.is_error(chunks[0]) and chunks[-1] == sse.DONE
    assert sse.payload(chunks[0])["error"]["code"] == 529  # the status of its type


def test_the_role_chunk_waits_for_the_first_content_and_an_early_error_comes_alone() -> None:
    translator = anthropic_wire.StreamTranslator()
    assert list(translator.translate(STREAM[0])) == []  # message_start: held
    assert list(translator.translate(STREAM[1])) == []  # a text block's start: no content
    assert list(translator.translate(STREAM[2])) == []  # ping
    role, text = translator.translate(STREAM[3])  # the first text: the role chunk, then it
    assert sse.payload(role)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert sse.payload(text)["choices"][0]["delta"] == {"content": "Hi"}
    assert len(list(translator.translate(STREAM[4]))) == 1  # sent once

    failing = anthropic_wire.StreamTranslator()
    assert list(failing.translate(STREAM[0])) == []
    error, done = failing.translate({"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}})
    assert sse.is_error(error) and done == sse.DONE  # no role chunk before it


def _request(**extra: Any) -> ChatCompletionRequest:
    request = ChatCompletionRequest.model_validate(
        {"model": "hosted", "messages": [{"role": "system", "content": "S"},
                                         {"role": "user", "content": "hi"}], **extra})
    request.request_id = "req-1"
    return request


def _engine(handler) -> ProviderEngine:
    return ProviderEngine("hosted", ENDPOINT, {"TEST_ANTHROPIC_KEY": "sk-ant"},
                          transport=httpx.MockTransport(handler))


def test_the_provider_calls_messages_with_anthropics_headers_and_answers_as_openai() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=MESSAGE)

    stream = asyncio.run(_engine(handler).call("chat", _request()))
    assert isinstance(stream, EngineStream)
    assert stream.whole()["choices"][0]["message"]["content"] == "Hello"
    request = seen[0]
    assert str(request.url) == "https://anthropic.test/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant" and "authorization" not in request.headers
    assert request.headers["anthropic-version"] == anthropic_wire.VERSION
    sent = json.loads(request.content)
    assert sent["system"] == "S" and sent["max_tokens"] == 321 and sent["model"] == "claude-x"


def test_a_streamed_call_reads_anthropics_events_and_closes_the_response() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_anthropic_sse(STREAM),
                              headers={"content-type": "text/event-stream"})

    async def read() -> list[sse.Event]:
        stream = await _engine(handler).call("chat", _request(stream=True,
                                                              stream_options={
                                                                  "include_usage": True}))
        return [e async for chunk in stream.events() for e in chunk]

    events = asyncio.run(read())
    assert [e.kind for e in events][:2] == [sse.ROLE, sse.TOKEN]  # the role, with the text
    assert events[-1].kind == sse.END
    assert [e.kind for e in events].count(sse.USAGE) == 1
    text = "".join(sse.payload(e.text)["choices"][0]["delta"].get("content") or ""
                   for e in events if e.kind == sse.TOKEN)
    assert text == "Hi there"


def _streamed(events: list[dict] | bytes, *, stall_after: int | None = None):
    """A handler answering `events` as Anthropic's stream, going quiet after the first
    `stall_after` of them."""
    class Body(httpx.AsyncByteStream):
        async def __aiter__(self):
            for i, event in enumerate(events):
                if i == stall_after:
                    await asyncio.sleep(30)
                yield _anthropic_sse([event])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Body(), headers={"content-type": "text/event-stream"})
    return handler


OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


@pytest.mark.parametrize("events", [[OVERLOADED], [STREAM[0], STREAM[2], OVERLOADED]],
                         ids=["first", "after-message_start"])
def test_a_stream_opening_with_overloaded_error_is_a_retriable_503(events: list) -> None:
    with pytest.raises(Unavailable) as down:
        asyncio.run(_engine(_streamed(events)).call("chat", _request(stream=True)))
    assert down.value.code == "provider_unavailable"
    assert "began with an error 529: Overloaded" in down.value.message


def test_a_stream_opening_with_a_client_error_is_that_4xx() -> None:
    bad = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
    with pytest.raises(InvalidRequest) as mistake:
        asyncio.run(_engine(_streamed([STREAM[0], bad])).call("chat", _request(stream=True)))
    assert mistake.value.status == 400 and mistake.value.message == "bad"


def test_a_provider_stalling_after_message_start_misses_its_first_token_bound() -> None:
    with pytest.raises(Unavailable, match="did not answer within 0.5 s"):
        asyncio.run(_engine(_streamed(STREAM, stall_after=3)).call(  # before the first text
            "chat", _request(stream=True)))


def test_a_stream_that_ends_after_message_start_is_a_retriable_503() -> None:
    with pytest.raises(Unavailable, match="ended before any output"):
        asyncio.run(_engine(_streamed(STREAM[:3])).call("chat", _request(stream=True)))


def test_its_errors_are_named_as_an_engines_and_completions_are_refused() -> None:
    def overloaded(request: httpx.Request) -> httpx.Response:
        return httpx.Response(529, json={"type": "error", "error": {
            "type": "overloaded_error", "message": "Overloaded"}})

    with pytest.raises(Unavailable) as down:
        asyncio.run(_engine(overloaded).call("chat", _request()))
    assert "529" in down.value.message and "Overloaded" in down.value.message

    def bad(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"type": "error", "error": {
            "type": "invalid_request_error", "message": "max_tokens: too big"}})

    with pytest.raises(InvalidRequest) as mistake:
        asyncio.run(_engine(bad).call("chat", _request()))
    assert "too big" in mistake.value.message

    completion = CompletionRequest.model_validate({"model": "hosted", "prompt": "hi"})
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(_engine(bad).call("completions", completion))
    assert refused.value.param == "model"
