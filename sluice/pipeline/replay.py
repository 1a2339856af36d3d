"""Replay a complete (non-streamed) answer as an OpenAI server-sent-event stream.

A judged cascade buffers the small model's answer until the judge accepts it; a client that
asked to stream then receives that answer in the chunk format it expects: a content chunk
per choice, a finish chunk, the usage chunk when `stream_options.include_usage` is set,
and `[DONE]`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sluice import sse


def chat_events(response: dict[str, Any], include_usage: bool) -> Iterator[str]:
    head = {"id": response["id"], "object": "chat.completion.chunk",
            "created": response["created"], "model": response["model"]}
    for choice in response["choices"]:
        message = choice.get("message") or {}
        delta = {"role": message.get("role", "assistant"), "content": message.get("content")}
        if message.get("reasoning_content"):
            delta["reasoning_content"] = message["reasoning_content"]
        yield sse.encode({**head, "choices": [{"index": choice["index"], "delta": delta,
                                           "logprobs": choice.get("logprobs"),
                                           "finish_reason": None}]})
        yield sse.encode({**head, "choices": [{"index": choice["index"], "delta": {},
                                           "logprobs": None,
                                           "finish_reason": choice.get("finish_reason")}]})
    if include_usage:
        yield sse.encode({**head, "choices": [], "usage": response.get("usage")})
    yield sse.DONE


def completion_events(response: dict[str, Any], include_usage: bool) -> Iterator[str]:
    head = {"id": response["id"], "object": "text_completion",
            "created": response["created"], "model": response["model"]}
    for choice in response["choices"]:
        yield sse.encode({**head, "choices": [{"index": choice["index"], "text": choice["text"],
                                           "logprobs": choice.get("logprobs"),
                                           "finish_reason": choice.get("finish_reason")}]})
    if include_usage:
        yield sse.encode({**head, "choices": [], "usage": response.get("usage")})
    yield sse.DONE


def sse_events(endpoint: str, response: dict[str, Any], include_usage: bool) -> Iterator[str]:
    if endpoint == "chat":
        return chat_events(response, include_usage)
    return completion_events(response, include_usage)
