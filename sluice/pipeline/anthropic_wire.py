"""A hosted model behind Anthropic's Messages API: a chat completion request in, Anthropic's
request out; Anthropic's answer (whole, or its stream of events) back as a chat completion.

This is the other direction from the front door (`sluice.deployments.anthropic_api`, which
uses vLLM's converters from Anthropic's shapes to OpenAI's): vLLM ships no converter from
OpenAI's request to Anthropic's, nor from Anthropic's answer back to OpenAI's. What is
translated, following Anthropic's API reference (https://docs.anthropic.com/en/api/messages):

- system and developer messages become `system`; user and assistant turns keep their order,
  text parts as text blocks and `image_url` parts as image blocks (a data URL as base64, any
  other URL as a URL source); an assistant's `tool_calls` become `tool_use` blocks and each
  `tool` message a `tool_result` block in a user turn (consecutive ones merged, as the API
  requires alternating roles);
- `max_tokens` (or `max_completion_tokens`; Anthropic requires one: `default_max_tokens`
  otherwise), `temperature`, `top_p`, `top_k`, `stop` as `stop_sequences`, `tools`,
  `tool_choice`, `user` as `metadata.user_id`; `n` above 1 has no counterpart (a 400);
- back: text and `tool_use` blocks as the message's content and `tool_calls`, the stop reason
  as OpenAI's finish reason, usage with the cache reads as `cached_tokens` and the cache
  writes as `cache_write_tokens` (Anthropic counts cached and cache-written input apart from
  `input_tokens`; OpenAI's `prompt_tokens` is all of the prompt);
- a stream's role chunk (Anthropic's `message_start`, sent before any text) is held until the
  first content or error event, so the first item the caller awaits under its first-token
  bound is real output or the error (`sluice.pipeline.providers`): a provider that stalls
  after `message_start`, or whose stream opens with `overloaded_error`, fails over. Errors
  carry the HTTP status of their type (`ERROR_STATUS`: `overloaded_error` 529, ...).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from sluice import sse
from sluice.errors import InvalidRequest

VERSION = "2023-06-01"  # the anthropic-version header
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
          "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop"}
# an error's type as its HTTP status (https://docs.anthropic.com/en/api/errors): a stream's
# `error` event carries only the type
ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401,
                "billing_error": 402, "permission_error": 403, "not_found_error": 404,
                "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
                "timeout_error": 504, "overloaded_error": 529}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or () if isinstance(p, dict))


def _image(url: str) -> dict[str, Any]:
    if url.startswith("data:") and ";base64," in url:
        media, data = url[5:].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": media,
                                            "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or ():
        kind = part.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            image = part.get("image_url")
            blocks.append(_image(image["url"] if isinstance(image, dict) else str(image)))
        else:
            raise InvalidRequest(f"A content part of type '{kind}' cannot be sent to a model "
                                 "behind Anthropic's API.", param="messages")
    return blocks


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        arguments = {}
    return {"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""),
            "input": arguments if isinstance(arguments, dict) else {}}


def _turns(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:  # Anthropic's roles alternate
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text(message.get("content")))
        elif role == "user":
            add("user", _blocks(message.get("content")))
        elif role == "assistant":
            blocks = _blocks(message.get("content"))
            blocks += [_tool_use(c) for c in message.get("tool_calls") or ()]
            add("assistant", blocks)
        elif role == "tool":
            add("user", [{"type": "tool_result", "tool_use_id": message.get("tool_call_id", ""),
                          "content": _text(message.get("content"))}])
        else:
            raise InvalidRequest(f"A message of role '{role}' cannot be sent to a model "
                                 "behind Anthropic's API.", param="messages")
    return "\n\n".join(s for s in system if s), turns


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        return {"auto": {"type": "auto"}, "required": {"type": "any"},
                "none": {"type": "none"}}.get(choice)
    name = (choice.get("function") or {}).get("name")
    return {"type": "tool", "name": name} if name else None


def messages_request(chat: dict[str, Any], model: str, default_max_tokens: int
                     ) -> dict[str, Any]:
    """A chat completion request (as JSON data) as Anthropic's Messages request."""
    if (chat.get("n") or 1) > 1:
        raise InvalidRequest("n above 1 cannot be served by a model behind Anthropic's API.",
                             param="n")
    system, turns = _turns(chat.get("messages") or [])
    body: dict[str, Any] = {
        "model": model, "messages": turns,
        "max_tokens": chat.get("max_completion_tokens") or chat.get("max_tokens")
        or default_max_tokens}
    if system:
        body["system"] = system
    for key in ("temperature", "top_p", "top_k"):
        if chat.get(key) is not None:
            body[key] = chat[key]
    stop = chat.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if chat.get("stream"):
        body["stream"] = True
    if chat.get("tools"):
        body["tools"] = [{"name": t["function"]["name"],
                          "description": t["function"].get("description", ""),
                          "input_schema": t["function"].get("parameters")
                          or {"type": "object", "properties": {}}}
                         for t in chat["tools"] if t.get("type") == "function"]
    choice = _tool_choice(chat.get("tool_choice"))
    if choice is not None and body.get("tools"):
        body["tool_choice"] = choice
    if chat.get("user"):
        body["metadata"] = {"user_id": str(chat["user"])}
    return body


