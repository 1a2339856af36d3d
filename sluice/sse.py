"""Server-sent events as OpenAI streams them: the one codec every layer uses.

A stream is `data: <JSON>\\n\\n` events ending with `data: [DONE]\\n\\n`; an engine-side
failure is an event whose JSON has an `error` member. Engines hand Sluice ready event
strings (one or several per chunk); Sluice writes events for replayed and cached answers,
and reads the few it must (ids, finish reasons, usage, errors) without parsing the rest.
"""

from __future__ import annotations

import json
from typing import Any

DATA = "data: "
DONE = "data: [DONE]\n\n"
ERROR_PREFIX = 'data: {"error"'


def encode(payload: dict[str, Any], end: str = "\n\n") -> str:
    """One event, compact JSON (as vLLM writes them); `end=""` for an event that goes back
    among others split on their blank lines."""
    return f"{DATA}{json.dumps(payload, separators=(',', ':'))}{end}"


def payload(event: str) -> dict[str, Any] | None:
    """The JSON object of a `data: {...}` event; None for [DONE], comments or bad JSON."""
    body = event.strip()
    if not body.startswith(DATA + "{"):
        return None
    try:
        value = json.loads(body[len(DATA):])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def is_error(event: str) -> bool:
    return event.lstrip().startswith(ERROR_PREFIX)


def ends(chunk: str) -> bool:
    """Whether a chunk closes the stream."""
    return chunk.rstrip().endswith(DATA + "[DONE]")
