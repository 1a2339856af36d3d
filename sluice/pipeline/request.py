"""Parse a request body once into vLLM's typed OpenAI request, or fail with a named field.

The typed objects are the ones ``ray.serve.llm``'s LLMServer takes (plain pydantic data, safe
to send across the Ray boundary). vLLM's own models accept some values OpenAI rejects
(``max_tokens=0``, negative temperature, huge ``n``); those are checked here so the client
gets a 400 naming the field rather than an engine error or a wasted generation.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pydantic
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from vllm.exceptions import VLLMClientError

from sluice.errors import BodyTimeout, InvalidRequest, PayloadTooLarge

Endpoint = Literal["chat", "completions"]
LLMRequest = ChatCompletionRequest | CompletionRequest
_REQUEST_TYPES: dict[Endpoint, type[LLMRequest]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
}


@dataclass(frozen=True)
class RequestLimits:
    max_n: int
    max_tokens: int


async def read_body(chunks: AsyncIterator[bytes], declared: str | None, limit: int,
                    timeout_s: float | None = None) -> bytes:
    """The body, refused with 413 once it is known to exceed `limit` (by its declared
    Content-Length before a byte is read, or as it streams in: chunked uploads), and with
    408 when it has not arrived whole within `timeout_s` (a slow-loris client)."""
    if timeout_s is None:
        return await _read(chunks, declared, limit)
    try:
        return await asyncio.wait_for(_read(chunks, declared, limit), timeout_s)
    except TimeoutError:
        raise BodyTimeout(f"The request body did not arrive within {timeout_s:g} s.") from None


async def _read(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body of {int(declared)} bytes exceeds the limit of "
                              f"{limit} bytes.")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        parts.append(chunk)
    return b"".join(parts)


def decode_json(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object body; anything else is the client's mistake."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
    except RecursionError:  # json's C decoder recurses per nesting level
        raise InvalidRequest("Request body is nested too deeply to be a request.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    return body


def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _check_range(body: dict[str, Any], field: str, lo: float | None, hi: float | None,
                 *, lo_open: bool = False) -> None:
    value = body.get(field)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # absent, or a type error pydantic will name
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and value > hi
    if too_low or too_high:
        lo_txt = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        hi_txt = "" if hi is None else f"<= {hi}"
        bound = " and ".join(t for t in (lo_txt, hi_txt) if t)
        raise InvalidRequest(f"'{field}' must be {bound}; got {value}.", param=field)


def check_sampling(body: dict[str, Any], limits: RequestLimits) -> None:
    """OpenAI's bounds on the sampling fields, checked on the raw body (before defaults)."""
    _check_range(body, "max_tokens", 0, limits.max_tokens, lo_open=True)
    _check_range(body, "max_completion_tokens", 0, limits.max_tokens, lo_open=True)
    _check_range(body, "n", 1, limits.max_n)
    _check_range(body, "temperature", 0, 2)
    _check_range(body, "top_p", 0, 1, lo_open=True)
    _check_range(body, "presence_penalty", -2, 2)
    _check_range(body, "frequency_penalty", -2, 2)


