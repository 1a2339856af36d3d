"""Anthropic's Messages API (`POST /v1/messages`): a second front door to the same pipeline.

An application written against Anthropic's SDK points its base URL at Sluice and keeps its
code. The request is translated into a chat completion before the pipeline sees it, so a
`/v1/messages` request is authenticated, rate-limited, budgeted, routed (cascade, context
policy), cached, metered, priced and traced exactly as a `/v1/chat/completions` one (the
ledger and metrics count it under the `chat` endpoint); only its two ends differ:

- in: the body is validated with vLLM's own Anthropic request model and translated by
  vLLM's own converter (`AnthropicServingMessages.to_chat_completion_request`: `system`,
  content blocks, images, tools and tool results, `stop_sequences`, `thinking`), the code
  vLLM's `/v1/messages` runs. The key comes in Anthropic's `x-api-key` header or as a bearer
  token.
- out: a whole answer becomes a `message` and a stream becomes Anthropic's events
  (`message_start`, `content_block_start|delta|stop`, `message_delta` with the stop reason
  and usage, `message_stop`), again by vLLM's converters. They are instance methods of
  vLLM's serving class that read none of its state (it needs an engine to construct), so
  they are called unbound; `tests/unit/test_anthropic_api.py` pins that against the vLLM
  this project pins.
- errors: Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`, with the
  status Sluice gives the same mistake on the OpenAI endpoints (and its `Retry-After`); a
  stream that fails after it started ends with an `error` event, as Anthropic's do.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from pydantic import ValidationError
from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest
from vllm.entrypoints.anthropic.serving import AnthropicServingMessages
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse

from sluice import sse
from sluice.errors import InvalidRequest, SluiceError
from sluice.pipeline.request_body import decode_json, read_body

PATH = "/v1/messages"
_CONVERTER = AnthropicServingMessages
# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors); Sluice's 503
# (engine unavailable or overloaded, retriable) is Anthropic's overloaded_error
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 408: "timeout_error",
                413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
                529: "overloaded_error"}


def error_type(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def sluice_error_body(err: SluiceError) -> dict[str, Any]:
    return error_body(err.status, err.message)


# ---- in ------------------------------------------------------------------------------------


def chat_payload(raw: bytes) -> dict[str, Any]:
    """The chat-completion request an Anthropic Messages body asks for; 400 if it is not
    one (the field and the reason, as pydantic found them)."""
    body = decode_json(raw)
    try:
        request = AnthropicMessagesRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InvalidRequest(f"Invalid Messages request: {where}: {first.get('msg')}.",
                             param=where) from None
    try:
        chat = _CONVERTER.to_chat_completion_request(request)
    except (ValueError, TypeError, KeyError) as exc:  # a block vLLM cannot translate
        raise InvalidRequest(f"Invalid Messages request: {exc}.") from None
    payload = chat.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    payload.pop("max_completion_tokens", None)  # the converter sets both; one is enough
    if request.stream:
        payload["stream_options"] = {"include_usage": True}  # message_delta's usage
    return payload


async def chat_body(body: AsyncIterator[bytes], declared: str | None,
                    limit: int) -> AsyncIterator[bytes]:
    """The request body, read within the ingress's size limit, as a chat-completion body.
    Read lazily: the pipeline reads it after the key is checked, as it reads any body."""
    raw = await read_body(body, declared, limit)
    yield json.dumps(chat_payload(raw)).encode()


def chat_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request's headers, Anthropic's `x-api-key` as the bearer token Sluice checks."""
    out = {k.lower(): v for k, v in headers.items()}
    key = out.pop("x-api-key", None)
    if key and not out.get("authorization"):
        out["authorization"] = f"Bearer {key}"
    out.pop("content-length", None)  # of the Anthropic body, not of the translated one
    return out


# ---- out -----------------------------------------------------------------------------------


def message(whole: dict[str, Any]) -> dict[str, Any]:
    """A chat completion as an Anthropic `message`."""
    response = ChatCompletionResponse.model_validate(whole)
    converted = _CONVERTER.messages_full_converter(None, response)  # type: ignore[arg-type]
    return converted.model_dump(mode="json", exclude_none=True)


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def message_events(chunks: AsyncIterator[list[sse.Event]]) -> AsyncIterator[str]:
    """A chat-completion stream as Anthropic's stream events. The converter opens the
    message with the stream's first chunk (and ignores that chunk's content, vLLM's role
    chunk): a role chunk is put in front, so a stream whose first chunk carries text (a
    replayed or cached one) loses none. An error event ends the stream with Anthropic's
    `error` event."""
    failed: list[dict[str, Any]] = []

    async def openai_items() -> AsyncIterator[str]:
        first = True
        async for chunk in chunks:
            for event in chunk:
                if sse.is_error(event.text):
                    failed.append((sse.payload(event.text) or {}).get("error") or {})
                    return
                data = sse.payload(event.text)
                if first and data is not None:
                    first = False
                    yield sse.encode({
                        "id": data.get("id") or "msg", "object": "chat.completion.chunk",
                        "created": data.get("created") or 0, "model": data.get("model", ""),
                        "choices": [{"index": 0, "delta": {"role": "assistant",
                                                           "content": ""}}]})
                if data is not None or sse.ends(event.text):
                    yield event.text

    async for out in _CONVERTER.message_stream_converter(None, openai_items()):  # type: ignore[arg-type]
        yield out
    if failed:
        error = failed[0]
        yield _event("error", error_body(_stream_error_status(error), str(
            error.get("message") or "The stream failed; retry.")))


def _stream_error_status(error: Mapping[str, Any]) -> int:
    """The status an OpenAI-shaped error event stands for: its numeric code (vLLM's), else
    Sluice's retriable `service_unavailable` (503), else a server error."""
    code = str(error.get("code") or "")
    if code.isdigit():
        return int(code)
    return 503 if error.get("type") == "service_unavailable" else 500