def chat_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's usage as OpenAI's: the cache reads as `cached_tokens`, the cache writes
    (billed above the input price) as `cache_write_tokens`, OpenRouter's name for them."""
    cached = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + cached + written
    completion = int(usage.get("output_tokens") or 0)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    details = {k: v for k, v in (("cached_tokens", cached), ("cache_write_tokens", written))
               if v}
    if details:
        out["prompt_tokens_details"] = details
    return out


def chat_response(message: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's whole answer (a `message`) as a chat completion."""
    blocks = message.get("content") or []
    text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    calls = [{"id": b.get("id", ""), "type": "function",
              "function": {"name": b.get("name", ""),
                           "arguments": json.dumps(b.get("input") or {})}}
             for b in blocks if b.get("type") == "tool_use"]
    reply: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        reply["tool_calls"] = calls
    return {"id": f"chatcmpl-{message.get('id', '')}", "object": "chat.completion",
            "created": int(time.time()), "model": message.get("model", ""),
            "choices": [{"index": 0, "message": reply, "logprobs": None,
                         "finish_reason": FINISH.get(message.get("stop_reason") or "",
                                                     "stop")}],
            "usage": chat_usage(message.get("usage") or {})}


class StreamTranslator:
    """Anthropic's stream events, one at a time, as chat completion chunks (SSE strings):
    the role chunk on `message_start` (held until the first chunk of content, and sent just
    before it), text and tool-call deltas, the finish reason on `message_delta`, then the
    usage chunk and `[DONE]` on `message_stop`. An `error` event becomes an SSE error event
    (its `code` the status of its type) and `[DONE]`; before any content, without the role
    chunk, so a caller reads the error first."""

    def __init__(self) -> None:
        self._id, self._model, self._created = "", "", int(time.time())
        self._usage: dict[str, Any] = {}
        self._tools: dict[int, int] = {}  # Anthropic's block index -> OpenAI's tool index
        self._role: str | None = None  # the role chunk, until the first content comes

    def _chunk(self, delta: dict[str, Any], finish: str | None = None,
               usage: dict[str, Any] | None = None) -> str:
        data: dict[str, Any] = {
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self._model,
            "choices": [] if usage is not None else
            [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if usage is not None:
            data["usage"] = usage
        return sse.encode(data)

    def translate(self, event: dict[str, Any]) -> Iterator[str]:
        chunks = list(self._translate(event))
        if chunks and self._role is not None:
            role, self._role = self._role, None
            if event.get("type") != "error":  # an error before any content comes alone
                yield role
        yield from chunks

    def _translate(self, event: dict[str, Any]) -> Iterator[str]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self._id = f"chatcmpl-{message.get('id', '')}"
            self._model = message.get("model", "")
            self._usage.update(message.get("usage") or {})
            self._role = self._chunk({"role": "assistant", "content": ""})
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self._tools.setdefault(int(event.get("index", 0)), len(self._tools))
                yield self._chunk({"tool_calls": [{
                    "index": index, "id": block.get("id", ""), "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": ""}}]})
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                yield self._chunk({"content": delta.get("text", "")})
            elif delta.get("type") == "input_json_delta":
                index = self._tools.get(int(event.get("index", 0)), 0)
                yield self._chunk({"tool_calls": [{
                    "index": index, "function": {"arguments": delta.get("partial_json", "")}}]})
        elif kind == "message_delta":
            self._usage.update({k: v for k, v in (event.get("usage") or {}).items()
                                if v is not None})
            reason = (event.get("delta") or {}).get("stop_reason")
            yield self._chunk({}, FINISH.get(reason or "", "stop"))
        elif kind == "message_stop":
            yield self._chunk({}, usage=chat_usage(self._usage))
            yield sse.DONE
        elif kind == "error":
            error = event.get("error") or {}
            named = str(error.get("type") or "api_error")
            yield sse.encode({"error": {"message": str(error.get("message", "")),
                                        "type": named, "code": ERROR_STATUS.get(named, 500)}})
            yield sse.DONE
        # ping and content_block_stop carry nothing a chat completion has