def parse_request(endpoint: Endpoint, body: dict[str, Any], limits: RequestLimits) -> LLMRequest:
    """Validate the body into the engine's request type; 400 names the first bad field."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    check_sampling(body, limits)
    if endpoint == "chat" and not body.get("messages"):
        raise InvalidRequest("'messages' must be a non-empty list.", param="messages")
    if endpoint == "completions" and body.get("prompt") in (None, "", []):
        raise InvalidRequest("'prompt' is required.", param="prompt")
    try:
        request = _REQUEST_TYPES[endpoint].model_validate(body)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = _field_path(tuple(first["loc"])) or None
        raise InvalidRequest(
            f"Invalid value for '{field}': {first['msg']}", param=field
        ) from None
    except VLLMClientError as exc:  # vLLM's own request checks (e.g. stream_options
        # without stream), raised from its model validators past pydantic's wrapping
        param = getattr(exc, "parameter", None)
        raise InvalidRequest(str(exc.args[0]) if exc.args else str(exc), param=param) from None
    except RecursionError:
        raise InvalidRequest("Request body is nested too deeply to be a request.") from None
    if isinstance(request, ChatCompletionRequest):
        _materialize_message_content(request)
    return request


def _materialize_message_content(request: ChatCompletionRequest) -> None:
    """Turn pydantic's lazy iterators in messages into lists so the request pickles.

    pydantic keeps ``Iterable[...]`` fields as ValidatorIterator objects, which cannot cross a
    Ray boundary (pydantic issue 9467; Ray Serve LLM's ingress works around it the same way).
    """
    for i, message in enumerate(request.messages):
        if not isinstance(message, dict):
            request.messages[i] = message = message.model_dump()
        for key in ("content", "tool_calls"):
            value = message.get(key)
            if value is not None and not isinstance(value, (str, list)):
                try:
                    message[key] = list(value)  # type: ignore[literal-required]
                except (TypeError, ValueError) as exc:
                    raise InvalidRequest(
                        f"Invalid value for 'messages[{i}].{key}': {exc}",
                        param=f"messages[{i}].{key}",
                    ) from None


@dataclass
class ParsedRequest:
    """A request as the pipeline takes it: the client's body and its typed engine request."""

    endpoint: Endpoint
    body: dict[str, Any]  # as sent (cache keys and policies read it)
    llm: LLMRequest  # validated; the engine's own request type
    request_id: str
    headers: Mapping[str, str]
    client_usage: bool = True  # a stream's usage event goes to the client (it asked)
    body_bytes: int = 0  # the body's size as received

    @property
    def prompt_field(self) -> str:
        return "messages" if self.endpoint == "chat" else "prompt"

    @property
    def max_output_tokens(self) -> int | None:
        """The completion tokens asked for per choice: max_completion_tokens, else max_tokens
        (read from the model's fields: vLLM warns on every `.max_tokens` of a chat request)."""
        fields = self.llm.__dict__
        return fields.get("max_completion_tokens") or fields.get("max_tokens")

    def prompt_tokens_bound(self) -> int:
        """At most this many prompt tokens: a byte-level tokenizer makes no more tokens than
        the prompt has bytes (the whole body's here), plus a chat template's few special
        tokens per message. For worst-case holds, not estimates; nothing is serialised."""
        messages = self.body.get("messages")
        return self.body_bytes + 8 * (len(messages) if isinstance(messages, list) else 1) + 8

    def prompt_tokens_guess(self) -> int:
        """About 4 bytes of body a token (OpenAI's own rule of thumb for rate limits)."""
        return self.body_bytes // 4

    def estimate(self, token_events: int) -> dict[str, Any]:
        """The usage of an answer cut short (it never sent its own), so the prompt is
        measured only then: ~4 characters a token; each token event is at least a token."""
        prompt = self.body.get("messages") or self.body.get("prompt") or ""
        return {"prompt_tokens": len(json.dumps(prompt)) // 4,
                "completion_tokens": token_events}


def parsed(endpoint: Endpoint, body: dict[str, Any], limits: RequestLimits, request_id: str,
           headers: Mapping[str, str], body_bytes: int = 0) -> ParsedRequest:
    """The body validated (400 names the field), with its engine request id and the usage
    event a stream's ledger record needs."""
    llm = parse_request(endpoint, body, limits)
    llm.request_id = request_id
    client_usage = with_usage_event(llm)
    return ParsedRequest(endpoint, body, llm, request_id, headers, client_usage, body_bytes)


def with_usage_event(request: LLMRequest) -> bool:
    """Make a streamed request's engine send its usage event; True if the client asked.

    The ledger needs every answer's tokens; settlement drops the event again for a client
    that did not ask for it.
    """
    options = request.stream_options
    if not request.stream or (options is not None and options.include_usage):
        return True
    if options is None:
        annotation = type(request).model_fields["stream_options"].annotation
        options_cls = next(a for a in annotation.__args__ if a is not type(None))
        options = options_cls()
    request.stream_options = options.model_copy(update={"include_usage": True})
    return False
