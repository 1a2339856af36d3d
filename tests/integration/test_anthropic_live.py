"""Anthropic's Messages API on the real stack, through Anthropic's own SDK (#21): a client
written against Anthropic talks to Sluice unchanged, gets the answer the OpenAI endpoint
gives for the same request, streamed or not, metered and priced; its mistakes come back in
Anthropic's error shape."""

from __future__ import annotations

import uuid

import anthropic
import httpx
import pytest

pytestmark = pytest.mark.integration
KEY = "sk-test-team-a"  # a key of the test stack (tenant team-a)
NO_STORE = {"cache-control": "no-store"}  # the engine answers, not the response cache
# greedy, so two calls give one answer; the SDK's own parameters no longer take temperature
# (Anthropic's newer models refuse it), the Messages API and vLLM's converter still do
GREEDY = {"temperature": 0}


@pytest.fixture()
def claude(base_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key=KEY, max_retries=0, timeout=120)


def _question() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"[{uuid.uuid4().hex[:8]}] Name three rivers."}]


def test_a_message_is_the_answer_the_chat_endpoint_gives(claude, http) -> None:
    messages = _question()
    raw = claude.messages.with_raw_response.create(
        model="small", max_tokens=12, system="Answer briefly.", extra_body=GREEDY,
        messages=messages, extra_headers=NO_STORE)
    reply = raw.parse()
    assert reply.type == "message" and reply.role == "assistant"
    assert reply.content[0].type == "text" and reply.content[0].text
    assert reply.stop_reason in ("max_tokens", "end_turn")
    assert 0 < reply.usage.output_tokens <= 12 and reply.usage.input_tokens > 0
    assert raw.headers["x-sluice-model"] == "small"
    assert float(raw.headers["x-sluice-cost-usd"]) > 0  # priced as any answer

    chat = http.post("/v1/chat/completions", headers={**NO_STORE,
                                                      "authorization": f"Bearer {KEY}"},
                     json={"model": "small", "max_tokens": 12, "temperature": 0,
                           "messages": [{"role": "system", "content": "Answer briefly."},
                                        *messages]}).json()
    assert reply.content[0].text == chat["choices"][0]["message"]["content"]
    assert reply.usage.input_tokens == chat["usage"]["prompt_tokens"]
    assert reply.usage.output_tokens == chat["usage"]["completion_tokens"]


def test_a_streamed_message_arrives_as_anthropics_events(claude) -> None:
    messages = _question()
    whole = claude.messages.create(model="small", max_tokens=16, extra_body=GREEDY,
                                   messages=messages, extra_headers=NO_STORE)
    with claude.messages.stream(model="small", max_tokens=16, extra_body=GREEDY,
                                messages=messages, extra_headers=NO_STORE) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds
    assert final.content[0].text == whole.content[0].text  # the same answer
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.stop_reason == whole.stop_reason


def test_the_auto_route_answers_messages_too(claude) -> None:
    raw = claude.messages.with_raw_response.create(
        model="auto", max_tokens=8, messages=_question(), extra_headers=NO_STORE)
    assert raw.parse().content[0].text is not None
    assert raw.headers["x-sluice-route"] and raw.headers["x-sluice-model"] in ("small", "large")


def test_mistakes_come_back_in_anthropics_error_shape(claude, base_url: str) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=8, messages=_question())
    assert missing.value.body["type"] == "error"
    assert missing.value.body["error"]["type"] == "not_found_error"

    # what the SDK's types would not let through: raw bodies
    url = f"{base_url}/v1/messages"
    no_max = httpx.post(url, headers={"x-api-key": KEY}, timeout=60,
                        json={"model": "small", "messages": _question()})
    assert no_max.status_code == 400, no_max.text
    assert no_max.json()["error"] == {"type": "invalid_request_error",
                                      "message": no_max.json()["error"]["message"]}
    assert "max_tokens" in no_max.json()["error"]["message"]
    not_json = httpx.post(url, headers={"x-api-key": KEY, "content-type": "application/json"},
                          content=b"{oops", timeout=60)
    assert not_json.status_code == 400 and not_json.json()["type"] == "error"
    wrong_method = httpx.get(url, timeout=60)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["type"] == "invalid_request_error"
