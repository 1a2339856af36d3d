"""Server-sent events as OpenAI streams them: the one codec every layer uses.

A stream is `data: <JSON>\\n\\n` events ending with `data: [DONE]\\n\\n`; an engine-side
failure is an event whose JSON has an `error` member. Engines hand Sluice ready event
strings (one or several per chunk); Sluice writes events for replayed and cached answers,
and reads the few it must (ids, finish reasons, usage, errors) without parsing the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


# ---- reading an answer's events once ------------------------------------------------------
# The kinds an event can be; metering, pricing and the ledger read these, not the JSON.
ROLE, TOKEN, USAGE, ERROR, END, OTHER = "role", "token", "usage", "error", "done", "other"


@dataclass(slots=True)
class Event:
    """One event of a stream, as it goes on the wire, with what Sluice needs of it.

    `payload` is parsed only for the events that carry what settlement reads (the first
    event's id, a finish reason, the usage, an error); token events pass unparsed.
    """

    text: str
    kind: str
    payload: dict[str, Any] | None = None

    @property
    def finish_reasons(self) -> list[str]:
        choices = (self.payload or {}).get("choices") or []
        return [str(c["finish_reason"]) for c in choices
                if isinstance(c, dict) and c.get("finish_reason")]


def _compact(event: str) -> str:
    return event.replace('": ', '":')  # the checks below read either JSON spacing


def read(chunk: str, parse_first: bool = False) -> list[Event]:
    """The events of one chunk of stream text (one or several events, or part of the
    text of a buffered answer). `parse_first`: parse the first data event whatever it is
    (its id names the response)."""
    events: list[Event] = []
    for part in chunk.split("\n\n"):
        body = part.strip()
        if not body:
            continue
        text = body + "\n\n"
        if not body.startswith(DATA + "{"):
            events.append(Event(text, END if body == DATA + "[DONE]" else OTHER))
            continue
        compact = _compact(body)
        if compact.startswith(ERROR_PREFIX):
            events.append(Event(text, ERROR, payload(body)))
            continue
        usage_only = '"choices":[]' in compact
        kind = USAGE if usage_only else ROLE if '"role":' in compact else TOKEN
        wanted = (parse_first or '"finish_reason":"' in compact or '"usage":{' in compact)
        value = payload(body) if wanted else None
        if wanted and value is None:
            kind = OTHER  # not JSON after all: passed on, not counted
        parse_first = False
        events.append(Event(text, kind, value))
    return events
